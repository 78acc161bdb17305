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
* :func:`teacher_cam_targets`, :func:`caam_cam_distillation_loss` - CAAM-CAM matching
  distillation of the same paper: a trained teacher's CAM of the label supervises a
  student's class-agnostic map (same chapter).

Boxes follow the convention of :mod:`utils.metrics`: ``(xmin, ymin, xmax, ymax)`` in pixel
*edge* coordinates, ``xmax``/``ymax`` exclusive. A box around pixel columns ``0..W-1`` and
rows ``0..H-1`` is ``(0, 0, W, H)``; its area is ``(xmax - xmin) * (ymax - ymin)``.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from numbers import Integral, Real

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
    if not maps.is_floating_point():
        raise TypeError(f"maps must be a float tensor to be interpolated, got {maps.dtype}")
    if isinstance(size, Integral):
        size = (size, size)
    elif isinstance(size, (tuple, list)):  # torch.Size is a tuple
        size = tuple(size)
    if (not isinstance(size, tuple) or len(size) != 2 or not all(isinstance(s, Integral) for s in size)
            or min(size) < 1):
        raise ValueError(f"size must be a positive int or (H, W) of ints, got {size!r}")
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
    if not isinstance(rel_threshold, Real) or not 0.0 <= rel_threshold <= 1.0:
        raise ValueError(f"rel_threshold must be a number in [0, 1], got {rel_threshold!r}")
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
    if not isinstance(alpha, Real) or not alpha >= 1:
        raise ValueError(f"alpha must be a number >= 1 (BoostLU amplifies positive evidence), got {alpha!r}")
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
    if len(features) == 0:
        raise ValueError("grad_cam needs at least one image, got an empty batch")
    if not features.is_floating_point() or not gradients.is_floating_point():
        raise TypeError(f"features and gradients must be float tensors, got {features.dtype} and {gradients.dtype}")
    _check_finite("gradients", gradients)
    alpha = gradients.mean(dim=(2, 3))  # (B, C)
    maps = [class_activation_maps(f[None], a[None])[0, 0] for f, a in zip(features, alpha)]
    return torch.relu(torch.stack(maps))


def target_scores(logits: torch.Tensor | tuple | dict, target: Target,
                  batch_size: int | None = None) -> torch.Tensor:
    """One score per image from a model's output.

    ``logits``: (B, K) pre-softmax logits, or whatever the model returned (a tuple, a dict).
    ``target``: a class index for every image, one index per image (a sequence or a (B,)
    integer tensor), or a callable ``output -> (B,)`` scores. A callable receives the model's
    output as it is, which is the way to pick the logits of a model returning a tuple or a
    dict (e.g. ``lambda out: out["logits"][:, 3]``). ``batch_size``: B, needed only when the
    output is not a tensor (the entry points pass the number of images).
    """
    if batch_size is None:
        if not isinstance(logits, torch.Tensor):
            raise TypeError(f"expected (B, K) logits, got a {type(logits).__name__}")
        batch_size = len(logits)
    if callable(target):
        scores = target(logits)
    else:
        scores = _indexed_scores(logits, target, batch_size)
    if not isinstance(scores, torch.Tensor) or scores.shape != (batch_size,):
        raise ValueError(f"a target callable must return one score per image, shape ({batch_size},), got "
                         f"{tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__}")
    return scores


def _indexed_scores(logits: torch.Tensor, target: Target, batch_size: int) -> torch.Tensor:
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"the model returned a {type(logits).__name__}, not a (B, K) logits tensor; pass a "
                        "callable target that picks the scores from it, e.g. "
                        "target=lambda out: out[0][:, k] (a tuple) or out['logits'][:, k] (a dict)")
    if logits.ndim != 2:
        raise ValueError(f"class-index targets need (B, K) logits, got shape {tuple(logits.shape)}; "
                         "pass a callable target for other outputs")
    index = torch.as_tensor(target, device=logits.device)
    if index.is_floating_point() or index.is_complex() or index.dtype == torch.bool:
        raise TypeError(f"target classes must be integers, got {index.dtype}")
    index = index.long().reshape(-1)
    if index.numel() == 1:
        index = index.expand(batch_size)
    if index.numel() != batch_size:
        raise ValueError(f"got {index.numel()} targets for a batch of {batch_size} images")
    if index.min() < 0 or index.max() >= logits.shape[1]:
        raise ValueError(f"target classes must be in [0, {logits.shape[1]}), got {index.tolist()}")
    return logits.gather(1, index[:, None])[:, 0]


def _batchnorm_without_statistics(model: torch.nn.Module) -> list[str]:
    return [name or type(model).__name__ for name, m in model.named_modules()
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_mean is None]


@contextmanager
def evaluation_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Inside the block ``model`` is in eval mode; on exit (also after an error) every module's
    ``training`` flag and every buffer (batch-norm running statistics and counters) is put back
    exactly as it was.

    Saliency maps are computed in eval mode so that images do not mix through batch-norm
    statistics (a map then does not depend on the rest of the batch) and dropout is off. A
    batch norm built with ``track_running_stats=False`` normalises with the batch's own
    statistics even in eval mode, so it is refused with ``ValueError``.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    mixing = _batchnorm_without_statistics(model)
    if mixing:
        raise ValueError(f"batch-norm layers without running statistics ({', '.join(mixing[:5])}) mix the "
                         "images of a batch even in eval mode; saliency maps would depend on the batch")
    modes = [(module, module.training) for module in model.modules()]
    saved = [(buffer, buffer.detach().clone()) for buffer in model.buffers()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


def gradient_input(images: torch.Tensor) -> torch.Tensor:
    """Check a (B, C, H, W) float batch for a gradient method; return a fresh leaf that requires grad.

    Raises for a non-tensor, another rank, an empty batch, an integer dtype, NaN/inf values,
    and a call under ``torch.inference_mode()`` (no gradient can be computed there, and the
    mode cannot be switched off from inside it: call the method outside the block). Images
    made under inference mode are copied, so they work once the mode has been left.
    """
    if torch.is_inference_mode_enabled():
        raise RuntimeError("gradient-based maps cannot be computed under torch.inference_mode(): autograd "
                           "records nothing there, and the mode cannot be left from inside the block; "
                           "call this outside it (torch.no_grad() around the call is fine)")
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ValueError(f"images must be a (B, C, H, W) tensor, got {getattr(images, 'shape', type(images))}")
    if len(images) == 0 or images[0].numel() == 0:
        raise ValueError(f"images must hold at least one non-empty image, got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"images must be a float tensor (normalised images), got {images.dtype}")
    _check_finite("images", images)
    return images.detach().clone().requires_grad_(True)


def _detached(output: object) -> object:
    if isinstance(output, torch.Tensor):
        return output.detach()
    if isinstance(output, (tuple, list)):
        return type(output)(_detached(o) for o in output)
    if isinstance(output, dict):
        return {key: _detached(value) for key, value in output.items()}
    return output


def layer_grad_cam(model: torch.nn.Module, images: torch.Tensor, layer: str, target: Target,
                   size: int | tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Grad-CAM of any named layer for a batch, with one target per image, in one backward pass.

    ``model``: (B, 3, H, W) normalised images -> (B, K) pre-softmax logits (or a tuple/dict
    with a callable ``target`` that picks the scores). It is run in eval mode, whatever its
    mode, and left exactly as it was (:func:`evaluation_mode`), so batch-norm statistics
    never mix images. ``layer``: a name from ``model.named_modules()`` (a wrong name raises
    listing close names). ``target``: see :func:`target_scores`. ``size``: upsample the maps
    bilinearly to this size (default: the images' size); ``size=0`` keeps the layer's
    resolution. Images are checked by :func:`gradient_input`.
    Returns ``(maps, logits)``: maps (B, h, w) min-max normalised per image to [0, 1] (the
    pytorch-grad-cam convention; a target that does not depend on the layer gives all
    zeros, never NaN) and the model's output, detached. The model's hooks are always removed
    and parameter gradients are left untouched.
    """
    x = gradient_input(images)
    with evaluation_mode(model), record(model, [layer], gradients=True) as rec, torch.enable_grad():
        logits = model(x)
        scores = target_scores(logits, target, batch_size=len(x))
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
    return normalize_maps(maps)[:, 0], _detached(logits)


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


# --- CAAM-CAM matching distillation (the *CAM-loss* chapter) ---------------------------------
# Shape checks only (no value checks): these run inside a training step.


def _check_teacher(
    teacher_features: torch.Tensor, teacher_weight: torch.Tensor, labels: torch.Tensor
) -> None:
    if teacher_features.ndim != 4:
        raise ValueError(
            f"teacher features must be (B, C, H, W), got {tuple(teacher_features.shape)}"
        )
    if teacher_weight.ndim != 2 or teacher_weight.shape[1] != teacher_features.shape[1]:
        raise ValueError(
            f"teacher_weight must be (K, {teacher_features.shape[1]}) to match the "
            f"teacher's channels, got {tuple(teacher_weight.shape)}"
        )
    if labels.shape != (teacher_features.shape[0],) or labels.is_floating_point():
        raise ValueError(
            f"labels must be ({teacher_features.shape[0]},) integer class indices, got "
            f"shape {tuple(labels.shape)} and dtype {labels.dtype}"
        )


def teacher_cam_targets(
    teacher_features: torch.Tensor,
    teacher_weight: torch.Tensor,
    labels: torch.Tensor,
    size: tuple[int, int] | None = None,
    eps: float = CAM_LOSS_EPS,
) -> torch.Tensor:
    """The teacher's CAM of each image's label, as a target map: detached and normalised.

    ``teacher_features``: (B, C_t, H_t, W_t); ``teacher_weight``: (K, C_t), the teacher's
    linear-layer weight; ``labels``: (B,) int64. The raw CAM (:func:`label_cam`) is resized
    to ``size = (H, W)`` when given (bilinear, ``align_corners=False``), then min-max
    normalised per map (:func:`minmax_normalize`). Returns (B, H, W) without a gradient
    path: the teacher is never updated by a distillation loss.
    """
    _check_teacher(teacher_features, teacher_weight, labels)
    with torch.no_grad():
        maps = label_cam(teacher_features.detach(), teacher_weight.detach(), labels)
        if size is not None and tuple(size) != tuple(maps.shape[-2:]):
            maps = F.interpolate(
                maps[:, None], size=tuple(size), mode="bilinear", align_corners=False
            )[:, 0]
        return minmax_normalize(maps, eps)


def caam_cam_distillation_loss(
    student_features: torch.Tensor,
    teacher_features: torch.Tensor,
    teacher_weight: torch.Tensor,
    labels: torch.Tensor,
    eps: float = CAM_LOSS_EPS,
) -> torch.Tensor:
    """CAAM-CAM matching (Wang et al., 2021): the teacher's CAM supervises the student's CAAM.

    ``student_features``: (B, C_s, H_s, W_s), the student's last feature maps (any number
    of channels; the student needs no classifier for this term); ``teacher_features``:
    (B, C_t, H_t, W_t) and ``teacher_weight``: (K, C_t) from the trained teacher;
    ``labels``: (B,) int64. The teacher's label CAM is resized to the student's grid
    (:func:`teacher_cam_targets`); both maps are min-max normalised; the loss is their
    mean absolute difference over B * H_s * W_s, a scalar. Gradients reach only the
    student's features. Shape errors raise :class:`ValueError`; no value checks (no
    host-device sync), so it can sit in a training step.
    """
    _check_teacher(teacher_features, teacher_weight, labels)
    if student_features.ndim != 4 or len(student_features) != len(teacher_features):
        raise ValueError(
            "student features must be (B, C, H, W) with the teacher's batch size "
            f"{len(teacher_features)}, got {tuple(student_features.shape)}"
        )
    target = teacher_cam_targets(
        teacher_features, teacher_weight, labels, tuple(student_features.shape[-2:]), eps
    )
    student = minmax_normalize(class_agnostic_map(student_features), eps)
    return F.l1_loss(student, target.to(student.dtype))
