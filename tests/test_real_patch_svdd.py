"""Patch SVDD on the real images of the data directory (MVTec AD grid, anomalib's hazelnut_toy).

Runs only with a data directory (``CVBOOK_DATA``) holding ``mvtec_ad/grid`` and/or
``hazelnut_toy``; skipped otherwise. A short training run (longer on a GPU), then the book's
one evaluation of the product map; the numbers are printed (``pytest -s``) for the chapter's
closing note. The Patch SVDD chapter explains the method.
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from utils import patch_svdd as ps
from utils.anomaly import evaluate

# (epochs, steps per epoch, batch): a few minutes on a CPU, longer on a GPU.
SCHEDULE = {"cpu": (2, 10, 16), "cuda": (20, 100, 64)}


@pytest.mark.realdata
@pytest.mark.parametrize("parent,category", [("mvtec_ad", "grid"), (".", "hazelnut_toy")])
def test_patch_svdd_short_training_on_real_images(parent, category, real_mvtec):
    root = real_mvtec(parent, category)
    from utils.data import load_mvtec

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    epochs, steps, batch = SCHEDULE[device.type]
    train, _, _, _ = load_mvtec(root, category, "train", resize=256, crop=None)
    test, masks, labels, _ = load_mvtec(root, category, "test", resize=256, crop=None)
    mean = train.mean(dim=0, keepdim=True)
    train, test = (train - mean).to(device), (test - mean).to(device)

    torch.manual_seed(0)
    encoder = ps.Encoder64().to(device)
    classifiers = nn.ModuleDict({"64": ps.PositionClassifier(), "32": ps.PositionClassifier()}).to(device)
    history = ps.train(encoder, classifiers, train, epochs, steps, batch, lam=1.0, lr=1e-3 if device.type == "cpu" else 1e-4)
    assert all(torch.isfinite(torch.tensor(v)).all() for v in history.terms.values())

    # The identity is checked in float64, where no reduced-precision kernel (TF32) reaches.
    exact, one = copy.deepcopy(encoder).double(), test[:1].double()
    for k, stride in ((64, 16), (32, 4)):
        torch.testing.assert_close(ps.dense_codes(exact, one, k, stride), ps.patch_codes(exact, one, k, stride),
                                   rtol=0, atol=1e-10)
    strides = {"64": 16, "32": 4}
    with torch.no_grad():
        memory = {n: torch.cat([ps.dense_codes(encoder, x, int(n), s) for x in train.split(8)])
                  for n, s in strides.items()}
        parts = [ps.anomaly_maps(encoder, memory, x, strides) for x in test.split(8)]
    maps = {n: torch.cat([p[n] for p in parts]).cpu() for n in ps.MAP_NAMES}
    scores = {n: evaluate(m, masks, labels, sigma=None) for n, m in maps.items()}
    for n, s in scores.items():
        print(f"{category} ({device.type}, {epochs}x{steps} steps of {batch}), map {n}: "
              + ", ".join(f"{k} {v:.3f}" for k, v in s.items()))
    assert all(torch.isfinite(m).all() for m in maps.values())
    assert scores["product"]["pixel AUROC"] > 0.5, scores["product"]
