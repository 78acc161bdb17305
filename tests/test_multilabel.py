"""Tests of utils.multilabel against per-entry references (tests/references.py) and scikit-learn."""
import math
import warnings
from fractions import Fraction

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from tests.references import large_loss_entries, large_loss_k_exact
from utils import multilabel as ml


# --- single-positive labels ---------------------------------------------------------------

def test_single_positive_keeps_one_true_positive_per_row():
    g = torch.Generator().manual_seed(0)
    targets = (torch.rand(200, 6, generator=g) < 0.4).float()
    targets[targets.sum(1) == 0, 0] = 1
    kept = ml.single_positive_labels(targets, seed=3)
    assert kept.shape == targets.shape and kept.dtype == torch.float32
    assert torch.equal(kept.sum(1), torch.ones(200))
    assert bool((kept <= targets).all()), "only true positives are kept"
    assert torch.equal(kept, ml.single_positive_labels(targets, seed=3))
    assert not torch.equal(kept, ml.single_positive_labels(targets, seed=4))


def test_single_positive_draws_uniformly():
    targets = torch.tensor([[1.0, 1.0, 0.0, 1.0]]).repeat(3000, 1)
    counts = ml.single_positive_labels(targets, seed=0).sum(0)
    assert counts[2] == 0
    assert all(abs(c / 3000 - 1 / 3) < 0.03 for c in counts[[0, 1, 3]].tolist()), counts


def test_single_positive_bad_inputs():
    with pytest.raises(ValueError, match="no positive"):
        ml.single_positive_labels(torch.tensor([[1.0, 0.0], [0.0, 0.0]]), 0)
    with pytest.raises(ValueError, match="only 0 and 1"):
        ml.single_positive_labels(torch.tensor([[0.5, 1.0]]), 0)
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        ml.single_positive_labels(torch.ones(3), 0)


# --- k schedule -----------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ml.LL_MODES)
@pytest.mark.parametrize("batch_size,n_classes", [(16, 20), (16, 4), (7, 3)])
def test_k_schedule_matches_integer_arithmetic(mode, batch_size, n_classes):
    delta = ml.DELTA_REL[mode]
    for epoch in range(1, 11):
        expected = large_loss_k_exact(batch_size, n_classes, epoch, Fraction(str(delta)), mode)
        assert ml.large_loss_k(batch_size, n_classes, epoch, delta, mode) == expected, epoch


def test_k_schedule_voc_values_and_the_official_float_drift():
    ours = [ml.large_loss_k(16, 20, t, 0.005, "LL-R") for t in range(2, 11)]
    assert ours == [2, 4, 5, 7, 8, 10, 12, 13, 15]
    # The official code's k for VOC LL-R (papers.md) differs only at epoch 6, where
    # 320 * 5 * 0.005 is exactly 8 but float rounding in 1 - (1 - 0.025) gives 8.000000000000007.
    official = [2, 4, 5, 7, 9, 10, 12, 13, 15]
    assert [t for t, (a, b) in enumerate(zip(ours, official), start=2) if a != b] == [6]
    assert math.ceil(320 * (1 - (1 - 5 * 0.005))) == 9
    assert [ml.large_loss_k(16, 20, t, 0.001, "LL-Cp") for t in (1, 2, 10)] == [0, 1, 1]


def test_k_schedule_bad_inputs():
    with pytest.raises(ValueError, match="unknown mode"):
        ml.large_loss_k(16, 20, 2, 0.005, "LL-X")
    with pytest.raises(ValueError, match=">= 1"):
        ml.large_loss_k(16, 20, 0, 0.005, "LL-R")
    with pytest.raises(ValueError, match="delta_rel"):
        ml.large_loss_k(16, 20, 2, 1.5, "LL-R")


# --- large-loss BCE vs the per-entry reference ----------------------------------------------

def simulate(mode: str, delta: float, n_images: int = 24, n_classes: int = 5, batch: int = 8,
             epochs: int = 10):
    """Run the fast loss and the reference side by side over seeded batches for ``epochs``
    epochs, each keeping its own stored labels (LL-Cp writes its flips into them)."""
    g = torch.Generator().manual_seed(1200)
    targets = (torch.rand(n_images, n_classes, generator=g) < 0.4).float()
    targets[targets.sum(1) == 0, 0] = 1
    labels = ml.single_positive_labels(targets, seed=1200)
    observed = labels.bool()
    ref_labels, ref_observed = labels.tolist(), observed.tolist()
    history = []
    for epoch in range(1, epochs + 1):
        order = torch.randperm(n_images, generator=g)
        for start in range(0, n_images, batch):
            idx = order[start:start + batch]
            # logits rounded to 0.25 so that equal losses (ties at the k-th value) occur
            logits = (torch.randn(len(idx), n_classes, generator=g) * 2 * 4).round() / 4
            k = ml.large_loss_k(len(idx), n_classes, epoch, delta, mode)
            out = ml.large_loss_bce(logits, labels[idx], observed[idx], k, mode)
            ref_loss, ref_selected = large_loss_entries(
                logits.tolist(), [ref_labels[i] for i in idx.tolist()],
                [ref_observed[i] for i in idx.tolist()], k, mode)
            got = {tuple(p) for p in out.selected.nonzero().tolist()}
            assert got == ref_selected, (epoch, start)
            assert out.loss.item() == pytest.approx(ref_loss, rel=1e-6, abs=1e-7), (epoch, start)
            history.append((epoch, k, len(got)))
            if mode == "LL-Cp":   # the caller persists the flips, fast and reference alike
                rows, cols = idx[out.selected.nonzero()[:, 0]], out.selected.nonzero()[:, 1]
                labels[rows, cols], observed[rows, cols] = 1.0, True
                for b, c in ref_selected:
                    ref_labels[int(idx[b])][c], ref_observed[int(idx[b])][c] = 1.0, True
    return history, labels, observed, ref_labels, ref_observed, targets


@pytest.mark.parametrize("mode", ml.LL_MODES)
def test_large_loss_matches_reference_over_ten_epochs(mode):
    history, labels, observed, ref_labels, ref_observed, _ = simulate(mode, delta=0.02)
    assert all(n == 0 for epoch, _, n in history if epoch == 1), "epoch 1 is plain AN"
    assert all(n >= k for epoch, k, n in history if epoch > 1)
    assert any(n > k for _, k, n in history), "the seeded batches include ties at the threshold"
    assert labels.tolist() == ref_labels and observed.tolist() == ref_observed
    flips = int(observed.sum()) - len(labels)
    if mode == "LL-Cp":
        assert flips > 0, "LL-Cp's flips persist in the stored labels"
    else:
        assert flips == 0, "LL-R and LL-Ct leave the stored labels alone"


def test_ll_cp_flipped_entries_are_never_selected_again():
    """A flip written into the stored labels makes the entry observed: later batches skip it."""
    logits = torch.tensor([[3.0, 2.0, -1.0], [0.5, 4.0, -2.0]])
    labels = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    observed = labels.bool()
    first = ml.large_loss_bce(logits, labels, observed, 1, "LL-Cp")
    assert first.selected.nonzero().tolist() == [[1, 1]]
    labels[first.selected], observed[first.selected] = 1.0, True
    second = ml.large_loss_bce(logits, labels, observed, 1, "LL-Cp")
    assert second.selected.nonzero().tolist() == [[0, 0]]


def test_large_loss_gradients():
    logits = torch.tensor([[2.0, -1.0, 0.5], [1.5, 0.0, -3.0]], requires_grad=True)
    labels = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    observed = labels.bool()
    for mode in ml.LL_MODES:
        logits.grad = None
        out = ml.large_loss_bce(logits, labels, observed, 2, mode)
        out.loss.backward()
        assert out.selected.nonzero().tolist() == [[0, 0], [0, 2]]   # the two largest AN losses
        target = labels.clone()
        if mode != "LL-R":
            target[out.selected] = 1.0
        expected = (torch.sigmoid(logits.detach()) - target) / logits.numel()
        if mode == "LL-R":
            expected[out.selected] = 0.0
        torch.testing.assert_close(logits.grad, expected)


def test_k_zero_is_assume_negative_and_k_too_large_takes_all():
    logits = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    labels = torch.zeros(4, 3); labels[:, 0] = 1
    observed = labels.bool()
    for mode in ml.LL_MODES:
        out = ml.large_loss_bce(logits, labels, observed, 0, mode)
        torch.testing.assert_close(out.loss, ml.assume_negative_bce(logits, labels))
        assert not out.selected.any()
    out = ml.large_loss_bce(logits, labels, observed, 100, "LL-R")
    assert torch.equal(out.selected, ~observed)


def test_large_loss_bad_inputs():
    logits, labels = torch.zeros(2, 3), torch.zeros(2, 3)
    with pytest.raises(ValueError, match="unknown mode"):
        ml.large_loss_bce(logits, labels, labels.bool(), 1, "AN")
    with pytest.raises(ValueError, match="bool"):
        ml.large_loss_bce(logits, labels, labels, 1, "LL-R")
    with pytest.raises(ValueError, match=r"\(B, C\)"):
        ml.large_loss_bce(logits, torch.zeros(3, 2), labels.bool(), 1, "LL-R")
    with pytest.raises(ValueError, match="k must be"):
        ml.large_loss_bce(logits, labels, labels.bool(), -1, "LL-R")


def test_assume_negative_is_plain_bce_over_all_entries():
    logits = torch.tensor([[1.0, -2.0], [0.0, 3.0]])
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    by_hand = sum(math.log1p(math.exp(-v)) for v in (1.0, 2.0, 0.0, 3.0)) / 4
    assert ml.assume_negative_bce(logits, labels).item() == pytest.approx(by_hand)


# --- mAP vs scikit-learn --------------------------------------------------------------------

def sklearn_map(scores, targets, skip_empty=True):
    aps = []
    for c in range(targets.shape[1]):
        if skip_empty and targets[:, c].sum() == 0:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            aps.append(average_precision_score(targets[:, c], scores[:, c]))
    return 100 * float(np.mean(aps))


@pytest.mark.parametrize("seed", range(5))
def test_map_matches_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    targets = (rng.random((60, 7)) < 0.3).astype(int)
    targets[0] = 1                                       # every class has a positive
    scores = np.round(rng.normal(size=(60, 7)), 1)       # rounded: many tied scores
    ours, per_class = ml.mean_average_precision(scores, targets, per_class=True)
    assert ours == pytest.approx(sklearn_map(scores, targets), abs=1e-9)
    for c in range(7):
        assert per_class[c] == pytest.approx(100 * average_precision_score(targets[:, c], scores[:, c]))
    assert ml.mean_average_precision(torch.tensor(scores), torch.tensor(targets)) == pytest.approx(ours)


def test_map_leaves_out_a_class_without_positives():
    rng = np.random.default_rng(0)
    targets = (rng.random((40, 4)) < 0.5).astype(int)
    targets[:, 2] = 0                                    # class 2 has no positive
    scores = rng.normal(size=(40, 4))
    ours, per_class = ml.mean_average_precision(scores, targets, per_class=True)
    assert np.isnan(per_class[2]) and np.isfinite(per_class[[0, 1, 3]]).all()
    assert ours == pytest.approx(sklearn_map(scores, targets, skip_empty=True))
    # scikit-learn scores such a class as AP 0 (with a warning): averaging over all classes differs
    with pytest.warns(Warning, match="No positive class"):
        assert average_precision_score(targets[:, 2], scores[:, 2]) == 0
    assert sklearn_map(scores, targets, skip_empty=False) == pytest.approx(ours * 3 / 4)


def test_map_hand_example_and_errors():
    # ranking: pos, neg, pos -> AP = (1/2)*1 + (1/2)*(2/3)
    assert ml.average_precision([0.9, 0.8, 0.1], [1, 0, 1]) == pytest.approx(0.5 + 1 / 3)
    assert ml.average_precision([0.5, 0.5, 0.5], [1, 0, 0]) == pytest.approx(1 / 3)   # one tied group
    with pytest.raises(ValueError, match="no class has a positive"):
        ml.mean_average_precision(np.zeros((3, 2)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        ml.mean_average_precision(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="NaN"):
        ml.average_precision([np.nan, 1.0], [1, 0])
    with pytest.raises(ValueError, match="only 0 and 1"):
        ml.average_precision([0.2, 1.0], [2, 0])
