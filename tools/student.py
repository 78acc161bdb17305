"""Write the student edition of every chapter: the notebooks without their solutions.

    python -m tools.student [--output _build/student]

For each ``notebooks/NN_slug.ipynb`` it writes ``<output>/NN_slug.ipynb`` with

* every cell tagged ``solution`` (the folded worked solution under each exercise) or ``answer``
  (the code that checks the numbers quoted in the solutions) removed, and any other Markdown
  cell that holds a ``{admonition} Solution`` block removed too, so that no solution survives
  even in a chapter whose cells are not tagged;
* the outputs and execution counts of every remaining code cell cleared: the student edition
  is for running, and a student sees each figure and number appear as they run the cell;
* a short note under the title saying so, and where to run the notebook.

Everything else (the exercises, the text, the code, the cell tags that fold the setup cell) is
kept as it is. Run a student notebook from the ``notebooks/`` folder of a clone of the
repository (its setup cell imports ``utils`` from there), or on Colab, where the setup cell
clones the repository itself. The book build writes the same files into the site
(``book/_ext/student_edition.py``) and each chapter page links its own; generated notebooks are
never committed.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
REMOVED_TAGS = frozenset({"solution", "answer"})
SOLUTION_BLOCK = "{admonition} Solution"


def is_solution(cell: nbformat.NotebookNode) -> bool:
    """Whether ``cell`` holds a solution or an answer check (by tag, or by its Solution block)."""
    tags = set(cell.get("metadata", {}).get("tags", []))
    return bool(REMOVED_TAGS & tags) or (cell.cell_type == "markdown" and SOLUTION_BLOCK in cell.source)


NOTE = ("> **Student edition.** The worked solutions and the cells that check them are left out, "
        "and every output is cleared: run the cells in order. Run the notebook from the `notebooks/` "
        "folder of a clone of the repository (its setup cell imports `utils` from there), or on "
        "Colab, where the setup cell clones the repository itself.")


def student_edition(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A copy of ``nb`` without solution and answer cells, every code cell's outputs cleared,
    and a note under the first cell (the title) saying what this edition is."""
    out = nbformat.from_dict(nb)
    out.cells = [cell for cell in out.cells if not is_solution(cell)]
    for cell in out.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    out.cells.insert(1 if out.cells else 0, nbformat.v4.new_markdown_cell(NOTE))
    return out


def chapters(folder: Path = NOTEBOOKS) -> list[Path]:
    """The chapter notebooks, ``NN_slug.ipynb``, in order."""
    return sorted(folder.glob("[0-9][0-9]_*.ipynb"))


def write_student_edition(output: Path, folder: Path = NOTEBOOKS) -> list[Path]:
    """Write the student edition of every chapter in ``folder`` into ``output``; returns the paths."""
    found = chapters(folder)
    if not found:
        raise FileNotFoundError(f"no chapter notebooks (NN_slug.ipynb) in {folder}")
    output.mkdir(parents=True, exist_ok=True)
    written = []
    for path in found:
        target = output / path.name
        nbformat.write(student_edition(nbformat.read(path, as_version=4)), target)
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=ROOT / "_build" / "student")
    args = parser.parse_args(argv)
    written = write_student_edition(args.output)
    print(f"student edition: {len(written)} notebooks in {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
