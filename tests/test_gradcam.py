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


# --- Grad-CAM maps ---------------------------------------------------------------------------
import torch  # noqa: E402
from torch import nn  # noqa: E402

from utils import cam, hooks, models  # noqa: E402


def tiny_resnet(num_classes: int = 5) -> nn.Module:
    """A randomly initialised torchvision resnet18 (in-place ReLUs, residual adds), eval mode."""
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None, num_classes=num_classes).eval()


def test_grad_cam_by_hand():
    features = torch.tensor([[[[1.0, 2.0], [0.0, -1.0]], [[0.0, 1.0], [3.0, 0.0]]]])  # (1, 2, 2, 2)
    gradients = torch.stack([torch.full((2, 2), 2.0), torch.tensor([[0.0, -4.0], [0.0, 0.0]])])[None]
    # alpha = (2, -1): 2 * A0 - A1 = [[2, 3], [-3, -2]] -> ReLU
    torch.testing.assert_close(cam.grad_cam(features, gradients), torch.tensor([[[2.0, 3.0], [0.0, 0.0]]]))
    with pytest.raises(ValueError, match="both be"):
        cam.grad_cam(features, gradients[:, :1])


def test_grad_cam_on_a_gap_linear_head_is_relu_cam_over_hw():
    torch.manual_seed(0)
    body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 6, 3, stride=2, padding=1))
    net = nn.Sequential(body, models.gap_head(6, 4)).eval()
    x = torch.randn(3, 3, 10, 12)
    target = [2, 0, 3]
    with hooks.record(net, ["0"], gradients=True) as rec:
        net(x).gather(1, torch.tensor(target)[:, None]).sum().backward()
    features = rec.activations["0"]
    h, w = features.shape[-2:]
    cams = cam.class_activation_maps(features, net[1].fc.weight)[torch.arange(3), target]
    torch.testing.assert_close(cam.grad_cam(features, rec.gradients["0"]), torch.relu(cams) / (h * w))


def test_layer_grad_cam_batched_equals_one_by_one_and_removes_hooks():
    net = tiny_resnet()
    x = torch.randn(3, 3, 64, 64)
    maps, logits = cam.layer_grad_cam(net, x, "layer4", [1, 4, 1])
    assert maps.shape == (3, 64, 64) and logits.shape == (3, 5)
    for i, t in enumerate([1, 4, 1]):
        one, _ = cam.layer_grad_cam(net, x[i:i + 1], "layer4", t)
        torch.testing.assert_close(maps[i], one[0], atol=1e-5, rtol=1e-5)
    assert hooks.count_hooks(net) == 0
    assert all(p.grad is None for p in net.parameters())
    assert maps.amin(dim=(1, 2)).eq(0).all() and maps.amax(dim=(1, 2)).eq(1).all()
    small, _ = cam.layer_grad_cam(net, x, "layer3", 0, size=0)
    assert small.shape == (3, 4, 4)


def test_layer_grad_cam_callable_target_and_errors():
    net = tiny_resnet()
    x = torch.randn(2, 3, 32, 32)
    by_index, _ = cam.layer_grad_cam(net, x, "layer4", 3)
    by_callable, _ = cam.layer_grad_cam(net, x, "layer4", lambda logits: logits[:, 3])
    torch.testing.assert_close(by_index, by_callable)
    for target in (lambda logits: logits[:, 0] * 0, lambda logits: torch.zeros(len(logits))):
        zero, _ = cam.layer_grad_cam(net, x, "layer4", target)  # no dependence on the layer
        assert torch.equal(zero, torch.zeros_like(zero))
    with pytest.raises(KeyError, match="no module called 'layer5'.*layer4"):
        cam.layer_grad_cam(net, x, "layer5", 0)
    with pytest.raises(ValueError, match="3 targets for a batch of 2"):
        cam.layer_grad_cam(net, x, "layer4", [0, 1, 2])
    with pytest.raises(ValueError, match=r"in \[0, 5\)"):
        cam.layer_grad_cam(net, x, "layer4", 5)
    with pytest.raises(ValueError, match="not \\(B, C, H, W\\)"):
        cam.layer_grad_cam(net, x, "fc", 0)
    with pytest.raises(ValueError, match="one score per image"):
        cam.layer_grad_cam(net, x, "layer4", lambda logits: logits.sum())

    def failing(logits):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        cam.layer_grad_cam(net, x, "layer4", failing)
    assert hooks.count_hooks(net) == 0


def test_layer_grad_cam_rejects_wrong_channel_counts_clearly():
    net = tiny_resnet()
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        cam.layer_grad_cam(net, torch.randn(3, 32, 32), "layer4", 0)
    with pytest.raises(RuntimeError, match="expected input.*3 channels"):
        cam.layer_grad_cam(net, torch.randn(1, 4, 32, 32), "layer4", 0)


def test_parity_with_pytorch_grad_cam():
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    net = tiny_resnet()
    x = torch.randn(2, 3, 96, 64)
    ours, _ = cam.layer_grad_cam(net, x, "layer4", [2, 3])
    with GradCAM(model=net, target_layers=[net.layer4]) as library:
        theirs = library(input_tensor=x, targets=[ClassifierOutputTarget(2), ClassifierOutputTarget(3)])
    np.testing.assert_allclose(ours.numpy(), theirs, atol=1e-5)
    assert hooks.count_hooks(net) == 0


@pytest.mark.realdata
def test_real_both_png_cat_map_peaks_on_the_cat_half():
    """Grad-CAM's Figure 1 picture (registry file ``gradcam-both`` in the data directory): with
    Lite0, the 'tiger cat' map of the last ReLU6 peaks in the lower half, where the cat lies,
    and has more of its mass there than the 'boxer' map. Nothing is written."""
    from PIL import Image

    from utils import config, data, registry, saliency  # noqa: F401 (data registers the file)

    base = config.data_dir()
    entry = registry.lookup("gradcam-both")
    if base is None or not (base / entry.filename).is_file():
        pytest.skip(f"no {entry.filename} in the data directory (set CVBOOK_DATA)")
    path = base / entry.filename
    assert registry.sha256_of(path) == entry.sha256
    with Image.open(path) as im:
        picture = np.asarray(im.convert("RGB").resize((224, 224), Image.Resampling.BILINEAR))
    net = models.load_lite0()
    x = models.normalize(saliency.rgb_batch(picture))
    # Lite0 applies one shared ReLU6 module after the stem and after the head: the record keeps its last call
    maps, _ = cam.layer_grad_cam(net, x.expand(2, -1, -1, -1), "_swish", [282, 242])
    assert maps.shape == (2, 224, 224)
    peak_row = int(maps[0].flatten().argmax()) // 224
    assert peak_row >= 112, f"'tiger cat' map peaks at row {peak_row}, above the cat"
    lower = maps[:, 112:].sum(dim=(1, 2)) / maps.sum(dim=(1, 2))
    assert lower[0] > lower[1]
