"""Sphinx extension: bibliography labels in author-year form, matching the in-text citations.

`bibtex_reference_style: author_year` makes citations read "Zhou et al. (2016)", but the
default label style prints the bibliography as "[ZKL+16]". This registers a pybtex label style
that labels entries "Zhou et al., 2016" and a formatting style ``authoryear`` (pybtex's
``unsrt`` with those labels, sorted by author and year) that prints DOI and URL fields as links.
"""
from __future__ import annotations

from pybtex.plugin import register_plugin
from pybtex.style.formatting.unsrt import Style as UnsrtStyle
from pybtex.style.labels import BaseLabelStyle
from pybtex.style.sorting.author_year_title import SortingStyle


class AuthorYearLabels(BaseLabelStyle):
    """'Zhou et al., 2016' / 'Defard and Setkov, 2021' / 'Ronneberger, 2015'."""

    def format_labels(self, sorted_entries):
        for entry in sorted_entries:
            people = entry.persons.get("author") or entry.persons.get("editor") or []
            names = [" ".join(p.last_names) for p in people] or [entry.fields.get("organization", entry.key)]
            if len(names) == 1:
                who = names[0]
            elif len(names) == 2:
                who = f"{names[0]} and {names[1]}"
            else:
                who = f"{names[0]} et al."
            yield f"{who}, {entry.fields.get('year', 'n.d.')}".replace("{", "").replace("}", "")


class AuthorYearStyle(UnsrtStyle):
    default_label_style = "authoryear"
    default_sorting_style = "author_year_title"


def setup(app):
    register_plugin("pybtex.style.labels", "authoryear", AuthorYearLabels)
    register_plugin("pybtex.style.formatting", "authoryear", AuthorYearStyle)
    register_plugin("pybtex.style.sorting", "author_year_title", SortingStyle, force=True)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
