"""DynamicShard: one shard of a dynamic table, its rows found by key.

The shard keeps a :class:`~shardemb.shard.keymap.KeyMap` from int64 keys to its rows, the
rows and their optimizer slots, and per row its push count and the step it was last
updated at. Keys without a row are not stored: a lookup returns their initial row
(deterministic from ``(seed, key)``, see :func:`shardemb.core.keys.initial_rows`) or
zeros, and counts them in ``unknown_lookups``.

A push (:meth:`DynamicShard.apply_gradients`) sums the gradients of duplicate keys, gives
rows to the new keys it may admit, and runs one optimizer step on the rows it has, as the
fixed-vocabulary :class:`~shardemb.shard.shard.Shard` does. With
``admission={"min_count": k}`` a new key gets a row on its k-th push (that push is
applied to its initial row); earlier pushes only count it (exactly, in a table of pending
keys bounded like the rows, least recently pushed dropped first) and are counted in
``admissions_rejected``. A full shard frees rows by ``eviction``: ``"lru"`` (oldest last
update first), ``"lfu"`` (fewest pushes, then oldest), ``{"ttl_steps": N}`` (rows not
updated in the last N pushes, oldest first; if too few, the new keys left over are
rejected and counted). Ties go to the smaller key, so choices do not depend on row
layout; rows the push itself updates are never freed. A shard frees at least 1/64 of its
capacity at once (:data:`EVICT_FRACTION`): choosing victims is a pass over its rows, so it
is paid once per many pushes; a table at capacity runs up to that much below it. With
``eviction=None`` a push that does not fit raises :class:`~shardemb.errors.TableFullError`
and changes nothing.

Example:
    >>> import numpy as np
    >>> from shardemb.core.keys import DynamicConfig
    >>> cfg = DynamicConfig.build("t", 2, num_shards=1, capacity=2, eviction="lru",
    ...                           optimizer={"name": "sgd", "learning_rate": 1.0},
    ...                           initializer="zeros", seed=0)
    >>> shard = DynamicShard(cfg, 0)
    >>> for key in (10, 20, 30):  # the third push evicts key 10, the least recent
    ...     shard.apply_gradients(np.array([key]), np.ones((1, 2), np.float32))
    >>> shard.lookup(np.array([10, 30])).tolist()
    [[0.0, 0.0], [-1.0, -1.0]]
    >>> {k: shard.stats()[k] for k in ("rows", "inserts", "evictions")}
    {'rows': 2, 'inserts': 3, 'evictions': 1}
"""

from __future__ import annotations

import math

import numpy as np

from shardemb.core.arrays import NUMPY_OPS
from shardemb.core.keys import DynamicConfig, initial_rows
from shardemb.errors import InvalidGradientError, InvalidIdsError, TableFullError
from shardemb.shard.keymap import MAX_COUNT, Entries
from shardemb.shard.shard import sum_duplicates

__all__ = ["COUNTERS", "DynamicShard"]

#: Counters every shard keeps (summed over shards by the store).
COUNTERS = ("inserts", "evictions", "admissions_rejected", "unknown_lookups", "pending_evictions")
#: A full shard frees at least this fraction of its capacity at once: choosing victims is a
#: pass over its rows, paid once per many pushes instead of at every one.
EVICT_FRACTION = 1 / 64


def _sum_duplicates(keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`~shardemb.shard.shard.sum_duplicates`, bit for bit, faster when no key
    repeats more than once (a push of mostly distinct keys): pairs are added directly."""
    if keys.size < 2 or bool((keys[1:] > keys[:-1]).all()):
        return keys, values  # sorted and distinct (the trainer sends them so)
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    first = np.empty(keys.size, bool)
    first[:1] = True
    np.not_equal(sorted_keys[1:], sorted_keys[:-1], out=first[1:])
    starts = np.flatnonzero(first)
    if starts.size == keys.size:
        return sorted_keys, values[order]
    sizes = np.diff(starts, append=keys.size)
    if sizes.max() > 2:  # longer runs: the general sum
        return sum_duplicates(keys, values)
    vals = values[order]
    out = vals[starts]
    pairs = np.flatnonzero(sizes == 2)
    out[pairs] += vals[starts[pairs] + 1]
    return sorted_keys[starts], out


class DynamicShard:
    """The keys ``shard_of_keys(key, num_shards) == index`` of a dynamic table."""

    def __init__(self, config: DynamicConfig, index: int, *, initialize: bool = True):
        self.config = config
        self.index = int(index)
        self.step = 0
        cfg = config
        cols = {"weights": ((cfg.dim,), cfg.dtype)}
        self._slot_init = {}
        for name, (width, init) in cfg.optimizer.slot_specs(cfg.dim).items():
            cols[f"slots/{name}"] = ((width,), cfg.dtype)
            self._slot_init[name] = init
        self.rows = Entries(cfg.shard_capacity(index), cols)
        self.pending = None
        if cfg.admission.min_count > 1:
            self.pending = Entries(cfg.shard_capacity(index), {})
        self.counters = dict.fromkeys(COUNTERS, 0)

    # -- serving ----------------------------------------------------------------------
    def lookup(self, keys: np.ndarray, insert: bool = False) -> np.ndarray:
        """Rows of int64 ``keys`` (any order, duplicates allowed); keys without a row get
        their default row, and with ``insert`` a row of their own (if there is room)."""
        keys = self.check_keys(keys)
        rows = self.rows.map.find(keys)
        missing = rows < 0
        if insert and missing.any():
            new = np.unique(keys[missing])
            placed = self._insert(new, rows[~missing], self.step, push=False)
            at = np.searchsorted(new, keys[missing])
            rows[missing] = placed[at]
            missing = rows < 0
        weights = self.rows.cols["weights"]
        out = np.take(weights, rows, axis=0, mode="clip") if len(self.rows) else None
        n_missing = int(np.count_nonzero(missing))
        if out is None:
            out = np.empty((keys.size, self.config.dim), self.config.dtype)
        if n_missing:
            out[missing] = self.default_rows(keys[missing])
            self.counters["unknown_lookups"] += n_missing
        return out

    def default_rows(self, keys: np.ndarray) -> np.ndarray:
        """What a lookup of keys without a row returns."""
        if self.config.admission.default_row == "zeros":
            return np.zeros((keys.size, self.config.dim), self.config.dtype)
        return initial_rows(self.config, keys)

    def apply_gradients(self, keys: np.ndarray, grads: np.ndarray) -> None:
        """Sum the gradients of duplicate keys, give rows to the new keys that are
        admitted (evicting if needed), then run one optimizer step on the rows.

        Every call counts as one step, also an empty one, so all shards agree on the step.
        A push that does not fit a full table with ``eviction=None`` raises
        :class:`TableFullError` and changes nothing (not even the step).
        """
        keys = self.check_keys(keys)
        grads = np.asarray(grads)
        if grads.shape != (keys.size, self.config.dim):
            raise InvalidGradientError(
                f"Shard {self.index} expected gradients of shape {(keys.size, self.config.dim)}."
                f" Received: shape={grads.shape}"
            )
        step = self.step + 1
        if keys.size == 0:
            self.step = step
            return
        uniq, summed = _sum_duplicates(keys, grads.astype(self.config.dtype, copy=False))
        rows = self.rows.map.find(uniq)
        known = rows >= 0
        old = rows[known]
        new = np.flatnonzero(~known)
        plan = self._plan(uniq[new], old, step, push=True)  # raises before any change
        self.step = step
        rows[new] = self._commit(plan, step, push=True)
        cols = self.rows.cols
        cols["counts"][old] = np.minimum(cols["counts"][old].astype(np.int64) + 1, MAX_COUNT)
        have = np.flatnonzero(rows >= 0)
        r = rows[have]
        self.rows.stamp(r, step)
        slots = {k: cols[f"slots/{k}"][r] for k in self._slot_init}
        new_rows, new_slots = self.config.optimizer.update(
            NUMPY_OPS, cols["weights"][r], slots, summed[have], step
        )
        cols["weights"][r] = new_rows
        for k, v in new_slots.items():
            cols[f"slots/{k}"][r] = v

    def write_rows(self, keys: np.ndarray, values: np.ndarray) -> None:
        """Set the rows of distinct ``keys`` (``set_weights``): new keys get rows (never
        by eviction: a table without room raises), slots of known keys are kept."""
        keys = self.check_keys(keys)
        rows = self.rows.map.find(keys)
        missing = rows < 0
        if missing.any():
            order = np.argsort(keys[missing])
            new = keys[missing][order]
            placed = np.empty(new.size, np.int64)
            placed[order] = self._insert(new, rows[~missing], self.step, push=False, evict=False)
            rows[missing] = placed
        self.rows.cols["weights"][rows] = np.asarray(values, self.config.dtype)

    def room(self, keys: np.ndarray, push: bool) -> tuple[float, int]:
        """``(free rows, rows a push (or an inserting lookup) of keys would need)``: lets
        the store refuse a push that does not fit before any shard applies it."""
        keys = self.check_keys(keys)
        rows = self.rows.map.find(keys)
        new = np.unique(keys[rows < 0])
        need = new.size
        if push and self.pending is not None and need:
            pend = self.pending.map.find(new)
            counts = np.where(pend >= 0, self.pending.cols["counts"][pend.clip(0)], 0) + 1
            need = int(np.count_nonzero(counts >= self.config.admission.min_count))
        return self.rows.room, int(need)

    # -- inserting and evicting --------------------------------------------------------
    def _insert(self, new, protect, step, *, push: bool, evict: bool = True) -> np.ndarray:
        return self._commit(self._plan(new, protect, step, push=push, evict=evict), step, push)

    def _plan(self, new: np.ndarray, protect: np.ndarray, step: int, *, push: bool, evict=True):
        """Which of the ``new`` keys (distinct, sorted) get rows and which rows are freed
        for them; raises :class:`TableFullError` before anything changes."""
        counts = np.full(new.size, 1 if push else 0, np.int64)
        pend = None
        if self.pending is not None and new.size:
            pend = self.pending.map.find(new)
            counts += np.where(pend >= 0, self.pending.cols["counts"][pend.clip(0)], 0)
        admit = counts >= self.config.admission.min_count if push else np.ones(new.size, bool)
        chosen = np.flatnonzero(admit)
        victims = np.empty(0, np.int64)
        need = chosen.size - self.rows.room
        if need > 0:
            kind = self.config.eviction.kind if evict else None
            if kind is None:
                self._raise_full(chosen.size, "this push" if push else "this call")
            before = step - self.config.eviction.ttl_steps if kind == "ttl" else None
            batch = max(int(need), math.ceil(self.rows.capacity * EVICT_FRACTION))
            victims = self.rows.oldest(batch, protect, by_count=kind == "lfu", before=before)
            chosen = chosen[: int(self.rows.room) + victims.size]  # the rest: rejected
        return new, counts, pend, chosen, victims

    def _commit(self, plan, step: int, push: bool) -> np.ndarray:
        """Apply a plan: pending counts, evictions, new rows; returns each new key's row
        (``-1`` for keys left without one)."""
        new, counts, pend, chosen, victims = plan
        got = np.zeros(new.size, bool)
        got[chosen] = True
        if push:
            self.counters["admissions_rejected"] += int(new.size - chosen.size)
        if self.pending is not None and new.size:  # admitted keys leave first: room
            self.pending.drop(pend[got & (pend >= 0)])
            self._count_pending(new[~got], counts[~got], pend[~got], step, push)
        if victims.size:
            self.rows.drop(victims)
            self.counters["evictions"] += int(victims.size)
        rows = np.full(new.size, -1, np.int64)
        if chosen.size:
            keys = new[chosen]
            rows[chosen] = placed = self.rows.add(keys, counts[chosen], step)
            cols = self.rows.cols
            cols["weights"][placed] = initial_rows(self.config, keys)
            for name, init in self._slot_init.items():
                cols[f"slots/{name}"][placed] = init
            self.counters["inserts"] += int(chosen.size)
        return rows

    def _count_pending(self, keys, counts, pend, step: int, push: bool) -> None:
        """Record the counts of keys pushed but not admitted; a full pending table drops
        its least recently pushed keys."""
        if not push or keys.size == 0:
            return
        seen = pend >= 0
        cols = self.pending.cols
        cols["counts"][pend[seen]] = np.minimum(counts[seen], MAX_COUNT)
        self.pending.stamp(pend[seen], step)
        fresh = np.flatnonzero(~seen)
        over = fresh.size - self.pending.room
        if over > 0:
            batch = max(int(over), math.ceil(self.pending.capacity * EVICT_FRACTION))
            gone = self.pending.oldest(batch, pend[seen])
            self.pending.drop(gone)
            self.counters["pending_evictions"] += int(gone.size)
            dropped = fresh.size - int(self.pending.room)
            if dropped > 0:  # more new keys than the pending table holds
                self.counters["pending_evictions"] += dropped
                fresh = fresh[dropped:]
        self.pending.add(keys[fresh], counts[fresh], step)

    def _raise_full(self, need: int, what: str) -> None:
        cfg = self.config
        raise TableFullError(
            f"Shard {self.index} of table {cfg.name!r} is full: it holds "
            f"{len(self.rows)} of its {self.rows.capacity} rows (capacity={cfg.capacity} "
            f"over {cfg.num_shards} shard(s)) and {what} needs {need} new row(s); nothing "
            "was changed. Create the table with eviction='lru', 'lfu' or "
            "{'ttl_steps': N} to free rows, or with a larger capacity."
        )

    # -- reading and checkpoints ---------------------------------------------------------
    def export(self) -> tuple[np.ndarray, np.ndarray]:
        """``(keys, rows)`` of every key with a row, in row order."""
        live = self.rows.live()
        return self.rows.map.row_keys[live], self.rows.cols["weights"][live]

    def snapshot(self) -> dict:
        """Everything a checkpoint holds, in row order (views when rows have no hole)."""
        live = self.rows.live()
        arrays = {"keys": self.rows.map.row_keys[live]}
        arrays.update({k: v[live] for k, v in self.rows.cols.items() if k != "last_step"})
        arrays["last_step"] = self.rows.steps(live)
        if self.pending is not None:
            plive = self.pending.live()
            arrays["pending/keys"] = self.pending.map.row_keys[plive]
            arrays["pending/counts"] = self.pending.cols["counts"][plive]
            arrays["pending/last_step"] = self.pending.steps(plive)
        return {"arrays": arrays, "step": self.step, "counters": dict(self.counters)}

    def load(self, arrays: dict, step: int, counters: dict) -> None:
        """Refill this (empty) shard from :meth:`snapshot`-shaped arrays."""
        for entries, prefix in ((self.rows, ""), (self.pending, "pending/")):
            if entries is None or f"{prefix}keys" not in arrays:
                continue
            keys = np.asarray(arrays[f"{prefix}keys"], np.int64)
            if entries.capacity is not None and keys.size > entries.capacity:
                raise TableFullError(
                    f"Shard {self.index} of table {self.config.name!r} would hold "
                    f"{keys.size} {'pending keys' if prefix else 'rows'}, above its capacity "
                    f"of {entries.capacity}: restore with a larger capacity or more shards."
                )
            entries.map.reserve(keys.size)
            rows = entries.take(keys.size)
            entries.map.insert(keys, rows)
            for name in entries.cols:
                if f"{prefix}{name}" in arrays and name != "last_step":
                    entries.cols[name][rows] = arrays[f"{prefix}{name}"]
            entries.load_steps(rows, arrays[f"{prefix}last_step"], int(step))
        self.step = int(step)
        self.counters.update({k: int(counters.get(k, 0)) for k in COUNTERS})

    def stats(self) -> dict:
        """This shard's counters (see :meth:`DynamicEmbeddingStore.stats`)."""
        rows = len(self.rows)
        out = {"shard": self.index, "rows": rows, "capacity": self.rows.capacity}
        out.update(self.counters)
        out["admissions_pending"] = 0 if self.pending is None else len(self.pending)
        out["step"] = self.step
        if self.config.key_dtype == "string":  # see shardemb.core.keys: not detectable
            out["hash_collisions_expected"] = self.config.num_shards * rows * (rows - 1) / 2**65
        else:
            out["hash_collisions"] = 0  # int64 keys are stored exactly
        return out

    def info(self) -> dict:
        """Size, memory and step of this shard: ``bytes`` (rows and slots allocated) and
        ``index_bytes`` (the key map, keys, counts and steps, pending keys included)."""
        names = [k for k in self.rows.cols if k == "weights" or k.startswith("slots/")]
        index = self.rows.map.nbytes + self.rows.nbytes("counts", "last_step")
        if self.pending is not None:
            index += self.pending.map.nbytes + self.pending.nbytes("counts", "last_step")
        return {
            "index": self.index,
            "num_rows": len(self.rows),
            "allocated_rows": len(self.rows.cols["counts"]),
            "step": self.step,
            "bytes": self.rows.nbytes(*names),
            "index_bytes": index,
            "storage": "numpy",
            "device": "cpu",
        }

    def ping(self) -> int:
        return self.index

    def call(self, fn, *args):
        """Run ``fn(self, *args)`` here (checkpoints add shard-side work this way)."""
        return fn(self, *args)

    def check_keys(self, keys) -> np.ndarray:
        """``keys`` as a 1-D int64 array; raises on anything else."""
        keys = np.asarray(keys)
        if keys.ndim != 1 or keys.dtype != np.int64:
            raise InvalidIdsError(
                f"Shard {self.index} expected a 1-D int64 array of keys. "
                f"Received: shape={keys.shape}, dtype={keys.dtype}"
            )
        return keys
