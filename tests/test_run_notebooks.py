import nbformat
import pytest

from tools import run_notebooks


def make_nb(path, source="x = 1"):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell('PROFILE = "tiny"'), nbformat.v4.new_code_cell(source)]
    nb.cells[0].metadata["tags"] = ["parameters"]
    nbformat.write(nb, path)
    return nb


def stamp(path, profile="tiny"):
    nb = nbformat.read(path, as_version=4)
    nb.metadata["cvbook"] = {"source_sha256": run_notebooks.source_digest(nb), "profile": profile}
    nbformat.write(nb, path)


def test_needs_run_tracks_source_and_profile(tmp_path):
    path = tmp_path / "01_x.ipynb"
    make_nb(path)
    assert run_notebooks.needs_run(path, "tiny")  # never executed
    stamp(path)
    assert not run_notebooks.needs_run(path, "tiny")
    assert run_notebooks.needs_run(path, "full")  # parameters changed
    nb = nbformat.read(path, as_version=4)
    nb.cells[1].source = "x = 2"
    nbformat.write(nb, path)
    assert run_notebooks.needs_run(path, "tiny")  # source changed


def test_outputs_and_injected_parameters_do_not_count(tmp_path):
    path = tmp_path / "01_x.ipynb"
    make_nb(path)
    stamp(path)
    nb = nbformat.read(path, as_version=4)
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", text="1\n")]
    injected = nbformat.v4.new_code_cell('PROFILE = "tiny"')
    injected.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(1, injected)
    nbformat.write(nb, path)
    assert not run_notebooks.needs_run(path, "tiny")


def test_main_reports_missing_notebook(tmp_path, capsys):
    assert run_notebooks.main([str(tmp_path / "nope.ipynb")]) == 2
    assert "no notebook" in capsys.readouterr().err


def make_profile_nb(path, body):
    """A notebook whose second cell runs ``body`` with PROFILE defined by its parameters cell."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell('PROFILE = "tiny"'), nbformat.v4.new_code_cell(body)]
    nb.cells[0].metadata["tags"] = ["parameters"]
    nbformat.write(nb, path)
    return path.read_bytes()


def test_failed_tiny_run_leaves_the_committed_notebook_untouched(tmp_path):
    from papermill.exceptions import PapermillExecutionError

    path = tmp_path / "01_x.ipynb"
    before = make_profile_nb(path, 'raise RuntimeError("broken on purpose")')
    with pytest.raises(PapermillExecutionError, match="broken on purpose"):
        run_notebooks.execute(path, "tiny")
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["01_x.ipynb"]
    assert not list(run_notebooks.RUNS.glob("01_x.*")), "temporary files must be cleaned up"


def test_tiny_run_injects_tiny_even_after_a_full_run_left_its_cell(tmp_path):
    path = tmp_path / "01_x.ipynb"
    make_profile_nb(path, "print('ran with', PROFILE)")
    nb = nbformat.read(path, as_version=4)
    stale = nbformat.v4.new_code_cell('PROFILE = "full"')
    stale.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(1, stale)
    nbformat.write(nb, path)
    where, seconds = run_notebooks.execute(path, "tiny")
    assert where == path and seconds > 0
    nb = nbformat.read(path, as_version=4)
    assert not any("injected-parameters" in c.metadata.get("tags", []) for c in nb.cells)
    assert "ran with tiny" in nb.cells[-1].outputs[0]["text"]
    assert nb.metadata["cvbook"]["profile"] == "tiny" and nb.metadata["cvbook"]["seconds"] > 0
    assert not run_notebooks.needs_run(path, "tiny")


def test_full_run_writes_elsewhere_and_never_touches_the_notebook(tmp_path):
    path = tmp_path / "01_x.ipynb"
    before = make_profile_nb(path, "print('ran with', PROFILE)")
    where, _ = run_notebooks.execute(path, "full", output_dir=tmp_path / "full")
    assert path.read_bytes() == before
    assert where == tmp_path / "full" / "01_x.ipynb"
    assert "ran with full" in nbformat.read(where, as_version=4).cells[-1].outputs[0]["text"]


# --- staged results, interrupted runs, the full-profile report --------------------------------

import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from utils import results  # noqa: E402

ROOT = run_notebooks.ROOT


@pytest.fixture(autouse=True)
def private_build(tmp_path_factory, monkeypatch):
    """Run folders and full-profile copies go to a temporary folder, never the real _build/."""
    build = tmp_path_factory.mktemp("build")
    monkeypatch.setattr(run_notebooks, "RUNS", build / "runs")
    monkeypatch.setattr(run_notebooks, "FULL_OUTPUT", build / "full")
    return build


def make_chapter(path, body, claim="measured"):
    """A notebook that records ``claim`` for its chapter (in the profile it runs), then runs ``body``."""
    record = (f"import sys\nsys.path.insert(0, {str(ROOT)!r})\nfrom utils import results\n"
              f"results.record({path.stem!r}, {claim!r}, 1.0, profile=PROFILE)")
    return make_profile_nb(path, record + "\n" + body)


def claims(name):
    return [r["claim"] for r in json.loads((results.results_dir() / name).read_text())]


def test_tiny_run_replaces_the_chapter_results_whole(tmp_path):
    results.record("01_ok", "stale claim", 2.0)
    path = tmp_path / "01_ok.ipynb"
    make_chapter(path, "pass")
    run_notebooks.execute(path, "tiny")
    assert claims("01_ok.tiny.json") == ["measured"], "the run's file replaces the old one"
    assert nbformat.read(path, as_version=4).metadata["cvbook"]["profile"] == "tiny"
    assert not list(run_notebooks.RUNS.iterdir()), "the run folder is removed"


def test_failed_tiny_run_changes_no_results(tmp_path):
    results.record("01_bad", "committed claim", 2.0)
    before = (results.results_dir() / "01_bad.tiny.json").read_bytes()
    path = tmp_path / "01_bad.ipynb"
    nb_before = make_chapter(path, 'raise ValueError("late failure")')
    assert run_notebooks.main([str(path), "--force"]) == 1
    assert (results.results_dir() / "01_bad.tiny.json").read_bytes() == before
    assert path.read_bytes() == nb_before
    assert not list(run_notebooks.RUNS.iterdir())


@pytest.mark.parametrize("name, message", [("README.md", "is not a notebook"),
                                           ("broken.ipynb", "is not a readable notebook"),
                                           ("folder", "no notebook at")])
def test_bad_paths_give_one_line_naming_the_file(tmp_path, capsys, name, message):
    (tmp_path / "README.md").write_text("# not a notebook\n")
    (tmp_path / "broken.ipynb").write_text("{not json")
    (tmp_path / "folder").mkdir()
    assert run_notebooks.main([str(tmp_path / name)]) == 2
    err = capsys.readouterr().err
    assert message in err and name in err and len(err.strip().splitlines()) == 1


def test_command_line_on_a_markdown_file_exits_2_without_traceback():
    proc = subprocess.run([sys.executable, "-m", "tools.run_notebooks", "README.md"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "README.md" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_full_profile_reports_every_chapter_in_one_table(tmp_path, capsys, private_build):
    ran = tmp_path / "01_ran.ipynb"
    missing = tmp_path / "02_missing.ipynb"
    failed = tmp_path / "03_failed.ipynb"
    make_chapter(ran, "print('fine')")
    make_chapter(missing, "from utils.registry import MissingDataError\nraise MissingDataError("
                 "'pets-images: not on disk; download it from https://example.org/pets.tar\\n"
                 "and put it in /data/pets')")
    make_chapter(failed, "x = 1\nraise ValueError('first line\\nthe last line')")
    committed = {p: p.read_bytes() for p in (ran, missing, failed)}
    assert run_notebooks.main(["--profile", "full", str(ran), str(missing), str(failed)]) == 1
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err and err == ""
    table = out[out.index("| chapter"):].splitlines()
    assert table[0].replace(" ", "") == "|chapter|status|time|" and len(table) == 6
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in table[2:5]}
    assert rows["01_ran"] == "ran"
    assert rows["02_missing"] == ("missing: pets-images: not on disk; download it from "
                                  "https://example.org/pets.tar and put it in /data/pets")
    assert rows["03_failed"] == "failed: cell 1: ValueError: the last line"
    assert table[5].startswith("1 of 3 chapters ran")
    assert claims("01_ran.full.json") == ["measured"]
    assert sorted(p.name for p in results.results_dir().iterdir() if not p.name.startswith(".")) == [
        "01_ran.full.json"], "failed chapters publish nothing"
    full = private_build / "full"
    assert {p.name for p in full.glob("*.ipynb")} == {"01_ran.ipynb", "02_missing.ipynb", "03_failed.ipynb"}
    assert (full / "03_failed.log").exists()
    assert all(p.read_bytes() == before for p, before in committed.items())
    assert not list(run_notebooks.RUNS.iterdir())


def test_full_profile_exit_code_is_0_when_every_chapter_ran(tmp_path, capsys):
    path = tmp_path / "01_ran.ipynb"
    make_chapter(path, "pass")
    assert run_notebooks.main(["--profile", "full", str(path)]) == 0
    assert "| 01_ran" in capsys.readouterr().out


def test_report_table_and_durations():
    table = run_notebooks.report_table([run_notebooks.Outcome("01_a", "ran", "", 3.4),
                                        run_notebooks.Outcome("02_b", "failed", "cell 3: E: x", 75)])
    lines = table.splitlines()
    assert len(lines) == 4 and len({len(line) for line in lines}) == 1, "aligned columns"
    assert lines[2] == "| 01_a    | ran                  | 3 s        |"
    assert lines[3] == "| 02_b    | failed: cell 3: E: x | 1 min 15 s |"
    assert run_notebooks.duration(3723) == "1 h 02 min"
    long = run_notebooks.report_table([run_notebooks.Outcome("01_a", "missing", "x" * 200, 1)])
    assert long.splitlines()[2] == f"| 01_a    | missing: {'x' * 200} | 1 s  |", "long cells run on"


def test_missing_weights_count_as_missing(tmp_path):
    from papermill.exceptions import PapermillExecutionError

    path = tmp_path / "01_x.ipynb"
    make_profile_nb(path, "pass")
    err = PapermillExecutionError(1, 1, "MissingWeightsError: resnet18 ...", "MissingWeightsError",
                                  "resnet18: download it from https://example.org", [])
    assert run_notebooks.describe_failure(err, path) == (
        "missing", "resnet18: download it from https://example.org")


def test_a_signal_inside_a_commit_waits_for_its_end():
    done = []
    with run_notebooks.handle_signals():
        with pytest.raises(run_notebooks.Interrupted) as caught:
            with run_notebooks.signals_deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.2)
                done.append("commit finished")
    assert done == ["commit finished"] and caught.value.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_stale_folders_of_dead_runners_are_removed(private_build):
    runs = private_build / "runs"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = runs / f"05_x.{dead.pid}.abc123"
    live = runs / f"05_x.{os.getpid()}.def456"
    other = runs / "05_x.not-a-run"
    for folder in (stale, live, other):
        (folder / "results").mkdir(parents=True)
    assert run_notebooks.remove_stale_runs() == [stale]
    assert live.exists() and other.exists()


# The runner in a child process, in a throw-away git repository laid out like this one.
RUNNER = ("import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); "
          "from tools import run_notebooks as r; r.RUNS = Path(sys.argv[2]); "
          "r.FULL_OUTPUT = r.RUNS.parent / 'full'; sys.exit(r.main(sys.argv[3:]))")


def fake_repo(tmp_path):
    """A git repository with notebooks/99_sleepy.ipynb (records a claim, writes the kernel's PID
    to kernel.pid, then sleeps) and its committed results; everything committed."""
    repo = tmp_path / "repo"
    (repo / "notebooks").mkdir(parents=True)
    (repo / ".gitignore").write_text((ROOT / ".gitignore").read_text())
    path = repo / "notebooks" / "99_sleepy.ipynb"
    make_chapter(path, f"import os, time\nopen({str(repo / 'kernel.pid')!r}, 'w').write(str(os.getpid()))\n"
                 "time.sleep(120)", claim="new claim")
    env = {**os.environ, results.RESULTS_ENV: str(repo / "results")}
    subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                    "from utils import results; results.record('99_sleepy', 'committed claim', 1.0)",
                    str(ROOT)], env=env, check=True, timeout=120)
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(git + ["init", "-q"], check=True)
    subprocess.run(git + ["add", "."], check=True)
    subprocess.run(git + ["commit", "-q", "-m", "committed"], check=True)
    return repo, path, env, git


def start_runner(repo, env, *args):
    """Start the runner with ``args``; return it once the sleepy notebook's long cell is running."""
    runner = subprocess.Popen([sys.executable, "-c", RUNNER, str(ROOT), str(repo / "_build" / "runs"),
                               *args], cwd=repo, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while not (repo / "kernel.pid").exists():
        assert runner.poll() is None, runner.communicate()
        assert time.monotonic() < deadline, "the notebook never started"
        time.sleep(0.2)
    time.sleep(0.5)
    return runner, int((repo / "kernel.pid").read_text())


def wait_gone(pid, seconds=30):
    deadline = time.monotonic() + seconds
    while run_notebooks.pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    return not run_notebooks.pid_alive(pid)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_run_leaves_git_status_clean(tmp_path, signum):
    repo, path, env, git = fake_repo(tmp_path)
    runner, kernel = start_runner(repo, env, "--force", str(path))
    runner.send_signal(signum)
    out, err = runner.communicate(timeout=120)
    assert runner.returncode == 128 + signum, err
    assert "interrupted" in err
    (repo / "kernel.pid").unlink()
    status = subprocess.run(git + ["status", "--porcelain", "--untracked-files=all"],
                            capture_output=True, text=True, check=True).stdout
    assert status == "", "committed files changed or untracked files were left"
    assert claims_in(repo / "results" / "99_sleepy.tiny.json") == ["committed claim"]
    assert not list((repo / "_build" / "runs").iterdir()), "the run folder is removed"
    assert wait_gone(kernel), "the kernel was left running"


def claims_in(path):
    return [r["claim"] for r in json.loads(path.read_text())]


def test_the_next_run_removes_what_a_killed_run_left(tmp_path, monkeypatch):
    repo, path, env, git = fake_repo(tmp_path)
    runner, kernel = start_runner(repo, env, "--force", str(path))
    runner.kill()
    runner.communicate(timeout=60)
    runs = repo / "_build" / "runs"
    assert [p.name.split(".")[0] for p in runs.iterdir()] == ["99_sleepy"], "SIGKILL leaves its folder"
    assert wait_gone(kernel), "the kernel outlived its runner"
    monkeypatch.setattr(run_notebooks, "RUNS", runs)
    quick = tmp_path / "01_quick.ipynb"
    make_profile_nb(quick, "pass")
    run_notebooks.execute(quick, "tiny")
    assert not list(runs.iterdir())
    assert claims_in(repo / "results" / "99_sleepy.tiny.json") == ["committed claim"]


def test_interrupted_full_run_reports_what_finished(tmp_path):
    repo, path, env, git = fake_repo(tmp_path)
    first = repo / "notebooks" / "98_quick.ipynb"
    make_chapter(first, "pass")
    runner, kernel = start_runner(repo, env, "--profile", "full", str(first), str(path))
    runner.send_signal(signal.SIGINT)
    out, err = runner.communicate(timeout=120)
    assert runner.returncode == 130, err
    table = out[out.index("| chapter"):].splitlines()
    assert len(table) == 3 and [c.strip() for c in table[2].split("|")[1:3]] == ["98_quick", "ran"]
    assert claims_in(repo / "results" / "98_quick.full.json") == ["measured"]
    assert not (repo / "results" / "99_sleepy.full.json").exists()
    assert not list((repo / "_build" / "runs").iterdir())
    assert wait_gone(kernel)
