"""Row partitioning of a table across shards: pure, vectorized numpy.

Two schemes:

- ``mod``: global row ``r`` lives on shard ``r % N`` at local row ``r // N``. Spreads hot
  low ids (popular items usually get small ids after frequency sorting) over all shards.
- ``div``: contiguous ranges; shard ``s`` holds ``[start_s, start_s + size_s)`` where the
  first ``vocab_size % N`` shards hold one row more. Keeps neighbouring ids together.

Example:
    >>> import numpy as np
    >>> p = Partition("mod", vocab_size=10, num_shards=3)
    >>> p.shard_of(np.array([0, 4, 8])).tolist(), p.local_rows(np.array([0, 4, 8])).tolist()
    ([0, 1, 2], [0, 1, 2])
    >>> p.shard_sizes().tolist()
    [4, 3, 3]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shardemb._validate import check_positive_int
from shardemb.errors import InvalidConfigError

__all__ = ["PARTITIONS", "Partition", "ShardSplit"]

PARTITIONS = ("mod", "div")


@dataclass(frozen=True, slots=True)
class Partition:
    """Which shard holds which global row."""

    kind: str
    """``"mod"`` or ``"div"``."""
    vocab_size: int
    """Rows in the whole table."""
    num_shards: int
    """Number of shards the rows are split over."""

    def __post_init__(self) -> None:
        if self.kind not in PARTITIONS:
            raise InvalidConfigError(
                f"`partition` must be one of {PARTITIONS}. Received: partition={self.kind!r}"
            )
        check_positive_int("vocab_size", self.vocab_size)
        check_positive_int("num_shards", self.num_shards)
        if self.num_shards > self.vocab_size:
            raise InvalidConfigError(
                "`num_shards` must not exceed `vocab_size` (a shard would hold no row). "
                f"Received: num_shards={self.num_shards}, vocab_size={self.vocab_size}"
            )

    # -- sizes ------------------------------------------------------------------------
    def global_slice(self, shard: int, start: int, stop: int) -> slice:
        """Global rows of local rows ``[start, stop)`` of ``shard`` as a slice (no copy).

        Example:
            >>> Partition("mod", 10, 3).global_slice(1, 0, 3)
            slice(1, 8, 3)
        """
        if self.kind == "mod":
            n = self.num_shards
            return slice(start * n + shard, (stop - 1) * n + shard + 1, n)
        base = int(self.shard_starts()[shard])
        return slice(base + start, base + stop)

    def shard_sizes(self) -> np.ndarray:
        """Rows held by each shard, shape ``(num_shards,)``. Both schemes give equal sizes
        up to one row, the larger shards first."""
        base, extra = divmod(self.vocab_size, self.num_shards)
        return base + (np.arange(self.num_shards) < extra).astype(np.int64)

    def shard_starts(self) -> np.ndarray:
        """For ``div``: the first global row of each shard."""
        sizes = self.shard_sizes()
        return np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)

    # -- mapping ----------------------------------------------------------------------
    def shard_of(self, ids: np.ndarray) -> np.ndarray:
        """Shard index of each global row (ids assumed in range)."""
        ids = np.asarray(ids, dtype=np.int64)
        if self.kind == "mod":
            n = self.num_shards
            # A power of two (the usual count): a mask, several times cheaper than `%`.
            return ids & (n - 1) if n & (n - 1) == 0 else ids % n
        # Searchsorted over shard starts: O(n log N), no Python loop.
        return np.searchsorted(self.shard_starts(), ids, side="right") - 1

    def local_rows(self, ids: np.ndarray, shard: np.ndarray | None = None) -> np.ndarray:
        """Row index inside its shard of each global row."""
        ids = np.asarray(ids, dtype=np.int64)
        if self.kind == "mod":
            n = self.num_shards
            return ids >> (n.bit_length() - 1) if n & (n - 1) == 0 else ids // n
        if shard is None:
            shard = self.shard_of(ids)
        return ids - self.shard_starts()[shard]

    def global_rows(self, shard: int, local: np.ndarray | None = None) -> np.ndarray:
        """Global row ids of ``local`` rows of ``shard`` (all of its rows by default)."""
        size = int(self.shard_sizes()[shard])
        local = np.arange(size, dtype=np.int64) if local is None else np.asarray(local, np.int64)
        if self.kind == "mod":
            return local * self.num_shards + shard
        return local + self.shard_starts()[shard]

    def split(self, ids: np.ndarray) -> ShardSplit:
        """Group flat ids by shard with a linear-time stable sort.

        Returns the permutation that orders ids by shard, the per-shard bounds into it, and
        the local rows in that order, so a caller sends ``local[bounds[s]:bounds[s+1]]`` to
        shard ``s`` and writes its answer to ``out[order[bounds[s]:bounds[s+1]]]``.
        """
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        shard = self.shard_of(ids)
        if self.num_shards == 1:
            order = np.arange(ids.size, dtype=np.int64)
        else:
            # A stable sort on a 16-bit key is a radix sort in numpy: linear, no comparisons.
            key = shard.astype(np.uint16) if self.num_shards < 65536 else shard
            order = np.argsort(key, kind="stable")
        counts = np.bincount(shard, minlength=self.num_shards)
        bounds = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        sorted_ids = ids[order]
        sorted_shard = shard[order]
        local = self.local_rows(sorted_ids, sorted_shard)
        return ShardSplit(order=order, bounds=bounds, local=local)


@dataclass(frozen=True, slots=True)
class ShardSplit:
    """Flat ids grouped by shard (see :meth:`Partition.split`)."""

    order: np.ndarray
    """Positions into the flat ids, grouped by shard."""
    bounds: np.ndarray
    """``order[bounds[s]:bounds[s+1]]`` are the positions served by shard ``s``."""
    local: np.ndarray
    """Local row of each position, in ``order``."""

    def positions(self, shard: int) -> np.ndarray:
        return self.order[self.bounds[shard] : self.bounds[shard + 1]]

    def local_rows(self, shard: int) -> np.ndarray:
        return self.local[self.bounds[shard] : self.bounds[shard + 1]]
