import keras
import numpy as np
import pytest

from shardemb.core.initializers import Initializer, get_initializer
from shardemb.errors import InvalidConfigError


def test_values_depend_on_global_row_only():
    init = get_initializer("uniform")
    full = init.generate(np.arange(100), 8, seed=3, dtype="float32")
    part = init.generate(np.array([97, 5, 42]), 8, seed=3, dtype="float32")
    np.testing.assert_array_equal(part, full[[97, 5, 42]])
    assert not np.array_equal(full, init.generate(np.arange(100), 8, seed=4, dtype="float32"))


@pytest.mark.parametrize(
    "name,check",
    [
        ("uniform", lambda x: x.min() >= -0.05 and x.max() < 0.05 and abs(x.mean()) < 2e-3),
        ("normal", lambda x: abs(x.std() - 0.05) < 2e-3 and abs(x.mean()) < 2e-3),
        ("truncated_normal", lambda x: np.abs(x).max() <= 0.1 and 0.04 < x.std() < 0.05),
        ("zeros", lambda x: (x == 0).all()),
        ("ones", lambda x: (x == 1).all()),
    ],
)
def test_distributions(name, check):
    x = get_initializer(name).generate(np.arange(2000), 16, seed=0, dtype="float64")
    assert x.shape == (2000, 16)
    assert check(x)


def test_keras_initializers_are_translated():
    shape = (1000, 10)
    assert get_initializer(keras.initializers.RandomUniform(-1.0, 2.0), shape) == Initializer(
        "uniform", minval=-1.0, maxval=2.0
    )
    assert get_initializer(keras.initializers.RandomNormal(0.5, 0.2), shape) == Initializer(
        "normal", mean=0.5, stddev=0.2
    )
    assert get_initializer(keras.initializers.Constant(3.0), shape).value == 3.0
    glorot = get_initializer(keras.initializers.GlorotUniform(), shape)
    limit = np.sqrt(6.0 / (1000 + 10))
    assert glorot.kind == "uniform" and np.isclose(glorot.maxval, limit)
    he = get_initializer(keras.initializers.HeNormal(), shape)
    assert he.kind == "truncated_normal" and np.isclose(he.stddev, np.sqrt(2 / 1000) / 0.8796256610)


@pytest.mark.parametrize(
    "bad,match",
    [
        ("glorot", "`initializer` must be one of"),
        (42, "Received: initializer=42"),
        ({"kind": "uniform", "low": 1}, "unknown keys"),
        (keras.initializers.Orthogonal(), "cannot be generated shard by shard"),
    ],
)
def test_bad_initializers(bad, match):
    with pytest.raises(InvalidConfigError, match=match):
        get_initializer(bad, (10, 4))
