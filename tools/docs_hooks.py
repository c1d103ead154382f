"""MkDocs hooks: an API reference of every public name, and a nav that grows by itself.

- A page line ``<!-- api-reference: jaxseg -->`` becomes one ``::: jaxseg.<name>``
  block (rendered by mkdocstrings) per public name of that module, in the module's
  order: a name added to ``jaxseg/__init__.py`` or ``jaxseg/metrics.py`` appears in the
  reference without editing a page (tests/test_docs.py checks the built site).
- A page of ``docs/`` that ``mkdocs.yml`` does not list joins the nav:
  ``losses_*.md`` under "Losses", ``metrics_*.md`` under "Metrics", others under "Guides".
- The docstrings' reStructuredText math (``.. math::`` blocks, ``:math:`` roles) becomes
  MathJax markup, and the ``:func:``/``:class:``/``:mod:`` role prefixes are dropped.
"""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

_MARKER = re.compile(r"^<!--\s*api-reference:\s*([\w.]+)\s*-->\s*$", re.MULTILINE)
_SECTIONS = {"losses_": "Losses", "metrics_": "Metrics"}
_DEFAULT_SECTION = "Guides"
# After Markdown: ".. math::" and its indented lines form one paragraph; a role is
# ":math:" followed by the code span of its argument.
_MATH_BLOCK = re.compile(
    r"<p>\.\. math::\s*\n(.*?)</p>|<p>\.\. math::</p>\s*<pre><code>(.*?)</code></pre>", re.DOTALL
)
_MATH_ROLE = re.compile(r":math:<code>(.*?)</code>", re.DOTALL)
_OTHER_ROLE = re.compile(r":(?:func|class|mod|meth|attr|obj|data):(?=<code>)")


def public_names(module_name: str) -> list[str]:
    """The public API of a module: ``__all__``, else its non-underscore non-module names."""
    module = importlib.import_module(module_name)
    names = getattr(module, "__all__", None)
    if names is None:
        names = [name for name in vars(module) if not name.startswith("_")]
    return [name for name in names if not inspect.ismodule(getattr(module, name))]


def _reference(match: re.Match) -> str:
    module_name = match.group(1)
    return "\n\n".join(f"::: {module_name}.{name}" for name in public_names(module_name))


def on_page_markdown(markdown, page, config, files):
    return _MARKER.sub(_reference, markdown)


def on_page_content(html, page, config, files):
    html = _MATH_BLOCK.sub(
        lambda m: f'<div class="arithmatex">\\[{m.group(1) or m.group(2)}\\]</div>', html
    )
    html = _MATH_ROLE.sub(lambda m: f'<span class="arithmatex">\\({m.group(1)}\\)</span>', html)
    return _OTHER_ROLE.sub("", html)


def _listed(nav) -> set[str]:
    found = set()
    for entry in nav:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        if isinstance(value, list):
            found |= _listed(value)
        else:
            found.add(value)
    return found


def _section(nav: list, title: str) -> list:
    for entry in nav:
        if isinstance(entry, dict) and isinstance(entry.get(title), list):
            return entry[title]
    section: list = []
    # New sections go before the API reference, after the guides.
    where = next(
        (i for i, e in enumerate(nav) if isinstance(e, dict) and "API reference" in e), len(nav)
    )
    nav.insert(where, {title: section})
    return section


def on_config(config):
    nav = config["nav"]
    if nav is None:
        return config
    listed = _listed(nav)
    docs_dir = Path(config["docs_dir"])
    for path in sorted(docs_dir.rglob("*.md")):
        page = path.relative_to(docs_dir).as_posix()
        if page in listed:
            continue
        title = next(
            (title for prefix, title in _SECTIONS.items() if page.startswith(prefix)),
            _DEFAULT_SECTION,
        )
        _section(nav, title).append(page)
    return config
