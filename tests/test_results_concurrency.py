"""Several processes recording into one results file at once lose no row and never crash."""
import json
import multiprocessing

import pytest

from utils import results

WRITERS = 4
CLAIMS_PER_WRITER = 40


def record_many(writer: int, barrier) -> None:
    """Child process: wait for every writer, then record this writer's claims one by one."""
    barrier.wait(timeout=120)
    for k in range(CLAIMS_PER_WRITER):
        results.record("99_race", f"writer {writer} claim {k}", float(k), profile="tiny")


def test_concurrent_writers_keep_every_row(isolated_dirs):
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(WRITERS)
    workers = [ctx.Process(target=record_many, args=(w, barrier)) for w in range(WRITERS)]
    for p in workers:
        p.start()
    for p in workers:
        p.join(timeout=300)
    assert [p.exitcode for p in workers] == [0] * WRITERS, "a writer crashed"
    directory = results.results_dir()
    rows = json.loads((directory / "99_race.tiny.json").read_text())
    expected = {f"writer {w} claim {k}" for w in range(WRITERS) for k in range(CLAIMS_PER_WRITER)}
    assert sorted(r["claim"] for r in rows) == sorted(expected)
    assert not list(directory.glob("*.tmp")), "temporary files must not be left behind"
    assert [p.name for p in directory.glob("*.json")] == ["99_race.tiny.json"]


def test_publish_replaces_the_whole_file_and_withdraw_deletes_it(tmp_path):
    results.record("99_pub", "old claim", 1.0)
    staging = tmp_path / "staging"
    staging.mkdir()
    (staging / "99_pub.tiny.json").write_text(json.dumps([{"claim": "new claim", "ours": 2.0}]))
    target = results.publish(staging / "99_pub.tiny.json")
    assert target == results.results_dir() / "99_pub.tiny.json"
    assert [r["claim"] for r in json.loads(target.read_text())] == ["new claim"]
    assert results.withdraw("99_pub.tiny.json") and not target.exists()
    assert not results.withdraw("99_pub.tiny.json")


def test_publish_refuses_a_corrupt_staged_file(tmp_path):
    results.record("99_pub", "kept", 1.0)
    before = (results.results_dir() / "99_pub.tiny.json").read_bytes()
    bad = tmp_path / "99_pub.tiny.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="99_pub.tiny.json"):
        results.publish(bad)
    assert (results.results_dir() / "99_pub.tiny.json").read_bytes() == before


def test_failed_write_leaves_the_old_file_and_no_temporary(monkeypatch):
    results.record("99_pub", "kept", 1.0)
    path = results.results_dir() / "99_pub.tiny.json"
    before = path.read_bytes()

    def broken_replace(src, dst):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(results.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        results.record("99_pub", "lost", 2.0)
    assert path.read_bytes() == before
    assert not list(path.parent.glob("*.tmp"))
