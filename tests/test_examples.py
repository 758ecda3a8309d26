"""The examples run and print what they promise."""

import importlib.util
import pathlib

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_keras_basics(ray_session):
    results = _load("keras_basics").main([])
    assert results["basic"] == {"output_shape": (2, 3, 128), "matrix_shape": (10000, 128)}
    assert results["pretrained"] == {"unchanged": True}
    assert results["padding"] == {"mask": [[True, True, False], [True, True, True]]}
