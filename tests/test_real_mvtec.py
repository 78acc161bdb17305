"""The MVTec AD loader on real images: MVTec AD grid and anomalib's hazelnut_toy.

Runs only with a data directory (``CVBOOK_DATA``) holding ``mvtec_ad/grid`` and/or
``hazelnut_toy``; skipped otherwise. The Datasets chapter explains the layout.
"""
from __future__ import annotations


import numpy as np
import pytest
import torch
from PIL import Image

from utils import data


@pytest.mark.realdata
def test_mvtec_grid_subset(real_mvtec):
    root = real_mvtec("mvtec_ad", "grid")
    with Image.open(next((root / "grid" / "train" / "good").iterdir())) as img:
        assert img.mode == "L" and img.size == (1024, 1024)  # grid is grayscale
    train, train_masks, train_labels, _ = data.load_mvtec(root, "grid", "train", resize=256, crop=224)
    assert train.shape == (25, 3, 224, 224) and not train_masks.any() and not train_labels.any()
    assert torch.equal(train[:, 0], train[:, 1]) and torch.equal(train[:, 0], train[:, 2])
    test, masks, labels, defects = data.load_mvtec(root, "grid", "test", resize=256, crop=224)
    assert test.shape == (14, 3, 224, 224) and masks.shape == (14, 224, 224)
    assert defects.count("good") == 3 and int(labels.sum()) == 11
    assert sorted(set(defects) - {"good"}) == ["bent", "broken", "glue", "metal_contamination", "thread"]
    assert masks.flatten(1).any(1).tolist() == labels.bool().tolist()  # masks exactly for defective images


@pytest.mark.realdata
def test_mvtec_grid_masks_are_aligned_with_their_files(real_mvtec):
    root = real_mvtec("mvtec_ad", "grid")
    ds = data.MVTecAD(root, "grid", "test", resize=256, crop=None)
    for i, (path, mask_path, _, _) in enumerate(ds.samples):
        if mask_path is None:
            continue
        assert mask_path.name == f"{path.stem}_mask.png"
        with Image.open(mask_path) as m:
            original = np.asarray(m.convert("L")) > 127
        _, mask, _, _ = ds[i]
        # the resized mask covers the same fraction of the image as the original, to within 1%
        assert abs(float(mask.mean()) - float(original.mean())) < 0.01
        assert mask.sum() > 0


@pytest.mark.realdata
def test_hazelnut_toy(real_mvtec):
    root = real_mvtec(".", "hazelnut_toy")
    train, _, train_labels, _ = data.load_mvtec(root, "hazelnut_toy", "train", resize=256, crop=224)
    assert train.shape == (28, 3, 224, 224) and not train_labels.any()
    test, masks, labels, defects = data.load_mvtec(root, "hazelnut_toy", "test", resize=256, crop=224)
    assert defects.count("good") == 6 and defects.count("colour") == 17 and len(defects) == 23
    assert masks.flatten(1).any(1).tolist() == labels.bool().tolist()
    assert float(test.std()) > 0.05  # real colour photographs, not blank tensors
