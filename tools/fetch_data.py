"""What the full profile downloads, and one resumable command that fetches it.

    python -m tools.fetch_data --plan                 # what is needed, where it goes, free disk
    python -m tools.fetch_data                        # fetch what is missing (progress bars)
    python -m tools.fetch_data --check                # re-hash what is present (size, SHA-256)
    python -m tools.fetch_data --plan --chapters 06 07

(``make data ARGS="--plan"`` runs the same.) Datasets come from :mod:`utils.registry`
(verified, resumable, mirrors tried in order) into the cache (``$CVBOOK_CACHE``) and are
unpacked there, unless ``$CVBOOK_DATA`` already holds them; torchvision's ImageNet weights go
to torch's cache (``$TORCH_HOME``). Exit codes: 0 done, 1 a download or a check failed,
2 bad arguments, 3 not enough free disk.
"""
from __future__ import annotations

import argparse
import re
import shutil
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from utils import config, registry

CHAPTERS = ("00", "01", "02", "03", "04", "05", "06", "07", "08")
EXIT_FAILED, EXIT_USAGE, EXIT_DISK = 1, 2, 3
GB = 1e9


@dataclass(frozen=True)
class Dataset:
    """A dataset of the full profile: its registry files, the chapters that read it, where an
    unpacked copy may already be (``unpacked(data_dir) -> folder or None``) and how to unpack
    the downloaded archives where the loaders look (``prepare(run)``; None: used as downloaded).

    ``unpack_factor`` estimates the disk the unpacked files take, as a multiple of the
    download (the images inside are already compressed, so about 1).
    """

    key: str
    title: str
    files: tuple[str, ...]
    chapters: tuple[str, ...]
    unpacked: Callable[[Path | None], Path | None] = lambda data_dir: None
    prepare: Callable[[config.Run], object] | None = None
    unpack_factor: float = 1.0

    def entries(self) -> list[registry.RemoteFile]:
        return [registry.lookup(name) for name in self.files]

    def size(self) -> int:
        """Bytes to download for every file (0 for an unknown size)."""
        return sum(entry.size for entry in self.entries())


@dataclass(frozen=True)
class Weights:
    """A torchvision weight file: model name, URL, size in bytes (torchvision's rounded figure)."""

    model: str
    url: str
    size: int

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    def path(self) -> Path:
        import torch

        return Path(torch.hub.get_dir()) / "checkpoints" / self.filename


# --- the book's needs -------------------------------------------------------------------------

def _first(candidates: Iterable[Path], test: Callable[[Path], bool]) -> Path | None:
    return next((c for c in candidates if test(c)), None)


def _pets_unpacked(data_dir: Path | None) -> Path | None:
    """Where :func:`utils.data.pets_root` would find Pets unpacked, or None."""
    from utils import data

    bases = [p / "oxford-iiit-pet" for p in (data_dir,) if p is not None]
    bases += [data._fastai_pets(), config.cache_dir() / "oxford-iiit-pet"]
    return _first(bases, lambda b: (b / "images").is_dir() and (b / "annotations").is_dir())


def _voc_unpacked(data_dir: Path | None) -> Path | None:
    """Where :func:`utils.data.voc_root` would find VOC 2012 unpacked, or None."""
    from utils import data

    for base in [p for p in (data_dir,) if p is not None] + [config.cache_dir() / "voc"]:
        try:
            return data._voc_dir(base)
        except FileNotFoundError:
            continue
    return None


def _mvtec_unpacked(data_dir: Path | None) -> Path | None:
    """Where :func:`utils.data.mvtec_root` would find all 15 MVTec AD categories, or None."""
    from utils import data

    bases = [data_dir / "mvtec_ad", data_dir] if data_dir is not None else []
    bases.append(config.cache_dir() / "mvtec_ad")
    return _first(bases, lambda b: all((b / c / "train").is_dir() for c in data.MVTEC_CATEGORIES))


def _mnist_unpacked(data_dir: Path | None) -> Path | None:
    """Where :func:`utils.data.load_mnist` would find MNIST's four IDX files, or None."""
    from utils import data

    roots = ([data_dir] if data_dir is not None else []) + [config.cache_dir()]
    return _first(roots, lambda r: all((r / "MNIST" / "raw" / s).is_file() for s in data._MNIST_FILES))


def _prepare(name: str) -> Callable[[config.Run], object]:
    """The :mod:`utils.data` call that unpacks a fetched dataset where the chapters look."""
    def run(run: config.Run) -> object:
        from utils import data

        calls = {"pets": data.pets_root, "voc": data.voc_root, "mnist": data.load_mnist,
                 "mvtec": lambda r: data.mvtec_root(r, data.MVTEC_CATEGORIES[0])}
        return calls[name](run)
    return run


MNIST_FILES = ("mnist-train-images", "mnist-train-labels", "mnist-t10k-images", "mnist-t10k-labels")
#: Which chapter reads which dataset in the full profile (the ``*_root`` / ``load_*`` calls).
DATASETS: tuple[Dataset, ...] = (
    Dataset("pets", "Oxford-IIIT Pet", ("pets-images", "pets-annotations"), ("01", "02", "03", "04"),
            _pets_unpacked, _prepare("pets")),
    Dataset("voc", "PASCAL VOC 2012", ("voc2012-trainval",), ("01", "08"), _voc_unpacked, _prepare("voc")),
    Dataset("mvtec", "MVTec AD", ("mvtec-ad",), ("01", "06", "07"), _mvtec_unpacked, _prepare("mvtec")),
    # MNIST's IDX files are unpacked from gzip: about 5x the download.
    Dataset("mnist", "MNIST", MNIST_FILES, ("01", "04", "05"), _mnist_unpacked, _prepare("mnist"),
            unpack_factor=5.0),
    Dataset("gradcam-photo", "Grad-CAM Figure 1 photo", ("gradcam-both",), ("03",), unpack_factor=0.0),
)
#: The torchvision ImageNet weights (``IMAGENET1K_V1``) each chapter loads in the full profile.
CHAPTER_WEIGHTS: dict[str, tuple[str, ...]] = {
    "02": ("resnet34",), "03": ("resnet50", "vgg16"), "04": ("resnet34",),
    "06": ("resnet18", "wide_resnet50_2"), "07": ("resnet18",), "08": ("resnet50",),
}


def torchvision_weights(models: Iterable[str]) -> list[Weights]:
    """:class:`Weights` of torchvision's ``IMAGENET1K_V1`` for each model name (no download)."""
    from torchvision.models import get_model_weights

    out = []
    for model in models:
        weights = get_model_weights(model).IMAGENET1K_V1
        out.append(Weights(model, weights.url, int(weights.meta.get("_file_size", 0) * 2**20)))
    return out


# --- what is on disk --------------------------------------------------------------------------

def _registry_copy(entry: registry.RemoteFile, data_dir: Path | None) -> Path:
    """Where ``fetch`` finds (or puts) ``entry``: the data directory's copy, else the cache."""
    if data_dir is not None and (data_dir / entry.filename).is_file():
        return data_dir / entry.filename
    return registry.downloads_dir() / entry.filename


def _file_status(entry: registry.RemoteFile, data_dir: Path | None) -> tuple[str, int]:
    """(status words, bytes still to download) for one registry file."""
    path = _registry_copy(entry, data_dir)
    if registry.is_verified(entry, path):
        return "verified", 0
    if path.is_file():
        return "present, hashed on first use or --check", 0
    parts = list(path.parent.glob(f"{path.name}.*.part"))
    have = max((p.stat().st_size for p in parts), default=0)
    if have:
        return f"partial: {have / GB:.2f} of {entry.size / GB:.2f} GB (resumes)", max(entry.size - have, 0)
    return "missing", entry.size


@dataclass
class Need:
    """One dataset's state: where it is or goes, its status and the bytes still needed."""

    dataset: Dataset
    where: str
    status: str
    download: int
    unpack: int


def assess(dataset: Dataset, data_dir: Path | None) -> Need:
    """What ``dataset`` still needs on this machine (looks only: nothing is hashed or written)."""
    unpacked = dataset.unpacked(data_dir)
    if unpacked is not None:
        return Need(dataset, str(unpacked), "unpacked", 0, 0)
    states = [_file_status(entry, data_dir) for entry in dataset.entries()]
    download = sum(missing for _, missing in states)
    status = "; ".join(sorted({words for words, _ in states}))
    where = str(_registry_copy(dataset.entries()[0], data_dir).parent)
    unpack = 0 if dataset.prepare is None else int(dataset.size() * dataset.unpack_factor)
    return Need(dataset, where, status, download, unpack)


def select(chapters: Sequence[str] | None, datasets: Sequence[Dataset],
           chapter_weights: Mapping[str, tuple[str, ...]]) -> tuple[list[Dataset], list[str]]:
    """The datasets and weight names the given chapters need (all chapters when None)."""
    chosen = set(chapters or CHAPTERS)
    sets = [d for d in datasets if chosen & set(d.chapters)]
    models = sorted({m for ch, names in chapter_weights.items() if ch in chosen for m in names})
    return sets, models


def _existing(path: Path) -> Path:
    """``path`` or its nearest existing parent (to ask for the free disk)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def disk_shortfalls(needs: Sequence[Need], weights: Sequence[Weights]) -> list[str]:
    """One line per filesystem that lacks room for what is still to download and unpack."""
    demand: dict[Path, int] = {}
    cache = _existing(config.cache_dir())
    for need in needs:
        demand[cache] = demand.get(cache, 0) + need.download + need.unpack
    for w in weights:
        if not w.path().is_file():
            key = _existing(w.path().parent)
            demand[key] = demand.get(key, 0) + w.size
    lines = []
    for folder, need in demand.items():
        free = shutil.disk_usage(folder).free
        if need > free:
            lines.append(f"{folder}: {need / GB:.1f} GB needed, {free / GB:.1f} GB free")
    return lines


# --- output -----------------------------------------------------------------------------------

def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table with columns padded to their widest cell."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _licence(dataset: Dataset) -> str:
    return "; ".join(dict.fromkeys(e.licence.split(" (")[0] for e in dataset.entries()))


def print_plan(needs: Sequence[Need], weights: Sequence[Weights], chapter_weights: Mapping[str, tuple[str, ...]],
               chapters: Sequence[str] | None) -> None:
    """The plan: datasets, weights per chapter, and the total to download against the free disk."""
    print(table(["dataset", "download", "licence", "chapters", "where", "status"],
                [(n.dataset.title, f"{n.dataset.size() / GB:.2f} GB", _licence(n.dataset),
                  " ".join(n.dataset.chapters), n.where, n.status) for n in needs]))
    print()
    rows = [(ch, " ".join(names)) for ch, names in sorted(chapter_weights.items())
            if not chapters or ch in chapters]
    print(table(["chapter", "torchvision weights (IMAGENET1K_V1)"], rows))
    print()
    print(table(["weights file", "size", "where", "status"],
                [(w.filename, f"{w.size / GB:.2f} GB", w.path().parent,
                  "present" if w.path().is_file() else "missing") for w in weights]))
    todo = sum(n.download for n in needs) + sum(w.size for w in weights if not w.path().is_file())
    unpack = sum(n.unpack for n in needs)
    free = shutil.disk_usage(_existing(config.cache_dir())).free
    print(f"\nstill to download: {todo / GB:.2f} GB, plus about {unpack / GB:.2f} GB unpacked "
          f"(estimate); free in the cache's filesystem: {free / GB:.1f} GB")


# --- fetch and check --------------------------------------------------------------------------

def fetch_all(needs: Sequence[Need], weights: Sequence[Weights], data_dir: Path | None) -> list[str]:
    """Fetch and unpack every dataset not yet unpacked, then the missing weights; the failures."""
    import torch

    failures = []
    run = config.Run(config.get_profile("full"), 0, torch.device("cpu"), data_dir)
    for need in needs:
        if need.status == "unpacked":
            continue
        try:
            for entry in need.dataset.entries():
                path, url = registry.fetch_with_source(entry.name, data_dir)
                print(f"{entry.name}: {path}" + (f" (downloaded from {url})" if url else " (already here)"))
            if need.dataset.prepare is not None:
                print(f"{need.dataset.title}: unpacking ...")
                need.dataset.prepare(run)
        except (OSError, registry.ChecksumError, registry.ArchiveError) as err:
            failures.append(f"{need.dataset.title}: {err}")
    for w in weights:
        if not w.path().is_file():
            failures += _fetch_weights(w)
    return failures


def _fetch_weights(w: Weights) -> list[str]:
    """Download one torchvision weight file into torch's cache, checked against the SHA-256
    prefix in its name (torch.hub's own check); the failure, if any."""
    import torch

    prefix = re.search(r"-([0-9a-f]{8,})\.", w.filename)
    try:
        w.path().parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(w.url, str(w.path()), prefix[1] if prefix else None, progress=True)
    except (OSError, RuntimeError) as err:
        return [f"{w.model}: {w.url}: {err}"]
    print(f"{w.model}: {w.path()}")
    return []


def check_all(needs: Sequence[Need], weights: Sequence[Weights], data_dir: Path | None) -> list[str]:
    """Hash every registry file and weight file present in full; the problems found."""
    problems, rows = [], []
    for need in needs:
        for entry in need.dataset.entries():
            path = _registry_copy(entry, data_dir)
            if not path.is_file():
                rows.append((entry.name, path, "not here" + (" (unpacked copy in use)" if need.status == "unpacked"
                                                            else "")))
                continue
            problem = registry.verify_file(entry, path)
            rows.append((entry.name, path, problem or "ok: size and sha256"))
            if problem:
                problems.append(f"{path} {problem}")
    for w in weights:
        if w.path().is_file():
            prefix = re.search(r"-([0-9a-f]{8,})\.", w.filename)
            ok = prefix is None or registry.sha256_of(w.path()).startswith(prefix[1])
            rows.append((w.model, w.path(), "ok: sha256 prefix" if ok else "sha256 does not match its name"))
            if not ok:
                problems.append(f"{w.path()}: sha256 does not start with {prefix[1]}")
    print(table(["file", "path", "check"], rows))
    return problems


# --- command line -----------------------------------------------------------------------------

def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tools.fetch_data", description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--plan", action="store_true", help="print what is needed and where; download nothing")
    mode.add_argument("--check", action="store_true", help="re-hash what is present (size and SHA-256)")
    parser.add_argument("--chapters", nargs="+", metavar="NN", help="only what these chapters need (e.g. 06 07)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.chapters or ()) - set(CHAPTERS))
    if unknown:
        parser.error(f"unknown chapter(s) {', '.join(unknown)}; choose from {' '.join(CHAPTERS)}")
    return args


def main(argv: Sequence[str] | None = None, datasets: Sequence[Dataset] = DATASETS,
         chapter_weights: Mapping[str, tuple[str, ...]] = CHAPTER_WEIGHTS) -> int:
    """Run the command; returns the exit code (see the module docstring)."""
    import utils.data  # noqa: F401  (registers the datasets' files)

    args = parse(argv)
    try:
        data_dir = config.data_dir()
    except FileNotFoundError as err:  # $CVBOOK_DATA names a folder that is not there
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    sets, models = select(args.chapters, datasets, chapter_weights)
    needs = [assess(d, data_dir) for d in sets]
    weights = torchvision_weights(models)
    if args.check:
        problems = check_all(needs, weights, data_dir)
        print("\n".join(["", *problems]) if problems else "\nevery file present matches the registry")
        return EXIT_FAILED if problems else 0
    if args.plan:
        print_plan(needs, weights, chapter_weights, args.chapters)
    short = disk_shortfalls(needs, weights)
    if short:
        print("\nNOT ENOUGH FREE DISK for what is still to download and unpack:\n  " + "\n  ".join(short)
              + f"\nFree some space, or point ${config.CACHE_ENV} (datasets) or $TORCH_HOME (weights) at a "
                "bigger disk; nothing was downloaded.", file=sys.stderr)
        return EXIT_DISK
    if args.plan:
        print("enough free disk; run `make data` (python -m tools.fetch_data) to fetch it")
        return 0
    failures = fetch_all(needs, weights, data_dir)
    if failures:
        print("\nFAILED:\n  " + "\n  ".join(failures) + "\nRun again to resume.", file=sys.stderr)
        return EXIT_FAILED
    print("\neverything the chosen chapters need is here")
    return 0


if __name__ == "__main__":
    sys.exit(main())
