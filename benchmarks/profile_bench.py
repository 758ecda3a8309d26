"""Where the time of one lookup goes: an instrumented replica of ``EmbeddingStore._lookup_flat``.

Section ``profile``. The replica runs the same steps with the same library functions
(``check_ids``, ``Deduplicator``, ``Partition.split``, the shared-memory buffers, the shard's
storage) and times each one; its answer is checked against ``store.lookup``. The shard's
part is timed inside the shard (the replica sends it a module-level function through
``Shard.call``), so the Ray call's own cost is the round trip minus the slowest shard.

Stages, in the order a lookup runs them:

1. ``validate``: ``check_ids`` (dtype, range, int64 cast);
2. ``dedup``: distinct ids and the inverse map (skipped with ``dedup=False``);
3. ``split``: group ids by shard (``Partition.split``) and map asked -> grouped positions;
4. ``stage_ids``: write ids and destinations into the shared-memory request buffer;
5. ``ray_call``: submit one call per shard and wait; of which, inside the slowest shard,
   ``shard_gather`` (``np.take`` of its rows) and ``shard_scatter`` (into the router's
   buffer) and ``shard_other`` (attach, bounds checks);
6. ``assemble``: un-deduplicate (``np.take`` by the inverse) or copy out of the buffer.

Each case also times a proposed change, ``direct`` (see :func:`profiled_lookup`): shards
gather straight into the shared buffer (``RowStorage.gather_into``, which exists but the
store's lookup does not use), so a lookup makes two passes over its rows instead of three.
"""

from __future__ import annotations

import time

import numpy as np

from benchmarks.common import Context, make_ids

__all__ = ["run_profile"]

SIZES = {
    "smoke": {"rows": 20_000, "batches": [4096], "reps": 3},
    "quick": {"rows": 1_000_000, "batches": [4096, 65536], "reps": 15},
    "full": {"rows": 1_000_000, "batches": [4096, 65536, 262144], "reps": 40},
}
STAGES = ("validate", "dedup", "split", "stage_ids", "ray_call", "assemble")
SHARD_STAGES = ("shard_other", "shard_gather", "shard_scatter")


def _shard_lookup_shm(shard, names, start: int, stop: int) -> dict:
    """``Shard.lookup_shm`` with each part timed (runs inside the shard)."""
    t0 = time.perf_counter()
    ids_name, pos_name, out_name = names
    local = shard.check_rows(shard._shm_ids(ids_name, start, stop))
    pos = shard._shm_ids(pos_name, start, stop)
    out_buf = shard._segments.get(out_name)
    dim = shard.config.dim
    out = out_buf.array(shard.config.dtype, (out_buf.size // (dim * shard._itemsize), dim))
    if pos.size and (pos.min() < 0 or pos.max() >= len(out)):
        raise IndexError("positions out of range")
    t1 = time.perf_counter()
    rows = shard.weights.host(shard.weights.gather(local))
    t2 = time.perf_counter()
    out[pos] = rows
    t3 = time.perf_counter()
    return {"shard_other": t1 - t0, "shard_gather": t2 - t1, "shard_scatter": t3 - t2}


def _shard_gather_into(shard, names, start: int, stop: int) -> dict:
    """The proposed variant: gather straight into the router's buffer at the contiguous
    slice ``[start, stop)`` (``RowStorage.gather_into``), no temporary, no scatter."""
    t0 = time.perf_counter()
    ids_name, _, out_name = names
    local = shard.check_rows(shard._shm_ids(ids_name, start, stop))
    out_buf = shard._segments.get(out_name)
    dim = shard.config.dim
    out = out_buf.array(shard.config.dtype, (out_buf.size // (dim * shard._itemsize), dim))
    t1 = time.perf_counter()
    shard.weights.gather_into(local, out[start:stop])
    t2 = time.perf_counter()
    return {"shard_other": t1 - t0, "shard_gather": t2 - t1, "shard_scatter": 0.0}


def _shard_lookup(shard, local) -> tuple[np.ndarray, dict]:
    """``Shard.lookup`` with its gather timed (no shared memory: in-process or remote)."""
    t0 = time.perf_counter()
    local = shard.check_rows(local)
    t1 = time.perf_counter()
    rows = shard.weights.host(shard.weights.gather(local))
    t2 = time.perf_counter()
    return rows, {"shard_other": t1 - t0, "shard_gather": t2 - t1, "shard_scatter": 0.0}


def profiled_lookup(store, ids: np.ndarray, dedup, direct: bool = False):
    """What ``store.lookup(ids, dedup=dedup)`` returns, and the seconds of each stage.

    ``direct=True`` times a proposed change instead of the store's current path: every
    shard gathers its rows straight into its contiguous slice of the shared buffer, and the
    router puts them in asked order with one pass (the inverse ``np.take`` after a dedup,
    a scatter by ``split.order`` otherwise), where today each shard gathers into a
    temporary and scatters it to the asked positions, and the router then copies."""
    from shardemb.core.router import DEDUP_KEEP_RATIO, LookupPlan, assemble, check_ids

    cfg, be, t = store.config, store._backend, {}
    clock = time.perf_counter
    t0 = clock()
    flat = check_ids(ids, cfg.vocab_size).reshape(-1)
    t1 = clock()
    t["validate"] = t1 - t0
    uniq, inverse = flat, None
    if dedup:
        u, inv = store._dedup(flat)
        if dedup != "auto" or u.size <= DEDUP_KEEP_RATIO * flat.size:
            uniq, inverse = u, inv
    t2 = clock()
    t["dedup"] = t2 - t1
    split = cfg.partition.split(uniq)
    if inverse is not None:
        grouped_pos = np.empty(uniq.size, dtype=np.int64)
        grouped_pos[split.order] = np.arange(uniq.size)
        inverse = grouped_pos[inverse]
    t3 = clock()
    t["split"] = t3 - t2
    n = split.local.size
    channel = store._channel()
    asked = [s for s in range(cfg.num_shards) if split.bounds[s + 1] > split.bounds[s]]
    if channel is None or not all(channel.local[s] for s in asked):
        t["stage_ids"] = 0.0
        t4 = clock()
        futures = [be.submit(store._handles[s], "call", _shard_lookup, split.local_rows(s))
                   for s in asked]  # fmt: skip
        answers = be.get(futures, timeout=store.timeout)
        t5 = clock()
        grouped = np.concatenate([a[0] for a in answers])
        shard_times = [a[1] for a in answers]
        out = assemble(LookupPlan(flat.size, split, inverse), grouped)
    else:
        buf = channel.lookup
        buf.reserve(n)
        buf.ids(n)[:] = split.local
        if not direct:
            buf.pos(n)[:] = split.order if inverse is None else np.arange(n)
        t4 = clock()
        t["stage_ids"] = t4 - t3
        fn = _shard_gather_into if direct else _shard_lookup_shm
        futures = [
            be.submit(store._handles[s], "call", fn, buf.names, int(split.bounds[s]),
                      int(split.bounds[s + 1]))
            for s in asked
        ]  # fmt: skip
        shard_times = be.get(futures, timeout=store.timeout)
        t5 = clock()
        placed = buf.rows(n)
        if inverse is not None:
            out = np.take(placed, inverse, axis=0)
        elif direct:
            out = np.empty_like(placed)
            out[split.order] = placed
        else:
            out = placed.copy()
    t6 = clock()
    t["ray_call"] = t5 - t4
    t["assemble"] = t6 - t5
    slowest = max(shard_times, key=lambda d: sum(d.values()))
    t.update(slowest)
    t["call_overhead"] = t["ray_call"] - sum(slowest.values())
    t["total"] = t6 - t0
    t["distinct_ids"] = int(uniq.size)
    return out.reshape(ids.shape + (cfg.dim,)), t


def _case(store, table, ids, dedup, reps: int) -> dict:
    """The replica (current and direct), ``store.lookup`` and ``np.take``, interleaved."""
    samples: dict[str, list] = {"current": [], "direct": [], "store": [], "take": []}
    for _ in range(reps):
        samples["current"].append(profiled_lookup(store, ids, dedup)[1])
        samples["direct"].append(profiled_lookup(store, ids, dedup, direct=True)[1])
        start = time.perf_counter()
        store.lookup(ids, dedup=dedup)
        samples["store"].append(time.perf_counter() - start)
        start = time.perf_counter()
        np.take(table, ids, axis=0)
        samples["take"].append(time.perf_counter() - start)

    def med(rows):
        return {k: float(np.median([x[k] for x in rows])) for k in rows[0]}

    cur = np.array([x["total"] for x in samples["current"]])
    new = np.array([x["total"] for x in samples["direct"]])
    return {"stages": med(samples["current"]), "direct_stages": med(samples["direct"]),
            "direct_speedup": float(np.median(cur / new)),
            "store_lookup_s": float(np.median(samples["store"])),
            "take_s": float(np.median(samples["take"]))}  # fmt: skip


def run_profile(ctx: Context) -> dict:
    from benchmarks.lookup_bench import create_store

    if ctx.backend == "ray":
        from ray import cloudpickle

        import benchmarks.profile_bench as me

        # Shards need not import the benchmarks package: send these functions by value.
        cloudpickle.register_pickle_by_value(me)
    s = SIZES[ctx.mode]
    store = create_store(ctx, "profile", s["rows"], 64, 2)
    results = []
    try:
        table = store.to_numpy()
        rng = np.random.default_rng(7)
        ping = [store._backend.submit(h, "ping") for h in store._handles]
        store._backend.get(ping)
        empty = []
        for _ in range(s["reps"]):
            start = time.perf_counter()
            store._backend.get([store._backend.submit(h, "ping") for h in store._handles])
            empty.append(time.perf_counter() - start)
        cases = [(b, dist, d) for b in s["batches"] for dist in ("zipf", "uniform")
                 for d in ("auto", False)]  # fmt: skip
        for batch, dist, dedup in ctx.bar(cases, desc="profile"):
            ids = make_ids(dist, rng, batch, s["rows"])
            want = np.take(table, ids, axis=0)
            for direct in (False, True):
                assert np.array_equal(profiled_lookup(store, ids, dedup, direct)[0], want)
            results.append(_case(store, table, ids, dedup, s["reps"]))
            results[-1].update({"batch": batch, "dist": dist, "dedup": str(dedup).lower()})
    finally:
        store.close()
    return {"table_rows": s["rows"], "dim": 64, "shards": 2, "reps": s["reps"],
            "backend": ctx.backend, "empty_call_s": float(np.median(empty)),
            "cases": results}  # fmt: skip
