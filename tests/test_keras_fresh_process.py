"""A ``.keras`` file saved by one process loads in a new one after ``import shardemb``,
whichever of shardemb and keras is imported first (the class registers itself with Keras
when Keras is imported)."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}

SAVE = textwrap.dedent(
    """
    import sys, keras, numpy as np, shardemb
    layer = shardemb.ShardedEmbedding(50, 4, name="items", seed=3, backend="inprocess")
    model = keras.Sequential([keras.Input((2,), dtype="int64"), layer,
                              keras.layers.Flatten(), keras.layers.Dense(1)])
    # Rows no initializer would give: the loaded table must come from the file.
    layer.set_weights([np.random.default_rng(0).standard_normal((50, 4)).astype("float32")])
    model.save(sys.argv[1])
    np.save(sys.argv[2], layer.get_weights()[0])
    """
)

LOAD = textwrap.dedent(
    """
    import sys
    {imports}
    import numpy as np
    model = keras.models.load_model(sys.argv[1])
    layer = model.get_layer("items")
    assert type(layer).__name__ == "ShardedEmbedding", type(layer)
    np.save(sys.argv[2], layer.get_weights()[0])
    """
)


def _run(script: str, *args: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", script, *args], env=ENV, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.parametrize(
    "imports",
    [
        "import shardemb\nimport keras",
        "import keras\nimport shardemb",
        # A module of the package first: it imports Keras, which imports the layer, which
        # imports that module again (a half-done circular import, unless the layer comes first).
        "import shardemb.keras.xla\nimport keras",
        "import shardemb.keras.training\nimport keras",
    ],
)
def test_load_model_in_a_fresh_process(tmp_path, imports):
    path, saved, loaded = (str(tmp_path / n) for n in ("m.keras", "saved.npy", "loaded.npy"))
    _run(SAVE, path, saved)
    _run(LOAD.format(imports=imports), path, loaded)
    np.testing.assert_array_equal(np.load(loaded), np.load(saved))


def test_import_shardemb_alone_does_not_import_tensorflow():
    script = "import sys, shardemb; print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", script], env=ENV, capture_output=True, text=True, timeout=120
    )
    assert done.stdout.split() == ["False", "False"], done.stderr[-2000:]
