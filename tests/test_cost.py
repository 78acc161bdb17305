"""utils.cost: the paper's formulas, MobileNet V1 as Table 1, and the counting model walker.

References: hand-computed values (the 6x6x5 -> 4x4x7 worked example), the recounts of the
paper's tables in ../shared/papers.md, and torch.utils.flop_counter.FlopCounterMode, which
counts 2 FLOPs per multiply-add with the same rules (no bias, norm, activation or pooling).
"""
from __future__ import annotations

import random

import pytest
import torch
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from utils import cost
from utils.hooks import count_hooks


def flop_counter_madds(model: nn.Module, x: torch.Tensor) -> float:
    """FlopCounterMode's total for one pass, as mult-adds per image."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() / 2 / x.shape[0]


def test_worked_example_of_the_source_post():
    # 6x6x5 input, 3x3 kernel, no padding -> 4x4x7
    d_f = cost.conv_output_size(6, 3)
    assert d_f == 4
    assert cost.standard_conv_madds(3, 5, 7, d_f) == 5040
    assert cost.depthwise_madds(3, 5, d_f) == 720 and cost.pointwise_madds(5, 7, d_f) == 560
    assert (720 + 560) / 5040 == pytest.approx(cost.separable_ratio(7, 3))
    layer = nn.Conv2d(5, 7, 3, bias=False)
    assert cost.count(layer, torch.zeros(1, 5, 6, 6)).madds == 5040 == flop_counter_madds(layer, torch.zeros(1, 5, 6, 6))


def test_table3_layer_costs():
    # 14x14x512 -> 14x14x512, 3x3 (paper Table 3: 462 / 52.3 / 29.6 / 15.1 M mult-adds)
    assert round(cost.standard_conv_madds(3, 512, 512, 14) / 1e6) == 462
    assert round((cost.depthwise_madds(3, 512, 14) + cost.pointwise_madds(512, 512, 14)) / 1e6, 1) == 52.3
    assert round((cost.depthwise_madds(3, 384, 14) + cost.pointwise_madds(384, 384, 14)) / 1e6, 1) == 29.6
    assert round((cost.depthwise_madds(3, 384, 10) + cost.pointwise_madds(384, 384, 10)) / 1e6, 1) == 15.1


@pytest.mark.parametrize("seed", range(12))
def test_analytic_equals_counted_on_random_conv_layers(seed):
    rng = random.Random(seed)
    groups = rng.choice([1, 1, 2, 4, "dw"])
    c_in = rng.choice([4, 8, 12])
    c_out = c_in if groups == "dw" else rng.choice([4, 8, 16])
    groups = c_in if groups == "dw" else groups
    kernel = (rng.randint(1, 4), rng.randint(1, 4))
    stride, padding, dilation = (rng.randint(1, 3), rng.randint(1, 2)), (rng.randint(0, 2), rng.randint(0, 2)), (rng.randint(1, 2), 1)
    h, w = rng.randint(9, 15), rng.randint(9, 15)  # non-square
    layer = nn.Conv2d(c_in, c_out, kernel, stride, padding, dilation, groups, bias=rng.random() < 0.5)
    x = torch.randn(2, c_in, h, w)
    out = (cost.conv_output_size(h, kernel[0], stride[0], padding[0], dilation[0]),
           cost.conv_output_size(w, kernel[1], stride[1], padding[1], dilation[1]))
    assert layer(x).shape[2:] == out
    report = cost.count(layer, x)
    expected = cost.conv2d_madds(c_in, c_out, kernel, out, groups)
    assert report.madds == expected == flop_counter_madds(layer, x)
    assert report.weights == cost.conv2d_weights(c_in, c_out, kernel, groups) == layer.weight.numel()
    assert report.params == sum(p.numel() for p in layer.parameters())


def test_linear_counts_every_output_row():
    fc = nn.Linear(6, 5)
    x = torch.randn(3, 4, 6)  # 4 rows of 6 features per sample
    report = cost.count(fc, x)
    assert report.madds == 4 * 6 * 5 == flop_counter_madds(fc, x)
    assert report.layers[0].kind == "fc" and (report.weights, report.params) == (30, 35)


def test_layer_kinds():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3, groups=8), nn.Conv2d(8, 16, 1),
                          nn.Conv2d(16, 16, 3, groups=4))
    kinds = [layer.kind for layer in cost.count(model, torch.zeros(1, 3, 16, 16)).layers]
    assert kinds == ["conv", "dw", "pw", "group"]


@pytest.mark.parametrize("name,build,size", [
    ("mobilenet_v1 1.0", lambda: cost.mobilenet_v1(), 224),
    ("mobilenet_v1 0.5 shallow", lambda: cost.mobilenet_v1(0.5, variant="shallow"), 160),
    ("conv mobilenet 0.25", lambda: cost.mobilenet_v1(0.25, variant="conv"), 128),
    ("torchvision mobilenet_v2", lambda: torchvision.models.mobilenet_v2(weights=None), 224),
    ("torchvision resnet18", lambda: torchvision.models.resnet18(weights=None), 96),
])
def test_counted_equals_flop_counter_on_whole_models(name, build, size):
    model = build().eval()
    x = torch.randn(2, 3, size, size)
    assert cost.count(model, x).madds == flop_counter_madds(model, x), name


def test_counted_equals_analytic_table1():
    for alpha, res, variant in [(1.0, 224, "separable"), (0.75, 192, "shallow"), (0.5, 96, "conv"), (0.6, 128, "separable")]:
        spec = cost.mobilenet_v1_spec(alpha, res, variant)
        report = cost.count(cost.mobilenet_v1(alpha, res, variant).eval(), torch.zeros(1, 3, res, res))
        assert (report.madds, report.weights) == cost.analytic_cost(spec)
        assert [layer.madds for layer in report.layers] == [s.madds for s in spec]


def test_tables_6_and_7_equal_the_recounts():
    # exact recounts from ../shared/papers.md
    assert cost.analytic_cost(cost.mobilenet_v1_spec(1.0, 224)) == (568_740_352, 4_209_088)
    assert cost.analytic_cost(cost.mobilenet_v1_spec(1.0, 160))[0] == 290_675_200
    assert cost.analytic_cost(cost.mobilenet_v1_spec(0.5, 160)) == (76_524_800, 1_319_648)
    # Table 6 (alpha at 224) and Table 7 (resolution at alpha 1), printed in M: the paper
    # rounds 568.7 to 569 but truncates 290.7 to 290, so compare within one printed unit
    printed = {(0.75, 224): (325, 2.6), (0.5, 224): (149, 1.3), (0.25, 224): (41, 0.5),
               (1.0, 224): (569, 4.2), (1.0, 192): (418, 4.2), (1.0, 160): (290, 4.2), (1.0, 128): (186, 4.2)}
    for (alpha, res), (madds, params) in printed.items():
        m, w = cost.analytic_cost(cost.mobilenet_v1_spec(alpha, res))
        assert abs(m / 1e6 - madds) < 1 and abs(w / 1e6 - params) < 0.1, (alpha, res)
    # the other tables' recounts
    m, w = cost.analytic_cost(cost.mobilenet_v1_spec(variant="shallow"))
    # 2,875,328 weights; papers.md's "2.876 M" is this plus the FC layer's 1000 biases
    assert (round(m / 1e6, 2), w) == (307.32, 2_875_328)
    spec = cost.mobilenet_v1_spec(variant="conv")
    assert round(cost.analytic_cost(spec)[0] / 1e6, 2) == 4867.29
    assert round(cost.analytic_cost(spec, include_fc=False)[0] / 1e6, 2) == 4866.27
    assert round(cost.analytic_cost(spec)[1] / 1e6, 2) == 29.28


def test_table2_first_layer_share_is_1_91_percent():
    shares = cost.count(cost.mobilenet_v1().eval(), torch.zeros(1, 3, 224, 224)).by_kind()
    total = sum(m for m, _ in shares.values())
    assert round(100 * shares["conv"][0] / total, 2) == 1.91  # the paper prints 1.19


def test_second_to_last_dw_layer_keeps_7x7():
    spec = cost.mobilenet_v1_spec()
    assert [s.size_out for s in spec if s.kind == "dw"][-2:] == [7, 7]


class _OwnWeight(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(9, 9))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.w


def test_unsupported_layers_are_reported_not_skipped():
    model = nn.Sequential(nn.Conv2d(4, 4, 1), nn.ConvTranspose2d(4, 4, 2), nn.Flatten(2),
                          _OwnWeight())
    x = torch.zeros(1, 4, 2, 2)
    with pytest.raises(cost.UnsupportedLayerError, match=r"1 \(ConvTranspose2d\).*3 \(_OwnWeight\)"):
        cost.count(model, x)
    assert count_hooks(model) == 0
    report = cost.count(model, x, strict=False)
    assert report.unsupported == [("1", "ConvTranspose2d"), ("3", "_OwnWeight")]
    assert report.madds == 4 * 4 * 2 * 2  # only the 1x1 conv
    assert count_hooks(model) == 0


def test_hooks_removed_after_an_exception():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Linear(5, 2))  # wrong width for the Linear
    with pytest.raises(RuntimeError):
        cost.count(model, torch.zeros(1, 3, 8, 8))
    assert count_hooks(model) == 0
    cost.count(model, torch.zeros(1, 3, 7, 7))
    assert count_hooks(model) == 0


def test_bad_inputs():
    with pytest.raises(ValueError, match="batched"):
        cost.count(nn.Linear(2, 2), torch.zeros(2))
    with pytest.raises(ValueError, match="variant"):
        cost.mobilenet_v1_spec(variant="deep")
    with pytest.raises(ValueError, match="alpha"):
        cost.mobilenet_v1_spec(alpha=1.5)
    with pytest.raises(ValueError, match="groups"):
        cost.conv2d_madds(6, 4, (3, 3), (5, 5), groups=4)
    with pytest.raises(ValueError, match="does not fit"):
        cost.conv_output_size(2, 5)
    with pytest.raises(ValueError, match="positive"):
        cost.standard_conv_madds(3, 0, 4, 4)


def test_peak_memory_of_a_layer_is_its_output_and_intermediates():
    x = torch.randn(1, 16, 12, 12)
    std = nn.Conv2d(16, 16, 3, padding=1, bias=False)
    sep = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), nn.Conv2d(16, 16, 1, bias=False))
    with torch.no_grad():
        assert cost.peak_memory(lambda: std(x)) == x.numel() * 4  # the output only
        assert cost.peak_memory(lambda: sep(x)) == 2 * x.numel() * 4  # + the depthwise output


def test_latency_restores_threads_and_checks_arguments():
    before = torch.get_num_threads()
    seconds = cost.latency(lambda: torch.ones(8) * 2, repeats=3, warmup=1, threads=1)
    assert seconds >= 0 and torch.get_num_threads() == before
    with pytest.raises(ValueError, match="repeats"):
        cost.latency(lambda: None, repeats=0)


def test_custom_blocks_build_a_smaller_network_of_the_same_kind():
    blocks = ((1, 64), (2, 128))
    spec = cost.mobilenet_v1_spec(0.5, 28, blocks=blocks, num_classes=10)
    assert [s.kind for s in spec] == ["conv", "dw", "pw", "dw", "pw", "fc"]
    assert [s.size_out for s in spec[:-1]] == [14, 14, 14, 7, 7]
    model = cost.mobilenet_v1(0.5, 28, num_classes=10, in_channels=1, blocks=blocks).eval()
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ValueError, match="shallow"):
        cost.mobilenet_v1_spec(variant="shallow", blocks=blocks)
