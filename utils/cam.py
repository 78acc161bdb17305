"""Class activation maps and turning them into boxes.

Explained in the *Class Activation Maps* chapter (``notebooks/02_cam.ipynb``).

* :func:`class_activation_maps` - CAM of Zhou et al. (2016): the last linear layer's
  weights applied at every position of the last feature map, ``M_k = sum_c W[k, c] A[c]``.
* :func:`upsample_maps` - resize maps to the image size.
* :func:`normalize_maps` - per-map min-max scaling to ``[0, 1]``.
* :func:`cam_to_boxes` - threshold a map, keep the largest connected component, return its box.
* :func:`grad_cam`, :func:`layer_grad_cam` - Grad-CAM of Selvaraju et al. (2017) from a layer's
  activations and gradients, and for any named layer of a model with a target per image
  (the *Grad-CAM* chapter, ``notebooks/03_gradcam.ipynb``).
* :func:`boostlu` - BoostLU of Kim et al. (2023): positive map values times ``alpha``
  (the *BoostLU* chapter, ``notebooks/08_boostlu.ipynb``).
* :func:`class_agnostic_map`, :func:`minmax_normalize`, :func:`cam_loss`,
  :func:`cam_loss_terms` - CAM-loss of Wang et al. (2021): the label's CAM pulled towards the
  class-agnostic map (the *CAM-loss* chapter, ``notebooks/04_camloss.ipynb``).

Boxes follow the convention of :mod:`utils.metrics`: ``(xmin, ymin, xmax, ymax)`` in pixel
*edge* coordinates, ``xmax``/``ymax`` exclusive. A box around pixel columns ``0..W-1`` and
rows ``0..H-1`` is ``(0, 0, W, H)``; its area is ``(xmax - xmin) * (ymax - ymin)``.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from .hooks import record

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
    if not features.is_floating_point() or not weight.is_floating_point():
        raise TypeError(f"features and weight must be float tensors, got {features.dtype} and {weight.dtype} "
                        "(integer arithmetic would truncate the maps); convert with .float()")
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


# --- Grad-CAM (the *Grad-CAM* chapter, notebooks/03_gradcam.ipynb) ---------------------------

Target = int | Sequence[int] | torch.Tensor | Callable[[torch.Tensor], torch.Tensor]


def grad_cam(features: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """Grad-CAM of Selvaraju et al. (2017): ``ReLU(sum_k alpha_k A_k)``, one map per image.

    ``features``: (B, C, H, W) activations A of the chosen layer; ``gradients``: the same
    shape, d y / d A for each image's target score y (pre-softmax). The channel weights
    ``alpha`` (B, C) are the spatial means of the gradients, and the weighted sum is the CAM
    core (:func:`class_activation_maps`) with one weight row per image.
    Returns (B, H, W) at the layer's resolution, not normalised (upsample and
    :func:`normalize_maps` for display). On a GAP + linear head it equals
    ``ReLU(CAM_target) / (H * W)`` (the chapter derives it; a test asserts it).
    """
    if not isinstance(features, torch.Tensor) or not isinstance(gradients, torch.Tensor):
        raise TypeError("features and gradients must be torch tensors")
    if features.ndim != 4 or gradients.shape != features.shape:
        raise ValueError(f"features and gradients must both be (B, C, H, W), got "
                         f"{tuple(features.shape)} and {tuple(gradients.shape)}")
    alpha = gradients.mean(dim=(2, 3))  # (B, C)
    maps = [class_activation_maps(f[None], a[None])[0, 0] for f, a in zip(features, alpha)]
    return torch.relu(torch.stack(maps))


def target_scores(logits: torch.Tensor, target: Target) -> torch.Tensor:
    """One score per image from (B, K) logits: ``target`` is a class index for every image,
    one index per image (sequence or (B,) tensor), or a callable ``logits -> (B,)`` scores."""
    if callable(target):
        scores = target(logits)
    else:
        index = torch.as_tensor(target, device=logits.device).long().reshape(-1)
        if index.numel() == 1:
            index = index.expand(len(logits))
        if index.numel() != len(logits):
            raise ValueError(f"got {index.numel()} targets for a batch of {len(logits)} images")
        if index.min() < 0 or index.max() >= logits.shape[1]:
            raise ValueError(f"target classes must be in [0, {logits.shape[1]}), got {index.tolist()}")
        scores = logits.gather(1, index[:, None])[:, 0]
    if not isinstance(scores, torch.Tensor) or scores.shape != (len(logits),):
        raise ValueError(f"a target callable must return one score per image, shape ({len(logits)},)")
    return scores


def layer_grad_cam(model: torch.nn.Module, images: torch.Tensor, layer: str, target: Target,
                   size: int | tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Grad-CAM of any named layer for a batch, with one target per image, in one backward pass.

    ``model``: (B, 3, H, W) normalised images -> (B, K) pre-softmax logits; put it in eval
    mode first (batch-norm statistics must not mix images). ``layer``: a name from
    ``model.named_modules()`` (a wrong name raises listing close names). ``target``: see
    :func:`target_scores`. ``size``: upsample the maps bilinearly to this size (default: the
    images' size); ``size=0`` keeps the layer's resolution.
    Returns ``(maps, logits)``: maps (B, h, w) min-max normalised per image to [0, 1] (the
    pytorch-grad-cam convention; a target that does not depend on the layer gives all
    zeros, never NaN) and the detached logits (B, K). The model's hooks are always removed
    and parameter gradients are left untouched.
    """
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ValueError(f"images must be a (B, C, H, W) tensor, got {getattr(images, 'shape', type(images))}")
    x = images.detach().requires_grad_(True)
    with record(model, [layer], gradients=True) as rec, torch.enable_grad():
        logits = model(x)
        scores = target_scores(logits, target)
        if scores.requires_grad:
            torch.autograd.grad(scores.sum(), x, allow_unused=True)
    features = rec.activations[layer]
    grads = rec.gradients.get(layer, torch.zeros_like(features))
    if features.ndim != 4:
        raise ValueError(f"layer {layer!r} gives {tuple(features.shape)}, not (B, C, H, W) feature maps; "
                         "reshape token layers before Grad-CAM")
    maps = grad_cam(features, grads)[:, None]
    if size != 0:
        maps = upsample_maps(maps, images.shape[-2:] if size is None else size)
    return normalize_maps(maps)[:, 0], logits.detach()


# --- CAM-loss (the *CAM-loss* chapter, notebooks/04_camloss.ipynb) ---------------------------
# Everything below runs inside a training step: no value checks, no host-device syncs.

#: Who updates what: "code" = the source post's code (W detached inside the CAM, so the
#: backbone learns from both terms and W from L_CE only); "text" = the post's text (L_CE
#: reaches only W, L_cam only the backbone); "joint" = nothing detached.
CAM_LOSS_VARIANTS = ("code", "text", "joint")
#: Epsilon of :func:`minmax_normalize` (the book's choice; the paper's is not known).
CAM_LOSS_EPS = 1e-6


def class_agnostic_map(features: torch.Tensor) -> torch.Tensor:
    """CAAM of Wang et al. (2021): the sum of the feature maps over channels.

    ``features``: (B, C, H, W). Returns (B, H, W); gradients flow through.
    """
    return features.sum(dim=1)


def label_cam(features: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """CAM of each image's own class: ``M[b] = sum_c weight[labels[b], c] * features[b, c]``.

    ``features``: (B, C, H, W); ``weight``: (K, C) linear-layer weight (detach it to keep
    the CAM term away from the classifier); ``labels``: (B,) int64 class indices.
    Returns (B, H, W). The same numbers as :func:`class_activation_maps` indexed at the
    labels, without its input checks (which would force a host-device sync).
    """
    return torch.einsum("bchw,bc->bhw", features, weight[labels].to(features.dtype))


def minmax_normalize(maps: torch.Tensor, eps: float = CAM_LOSS_EPS) -> torch.Tensor:
    """Min-max scale each map over its last two dimensions: ``(m - min) / (max - min + eps)``.

    ``maps``: (..., H, W) float. Values land in ``[0, 1)``. A constant map becomes all zeros
    with a finite gradient (of size up to ``1 / eps``), never NaN. Unlike
    :func:`normalize_maps` (for analysis: exact ``[0, 1]``, checks finiteness) it has no value
    checks, so it can sit in a training step.
    """
    low = maps.amin(dim=(-2, -1), keepdim=True)
    high = maps.amax(dim=(-2, -1), keepdim=True)
    return (maps - low) / (high - low + eps)


def cam_loss(features: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
             eps: float = CAM_LOSS_EPS) -> torch.Tensor:
    """The CAM-loss term: mean absolute difference of the normalised label CAM and CAAM.

    ``features`` (B, C, H, W), ``weight`` (K, C), ``labels`` (B,). Both maps are normalised
    with :func:`minmax_normalize`; the mean runs over B * H * W. Returns a scalar. Pass
    ``weight.detach()`` for the source post's rule (no gradient to the classifier).
    """
    cam = minmax_normalize(label_cam(features, weight, labels), eps)
    caam = minmax_normalize(class_agnostic_map(features), eps)
    return F.l1_loss(cam, caam)


def cam_loss_terms(features: torch.Tensor, head: torch.nn.Module, labels: torch.Tensor,
                   variant: str = "code", eps: float = CAM_LOSS_EPS
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(logits, L_CE, L_cam)`` for one batch, wired as ``variant`` says who updates what.

    ``features``: (B, C, H, W) output of the trainable body; ``head``: the CAM head
    (:func:`utils.models.gap_head`: pooling, flatten, ``fc``); ``labels``: (B,) int64.
    ``variant`` (see :data:`CAM_LOSS_VARIANTS`):

    * ``"code"``: logits from ``features``; CAM from ``head.fc.weight.detach()``. The body
      gets gradient from both terms, ``fc`` from L_CE only.
    * ``"text"``: logits from ``features.detach()``; CAM from the detached weight. The body
      gets gradient from L_cam only, ``fc`` from L_CE only.
    * ``"joint"``: nothing detached; both terms reach both.

    The caller adds them: ``loss = L_CE + alpha * L_cam`` (:func:`cam_loss_alpha`).
    """
    if variant not in CAM_LOSS_VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {', '.join(CAM_LOSS_VARIANTS)}")
    logits = head(features.detach() if variant == "text" else features)
    weight = head.fc.weight if variant == "joint" else head.fc.weight.detach()
    return logits, F.cross_entropy(logits, labels), cam_loss(features, weight, labels, eps)


def cam_loss_alpha(epoch: int, start_epoch: int = 10, alpha: float = 3.0) -> float:
    """Weight of the CAM term at ``epoch`` (1-based): 0 before ``start_epoch``, then ``alpha``.

    The defaults are the source post's (``if epoch >= 10: alpha = 3``); the paper's schedule
    is not known.
    """
    if epoch < 1 or start_epoch < 1:
        raise ValueError(f"epochs are 1-based, got epoch={epoch}, start_epoch={start_epoch}")
    return 0.0 if epoch < start_epoch else float(alpha)


def parameters_reached(loss: torch.Tensor, named_parameters: dict[str, torch.Tensor]) -> dict[str, bool]:
    """Which parameters ``loss`` sends a gradient to (structurally: a path in the graph).

    ``named_parameters``: name -> tensor (e.g. ``dict(model.named_parameters())``).
    Leaves ``.grad`` untouched (uses :func:`torch.autograd.grad`, keeping the graph).
    """
    names = [n for n, p in named_parameters.items() if p.requires_grad]
    if not loss.requires_grad:
        return {n: False for n in named_parameters}
    grads = torch.autograd.grad(loss, [named_parameters[n] for n in names], retain_graph=True,
                                allow_unused=True)
    reached = {n: g is not None for n, g in zip(names, grads)}
    return {n: reached.get(n, False) for n in named_parameters}
