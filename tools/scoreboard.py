"""Build ``book/scoreboard.md`` from the measured results in ``results/*.json``.

Run by ``make book`` / ``make test`` before the book build (``python -m tools.scoreboard``);
a test checks that the committed page matches the committed results.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from utils.results import load_all  # noqa: E402

PAGE = ROOT / "book" / "scoreboard.md"
NOTEBOOKS = ROOT / "notebooks"

HEADER = """# Scoreboard: papers vs ours

Every number below was measured by a notebook of this book and written by
`utils.results.record`; nothing is typed in by hand. *tiny* rows come from the offline
CPU profile (generated data, EfficientNet-Lite0), so they are **not comparable** to the
papers' numbers even where a paper value is shown for orientation, except for values that do
not depend on the profile (the MobileNet chapter's counts by formula), which are compared in
any profile; *full* rows come from the paper's own setting. Status: `reproduced` (within
tolerance of the paper), `gap` (outside it; the chapter explains why), `not comparable (tiny
profile)`, `ours only`.

"""


def _fmt(value: float | None, unit: str | None) -> str:
    """Numbers as the papers print them: percentages with one decimal, others 4 significant digits."""
    if value is None:
        return "–"
    return f"{value:.1f}" if unit == "%" else f"{value:.4g}"


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


def render(results: dict[str, list[dict]]) -> str:
    """The scoreboard page as Markdown: per chapter (a link to it), one table row per claim,
    with the paper's number, ours, the unit, the profile, the status and where the paper's
    number comes from (or what ours was measured on)."""
    lines = [HEADER]
    chapters: dict[str, list[dict]] = {}
    for stem, rows in results.items():
        chapters.setdefault(stem.rsplit(".", 1)[0], []).extend(rows)
    for chapter, rows in chapters.items():
        lines += [f"## [{_cell(_title(chapter))}](../notebooks/{chapter}.ipynb)", "",
                  "| claim | paper | ours | unit | profile | status | source and setting |",
                  "|---|---|---|---|---|---|---|"]
        for row in rows:
            unit = row.get("unit") or ""
            lines.append(f"| {_cell(row['claim'])} | {_fmt(row['paper'], unit)} | {_fmt(row['ours'], unit)} | "
                         f"{_cell(unit)} | {row['profile']} | {row['status']} | {_cell(row.get('note') or '')} |")
        lines.append("")
    if not chapters:
        lines.append("No results recorded yet.")
    return "\n".join(lines).rstrip("\n") + "\n"


def main() -> int:
    PAGE.write_text(render(load_all()))
    print(f"wrote {PAGE.relative_to(PAGE.parent.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
