"""Sphinx extension: the student edition of each chapter, written into the site and linked.

At the end of an HTML build, ``tools.student.write_student_edition`` writes every chapter
notebook without its solutions and answer cells (outputs cleared) into ``<site>/student/``.
Each chapter page (``notebooks/NN_slug``) gets a line under its title that links its own
student notebook as a download. The teaching guide links the same files. Nothing generated is
committed: the notebooks are rebuilt from ``notebooks/`` by every build.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

from docutils import nodes

ROOT = Path(__file__).resolve().parents[2]
FOLDER = "student"
CHAPTER = re.compile(r"notebooks/([0-9]{2}_[A-Za-z0-9_]+)$")


def link_html(stem: str, prefix: str = "../") -> str:
    """The download link to chapter ``stem``'s student notebook, from a page one folder deep."""
    return (f'<p class="student-edition">Student edition: <a href="{prefix}{FOLDER}/{stem}.ipynb" '
            f'download="{stem}.ipynb">{stem}.ipynb</a> (the exercises without their solutions, '
            "outputs cleared, ready to run).</p>")


def _add_link(app, doctree: nodes.document) -> None:
    """Insert the download line after the chapter's title."""
    found = CHAPTER.match(app.env.docname)
    if not found:
        return
    section = next(iter(doctree.findall(nodes.section)), None)
    if section is None or not section.children or not isinstance(section[0], nodes.title):
        return
    section.insert(1, nodes.raw("", link_html(found.group(1)), format="html"))


def _write_notebooks(app, exception) -> None:
    if exception is not None or app.builder.format != "html":
        return
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from tools.student import write_student_edition

    write_student_edition(Path(app.outdir) / FOLDER)


def setup(app):
    app.connect("doctree-read", _add_link)
    app.connect("build-finished", _write_notebooks)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
