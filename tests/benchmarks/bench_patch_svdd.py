"""Benchmark: Patch SVDD scoring, vectorised against the source's KD-tree per row and double loop.

Run as a script (prints a report, checks the speed-up goal, saves a plot)::

    python -m tests.benchmarks.bench_patch_svdd            # 256 px images, K=32 at stride 4
    python -m tests.benchmarks.bench_patch_svdd --small    # 128 px images, a quick version
    python -m tests.benchmarks.bench_patch_svdd --device cuda  # exact search vs cdist + min on a GPU
    python -m tests.benchmarks.bench_patch_svdd --device cpu --small   # the same, small, on the CPU

``--device`` times ``utils.anomaly.nearest_distances`` (its ``"auto"`` method: the screen on a
CPU, blocked brute force elsewhere) against a plain blocked ``torch.cdist`` + ``min`` on random
64-dimensional codes, 6561 queries (one 81 x 81 grid) against 65,536 and 1,048,576 memory
vectors (best of 3 after a warm-up, synchronised), checks that both find the same distances and
writes ``results/benchmarks/nearest_search_<device>.json`` on a GPU.

Peak memory is measured apart from the times: each side runs once in a fresh Python process
with glibc's mmap threshold fixed at 128 KiB (``MALLOC_MMAP_THRESHOLD_``), so that freed large
blocks go back to the system at once and the peak resident memory counts the live arrays, not
the heap glibc keeps after frees (with its default, a threshold that grows with every freed
block, the same search read anywhere from 34 to 111 MB).
Both sides get the same codes: a randomly initialised (He) Patch SVDD encoder run over the
generated textures of ``utils.synthetic`` (resized), at K = 32 and stride 4. The source's way
builds a KD-tree over all training codes, queries it one grid row of one test image at a time
and spreads the scores to pixels with two Python loops (``tests.references``); the packaged
way screens all pairs with blocked matrix products, keeps the tiles of training codes that a
rounding bound cannot rule out, measures those exactly
(``utils.anomaly.knn_patch_scores(exact=True)``) and spreads with two ``F.fold``
(``utils.patch_svdd.spread``). The maps must agree to 1e-5. Then the search time of
both is measured against the number of training patches, over two orders of magnitude.
Timings on a machine shared with other jobs vary a lot; run it on a quiet one.
The Patch SVDD chapter (``notebooks/07_patch_svdd.ipynb``) explains the method.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.benchmarks.bench_padim import ROOT, PeakRSS, machine_facts, run_worker, timed
from tests.references import knn_kdtree_per_row, spread_double_loop
from utils import data, synthetic
from utils import patch_svdd as ps
from utils.anomaly import knn_patch_scores, nearest_distances, search_method

GOAL = 20.0  # vectorised search + spreading at least 20x faster than KD-tree rows + double loop
K, STRIDE = 32, 4
SEARCH_JSON = ROOT / "results" / "benchmarks" / "patch_svdd_search.json"


@dataclass(frozen=True)
class Size:
    side: int = 256
    n_train: int = 20
    n_test: int = 2
    patches: tuple[int, ...] = (1_000, 10_000, 100_000)   # training patches for the scaling curve
    reference_up_to: int = 100_000                        # largest size the KD-tree is timed on


FULL = Size()
SMALL = Size(side=128, n_train=20, n_test=4, patches=(500, 5_000, 50_000), reference_up_to=50_000)


def make_codes(size: Size, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """K=32 codes (stride 4) of generated texture images: train ``(N, 64, h, w)``, test ``(B, 64, h, w)``."""
    torch.manual_seed(seed)
    encoder = ps.Encoder64().eval()
    root = synthetic.make_anomaly_set(seed)
    category = synthetic.ANOMALY_CATEGORIES[0]
    train, _, _, _ = data.load_mvtec(root, category, "train", size.side, None)
    test, _, _, _ = data.load_mvtec(root, category, "test", size.side, None)
    mean = train.mean(dim=0, keepdim=True)
    with torch.no_grad():
        codes = [torch.cat([ps.dense_codes(encoder, x - mean, K, STRIDE) for x in images.split(4)])
                 for images in (train[:size.n_train], test[-size.n_test:])]
    return codes[0], codes[1]


def vectorised_maps(train: torch.Tensor, test: torch.Tensor, side: int) -> torch.Tensor:
    return ps.spread(knn_patch_scores(train, test, exact=True), K, STRIDE, (side, side))


def reference_maps(train: torch.Tensor, test: torch.Tensor, side: int) -> np.ndarray:
    return spread_double_loop(knn_kdtree_per_row(train.numpy(), test.numpy()), K, STRIDE, (side, side))


def memory_of_size(train: torch.Tensor, m: int, seed: int = 0) -> torch.Tensor:
    """``m`` training codes as a ``(1, 64, 1, m)`` memory: the real codes, cycled with small noise
    when more are needed (so that no two are identical)."""
    flat = train.permute(0, 2, 3, 1).reshape(-1, train.shape[1])
    g = torch.Generator().manual_seed(seed)
    reps = -(-m // len(flat))
    pool = torch.cat([flat + (0.01 * r) * torch.randn(flat.shape, generator=g) for r in range(reps)])[:m]
    return pool.T.reshape(1, train.shape[1], 1, m)


def peak_worker(size: Size, side: str) -> float:
    """Peak resident MB added by one run of ``side`` ("ours" or "ref") on :func:`make_codes`;
    meant for a fresh process (:func:`measure_peak`)."""
    train, test = make_codes(size)
    run = vectorised_maps if side == "ours" else reference_maps
    with PeakRSS() as peak:
        run(train, test, size.side)
    return peak.megabytes


def measure_peak(size: Size, side: str) -> float:
    """Run :func:`peak_worker` in a fresh Python process with a fixed 128 KiB mmap threshold."""
    args = ["--peak-of", side, *(["--small"] if size == SMALL else [])]
    return float(run_worker("tests.benchmarks.bench_patch_svdd", args, env={"MALLOC_MMAP_THRESHOLD_": str(2**17)}))


def compare(size: Size, verbose: bool = True) -> dict:
    say = print if verbose else (lambda *a, **k: None)
    train, test = make_codes(size)
    m, q = train.shape[0] * train.shape[2] * train.shape[3], test.shape[0] * test.shape[2] * test.shape[3]
    say(f"Patch SVDD scoring benchmark: {size.side} px images, K={K} stride {STRIDE}, "
        f"{m} training codes, {q} test patches, torch threads {torch.get_num_threads()}")
    t_ours, ours = timed(lambda: vectorised_maps(train, test, size.side), repeat=2)
    t_ref, ref = timed(lambda: reference_maps(train, test, size.side))
    ours_mb, ref_mb = (measure_peak(size, side) for side in ("ours", "ref"))
    diff = float(np.abs(ours.double().numpy() - ref).max())
    assert diff < 1e-5, f"maps differ by {diff:.2e}"
    res = {"ours_s": t_ours, "ref_s": t_ref, "ratio": t_ref / t_ours, "max_diff": diff,
               "ours_peak_mb": ours_mb, "ref_peak_mb": ref_mb,
               "search_gflop": 2 * m * q * train.shape[1] / 1e9, "scaling": []}
    say(f"  maps identical (largest difference {diff:.1e})")
    say(f"  KD-tree per row + double loop: {t_ref:8.2f} s, peak RSS +{ref_mb:.0f} MB")
    say(f"  matmul screen + exact tiles + fold: {t_ours:6.2f} s, peak RSS +{ours_mb:.0f} MB")
    say(f"  speed-up {res['ratio']:.1f}x")
    query = test[:1]
    for n in size.patches:
        memory = memory_of_size(train, n)
        t_fast, _ = timed(lambda memory=memory: knn_patch_scores(memory, query, exact=True), repeat=2)
        t_tree = None
        if n <= size.reference_up_to:
            t_tree, _ = timed(lambda memory=memory: knn_kdtree_per_row(memory.numpy(), query.numpy()))
        res["scaling"].append((n, t_fast, t_tree))
        say(f"  {n:>8} training patches: matmul search {t_fast * 1e3:8.1f} ms"
            + (f", KD-tree rows {t_tree * 1e3:9.1f} ms" if t_tree is not None else "")
            + f"  (one test image, {query.shape[2] * query.shape[3]} patches)")
    return res


SEARCH_MEMORIES = (65_536, 1_048_576)
SEARCH_QUERIES = 6_561
SEARCH_VALUES = 2**26  # cdist blocks of at most this many distances


def cdist_min(memory: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """Nearest distances by plain ``torch.cdist`` + ``min``, queries in blocks of about
    :data:`SEARCH_VALUES` distances (the baseline a GPU search must match)."""
    step = max(1, SEARCH_VALUES // len(memory))
    return torch.cat([torch.cdist(q, memory).amin(dim=1) for q in queries.split(step)])


def synced(fn):
    """``fn`` followed by a CUDA synchronisation when a GPU is in use (so timings are the work's)."""
    def run():
        out = fn()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()
        return out
    return run


def search_vs_cdist(device: str, memories: tuple[int, ...] = SEARCH_MEMORIES,
                    queries: int = SEARCH_QUERIES) -> dict:
    """Best-of-3 seconds of the exact search and of cdist + min on ``device``; both must agree."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(queries, 64, generator=g).to(device)
    rows = []
    for m in memories:
        memory = torch.randn(m, 64, generator=g).to(device)
        ours_fn = synced(lambda memory=memory: nearest_distances(memory, q)[:, 0])
        base_fn = synced(lambda memory=memory: cdist_min(memory, q))
        ours_fn(), base_fn()                                         # warm-up
        t_ours, ours = timed(ours_fn, repeat=3)
        t_base, base = timed(base_fn, repeat=3)
        gap = float((ours - base).abs().max())
        assert gap < 1e-3, f"exact search and cdist disagree by {gap:.2e} at {m} memory vectors"
        rows.append({"memory": m, "queries": queries, "ours_s": t_ours, "cdist_min_s": t_base,
                     "ratio": t_base / t_ours, "max_gap": gap})
        print(f"  {m:>9} memory vectors: exact search ({search_method('auto', device)}) {1e3 * t_ours:8.1f} ms, "
              f"cdist + min {1e3 * t_base:8.1f} ms ({t_base / t_ours:.2f}x)")
    facts = {"torch": torch.__version__, "device": (torch.cuda.get_device_name(0) if device == "cuda" else device),
             "method": search_method("auto", device)}
    return {"machine": facts, "rows": rows}


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [s[0] for s in res["scaling"]]
    fig, ax = plt.subplots(figsize=(5, 3.4))
    ax.loglog(n, [s[1] for s in res["scaling"]], "o-", label="matmul screen + exact tiles")
    tree = [(a, c) for a, _, c in res["scaling"] if c is not None]
    ax.loglog([a for a, _ in tree], [c for _, c in tree], "s-", label="KD-tree, one query per row")
    ax.set(xlabel="training patches in the memory", ylabel="search time for one test image (s)",
           title="Nearest-normal-patch search")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    print(f"  plot saved to {path}")


def test_patch_svdd_search(benchmark):
    train, test = make_codes(SMALL)
    benchmark.group = "patch_svdd"
    benchmark(lambda: vectorised_maps(train, test, SMALL.side))


def test_reference_search(benchmark):
    train, test = make_codes(SMALL)
    benchmark.group = "patch_svdd"
    benchmark.pedantic(lambda: reference_maps(train, test, SMALL.side), rounds=1)


def test_search_vs_cdist_on_the_cpu(benchmark):
    benchmark.group = "patch_svdd"
    res = benchmark.pedantic(lambda: search_vs_cdist("cpu", (4_096,), 512), rounds=1)
    assert res["rows"][0]["max_gap"] < 1e-3


def test_search_speedup_goal(benchmark):
    benchmark.group = "patch_svdd"
    res = benchmark.pedantic(lambda: compare(SMALL, verbose=False), rounds=1)
    assert res["max_diff"] < 1e-5 and res["ratio"] >= GOAL, res


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="128 px images, smaller memories")
    parser.add_argument("--plot", type=Path, default=Path("_build/bench/patch_svdd_search.png"))
    parser.add_argument("--json", type=Path, default=SEARCH_JSON,
                        help="where to write the numbers the Patch SVDD chapter reads")
    parser.add_argument("--device", help="time the exact search against cdist + min on this device instead")
    parser.add_argument("--peak-of", choices=("ours", "ref"), help=argparse.SUPPRESS)  # measure_peak
    args = parser.parse_args(argv)
    size = SMALL if args.small else FULL
    if args.device:
        print(f"exact nearest search vs cdist + min on {args.device}")
        res = search_vs_cdist(args.device, (4_096, 16_384) if args.small else SEARCH_MEMORIES,
                              1_024 if args.small else SEARCH_QUERIES)
        if args.device != "cpu":
            out = SEARCH_JSON.with_name(f"nearest_search_{torch.device(args.device).type}.json")
            out.write_text(json.dumps(res, indent=1) + "\n")
            print(f"  wrote {out}")
        return
    if args.peak_of:
        print(peak_worker(size, args.peak_of))
        return
    res = compare(size)
    plot(res, args.plot)
    write_json(res, size, args.json)
    assert res["ratio"] >= GOAL, f"only {res['ratio']:.1f}x faster (goal {GOAL:.0f}x)"
    print(f"goal met: >= {GOAL:.0f}x")


def write_json(res: dict, size: Size, path: Path) -> None:
    """Save the comparison for the chapter: ``{"machine": {..., "matmul32_gflops"}, "size": {...},
    "ours_s", "ref_s", "ratio", "max_diff", "ours_peak_mb", "ref_peak_mb", "search_gflop",
    "scaling": [[patches, matmul_s, kdtree_s | null], ...]}`` (seconds; MB = 2^20 bytes of peak
    resident memory above the start; ``search_gflop``: the distance products, ``2 M Q C``, which
    a float32 matmul at ``matmul32_gflops`` bounds)."""
    data_ = {"machine": machine_facts(torch.float32), "size": asdict(size), **res}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data_, indent=1) + "\n")
    print(f"  wrote {path}")


if __name__ == "__main__":
    main()
