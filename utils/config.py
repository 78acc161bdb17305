"""Profiles, seeding, device choice and the cache / data directories.

Explained in the *Getting started* chapter (``notebooks/00_getting_started.ipynb``).

Two environment variables configure where files live:

* ``CVBOOK_CACHE`` - where generated datasets and downloads are written
  (default ``~/.cache/cvbook``).
* ``CVBOOK_DATA`` - an existing folder holding real datasets (for example a local
  mirror); loaders look here before downloading. A notebook's ``DATA_DIR`` parameter
  overrides it.

A third, ``CVBOOK_NUMERICS`` (``strict`` or ``fast``), overrides the numerics policy a
profile picks (:func:`numerics_for`); the run banner always names the one in force.
"""
from __future__ import annotations

import os
import random
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

CACHE_ENV = "CVBOOK_CACHE"
DATA_ENV = "CVBOOK_DATA"
#: Set to "0" by the build tools (runner, nbval, smoke and GPU runs): no progress bars in
#: executed notebooks, whose outputs are committed and compared.
PROGRESS_ENV = "CVBOOK_PROGRESS"
NUMERICS_ENV = "CVBOOK_NUMERICS"
#: cuBLAS reads this when it creates its first handle; ``:4096:8`` makes its matrix
#: products deterministic on CUDA (PyTorch's reproducibility notes).
CUBLAS_WORKSPACE_ENV = "CUBLAS_WORKSPACE_CONFIG"
T = TypeVar("T")


@dataclass(frozen=True)
class Profile:
    """What a notebook run is sized for.

    ``tiny``: offline, CPU, generated data, a few minutes on 2 cores.
    ``full``: the paper's data and backbones, meant for a GPU.
    """

    name: str
    offline: bool
    description: str


PROFILES: dict[str, Profile] = {
    "tiny": Profile("tiny", True, "offline, CPU, generated data, ~3 min per chapter on 2 cores"),
    "full": Profile("full", False, "the paper's datasets and weights, meant for a GPU"),
}


def get_profile(name: str) -> Profile:
    """Return the profile called ``name``; an unknown name raises listing the choices."""
    try:
        return PROFILES[name]
    except (KeyError, TypeError):
        choices = ", ".join(repr(p) for p in PROFILES)
        raise ValueError(f"unknown profile {name!r}; choose one of {choices}") from None


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python's ``random``, NumPy and torch (CPU and CUDA) from one integer.

    With ``deterministic=True`` cuDNN picks deterministic kernels and stops
    benchmarking, so two runs on the same machine give the same numbers.
    """
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic


@dataclass(frozen=True)
class Numerics:
    """How float32 arithmetic runs: the book's one numerics policy, set by :func:`start_run`.

    ``strict`` (the tiny profile, and anything compared across devices): TF32 off for
    matrix products (cuBLAS) and cuDNN convolutions, and deterministic algorithms where
    PyTorch has them (a warning, not an error, where it has none). A GPU then rounds float32
    like a CPU does, so the committed CPU numbers hold on CUDA to float32 rounding.
    ``fast`` (the full profile): TF32 on, about 3 significant digits per product (10-bit
    mantissa), default algorithms; its numbers agree with a strict run only within
    :attr:`tolerance`. On a CPU the two give the same numbers.
    """

    name: str
    tf32: bool
    deterministic: bool
    tolerance: str

    def apply(self) -> None:
        """Set PyTorch's global flags to this policy (every flag, so it is idempotent).

        Uses only the legacy flag API (``allow_tf32``, ``set_float32_matmul_precision``):
        PyTorch refuses to read flags set through a mix of the legacy and new APIs.
        """
        if self.deterministic and not torch.cuda.is_initialized():
            os.environ.setdefault(CUBLAS_WORKSPACE_ENV, ":4096:8")
        torch.backends.cuda.matmul.allow_tf32 = self.tf32
        torch.backends.cudnn.allow_tf32 = self.tf32
        torch.set_float32_matmul_precision("high" if self.tf32 else "highest")
        torch.use_deterministic_algorithms(self.deterministic, warn_only=True)

    def banner(self) -> str:
        """The policy as the run banner prints it (short, the same on every machine)."""
        if self.tf32:
            return f"numerics={self.name} (TF32 on; {self.tolerance})"
        return f"numerics={self.name} (TF32 off, deterministic)"


@contextmanager
def full_float32() -> Iterator[None]:
    """Run float32 matrix products and convolutions in full float32 inside the block (TF32 off,
    whatever the policy), and put the flags back after it, even on an error.

    For small products whose results are compared with a reference to float32 rounding (an
    identity a chapter asserts, PaDiM's scoring): under the ``fast`` policy they would
    otherwise carry TF32's ~1e-3 relative error on a GPU.
    """
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.get_float32_matmul_precision())
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[:2]
        torch.set_float32_matmul_precision(saved[2])


NUMERICS: dict[str, Numerics] = {
    "strict": Numerics("strict", tf32=False, deterministic=True,
                       tolerance="equal to the CPU up to float32 rounding"),
    "fast": Numerics("fast", tf32=True, deterministic=False,
                     tolerance="claims within 0.02 of a strict run, trained ones 0.05"),
}


def numerics_for(profile: str, override: str | None = None) -> Numerics:
    """The numerics policy of ``profile``: ``strict`` for tiny, ``fast`` for full.

    ``override`` (default: ``$CVBOOK_NUMERICS``) names a policy that wins over the
    profile's; an unknown name raises listing the choices.
    """
    get_profile(profile)
    name = override if override is not None else os.environ.get(NUMERICS_ENV) or None
    if name is None:
        return NUMERICS["strict" if profile == "tiny" else "fast"]
    try:
        return NUMERICS[name]
    except (KeyError, TypeError):
        choices = ", ".join(repr(n) for n in NUMERICS)
        raise ValueError(f"unknown numerics policy {name!r} (from ${NUMERICS_ENV} or "
                         f"the override); choose one of {choices}") from None


def pick_device(device: str = "auto") -> torch.device:
    """Turn ``"auto"`` into ``cuda`` when a GPU is visible, else ``cpu``.

    Any other string is passed to :class:`torch.device`; asking for CUDA on a machine
    without it raises instead of silently falling back to the CPU.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    chosen = torch.device(device)
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available; use 'auto' or 'cpu'")
    return chosen


def progress_enabled() -> bool:
    """False when ``$CVBOOK_PROGRESS`` is ``"0"`` (set by the tools that execute notebooks,
    whose outputs are committed): then no progress bar of any library should be drawn."""
    return os.environ.get(PROGRESS_ENV) != "0"


def progress(iterable: Iterable[T], desc: str | None = None, total: int | None = None, **kwargs) -> Iterable[T]:
    """Wrap a long loop in a progress bar (text ``tqdm``) for a reader running the notebook;
    silent unless :func:`progress_enabled`."""
    from tqdm import tqdm  # a text bar: works without ipywidgets

    return tqdm(iterable, desc=desc, total=total, disable=not progress_enabled(), **kwargs)


def cache_dir() -> Path:
    """Directory for generated datasets and downloads (``$CVBOOK_CACHE``), created on demand.

    A path that is an existing file, or that cannot be created, raises an ``OSError`` naming
    the path and where it came from (``$CVBOOK_CACHE`` or the default).
    """
    value = os.environ.get(CACHE_ENV)
    path = Path(value or Path.home() / ".cache" / "cvbook").expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        source = f"from ${CACHE_ENV}" if value else f"the default, ${CACHE_ENV} is not set"
        problem = "is an existing file, not a folder" if path.is_file() else f"cannot be created ({error.strerror})"
        raise type(error)(f"cache directory {str(path)!r} ({source}) {problem}; "
                          f"point ${CACHE_ENV} at a writable folder") from error
    return path


def data_dir(override: str | os.PathLike | None = None) -> Path | None:
    """Folder of existing real datasets, or ``None`` when none is configured.

    ``override`` (a notebook's ``DATA_DIR`` parameter) wins over ``$CVBOOK_DATA``.
    A configured folder that does not exist is an error, not a silent ``None``.
    """
    value = override if override is not None else os.environ.get(DATA_ENV)
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"data directory {str(path)!r} (from {'DATA_DIR' if override is not None else DATA_ENV}) "
            "does not exist; unset it or point it at a folder of datasets")
    return path


@dataclass(frozen=True)
class Run:
    """What one notebook run uses: profile, seed, device, the optional data folder, and
    whether it is a *smoke* run.

    A smoke run (``SMOKE = True`` with ``PROFILE = "full"``) follows the full profile's code
    path (full image sizes, full backbones, the real loaders) cut to a handful of images and
    one epoch, so that CI executes every full-profile branch. Two helpers keep that out of
    the chapters' text: :meth:`trim` picks the smoke-sized value of a setting, and
    :meth:`claim` checks a statement about a method's quality except in a smoke run (where
    the numbers mean nothing). Identities and shapes are checked with plain ``assert``.
    """

    profile: Profile
    seed: int
    device: torch.device
    data_dir: Path | None
    smoke: bool = False
    numerics: Numerics = NUMERICS["strict"]

    @property
    def tiny(self) -> bool:
        return self.profile.name == "tiny"

    def trim(self, value: T, smoke: T) -> T:
        """``value`` in a normal run, ``smoke`` in a smoke run.

        >>> EPOCHS = RUN.trim(30, 1); CATEGORIES = RUN.trim(ALL, ALL[:1])
        """
        return smoke if self.smoke else value

    def claim(self, condition: object, message: str = "") -> None:
        """Assert a claim about a method's quality (an accuracy above a baseline, say).

        Raises :class:`AssertionError` with ``message`` when ``condition`` is false, except in
        a smoke run, where it only reports that the claim was not checked. Returns nothing,
        so a claim at the end of a cell adds no output.
        """
        held = bool(condition)
        if not held and not self.smoke:
            raise AssertionError(message or "claim failed")
        if not held:
            print(f"smoke run: claim not checked: {message}")


def start_run(profile: str = "tiny", seed: int = 0, device: str = "auto",
              data: str | os.PathLike | None = None, smoke: bool = False) -> Run:
    """The one call every chapter makes after its parameters cell.

    Validates the profile, sets the numerics policy (:func:`numerics_for`: TF32 off and
    deterministic algorithms for the tiny profile), seeds everything, picks the device,
    resolves the data folder, applies the book's figure style, silences tqdm's
    missing-widget warning and prints a one-line summary (the same on every machine of
    the same device type: no paths, no versions). ``smoke=True`` is only meaningful with ``profile="full"``
    (the tiny profile is already small) and raises otherwise.
    """
    from .viz import use_book_style

    if not isinstance(smoke, bool):
        raise TypeError(f"SMOKE must be True or False, got {smoke!r}")
    numerics = numerics_for(profile)
    numerics.apply()  # before the device is picked: cuBLAS reads its workspace setting once
    run = Run(get_profile(profile), seed, pick_device(device), data_dir(data), smoke, numerics)
    if smoke and run.tiny:
        raise ValueError('SMOKE=True cuts the full profile down; use it with PROFILE="full"')
    seed_everything(seed)
    if os.environ.get("CVBOOK_STEP_TIMES"):  # set by the GPU check's smoke run (tools/step_timer.py)
        from tools.step_timer import install

        install(os.environ["CVBOOK_STEP_TIMES"])
    use_book_style()
    # tqdm.auto (imported by captum and others) warns once per kernel that ipywidgets is
    # missing and falls back to text bars; the fallback is what we want, the warning is noise.
    warnings.filterwarnings("ignore", message="IProgress not found")
    source = "data directory set" if run.data_dir else "no data directory (generated data only)"
    mode = " (smoke run: a handful of images, one epoch; quality claims not checked)" if smoke else ""
    print(f"profile={run.profile.name}{mode} seed={seed} device={run.device.type} "
          f"{numerics.banner()}; {source}")
    return run
