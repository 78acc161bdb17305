"""The dataset loaders on hand-made folders in the real layouts, broken copies, and the full-profile paths."""
from __future__ import annotations

import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from utils import config, data, registry, synthetic

VOC_XML = """<annotation><folder>VOC2012</folder><filename>{name}.jpg</filename>
<size><width>{w}</width><height>{h}</height><depth>3</depth></size>{objects}</annotation>"""
VOC_OBJECT = ("<object><name>{cls}</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax>"
              "<ymax>{y1}</ymax></bndbox><difficult>0</difficult></object>")


def _xml(name: str, objects: list[tuple[str, tuple]], w: int = 40, h: int = 30) -> str:
    body = "".join(VOC_OBJECT.format(cls=c, x0=b[0], y0=b[1], x1=b[2], y1=b[3]) for c, b in objects)
    return VOC_XML.format(name=name, w=w, h=h, objects=body)


def _offline_full_run(data_dir: Path | None = None) -> config.Run:
    """A full-profile run that may not download, so missing data must raise."""
    return config.Run(config.Profile("full", True, "test: full but offline"), 0, torch.device("cpu"), data_dir)


@pytest.fixture(autouse=True)
def no_data_dir(monkeypatch):
    monkeypatch.delenv(config.DATA_ENV, raising=False)
    monkeypatch.setattr(data, "_fastai_pets", lambda: Path("/nonexistent/fastai/oxford-iiit-pet"))


# --- VOC XML ------------------------------------------------------------------------------------

def test_read_voc_xml_converts_one_based_inclusive_corners(tmp_path):
    path = tmp_path / "a.xml"
    path.write_text(_xml("a", [("cat", (1, 1, 40, 30)), ("dog", ("5.4", "6.6", 10, 12))]))
    parsed = data.read_voc_xml(path)
    assert parsed["filename"] == "a.jpg" and (parsed["width"], parsed["height"]) == (40, 30)
    # pixel columns 1..40 (1-based) are columns 0..39, i.e. edges 0..40: the whole image
    assert parsed["objects"] == [("cat", (0, 0, 40, 30)), ("dog", (4, 6, 10, 12))]


@pytest.mark.parametrize("text,match", [("<annotation><size>", "cannot parse annotation"),
                                        ("<annotation><object><name>cat</name></object></annotation>",
                                         "missing <size>"),
                                        (_xml("b", [("cat", (1, 2, 3, 4))]).replace("<bndbox>", "<box>")
                                         .replace("</bndbox>", "</box>"), "lacks <name> or <bndbox>"),
                                        (_xml("b", [("cat", (1, "x", 3, 4))]), "not a number")])
def test_read_voc_xml_errors_name_the_file(tmp_path, text, match):
    path = tmp_path / "broken_annotation.xml"
    path.write_text(text)
    with pytest.raises(ValueError, match=match) as info:
        data.read_voc_xml(path)
    assert "broken_annotation.xml" in str(info.value)


def test_read_voc_xml_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.xml"):
        data.read_voc_xml(tmp_path / "nothing.xml")


# --- Pets ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,label", [("Chelsea_12.jpg", "cat"), ("coffee_cup_7.jpg", "dog"),
                                        ("Abyssinian_1.jpg", "cat"), ("american_bulldog_3", "dog"),
                                        ("/some/dir/Bengal_10.jpg", "cat")])
def test_pets_label_follows_the_capital_letter(name, label):
    assert data.pets_label(name) == label


@pytest.mark.parametrize("name", ["", "_1.jpg", "7_cats.jpg"])
def test_pets_label_rejects_non_pets_names(name):
    with pytest.raises(ValueError, match="not a Pets file name"):
        data.pets_label(name)


@pytest.mark.parametrize("name", [3, None, b"Bengal_1.jpg"])
def test_pets_label_names_a_wrong_type(name):
    with pytest.raises(TypeError, match=f"pets_label takes a file name.*not {type(name).__name__}"):
        data.pets_label(name)


def test_pets_label_takes_a_path():
    assert data.pets_label(Path("/x") / "Bengal_10.jpg") == "cat"


def _pets_folder(root: Path) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "annotations" / "xmls").mkdir(parents=True)
    for stem in ("Abyssinian_1", "american_bulldog_2", "Abyssinian_10"):
        Image.new("RGB", (40, 30), (120, 80, 40)).save(root / "images" / f"{stem}.jpg")
    (root / "images" / "Abyssinian_1.mat").write_bytes(b"not an image")  # real Pets has a few .mat files
    (root / "annotations" / "xmls" / "Abyssinian_1.xml").write_text(_xml("Abyssinian_1", [("cat", (3, 4, 20, 25))]))
    (root / "annotations" / "trainval.txt").write_text("Abyssinian_1 1 1 1\namerican_bulldog_2 2 2 1\n")
    (root / "annotations" / "test.txt").write_text("Abyssinian_10 1 1 1\n")
    return root


def test_load_pets_reads_labels_breeds_and_boxes(tmp_path):
    root = _pets_folder(tmp_path / "oxford-iiit-pet")
    records = data.load_pets(root)
    assert [r.path.name for r in records] == ["Abyssinian_1.jpg", "Abyssinian_10.jpg", "american_bulldog_2.jpg"]
    assert [(r.label, r.breed) for r in records] == [("cat", "Abyssinian"), ("cat", "Abyssinian"),
                                                      ("dog", "american_bulldog")]
    assert records[0].box == (2, 3, 20, 25) and records[1].box is None and records[2].box is None
    assert [r.path.stem for r in data.load_pets(root, "test")] == ["Abyssinian_10"]
    assert len(data.load_pets(root, "trainval")) == 2


def test_load_pets_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="images"):
        data.load_pets(tmp_path)
    root = _pets_folder(tmp_path / "pets")
    with pytest.raises(ValueError, match="unknown Pets split 'train'"):
        data.load_pets(root, "train")


def test_pets_root_full_uses_the_data_directory(tmp_path):
    root = _pets_folder(tmp_path / "oxford-iiit-pet")
    assert data.pets_root(_offline_full_run(tmp_path)) == root


def test_pets_root_full_without_data_is_a_clear_error():
    with pytest.raises(registry.MissingDataError, match="images.tar.gz"):
        data.pets_root(_offline_full_run())


# --- VOC multi-label --------------------------------------------------------------------------

def _voc_folder(root: Path, objects: dict[str, list]) -> Path:
    voc = root / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (voc / sub).mkdir(parents=True)
    for image_id, objs in objects.items():
        Image.new("RGB", (40, 30), (200, 10, 10)).save(voc / "JPEGImages" / f"{image_id}.jpg")
        (voc / "Annotations" / f"{image_id}.xml").write_text(_xml(image_id, objs))
    (voc / "ImageSets" / "Main" / "train.txt").write_text("\n".join(objects) + "\n")
    for cls in ("cat", "dog", "person"):
        rows = [f"{i} {1 if any(c == cls for c, _ in o) else -1:2d}" for i, o in objects.items()]
        (voc / "ImageSets" / "Main" / f"{cls}_train.txt").write_text("\n".join(rows) + "\n")
    return root


def test_voc_multilabel_multi_hot_targets(tmp_path):
    root = _voc_folder(tmp_path, {"2008_000001": [("dog", (1, 1, 9, 9)), ("person", (2, 2, 5, 5)),
                                                  ("dog", (3, 3, 8, 8))],
                                  "2008_000002": [("cat", (1, 1, 40, 30))]})
    ds = data.VOCMultiLabel(root, "train", image_size=32)
    assert ds.classes == ("cat", "dog", "person")
    assert ds.targets.tolist() == [[0, 1, 1], [1, 0, 0]]
    image, target = ds[0]
    assert image.shape == (3, 32, 32) and torch.allclose(image[0], torch.full((32, 32), 200 / 255), atol=0.03)
    assert target.tolist() == [0, 1, 1]
    assert data.VOCMultiLabel(root / "VOCdevkit" / "VOC2012", "train").ids == ds.ids  # either root works
    full = data.VOCMultiLabel(root, "train", classes=data.VOC_CLASSES)
    assert full.targets.shape == (2, 20) and full.targets[0, data.VOC_CLASSES.index("person")] == 1


def test_voc_multilabel_errors(tmp_path):
    root = _voc_folder(tmp_path, {"000001": [("unicorn", (1, 1, 9, 9))]})
    with pytest.raises(ValueError, match=r"000001.xml: class 'unicorn' is not one of cat, dog, person"):
        data.VOCMultiLabel(root, "train", classes=("cat", "dog", "person"))
    with pytest.raises(FileNotFoundError, match="val.txt not found; splits here: train"):
        data.VOCMultiLabel(root, "val", classes=("unicorn",))
    with pytest.raises(FileNotFoundError, match="holds no VOC folder"):
        data.VOCMultiLabel(tmp_path / "VOCdevkit" / "VOC2012" / "Annotations", "train")


def test_voc_root_full_without_data_is_a_clear_error():
    with pytest.raises(registry.MissingDataError, match="VOCtrainval_11-May-2012.tar"):
        data.voc_root(_offline_full_run())


# --- MVTec AD -----------------------------------------------------------------------------------

def _square_image(size: int, box: tuple[int, int, int, int], mode: str = "L") -> Image.Image:
    """A dark image with a bright rectangle (x0, y0, x1, y1), exclusive ends."""
    pixels = np.full((size, size), 30, dtype=np.uint8)
    pixels[box[1]: box[3], box[0]: box[2]] = 220
    img = Image.fromarray(pixels)
    return img.convert("RGB") if mode == "RGB" else img


def _mvtec_folder(root: Path, category: str = "grid", mask_suffix: str = "_mask", size: int = 40) -> Path:
    """A tiny category in the MVTec layout: grayscale PNGs, one defect type with masks."""
    cat = root / category
    for folder in ("train/good", "test/good", "test/bent", "ground_truth/bent"):
        (cat / folder).mkdir(parents=True)
    for i in range(3):
        _square_image(size, (0, 0, 0, 0)).save(cat / "train" / "good" / f"{i:03d}.png")
    _square_image(size, (0, 0, 0, 0)).save(cat / "test" / "good" / "000.png")
    boxes = [(5, 7, 17, 20), (30, 2, 39, 36)]
    for i, box in enumerate(boxes):
        _square_image(size, box).save(cat / "test" / "bent" / f"{i:03d}.png")
        mask = np.zeros((size, size), dtype=np.uint8)
        mask[box[1]: box[3], box[0]: box[2]] = 255
        Image.fromarray(mask).save(cat / "ground_truth" / "bent" / f"{i:03d}{mask_suffix}.png")
    return root


def _nearest_then_crop(mask: np.ndarray, resize: int, crop: int) -> np.ndarray:
    """Reference: nearest-neighbour resize by explicit index arithmetic, then a centre crop."""
    src = mask.shape[0]
    out = np.zeros((resize, resize), dtype=bool)
    for y in range(resize):
        for x in range(resize):
            out[y, x] = mask[int((y + 0.5) * src / resize), int((x + 0.5) * src / resize)]
    left = (resize - crop) // 2
    return out[left: left + crop, left: left + crop]


def test_mvtec_reads_grayscale_as_rgb_and_keeps_masks_aligned(tmp_path):
    root = _mvtec_folder(tmp_path)
    ds = data.MVTecAD(root, "grid", "test", resize=32, crop=24)
    assert [(s[0].name, s[2], s[3]) for s in ds.samples] == [("000.png", 1, "bent"), ("001.png", 1, "bent"),
                                                             ("000.png", 0, "good")]
    for i, box in enumerate([(5, 7, 17, 20), (30, 2, 39, 36)]):
        image, mask, label, defect = ds[i]
        assert image.shape == (3, 24, 24) and mask.shape == (1, 24, 24) and label == 1
        assert torch.equal(image[0], image[1]) and torch.equal(image[0], image[2])
        full = np.zeros((40, 40), dtype=bool)
        full[box[1]: box[3], box[0]: box[2]] = True
        assert np.array_equal(mask[0].numpy() == 1, _nearest_then_crop(full, 32, 24))
        bright = image[0] > 0.5
        assert (bright == mask[0].bool()).float().mean() > 0.95  # the image's square sits on its mask
    image, mask, label, defect = ds[2]
    assert label == 0 and defect == "good" and mask.sum() == 0 and mask.shape == (1, 24, 24)


def test_load_mvtec_stacks_a_split(tmp_path):
    root = _mvtec_folder(tmp_path)
    images, masks, labels, defects = data.load_mvtec(root, "grid", "test", resize=40, crop=None)
    assert images.shape == (3, 3, 40, 40) and images.dtype == torch.float32
    assert masks.shape == (3, 40, 40) and masks.dtype == torch.bool
    assert labels.tolist() == [1, 1, 0] and labels.dtype == torch.int64 and defects == ["bent", "bent", "good"]
    assert int(masks[0].sum()) == 12 * 13 and not masks[2].any()
    train = data.load_mvtec(root, "grid", "train", resize=40, crop=None)
    assert train[0].shape == (3, 3, 40, 40) and not train[1].any()


def test_mvtec_accepts_anomalib_toy_mask_names(tmp_path):
    root = _mvtec_folder(tmp_path, "hazelnut_toy", mask_suffix="")
    images, masks, labels, _ = data.load_mvtec(root, "hazelnut_toy", "test", resize=40, crop=None)
    assert masks.flatten(1).any(1).tolist() == labels.bool().tolist() == [True, True, False]


def test_mvtec_argument_errors(tmp_path):
    root = _mvtec_folder(tmp_path)
    with pytest.raises(FileNotFoundError, match="category 'carpet' not found .*categories there: grid"):
        data.MVTecAD(root, "carpet")
    with pytest.raises(ValueError, match="unknown split 'val'"):
        data.MVTecAD(root, "grid", "val")
    with pytest.raises(ValueError, match=r"crop \(300\) must not exceed resize \(256\)"):
        data.MVTecAD(root, "grid", crop=300)


def test_mvtec_mask_of_another_size_is_an_error(tmp_path):
    root = _mvtec_folder(tmp_path)
    Image.new("L", (20, 20)).save(root / "grid" / "ground_truth" / "bent" / "001_mask.png")
    ds = data.MVTecAD(root, "grid", "test")
    with pytest.raises(ValueError, match=r"001_mask.png is 20x20 but image .*001.png is 40x40"):
        ds[1]


@pytest.fixture(scope="module")
def generated_anomaly_set(tmp_path_factory) -> Path:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CVBOOK_CACHE", str(tmp_path_factory.mktemp("anomaly-cache")))
        return synthetic.make_anomaly_set(0)


@pytest.fixture()
def broken_copy(generated_anomaly_set, tmp_path) -> Path:
    """A copy of the generated set's brick category, for breaking."""
    shutil.copytree(generated_anomaly_set / "brick", tmp_path / "brick")
    return tmp_path


def test_deleted_mask_names_the_image(broken_copy):
    (broken_copy / "brick" / "ground_truth" / "stain" / "003_mask.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"no mask for defective image .*stain/003.png"):
        data.MVTecAD(broken_copy, "brick", "test")


def test_truncated_image_names_the_file(broken_copy):
    path = broken_copy / "brick" / "test" / "hole" / "002.png"
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(OSError, match=r"cannot read image .*hole/002.png"):
        data.load_mvtec(broken_copy, "brick", "test")


def test_unknown_category_lists_the_categories_found(broken_copy, generated_anomaly_set):
    with pytest.raises(FileNotFoundError, match="category 'tile' not found .*categories there: brick, grass, gravel"):
        data.MVTecAD(generated_anomaly_set, "tile")
    with pytest.raises(FileNotFoundError, match="categories there: brick$"):
        data.MVTecAD(broken_copy, "grass")


def test_mvtec_root_tiny_and_full(tmp_path):
    tiny = config.Run(config.get_profile("tiny"), 0, torch.device("cpu"), None)
    with pytest.raises(ValueError, match="generates brick, grass, gravel, not 'grid'"):
        data.mvtec_root(tiny, "grid")
    _mvtec_folder(tmp_path / "mvtec_ad", "grid")
    _mvtec_folder(tmp_path, "hazelnut_toy", mask_suffix="")
    assert data.mvtec_root(_offline_full_run(tmp_path), "grid") == tmp_path / "mvtec_ad"
    assert data.mvtec_root(_offline_full_run(tmp_path), "hazelnut_toy") == tmp_path
    with pytest.raises(registry.MissingDataError, match="mvtec_anomaly_detection.tar.xz"):
        data.mvtec_root(_offline_full_run(tmp_path), "carpet")
    with pytest.raises(registry.MissingDataError, match="'toy_car' is not in the data directory"):
        data.mvtec_root(_offline_full_run(tmp_path), "toy_car")


# --- MNIST ------------------------------------------------------------------------------------

def _write_idx(folder: Path, stem: str, images: np.ndarray, labels: np.ndarray) -> None:
    n, h, w = images.shape
    (folder / f"{stem}-images-idx3-ubyte").write_bytes(struct.pack(">iiii", 2051, n, h, w) + images.tobytes())
    (folder / f"{stem}-labels-idx1-ubyte").write_bytes(struct.pack(">ii", 2049, n) + labels.tobytes())


def test_load_mnist_full_reads_torchvision_layout(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    _write_idx(raw, "train", train, np.arange(5, dtype=np.uint8))
    _write_idx(raw, "t10k", train[:2], np.array([7, 3], dtype=np.uint8))
    train_x, train_y, test_x, test_y = data.load_mnist(_offline_full_run(tmp_path))
    assert train_x.shape == (5, 1, 28, 28) and train_x.dtype == torch.float32
    assert torch.allclose(train_x[:, 0], torch.from_numpy(train).float() / 255)
    assert train_y.tolist() == [0, 1, 2, 3, 4] and test_y.tolist() == [7, 3] and test_x.shape == (2, 1, 28, 28)


def test_load_mnist_tiny_is_the_digits_stand_in():
    tiny = config.Run(config.get_profile("tiny"), 3, torch.device("cpu"), None)
    assert all(torch.equal(a, b) for a, b in zip(data.load_mnist(tiny), synthetic.make_digits(3)))


def test_load_mnist_full_without_data_is_a_clear_error():
    with pytest.raises(registry.MissingDataError, match="train-images-idx3-ubyte.gz"):
        data.load_mnist(_offline_full_run())


# --- Registry entries -------------------------------------------------------------------------

def test_real_datasets_are_registered_with_checksums():
    names = {"pets-images", "pets-annotations", "voc2012-trainval", "mvtec-ad", "mnist-train-images",
             "mnist-train-labels", "mnist-t10k-images", "mnist-t10k-labels"}
    assert names <= set(registry.REGISTRY)
    for name in names:
        entry = registry.lookup(name)
        assert entry.url.startswith("http") and entry.size > 0 and entry.licence
        assert entry.url.endswith(entry.filename)


def test_fetch_for_uses_a_stand_in_only_in_a_smoke_run(tmp_path, monkeypatch):
    monkeypatch.setenv(config.CACHE_ENV, str(tmp_path / "cache"))
    stand_in = tmp_path / registry.lookup("gradcam-both").filename
    stand_in.parent.mkdir(parents=True)
    Image.new("RGB", (224, 224), "white").save(stand_in)
    full = config.get_profile("full")
    smoke = config.Run(full, 0, torch.device("cpu"), tmp_path, smoke=True)
    assert data.fetch_for(smoke, "gradcam-both") == stand_in
    real = config.Run(full, 0, torch.device("cpu"), tmp_path)
    with pytest.raises(registry.ChecksumError, match="both.png"):
        data.fetch_for(real, "gradcam-both")
    assert stand_in.is_file()  # a copy in the user's data folder is never deleted
