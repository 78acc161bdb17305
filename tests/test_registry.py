"""The registry's fetch: data-dir copy, cache, download with verification — over a local HTTP server."""
import hashlib
import http.server
import threading
from functools import partial

import pytest

from utils import registry

PAYLOAD = b"cvbook test payload\n" * 1000


@pytest.fixture()
def server(tmp_path):
    (tmp_path / "served").mkdir()
    (tmp_path / "served" / "file.bin").write_bytes(PAYLOAD)
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "served"))
    handler.log_message = lambda *a, **k: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture()
def entry(server, monkeypatch):
    monkeypatch.setattr(registry, "REGISTRY", {})
    good = registry.register(registry.RemoteFile(
        name="test-file", url=f"{server}/file.bin", sha256=hashlib.sha256(PAYLOAD).hexdigest(),
        size=len(PAYLOAD), licence="CC0", filename="file.bin"))
    return good


def test_download_verifies_and_caches(entry, server, monkeypatch):
    path = registry.fetch("test-file")
    assert path.read_bytes() == PAYLOAD
    monkeypatch.setattr(registry, "_download", lambda *a: pytest.fail("should use the cache"))
    assert registry.fetch("test-file") == path


def test_checksum_mismatch_deletes_and_raises(server, monkeypatch):
    monkeypatch.setattr(registry, "REGISTRY", {})
    registry.register(registry.RemoteFile("bad", f"{server}/file.bin", "0" * 64, len(PAYLOAD), "CC0", "bad.bin"))
    with pytest.raises(registry.ChecksumError, match="bad.bin has sha256 .* expected 0000"):
        registry.fetch("bad")
    assert not any(registry.config.cache_dir().rglob("bad.bin*"))


def test_data_dir_copy_wins(entry, tmp_path, monkeypatch):
    local = tmp_path / "mirror"
    local.mkdir()
    (local / "file.bin").write_bytes(PAYLOAD)
    monkeypatch.setenv("CVBOOK_DATA", str(local))
    monkeypatch.setattr(registry, "_download", lambda *a: pytest.fail("the data-dir copy should win"))
    assert registry.fetch("test-file") == local / "file.bin"


def test_offline_missing_file_says_what_and_how(entry):
    with pytest.raises(registry.MissingDataError, match=r"test-file: file.bin is not on disk.*offline.*download it from http"):
        registry.fetch("test-file", offline=True)


def test_unreachable_url_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(registry, "REGISTRY", {})
    registry.register(registry.RemoteFile("gone", "http://127.0.0.1:9/none.bin", "a" * 64, 1, "CC0", "none.bin"))
    with pytest.raises(registry.MissingDataError, match="gone: download failed"):
        registry.fetch("gone", timeout=2)


def test_unknown_name_and_bad_entries(monkeypatch):
    monkeypatch.setattr(registry, "REGISTRY", {})
    with pytest.raises(KeyError, match="no registry entry called 'nope'"):
        registry.fetch("nope")
    with pytest.raises(ValueError, match="64 lowercase hex"):
        registry.RemoteFile("x", "http://x", "abc", 1, "CC0", "x")
    registry.register(registry.RemoteFile("x", "http://x", "a" * 64, 1, "CC0", "x"))
    with pytest.raises(ValueError, match="different entry"):
        registry.register(registry.RemoteFile("x", "http://y", "a" * 64, 1, "CC0", "x"))


def test_extract_tar_and_zip(tmp_path):
    import tarfile
    import zipfile

    (tmp_path / "a.txt").write_text("hello")
    with tarfile.open(tmp_path / "a.tar.gz", "w:gz") as tf:
        tf.add(tmp_path / "a.txt", arcname="dir/a.txt")
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as zf:
        zf.write(tmp_path / "a.txt", arcname="z/a.txt")
    assert (registry.extract(tmp_path / "a.tar.gz", tmp_path / "t") / "dir/a.txt").read_text() == "hello"
    assert (registry.extract(tmp_path / "a.zip", tmp_path / "z") / "z/a.txt").read_text() == "hello"
    with pytest.raises(ValueError, match="not a tar or zip"):
        registry.extract(tmp_path / "a.txt", tmp_path / "x")


def test_fetch_reports_the_url_that_served_the_file(entry, server, capsys):
    path, source = registry.fetch_with_source("test-file")
    assert source == f"{server}/file.bin" and path.read_bytes() == PAYLOAD
    assert "mirror" not in capsys.readouterr().err  # the official URL served it: nothing to say
    assert registry.fetch_with_source("test-file") == (path, None)  # from the cache
