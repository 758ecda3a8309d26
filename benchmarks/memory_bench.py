"""Memory of shards and trainer as the table grows, and throughput at large sizes.

Section ``memory``. For each table size (``rows x 64`` float32 with Adagrad, 2 shards):

- each shard's resident and peak resident bytes (``VmRSS``/``VmHWM`` of the actor's pid from
  ``store.placement()``) after a workload of lookups and pushes, against the bytes of its
  rows plus slots (``store.info()``);
- the trainer's (this process's) resident bytes before the table exists and after the
  workload: it must stay flat, the trainer does not hold the table;
- ``/dev/shm`` held by the table (the shards' shared rows and the request buffers), and of
  the processes' resident bytes those of shared memory (``RssShmem``): the shared rows are
  one copy in ``/dev/shm``, mapped by the shard and, for the pages its lookups read, by
  the trainer (each process counts the mapped pages in its own RSS: not extra memory);
- lookup of 65,536 Zipf ids vs ``np.take`` on a copy of the same table, and push
  (Adagrad, flushed) vs ``np.add.at``, interleaved; ``to_numpy`` rate on the way.

Sizes go up to what fits this machine: a size whose shards would not fit the available
memory is skipped, and one whose reference copy would not fit as well is measured without
the reference; the result says which.
"""

from __future__ import annotations

import gc
import os
import time

import numpy as np
import psutil

from benchmarks.common import Context, interleaved, make_ids, proc_memory, shm_bytes
from shardemb.errors import CapacityError

__all__ = ["run_memory"]

SIZES = {
    "smoke": {"rows": [10_000, 40_000], "reps": 3, "workload": 3},
    "quick": {"rows": [250_000, 1_000_000], "reps": 5, "workload": 5},
    "full": {"rows": [1_000_000, 5_000_000, 10_000_000, 20_000_000], "reps": 9, "workload": 10},
}
DIM = 64
SHARDS = 2
BATCH = 65536
#: Fraction of the available memory a size may plan to use.
MEMORY_BUDGET = 0.85


def _rss() -> int:
    gc.collect()
    return psutil.Process(os.getpid()).memory_info().rss


def _one_size(ctx: Context, rows: int, reps: int, workload: int) -> dict:
    from benchmarks.lookup_bench import create_store

    store_bytes = rows * DIM * 4 * 2  # rows + Adagrad accumulator
    ref_bytes = rows * DIM * 4
    base = {"table_rows": rows, "dim": DIM, "shards": SHARDS, "optimizer": "adagrad",
            "table_bytes": store_bytes}  # fmt: skip
    avail = psutil.virtual_memory().available
    if store_bytes * 1.15 + 1e9 > MEMORY_BUDGET * avail:
        return {**base, "skipped": f"needs ~{store_bytes * 1.15 / 1e9 + 1:.1f} GB, "
                                   f"{avail / 1e9:.1f} GB available"}  # fmt: skip
    rss_before = _rss()
    t0 = time.perf_counter()
    store = create_store(ctx, f"mem{rows}", rows, DIM, SHARDS,
                         optimizer={"name": "adagrad", "learning_rate": 0.01})  # fmt: skip
    create_s = time.perf_counter() - t0
    try:
        rng = np.random.default_rng(rows)
        ids = make_ids("zipf", rng, min(BATCH, rows), rows)
        grads = np.full((ids.size, DIM), 1e-3, np.float32)
        for _ in range(workload):
            store.lookup(ids)
            store.apply_gradients(ids, grads)
        store.flush()
        rss_after = _rss()
        shm_after = shm_bytes()
        trainer_shmem = proc_memory(os.getpid()).get("rss_shmem")
        shards = []
        for place, inf in zip(store.placement(), store.info(), strict=True):
            mem = proc_memory(place["pid"]) if ctx.backend == "ray" else {}
            shards.append({"shard": place["shard"], "pid": place["pid"], "rows": place["rows"],
                           "bytes": inf["bytes"], **mem})  # fmt: skip
        out = {
            **base, "create_s": create_s, "init_rows_per_s": rows / create_s,
            "driver_rss_before": rss_before, "driver_rss_after": rss_after,
            "driver_rss_growth": rss_after - rss_before, "shard_memory": shards,
            "shm_bytes": shm_after, "driver_rss_shmem": trainer_shmem,
            "batch": int(ids.size), "unique_frac": float(np.unique(ids).size / ids.size),
        }  # fmt: skip
        out.update(_throughput(store, ids, grads, reps, ref_bytes))
    finally:
        store.close()
    return out


def _throughput(store, ids: np.ndarray, grads: np.ndarray, reps: int, ref_bytes: int) -> dict:
    """Lookup and push beside np.take / np.add.at on a copy of the table in this process,
    when that copy fits; the store alone otherwise."""

    def push():
        store.apply_gradients(ids, grads)
        store.flush()

    fns = {"lookup": lambda: store.lookup(ids), "push": push}
    out: dict = {}
    table = None
    if ref_bytes * 1.2 < MEMORY_BUDGET * psutil.virtual_memory().available:
        start = time.perf_counter()
        table = store.to_numpy()
        out["to_numpy_s"] = time.perf_counter() - start
        out["to_numpy_gbs"] = ref_bytes / out["to_numpy_s"] / 1e9
        fns["take"] = lambda: np.take(table, ids, axis=0)
        fns["add_at"] = lambda: np.add.at(table, ids, grads)
    else:
        out["reference"] = "skipped: no room for a copy of the table in this process"
    times = interleaved(fns, reps)
    table = None  # the reference copy goes before the next size
    med = {k: float(np.median(v)) for k, v in times.items()}
    out.update({"lookup_s": med["lookup"], "push_s": med["push"],
                "lookup_gbs": grads.nbytes / med["lookup"] / 1e9})  # fmt: skip
    if "take" in times:
        out.update({
            "take_s": med["take"], "add_at_s": med["add_at"],
            "lookup_ratio": float(np.median(times["take"] / times["lookup"])),
            "push_ratio": float(np.median(times["add_at"] / times["push"])),
        })  # fmt: skip
    return out


def run_memory(ctx: Context) -> dict:
    s = SIZES[ctx.mode]
    results = []
    for rows in ctx.bar(s["rows"], desc="memory"):
        try:
            results.append(_one_size(ctx, rows, s["reps"], s["workload"]))
        except CapacityError as err:  # Ray's view of free memory can be smaller than ours
            results.append({"table_rows": rows, "table_bytes": rows * DIM * 4 * 2,
                            "skipped": f"CapacityError: {str(err)[:200]}"})  # fmt: skip
        gc.collect()
    return {"backend": ctx.backend, "ram_bytes": psutil.virtual_memory().total,
            "sizes": results}  # fmt: skip
