"""The student edition (tools/student.py): no solution survives, everything else does."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from tools import student

ROOT = Path(__file__).resolve().parent.parent
HTML = ROOT / "_build" / "html"
NOTEBOOKS = student.chapters()


def tiny_notebook() -> nbformat.NotebookNode:
    """An exercise, its tagged solution, an untagged Solution block, an answer cell, a lesson cell."""
    md, code = nbformat.v4.new_markdown_cell, nbformat.v4.new_code_cell
    cells = [
        md("# Title"),
        code("x = 1", execution_count=1, outputs=[nbformat.v4.new_output("stream", text="1\n")]),
        md("**Exercise 2.1** (easy). Double x."),
        md("```{admonition} Solution\n:class: dropdown\n2\n```", metadata={"tags": ["solution"]}),
        md("Another solution:\n```{admonition} Solution\n:class: dropdown\n3\n```"),
        code("assert 2 * x == 2", metadata={"tags": ["answer", "hide-input"]}, execution_count=2),
        code("print(x)", metadata={"tags": ["hide-input"]}, execution_count=3),
    ]
    return nbformat.v4.new_notebook(cells=cells)


def test_student_edition_removes_solutions_and_clears_outputs():
    out = student.student_edition(tiny_notebook())
    sources = [c.source for c in out.cells]
    assert sources == ["# Title", student.NOTE, "x = 1", "**Exercise 2.1** (easy). Double x.", "print(x)"]
    assert all(c.outputs == [] and c.execution_count is None for c in out.cells if c.cell_type == "code")
    assert out.cells[4].metadata["tags"] == ["hide-input"], "other tags are kept"
    assert len(tiny_notebook().cells) == 7, "the input notebook is not changed"


def test_no_folder_of_chapters_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no chapter notebooks"):
        student.write_student_edition(tmp_path / "out", folder=tmp_path)


def test_make_student_writes_every_chapter_without_solution_text(tmp_path):
    out = subprocess.run([sys.executable, "-m", "tools.student", "--output", str(tmp_path)], cwd=ROOT,
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in tmp_path.glob("*.ipynb")) == [p.name for p in NOTEBOOKS]
    for path in NOTEBOOKS:
        original = nbformat.read(path, as_version=4)
        edition = nbformat.read(tmp_path / path.name, as_version=4)
        text = (tmp_path / path.name).read_text()
        assert "{admonition} Solution" not in text, f"{path.name}: solution text survives"
        assert not any({"solution", "answer"} & set(c.metadata.get("tags", [])) for c in edition.cells)
        kept = [c.source for c in original.cells if not student.is_solution(c)]
        assert [c.source for c in edition.cells] == kept[:1] + [student.NOTE] + kept[1:], \
            f"{path.name}: a non-solution cell was lost"
        assert len(re.findall(r"\*\*Exercise \d+\.\d+\*\*", text)) == len(
            re.findall(r"\*\*Exercise \d+\.\d+\*\*", path.read_text())), "every exercise is kept"
        assert all(not c.get("outputs") for c in edition.cells if c.cell_type == "code")


@pytest.mark.builthtml
@pytest.mark.skipif(not (HTML / "index.html").exists(), reason="book not built: run `make html`")
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_built_chapter_links_its_student_notebook(path):
    page = (HTML / "notebooks" / f"{path.stem}.html").read_text()
    assert f'href="../student/{path.name}"' in page, "no download link to the student notebook"
    assert (HTML / "student" / path.name).exists(), "the student notebook is not in the site"
    assert "{admonition} Solution" not in (HTML / "student" / path.name).read_text()
    assert f'href="../student/{path.name}"' in (HTML / "book" / "teaching.html").read_text(), \
        "the teaching guide does not link it"
