"""Tests for utils.saliency: guided backprop (restoring the model exactly), guided Grad-CAM,
parity with Captum and pytorch-grad-cam, and image batches."""
import numpy as np
import pytest
import torch
from torch import nn

from utils import cam, hooks, saliency


def tiny_resnet(num_classes: int = 5) -> nn.Module:
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None, num_classes=num_classes).eval()


def relu6_net() -> nn.Module:
    """A small net with a shared in-place ReLU6 (called twice, like Lite0's ``_swish``)."""
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.conv2 = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 6, 3, padding=1)
            self.act = nn.ReLU6(inplace=True)
            self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4))

        def forward(self, x):
            return self.head(self.act(self.conv2(self.act(3 * self.conv1(x)))))

    return Net().eval()


def snapshot(model: nn.Module) -> list:
    return [(name, m, type(m), dict(m.__dict__)) for name, m in model.named_modules()]


def test_guided_rule_by_hand_for_relu_and_relu6():
    x = torch.tensor([-1.0, 2.0, 3.0, 7.0, 0.5], requires_grad=True)
    upstream = torch.tensor([5.0, -2.0, 4.0, 1.0, 1.0])
    for module, expected in ((nn.ReLU(), [0.0, 0.0, 4.0, 1.0, 1.0]), (nn.ReLU6(), [0.0, 0.0, 4.0, 0.0, 1.0])):
        with saliency.guided_relus(nn.Sequential(module)) as n:
            y = module(x)
        assert n == 1
        torch.testing.assert_close(y, module(x))  # forward unchanged
        (grad,) = torch.autograd.grad(y, x, upstream)
        torch.testing.assert_close(grad, torch.tensor(expected))


@pytest.mark.parametrize("make", [tiny_resnet, relu6_net])
def test_modules_restored_exactly_also_after_an_exception(make):
    model = make()
    before = snapshot(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError, match="boom"):
        with saliency.guided_relus(model) as n:
            assert n > 0
            assert all("forward" in m.__dict__ for m in model.modules() if isinstance(m, saliency.GUIDED_TYPES))
            raise RuntimeError("boom")
    saliency.guided_backprop(model, torch.randn(2, 3, 32, 32), 1)
    after = snapshot(model)
    assert [(n, m, t) for n, m, t, _ in after] == [(n, m, t) for n, m, t, _ in before]  # same objects
    for (_, _, _, d1), (_, _, _, d0) in zip(after, before):
        assert d1.keys() == d0.keys() and all(d1[k] is d0[k] or d1[k] == d0[k] for k in d0)
    assert any(m.inplace for m in model.modules() if isinstance(m, saliency.GUIDED_TYPES))
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert hooks.count_hooks(model) == 0 and all(p.grad is None for p in model.parameters())


def test_nested_guided_relus_refused():
    model = relu6_net()
    with saliency.guided_relus(model):
        with pytest.raises(RuntimeError, match="refusing to stack"):
            with saliency.guided_relus(model):
                pass
    assert not any("forward" in m.__dict__ for m in model.modules())


@pytest.mark.parametrize("make", [tiny_resnet, relu6_net])
def test_guided_backprop_batched_equals_one_by_one(make):
    model = make()
    x = torch.randn(3, 3, 32, 32)
    batched = saliency.guided_backprop(model, x, [0, 3, 1])
    for i, t in enumerate([0, 3, 1]):
        torch.testing.assert_close(batched[i:i + 1], saliency.guided_backprop(model, x[i:i + 1], t))
    assert (batched != 0).any()


def plain_gradient(model: nn.Module, x: torch.Tensor, target: int) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    return torch.autograd.grad(model(x)[0, target], x)[0]


def test_guided_backprop_differs_from_the_plain_gradient():
    model = relu6_net()
    x = torch.randn(1, 3, 16, 16)
    assert not torch.allclose(plain_gradient(model, x, 2), saliency.guided_backprop(model, x, 2))


@pytest.mark.filterwarnings("ignore:Setting backward hooks")
def test_parity_with_captum_guided_backprop():
    from captum.attr import GuidedBackprop

    model = tiny_resnet()
    x = torch.randn(2, 3, 64, 64)
    ours = saliency.guided_backprop(model, x, [1, 2])
    theirs = GuidedBackprop(model).attribute(x.clone().requires_grad_(True), target=[1, 2])
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-5)


@pytest.mark.filterwarnings("ignore:Setting backward hooks")
def test_captum_ignores_relu6_so_it_is_the_plain_gradient_there():
    """Captum overrides nn.ReLU modules only; on a ReLU6 network (Lite0) it gives the plain
    gradient, which is why the chapter compares with Captum on a ReLU network."""
    from captum.attr import GuidedBackprop

    model = relu6_net()  # no nn.ReLU anywhere
    x = torch.randn(1, 3, 16, 16)
    theirs = GuidedBackprop(model).attribute(x.clone().requires_grad_(True), target=2)
    torch.testing.assert_close(theirs, plain_gradient(model, x, 2))
    assert not torch.allclose(theirs, saliency.guided_backprop(model, x, 2))


def test_parity_with_pytorch_grad_cam_guided_backprop():
    from pytorch_grad_cam import GuidedBackpropReLUModel

    model = tiny_resnet()
    x = torch.randn(1, 3, 64, 64)
    ours = saliency.guided_backprop(model, x, 3)[0].permute(1, 2, 0).numpy()
    theirs = GuidedBackpropReLUModel(model, device="cpu")(x.clone(), target_category=3)
    np.testing.assert_allclose(ours, theirs, atol=1e-6, rtol=1e-5)
    # the library puts *new* ReLU modules back: in-place flags are lost (ours keeps them)
    assert not any(m.inplace for m in model.modules() if isinstance(m, nn.ReLU))


def test_guided_grad_cam_is_the_product():
    model = tiny_resnet()
    x = torch.randn(2, 3, 64, 64)
    product, maps, guided = saliency.guided_grad_cam(model, x, "layer4", [0, 4])
    torch.testing.assert_close(maps, cam.layer_grad_cam(model, x, "layer4", [0, 4])[0])
    torch.testing.assert_close(guided, saliency.guided_backprop(model, x, [0, 4]))
    torch.testing.assert_close(product, guided * maps[:, None])
    assert product.shape == (2, 3, 64, 64)


def test_rgb_batch_grayscale_rgb_and_rgba():
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    x = saliency.rgb_batch(gray)
    assert x.shape == (1, 3, 3, 4) and torch.equal(x[0, 0], x[0, 2])
    assert x[0, 1, 2, 3].item() == pytest.approx(11 / 255)
    rgb = np.random.default_rng(0).random((2, 5, 6, 3))
    torch.testing.assert_close(saliency.rgb_batch(rgb), torch.from_numpy(rgb).float().permute(0, 3, 1, 2))
    assert saliency.rgb_batch(rgb[0]).shape == (1, 3, 5, 6)
    assert saliency.rgb_batch(np.zeros((2, 5, 6), dtype=np.uint8)).shape == (2, 3, 5, 6)  # grayscale batch
    with pytest.raises(ValueError, match="RGBA"):
        saliency.rgb_batch(np.zeros((8, 8, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"floats in \[0, 1\]"):
        saliency.rgb_batch(np.full((8, 8, 3), 2.0))
