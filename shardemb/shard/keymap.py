"""KeyMap: a vectorized hash map from int64 keys to a shard's rows; Entries: keys with
rows and per-row columns (counts, last-update steps, payload), the table of a dynamic shard.

Open addressing with linear probing over numpy arrays. A slot holds only the row it points
to (an int32; ``-1`` empty, ``-2`` a removed entry); the key of each row sits in
:attr:`KeyMap.row_keys`, an array the shard needs anyway (eviction, checkpoints). So the
index costs 4 bytes per slot plus 8 per row, instead of the 12-16 per slot of a map that
keeps keys in its slots.

Every operation is a batch: :meth:`~KeyMap.find`, :meth:`~KeyMap.insert` and
:meth:`~KeyMap.remove` advance all unresolved keys of the batch by one slot per round
(numpy over the batch, no Python loop per key), so a call costs a few numpy passes over
the batch plus one short pass per probe beyond the first. Concurrent inserts into the same
free slot are settled by writing all of them and reading back which one stuck.

The slot of a key is the top 32 bits of ``(k ^ (k >> 32)) * 0x9e3779b97f4a7c15``
(Fibonacci hashing) scaled to the table size by a multiply-shift, so tables of any size
work (no power of two needed). That hash is internal: it is not saved and may change.
Removed entries leave tombstones that later inserts reuse; the table is rebuilt when
entries and tombstones pass :data:`MAX_LOAD` of the slots.

Example:
    >>> import numpy as np
    >>> m = KeyMap()
    >>> m.insert(np.array([-2**63, 7, 2**63 - 1]), np.array([0, 1, 2]))
    >>> m.find(np.array([7, 8, -2**63])).tolist()
    [1, -1, 0]
    >>> m.remove(np.array([1]))
    >>> m.find(np.array([7])).tolist(), len(m)
    ([-1], 2)
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["MAX_LOAD", "Entries", "KeyMap"]

EMPTY, REMOVED = -1, -2
#: Entries plus tombstones beyond this fraction of the slots trigger a rebuild.
MAX_LOAD = 0.75
#: Load after a rebuild that grows the table (growth leaves room for more inserts).
GROW_LOAD = 0.5
#: Load of a table sized for a known number of entries (:meth:`KeyMap.reserve`).
RESERVE_LOAD = 0.65
#: Slots one round looks at per key after the first (doubling each further round).
WINDOW = 8
#: Probes left when rounds switch from one slot to windows of slots.
TAIL = 1024
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
FREE = np.iinfo(np.int32).max  # stored step of an entry that holds no key
MAX_COUNT = np.iinfo(np.uint32).max  # counts saturate here


class KeyMap:
    """Distinct int64 keys to distinct non-negative rows (``< 2**31``)."""

    def __init__(self, expected: int = 0):
        self.size = 0
        self._removed = 0
        self._slots = np.full(_slots_for(expected, RESERVE_LOAD), EMPTY, dtype=np.int32)
        #: ``row_keys[r]``: the key of row ``r`` (meaningful for rows in the map).
        self.row_keys = np.zeros(max(16, expected), dtype=np.int64)

    def __len__(self) -> int:
        return self.size

    @property
    def nbytes(self) -> int:
        """Bytes of the slots and of :attr:`row_keys`."""
        return self._slots.nbytes + self.row_keys.nbytes

    @property
    def num_slots(self) -> int:
        return self._slots.size

    def _home(self, keys: np.ndarray) -> np.ndarray:
        u = keys.view(np.uint64)
        with np.errstate(over="ignore"):
            h = (u ^ (u >> np.uint64(32))) * _GOLDEN
        return ((h >> np.uint64(32)) * np.uint64(self._slots.size) >> np.uint64(32)).astype(
            np.int64
        )

    # -- queries ------------------------------------------------------------------------
    def find(self, keys: np.ndarray) -> np.ndarray:
        """Row of each key (int64, any order, duplicates allowed); ``-1`` when absent."""
        keys = np.ascontiguousarray(keys, dtype=np.int64).reshape(-1)
        out = np.full(keys.size, -1, dtype=np.int64)
        if keys.size == 0 or self.size == 0:
            return out
        slots, row_keys = self._slots, self.row_keys
        slot = self._home(keys)
        v = slots[slot]
        hit = (row_keys[v] == keys) & (v >= 0)  # v < 0 reads some row: masked out
        out[hit] = v[hit]
        todo = np.flatnonzero(~hit & (v != EMPTY))
        at, width = slot[todo] + 1, 1
        while todo.size:  # one slot a round while many are left; then doubling windows
            width = 1 if todo.size > TAIL else max(2 * width, WINDOW)
            v = slots[self._window(at, width)]
            hit = (row_keys[v] == keys[todo, None]) & (v >= 0)
            stop = hit | (v == EMPTY)
            first = stop.argmax(axis=1)
            pick = np.arange(todo.size), first
            found = hit[pick]
            out[todo[found]] = v[pick][found]
            more = ~stop[pick]
            todo, at = todo[more], at[more] + width
        return out

    def _window(self, at: np.ndarray, width: int) -> np.ndarray:
        """Slots ``at[i], at[i] + 1, ..., at[i] + width - 1`` (wrapping) of each probe."""
        width = min(width, self._slots.size)
        return (at[:, None] + np.arange(width)) % self._slots.size

    def live_rows(self) -> np.ndarray:
        """The rows in the map, ascending."""
        rows = self._slots[self._slots >= 0].astype(np.int64)
        rows.sort()
        return rows

    # -- changes ------------------------------------------------------------------------
    def insert(self, keys: np.ndarray, rows: np.ndarray) -> None:
        """Add ``keys`` (distinct, none in the map) pointing at ``rows`` (distinct, none in
        the map). The caller guarantees both; :meth:`find` first."""
        keys = np.ascontiguousarray(keys, dtype=np.int64).reshape(-1)
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if keys.size == 0:
            return
        top = int(rows.max()) + 1
        if top > self.row_keys.size:
            grown = np.zeros(max(top, int(self.row_keys.size * 1.5)), dtype=np.int64)
            grown[: self.row_keys.size] = self.row_keys
            self.row_keys = grown
        if self.size + self._removed + keys.size > MAX_LOAD * self._slots.size:
            self._rebuild(self.size + keys.size)
        self.row_keys[rows] = keys
        self._removed -= self._place(keys, rows.astype(np.int32))
        self.size += keys.size

    def remove(self, rows: np.ndarray) -> None:
        """Remove the entries of ``rows`` (distinct rows in the map)."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if rows.size == 0:
            return
        slots = self._slots
        at, width = self._home(self.row_keys[rows]), 1
        want = rows.astype(np.int32)
        found = np.empty(rows.size, dtype=np.int64)
        todo = np.arange(rows.size)
        while todo.size:
            idx = self._window(at, width)
            v = slots[idx]
            hit = v == want[todo, None]
            stop = hit | (v == EMPTY)
            first = stop.argmax(axis=1)
            pick = np.arange(todo.size), first
            if not hit[stop.any(axis=1)].any(axis=1).all():
                raise KeyError(f"rows not in the map: {rows[todo][:5].tolist()}")
            done = stop[pick]
            found[todo[done]] = idx[pick][done]
            todo, at, width = todo[~done], at[~done] + width, width * 2
        slots[found] = REMOVED
        self.size -= rows.size
        self._removed += rows.size

    def clear(self) -> None:
        self._slots.fill(EMPTY)
        self.size = self._removed = 0

    def reserve(self, entries: int) -> None:
        """Size the table for ``entries`` entries now (restores, known capacities), so
        that inserts up to that number rebuild at most to clear tombstones."""
        if entries > RESERVE_LOAD * self._slots.size:
            self._rebuild(entries, load=RESERVE_LOAD)

    def _place(self, keys: np.ndarray, rows: np.ndarray) -> int:
        """Write ``rows`` into the first free slot of each key's probe; returns how many
        tombstones were reused."""
        slots = self._slots
        at, width = self._home(keys), 1
        todo = np.arange(keys.size)
        reused = 0
        while todo.size:
            idx = self._window(at, width)
            v = slots[idx]
            free = v < 0
            first = free.argmax(axis=1)
            has = free[np.arange(todo.size), first]
            dest = idx[has, first[has]]  # each key's first free slot in its window
            mine = rows[todo[has]]
            was = slots[dest]
            slots[dest] = mine  # several keys may aim at one slot: one write sticks
            won = slots[dest] == mine
            reused += int(np.count_nonzero(was[won] == REMOVED))
            # Losers go on from the slot they lost (now taken); others past their window.
            nxt = at + width
            nxt[has] = dest
            stay = ~has
            stay[has] = ~won
            todo, at, width = todo[stay], nxt[stay], WINDOW
        return reused

    def _rebuild(self, entries: int, load: float = GROW_LOAD) -> None:
        """Rehash the live entries into a table sized for ``entries`` (tombstones go)."""
        live = self._slots[self._slots >= 0]
        size = self._slots.size
        if entries > RESERVE_LOAD * size:  # else only tombstones to clear: keep the size
            size = _slots_for(entries, load)
        self._slots = np.full(size, EMPTY, dtype=np.int32)
        self._removed = 0
        if live.size:
            self._place(self.row_keys[live], live)


def _slots_for(entries: int, load: float) -> int:
    return max(16, math.ceil(entries / load))


class Entries:
    """Keys with a row index each, and per-row columns: a :class:`KeyMap` plus row
    allocation (freed rows first, then new ones; arrays grow by a quarter up to
    ``capacity``). Steps are stored as int32 offsets from :attr:`base` (4 bytes a key)."""

    def __init__(self, capacity: int | None, columns: dict[str, tuple[tuple, str]]):
        self.capacity = capacity
        self.map = KeyMap()
        first = 1024 if capacity is None else min(capacity, 1024)
        self.cols = {k: np.zeros((first, *shape), dtype) for k, (shape, dtype) in columns.items()}
        self.cols["last_step"] = np.full(first, FREE, np.int32)
        self.cols["counts"] = np.zeros(first, np.uint32)
        self.base = 0  # stored steps are ``step - base``
        self.used = 0  # rows [0, used) have held a key
        self.free = np.empty(0, np.int64)  # freed rows, reused first-freed first

    def __len__(self) -> int:
        return self.map.size

    @property
    def room(self) -> float:
        return np.inf if self.capacity is None else self.capacity - self.map.size

    def take(self, n: int) -> np.ndarray:
        """``n`` rows to fill (the caller makes sure there is room)."""
        k = min(n, self.free.size)
        rows = np.concatenate([self.free[:k], np.arange(self.used, self.used + n - k)])
        self.free = self.free[k:]
        self.used += n - k
        alloc = len(self.cols["counts"])
        if self.used > alloc:
            size = max(self.used, alloc + max(1024, alloc // 4))  # a quarter: memory/copies
            size = size if self.capacity is None else min(size, self.capacity)
            for name, arr in self.cols.items():
                fill = FREE if name == "last_step" else 0
                grown = np.full((size, *arr.shape[1:]), fill, arr.dtype)
                grown[:alloc] = arr
                self.cols[name] = grown
        return rows

    def add(self, keys: np.ndarray, counts: np.ndarray, step: int) -> np.ndarray:
        """Rows for ``keys`` (distinct, absent), with their counts and step."""
        rows = self.take(keys.size)
        self.map.insert(keys, rows)
        self.cols["counts"][rows] = np.minimum(counts, MAX_COUNT)
        self.stamp(rows, step)
        return rows

    def stamp(self, rows: np.ndarray, step: int) -> None:
        """Record ``step`` as the last update of ``rows``."""
        if step - self.base >= FREE - 1:  # after 2**31 steps: move the base up by 2**30
            shift = step - self.base - (1 << 30)
            last = self.cols["last_step"]
            live = last != FREE
            last[live] = np.maximum(last[live].astype(np.int64) - shift, 0)  # the oldest tie
            self.base += shift
        self.cols["last_step"][rows] = step - self.base

    def load_steps(self, rows: np.ndarray, steps, now: int) -> None:
        """Set the last-update ``steps`` (int64) of ``rows`` of a table at step ``now``."""
        self.base = max(0, now - (1 << 30))
        last = np.asarray(steps, np.int64) - self.base
        self.cols["last_step"][rows] = np.clip(last, 0, FREE - 1)

    def steps(self, rows) -> np.ndarray:
        """The last-update steps of ``rows`` (rows holding keys), as int64."""
        return self.cols["last_step"][rows].astype(np.int64) + self.base

    def drop(self, rows: np.ndarray) -> None:
        self.map.remove(rows)
        self.cols["last_step"][rows] = FREE
        self.free = np.concatenate([self.free, rows])

    def live(self) -> np.ndarray | slice:
        """The rows holding keys, ascending (a slice when there is no hole)."""
        return slice(0, self.used) if self.free.size == 0 else self.map.live_rows()

    def oldest(self, k: int, protect: np.ndarray, *, by_count: bool = False, before=None):
        """The ``k`` rows to free first: fewest pushes (``by_count``), then oldest update,
        then smallest key, among rows not in ``protect`` (and updated before step
        ``before`` if given); fewer if fewer qualify."""
        last = self.cols["last_step"][: self.used]
        limit = FREE if before is None else max(before - self.base, -1)
        cand = np.flatnonzero(last < limit)
        if protect.size:
            mark = np.zeros(self.used, bool)
            mark[protect] = True
            cand = cand[~mark[cand]]
        scores = [last, self.map.row_keys[: self.used]]
        if by_count:
            scores.insert(0, self.cols["counts"][: self.used])
        return _smallest(cand, scores, k)

    def nbytes(self, *names: str) -> int:
        return sum(self.cols[n].nbytes for n in names)


def _smallest(cand: np.ndarray, scores: list[np.ndarray], k: int) -> np.ndarray:
    """The ``k`` entries of ``cand`` smallest by ``scores`` in lexicographic order (the
    last score distinct), in linear time: a partition per level, ties go to the next."""
    chosen = []
    for score in scores:
        if k <= 0 or cand.size <= k:
            break
        values = score[cand]
        threshold = np.partition(values, k - 1)[k - 1]
        below = cand[values < threshold]
        chosen.append(below)
        k -= below.size
        cand = cand[values == threshold]
    chosen.append(cand[: max(k, 0)])
    return np.concatenate(chosen).astype(np.int64)
