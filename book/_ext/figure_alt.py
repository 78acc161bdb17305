"""Sphinx extension: meaningful alt text for figures that notebooks output.

myst-nb gives an output image the alt text of its file path unless the cell sets
``metadata.mystnb.image.alt``. This transform replaces such path-like alt text with a sentence
the author wrote before the figure (the book's style puts a sentence before every figure), so a
screen reader announces what the figure shows. The rule:

1. Take the last paragraph before the image that comes from a Markdown cell. myst-nb wraps each
   code cell in a container with class ``cell`` (its source and its ``cell_output``s inside), so
   paragraphs with such an ancestor are outputs (a printed number, a Markdown table) and are
   skipped.
2. Skip paragraphs that do not read as prose: fewer than ``MIN_WORDS`` words containing letters,
   or mostly digits and punctuation.
3. Use the paragraph's first sentence. If it has fewer than ``MIN_WORDS`` words (a bold lead-in
   such as "The stand-in."), add the following sentences until it has; cut at ``MAX_CHARS``.

Citation keys are left out: ``{cite}`` roles are resolved only after this transform runs.
"""
from __future__ import annotations

import re

from docutils import nodes
from sphinx import addnodes
from sphinx.transforms import SphinxTransform

MAX_CHARS = 200
MIN_WORDS = 4
PATH_LIKE = re.compile(r"\.(png|jpe?g|gif|svg)$")


def _words(text: str) -> list[str]:
    """The words that contain a letter (numbers and symbols do not count)."""
    return [word for word in text.split() if re.search(r"[^\W\d_]", word)]


def _reads_as_prose(text: str) -> bool:
    visible = sum(not c.isspace() for c in text)
    return len(_words(text)) >= MIN_WORDS and sum(c.isalpha() for c in text) >= visible / 2


def _from_code_cell(node: nodes.Node) -> bool:
    parent = node.parent
    while parent is not None:
        if isinstance(parent, nodes.container) and {"cell", "cell_output"} & set(parent["classes"]):
            return True
        parent = parent.parent
    return False


def _text(paragraph: nodes.paragraph) -> str:
    """The paragraph's text on one line, citation keys left out."""
    copy = paragraph.deepcopy()
    for ref in list(copy.findall(addnodes.pending_xref)):
        if ref.get("refdomain") == "cite":
            ref.parent.remove(ref)
    text = re.sub(r"\s*\(\)", "", " ".join(copy.astext().split()))  # "(" + key + ")" leaves "()"
    return re.sub(r"\s+([,.;:)])", r"\1", text)


def _alt_text(paragraph: str) -> str:
    sentences = re.split(r"(?<=[.!?:])\s", paragraph)
    alt = sentences.pop(0)
    while sentences and len(_words(alt)) < MIN_WORDS:
        alt += " " + sentences.pop(0)
    return alt if len(alt) <= MAX_CHARS else alt[: MAX_CHARS - 1] + "…"


class FigureAltText(SphinxTransform):
    default_priority = 900

    def apply(self) -> None:
        last_prose = ""
        for node in self.document.findall(lambda n: isinstance(n, (nodes.paragraph, nodes.image))):
            if isinstance(node, nodes.paragraph):
                if not node.next_node(nodes.image) and not _from_code_cell(node):
                    text = _text(node)
                    last_prose = text if _reads_as_prose(text) else last_prose
                continue
            alt = node.get("alt", "")
            if (not alt or alt == node.get("uri") or PATH_LIKE.search(alt)) and last_prose:
                node["alt"] = _alt_text(last_prose)


def setup(app):
    app.add_transform(FigureAltText)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
