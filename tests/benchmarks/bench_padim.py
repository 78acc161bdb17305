"""Benchmark: packaged PaDiM (batched) against the reference code's per-position loops.

Run as a script (prints a report and checks the goals)::

    python -m tests.benchmarks.bench_padim --small        # a quick version (20x20 positions)
    python -m tests.benchmarks.bench_padim                # R18-Rd100: 100 dims, 56x56 positions
    python -m tests.benchmarks.bench_padim --scaling      # time and memory against positions and dims
    python -m tests.benchmarks.bench_padim --paper-scale  # WR50-Rd550: 550 dims, 56x56, 200 images
    python -m tests.benchmarks.bench_padim --paper-scale --device cuda   # the same on a GPU

or as the pytest-benchmark group ``padim`` (``make benchmark``). Both sides get the same
random embeddings. The source fits with ``np.cov`` position by position and, at test time,
calls ``np.linalg.inv`` per position and ``scipy.spatial.distance.mahalanobis`` per position
and image; the slow loops are timed on a subset of positions and extrapolated linearly
(labelled as such). The packaged fit does more than ``np.cov``: it also factorises
(Cholesky) and inverts the factor, work the source does at test time, so the fit goal is
judged like for like (Gaussians ready to score: ``np.cov`` + ``inv`` loops against the
packaged fit) and the scoring goal against the source's whole test-time work.

Flop counts (LAPACK conventions, one multiply-add = 2 flops): the packaged fit does the
Gram matrices (``2 P N C^2``), the Cholesky factorisations (``P C^3 / 3``) and the
triangular inverses ``W = L^{-1}`` (``P C^3 / 3``); its scoring is one batched product with
``W`` (``2 P N_test C^2``). Rates are compared with the machine's own matmul rate measured in
the same run (float64 for the fit, float32 for scoring); the numbers that bound them (batched
Gram products, the whitening and LAPACK's Cholesky alone on the same shapes, memory bandwidth
by a large copy) are measured in the same run too. Timings on a machine shared with other
jobs vary a lot; only ratios within one run are meaningful.

Peak memory: each measured fit runs in a fresh Python process that resets the kernel's peak
resident size (``/proc/self/clear_refs``, Linux) just before the fit and reads it
(``VmHWM``) after; the fit's peak memory is that peak minus the resident size before the fit
(CPU tensors are in it; glibc's free heap memory is returned to the system first, so that the
fit cannot reuse it unseen, and a tiny fit has loaded the libraries' code before), reported against the stored Gaussians (mean + ``W`` in float32,
``P C (C + 1) 4`` bytes). MB means 2^20 bytes throughout.

``--scaling`` writes ``results/benchmarks/padim_scaling.json``::

    {"machine": {"torch": str, "threads": int, "cpu": str, "date": "YYYY-MM-DD",
                 "matmul64_gflops": float},
     "rows": [{"side": int, "positions": int, "dims": int, "n_train": int,
               "fit_seconds": float, "fit_gflops": float, "fit_peak_mb": float, "stored_mb": float,
               "reference_fit_seconds": float | null, "reference_extrapolated": bool}, ...],
     "bounds": {"<dims>": {"gram_gflops": float, "whiten_gflops": float,
                           "lapack_cholesky_gflops": float}, ...},
     "skipped": [{"side": int, "positions": int, "dims": int, "reason": str}, ...]}

``fit_*``: the packaged fit on one ``(n_train, dims, side, side)`` float32 tensor;
``fit_gflops``: the fit's rate (flop counts above; compare with ``matmul64_gflops``);
``bounds``: per ``dims``, the rates of the fit's two parts measured alone on one piece of 56x56
positions (the Gram products and the whitening) and of LAPACK's batched Cholesky inside it;
``reference_fit_seconds``: the source's ``np.cov`` + ``np.linalg.inv`` loops (Gaussians ready
to score), extrapolated linearly from a subset of positions when ``reference_extrapolated``.
The PaDiM chapter (``notebooks/06_padim.ipynb``) explains the method.
"""
from __future__ import annotations

import argparse
import ctypes
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self, TypeVar

import numpy as np
import torch
from scipy.spatial.distance import mahalanobis

ROOT = Path(__file__).resolve().parents[2]
if __package__ in (None, ""):
    sys.path.insert(0, str(ROOT))

import utils.padim as padim_module
from utils.padim import PaDiM, whiten

FIT_GOAL = 1.0     # packaged fit at least as fast as np.cov + np.linalg.inv per position
SCORE_GOAL = 10.0  # packaged scoring at least 10x faster than inv + scipy mahalanobis
MEMORY_GOAL = 1.5  # fit peak memory at most 1.5x the stored Gaussians (R18-Rd100 and WR50-Rd550)
RATE_GOAL = 0.4    # fit / scoring GFLOP/s as a fraction of the float64 / float32 matmul rate
SCALING_JSON = ROOT / "results" / "benchmarks" / "padim_scaling.json"
SCALING_SIDES = (28, 56, 64)
SCALING_DIMS = (100, 550)
SCALING_TRAIN = 200
SKIP_SECONDS = 120.0       # a scaling fit estimated to take longer is skipped
REFERENCE_SECONDS = 10.0   # the reference loops are timed on as many positions as fit in this

T = TypeVar("T")


@dataclass(frozen=True)
class Size:
    dims: int = 100
    side: int = 56
    n_train: int = 100
    n_test: int = 80
    reference_positions: int = 160  # positions the slow reference scoring is timed on

    @property
    def positions(self) -> int:
        return self.side * self.side


FULL = Size()
SMALL = Size(dims=100, side=20, n_train=40, n_test=16, reference_positions=80)
PAPER = Size(dims=550, side=56, n_train=200, n_test=0)
PAPER_BATCH = 20  # images per batch of the streamed paper-scale fit


# --- data, sizes, timing -----------------------------------------------------------------------

def random_embeddings(n: int, dims: int, h: int, w: int, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    """Correlated random embeddings, float32 ``(n, dims, h, w)``, made a few images at a time
    (so that making them needs little memory beyond the result)."""
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(dims, dims, generator=g) / dims ** 0.5
    out = torch.empty(n, dims, h, w)
    step = max(1, 2**22 // (dims * h * w))
    for start in range(0, n, step):
        z = torch.randn(min(step, n - start), dims, h, w, generator=g)
        out[start:start + step] = (torch.einsum("dc,nchw->ndhw", mixing, z) + 1.0) * scale
    return out


def make_embeddings(size: Size, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Train and test embeddings of ``size`` (test ones drawn 1.2x wider), float32."""
    train = random_embeddings(size.n_train, size.dims, size.side, size.side, seed)
    test = random_embeddings(size.n_test, size.dims, size.side, size.side, seed + 1, scale=1.2)
    return train, test


def stored_mb(positions: int, dims: int) -> float:
    """MB of the stored Gaussians: mean ``(P, C)`` and ``W`` ``(P, C, C)`` in float32."""
    return positions * dims * (dims + 1) * 4 / 2**20


def fit_gflop(positions: int, n: int, dims: int) -> float:
    """GFLOP of a fit: Gram ``2 P N C^2`` + Cholesky ``P C^3 / 3`` + ``W = L^{-1}`` ``P C^3 / 3``."""
    return (2 * positions * n * dims**2 + 2 * positions * dims**3 / 3) / 1e9


def timed(fn: Callable[[], T], repeat: int = 1) -> tuple[float, T]:
    """Best wall time (s) of ``repeat`` calls and the last result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def matmul_gflops(dtype: torch.dtype, n: int = 1536, repeat: int = 3) -> float:
    """The machine's square matmul rate in ``dtype`` (GFLOP/s, best of ``repeat``)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    seconds, _ = timed(lambda: a @ b, repeat)
    return 2 * n**3 / seconds / 1e9


def copy_gbs(megabytes: int = 512, repeat: int = 3) -> float:
    """Memory bandwidth of a large copy, GB/s counting bytes read + written."""
    src = torch.ones(megabytes * 2**20 // 4)
    dst = torch.empty_like(src)
    seconds, _ = timed(lambda: dst.copy_(src), repeat)
    return 2 * src.numel() * 4 / seconds / 1e9


# --- peak memory of one fit, in a fresh process --------------------------------------------------

def _status_bytes(field: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


class PeakRSS:
    """Peak resident memory added inside a ``with`` block: ``.megabytes`` (MB) after it (Linux).

    On entry glibc's free heap memory goes back to the system (so the block cannot reuse it
    unseen) and the kernel's high-water mark is reset to the current resident size
    (``/proc/self/clear_refs``); on exit the peak (``VmHWM``) minus the size at entry is read.
    """

    def __enter__(self) -> Self:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")
        self.start = _status_bytes("VmRSS")
        self.megabytes = float("nan")
        return self

    def __exit__(self, *exc: object) -> None:
        self.megabytes = (_status_bytes("VmHWM") - self.start) / 2**20


class PeakCUDA:
    """Peak CUDA memory allocated inside a ``with`` block beyond what was allocated at entry:
    ``.megabytes`` (MB) after it (``torch.cuda.max_memory_allocated``, synchronised)."""

    def __enter__(self) -> Self:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        self.start = torch.cuda.memory_allocated()
        self.megabytes = float("nan")
        return self

    def __exit__(self, *exc: object) -> None:
        torch.cuda.synchronize()
        self.megabytes = (torch.cuda.max_memory_allocated() - self.start) / 2**20


def fit_worker(spec: dict[str, Any]) -> dict[str, float]:
    """Fit once on fresh embeddings ``spec`` = {dims, side, n_train, batch (None: one tensor),
    threads, optional device ("cpu" or "cuda"), optional chunk_values (the piece budget a CPU
    fit uses: ``CHUNK_VALUES_GPU`` rehearses a GPU's pieces on the CPU)}; return {fit_seconds,
    fit_peak_mb (peak MB above the level before the fit: resident memory on a CPU, allocated
    CUDA memory on a GPU)}. Meant to run alone in a fresh process (see :func:`measure_fit`)."""
    torch.set_num_threads(spec["threads"])
    device = torch.device(spec.get("device", "cpu"))
    if spec.get("chunk_values"):
        padim_module.CHUNK_VALUES_CPU = int(spec["chunk_values"])
    train = random_embeddings(spec["n_train"], spec["dims"], spec["side"], spec["side"]).to(device)
    batches = train if spec["batch"] is None else train.split(spec["batch"])  # views: no new memory
    model = PaDiM(spec["dims"])
    warm_up = random_embeddings(spec["dims"] + 1, spec["dims"], 1, 2).to(device)
    PaDiM(spec["dims"]).fit(warm_up.split(spec["dims"] // 2 + 1))
    with PeakCUDA() if device.type == "cuda" else PeakRSS() as peak:
        t0 = time.perf_counter()
        model.fit(batches)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
    return {"fit_seconds": seconds, "fit_peak_mb": peak.megabytes}


def measure_fit(dims: int, side: int, n_train: int, batch: int | None = None,
                device: str = "cpu") -> dict[str, float]:
    """Run :func:`fit_worker` in a fresh Python process (so its peak is the fit's own)."""
    spec = {"dims": dims, "side": side, "n_train": n_train, "batch": batch, "threads": torch.get_num_threads(),
            "device": device}
    return json.loads(run_worker("tests.benchmarks.bench_padim", ["--worker", json.dumps(spec)]))


def run_worker(module: str, args: list[str], env: dict[str, str] | None = None) -> str:
    """Run ``python -m module *args`` in a fresh process from the repository root (``env`` added to
    this process's environment); return the last line it printed, or raise with its stderr."""
    done = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env={**os.environ, **(env or {})},
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"worker {module} {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return done.stdout.strip().splitlines()[-1]


# --- the source's per-position loops -------------------------------------------------------------

def reference_fit(train: np.ndarray, eps: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """The source's fit: mean over images, then np.cov position by position (+ eps I)."""
    n, c, h, w = train.shape
    flat = train.reshape(n, c, h * w)
    mean = flat.mean(axis=0)
    cov = np.zeros((c, c, h * w), dtype=np.float32)
    identity = np.identity(c)
    for p in range(h * w):
        cov[:, :, p] = np.cov(flat[:, :, p], rowvar=False) + eps * identity
    return mean, cov


def reference_inverses(cov: np.ndarray) -> list[np.ndarray]:
    """The source's first test-time step: np.linalg.inv of every position's covariance."""
    return [np.linalg.inv(cov[:, :, p]) for p in range(cov.shape[2])]


def reference_distances(mean: np.ndarray, inverses: list[np.ndarray], test: np.ndarray, positions: int) -> np.ndarray:
    """The source's distances on the first ``positions`` positions: (positions, B)."""
    b, c, h, w = test.shape
    flat = test.reshape(b, c, h * w)
    out = np.empty((positions, b))
    for p in range(positions):
        out[p] = [mahalanobis(sample[:, p], mean[:, p], inverses[p]) for sample in flat]
    return out


def reference_ready_seconds(n: int, dims: int, positions: int) -> tuple[float, bool]:
    """Seconds of the source's np.cov + np.linalg.inv loops over ``positions`` positions of ``n``
    images: measured on all of them if that takes about :data:`REFERENCE_SECONDS` or less, else
    on as many as fit in it and extrapolated linearly. Returns (seconds, extrapolated)."""
    pilot = min(positions, 32)
    t_pilot = _reference_ready_loop(n, dims, pilot)
    k = positions if t_pilot * positions / pilot <= REFERENCE_SECONDS else max(
        pilot, int(REFERENCE_SECONDS * pilot / t_pilot))
    seconds = t_pilot if k == pilot else _reference_ready_loop(n, dims, k)
    return seconds * positions / k, k < positions


def _reference_ready_loop(n: int, dims: int, positions: int) -> float:
    """Seconds of :func:`reference_fit` + :func:`reference_inverses` on ``positions`` positions
    (a ``1 x positions`` grid: their cost per position does not depend on the grid)."""
    train = random_embeddings(n, dims, 1, positions).numpy()
    t0 = time.perf_counter()
    reference_inverses(reference_fit(train)[1])
    return time.perf_counter() - t0


# --- what bounds the rates ------------------------------------------------------------------------

def fit_bounds(size: Size) -> tuple[dict[str, float], torch.Tensor]:
    """Rates (GFLOP/s) of the fit's parts measured alone on the shapes of one piece of ``size``'s
    positions (as :class:`PaDiM` cuts them): Gram products, whitening, and LAPACK's Cholesky and
    triangular solve inside it; also returns the piece's ``W`` (float64, ``(p, C, C)``)."""
    c, n = size.dims, size.n_train
    p = min(size.positions, PaDiM(c)._step(n, torch.device("cpu")))
    x = torch.randn(p, n, c, dtype=torch.float64)
    t_gram, gram = timed(lambda: torch.bmm(x.mT, x), 3)
    cov = gram / n + 0.01 * torch.eye(c, dtype=torch.float64)
    t_whiten, (w, _) = timed(lambda: whiten(cov), 3)
    t_chol, (factor, _) = timed(lambda: torch.linalg.cholesky_ex(cov), 3)
    identity = torch.eye(c, dtype=torch.float64).expand_as(cov).contiguous()
    t_trsm, _ = timed(lambda: torch.linalg.solve_triangular(factor, identity, upper=False), 3)
    return {
        "gram_gflops": 2 * p * n * c**2 / t_gram / 1e9,
        "whiten_gflops": 2 * p * c**3 / 3 / t_whiten / 1e9,
        "lapack_cholesky_gflops": p * c**3 / 3 / t_chol / 1e9,
        "lapack_chol_trsm_gflops": 2 * p * c**3 / 3 / (t_chol + t_trsm) / 1e9,
    }, w


def bounds(size: Size) -> dict[str, float]:
    """:func:`fit_bounds`, plus the scoring's batched product on the same piece (GFLOP/s) and
    memory bandwidth (GB/s)."""
    rates, w = fit_bounds(size)
    p, c, nt = w.shape[0], size.dims, max(size.n_test, 1)
    xt, w32 = torch.randn(p, nt, c), w.float()
    t_score, _ = timed(lambda: torch.bmm(xt, w32.mT), 3)
    return {**rates, "score_bmm_gflops": 2 * p * nt * c**2 / t_score / 1e9, "copy_gbs": copy_gbs()}


# --- the default comparison ------------------------------------------------------------------------

def compare(size: Size, verbose: bool = True) -> dict[str, float]:
    """Time both implementations on the same embeddings; check agreement; measure the fit's peak
    memory (one tensor and streamed in batches of 10 images) and the rates; return the numbers."""
    train, test = make_embeddings(size)
    p, n, c, nt = size.positions, size.n_train, size.dims, size.n_test
    say = print if verbose else (lambda *a, **k: None)
    say(f"PaDiM benchmark: C={c} dims, {size.side}x{size.side}={p} positions, "
        f"{n} train / {nt} test images; torch threads={torch.get_num_threads()}")

    t_fit, model = timed(lambda: PaDiM(c).fit(train), repeat=2)
    t_stream, _ = timed(lambda: PaDiM(c).fit(train.split(10)), repeat=2)
    t_score, scores = timed(lambda: model(test), repeat=2)
    t_ref_cov, (ref_mean, ref_cov) = timed(lambda: reference_fit(train.numpy()))
    t_ref_inv, inverses = timed(lambda: reference_inverses(ref_cov))
    k = min(size.reference_positions, p)
    t_ref_part, ref = timed(lambda: reference_distances(ref_mean, inverses, test.numpy(), k))
    t_ref_dist = t_ref_part * p / k
    ours = scores.reshape(nt, p)[:, :k].T.double().numpy()
    worst = float(np.max(np.abs(ours - ref) / np.abs(ref)))
    if worst > 1e-4:
        raise AssertionError(f"packaged and reference scores differ: max relative error {worst:.2e}")

    one, streamed = measure_fit(c, size.side, n), measure_fit(c, size.side, n, batch=10)
    mm32, mm64 = matmul_gflops(torch.float32), matmul_gflops(torch.float64)
    res = {
        "fit_s": t_fit, "stream_fit_s": t_stream, "score_s": t_score,
        "ref_cov_s": t_ref_cov, "ref_inv_s": t_ref_inv, "ref_dist_s": t_ref_dist,
        "fit_speedup": (t_ref_cov + t_ref_inv) / t_fit, "raw_fit_speedup": t_ref_cov / t_fit,
        "score_speedup": (t_ref_inv + t_ref_dist) / t_score,
        "total_speedup": (t_ref_cov + t_ref_inv + t_ref_dist) / (t_fit + t_score),
        "fit_gflops": fit_gflop(p, n, c) / t_fit, "score_gflops": 2 * p * nt * c**2 / t_score / 1e9,
        "matmul32_gflops": mm32, "matmul64_gflops": mm64,
        "fit_peak_mb": one["fit_peak_mb"], "stream_fit_peak_mb": streamed["fit_peak_mb"],
        "stored_mb": stored_mb(p, c), "max_rel_err": worst,
    }
    res["fit_rate"], res["score_rate"] = res["fit_gflops"] / mm64, res["score_gflops"] / mm32
    res["memory_ratio"] = max(res["fit_peak_mb"], res["stream_fit_peak_mb"]) / res["stored_mb"]
    res.update(bounds(size))

    say(f"  max relative difference of the distances (first {k} positions): {worst:.1e}")
    say(f"  source : np.cov loop {t_ref_cov:.3f} s | np.linalg.inv loop {t_ref_inv:.3f} s | "
        f"mahalanobis loop {t_ref_dist:.1f} s (EXTRAPOLATED from {k}/{p} positions: {t_ref_part:.2f} s)")
    say(f"  package: fit one tensor {t_fit:.3f} s | fit streamed (batches of 10) {t_stream:.3f} s | "
        f"score {t_score:.3f} s")
    say(f"  fit,   like for like (np.cov + inv vs fit):             {res['fit_speedup']:6.1f}x "
        f"(np.cov alone vs fit: {res['raw_fit_speedup']:.1f}x)")
    say(f"  score, the source's test time (inv + mahalanobis vs bmm): {res['score_speedup']:6.1f}x")
    say(f"  end to end:                                             {res['total_speedup']:6.1f}x")
    report_memory(say, res)
    report_rates(say, res, size)
    return res


def report_memory(say: Callable[..., None], res: dict[str, float]) -> None:
    """Print the fit's peak memory against the stored Gaussians and the paper-scale sizes."""
    say(f"  fit peak memory (fresh process): one tensor {res['fit_peak_mb']:.0f} MB, streamed "
        f"{res['stream_fit_peak_mb']:.0f} MB, for {res['stored_mb']:.0f} MB of stored Gaussians "
        f"(mean + W, float32): {res['memory_ratio']:.2f}x (goal <= {MEMORY_GOAL}x)")
    for name, dims in (("R18-Rd100", 100), ("WR50-Rd550", 550), ("WR50 all 1792", 1792)):
        mb = stored_mb(56 * 56, dims)
        say(f"    {name:14s} at 56x56: Gaussians {mb / 1024:6.2f} GB, fit needs <= {MEMORY_GOAL * mb / 1024:6.2f} GB")


def report_rates(say: Callable[..., None], res: dict[str, float], size: Size) -> None:
    """Print the fit and scoring rates against matmul, and what bounds them."""
    c, n, p = size.dims, size.n_train, size.positions
    gram_s = 2 * p * n * c**2 / 1e9 / res["gram_gflops"]
    factor_s = 2 * p * c**3 / 3 / 1e9 / res["whiten_gflops"]
    say(f"  fit  : {res['fit_gflops']:.1f} GFLOP/s = {res['fit_rate']:.0%} of float64 matmul "
        f"({res['matmul64_gflops']:.1f}) (goal {RATE_GOAL:.0%}: {'met' if res['fit_rate'] >= RATE_GOAL else 'NOT met'})")
    say(f"  score: {res['score_gflops']:.1f} GFLOP/s = {res['score_rate']:.0%} of float32 matmul "
        f"({res['matmul32_gflops']:.1f}) (goal {RATE_GOAL:.0%}: {'met' if res['score_rate'] >= RATE_GOAL else 'NOT met'})")
    say(f"  bounds, measured alone on one piece of positions: Gram bmm {res['gram_gflops']:.1f} GFLOP/s, "
        f"whitening {res['whiten_gflops']:.1f} GFLOP/s (LAPACK cholesky_ex alone "
        f"{res['lapack_cholesky_gflops']:.1f}, cholesky_ex + solve_triangular {res['lapack_chol_trsm_gflops']:.1f}), "
        f"scoring bmm {res['score_bmm_gflops']:.1f} GFLOP/s, copy {res['copy_gbs']:.1f} GB/s")
    say(f"  the fit at those rates: Gram {gram_s:.3f} s + whitening {factor_s:.3f} s = {gram_s + factor_s:.3f} s "
        f"(measured {res['fit_s']:.3f} s)")


def check_goals(res: dict[str, float], memory: bool = True) -> None:
    """Assert the speed-up goals and (``memory``) the peak-memory goal."""
    assert res["score_speedup"] >= SCORE_GOAL, f"scoring only {res['score_speedup']:.1f}x faster (goal {SCORE_GOAL}x)"
    assert res["fit_speedup"] >= FIT_GOAL, f"fit {1 / res['fit_speedup']:.2f}x slower than np.cov + inv"
    if memory:
        assert res["memory_ratio"] <= MEMORY_GOAL, (f"fit peak memory {res['memory_ratio']:.2f}x the stored "
                                                     f"Gaussians (goal {MEMORY_GOAL}x)")


# --- scaling and paper scale -----------------------------------------------------------------------

def machine_facts(matmul_dtype: torch.dtype = torch.float64) -> dict[str, Any]:
    """torch version, threads, CPU model, date and the matmul rate of this run in ``matmul_dtype``
    (key ``matmul64_gflops`` for float64, ``matmul32_gflops`` for float32)."""
    cpu = platform.processor()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": cpu,
            "date": datetime.date.today().isoformat(),
            f"matmul{torch.finfo(matmul_dtype).bits}_gflops": round(matmul_gflops(matmul_dtype), 2)}


def scaling(path: Path = SCALING_JSON) -> dict[str, Any]:
    """Fit time and peak memory for every side in :data:`SCALING_SIDES` and dims in
    :data:`SCALING_DIMS` (``SCALING_TRAIN`` images), with the reference loops; write ``path``."""
    facts = machine_facts()
    rows, skipped, rates, limits = [], [], {}, {}
    print(f"PaDiM scaling, {SCALING_TRAIN} training images; {facts['cpu']}, {facts['threads']} threads, "
          f"float64 matmul {facts['matmul64_gflops']:.1f} GFLOP/s")
    for dims in SCALING_DIMS:
        measured, _ = fit_bounds(Size(dims=dims, side=56, n_train=SCALING_TRAIN))
        limits[str(dims)] = {key: round(measured[key], 2)
                             for key in ("gram_gflops", "whiten_gflops", "lapack_cholesky_gflops")}
        print(f"  {dims} dims, alone on one piece: Gram {measured['gram_gflops']:.1f}, whitening "
              f"{measured['whiten_gflops']:.1f}, LAPACK Cholesky {measured['lapack_cholesky_gflops']:.1f} GFLOP/s")
        for side in SCALING_SIDES:
            positions = side * side
            rate = rates.get(dims, 0.1 * facts["matmul64_gflops"])  # the last row's, else 10% of matmul
            estimate = fit_gflop(positions, SCALING_TRAIN, dims) / rate
            if estimate > SKIP_SECONDS:
                reason = f"estimated {estimate:.0f} s at {rate:.1f} GFLOP/s (limit {SKIP_SECONDS:.0f} s)"
                skipped.append({"side": side, "positions": positions, "dims": dims, "reason": reason})
                print(f"  {side}x{side}, {dims} dims: skipped, {reason}")
                continue
            fit = measure_fit(dims, side, SCALING_TRAIN)
            rates[dims] = fit_gflop(positions, SCALING_TRAIN, dims) / fit["fit_seconds"]
            ref_s, extrapolated = reference_ready_seconds(SCALING_TRAIN, dims, positions)
            row = {"side": side, "positions": positions, "dims": dims, "n_train": SCALING_TRAIN,
                   "fit_seconds": round(fit["fit_seconds"], 4), "fit_gflops": round(rates[dims], 2),
                   "fit_peak_mb": round(fit["fit_peak_mb"], 1),
                   "stored_mb": round(stored_mb(positions, dims), 1),
                   "reference_fit_seconds": round(ref_s, 3), "reference_extrapolated": extrapolated}
            rows.append(row)
            print(f"  {side}x{side}, {dims:3d} dims: fit {row['fit_seconds']:7.2f} s, peak {row['fit_peak_mb']:7.0f} MB "
                  f"for {row['stored_mb']:7.0f} MB stored ({row['fit_peak_mb'] / row['stored_mb']:.2f}x); "
                  f"reference np.cov + inv {ref_s:7.1f} s{' (EXTRAPOLATED)' if extrapolated else ''}")
    data = {"machine": facts, "rows": rows, "bounds": limits, "skipped": skipped}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")
    print(f"  wrote {path.relative_to(ROOT)}")
    return data


def paper_scale(device: str = "cpu") -> dict[str, float]:
    """WR50-Rd550 (550 dims, 56x56, 200 images) fitted end to end on ``device``, from one tensor
    and streamed in batches of :data:`PAPER_BATCH`; print and return times, peaks and ratios.
    On a GPU the numbers are also written to ``results/benchmarks/padim_paper_scale_<device>.json``
    (peaks: allocated CUDA memory beyond the inputs)."""
    s = PAPER
    on_cpu = torch.device(device).type == "cpu"
    mm64 = matmul_gflops(torch.float64) if on_cpu else float("nan")
    stored = stored_mb(s.positions, s.dims)
    print(f"PaDiM at the paper's scale (WR50-Rd550) on {device}: {s.dims} dims, {s.side}x{s.side} positions, "
          f"{s.n_train} images; Gaussians {stored:.0f} MB" + (f"; float64 matmul {mm64:.1f} GFLOP/s" if on_cpu else ""))
    res = {"stored_mb": stored, "matmul64_gflops": mm64}
    for name, batch in (("one tensor", None), (f"streamed, batches of {PAPER_BATCH}", PAPER_BATCH)):
        fit = measure_fit(s.dims, s.side, s.n_train, batch, device)
        rate = fit_gflop(s.positions, s.n_train, s.dims) / fit["fit_seconds"] / mm64
        key = "stream" if batch else "one"
        res.update({f"{key}_fit_s": fit["fit_seconds"], f"{key}_peak_mb": fit["fit_peak_mb"], f"{key}_rate": rate})
        print(f"  {name:26s}: {fit['fit_seconds']:6.2f} s" + (f" ({rate:.0%} of float64 matmul)" if on_cpu else "")
              + f", peak {fit['fit_peak_mb']:.0f} MB = {fit['fit_peak_mb'] / stored:.2f}x the Gaussians "
              f"(goal <= {MEMORY_GOAL}x)")
    if on_cpu:
        bounds_ = bounds(s)
        print(f"  bounds on one piece: Gram bmm {bounds_['gram_gflops']:.1f} GFLOP/s, whitening "
              f"{bounds_['whiten_gflops']:.1f} GFLOP/s (LAPACK cholesky_ex + solve_triangular "
              f"{bounds_['lapack_chol_trsm_gflops']:.1f})")
    else:
        path = SCALING_JSON.with_name(f"padim_paper_scale_{torch.device(device).type}.json")
        facts = {"torch": torch.__version__, "device": torch.cuda.get_device_name(0),
                 "date": datetime.date.today().isoformat()}
        path.write_text(json.dumps({"machine": facts, "size": {"dims": s.dims, "side": s.side,
                                                              "n_train": s.n_train}, **res}, indent=1) + "\n")
        print(f"  wrote {path.relative_to(ROOT)}")
    assert max(res["one_peak_mb"], res["stream_peak_mb"]) <= MEMORY_GOAL * stored, "paper-scale fit over the memory goal"
    return res


# --- pytest-benchmark group (make benchmark) ---------------------------------------------------

def test_padim_fit(benchmark):
    train, _ = make_embeddings(SMALL)
    benchmark.group = "padim"
    benchmark(lambda: PaDiM(SMALL.dims).fit(train))


def test_reference_fit(benchmark):
    train, _ = make_embeddings(SMALL)
    benchmark.group = "padim"
    benchmark(lambda: reference_fit(train.numpy()))


def test_padim_score(benchmark):
    train, test = make_embeddings(SMALL)
    model = PaDiM(SMALL.dims).fit(train)
    benchmark.group = "padim"
    benchmark(lambda: model(test))


def test_reference_score_subset(benchmark):
    train, test = make_embeddings(SMALL)
    mean, cov = reference_fit(train.numpy())
    benchmark.group = "padim"
    benchmark.pedantic(lambda: reference_distances(mean, reference_inverses(cov), test.numpy(),
                                                   SMALL.reference_positions), rounds=1)


def test_speedup_goals(benchmark):
    benchmark.group = "padim"
    res = benchmark.pedantic(lambda: compare(SMALL, verbose=False), rounds=1)
    check_goals(res, memory=False)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="a quick run on a 20x20 grid (memory goal not checked)")
    parser.add_argument("--scaling", action="store_true", help=f"write {SCALING_JSON.relative_to(ROOT)}")
    parser.add_argument("--paper-scale", action="store_true", help="fit WR50-Rd550 (550 dims, 56x56) once")
    parser.add_argument("--device", default="cpu", help="device of the --paper-scale fits (cpu, cuda)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # one fit in this fresh process (measure_fit)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(fit_worker(json.loads(args.worker))))
    elif args.scaling:
        scaling()
    elif args.paper_scale:
        paper_scale(args.device)
    else:
        res = compare(SMALL if args.small else FULL)
        check_goals(res, memory=not args.small)
        print(f"goals met: scoring >= {SCORE_GOAL:.0f}x, fit (like for like) >= {FIT_GOAL:.0f}x"
              + ("" if args.small else f", fit peak memory <= {MEMORY_GOAL}x the Gaussians"))


if __name__ == "__main__":
    main()
