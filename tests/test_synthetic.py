"""The offline generators: determinism, caching, layouts read by the real loaders, exact boxes and masks."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from utils import data, synthetic


def _generate_all(cache: Path, seed: int) -> dict[str, Path]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CVBOOK_CACHE", str(cache))
        return {"localization": synthetic.make_localization_set(seed),
                "multilabel": synthetic.make_multilabel_set(seed),
                "anomaly": synthetic.make_anomaly_set(seed)}


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> dict[str, Path]:
    """The three generated sets for seed 0, built once for this module in a temporary cache."""
    return _generate_all(tmp_path_factory.mktemp("synthetic-cache"), 0)


def test_same_seed_gives_byte_identical_files(sets, tmp_path):
    again = _generate_all(tmp_path / "second-cache", 0)
    for name, root in sets.items():
        first, second = synthetic.file_hashes(root), synthetic.file_hashes(again[name])
        assert len(first) > 100
        assert first == second, f"{name}: files differ between two runs with seed 0"


def test_different_seed_gives_different_images():
    assert not np.array_equal(synthetic.render_localization_image(0, 5).image,
                              synthetic.render_localization_image(1, 5).image)
    assert not np.array_equal(synthetic.render_multilabel_image(0, 5).image,
                              synthetic.render_multilabel_image(1, 5).image)
    assert not np.array_equal(synthetic.render_anomaly_image(0, "grass", "test", "hole", 2).image,
                              synthetic.render_anomaly_image(1, "grass", "test", "hole", 2).image)
    assert not torch.equal(synthetic.make_digits(0)[1], synthetic.make_digits(1)[1])


def test_folder_names_carry_version_and_seed(sets):
    for name, root in sets.items():
        assert root.name == f"{name}-v{synthetic.VERSIONS[name]}-seed0"
        assert root.parent.name == "synthetic"


def test_second_call_returns_cached_folder_without_rebuilding(monkeypatch):
    def quick_build(root, seed):
        root.mkdir(parents=True)
        (root / "README.txt").write_text(f"seed {seed}")

    monkeypatch.setattr(synthetic, "_build_anomaly", quick_build)
    first = synthetic.make_anomaly_set(0)
    assert first == synthetic.dataset_dir("anomaly", 0) and (first / "README.txt").read_text() == "seed 0"
    before = synthetic.file_hashes(first)

    def must_not_run(root, seed):
        raise AssertionError("the generator ran again although the folder was cached")

    monkeypatch.setattr(synthetic, "_build_anomaly", must_not_run)
    assert synthetic.make_anomaly_set(0) == first
    assert synthetic.file_hashes(first) == before


def test_interrupted_build_leaves_no_folder(monkeypatch):
    def half_then_crash(root, seed):
        (root / "brick" / "train" / "good").mkdir(parents=True)
        (root / "brick" / "train" / "good" / "000.png").write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic, "_build_anomaly", half_then_crash)
    with pytest.raises(KeyboardInterrupt):
        synthetic.make_anomaly_set(7)
    parent = synthetic.dataset_dir("anomaly", 7).parent
    assert not synthetic.dataset_dir("anomaly", 7).exists()
    assert os.listdir(parent) == []


@pytest.mark.parametrize("seed", [-1, 1.5, "0", True])
def test_bad_seed_is_rejected(seed):
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        synthetic.make_localization_set(seed)


# --- Localisation set (Pets layout) -----------------------------------------------------------

def _slow_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Tight box by scanning rows and columns one by one (reference for mask_box)."""
    rows = [y for y in range(mask.shape[0]) if any(mask[y, x] for x in range(mask.shape[1]))]
    cols = [x for x in range(mask.shape[1]) if any(mask[y, x] for y in range(mask.shape[0]))]
    return cols[0], rows[0], cols[-1] + 1, rows[-1] + 1


def test_localization_layout_is_read_by_the_pets_loader(sets):
    root = sets["localization"]
    records = data.load_pets(root)
    assert len(records) == synthetic.LOCALIZATION_COUNT
    assert {r.label for r in records} == {"cat", "dog"}
    assert sum(r.label == "cat" for r in records) == synthetic.LOCALIZATION_COUNT // 2
    for r in records:
        assert r.box is not None
        assert r.label == ("cat" if r.path.name[0].isupper() else "dog")
        assert synthetic.PETS_BREEDS[r.breed] == r.label
        with Image.open(r.path) as img:
            assert img.size == (synthetic.LOCALIZATION_SIZE, synthetic.LOCALIZATION_SIZE) and img.mode == "RGB"
    trainval, test = data.load_pets(root, "trainval"), data.load_pets(root, "test")
    assert {r.path for r in trainval}.isdisjoint({r.path for r in test})
    assert len(trainval) + len(test) == len(records)


def test_localization_xml_is_pets_style(sets):
    xml = (sets["localization"] / "annotations" / "xmls" / "Chelsea_1.xml").read_text()
    for tag in ("<annotation>", "<filename>Chelsea_1.jpg</filename>", "<depth>3</depth>", "<name>cat</name>",
                "<bndbox><xmin>"):
        assert tag in xml
    parsed = data.read_voc_xml(sets["localization"] / "annotations" / "xmls" / "coffee_cup_1.xml")
    assert parsed["filename"] == "coffee_cup_1.jpg" and parsed["objects"][0][0] == "dog"


@pytest.mark.parametrize("index", [0, 1, 2, 3, 150, 297])
def test_localization_box_is_the_tight_box_of_the_pasted_object(sets, index):
    sample = synthetic.render_localization_image(0, index)
    record = next(r for r in data.load_pets(sets["localization"]) if r.path.stem == sample.stem)
    assert record.box == _slow_box(sample.mask)
    x0, y0, x1, y1 = record.box
    assert sample.mask[y0:y1, x0:x1].sum() == sample.mask.sum()          # contains the object
    assert sample.mask[y0, x0:x1].any() and sample.mask[y1 - 1, x0:x1].any()  # tight: every edge touches it
    assert sample.mask[y0:y1, x0].any() and sample.mask[y0:y1, x1 - 1].any()
    on_disk = np.asarray(Image.open(record.path), dtype=np.float64)
    error = np.abs(on_disk - sample.image).mean()  # the file is this render, JPEG-compressed
    other = np.abs(on_disk - synthetic.render_localization_image(0, index + 2).image).mean()
    assert error < 8 and error < other / 3


# --- Multi-label set (VOC layout) ---------------------------------------------------------------

def test_multilabel_layout_is_read_by_the_voc_loader(sets):
    train = data.VOCMultiLabel(sets["multilabel"], "train", image_size=64)
    val = data.VOCMultiLabel(sets["multilabel"], "val", image_size=64)
    assert train.classes == synthetic.MULTILABEL_CLASSES
    assert len(train) == synthetic.MULTILABEL_TRAIN
    assert len(train) + len(val) == synthetic.MULTILABEL_COUNT
    assert set(train.ids).isdisjoint(val.ids)
    counts = torch.cat([train.targets, val.targets]).sum(1)
    assert counts.min() >= 1 and counts.max() <= 3
    assert (train.targets.sum(0) > 20).all()  # every class is well represented
    image, target = train[0]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32 and 0 <= image.min() <= image.max() <= 1
    assert torch.equal(target, train.targets[0])


@pytest.mark.parametrize("index", [0, 7, 123])
def test_multilabel_boxes_cover_each_objects_visible_pixels(sets, index):
    sample = synthetic.render_multilabel_image(0, index)
    xml = sets["multilabel"] / "VOCdevkit" / "VOC2012" / "Annotations" / f"{index + 1:06d}.xml"
    objects = data.read_voc_xml(xml)["objects"]
    assert [name for name, _ in objects] == [name for name, _ in sample.objects]
    for (_, box), (_, mask) in zip(objects, sample.objects):
        assert box == _slow_box(mask)


def test_per_class_lists_agree_with_annotations(sets):
    voc = sets["multilabel"] / "VOCdevkit" / "VOC2012"
    train = data.VOCMultiLabel(sets["multilabel"], "train")
    for k, cls in enumerate(train.classes):
        rows = dict(line.split() for line in (voc / "ImageSets" / "Main" / f"{cls}_train.txt").read_text().splitlines())
        assert [rows[i] == "1" for i in train.ids] == train.targets[:, k].bool().tolist()


# --- Anomaly set (MVTec AD layout) --------------------------------------------------------------

@pytest.mark.parametrize("category", synthetic.ANOMALY_CATEGORIES)
def test_anomaly_layout_is_read_by_the_mvtec_loader(sets, category):
    size = synthetic.ANOMALY_SIZE
    images, masks, labels, defects = data.load_mvtec(sets["anomaly"], category, "train", resize=size, crop=None)
    assert images.shape == (synthetic.ANOMALY_TRAIN, 3, size, size) and not masks.any() and not labels.any()
    images, masks, labels, defects = data.load_mvtec(sets["anomaly"], category, "test", resize=size, crop=None)
    n_test = synthetic.ANOMALY_TEST_GOOD + synthetic.ANOMALY_TEST_PER_DEFECT * len(synthetic.ANOMALY_DEFECTS)
    assert images.shape == (n_test, 3, size, size)
    assert sorted(set(defects)) == sorted(("good", *synthetic.ANOMALY_DEFECTS))
    assert masks.flatten(1).any(1).tolist() == labels.bool().tolist()  # a mask exactly for defective images
    assert labels.tolist() == [int(d != "good") for d in defects]


@pytest.mark.parametrize("defect", synthetic.ANOMALY_DEFECTS)
def test_anomaly_masks_cover_exactly_the_defect(sets, defect):
    for category in synthetic.ANOMALY_CATEGORIES:
        for index in range(3):
            sample = synthetic.render_anomaly_image(0, category, "test", defect, index)
            stem = f"{index:03d}"
            on_disk = np.asarray(Image.open(sets["anomaly"] / category / "test" / defect / f"{stem}.png"))
            mask = np.asarray(Image.open(sets["anomaly"] / category / "ground_truth" / defect / f"{stem}_mask.png"))
            assert np.array_equal(on_disk, sample.image)            # PNG is lossless
            assert set(np.unique(mask)) == {0, 255}
            assert np.array_equal(mask > 0, sample.mask)
            changed = (sample.image != sample.clean).any(axis=-1)
            assert not (changed & ~sample.mask).any(), "a pixel outside the mask was changed"
            assert changed[sample.mask].mean() > 0.85, "most of the masked region must differ"


def test_good_images_are_untouched_crops():
    sample = synthetic.render_anomaly_image(0, "brick", "test", "good", 0)
    assert np.array_equal(sample.image, sample.clean) and not sample.mask.any()


@pytest.mark.parametrize("args,match", [(("wood", "test", "good", 0), "unknown category 'wood'"),
                                        (("brick", "train", "hole", 0), "train holds 'good'"),
                                        (("brick", "test", "crack", 0), "scratch, stain, hole, cut_paste")])
def test_render_anomaly_rejects_unknown_folders(args, match):
    with pytest.raises(ValueError, match=match):
        synthetic.render_anomaly_image(0, *args)


def test_raw_intensity_baseline_matches_a_loop():
    rng = np.random.default_rng(0)
    train, test = rng.random((5, 3, 6, 7)), rng.random((2, 3, 6, 7))
    scores, maps = synthetic.raw_intensity_baseline(train, test, sigma=0)
    for m in range(2):
        for y in range(6):
            for x in range(7):
                z = [abs(test[m, c, y, x] - train[:, c, y, x].mean()) / (train[:, c, y, x].std() + 1e-6)
                     for c in range(3)]
                assert maps[m, y, x] == pytest.approx(sum(z) / 3)
        assert scores[m] == pytest.approx(maps[m].max())
    t_scores, t_maps = synthetic.raw_intensity_baseline(torch.tensor(train), torch.tensor(test), sigma=0)
    np.testing.assert_allclose(t_maps, maps)


@pytest.mark.parametrize("train_shape,test_shape,match", [((4, 3, 8, 8), (2, 3, 8, 9), "equal C, H, W"),
                                                          ((4, 8, 8), (2, 8, 8), r"\(N, C, H, W\)"),
                                                          ((1, 3, 8, 8), (2, 3, 8, 8), "at least 2")])
def test_raw_intensity_baseline_rejects_bad_shapes(train_shape, test_shape, match):
    with pytest.raises(ValueError, match=match):
        synthetic.raw_intensity_baseline(np.zeros(train_shape), np.zeros(test_shape))


def test_raw_intensity_baseline_is_far_from_perfect(sets):
    """The defects are not trivial: raw intensities find them only partly (PaDiM should do better)."""
    image_aurocs, pixel_aurocs = [], []
    for category in synthetic.ANOMALY_CATEGORIES:
        train, _, _, _ = data.load_mvtec(sets["anomaly"], category, "train", resize=128, crop=None)
        test, masks, labels, _ = data.load_mvtec(sets["anomaly"], category, "test", resize=128, crop=None)
        scores, maps = synthetic.raw_intensity_baseline(train, test)
        image_aurocs.append(roc_auc_score(labels.numpy(), scores))
        pixel_aurocs.append(roc_auc_score(masks.numpy().ravel(), maps.ravel()))
    assert 0.5 < np.mean(pixel_aurocs) < 0.85
    assert 0.45 < np.mean(image_aurocs) < 0.85


# --- Digits (MNIST stand-in) -------------------------------------------------------------------

def test_make_digits_looks_like_mnist():
    train_x, train_y, test_x, test_y = synthetic.make_digits(0)
    assert train_x.shape[1:] == (1, 28, 28) and test_x.shape[1:] == (1, 28, 28)
    assert len(train_x) + len(test_x) == 1797 and len(test_x) == round(1797 * 0.25)
    assert train_x.dtype == torch.float32 and train_y.dtype == torch.int64
    assert 0 <= float(train_x.min()) and float(train_x.max()) <= 1
    assert set(train_y.tolist()) == set(range(10)) and set(test_y.tolist()) == set(range(10))
    assert float(train_x[:, :, :4].abs().sum()) == 0  # a 4-pixel empty frame, as in MNIST
    again = synthetic.make_digits(0)
    assert all(torch.equal(a, b) for a, b in zip((train_x, train_y, test_x, test_y), again))
