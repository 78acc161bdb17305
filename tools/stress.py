"""Run a command on a machine under stress, to prove its checks do not depend on a quiet one.

Two modes (``make stress`` runs the notebook tests of chapters 05 and 06 under each):

- ``load``: a busy-loop process on every core (or ``--workers N``) runs beside the command,
  as on a laptop with other jobs; wall-clock times stretch and ratios of times move.
- ``one-thread``: the command runs with ``OMP_NUM_THREADS=1`` and the other BLAS thread
  variables at 1, as on a one-CPU machine; float sums are reduced in another order.

The busy loops are always killed when the command ends, fails or is interrupted (SIGINT,
SIGTERM); if this process is killed outright they notice within a fraction of a second
(their parent is gone) and exit by themselves.

    python -m tools.stress load [--workers N] -- COMMAND [ARGS ...]
    python -m tools.stress one-thread -- COMMAND [ARGS ...]

The exit status is the command's (128 + the signal's number when interrupted).
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                    "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")
# One core's worth of pure-Python work; checks every ~100k iterations that its parent lives.
BUSY_LOOP = ("import os, signal, sys\n"
             "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
             "parent = int(sys.argv[1])\n"
             "while os.getppid() == parent:\n"
             "    for _ in range(100_000):\n"
             "        pass\n")
MODES = ("load", "one-thread")


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived while a command ran under stress."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_interrupted(signum: int, frame: object) -> None:
    raise Interrupted(signum)


@contextmanager
def busy_loops(workers: int) -> Iterator[list[subprocess.Popen]]:
    """Start ``workers`` busy-loop processes; they are killed (and reaped) when the block ends,
    however it ends. Yields the processes."""
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive number of processes, got {workers!r}")
    procs: list[subprocess.Popen] = []
    try:
        for _ in range(workers):
            procs.append(subprocess.Popen([sys.executable, "-c", BUSY_LOOP, str(os.getpid())],
                                          stdin=subprocess.DEVNULL))
        yield procs
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait()


def cores() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def one_thread_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) with every thread variable set to 1."""
    return {**(os.environ if base is None else base), **{name: "1" for name in THREAD_VARIABLES}}


def run_command(command: Sequence[str], env: Mapping[str, str] | None = None) -> int:
    """Run ``command`` and return its exit status; if this process is interrupted, the command
    is stopped (SIGTERM, then SIGKILL after 10 s) before the interruption goes on."""
    proc = subprocess.Popen(list(command), env=None if env is None else dict(env))
    try:
        return proc.wait()
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def run(command: Sequence[str], mode: str, workers: int | None = None) -> int:
    """Run ``command`` in ``mode`` (``load`` or ``one-thread``); return its exit status."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    if not command:
        raise ValueError("no command given (put it after --)")
    if mode == "one-thread":
        print(f"stress: {' '.join(THREAD_VARIABLES)} = 1", file=sys.stderr, flush=True)
        return run_command(command, one_thread_env())
    if workers is None:
        workers = cores()
    with busy_loops(workers) as procs:
        pids = " ".join(str(p.pid) for p in procs)
        print(f"stress: {workers} busy loops beside the command (pids {pids})", file=sys.stderr,
              flush=True)
        return run_command(command)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    own, command = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     usage="%(prog)s {load,one-thread} [--workers N] -- COMMAND [ARGS ...]")
    parser.add_argument("mode", choices=MODES)
    parser.add_argument("--workers", type=int, default=None,
                        help="busy loops in the load mode (default: one per core)")
    args = parser.parse_args(own)
    old = {s: signal.signal(s, _raise_interrupted) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return run(command, args.mode, args.workers)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except FileNotFoundError as err:
        print(f"error: command not found: {err.filename}", file=sys.stderr)
        return 127
    except Interrupted as err:
        print(f"stress: interrupted ({err}); busy loops and command stopped", file=sys.stderr)
        return 128 + err.signum
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


if __name__ == "__main__":
    sys.exit(main())
