"""GPU check: the tiny profile on CUDA against the committed CPU numbers, then the smoke run on CUDA.

    python -m tools.gpu_check [--no-nbval] [--no-smoke] [notebooks ...]

(a) Every chapter's **tiny** profile runs with ``DEVICE="cuda"`` through papermill into
``_build/gpu/``; the numbers it records (into a temporary results folder) are compared with the
committed ``results/<chapter>.tiny.json`` claim by claim within :func:`tolerance_for`; nbval then
re-runs the executed copies in lax mode. (b) The smoke run of ``tools.smoke`` runs with
``--device cuda``. It stops with one message on a machine without CUDA.

It runs in whatever Python it is started with (``make gpu-check`` uses ``.venv``;
``make gpu-check BIN=/path/to/bin`` uses an existing environment, as a self-hosted runner with its
own CUDA build of torch wants).

Which claims may differ on a GPU, and why: cuDNN picks other convolution algorithms and (by
default) TF32 arithmetic, so features differ from the CPU's in the 3rd-4th significant digit.
Counts and closed-form numbers (parameters, multiply-adds) cannot change: they must agree to
1e-6 relative. Measured quality of fixed features (AUROC, localisation, pointing game) moves by a
few thousandths: 0.02 absolute on a [0, 1] scale, 2 points on a percentage. Anything trained by
SGD amplifies rounding differences from the first step: 5 percentage points (0.05 on [0, 1]).
Timings are never recorded as claims.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tools import smoke  # noqa: E402
from tools.run_notebooks import NOTEBOOKS, papermill_run  # noqa: E402
from utils.config import DATA_ENV  # noqa: E402
from utils.results import RESULTS_ENV  # noqa: E402

GPU_OUTPUT = ROOT / "_build" / "gpu"
COMMITTED_RESULTS = ROOT / "results"
#: Claims about something trained by SGD (case-sensitive: "mAP" is a metric, "map" is not).
TRAINED = re.compile(r"\b(accuracy|Accuracy|mAP|trained|fine-tuned|scratch|training|epochs?|loss)\b")


def tolerance_for(row: dict) -> tuple[str, float]:
    """(kind, absolute tolerance) for one recorded claim; see the module docstring."""
    claim, unit, ours = row["claim"], row.get("unit") or "", abs(row["ours"])
    if unit in ("M", "params", "mult-adds", "count") or "parameters" in claim or "mult-adds" in claim:
        return "count", 1e-6 * max(ours, 1.0)
    trained = TRAINED.search(claim) is not None
    percent = unit == "%"
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: notebooks/NN_*.ipynb")
    parser.add_argument("--no-nbval", action="store_true", help="skip the nbval (lax) re-run")
    parser.add_argument("--no-smoke", action="store_true", help="skip the smoke run on CUDA")
    parser.add_argument("--device", default="cuda", help="cuda (default); cpu rehearses the logic without a GPU")
    parser.add_argument("--output", type=Path, default=GPU_OUTPUT, help="where executed notebooks go")
    args = parser.parse_args(argv)
    print(f"gpu-check on {device_or_exit(args.device)}")
    paths = [p.resolve() for p in args.notebooks] or sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    args.output.mkdir(parents=True, exist_ok=True)
    failures: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory(prefix="cvbook-gpu-") as tmp:
        env = {RESULTS_ENV: tmp, DATA_ENV: None}
        for path in paths:
            start = time.perf_counter()
            try:
                papermill_run(path, args.output / path.name, {"PROFILE": "tiny", "DEVICE": args.device}, NOTEBOOKS, env)
            except Exception as err:  # noqa: BLE001 - report every notebook, then fail
                failures[path.name] = [f"execution failed: {type(err).__name__}: {str(err).strip()[:300]}"]
                print(f"gpu: {path.name} FAILED", flush=True)
                continue
            committed_file = COMMITTED_RESULTS / f"{path.stem}.tiny.json"
            gpu_file = Path(tmp) / f"{path.stem}.tiny.json"
            committed = json.loads(committed_file.read_text()) if committed_file.exists() else []
            gpu = json.loads(gpu_file.read_text()) if gpu_file.exists() else []
            problems = compare(committed, gpu)
            if problems:
                failures[path.name] = problems
            print(f"gpu: {path.name} tiny on {args.device} in {time.perf_counter() - start:.0f} s, "
                  f"{len(committed)} claims compared, {len(problems)} outside tolerance", flush=True)
    if not args.no_nbval:
        executed = [str(args.output / p.name) for p in paths if (args.output / p.name).exists()]
        code = subprocess.call([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax",
                                "--nbval-current-env", *executed], cwd=ROOT)
        if code:
            failures["nbval (lax)"] = [f"pytest exited with {code}"]
    if not args.no_smoke:
        code = smoke.main(["--device", args.device, "--output", str(args.output / "smoke"),
                           *[str(p) for p in paths]])
        if code:
            failures["smoke on cuda"] = ["see the SMOKE FAILURE lines above"]
    for name, problems in failures.items():
        for problem in problems:
            print(f"GPU CHECK FAILURE: {name}: {problem}", file=sys.stderr)
    print("gpu-check: " + ("FAILED" if failures else "all notebooks agree with the committed CPU numbers"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
