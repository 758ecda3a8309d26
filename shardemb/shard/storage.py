"""Where a shard keeps its rows: numpy arrays in host memory, or TensorFlow variables on a
device (GPU memory when the shard actor is given a GPU, ``/CPU:0`` otherwise).

Both expose the same small interface, and both pass the conformance suite in
``tests/test_storage_conformance.py``. TensorFlow is imported only when a TensorFlow
storage is created, so numpy shards never pay for it.

Example:
    >>> import numpy as np
    >>> s = NumpyStorage(4, 2, "float32")
    >>> s.scatter(np.array([1, 3]), np.ones((2, 2), np.float32))
    >>> s.to_numpy(0, 4)[:, 0].tolist()
    [0.0, 1.0, 0.0, 1.0]
"""

from __future__ import annotations

from typing import Any

import numpy as np

from shardemb.core.arrays import NUMPY_OPS, ArrayOps

__all__ = ["STORAGES", "NumpyStorage", "RowStorage", "TensorflowStorage", "make_storage"]

STORAGES = ("numpy", "tensorflow")


class RowStorage:
    """A ``(num_rows, width)`` matrix with row gathers and scatters."""

    ops: ArrayOps
    num_rows: int
    width: int
    dtype: np.dtype

    def gather(self, rows: np.ndarray) -> Any:
        """Rows as a storage-native array (numpy or tf.Tensor)."""
        raise NotImplementedError

    def scatter(self, rows: np.ndarray, values: Any) -> None:
        """Overwrite ``rows`` (unique) with ``values``."""
        raise NotImplementedError

    def to_numpy(self, start: int, stop: int) -> np.ndarray:
        """A host copy of the contiguous rows ``[start, stop)``."""
        raise NotImplementedError

    def write(self, start: int, values: np.ndarray) -> None:
        """Overwrite the contiguous rows starting at ``start``."""
        raise NotImplementedError

    def view(self, start: int, stop: int) -> np.ndarray | None:
        """Rows ``[start, stop)`` as a writable numpy view when they live in host memory
        (checkpoints read and write them in place), else ``None``."""
        return None

    def host(self, values: Any) -> np.ndarray:
        """Convert a storage-native array to numpy."""
        return np.asarray(values)

    def native(self, values: np.ndarray) -> Any:
        """Convert a numpy array to the storage-native type."""
        return values

    @property
    def nbytes(self) -> int:
        return self.num_rows * self.width * self.dtype.itemsize


class NumpyStorage(RowStorage):
    """Rows in one C-contiguous numpy array."""

    ops = NUMPY_OPS

    def __init__(self, num_rows: int, width: int, dtype: str, device: str | None = None):
        self.num_rows, self.width, self.dtype = num_rows, width, np.dtype(dtype)
        self._data = np.zeros((num_rows, width), dtype=self.dtype)

    def gather(self, rows):
        return np.take(self._data, rows, axis=0)

    def scatter(self, rows, values):
        self._data[rows] = values

    def to_numpy(self, start, stop):
        return self._data[start:stop].copy()

    def view(self, start, stop):
        return self._data[start:stop]

    def write(self, start, values):
        self._data[start : start + len(values)] = values


class _TfOps(ArrayOps):
    """:class:`ArrayOps` for tf.Tensor."""

    def __init__(self) -> None:
        import tensorflow as tf

        self._tf = tf
        self.sqrt = tf.sqrt
        self.square = tf.square
        self.maximum = tf.maximum
        self.minimum = tf.minimum

    def mean_rows(self, x):
        return self._tf.reduce_mean(x, axis=1, keepdims=True)


class TensorflowStorage(RowStorage):
    """Rows in a ``tf.Variable`` placed on ``device`` (``"/GPU:0"``, ``"/CPU:0"``...)."""

    def __init__(self, num_rows: int, width: int, dtype: str, device: str | None = None):
        import tensorflow as tf

        self._tf = tf
        self.ops = _TfOps()
        self.num_rows, self.width, self.dtype = num_rows, width, np.dtype(dtype)
        self.device = device or ("/GPU:0" if tf.config.list_logical_devices("GPU") else "/CPU:0")
        with tf.device(self.device):
            self._var = tf.Variable(tf.zeros((num_rows, width), dtype=self.dtype.name))

    def gather(self, rows):
        with self._tf.device(self.device):
            return self._tf.gather(self._var, rows)

    def scatter(self, rows, values):
        with self._tf.device(self.device):
            self._var.scatter_nd_update(self._tf.reshape(rows, (-1, 1)), values)

    def to_numpy(self, start, stop):
        return self._var[start:stop].numpy()

    def write(self, start, values):
        with self._tf.device(self.device):
            self._var[start : start + len(values)].assign(values)

    def host(self, values):
        return values.numpy() if hasattr(values, "numpy") else np.asarray(values)

    def native(self, values):
        with self._tf.device(self.device):
            return self._tf.convert_to_tensor(values)


def make_storage(kind: str, num_rows: int, width: int, dtype: str, device: str | None = None):
    """Create a storage of ``kind`` (one of :data:`STORAGES`)."""
    cls = {"numpy": NumpyStorage, "tensorflow": TensorflowStorage}[kind]
    return cls(num_rows, width, dtype, device)
