"""No silent garbage: inputs that used to give wrong numbers without an error (issue: hardening).

Each test below failed on the earlier code, which returned clipped, empty or zero data."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from utils import anomaly, cam, data, models, results, synthetic, viz
from utils.padim import PaDiM


def mvtec_folder(tmp_path, image: Image.Image, mask: Image.Image):
    """A one-image MVTec-layout category 'x' with one 'dent' test image and its mask."""
    cat = tmp_path / "x"
    for sub in ("train/good", "test/dent", "ground_truth/dent"):
        (cat / sub).mkdir(parents=True)
    image.save(cat / "train/good/000.png")
    image.save(cat / "test/dent/000.png")
    mask.save(cat / "ground_truth/dent/000_mask.png")
    return tmp_path


def test_sixteen_bit_png_is_scaled_by_its_range_not_clipped(tmp_path):
    ramp = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65520
    image = Image.fromarray(ramp)
    assert image.mode.startswith("I;16")
    root = mvtec_folder(tmp_path, image, Image.new("L", (64, 64)))
    loaded, _, _, _ = data.load_mvtec(root, "x", "train", resize=64, crop=None)
    expected = torch.from_numpy(np.round(ramp / 65535 * 255) / 255).float()
    assert torch.allclose(loaded[0, 0], expected, atol=1 / 255 + 1e-6)
    assert (loaded < 1).float().mean() > 0.9, "most pixels were clipped to 1.0"


@pytest.mark.parametrize("kind", ["zero-one", "red channel", "sixteen-bit"])
def test_any_nonzero_mask_pixel_is_defect(tmp_path, kind):
    defect = np.zeros((32, 32), dtype=np.uint8)
    defect[8:16, 8:20] = 1
    if kind == "zero-one":
        mask = Image.fromarray(defect)
    elif kind == "red channel":
        rgb = np.zeros((32, 32, 3), dtype=np.uint8)
        rgb[..., 0] = defect * 200
        mask = Image.fromarray(rgb)
    else:
        mask = Image.fromarray(defect.astype(np.uint16) * 1000)
    root = mvtec_folder(tmp_path, Image.new("RGB", (32, 32), "grey"), mask)
    _, masks, _, _ = data.load_mvtec(root, "x", "test", resize=32, crop=None)
    assert int(masks.sum()) == 8 * 12


@pytest.mark.parametrize("resize, crop", [(256, 0), (0, None), (256, -5), (256, 300), (256.0, 224)])
def test_sizes_are_validated_up_front(tmp_path, resize, crop):
    root = mvtec_folder(tmp_path, Image.new("RGB", (32, 32)), Image.new("L", (32, 32)))
    with pytest.raises(ValueError, match="resize|crop"):
        data.load_mvtec(root, "x", "train", resize=resize, crop=crop)


def test_images_loose_in_train_say_where_they_belong(tmp_path):
    (tmp_path / "x" / "train").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "x" / "train" / "000.png")
    with pytest.raises(FileNotFoundError, match="must be in sub-folders"):
        data.load_mvtec(tmp_path, "x", "train", resize=8, crop=None)


def test_normalize_refuses_0_255_floats():
    with pytest.raises(ValueError, match="divide 0-255 images by 255"):
        models.normalize(torch.full((1, 3, 4, 4), 200.0))


def test_integer_tensors_are_refused_where_they_would_give_zeros():
    with pytest.raises(TypeError, match="float"):
        cam.class_activation_maps(torch.ones(1, 2, 3, 3, dtype=torch.int64), torch.ones(1, 2, dtype=torch.int64))
    with pytest.raises(TypeError, match="float"):
        anomaly.gaussian_blur(torch.ones(1, 9, 9, dtype=torch.int64), 1.0)


@pytest.mark.parametrize("eps", [float("inf"), float("nan"), -1.0])
def test_padim_eps_must_be_finite_and_non_negative(eps):
    with pytest.raises(ValueError, match="eps"):
        PaDiM(8, eps=eps)


def test_nan_in_a_heatmap_or_image_is_an_error_not_a_blank_figure():
    heat = np.zeros((4, 4))
    heat[1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        viz.overlay(np.zeros((4, 4, 3)), heat)
    with pytest.raises(ValueError, match="NaN"):
        viz.to_numpy_image(heat)


@pytest.mark.parametrize("chapter", ["../../x", "a/b", "", "padim"])
def test_results_chapter_must_be_a_notebook_stem(chapter):
    with pytest.raises(ValueError, match="notebook stem"):
        results.record(chapter, "claim", 1.0)


def test_results_refuse_a_nan_paper_value_and_name_a_corrupt_file(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="paper's value must be finite"):
        results.record("99_test", "claim", 1.0, paper=float("nan"))
    monkeypatch.setenv("CVBOOK_RESULTS", str(tmp_path))
    (tmp_path / "99_test.tiny.json").write_text("[{not json")
    with pytest.raises(ValueError, match="99_test.tiny.json is not valid JSON"):
        results.record("99_test", "claim", 1.0)
    (tmp_path / "99_test.tiny.json").write_text(json.dumps([]))
    assert results.record("99_test", "claim", 1.0)["ours"] == 1.0


def test_hashes_of_a_missing_folder_raise(tmp_path):
    with pytest.raises(FileNotFoundError, match="no folder"):
        synthetic.file_hashes(tmp_path / "missing")
