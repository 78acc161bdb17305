import pytest
import torch
from torch import nn

from utils import hooks


def small_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten())


def test_records_activations_and_gradients_then_removes_hooks():
    net = small_net()
    x = torch.randn(2, 3, 5, 5)
    with hooks.record(net, ["0", "2"], gradients=True) as rec:
        net(x)[:, 1].sum().backward()
    assert rec.activations["0"].shape == (2, 4, 5, 5)
    # gradient of sum of channel-1 averages w.r.t. the 1x1 conv output: 1/25 on channel 1, 0 on channel 0
    assert torch.allclose(rec.gradients["2"][:, 1], torch.full((2, 5, 5), 1 / 25))
    assert torch.count_nonzero(rec.gradients["2"][:, 0]) == 0
    assert hooks.count_hooks(net) == 0


def test_hooks_removed_after_exception():
    net = small_net()
    with pytest.raises(RuntimeError, match="boom"):
        with hooks.record(net, ["0"], gradients=True):
            assert hooks.count_hooks(net) == 1  # one forward hook; tensor hooks live on outputs
            raise RuntimeError("boom")
    assert hooks.count_hooks(net) == 0


def test_unknown_module_name_is_clear():
    with pytest.raises(KeyError, match="no module called 'layer9'"):
        with hooks.record(small_net(), ["layer9"]):
            pass


def test_detach_false_keeps_graph():
    net = small_net()
    with hooks.record(net, ["2"], detach=False) as rec:
        net(torch.randn(1, 3, 4, 4))
    assert rec.activations["2"].requires_grad


def basic_block():
    """A torchvision ResNet BasicBlock: in-place ReLUs after bn1 and after ``out += identity``."""
    from torchvision.models.resnet import BasicBlock

    torch.manual_seed(0)
    block = BasicBlock(4, 4).train(False)
    for bn in (block.bn1, block.bn2):  # non-trivial statistics, so BN is not the identity
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    return nn.Sequential(block)


def manual_block(block, x):
    """The same block written out of place, keeping every intermediate's gradient."""
    a1 = block.bn1(block.conv1(x))
    a2 = block.bn2(block.conv2(torch.relu(a1)))
    out = torch.relu(a2 + x)
    for t in (a1, a2, out):
        t.retain_grad()
    return a1, a2, out


def test_gradients_of_a_resnet_block_with_inplace_relu():
    """Regression: full backward hooks raised 'BackwardHookFunction is a view and is being
    modified inplace' on bn1/bn2; tensor hooks give the gradient of the value before the
    in-place ReLU, and the recorded activations are not changed by it."""
    net = basic_block()
    x = torch.randn(2, 4, 6, 6, requires_grad=True)
    weights = torch.randn(2, 4, 6, 6)
    with hooks.record(net, ["0.bn1", "0.bn2", "0"], gradients=True) as rec:
        (net(x) * weights).sum().backward()
    a1, a2, out = manual_block(net[0], x)
    (out * weights).sum().backward()
    for name, ref in (("0.bn1", a1), ("0.bn2", a2), ("0", out)):
        torch.testing.assert_close(rec.activations[name], ref.detach())
        torch.testing.assert_close(rec.gradients[name], ref.grad)
    assert (rec.activations["0.bn1"] < 0).any()  # recorded before the in-place ReLU
    assert hooks.count_hooks(net) == 0


def test_tuple_output_is_a_clear_error_and_hooks_are_removed():
    attention = nn.MultiheadAttention(4, 2, batch_first=True)
    x = torch.randn(1, 3, 4)
    with pytest.raises(TypeError, match="returned a tuple, not one tensor"):
        with hooks.record(attention, [""]):
            attention(x, x, x)
    assert hooks.count_hooks(attention) == 0


def test_gradients_under_no_grad_is_a_clear_error():
    net = small_net()
    with pytest.raises(RuntimeError, match="does not require grad"):
        with torch.no_grad(), hooks.record(net, ["2"], gradients=True):
            net(torch.randn(1, 3, 4, 4))
    assert hooks.count_hooks(net) == 0


def test_a_module_called_twice_keeps_the_last_call_and_its_gradient():
    """Like Lite0's model-level ReLU6, used after the stem and again after the head."""
    torch.manual_seed(0)
    act, conv = nn.ReLU6(), nn.Conv2d(2, 3, 3, stride=2, padding=1)
    x = torch.randn(1, 2, 8, 8, requires_grad=True)
    with hooks.record(act, [""], gradients=True) as rec:
        first = act(x * 4)
        second = act(conv(first))
        second.retain_grad()
        (second * 2).sum().backward()
    assert rec.activations[""].shape == second.shape == rec.gradients[""].shape == (1, 3, 4, 4)
    torch.testing.assert_close(rec.gradients[""], second.grad)
