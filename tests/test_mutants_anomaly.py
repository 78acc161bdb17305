"""Tests that kill mutants of utils.anomaly which the behaviour tests let survive
(``python -m tools.mutation anomaly``; results/mutation.md lists what is left).

The error messages are compared in full: they are part of the interface (each names the
problem and the way out), and a partial match lets a mangled message pass."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter
from torch import nn

import utils.anomaly as anomaly_module
from tests.references import knn_brute_force
from utils import metrics
from utils.anomaly import (
    METRICS,
    anomaly_maps,
    concat_taps,
    embed,
    evaluate,
    fit_pca,
    gaussian_blur,
    gaussian_kernel,
    image_scores,
    knn_patch_scores,
    nearest_distances,
    project,
    score_batches,
    scores_of,
    search_method,
    select_dims,
)
from utils.models import normalize

z = torch.zeros


def rand(
    *shape: int, seed: int = 0, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    return torch.rand(
        *shape, generator=torch.Generator().manual_seed(seed), dtype=dtype
    )


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 2, 1), nn.Conv2d(2, 3, 3, stride=2, padding=1))


@pytest.mark.parametrize(
    "call, error, message",
    [
        ("concat_taps([])", ValueError, "concat_taps needs at least one feature map"),
        (
            "concat_taps([z(1, 1, 4, 4), z(1, 4, 4)])",
            ValueError,
            "feature map 1 must be a (B, C, H, W) tensor, got (1, 4, 4)",
        ),
        (
            "concat_taps([np.zeros((1, 1, 4, 4))])",
            ValueError,
            "feature map 0 must be a (B, C, H, W) tensor, got ndarray",
        ),
        (
            "concat_taps([z(2, 1, 4, 4), z(3, 1, 2, 2)])",
            ValueError,
            "feature map 1 has batch size 3, map 0 has 2",
        ),
        (
            "concat_taps([z(1, 1, 6, 6), z(1, 1, 4, 4)])",
            ValueError,
            "feature map 1 is 4x4; the finest map (6x6) must be the same integer multiple of it in both directions",
        ),
        (
            "concat_taps([z(1, 1, 4, 6), z(1, 1, 2, 4)])",
            ValueError,
            "feature map 1 is 2x4; the finest map (4x6) must be the same integer multiple of it in both directions",
        ),
        (
            "concat_taps([z(1, 1, 6, 4), z(1, 1, 4, 2)])",
            ValueError,
            "feature map 1 is 4x2; the finest map (6x4) must be the same integer multiple of it in both directions",
        ),
        (
            "concat_taps([z(1, 1, 4, 8), z(1, 1, 2, 2)])",
            ValueError,
            "feature map 1 is 2x2; the finest map (4x8) must be the same integer multiple of it in both directions",
        ),
        (
            "concat_taps([z(1, 1, 5, 4), z(1, 1, 2, 2)])",
            ValueError,
            (
                "feature map 1 is 2x2; the finest map (5x4) must be the same integer "
                "multiple of it in both directions"
            ),
        ),
        (
            "next(embed(tiny_net(), z(2, 1, 8, 8), {'a': '0'}, 'efficientnet_lite0'))",
            ValueError,
            "images must be (N, 3, S, S), got (2, 1, 8, 8)",
        ),
        (
            "next(embed(tiny_net(), z(2, 8, 8), {'a': '0'}, 'efficientnet_lite0'))",
            ValueError,
            "images must be (N, 3, S, S), got (2, 8, 8)",
        ),
        (
            "next(embed(tiny_net(), z(2, 3, 8, 8), {'a': '0'}, 'efficientnet_lite0', batch_size=0))",
            ValueError,
            "batch_size must be >= 1, got 0",
        ),
        ("select_dims(10, 11, 0)", ValueError, "n_dims must be in [1, 10], got 11"),
        ("select_dims(10, 0, 0)", ValueError, "n_dims must be in [1, 10], got 0"),
        (
            "gaussian_kernel(0.0)",
            ValueError,
            "sigma must be a finite number > 0, got 0.0",
        ),
        (
            "gaussian_kernel(float('inf'))",
            ValueError,
            "sigma must be a finite number > 0, got inf",
        ),
        (
            "gaussian_kernel(1.0, 0.0)",
            ValueError,
            "truncate must be a finite number > 0, got 0.0",
        ),
        (
            "gaussian_kernel(1.0, float('inf'))",
            ValueError,
            "truncate must be a finite number > 0, got inf",
        ),
        (
            "gaussian_blur(z(4, 4), 1.0)",
            ValueError,
            "maps must be (B, H, W), got (4, 4)",
        ),
        (
            "gaussian_blur(z(2, 4, 0), 1.0)",
            ValueError,
            "maps need at least one pixel each, got shape (2, 4, 0)",
        ),
        (
            "gaussian_blur(z(2, 0, 4), 1.0)",
            ValueError,
            "maps need at least one pixel each, got shape (2, 0, 4)",
        ),
        (
            "gaussian_blur(z(1, 3, 3, dtype=torch.long), 1.0)",
            TypeError,
            (
                "maps must be a float tensor, got torch.int64 (integer maps would round the smoothed values to zero); "
                "convert with .float()"
            ),
        ),
        (
            "anomaly_maps(z(3, 3), 8)",
            ValueError,
            "distances must be (B, h, w), got (3, 3)",
        ),
        (
            "anomaly_maps(z(1, 3, 0), 8)",
            ValueError,
            "distances need at least one pixel each, got shape (1, 3, 0)",
        ),
        (
            "anomaly_maps(z(1, 3, 3, dtype=torch.long), 8)",
            TypeError,
            "distances must be a float tensor to be resampled, got torch.int64; convert with .float()",
        ),
        ("image_scores(z(3))", ValueError, "maps must be (B, H, W), got (3,)"),
        (
            "image_scores(z(1, 0, 2))",
            ValueError,
            "maps need at least one pixel each, got shape (1, 0, 2)",
        ),
        (
            "knn_patch_scores(z(2, 3), z(1, 6, 3, 4))",
            ValueError,
            "train and test must be (N, C, H, W), got (2, 3) and (1, 6, 3, 4)",
        ),
        (
            "knn_patch_scores(z(1, 6, 3, 4), z(2, 3))",
            ValueError,
            "train and test must be (N, C, H, W), got (1, 6, 3, 4) and (2, 3)",
        ),
        (
            "knn_patch_scores(z(1, 6, 3, 4), z(1, 5, 3, 4))",
            ValueError,
            "train has 6 channels, test has 5",
        ),
        (
            "knn_patch_scores(z(0, 6, 3, 4), z(1, 6, 3, 4))",
            ValueError,
            "knn_patch_scores needs at least one training patch, got train of shape (0, 6, 3, 4)",
        ),
        (
            "knn_patch_scores(z(2, 6, 3, 4), z(1, 6, 3, 4), k=25)",
            ValueError,
            "k must be in [1, 24], got 25",
        ),
        (
            "knn_patch_scores(z(2, 6, 3, 4), z(1, 6, 3, 4), k=0)",
            ValueError,
            "k must be in [1, 24], got 0",
        ),
        (
            "search_method('kdtree', 'cpu')",
            ValueError,
            "unknown search method 'kdtree'; choose one of ('auto', 'screen', 'brute')",
        ),
        (
            "nearest_distances(z(10, 4), z(3, 5))",
            ValueError,
            "memory and queries must be (N, C) and (Q, C), got (10, 4) and (3, 5)",
        ),
        (
            "nearest_distances(z(10), z(3, 4))",
            ValueError,
            "memory and queries must be (N, C) and (Q, C), got (10,) and (3, 4)",
        ),
        (
            "nearest_distances(z(10, 4), z(3, 4, 1))",
            ValueError,
            "memory and queries must be (N, C) and (Q, C), got (10, 4) and (3, 4, 1)",
        ),
        (
            "nearest_distances(z(10, 4), z(3, 4, dtype=torch.float64))",
            ValueError,
            "memory and queries must share dtype and device, got torch.float32 on cpu and torch.float64 on cpu",
        ),
        (
            "nearest_distances(z(10, 4), z(3, 4, device='meta'))",
            ValueError,
            "memory and queries must share dtype and device, got torch.float32 on cpu and torch.float32 on meta",
        ),
        (
            "nearest_distances(z(10, 4), z(3, 4), k=11)",
            ValueError,
            "k must be in [1, 10], got 11",
        ),
        (
            "nearest_distances(z(10, 4), z(3, 4), k=0)",
            ValueError,
            "k must be in [1, 10], got 0",
        ),
        (
            "nearest_distances(z(10, 4), z(3, 4), chunk=0)",
            ValueError,
            "chunk must be >= 1, got 0",
        ),
        (
            "nearest_distances(torch.full((10, 4), 1e20), z(3, 4))",
            ValueError,
            "memory must be finite, with squared norms below the dtype's maximum (found inf or nan)",
        ),
        (
            "nearest_distances(z(10, 4), torch.full((3, 4), float('nan')), method='brute')",
            ValueError,
            "queries must be finite, with squared norms below the dtype's maximum (found inf or nan)",
        ),
        (
            "fit_pca(z(2, 3), 1)",
            ValueError,
            "embeddings must be (N, F, H, W), got (2, 3)",
        ),
        (
            "fit_pca([rand(2, 3, 2, 2), z(2, 3)], 1)",
            ValueError,
            "embeddings must be (N, F, H, W), got (2, 3)",
        ),
        (
            "fit_pca([], 1)",
            ValueError,
            "fit_pca needs at least one training patch vector, got no embeddings",
        ),
        (
            "fit_pca(rand(2, 3, 2, 2), 4)",
            ValueError,
            "n_dims must be in [1, number of channels], got 4",
        ),
        (
            "fit_pca(rand(2, 3, 2, 2), 0)",
            ValueError,
            "n_dims must be in [1, number of channels], got 0",
        ),
        (
            "project(z(2, 5, 3, 4), z(6), z(6, 3))",
            ValueError,
            "embeddings (2, 5, 3, 4) do not match components (6, 3)",
        ),
        (
            "project(z(5, 3, 4), z(6), z(6, 3))",
            ValueError,
            "embeddings (5, 3, 4) do not match components (6, 3)",
        ),
        (
            "score_batches(lambda x: x[:, 0], z(2, 3, 4, 4), batch_size=0)",
            ValueError,
            "batch_size must be >= 1, got 0",
        ),
        (
            "evaluate(lambda x: x[:, 0], z(2, 8, 8, dtype=torch.bool), z(2))",
            ValueError,
            "a scorer function needs the test images",
        ),
        (
            "evaluate(z(3, 4, 4), z(2, 8, 8, dtype=torch.bool), z(3))",
            ValueError,
            "masks must be (B, H, W) with one mask per score map, got (2, 8, 8) for 3 maps",
        ),
        (
            "evaluate(z(2, 4, 4), z(2, 8), z(2))",
            ValueError,
            "masks must be (B, H, W) with one mask per score map, got (2, 8) for 2 maps",
        ),
    ],
)
def test_error_messages_in_full(call, error, message):
    names = {
        **{name: getattr(anomaly_module, name) for name in anomaly_module.__all__},
        "np": np,
        "torch": torch,
        "z": z,
        "rand": rand,
        "tiny_net": tiny_net,
    }
    with pytest.raises(error) as raised:
        eval(call, names)
    assert str(raised.value) == message


# --- concat_taps, embed, select_dims ------------------------------------------------------------


def test_concat_taps_with_unequal_sides_and_one_map():
    fine, coarse = rand(2, 1, 4, 6), rand(2, 3, 2, 3, seed=1)
    out = concat_taps([fine, coarse])
    assert out.shape == (2, 4, 4, 6)
    assert torch.equal(out[:, :1], fine)
    assert torch.equal(
        out[:, 1:], coarse.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    )
    assert torch.equal(concat_taps([coarse]), coarse)
    # the coarse map first: the finest size is still the largest one
    assert torch.equal(concat_taps([coarse, fine])[:, 3:], fine)


def test_embed_batches_equal_the_taps_of_the_whole_set():
    net, images = tiny_net(), rand(5, 3, 8, 8)
    batches = list(
        embed(net, images, {"a": "0", "b": "1"}, "efficientnet_lite0", batch_size=2)
    )
    assert [tuple(b.shape) for b in batches] == [
        (2, 5, 8, 8),
        (2, 5, 8, 8),
        (1, 5, 8, 8),
    ]
    x = normalize(images, "efficientnet_lite0")
    expected = concat_taps([net[0](x), net[1](net[0](x))])
    torch.testing.assert_close(torch.cat(batches), expected, rtol=1e-6, atol=1e-6)
    one = list(embed(net, images, {"b": "1"}, "resnet18", batch_size=1))
    assert len(one) == 5 and one[0].shape == (1, 3, 4, 4)
    torch.testing.assert_close(
        one[0], net(normalize(images[:1], "resnet18")), rtol=1e-6, atol=1e-6
    )
    # 16 a batch
    assert len(list(embed(net, images, {"a": "0"}, "efficientnet_lite0"))) == 1


def test_embed_runs_on_the_models_device_by_default():
    net = tiny_net().to("meta")
    batches = list(
        embed(net, rand(3, 3, 8, 8), {"a": "0"}, "efficientnet_lite0", batch_size=2)
    )
    assert [b.device.type for b in batches] == ["meta", "meta"]
    moved = list(
        embed(
            tiny_net(),
            rand(3, 3, 8, 8),
            {"a": "0"},
            "efficientnet_lite0",
            device="meta",
        )
    )
    assert moved[0].device.type == "meta"


def test_select_dims_bounds_and_values():
    assert torch.equal(select_dims(5, 5, seed=3), torch.arange(5))
    assert select_dims(5, 1, seed=3).shape == (1,)
    expected = (
        torch.randperm(20, generator=torch.Generator().manual_seed(7))[:6].sort().values
    )
    assert torch.equal(select_dims(20, 6, seed=7), expected)
    assert select_dims(20, 6, seed=7).dtype == torch.int64


# --- kernels, blur, maps -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sigma, truncate, radius",
    [(1.0, 4.0, 4), (0.5, 3.0, 2), (1.0, 2.4, 2), (1.0, 2.6, 3), (0.2, 1.0, 0)],
)
def test_gaussian_kernel_radius_and_values(sigma, truncate, radius):
    kernel = gaussian_kernel(sigma, truncate)
    assert kernel.dtype == torch.float64 and kernel.shape == (2 * radius + 1,)
    x = np.arange(-radius, radius + 1)
    expected = np.exp(-0.5 * (x / sigma) ** 2)
    np.testing.assert_allclose(
        kernel.numpy(), expected / expected.sum(), rtol=1e-15, atol=0
    )
    assert gaussian_kernel(sigma).shape == (2 * int(4 * sigma + 0.5) + 1,)


@pytest.mark.parametrize("size, sigma", [((2, 3), 4.0), ((1, 5), 1.0), ((6, 1), 2.0)])
def test_gaussian_blur_on_maps_smaller_than_the_kernel(size, sigma):
    maps = rand(2, *size, dtype=torch.float64)
    expected = np.stack([gaussian_filter(m, sigma=sigma) for m in maps.numpy()])
    np.testing.assert_allclose(
        gaussian_blur(maps, sigma).numpy(), expected, rtol=1e-12, atol=1e-14
    )
    expected = np.stack(
        [gaussian_filter(m, sigma=sigma, truncate=1.5) for m in maps.numpy()]
    )
    np.testing.assert_allclose(
        gaussian_blur(maps, sigma, truncate=1.5).numpy(),
        expected,
        rtol=1e-12,
        atol=1e-14,
    )


def test_gaussian_blur_keeps_float32_and_shape():
    maps = rand(3, 5, 7)
    out = gaussian_blur(maps, 1.0)
    assert out.dtype == torch.float32 and out.shape == (3, 5, 7)
    expected = np.stack([gaussian_filter(m, sigma=1.0) for m in maps.double().numpy()])
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_anomaly_maps_sizes_defaults_and_no_resampling():
    distances = rand(2, 3, 4, dtype=torch.float64)
    up = F.interpolate(
        distances[:, None], size=(6, 8), mode="bilinear", align_corners=False
    )[:, 0]
    torch.testing.assert_close(
        anomaly_maps(distances, (6, 8), sigma=None), up, rtol=0, atol=0
    )
    torch.testing.assert_close(
        anomaly_maps(distances, [6, 8]), gaussian_blur(up, 4.0), rtol=0, atol=0
    )
    square = F.interpolate(
        distances[:, None], size=(6, 6), mode="bilinear", align_corners=False
    )[:, 0]
    torch.testing.assert_close(
        anomaly_maps(distances, 6, sigma=None), square, rtol=0, atol=0
    )
    # at the image size already: not resampled, integer scores allowed
    assert anomaly_maps(distances, (3, 4), sigma=None) is distances
    counts = torch.arange(12).view(1, 3, 4)
    assert anomaly_maps(counts, (3, 4), sigma=None) is counts
    torch.testing.assert_close(
        anomaly_maps(distances, (3, 4), sigma=1.0), gaussian_blur(distances, 1.0)
    )


def test_image_scores_are_maxima():
    maps = torch.tensor([[[1.0, -2.0], [0.5, 0.0]], [[-3.0, -1.0], [-2.0, -5.0]]])
    assert image_scores(maps).tolist() == [1.0, -1.0]


# --- kNN ---------------------------------------------------------------------------------------------


def test_knn_patch_scores_exact_path_and_dtypes():
    train, test = rand(3, 4, 3, 3, dtype=torch.float64), rand(2, 4, 2, 5, seed=1)
    memory = train.permute(0, 2, 3, 1).reshape(-1, 4)
    queries = test.permute(0, 2, 3, 1).reshape(-1, 4)
    expected = (
        knn_brute_force(memory, queries.double(), 3).mean(axis=1).reshape(2, 2, 5)
    )
    for exact in (False, True):
        got = knn_patch_scores(train, test, k=3, exact=exact)
        assert got.dtype == torch.float64 and got.shape == (2, 2, 5)
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10)
    got = knn_patch_scores(train, test, k=27, exact=True)  # k = every training patch
    np.testing.assert_allclose(
        got.numpy(),
        knn_brute_force(memory, queries, 27).mean(axis=1).reshape(2, 2, 5),
        rtol=1e-10,
    )


def test_knn_patch_scores_chunks(monkeypatch):
    calls, nearest = [], []
    cdist = torch.cdist
    monkeypatch.setattr(
        torch, "cdist", lambda q, m: calls.append(len(q)) or cdist(q, m)
    )
    original = anomaly_module.nearest_distances
    monkeypatch.setattr(
        anomaly_module,
        "nearest_distances",
        lambda m, q, k, chunk: nearest.append(chunk) or original(m, q, k, chunk),
    )
    test = rand(1, 1, 10, 10, seed=1)
    knn_patch_scores(rand(1, 1, 256, 256), test)  # 2^22 // 2^16 = 64 queries a block
    assert calls == [64, 36]
    calls.clear()
    # 2^22 // 3 x 2^20 = 1: at least one
    knn_patch_scores(rand(1, 1, 3, 1024 * 1024), test[..., :2, :1])
    assert calls == [1, 1]
    calls.clear()
    knn_patch_scores(rand(1, 1, 4, 4), test, chunk=30)
    assert calls == [30, 30, 30, 10]
    knn_patch_scores(rand(1, 1, 4, 4), test, exact=True)
    knn_patch_scores(rand(1, 1, 4, 4), test, exact=True, chunk=7)
    assert nearest == [1024, 7]


def test_nearest_distances_edges():
    g = torch.Generator().manual_seed(0)
    memory, queries = torch.randn(10, 4, generator=g), torch.randn(3, 4, generator=g)
    for method in ("screen", "brute"):
        empty = nearest_distances(memory, queries[:0], k=10, method=method)
        assert empty.shape == (0, 10) and empty.dtype == torch.float32
        got = nearest_distances(memory, queries, k=10, chunk=1, method=method)
        np.testing.assert_allclose(
            got.numpy(), knn_brute_force(memory, queries, 10), rtol=1e-6
        )
    default = nearest_distances(memory, queries)
    assert default.shape == (3, 1)
    np.testing.assert_allclose(
        default[:, 0].numpy(), knn_brute_force(memory, queries), rtol=1e-6
    )


def test_screen_slack_is_the_documented_bound():
    memory = torch.tensor([[3.0, 4.0, 0.0], [1.0, 0.0, 0.0]])
    squared = torch.einsum("nc,nc->n", memory, memory)
    g, radius, top = anomaly_module._screen_slack(memory, squared)
    u = 2.0**-24
    assert g == 4 * (4 * u / (1 - 4 * u))
    assert float(top) == 25.0 and float(radius) == pytest.approx(5 * (1 + u), rel=1e-7)
    g64, radius64, _top64 = anomaly_module._screen_slack(
        memory.double(), squared.double()
    )
    assert g64 == 4 * (4 * 2.0**-53 / (1 - 4 * 2.0**-53)) and float(radius64) == 5 * (
        1 + 2.0**-53
    )


@pytest.mark.parametrize(
    "precision, expected",
    [("highest", 2.0**-24), ("high", 2.0**-11), ("medium", 2.0**-8)],
)
def test_product_roundoff(precision, expected):
    # (torch.backends.cuda.matmul.allow_tf32 follows the precision: True for "high" and "medium")
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        assert anomaly_module._product_roundoff(torch.float32) == expected
        assert anomaly_module._product_roundoff(torch.float64) == 2.0**-53
        assert anomaly_module._product_roundoff(torch.bfloat16) == 2.0**-8
    finally:
        torch.set_float32_matmul_precision(previous)


def test_search_method_passes_explicit_methods_through():
    assert search_method("brute", "cpu") == "brute"
    assert search_method("screen", torch.device("cuda")) == "screen"
    assert search_method("auto", "cpu") == "screen"


# --- PCA ---------------------------------------------------------------------------------------------


def test_fit_pca_exact_on_a_known_covariance():
    # patch vectors (+-2, 0, 0), (0, +-1, 0), (0, 0, +-0.5) around (1, 2, 3): axes in order x, y, z
    v = torch.tensor(
        [[2.0, 0, 0], [-2, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 0.5], [0, 0, -0.5]]
    ) + torch.tensor([1, 2, 3])
    train = v.T.reshape(1, 3, 2, 3)
    mean, components = fit_pca(train, 2)
    assert mean.dtype == torch.float32 and components.dtype == torch.float32
    assert mean.tolist() == [1.0, 2.0, 3.0]
    assert torch.equal(components.abs(), torch.tensor([[1.0, 0], [0, 1], [0, 0]]))
    _, three = fit_pca(list(train.split(1, dim=3)), 3)  # three batches of 2 vectors
    assert torch.equal(three.abs(), torch.eye(3))
    projected = project(train.double(), mean, components)
    assert projected.dtype == torch.float64 and projected.shape == (1, 2, 2, 3)
    expected = torch.einsum(
        "nf,fd->nd", (v - torch.tensor([1, 2, 3])).double(), components.double()
    )
    assert torch.equal(projected[0].reshape(2, 6).T, expected)


# --- evaluation ----------------------------------------------------------------------------------------


def evaluation_case():
    masks = torch.zeros(4, 8, 8, dtype=torch.bool)
    masks[1, 2:5, 3:6] = True
    masks[3, 5:8, 0:3] = True
    labels = torch.tensor([0, 1, 0, 1])
    scores = rand(4, 4, 4, dtype=torch.float64)
    scores[1, 1:3, 1:3] += 0.6
    scores[0, 0, 3] += 0.8
    return scores, masks, labels


def test_scores_of_names_and_values():
    scores, masks, labels = evaluation_case()
    maps = anomaly_maps(scores, 8, sigma=None)
    got = scores_of(maps, masks, labels)
    assert tuple(got) == METRICS == ("image AUROC", "pixel AUROC", "PRO")
    assert got == {
        "image AUROC": metrics.image_auroc(maps.flatten(1).amax(1), labels),
        "pixel AUROC": metrics.pixel_auroc(maps, masks),
        "PRO": metrics.pro_score(maps, masks),
    }


def test_evaluate_defaults_and_a_scorer_in_batches(monkeypatch):
    scores, masks, labels = evaluation_case()
    expected = scores_of(anomaly_maps(scores, (8, 8), "bilinear", 4.0), masks, labels)
    assert evaluate(scores, masks, labels) == expected
    assert evaluate(scores, masks, labels, sigma=None, mode="bicubic") == scores_of(
        anomaly_maps(scores, (8, 8), "bicubic", None), masks, labels
    )
    images = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 3, 2, 2)
    sizes = []

    def scorer(x):
        sizes.append(len(x))
        return scores[x[:, 0, 0, 0].long()]

    assert evaluate(scorer, masks, labels, images=images) == expected
    assert evaluate(scorer, masks, labels, images=images, batch_size=3) == expected
    assert sizes == [4, 3, 1]
    many = torch.arange(20.0).view(20, 1, 1, 1)
    sizes.clear()
    out = score_batches(lambda x: sizes.append(len(x)) or x[:, 0], many)
    assert sizes == [16, 4] and torch.equal(out, many[:, 0])
    assert score_batches(lambda x: x[:, 0], many, batch_size=1).shape == (20, 1, 1)


def test_tensors_follow_the_inputs_not_the_default_device():
    # a default device elsewhere (meta here, a GPU in a notebook) must not catch the search's
    # index tensors or the PCA's mean: they follow the memory and the embeddings
    memory, queries = rand(150, 3, seed=1), rand(7, 3, seed=2)
    nearest = {
        m: nearest_distances(memory, queries, 2, method=m) for m in ("screen", "brute")
    }
    with torch.device("meta"):
        for method, expected in nearest.items():
            assert torch.equal(
                nearest_distances(memory, queries, 2, method=method), expected
            )
    projected = project(z(2, 3, 2, 2, device="meta"), rand(3), rand(3, 2))
    assert projected.device.type == "meta" and projected.shape == (2, 2, 2, 2)


def test_nearest_distances_to_a_memory_of_zeros_and_no_resize_warnings():
    queries = torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 0.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for method in ("screen", "brute"):
            got = nearest_distances(torch.zeros(100, 3), queries, 2, method=method)
            assert got.tolist() == [[5.0, 5.0], [0.0, 0.0]]


def test_screen_slack_radius_with_reduced_precision_products():
    memory = torch.tensor([[3.0, 4.0, 0.0], [1.0, 0.0, 0.0]])
    squared = torch.einsum("nc,nc->n", memory, memory)
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        _, radius, _ = anomaly_module._screen_slack(memory, squared)
    finally:
        torch.set_float32_matmul_precision(previous)
    assert float(radius) == 5 * (1 + 2.0**-11)


@pytest.mark.parametrize(
    "precision, tf32, expected",
    [
        ("highest", True, 2.0**-11),
        ("high", False, 2.0**-11),
        ("highest", False, 2.0**-24),
    ],
)
def test_product_roundoff_reads_both_settings(precision, tf32, expected, monkeypatch):
    # recent torch ties allow_tf32 to the precision; older ones did not: either may allow TF32
    monkeypatch.setattr(torch.backends.cuda, "matmul", SimpleNamespace(allow_tf32=tf32))
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        assert anomaly_module._product_roundoff(torch.float32) == expected
    finally:
        torch.set_float32_matmul_precision(previous)


def test_evaluate_scores_16_images_at_a_time_by_default():
    scores, masks, labels = evaluation_case()
    scores, masks, labels = (
        scores.repeat(5, 1, 1),
        masks.repeat(5, 1, 1),
        labels.repeat(5),
    )
    images = torch.arange(20.0).view(20, 1, 1, 1).expand(20, 3, 2, 2)
    sizes = []

    def scorer(x):
        sizes.append(len(x))
        return scores[x[:, 0, 0, 0].long()]

    assert evaluate(scorer, masks, labels, images=images) == evaluate(
        scores, masks, labels
    )
    assert sizes == [16, 4]
