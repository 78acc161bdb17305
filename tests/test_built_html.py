"""Checks over the built book (`_build/html`), run by `make test` right after the build.

What a student reading online sees: real tables, no harness noise, figures that fit the content
column, the measured runtimes, and a scoreboard whose rows link to their chapters. Skipped when
the book has not been built (run `make html`).
"""
import json
import re
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
HTML = ROOT / "_build" / "html"
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
COLUMN_PX = 800  # the content column is ~780 px at 1400 px; viz.COLUMN_INCHES at viz.DPI is 780 px

pytestmark = [pytest.mark.builthtml,
              pytest.mark.skipif(not (HTML / "index.html").exists(), reason="book not built: run `make html`")]


def page(stem: str) -> str:
    path = HTML / "notebooks" / f"{stem}.html"
    assert path.exists(), f"{stem} is not in the built book (add it to _toc.yml and rebuild)"
    return path.read_text()


def visible_text(html: str) -> str:
    """Page text without scripts, styles and the collapsed (hide-input) setup cells."""
    html = re.sub(r"<(script|style)\b.*?</\1>", "", html, flags=re.S)
    html = re.sub(r'<details class="[^"]*hide above-input[^"]*">.*?</details>', "", html, flags=re.S)
    return re.sub(r"<[^>]+>", " ", html)


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_chapter_page_reads_clean(nb):
    html = page(nb.stem)
    text = visible_text(html)
    assert not re.search(r"<p>\s*\|[^<]*\|[^<]*\|", html), "a Markdown table rendered as a paragraph of pipes"
    assert "NBVAL" not in text, "nbval markers visible to readers"
    assert not re.search(r"\d+%\|[█▏▎▍▌▋▊▉ #]*\|", text), "a progress bar in the committed outputs"
    assert "{{" not in text and "runtime_" not in text, "an unresolved substitution"
    assert "REPO_URL" not in text, "the setup cell's source is shown (tag it hide-input)"
    outputs = "\n".join(re.findall(r'<div class="cell_output[^"]*">(.*?)</div>\s*</div>', html, flags=re.S))
    printed = [line for line in re.sub(r"<[^>]+>", "", outputs).splitlines() if re.match(r"\s*\|.*\|.*\|\s*$", line)]
    assert not printed, f"a table printed as pipe text (use viz.markdown_table): {printed[:2]}"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_chapter_states_its_measured_runtime(nb):
    sys.path.insert(0, str(ROOT / "book" / "_ext"))
    from runtimes import format_seconds

    seconds = json.loads(nb.read_text())["metadata"].get("cvbook", {}).get("seconds")
    assert seconds is not None, f"{nb.name} was not executed by tools.run_notebooks (no measured runtime)"
    assert format_seconds(seconds) in visible_text(page(nb.stem)), "the header must show {{ runtime_<stem> }}"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_figures_fit_the_content_column(nb):
    too_wide = []
    for number, src in enumerate(re.findall(r'<img[^>]*src="([^"]+\.png)"', page(nb.stem)), start=1):
        with Image.open(HTML / "notebooks" / src) as image:
            if image.width > COLUMN_PX:
                too_wide.append(f"figure {number}: {image.width} px")
    assert not too_wide, f"wider than {COLUMN_PX} px (make them at most viz.COLUMN_INCHES wide): {too_wide}"


def test_figures_have_alt_text_not_file_paths():
    for nb in NOTEBOOKS:
        for alt in re.findall(r'<img[^>]*alt="([^"]*)"', page(nb.stem)):
            assert alt and not re.search(r"\.(png|jpe?g)$", alt), f"{nb.stem}: alt text {alt!r}"


def test_scoreboard_rows_link_to_their_chapters_and_show_notes():
    html = (HTML / "book" / "scoreboard.html").read_text()
    assert "<table" in html
    for results in (ROOT / "results").glob("*.json"):
        stem = results.name.split(".")[0]
        assert f'href="../notebooks/{stem}.html' in html, f"no link to {stem}"


def test_pages_work_offline():
    for html_file in [HTML / "book" / "intro.html", *(HTML / "notebooks").glob("*.html")]:
        html = html_file.read_text()
        assert "cdn.jsdelivr.net/npm/mathjax" not in html, f"{html_file.name} loads MathJax from a CDN"
    assert (HTML / "_static" / "mathjax" / "tex-chtml.js").exists()
    assert (HTML / "favicon.ico").exists()


def test_every_script_once_per_page():
    html = (HTML / "book" / "intro.html").read_text()
    assert html.count("const THEBE_JS_URL") <= 1
