"""Tests of BoostLU (utils.cam.boostlu) and the CAM head (utils.models.CAMHead / gap_head)."""
from collections import OrderedDict

import pytest
import torch
from torch import nn

from utils.cam import boostlu, class_activation_maps
from utils.models import CAMHead, gap_head


def boostlu_by_entries(x: torch.Tensor, alpha: float) -> torch.Tensor:
    flat = [alpha * v if v > 0 else v for v in x.flatten().tolist()]
    return torch.tensor(flat, dtype=torch.float64).reshape(x.shape)


@pytest.mark.parametrize("alpha", [1.0, 2.0, 5.0])
def test_boostlu_matches_its_definition(alpha):
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x[0, 0, 0, :3] = torch.tensor([0.0, -0.0, 1e-12], dtype=torch.float64)
    torch.testing.assert_close(boostlu(x, alpha), boostlu_by_entries(x, alpha))


def test_boostlu_gradient_is_alpha_on_positives_and_one_elsewhere():
    x = torch.tensor([-2.0, -1e-6, 0.0, 1e-6, 3.0], requires_grad=True)
    boostlu(x, 5.0).sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 1.0, 5.0, 5.0]
    x64 = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: boostlu(t, 5.0), (x64,))


def test_boostlu_alpha_one_is_identity_and_keeps_dtype():
    x = torch.randn(3, 4, dtype=torch.float16)
    y = boostlu(x, 1.0)
    assert y.dtype == torch.float16 and torch.equal(y, x)


def test_boostlu_bad_inputs():
    with pytest.raises(ValueError, match="alpha"):
        boostlu(torch.zeros(2), 0.5)
    with pytest.raises(TypeError, match="tensor"):
        boostlu([1.0, 2.0], 5.0)


def plain_head(head: CAMHead) -> nn.Sequential:
    """An independent GAP -> flatten -> linear copy of the head's weights."""
    fc = nn.Linear(head.fc.in_features, head.fc.out_features, bias=head.fc.bias is not None)
    fc.load_state_dict(head.fc.state_dict())
    return nn.Sequential(OrderedDict(pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(), fc=fc))


@pytest.mark.parametrize("bias", [False, True])
def test_cam_head_alpha_one_equals_plain_gap_linear(bias):
    torch.manual_seed(0)
    head = gap_head(6, 3, bias=bias)
    assert isinstance(head, CAMHead) and isinstance(head.fc, nn.Linear) and head.fc.weight.shape == (3, 6)
    x = torch.randn(4, 6, 5, 5)
    torch.testing.assert_close(head(x), plain_head(head)(x))
    head.alpha = 5.0
    head.alpha = 1.0          # switching back gives the plain head again
    torch.testing.assert_close(head(x), plain_head(head)(x))


def test_cam_head_maps_average_to_logits_bias_included():
    torch.manual_seed(1)
    head = gap_head(6, 3, bias=True)
    x = torch.randn(2, 6, 4, 4)
    maps = head.maps(x)
    assert maps.shape == (2, 3, 4, 4)
    torch.testing.assert_close(maps, class_activation_maps(x, head.fc.weight) + head.fc.bias.view(1, 3, 1, 1))
    torch.testing.assert_close(maps.mean(dim=(2, 3)), head(x))


def test_cam_head_with_boostlu_is_gap_plus_boosted_relu():
    torch.manual_seed(2)
    head = CAMHead(6, 3, bias=True, alpha=5.0)
    x = torch.randn(2, 6, 4, 4, dtype=torch.float64)
    head = head.double()
    maps = head.maps(x)
    expected = maps.mean(dim=(2, 3)) + 4.0 * maps.clamp(min=0).mean(dim=(2, 3))
    torch.testing.assert_close(head(x), expected)
    torch.testing.assert_close(head(x), boostlu_by_entries(maps.detach(), 5.0).mean(dim=(2, 3)))
    # gradients reach the weight, the bias and the features
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda f: head(f), (x,))
    head(x).sum().backward()
    assert head.fc.weight.grad is not None and head.fc.bias.grad is not None


def test_cam_head_bad_inputs():
    with pytest.raises(ValueError, match="positive"):
        gap_head(0, 3)
    with pytest.raises(ValueError, match="alpha"):
        CAMHead(4, 2, alpha=0.0)
    head = gap_head(4, 2)
    with pytest.raises(ValueError, match="alpha"):
        head.alpha = 0.5
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        head.maps(torch.zeros(2, 4))
