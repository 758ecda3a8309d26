"""ShardedEmbedding in the three classic uses of keras.layers.Embedding.

Run: ``python examples/keras_basics.py`` (starts a local Ray runtime; pass
``--backend inprocess`` to keep the shards in this process).
"""

from __future__ import annotations

import argparse

import keras
import numpy as np

import shardemb


def basic(backend: str) -> dict:
    """Vocabulary 10,000, dim 128: ids (2, 3) give vectors (2, 3, 128)."""
    layer = shardemb.ShardedEmbedding(10_000, 128, num_shards=2, backend=backend)
    out = layer(np.array([[1, 2, 3], [4, 5, 6]]))
    result = {"output_shape": tuple(out.shape), "matrix_shape": layer.embeddings.shape}
    layer.close()
    return result


def pretrained(backend: str) -> dict:
    """A pretrained matrix, frozen: training the rest of the model leaves it unchanged."""
    rng = np.random.default_rng(0)
    matrix = rng.normal(size=(1000, 16)).astype(np.float32)
    layer = shardemb.ShardedEmbedding(1000, 16, weights=[matrix], trainable=False, backend=backend)
    inp = keras.Input((4,), dtype="int64")
    out = keras.layers.Dense(1)(keras.layers.Flatten()(layer(inp)))
    model = keras.Model(inp, out)
    model.compile("adam", "mse")
    model.fit(rng.integers(0, 1000, (256, 4)), rng.normal(size=(256, 1)), epochs=2, verbose=0)
    result = {"unchanged": bool(np.array_equal(layer.get_weights()[0], matrix))}
    layer.close()
    return result


def padding(backend: str) -> dict:
    """``mask_zero=True``: id 0 is padding and is masked out."""
    layer = shardemb.ShardedEmbedding(100, 8, mask_zero=True, backend=backend)
    mask = layer.compute_mask(np.array([[1, 2, 0], [4, 5, 6]]))
    result = {"mask": np.asarray(mask).tolist()}
    layer.close()
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["ray", "inprocess"], default="ray")
    args = parser.parse_args(argv)
    results = {
        "basic": basic(args.backend),
        "pretrained": pretrained(args.backend),
        "padding": padding(args.backend),
    }
    for name, result in results.items():
        print(f"{name}: {result}")
    return results


if __name__ == "__main__":
    main()
