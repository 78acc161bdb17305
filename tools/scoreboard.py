"""Build ``book/scoreboard.md`` from the measured results in ``results/*.json``.

Run by ``make book`` / ``make test`` before the book build (``python -m tools.scoreboard``);
a test checks that the committed page matches the committed results.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from utils.results import load_all  # noqa: E402

PAGE = Path(__file__).resolve().parent.parent / "book" / "scoreboard.md"

HEADER = """# Scoreboard: papers vs ours

Every number below was measured by a notebook of this book and written by
`utils.results.record`; nothing is typed in by hand. *tiny* rows come from the offline
CPU profile (generated data, EfficientNet-Lite0), so they are **not comparable** to the
papers' numbers even where a paper value is shown for orientation; *full* rows come from
the paper's own setting. Status: `reproduced` (within tolerance of the paper), `gap`
(outside it; the chapter explains why), `not comparable (tiny profile)`, `ours only`.

"""


def _fmt(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.4g}"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|")


def render(results: dict[str, list[dict]]) -> str:
    """The scoreboard page as Markdown: one table, one row per recorded claim."""
    lines = [HEADER, "| chapter | claim | paper | ours | unit | profile | status |",
             "|---|---|---|---|---|---|---|"]
    for stem, rows in results.items():
        chapter = stem.rsplit(".", 1)[0]
        for row in rows:
            lines.append(f"| {chapter} | {_cell(row['claim'])} | {_fmt(row['paper'])} | {_fmt(row['ours'])} | "
                         f"{row.get('unit') or ''} | {row['profile']} | {row['status']} |")
    if not any(results.values()):
        lines.append("| – | no results recorded yet | | | | | |")
    return "\n".join(lines) + "\n"


def main() -> int:
    PAGE.write_text(render(load_all()))
    print(f"wrote {PAGE.relative_to(PAGE.parent.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
