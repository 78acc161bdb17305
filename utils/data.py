"""Loaders for the book's datasets, real and generated alike, and their registry entries.

Explained in the *Datasets* chapter (``notebooks/01_datasets.ipynb``).

The generators in :mod:`utils.synthetic` write the real datasets' on-disk layouts, so the
loaders here read both: Oxford-IIIT Pets (:func:`load_pets`), PASCAL VOC 2012
(:class:`VOCMultiLabel`), MVTec AD (:class:`MVTecAD`, :func:`load_mvtec`) and MNIST
(:func:`load_mnist`). The ``*_root`` helpers pick the generated set in the ``tiny``
profile and the real one in ``full`` (data directory, then cache, then the registry
download); a missing real dataset is one clear :class:`MissingDataError`.

Boxes use the book's convention (see :mod:`utils.metrics`): ``(xmin, ymin, xmax, ymax)``
in pixel edges with exclusive ``xmax``/``ymax``; VOC XML files store 1-based inclusive
corners, which :func:`read_voc_xml` converts.
"""
from __future__ import annotations

import gzip
import os
import shutil
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from . import config, synthetic
from .registry import MissingDataError, RemoteFile, extract, fetch, lookup, register

__all__ = ["MVTEC_CATEGORIES", "VOC_CLASSES", "PetRecord", "pets_label", "load_pets", "pets_root",
           "read_voc_xml", "voc_classes", "VOCMultiLabel", "voc_root", "MVTecAD", "load_mvtec", "mvtec_root", "load_mnist",
           "MissingDataError"]

MVTEC_CATEGORIES = ("bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
                    "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper")
VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

# --- Registry entries of the real datasets (sizes in bytes, SHA-256 of the archive) ----------
# Pets: the official archives; checksums as recorded by TensorFlow Datasets (oxford_iiit_pet).
register(RemoteFile(
    "pets-images", "https://thor.robots.ox.ac.uk/~vgg/data/pets/images.tar.gz",
    "67195c5e1c01f1ab5f9b6a5d22b8c27a580d896ece458917e61d459337fa318d", 791918971,
    "CC BY-SA 4.0 (Oxford-IIIT Pet dataset; images from Flickr and other sources)", "images.tar.gz",
    "Oxford-IIIT Pet images: 7,349 photos of 37 cat and dog breeds"))
register(RemoteFile(
    "pets-annotations", "https://thor.robots.ox.ac.uk/~vgg/data/pets/annotations.tar.gz",
    "52425fb6de5c424942b7626b428656fcbd798db970a937df61750c0f1d358e91", 19173078,
    "CC BY-SA 4.0 (Oxford-IIIT Pet dataset)", "annotations.tar.gz",
    "Oxford-IIIT Pet annotations: head boxes (xmls/), trimaps, trainval/test lists"))
# VOC 2012: checksum as recorded by TensorFlow Datasets (voc); same size as the official tar.
register(RemoteFile(
    "voc2012-trainval", "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
    "e14f763270cf193d0b5f74b169f44157a4b0c6efa708f4dd0ff78ee691763bcb", 1999639040,
    "Flickr terms of use for the images; annotations by the PASCAL VOC project", "VOCtrainval_11-May-2012.tar",
    "PASCAL VOC 2012 train+val: JPEGImages, Annotations, ImageSets"))
# MVTec AD: checksum as used by anomalib's MVTec AD data module.
register(RemoteFile(
    "mvtec-ad", "https://www.mydrive.ch/shares/38536/3830184030e49fe74747669442f0f282/download/"
    "420938113-1629952094/mvtec_anomaly_detection.tar.xz",
    "cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d", 5264982680,
    "CC BY-NC-SA 4.0, MVTec Software GmbH (non-commercial use)", "mvtec_anomaly_detection.tar.xz",
    "MVTec AD: 15 categories of industrial images with pixel-precise defect masks"))
# MNIST: the four IDX files on Google's CVDF mirror, checksums as recorded by TensorFlow Datasets.
_MNIST_FILES = {
    "train-images-idx3-ubyte": ("440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609", 9912422),
    "train-labels-idx1-ubyte": ("3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c", 28881),
    "t10k-images-idx3-ubyte": ("8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6", 1648877),
    "t10k-labels-idx1-ubyte": ("f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6", 4542),
}
for _stem, (_sha, _size) in _MNIST_FILES.items():
    register(RemoteFile(
        f"mnist-{_stem.split('-idx')[0]}", f"https://storage.googleapis.com/cvdf-datasets/mnist/{_stem}.gz",
        _sha, _size, "CC BY-SA 3.0 (Yann LeCun and Corinna Cortes)", f"{_stem}.gz",
        f"MNIST {_stem} (gzip, IDX format)"))
# Grad-CAM's Figure 1 picture (a boxer and a tiger cat, 224 x 224 RGB) as shipped with pytorch-grad-cam.
register(RemoteFile(
    "gradcam-both", "https://raw.githubusercontent.com/jacobgil/pytorch-grad-cam/master/examples/both.png",
    "8d30785a513e22a2f574c839c7e1751db943d0b5399347e7bb37736f6c5a95c2", 90226,
    "MIT (pytorch-grad-cam, Jacob Gildenblat)", "images/both.png",
    "The dog-and-cat photo of Grad-CAM's Figure 1, 224 x 224 RGB"))


# --- Shared helpers ---------------------------------------------------------------------------


def fetch_for(run: config.Run, name: str) -> Path:
    """The registry file ``name`` for this run: :func:`~utils.registry.fetch` with the run's
    data folder, offline in the tiny profile, verified against the registry's SHA-256.

    In a smoke run (``SMOKE=True``: random stand-in weights, generated data) a file of that
    name in the data folder is a stand-in written by ``tools/smoke.py`` and is used unverified.
    """
    stand_in = run.data_dir / lookup(name).filename if run.smoke and run.data_dir is not None else None
    if stand_in is not None and stand_in.is_file():
        return stand_in
    return fetch(name, run.data_dir, offline=run.profile.offline)


SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def _open_rgb(path: Path) -> Image.Image:
    """Open an image as 8-bit RGB (grayscale is repeated over 3 channels); errors name the file.

    16-bit grayscale (PIL modes ``I;16*`` and ``I``) is scaled by its real range (0..65535), not
    clipped at 255 as PIL's own conversion does; floating-point images (mode ``F``) are refused.
    """
    try:
        with Image.open(path) as img:
            if img.mode in SIXTEEN_BIT_MODES:
                values = np.asarray(img, dtype=np.float64)
                if values.min() < 0 or values.max() > 65535:
                    raise ValueError(f"{img.mode} values outside 0..65535 ({values.min():g}..{values.max():g})")
                return Image.fromarray(np.round(values / 65535.0 * 255.0).astype(np.uint8)).convert("RGB")
            if img.mode == "F":
                raise ValueError("floating-point (mode F) images are not supported; save it as 8- or 16-bit")
            return img.convert("RGB")
    except FileNotFoundError:
        raise FileNotFoundError(f"image file not found: {path}") from None
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as err:
        raise OSError(f"cannot read image {path}: {err}") from err


def _to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL RGB -> float (3, H, W) in [0, 1]."""
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


# --- Oxford-IIIT Pets -------------------------------------------------------------------------

@dataclass(frozen=True)
class PetRecord:
    """One Pets image: its path, label ('cat'/'dog'), breed and head box (book convention) or None."""

    path: Path
    label: str
    breed: str
    box: tuple[int, int, int, int] | None


def pets_label(name: str | os.PathLike) -> str:
    """'cat' when the file name starts with a capital letter (Pets' rule), else 'dog'.

    ``name``: a file name or path (``str`` or ``os.PathLike``), e.g. ``"Abyssinian_1.jpg"``.
    """
    if not isinstance(name, (str, os.PathLike)):
        raise TypeError(f"pets_label takes a file name (str or path), not {type(name).__name__}")
    stem = Path(name).name
    if not stem or not stem[0].isalpha():
        raise ValueError(f"not a Pets file name (<Breed>_<n>.jpg): {name!r}")
    return "cat" if stem[0].isupper() else "dog"


def _pets_breed(stem: str) -> str:
    breed, sep, number = stem.rpartition("_")
    if not sep or not number.isdigit():
        raise ValueError(f"not a Pets file name (<Breed>_<n>.jpg): {stem!r}")
    return breed


def load_pets(root: str | Path, split: str | None = None) -> list[PetRecord]:
    """Records of every ``images/*.jpg`` under ``root`` (real Pets or the generated stand-in).

    ``split``: None for all images, or "trainval"/"test" to keep those listed in
    ``annotations/<split>.txt``. The box is the one object of
    ``annotations/xmls/<stem>.xml`` when that file exists (real Pets: the head box, for
    most trainval images only), else None. Sorted by file name.
    """
    root = Path(root)
    images = root / "images"
    if not images.is_dir():
        raise FileNotFoundError(f"{images} not found: a Pets root holds images/ and annotations/")
    files = sorted(p for p in images.iterdir() if p.suffix.lower() == ".jpg")
    if split is not None:
        if split not in ("trainval", "test"):
            raise ValueError(f"unknown Pets split {split!r}; choose 'trainval', 'test' or None")
        listing = root / "annotations" / f"{split}.txt"
        if not listing.is_file():
            raise FileNotFoundError(f"split list {listing} not found")
        keep = {line.split()[0] for line in listing.read_text().splitlines() if line.strip() and line[0] != "#"}
        files = [p for p in files if p.stem in keep]
    records = []
    for path in files:
        xml = root / "annotations" / "xmls" / f"{path.stem}.xml"
        box = None
        if xml.is_file():
            objects = read_voc_xml(xml)["objects"]
            if not objects:
                raise ValueError(f"{xml}: no <object> in a Pets annotation")
            box = objects[0][1]
        records.append(PetRecord(path, pets_label(path.name), _pets_breed(path.stem), box))
    return records


def _fastai_pets() -> Path:
    """Where fastai's ``untar_data(URLs.PETS)`` puts Pets with its default configuration."""
    return Path.home() / ".fastai" / "data" / "oxford-iiit-pet"


def pets_root(run: config.Run) -> Path:
    """The Pets folder for ``run``: the generated stand-in (tiny) or the real dataset (full).

    Full: ``<data dir>/oxford-iiit-pet``, then fastai's download folder, then the cache,
    then the two official archives from the registry (downloaded, verified, extracted).
    """
    if run.tiny:
        return synthetic.make_localization_set(run.seed)
    candidates = [p / "oxford-iiit-pet" for p in (run.data_dir,) if p is not None]
    candidates += [_fastai_pets(), config.cache_dir() / "oxford-iiit-pet"]
    for candidate in candidates:
        if (candidate / "images").is_dir() and (candidate / "annotations").is_dir():
            return candidate
    dest = config.cache_dir() / "oxford-iiit-pet"
    for name in ("pets-images", "pets-annotations"):
        extract(fetch_for(run, name), dest)
    return dest


# --- PASCAL VOC -------------------------------------------------------------------------------

def _xml_int(node: ET.Element, tag: str, path: Path) -> int:
    child = node.find(tag)
    if child is None or child.text is None:
        raise ValueError(f"{path}: missing <{tag}>")
    try:
        return int(round(float(child.text)))
    except ValueError:
        raise ValueError(f"{path}: <{tag}> is not a number: {child.text!r}") from None


def read_voc_xml(path: str | Path) -> dict:
    """Parse a VOC/Pets annotation file.

    Returns ``dict(filename, width, height, objects=[(name, (xmin, ymin, xmax, ymax)), ...])``
    with boxes in the book's convention: the file's 1-based inclusive corners become
    ``(xmin - 1, ymin - 1, xmax, ymax)``, so ``image[ymin:ymax, xmin:xmax]`` is the box.
    """
    path = Path(path)
    try:
        tree = ET.parse(path).getroot()
    except FileNotFoundError:
        raise FileNotFoundError(f"annotation file not found: {path}") from None
    except ET.ParseError as err:
        raise ValueError(f"cannot parse annotation {path}: {err}") from err
    size = tree.find("size")
    if size is None:
        raise ValueError(f"{path}: missing <size>")
    objects = []
    for obj in tree.findall("object"):
        name = obj.findtext("name")
        box = obj.find("bndbox")
        if not name or box is None:
            raise ValueError(f"{path}: an <object> lacks <name> or <bndbox>")
        x0, y0, x1, y1 = (_xml_int(box, t, path) for t in ("xmin", "ymin", "xmax", "ymax"))
        objects.append((name.strip(), (x0 - 1, y0 - 1, x1, y1)))
    return {"filename": tree.findtext("filename", default=""), "width": _xml_int(size, "width", path),
            "height": _xml_int(size, "height", path), "objects": objects}


def _voc_dir(root: Path) -> Path:
    """``root`` itself when it holds JPEGImages/, else ``root/VOCdevkit/VOC2012``."""
    for candidate in (root, root / "VOCdevkit" / "VOC2012", root / "VOC2012"):
        if (candidate / "JPEGImages").is_dir():
            return candidate
    raise FileNotFoundError(f"{root} holds no VOC folder (expected JPEGImages/ in it or in VOCdevkit/VOC2012/)")


def voc_classes(root: str | Path) -> tuple[str, ...]:
    """Class names listed by VOC's per-class files ``ImageSets/Main/<class>_train.txt``."""
    main = _voc_dir(Path(root)) / "ImageSets" / "Main"
    names = sorted(p.name[: -len("_train.txt")] for p in main.glob("*_train.txt"))
    if not names:
        raise FileNotFoundError(f"{main} has no <class>_train.txt files; pass classes= explicitly")
    return tuple(names)


class VOCMultiLabel(Dataset):
    """VOC images as multi-label targets: ``(image (3, S, S) float [0, 1], multi-hot (K,) float)``.

    ``root``: a VOC2012 folder, or a folder holding ``VOCdevkit/VOC2012`` (torchvision's
    download layout and the generated stand-in's). ``split``: a list in
    ``ImageSets/Main`` ("train", "val", "trainval"). ``classes``: default = the classes of
    the per-class lists (real VOC: :data:`VOC_CLASSES`). A class is positive when the image
    holds at least one object of it (``difficult`` objects included). Images are resized
    to ``image_size`` x ``image_size`` (bilinear).
    """

    def __init__(self, root: str | Path, split: str = "train", classes: tuple[str, ...] | None = None,
                 image_size: int = 224) -> None:
        self.dir = _voc_dir(Path(root))
        self.classes = tuple(classes) if classes is not None else voc_classes(self.dir)
        self.image_size = int(image_size)
        listing = self.dir / "ImageSets" / "Main" / f"{split}.txt"
        if not listing.is_file():
            found = sorted(p.stem for p in listing.parent.glob("*.txt") if "_" not in p.stem)
            raise FileNotFoundError(f"split list {listing} not found; splits here: {', '.join(found) or 'none'}")
        self.ids = [line.split()[0] for line in listing.read_text().splitlines() if line.strip()]
        index = {name: k for k, name in enumerate(self.classes)}
        self.targets = torch.zeros(len(self.ids), len(self.classes))
        self.objects: list[list[tuple[str, tuple[int, int, int, int]]]] = []
        for i, image_id in enumerate(self.ids):
            xml = self.dir / "Annotations" / f"{image_id}.xml"
            objects = read_voc_xml(xml)["objects"]
            for name, _ in objects:
                if name not in index:
                    raise ValueError(f"{xml}: class {name!r} is not one of {', '.join(self.classes)}")
                self.targets[i, index[name]] = 1.0
            self.objects.append(objects)

    def __len__(self) -> int:
        return len(self.ids)

    def image_path(self, i: int) -> Path:
        return self.dir / "JPEGImages" / f"{self.ids[i]}.jpg"

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = _open_rgb(self.image_path(i)).resize((self.image_size, self.image_size), Image.Resampling.BILINEAR)
        return _to_tensor(img), self.targets[i].clone()


def voc_root(run: config.Run) -> Path:
    """The VOC folder for ``run``: the generated stand-in (tiny) or VOC 2012 (full).

    Full: ``<data dir>/VOCdevkit/VOC2012`` (or ``<data dir>/VOC2012``), then the cache, then
    the registry archive (downloaded, verified, extracted).
    """
    if run.tiny:
        return synthetic.make_multilabel_set(run.seed)
    for base in [p for p in (run.data_dir,) if p is not None] + [config.cache_dir() / "voc"]:
        try:
            return _voc_dir(base)
        except FileNotFoundError:
            continue
    dest = config.cache_dir() / "voc"
    extract(fetch_for(run, "voc2012-trainval"), dest)
    return _voc_dir(dest)


# --- MVTec AD ---------------------------------------------------------------------------------

def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _find_mask(category_dir: Path, defect: str, image: Path) -> Path:
    """``ground_truth/<defect>/<stem>_mask.png`` (MVTec) or ``<stem>.png`` (anomalib's toy sets)."""
    folder = category_dir / "ground_truth" / defect
    for name in (f"{image.stem}_mask.png", f"{image.stem}.png"):
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"no mask for defective image {image}: expected {folder / (image.stem + '_mask.png')} "
                            f"or {folder / (image.stem + '.png')}")


def _open_mask(path: Path) -> Image.Image:
    """A defect mask as an 'L' image of 0/255: **any non-zero pixel is defect**, whatever the
    file stores (0/255 as MVTec AD, 0/1, 16-bit, a palette, or the defect in one RGB channel)."""
    try:
        with Image.open(path) as m:
            values = np.asarray(m.convert("L") if m.mode == "P" else m)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as err:
        raise OSError(f"cannot read mask {path}: {err}") from err
    if values.ndim == 3:
        values = values[..., :3].max(axis=-1)  # an alpha channel is not a defect
    return Image.fromarray(((values > 0) * 255).astype(np.uint8))


def _check_sizes(resize: object, crop: object) -> None:
    """``resize`` a positive int; ``crop`` None or an int in ``1..resize``."""
    if isinstance(resize, bool) or not isinstance(resize, (int, np.integer)) or resize < 1:
        raise ValueError(f"resize must be a positive int (pixels), got {resize!r}")
    if crop is not None and (isinstance(crop, bool) or not isinstance(crop, (int, np.integer)) or crop < 1):
        raise ValueError(f"crop must be None or a positive int (pixels), got {crop!r}")
    if crop is not None and crop > resize:
        raise ValueError(f"crop ({crop}) must not exceed resize ({resize})")


class MVTecAD(Dataset):
    """One MVTec AD category: ``(image (3, S, S) float [0, 1], mask (1, S, S) {0, 1}, label, defect)``.

    ``root`` holds ``<category>/train/good``, ``<category>/test/<defect>`` and
    ``<category>/ground_truth/<defect>/<stem>_mask.png`` (or ``<stem>.png``). Images are
    resized to ``resize`` x ``resize`` (bilinear; grayscale becomes 3 channels), masks with
    nearest neighbour, then both are centre-cropped to ``crop`` (None: no crop), so they stay
    aligned. ``label`` is 0 for "good", 1 otherwise; good images get an all-zero mask; in a
    mask file any non-zero pixel is defect. 16-bit images are scaled by their real range.
    """

    def __init__(self, root: str | Path, category: str, split: str = "train", resize: int = 256,
                 crop: int | None = 224) -> None:
        root = Path(root)
        if split not in ("train", "test"):
            raise ValueError(f"unknown split {split!r}; choose 'train' or 'test'")
        _check_sizes(resize, crop)
        self.dir = root / category
        if not (self.dir / "train").is_dir():
            found = sorted(p.name for p in root.iterdir() if (p / "train").is_dir()) if root.is_dir() else []
            raise FileNotFoundError(f"category {category!r} not found in {root}; categories there: "
                                    f"{', '.join(found) or 'none'}")
        self.category, self.split, self.resize, self.crop = category, split, int(resize), crop
        self.samples: list[tuple[Path, Path | None, int, str]] = []
        split_dir = self.dir / split
        if not split_dir.is_dir():
            raise FileNotFoundError(f"{split_dir} not found")
        for defect_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            defect = defect_dir.name
            for image in _image_files(defect_dir):
                if defect == "good":
                    self.samples.append((image, None, 0, defect))
                else:
                    self.samples.append((image, _find_mask(self.dir, defect, image), 1, defect))
        if not self.samples:
            loose = _image_files(split_dir)
            hint = (f"; the {len(loose)} images directly in {split_dir} must be in sub-folders "
                    f"({split}/good/ for normal images, test/<defect>/ for defects)") if loose else ""
            raise FileNotFoundError(f"no images under {split_dir}{hint}")

    def __len__(self) -> int:
        return len(self.samples)

    def _crop(self, img: Image.Image) -> Image.Image:
        if self.crop is None:
            return img
        left = (self.resize - self.crop) // 2
        return img.crop((left, left, left + self.crop, left + self.crop))

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int, str]:
        path, mask_path, label, defect = self.samples[i]
        img = _open_rgb(path)
        size = (self.resize, self.resize)
        image = _to_tensor(self._crop(img.resize(size, Image.Resampling.BILINEAR)))
        if mask_path is None:
            mask = torch.zeros(1, *image.shape[1:])
        else:
            raw = _open_mask(mask_path)
            if raw.size != img.size:
                raise ValueError(f"mask {mask_path} is {raw.size[0]}x{raw.size[1]} but image {path} is "
                                 f"{img.size[0]}x{img.size[1]}")
            raw = self._crop(raw.resize(size, Image.Resampling.NEAREST))
            mask = torch.from_numpy((np.asarray(raw) > 0).astype(np.float32))[None]
        return image, mask, label, defect


def load_mvtec(root: str | Path, category: str, split: str = "train", resize: int = 256,
               crop: int | None = 224) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
    """A whole :class:`MVTecAD` split stacked: ``(images (N, 3, S, S) float32, masks (N, S, S) bool,
    labels (N,) int64, defects list[str])``."""
    dataset = MVTecAD(root, category, split, resize, crop)
    items = [dataset[i] for i in range(len(dataset))]
    images = torch.stack([it[0] for it in items])
    masks = torch.stack([it[1][0] for it in items]) > 0.5
    labels = torch.tensor([it[2] for it in items], dtype=torch.int64)
    return images, masks, labels, [it[3] for it in items]


def mvtec_root(run: config.Run, category: str) -> Path:
    """The folder holding ``<category>/`` for ``run``: the generated textures (tiny) or MVTec AD (full).

    Full: ``<data dir>/mvtec_ad/<category>``, then ``<data dir>/<category>`` (e.g. anomalib's
    ``hazelnut_toy``), then the cache, then the registry archive (5 GB; downloaded, verified,
    extracted).
    """
    if run.tiny:
        if category not in synthetic.ANOMALY_CATEGORIES:
            raise ValueError(f"the tiny profile generates {', '.join(synthetic.ANOMALY_CATEGORIES)}, "
                             f"not {category!r}")
        return synthetic.make_anomaly_set(run.seed)
    bases = [run.data_dir / "mvtec_ad", run.data_dir] if run.data_dir is not None else []
    bases.append(config.cache_dir() / "mvtec_ad")
    for base in bases:
        if (base / category / "train").is_dir():
            return base
    if category not in MVTEC_CATEGORIES:
        raise MissingDataError(f"category {category!r} is not in the data directory and is not an MVTec AD "
                               f"category ({', '.join(MVTEC_CATEGORIES)}), so it cannot be downloaded")
    dest = config.cache_dir() / "mvtec_ad"
    extract(fetch_for(run, "mvtec-ad"), dest)
    if not (dest / category / "train").is_dir():
        raise MissingDataError(f"{category}/train not found in the extracted MVTec AD archive at {dest}")
    return dest


# --- MNIST ------------------------------------------------------------------------------------

def load_mnist(run: config.Run) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(train_x (N, 1, 28, 28) float32 [0, 1], train_y (N,) int64, test_x, test_y)``.

    Tiny: :func:`utils.synthetic.make_digits` (scikit-learn's 8x8 digits, upsampled).
    Full: torchvision's MNIST layout ``MNIST/raw/*-ubyte`` in the data directory or the
    cache; otherwise the four registry files are fetched and unpacked into the cache.
    """
    if run.tiny:
        return synthetic.make_digits(run.seed)
    from torchvision.datasets import MNIST

    roots = ([run.data_dir] if run.data_dir is not None else []) + [config.cache_dir()]
    root = next((r for r in roots if all((r / "MNIST" / "raw" / s).is_file() for s in _MNIST_FILES)), None)
    if root is None:
        root = config.cache_dir()
        raw = root / "MNIST" / "raw"
        raw.mkdir(parents=True, exist_ok=True)
        for stem in _MNIST_FILES:
            archive = fetch_for(run, f"mnist-{stem.split('-idx')[0]}")
            with gzip.open(archive, "rb") as src, open(raw / f"{stem}.part", "wb") as dst:
                shutil.copyfileobj(src, dst)
            (raw / f"{stem}.part").replace(raw / stem)
    out = []
    for train in (True, False):
        ds = MNIST(str(root), train=train, download=False)
        out += [ds.data.unsqueeze(1).float() / 255.0, ds.targets.long()]
    return out[0], out[1], out[2], out[3]
