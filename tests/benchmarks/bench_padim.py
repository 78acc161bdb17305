"""Benchmark: packaged PaDiM (batched) against the reference code's per-position loops.

Run as a script (prints a report and checks the speed-up goals)::

    python -m tests.benchmarks.bench_padim            # 100 dims, 56x56 positions, 100 train / 80 test
    python -m tests.benchmarks.bench_padim --small    # a quick version

or as the pytest-benchmark group ``padim`` (``make benchmark``). Both sides get the same
random embeddings. The source fits with ``np.cov`` position by position and, at test time,
calls ``np.linalg.inv`` per position and ``scipy.spatial.distance.mahalanobis`` per position
and image; that last loop is so slow that it is timed on a subset of positions and
extrapolated linearly (labelled as such). The packaged fit does more than ``np.cov``: it
also factorises (Cholesky) and inverts the factor, work the source does at test time, so
the fit goal is judged like for like (Gaussians ready to score: ``np.cov`` + ``inv`` loops
against the packaged fit) and the scoring goal against the source's whole test-time work.

Flop counts (LAPACK conventions, one multiply-add = 2 flops): the packaged fit does the
Gram matrices (``2 P N C^2``), the Cholesky factorisations (``P C^3 / 3``) and the
triangular inverses ``W = L^{-1}`` (``P C^3 / 3``); its scoring is one batched product with
``W`` (``2 P N_test C^2``). The machine's own matmul rate is measured in the same run.
Timings on a machine shared with other jobs vary a lot; run it on a quiet one.
The PaDiM chapter (``notebooks/06_padim.ipynb``) explains the method.
"""
from __future__ import annotations

import argparse
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.spatial.distance import mahalanobis

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from utils.padim import PaDiM  # noqa: E402

FIT_GOAL = 1.0     # packaged fit at least as fast as np.cov + np.linalg.inv per position
SCORE_GOAL = 10.0  # packaged scoring at least 10x faster than inv + scipy mahalanobis


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


def make_embeddings(size: Size, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Correlated random train / test embeddings, float32 ``(N, C, side, side)``."""
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(size.dims, size.dims, generator=g) / size.dims ** 0.5
    def draw(n: int) -> torch.Tensor:
        z = torch.randn(n, size.dims, size.side, size.side, generator=g)
        return torch.einsum("dc,nchw->ndhw", mixing, z) + 1.0
    return draw(size.n_train), draw(size.n_test) * 1.2


class PeakRSS:
    """Peak resident memory above the starting level while the block runs (sampled, Linux)."""

    def __enter__(self) -> "PeakRSS":
        self._page = 4096
        self.start = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _rss(self) -> int:
        try:
            return int(Path("/proc/self/statm").read_text().split()[1]) * self._page
        except OSError:
            return 0

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def megabytes(self) -> float:
        return (self.peak - self.start) / 2**20


def timed(fn, repeat: int = 1):
    """Best wall time of ``repeat`` calls and the last result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def matmul_gflops(dtype: torch.dtype, n: int = 1536, repeat: int = 3) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    seconds, _ = timed(lambda: a @ b, repeat)
    return 2 * n**3 / seconds / 1e9


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


def compare(size: Size, verbose: bool = True) -> dict[str, float]:
    """Time both implementations on the same embeddings; check agreement; return the numbers."""
    train, test = make_embeddings(size)
    p, n, c, nt = size.positions, size.n_train, size.dims, size.n_test
    say = print if verbose else (lambda *a, **k: None)
    say(f"PaDiM benchmark: C={c} dims, {size.side}x{size.side}={p} positions, "
        f"{n} train / {nt} test images; torch threads={torch.get_num_threads()}")

    with PeakRSS() as fit_mem:
        t_fit, model = timed(lambda: PaDiM(c).fit(train), repeat=2)
    with PeakRSS() as score_mem:
        t_score, scores = timed(lambda: model(test), repeat=2)
    with PeakRSS() as ref_fit_mem:
        t_ref_cov, (ref_mean, ref_cov) = timed(lambda: reference_fit(train.numpy()))
    t_ref_inv, inverses = timed(lambda: reference_inverses(ref_cov))
    k = min(size.reference_positions, p)
    t_ref_part, ref = timed(lambda: reference_distances(ref_mean, inverses, test.numpy(), k))
    t_ref_dist = t_ref_part * p / k
    cholesky = torch.linalg.cholesky(torch.from_numpy(ref_cov).permute(2, 0, 1).double()).float()
    centred = test.reshape(nt, c, p).permute(2, 1, 0) - model.mean[:, :, None]
    t_solve, _ = timed(lambda: torch.linalg.solve_triangular(cholesky, centred, upper=False), repeat=2)

    ours = scores.reshape(nt, p)[:, :k].T.double().numpy()
    worst = float(np.max(np.abs(ours - ref) / np.abs(ref)))
    if worst > 1e-4:
        raise AssertionError(f"packaged and reference scores differ: max relative error {worst:.2e}")

    fit_flops = 2 * p * n * c**2 + 2 * p * c**3 / 3
    score_flops = 2 * p * nt * c**2
    ref_total = t_ref_cov + t_ref_inv + t_ref_dist
    res = {
        "fit_s": t_fit, "score_s": t_score, "solve_s": t_solve,
        "ref_cov_s": t_ref_cov, "ref_inv_s": t_ref_inv, "ref_dist_s": t_ref_dist,
        "fit_speedup": (t_ref_cov + t_ref_inv) / t_fit, "raw_fit_speedup": t_ref_cov / t_fit,
        "score_speedup": (t_ref_inv + t_ref_dist) / t_score, "total_speedup": ref_total / (t_fit + t_score),
        "fit_gflops": fit_flops / t_fit / 1e9, "score_gflops": score_flops / t_score / 1e9,
        "matmul32_gflops": matmul_gflops(torch.float32), "matmul64_gflops": matmul_gflops(torch.float64),
        "fit_peak_mb": fit_mem.megabytes, "ref_fit_peak_mb": ref_fit_mem.megabytes,
        "score_peak_mb": score_mem.megabytes, "max_rel_err": worst,
        "cov_mb": c * c * p * 4 / 2**20,
    }
    say(f"  max relative difference of the distances (first {k} positions): {worst:.1e}")
    say(f"  source : np.cov loop {t_ref_cov:.3f} s | np.linalg.inv loop {t_ref_inv:.3f} s | "
        f"mahalanobis loop {t_ref_dist:.1f} s (EXTRAPOLATED from {k}/{p} positions: {t_ref_part:.2f} s)")
    say(f"  package: fit (Gram + Cholesky + W = L^-1) {t_fit:.3f} s | score (batched bmm) {t_score:.3f} s "
        f"| [solve_triangular with L instead: {t_solve:.3f} s]")
    say(f"  fit,   like for like (np.cov + inv vs fit):             {res['fit_speedup']:6.1f}x "
        f"(np.cov alone vs fit: {res['raw_fit_speedup']:.1f}x)")
    say(f"  score, the source's test time (inv + mahalanobis vs bmm): {res['score_speedup']:6.1f}x")
    say(f"  end to end:                                             {res['total_speedup']:6.1f}x")
    say(f"  achieved: fit {res['fit_gflops']:.1f} GFLOP/s (2PNC^2 + 2PC^3/3, float64), "
        f"score {res['score_gflops']:.1f} GFLOP/s (2 P N_test C^2, float32)")
    say(f"  this machine's matmul: {res['matmul32_gflops']:.1f} GFLOP/s float32, "
        f"{res['matmul64_gflops']:.1f} GFLOP/s float64")
    say(f"  peak RSS increase: fit {res['fit_peak_mb']:.0f} MB (reference np.cov {res['ref_fit_peak_mb']:.0f} MB), "
        f"score {res['score_peak_mb']:.0f} MB")
    say(f"  stored Gaussians: C^2*H*W*4 bytes = {res['cov_mb']:.0f} MB here")
    for name, dims in (("R18-Rd100", 100), ("WR50-Rd550", 550), ("WR50 all 1792", 1792)):
        say(f"    {name:14s} at 56x56: {dims**2 * 56 * 56 * 4 / 1e9:6.2f} GB")
    return res


def check_goals(res: dict[str, float]) -> None:
    assert res["score_speedup"] >= SCORE_GOAL, f"scoring only {res['score_speedup']:.1f}x faster (goal {SCORE_GOAL}x)"
    assert res["fit_speedup"] >= FIT_GOAL, f"fit {1 / res['fit_speedup']:.2f}x slower than np.cov + inv"


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
    check_goals(res)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="a quick run on a 20x20 grid")
    args = parser.parse_args(argv)
    res = compare(SMALL if args.small else FULL)
    check_goals(res)
    print(f"goals met: scoring >= {SCORE_GOAL:.0f}x, fit (like for like) >= {FIT_GOAL:.0f}x")


if __name__ == "__main__":
    main()
