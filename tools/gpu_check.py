"""GPU check: the tiny profile on CUDA against the committed CPU numbers, the smoke run on CUDA.

    python -m tools.gpu_check [--device cuda|cpu] [--jobs N] [--chapters 03 06 ...]
                              [--no-nbval] [--no-smoke] [--write-results] [notebooks ...]

(a) Every chapter's **tiny** profile runs with ``DEVICE=<device>`` through papermill into
``_build/gpu/``; the numbers it records (into a temporary results folder) are compared with the
committed ``results/<chapter>.tiny.json`` claim by claim within :func:`tolerance_for`.
(b) Beside them (``--jobs N`` runs N notebooks at once), the smoke run of :mod:`tools.smoke`
executes each chapter's full-profile code path on ``<device>``; it records each chapter's time
per training step and per image (:mod:`tools.step_timer`). (c) nbval then re-runs the executed
tiny copies in lax mode (their numbers go to a temporary folder, never to ``results/``).
One table sums it up (chapter, tiny time, claims compared, claims outside tolerance, smoke)
and ``_build/gpu/summary.json`` keeps it. ``--write-results`` (CUDA only) also writes it to
``results/gpu-check.json``, which the book's pages read (device, torch version, date, per
chapter); that file is written by this tool, never by hand (``--record SUMMARY`` writes it from
the ``summary.json`` of a CUDA run made on another machine, after checking that it is one). It
stops with one message on a
machine without CUDA; ``--device cpu`` rehearses the whole check there (the numbers must then
equal the committed ones).

It runs in whatever Python it is started with (``make gpu-check`` uses ``.venv``;
``make gpu-check BIN=/path/to/bin`` uses an existing environment, as a self-hosted runner with its
own CUDA build of torch wants).

Which claims may differ on a GPU, and why. The tiny profile runs with the book's ``strict``
numerics (:func:`utils.config.numerics_for`: TF32 off, deterministic algorithms), so a GPU rounds
float32 like a CPU and only the order of its sums differs. Counts and closed-form numbers
(parameters, multiply-adds) cannot change: they must agree to 1e-6 relative. Measured quality of
fixed features (AUROC, localisation, pointing game) moves by a few thousandths: 0.02 absolute on a
[0, 1] scale, 2 points on a percentage. Anything trained by SGD amplifies rounding differences
from the first step, at worst like a change of seed: 5 percentage points (0.05 on [0, 1]). The
seeds justify it: the trained claims are means over 3-5 seeds whose spread is at most 2.2 points
(BoostLU chapter, per-seed sd), so two runs whose seeds diverged completely differ by less than
3 x sqrt(2) x 2.2 / sqrt(5) = 4.2 points. mAP gains in "points" are percentage points. Timings are
never recorded as claims.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import math
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tools import smoke
from tools.run_notebooks import NOTEBOOKS, papermill_run
from utils.config import DATA_ENV, NUMERICS_ENV, PROGRESS_ENV
from utils.results import RESULTS_ENV

GPU_OUTPUT = ROOT / "_build" / "gpu"
COMMITTED_RESULTS = ROOT / "results"
GPU_RESULTS = COMMITTED_RESULTS / "gpu-check.json"
#: Claims about something trained by SGD (case-sensitive: "mAP" is a metric, "map" is not).
TRAINED = re.compile(r"\b(accuracy|Accuracy|mAP|trained|fine-tuned|scratch|training|epochs?|loss)\b")
PERCENT_UNITS = ("%", "points")


def tolerance_for(row: dict) -> tuple[str, float]:
    """(kind, absolute tolerance) for one recorded claim; see the module docstring."""
    claim, unit, ours = row["claim"], row.get("unit") or "", abs(row["ours"])
    if unit in ("M", "params", "mult-adds", "count") or "parameters" in claim or "mult-adds" in claim:
        return "count", 1e-6 * max(ours, 1.0)
    trained = TRAINED.search(claim) is not None
    percent = unit in PERCENT_UNITS
    if trained:
        return "trained", 5.0 if percent else 0.05
    return "measured", 2.0 if percent else 0.02


def compare(committed: list[dict], gpu: list[dict]) -> list[str]:
    """Lines describing every claim outside its tolerance, or missing on either side."""
    problems = []
    on_gpu = {r["claim"]: r for r in gpu}
    for row in committed:
        other = on_gpu.get(row["claim"])
        if other is None:
            problems.append(f"{row['claim']!r}: recorded on CPU, not on GPU")
            continue
        kind, tol = tolerance_for(row)
        diff = abs(other["ours"] - row["ours"])
        if not math.isfinite(other["ours"]) or diff > tol:
            problems.append(f"{row['claim']!r} ({kind}): CPU {row['ours']:.6g}, GPU {other['ours']:.6g}, "
                            f"|diff| {diff:.3g} > {tol:.3g}")
    problems += [f"{claim!r}: recorded on GPU only" for claim in on_gpu.keys() - {r["claim"] for r in committed}]
    return problems


def device_or_exit(device: str) -> str:
    """A description of ``device``; stops with one message when CUDA is asked for and absent."""
    import torch

    if device != "cuda":
        return f"{device} (a rehearsal of the check's logic: the numbers must equal the committed ones)"
    if not torch.cuda.is_available():
        sys.exit(f"gpu-check needs a CUDA GPU, and torch {torch.__version__} sees none on this machine "
                 "(torch.cuda.is_available() is False). Run it on a machine with a GPU and a CUDA build of torch.")
    return torch.cuda.get_device_name(0)


def select_notebooks(paths: list[Path], chapters: list[str]) -> list[Path]:
    """The notebooks to check: ``paths`` if given, else every ``notebooks/NN_*.ipynb``, kept to the
    ``chapters`` (two-digit prefixes such as ``06``) when any are named."""
    chosen = [p.resolve() for p in paths] or sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    if chapters:
        unknown = [c for c in chapters if not any(p.name.startswith(f"{c}_") for p in chosen)]
        if unknown:
            raise SystemExit(f"gpu-check: no chapter {', '.join(unknown)} among "
                             f"{', '.join(p.name for p in chosen)}")
        chosen = [p for p in chosen if p.name[:2] in chapters]
    missing = [str(p) for p in chosen if not p.is_file()]
    if missing:
        raise SystemExit(f"gpu-check: no notebook at {', '.join(missing)}")
    return chosen


# --- one notebook: run in this process or in a worker ------------------------------------------------

def run_tiny(path: Path, output: Path, device: str, results_dir: Path) -> dict[str, Any]:
    """Execute ``path``'s tiny profile on ``device`` into ``output``, its numbers into
    ``results_dir``; return {seconds, error (None on success)}."""
    output.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        papermill_run(path, output / path.name, {"PROFILE": "tiny", "DEVICE": device}, NOTEBOOKS,
                      {RESULTS_ENV: str(results_dir), DATA_ENV: None})
        error = None
    except Exception as err:  # noqa: BLE001 - report every notebook, then fail
        error = f"execution failed: {type(err).__name__}: {str(err).strip()[:300]}"
    return {"seconds": time.perf_counter() - start, "error": error}


def run_smoke(path: Path, output: Path, data_dir: Path, env: dict[str, str | None],
              device: str) -> dict[str, Any]:
    """Execute ``path``'s smoke run on ``device`` into ``output``; return {seconds, error, and
    the step timer's steps, seconds_per_step, images, seconds_per_image}. ``env`` may set
    ``$CVBOOK_NUMERICS`` (``--smoke-numerics``)."""
    output.mkdir(parents=True, exist_ok=True)
    times = (output / f"{path.stem}.steps.json").resolve()  # the kernel runs in notebooks/
    times.unlink(missing_ok=True)
    start = time.perf_counter()
    error = smoke.smoke_one(path, output, data_dir, env, device, step_times=times)
    out = {"seconds": time.perf_counter() - start, "error": error}
    if times.exists():
        out.update(json.loads(times.read_text()))
    return out


def run_all(tasks: list[tuple[str, Path, Callable[..., dict], tuple]], jobs: int) -> dict[tuple[str, str], dict]:
    """Run every ``(kind, path, function, args)`` task, ``jobs`` at a time (in fresh worker
    processes when ``jobs > 1``: each notebook run sets its own environment); return
    ``{(kind, stem): result}``, printing a line as each finishes."""
    results: dict[tuple[str, str], dict] = {}

    def done(kind: str, path: Path, result: dict) -> None:
        results[kind, path.stem] = result
        status = "ok" if result["error"] is None else "FAILED"
        print(f"gpu-check: {kind} {path.name} {status} in {result['seconds']:.0f} s", flush=True)

    if jobs <= 1:
        for kind, path, function, args in tasks:
            done(kind, path, function(path, *args))
        return results
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        futures = {pool.submit(function, path, *args): (kind, path) for kind, path, function, args in tasks}
        for future in concurrent.futures.as_completed(futures):
            kind, path = futures[future]
            done(kind, path, future.result())
    return results


# --- summary -----------------------------------------------------------------------------------------

def chapter_rows(paths: list[Path], runs: dict[tuple[str, str], dict], results_dir: Path,
                 smoked: bool) -> dict[str, dict[str, Any]]:
    """Per chapter: tiny seconds, claims compared, the problems (claims outside tolerance,
    missing ones or the execution error) and the smoke run's outcome and timings."""
    rows = {}
    for path in paths:
        tiny = runs["tiny", path.stem]
        committed_file = COMMITTED_RESULTS / f"{path.stem}.tiny.json"
        committed = json.loads(committed_file.read_text()) if committed_file.exists() else []
        if tiny["error"] is None:
            run_file = results_dir / f"{path.stem}.tiny.json"
            problems = compare(committed, json.loads(run_file.read_text()) if run_file.exists() else [])
        else:
            problems = [tiny["error"]]
        row = {"tiny_seconds": round(tiny["seconds"], 1), "tiny_ok": tiny["error"] is None,
               "claims_compared": len(committed), "claims_outside": len(problems) if tiny["error"] is None else None,
               "problems": problems, "smoke_ok": None}
        if smoked:
            s = runs["smoke", path.stem]
            row.update({"smoke_ok": s["error"] is None, "smoke_seconds": round(s["seconds"], 1),
                        "smoke_error": s["error"]},
                       **{k: s.get(k) for k in ("steps", "seconds_per_step", "images", "seconds_per_image")})
        rows[path.stem] = row
    return rows


def summary_table(rows: dict[str, dict[str, Any]]) -> str:
    """The one table the check prints: chapter, tiny time, claims, smoke outcome and timings."""
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{1e3 * value:.1f}"

    header = ("chapter", "tiny (s)", "claims", "outside", "smoke", "ms/step", "ms/image")
    lines = [header]
    for stem, r in rows.items():
        outside = "failed" if r["claims_outside"] is None else str(r["claims_outside"])
        smoke_ok = {None: "skipped", True: "ok", False: "FAILED"}[r["smoke_ok"]]
        lines.append((stem, f"{r['tiny_seconds']:.0f}", str(r["claims_compared"]), outside, smoke_ok,
                      ms(r.get("seconds_per_step")), ms(r.get("seconds_per_image"))))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in
                               enumerate(zip(line, widths))) for line in lines)


def machine(device: str, description: str) -> dict[str, str]:
    """Device (name as CUDA reports it), torch version and the date, for the summary file."""
    import torch

    return {"device": description if device == "cuda" else device, "device_type": device,
            "torch": torch.__version__, "date": datetime.date.today().isoformat()}


def run_nbval(executed: list[Path], results_dir: Path) -> int:
    """nbval in lax mode over the executed copies (their numbers go to ``results_dir``)."""
    env = {**os.environ, RESULTS_ENV: str(results_dir), PROGRESS_ENV: "0"}
    env.pop(DATA_ENV, None)
    return subprocess.call([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax",
                            "--nbval-current-env", *map(str, executed)], cwd=ROOT, env=env)


def record(summary_path: Path, target: Path | None = None) -> Path:
    """Write ``results/gpu-check.json`` from a ``summary.json`` this tool wrote on a CUDA machine;
    a summary of a CPU rehearsal, or a file without the tool's fields, raises ``SystemExit``."""
    target = target or GPU_RESULTS
    summary = json.loads(Path(summary_path).read_text())
    needed = {"device", "device_type", "torch", "date", "seconds", "nbval_lax", "chapters"}
    if not needed <= summary.keys():
        raise SystemExit(f"gpu-check: {summary_path} is not a summary written by tools.gpu_check "
                         f"(missing {', '.join(sorted(needed - summary.keys()))})")
    if summary["device_type"] != "cuda":
        raise SystemExit(f"gpu-check: {summary_path} records a run on {summary['device_type']}, not CUDA; "
                         "only a GPU run is recorded")
    target.write_text(json.dumps(summary, indent=1) + "\n")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: notebooks/NN_*.ipynb")
    parser.add_argument("--chapters", nargs="+", default=[], help="only these chapters, e.g. 00 06")
    parser.add_argument("--jobs", type=int, default=1, help="notebook runs at once (tiny and smoke side by side)")
    parser.add_argument("--no-nbval", action="store_true", help="skip the nbval (lax) re-run")
    parser.add_argument("--no-smoke", action="store_true", help="skip the smoke run")
    parser.add_argument("--device", default="cuda", help="cuda (default); cpu rehearses the check without a GPU")
    parser.add_argument("--output", type=Path, default=GPU_OUTPUT, help="executed notebooks and summary.json")
    parser.add_argument("--write-results", action="store_true",
                        help=f"also write {GPU_RESULTS.relative_to(ROOT)} (CUDA runs only)")
    parser.add_argument("--smoke-numerics", choices=("fast", "strict"), default="fast",
                        help="numerics of the smoke run: the full profile's own (fast: TF32 on), or strict")
    parser.add_argument("--record", type=Path, metavar="SUMMARY",
                        help=f"only write {GPU_RESULTS.relative_to(ROOT)} from a CUDA run's summary.json")
    args = parser.parse_args(argv)
    if args.record:
        print(f"wrote {record(args.record).relative_to(ROOT)} from {args.record}")
        return 0
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    if args.write_results and args.device != "cuda":
        parser.error(f"--write-results records a GPU run; with --device {args.device} nothing is written")
    description = device_or_exit(args.device)
    print(f"gpu-check on {description}")
    paths = select_notebooks(args.notebooks, args.chapters)
    args.output = args.output.resolve()
    args.output.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cvbook-gpu-") as tmp:
        tmp = Path(tmp)
        tasks = [("tiny", p, run_tiny, (args.output, args.device, tmp / "results")) for p in paths]
        if not args.no_smoke:
            data_dir, env = smoke.prepare_world(tmp / "smoke")
            env = {**env, NUMERICS_ENV: args.smoke_numerics}
            (args.output / "smoke").mkdir(exist_ok=True)
            tasks += [("smoke", p, run_smoke, (args.output / "smoke", data_dir, env, args.device)) for p in paths]
        runs = run_all(tasks, args.jobs)
        rows = chapter_rows(paths, runs, tmp / "results", not args.no_smoke)
        nbval = "skipped"
        if not args.no_nbval:
            executed = [args.output / p.name for p in paths if runs["tiny", p.stem]["error"] is None]
            nbval = "passed" if executed and run_nbval(executed, tmp / "nbval-results") == 0 else "failed"
    summary = {**machine(args.device, description), "seconds": round(time.perf_counter() - start, 1),
               "jobs": args.jobs, "nbval_lax": nbval, "smoke_numerics": None if args.no_smoke else args.smoke_numerics,
               "chapters": rows}
    (args.output / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(summary_table(rows))
    print(f"nbval (lax): {nbval}; {summary['seconds']:.0f} s in all; summary in "
          f"{args.output / 'summary.json'}")
    failures = [(stem, p) for stem, r in rows.items() for p in r["problems"]]
    failures += [(stem, f"smoke run: {r['smoke_error']}") for stem, r in rows.items() if r["smoke_ok"] is False]
    failures += [("nbval (lax)", "see the pytest output above")] if nbval == "failed" else []
    for name, problem in failures:
        print(f"GPU CHECK FAILURE: {name}: {problem}", file=sys.stderr)
    if args.write_results:
        GPU_RESULTS.write_text(json.dumps(summary, indent=1) + "\n")
        print(f"wrote {GPU_RESULTS.relative_to(ROOT)}")
    print("gpu-check: " + ("FAILED" if failures else f"all notebooks agree with the committed CPU numbers "
                                                      f"on {args.device}"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
