"""tools.fetch_data: the plan, the disk check, fetching and re-checking, against a local HTTP
server (tests/localhttp.py) and registry entries made for the test; nothing else downloads."""
from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections import namedtuple
from pathlib import Path

import pytest

import utils.data  # noqa: F401  (registers the real entries)
from tests.localhttp import LocalServer
from tools import fetch_data
from utils import registry

BODIES = {"a.bin": b"first file " * 300, "b.bin": b"second file " * 500}
REAL_REGISTRY = dict(registry.REGISTRY)
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def server(monkeypatch):
    """A local server holding a.bin and b.bin, registered as ``test-a`` and ``test-b``."""
    monkeypatch.setattr(registry, "REGISTRY", {})
    monkeypatch.setattr(registry, "_VERIFIED", {})
    monkeypatch.setenv("CVBOOK_PROGRESS", "0")
    monkeypatch.delenv("CVBOOK_DATA", raising=False)
    with LocalServer() as httpd:
        for name, body in BODIES.items():
            registry.register(registry.RemoteFile(
                f"test-{name[0]}", httpd.serve(f"/{name}", body), hashlib.sha256(body).hexdigest(), len(body),
                "CC0 (test)", name))
        yield httpd


SETS = [fetch_data.Dataset("alpha", "Alpha set", ("test-a",), ("06",)),
        fetch_data.Dataset("beta", "Beta set", ("test-b",), ("07",))]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    """``main(argv)`` on the test datasets and no weights: (exit code, stdout, stderr)."""
    code = fetch_data.main(list(argv), datasets=SETS, chapter_weights={})
    out = capsys.readouterr()
    return code, out.out, out.err


def _row(out: str, title: str) -> str:
    return next(line for line in out.splitlines() if line.startswith(title))


def test_plan_lists_each_dataset_and_downloads_nothing(server, capsys):
    code, out, _ = run(capsys, "--plan")
    assert code == 0
    assert re.search(r"Alpha set\s+0\.00 GB\s+CC0\s+06\s+\S+/downloads\s+missing", out)
    assert "Beta set" in out and "enough free disk" in out
    total = sum(len(b) for b in BODIES.values())
    assert f"still to download: {total / 1e9:.2f} GB" in out
    assert server.log == []


def test_chapters_restrict_the_plan(server, capsys):
    code, out, _ = run(capsys, "--plan", "--chapters", "07")
    assert code == 0 and "Beta set" in out and "Alpha set" not in out


def test_unknown_chapter_is_a_usage_error(server, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run(capsys, "--chapters", "42")
    assert exit_info.value.code == fetch_data.EXIT_USAGE
    assert "unknown chapter(s) 42" in capsys.readouterr().err


DiskUsage = namedtuple("DiskUsage", "total used free")


@pytest.mark.parametrize("mode", [["--plan"], []], ids=["plan", "fetch"])
def test_short_disk_stops_with_a_clear_message_before_downloading(server, capsys, monkeypatch, mode):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: DiskUsage(10**6, 10**6 - 1000, 1000))
    code, _, err = run(capsys, *mode)
    assert code == fetch_data.EXIT_DISK
    assert re.search(r"NOT ENOUGH FREE DISK.*\n.*: 0\.0 GB needed, 0\.0 GB free", err)
    assert "$CVBOOK_CACHE" in err and "nothing was downloaded" in err
    assert server.log == []


def test_fetch_then_plan_then_check(server, capsys):
    code, out, _ = run(capsys)
    assert code == 0 and "everything the chosen chapters need is here" in out
    assert re.search(r"test-a: .*a\.bin \(downloaded from http://127\.0\.0\.1:\d+/a\.bin\)", out)
    code, out, _ = run(capsys, "--plan")
    assert "verified" in _row(out, "Alpha set") and "still to download: 0.00 GB" in out
    code, out, _ = run(capsys)  # nothing left to fetch: no new request
    assert code == 0 and len(server.log) == 2 and "(already here)" in out
    code, out, _ = run(capsys, "--check")
    assert code == 0 and out.count("ok: size and sha256") == 2


def test_check_finds_a_file_corrupted_in_place(server, capsys):
    run(capsys)
    path = registry.downloads_dir() / "b.bin"
    stat = path.stat()
    path.write_bytes(bytes(stat.st_size))
    code, out, _ = run(capsys, "--check")
    assert code == fetch_data.EXIT_FAILED
    assert re.search(r"b\.bin has sha256 [0-9a-f]{64}, expected", out)
    assert "ok: size and sha256" in _row(out, "test-a")


def test_partial_download_shows_in_the_plan_and_is_resumed(server, capsys):
    server.serve("/a.bin", BODIES["a.bin"], cut_at=1000)
    code, _, err = run(capsys, "--chapters", "06")
    assert code == fetch_data.EXIT_FAILED and "Run again to resume" in err
    _, out, _ = run(capsys, "--plan", "--chapters", "06")
    assert "partial: 0.00 of 0.00 GB (resumes)" in _row(out, "Alpha set")
    server.serve("/a.bin", BODIES["a.bin"])
    assert run(capsys, "--chapters", "06")[0] == 0
    assert [rng for m, p, rng in server.log if p == "/a.bin"] == [None, "bytes=1000-"]


def test_missing_data_directory_is_a_clear_usage_error(server, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("CVBOOK_DATA", str(tmp_path / "nowhere"))
    code, _, err = run(capsys, "--plan")
    assert code == fetch_data.EXIT_USAGE and re.search(r"error: data directory .*nowhere.* does not exist", err)


def test_copy_in_the_data_directory_is_used_and_not_downloaded(server, capsys, monkeypatch, tmp_path):
    (tmp_path / "a.bin").write_bytes(BODIES["a.bin"])
    monkeypatch.setenv("CVBOOK_DATA", str(tmp_path))
    _, out, _ = run(capsys, "--plan", "--chapters", "06")
    assert str(tmp_path) in _row(out, "Alpha set")
    assert run(capsys, "--chapters", "06")[0] == 0 and server.log == []


# --- the book's own map -------------------------------------------------------------------------

LOADERS = {"pets": r"pets_root\(", "voc": r"voc_root\(", "mvtec": r"mvtec_root\(", "mnist": r"load_mnist\(",
           "gradcam-photo": r"gradcam-both"}


def _code_of(notebook: Path) -> str:
    cells = json.loads(notebook.read_text())["cells"]
    return "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")


def test_dataset_map_matches_the_notebooks_and_the_registry():
    """Each dataset's chapters are exactly the notebooks whose code calls its loader, and every
    registry entry belongs to a dataset of the plan."""
    code = {nb.name[:2]: _code_of(nb) for nb in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))}
    for dataset in fetch_data.DATASETS:
        calling = tuple(ch for ch, text in code.items() if re.search(LOADERS[dataset.key], text))
        assert dataset.chapters == calling, (
            f"{dataset.key}: chapters {calling} call its loader; update DATASETS in tools/fetch_data.py")
    planned = {n for d in fetch_data.DATASETS for n in d.files}
    assert planned == set(REAL_REGISTRY), (
        f"registry entries outside the plan: {sorted(set(REAL_REGISTRY) - planned)}; "
        f"planned but not registered: {sorted(planned - set(REAL_REGISTRY))}")


def test_weights_map_names_torchvision_models_the_notebooks_mention():
    code = {nb.name[:2]: _code_of(nb) for nb in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))}
    for chapter, models in fetch_data.CHAPTER_WEIGHTS.items():
        for model in models:
            assert f'"{model}"' in code[chapter], f"chapter {chapter} no longer names {model}: update CHAPTER_WEIGHTS"
    weights = fetch_data.torchvision_weights(["resnet18"])[0]
    assert weights.filename == "resnet18-f37072fd.pth" and 40e6 < weights.size < 50e6


# --- torchvision weights ------------------------------------------------------------------------

def test_plan_lists_the_weights_of_the_chosen_chapters(server, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    (tmp_path / "torch" / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth").write_bytes(b"stand-in")
    code = fetch_data.main(["--plan", "--chapters", "06"], datasets=SETS,
                           chapter_weights=fetch_data.CHAPTER_WEIGHTS)
    out = capsys.readouterr().out
    assert code == 0 and re.search(r"^06\s+resnet18 wide_resnet50_2$", out, re.MULTILINE)
    assert "07 " not in out and "vgg16" not in out
    assert re.search(r"^resnet18-f37072fd\.pth\s+0\.05 GB\s+\S+/checkpoints\s+present$", out, re.MULTILINE)
    assert re.search(r"^wide_resnet50_2-95faca4d\.pth\s+0\.14 GB\s+\S+\s+missing$", out, re.MULTILINE)
    code = fetch_data.main(["--check", "--chapters", "06"], datasets=SETS,
                           chapter_weights=fetch_data.CHAPTER_WEIGHTS)
    assert code == fetch_data.EXIT_FAILED and "sha256 does not start with f37072fd" in capsys.readouterr().out


def test_weights_download_is_checked_against_the_hash_in_its_name(server, monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    body = b"weights" * 100
    prefix = hashlib.sha256(body).hexdigest()[:8]
    good = fetch_data.Weights("toy", server.serve(f"/toy-{prefix}.pth", body), len(body))
    assert fetch_data._fetch_weights(good) == [] and good.path().read_bytes() == body
    bad = fetch_data.Weights("toy2", server.serve("/toy2-00000000.pth", body), len(body))
    assert re.search(r"toy2: .*invalid hash value", fetch_data._fetch_weights(bad)[0])
    assert not bad.path().exists()
