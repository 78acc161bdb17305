"""Tests of utils.cam against slow, obvious references (loops, scikit-image)."""
import numpy as np
import pytest
import torch
from skimage.measure import label as sk_label, regionprops
from skimage.transform import resize as sk_resize

from utils.cam import class_activation_maps, cam_to_boxes, normalize_maps, upsample_maps


def cam_by_loops(features, weight):
    B, C, H, W = features.shape
    out = torch.zeros(B, weight.shape[0], H, W, dtype=torch.float64)
    for b in range(B):
        for k in range(weight.shape[0]):
            for c in range(C):
                out[b, k] += weight[k, c].double() * features[b, c].double()
    return out


@pytest.mark.parametrize("K", [1, 2, 5])
def test_cam_matches_loops(K):
    g = torch.Generator().manual_seed(K)
    features, weight = torch.randn(3, 7, 4, 5, generator=g), torch.randn(K, 7, generator=g)
    maps = class_activation_maps(features, weight)
    assert maps.shape == (3, K, 4, 5)
    torch.testing.assert_close(maps.double(), cam_by_loops(features, weight), atol=1e-5, rtol=1e-5)


def test_cam_averages_to_bias_free_logits():
    g = torch.Generator().manual_seed(0)
    features = torch.randn(2, 6, 3, 3, generator=g)
    linear = torch.nn.Linear(6, 4, bias=False)
    logits = linear(features.mean(dim=(2, 3)))
    torch.testing.assert_close(class_activation_maps(features, linear.weight).mean(dim=(2, 3)), logits)


def test_cam_hand_example():
    features = torch.tensor([[[[1.0, 0.0]], [[0.0, 2.0]]]])   # (1, 2 channels, 1, 2)
    weight = torch.tensor([[3.0, 1.0], [-1.0, 0.5]])
    expected = torch.tensor([[[[3.0, 2.0]], [[-1.0, 1.0]]]])
    torch.testing.assert_close(class_activation_maps(features, weight), expected)


def test_cam_bad_inputs():
    with pytest.raises(ValueError, match="channel mismatch"):
        class_activation_maps(torch.zeros(1, 3, 2, 2), torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        class_activation_maps(torch.zeros(3, 2, 2), torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"\(K, C\)"):
        class_activation_maps(torch.zeros(1, 3, 2, 2), torch.zeros(3))
    with pytest.raises(ValueError, match="NaN"):
        class_activation_maps(torch.full((1, 3, 2, 2), float("nan")), torch.zeros(2, 3))
    with pytest.raises(TypeError, match="torch tensors"):
        class_activation_maps(np.zeros((1, 3, 2, 2)), torch.zeros(2, 3))


def test_cam_keeps_feature_dtype_and_gradients():
    features = torch.randn(1, 4, 2, 2, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, 4)                                   # float32 weight, float64 features
    maps = class_activation_maps(features, weight)
    assert maps.dtype == torch.float64
    maps[0, 1].sum().backward()                                 # d(sum of map 1)/d features = weight[1]
    torch.testing.assert_close(features.grad[0], weight[1].double().view(4, 1, 1).expand(4, 2, 2))


def test_upsample_matches_skimage_bilinear():
    maps = torch.arange(2 * 3 * 4 * 5, dtype=torch.float64).reshape(2, 3, 4, 5) ** 1.5
    up = upsample_maps(maps, (12, 20))
    assert up.shape == (2, 3, 12, 20)
    for b in range(2):
        for k in range(3):
            ref = sk_resize(maps[b, k].numpy(), (12, 20), order=1, mode="edge", anti_aliasing=False)
            np.testing.assert_allclose(up[b, k].numpy(), ref, atol=1e-9)


def test_upsample_nearest_is_block_repeat_and_errors():
    maps = torch.randn(1, 2, 3, 3)
    up = upsample_maps(maps, 6, mode="nearest")
    torch.testing.assert_close(up, maps.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3))
    with pytest.raises(ValueError, match="choose one of"):
        upsample_maps(maps, 6, mode="lanczos")
    with pytest.raises(ValueError, match=r"\(B, K, h, w\)"):
        upsample_maps(maps[0], 6)
    with pytest.raises(ValueError, match="positive int"):
        upsample_maps(maps, (0, 4))
    assert upsample_maps(maps, (3, 5)).shape == (1, 2, 3, 5)       # non-square target


def test_normalize_maps_against_loop_and_constant_map():
    maps = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    maps[1, 2] = 7.0                                        # an all-equal map
    out = normalize_maps(maps)
    for b in range(2):
        for k in range(3):
            m = maps[b, k]
            if m.max() == m.min():
                expected = torch.zeros_like(m)
            else:
                expected = (m - m.min()) / (m.max() - m.min())
            torch.testing.assert_close(out[b, k], expected)
    assert out[0].amin() == 0 and out[0].amax() == 1
    torch.testing.assert_close(normalize_maps(maps[0, 0]), out[0, 0])   # a single (H, W) map


def test_normalize_maps_bad_inputs():
    with pytest.raises(ValueError, match="NaN"):
        normalize_maps(torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(ValueError, match="non-empty"):
        normalize_maps(torch.zeros(2, 0, 3))


def largest_blob_box_skimage(cam, rel_threshold):
    """Reference: scikit-image labelling (8-connected) + regionprops."""
    props = regionprops(sk_label(cam >= rel_threshold * cam.max(), connectivity=2))
    biggest = max(props, key=lambda p: (p.area, -p.label))     # first label wins ties
    rmin, cmin, rmax, cmax = biggest.bbox
    return (cmin, rmin, cmax, rmax)


def test_cam_to_boxes_hand_example():
    cam = np.zeros((8, 10))
    cam[1:3, 1:3] = 1.0          # small, strongest blob (4 pixels)
    cam[4:7, 5:9] = 0.5          # larger blob (12 pixels), above 20% of the max
    assert cam_to_boxes(cam, 0.2) == (5, 4, 9, 7)      # largest component, not the strongest
    assert cam_to_boxes(cam, 0.6) == (1, 1, 3, 3)      # at 60% only the strong blob survives
    diagonal = np.eye(4)
    assert cam_to_boxes(diagonal, 0.5) == (0, 0, 4, 4)  # 8-connected: the diagonal is one blob


def test_cam_to_boxes_random_maps_match_skimage():
    rng = np.random.default_rng(0)
    for _ in range(30):
        cam = rng.random((9, 11)) ** 3
        for t in (0.2, 0.5, 0.6):
            assert cam_to_boxes(cam, t) == largest_blob_box_skimage(cam, t)


def test_cam_to_boxes_batched_equals_single_and_accepts_torch():
    cams = torch.rand(4, 6, 7, generator=torch.Generator().manual_seed(3))
    boxes = cam_to_boxes(cams, 0.6)
    assert boxes.shape == (4, 4) and boxes.dtype == np.int64
    for b in range(4):
        assert tuple(boxes[b]) == cam_to_boxes(cams[b].numpy(), 0.6)


def test_cam_to_boxes_defined_edge_cases():
    whole = (0, 0, 5, 3)
    assert cam_to_boxes(np.full((3, 5), 2.0), 0.2) == whole        # all-equal positive
    assert cam_to_boxes(np.zeros((3, 5)), 0.2) == whole            # all zero
    assert cam_to_boxes(-np.ones((3, 5)), 0.2) == whole            # all negative
    assert cam_to_boxes(-np.arange(15.0).reshape(3, 5), 0.2) == whole   # max = 0
    assert cam_to_boxes(np.eye(3), 0.0) == (0, 0, 3, 3)            # threshold 0 keeps all >= 0


def test_cam_to_boxes_bad_inputs():
    with pytest.raises(ValueError, match="empty"):
        cam_to_boxes(np.zeros((0, 4)), 0.2)
    with pytest.raises(ValueError, match="NaN"):
        cam_to_boxes(np.array([[0.0, np.nan]]), 0.2)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        cam_to_boxes(np.ones((2, 2)), 20)
    with pytest.raises(ValueError, match=r"\(H, W\) or \(B, H, W\)"):
        cam_to_boxes(np.ones(4), 0.2)


def test_threshold_one_keeps_the_whole_plateau_of_maxima():
    cam_map = np.zeros((6, 8))
    cam_map[1:4, 2:7] = 0.5
    cam_map[2:4, 3:6] = 1.0          # a 2 x 3 plateau at the maximum
    assert cam_to_boxes(cam_map, rel_threshold=1.0) == (3, 2, 6, 4)
    assert cam_to_boxes(cam_map, rel_threshold=0.5) == (2, 1, 7, 4)
