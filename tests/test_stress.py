"""tools.stress: busy loops start, are always killed, and the one-thread mode sets the variables."""
import os
import re
import signal
import subprocess
import sys
import time
from contextlib import contextmanager

import pytest

from tools import stress

ROOT = stress.__file__.rsplit("/tools/", 1)[0]


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_gone(pids, seconds=20):
    deadline = time.monotonic() + seconds
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not any(alive(p) for p in pids)


def cpu_seconds(pid):
    """User + system CPU seconds of a process, from /proc (Linux)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.fixture()
def spy(monkeypatch):
    """Record the busy-loop processes that stress.run starts."""
    started = []
    original = stress.busy_loops

    @contextmanager
    def recording(workers):
        with original(workers) as procs:
            started.extend(procs)
            yield procs

    monkeypatch.setattr(stress, "busy_loops", recording)
    return started


def test_busy_loops_burn_cpu_and_are_killed_on_error():
    with pytest.raises(RuntimeError, match="inside"):
        with stress.busy_loops(2) as procs:
            assert len(procs) == 2 and all(p.poll() is None for p in procs)
            deadline = time.monotonic() + 30
            while not all(cpu_seconds(p.pid) > 0.05 for p in procs):
                assert time.monotonic() < deadline, "the busy loops do not use the CPU"
                time.sleep(0.05)
            raise RuntimeError("inside the block")
    assert all(p.returncode is not None for p in procs)


def test_failing_command_under_load_returns_its_status_and_stops_the_loops(spy):
    code = "import sys, time; time.sleep(0.3); sys.exit(3)"
    assert stress.run([sys.executable, "-c", code], "load", workers=2) == 3
    assert len(spy) == 2 and all(p.returncode is not None for p in spy)


def test_load_mode_defaults_to_one_loop_per_core(spy, monkeypatch):
    monkeypatch.setattr(stress, "cores", lambda: 3)
    assert stress.run([sys.executable, "-c", "pass"], "load") == 0
    assert len(spy) == 3 and all(p.returncode is not None for p in spy)


def test_cores_counts_the_cpus_this_process_may_use():
    assert 1 <= stress.cores() <= (os.cpu_count() or 1)


def test_one_thread_mode_sets_every_thread_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "8")
    out = tmp_path / "env.txt"
    code = ("import os, sys; open(sys.argv[1], 'w').write(' '.join(os.environ[n] for n in "
            f"{stress.THREAD_VARIABLES!r}))")
    assert stress.run([sys.executable, "-c", code, str(out)], "one-thread") == 0
    assert out.read_text().split() == ["1"] * len(stress.THREAD_VARIABLES)
    assert os.environ["OMP_NUM_THREADS"] == "8", "this process's environment is untouched"


def test_bad_arguments_are_clear_errors(capsys):
    assert stress.main(["load", "--workers", "1", "--"]) == 2
    assert "no command given" in capsys.readouterr().err
    assert stress.main(["one-thread", "--", "no-such-command-here"]) == 127
    assert "command not found: no-such-command-here" in capsys.readouterr().err
    with pytest.raises(ValueError, match="positive number"):
        with stress.busy_loops(0):
            pass
    with pytest.raises(ValueError, match="unknown mode"):
        stress.run(["true"], "busy")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_interrupted_stress_stops_loops_and_command(tmp_path, signum):
    marker = tmp_path / "command.pid"
    code = f"import os, time; open({str(marker)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-m", "tools.stress", "load", "--workers", "2", "--",
                             sys.executable, "-c", code], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    line = proc.stderr.readline()
    loops = [int(p) for p in re.search(r"pids ([\d ]+)", line)[1].split()]
    deadline = time.monotonic() + 60
    while not marker.exists() or not marker.read_text():
        assert time.monotonic() < deadline, "the command never started"
        time.sleep(0.1)
    command = int(marker.read_text())
    proc.send_signal(signum)
    assert proc.wait(timeout=60) == 128 + signum
    assert "interrupted" in proc.stderr.read()
    assert wait_gone(loops + [command])


def test_loops_exit_by_themselves_when_stress_is_killed():
    proc = subprocess.Popen([sys.executable, "-m", "tools.stress", "load", "--workers", "2", "--",
                             sys.executable, "-c", "import time; time.sleep(60)"], cwd=ROOT,
                            stderr=subprocess.PIPE, text=True)
    loops = [int(p) for p in re.search(r"pids ([\d ]+)", proc.stderr.readline())[1].split()]
    proc.kill()
    proc.wait()
    assert wait_gone(loops), "busy loops outlived a SIGKILLed stress run"
