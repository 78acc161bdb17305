import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF

from utils import hooks, models


@pytest.fixture(scope="module")
def lite0():
    return models.load_lite0()


def test_lite0_taps_have_documented_strides_and_channels(lite0):
    feats = models.extract_features(lite0, torch.zeros(1, 3, 224, 224), models.LITE0_TAPS)
    for tap, stride in zip(models.LITE0_TAPS, (4, 8, 16, 32)):
        assert feats[tap].shape == (1, models.LITE0_CHANNELS[tap], 224 // stride, 224 // stride)
    assert hooks.count_hooks(lite0) == 0


def test_lite0_body_equals_the_models_own_feature_path(lite0):
    body = models.lite0_body().eval()
    x = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        assert torch.allclose(body(x), lite0.extract_features(x), atol=1e-5)
    assert body(x).shape == (2, 1280, 5, 5)


def test_lite0_recognises_the_scikit_image_cat(lite0):
    import skimage.data
    import torch.nn.functional as F

    x = torch.from_numpy(skimage.data.chelsea()).permute(2, 0, 1)[None].float() / 255
    x = F.interpolate(x, size=(224, 224), mode="bilinear", antialias=True)
    with torch.no_grad():
        top = lite0(models.normalize(x)).argmax(1).item()
    assert top in range(281, 286), models.imagenet_categories()[top]


def test_imagenet_categories():
    names = models.imagenet_categories()
    assert len(names) == 1000 and names[281] == "tabby" and names[242] == "boxer"


def test_normalize_checks_input():
    x = torch.rand(2, 3, 8, 8)
    out = models.normalize(x, "resnet18")
    assert torch.allclose(out[:, 0], (x[:, 0] - 0.485) / 0.229)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        models.normalize(torch.rand(3, 8, 8))
    with pytest.raises(TypeError, match="divide uint8 by 255"):
        models.normalize(torch.zeros(1, 3, 2, 2, dtype=torch.uint8))
    with pytest.raises(ValueError, match="unknown backbone 'vgg'"):
        models.normalize(x, "vgg")


def test_torchvision_missing_weights_offline_is_clear(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    import torchvision.models._api as api

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(api.WeightsEnum, "get_state_dict", lambda self, *a, **k: offline())
    with pytest.raises(models.MissingWeightsError, match=r"resnet18: cannot load .*Download https://download.pytorch.org"):
        models.load_torchvision("resnet18")


def test_unknown_backbones_and_weights():
    with pytest.raises(ValueError, match="unknown torchvision backbone 'alexnet'"):
        models.load_torchvision("alexnet")
    with pytest.raises(ValueError, match="has no weights 'V9'"):
        models.load_torchvision("resnet18", weights="V9")
    with pytest.raises(ValueError, match="no taps defined"):
        models.backbone_taps("alexnet")
    assert models.backbone_taps("resnet18")["layer3"] == "layer3"


def test_imagenet_crop_is_resize_then_centre_crop():
    photo = np.random.default_rng(0).integers(0, 256, (300, 451, 3), dtype=np.uint8)
    got = models.imagenet_crop(photo)
    short = TF.resize(torch.from_numpy(photo).permute(2, 0, 1), 256, antialias=True)   # (3, 256, 384)
    top, left = (short.shape[1] - 224) // 2, (short.shape[2] - 224) // 2
    torch.testing.assert_close(got, short[:, top:top + 224, left:left + 224].float() / 255)
    assert got.shape == (3, 224, 224) and 0 <= got.min() and got.max() <= 1
    with pytest.raises(ValueError, match="uint8 RGB"):
        models.imagenet_crop(photo.astype(np.float32))
    with pytest.raises(ValueError, match="uint8 RGB"):
        models.imagenet_crop(photo[..., :1])
