"""Evaluation metrics shared by the chapters.

* Boxes and weakly supervised localisation (IoU, localisation accuracy): the CAM chapter.
* Pointing game (hits, class-averaged accuracy): the Grad-CAM chapter.
* Anomaly detection (image / pixel AUROC, PRO): the PaDiM chapter.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage, stats


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


# --- Pointing game (Grad-CAM chapter) -----------------------------------------------------
# Zhang et al. (2016) as implemented in TorchRay: a hit when a ground-truth pixel lies within
# ``tolerance_px`` of the map's maximum (TorchRay: 15 px at 224 px input). Boxes use the
# convention above, so box pixels are columns xmin..xmax-1 and rows ymin..ymax-1.


def pointing_game(maps: np.ndarray, boxes: np.ndarray, tolerance_px: float = 0.0) -> np.ndarray:
    """Per-image pointing-game hits: is the map's maximum within ``tolerance_px`` of the box?

    ``maps``: (B, H, W) saliency maps at the resolution the boxes are given in (pixels);
    ``boxes``: (B, 4) boxes (xmin, ymin, xmax, ymax), book convention (exclusive max).
    The maximum is the first one in row-major order (``argmax``); an all-constant map
    therefore points at pixel (0, 0). The distance is Euclidean from the maximum's pixel to
    the nearest box pixel, so ``tolerance_px=0`` means "inside the box".
    Returns (B,) booleans.
    """
    m = _as_float_array(maps, "maps")
    b = _as_boxes(boxes, "boxes")
    if m.ndim != 3 or b.ndim != 2 or len(m) != len(b):
        raise ValueError(f"maps must be (B, H, W) and boxes (B, 4) with the same B, got {m.shape} and {b.shape}")
    if m.size == 0:
        raise ValueError(f"pointing_game needs at least one map with at least one pixel, got maps of "
                         f"shape {m.shape}")
    if not 0 <= tolerance_px < float("inf"):
        raise ValueError(f"tolerance_px must be finite and >= 0, got {tolerance_px}")
    if ((b[:, 2] - b[:, 0]) < 1).any() or ((b[:, 3] - b[:, 1]) < 1).any():
        raise ValueError("every box must cover at least one pixel (xmax - xmin >= 1, ymax - ymin >= 1)")
    flat = m.reshape(len(m), -1).argmax(axis=1)
    rows, cols = np.unravel_index(flat, m.shape[1:])
    dx = np.maximum.reduce([b[:, 0] - cols, np.zeros(len(b)), cols - (b[:, 2] - 1)])
    dy = np.maximum.reduce([b[:, 1] - rows, np.zeros(len(b)), rows - (b[:, 3] - 1)])
    return dx ** 2 + dy ** 2 <= tolerance_px ** 2


def pointing_accuracy(hits: np.ndarray, classes: np.ndarray) -> float:
    """Class-averaged pointing-game accuracy: mean over classes of hits / (hits + misses).

    ``hits``: (N,) booleans from :func:`pointing_game`; ``classes``: (N,) class labels
    (any hashable values, e.g. ints or 'cat'/'dog'). Every class present counts once.
    """
    h = np.asarray(hits)
    c = np.asarray(classes)
    if h.dtype != bool or h.ndim != 1 or c.shape != h.shape or h.size == 0:
        raise ValueError(f"hits must be non-empty (N,) booleans and classes (N,), got {h.dtype} {h.shape} and {c.shape}")
    return float(np.mean([h[c == k].mean() for k in np.unique(c)]))


# --- Anomaly detection (PaDiM chapter) ----------------------------------------------------
# Scores: higher = more anomalous. Labels and masks: True / 1 = anomalous.


def _as_float_array(values: object, name: str) -> np.ndarray:
    arr = np.asarray(values.detach().cpu() if hasattr(values, "detach") else values, dtype=np.float64)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def _as_binary_array(values: object, name: str) -> np.ndarray:
    arr = np.asarray(values.detach().cpu() if hasattr(values, "detach") else values)
    if arr.dtype != bool:
        if not np.isin(arr, (0, 1)).all():
            raise ValueError(f"{name} must be binary (bool or 0/1), got values {np.unique(arr)[:5].tolist()}...")
        arr = arr.astype(bool)
    return arr


def _rank_auroc(scores: np.ndarray, positive: np.ndarray, what: str) -> float:
    """Area under the ROC curve as the Mann-Whitney U statistic (ties count one half)."""
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"AUROC needs both normal and anomalous {what}; got {n_pos} anomalous "
                         f"and {n_neg} normal")
    ranks = stats.rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def image_auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Image-level AUROC: probability that an anomalous image outscores a normal one.

    ``scores``: (N,) anomaly scores; ``labels``: (N,) booleans or 0/1 (1 = anomalous).
    """
    s, y = _as_float_array(scores, "scores"), _as_binary_array(labels, "labels")
    if s.ndim != 1 or s.shape != y.shape:
        raise ValueError(f"scores and labels must be aligned 1-D arrays, got {s.shape} and {y.shape}")
    if s.size == 0:
        raise ValueError("image_auroc needs at least one image score, got none")
    return _rank_auroc(s, y, "images")


def _maps_and_masks(maps: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    m, g = _as_float_array(maps, "maps"), _as_binary_array(masks, "masks")
    if m.shape != g.shape:
        raise ValueError(f"maps and masks must have the same shape, got {m.shape} and {g.shape}")
    if m.ndim == 2:
        m, g = m[None], g[None]
    if m.ndim != 3:
        raise ValueError(f"maps and masks must be (N, H, W) or (H, W), got {m.shape}")
    if m.size == 0:
        raise ValueError(f"maps and masks need at least one map with at least one pixel, got shape {m.shape}")
    return m, g


def pixel_auroc(maps: np.ndarray, masks: np.ndarray) -> float:
    """Pixel-level AUROC over all pixels of all images pooled.

    ``maps``: (N, H, W) anomaly maps; ``masks``: (N, H, W) ground truth (True = defect).
    """
    m, g = _maps_and_masks(maps, masks)
    return _rank_auroc(m.ravel(), g.ravel(), "pixels")


def pro_curve(maps: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-region-overlap curve at every distinct threshold (predicted anomalous: map >= t).

    Regions are the 8-connected components of each ground-truth mask. For a threshold,
    PRO is the mean over all regions (of all images) of the fraction of the region
    predicted anomalous, and FPR the fraction of normal pixels (all images) predicted
    anomalous. Returns ``(fpr, pro)``, both non-decreasing, starting at ``(0, 0)``
    (threshold above every score) and ending at ``(1, 1)``. Exact, in one sort.
    """
    m, g = _maps_and_masks(maps, masks)
    region = np.zeros(m.shape, dtype=np.int64)
    n_regions = 0
    for i, mask in enumerate(g):
        labelled, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=int))
        region[i] = np.where(labelled > 0, labelled + n_regions, 0)
        n_regions += count
    n_normal = int((~g).sum())
    if n_regions == 0:
        raise ValueError("PRO needs anomalous regions, but every mask is empty")
    if n_normal == 0:
        raise ValueError("PRO needs normal pixels for the false-positive rate, but every pixel is anomalous")
    region = region.ravel()
    sizes = np.bincount(region)
    pro_weight = np.where(region > 0, 1.0 / (n_regions * sizes[region]), 0.0)
    fpr_weight = np.where(region == 0, 1.0 / n_normal, 0.0)
    order = np.argsort(-m.ravel(), kind="stable")
    scores = m.ravel()[order]
    last_of_each_score = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]
    fpr = np.r_[0.0, np.cumsum(fpr_weight[order])[last_of_each_score]]
    pro = np.r_[0.0, np.cumsum(pro_weight[order])[last_of_each_score]]
    fpr[-1] = pro[-1] = 1.0  # every pixel predicted anomalous (removes rounding in the sums)
    return np.minimum(fpr, 1.0), np.minimum(pro, 1.0)


def pro_score(maps: np.ndarray, masks: np.ndarray, fpr_limit: float = 0.3) -> float:
    """Area under the PRO curve for FPR in [0, ``fpr_limit``], divided by ``fpr_limit``.

    The MVTec AD protocol: the curve of :func:`pro_curve` integrated with the trapezoid
    rule, its value at ``fpr_limit`` linearly interpolated; 1.0 is perfect.
    """
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    fpr, pro = pro_curve(maps, masks)
    inside = int(np.searchsorted(fpr, fpr_limit, side="right"))
    x, y = fpr[:inside], pro[:inside]
    if x[-1] < fpr_limit:
        x0, x1, y0, y1 = fpr[inside - 1], fpr[inside], pro[inside - 1], pro[inside]
        x, y = np.r_[x, fpr_limit], np.r_[y, y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)]
    return float(np.trapezoid(y, x) / fpr_limit)
