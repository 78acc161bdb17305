"""Link health: every registry URL (official and mirrors) and every external link of the book.

    python -m tools.linkcheck                  # registry URLs and the pages' links
    python -m tools.linkcheck --registry-only  # only the download URLs
    python -m tools.linkcheck --base-url http://127.0.0.1:8000   # same paths, another host

A registry URL passes when it answers and announces the registered size: a ``HEAD`` request,
or, when the server refuses ``HEAD``, a one-byte ``Range`` GET (its ``Content-Range`` carries
the total). A page link passes when it answers below 400; 401, 403 and 429 (a site that turns
robots away) are reported as ``blocked`` but do not fail the run. Links are read from the
markdown cells of ``notebooks/*.ipynb`` and from ``book/**/*.md`` at run time. Prints one
row per link; exits 1 when any link fails. ``make linkcheck`` runs it; a weekly workflow
(``.github/workflows/linkcheck.yml``) runs that; ``make test`` only runs it against a local
server (``tests/test_linkcheck.py``), since CI has no network.
"""
from __future__ import annotations

import argparse
import http.client
import json
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
USER_AGENT = "cvbook-linkcheck/1.0 (Python urllib; weekly check of the book's links)"
BLOCKED = (401, 403, 429)
#: Refusals of HEAD after which a one-byte GET is tried instead.
HEAD_REFUSED = (400, 403, 404, 405, 501)
#: Hosts of links that point at the reader's own machine (e.g. a local book server): not checked.
LOCAL_HOSTS = {"localhost", "127.0.0.1", "0.0.0.0"}
LINK = re.compile(r"https?://[^\s<>()\[\]\"'`]+(?:\([^\s<>()]*\)[^\s<>()\[\]\"'`]*)*")


@dataclass(frozen=True)
class Link:
    """A URL to check: ``kind`` (``registry`` or ``page``), the registered size in bytes for a
    registry URL (0: unknown), and where it appears (entry name or page paths)."""

    url: str
    kind: str
    size: int = 0
    where: str = ""


@dataclass(frozen=True)
class Result:
    """The outcome for one link: ``state`` is ``ok``, ``blocked`` or ``FAIL``."""

    link: Link
    state: str
    detail: str


# --- collecting links -------------------------------------------------------------------------

def registry_links(entries: Iterable | None = None) -> list[Link]:
    """One :class:`Link` per URL of every registry entry (mirrors included)."""
    if entries is None:
        import utils.data  # noqa: F401  (registers the datasets)
        from utils import registry

        entries = registry.REGISTRY.values()
    return [Link(url, "registry", entry.size, entry.name) for entry in entries for url in entry.urls]


def _markdown_of(path: Path) -> str:
    """The markdown of a page: a ``.md`` file's text, or a notebook's markdown cells."""
    if path.suffix != ".ipynb":
        return path.read_text(encoding="utf-8")
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")


def page_files(root: Path = ROOT) -> list[Path]:
    """The book's pages: ``notebooks/*.ipynb`` and ``book/**/*.md`` (folders starting with _ skipped)."""
    pages = sorted((root / "notebooks").glob("*.ipynb"))
    pages += sorted(p for p in (root / "book").rglob("*.md")
                    if not any(part.startswith("_") for part in p.relative_to(root / "book").parts))
    return pages


def extract_links(text: str) -> list[str]:
    """The http(s) URLs in markdown ``text``, without trailing punctuation, in order, once each."""
    found = (m.group(0).rstrip(".,;:!?*_") for m in LINK.finditer(text))
    return list(dict.fromkeys(u for u in found if urllib.parse.urlsplit(u).hostname not in
                              {None, *LOCAL_HOSTS}))


def page_links(pages: Iterable[Path], root: Path = ROOT) -> list[Link]:
    """One :class:`Link` per distinct URL in ``pages``, listing the pages it appears on."""
    where: dict[str, list[str]] = {}
    for page in pages:
        name = str(page.relative_to(root)) if page.is_relative_to(root) else str(page)
        for url in extract_links(_markdown_of(page)):
            where.setdefault(url, []).append(name)
    return [Link(url, "page", 0, ", ".join(names)) for url, names in where.items()]


def rebase(link: Link, base_url: str) -> Link:
    """``link`` with its scheme and host replaced by ``base_url``'s (path and query kept)."""
    parts, base = urllib.parse.urlsplit(link.url), urllib.parse.urlsplit(base_url)
    url = urllib.parse.urlunsplit((base.scheme, base.netloc, parts.path, parts.query, ""))
    return Link(url, link.kind, link.size, link.where)


# --- checking ---------------------------------------------------------------------------------

def _request(url: str, method: str, timeout: float, byte_range: bool = False) -> http.client.HTTPResponse:
    headers = {"User-Agent": USER_AGENT}
    if byte_range:
        headers["Range"] = "bytes=0-0"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers, method=method), timeout=timeout)


def _total_size(response: http.client.HTTPResponse) -> int | None:
    """The file's size from a response: the total of a ``206``'s Content-Range, else Content-Length."""
    if response.status == 206:
        match = re.fullmatch(r"bytes \d+-\d+/(\d+)", response.headers.get("Content-Range", "").strip())
        return int(match[1]) if match else None
    length = response.headers.get("Content-Length")
    return int(length) if length and length.isdigit() else None


def _answer(url: str, timeout: float) -> tuple[int, int | None, str]:
    """(status, announced size, how it was asked) for ``url``: HEAD, else a one-byte GET."""
    try:
        with _request(url, "HEAD", timeout) as response:
            return response.status, _total_size(response), "HEAD"
    except urllib.error.HTTPError as err:
        if err.code not in HEAD_REFUSED:
            raise
    with _request(url, "GET", timeout, byte_range=True) as response:
        return response.status, _total_size(response), "GET bytes=0-0"


def check(link: Link, timeout: float = 30.0) -> Result:
    """Ask for ``link`` and judge the answer (see the module docstring)."""
    try:
        status, size, how = _answer(link.url, timeout)
    except urllib.error.HTTPError as err:
        state = "blocked" if err.code in BLOCKED and link.kind == "page" else "FAIL"
        return Result(link, state, f"HTTP {err.code} {err.reason}")
    except (OSError, http.client.HTTPException, ValueError) as err:
        return Result(link, "FAIL", f"{type(err).__name__}: {getattr(err, 'reason', err)}")
    if link.kind == "registry" and link.size:
        if size is None:
            return Result(link, "ok", f"{how} {status}; size not announced (checked at download)")
        if size != link.size:
            return Result(link, "FAIL", f"{how} {status}; serves {size} bytes, registered {link.size}")
        return Result(link, "ok", f"{how} {status}; {size} bytes as registered")
    return Result(link, "ok", f"{how} {status}")


def check_all(links: Sequence[Link], timeout: float, workers: int) -> list[Result]:
    """:func:`check` every link, ``workers`` at a time, in the order given."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(lambda link: check(link, timeout), links))


def report(results: Sequence[Result]) -> str:
    """The per-link table (failures first) and a one-line count."""
    from tools.fetch_data import table

    order = {"FAIL": 0, "blocked": 1, "ok": 2}
    rows = [(r.state, r.link.kind, r.link.url, r.detail, r.link.where)
            for r in sorted(results, key=lambda r: (order[r.state], r.link.kind, r.link.url))]
    counts = {state: sum(r.state == state for r in results) for state in order}
    summary = f"{len(results)} links: {counts['ok']} ok, {counts['blocked']} blocked, {counts['FAIL']} failed"
    return table(["state", "kind", "url", "answer", "where"], rows) + "\n\n" + summary


# --- command line -----------------------------------------------------------------------------

def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tools.linkcheck", description=__doc__.split("\n\n")[0])
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--registry-only", action="store_true", help="check only the registry's download URLs")
    which.add_argument("--pages-only", action="store_true", help="check only the links in the book's pages")
    parser.add_argument("--base-url", help="send every request to this scheme://host[:port], keeping paths")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request (default 30)")
    parser.add_argument("--workers", type=int, default=8, help="requests in parallel (default 8)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None, entries: Iterable | None = None,
         pages: Iterable[Path] | None = None) -> int:
    """Check the links; 0 when none failed, else 1. ``entries`` (registry entries) and ``pages``
    (page files) replace the book's own, for tests."""
    args = parse(argv)
    links = [] if args.pages_only else registry_links(entries)
    if not args.registry_only:
        links += page_links(page_files() if pages is None else pages)
    if args.base_url:
        links = [rebase(link, args.base_url) for link in links]
    results = check_all(links, args.timeout, args.workers)
    print(report(results))
    return 1 if any(r.state == "FAIL" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
