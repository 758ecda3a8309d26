"""The router's pure-numpy half: validate, deduplicate, split by shard, reassemble.

One direction of flow, TorchRec style: :func:`plan_lookup` turns flat ids into a
:class:`LookupPlan` (the context that the last step needs from the first), the store sends
``plan.split.local_rows(s)`` to each shard, and :func:`assemble` writes the answers into
one preallocated output. No boolean masks, no Python loop over ids.

Example:
    >>> import numpy as np
    >>> from shardemb.core.partition import Partition
    >>> p = Partition("mod", vocab_size=10, num_shards=2)
    >>> plan = plan_lookup(np.array([3, 4, 3]), p, dedup=True)
    >>> [plan.split.local_rows(s).tolist() for s in range(2)]
    [[2], [1]]
    >>> table = np.arange(10.0).reshape(10, 1)
    >>> grouped = np.concatenate([table[[4]], table[[3]]])  # answers of shards 0 and 1
    >>> assemble(plan, grouped).ravel().tolist()
    [3.0, 4.0, 3.0]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shardemb.core.partition import Partition, ShardSplit
from shardemb.errors import InvalidConfigError, InvalidGradientError, InvalidIdsError

__all__ = [
    "Deduplicator",
    "LookupPlan",
    "assemble",
    "check_dedup",
    "check_grads",
    "check_ids",
    "check_matrix",
    "plan_lookup",
]

# Above this many distinct/total ids, deduplication costs more than the rows it saves.
DEDUP_KEEP_RATIO = 0.7
# The scratch table of the fast deduplicator costs 4 bytes per row; beyond this many rows
# the router falls back to a sort (np.unique) and keeps its memory independent of the table.
SCRATCH_MAX_ROWS = 1 << 24


def check_ids(ids: object, vocab_size: int, *, name: str = "ids") -> np.ndarray:
    """``ids`` as an int64 array, or :class:`InvalidIdsError` naming what is wrong."""
    arr = _as_array(ids, name, InvalidIdsError)
    if arr.size == 0 and arr.dtype.kind in "fiub":  # np.asarray([]) is float64
        return arr.astype(np.int64)
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind == "f" and arr.size and np.isnan(arr).any():
            detail = "NaN"
        else:
            detail = f"dtype {arr.dtype}"
        raise InvalidIdsError(
            f"`{name}` must be integers in [0, {vocab_size}). Received: {detail} "
            f"(shape {arr.shape}){_preview(arr)}"
        )
    if arr.size:
        lo, hi = arr.min(), arr.max()
        if lo < 0 or hi >= vocab_size:
            bad = (arr < 0) | (arr >= vocab_size)
            raise InvalidIdsError(
                f"`{name}` must be in [0, {vocab_size}). Received: {int(bad.sum())} id(s) "
                f"out of range, e.g. {arr[bad].ravel()[:5].tolist()} (min {lo}, max {hi})"
            )
    return arr.astype(np.int64, copy=False)


def check_grads(
    grads: object,
    ids_shape: tuple,
    dim: int,
    *,
    dtype: str | np.dtype | None = None,
    allow_nonfinite: bool = False,
):
    """``grads`` as a float array of shape ``ids_shape + (dim,)`` (cast to ``dtype``, the
    table's, when given), or :class:`InvalidGradientError`. NaN/Inf are rejected unless
    ``allow_nonfinite``; finiteness is checked after the cast, so values beyond the
    table's range (1e39 for float32, 1e5 for float16) are refused too."""
    arr = _as_array(grads, "grads", InvalidGradientError)
    want = tuple(ids_shape) + (dim,)
    if arr.dtype.kind != "f":
        raise InvalidGradientError(
            f"`grads` must be a floating point array. Received: dtype={arr.dtype}"
        )
    if arr.shape != want:
        raise InvalidGradientError(
            f"`grads` must have shape ids.shape + (dim,) = {want}. Received: shape={arr.shape}"
        )
    if dtype is not None:
        arr = _cast(arr, dtype)
    if not allow_nonfinite and arr.size and not np.isfinite(arr).all():
        rows = int((~np.isfinite(arr.reshape(-1, dim))).any(axis=1).sum())
        raise InvalidGradientError(
            f"`grads` holds NaN or Inf in {rows} row(s) of {arr.size // dim} (as "
            f"{arr.dtype}, the table's dtype: values beyond its range become Inf); nothing "
            "was applied. Pass allow_nonfinite=True to apply them anyway."
        )
    return arr


def check_matrix(matrix: object, shape: tuple[int, int], dtype: str) -> np.ndarray:
    """``matrix`` (a whole table) as a ``dtype`` array of ``shape``, or
    :class:`InvalidConfigError`. Finiteness is checked after the cast to ``dtype``: values
    beyond its range (1e39 for float32) would become Inf rows."""
    arr = _as_array(matrix, "matrix", InvalidConfigError)
    if arr.shape != tuple(shape) or arr.dtype.kind not in "fiu":
        raise InvalidConfigError(
            f"`matrix` must be a numeric array of shape {tuple(shape)}. "
            f"Received: shape={arr.shape}, dtype={arr.dtype}"
        )
    arr = _cast(arr, dtype)
    if not np.isfinite(arr).all():
        raise InvalidConfigError(
            f"`matrix` holds NaN or Inf as {dtype}, the table's dtype (values beyond its "
            "range become Inf); the table was left unchanged."
        )
    return arr


def _cast(arr: np.ndarray, dtype) -> np.ndarray:
    """``arr`` as ``dtype``; values beyond its range become Inf for the caller to report."""
    if arr.dtype == np.dtype(dtype):
        return arr
    with np.errstate(over="ignore", invalid="ignore"):
        return arr.astype(dtype)


def check_dedup(dedup: object) -> bool | str:
    """``dedup`` as ``True``, ``False`` or ``"auto"``."""
    if isinstance(dedup, bool | np.bool_):
        return bool(dedup)
    if isinstance(dedup, str) and dedup == "auto":
        return dedup
    raise InvalidConfigError(
        f"`dedup` must be True, False or 'auto'. Received: dedup={dedup!r} "
        f"(of type {type(dedup).__name__})"
    )


class Deduplicator:
    """Distinct ids and the inverse map, ``np.unique(ids, return_inverse=True)`` in
    meaning but in linear time for tables up to :data:`SCRATCH_MAX_ROWS` rows: a scratch
    array of one int32 per row records where each id was seen (never cleared: every entry
    read was written in the same call). Distinct ids come in order of last occurrence.
    Not thread-safe; the store calls it under its lock."""

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size
        self._scratch: np.ndarray | None = None

    def __call__(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = ids.size
        if self.vocab_size > SCRATCH_MAX_ROWS or n >= 2**31:
            return np.unique(ids, return_inverse=True)
        if self._scratch is None:
            self._scratch = np.zeros(self.vocab_size, dtype=np.int32)
        positions = np.arange(n, dtype=np.int32)
        self._scratch[ids] = positions  # for duplicates one (the last) position wins
        first = self._scratch[ids]
        is_rep = first == positions
        rank = np.cumsum(is_rep, dtype=np.int32) - 1
        return ids[is_rep], rank[first]


@dataclass(frozen=True, slots=True)
class LookupPlan:
    """What :func:`assemble` needs to put the shards' answers back in order."""

    num_ids: int
    """Number of ids asked for."""
    split: ShardSplit
    """The routed ids grouped by shard."""
    inverse: np.ndarray | None
    """For a deduplicated plan: position of each asked id among the routed (distinct) ids."""


def plan_lookup(
    flat_ids: np.ndarray,
    partition: Partition,
    *,
    dedup: bool | str = "auto",
    deduplicator: Deduplicator | None = None,
) -> LookupPlan:
    """Route flat (validated) ids: optionally deduplicate, then group by shard.

    ``dedup="auto"`` deduplicates and keeps the result only when it removes at least
    ``1 - DEDUP_KEEP_RATIO`` of the ids (skewed batches); otherwise it routes every id.
    """
    if dedup and flat_ids.size > 1:
        uniq, inverse = (deduplicator or Deduplicator(partition.vocab_size))(flat_ids)
        if dedup != "auto" or uniq.size <= DEDUP_KEEP_RATIO * flat_ids.size:
            split = partition.split(uniq)
            # Answers arrive grouped by shard; map each asked id to its grouped position.
            grouped_pos = np.empty(uniq.size, dtype=np.int64)
            grouped_pos[split.order] = np.arange(uniq.size)
            return LookupPlan(flat_ids.size, split, grouped_pos[inverse])
    return LookupPlan(flat_ids.size, partition.split(flat_ids), None)


def assemble(
    plan: LookupPlan, grouped: np.ndarray, *, owned: bool = True, placed: bool = False
) -> np.ndarray:
    """Rows in the order the ids were asked, from ``grouped``: the shards' answers one
    after the other, in shard order (``plan.split`` order). ``owned=False`` means
    ``grouped`` is a buffer that will be reused, so the result must not be a view of it.
    ``placed`` means the shards already wrote each row at its asked position (or, for a
    deduplicated plan, at its distinct id's position): only the un-dedup remains."""
    if plan.inverse is not None:
        return np.take(grouped, plan.inverse, axis=0)
    if placed or plan.split.bounds.size == 2:  # grouped order is already the asked order
        return grouped if owned else grouped.copy()
    out = np.empty_like(grouped)
    out[plan.split.order] = grouped
    return out


def _as_array(value: object, name: str, error: type[Exception]) -> np.ndarray:
    """``np.asarray(value)``, with ragged nested lists reported as ``error``."""
    try:
        return np.asarray(value)
    except (ValueError, TypeError) as err:
        raise error(
            f"`{name}` must be a rectangular array (nested lists of equal lengths). "
            f"Received: {_short_repr(value)} ({err})"
        ) from err


def _short_repr(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _preview(arr: np.ndarray) -> str:
    flat = arr.ravel()[:5]
    return f", e.g. {flat.tolist()}" if flat.size else ""
