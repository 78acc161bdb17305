"""Multiply-adds and parameters: the analytic formulas, MobileNet V1 as the paper's Table 1,
and a model walker that counts what a network actually runs.

Explained in the *MobileNet's cost model* chapter (``notebooks/05_mobilenet.ipynb``).

Counting convention (the one that reproduces the MobileNet paper's tables): one multiply-add
per weight tap per output element. A convolution with a ``k_h x k_w`` kernel, ``m`` input and
``n`` output channels in ``g`` groups, producing a ``h x w`` output, costs
``k_h * k_w * (m / g) * n * h * w`` (the paper's ``D_K^2 M N D_F^2`` with ``D_F`` the
**output** size); a linear layer costs ``in * out`` per output row. Biases, batch norm,
activations and pooling cost nothing, and :class:`CostReport` counts parameters as weights
(biases separately). ``torch.utils.flop_counter.FlopCounterMode`` counts 2 FLOPs per
multiply-add with the same rules, which the tests check.
"""
from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

__all__ = ["conv_output_size", "standard_conv_madds", "depthwise_madds", "pointwise_madds",
           "separable_ratio", "conv2d_madds", "conv2d_weights", "LayerSpec", "TABLE1_BLOCKS", "mobilenet_v1_spec",
           "analytic_cost", "MobileNetV1", "mobilenet_v1", "LayerCost", "CostReport",
           "UnsupportedLayerError", "count", "FREE_MODULES", "latency", "peak_memory"]


# --- The paper's formulas ------------------------------------------------------------------

def _positive(**values: int) -> None:
    for name, v in values.items():
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise ValueError(f"{name} must be a positive int, got {v!r}")


def conv_output_size(size: int, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> int:
    """Output length of a convolution along one axis: ``floor((size + 2p - d(k-1) - 1) / s) + 1``."""
    _positive(size=size, kernel=kernel, stride=stride, dilation=dilation)
    if not isinstance(padding, int) or isinstance(padding, bool) or padding < 0:
        raise ValueError(f"padding must be an int >= 0, got {padding!r}")
    out = (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
    if out <= 0:
        raise ValueError(f"kernel {kernel} (dilation {dilation}) does not fit an input of {size} with padding {padding}")
    return out


def standard_conv_madds(d_k: int, m: int, n: int, d_f: int) -> int:
    """``D_K * D_K * M * N * D_F * D_F``: a ``D_K x D_K`` convolution from ``M`` to ``N`` channels
    producing a ``D_F x D_F`` output (paper, eq. 2)."""
    _positive(d_k=d_k, m=m, n=n, d_f=d_f)
    return d_k * d_k * m * n * d_f * d_f


def depthwise_madds(d_k: int, m: int, d_f: int) -> int:
    """``D_K * D_K * M * D_F * D_F``: one ``D_K x D_K`` filter per input channel (paper, eq. 4)."""
    _positive(d_k=d_k, m=m, d_f=d_f)
    return d_k * d_k * m * d_f * d_f


def pointwise_madds(m: int, n: int, d_f: int) -> int:
    """``M * N * D_F * D_F``: the 1x1 convolution that mixes the channels."""
    _positive(m=m, n=n, d_f=d_f)
    return m * n * d_f * d_f


def separable_ratio(n: int, d_k: int) -> float:
    """Depthwise separable over standard cost, ``1/N + 1/D_K^2`` (paper, eq. 5)."""
    _positive(n=n, d_k=d_k)
    return 1 / n + 1 / d_k**2


def conv2d_madds(in_channels: int, out_channels: int, kernel: tuple[int, int],
                 out_size: tuple[int, int], groups: int = 1) -> int:
    """General 2-D convolution: ``k_h * k_w * (in / groups) * out * h_out * w_out`` (no bias).

    ``groups = in_channels = out_channels`` is a depthwise convolution, ``kernel = (1, 1)``
    a pointwise one; stride, padding and dilation enter only through ``out_size``.
    """
    for name, pair in (("kernel", kernel), ("out_size", out_size)):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ValueError(f"{name} must be a pair (height, width), got {pair!r}")
    _positive(in_channels=in_channels, out_channels=out_channels, groups=groups,
              k_h=kernel[0], k_w=kernel[1], h_out=out_size[0], w_out=out_size[1])
    if in_channels % groups or out_channels % groups:
        raise ValueError(f"groups={groups} must divide in_channels={in_channels} and out_channels={out_channels}")
    return kernel[0] * kernel[1] * (in_channels // groups) * out_channels * out_size[0] * out_size[1]


def conv2d_weights(in_channels: int, out_channels: int, kernel: tuple[int, int], groups: int = 1) -> int:
    """Number of weights of a 2-D convolution, ``k_h * k_w * (in / groups) * out`` (no bias)."""
    return conv2d_madds(in_channels, out_channels, kernel, (1, 1), groups)


# --- MobileNet V1 (Table 1) ------------------------------------------------------------------

@dataclass(frozen=True)
class LayerSpec:
    """One row of Table 1: ``kind`` is ``"conv"`` (standard 3x3), ``"dw"``, ``"pw"`` or ``"fc"``;
    ``size_in``/``size_out`` are the square feature-map sizes (1 for the FC layer)."""

    kind: str
    kernel: int
    stride: int
    c_in: int
    c_out: int
    size_in: int
    size_out: int

    @property
    def madds(self) -> int:
        """Mult-adds of this row under the module's convention."""
        groups = self.c_in if self.kind == "dw" else 1
        return conv2d_madds(self.c_in, self.c_out, (self.kernel, self.kernel), (self.size_out, self.size_out), groups)

    @property
    def weights(self) -> int:
        """Weights of this row (no biases, no batch norm)."""
        groups = self.c_in if self.kind == "dw" else 1
        return conv2d_weights(self.c_in, self.c_out, (self.kernel, self.kernel), groups)


#: Table 1 after the first convolution: (depthwise stride, output channels of the pointwise
#: layer), one pair per row. The paper prints "dw/s2" for the second-to-last pair, but its 7x7 input stays 7x7,
#: so it acts as stride 1 here (the only reading consistent with the table's sizes).
TABLE1_BLOCKS = ((1, 64), (2, 128), (1, 128), (2, 256), (1, 256), (2, 512),
              (1, 512), (1, 512), (1, 512), (1, 512), (1, 512), (2, 1024), (1, 1024))
_SHALLOW_DROPPED = range(6, 11)  # the five 14x14x512 pairs removed for Table 5


def mobilenet_v1_spec(alpha: float = 1.0, resolution: int = 224, variant: str = "separable",
                      num_classes: int = 1000, blocks: Sequence[tuple[int, int]] = TABLE1_BLOCKS,
                      ) -> list[LayerSpec]:
    """Layer list of MobileNet V1 (Table 1) with width multiplier ``alpha`` (channels
    ``int(alpha * c)``) and input ``resolution``.

    ``variant``: ``"separable"`` (the MobileNet), ``"conv"`` (Table 4's Conv MobileNet: each
    dw + pw pair replaced by one standard 3x3 convolution with the dw's stride) or
    ``"shallow"`` (Table 5: the five 14x14x512 pairs removed). ``blocks`` replaces Table 1's
    ``(stride, channels)`` pairs to build a smaller network of the same kind (not with
    ``"shallow"``, which is defined on Table 1's pairs). Convolutions use padding 1,
    so a stride-2 layer maps ``s`` to ``ceil(s / 2)`` like TensorFlow's SAME padding.
    """
    if variant not in ("separable", "conv", "shallow"):
        raise ValueError(f"variant must be 'separable', 'conv' or 'shallow', got {variant!r}")
    if variant == "shallow" and tuple(blocks) != TABLE1_BLOCKS:
        raise ValueError("the shallow variant is defined on Table 1's blocks only")
    if not 0 < alpha <= 1:
        raise ValueError(f"alpha must be in (0, 1], got {alpha}")
    _positive(resolution=resolution, num_classes=num_classes)

    def width(c: int) -> int:
        w = int(alpha * c)
        if w < 1:
            raise ValueError(f"alpha={alpha} leaves no channels of {c}")
        return w

    size = conv_output_size(resolution, 3, 2, 1)
    layers = [LayerSpec("conv", 3, 2, 3, width(32), resolution, size)]
    c = width(32)
    for i, (stride, c_out) in enumerate(blocks):
        if variant == "shallow" and i in _SHALLOW_DROPPED:
            continue
        out = conv_output_size(size, 3, stride, 1)
        if variant == "conv":
            layers.append(LayerSpec("conv", 3, stride, c, width(c_out), size, out))
        else:
            layers += [LayerSpec("dw", 3, stride, c, c, size, out), LayerSpec("pw", 1, 1, c, width(c_out), out, out)]
        c, size = width(c_out), out
    layers.append(LayerSpec("fc", 1, 1, c, num_classes, 1, 1))
    return layers


def analytic_cost(spec: Sequence[LayerSpec], include_fc: bool = True) -> tuple[int, int]:
    """Total ``(mult-adds, weights)`` of a layer list, with or without its FC layer."""
    rows = [s for s in spec if include_fc or s.kind != "fc"]
    return sum(s.madds for s in rows), sum(s.weights for s in rows)


class MobileNetV1(nn.Module):
    """MobileNet V1 built from :func:`mobilenet_v1_spec`: every convolution is followed by
    batch norm and ReLU (convolutions without bias), then global average pooling and the FC
    layer (with bias). Input (B, 3, R, R) -> logits (B, num_classes).

    ``in_channels`` replaces the 3 RGB channels (1 for MNIST); counts then follow the
    real first layer, not Table 1.
    """

    def __init__(self, spec: Sequence[LayerSpec], in_channels: int = 3) -> None:
        super().__init__()
        _positive(in_channels=in_channels)
        blocks = []
        for i, s in enumerate(spec[:-1]):
            c_in = in_channels if i == 0 else s.c_in
            groups = c_in if s.kind == "dw" else 1
            conv = nn.Conv2d(c_in, s.c_out, s.kernel, s.stride, s.kernel // 2, groups=groups, bias=False)
            blocks.append(nn.Sequential(conv, nn.BatchNorm2d(s.c_out), nn.ReLU(inplace=True)))
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(spec[-1].c_in, spec[-1].c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.features(x))))


def mobilenet_v1(alpha: float = 1.0, resolution: int = 224, variant: str = "separable",
                 num_classes: int = 1000, in_channels: int = 3,
                 blocks: Sequence[tuple[int, int]] = TABLE1_BLOCKS) -> MobileNetV1:
    """:class:`MobileNetV1` for ``alpha``, ``resolution``, ``variant`` and ``blocks`` (see
    :func:`mobilenet_v1_spec`; the network itself accepts any input size)."""
    return MobileNetV1(mobilenet_v1_spec(alpha, resolution, variant, num_classes, blocks), in_channels)


# --- Counting what a model runs --------------------------------------------------------------

#: Modules that cost nothing under the convention (normalisation, activations, pooling,
#: reshaping, padding, dropout); they are passed over, not reported.
FREE_MODULES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU,
    nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Softmax, nn.Identity,
    nn.Dropout, nn.Flatten, nn.modules.pooling._AvgPoolNd, nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd,
    nn.modules.padding._ConstantPadNd, nn.modules.padding._ReflectionPadNd, nn.modules.padding._ReplicationPadNd,
    nn.ZeroPad2d, nn.Upsample)
_COUNTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


class UnsupportedLayerError(TypeError):
    """A model holds layers whose cost the counter cannot see (listed in the message)."""


@dataclass
class LayerCost:
    """One counted call of a layer: ``kind`` is ``conv``, ``dw`` (groups = in = out channels),
    ``pw`` (1x1, one group), ``group`` (other grouped conv) or ``fc``; shapes without batch."""

    name: str
    kind: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    madds: int
    weights: int
    biases: int


@dataclass
class CostReport:
    """Per-layer costs of one forward pass (per image: the batch size is divided out) and
    the modules the counter could not price (``unsupported``: ``(name, type)``)."""

    layers: list[LayerCost] = field(default_factory=list)
    unsupported: list[tuple[str, str]] = field(default_factory=list)

    @property
    def madds(self) -> int:
        """Total multiply-adds per image."""
        return sum(layer.madds for layer in self.layers)

    @property
    def weights(self) -> int:
        """Weights of the counted layers (a layer called twice is counted once)."""
        return sum({layer.name: layer.weights for layer in self.layers}.values())

    @property
    def params(self) -> int:
        """Weights plus biases of the counted layers (no batch-norm parameters)."""
        return self.weights + sum({layer.name: layer.biases for layer in self.layers}.values())

    def by_kind(self) -> dict[str, tuple[int, int]]:
        """``{kind: (mult-adds, weights)}`` summed over layers, e.g. for the paper's Table 2."""
        out: dict[str, tuple[int, int]] = {}
        seen: set[str] = set()
        for layer in self.layers:
            m, w = out.get(layer.kind, (0, 0))
            out[layer.kind] = (m + layer.madds, w + (0 if layer.name in seen else layer.weights))
            seen.add(layer.name)
        return out


def _layer_cost(name: str, module: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> LayerCost:
    """Cost of one call of a convolution or linear layer on the whole batch ``inp -> out``."""
    bias = 0 if module.bias is None else module.bias.numel()
    weights = module.weight.numel()
    shapes = (tuple(inp.shape[1:]), tuple(out.shape[1:]))
    if isinstance(module, nn.Linear):
        # (*, in) -> (*, out): in * out mult-adds for every output row
        return LayerCost(name, "fc", *shapes, weights * out[..., 0].numel(), weights, bias)
    groups, c_in, c_out = module.groups, module.in_channels, module.out_channels
    if groups == c_in == c_out and c_in > 1:
        kind = "dw"
    elif groups > 1:
        kind = "group"
    else:
        kind = "pw" if all(k == 1 for k in module.weight.shape[2:]) else "conv"
    # every weight is used once per output position (channels, batch and positions of out)
    return LayerCost(name, kind, *shapes, weights * out[:, 0].numel(), weights, bias)


def count(model: nn.Module, x: torch.Tensor, strict: bool = True) -> CostReport:
    """Run ``model`` on ``x`` once (no gradients) and count every convolution and linear call.

    Returns a :class:`CostReport` with mult-adds per image (``x`` may hold a batch; counts are
    divided by its size). Modules of :data:`FREE_MODULES` cost nothing. Any other module that
    has parameters of its own, or no children (a leaf whose cost is unknown), is *unsupported*:
    with ``strict=True`` an :class:`UnsupportedLayerError` names them all, with ``strict=False``
    they are listed in ``report.unsupported``. Cost hidden in functional calls inside a
    module's ``forward`` (``F.conv2d``, ``x @ w``) is not seen by hooks: compare with
    ``FlopCounterMode`` when in doubt. Hooks are removed even when the forward pass raises.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(x, torch.Tensor) or x.dim() < 2:
        raise ValueError("x must be a batched input tensor (B, ...)")
    if len(x) == 0:
        raise ValueError(f"x must hold at least one input (costs are per image), got shape {tuple(x.shape)}")
    report = CostReport()
    handles = []

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor, name: str) -> None:
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"{name}: expected a tensor output, got {type(output).__name__}")
        cost = _layer_cost(name, module, inputs[0], output)
        cost.madds //= x.shape[0]  # per image
        report.layers.append(cost)

    skip: set[str] = set()
    for name, module in model.named_modules():
        if any(name.startswith(prefix + ".") for prefix in skip):
            continue  # inside a counted layer (e.g. the padding module of a same-padding conv)
        if isinstance(module, _COUNTED):
            skip.add(name)
            handles.append(module.register_forward_hook(lambda m, i, o, n=name: hook(m, i, o, n)))
        elif isinstance(module, FREE_MODULES):
            continue
        elif any(True for _ in module.parameters(recurse=False)) or not any(True for _ in module.children()):
            report.unsupported.append((name or "(model)", type(module).__name__))
    try:
        if report.unsupported and strict:
            listed = ", ".join(f"{n} ({t})" for n, t in report.unsupported)
            raise UnsupportedLayerError(f"cannot count these modules: {listed}; pass strict=False to count the rest")
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return report


# --- What the count misses: time and memory ----------------------------------------------------

def latency(fn: Callable[[], object], repeats: int = 10, warmup: int = 2, threads: int | None = 1,
            device: torch.device | str = "cpu") -> float:
    """Median wall-clock seconds of ``fn()`` over ``repeats`` calls after ``warmup`` calls.

    ``threads`` fixes torch's intra-op CPU threads for the measurement (restored afterwards;
    ``None`` leaves them alone). On a CUDA ``device`` the GPU is synchronised around each call.
    """
    _positive(repeats=repeats)
    if threads is not None:
        _positive(threads=threads)
    if not callable(fn):
        raise TypeError(f"fn must be a callable taking no arguments, got {type(fn).__name__}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    cuda = torch.device(device).type == "cuda"
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        times = []
        for i in range(warmup + repeats):
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if cuda:
                torch.cuda.synchronize()
            if i >= warmup:
                times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(before)
    return statistics.median(times)


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Send file descriptor 2 to /dev/null (the profiler's C++ start/stop log lines)."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_memory(fn: Callable[[], object]) -> int:
    """Peak bytes of CPU memory that ``fn()`` allocates beyond what exists before the call.

    Measured with ``torch.profiler`` (``profile_memory=True``): the allocations and frees of
    every operator, in time order, summed into a running total whose maximum is returned.
    Tensors that exist before the call (the input, the weights) are not included; run ``fn``
    under ``torch.no_grad()`` to measure inference.
    """
    from torch.profiler import ProfilerActivity, profile

    if not callable(fn):
        raise TypeError(f"fn must be a callable taking no arguments, got {type(fn).__name__}")

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    current = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        current += event.self_cpu_memory_usage
        peak = max(peak, current)
    return peak
