"""Tests of the CAM-loss pieces of utils.cam against hand-computed maps and slow references."""
import pytest
import torch
from torch import nn

from utils.cam import (
    CAM_LOSS_VARIANTS,
    caam_cam_distillation_loss,
    cam_loss,
    cam_loss_alpha,
    cam_loss_terms,
    class_activation_maps,
    class_agnostic_map,
    label_cam,
    minmax_normalize,
    normalize_maps,
    parameters_reached,
    teacher_cam_targets,
)
from utils.models import gap_head


def hand_features():
    """(1, 2, 2, 2): channel 0 = [[1, 2], [3, 4]], channel 1 = [[0, 1], [0, 1]]."""
    return torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [0.0, 1.0]]]])


def test_caam_hand_example():
    expected = torch.tensor([[[1.0, 3.0], [3.0, 5.0]]])
    torch.testing.assert_close(class_agnostic_map(hand_features()), expected)


def test_label_cam_hand_example_and_agrees_with_cam():
    weight = torch.tensor([[1.0, -1.0], [0.5, 2.0]])
    expected = torch.tensor([[[0.5, 3.0], [1.5, 4.0]]])          # 0.5 * ch0 + 2 * ch1
    torch.testing.assert_close(label_cam(hand_features(), weight, torch.tensor([1])), expected)
    g = torch.Generator().manual_seed(0)
    feats, w, y = torch.randn(4, 5, 3, 3, generator=g), torch.randn(3, 5, generator=g), torch.tensor([0, 2, 1, 2])
    torch.testing.assert_close(label_cam(feats, w, y), class_activation_maps(feats, w)[torch.arange(4), y])


def test_minmax_normalize_hand_example():
    maps = torch.tensor([[[1.0, 3.0], [3.0, 5.0]]])
    torch.testing.assert_close(minmax_normalize(maps, eps=0.0), torch.tensor([[[0.0, 0.5], [0.5, 1.0]]]))
    torch.testing.assert_close(minmax_normalize(maps, eps=1.0), torch.tensor([[[0.0, 0.4], [0.4, 0.8]]]))


def test_minmax_normalize_is_per_map_over_the_whole_map():
    g = torch.Generator().manual_seed(1)
    maps = torch.randn(3, 2, 4, 5, generator=g) * 10
    out = minmax_normalize(maps, eps=1e-6)
    for b in range(3):
        for k in range(2):
            m = maps[b, k]
            torch.testing.assert_close(out[b, k], (m - m.min()) / (m.max() - m.min() + 1e-6))
    torch.testing.assert_close(out, normalize_maps(maps), atol=1e-5, rtol=0)


@pytest.mark.parametrize("value", [0.0, 2.5, -7.0])
def test_constant_map_normalises_to_zero_with_finite_gradient(value):
    maps = torch.full((2, 3, 3), value, requires_grad=True)
    out = minmax_normalize(maps)
    assert torch.equal(out, torch.zeros_like(out))
    (out * torch.arange(9.0).view(1, 3, 3)).sum().backward()
    assert torch.isfinite(maps.grad).all()


def test_cam_loss_of_constant_features_has_finite_gradient():
    features = torch.ones(2, 3, 4, 4, requires_grad=True)
    weight = torch.randn(5, 3, requires_grad=True)
    loss = cam_loss(features, weight, torch.tensor([0, 4]))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.isfinite(features.grad).all() and torch.isfinite(weight.grad).all()


def test_cam_loss_hand_example():
    # CAAM = [[1, 3], [3, 5]] -> [[0, .5], [.5, 1]]; CAM of class 0 = ch0 - ch1 = [[1, 1], [3, 3]] -> [[0, 0], [1, 1]]
    weight = torch.tensor([[1.0, -1.0], [0.5, 2.0]])
    loss = cam_loss(hand_features(), weight, torch.tensor([0]), eps=0.0)
    torch.testing.assert_close(loss, torch.tensor((0 + 0.5 + 0.5 + 0) / 4))


def test_cam_loss_is_zero_when_the_label_weights_are_all_equal():
    g = torch.Generator().manual_seed(2)
    features = torch.rand(3, 4, 5, 5, generator=g)
    weight = torch.full((2, 4), 0.7)                               # CAM = 0.7 * CAAM: same after normalising
    assert cam_loss(features, weight, torch.tensor([0, 1, 1])).item() < 1e-6


class Tiny(nn.Module):
    """A two-parameter-group model: a conv body (theta) and the shared CAM head (W)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU())
        self.head = gap_head(4, 3)


@pytest.mark.parametrize("variant, ce_reaches, cam_reaches", [
    ("code", {"body", "head"}, {"body"}),
    ("text", {"head"}, {"body"}),
    ("joint", {"body", "head"}, {"body", "head"}),
])
def test_each_term_reaches_exactly_the_documented_parameters(variant, ce_reaches, cam_reaches):
    torch.manual_seed(0)
    model = Tiny()
    x, y = torch.randn(4, 1, 6, 6), torch.tensor([0, 1, 2, 1])
    _, ce, l_cam = cam_loss_terms(model.body(x), model.head, y, variant)
    for term, expected in ((ce, ce_reaches), (l_cam, cam_reaches)):
        model.zero_grad(set_to_none=True)
        term.backward(retain_graph=True)
        got = {name.split(".")[0] for name, p in model.named_parameters()
               if p.grad is not None and p.grad.abs().sum() > 0}
        assert got == expected, (variant, term, got)
        params = dict(model.named_parameters())
        reached = parameters_reached(term, params)
        assert {n.split(".")[0] for n, r in reached.items() if r} == expected
        assert all(reached[n] for n in params if n.split(".")[0] in expected)


def test_variants_agree_on_the_forward_values():
    torch.manual_seed(0)
    model = Tiny()
    x, y = torch.randn(4, 1, 6, 6), torch.tensor([0, 1, 2, 1])
    feats = model.body(x)
    values = [torch.stack(cam_loss_terms(feats, model.head, y, v)[1:]) for v in CAM_LOSS_VARIANTS]
    for v in values[1:]:
        torch.testing.assert_close(v, values[0])
    logits = cam_loss_terms(feats, model.head, y)[0]
    torch.testing.assert_close(logits, model.head(feats))


def test_cam_loss_terms_follow_the_head_pooling():
    torch.manual_seed(0)
    model = Tiny()
    model.head.pool = nn.AdaptiveMaxPool2d(1)                      # the post's global max pooling
    feats = model.body(torch.randn(2, 1, 6, 6))
    logits = cam_loss_terms(feats, model.head, torch.tensor([0, 1]))[0]
    torch.testing.assert_close(logits, model.head.fc(feats.amax(dim=(2, 3))))


def test_parameters_reached_leaves_grads_untouched():
    model = Tiny()
    loss = model.head(model.body(torch.randn(1, 1, 4, 4))).sum()
    reached = parameters_reached(loss, dict(model.named_parameters()))
    assert all(reached.values()) and all(p.grad is None for p in model.parameters())


def test_bad_variant_and_alpha_schedule():
    model = Tiny()
    with pytest.raises(ValueError, match="unknown variant"):
        cam_loss_terms(torch.zeros(1, 4, 2, 2), model.head, torch.tensor([0]), "both")
    assert [cam_loss_alpha(e) for e in (1, 9, 10, 20)] == [0.0, 0.0, 3.0, 3.0]
    assert cam_loss_alpha(3, start_epoch=3, alpha=0.5) == 0.5
    with pytest.raises(ValueError, match="1-based"):
        cam_loss_alpha(0)


# --- CAAM-CAM matching distillation -------------------------------------------------------


def test_teacher_cam_target_hand_example():
    # CAM of class 0 = ch0 - ch1 = [[1, 1], [3, 3]] -> normalised [[0, 0], [1, 1]]
    weight = torch.tensor([[1.0, -1.0], [0.5, 2.0]])
    target = teacher_cam_targets(hand_features(), weight, torch.tensor([0]), eps=0.0)
    torch.testing.assert_close(target, torch.tensor([[[0.0, 0.0], [1.0, 1.0]]]))


def test_distillation_loss_hand_example():
    # student CAAM: one channel [[1, 3], [3, 5]] -> [[0, .5], [.5, 1]]; teacher CAM of
    # class 0 (hand_features) -> [[0, 0], [1, 1]]; mean |difference| = (0 + .5 + .5 + 0) / 4
    student = torch.tensor([[[[1.0, 3.0], [3.0, 5.0]]]])
    weight = torch.tensor([[1.0, -1.0], [0.5, 2.0]])
    loss = caam_cam_distillation_loss(
        student, hand_features(), weight, torch.tensor([0]), eps=0.0
    )
    torch.testing.assert_close(loss, torch.tensor(0.25))


def test_distillation_loss_is_zero_when_the_maps_match():
    g = torch.Generator().manual_seed(3)
    teacher = torch.rand(3, 5, 4, 4, generator=g)
    weight = torch.rand(4, 5, generator=g)
    labels = torch.tensor([0, 3, 1])
    cam = label_cam(teacher, weight, labels)
    # a student whose channels sum to 2 * CAM + 1: same map after normalising
    student = torch.stack([cam, cam + 1.0], dim=1)
    assert caam_cam_distillation_loss(student, teacher, weight, labels).item() < 1e-6
    # the teacher's own features and a weight of all-equal rows: CAM = CAAM up to scale
    flat = torch.full((4, 5), 0.3)
    assert caam_cam_distillation_loss(teacher, teacher, flat, labels).item() < 1e-6


def test_distillation_gradient_reaches_the_student_only():
    g = torch.Generator().manual_seed(4)
    student = torch.rand(2, 3, 4, 4, generator=g).requires_grad_()
    teacher = torch.rand(2, 5, 4, 4, generator=g).requires_grad_()
    weight = torch.rand(3, 5, generator=g).requires_grad_()
    loss = caam_cam_distillation_loss(student, teacher, weight, torch.tensor([2, 0]))
    loss.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None and weight.grad is None


def test_distillation_resizes_the_teacher_map_to_the_student_grid():
    # bilinear, align_corners=False, exactly halving: each output is a 2x2 block mean
    g = torch.Generator().manual_seed(5)
    teacher = torch.rand(2, 3, 8, 6, generator=g)
    weight = torch.rand(2, 3, generator=g)
    labels = torch.tensor([1, 0])
    target = teacher_cam_targets(teacher, weight, labels, size=(4, 3))
    pooled = torch.nn.functional.avg_pool2d(label_cam(teacher, weight, labels)[:, None], 2)
    torch.testing.assert_close(target, minmax_normalize(pooled[:, 0]))
    student = torch.rand(2, 7, 4, 3, generator=g)
    by_hand = (minmax_normalize(student.sum(1)) - target).abs().mean()
    torch.testing.assert_close(
        caam_cam_distillation_loss(student, teacher, weight, labels), by_hand
    )
    # the student may also be larger than the teacher
    big = torch.rand(2, 7, 16, 12, generator=g)
    assert caam_cam_distillation_loss(big, teacher, weight, labels).shape == ()


@pytest.mark.parametrize(
    "student_shape, teacher_shape, weight_shape, labels, match",
    [
        ((2, 3, 4, 4), (2, 5, 4), (3, 5), [0, 1], "teacher features"),
        ((2, 3, 4), (2, 5, 4, 4), (3, 5), [0, 1], "student features"),
        ((3, 3, 4, 4), (2, 5, 4, 4), (3, 5), [0, 1], "batch size"),
        ((2, 3, 4, 4), (2, 5, 4, 4), (3, 4), [0, 1], "teacher_weight"),
        ((2, 3, 4, 4), (2, 5, 4, 4), (3, 5), [0], "labels"),
        ((2, 3, 4, 4), (2, 5, 4, 4), (3, 5), [0.0, 1.0], "labels"),
    ],
)
def test_distillation_bad_shapes_raise_clear_errors(
    student_shape, teacher_shape, weight_shape, labels, match
):
    with pytest.raises(ValueError, match=match):
        caam_cam_distillation_loss(
            torch.zeros(student_shape),
            torch.zeros(teacher_shape),
            torch.zeros(weight_shape),
            torch.tensor(labels),
        )
