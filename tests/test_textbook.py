"""The course apparatus of every chapter, checked on the notebooks' sources (no build needed).

What a student and an instructor rely on: each chapter opens with what you will learn and ends
with a summary; each paper chapter (02-08) has at least eight graded exercises with a folded,
worked solution; every figure is numbered with a caption; the bookkeeping of the scoreboard
(``results.record``, ``RUN.claim``) is folded away; code fits 88 columns and is formatted; the
paper chapters link their sources; no page names a file that the repository does not hold.
"""
from __future__ import annotations

import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
PAPER_CHAPTERS = [p for p in NOTEBOOKS if "02" <= p.name[:2] <= "08"]
BOOK_PAGES = sorted((ROOT / "book").glob("*.md")) + sorted((ROOT / "book" / "labs").glob("*.md"))
MAX_COLUMNS = 88
MIN_EXERCISES = 8
HIDDEN = {"hide-input", "remove-input", "remove-cell"}
BOOKKEEPING = ("results.record(", "RUN.claim(")
EXERCISE = re.compile(r"\*\*Exercise (\d+)\.(\d+)\*\* \((easy|medium|hard)\)\.")
# Names of material outside the repository that prose must never point a reader to.
OUTSIDE = re.compile(r"papers\.md|fact sheet|DESIGN\.md|\.\./shared\b|verified (paper )?(list|numbers)",
                     re.IGNORECASE)
# A file name in prose: a path-like word ending in an extension the repository uses.
FILE_NAME = re.compile(r"(?<![\w/.-])((?:[\w.-]+/)*[\w-]+\.(?:md|py|ipynb|txt|json|ya?ml|cfg|toml|bib|"
                       r"cff|sh))(?![\w/-])")


def ids(paths: list[Path]) -> list[str]:
    return [p.stem for p in paths]


def tags(cell) -> set[str]:
    return set(cell.metadata.get("tags", []))


@cache
def read(path: Path):
    return nbformat.read(path, as_version=4)


def markdown(path: Path) -> list[str]:
    return [c.source for c in read(path).cells if c.cell_type == "markdown"]


@cache
def repository_files() -> tuple[str, ...]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
    return tuple(out.stdout.splitlines())


def missing_files(text: str, folder: Path = ROOT) -> list[str]:
    """File names mentioned in ``text`` (a page in ``folder``) that the repository does not hold.

    A relative path (``../book/setup.md``) is resolved from ``folder``; a bare name
    (``cam.py``) may be any tracked file's last part. Web addresses, placeholders (``<stem>``,
    ``NN_slug``, ``*``) and generated output (``_build/``, ``results/*.full.json``, the GPU
    check's ``gpu-check.json`` and ``summary.json``, the site's ``student/`` notebooks) are not
    files a reader is asked to find in the repository.
    """
    text = re.sub(r"\[[^\]]*\]\(https?://[^)]*\)", " ", text)  # a file of another repository, linked
    text = re.sub(r"https?://\S+", " ", text)
    missing = []
    for name in FILE_NAME.findall(text):
        if name.startswith(("_build", ".venv", "../student/")) or re.search(r"NN_|full\.json$|gpu-check\.json$|summary\.json$|^out\.ipynb$", name):
            continue
        path = (folder / name).resolve()
        relative = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else None
        if relative not in repository_files() and not any(
                f == name or f.endswith("/" + name) for f in repository_files()):
            missing.append(name)
    return missing


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=ids(NOTEBOOKS))
def test_chapter_opens_with_what_you_will_learn(nb):
    first = read(nb).cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# "), "the first cell holds the title"
    assert re.search(r"```\{admonition\} You will learn\n:class: tip\n(- .+\n( +.+\n)*){3,6}```", first.source), \
        "the first cell needs a 'You will learn' admonition (class tip) of 3-6 bullets"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=ids(NOTEBOOKS))
def test_chapter_ends_with_a_summary(nb):
    cells = read(nb).cells
    summary = [i for i, c in enumerate(cells) if c.cell_type == "markdown"
               and re.search(r"```\{admonition\} Summary\n:class: important\n(- .+\n( +.+\n)*){4,7}```", c.source)]
    assert summary, "no 'Summary' admonition (class important) with bullets"
    exercises = [i for i, c in enumerate(cells) if c.cell_type == "markdown" and EXERCISE.match(c.source)]
    assert not exercises or summary[-1] > exercises[-1], "the Summary comes after the exercises"


@pytest.mark.parametrize("nb", PAPER_CHAPTERS, ids=ids(PAPER_CHAPTERS))
def test_paper_chapter_has_graded_exercises_with_folded_solutions(nb):
    cells = read(nb).cells
    chapter = int(nb.name[:2])
    numbers = []
    for index, cell in enumerate(cells):
        found = EXERCISE.match(cell.source) if cell.cell_type == "markdown" else None
        if not found:
            continue
        assert int(found.group(1)) == chapter, f"exercise {found.group(0)} is numbered for another chapter"
        numbers.append(int(found.group(2)))
        after = cells[index + 1] if index + 1 < len(cells) else None
        assert after is not None and after.cell_type == "markdown" and "solution" in tags(after), \
            f"exercise {chapter}.{numbers[-1]} is not followed by a markdown cell tagged 'solution'"
        assert re.search(r"```\{admonition\} Solution\n:class: dropdown\n", after.source), \
            f"the solution of exercise {chapter}.{numbers[-1]} is not a folded Solution admonition"
    assert len(numbers) >= MIN_EXERCISES, f"{len(numbers)} exercises; a paper chapter needs {MIN_EXERCISES}"
    assert numbers == list(range(1, len(numbers) + 1)), f"exercises numbered {numbers}"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=ids(NOTEBOOKS))
def test_every_figure_is_numbered_with_a_caption(nb):
    bad, names = [], []
    for index, cell in enumerate(read(nb).cells):
        if cell.cell_type != "code" or "remove-output" in tags(cell) or "remove-cell" in tags(cell):
            continue
        pictures = sum("image/png" in o.get("data", {}) for o in cell.get("outputs", []))
        if not pictures:
            continue
        figure = cell.metadata.get("mystnb", {}).get("figure", {})
        if pictures > 1:
            bad.append(f"cell {index}: {pictures} figures in one cell")
        shown = [o for o in cell.get("outputs", []) if o.get("output_type") != "stream"]
        if len(shown) > 1:  # myst-nb wraps every displayed output in the figure: one target twice
            bad.append(f"cell {index}: a figure cell must display only its figure (a table too?)")
        if not str(figure.get("caption", "")).strip() or not re.fullmatch(r"fig-[\w-]+", figure.get("name", "")):
            bad.append(f"cell {index}: no mystnb.figure caption and name (fig-...)")
        names.append(figure.get("name"))
    assert not bad, bad
    assert len(names) == len(set(names)), f"figure names repeat: {names}"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=ids(NOTEBOOKS))
def test_text_refers_to_figures_and_equations_by_number(nb):
    text = "\n".join(markdown(nb))
    assert not re.search(r"\b(the|this) (figure|plot|picture) (below|above)", text, re.IGNORECASE), \
        "refer to figures as {numref}`fig-...`, not 'the figure below'"
    for display in re.findall(r"^\$\$(.*?)\$\$(.*)$", text, re.DOTALL | re.MULTILINE):
        assert re.match(r"\s*\(eq-[\w-]+\)", display[1]), f"display equation without a label: {display[0].strip()[:60]}"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=ids(NOTEBOOKS))
def test_bookkeeping_is_folded_away(nb):
    visible = [c.source for c in read(nb).cells if c.cell_type == "code" and not HIDDEN & tags(c)]
    shown = [s.splitlines()[0] for s in visible if any(b in s for b in BOOKKEEPING)]
    assert not shown, f"visible cells call results.record / RUN.claim (tag them hide-input): {shown[:3]}"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=ids(NOTEBOOKS))
def test_code_lines_fit_88_columns(nb):
    long = [f"{len(line)}: {line[:50]}" for c in read(nb).cells if c.cell_type == "code"
            for line in c.source.splitlines() if len(line) > MAX_COLUMNS]
    assert not long, f"{len(long)} code lines over {MAX_COLUMNS} columns, e.g. {long[:3]}"


def test_notebooks_are_formatted_with_ruff():
    ruff = Path(sys.executable).with_name("ruff")
    if not ruff.exists():
        pytest.skip("ruff is not installed in this environment (it is pinned in requirements.txt)")
    out = subprocess.run([str(ruff), "format", "--check", "notebooks"], cwd=ROOT, capture_output=True,
                         text=True, check=False)
    assert out.returncode == 0, f"run `ruff format notebooks/NN_slug.ipynb`:\n{out.stdout}{out.stderr}"


@pytest.mark.parametrize("nb", PAPER_CHAPTERS, ids=ids(PAPER_CHAPTERS))
def test_paper_chapter_links_its_sources(nb):
    text = "\n".join(markdown(nb))
    assert re.search(r"\]\(https://[^)\s]+\)|<https://", text), "a paper chapter needs external links to its sources"
    assert "(../book/sources.md)" in text, "link the sources appendix: [sources appendix](../book/sources.md)"


@pytest.mark.parametrize("path", NOTEBOOKS + BOOK_PAGES, ids=ids(NOTEBOOKS + BOOK_PAGES))
def test_prose_names_only_files_in_the_repository(path):
    text = "\n".join(markdown(path)) if path.suffix == ".ipynb" else path.read_text()
    outside = [m.group(0) for m in OUTSIDE.finditer(text)]
    assert not outside, f"prose points outside the repository: {outside}"
    missing = missing_files(text, path.parent)
    assert not missing, f"names files that are not in the repository: {missing}"


def test_the_file_name_check_catches_what_it_should():
    assert missing_files("see `papers.md` and utils/not_there.py") == ["papers.md", "utils/not_there.py"]
    assert missing_files("`utils/cam.py`, cam.py, Makefile, https://x.org/a.md, _build/html/index.html") == []
    assert missing_files("[`codes/networks.py`](https://github.com/a/b/blob/HEAD/codes/networks.py)") == []
    assert missing_files("[setup](../book/setup.md)", ROOT / "notebooks") == []
    assert missing_files("[setup](../book/nowhere.md)", ROOT / "notebooks") == ["../book/nowhere.md"]
    assert OUTSIDE.search("the book's fact sheet") and not OUTSIDE.search("a sheet of facts")


def test_sources_appendix_is_in_the_book():
    text = (ROOT / "book" / "sources.md").read_text()
    assert "sources" in (ROOT / "_toc.yml").read_text()
    for issue in ("issues/4", "issues/5", "issues/10"):
        assert f"github.com/nuclearboy95/Anomaly-Detection-PatchSVDD-PyTorch/{issue}" in text, issue
    for post in ("https://hyunseoing.tistory.com/39", "https://you359.github.io/cnn%20visualization/CAM/",
                 "https://cumulu-s.tistory.com/40", "https://cumulu-s.tistory.com/42",
                 "https://github.com/PeterKim1/paper_code_review"):
        assert post in text, post
    assert len(re.findall(r"\]\(https://", text)) >= 30


def test_defect_lab_starter_code_prints_what_the_sheet_quotes(capsys):
    """The lab sheet's starter code runs on the package as it is, and prints the quoted line."""
    sheet = (ROOT / "book" / "labs" / "defect_type.md").read_text()
    code = re.search(r"```python\n(.*?)```", sheet, re.DOTALL).group(1)
    quoted = re.search(r"```text\n(crack: .*?)\n```", sheet, re.DOTALL).group(1)
    exec(compile(code, "defect_type.md", "exec"), {"__name__": "lab"})  # noqa: S102 (the sheet's own code)
    assert capsys.readouterr().out.strip() == quoted


@pytest.mark.parametrize("name", ["intro.md", "setup.md", "teaching.md"])
def test_run_times_come_only_from_the_measured_substitutions(name):
    """A chapter's run time on these pages is a substitution (``{{ runtime_<stem> }}`` measured,
    ``{{ full_estimate_<stem> }}`` estimated, both defined once), never typed in beside it."""
    text = re.sub(r"\{\{[^}]*\}\}", " ", (ROOT / "book" / name).read_text())
    typed = re.findall(r"\b\d+(?:\.\d+)?\s?(?:s|sec|min|minutes?|hours?)\b|minutes to an hour|hours per", text)
    assert not typed, f"run times typed into {name}: {typed}"


def test_setup_gives_the_full_profile_recipe_in_order_with_real_targets():
    setup = (ROOT / "book" / "setup.md").read_text()
    recipe = setup[setup.index("## Full profile on a GPU"):]
    steps = ["make data ARGS=--plan", "`make data`", "make gpu-check", "make book PROFILE=full", "`full`"]
    places = [recipe.find(step) for step in steps]
    assert -1 not in places and places == sorted(places), dict(zip(steps, places))
    makefile = (ROOT / "Makefile").read_text()
    for target in ("data", "gpu-check", "book", "student"):
        assert re.search(rf"^{target}:", makefile, re.M), f"the Makefile has no `{target}` target"
    numerics = setup[setup.index("**Numerics.**"):].split("\n\n")[0]
    assert "TF32" in numerics and "deterministic" in numerics and numerics.count(". ") + 1 == 2


def test_hooks_lab_starter_code_prints_what_the_sheet_quotes(capsys):
    sheet = (ROOT / "book" / "labs" / "hooks.md").read_text()
    code = re.search(r"```python\n(.*?)```", sheet, re.DOTALL).group(1)
    quoted = re.search(r"```text\n(module 0: .*?)\n```", sheet, re.DOTALL).group(1)
    exec(compile(code, "hooks.md", "exec"), {"__name__": "lab"})  # noqa: S102 (the sheet's own code)
    assert capsys.readouterr().out.strip() == quoted


def test_teaching_guide_has_objectives_rubrics_and_material_for_every_lab():
    guide = (ROOT / "book" / "teaching.md").read_text()
    assert "## Learning objectives per week" in guide
    for week in range(1, 11):
        assert re.search(rf"^{week}\. \*\*", guide, re.M), f"no learning objectives for week {week}"
        assert re.search(rf"\*\*Lab {week} \(", guide), f"lab {week} has no rubric criterion or sheet"
    sheets = sorted((ROOT / "book" / "labs").glob("*.md"))
    toc = (ROOT / "_toc.yml").read_text()
    for sheet in sheets:
        text = sheet.read_text()
        assert "## Rubric" in text and "## Steps" in text and "## Learning objectives" in text, sheet.name
        assert f"labs/{sheet.stem}" in guide and f"book/labs/{sheet.stem}" in toc, sheet.name
    for stem in (p.stem for p in NOTEBOOKS):
        assert f'href="../student/{stem}.ipynb"' in guide, f"the guide does not link the student {stem}"


def test_figures_and_equations_are_numbered_per_chapter():
    sys.path.insert(0, str(ROOT / "book" / "_ext"))
    from chapter_numbers import renumber

    numbers = {"notebooks/05_mobilenet": {"figure": {"fig-b": (16,), "fig-a": (14,)},
                                          "displaymath": {"eq-x": (12,), "eq-y": (13,)}},
               "book/setup": {"figure": {"fig-s": (3,)}}}
    renumber(numbers)
    assert numbers["notebooks/05_mobilenet"] == {"figure": {"fig-a": (5, 1), "fig-b": (5, 2)},
                                                 "displaymath": {"eq-x": (5, 1), "eq-y": (5, 2)}}
    assert numbers["book/setup"] == {"figure": {"fig-s": (3,)}}, "pages that are not chapters keep theirs"
