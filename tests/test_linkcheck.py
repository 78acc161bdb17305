"""tools.linkcheck against a local HTTP server (tests/localhttp.py): registry URLs by HEAD or a
one-byte Range GET with their sizes, page links from notebooks' markdown and book pages, the
per-link table and the exit code. The weekly workflow runs it against the real hosts."""
from __future__ import annotations

import json
import re

import pytest
import yaml

from tests.localhttp import LocalServer
from tools import linkcheck
from utils import registry

BODY = b"0123456789" * 100
SHA = "a" * 64


@pytest.fixture()
def server():
    with LocalServer() as httpd:
        yield httpd


def _entry(name: str, url: str, size: int = len(BODY), mirrors: tuple[str, ...] = ()) -> registry.RemoteFile:
    return registry.RemoteFile(name, url, SHA, size, "CC0", f"{name}.bin", mirrors=mirrors)


def _rows(out: str) -> dict[str, str]:
    """url -> its table row."""
    return {url: line for line in out.splitlines() for url in re.findall(r"http://\S+", line)[:1]}


def test_registry_urls_by_head_or_one_byte_get_with_their_sizes(server, capsys):
    entries = [
        _entry("head-ok", server.serve("/head-ok.bin", BODY)),
        _entry("no-head", server.serve("/no-head.bin", BODY, head=False)),
        _entry("no-head-no-range", server.serve("/plain.bin", BODY, head=False, ranges=False)),
        _entry("resized", server.serve("/resized.bin", BODY + b"!")),
        _entry("gone", server.serve("/ok.bin", BODY), mirrors=(server.url + "/missing.bin",)),
    ]
    code = linkcheck.main(["--registry-only"], entries=entries)
    out = capsys.readouterr().out
    rows = _rows(out)
    assert code == 1
    assert re.search(r"^ok\s+registry .*HEAD 200; 1000 bytes as registered", rows[server.url + "/head-ok.bin"])
    assert "GET bytes=0-0 206; 1000 bytes as registered" in rows[server.url + "/no-head.bin"]
    assert "GET bytes=0-0 200; 1000 bytes as registered" in rows[server.url + "/plain.bin"]
    assert re.search(r"^FAIL .*serves 1001 bytes, registered 1000", rows[server.url + "/resized.bin"])
    assert re.search(r"^FAIL .*HTTP 404", rows[server.url + "/missing.bin"])
    assert out.rstrip().endswith("6 links: 4 ok, 0 blocked, 2 failed")
    assert out.index("FAIL") < out.index("ok ")  # failures first
    assert ("GET", "/no-head.bin", "bytes=0-0") in server.log


def test_page_links_from_markdown_cells_and_book_pages(server, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(linkcheck, "LOCAL_HOSTS", {"localhost"})  # the test server is on 127.0.0.1
    server.serve("/paper", b"<html>")
    server.serve("/robots-unwelcome", status=403)
    notebook = tmp_path / "01_demo.ipynb"
    notebook.write_text(json.dumps({"cells": [
        {"cell_type": "markdown", "source": [f"See [the paper]({server.url}/paper).\n",
                                              f"Gone: <{server.url}/gone>, blocked {server.url}/robots-unwelcome."]},
        {"cell_type": "code", "source": [f"url = '{server.url}/in-code-is-not-a-page-link'"]}]}))
    page = tmp_path / "setup.md"
    page.write_text(f"Read [this]({server.url}/paper) and https://localhost/skipped.\n")
    code = linkcheck.main(["--pages-only"], pages=[notebook, page])
    out = capsys.readouterr().out
    rows = _rows(out)
    assert code == 1
    assert set(rows) == {f"{server.url}/paper", f"{server.url}/gone", f"{server.url}/robots-unwelcome"}
    assert re.search(r"^ok\s+page .*HEAD 200 .*01_demo\.ipynb, .*setup\.md", rows[f"{server.url}/paper"])
    assert rows[f"{server.url}/robots-unwelcome"].startswith("blocked")
    assert rows[f"{server.url}/gone"].startswith("FAIL")


def test_base_url_sends_the_registry_paths_to_another_host(server, capsys):
    server.serve("/pets/images.tar.gz", BODY)
    entries = [_entry("pets", "https://example.invalid/pets/images.tar.gz")]
    assert linkcheck.main(["--registry-only", "--base-url", server.url], entries=entries) == 0
    assert ("HEAD", "/pets/images.tar.gz", None) in server.log
    assert "1 links: 1 ok, 0 blocked, 0 failed" in capsys.readouterr().out


def test_unreachable_host_fails_cleanly(capsys):
    entries = [_entry("nowhere", "http://127.0.0.1:9/file.bin")]
    assert linkcheck.main(["--registry-only", "--timeout", "2"], entries=entries) == 1
    assert re.search(r"^FAIL .*URLError", capsys.readouterr().out, re.MULTILINE)


def test_links_are_cut_before_trailing_punctuation():
    text = ("A [link](https://a.example/x_(y)). Also https://b.example/p?q=1, and "
            "<https://c.example/z>; **https://d.example/bold**")
    assert linkcheck.extract_links(text) == ["https://a.example/x_(y)", "https://b.example/p?q=1",
                                             "https://c.example/z", "https://d.example/bold"]


def test_the_book_pages_and_registry_give_links_to_check():
    pages = linkcheck.page_files()
    assert any(p.suffix == ".ipynb" for p in pages) and any(p.suffix == ".md" for p in pages)
    links = linkcheck.page_links(pages)
    assert len(links) > 10 and all(link.url.startswith(("http://", "https://")) for link in links)
    assert all(not link.url.endswith((".", ",", ";")) for link in links)
    names = {link.where for link in linkcheck.registry_links()}
    assert {"pets-images", "voc2012-trainval", "mvtec-ad", "mnist-train-images"} <= names


def test_weekly_workflow_runs_make_linkcheck():
    workflow = yaml.safe_load((linkcheck.ROOT / ".github/workflows/linkcheck.yml").read_text())
    triggers = workflow[True]  # YAML 1.1 reads the key `on` as True
    assert len(triggers["schedule"]) == 1 and "workflow_dispatch" in triggers
    _minute, _hour, day, month, weekday = triggers["schedule"][0]["cron"].split()
    assert (day, month) == ("*", "*") and weekday.isdigit()  # once a week
    steps = workflow["jobs"]["linkcheck"]["steps"]
    assert any(step.get("run") == "make linkcheck" for step in steps)
    makefile = (linkcheck.ROOT / "Makefile").read_text()
    assert re.search(r"^linkcheck:.*\n\t.*-m tools\.linkcheck", makefile, re.MULTILINE)
