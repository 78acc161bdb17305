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
            assert hooks.count_hooks(net) == 2
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
