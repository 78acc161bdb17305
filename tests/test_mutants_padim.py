"""Tests that kill mutants of utils.padim which the behaviour tests let survive
(``python -m tools.mutation padim``; results/mutation.md lists what is left).

The error messages are compared in full: they are part of the interface (each names the
problem and the way out), and a partial match lets a mangled message pass. The piece sizes of
the fit and of the scoring are the memory bound the docstrings promise, computed here by hand."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

import utils.padim as padim_module
from utils.padim import PaDiM, whiten, whiten_


def embeddings(
    n: int, c: int = 6, h: int = 3, w: int = 4, seed: int = 0
) -> torch.Tensor:
    """``(n, c, h, w)`` random embeddings with correlated channels."""
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(c, c, generator=g)
    return (
        torch.einsum("dc,nchw->ndhw", mixing, torch.randn(n, c, h, w, generator=g))
        + 3.0
    )


def fitted() -> PaDiM:
    return PaDiM(6).fit(embeddings(8))


def unit_lower(c: int, seed: int = 0) -> torch.Tensor:
    """A float64 unit lower-triangular matrix of small integers: ``L L^T`` has the exact
    Cholesky factor ``L`` and ``L^{-1}`` has integer entries, so every step is exact."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-2, 3, (c, c), generator=g).double().tril(-1) + torch.eye(
        c, dtype=torch.float64
    )


# --- error messages ----------------------------------------------------------------------------


def _singular_at_positions_37_and_38() -> torch.Tensor:
    """20 images on a 10 x 10 grid (fits in pieces of 3 positions: 36-38 is one) with a constant
    channel at flat positions 37 and 38: (3, 7) and (3, 8)."""
    x = embeddings(20, h=10, w=10)
    x[:, 2, 3, 7:9] = 5.0
    return x


def _rank_deficient(n: int, c: int) -> torch.Tensor:
    """``n <= c`` images with a constant first channel: the factorisation breaks down at once,
    at the first position, whatever the rounding."""
    x = embeddings(n, c=c, h=2, w=2)
    x[:, 0] = 1.0
    return x


@pytest.mark.parametrize(
    "call, error, message",
    [
        ("PaDiM(0)", ValueError, "n_features must be >= 1, got 0"),
        (
            "PaDiM(3, eps=-1.0)",
            ValueError,
            "eps must be a finite number >= 0 (the eps * I added to each covariance), got -1.0",
        ),
        (
            "PaDiM(3, eps=float('nan'))",
            ValueError,
            "eps must be a finite number >= 0 (the eps * I added to each covariance), got nan",
        ),
        (
            "fitted()(np.zeros((2, 6, 3, 4)))",
            ValueError,
            "embeddings must be a (B, F, H, W) tensor, got ndarray",
        ),
        (
            "fitted()(torch.zeros(6, 3, 4))",
            ValueError,
            "embeddings must be a (B, F, H, W) tensor, got (6, 3, 4)",
        ),
        (
            "PaDiM(6).fit(torch.zeros(0, 6, 3, 4))",
            ValueError,
            "PaDiM needs at least one image and one position per batch, got embeddings of shape (0, 6, 3, 4)",
        ),
        (
            "PaDiM(6).fit([embeddings(3), embeddings(3, h=2)])",
            ValueError,
            "training batches disagree on the grid: (3, 4) then (2, 4)",
        ),
        (
            "PaDiM(6).fit(embeddings(1))",
            ValueError,
            "fitting needs at least 2 training images, got 1",
        ),
        (
            "PaDiM(6).fit(embeddings(1).split(1))",
            ValueError,
            "fitting needs at least 2 training images, got 1",
        ),
        (
            "PaDiM(6).fit(embeddings(4).index_fill(0, torch.tensor([2]), float('nan')))",
            ValueError,
            (
                "training embeddings contain NaN or inf values (the covariance is not finite); check the backbone's "
                "input images and features"
            ),
        ),
        (
            "PaDiM(6, eps=0.0).fit(_singular_at_positions_37_and_38())",
            ValueError,
            (
                "the covariance at grid position (3, 7) is not positive-definite with eps=0: some kept channels are "
                "constant or linearly dependent there; use a positive eps (the default is 0.01)"
            ),
        ),
        (
            "PaDiM(3, eps=0.0).fit(_rank_deficient(3, 3))",
            ValueError,
            (
                "the covariance at grid position (0, 0) is not positive-definite with eps=0: 3 training images give a "
                "covariance of rank at most 2, below its 3 dimensions; use a positive eps (the default is 0.01)"
            ),
        ),
        (
            "PaDiM(4, eps=0.0).fit(_rank_deficient(3, 4).split(2))",
            ValueError,
            (
                "the covariance at grid position (0, 0) is not positive-definite with eps=0: 3 training images give a "
                "covariance of rank at most 2, below its 4 dimensions; use a positive eps (the default is 0.01)"
            ),
        ),
        (
            "PaDiM(6)(embeddings(2))",
            RuntimeError,
            "PaDiM is not fitted: call fit() or load_state_dict() first",
        ),
        (
            "PaDiM(6).precision",
            RuntimeError,
            "PaDiM is not fitted: call fit() or load_state_dict() first",
        ),
        (
            "fitted()(torch.zeros(2, 6, 3, 4, device='meta'))",
            ValueError,
            "embeddings are on meta, the fitted model on cpu: move one of them so both are on one device",
        ),
        (
            "fitted()(embeddings(2, h=5))",
            ValueError,
            "embeddings are on a 5x4 grid, the model was fitted on 3x4",
        ),
        (
            "fitted()(embeddings(2).index_fill(3, torch.tensor([1]), float('inf')))",
            ValueError,
            "embeddings contain NaN or inf values: 6 of 24 patch scores are not finite",
        ),
    ],
)
def test_error_messages_in_full(call, error, message):
    names = {
        "PaDiM": PaDiM,
        "np": np,
        "torch": torch,
        "embeddings": embeddings,
        "fitted": fitted,
        "_singular_at_positions_37_and_38": _singular_at_positions_37_and_38,
        "_rank_deficient": _rank_deficient,
    }
    with pytest.raises(error) as raised:
        eval(call, names)
    assert str(raised.value) == message


def test_singular_position_inside_a_piece_of_the_streaming_fit():
    # the covariances are whitened 3 positions at a time: 37 is the second of the piece 36-38
    with pytest.raises(
        ValueError,
        match=r"^the covariance at grid position \(3, 7\) is not positive-definite",
    ):
        PaDiM(6, eps=0.0).fit(_singular_at_positions_37_and_38().split(7))


# --- construction, buffers, repr --------------------------------------------------------------


def test_buffers_of_a_new_model():
    model = PaDiM(10, n_dims=4, seed=5, eps=0.5)
    state = model.state_dict()
    assert list(state) == ["seed", "index", "eps", "grid", "mean", "whitening"]
    assert state["seed"].dtype == torch.int64 and int(state["seed"]) == 5
    assert state["eps"].dtype == torch.float64 and float(state["eps"]) == 0.5
    assert state["grid"].dtype == torch.int64 and state["grid"].tolist() == [0, 0]
    assert state["mean"].numel() == 0 and state["whitening"].numel() == 0
    assert model.n_features == 10 and model.n_dims == 4 and not model.fitted
    assert torch.equal(PaDiM(5).index, torch.arange(5))
    assert repr(model) == "PaDiM(n_features=10, n_dims=4, seed=5, eps=0.5, not fitted)"


def test_fitted_state():
    model = PaDiM(6, n_dims=3, seed=2).fit(embeddings(8, h=2, w=5))
    assert (
        model.fitted
        and model.grid.tolist() == [2, 5]
        and model.grid.dtype == torch.int64
    )
    assert model.mean.shape == (10, 3) and model.whitening.shape == (10, 3, 3)
    assert model.mean.dtype == torch.float32 and model.whitening.dtype == torch.float32
    assert (
        repr(model)
        == "PaDiM(n_features=6, n_dims=3, seed=2, eps=0.01, fitted on a 2x5 grid)"
    )
    streamed = PaDiM(6, n_dims=3, seed=2).fit(
        embeddings(8, h=2, w=5).split(3), store_dtype=torch.float64
    )
    assert (
        streamed.mean.dtype == torch.float64
        and streamed.whitening.dtype == torch.float64
    )
    assert streamed.grid.tolist() == [2, 5] and streamed.mean.shape == (10, 3)


def test_one_feature_and_two_images_are_enough():
    # position 0: 1, 1; position 1: 3, 7
    train = torch.tensor([1.0, 3.0, 1.0, 7.0]).view(2, 1, 1, 2)
    model = PaDiM(1, eps=0.25).fit(train)
    # variances 0 and 8, + eps; mean 1 and 5
    expected = torch.tensor([[[abs(2 - 1) / 0.5, abs(4 - 5) / math.sqrt(8.25)]]])
    torch.testing.assert_close(
        model(torch.tensor([2.0, 4.0]).view(1, 1, 1, 2)), expected, rtol=1e-6, atol=0
    )
    streamed = PaDiM(1, eps=0.25).fit(train.split(1))
    torch.testing.assert_close(
        streamed.mean, torch.tensor([[1.0], [5.0]]), rtol=0, atol=0
    )
    torch.testing.assert_close(
        streamed.precision, torch.tensor([[[4.0]], [[1 / 8.25]]]), rtol=1e-6, atol=0
    )


def test_eps_zero_is_accepted_and_added_exactly():
    # variance 4: W = 1 / sqrt(4 + eps)
    train = torch.tensor([0.0, 2.0, 4.0]).view(3, 1, 1, 1)
    assert PaDiM(1, eps=0.0).fit(train).whitening.item() == 0.5
    assert PaDiM(1, eps=12.0).fit(train).whitening.item() == 0.25
    assert PaDiM(1, eps=12.0).fit(train.split(2)).whitening.item() == 0.25


def test_streaming_fit_centres_on_the_first_batch_in_a_float32_store():
    # means 1e4 above a unit spread: summing raw squares in float32 (6e-8 relative) would lose
    # the covariance entirely; around the first batch's mean it stays at float32 precision
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(40, 3, 2, 2, generator=g, dtype=torch.float64) + 1e4).float()
    reference = PaDiM(3).fit(x.double(), store_dtype=torch.float64)
    streamed = PaDiM(3).fit(x.split(8))
    torch.testing.assert_close(
        streamed.mean.double(), reference.mean, rtol=1e-7, atol=0
    )
    torch.testing.assert_close(
        streamed.precision.double(), reference.precision, rtol=1e-4, atol=1e-4
    )


def test_load_state_dict_keeps_the_model_on_its_device():
    source = fitted()
    target = PaDiM(6).to("meta")
    with warnings.catch_warnings():
        # copying into meta tensors is a no-op, with a warning
        warnings.simplefilter("ignore")
        target.load_state_dict(source.state_dict())
    assert target.mean.device.type == "meta" and target.whitening.device.type == "meta"
    assert target.mean.shape == (12, 6) and target.whitening.shape == (12, 6, 6)


# --- whitening ---------------------------------------------------------------------------------


def test_whiten_of_exact_matrices_with_tiny_blocks(monkeypatch):
    # WHITEN_BLOCK = 1: every split down to 1 x 1 leaves; integer matrices: exact result
    monkeypatch.setattr(padim_module, "WHITEN_BLOCK", 1)
    factors = torch.stack([unit_lower(5, seed) for seed in range(3)])
    w, failed = whiten(factors @ factors.mT)
    assert failed.dtype == torch.bool and failed.tolist() == [False, False, False]
    assert torch.equal(w @ factors, torch.eye(5, dtype=torch.float64).expand(3, 5, 5))
    assert torch.equal(w, w.tril())


@pytest.mark.parametrize("c", [2, padim_module.WHITEN_BLOCK])
def test_matrices_up_to_the_block_size_go_to_lapack_unchanged(c):
    g = torch.Generator().manual_seed(c)
    x = torch.randn(3, 2 * c, c, generator=g, dtype=torch.float64)
    s = x.mT @ x + torch.eye(c, dtype=torch.float64)
    factor = torch.linalg.cholesky(s)
    expected = torch.linalg.solve_triangular(
        factor, torch.eye(c, dtype=torch.float64).expand(3, c, c), upper=False
    )
    w, failed = whiten(s)
    assert torch.equal(w, expected) and failed.tolist() == [False] * 3
    original = s.clone()
    assert whiten_(s).tolist() == [False] * 3 and torch.equal(s, expected)
    assert not torch.equal(original, s)


def test_whiten_flags_on_the_matrices_device():
    w, failed = whiten(torch.eye(3).expand(2, 3, 3).to("meta"))
    assert (
        failed.device.type == "meta"
        and failed.dtype == torch.bool
        and failed.shape == (2,)
    )
    assert w.device.type == "meta"


# --- pieces of positions: the memory bound -------------------------------------------------------


def test_step_follows_the_documented_budget():
    model = PaDiM(10, n_dims=4)
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert model._step(10, cpu) == 2**19 // 40
    assert model._step(2, cpu) == 2**19 // 16  # (p, C, C) matrices dominate
    assert model._step(10, gpu) == 2**26 // 40
    # stored: 1000 x 4 x 5 float32 = 80000 B, 45 % of it 36000 B; per position 8 (10 x 4 + 2.5 x 16) + 4 x 10 x 4
    assert model._step(10, cpu, 1000) == 36000 // 800
    assert model._step(10, cpu, 1000, reserved=8000) == 28000 // 800
    assert model._step(10, cpu, 1000, store_dtype=torch.float64) == 72000 // 800
    assert model._step(10, cpu, 1000, dtype=torch.float32) == 36000 // 480
    assert model._step(0, cpu, 1000) == 36000 // 320
    assert model._step(10, cpu, 1) == 1  # a piece is at least one position
    assert model._step(10, cpu, 10**6) == 2**19 // 40  # the value budget caps it
    assert PaDiM(10, n_dims=4)._step(10**6, cpu) == 1


def _record_pieces(monkeypatch) -> tuple[list[int], list[int]]:
    """Positions per whitening call and the ``step`` of every ``_chunks`` call of a fit."""
    whitened, steps = [], []
    original_whiten, original_chunks = padim_module.whiten_, PaDiM._chunks

    def spy_whiten(covariance):
        whitened.append(covariance.shape[0])
        return original_whiten(covariance)

    def spy_chunks(self, embeddings, dtype, device=None, step=None):
        steps.append(step)
        return original_chunks(self, embeddings, dtype, device, step)

    monkeypatch.setattr(padim_module, "whiten_", spy_whiten)
    monkeypatch.setattr(PaDiM, "_chunks", spy_chunks)
    return whitened, steps


def test_fit_of_one_tensor_in_pieces_under_the_memory_cap(monkeypatch):
    whitened, steps = _record_pieces(monkeypatch)
    PaDiM(10, n_dims=4).fit(embeddings(10, c=10, h=25, w=40))
    assert steps == [45]  # 36000 B // 800 B a position
    assert whitened == [45] * 22 + [10]


def test_streaming_fit_in_pieces_under_the_memory_cap(monkeypatch):
    whitened, steps = _record_pieces(monkeypatch)
    PaDiM(10, n_dims=4).fit(embeddings(10, c=10, h=25, w=40).split(5))
    # 32000 B of float64 sums held: (36000 - 32000) // (8 (5 x 4 + 40) + 4 x 5 x 4) while summing,
    # then (36000 - 32000) // (8 x 40) for the covariances
    assert steps == [7, 7]
    assert whitened == [12] * 83 + [4]


def test_scoring_pieces_follow_the_value_budget(monkeypatch):
    model = PaDiM(10, n_dims=4).fit(embeddings(10, c=10, h=5, w=5))
    test = embeddings(5, c=10, h=5, w=5, seed=1)
    expected = model(test)
    parts = []
    original = PaDiM._chunks

    def spy(self, *args, **kwargs):
        for part, x in original(self, *args, **kwargs):
            parts.append((part.start, part.stop, tuple(x.shape)))
            yield part, x

    monkeypatch.setattr(PaDiM, "_chunks", spy)
    # 160 // (4 x 5): 8 positions a piece
    monkeypatch.setattr(padim_module, "CHUNK_VALUES_CPU", 160)
    assert torch.equal(model(test), expected)
    assert parts == [
        (0, 8, (8, 5, 4)),
        (8, 16, (8, 5, 4)),
        (16, 24, (8, 5, 4)),
        (24, 25, (1, 5, 4)),
    ]


def test_default_seed_and_eps():
    model = PaDiM(6)
    assert int(model.seed) == 1024 and float(model.eps) == 0.01
    assert torch.equal(PaDiM(10, n_dims=4).index, PaDiM(10, n_dims=4, seed=1024).index)


def test_pieces_are_made_on_the_embeddings_device():
    # a default device elsewhere (here meta) must not catch the pieces: they follow the input
    model = PaDiM(10, n_dims=4)
    x = embeddings(3, c=10)
    with torch.device("meta"):
        pieces = list(model._chunks(x, torch.float64))
    assert [p.device.type for _, p in pieces] == ["cpu"]
    assert torch.equal(
        pieces[0][1], x.double()[:, model.index].flatten(2).permute(2, 0, 1)
    )


def test_fit_in_float32_pieces(monkeypatch):
    whitened, steps = _record_pieces(monkeypatch)
    train = embeddings(10, c=10, h=25, w=40)
    model = PaDiM(10, n_dims=4).fit(train, dtype=torch.float32)
    # per position 4 (10 x 4 + 2.5 x 16) + 4 x 10 x 4 = 480 B
    assert steps == [75] and whitened == [75] * 13 + [25]
    streamed = PaDiM(10, n_dims=4).fit(train.split(5), dtype=torch.float32)
    reference = PaDiM(10, n_dims=4).fit(train.double(), store_dtype=torch.float64)
    for fitted_model in (model, streamed):
        torch.testing.assert_close(
            fitted_model.precision.double(), reference.precision, rtol=1e-3, atol=1e-3
        )
