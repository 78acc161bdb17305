"""Tests for the Grad-CAM chapter's metrics and maps (utils.metrics.pointing_game, utils.cam.grad_cam)."""
import numpy as np
import pytest

from utils import metrics


def _peak_map(h, w, row, col):
    m = np.zeros((h, w))
    m[row, col] = 1.0
    return m


def test_pointing_game_inside_edges_and_tolerance():
    box = (2, 3, 6, 8)  # columns 2..5, rows 3..7
    maps = np.stack([_peak_map(10, 10, 3, 2), _peak_map(10, 10, 7, 5),   # corners: inside
                     _peak_map(10, 10, 7, 6), _peak_map(10, 10, 8, 5),   # one past xmax / ymax: outside
                     _peak_map(10, 10, 0, 9)])                            # dx=4, dy=3: distance 5
    boxes = np.tile(box, (5, 1))
    assert metrics.pointing_game(maps, boxes).tolist() == [True, True, False, False, False]
    assert metrics.pointing_game(maps, boxes, tolerance_px=1).tolist() == [True, True, True, True, False]
    assert metrics.pointing_game(maps, boxes, tolerance_px=5).all()
    assert not metrics.pointing_game(maps[4:], boxes[4:], tolerance_px=4.99).any()


def test_pointing_game_constant_map_points_at_origin_and_rejects_bad_input():
    assert metrics.pointing_game(np.zeros((1, 5, 5)), [(0, 0, 1, 1)]).tolist() == [True]
    assert metrics.pointing_game(np.zeros((1, 5, 5)), [(1, 1, 3, 3)]).tolist() == [False]
    with pytest.raises(ValueError, match="same B"):
        metrics.pointing_game(np.zeros((2, 5, 5)), [(0, 0, 1, 1)])
    with pytest.raises(ValueError, match="at least one pixel"):
        metrics.pointing_game(np.zeros((1, 5, 5)), [(1, 1, 1, 3)])
    with pytest.raises(ValueError, match="tolerance"):
        metrics.pointing_game(np.zeros((1, 5, 5)), [(0, 0, 1, 1)], tolerance_px=-1)
    with pytest.raises(ValueError, match="NaN"):
        metrics.pointing_game(np.full((1, 5, 5), np.nan), [(0, 0, 1, 1)])


def test_pointing_accuracy_averages_classes_not_images():
    hits = np.array([True, True, True, False])
    classes = np.array(["cat", "cat", "cat", "dog"])
    assert metrics.pointing_accuracy(hits, classes) == pytest.approx(0.5)  # per image: 0.75
    with pytest.raises(ValueError):
        metrics.pointing_accuracy(np.array([1, 0]), np.array([0, 1]))
