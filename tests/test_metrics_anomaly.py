"""Tests of the anomaly metrics in utils.metrics (PaDiM chapter): AUROC and PRO."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.measure import label
from sklearn.metrics import roc_auc_score

from utils.metrics import image_auroc, pixel_auroc, pro_curve, pro_score


def slow_pro_points(maps: np.ndarray, masks: np.ndarray) -> list[tuple[float, float]]:
    """(FPR, PRO) threshold by threshold, every distinct score, written the obvious way."""
    regions = []
    for i in range(len(masks)):
        labelled = label(masks[i], connectivity=2)
        regions += [(i, labelled == r) for r in range(1, labelled.max() + 1)]
    normal = ~masks
    points = [(0.0, 0.0)]
    for t in sorted(np.unique(maps), reverse=True):
        predicted = maps >= t
        fpr = (predicted & normal).sum() / normal.sum()
        pro = np.mean([predicted[i][region].mean() for i, region in regions])
        points.append((fpr, pro))
    return points


def slow_pro_score(maps: np.ndarray, masks: np.ndarray, limit: float) -> float:
    """Trapezoids segment by segment, the last one cut at ``limit``; divided by ``limit``."""
    points = slow_pro_points(maps, masks)
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 >= limit:
            break
        if x1 <= limit:
            area += (x1 - x0) * (y0 + y1) / 2
        else:
            y = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            area += (limit - x0) * (y0 + y) / 2
            break
    return area / limit


def random_case(seed: int, levels: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Four 12x10 maps with a few blob-shaped defects; ``levels`` quantises scores (ties)."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((4, 12, 10), dtype=bool)
    masks[0, 2:5, 3:6] = True
    masks[0, 8:10, 1:3] = True
    masks[1, 6:7, 6:9] = True
    masks[1, 7, 9] = True  # touches the previous region diagonally: one 8-connected region
    masks[3, 0:2, 0:10] = True
    maps = rng.normal(size=masks.shape) + 1.5 * masks * rng.uniform(0.2, 1.0, size=masks.shape)
    if levels is not None:
        maps = np.round(maps * levels) / levels
    return maps, masks


@pytest.mark.parametrize("seed,levels", [(0, None), (1, None), (2, 4), (3, 1)])
@pytest.mark.parametrize("limit", [0.05, 0.3, 1.0])
def test_pro_score_matches_threshold_by_threshold_reference(seed, levels, limit):
    maps, masks = random_case(seed, levels)
    assert pro_score(maps, masks, fpr_limit=limit) == pytest.approx(slow_pro_score(maps, masks, limit), abs=1e-12)


def test_pro_curve_points_match_reference():
    maps, masks = random_case(4, levels=3)
    fpr, pro = pro_curve(maps, masks)
    reference = np.array(slow_pro_points(maps, masks))
    np.testing.assert_allclose(fpr, reference[:, 0], atol=1e-12)
    np.testing.assert_allclose(pro, reference[:, 1], atol=1e-12)
    assert (fpr[-1], pro[-1]) == (1.0, 1.0)


def test_pro_by_hand():
    masks = np.zeros((1, 4, 4), dtype=bool)
    masks[0, 0, 0] = True            # region A: 1 pixel
    masks[0, 3, 1:4] = True          # region B: 3 pixels
    perfect = masks.astype(float)
    assert pro_score(perfect, masks) == pytest.approx(1.0)
    # A and one pixel of B score highest, then the other two of B, then the 12 normal pixels.
    maps = np.zeros((1, 4, 4))
    maps[0, 0, 0], maps[0, 3, 1], maps[0, 3, 2:4] = 3.0, 3.0, 2.0
    fpr, pro = pro_curve(maps, masks)
    np.testing.assert_allclose(fpr, [0, 0, 0, 1])
    np.testing.assert_allclose(pro, [0, (1 + 1 / 3) / 2, 1, 1])
    # Scoring every normal pixel above the defects: PRO stays 0 up to FPR 1.
    assert pro_score(1.0 - masks, masks, fpr_limit=0.3) == 0.0


def test_aurocs_match_sklearn_with_ties():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, size=200).astype(bool)
    scores = np.round(rng.normal(size=200) + labels, 1)
    assert image_auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    maps, masks = random_case(5, levels=2)
    assert pixel_auroc(maps, masks) == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-12)
    assert pixel_auroc(torch.from_numpy(maps), torch.from_numpy(masks)) == pixel_auroc(maps, masks)
    assert image_auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)


def test_anomaly_metrics_bad_inputs():
    maps, masks = random_case(0)
    with pytest.raises(ValueError, match="same shape"):
        pixel_auroc(maps, masks[:, :-1])
    with pytest.raises(ValueError, match="same shape"):
        pro_score(maps[:2], masks)
    with pytest.raises(ValueError, match="both normal and anomalous pixels"):
        pixel_auroc(maps, np.zeros_like(masks))
    with pytest.raises(ValueError, match="every mask is empty"):
        pro_score(maps, np.zeros_like(masks))
    with pytest.raises(ValueError, match="every pixel is anomalous"):
        pro_score(maps, np.ones_like(masks))
    with pytest.raises(ValueError, match="binary"):
        pixel_auroc(maps, masks * 255)
    with pytest.raises(ValueError, match="NaN"):
        pixel_auroc(np.where(masks, np.nan, maps), masks)
    with pytest.raises(ValueError, match="fpr_limit"):
        pro_score(maps, masks, fpr_limit=0.0)
    with pytest.raises(ValueError, match="both normal and anomalous images"):
        image_auroc([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match="aligned 1-D"):
        image_auroc([0.1, 0.2, 0.3], [0, 1])
