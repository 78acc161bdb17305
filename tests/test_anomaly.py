"""Tests of utils.anomaly and utils.padim (PaDiM chapter) against slow, obvious references."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter
from scipy.spatial.distance import mahalanobis

import utils.anomaly as anomaly_module
import utils.padim as padim_module
from tests.references import knn_brute_force
from utils.anomaly import (
    anomaly_maps,
    concat_taps,
    embed,
    fit_pca,
    gaussian_blur,
    image_scores,
    knn_patch_scores,
    nearest_distances,
    project,
    search_method,
    select_dims,
)
from utils.padim import PaDiM


def unfold_fold_concat(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The reference code's way: cut x into s x s blocks, append y's vector to every block entry."""
    b, c1, h1, w1 = x.shape
    _, c2, h2, w2 = y.shape
    s = h1 // h2
    blocks = F.unfold(x, kernel_size=s, stride=s).view(b, c1, s * s, h2, w2)
    joined = torch.cat([blocks, y[:, :, None].expand(b, c2, s * s, h2, w2)], dim=1)
    return F.fold(joined.view(b, (c1 + c2) * s * s, h2 * w2), output_size=(h1, w1), kernel_size=s, stride=s)


def slow_fit(emb: np.ndarray, eps: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """np.mean / np.cov position by position: mean (P, C), covariance (P, C, C)."""
    n, c, h, w = emb.shape
    flat = emb.reshape(n, c, h * w)
    mean = flat.mean(axis=0).T
    cov = np.stack([np.cov(flat[:, :, p], rowvar=False) + eps * np.eye(c) for p in range(h * w)])
    return mean, cov


def slow_scores(mean: np.ndarray, cov: np.ndarray, test: np.ndarray) -> np.ndarray:
    """np.linalg.inv + scipy's mahalanobis per position and image: (B, H, W)."""
    b, c, h, w = test.shape
    flat = test.reshape(b, c, h * w)
    out = np.empty((b, h * w))
    for p in range(h * w):
        inverse = np.linalg.inv(cov[p])
        for i in range(b):
            out[i, p] = mahalanobis(flat[i, :, p], mean[p], inverse)
    return out.reshape(b, h, w)


def random_embeddings(n: int, c: int = 6, h: int = 3, w: int = 4, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(c, c, generator=g)
    return torch.einsum("dc,nchw->ndhw", mixing, torch.randn(n, c, h, w, generator=g)) + 3.0


# --- concat_taps -----------------------------------------------------------------------------

def test_concat_taps_toy_by_hand():
    fine = torch.arange(16.0).view(1, 1, 4, 4)
    coarse = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[5.0, 6.0], [7.0, 8.0]]]])
    out = concat_taps([fine, coarse])
    assert out.shape == (1, 3, 4, 4)
    assert torch.equal(out[:, 0], fine[:, 0])
    assert torch.equal(out[0, 1], torch.tensor([[1.0, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]]))
    assert torch.equal(out[0, 2, 2:, 2:], torch.full((2, 2), 8.0))


@pytest.mark.parametrize("shapes", [[(1, 1, 4, 4), (1, 2, 2, 2)],
                                    [(2, 5, 16, 12), (2, 3, 8, 6), (2, 4, 4, 3)]])
def test_concat_taps_equals_unfold_fold(shapes):
    g = torch.Generator().manual_seed(1)
    maps = [torch.randn(*s, generator=g) for s in shapes]
    reference = maps[0]
    for m in maps[1:]:
        reference = unfold_fold_concat(reference, m)
    assert torch.equal(concat_taps(maps), reference)


def test_concat_taps_bad_inputs():
    with pytest.raises(ValueError, match="at least one"):
        concat_taps([])
    with pytest.raises(ValueError, match="batch size"):
        concat_taps([torch.zeros(2, 1, 4, 4), torch.zeros(3, 1, 2, 2)])
    with pytest.raises(ValueError, match="integer multiple"):
        concat_taps([torch.zeros(1, 1, 6, 6), torch.zeros(1, 1, 4, 4)])
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        concat_taps([torch.zeros(1, 4, 4)])


# --- random channel selection ----------------------------------------------------------------

def test_select_dims_reproducible_and_leaves_global_rng_alone():
    torch.manual_seed(5)
    before = torch.rand(1)
    torch.manual_seed(5)
    a = select_dims(448, 100, seed=1024)
    assert torch.equal(torch.rand(1), before)
    assert torch.equal(a, select_dims(448, 100, seed=1024))
    assert not torch.equal(a, select_dims(448, 100, seed=1))
    assert a.numel() == 100 and a.unique().numel() == 100 and torch.equal(a, a.sort().values)
    assert 0 <= int(a.min()) and int(a.max()) < 448
    with pytest.raises(ValueError, match="n_dims"):
        select_dims(10, 11, seed=0)


# --- PaDiM -------------------------------------------------------------------------------------

def test_fit_matches_np_cov_per_position():
    train = random_embeddings(20)
    model = PaDiM(6).fit(train, store_dtype=torch.float64)
    mean, cov = slow_fit(train.double().numpy())
    np.testing.assert_allclose(model.mean.numpy(), mean, rtol=1e-10)
    np.testing.assert_allclose(model.precision.numpy(), np.linalg.inv(cov), rtol=1e-8, atol=1e-10)
    assert torch.equal(model.whitening, model.whitening.tril())


def test_scores_match_scipy_mahalanobis_with_random_dims():
    train, test = random_embeddings(30, c=10, seed=0), random_embeddings(7, c=10, seed=1) * 1.5
    model = PaDiM(10, n_dims=6, seed=3).fit(train)
    index = select_dims(10, 6, seed=3).numpy()
    mean, cov = slow_fit(train.double().numpy()[:, index])
    expected = slow_scores(mean, cov, test.double().numpy()[:, index])
    np.testing.assert_allclose(model(test).numpy(), expected, rtol=1e-4)


def test_streaming_fit_equals_one_batch_and_survives_large_offsets():
    train = random_embeddings(23) + 1e4
    whole = PaDiM(6).fit(train, store_dtype=torch.float64)
    streamed = PaDiM(6).fit(train.split(5), store_dtype=torch.float64)
    mean, cov = slow_fit(train.double().numpy())
    np.testing.assert_allclose(streamed.mean.numpy(), whole.mean.numpy(), rtol=1e-12)
    np.testing.assert_allclose(streamed.mean.numpy(), mean, rtol=1e-12)
    np.testing.assert_allclose(np.linalg.inv(streamed.precision.numpy()), cov, rtol=1e-7, atol=1e-9)


def test_positions_in_several_pieces_give_the_same_model_and_maps(monkeypatch):
    train, test = random_embeddings(9, c=8, h=5, w=7), random_embeddings(3, c=8, h=5, w=7, seed=4)
    whole = PaDiM(8, n_dims=5, seed=2).fit(train.split(4))
    expected = whole(test)
    monkeypatch.setattr(padim_module, "CHUNK_VALUES_CPU", 40)  # 40 // (5 dims x 5) -> 1 position a piece
    pieces = PaDiM(8, n_dims=5, seed=2).fit(train.split(4))
    torch.testing.assert_close(pieces.mean, whole.mean, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(pieces.whitening, whole.whitening, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pieces(test), expected, rtol=1e-5, atol=1e-5)


def test_state_dict_round_trip_gives_identical_maps():
    train, test = random_embeddings(15, c=8), random_embeddings(4, c=8, seed=2)
    model = PaDiM(8, n_dims=5, seed=77).fit(train)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    loaded = PaDiM(8, n_dims=5, seed=0)
    loaded.load_state_dict(torch.load(buffer, weights_only=True))
    assert int(loaded.seed) == 77 and torch.equal(loaded.index, select_dims(8, 5, seed=77))
    assert torch.equal(loaded(test), model(test))
    assert "fitted on a 3x4 grid" in repr(loaded)


def test_padim_bad_inputs():
    model = PaDiM(6)
    with pytest.raises(RuntimeError, match="not fitted"):
        model(random_embeddings(2))
    with pytest.raises(ValueError, match="at least 2"):
        model.fit(random_embeddings(1))
    with pytest.raises(ValueError, match="channels"):
        model.fit(random_embeddings(4, c=5))
    with pytest.raises(ValueError, match="disagree on the grid"):
        model.fit([random_embeddings(3), random_embeddings(3, h=2)])
    model.fit(random_embeddings(4))
    with pytest.raises(ValueError, match="grid"):
        model(random_embeddings(2, h=5))
    with pytest.raises(ValueError, match=r"\(B, F, H, W\)"):
        model(torch.zeros(6, 3, 4))
    with pytest.raises(ValueError, match="n_dims"):
        PaDiM(6, n_dims=7)


# --- anomaly maps ------------------------------------------------------------------------------

@pytest.mark.parametrize("sigma,size", [(4.0, (40, 36)), (1.5, (9, 7)), (4.0, (10, 12))])
def test_gaussian_blur_equals_scipy(sigma, size):
    maps = torch.rand(3, *size, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = np.stack([gaussian_filter(m, sigma=sigma) for m in maps.numpy()])
    np.testing.assert_allclose(gaussian_blur(maps, sigma).numpy(), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
def test_anomaly_maps_upsample_then_smooth(mode):
    distances = torch.rand(2, 7, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    up = F.interpolate(distances[:, None], size=28, mode=mode, align_corners=False)[:, 0].numpy()
    expected = np.stack([gaussian_filter(m, sigma=4) for m in up])
    maps = anomaly_maps(distances, 28, mode=mode, sigma=4)
    np.testing.assert_allclose(maps.numpy(), expected, rtol=1e-10, atol=1e-12)
    assert torch.equal(image_scores(maps), maps.flatten(1).max(dim=1).values)
    with pytest.raises(ValueError, match="upsampling mode"):
        anomaly_maps(distances, 28, mode="area")
    with pytest.raises(ValueError, match="sigma"):
        gaussian_blur(distances, 0.0)


# --- kNN baseline and PCA -----------------------------------------------------------------------

@pytest.mark.parametrize("k", [1, 3])
def test_knn_patch_scores_match_brute_force(k):
    train, test = random_embeddings(4), random_embeddings(2, seed=9)
    memory = train.permute(0, 2, 3, 1).reshape(-1, 6)
    queries = test.permute(0, 2, 3, 1).reshape(-1, 6)
    expected = k_smallest_distances(memory, queries, k).mean(axis=1)
    got = knn_patch_scores(train, test, k=k, chunk=5)
    np.testing.assert_allclose(got.numpy().ravel(), expected, rtol=1e-4)
    with pytest.raises(ValueError, match="channels"):
        knn_patch_scores(train, random_embeddings(2, c=5))


def k_smallest_distances(memory: torch.Tensor, queries: torch.Tensor, k: int) -> np.ndarray:
    """The brute-force reference as ``(Q, k)`` for every ``k``."""
    return knn_brute_force(memory, queries, k).reshape(len(queries), k)


METHODS = ["screen", "brute"]


@pytest.fixture
def small_brute_blocks(monkeypatch):
    """The brute-force method in blocks of 64 memory vectors and 5 queries (a GPU uses 2^16 and
    2^10), so that its merge over blocks and its query chunks are exercised on small inputs."""
    monkeypatch.setattr(anomaly_module, "BRUTE_BLOCK", 64)
    monkeypatch.setattr(anomaly_module, "BRUTE_VALUES", 64 * 5)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("n,k,chunk", [(1, 1, 4), (63, 1, 5), (64, 3, 64), (65, 5, 7), (700, 1, 33),
                                       (1000, 4, 1024), (130, 130, 9)])
def test_nearest_distances_match_brute_force(n, k, chunk, method, small_brute_blocks):
    # sizes around the 64-vector tiles and 512-vector blocks, k above the number of tiles
    g = torch.Generator().manual_seed(n)
    memory, queries = torch.randn(n, 8, generator=g), torch.randn(40, 8, generator=g)
    queries[:3] = memory[:3]                                   # distance exactly 0
    np.testing.assert_allclose(nearest_distances(memory, queries, k, chunk, method).double().numpy(),
                               k_smallest_distances(memory, queries, k), rtol=1e-5, atol=1e-6)


def test_search_method_by_device():
    assert search_method("auto", torch.device("cpu")) == "screen"
    assert search_method("auto", torch.device("cuda")) == "brute"
    assert search_method("auto", "meta") == "brute"
    assert search_method("screen", "cuda") == "screen" and search_method("brute", "cpu") == "brute"
    with pytest.raises(ValueError, match="unknown search method 'kdtree'"):
        search_method("kdtree", "cpu")


def test_brute_force_keeps_the_proof_or_falls_back_to_the_screen(monkeypatch, small_brute_blocks):
    # 300 memory vectors at one point, 2 far away: k + BRUTE_EXTRA candidates cannot prove that
    # the tied vectors left out are no nearer, so those queries go through the screen
    memory = torch.cat([torch.ones(300, 8), 5 * torch.ones(2, 8)])
    queries = torch.randn(9, 8, generator=torch.Generator().manual_seed(3))
    calls = []
    screen = anomaly_module._screen
    monkeypatch.setattr(anomaly_module, "_screen", lambda *a: calls.append(len(a[1])) or screen(*a))
    got = nearest_distances(memory, queries, 3, method="brute")
    np.testing.assert_allclose(got.double().numpy(), k_smallest_distances(memory, queries, 3), rtol=1e-6)
    assert sum(calls) == 9
    calls.clear()
    spread = torch.randn(300, 8, generator=torch.Generator().manual_seed(4))
    nearest_distances(spread, queries, 3, method="brute")
    assert calls == []                                          # proven without the screen


@pytest.mark.parametrize("method", METHODS)
def test_nearest_distances_exact_where_float32_products_cancel(method, small_brute_blocks):
    # vectors of norm ~400 whose neighbours differ by ~1e-2: ||m||^2 - 2 q.m loses about 3 digits
    # in float32, more than the gaps between neighbours, so only the proven screen keeps the true one
    g = torch.Generator().manual_seed(0)
    centre = 50 * torch.ones(64)
    memory = centre + 1e-2 * torch.randn(3000, 64, generator=g)
    queries = centre + 1e-2 * torch.randn(200, 64, generator=g)
    got = nearest_distances(memory, queries, 2, chunk=64, method=method).double().numpy()
    np.testing.assert_allclose(got, k_smallest_distances(memory, queries, 2), rtol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_nearest_distances_with_ties_and_float64(method):
    memory = torch.ones(500, 8, dtype=torch.float64)             # every vector equally near
    queries = torch.randn(9, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got = nearest_distances(memory, queries, 3, method=method)
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), k_smallest_distances(memory, queries, 3), rtol=1e-12)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("precision", ["high", "medium"])
def test_nearest_distances_exact_with_reduced_precision_products_allowed(precision, method):
    # TF32 / bfloat16 products (GPU, some CPUs) widen the screen's bound instead of breaking it
    g = torch.Generator().manual_seed(5)
    memory, queries = torch.tanh(torch.randn(2000, 64, generator=g)), torch.tanh(torch.randn(50, 64, generator=g))
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        got = nearest_distances(memory, queries, 2, method=method)
    finally:
        torch.set_float32_matmul_precision(previous)
    np.testing.assert_allclose(got.double().numpy(), k_smallest_distances(memory, queries, 2), rtol=1e-5)


def test_nearest_distances_rejects_bad_input():
    memory, queries = torch.randn(10, 4), torch.randn(3, 4)
    with pytest.raises(ValueError, match="must be"):
        nearest_distances(memory, torch.randn(3, 5))
    with pytest.raises(ValueError, match="k must be"):
        nearest_distances(memory, queries, k=11)
    with pytest.raises(ValueError, match="share dtype"):
        nearest_distances(memory, queries.double())
    with pytest.raises(ValueError, match="chunk must be >= 1"):
        nearest_distances(memory, queries, chunk=0)
    with pytest.raises(ValueError, match="unknown search method"):
        nearest_distances(memory, queries, method="fast")
    assert nearest_distances(memory, queries[:0], k=2, method="brute").shape == (0, 2)
    queries[1, 2] = float("nan")
    with pytest.raises(ValueError, match="queries must be finite"):
        nearest_distances(memory, queries)


def test_fit_pca_matches_sklearn():
    from sklearn.decomposition import PCA

    train = random_embeddings(10)
    mean, components = fit_pca(train.split(3), n_dims=3)
    patches = train.permute(0, 2, 3, 1).reshape(-1, 6).double().numpy()
    reference = PCA(n_components=3).fit(patches)
    np.testing.assert_allclose(mean.numpy(), reference.mean_, rtol=1e-5)
    cosines = np.abs((components.double().numpy() * reference.components_.T).sum(0))
    np.testing.assert_allclose(cosines, 1.0, atol=1e-4)
    projected = project(train, mean, components)
    assert projected.shape == (10, 3, 3, 4)
    flat = projected.permute(0, 2, 3, 1).reshape(-1, 3).double().numpy()
    np.testing.assert_allclose(np.abs(flat), np.abs(reference.transform(patches)), atol=1e-3)


# --- embeddings from the offline backbone ---------------------------------------------------------

def test_embed_lite0_three_taps():
    from utils.models import LITE0_TAPS, extract_features, load_lite0, normalize

    model = load_lite0()
    taps = {k: LITE0_TAPS[k] for k in ("stride4", "stride8", "stride16")}
    images = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    batches = list(embed(model, images, taps, "efficientnet_lite0", batch_size=2))
    assert [b.shape for b in batches] == [(2, 176, 16, 16), (1, 176, 16, 16)]
    features = extract_features(model, normalize(images), taps)
    torch.testing.assert_close(torch.cat(batches), concat_taps(list(features.values())), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match=r"\(N, 3, S, S\)"):
        next(embed(model, images[:, :1], taps, "efficientnet_lite0"))
