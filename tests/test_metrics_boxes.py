"""Tests of the box metrics in utils.metrics against IoU computed by rasterising boxes."""
import numpy as np
import pytest

from utils.metrics import box_iou, localization_accuracy


def iou_by_rasterising(a, b, size=40):
    """Paint both boxes on a pixel grid (edge coordinates, exclusive max) and count pixels."""
    grid_a, grid_b = np.zeros((size, size), bool), np.zeros((size, size), bool)
    grid_a[a[1]:a[3], a[0]:a[2]] = True
    grid_b[b[1]:b[3], b[0]:b[2]] = True
    union = (grid_a | grid_b).sum()
    return (grid_a & grid_b).sum() / union if union else 0.0


def random_boxes(rng, n, size=40):
    corners = rng.integers(0, size + 1, size=(n, 2, 2))
    lo, hi = corners.min(axis=1), corners.max(axis=1)
    return np.concatenate([lo, hi], axis=1)        # (xmin, ymin, xmax, ymax)


def test_box_iou_hand_examples():
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert box_iou((0, 0, 10, 10), (10, 0, 20, 10)) == 0.0     # touching edges share no pixel
    assert box_iou((0, 0, 4, 4), (1, 1, 3, 3)) == pytest.approx(4 / 16)
    assert box_iou((3, 3, 3, 3), (3, 3, 3, 3)) == 0.0          # two empty boxes


def test_box_iou_matches_rasterised_reference():
    rng = np.random.default_rng(0)
    a, b = random_boxes(rng, 200), random_boxes(rng, 200)
    batched = box_iou(a, b)
    assert batched.shape == (200,)
    expected = np.array([iou_by_rasterising(x, y) for x, y in zip(a, b)])
    np.testing.assert_allclose(batched, expected, atol=1e-12)
    assert box_iou(a[7], b[7]) == pytest.approx(expected[7])
    np.testing.assert_allclose(box_iou(a, b), box_iou(b, a))   # symmetric


def test_box_iou_is_scale_invariant():
    rng = np.random.default_rng(1)
    a, b = random_boxes(rng, 50), random_boxes(rng, 50)
    np.testing.assert_allclose(box_iou(a * 2.5, b * 2.5), box_iou(a, b))


def test_box_iou_bad_inputs():
    with pytest.raises(ValueError, match="same shape"):
        box_iou(np.zeros((3, 4)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        box_iou(np.zeros((3, 5)), np.zeros((3, 5)))
    with pytest.raises(ValueError, match="xmax < xmin"):
        box_iou((5, 0, 1, 4), (0, 0, 1, 1))
    with pytest.raises(ValueError, match="NaN"):
        box_iou((0, 0, np.nan, 4), (0, 0, 1, 1))


def test_localization_accuracy_counts_hits():
    gt = np.array([[0, 0, 10, 10]] * 4)
    pred = np.array([[0, 0, 10, 10],     # IoU 1
                     [0, 0, 10, 5],      # IoU 0.5: counts (>=)
                     [0, 0, 10, 4],      # IoU 0.4
                     [20, 20, 30, 30]])  # IoU 0
    assert localization_accuracy(pred, gt) == 0.5
    assert localization_accuracy(pred, gt, iou_threshold=0.3) == 0.75
    correct = np.array([True, False, True, True])
    assert localization_accuracy(pred, gt, correct_class=correct) == 0.25


def test_localization_accuracy_bad_inputs():
    gt = np.zeros((2, 4))
    with pytest.raises(ValueError, match="booleans"):
        localization_accuracy(gt, gt, correct_class=np.array([1, 0]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        localization_accuracy(gt, gt, iou_threshold=50)
    with pytest.raises(ValueError, match="non-empty"):
        localization_accuracy(np.zeros((0, 4)), np.zeros((0, 4)))
