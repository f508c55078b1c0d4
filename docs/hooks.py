"""mkdocs hook: show the reST idioms of conveyor's docstrings as plain Markdown would.

The docstrings are written for ``help()`` and editors, in reST's small
vocabulary (``:class:`X```, a paragraph ending in ``::`` before a literal
block). mkdocstrings renders them as Markdown, where those idioms come out
literally; this hook tidies the rendered HTML instead of making the
docstrings choose between their two readers.
"""

from __future__ import annotations

import re
from typing import Any

# ":class:" (or func, meth...) right before the code span mkdocstrings made of
# the backquoted name; "~pkg.mod.Name" shows as "Name", as in Sphinx.
_ROLE = re.compile(r":(?:class|func|meth|mod|attr|exc|data|obj):<code>(~?)([\w.]+)</code>")
_LONE_COLONS = re.compile(r"<p>::</p>\s*")


def _code(match: re.Match[str]) -> str:
    name = match.group(2).rsplit(".", 1)[-1] if match.group(1) else match.group(2)
    return f"<code>{name}</code>"


def _tidy(html: str) -> str:
    html = _LONE_COLONS.sub("", _ROLE.sub(_code, html))
    return html.replace("::</p>", ":</p>")


def on_page_content(html: str, **kwargs: Any) -> str:
    return _tidy(html)
