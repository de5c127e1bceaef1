"""The docs' generated pages, written at build time so they cannot drift from the code: the
tables and columns a study can read (from gpdpr.tre.query.schema) and the query language's
functions and methods (from gpdpr.tre.query.language, signatures and docstrings). A page asks for
one with a line holding only its marker, e.g. `<!-- gpdpr:tables -->`."""

from __future__ import annotations

from typing import Any


def on_page_markdown(markdown: str, **_: Any) -> str:
    from gpdpr.docs.reference import PAGES

    for name, make in PAGES.items():
        marker = f"<!-- gpdpr:{name} -->"
        if marker in markdown:
            markdown = markdown.replace(marker, make())
    return markdown
