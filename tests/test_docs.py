"""The documentation is tested: the code blocks of the README and docs, and the site.

(The docstring examples run in tests/test_doctests.py.)

- Every ```` ```python ```` block of README.md and docs/*.md runs, the blocks of one file
  in order in one namespace (a later block may use an earlier one's names). A block that
  needs an optional package (optax, flax) not installed skips the rest of its file,
  as the oracle tests skip without their oracle.
- The site builds with ``mkdocs build --strict`` (warnings are errors), and its API
  reference holds every public name of ``jaxseg`` and ``jaxseg.metrics``.
"""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import jaxseg

ROOT = Path(__file__).resolve().parent.parent
_OPTIONAL = {"optax", "flax", "orbax", "grain", "matplotlib", "tqdm"}
_BLOCK = re.compile(r"^```python[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)


def _markdown_files():
    return [ROOT / "README.md"] + sorted((ROOT / "docs").rglob("*.md"))


@pytest.mark.parametrize("path", _markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_markdown_python_blocks_run(path):
    blocks = _BLOCK.findall(path.read_text())
    namespace = {"__name__": f"docs_{path.stem}"}
    for number, block in enumerate(blocks, 1):
        code = compile(block, f"{path.relative_to(ROOT)} block {number}", "exec")
        try:
            exec(code, namespace)
        except ModuleNotFoundError as error:
            if error.name and error.name.split(".")[0] in _OPTIONAL:
                pytest.skip(f"{path.name} block {number} needs {error.name} (not installed)")
            raise


def _public(module) -> list[str]:
    return [
        name
        for name in vars(module)
        if not name.startswith("_") and not inspect.ismodule(getattr(module, name))
    ]


def test_site_builds_strictly_with_every_public_name(tmp_path):
    pytest.importorskip("mkdocs", reason="the docs tools: pip install 'jaxseg[docs]'")
    pytest.importorskip("mkdocstrings", reason="the docs tools: pip install 'jaxseg[docs]'")
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", site],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in result.stderr, result.stderr
    for module, page in [(jaxseg, "api/jaxseg"), (jaxseg.metrics, "api/metrics")]:
        html = (site / page / "index.html").read_text()
        names = _public(module)
        assert names
        missing = [n for n in names if f'id="{module.__name__}.{n}"' not in html]
        assert not missing, f"{page}: no reference entry for {missing}"
