"""Mutation testing of the shared package with mutmut (outside ``make test``: it is slow).

    python -m tools.mutation cam saliency        # one or more modules of utils/
    python -m tools.mutation --report            # only rewrite results/mutation.md

For each module, a copy of ``utils/``, ``tests/``, ``tools/`` and ``pytest.ini`` is made in
``_build/mutation/<module>/`` with a ``setup.cfg`` that tells mutmut to mutate only
``utils/<module>.py`` and to run only the test files that exercise it (:data:`TESTS`), so each
mutant costs a few seconds. mutmut runs there with one child process (``--max-children``,
default 1: the CPU is shared). Its counts (``mutmut export-cicd-stats``), the commit of the
working tree, whether the module had uncommitted changes and the wall time go to
``results/mutation/scores.json``; ``results/mutation.md`` is written from that file, with the
surviving mutants listed. The copy is kept between runs, so mutmut re-tests only mutants of
functions whose code changed (delete the folder for a clean run).
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "_build" / "mutation"
RESULTS_JSON = ROOT / "results" / "mutation" / "scores.json"  # not results/*.json: those are chapter results
RESULTS_MD = ROOT / "results" / "mutation.md"

#: The test files run against each module's mutants (files that do not exist are left out).
TESTS = {
    "cam": ["test_cam.py", "test_gradcam.py", "test_boostlu.py", "test_camloss.py", "test_bad_inputs.py",
            "test_mutants_cam.py"],
    "saliency": ["test_saliency.py", "test_bad_inputs.py", "test_mutants_saliency.py"],
    "padim": ["test_anomaly.py", "test_errors.py", "test_hardening.py", "test_padim_memory.py",
              "test_mutants_padim.py"],
    "anomaly": ["test_anomaly.py", "test_errors.py", "test_hardening.py", "test_metrics_anomaly.py",
                "test_mutants_anomaly.py"],
    "registry": ["test_registry.py", "test_registry_faults.py", "test_mutants_registry.py"],
}
COPIED = ("utils", "tests", "tools", "pytest.ini")
#: Surviving mutants that cannot change any result here (or only on a GPU), with the reason, one JSON file per module
#: (``{mutant name: reason}``), so modules can be worked on at once. They are shown in the report
#: and still count as survived in the score. Names are mutmut's and follow the code they were read on.
EQUIVALENTS_DIR = ROOT / "tools" / "mutation_equivalents"


def equivalents() -> dict[str, str]:
    """Every module's argued-equivalent mutants: mutant name -> reason."""
    found: dict[str, str] = {}
    for path in sorted(EQUIVALENTS_DIR.glob("*.json")):
        found.update(json.loads(path.read_text()))
    return found


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()


def prepare(module: str) -> tuple[Path, list[str]]:
    """Fresh copy of the sources and tests in ``_build/mutation/<module>`` (mutmut's own
    ``mutants/`` folder there is kept) and its ``setup.cfg``; returns the folder and tests."""
    if module not in TESTS:
        raise SystemExit(f"unknown module {module!r}; choose from {', '.join(TESTS)}")
    work = WORK / module
    work.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")  # tests/benchmarks too: a test runs one
    for name in COPIED:
        source, target = ROOT / name, work / name
        if target.is_dir():
            shutil.rmtree(target)
        if source.is_dir():
            shutil.copytree(source, target, ignore=ignore)
        else:
            shutil.copy2(source, target)
    tests = [f"tests/{name}" for name in TESTS[module] if (ROOT / "tests" / name).exists()]
    lines = ["[mutmut]", "source_paths = utils/", f"only_mutate = utils/{module}.py",
             "also_copy =", *(f"    {name}" for name in COPIED),
             "pytest_add_cli_args = -p no:cacheprovider -x -q",
             "pytest_add_cli_args_test_selection =", *(f"    {t}" for t in tests),
             "use_git_change_detection = false",
             # torch's thread pools do not survive a plain fork (children hung at 0 % CPU)
             "process_isolation = forkserver",
             # a mutant slower than 3x its tests plus 20 s counts as a timeout (caught, not survived)
             "timeout_multiplier = 3.0", "timeout_constant = 20.0", ""]
    (work / "setup.cfg").write_text("\n".join(lines))
    return work, tests


#: Every mutant's verdict after the last run, beside mutmut's state (see :func:`run`).
VERDICTS = "verdicts.json"


def _saved_verdicts(module: str) -> dict[str, str]:
    path = WORK / module / VERDICTS
    return json.loads(path.read_text()) if path.exists() else {}


def _statuses(work: Path, mutmut: Path) -> dict[str, str]:
    """Mutant name -> mutmut's verdict (killed, survived, timeout, no tests, not checked, ...)."""
    out = subprocess.run([str(mutmut), "results", "--all", "true"], cwd=work, capture_output=True, text=True,
                         check=True).stdout
    return dict(line.strip().rsplit(": ", 1) for line in out.splitlines() if ": " in line)


def run(module: str, max_children: int, survivors_only: bool = False, time_limit: float | None = None) -> dict:
    """Run mutmut for ``utils/<module>.py``; return its counts, score and wall time.

    ``survivors_only``: re-test only the mutants that survived the last run or that no test
    reached (after tests were added: mutmut keeps its verdicts while the module's code is unchanged). ``time_limit``:
    stop mutmut after that many seconds; the mutants not reached count as "not checked"."""
    mutmut = Path(sys.executable).with_name("mutmut")
    names, before = [], {}
    if survivors_only:
        before = {**_statuses(WORK / module, mutmut), **_saved_verdicts(module)}
        names = [n for n, status in before.items() if status in ("survived", "no tests")]
    work, tests = prepare(module)
    start = time.monotonic()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CVBOOK_PROGRESS": "0"}
    process = subprocess.Popen([str(mutmut), "run", "--max-children", str(max_children), *names], cwd=work,
                               env=env, start_new_session=True)
    try:
        process.wait(timeout=time_limit)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGTERM)  # mutmut and its own workers only
        process.wait()
    seconds = time.monotonic() - start
    statuses = _statuses(work, mutmut)
    # mutmut forgets every verdict when the test files change; a rerun of the survivors only adds
    # tests, so a mutant killed before is still killed: keep the earlier verdict of each mutant
    # this run did not re-test
    statuses.update({n: s for n, s in before.items()
                     if s in ("killed", "timeout") and statuses.get(n) == "not checked"})
    (work / VERDICTS).write_text(json.dumps(statuses, indent=0, sort_keys=True))
    stats = {key: sum(1 for s in statuses.values() if s.replace(" ", "_") == key)
             for key in ("killed", "survived", "timeout", "suspicious", "no_tests", "not_checked", "segfault")}
    stats["total"] = len(statuses)
    # a mutant no test reaches is a mutant the tests miss: it counts against the score
    tested = stats["total"] - stats["not_checked"]
    return {
        **stats,
        "complete": stats["not_checked"] == 0,
        "score_percent": round(100 * (stats["killed"] + stats["timeout"]) / tested, 1) if tested else None,
        "wall_seconds": round(seconds),
        "survivors_rerun_only": survivors_only,
        "max_children": max_children,
        "commit": _git("rev-parse", "--short", "HEAD"),
        "uncommitted_changes": bool(_git("status", "--porcelain", "--", f"utils/{module}.py")),
        "tests": tests,
        "not_killed": [f"{n}: {s}" for n, s in statuses.items() if s not in ("killed", "not checked")],
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def _load_results() -> dict[str, dict]:
    return json.loads(RESULTS_JSON.read_text()) if RESULTS_JSON.exists() else {}


@contextlib.contextmanager
def _results_lock() -> Iterator[None]:
    """Hold an exclusive lock on the scores file's sibling lock file (several runs at once)."""
    RESULTS_JSON.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS_JSON.with_suffix(".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_report(results: dict[str, dict]) -> None:
    """``results/mutation.md`` from the per-module results."""
    intro = ("Written by `python -m tools.mutation` (mutmut 3.8.1) from `results/mutation/scores.json`. "
             "Score = (killed + timeout) / mutants tested, where a mutant that no test reaches (\"no tests\") "
             "counts as tested and not killed, and so do the survivors explained below (equivalent mutants, or ones only a GPU could kill); mutants a "
             "stopped run did not reach (\"not reached\") are left out, and the row says the run was partial.")
    lines = ["# Mutation score of the shared package", "", intro, "",
             ("| module | mutants | killed | survived | timeout | no tests | not reached | score | wall time "
              "| commit | date |"), "|---|---|---|---|---|---|---|---|---|---|---|"]
    for module, r in sorted(results.items()):
        commit = r["commit"] + (" + uncommitted edits" if r["uncommitted_changes"] else "")
        if r.get("not_checked"):
            commit += " (stopped early: partial)"
        lines.append(f"| {module} | {r['total']} | {r['killed']} | {r['survived']} | {r['timeout']} | "
                     f"{r['no_tests']} | {r.get('not_checked', 0)} | {r['score_percent']} % | {r['wall_seconds']} s | {commit} | "
                     f"{r['date']} |")
    equivalent = equivalents()
    for module, r in sorted(results.items()):
        lines += ["", f"## {module}", "", "Tests: " + ", ".join(f"`{t}`" for t in r["tests"]), ""]
        lines += [f"- `{s}`" + (f" (why it survives: {equivalent[s.split(': ')[0]]})" if s.split(": ")[0] in equivalent
                                 else "") for s in r["not_killed"]] or ["Every mutant was killed."]
    RESULTS_MD.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", help=f"modules of utils/ ({', '.join(TESTS)})")
    parser.add_argument("--max-children", type=int, default=1)
    parser.add_argument("--report", action="store_true", help="only rewrite results/mutation.md")
    parser.add_argument("--survivors", action="store_true", help="re-test only the last run's survivors")
    parser.add_argument("--time-limit", type=float, default=None, help="seconds per module (partial result)")
    args = parser.parse_args(argv)
    for module in [] if args.report else args.modules:
        with _results_lock():
            before = _load_results().get(module, {})
        # a survivors-only rerun, or one that resumes a stopped run, adds to the earlier run's time
        resumed = args.survivors or before.get("complete") is False
        wall = before.get("wall_seconds", 0) if resumed else 0
        r = run(module, args.max_children, args.survivors, args.time_limit)
        r["wall_seconds"] += wall
        with _results_lock():  # modules may run at once: re-read, change one row, replace
            results = _load_results()
            results[module] = r
            tmp = RESULTS_JSON.with_suffix(".tmp")
            tmp.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
            tmp.replace(RESULTS_JSON)
        print(f"{module}: {r['killed']}/{r['total']} killed, {r['survived']} survived, "
              f"{r['timeout']} timeouts, score {r['score_percent']} %, {r['wall_seconds']} s")
    with _results_lock():
        write_report(_load_results())


if __name__ == "__main__":
    main()
