"""Build ``book/scoreboard.md`` from the measured results in ``results/*.json``.

Run by ``make book`` / ``make test`` before the book build (``python -m tools.scoreboard``);
a test checks that the committed page matches the committed results.
"""
from __future__ import annotations

import html
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from utils.results import results_dir  # noqa: E402

PAGE = ROOT / "book" / "scoreboard.md"
NOTEBOOKS = ROOT / "notebooks"

HEADER = """# Scoreboard: papers vs ours

Every number below was measured by a notebook of this book and written by
`utils.results.record`; nothing is typed in by hand. Numbers are shown with the digits recorded:
the paper's as printed, ours to four significant digits.

*tiny* rows come from the offline CPU profile (generated data, EfficientNet-Lite0), so they are
**not comparable** with the papers' numbers even where a paper value is shown for orientation,
except for values that do not depend on the profile (the MobileNet chapter's counts by
formula), which are compared in any profile. *full* rows come from the paper's own setting.

Status: `reproduced` (within tolerance of the paper), `gap` (outside it; the chapter explains
why), `misprint` (the paper's printed value is our value with two adjacent digits swapped),
`not comparable` (tiny profile), `ours only` (no paper number).

"""

#: Statuses in the order of the summary's columns; a status not listed gets a column after them.
STATUSES = ("reproduced", "gap", "misprint", "not comparable", "ours only")


def _decimals(value: float) -> int:
    """How many decimals ``value`` was written with (as Python prints it: 1.19 -> 2, 462.0 -> 0)."""
    text = repr(float(value))
    return 0 if text.endswith(".0") or "e" in text else len(text.split(".")[1])


def _fmt(value: float | None, unit: str | None = None) -> str:
    """A number with the digits it was recorded with (up to 6 significant), and its unit."""
    if value is None:
        return "–"
    text = f"{value:,.6g}"
    return f"{text} {unit}" if unit else text


def _transposed(paper: float | None, ours: float) -> bool:
    """Whether ``paper`` is ``ours`` (at the paper's printed precision) with two adjacent
    digits swapped, e.g. 1.19 printed for 1.906 (1.91): a misprint, not a gap."""
    if paper is None:
        return False
    printed, counted = (f"{v:.{_decimals(paper)}f}".replace(".", "") for v in (paper, ours))
    if printed == counted or len(printed) != len(counted):
        return False
    diff = [i for i, (a, b) in enumerate(zip(printed, counted)) if a != b]
    return len(diff) == 2 and diff[1] == diff[0] + 1 and printed[diff[0]] == counted[diff[1]] \
        and printed[diff[1]] == counted[diff[0]]


def status(row: dict) -> str:
    """The status shown for a recorded row: as recorded, except a gap that is a misprint in the
    paper (adjacent digits swapped) and the tiny profile's long form shortened."""
    recorded = row["status"]
    if recorded == "gap" and _transposed(row.get("paper"), row["ours"]):
        decimals = _decimals(row["paper"])
        return f"misprint: printed {row['paper']:.{decimals}f}, counted {row['ours']:.{decimals}f}"
    return recorded.removesuffix(" (tiny profile)")


def _kind(shown: str) -> str:
    return shown.split(":")[0]


def _cell(text: object) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _title(stem: str) -> str:
    """The chapter's title: the first heading of its notebook, else its stem."""
    path = NOTEBOOKS / f"{stem}.ipynb"
    if path.exists():
        for cell in json.loads(path.read_text())["cells"]:
            source = "".join(cell["source"])
            if cell["cell_type"] == "markdown" and source.startswith("# "):
                return source.splitlines()[0][2:].strip()
    return stem


def _short(stem: str) -> str:
    """'02 Class Activation Maps' from the stem and the title's part before a colon."""
    return f"{stem[:2]} {_title(stem).split(':')[0].strip()}"


def _inline(text: object) -> str:
    """Plain text as HTML on one line: escaped, with `code` spans kept as code."""
    escaped = html.escape(" ".join(str(text).split()))
    return re.sub(r"`([^`]+)`", r"<code>\\1</code>", escaped)


def html_table(header: list[str], rows: list[list[str]], css: str) -> list[str]:
    """A table as raw HTML (cells already HTML), one line per row and no blank line (so Markdown
    keeps it as one block). Each cell carries its column's name in ``data-label``: on a phone
    the book's CSS shows every row as a card of labelled lines instead of columns off-screen."""
    lines = [f'<table class="table {css}">',
             "<thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr></thead>",
             "<tbody>"]
    for row in rows:
        lines.append("<tr>" + "".join(f'<td data-label="{html.escape(h)}">{cell}</td>'
                                      for h, cell in zip(header, row)) + "</tr>")
    return lines + ["</tbody>", "</table>", ""]


def summary(chapters: dict[str, list[dict]]) -> list[str]:
    """The summary table: rows per chapter and per status, with totals."""
    kinds = list(STATUSES) + sorted({_kind(status(r)) for rows in chapters.values() for r in rows}
                                    - set(STATUSES))
    totals = dict.fromkeys(kinds, 0)
    rows = []
    for chapter, chapter_rows in chapters.items():
        counts = dict.fromkeys(kinds, 0)
        for row in chapter_rows:
            counts[_kind(status(row))] += 1
        totals = {k: totals[k] + counts[k] for k in kinds}
        link = f'<a href="../notebooks/{chapter}.html">{_inline(_short(chapter))}</a> ({len(chapter_rows)})'
        rows.append([link] + [str(counts[k]) for k in kinds])
    rows.append([f"<strong>all</strong> ({sum(totals.values())})"]
                + [f"<strong>{totals[k]}</strong>" for k in kinds])
    return ["## Summary", "", *html_table(["chapter (rows)", *kinds], rows, "scoreboard-summary")]


def chapter_results(directory: Path | None = None) -> dict[str, list[dict]]:
    """The recorded rows of every chapter, keyed by file stem (``<chapter>.<profile>``): the
    files ``NN_slug.<profile>.json`` of ``results/`` (other files there, such as the GPU check's
    ``gpu-check.json``, are not chapter results). A file that is not a list of rows is an error
    that names it."""
    directory = directory or results_dir()
    out = {}
    for path in sorted(directory.glob("[0-9][0-9]_*.*.json")):
        try:
            rows = json.loads(path.read_text())
        except ValueError as err:
            raise ValueError(f"results file {path} is not valid JSON ({err}); re-run the chapter") from err
        if not isinstance(rows, list) or not all(isinstance(r, dict) and "claim" in r for r in rows):
            raise ValueError(f"results file {path} must hold a list of rows with a 'claim'")
        out[path.name.removesuffix(".json")] = rows
    return out


def gpu_section(path: Path) -> list[str]:
    """The GPU check's summary (``results/gpu-check.json``, written by ``tools.gpu_check``) as a
    section: the machine, then per chapter the tiny run's time, the claims compared with the
    committed CPU numbers and how many fell outside their tolerance, and the smoke run."""
    if not path.exists():
        return []
    summary = json.loads(path.read_text())
    rows = []
    for stem, row in summary.get("chapters", {}).items():
        outside = "failed" if row.get("claims_outside") is None else str(row["claims_outside"])
        smoke = {None: "skipped", True: "ok", False: "failed"}[row.get("smoke_ok")]
        rows.append([f'<a href="../notebooks/{stem}.html">{_inline(_short(stem))}</a>',
                     f"{row.get('tiny_seconds', 0):.0f} s", str(row.get("claims_compared", "–")), outside, smoke])
    intro = (f"The tiny profile of every chapter on {_inline(summary.get('device', '?'))} (torch "
             f"{_inline(summary.get('torch', '?'))}, {_inline(summary.get('date', '?'))}), each recorded "
             "number compared with the committed CPU number within its tolerance (see the maintainers' "
             f"page); nbval (lax) over the executed copies: {_inline(summary.get('nbval_lax', '?'))}.")
    return ["## GPU check", "", intro, "",
            *html_table(["chapter", "tiny run", "claims compared", "outside tolerance", "smoke run"], rows,
                        "scoreboard")]


def render(results: dict[str, list[dict]], gpu_check: Path | None = None) -> str:
    """The scoreboard page as Markdown: a summary, then per chapter (a link to it) one table row
    per claim, with the paper's number, ours, the status, the profile and where the paper's
    number comes from (or what ours was measured on)."""
    lines = [HEADER]
    chapters: dict[str, list[dict]] = {}
    for stem, rows in results.items():
        chapters.setdefault(stem.rsplit(".", 1)[0], []).extend(rows)
    if not chapters:
        lines.append("No results recorded yet.")
        return "\n".join(lines).rstrip("\n") + "\n"
    lines += summary(chapters)
    if gpu_check is not None:
        lines += gpu_section(gpu_check)
    header = ["claim", "paper", "ours", "status", "profile", "source and setting"]
    for chapter, rows in chapters.items():
        cells = [[_inline(row["claim"]), _fmt(row["paper"], row.get("unit")), _fmt(row["ours"], row.get("unit")),
                  _inline(status(row)), _inline(row["profile"]), _inline(row.get("note") or "")] for row in rows]
        lines += [f"## [{_cell(_title(chapter))}](../notebooks/{chapter}.ipynb)", "",
                  *html_table(header, cells, "scoreboard")]
    return "\n".join(lines).rstrip("\n") + "\n"


def main() -> int:
    PAGE.write_text(render(chapter_results(), results_dir() / "gpu-check.json"))
    print(f"wrote {PAGE.relative_to(PAGE.parent.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
