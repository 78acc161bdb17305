"""Slow, obvious reference implementations used by the tests and benchmarks.

Each section names the module it checks. They are written for clarity, one entry or one
position at a time, never for speed; the packaged versions in ``utils`` must agree with them.
"""
from __future__ import annotations

import math
from fractions import Fraction


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
