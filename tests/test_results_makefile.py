"""The Makefile's notebook tests never write the tracked results/, and `make stress` tests 05
and 06 under load and on one thread with the same flags as `make nbval` (dry runs only)."""
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def dry_run(target):
    """The commands `make -n target` would run (safe: these recipes call no sub-make)."""
    return subprocess.run(["make", "-n", "--no-print-directory", target], cwd=ROOT, check=True,
                          capture_output=True, text=True, timeout=60).stdout


def test_nbval_records_under_build_not_results():
    commands = dry_run("nbval")
    assert f"CVBOOK_RESULTS={ROOT}/_build/" in commands and "pytest --nbval" in commands


def test_stress_runs_05_and_06_in_both_modes_with_the_nbval_flags():
    commands = dry_run("stress")
    nbval = dry_run("nbval").split('"notebooks (nbval)" ', 1)[1].rsplit(" notebooks", 1)[0]
    for mode in ("load", "one-thread"):
        run = re.search(rf"tools\.stress {mode} -- \\\s*(.*?) \|\| status=1", commands, re.S)[1]
        assert " ".join(run.split()) == nbval + " notebooks/05_mobilenet.ipynb notebooks/06_padim.ipynb"


def test_make_test_includes_stress():
    recipe = re.search(r"^test:.*\n\t(.*)$", (ROOT / "Makefile").read_text(), re.M)[1]
    assert "stress" in recipe.split()
