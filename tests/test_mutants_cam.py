"""Tests that kill mutants of utils.cam which the behaviour tests let survive
(``python -m tools.mutation cam``; results/mutation.md lists what is left).

The error messages are compared in full: they are part of the interface (each names the
problem and the way out), and a partial match lets a mangled message pass."""
import numpy as np
import pytest
import torch
from torch import nn

from utils import cam

z = torch.zeros


@pytest.mark.parametrize("call, error, message", [
    ('cam.class_activation_maps(np.zeros((1, 2, 2, 2)), z(3, 2))',
     TypeError, 'features and weight must be torch tensors'),
    ('cam.class_activation_maps(z(2, 2, 2), z(3, 2))',
     ValueError, 'features must have shape (B, C, H, W), got (2, 2, 2)'),
    ('cam.class_activation_maps(z(1, 2, 2, 2), z(3, 2, 1))',
     ValueError, 'weight must have shape (K, C), got (3, 2, 1)'),
    ('cam.class_activation_maps(z(1, 2, 5, 5), z(3, 4))',
     ValueError, 'channel mismatch: features have C=2 channels but weight has 4 columns (expected shape (K, 2))'),
    ('cam.class_activation_maps(z(1, 2, 2, 2, dtype=torch.long), z(3, 2))',
     TypeError, 'features and weight must be float tensors, got torch.int64 and torch.float32 (integer arithmetic would truncate the maps); convert with .float()'),
    ("cam.class_activation_maps(torch.full((1, 2, 2, 2), float('nan')), z(3, 2))",
     ValueError, 'features contains NaN or infinite values'),
    ("cam.class_activation_maps(z(1, 2, 2, 2), torch.full((3, 2), float('inf')))",
     ValueError, 'weight contains NaN or infinite values'),
    ("cam.upsample_maps(z(1, 1, 2, 2), 4, mode='area')",
     ValueError, "unknown upsampling mode 'area'; choose one of bilinear, bicubic, nearest"),
    ('cam.upsample_maps(z(1, 2, 2), 4)',
     ValueError, 'maps must be a (B, K, h, w) tensor, got torch.Size([1, 2, 2])'),
    ('cam.upsample_maps(z(1, 1, 2, 2, dtype=torch.long), 4)',
     TypeError, 'maps must be a float tensor to be interpolated, got torch.int64'),
    ('cam.upsample_maps(z(1, 1, 2, 2), (0, 3))',
     ValueError, 'size must be a positive int or (H, W) of ints, got (0, 3)'),
    ('cam.normalize_maps(z(3))',
     ValueError, 'maps must be a non-empty (..., H, W) tensor, got torch.Size([3])'),
    ('cam.normalize_maps(z(2, 0, 3))',
     ValueError, 'maps must be a non-empty (..., H, W) tensor, got torch.Size([2, 0, 3])'),
    ("cam.normalize_maps(torch.full((2, 2), float('nan')))",
     ValueError, 'maps contains NaN or infinite values'),
    ('cam.cam_to_boxes(np.zeros(3))',
     ValueError, 'cam must have shape (H, W) or (B, H, W), got (3,)'),
    ('cam.cam_to_boxes(np.zeros((3, 0)))',
     ValueError, 'cam is empty: shape (3, 0)'),
    ('cam.cam_to_boxes(np.full((2, 2), np.inf))',
     ValueError, 'cam contains NaN or infinite values'),
    ('cam.cam_to_boxes(np.ones((2, 2)), 1.5)',
     ValueError, 'rel_threshold must be a number in [0, 1], got 1.5'),
    ('cam.boostlu(np.ones(2))',
     TypeError, 'x must be a torch tensor, got ndarray'),
    ('cam.boostlu(z(2), 0.5)',
     ValueError, 'alpha must be a number >= 1 (BoostLU amplifies positive evidence), got 0.5'),
    ('cam.grad_cam(np.zeros((1, 2, 2, 2)), z(1, 2, 2, 2))',
     TypeError, 'features and gradients must be torch tensors'),
    ('cam.grad_cam(z(1, 2, 2, 2), z(1, 2, 2, 3))',
     ValueError, 'features and gradients must both be (B, C, H, W), got (1, 2, 2, 2) and (1, 2, 2, 3)'),
    ('cam.target_scores((z(2, 3),), 0)',
     TypeError, 'expected (B, K) logits, got a tuple'),
    ('cam.target_scores(z(2, 3), lambda l: l)',
     ValueError, 'a target callable must return one score per image, shape (2,), got (2, 3)'),
    ('cam.target_scores((z(2, 3),), 0, batch_size=2)',
     TypeError, "the model returned a tuple, not a (B, K) logits tensor; pass a callable target that picks the scores from it, e.g. target=lambda out: out[0][:, k] (a tuple) or out['logits'][:, k] (a dict)"),
    ('cam.target_scores(z(2, 3, 1), 0)',
     ValueError, 'class-index targets need (B, K) logits, got shape (2, 3, 1); pass a callable target for other outputs'),
    ('cam.target_scores(z(2, 3), torch.tensor([0.5, 1.0]))',
     TypeError, 'target classes must be integers, got torch.float32'),
    ('cam.target_scores(z(2, 3), [0, 1, 2])',
     ValueError, 'got 3 targets for a batch of 2 images'),
    ('cam.target_scores(z(2, 3), [0, 3])',
     ValueError, 'target classes must be in [0, 3), got [0, 3]'),
    ('cam.evaluation_mode(3).__enter__()',
     TypeError, 'model must be a torch.nn.Module, got int'),
    ('cam.evaluation_mode(nn.Sequential(nn.BatchNorm2d(2, track_running_stats=False))).__enter__()',
     ValueError, 'batch-norm layers without running statistics (0) mix the images of a batch even in eval mode; saliency maps would depend on the batch'),
    ('cam.gradient_input(z(3, 2, 2))',
     ValueError, 'images must be a (B, C, H, W) tensor, got torch.Size([3, 2, 2])'),
    ('cam.gradient_input(z(0, 3, 2, 2))',
     ValueError, 'images must hold at least one non-empty image, got shape (0, 3, 2, 2)'),
    ('cam.gradient_input(z(1, 3, 2, 2, dtype=torch.uint8))',
     TypeError, 'images must be a float tensor (normalised images), got torch.uint8'),
    ("cam.layer_grad_cam(nn.Sequential(nn.Flatten(), nn.Linear(12, 2)), z(1, 3, 2, 2), '0', 0)",
     ValueError, "layer '0' gives (1, 12), not (B, C, H, W) feature maps; reshape token layers before Grad-CAM"),
    ("cam.cam_loss_terms(z(1, 2, 2, 2), None, z(1), variant='x')",
     ValueError, "unknown variant 'x'; choose one of code, text, joint"),
    ('cam.cam_loss_alpha(0)',
     ValueError, 'epochs are 1-based, got epoch=0, start_epoch=10'),
    ('cam.cam_loss_alpha(3, start_epoch=0)',
     ValueError, 'epochs are 1-based, got epoch=3, start_epoch=0'),
])
def test_error_messages_in_full(call, error, message):
    with pytest.raises(error) as raised:
        eval(call, {"cam": cam, "np": np, "torch": torch, "nn": nn, "z": z})
    assert str(raised.value) == message


def test_inference_mode_message_in_full():
    with torch.inference_mode(), pytest.raises(RuntimeError) as raised:
        cam.gradient_input(z(1, 3, 2, 2))
    assert str(raised.value) == (
        "gradient-based maps cannot be computed under torch.inference_mode(): autograd records nothing "
        "there, and the mode cannot be left from inside the block; call this outside it "
        "(torch.no_grad() around the call is fine)")


class Net(nn.Module):
    def __init__(self, output: str = "tensor"):
        super().__init__()
        torch.manual_seed(0)
        self.feat = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)
        self.output = output

    def forward(self, x):
        logits = self.fc(torch.relu(self.feat(x)).mean(dim=(2, 3)))
        if self.output == "list":
            return [logits, "a note", {"aux": logits * 2}]
        return logits


def test_list_output_is_returned_detached_with_its_other_items():
    x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    maps, output = cam.layer_grad_cam(Net("list"), x, "feat", lambda out: out[0][:, 1])
    expected, logits = cam.layer_grad_cam(Net(), x, "feat", 1)
    assert torch.equal(maps, expected)
    assert isinstance(output, list) and output[1] == "a note"
    assert torch.equal(output[0], logits) and not output[0].requires_grad
    assert torch.equal(output[2]["aux"], 2 * logits) and not output[2]["aux"].requires_grad


def test_size_zero_keeps_the_layer_resolution_and_size_resamples():
    x = torch.randn(1, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    assert cam.layer_grad_cam(Net(), x, "feat", 0, size=0)[0].shape == (1, 6, 6)
    assert cam.layer_grad_cam(Net(), x, "feat", 0, size=(3, 9))[0].shape == (1, 3, 9)
    assert cam.layer_grad_cam(Net(), x, "feat", 0, size=[4, 5])[0].shape == (1, 4, 5)


def test_evaluation_mode_yields_the_model_in_eval_mode():
    model = Net().train()
    with cam.evaluation_mode(model) as inside:
        assert inside is model
        assert not any(m.training for m in model.modules())
    assert all(m.training for m in model.modules())


def test_batchnorm_refusal_names_at_most_five_layers_and_the_root():
    root = nn.BatchNorm2d(2, track_running_stats=False)
    with pytest.raises(ValueError, match=r"statistics \(BatchNorm2d\) mix"):
        cam.evaluation_mode(root).__enter__()
    many = nn.Sequential(*[nn.BatchNorm2d(2, track_running_stats=False) for _ in range(6)])
    with pytest.raises(ValueError, match=r"statistics \(0, 1, 2, 3, 4\) mix"):
        cam.evaluation_mode(many).__enter__()
    tracked = nn.Sequential(nn.BatchNorm2d(2), nn.InstanceNorm2d(2))  # no batch mixing: accepted
    with cam.evaluation_mode(tracked):
        pass


def test_gradient_input_is_a_fresh_leaf_copy():
    images = torch.ones(1, 3, 2, 2)
    x = cam.gradient_input(images)
    assert x.requires_grad and x.is_leaf and torch.equal(x, images)
    with torch.no_grad():
        x.add_(1)
    assert torch.equal(images, torch.ones(1, 3, 2, 2))


@pytest.mark.parametrize("target, expected", [(0, [0.0, 3.0]), (2, [2.0, 5.0]), ([2, 0], [2.0, 3.0]),
                                              (torch.tensor([1, 2]), [1.0, 5.0]), (np.int64(1), [1.0, 4.0])])
def test_target_scores_pick_the_logits(target, expected):
    logits = torch.arange(6.0).reshape(2, 3)
    assert cam.target_scores(logits, target).tolist() == expected


def test_target_scores_callable_gets_the_raw_output():
    output = {"logits": torch.arange(6.0).reshape(2, 3)}
    scores = cam.target_scores(output, lambda out: out["logits"][:, 2], batch_size=2)
    assert scores.tolist() == [2.0, 5.0]


def test_normalize_maps_exact_values():
    maps = torch.tensor([[[1.0, 3.0], [5.0, 9.0]], [[2.0, 2.0], [2.0, 2.0]]])
    out = cam.normalize_maps(maps)
    assert out[0].tolist() == [[0.0, 0.25], [0.5, 1.0]]
    assert out[1].tolist() == [[0.0, 0.0], [0.0, 0.0]]


def test_box_of_a_map_with_a_tiny_positive_peak_is_the_peak_not_the_image():
    m = np.full((5, 6), -1.0)
    m[2, 3] = 1e-9
    assert cam.cam_to_boxes(m, 0.5) == (3, 2, 4, 3)
    assert cam.cam_to_boxes(np.zeros((5, 6)), 0.5) == (0, 0, 6, 5)


def test_boostlu_exact_values_and_alpha_one():
    x = torch.tensor([-2.0, 0.0, 0.5, 3.0])
    assert cam.boostlu(x, 4).tolist() == [-2.0, 0.0, 2.0, 12.0]
    assert torch.equal(cam.boostlu(x, 1), x)
    assert cam.boostlu(x).tolist() == [-2.0, 0.0, 2.5, 15.0]


# --- CAM-loss and CAAM-CAM distillation ------------------------------------------------------------

def features(b=2, c=3, h=4, w=5, seed=0, dtype=torch.float32):
    return torch.randn(b, c, h, w, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def by_hand_minmax(m, eps):
    low = m.amin(dim=(-2, -1), keepdim=True)
    return (m - low) / (m.amax(dim=(-2, -1), keepdim=True) - low + eps)


def test_label_cam_casts_the_weight_to_the_features_dtype():
    f, w, labels = features(), torch.randn(4, 3, dtype=torch.float64), torch.tensor([3, 0])
    out = cam.label_cam(f, w, labels)
    assert out.dtype == torch.float32
    expected = torch.einsum("bchw,bc->bhw", f.double(), w[labels]).float()
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("eps", [0.5, 2.0])
def test_cam_loss_uses_its_eps_everywhere(eps):
    f, w, labels = features(), torch.randn(4, 3), torch.tensor([1, 2])
    cam_map = by_hand_minmax(torch.einsum("bchw,bc->bhw", f, w[labels]), eps)
    caam = by_hand_minmax(f.sum(dim=1), eps)
    expected = (cam_map - caam).abs().mean()
    torch.testing.assert_close(cam.cam_loss(f, w, labels, eps), expected)
    head = nn.Sequential()
    head.add_module("pool", nn.AdaptiveAvgPool2d(1))
    head.add_module("flatten", nn.Flatten())
    head.add_module("fc", nn.Linear(3, 4))
    with torch.no_grad():
        head.fc.weight.copy_(w)
    _, _, term = cam.cam_loss_terms(f, head, labels, "code", eps)
    torch.testing.assert_close(term, expected)


def test_cam_loss_alpha_from_the_first_epoch():
    assert cam.cam_loss_alpha(1, start_epoch=1, alpha=2.5) == 2.5
    assert cam.cam_loss_alpha(1, start_epoch=2) == 0.0


def test_parameters_reached_without_a_graph_and_with_a_frozen_parameter():
    a, b = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(2))
    frozen = torch.ones(2)  # does not require grad
    assert cam.parameters_reached(torch.tensor(1.0), {"a": a, "b": b}) == {"a": False, "b": False}
    reached = cam.parameters_reached((a * frozen).sum(), {"a": a, "b": b, "frozen": frozen})
    assert reached == {"a": True, "b": False, "frozen": False}
    assert all(isinstance(v, bool) for v in reached.values())


def test_teacher_and_distillation_messages_name_the_shapes():
    f = features(b=2, c=3, h=4, w=5)
    with pytest.raises(ValueError) as raised:
        cam.teacher_cam_targets(f, torch.zeros(4, 7), torch.tensor([0, 1]))
    assert str(raised.value) == "teacher_weight must be (K, 3) to match the teacher's channels, got (4, 7)"
    with pytest.raises(ValueError) as raised:
        cam.teacher_cam_targets(f, torch.zeros(4, 3), torch.tensor([0, 1, 2]))
    assert str(raised.value) == ("labels must be (2,) integer class indices, got shape (3,) and dtype "
                                 "torch.int64")
    with pytest.raises(ValueError) as raised:
        cam.caam_cam_distillation_loss(features(b=3), f, torch.zeros(4, 3), torch.tensor([0, 1]))
    assert str(raised.value) == ("student features must be (B, C, H, W) with the teacher's batch size 2, "
                                 "got (3, 3, 4, 5)")


@pytest.mark.parametrize("eps", [0.5, 3.0])
def test_distillation_uses_its_eps_and_mixed_dtypes(eps):
    teacher, w, labels = features(c=3, h=4, w=5), torch.randn(4, 3), torch.tensor([2, 1])
    student = features(c=6, h=4, w=5, seed=1, dtype=torch.float64)
    target = by_hand_minmax(torch.einsum("bchw,bc->bhw", teacher, w[labels]), eps)
    torch.testing.assert_close(cam.teacher_cam_targets(teacher, w, labels, None, eps), target)
    expected = (by_hand_minmax(student.sum(dim=1), eps) - target.double()).abs().mean()
    loss = cam.caam_cam_distillation_loss(student, teacher, w, labels, eps)
    assert loss.dtype == torch.float64
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize("call, message", [
    (lambda: cam.upsample_maps([1, 2], 4), "maps must be a (B, K, h, w) tensor, got <class 'list'>"),
    (lambda: cam.normalize_maps([1, 2]), "maps must be a non-empty (..., H, W) tensor, got <class 'list'>"),
    (lambda: cam.normalize_maps(z(2, 3, 0)), "maps must be a non-empty (..., H, W) tensor, got torch.Size([2, 3, 0])"),
    (lambda: cam.cam_to_boxes(np.zeros((2, 3, 0))), "cam is empty: shape (2, 3, 0)"),
])
def test_empty_and_non_tensor_messages_in_full(call, message):
    with pytest.raises(ValueError) as raised:
        call()
    assert str(raised.value) == message


def test_normalize_maps_of_a_constant_map_has_a_finite_gradient():
    maps = torch.full((1, 3, 3), 2.0, requires_grad=True)
    cam.normalize_maps(maps).sum().backward()
    assert torch.isfinite(maps.grad).all()


def test_cam_to_boxes_default_threshold_is_the_papers_twenty_percent():
    m = np.zeros((4, 8))
    m[1, 1], m[2, 2:7] = 1.0, [0.1, 0.25, 0.3, 0.15, 0.21]  # blobs at 20 %: 1, 2 and 1 pixels
    assert cam.cam_to_boxes(m) == cam.cam_to_boxes(m, 0.2) == (3, 2, 5, 3)


def test_upsample_to_a_single_pixel_is_allowed():
    maps = torch.arange(4.0).reshape(1, 1, 2, 2)
    assert cam.upsample_maps(maps, 1, mode="nearest").shape == (1, 1, 1, 1)
    assert cam.upsample_maps(maps, (1, 3)).shape == (1, 1, 1, 3)


def test_grad_cam_messages_for_an_empty_batch_and_integer_gradients():
    with pytest.raises(ValueError) as raised:
        cam.grad_cam(z(0, 2, 2, 2), z(0, 2, 2, 2))
    assert str(raised.value) == "grad_cam needs at least one image, got an empty batch"
    with pytest.raises(TypeError) as raised:  # float features alone are not enough
        cam.grad_cam(z(1, 2, 2, 2), z(1, 2, 2, 2, dtype=torch.long))
    assert str(raised.value) == "features and gradients must be float tensors, got torch.float32 and torch.int64"


def test_a_float32_map_is_thresholded_in_float64():
    peak = np.float32(1.4099537)  # 0.2 * peak rounds down in float32, below the float64 product
    pixel = np.float32(0.2) * peak  # so this pixel is under the threshold in float64 only
    m = np.array([[pixel, pixel, 0.0, peak]], dtype=np.float32)
    assert cam.cam_to_boxes(m) == cam.cam_to_boxes(m.astype(np.float64)) == (3, 0, 4, 1)


def test_layer_grad_cam_of_a_score_that_ignores_the_input_is_zero():
    class Constant(nn.Module):  # the layer sees the image, the score does not
        def __init__(self):
            super().__init__()
            self.feat = nn.Conv2d(3, 2, 1)
            self.bias = nn.Parameter(torch.ones(2))

        def forward(self, x):
            self.feat(x)
            return self.bias.expand(len(x), 2)

    maps, _ = cam.layer_grad_cam(Constant(), torch.rand(2, 3, 4, 4), "feat", 1)
    assert maps.shape == (2, 4, 4) and not maps.any()


def test_distillation_loss_takes_the_students_dtype():
    teacher = torch.rand(2, 3, 4, 4, dtype=torch.float64)
    loss = cam.caam_cam_distillation_loss(torch.rand(2, 5, 4, 4), teacher, torch.rand(4, 3, dtype=torch.float64),
                                          torch.tensor([0, 3]))
    assert loss.dtype == torch.float32


def test_gradient_input_names_what_it_got_when_it_has_no_shape():
    with pytest.raises(ValueError) as raised:
        cam.gradient_input([[1.0]])
    assert str(raised.value) == "images must be a (B, C, H, W) tensor, got <class 'list'>"
