"""Slow, obvious reference implementations used by the tests and benchmarks.

Each section names the module it checks. They are written for clarity, one entry or one
position at a time, never for speed; the packaged versions in ``utils`` must agree with them.
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import torch


# --- Multi-label learning (BoostLU chapter): per-entry references for utils.multilabel -------

def bce_with_logits_entry(logit: float, target: float) -> float:
    """Binary cross-entropy of one logit against a target in {0, 1}, the stable textbook way."""
    return max(logit, 0.0) - logit * target + math.log1p(math.exp(-abs(logit)))


def large_loss_entries(logits, labels, observed, k: int, mode: str) -> tuple[float, set[tuple[int, int]]]:
    """Large-loss BCE one entry at a time: returns (mean loss, set of selected (row, class)).

    Python lists in, Python numbers out. The unobserved entries' assume-negative losses are
    sorted in decreasing order; every unobserved entry whose loss is >= the k-th of them is
    selected. LL-R drops their loss (keeping them in the count), LL-Ct/LL-Cp use target 1.
    """
    rows, cols = len(logits), len(logits[0])
    an = [[bce_with_logits_entry(float(logits[b][c]), float(labels[b][c])) for c in range(cols)]
          for b in range(rows)]
    candidates = sorted((an[b][c] for b in range(rows) for c in range(cols) if not observed[b][c]),
                        reverse=True)
    selected = set()
    if k > 0 and candidates:
        threshold = candidates[min(k, len(candidates)) - 1]
        selected = {(b, c) for b in range(rows) for c in range(cols)
                    if not observed[b][c] and an[b][c] >= threshold}
    total = 0.0
    for b in range(rows):
        for c in range(cols):
            if (b, c) not in selected:
                total += an[b][c]
            elif mode != "LL-R":
                total += bce_with_logits_entry(float(logits[b][c]), 1.0)
    return total / (rows * cols), selected


def large_loss_k_exact(batch_size: int, n_classes: int, epoch: int, delta: Fraction, mode: str) -> int:
    """k of the large-loss schedule in integer arithmetic (``delta`` an exact fraction)."""
    if epoch == 1:
        return 0
    steps = 1 if mode == "LL-Cp" else epoch - 1
    numerator = batch_size * n_classes * steps * delta.numerator
    return -(-numerator // delta.denominator)


# --- Patch SVDD chapter: score spreading and nearest-neighbour search (utils.patch_svdd) ------

def spread_double_loop(scores: np.ndarray | torch.Tensor, k: int, stride: int,
                       size: tuple[int, int]) -> np.ndarray:
    """Patch scores ``(B, h, w)`` -> pixel maps ``(B, H, W)``: every pixel gets the mean score of
    the K x K patches (top-left corner ``(i stride, j stride)``) covering it; 0 where none does.
    Two loops over the grid adding into a sum and a count, as the Patch SVDD source does."""
    scores = np.asarray(scores, dtype=np.float64)
    b, h, w = scores.shape
    total = np.zeros((b, *size))
    count = np.zeros(size)
    for i in range(h):
        for j in range(w):
            total[:, i * stride:i * stride + k, j * stride:j * stride + k] += scores[:, i, j, None, None]
            count[i * stride:i * stride + k, j * stride:j * stride + k] += 1
    return total / np.maximum(count, 1)


def knn_brute_force(memory: np.ndarray | torch.Tensor, queries: np.ndarray | torch.Tensor, k: int = 1) -> np.ndarray:
    """Distances of each query ``(Q, D)`` to its ``k`` nearest memory vectors ``(M, D)``, ascending,
    ``(Q, k)`` (``(Q,)`` for the default ``k = 1``); float64, one query at a time with explicit
    differences (no matrix-product shortcut)."""
    memory = np.asarray(memory, dtype=np.float64)
    queries = np.asarray(queries, dtype=np.float64)
    nearest = np.stack([np.sort(np.sqrt(((memory - q) ** 2).sum(axis=1)))[:k] for q in queries])
    return nearest[:, 0] if k == 1 else nearest


def knn_kdtree_per_row(train_codes: np.ndarray | torch.Tensor, test_codes: np.ndarray | torch.Tensor) -> np.ndarray:
    """The Patch SVDD source's search: a KD-tree over every training code ``(N, D, h, w)``, then
    one query per row of every test image's grid ``(B, D, h', w')``. Returns ``(B, h', w')``."""
    from sklearn.neighbors import KDTree

    train_codes = np.asarray(train_codes, dtype=np.float64)
    test_codes = np.asarray(test_codes, dtype=np.float64)
    tree = KDTree(train_codes.transpose(0, 2, 3, 1).reshape(-1, train_codes.shape[1]))
    b, _, h, w = test_codes.shape
    out = np.empty((b, h, w))
    for n in range(b):
        for i in range(h):
            distances, _ = tree.query(test_codes[n, :, i, :].T, k=1)
            out[n, i] = distances[:, 0]
    return out
