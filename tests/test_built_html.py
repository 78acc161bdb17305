"""Checks over the built book (`_build/html`), run by `make test` right after the build.

What a student reading online sees: real tables, no harness noise, figures that fit the content
column and have alt text a screen reader can use, the measured runtimes, and a scoreboard whose
rows link to their chapters and say what each number was measured on. Skipped when the book has
not been built (run `make html`).
"""
import html as htmllib
import json
import re
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
HTML = ROOT / "_build" / "html"
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
# Widest a figure may be and still be shown at its natural size. Measured in headless Chromium
# (sphinx-book-theme 1.3 on pydata-sphinx-theme 0.17): pydata caps the page at 88rem = 1408 px,
# the book theme gives 20% of it to the left sidebar and keeps the right one, and the article has
# 32 px padding per side, so a notebook output (div.cell_output) is at most 790.4 px wide, at any
# window of 1440 px or more (772 px at the 1400 px window of tools.screenshots). A wider PNG is
# scaled down, i.e. resampled, in every window.
COLUMN_PX = 790
MIN_ALT_WORDS = 4  # as book/_ext/figure_alt.MIN_WORDS: a phrase, not a number or a lead-in

pytestmark = [pytest.mark.builthtml,
              pytest.mark.skipif(not (HTML / "index.html").exists(), reason="book not built: run `make html`")]


def page(stem: str) -> str:
    path = HTML / "notebooks" / f"{stem}.html"
    assert path.exists(), f"{stem} is not in the built book (add it to _toc.yml and rebuild)"
    return path.read_text()


def text_of(html: str) -> str:
    """Markup removed, entities decoded, whitespace collapsed."""
    return " ".join(htmllib.unescape(re.sub(r"<[^>]+>", " ", html)).split())


def words(text: str) -> list[str]:
    """The words that contain a letter."""
    return [word for word in text.split() if re.search(r"[^\W\d_]", word)]


class _OutputTables(HTMLParser):
    """Counts the <table>s inside notebook outputs (div.cell_output), however deeply nested."""

    def __init__(self) -> None:
        super().__init__()
        self.depth, self.output_depth, self.tables = 0, None, 0

    def handle_starttag(self, tag, attrs):
        if tag == "div":
            self.depth += 1
            if self.output_depth is None and "cell_output" in (dict(attrs).get("class") or "").split():
                self.output_depth = self.depth
        elif tag == "table" and self.output_depth is not None:
            self.tables += 1

    def handle_endtag(self, tag):
        if tag == "div":
            if self.output_depth == self.depth:
                self.output_depth = None
            self.depth -= 1


def output_tables(html: str) -> int:
    parser = _OutputTables()
    parser.feed(html)
    return parser.tables


TABLE_RULE = re.compile(r"^\s*\|\s*:?-{3,}", re.M)  # the |---|---| line under a Markdown table's header


def markdown_tables_in_outputs(nb: Path) -> int:
    """Tables the notebook's outputs hold: Markdown pipe tables (one per |--- rule, in outputs
    that render as Markdown) and the <table>s of text/html outputs, which myst-nb prefers."""
    count = 0
    for cell in json.loads(nb.read_text())["cells"]:
        if cell["cell_type"] != "code" or {"remove-output", "remove-cell"} & set(cell["metadata"].get("tags", [])):
            continue
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if "text/html" in data:
                count += "".join(data["text/html"]).count("<table")
            elif "text/markdown" in data and not {"image/png", "image/svg+xml", "image/jpeg"} & set(data):
                count += len(TABLE_RULE.findall("".join(data["text/markdown"])))
    return count


def visible_text(html: str) -> str:
    """Page text without scripts, styles and the collapsed (hide-input) setup cells."""
    html = re.sub(r"<(script|style)\b.*?</\1>", "", html, flags=re.S)
    html = re.sub(r'<details class="[^"]*hide above-input[^"]*">.*?</details>', "", html, flags=re.S)
    return re.sub(r"<[^>]+>", " ", html)


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_chapter_page_reads_clean(nb):
    html = page(nb.stem)
    text = visible_text(html)
    run_on = [text_of(p)[:60] for p in re.findall(r"<p>(.*?)</p>", html, flags=re.S)
              if re.match(r"\|.*\|.*\|", text_of(p))]
    assert not run_on, f"a Markdown table rendered as a paragraph of pipes: {run_on[:2]}"
    expected, found = markdown_tables_in_outputs(nb), output_tables(html)
    assert found == expected, (f"the notebook's outputs hold {expected} tables but the page shows {found} "
                               "(a Markdown table that did not render as <table>?)")
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
    for number, src in enumerate(re.findall(r'<img[^>]*src="(\.\./_images/[^"]+\.png)"', page(nb.stem)), start=1):
        with Image.open(HTML / "notebooks" / src) as image:
            if image.width > COLUMN_PX:
                too_wide.append(f"figure {number}: {image.width} px")
    # The inline backend saves with bbox_inches="tight", which pads 0.1 in (10 px) on each side.
    assert not too_wide, (f"wider than the {COLUMN_PX} px column (viz.COLUMN_INCHES at viz.DPI plus the "
                          f"2 x 10 px padding of bbox_inches='tight' must fit): {too_wide}")


def test_figures_have_alt_text_that_says_something():
    """Notebook figures (../_images/) need alt text that reads as a phrase: at least MIN_ALT_WORDS
    words with letters, not a file path, not a number or a lead-in ("0.973", "Per class:")."""
    bad = []
    for nb in NOTEBOOKS:
        for tag in re.findall(r"<img\b[^>]*>", page(nb.stem)):
            if 'src="../_images/' not in tag:
                continue  # the theme's own icons (Binder logo, ...)
            alt = htmllib.unescape(re.search(r'alt="([^"]*)"', tag).group(1)) if "alt=" in tag else ""
            if len(words(alt)) < MIN_ALT_WORDS or re.search(r"\.(png|jpe?g|gif|svg)$|_images/|jupyter_execute", alt):
                bad.append(f"{nb.stem}: {alt!r}")
    assert not bad, f"figures without meaningful alt text (see book/_ext/figure_alt.py): {bad}"


def scoreboard_rows(html: str) -> list[dict[str, str]]:
    """Every row of the scoreboard's tables as {column header: cell text}."""
    rows = []
    for table in re.findall(r"<table\b.*?</table>", html, flags=re.S):
        header = [text_of(th) for th in re.findall(r"<th\b[^>]*>(.*?)</th>", table, flags=re.S)]
        for tr in re.findall(r"<tr\b[^>]*>(.*?)</tr>", table, flags=re.S):
            cells = [text_of(td) for td in re.findall(r"<td\b[^>]*>(.*?)</td>", tr, flags=re.S)]
            if cells:
                rows.append(dict(zip(header, cells)))
    return rows


def letters(text: str) -> str:
    """Letters and digits only: Markdown in a note (`code`, *emphasis*) renders as markup."""
    return re.sub(r"[\W_]+", "", text)


def test_scoreboard_rows_link_to_their_chapters_and_show_notes():
    """Each chapter's heading links to it, and a row whose result has a note shows that note
    in the 'source and setting' column (where the paper's number comes from, what ours ran on)."""
    html = (HTML / "book" / "scoreboard.html").read_text()
    shown = [row for row in scoreboard_rows(html) if "claim" in row]  # not the summary's rows
    assert shown and all("source and setting" in row for row in shown), "no 'source and setting' column"
    notes = {(letters(row["claim"]), letters(row["source and setting"])) for row in shown}
    missing = []
    for results in sorted((ROOT / "results").glob("*.json")):
        stem = results.name.split(".")[0]
        assert f'href="../notebooks/{stem}.html' in html, f"no link to {stem}"
        for row in json.loads(results.read_text()):
            if (row.get("note") or "").strip() and (letters(row["claim"]), letters(row["note"])) not in notes:
                missing.append(f"{results.name}: {row['claim']!r}")
    assert not missing, f"rows whose note is not shown on the scoreboard: {missing[:3]}"


def test_pages_work_offline():
    for html_file in [HTML / "book" / "intro.html", *(HTML / "notebooks").glob("*.html")]:
        html = html_file.read_text()
        assert "cdn.jsdelivr.net/npm/mathjax" not in html, f"{html_file.name} loads MathJax from a CDN"
    assert (HTML / "_static" / "mathjax" / "tex-chtml.js").exists()
    assert (HTML / "favicon.ico").exists()


def test_every_script_once_per_page():
    html = (HTML / "book" / "intro.html").read_text()
    assert html.count("const THEBE_JS_URL") <= 1


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_figures_are_numbered_with_captions_under_them(nb):
    """Every figure a notebook outputs sits in a <figure> whose caption, under the image, starts
    with its number in the chapter ("Fig. 5.2", book/_ext/chapter_numbers.py); the text never
    says "the figure below"."""
    html = page(nb.stem)
    images = re.findall(r'<img[^>]*src="\.\./_images/', html)
    numbered = 0
    for figure in re.findall(r"<figure\b.*?</figure>", html, flags=re.S):
        if 'src="../_images/' in figure:
            image_at, caption_at = figure.find("<img"), figure.find("<figcaption")
            assert caption_at > image_at >= 0, "a figure's caption must come after its image"
            assert re.search(rf'class="caption-number">Fig\. {int(nb.name[:2])}\.\d+ ', figure), \
                "a caption without its number in the chapter (Fig. N.k)"
            numbered += figure.count('src="../_images/')
    assert numbered == len(images), f"{len(images) - numbered} of {len(images)} figures are not numbered"
    assert not re.search(r"\b(the|this) figure (below|above)", text_of(visible_text(html)), re.I)


def test_book_pages_name_no_material_outside_the_book():
    for path in [HTML / "index.html", *(HTML / "book").rglob("*.html"), *(HTML / "notebooks").glob("*.html")]:
        text = text_of(visible_text(path.read_text()))
        found = re.findall(r"papers\.md|fact sheet|DESIGN\.md", text)
        assert not found, f"{path.relative_to(HTML)} names {found}"


def test_scoreboard_and_maths_stay_readable_on_a_phone():
    """At 390 px the scoreboard's rows become cards of labelled lines (every cell names its
    column in data-label, and the CSS shows it), and display equations scroll inside their box."""
    html = (HTML / "book" / "scoreboard.html").read_text()
    cells = re.findall(r"<td\b[^>]*>", html)
    assert cells and all("data-label=" in cell for cell in cells), "a scoreboard cell without data-label"
    css = (HTML / "_static" / "book.css").read_text()
    assert "attr(data-label)" in css and re.search(r'mjx-container\[display="true"\][^}]*overflow-x: auto', css)
