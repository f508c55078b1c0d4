"""The front door: the README stays short and true, and every public name is documented.

The README shows two commands that must work on a fresh machine; `.ci/run`
runs them verbatim, so these tests hold the two files to each other. Its
links must lead somewhere, its headline benchmark rows must be the ones
``benchmarks/run_all.py`` derives from the stored tables, and the
documentation site (built by `.ci/run` with ``mkdocs build --strict``) must
list every page it has.
"""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

import conveyor
import conveyor.errors

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
CI = ROOT / ".ci" / "run"
DOCS = ROOT / "docs"
MAX_README_BYTES = 15_000
# Kept word for word since it was first published: people (and CI) copy it.
TEST_COMMAND = ('python3 -m venv .venv && .venv/bin/pip install -q -e ".[dev]" '
                "&& .venv/bin/python -m pytest")
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def readme() -> str:
    return README.read_text(encoding="utf-8")


def section(text: str, title: str) -> str:
    """The body of the ``## title`` section of a Markdown text."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
    assert match, f"the README has no '## {title}' section"
    return match.group(1)


def test_readme_is_short() -> None:
    size = len(README.read_bytes())
    assert size <= MAX_README_BYTES, (
        f"README.md is {size} bytes; keep it under {MAX_README_BYTES}: details belong in docs/")


def test_readme_commands_are_the_ones_ci_runs() -> None:
    commands = [line[4:] for line in section(readme(), "Try it").splitlines()
                if line.startswith("    ") and line.strip()]
    assert len(commands) == 2, commands
    demo, tests = commands
    assert "conveyor demo" in demo, demo
    assert tests == TEST_COMMAND
    ci_lines = CI.read_text(encoding="utf-8").splitlines()
    for command in commands:
        assert command in ci_lines, f".ci/run does not run the README's command: {command}"


def relative_links(text: str) -> list[str]:
    return [target for target in _LINK.findall(text)
            if not re.match(r"[a-z][a-z0-9+.-]*:", target)]   # not http:, mailto: ...


def test_readme_links_lead_to_files_or_sections() -> None:
    text = readme()
    headings = {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
                for h in re.findall(r"^#+ (.*)$", text, flags=re.M)}
    links = relative_links(text)
    assert links, "the README links to no documentation page"
    for target in links:
        path, _, anchor = target.partition("#")
        if not path:   # a section of the README itself
            assert anchor in headings, f"README link {target!r}: no such section"
            continue
        assert (ROOT / path).is_file(), f"README link {target!r}: no such file"


def nav_pages() -> list[str]:
    """The pages mkdocs.yml's nav lists (read as text: no YAML parser in the test extra)."""
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    nav = config.split("\nnav:\n", 1)[1]
    return re.findall(r"^\s+- (?:[^:\n]+: )?(\S+\.md)\s*$", nav, flags=re.M)


def test_docs_nav_lists_every_page_and_only_pages_that_exist() -> None:
    listed = nav_pages()
    assert len(listed) == len(set(listed)), listed
    pages = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
    assert sorted(listed) == pages


def test_readme_links_to_docs_pages_are_in_the_nav() -> None:
    listed = set(nav_pages())
    for target in relative_links(readme()):
        path = target.partition("#")[0]
        if path.startswith("docs/"):
            assert path.removeprefix("docs/") in listed, f"{path} is not in mkdocs.yml's nav"


def test_readme_says_how_to_serve_the_docs() -> None:
    assert "mkdocs serve" in section(readme(), "Documentation")


def test_benchmark_headline_is_derived_from_the_stored_tables() -> None:
    # --render --check measures nothing: it derives the headline from
    # docs/benchmarks.md and compares it with the README's.
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run_all.py"), "--render",
                           "--check"], cwd=ROOT, capture_output=True, text=True, timeout=50)
    assert proc.returncode == 0, proc.stderr
    assert "up to date" in proc.stderr


def test_the_options_table_is_generated_from_the_options() -> None:
    from conveyor._options import with_table

    page = (ROOT / "docs" / "guide" / "map.md").read_text(encoding="utf-8")
    assert with_table(page) == page, (
        "docs/guide/map.md's options table is not conveyor._options.OPTIONS': regenerate it "
        "with python -c \"import conveyor._options as o; o.rewrite('docs/guide/map.md')\"")


def public_names() -> list[tuple[ModuleType, str]]:
    names = [(conveyor, n) for n in conveyor.__all__
             # a version string has no docstring of its own to give
             if n != "__version__"]
    return names + [(conveyor.errors, n) for n in getattr(conveyor.errors, "__all__", ())]


@pytest.mark.parametrize(("module", "name"), public_names(),
                         ids=[f"{m.__name__}.{n}" for m, n in public_names()])
def test_public_name_has_a_docstring(module: ModuleType, name: str) -> None:
    obj = getattr(module, name)
    # A class's own docstring: inspect.getdoc would hand out a base class's.
    doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else obj.__doc__
    assert doc and doc.strip(), f"{module.__name__}.{name} needs a docstring (the reference " \
        "in docs/reference/ is generated from it)"


def test_every_public_name_is_in_the_reference() -> None:
    """A name added to ``__all__`` gets its reference entry (or is named on the
    page as a re-export)."""
    pages = (ROOT / "docs" / "reference" / "api.md").read_text() + \
        (ROOT / "docs" / "reference" / "errors.md").read_text()
    missing = [f"{m.__name__}.{n}" for m, n in public_names()
               if f"::: {m.__name__}.{n}" not in pages and f"`{m.__name__}.{n}`" not in pages
               and f"::: {m.__name__}\n" not in pages]   # a whole module's page
    assert not missing, f"add these to docs/reference/: {missing}"


def test_the_code_sends_readers_to_the_docs_not_the_readme() -> None:
    """The README is a front door: what a docstring refers the reader to lives in
    docs/ (the reference renders these docstrings), not in a README section."""
    stale = [str(path.relative_to(ROOT)) for path in sorted((ROOT / "src").rglob("*.py"))
             if re.search(r"\bsee\s+the\s+README\b", path.read_text(encoding="utf-8"))]
    assert not stale, f"these send the reader to the README: {stale}"


def public_members() -> list[str]:
    """``module.Class.member`` for each public method and property a public class
    defines itself (the reference shows only those with a docstring)."""
    members = []
    for module, name in public_names():
        cls = getattr(module, name)
        if not inspect.isclass(cls):
            continue
        for member, value in vars(cls).items():
            if member.startswith("_"):
                continue
            if isinstance(value, property):
                value = value.fget
            elif isinstance(value, (staticmethod, classmethod)):
                value = value.__func__
            elif not inspect.isfunction(value):
                continue   # a field or a constant: documented by its class
            if not (value.__doc__ or "").strip():
                members.append(f"{module.__name__}.{name}.{member}")
    return members


def test_public_methods_and_properties_have_docstrings() -> None:
    """mkdocs.yml hides members without a docstring (show_if_no_docstring:
    false): one without would be missing from the reference."""
    assert not public_members(), f"these need a docstring: {public_members()}"
