"""Patch SVDD: self-supervised patch encoders and nearest-normal-patch anomaly maps.

Explained in the Patch SVDD chapter (``notebooks/07_patch_svdd.ipynb``); Yi & Yoon, ACCV 2020.
Written from the paper and the book's notes on the official code (which has no licence).

Pieces, with shapes (``B`` images ``(3, H, W)``, ``D = 64`` code channels):

1. :class:`Encoder32` (receptive field ``K = 32``: eight unpadded 3x3 convolutions, the first
   with stride 2, LeakyReLU(0.1), tanh) and :class:`Encoder64` (``K = 64``: the K=32 encoder on
   the four 32x32 quadrants, the four codes tiled 2x2, a 2x2 and a 1x1 convolution, tanh).
   401,984 parameters together (:data:`N_PARAMETERS`).
2. Training signals: :func:`sample_position_pairs` (a patch and one of its 8 neighbours, both
   inside the image, with the direction as label), :func:`sample_svdd_pairs` (a patch and a
   copy jittered by at most ``K // 32`` pixels), :func:`perturb` (per-patch RGB shift and pixel
   noise; :func:`perturbed_position_pairs` puts the three together), :class:`PositionClassifier`
   on ``h1 - h2``, :func:`ssl_loss`, :func:`svdd_loss` and :func:`train`
   (``L = L_SSL64 + L_SSL32 + lambda (L_SVDD'64 + L_SVDD'32)``).
3. Inference: :func:`patch_codes` encodes cropped patches one by one (the obvious way);
   :func:`dense_codes` gets the same codes for a whole grid fully convolutionally (the K=32
   encoder over the image, every 2nd output; the K=64 head as a dilated convolution).
4. Scoring: nearest training code (:func:`utils.anomaly.knn_patch_scores`), scores spread back
   to pixels as the mean over covering patches (:func:`spread`, two ``F.fold``), maps 64, 32,
   sum and product (:func:`anomaly_maps`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .anomaly import knn_patch_scores

__all__ = [
    "D",
    "N_PARAMETERS",
    "DIRECTIONS",
    "init_convs",
    "Encoder32",
    "Encoder64",
    "PositionClassifier",
    "sample_position_pairs",
    "sample_svdd_pairs",
    "crop_patches",
    "perturb",
    "perturbed_position_pairs",
    "ssl_loss",
    "svdd_loss",
    "History",
    "train",
    "patch_codes",
    "dense_codes",
    "grid_size",
    "spread",
    "anomaly_maps",
    "MAP_NAMES",
    "LEVELS",
    "position_accuracy",
]

#: Code channels of both encoders.
D = 64
#: Parameters of the two encoders together (Encoder64 contains Encoder32).
N_PARAMETERS = 401_984
#: The 8 relative positions ``(dy, dx)`` of the second patch; a pair's label is the index here.
DIRECTIONS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))
#: The maps :func:`anomaly_maps` returns.
MAP_NAMES = ("64", "32", "sum", "product")
_CHANNELS = (3, 32, 64, 128, 128, 64, 32, 32, D)
#: The two levels: map name -> receptive field K.
LEVELS = {"64": 64, "32": 32}


def _positive_int(value: object, what: str, minimum: int = 1) -> int:
    """``value`` as an int, or a ValueError naming ``what`` if it is not an integer >= minimum."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return value


def _check_images(images: Tensor, what: str = "images") -> None:
    """``images`` must be a finite floating ``(N, 3, H, W)`` tensor with ``N >= 1``."""
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = (
            tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        )
        raise ValueError(f"{what} must be a (N, 3, H, W) tensor, got {shape}")
    if images.shape[0] == 0:
        raise ValueError(f"{what} holds no image: shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(
            f"{what} must be floating point (normalised), got {images.dtype}"
        )
    if not torch.isfinite(images).all():
        bad = int((~torch.isfinite(images)).flatten(1).any(dim=1).sum())
        raise ValueError(
            f"{what} contain NaN or inf values ({bad} of {len(images)} images)"
        )


def _check_for_encoder(encoder: nn.Module, images: Tensor) -> None:
    """``images`` valid and on the encoder's dtype and device (else a clear ValueError)."""
    _check_images(images)
    weight = next(encoder.parameters())
    if images.dtype != weight.dtype or images.device != weight.device:
        raise ValueError(
            f"images are {images.dtype} on {images.device} but the encoder is "
            f"{weight.dtype} on {weight.device}; move one to the other"
        )


def init_convs(module: nn.Module, init: str) -> None:
    """Initialise every convolution of ``module``: ``"he"`` draws weights from He et al.'s normal
    distribution for LeakyReLU(0.1) (variance ``2 / ((1 + 0.1^2) fan_in)``) and zeroes the biases,
    which keeps the activations' scale through the eight layers; ``"pytorch"`` keeps PyTorch's
    default, under which a random encoder gives nearly the same code to every patch."""
    if init not in ("he", "pytorch"):
        raise ValueError(f"init must be 'he' or 'pytorch', got {init!r}")
    if init == "pytorch":
        return
    for conv in module.modules():
        if isinstance(conv, nn.Conv2d):
            nn.init.kaiming_normal_(conv.weight, a=0.1, nonlinearity="leaky_relu")
            nn.init.zeros_(conv.bias)


class Encoder32(nn.Module):
    """Patch encoder with a 32 x 32 receptive field: ``(B, 3, H, W) -> (B, 64, h, w)``.

    Eight unpadded 3x3 convolutions (channels 3-32-64-128-128-64-32-32-64), stride 2 in the
    first only, LeakyReLU(0.1) after the first seven and tanh after the last. On a 32 x 32
    patch the output is ``1 x 1`` (the code). On a larger image it is fully convolutional:
    output ``(i, j)`` is the code of the patch whose top-left corner is ``(2i, 2j)``, so
    ``h = floor((H - 31) / 2)`` for ``H >= 32``. ``init``: see :func:`init_convs`.
    """

    K = 32

    def __init__(self, init: str = "he") -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(zip(_CHANNELS[:-1], _CHANNELS[1:])):
            layers.append(nn.Conv2d(c_in, c_out, 3, stride=2 if i == 0 else 1))
            layers.append(nn.LeakyReLU(0.1) if i < len(_CHANNELS) - 2 else nn.Tanh())
        self.net = nn.Sequential(*layers)
        init_convs(self, init)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != 3 or min(x.shape[2:]) < self.K:
            raise ValueError(
                f"input must be (B, 3, H, W) with H, W >= {self.K}, got {tuple(x.shape)}"
            )
        return self.net(x)


class Encoder64(nn.Module):
    """Hierarchical encoder with a 64 x 64 receptive field: ``(B, 3, 64, 64) -> (B, 64, 1, 1)``.

    The K=32 encoder (``self.enc``, shared with the K=32 level) codes the four 32 x 32
    quadrants; the codes, tiled as a ``(B, 64, 2, 2)`` map, go through a 2x2 convolution
    (64 -> 128), LeakyReLU(0.1), a 1x1 convolution (128 -> 64) and tanh. ``init``: see
    :func:`init_convs`.
    """

    K = 64

    def __init__(self, init: str = "he") -> None:
        super().__init__()
        self.enc = Encoder32(init)
        self.head = nn.Sequential(
            nn.Conv2d(D, 128, 2), nn.LeakyReLU(0.1), nn.Conv2d(128, D, 1), nn.Tanh()
        )
        init_convs(self.head, init)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1:] != (3, self.K, self.K):
            raise ValueError(
                f"input must be (B, 3, 64, 64) patches, got {tuple(x.shape)}; "
                "use dense_codes for whole images"
            )
        h = Encoder32.K
        quadrants = torch.cat(
            [x[:, :, :h, :h], x[:, :, :h, h:], x[:, :, h:, :h], x[:, :, h:, h:]]
        )
        codes = self.enc(quadrants).view(4, x.shape[0], D)  # (4, B, D)
        tiled = codes.permute(1, 2, 0).reshape(
            x.shape[0], D, 2, 2
        )  # [[tl, tr], [bl, br]]
        return self.head(tiled)


class PositionClassifier(nn.Module):
    """Predicts which of the 8 :data:`DIRECTIONS` ``p2`` lies in from ``h1 - h2``: ``(B, 64) -> (B, 8)``.

    Fully connected 64-128-128-8 with LeakyReLU(0.1). (The official code normalises the last
    layer's weight under ``no_grad`` so that only its bias learns; this one is a plain MLP.)
    """

    def __init__(self, d: int = D, hidden: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(d, hidden),
            nn.LeakyReLU(0.1),
            nn.Linear(hidden, hidden),
            nn.LeakyReLU(0.1),
            nn.Linear(hidden, len(DIRECTIONS)),
        )

    def forward(self, h1: Tensor, h2: Tensor) -> Tensor:
        d = self.net[0].in_features
        if h1.shape != h2.shape or h1[0].numel() != d or h1.shape[0] == 0:
            raise ValueError(
                f"h1 and h2 must both be (B, {d}) codes (or (B, {d}, 1, 1)), B >= 1; "
                f"got {tuple(h1.shape)} and {tuple(h2.shape)}"
            )
        return self.net(h1.flatten(1) - h2.flatten(1))


# --- Training pairs ---------------------------------------------------------------------------


def _check_size(size: tuple[int, int], need: int, what: str) -> None:
    if len(size) != 2 or not all(isinstance(v, int) for v in size):
        raise ValueError(f"size must be (H, W), two integers, got {size!r}")
    if min(size) < need:
        raise ValueError(
            f"{what} needs images of at least {need} x {need} pixels, got {size[0]} x {size[1]}"
        )


def _uniform_int(
    low: Tensor, high: Tensor, generator: torch.Generator | None
) -> Tensor:
    """One integer uniform in ``[low, high]`` (inclusive) per element."""
    u = torch.rand(low.shape, generator=generator)
    return low + (u * (high - low + 1)).long().clamp_max(high - low)


def sample_position_pairs(
    n: int, size: tuple[int, int], k: int, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """``n`` self-supervised pairs: a K x K patch and one of its 8 neighbours, both inside the image.

    The neighbour lies in direction ``DIRECTIONS[label]`` at ``3K/4 + U{0, ..., K/4 - 1}``
    pixels along each non-zero axis. The first corner is drawn uniformly among the positions
    for which *both* patches fit in ``size = (H, W)`` (clipping the second patch to the image
    instead would move it and make its label wrong near the border).
    Returns ``p1 (n, 2)``, ``p2 (n, 2)`` top-left corners ``(y, x)`` and ``labels (n,)``.
    """
    _positive_int(n, "n", 0)
    _positive_int(k, "k (the patch size; at least 4 for the offset K/4)", 4)
    _check_size(size, 2 * k, f"position pairs with K={k}")
    labels = torch.randint(len(DIRECTIONS), (n,), generator=generator)
    direction = torch.tensor(DIRECTIONS)[labels]  # (n, 2)
    offset = 3 * k // 4 + torch.randint(
        k // 4, (n, 1), generator=generator
    )  # same on both axes
    shift = direction * offset
    limit = torch.tensor(size) - k  # largest corner
    p1 = _uniform_int((-shift).clamp_min(0), limit - shift.clamp_min(0), generator)
    return p1, p1 + shift, labels


def sample_svdd_pairs(
    n: int, size: tuple[int, int], k: int, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """``n`` SVDD' pairs: a K x K patch and the patch moved by ``(dy, dx)``, ``|dy|, |dx| <= K // 32``,
    never ``(0, 0)``, both inside the image. Returns corners ``p1, p2`` of shape ``(n, 2)``."""
    _positive_int(n, "n", 0)
    _positive_int(k, "k (the patch size)")
    j = max(1, k // 32)
    _check_size(size, k + j, f"SVDD' pairs with K={k}")
    jitter = torch.randint(-j, j + 1, (n, 2), generator=generator)
    zero = (jitter == 0).all(dim=1)
    while zero.any():  # redraw the (0, 0) jitters
        jitter[zero] = torch.randint(
            -j, j + 1, (int(zero.sum()), 2), generator=generator
        )
        zero = (jitter == 0).all(dim=1)
    limit = torch.tensor(size) - k
    p1 = _uniform_int((-jitter).clamp_min(0), limit - jitter.clamp_min(0), generator)
    return p1, p1 + jitter


def crop_patches(images: Tensor, index: Tensor, corners: Tensor, k: int) -> Tensor:
    """``(n, 3, k, k)`` patches ``images[index[i], :, y:y+k, x:x+k]`` for ``corners[i] = (y, x)``."""
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got {tuple(images.shape)}")
    _positive_int(k, "k (the patch size)")
    if corners.ndim != 2 or corners.shape[1] != 2 or index.shape != corners.shape[:1]:
        raise ValueError(
            f"index must be (n,) and corners (n, 2), got {tuple(index.shape)}, {tuple(corners.shape)}"
        )
    if index.is_floating_point() or corners.is_floating_point():
        raise ValueError(
            f"index and corners must be integer tensors, got {index.dtype}, {corners.dtype}"
        )
    if len(index) and not 0 <= int(index.min()) <= int(index.max()) < len(images):
        raise ValueError(
            f"index must lie in [0, {len(images) - 1}] (the images), got "
            f"{int(index.min())} .. {int(index.max())}"
        )
    h, w = images.shape[2:]
    if (
        (corners < 0).any()
        or (corners[:, 0] > h - k).any()
        or (corners[:, 1] > w - k).any()
    ):
        raise ValueError(
            f"a {k} x {k} patch at one of the corners leaves the {h} x {w} image"
        )
    r = torch.arange(k, device=images.device)
    corners = corners.to(images.device)
    rows = (corners[:, 0, None] + r)[:, :, None]  # (n, k, 1)
    cols = (corners[:, 1, None] + r)[:, None, :]  # (n, 1, k)
    picked = images[index.to(images.device)]  # (n, 3, H, W)
    n = picked.shape[0]
    return picked[
        torch.arange(n, device=images.device)[:, None, None], :, rows, cols
    ].permute(0, 3, 1, 2)


def perturb(
    patches: Tensor,
    shift: float = 0.1,
    noise: float = 0.02,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Anti-shortcut noise for the position task: add to every patch one random offset per
    colour channel (uniform in ``[-shift, shift]``) and i.i.d. pixel noise ``N(0, noise^2)``.
    ``patches``: floating ``(n, C, k, k)``; returns a new tensor of the same shape."""
    if patches.ndim != 4 or not patches.is_floating_point():
        raise ValueError(
            f"patches must be a floating (n, C, k, k) tensor, got {patches.dtype} "
            f"{tuple(patches.shape)}"
        )
    for name, value in (("shift", shift), ("noise", noise)):
        if not (isinstance(value, (int, float)) and 0 <= value < float("inf")):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    n, c = patches.shape[:2]
    offsets = (2 * torch.rand(n, c, 1, 1, generator=generator) - 1) * shift
    pixels = torch.randn(patches.shape, generator=generator) * noise
    return patches + (offsets + pixels).to(patches)


def perturbed_position_pairs(
    images: Tensor,
    n: int,
    k: int,
    shift: float,
    noise: float,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor, Tensor]:
    """``n`` examples of the position task from ``images (N, C, H, W)``: a random image per
    pair, a K-wide patch and one of its 8 neighbours (:func:`sample_position_pairs`), each
    :func:`perturb`-ed. Returns patches ``(n, C, k, k)`` twice and the direction labels
    ``(n,)``; draws from ``generator`` in that order, so :func:`train` and
    :func:`position_accuracy` see the same kind of pair."""
    index = torch.randint(images.shape[0], (n,), generator=generator)
    p1, p2, labels = sample_position_pairs(n, tuple(images.shape[2:]), k, generator)
    a, b = (
        perturb(crop_patches(images, index, p, k), shift, noise, generator)
        for p in (p1, p2)
    )
    return a, b, labels


def ssl_loss(classifier: nn.Module, h1: Tensor, h2: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy of the 8-way position classifier on ``h1 - h2``: codes ``(B, D)`` (or
    ``(B, D, 1, 1)``), ``labels (B,)`` integers in ``[0, 8)`` (indices into :data:`DIRECTIONS`)."""
    if labels.ndim != 1 or labels.shape[0] != h1.shape[0] or labels.is_floating_point():
        raise ValueError(
            f"labels must be (B,) integers for B = {h1.shape[0]} pairs, got "
            f"{labels.dtype} {tuple(labels.shape)}"
        )
    if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < len(
        DIRECTIONS
    ):
        raise ValueError(
            f"labels must be direction indices in [0, {len(DIRECTIONS) - 1}], got "
            f"{int(labels.min())} .. {int(labels.max())}"
        )
    return F.cross_entropy(classifier(h1, h2), labels.to(h1.device))


def svdd_loss(h1: Tensor, h2: Tensor) -> Tensor:
    """SVDD': mean (non-squared) L2 distance between the codes of neighbouring patches.

    ``h1``, ``h2``: codes ``(B, D)`` (or ``(B, D, 1, 1)``) of the same shape, ``B >= 1``."""
    if h1.shape != h2.shape or h1.ndim < 2 or h1.shape[0] == 0:
        raise ValueError(
            f"h1 and h2 must be codes of one shape (B, D), B >= 1; got "
            f"{tuple(h1.shape)} and {tuple(h2.shape)}"
        )
    return (h1.flatten(1) - h2.flatten(1)).norm(dim=1).mean()


# --- Training ---------------------------------------------------------------------------------


@dataclass
class History:
    """Mean of each loss term per epoch (epoch 1 first): keys ``ssl64, ssl32, svdd64, svdd32,
    total`` (only the trained levels' terms, and ``total``, when :func:`train` trains fewer)."""

    terms: dict[str, list[float]] = field(
        default_factory=lambda: {
            k: [] for k in ("ssl64", "ssl32", "svdd64", "svdd32", "total")
        }
    )

    @classmethod
    def for_levels(cls, levels: tuple[str, ...]) -> History:
        """An empty history with the terms of ``levels`` (e.g. ``("32",)``) and ``total``."""
        keys = [f"{task}{name}" for task in ("ssl", "svdd") for name in levels]
        return cls({k: [] for k in [*keys, "total"]})


def train(
    encoder: Encoder64,
    classifiers: nn.ModuleDict,
    images: Tensor,
    epochs: int,
    steps: int,
    batch: int = 64,
    lam: float = 1.0,
    lr: float = 1e-4,
    seed: int = 0,
    history: History | None = None,
    on_epoch: Callable[[int], None] | None = None,
    shift: float = 0.1,
    noise: float = 0.02,
    levels: tuple[str, ...] = ("64", "32"),
) -> History:
    """Train ``encoder`` (and ``classifiers['64']``, ``['32']``) with the Patch SVDD loss.

    ``images``: normal training images ``(N, 3, H, W)`` (already normalised), on the encoder's
    device. Each step draws ``batch`` images with replacement and, for each, one position pair
    and one SVDD' pair per level K = 64 and K = 32; the step minimises
    ``L_SSL64 + L_SSL32 + lam (L_SVDD'64 + L_SVDD'32)`` with Adam (``lr``; one optimiser for
    encoder and classifiers). An epoch is ``steps`` steps; ``on_epoch(epoch)`` is called after
    each (e.g. to evaluate). Sampling uses its own generator seeded by ``seed``. Each patch of
    a position pair is perturbed with :func:`perturb` (``shift``, ``noise``; in the images'
    units). ``levels=("32",)`` trains the K=32 level alone (its two terms only), e.g. to study
    the position task cheaply. Returns the (extended) :class:`History`.

    Raises ``ValueError`` for bad settings or images (NaN or inf pixels included), and
    ``FloatingPointError`` if a step's loss is not finite (before that step changes a weight).
    """
    _check_for_encoder(encoder, images)
    for value, what in ((epochs, "epochs"), (steps, "steps"), (batch, "batch")):
        _positive_int(value, what)
    if not 0 <= lam < float("inf"):
        raise ValueError(f"lam must be a finite number >= 0, got {lam!r}")
    if not 0 < lr < float("inf"):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if not levels or len(set(levels)) != len(levels) or not set(levels) <= set(LEVELS):
        raise ValueError(
            f"levels must be distinct names from {list(LEVELS)}, got {levels!r}"
        )
    if not set(levels) <= set(classifiers.keys()):
        raise ValueError(
            f"classifiers must hold one PositionClassifier per trained level, keys "
            f"{sorted(levels)}; got {sorted(classifiers.keys())}"
        )
    history = history or History.for_levels(levels)
    if set(history.terms) != set(History.for_levels(levels).terms):
        raise ValueError(
            f"history holds the terms {sorted(history.terms)}, not those of levels {levels}"
        )
    params = list(encoder.parameters()) + list(classifiers.parameters())
    optimiser = torch.optim.Adam(params, lr=lr)
    generator = torch.Generator().manual_seed(seed)
    size = tuple(images.shape[2:])
    nets = {"64": encoder, "32": encoder.enc}
    encoder.train()
    classifiers.train()
    for epoch in range(epochs):
        sums = dict.fromkeys(history.terms, 0.0)
        for step in range(steps):
            terms = {}
            for name in levels:
                net, k = nets[name], LEVELS[name]
                a, b, labels = perturbed_position_pairs(
                    images, batch, k, shift, noise, generator
                )
                h = net(torch.cat([a, b]))
                terms["ssl" + name] = ssl_loss(
                    classifiers[name], h[:batch], h[batch:], labels
                )
                idx = torch.randint(images.shape[0], (batch,), generator=generator)
                q1, q2 = sample_svdd_pairs(batch, size, k, generator)
                h = net(
                    torch.cat(
                        [
                            crop_patches(images, idx, q1, k),
                            crop_patches(images, idx, q2, k),
                        ]
                    )
                )
                terms["svdd" + name] = svdd_loss(h[:batch], h[batch:])
            loss = sum(terms["ssl" + n] for n in levels) + lam * sum(
                terms["svdd" + n] for n in levels
            )
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"the loss is not finite at epoch {len(history.terms['total']) + 1}, step "
                    f"{step + 1} ({', '.join(f'{k} {float(v.detach()):.3g}' for k, v in terms.items())}); "
                    "no weight was changed by this step (learning rate too large?)"
                )
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            terms["total"] = loss
            for key, value in terms.items():
                sums[key] += float(value.detach())
        for key in history.terms:
            history.terms[key].append(sums[key] / steps)
        if on_epoch is not None:
            on_epoch(len(history.terms["total"]))
    encoder.eval()
    classifiers.eval()
    return history


@torch.no_grad()
def position_accuracy(
    encoder: Encoder64,
    classifiers: nn.ModuleDict,
    images: Tensor,
    n: int = 1024,
    seed: int = 0,
    shift: float = 0.1,
    noise: float = 0.02,
    levels: tuple[str, ...] = ("64", "32"),
) -> dict[str, float]:
    """Share of ``n`` fresh position pairs per level whose direction the classifier gets right.

    ``images``: ``(N, 3, H, W)``, e.g. normal images held out of training; pairs are drawn as
    in :func:`train` (same perturbation) with a generator seeded by ``seed``. Returns
    ``{level: accuracy}`` for ``levels`` (default ``"64"`` and ``"32"``); chance is ``1 / 8``.
    """
    if not levels or not set(levels) <= set(LEVELS):
        raise ValueError(f"levels must be names from {list(LEVELS)}, got {levels!r}")
    _check_for_encoder(encoder, images)
    _positive_int(n, "n")
    generator = torch.Generator().manual_seed(seed)
    was_training = encoder.training, classifiers.training
    encoder.eval()
    classifiers.eval()
    accuracy = {}
    nets = {"64": encoder, "32": encoder.enc}
    for name in levels:
        net, k = nets[name], LEVELS[name]
        a, b, labels = perturbed_position_pairs(images, n, k, shift, noise, generator)
        logits = torch.cat(
            [
                classifiers[name](net(x), net(y))
                for x, y in zip(a.split(256), b.split(256))
            ]
        )
        accuracy[name] = float((logits.argmax(1).cpu() == labels).float().mean())
    encoder.train(was_training[0])
    classifiers.train(was_training[1])
    return accuracy


# --- Inference --------------------------------------------------------------------------------


def grid_size(size: int, k: int, stride: int) -> int:
    """Number of K-wide patches at ``stride`` along an axis of ``size`` pixels: ``(size - k) // stride + 1``."""
    for value, what in ((size, "size"), (k, "k (the patch size)"), (stride, "stride")):
        _positive_int(value, what)
    if size < k:
        raise ValueError(f"an axis of {size} pixels holds no {k}-pixel patch")
    return (size - k) // stride + 1


def _encoder_for(encoder: Encoder64, k: int) -> nn.Module:
    if k not in (32, 64):
        raise ValueError(f"k must be 32 or 64, got {k}")
    return encoder if k == 64 else encoder.enc


@torch.no_grad()
def patch_codes(
    encoder: Encoder64, images: Tensor, k: int, stride: int, batch: int = 1024
) -> Tensor:
    """Codes of every K x K patch at ``stride``, encoded one patch at a time (the obvious way).

    ``images``: ``(B, 3, H, W)``. Returns ``(B, 64, h, w)`` with ``h = grid_size(H, k, stride)``.
    Patches are cut with ``F.unfold`` and sent through the K=64 encoder (``k = 64``) or its
    K=32 encoder (``k = 32``), ``batch`` patches per call.
    """
    net = _encoder_for(encoder, k)
    _check_for_encoder(encoder, images)
    _positive_int(batch, "batch")
    b, c, height, width = images.shape
    h, w = grid_size(height, k, stride), grid_size(width, k, stride)
    cols = F.unfold(images, k, stride=stride)  # (B, 3 k k, h w)
    patches = cols.transpose(1, 2).reshape(-1, c, k, k)
    codes = torch.cat([net(p).flatten(1) for p in patches.split(batch)])  # (B h w, D)
    return codes.view(b, h, w, D).permute(0, 3, 1, 2)


@torch.no_grad()
def dense_codes(encoder: Encoder64, images: Tensor, k: int, stride: int) -> Tensor:
    """The same codes as :func:`patch_codes`, computed fully convolutionally.

    The K=32 encoder runs once over each whole image; its output ``(i, j)`` is the code of the
    patch at ``(2i, 2j)``, so ``stride`` (even) keeps every ``stride / 2``-th output. The K=64
    head's 2x2 convolution over the four quadrant codes (32 pixels = 16 outputs apart) is a
    2x2 convolution with dilation 16 on that stride-2 map; its 1x1 convolution and tanh follow.
    Returns ``(B, 64, h, w)``, ``h = grid_size(H, k, stride)``.
    """
    _encoder_for(encoder, k)
    _check_for_encoder(encoder, images)
    _positive_int(stride, "stride")
    if stride % 2:
        raise ValueError(
            f"dense_codes needs an even stride (the encoder's own stride is 2), got {stride}"
        )
    height, width = images.shape[2:]
    h, w = grid_size(height, k, stride), grid_size(width, k, stride)
    fine = encoder.enc(images)  # stride 2
    step = stride // 2
    if k == 32:
        return fine[:, :, ::step, ::step][:, :, :h, :w]
    conv2x2, act, conv1x1, tanh = encoder.head
    rows = fine[:, :, : (h - 1) * step + 17, : (w - 1) * step + 17]
    z = F.conv2d(rows, conv2x2.weight, conv2x2.bias, dilation=Encoder32.K // 2)
    return tanh(conv1x1(act(z[:, :, ::step, ::step])))


# --- Scores to maps ---------------------------------------------------------------------------


def spread(scores: Tensor, k: int, stride: int, size: tuple[int, int]) -> Tensor:
    """Give every pixel the mean score of the K x K patches covering it: ``(B, h, w) -> (B, H, W)``.

    Patch ``(i, j)`` covers rows ``i*stride .. i*stride + k - 1`` (and the same for columns).
    Computed as ``F.fold`` of the scores (each copied over its K x K window) divided by
    ``F.fold`` of ones (how many patches cover each pixel). Pixels no patch covers (the last
    ``(H - k) % stride`` rows or columns) get 0.
    """
    if scores.ndim != 3:
        raise ValueError(f"scores must be (B, h, w), got {tuple(scores.shape)}")
    if len(size) != 2:
        raise ValueError(f"size must be (H, W), got {size!r}")
    b, h, w = scores.shape
    if (h, w) != (grid_size(size[0], k, stride), grid_size(size[1], k, stride)):
        raise ValueError(
            f"a {h} x {w} grid is not the K={k}, stride {stride} grid of a "
            f"{size[0]} x {size[1]} image"
        )
    cols = scores.reshape(b, 1, h * w).expand(b, k * k, h * w)
    total = F.fold(cols, size, k, stride=stride)
    count = F.fold(torch.ones_like(cols[:1]), size, k, stride=stride)
    return (total / count.clamp_min(1))[:, 0]


def _check_memory(train_codes: dict[str, Tensor], strides: dict[str, int]) -> None:
    """Clear errors for a memory that does not fit its keys: a missing key, a tensor that is not
    ``(N, D, h, w)``, or the two levels' grids not being those of one image size at the K and
    stride of their keys (the keys swapped, or a memory built at other strides)."""
    for what, mapping in (("train_codes", train_codes), ("strides", strides)):
        if not isinstance(mapping, dict) or not set(LEVELS) <= set(mapping):
            keys = (
                sorted(mapping) if isinstance(mapping, dict) else type(mapping).__name__
            )
            raise ValueError(
                f"{what} must be a dict with the keys {sorted(LEVELS)} (K = 64 and "
                f"K = 32), got {keys}"
            )
    for name in LEVELS:
        _positive_int(strides[name], f"strides[{name!r}]")
        codes = train_codes[name]
        if not isinstance(codes, Tensor) or codes.ndim != 4 or codes.shape[1] != D:
            shape = (
                tuple(codes.shape)
                if isinstance(codes, Tensor)
                else type(codes).__name__
            )
            raise ValueError(
                f"train_codes[{name!r}] must be (N, {D}, h, w) codes (dense_codes), "
                f"got {shape}"
            )
    if train_codes["64"].shape[0] != train_codes["32"].shape[0]:
        raise ValueError(
            f"train_codes['64'] and ['32'] must code the same training images, got "
            f"{train_codes['64'].shape[0]} and {train_codes['32'].shape[0]} images"
        )
    for axis in (2, 3):
        low, high = (
            0,
            float("inf"),
        )  # image sizes consistent with both grids along this axis
        for name, k in LEVELS.items():
            cells, stride = train_codes[name].shape[axis], strides[name]
            low, high = (
                max(low, k + (cells - 1) * stride),
                min(high, k + cells * stride - 1),
            )
        if low > high:
            grids = " and ".join(
                f"{n!r}: {tuple(train_codes[n].shape[2:])}" for n in LEVELS
            )
            raise ValueError(
                f"train_codes grids {grids} are not the K=64 (stride "
                f"{strides['64']}) and K=32 (stride {strides['32']}) grids of one "
                "image size: are the keys swapped, or the memory built at other "
                "strides?"
            )


@torch.no_grad()
def anomaly_maps(
    encoder: Encoder64,
    train_codes: dict[str, Tensor],
    images: Tensor,
    strides: dict[str, int] | None = None,
    chunk: int | None = None,
) -> dict[str, Tensor]:
    """Anomaly maps of ``images`` ``(B, 3, H, W)`` at image size, keyed by :data:`MAP_NAMES`.

    ``train_codes``: ``{"64": (N, 64, h, w), "32": ...}`` codes of the normal training images
    (:func:`dense_codes`), computed at the same ``strides`` as the test grid. Each test patch
    scores its L2 distance to the nearest training code (any image, any position; exact), spread
    to pixels with :func:`spread`; ``sum`` and ``product`` combine the two levels. ``strides``
    default to 16 (K=64) and 4 (K=32). A missing key, or grids that cannot come from one image
    size at their key's K and stride (swapped keys), raise ``ValueError``.
    """
    strides = strides or {"64": 16, "32": 4}
    _check_memory(train_codes, strides)
    size = tuple(images.shape[2:])
    maps = {}
    for name, k in LEVELS.items():
        s = strides[name]
        test = dense_codes(encoder, images, k, s)
        scores = knn_patch_scores(train_codes[name], test, k=1, chunk=chunk, exact=True)
        maps[name] = spread(scores, k, s, size)
    maps["sum"] = maps["64"] + maps["32"]
    maps["product"] = maps["64"] * maps["32"]
    return maps
