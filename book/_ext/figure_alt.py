"""Sphinx extension: meaningful alt text for figures that notebooks output.

myst-nb gives an output image the alt text of its file path unless the cell sets
``metadata.mystnb.image.alt``. This transform replaces such path-like alt text with the first
sentence of the paragraph written before the figure's cell (the book's style puts a sentence
before every figure), so a screen reader announces what the figure shows.
"""
from __future__ import annotations

import re

from docutils import nodes
from sphinx.transforms import SphinxTransform

MAX_CHARS = 200


def _first_sentence(text: str) -> str:
    sentence = re.split(r"(?<=[.!?:])\s", " ".join(text.split()), maxsplit=1)[0]
    return sentence if len(sentence) <= MAX_CHARS else sentence[: MAX_CHARS - 1] + "…"


class FigureAltText(SphinxTransform):
    default_priority = 900

    def apply(self) -> None:
        last_paragraph = ""
        for node in self.document.findall(lambda n: isinstance(n, (nodes.paragraph, nodes.image))):
            if isinstance(node, nodes.paragraph):
                if not node.traverse(nodes.image):
                    last_paragraph = node.astext()
                continue
            alt = node.get("alt", "")
            if (not alt or alt == node.get("uri") or re.search(r"\.(png|jpe?g|svg)$", alt)) and last_paragraph:
                node["alt"] = _first_sentence(last_paragraph)


def setup(app):
    app.add_transform(FigureAltText)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
