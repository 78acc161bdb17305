"""Evaluation metrics shared by the chapters.

* Boxes and weakly supervised localisation (IoU, localisation accuracy): the CAM chapter.
* Anomaly detection (image / pixel AUROC, PRO): the PaDiM chapter.
"""
from __future__ import annotations

import numpy as np


# --- Boxes and weakly supervised localisation (CAM chapter) -------------------------------
# Convention: a box is (xmin, ymin, xmax, ymax) in pixel *edge* coordinates with exclusive
# xmax/ymax, so a box covering pixel columns 0..W-1 and rows 0..H-1 is (0, 0, W, H) and its
# area is (xmax - xmin) * (ymax - ymin). Scaling an image by s scales its boxes by s.
# utils.cam.cam_to_boxes returns boxes in this convention; VOC XML files store 1-based
# inclusive pixel indices, which map to (xmin - 1, ymin - 1, xmax, ymax).


def _as_boxes(boxes: np.ndarray | list | tuple, name: str) -> np.ndarray:
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.ndim not in (1, 2) or arr.shape[-1] != 4:
        raise ValueError(f"{name} must have shape (4,) or (N, 4) as (xmin, ymin, xmax, ymax), got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite coordinates")
    if (arr[..., 2] < arr[..., 0]).any() or (arr[..., 3] < arr[..., 1]).any():
        raise ValueError(f"{name} has a box with xmax < xmin or ymax < ymin")
    return arr


def box_iou(a: np.ndarray | list | tuple, b: np.ndarray | list | tuple) -> float | np.ndarray:
    """Intersection over union of boxes ``a`` and ``b`` (convention: see the comment above).

    ``a`` and ``b``: one box (4,) each, giving a float, or aligned arrays (N, 4), giving
    an (N,) array with the IoU of ``a[i]`` and ``b[i]``. Two empty (zero-area) boxes
    have IoU 0. Mismatched N, NaN or inverted boxes raise ``ValueError``.
    """
    a, b = _as_boxes(a, "a"), _as_boxes(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape (aligned pairs), got {a.shape} and {b.shape}")
    width = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    height = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = width * height
    union = ((a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
             + (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1]) - inter)
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    return float(iou) if iou.ndim == 0 else iou


def localization_accuracy(pred_boxes: np.ndarray, gt_boxes: np.ndarray, iou_threshold: float = 0.5,
                          correct_class: np.ndarray | None = None) -> float:
    """Fraction of images whose predicted box has IoU >= ``iou_threshold`` with the ground truth.

    ``pred_boxes``, ``gt_boxes``: aligned (N, 4) arrays, one box per image.
    ``correct_class``: optional (N,) booleans; when given, an image counts only if its
    class was also predicted correctly (the ILSVRC rule: localisation error =
    1 - this accuracy with the top-1 or top-5 class).
    """
    if not 0.0 <= iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in [0, 1], got {iou_threshold}")
    pred, gt = _as_boxes(pred_boxes, "pred_boxes"), _as_boxes(gt_boxes, "gt_boxes")
    if pred.ndim != 2 or len(pred) == 0:
        raise ValueError(f"pred_boxes must be a non-empty (N, 4) array, got {pred.shape}")
    hits = box_iou(pred, gt) >= iou_threshold
    if correct_class is not None:
        correct = np.asarray(correct_class)
        if correct.shape != hits.shape or correct.dtype != bool:
            raise ValueError(f"correct_class must be {len(hits)} booleans, got {correct.dtype} {correct.shape}")
        hits &= correct
    return float(hits.mean())
