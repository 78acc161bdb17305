"""PaDiM on the real images of the data directory (MVTec AD grid, anomalib's hazelnut_toy).

Runs only with a data directory (``CVBOOK_DATA``) holding ``mvtec_ad/grid`` and/or
``hazelnut_toy``; skipped otherwise. The PaDiM chapter explains the method.
"""
from __future__ import annotations

import pytest
import torch

from utils.anomaly import embed, evaluate
from utils.padim import PaDiM

TAPS = ("stride4", "stride8", "stride16")


@pytest.mark.realdata
@pytest.mark.parametrize("parent,category,min_image_auroc", [("mvtec_ad", "grid", None),
                                                             (".", "hazelnut_toy", 0.95)])
def test_padim_lite0_on_real_images(parent, category, min_image_auroc, real_mvtec):
    root = real_mvtec(parent, category)
    from utils.data import load_mvtec
    from utils.models import LITE0_TAPS, load_lite0

    torch.manual_seed(0)
    model = load_lite0()
    taps = {name: LITE0_TAPS[name] for name in TAPS}
    train, _, _, _ = load_mvtec(root, category, "train", resize=256, crop=224)
    test, masks, labels, _ = load_mvtec(root, category, "test", resize=256, crop=224)
    padim = PaDiM(176).fit(embed(model, train, taps, "efficientnet_lite0", batch_size=8))
    distances = torch.cat([padim(e) for e in embed(model, test, taps, "efficientnet_lite0", batch_size=8)])
    result = evaluate(distances, masks, labels, sigma=4)

    pixel, image = result["pixel AUROC"], result["image AUROC"]
    print(f"{category}: pixel AUROC {pixel:.3f}, image AUROC {image:.3f}")
    assert pixel >= 0.95
    if min_image_auroc is not None:
        assert image >= min_image_auroc
