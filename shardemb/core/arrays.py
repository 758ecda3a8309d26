"""The array namespace the optimizers are written against: numpy by default; a storage
whose rows live elsewhere (TensorFlow on a GPU) provides its own."""

from __future__ import annotations

import numpy as np

__all__ = ["NUMPY_OPS", "ArrayOps"]


class ArrayOps:
    """The handful of array functions the optimizers need; numpy by default."""

    sqrt = staticmethod(np.sqrt)
    square = staticmethod(np.square)
    maximum = staticmethod(np.maximum)
    minimum = staticmethod(np.minimum)

    @staticmethod
    def mean_rows(x):
        return np.mean(x, axis=1, keepdims=True)


NUMPY_OPS = ArrayOps()
