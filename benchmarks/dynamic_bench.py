"""Dynamic tables (``vocab_size=None``, keys instead of rows) beside fixed-vocabulary
tables holding the same rows, measured side by side in one loop (issue 16).

Section ``dynamic``. Both tables run on in-process shards (``backend="inprocess"``),
whatever the run's backend: the ratios are the stores' own work (key hashing, the key
map, inserts and evictions against plain row arithmetic), with no transport; dynamic
tables have no shared-memory path yet, so over Ray they would also pay Ray's object
transfer. 2 shards, SGD, float32.

- ``lookup``: 65,536 keys, all present (uniform and Zipf over the rows), vs the fixed
  table's lookup of the same rows (target >= 0.5x).
- ``push``: 4,096 keys of which 10% are new (inserted) + ``flush``, vs the fixed table's
  push of 4,096 ids + ``flush`` (target >= 0.5x).
- ``push_evict``: the same push at capacity with ``eviction="lru"`` (each push frees 10%
  of its keys' worth of rows), vs the same fixed push: reported, no target.
- ``memory``: bytes per key beyond rows and slots (the key map, the keys, per-key counts
  and steps), allocated bytes over rows held, right after loading the rows and after the
  pushes (target <= 32).
"""

from __future__ import annotations

import numpy as np

from benchmarks.common import Context, interleaved, make_ids
from benchmarks.report import _table, _x

__all__ = ["run_dynamic"]

SIZES = {
    "smoke": {"rows": 20_000, "dim": 16, "reps": 3},
    "quick": {"rows": 1_000_000, "dim": 64, "reps": 15},
    "full": {"rows": 1_000_000, "dim": 64, "reps": 40},
}
LOOKUP_KEYS = 65536
PUSH_KEYS = 4096
NEW_FRACTION = 0.1
SHARDS = 2
TARGETS = {"lookup": 0.5, "push": 0.5, "bytes_per_key": 32}


def _create(ctx: Context, what: str, rows: int | None, dim: int, **kwargs):
    from shardemb import EmbeddingStore

    return EmbeddingStore.create(ctx.name(what), rows, dim, num_shards=SHARDS, seed=0,
                                 optimizer={"name": "sgd", "learning_rate": 1e-3},
                                 backend="inprocess", **kwargs)  # fmt: skip


def _fitting(keys: np.ndarray, config) -> np.ndarray:
    """Positions of the keys that fill each shard of ``config`` up to its capacity."""
    from shardemb.core.keys import shard_of_keys

    shard = shard_of_keys(keys, config.num_shards)
    rank = np.empty(keys.size, np.int64)
    for s in range(config.num_shards):
        mine = np.flatnonzero(shard == s)
        rank[mine] = np.arange(mine.size) < config.shard_capacity(s)
    return np.flatnonzero(rank)


def _index_bytes(store) -> float:
    info = store.info()
    return sum(i["index_bytes"] for i in info) / max(1, sum(i["num_rows"] for i in info))


def run_dynamic(ctx: Context) -> dict:
    s = SIZES[ctx.mode]
    rows, dim, reps = s["rows"], s["dim"], s["reps"]
    rng = np.random.default_rng(16)
    keys = np.unique(rng.integers(-(2**63), 2**63 - 1, rows + rows // 8, dtype=np.int64))
    keys = rng.permutation(keys)[:rows]  # the key of row r is keys[r]
    fixed = _create(ctx, "fixed", rows, dim)
    dyn = _create(ctx, "dyn", None, dim)
    full = _create(ctx, "dyn-lru", None, dim, capacity=rows, eviction="lru")
    try:
        table = fixed.to_numpy()
        dyn.set_weights(keys, table)
        fit = _fitting(keys, full.config)  # as many as each shard holds: a full table
        full.set_weights(keys[fit], table[fit])
        memory = {"loaded": _index_bytes(dyn)}
        lookups = []
        for dist in ("uniform", "zipf"):
            ids = make_ids(dist, rng, LOOKUP_KEYS, rows)
            asked = keys[ids]
            assert np.array_equal(dyn.lookup(asked), fixed.lookup(ids))
            fns = {"fixed": lambda i=ids: fixed.lookup(i), "dynamic": lambda k=asked: dyn.lookup(k)}
            t = interleaved(fns, reps, warmup=2)
            lookups.append(_ratio(t, dist=dist, keys=LOOKUP_KEYS,
                                  distinct=float(np.unique(ids).size / ids.size)))  # fmt: skip
        pushes = {}
        for name, store in (("push", dyn), ("push_evict", full)):
            pushes[name] = _push(fixed, store, keys, rng, reps, rows)
        memory["after_pushes"] = _index_bytes(dyn)
        memory["at_capacity_lru"] = _index_bytes(full)
        stats = full.stats()["total"]
        info = dyn.info()
    finally:
        for store in (fixed, dyn, full):
            store.close()
    return {
        "rows": rows, "dim": dim, "shards": SHARDS, "backend": "inprocess", "reps": reps,
        "optimizer": "sgd", "targets": TARGETS, "lookup": lookups, **pushes,
        "memory": {**memory, "rows_bytes_per_key": sum(i["bytes"] for i in info)
                   / sum(i["num_rows"] for i in info)},
        "evict_stats": {k: stats[k] for k in ("rows", "inserts", "evictions")},
    }  # fmt: skip


def _push(fixed, store, keys: np.ndarray, rng, reps: int, rows: int) -> dict:
    """Interleaved pushes: the fixed table's 4,096 ids vs 4,096 keys with 10% new ones."""
    n_new = int(PUSH_KEYS * NEW_FRACTION)
    grads = np.full((PUSH_KEYS, fixed.dim), 1e-3, np.float32)
    fresh = iter(rng.integers(-(2**63), 2**63 - 1, (reps + 4, n_new), dtype=np.int64))
    state = {}

    def prepare_fixed():  # untimed: the next push's ids and keys
        state["ids"] = rng.integers(0, rows, PUSH_KEYS)

    def prepare_dynamic():
        old = keys[rng.integers(0, rows, PUSH_KEYS - n_new)]
        state["keys"] = np.concatenate([old, next(fresh)])

    def push_fixed():
        fixed.apply_gradients(state["ids"], grads)
        fixed.flush()

    def push_dynamic():
        store.apply_gradients(state["keys"], grads)
        store.flush()

    prepare_fixed()
    prepare_dynamic()
    t = interleaved({"fixed": push_fixed, "dynamic": push_dynamic}, reps, warmup=1,
                    after={"fixed": prepare_fixed, "dynamic": prepare_dynamic})  # fmt: skip
    return _ratio(t, keys=PUSH_KEYS, new=n_new)


def _ratio(t: dict, **facts) -> dict:
    return {**facts, "fixed_s": float(np.median(t["fixed"])),
            "dynamic_s": float(np.median(t["dynamic"])),
            "ratio": float(np.median(t["fixed"] / t["dynamic"])),
            "p10_ratio": float(np.percentile(t["fixed"] / t["dynamic"], 10)),
            "p90_ratio": float(np.percentile(t["fixed"] / t["dynamic"], 90))}  # fmt: skip


def block_dynamic(r: dict, meta: dict) -> str:
    """The README block of this section (``benchmarks.run`` adds it to the report's)."""
    tg = r["targets"]

    def line(case, c, target):
        met = "" if target is None else ("yes" if c["ratio"] >= target else "no")
        return [case, f"{c['fixed_s'] * 1e3:.2f}", f"{c['dynamic_s'] * 1e3:.2f}",
                f"**{_x(c['ratio'])}**", f"{_x(c['p10_ratio'])} - {_x(c['p90_ratio'])}",
                "none" if target is None else f">= {target}x {met}"]  # fmt: skip

    rows = [line(f"lookup {c['keys']:,} keys, {c['dist']} ({c['distinct']:.0%} distinct)",
                 c, tg["lookup"]) for c in r["lookup"]]  # fmt: skip
    rows.append(line(f"push {r['push']['keys']:,} keys, {r['push']['new']} new", r["push"],
                     tg["push"]))  # fmt: skip
    ev = r["evict_stats"]
    rows.append(line(f"push {r['push_evict']['keys']:,} keys, {r['push_evict']['new']} new, "
                     "at capacity (LRU)", r["push_evict"], None))  # fmt: skip
    m = r["memory"]
    mem = [["after loading the rows", f"{m['loaded']:.1f}"],
           ["after the pushes (arrays grown)", f"{m['after_pushes']:.1f}"],
           ["at capacity with LRU evictions", f"{m['at_capacity_lru']:.1f}"]]  # fmt: skip
    return "\n".join([
        f"{r['rows']:,} rows x {r['dim']} float32 on {r['shards']} shards, {r['optimizer']}, "
        f"both tables on **in-process** shards (the stores' own work, no transport), "
        f"{r['reps']} interleaved repetitions; ratios are fixed-table time / dynamic-table "
        "time (median of the per-repetition ratios). The dynamic table holds the same rows "
        "under random int64 keys; its pushes insert fresh keys (no eviction). The table at "
        "capacity with LRU frees rows as pushes need them, at least 1/64 of a shard's "
        f"capacity at a time ({ev['evictions']:,} evictions in the run, inserts - evictions = "
        f"{ev['inserts'] - ev['evictions']:,} rows). Measured by benchmarks/dynamic_bench.py.",
        "",
        _table(["case", "fixed ms", "dynamic ms", "dynamic / fixed", "p10 - p90", "target"],
               rows, "lrrrrl"),
        "",
        f"Bytes per key beyond rows and slots (key map, keys, counts, steps; allocated, over "
        f"rows held; target <= {tg['bytes_per_key']}). Rows and slots: "
        f"{m['rows_bytes_per_key']:.0f} bytes per key allocated.",
        "",
        _table(["state", "bytes per key"], mem),
    ])  # fmt: skip
