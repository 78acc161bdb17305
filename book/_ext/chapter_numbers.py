"""Sphinx extension: figures, tables and equations numbered per chapter, as a textbook does.

Sphinx numbers figures and display equations through the whole book (the third chapter's first
figure might be "Fig. 14"). After Sphinx has assigned its numbers, this extension renumbers
every numbered item of a chapter page ``notebooks/NN_slug`` as ``NN.k``: the chapter number
from the file name (the same number as the chapter's exercises, "Exercise 5.1") and ``k``
counting from 1 in the order Sphinx found them on the page. So the second figure of chapter 05
is "Fig. 5.2" and its third equation "(5.3)", in captions and in every ``{numref}`` and
``{eq}`` that points at them. Pages that are not chapters keep Sphinx's numbers.
"""
from __future__ import annotations

import re

CHAPTER = re.compile(r"notebooks/([0-9]{2})_")


def renumber(fignumbers: dict[str, dict[str, dict[str, tuple[int, ...]]]]) -> None:
    """Rewrite ``env.toc_fignumbers`` in place: per chapter page and per kind (figure, table,
    code block, display equation), the items in their existing order become (chapter, 1..n)."""
    for docname, kinds in fignumbers.items():
        found = CHAPTER.match(docname)
        if not found:
            continue
        chapter = int(found.group(1))
        for kind, numbers in kinds.items():
            ordered = sorted(numbers, key=lambda ident: numbers[ident])
            kinds[kind] = {ident: (chapter, k) for k, ident in enumerate(ordered, start=1)}


def _renumber(app, env) -> list[str]:
    renumber(env.toc_fignumbers)
    return []


def setup(app):
    # After Sphinx's own toctree collector has numbered everything (it runs at priority 500).
    app.connect("env-get-updated", _renumber, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
