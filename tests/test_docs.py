"""The runnable examples in the public API's docstrings run and print what they show."""

import doctest
import importlib

import pytest

MODULES = [
    "shardemb",
    "shardemb.errors",
    "shardemb.core.partition",
    "shardemb.core.initializers",
    "shardemb.core.optimizers",
    "shardemb.core.config",
    "shardemb.core.router",
    "shardemb.shard.storage",
    "shardemb.transport.shm",
    "shardemb.shard.shard",
    "shardemb.transport.placement",
    "shardemb.store",
    "shardemb.checkpoint",
    "shardemb.keras.layer",
    "shardemb.recsys.data",
    "shardemb.recsys.metrics",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed"
