"""Offline stand-ins for the book's datasets, written in the real datasets' on-disk layouts.

Explained in the *Datasets* chapter (``notebooks/01_datasets.ipynb``).

Each generator is deterministic from a seed and writes its files under
``config.cache_dir() / "synthetic" / f"{name}-v{version}-seed{seed}"``. A second call
returns the existing folder; a folder is built under a temporary name and renamed when
complete, so an interrupted run never leaves a half folder that looks finished.

* :func:`make_localization_set` - stands in for Oxford-IIIT Pets: ``images/<Breed>_<n>.jpg``
  and ``annotations/xmls/<stem>.xml`` (one box per image) plus ``trainval.txt``/``test.txt``.
* :func:`make_multilabel_set` - stands in for PASCAL VOC 2012: ``VOCdevkit/VOC2012`` with
  ``JPEGImages``, ``Annotations`` and ``ImageSets/Main``.
* :func:`make_anomaly_set` - stands in for MVTec AD: ``<category>/train/good``,
  ``test/<defect>`` and ``ground_truth/<defect>/NNN_mask.png``.
* :func:`make_digits` - stands in for MNIST (tensors in memory, nothing written).

Every image is rendered from its own random generator, seeded by (seed, what, index),
so one image can be re-rendered on its own (``render_*``); the tests use this to check
that boxes and masks match the pixels that were pasted. Bump ``VERSIONS[name]`` whenever
a generator's output changes, so that caches built by older code are not reused. The photographs and textures
come from scikit-image's bundled sample data (CC0 or public domain).

Boxes follow the book's convention (see ``utils.metrics``): ``(xmin, ymin, xmax, ymax)``
in pixel edges, ``xmax``/``ymax`` exclusive, so ``image[ymin:ymax, xmin:xmax]`` is the box.
The XML files keep VOC's 1-based inclusive corners, ``(xmin + 1, ymin + 1, xmax, ymax)``.
"""
from __future__ import annotations

import functools
import os
import shutil
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from xml.sax.saxutils import escape

import numpy as np
import torch
from PIL import Image, ImageDraw
from scipy import ndimage

from . import config
from .registry import sha256_of

VERSIONS = {"localization": 1, "multilabel": 1, "anomaly": 1}

# --- Localisation set (Oxford-IIIT Pets stand-in) ------------------------------------------
LOCALIZATION_SIZE = 160
LOCALIZATION_COUNT = 300
# Pets' rule: a capitalised breed is a cat, a lower-case one a dog. Here the "dog" side
# is simply "the second class": a coffee cup.
PETS_BREEDS = {"Chelsea": "cat", "coffee_cup": "dog"}

# --- Multi-label set (PASCAL VOC stand-in) -------------------------------------------------
MULTILABEL_SIZE = 160
MULTILABEL_COUNT = 300
MULTILABEL_TRAIN = 200
MULTILABEL_CLASSES = ("cat", "cup", "horse", "person")

# --- Anomaly set (MVTec AD stand-in) -------------------------------------------------------
ANOMALY_SIZE = 128
ANOMALY_CATEGORIES = ("brick", "grass", "gravel")
ANOMALY_DEFECTS = ("scratch", "stain", "hole", "cut_paste")
ANOMALY_TRAIN = 50
ANOMALY_TEST_GOOD = 10
ANOMALY_TEST_PER_DEFECT = 6
# A fixed colour per category turns the grey scikit-image textures into RGB photos.
_CATEGORY_TINT = {"brick": (1.0, 0.72, 0.6), "grass": (0.72, 0.95, 0.55), "gravel": (0.9, 0.88, 0.84)}
# Source pixels per image pixel: grass and gravel are shrunk so that one crop holds many blades/stones.
_CATEGORY_SCALE = {"brick": 1.0, "grass": 2.0, "gravel": 1.5}

JPEG_QUALITY = 92


# --- Seeding and caching -------------------------------------------------------------------

def _rng(seed: int, *keys: str | int) -> np.random.Generator:
    """A generator seeded by ``seed`` and a path of keys (strings hashed with CRC-32)."""
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if any(isinstance(k, int) and k < 0 for k in keys):
        raise ValueError(f"image indices must be non-negative ints, got {keys!r}")
    words = [k if isinstance(k, int) else zlib.crc32(k.encode()) for k in keys]
    return np.random.default_rng(np.random.SeedSequence([seed, *words]))


def dataset_dir(name: str, seed: int) -> Path:
    """Where generator ``name`` writes the set for ``seed`` (it may not exist yet)."""
    if name not in VERSIONS:
        raise ValueError(f"unknown generated dataset {name!r}; choose one of {', '.join(VERSIONS)}")
    return config.cache_dir() / "synthetic" / f"{name}-v{VERSIONS[name]}-seed{seed}"


def _cached(name: str, seed: int, build: Callable[[Path, int], None]) -> Path:
    """Return the finished folder for (name, seed), building it atomically when missing."""
    _rng(seed)  # validates the seed before anything touches the disk
    target = dataset_dir(name, seed)
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        build(tmp, seed)
        os.rename(tmp, target)
    except OSError:
        if not target.is_dir():  # a real failure, not another process finishing first
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _save_jpeg(image: np.ndarray, path: Path) -> None:
    Image.fromarray(image).save(path, format="JPEG", quality=JPEG_QUALITY, optimize=False)


def _save_png(image: np.ndarray, path: Path) -> None:
    Image.fromarray(image).save(path, format="PNG", optimize=False, compress_level=6)


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8", newline="\n")


_PROVENANCE = ("Pictures and textures: scikit-image sample data (chelsea, coffee: CC0; astronaut: NASA, "
               "public domain; horse silhouette: CC0; brick, grass, gravel: CC0).\n")


# --- Source material: scikit-image photographs and textures ---------------------------------

@functools.lru_cache(maxsize=None)
def _texture(name: str) -> np.ndarray:
    """A 512x512 scikit-image texture as float32 in [0, 1]."""
    from skimage import data
    return getattr(data, name)().astype(np.float32) / 255.0


@functools.lru_cache(maxsize=None)
def _photo(name: str) -> np.ndarray:
    """A scikit-image sample photograph at half resolution, float32 RGB in [0, 1].

    Objects are pasted at most ~120 px wide, so half resolution loses nothing and keeps
    the generators fast. ``horse`` is a bool silhouette (True = horse).
    """
    from skimage import data
    image = getattr(data, name)()
    if image.dtype == bool:
        horse = Image.fromarray((~image).astype(np.uint8) * 255)  # the file stores the horse as False
        return np.asarray(horse.reduce(2)) >= 128
    return np.asarray(Image.fromarray(image).reduce(2), dtype=np.float32) / 255.0


def _ellipse_mask(shape: tuple[int, int], cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return ((xx + 0.5 - cx) / rx) ** 2 + ((yy + 0.5 - cy) / ry) ** 2 <= 1.0


# The photographed objects: (loader name, ellipse centre x, y, radius x, y) in pixels of
# the half-resolution photograph.
_PHOTO_ELLIPSES = {
    "cat": ("chelsea", 109, 76, 92, 73),        # the cat's head
    "cup": ("coffee", 139, 113, 101, 80),       # cup on its saucer
    "person": ("astronaut", 113.5, 50, 39, 47),   # the astronaut's head
}
# Horse coats as RGB in [0, 1]: chestnut, bay, grey, black.
_HORSE_COATS = ((0.55, 0.3, 0.15), (0.4, 0.22, 0.12), (0.62, 0.6, 0.58), (0.16, 0.13, 0.12))


def _photo_object(rng: np.random.Generator, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Cut one object out of its source picture: (RGB float32 HxWx3, mask bool HxW)."""
    if kind == "horse":
        mask = _photo("horse")
        oy, ox = rng.integers(0, 512 - max(mask.shape) + 1, size=2)
        texture = _texture("gravel")[oy: oy + mask.shape[0], ox: ox + mask.shape[1]]
        shade = ndimage.gaussian_filter(texture, 1.5)
        shade = 0.8 + 0.4 * (shade - shade.min()) / (np.ptp(shade) + 1e-6)
        coat = np.array(_HORSE_COATS[rng.integers(len(_HORSE_COATS))], dtype=np.float32)
        rgb = np.clip(shade[..., None] * coat, 0, 1)
        ys, xs = np.nonzero(mask)
        crop = np.s_[ys.min(): ys.max() + 1, xs.min(): xs.max() + 1]
        rgb, mask = rgb[crop], mask[crop]
    else:
        loader, cx, cy, rx, ry = _PHOTO_ELLIPSES[kind]
        photo = _photo(loader)
        cx, cy = cx + rng.uniform(-0.05, 0.05) * rx, cy + rng.uniform(-0.05, 0.05) * ry
        rx, ry = rx * rng.uniform(0.88, 1.04), ry * rng.uniform(0.88, 1.04)
        x0, x1 = max(0, int(cx - rx)), min(photo.shape[1], int(np.ceil(cx + rx)) + 1)
        y0, y1 = max(0, int(cy - ry)), min(photo.shape[0], int(np.ceil(cy + ry)) + 1)
        rgb = photo[y0:y1, x0:x1]
        mask = _ellipse_mask(rgb.shape[:2], cx - x0, cy - y0, rx, ry)
    # colour jitter: exposure, white balance, contrast
    gain = rng.uniform(0.8, 1.15) * rng.uniform(0.92, 1.08, size=3)
    mean = rgb[mask].mean(axis=0)
    rgb = np.clip((rgb - mean) * rng.uniform(0.85, 1.15) + mean, 0, 1) * gain
    return np.clip(rgb, 0, 1).astype(np.float32), mask


def _transform_object(rng: np.random.Generator, rgb: np.ndarray, mask: np.ndarray, long_side: int,
                      max_angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Flip, resize (longer side = ``long_side``) and rotate an object; crop to its mask."""
    if rng.random() < 0.5:
        rgb, mask = rgb[:, ::-1], mask[:, ::-1]
    h, w = mask.shape
    scale = long_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    img = Image.fromarray((rgb * 255).round().astype(np.uint8)).resize(size, Image.Resampling.BILINEAR)
    alpha = Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.Resampling.BILINEAR)
    angle = float(rng.uniform(-max_angle, max_angle))
    img = img.rotate(angle, resample=Image.Resampling.BILINEAR, expand=True)
    alpha = alpha.rotate(angle, resample=Image.Resampling.BILINEAR, expand=True)
    out_rgb, out_mask = np.asarray(img), np.asarray(alpha) >= 128
    ys, xs = np.nonzero(out_mask)
    crop = np.s_[ys.min(): ys.max() + 1, xs.min(): xs.max() + 1]
    return out_rgb[crop], out_mask[crop]


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Textured clutter: a tinted brick/grass/gravel crop with a few flat-coloured shapes (uint8)."""
    name = ("brick", "grass", "gravel")[rng.integers(3)]
    tex = _texture(name)
    win = int(rng.integers(size, 2 * size + 1))
    y0, x0 = rng.integers(0, tex.shape[0] - win + 1, size=2)
    crop = Image.fromarray((tex[y0: y0 + win, x0: x0 + win] * 255).astype(np.uint8))
    grey = np.asarray(crop.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
    tint = rng.uniform(0.35, 1.0, size=3)
    rgb = np.clip(grey[..., None] * tint * rng.uniform(0.7, 1.2) + rng.uniform(0, 0.15), 0, 1)
    canvas = Image.fromarray((rgb * 255).round().astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(2, 6))):
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        cx, cy = rng.uniform(0, size, size=2)
        r = rng.uniform(0.05, 0.18) * size
        shape = rng.integers(3)
        if shape == 0:
            draw.ellipse([cx - r, cy - r * rng.uniform(0.4, 1), cx + r, cy + r * rng.uniform(0.4, 1)], fill=colour)
        elif shape == 1:
            draw.rectangle([cx - r, cy - r * rng.uniform(0.3, 1), cx + r, cy + r], fill=colour)
        else:
            angles = np.sort(rng.uniform(0, 2 * np.pi, size=int(rng.integers(3, 7))))
            radii = r * rng.uniform(0.5, 1.2, size=len(angles))
            draw.polygon([(float(cx + q * np.cos(a)), float(cy + q * np.sin(a))) for a, q in zip(angles, radii)],
                         fill=colour)
    return np.asarray(canvas).copy()


def _paste(canvas: np.ndarray, rgb: np.ndarray, mask: np.ndarray, x0: int, y0: int) -> np.ndarray:
    """Paste ``rgb`` where ``mask`` at (x0, y0); return the object's full-image mask."""
    h, w = mask.shape
    region = canvas[y0: y0 + h, x0: x0 + w]
    region[mask] = rgb[mask]
    full = np.zeros(canvas.shape[:2], dtype=bool)
    full[y0: y0 + h, x0: x0 + w] = mask
    return full


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Tight box ``(xmin, ymin, xmax, ymax)`` (exclusive max) of the True pixels of a 2-D mask."""
    if np.ndim(mask) != 2:
        raise ValueError(f"mask_box: the mask must be 2-D (H, W), got shape {np.shape(mask)}")
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        raise ValueError("mask_box: the mask is empty")
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _voc_xml(filename: str, size: tuple[int, int], objects: list[tuple[str, tuple[int, int, int, int], bool]],
             folder: str, database: str) -> str:
    """A VOC/Pets-style annotation; ``objects`` hold (name, box in book convention, occluded)."""
    width, height = size
    parts = [f"<annotation><folder>{folder}</folder><filename>{escape(filename)}</filename>",
             f"<source><database>{database}</database><annotation>synthetic</annotation>"
             "<image>scikit-image</image></source>",
             f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>",
             "<segmented>0</segmented>"]
    for name, (x0, y0, x1, y1), occluded in objects:
        parts.append(f"<object><name>{escape(name)}</name><pose>Unspecified</pose><truncated>0</truncated>"
                     f"<occluded>{int(occluded)}</occluded><bndbox><xmin>{x0 + 1}</xmin><ymin>{y0 + 1}</ymin>"
                     f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox><difficult>0</difficult></object>")
    parts.append("</annotation>\n")
    return "".join(parts)


# --- Localisation set ----------------------------------------------------------------------

@dataclass(frozen=True)
class LocalizationSample:
    """One rendered image of the localisation set and what was pasted into it."""

    image: np.ndarray   # (S, S, 3) uint8, before JPEG compression
    mask: np.ndarray    # (S, S) bool, the pasted object's pixels
    breed: str          # e.g. "Chelsea" (cat) or "coffee_cup" (dog side)
    stem: str           # Pets-style file stem, e.g. "Chelsea_7"

    @property
    def box(self) -> tuple[int, int, int, int]:
        return mask_box(self.mask)


def _localization_stem(index: int) -> tuple[str, str]:
    breeds = list(PETS_BREEDS)
    breed = breeds[index % len(breeds)]
    return breed, f"{breed}_{index // len(breeds) + 1}"


def render_localization_image(seed: int, index: int) -> LocalizationSample:
    """Render image ``index`` of the localisation set for ``seed`` (what the generator writes)."""
    rng = _rng(seed, "localization", index)
    breed, stem = _localization_stem(index)
    size = LOCALIZATION_SIZE
    canvas = _background(rng, size)
    kind = "cat" if PETS_BREEDS[breed] == "cat" else "cup"
    rgb, mask = _photo_object(rng, kind)
    rgb, mask = _transform_object(rng, rgb, mask, int(rng.uniform(0.38, 0.75) * size), max_angle=15)
    h, w = mask.shape
    x0, y0 = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
    full = _paste(canvas, rgb, mask, x0, y0)
    return LocalizationSample(canvas, full, breed, stem)


def _build_localization(root: Path, seed: int) -> None:
    (root / "images").mkdir(parents=True)
    (root / "annotations" / "xmls").mkdir(parents=True)
    stems: dict[str, list[str]] = {b: [] for b in PETS_BREEDS}
    for index in range(LOCALIZATION_COUNT):
        sample = render_localization_image(seed, index)
        _save_jpeg(sample.image, root / "images" / f"{sample.stem}.jpg")
        xml = _voc_xml(f"{sample.stem}.jpg", (LOCALIZATION_SIZE, LOCALIZATION_SIZE),
                       [(PETS_BREEDS[sample.breed], sample.box, False)], "OXIIIT", "synthetic Pets stand-in")
        _write_text(root / "annotations" / "xmls" / f"{sample.stem}.xml", xml)
        stems[sample.breed].append(sample.stem)
    # Pets' split files: "<stem> <class id> <species 1=cat 2=dog> <breed id within species>"
    rng = _rng(seed, "localization", "split")
    lines: dict[str, list[str]] = {"trainval": [], "test": []}
    species_count = {"cat": 0, "dog": 0}
    for class_id, (breed, names) in enumerate(stems.items(), start=1):
        species = PETS_BREEDS[breed]
        species_count[species] += 1
        order = rng.permutation(len(names))
        for rank, i in enumerate(order):
            split = "trainval" if rank < len(names) // 2 else "test"
            lines[split].append(f"{names[i]} {class_id} {1 if species == 'cat' else 2} {species_count[species]}")
    for split, rows in lines.items():
        _write_text(root / "annotations" / f"{split}.txt", "\n".join(sorted(rows)) + "\n")
    _write_text(root / "README.txt",
                "Synthetic stand-in for the Oxford-IIIT Pet dataset, generated by utils/synthetic.py "
                f"(version {VERSIONS['localization']}, seed {seed}).\nOne object per image; capitalised breed = "
                "cat, lower-case = dog side.\n" + _PROVENANCE)


def make_localization_set(seed: int = 0) -> Path:
    """Oxford-IIIT Pets stand-in: 300 images 160x160 with one box each; returns its root.

    Layout: ``images/<Breed>_<n>.jpg``, ``annotations/xmls/<stem>.xml`` (Pets' VOC-style
    XML, ``<name>`` cat or dog) and ``annotations/trainval.txt`` / ``test.txt``. The box
    is the exact tight box of the pasted object's pixels.
    """
    return _cached("localization", seed, _build_localization)


# --- Multi-label set -----------------------------------------------------------------------

@dataclass(frozen=True)
class MultiLabelSample:
    """One rendered image of the multi-label set: the image and each object's visible pixels."""

    image: np.ndarray                        # (S, S, 3) uint8
    objects: list[tuple[str, np.ndarray]]    # (class name, visible mask (S, S) bool), paste order
    occluded: list[bool]                     # whether a later object hides part of it


def render_multilabel_image(seed: int, index: int) -> MultiLabelSample:
    """Render image ``index`` of the multi-label set: 1-3 objects, each at least 60% visible."""
    rng = _rng(seed, "multilabel", index)
    size = MULTILABEL_SIZE
    canvas = _background(rng, size)
    names: list[str] = []
    masks: list[np.ndarray] = []
    areas: list[int] = []
    for _ in range(int(rng.integers(1, 4))):
        kind = MULTILABEL_CLASSES[rng.integers(len(MULTILABEL_CLASSES))]
        rgb, mask = _photo_object(rng, kind)
        rgb, mask = _transform_object(rng, rgb, mask, int(rng.uniform(0.3, 0.55) * size), max_angle=10)
        h, w = mask.shape
        for _attempt in range(20):
            x0, y0 = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
            new = np.zeros((size, size), dtype=bool)
            new[y0: y0 + h, x0: x0 + w] = mask
            if all((m & ~new).sum() >= 0.6 * a for m, a in zip(masks, areas)):
                break
        else:
            continue  # no placement keeps the earlier objects visible: drop this one
        _paste(canvas, rgb, mask, x0, y0)
        masks = [m & ~new for m in masks] + [new]
        names.append(kind)
        areas.append(int(new.sum()))
    occluded = [int(m.sum()) < a for m, a in zip(masks, areas)]
    return MultiLabelSample(canvas, list(zip(names, masks)), occluded)


def _build_multilabel(root: Path, seed: int) -> None:
    voc = root / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (voc / sub).mkdir(parents=True)
    ids = [f"{i + 1:06d}" for i in range(MULTILABEL_COUNT)]
    present: dict[str, set[str]] = {}
    for index, image_id in enumerate(ids):
        sample = render_multilabel_image(seed, index)
        _save_jpeg(sample.image, voc / "JPEGImages" / f"{image_id}.jpg")
        objects = [(name, mask_box(mask), occluded)
                   for (name, mask), occluded in zip(sample.objects, sample.occluded)]
        xml = _voc_xml(f"{image_id}.jpg", (MULTILABEL_SIZE, MULTILABEL_SIZE), objects, "VOC2012",
                       "synthetic VOC stand-in")
        _write_text(voc / "Annotations" / f"{image_id}.xml", xml)
        present[image_id] = {name for name, _ in sample.objects}
    order = _rng(seed, "multilabel", "split").permutation(len(ids))
    splits = {"train": sorted(ids[i] for i in order[:MULTILABEL_TRAIN]),
              "val": sorted(ids[i] for i in order[MULTILABEL_TRAIN:])}
    main = voc / "ImageSets" / "Main"
    for split, members in splits.items():
        _write_text(main / f"{split}.txt", "\n".join(members) + "\n")
        for cls in MULTILABEL_CLASSES:
            rows = [f"{i} {1 if cls in present[i] else -1:2d}" for i in members]
            _write_text(main / f"{cls}_{split}.txt", "\n".join(rows) + "\n")
    _write_text(root / "README.txt",
                "Synthetic stand-in for PASCAL VOC 2012 (multi-label), generated by utils/synthetic.py "
                f"(version {VERSIONS['multilabel']}, seed {seed}).\nClasses: {', '.join(MULTILABEL_CLASSES)}; "
                "boxes cover each object's visible pixels.\n" + _PROVENANCE)


def make_multilabel_set(seed: int = 0) -> Path:
    """PASCAL VOC 2012 stand-in: 300 images 160x160, 1-3 objects of 4 classes; returns its root.

    Layout (torchvision's): ``VOCdevkit/VOC2012/JPEGImages/<id>.jpg``,
    ``Annotations/<id>.xml`` (one ``<object>`` per object, box of its visible pixels) and
    ``ImageSets/Main/{train,val}.txt`` plus VOC's per-class ``<class>_<split>.txt`` lists.
    """
    return _cached("multilabel", seed, _build_multilabel)


# --- Anomaly set ---------------------------------------------------------------------------

@dataclass(frozen=True)
class AnomalySample:
    """One rendered image of the anomaly set, the same crop without its defect, and the mask."""

    image: np.ndarray   # (S, S, 3) uint8, what is written to disk
    clean: np.ndarray   # (S, S, 3) uint8, the same crop before the defect was applied
    mask: np.ndarray    # (S, S) bool, the pixels the defect changed (all False for good images)


def _texture_crop(rng: np.random.Generator, category: str, size: int, zoom: float = 1.0) -> np.ndarray:
    """A grey (S, S) float32 crop of ``category``'s texture: random place, +-5% scale and exposure.

    ``zoom`` > 1 magnifies (the window is ``zoom`` times smaller), used for cut-and-paste defects.
    """
    tex = _texture(category)
    win = max(8, round(size * _CATEGORY_SCALE[category] * rng.uniform(0.95, 1.05) / zoom))
    y0, x0 = rng.integers(0, tex.shape[0] - win + 1, size=2)
    crop = Image.fromarray(tex[y0: y0 + win, x0: x0 + win], mode="F")
    grey = np.asarray(crop.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32)
    if category != "brick":  # brick's perspective makes flips visible; grass and gravel have none
        if rng.random() < 0.5:
            grey = grey[:, ::-1]
        if rng.random() < 0.5:
            grey = grey[::-1]
    return grey * np.float32(rng.uniform(0.95, 1.05))


def _blob(rng: np.random.Generator, size: int, radius: float) -> np.ndarray:
    """An irregular star-shaped blob of mean radius ``radius`` inside a (size, size) image."""
    margin = radius * 1.4
    cx, cy = rng.uniform(margin, size - margin, size=2)
    yy, xx = np.mgrid[:size, :size] + 0.5
    theta = np.arctan2(yy - cy, xx - cx)
    r = np.full_like(theta, radius)
    for k in (2, 3, 5):
        r = r + radius * rng.uniform(0.0, 0.18) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    return np.hypot(xx - cx, yy - cy) <= r


def _scratch(rng: np.random.Generator, size: int) -> np.ndarray:
    """A thin curved line (quadratic Bezier, 1-3 px wide) inside a (size, size) image."""
    length = rng.uniform(0.3, 0.6) * size
    angle = rng.uniform(0, np.pi)
    direction = np.array([np.cos(angle), np.sin(angle)])
    centre = rng.uniform(0.25 * size, 0.75 * size, size=2)
    p0, p2 = centre - direction * length / 2, centre + direction * length / 2
    p1 = centre + np.array([-direction[1], direction[0]]) * rng.uniform(-0.25, 0.25) * length
    t = np.linspace(0, 1, 64)[:, None]
    points = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2
    canvas = Image.new("L", (size, size), 0)
    ImageDraw.Draw(canvas).line([tuple(map(float, p)) for p in points], fill=255, width=int(rng.integers(2, 5)))
    return np.asarray(canvas) > 0


_STAIN_COLOURS = ((0.35, 0.24, 0.12), (0.15, 0.15, 0.15), (0.55, 0.32, 0.12), (0.25, 0.27, 0.4), (0.8, 0.78, 0.6))


def render_anomaly_image(seed: int, category: str, split: str, defect: str, index: int) -> AnomalySample:
    """Render image ``index`` of ``<category>/<split>/<defect>`` (what the generator writes).

    ``split``: "train" (defect must be "good") or "test"; ``defect``: "good" or one of
    :data:`ANOMALY_DEFECTS`. Defects change pixels only inside the returned mask.
    """
    if category not in ANOMALY_CATEGORIES:
        raise ValueError(f"unknown category {category!r}; choose one of {', '.join(ANOMALY_CATEGORIES)}")
    if defect not in ("good", *ANOMALY_DEFECTS) or (split == "train" and defect != "good"):
        raise ValueError(f"no {split!r}/{defect!r} images; train holds 'good', test holds 'good' or "
                         f"one of {', '.join(ANOMALY_DEFECTS)}")
    rng = _rng(seed, "anomaly", category, split, defect, index)
    size = ANOMALY_SIZE
    tint = np.array(_CATEGORY_TINT[category], dtype=np.float32)
    clean = np.clip(_texture_crop(rng, category, size)[..., None] * tint, 0, 1)
    out = clean.copy()
    if defect == "good":
        mask = np.zeros((size, size), dtype=bool)
    elif defect == "scratch":
        mask = _scratch(rng, size)
        if rng.random() < 0.5:
            out[mask] = out[mask] + (1 - out[mask]) * rng.uniform(0.35, 0.55)
        else:
            out[mask] = out[mask] * rng.uniform(0.4, 0.6)
    elif defect == "stain":
        mask = _blob(rng, size, rng.uniform(0.1, 0.18) * size)
        colour = np.array(_STAIN_COLOURS[rng.integers(len(_STAIN_COLOURS))], dtype=np.float32)
        alpha = rng.uniform(0.4, 0.6)
        out[mask] = out[mask] * (1 - alpha) + alpha * colour
    elif defect == "hole":
        mask = _blob(rng, size, rng.uniform(0.08, 0.14) * size)
        depth = ndimage.distance_transform_edt(mask)
        depth = np.sqrt(depth / max(depth.max(), 1.0))[..., None]
        blurred = ndimage.gaussian_filter(clean, sigma=(3, 3, 0))
        inside = (depth * blurred + (1 - depth) * clean) * (1 - rng.uniform(0.4, 0.65) * depth)
        out = np.where(mask[..., None], inside, clean)
    else:  # cut_paste: a magnified, maybe rotated piece from elsewhere in the texture
        mask = _blob(rng, size, rng.uniform(0.12, 0.2) * size)
        patch = _texture_crop(rng, category, size, zoom=rng.uniform(2.0, 2.6))
        if category == "brick" or rng.random() < 0.5:
            patch = np.rot90(patch)
        out[mask] = np.clip(patch[..., None] * tint * rng.uniform(0.92, 1.08), 0, 1)[mask]
    return AnomalySample(_to_uint8(out), _to_uint8(clean), mask)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    """Float [0, 1] -> uint8, always rounded in float32 so equal pixels stay equal."""
    return (np.clip(image.astype(np.float32), 0, 1) * np.float32(255)).round().astype(np.uint8)


def anomaly_counts() -> dict[tuple[str, str], int]:
    """How many images each (split, defect) folder holds, per category."""
    counts = {("train", "good"): ANOMALY_TRAIN, ("test", "good"): ANOMALY_TEST_GOOD}
    counts.update({("test", d): ANOMALY_TEST_PER_DEFECT for d in ANOMALY_DEFECTS})
    return counts


def _build_anomaly(root: Path, seed: int) -> None:
    for category in ANOMALY_CATEGORIES:
        for (split, defect), count in anomaly_counts().items():
            folder = root / category / split / defect
            folder.mkdir(parents=True)
            for index in range(count):
                sample = render_anomaly_image(seed, category, split, defect, index)
                _save_png(sample.image, folder / f"{index:03d}.png")
                if defect != "good":
                    gt = root / category / "ground_truth" / defect
                    gt.mkdir(parents=True, exist_ok=True)
                    _save_png(sample.mask.astype(np.uint8) * 255, gt / f"{index:03d}_mask.png")
    _write_text(root / "README.txt",
                "Synthetic stand-in for MVTec AD (textures), generated by utils/synthetic.py "
                f"(version {VERSIONS['anomaly']}, seed {seed}).\nCategories: {', '.join(ANOMALY_CATEGORIES)}; "
                f"defects: {', '.join(ANOMALY_DEFECTS)}; masks cover exactly the pixels of each defect region.\n"
                + _PROVENANCE)


def make_anomaly_set(seed: int = 0) -> Path:
    """MVTec AD stand-in: 3 texture categories, 128x128 RGB PNG; returns the root.

    Per category: ``train/good/NNN.png`` (50), ``test/good`` (10), ``test/<defect>`` (6 each
    of scratch, stain, hole, cut_paste) and ``ground_truth/<defect>/NNN_mask.png`` (0/255).
    A cache that cannot be written (read-only) raises ``PermissionError`` naming the folder and
    ``$CVBOOK_CACHE``.
    """
    import errno

    try:
        return _cached("anomaly", seed, _build_anomaly)
    except OSError as err:  # a read-only cache: say where, and how to choose another
        if err.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        folder = dataset_dir("anomaly", seed).parent
        raise PermissionError(err.errno, f"cannot write the generated dataset into {folder} "
                              f"({err.strerror}); set ${config.CACHE_ENV} to a writable folder") from err


def file_hashes(root: str | Path) -> dict[str, str]:
    """SHA-256 of every file under ``root``, keyed by its path relative to ``root``: two
    generations with the same seed must give equal dictionaries."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no folder at {root}: nothing to hash (two missing folders must not compare equal)")
    return {str(p.relative_to(root)): sha256_of(p) for p in sorted(root.rglob("*")) if p.is_file()}


def raw_intensity_baseline(train_images: np.ndarray | torch.Tensor, test_images: np.ndarray | torch.Tensor,
                           sigma: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """The no-learning anomaly detector: per-pixel z-scores against the training images.

    ``train_images`` (N, C, H, W) and ``test_images`` (M, C, H, W), float. Each test pixel
    gets ``|x - mean| / std`` per channel (mean and std over the training images at that
    pixel), averaged over channels and Gaussian-smoothed with ``sigma`` pixels; an image's
    score is the maximum of its map. Returns ``(image_scores (M,), pixel_maps (M, H, W))``.
    """
    train = np.asarray(train_images, dtype=np.float64)
    test = np.asarray(test_images, dtype=np.float64)
    if train.ndim != 4 or test.ndim != 4 or train.shape[1:] != test.shape[1:]:
        raise ValueError(f"train and test images must be (N, C, H, W) with equal C, H, W; got {train.shape} "
                         f"and {test.shape}")
    if len(train) < 2:
        raise ValueError(f"need at least 2 training images for a standard deviation, got {len(train)}")
    if len(test) == 0 or test[0].size == 0:
        raise ValueError(f"need at least one test image with pixels, got shape {test.shape}")
    if not (np.isfinite(train).all() and np.isfinite(test).all()):
        raise ValueError("train or test images contain NaN or infinite values")
    if not 0 <= sigma < float("inf"):
        raise ValueError(f"sigma must be finite and >= 0 (0: no smoothing), got {sigma}")
    mean, std = train.mean(axis=0), train.std(axis=0) + 1e-6
    maps = np.abs((test - mean) / std).mean(axis=1)
    if sigma > 0:
        maps = ndimage.gaussian_filter(maps, sigma=(0, sigma, sigma))
    return maps.reshape(len(maps), -1).max(axis=1), maps


# --- Digits (MNIST stand-in) ---------------------------------------------------------------

def make_digits(seed: int = 0, test_fraction: float = 0.25
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """MNIST stand-in from scikit-learn's 8x8 digits, laid out like MNIST.

    Each 8x8 digit (values 0..16) is upsampled bilinearly to 20x20 and centred in a 28x28
    frame, as MNIST centres its 20x20 digits. Returns ``(train_x (N, 1, 28, 28) float32 in
    [0, 1], train_y (N,) int64, test_x, test_y)``, split at random by ``seed``.
    """
    from sklearn.datasets import load_digits
    _rng(seed)
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    digits = load_digits()
    x = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)
    x = torch.nn.functional.interpolate(x, size=(20, 20), mode="bilinear", align_corners=False)
    x = torch.nn.functional.pad(x, (4, 4, 4, 4)).clamp(0, 1)
    y = torch.from_numpy(digits.target.astype(np.int64))
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_test = round(len(x) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]
