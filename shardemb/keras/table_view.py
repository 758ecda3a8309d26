"""What ``layer.embeddings`` of a :class:`~shardemb.keras.layer.ShardedEmbedding` is: the
sharded table's ``shape``, ``dtype``, ``numpy()`` and ``assign()``, without holding it.

Inside a ``tf.function`` it converts to a tensor read when the function runs (not a
constant frozen at trace time), so it follows ``set_weights`` and training.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

__all__ = ["TableView"]


class TableView:
    """What ``layer.embeddings`` is: the sharded table's ``shape``, ``dtype`` and
    ``numpy()``, without holding it (``numpy()`` fetches every row)."""

    def __init__(self, layer):
        self._layer = layer

    @property
    def shape(self) -> tuple[int, int]:
        return (self._layer.input_dim, self._layer.output_dim)

    @property
    def dtype(self) -> str:
        return self._layer.store.config.dtype

    def numpy(self) -> np.ndarray:
        return self._layer.store.to_numpy()

    def assign(self, value) -> None:
        self._layer.store.set_weights(np.asarray(value))

    def __array__(self, dtype=None, copy=None):
        arr = self.numpy()
        return arr if dtype is None else arr.astype(dtype)

    def __repr__(self) -> str:
        return f"<TableView shape={self.shape} dtype={self.dtype} store={self._layer.store.name!r}>"


def _table_to_tensor(view: TableView, dtype=None, name=None, as_ref=False):
    # Read at run time, not frozen into a graph as a constant when a tf.function is traced.
    table = tf.numpy_function(view.numpy, [], view.dtype, stateful=True, name=name)
    table.set_shape(view.shape)
    return table if dtype is None or dtype == table.dtype else tf.cast(table, dtype)


tf.register_tensor_conversion_function(TableView, _table_to_tensor)
