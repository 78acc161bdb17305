"""Input-gradient saliency: guided backpropagation and guided Grad-CAM.

Explained in the *Grad-CAM* chapter (``notebooks/03_gradcam.ipynb``).

* :func:`guided_relus` - a context manager under which every ``nn.ReLU`` and ``nn.ReLU6`` of
  a model back-propagates only positive gradients where its input was positive
  (Springenberg et al., 2015); the modules are restored exactly on exit, also after an error.
* :func:`guided_backprop` - d score / d image under that rule, one target per image, batched.
* :func:`guided_grad_cam` - the upsampled Grad-CAM map times guided backprop (Selvaraju et al.).
* :func:`rgb_batch` - photos (grayscale, RGB, or RGBA rejected) as a float (B, 3, H, W) batch.

Only ReLUs that are *modules* are changed: a ``torch.relu`` or ``F.relu`` call inside some
``forward`` keeps its ordinary gradient (as in pytorch-grad-cam and Captum).
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from .cam import Target, evaluation_mode, gradient_input, layer_grad_cam, target_scores

GUIDED_TYPES = (nn.ReLU, nn.ReLU6)


class _GuidedClamp(torch.autograd.Function):
    """``clamp(x, 0, upper)`` forward; backward passes ``grad`` only where ``0 < x < upper``
    (the ordinary ReLU/ReLU6 gradient) *and* ``grad > 0`` (the guided rule)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, upper: float | None) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.upper = upper
        return x.clamp(min=0.0, max=upper)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (x,) = ctx.saved_tensors
        passes = (x > 0) & (grad > 0)
        if ctx.upper is not None:
            passes &= x < ctx.upper
        return torch.where(passes, grad, torch.zeros_like(grad)), None


def _guided_forward(module: nn.Module):
    upper = 6.0 if isinstance(module, nn.ReLU6) else None

    def forward(x: torch.Tensor) -> torch.Tensor:
        return _GuidedClamp.apply(x, upper)

    return forward


@contextmanager
def guided_relus(model: nn.Module) -> Iterator[int]:
    """Inside the block, every ``nn.ReLU``/``nn.ReLU6`` of ``model`` uses the guided rule.

    The forward values are unchanged (computed out of place, so an ``inplace=True`` module
    does not modify its input while guided); the backward pass keeps a gradient only where
    the forward input was positive (below 6 for ReLU6) and the incoming gradient is
    positive. Each module is patched, not replaced: the same objects stay in the model,
    hooks keep firing, and on exit (also when the block raises) each module's own
    ``forward`` is removed again, leaving its attributes (``inplace`` included) as they were.
    Yields the number of modules patched (0 means guided backprop is plain gradient).
    """
    patched = [m for m in model.modules() if isinstance(m, GUIDED_TYPES)]
    already = [m for m in patched if "forward" in m.__dict__]
    if already:
        raise RuntimeError(f"{len(already)} ReLU modules already have an instance-level forward "
                           "(nested guided_relus or another patch); refusing to stack patches")
    try:
        for module in patched:
            module.forward = _guided_forward(module)
        yield len(patched)
    finally:
        for module in patched:
            module.__dict__.pop("forward", None)


def guided_backprop(model: nn.Module, images: torch.Tensor, target: Target) -> torch.Tensor:
    """Guided backpropagation: d score / d images with :func:`guided_relus`, batched.

    ``model``: (B, 3, H, W) normalised images -> (B, K) logits (or a tuple/dict with a
    callable ``target`` that picks the scores); it is run in eval mode, whatever its mode,
    and left exactly as it was (:func:`utils.cam.evaluation_mode`), so images do not interact
    through batch norm and one backward pass serves the whole batch.
    ``target``: see :func:`utils.cam.target_scores` (one class per image allowed).
    Returns (B, 3, H, W) gradients in the input's units; parameter gradients untouched.
    Raises ``RuntimeError`` under ``torch.inference_mode()`` and ``ValueError`` when the target
    scores have no gradient path to the images (a target callable that detaches, a model that
    runs under ``torch.no_grad()`` inside): the answer would otherwise be all zeros.
    """
    x = gradient_input(images)
    with evaluation_mode(model), guided_relus(model), torch.enable_grad():
        scores = target_scores(model(x), target, batch_size=len(x))
        grad = None
        if scores.requires_grad:
            (grad,) = torch.autograd.grad(scores.sum(), x, allow_unused=True)
    if grad is None:
        raise ValueError("the target scores do not depend on the images (no gradient path): a target "
                         "callable that detaches the logits, or a forward pass under torch.no_grad() "
                         "inside the model; guided backprop would be all zeros")
    return grad


def guided_grad_cam(model: nn.Module, images: torch.Tensor, layer: str,
                    target: Target) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Guided Grad-CAM: Grad-CAM upsampled to the image, times guided backprop, per image.

    Returns ``(guided_cam, cam_maps, guided)``: (B, 3, H, W), (B, H, W) in [0, 1] (see
    :func:`utils.cam.layer_grad_cam`) and (B, 3, H, W). The paper multiplies by the raw
    upsampled map; min-max scaling the map only rescales each image's product by a
    positive constant (the map's minimum is 0 after its ReLU, except for all-zero maps).
    """
    cam_maps, _ = layer_grad_cam(model, images, layer, target)
    guided = guided_backprop(model, images, target)
    return guided * cam_maps[:, None], cam_maps, guided


def rgb_batch(images: np.ndarray | list) -> torch.Tensor:
    """Photos as a float (B, 3, H, W) tensor in [0, 1].

    Accepts one image or a list/array of equal-sized images, each (H, W) grayscale
    (repeated to 3 channels) or (H, W, 3) RGB; uint8 (0..255) or float (0..1). A 3-D array
    whose last axis has 3 or 4 entries is one colour image, any other 3-D array a batch of
    grayscale images. RGBA and other
    channel counts raise ``ValueError``: an alpha channel has no meaning to an ImageNet model,
    so composite it first (e.g. ``PIL.Image.open(p).convert("RGB")``).
    """
    if isinstance(images, (list, tuple)) and len({np.shape(image) for image in images}) > 1:
        raise ValueError(f"images must all have the same shape, got {sorted({np.shape(i) for i in images})}")
    arr = np.asarray(images)
    if arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (3, 4)):  # one image
        arr = arr[None]
    if arr.ndim == 3:  # (B, H, W) grayscale batch
        arr = arr[..., None]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3):
        raise ValueError(f"expected (H, W), (H, W, 3) or a batch of them; got shape {np.shape(images)} "
                         "(RGBA: convert to RGB first, e.g. PIL .convert('RGB'))")
    if arr.size == 0:
        raise ValueError(f"images are empty: shape {np.shape(images)}")
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / 255.0
    elif not np.issubdtype(arr.dtype, np.floating) or not (0 <= arr.min() and arr.max() <= 1):
        raise ValueError(f"expected uint8 images or floats in [0, 1], got {arr.dtype} "
                         f"in [{arr.min()}, {arr.max()}]")
    x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).permute(0, 3, 1, 2)
    return x.expand(-1, 3, -1, -1).contiguous() if x.shape[1] == 1 else x
