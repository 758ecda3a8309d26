"""The array namespace the optimizers are written against: numpy by default; a storage
whose rows live elsewhere (TensorFlow on a GPU) provides its own."""

from __future__ import annotations

import numpy as np

__all__ = ["NUMPY_OPS", "ArrayOps", "segment_sum"]


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


def segment_sum(segments: np.ndarray, values: np.ndarray, num_segments: int) -> np.ndarray:
    """Rows of ``values`` summed by ``segments`` (int64, each in ``[0, num_segments)``),
    in order of occurrence: what ``np.add.at`` and TensorFlow's ``unsorted_segment_sum``
    on CPU give, bit for bit. A segment with no row is ``-0.0``, and one row keeps its
    bits (``-0.0 + x == x``).

    Example:
        >>> segment_sum(np.array([1, 0, 1]), np.array([[1.0], [2.0], [4.0]]), 2).tolist()
        [[2.0], [5.0]]
    """
    width = int(np.prod(values.shape[1:], dtype=np.int64))
    out = np.full(num_segments * width, -0.0, dtype=values.dtype)
    # One flat np.add.at over (row, column) cells: numpy's fast path, ~7x a 2-D one.
    cells = np.repeat(segments * width, width)
    cells += _column_offsets(width, segments.size)
    np.add.at(out, cells, values.reshape(-1))
    return out.reshape((num_segments, *values.shape[1:]))


_OFFSETS: dict[int, np.ndarray] = {}
_OFFSETS_KEPT = 1 << 20  # elements (8 MiB) at most per width: a step's push fits


def _column_offsets(width: int, rows: int) -> np.ndarray:
    """``[0, 1, .., width-1]`` repeated ``rows`` times (kept for the next push)."""
    need = rows * width
    have = _OFFSETS.get(width)
    if have is not None and have.size >= need:
        return have[:need]
    tiled = np.tile(np.arange(width, dtype=np.int64), rows)
    if need <= _OFFSETS_KEPT:
        _OFFSETS[width] = tiled
    return tiled
