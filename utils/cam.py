"""Class activation maps and turning them into boxes.

Explained in the *Class Activation Maps* chapter (``notebooks/02_cam.ipynb``).

* :func:`class_activation_maps` - CAM of Zhou et al. (2016): the last linear layer's
  weights applied at every position of the last feature map, ``M_k = sum_c W[k, c] A[c]``.
* :func:`upsample_maps` - resize maps to the image size.
* :func:`normalize_maps` - per-map min-max scaling to ``[0, 1]``.
* :func:`cam_to_boxes` - threshold a map, keep the largest connected component, return its box.
* :func:`boostlu` - BoostLU of Kim et al. (2023): positive map values times ``alpha``
  (the *BoostLU* chapter, ``notebooks/08_boostlu.ipynb``).

Boxes follow the convention of :mod:`utils.metrics`: ``(xmin, ymin, xmax, ymax)`` in pixel
*edge* coordinates, ``xmax``/``ymax`` exclusive. A box around pixel columns ``0..W-1`` and
rows ``0..H-1`` is ``(0, 0, W, H)``; its area is ``(xmax - xmin) * (ymax - ymin)``.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

UPSAMPLE_MODES = ("bilinear", "bicubic", "nearest")


def _check_finite(name: str, x: torch.Tensor) -> None:
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values")


def class_activation_maps(features: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Class activation maps ``M[b, k] = sum_c weight[k, c] * features[b, c]``.

    ``features``: (B, C, H, W) output of the last convolutional block.
    ``weight``: (K, C) weight matrix of the linear layer that follows global average
    pooling (``linear.weight``, one row per class; any number of classes K).
    Returns (B, K, H, W) on the features' device and dtype; gradients flow through.

    The bias of the linear layer is deliberately not an argument: it is a constant per
    class and says nothing about *where* the evidence is (see the chapter). Averaging
    the maps over (H, W) gives the logits without bias, exactly.
    """
    if not isinstance(features, torch.Tensor) or not isinstance(weight, torch.Tensor):
        raise TypeError("features and weight must be torch tensors")
    if features.ndim != 4:
        raise ValueError(f"features must have shape (B, C, H, W), got {tuple(features.shape)}")
    if weight.ndim != 2:
        raise ValueError(f"weight must have shape (K, C), got {tuple(weight.shape)}")
    if features.shape[1] != weight.shape[1]:
        raise ValueError(f"channel mismatch: features have C={features.shape[1]} channels "
                         f"but weight has {weight.shape[1]} columns (expected shape (K, {features.shape[1]}))")
    _check_finite("features", features)
    _check_finite("weight", weight)
    return torch.einsum("bchw,kc->bkhw", features, weight.to(features.dtype))


def upsample_maps(maps: torch.Tensor, size: int | tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Resize (B, K, h, w) maps to (B, K, H, W) with ``size = (H, W)`` (or one int for a square).

    Bilinear and bicubic use ``align_corners=False``: the map's cells are treated as
    covering the image in equal tiles, so cell centres land on the centres of the tiles.
    """
    if mode not in UPSAMPLE_MODES:
        raise ValueError(f"unknown upsampling mode {mode!r}; choose one of {', '.join(UPSAMPLE_MODES)}")
    if not isinstance(maps, torch.Tensor) or maps.ndim != 4:
        raise ValueError(f"maps must be a (B, K, h, w) tensor, got {getattr(maps, 'shape', type(maps))}")
    size = (size, size) if isinstance(size, int) else tuple(size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"size must be a positive int or (H, W), got {size}")
    kwargs = {} if mode == "nearest" else {"align_corners": False}
    return F.interpolate(maps, size=size, mode=mode, **kwargs)


def normalize_maps(maps: torch.Tensor) -> torch.Tensor:
    """Min-max scale each map (the last two dimensions) to ``[0, 1]``.

    Accepts (H, W) or any (..., H, W) tensor. A map whose values are all equal has no
    minimum or maximum location to stretch, so it becomes all zeros (never NaN).
    """
    if not isinstance(maps, torch.Tensor) or maps.ndim < 2 or maps.shape[-1] * maps.shape[-2] == 0:
        raise ValueError(f"maps must be a non-empty (..., H, W) tensor, got {getattr(maps, 'shape', type(maps))}")
    _check_finite("maps", maps)
    low = maps.amin(dim=(-2, -1), keepdim=True)
    span = maps.amax(dim=(-2, -1), keepdim=True) - low
    return torch.where(span > 0, (maps - low) / torch.where(span > 0, span, torch.ones_like(span)),
                       torch.zeros_like(maps))


def _box_of_one_map(cam: np.ndarray, rel_threshold: float) -> tuple[int, int, int, int]:
    height, width = cam.shape
    peak = cam.max()
    if peak <= 0:
        return (0, 0, width, height)
    components, count = ndimage.label(cam >= rel_threshold * peak, structure=np.ones((3, 3), dtype=int))
    sizes = np.bincount(components.ravel(), minlength=count + 1)[1:]
    rows, cols = np.nonzero(components == 1 + int(np.argmax(sizes)))
    return (int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1)


def cam_to_boxes(cam: torch.Tensor | np.ndarray, rel_threshold: float = 0.2) -> tuple[int, int, int, int] | np.ndarray:
    """Box ``(xmin, ymin, xmax, ymax)`` around the largest blob of ``cam >= rel_threshold * max``.

    ``cam``: one (H, W) map or a batch (B, H, W), in the image's pixel grid (upsample first).
    ``rel_threshold``: in ``[0, 1]``; the CAM paper uses 0.2 on a min-max normalised map,
    so call :func:`normalize_maps` first to reproduce it.
    Returns a tuple of 4 ints for one map, an int array (B, 4) for a batch; coordinates are
    pixel edges with exclusive ``xmax``/``ymax`` (see the module docstring).

    Defined edge cases:

    * blobs are 8-connected; among equally large blobs the first in row-major order wins;
    * a map whose maximum is ``<= 0`` (all-zero, all-equal non-positive, all-negative:
      no positive evidence anywhere) gives the whole image ``(0, 0, W, H)``;
    * an all-equal positive map passes the threshold everywhere, so also the whole image;
    * an empty map (H or W is 0), NaN/inf values or a threshold outside ``[0, 1]`` raise ``ValueError``.
    """
    if isinstance(cam, torch.Tensor):
        cam = cam.detach().cpu().numpy()
    cam = np.asarray(cam, dtype=np.float64)
    if cam.ndim not in (2, 3):
        raise ValueError(f"cam must have shape (H, W) or (B, H, W), got {cam.shape}")
    if cam.shape[-1] == 0 or cam.shape[-2] == 0:
        raise ValueError(f"cam is empty: shape {cam.shape}")
    if not np.isfinite(cam).all():
        raise ValueError("cam contains NaN or infinite values")
    if not 0.0 <= rel_threshold <= 1.0:
        raise ValueError(f"rel_threshold must be in [0, 1], got {rel_threshold}")
    if cam.ndim == 2:
        return _box_of_one_map(cam, rel_threshold)
    return np.array([_box_of_one_map(m, rel_threshold) for m in cam], dtype=np.int64).reshape(-1, 4)


def boostlu(x: torch.Tensor, alpha: float = 5.0) -> torch.Tensor:
    """BoostLU of Kim et al. (CVPR 2023): ``alpha * x`` where ``x > 0``, ``x`` elsewhere.

    Applied element-wise to class activation maps (B, K, H, W) *before* global average
    pooling, so the logit becomes ``mean(M) + (alpha - 1) * mean(ReLU(M))``. ``alpha >= 1``
    (the paper uses 5); ``alpha = 1`` is the identity. Any shape and float dtype; the
    gradient is ``alpha`` where ``x > 0`` and 1 elsewhere (at 0 it is 1). No value checks,
    so it can sit inside a training step without a host-device sync.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch tensor, got {type(x).__name__}")
    if not alpha >= 1:
        raise ValueError(f"alpha must be >= 1 (BoostLU amplifies positive evidence), got {alpha}")
    return torch.where(x > 0, x * alpha, x)
