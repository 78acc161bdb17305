"""Multi-label learning from missing labels: single-positive labels, assume-negative and
large-loss losses, and mean average precision.

Explained in the *BoostLU* chapter (``notebooks/08_boostlu.ipynb``).

Conventions: ``targets`` are full multi-hot labels (N, C) in {0, 1}; a *single-positive*
training set keeps one positive per image and leaves every other entry unobserved. The
losses take

* ``labels`` (B, C) float in {0, 1}: the training target of every entry (1 for an observed
  positive, 0 for an unobserved entry, which *assume negative* (AN) treats as a negative);
* ``observed`` (B, C) bool: which entries are observed (single positive: ``labels == 1``).

Large-loss modification (Kim et al., "Large Loss Matters in Weakly Supervised Multi-Label
Classification", CVPR 2022): during epoch 1 the loss is plain AN. From epoch ``t >= 2``,
in each batch the ``k`` unobserved entries with the largest AN loss (every entry whose loss is
``>=`` the ``k``-th largest, so ties are all taken) are

* ``"LL-R"``: rejected, i.e. their loss is set to zero (they stay in the mean's denominator);
* ``"LL-Ct"``: flipped to positive for this step (their loss is recomputed with target 1);
* ``"LL-Cp"``: flipped like LL-Ct, *and* the caller writes the flip into its stored labels
  (``labels = 1`` and ``observed = True`` for those entries), so they stay positive in every
  later batch. This module never keeps state: :func:`large_loss_bce` returns which entries it
  selected and the caller persists them.

``k = ceil(B * C * (t - 1) * delta_rel)`` for LL-R and LL-Ct, and the constant
``k = ceil(B * C * delta_rel)`` for LL-Cp (:func:`large_loss_k`), computed in exact
arithmetic (the official code's float rounding gives one more entry at some epochs; see the
chapter). The loss is the mean over all ``B * C`` entries.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["LL_MODES", "DELTA_REL", "single_positive_labels", "assume_negative_bce", "large_loss_k",
           "LargeLoss", "large_loss_bce", "average_precision", "mean_average_precision"]

#: The large-loss variants (R: reject, Ct: correct temporarily, Cp: correct permanently).
LL_MODES = ("LL-R", "LL-Ct", "LL-Cp")
#: Delta_rel of the Large Loss paper for PASCAL VOC (fraction of entries added per epoch).
DELTA_REL = {"LL-R": 0.005, "LL-Ct": 0.002, "LL-Cp": 0.001}


def single_positive_labels(targets: torch.Tensor, seed: int) -> torch.Tensor:
    """Keep one positive per image, drawn uniformly among its positives; the rest is unobserved.

    ``targets``: (N, C) full multi-hot labels (0/1, bool or float). Every row must hold at
    least one positive. Returns (N, C) float32 in {0, 1} with exactly one 1 per row (the kept
    positive); use ``observed = result.bool()``. Deterministic for a given ``seed`` (a CPU
    generator of its own; the global random state is untouched).
    """
    if not isinstance(targets, torch.Tensor) or targets.ndim != 2:
        raise ValueError(f"targets must be an (N, C) tensor, got {getattr(targets, 'shape', type(targets))}")
    positive = targets.detach().cpu() > 0.5
    if not ((targets == 0) | (targets == 1)).all():
        raise ValueError("targets must hold only 0 and 1")
    empty = (~positive.any(dim=1)).nonzero().flatten()
    if len(empty):
        raise ValueError(f"{len(empty)} rows have no positive label (first: row {int(empty[0])}); "
                         "a single-positive label needs at least one")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {seed!r}")
    generator = torch.Generator().manual_seed(int(seed))
    # A uniform random key per positive; the largest key of each row is the kept label.
    keys = torch.rand(positive.shape, generator=generator).masked_fill(~positive, -1.0)
    kept = torch.zeros(positive.shape, dtype=torch.float32)
    kept[torch.arange(len(kept)), keys.argmax(dim=1)] = 1.0
    return kept.to(targets.device)


def _check_pair(logits: torch.Tensor, labels: torch.Tensor) -> None:
    if not isinstance(logits, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise TypeError("logits and labels must be torch tensors")
    if logits.ndim != 2 or logits.shape != labels.shape:
        raise ValueError(f"logits and labels must both be (B, C), got {tuple(logits.shape)} "
                         f"and {tuple(labels.shape)}")
    if not logits.is_floating_point():
        raise TypeError(f"logits must be a float tensor, got {logits.dtype}")


def _check_values(logits: torch.Tensor, labels: torch.Tensor, *counted: torch.Tensor) -> list[int]:
    """Raise on labels outside {0, 1} or non-finite logits; return ``int(t.sum())`` of each of
    ``counted``. All in one host-device transfer (the losses run inside training steps)."""
    counts = torch.stack([((labels != 0) & (labels != 1)).sum(), (~torch.isfinite(logits)).sum(),
                          *(t.sum() for t in counted)]).tolist()
    bad_labels, bad_logits, *rest = counts
    if bad_labels:
        example = labels[(labels != 0) & (labels != 1)].flatten()[0].item()
        raise ValueError(f"labels must be 0 or 1, found {bad_labels} other values (e.g. {example}); "
                         "map 0/255 or -1/1 labels to 0/1 first")
    if bad_logits:
        raise ValueError(f"logits contain {bad_logits} NaN or infinite values (a diverged model?)")
    return rest


def assume_negative_bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Assume-negative loss: binary cross-entropy against ``labels``, unobserved entries as 0.

    ``logits``, ``labels``: (B, C); ``labels`` in {0, 1} (1 = observed positive). Returns the
    mean over all B * C entries (a scalar with gradients). Labels other than 0/1 and NaN or
    infinite logits raise ``ValueError`` (one host-device sync per call).
    """
    _check_pair(logits, labels)
    _check_values(logits, labels)
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


def large_loss_k(batch_size: int, n_classes: int, epoch: int, delta_rel: float, mode: str) -> int:
    """How many unobserved entries a large-loss variant modifies in a batch at ``epoch`` (1-based).

    0 during epoch 1; then ``ceil(B * C * (epoch - 1) * delta_rel)`` for LL-R/LL-Ct and
    ``ceil(B * C * delta_rel)`` for LL-Cp. ``delta_rel`` is read as the decimal it is written
    as (``Fraction(str(delta_rel))``), so 320 * 5 * 0.005 is exactly 8.
    """
    if mode not in LL_MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(LL_MODES)}")
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in (batch_size, n_classes, epoch)):
        raise TypeError(f"batch_size, n_classes and epoch must be integers, got {batch_size!r}, {n_classes!r}, "
                        f"{epoch!r}")
    if batch_size < 1 or n_classes < 1 or epoch < 1:
        raise ValueError(f"batch_size, n_classes and epoch must be >= 1, got {batch_size}, {n_classes}, {epoch}")
    if not isinstance(delta_rel, (int, float)) or isinstance(delta_rel, bool) or not 0 <= delta_rel <= 1:
        raise ValueError(f"delta_rel must be a number in [0, 1], got {delta_rel!r}")
    if epoch == 1:
        return 0
    steps = 1 if mode == "LL-Cp" else epoch - 1
    return math.ceil(batch_size * n_classes * steps * Fraction(str(delta_rel)))


@dataclass
class LargeLoss:
    """Result of :func:`large_loss_bce`: the scalar ``loss`` and the (B, C) bool mask of the
    unobserved entries that were rejected (LL-R) or flipped (LL-Ct, LL-Cp) in this batch."""

    loss: torch.Tensor
    selected: torch.Tensor


def large_loss_bce(logits: torch.Tensor, labels: torch.Tensor, observed: torch.Tensor, k: int,
                   mode: str) -> LargeLoss:
    """Assume-negative BCE with the large-loss modification of the ``k`` largest unobserved losses.

    ``logits``: (B, C); ``labels``: (B, C) in {0, 1}; ``observed``: (B, C) bool;
    ``k``: from :func:`large_loss_k` (0: plain AN). The AN loss of every unobserved entry is
    ranked (without gradients); every unobserved entry whose loss is ``>=`` the ``k``-th
    largest is selected (ties at the threshold are all selected; ``k`` larger than the number
    of unobserved entries selects them all). Returns the mean over all B * C entries and the
    selection (see the module docstring for what each mode does with it). Labels other than
    0/1 and NaN or infinite logits raise ``ValueError`` (a NaN loss would rank above every
    threshold and switch the selection off); the checks share the one host-device sync the
    selection needs anyway.
    """
    _check_pair(logits, labels)
    if mode not in LL_MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(LL_MODES)}")
    if not isinstance(observed, torch.Tensor) or observed.shape != logits.shape or observed.dtype != torch.bool:
        raise ValueError(f"observed must be a bool tensor of shape {tuple(logits.shape)}")
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 0:
        raise ValueError(f"k must be an integer >= 0, got {k!r}")
    unobserved = ~observed
    (n_unobserved,) = _check_values(logits, labels, unobserved)
    labels = labels.to(logits.dtype)
    losses = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    if k == 0 or n_unobserved == 0:
        selected = torch.zeros_like(observed)
    else:
        ranked = losses.detach().masked_fill(observed, float("-inf")).flatten()
        threshold = ranked.topk(min(k, n_unobserved)).values[-1]
        selected = unobserved & (losses.detach() >= threshold)
    if mode == "LL-R":
        losses = losses.masked_fill(selected, 0.0)
    else:
        flipped = F.binary_cross_entropy_with_logits(logits, torch.ones_like(labels), reduction="none")
        losses = torch.where(selected, flipped, losses)
    return LargeLoss(losses.mean(), selected)


def average_precision(scores: np.ndarray | torch.Tensor, positive: np.ndarray | torch.Tensor) -> float:
    """Average precision of one class: ``sum_n (R_n - R_{n-1}) P_n`` over the distinct scores
    in decreasing order (tied scores form one threshold), as scikit-learn computes it.

    ``scores``: (N,) real; ``positive``: (N,) in {0, 1}. A class without positives has no
    recall and returns ``nan`` (scikit-learn returns 0 with a warning instead).
    """
    scores = np.asarray(scores.detach().cpu() if isinstance(scores, torch.Tensor) else scores, dtype=np.float64)
    positive = np.asarray(positive.detach().cpu() if isinstance(positive, torch.Tensor) else positive)
    if scores.ndim != 1 or scores.shape != positive.shape:
        raise ValueError(f"scores and positive must both be (N,), got {scores.shape} and {positive.shape}")
    if not np.isin(positive, (0, 1)).all():
        raise ValueError("positive must hold only 0 and 1")
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or infinite values")
    n_pos = int(positive.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    scores, positive = scores[order], positive[order].astype(np.float64)
    # last index of each group of equal scores: the thresholds
    ends = np.r_[np.nonzero(np.diff(scores))[0], len(scores) - 1]
    tp = np.cumsum(positive)[ends]
    precision = tp / (ends + 1)
    recall_gain = np.diff(np.r_[0.0, tp]) / n_pos
    return float((recall_gain * precision).sum())


def mean_average_precision(scores: np.ndarray | torch.Tensor, targets: np.ndarray | torch.Tensor,
                           per_class: bool = False) -> float | tuple[float, np.ndarray]:
    """Mean over classes of :func:`average_precision`, in percent.

    ``scores``: (N, C) (logits or probabilities: only their order matters); ``targets``: (N, C)
    in {0, 1}, full labels. **Classes without any positive are left out of the mean** (their
    AP is undefined; their entry in the per-class array is ``nan``). This differs from
    averaging scikit-learn's ``average_precision_score`` over all classes, which counts such a
    class as AP 0; with every class present the two agree. Raises ``ValueError`` when no
    class has a positive. ``per_class=True`` also returns the (C,) per-class APs in percent.
    """
    scores = np.asarray(scores.detach().cpu() if isinstance(scores, torch.Tensor) else scores, dtype=np.float64)
    targets = np.asarray(targets.detach().cpu() if isinstance(targets, torch.Tensor) else targets)
    if scores.ndim != 2 or scores.shape != targets.shape:
        raise ValueError(f"scores and targets must both be (N, C), got {scores.shape} and {targets.shape}")
    aps = 100 * np.array([average_precision(scores[:, c], targets[:, c]) for c in range(scores.shape[1])])
    if np.isnan(aps).all():
        raise ValueError("no class has a positive example: mAP is undefined")
    value = float(np.nanmean(aps))
    return (value, aps) if per_class else value
