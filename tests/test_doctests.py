"""Every docstring example of the library (its ``Examples:`` blocks) runs as a doctest."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import jaxseg


def _library_modules():
    return ["jaxseg"] + [
        name for _, name, _ in pkgutil.walk_packages(jaxseg.__path__, prefix="jaxseg.")
    ]


def _doctests():
    finder = doctest.DocTestFinder(exclude_empty=True)
    tests = []
    for module_name in _library_modules():
        module = importlib.import_module(module_name)
        for test in finder.find(module, module_name):
            # A re-exported function is found again in its re-exporting module.
            if test.examples and test.name.startswith(module_name) and test.filename:
                tests.append(test)
    unique = {(t.filename, t.lineno): t for t in tests}
    return sorted(unique.values(), key=lambda t: t.name)


_DOCTESTS = _doctests()


def test_the_library_has_doctests():
    assert len(_DOCTESTS) >= 20, [t.name for t in _DOCTESTS]


@pytest.mark.parametrize("test", _DOCTESTS, ids=lambda t: t.name)
def test_doctest(test):
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    output = []
    runner.run(test, out=output.append, clear_globs=True)
    assert runner.failures == 0, "".join(output)
