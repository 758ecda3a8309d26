"""The runnable examples in the public API's docstrings run and print what they show."""

import doctest
import importlib
import pkgutil

import pytest

import shardemb

# Every module of the package: examples in a new or moved module run without a list to
# keep up to date. ``__main__`` modules run a command when imported.
MODULES = sorted(
    m.name
    for m in pkgutil.walk_packages(shardemb.__path__, "shardemb.")
    if not m.name.endswith("__main__")
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed"
