"""Lookup and push throughput beside in-process numpy on the same table, and the ceiling.

Sections:

- ``bandwidth``: this machine's memory copy rate (a large ``np.copyto``), the physical
  ceiling of any lookup (a lookup copies each asked row once, at best).
- ``lookup``: ``store.lookup`` vs ``np.take(table, ids, axis=0)`` and ``store.apply_gradients``
  + ``flush`` (SGD) vs ``np.add.at(table, ids, grads)``, over shards, batch size, dim and
  uniform / Zipf ids. A ``np.copyto`` of the same bytes runs in the same loop.
- ``headline``: 65,536 Zipf ids from a 1M x 64 float32 table on 2 local shards, with
  dedup auto / on / off (target from an earlier issue: at least 0.25x ``np.take``).
"""

from __future__ import annotations

import itertools

import numpy as np

from benchmarks.common import ZIPF_EXPONENT, Context, interleaved, make_ids, summarize

__all__ = ["run_bandwidth", "run_headline", "run_lookup"]

SIZES = {
    "smoke": {"rows": 20_000, "shards": [1, 2], "dims": [16], "batches": [1024, 4096],
              "reps": 3, "copy_mb": 32, "headline_rows": 20_000, "headline_reps": 3},
    "quick": {"rows": 1_000_000, "shards": [1, 2], "dims": [64], "batches": [4096, 65536],
              "reps": 5, "copy_mb": 256, "headline_rows": 1_000_000, "headline_reps": 25},
    "full": {"rows": 1_000_000, "shards": [1, 2, 4, 8], "dims": [16, 64, 128],
             "batches": [1024, 4096, 16384, 65536, 262144], "reps": 9, "copy_mb": 1024,
             "headline_rows": 1_000_000, "headline_reps": 60},
}  # fmt: skip
HEADLINE_IDS = 65536
HEADLINE_TARGET = 0.25
DISTS = ("uniform", "zipf")


def create_store(ctx: Context, what: str, rows: int, dim: int, shards: int, **kwargs):
    """A store of the run's backend (or ``backend=``), SGD and seed 0 unless told."""
    from shardemb import EmbeddingStore

    kwargs.setdefault("optimizer", {"name": "sgd", "learning_rate": 0.01})
    kwargs.setdefault("seed", 0)
    kwargs.setdefault("backend", ctx.backend)
    return EmbeddingStore.create(ctx.name(what), rows, dim, num_shards=shards, **kwargs)


def copy_rate(nbytes: int, reps: int) -> dict:
    """GB/s of ``np.copyto`` between two ``nbytes`` buffers (bytes copied per second)."""
    src = np.ones(nbytes // 4, np.float32)
    dst = np.empty_like(src)
    t = interleaved({"copy": lambda: np.copyto(dst, src)}, reps)["copy"]
    return {"bytes": int(src.nbytes), "reps": reps, "median_s": float(np.median(t)),
            "gbs": src.nbytes / float(np.median(t)) / 1e9,
            "best_gbs": src.nbytes / float(t.min()) / 1e9}  # fmt: skip


def run_bandwidth(ctx: Context) -> dict:
    s = SIZES[ctx.mode]
    return copy_rate(s["copy_mb"] << 20, 9 if ctx.mode == "full" else 5)


def _flatten(summary: dict, store_key: str, ref_key: str) -> dict:
    """One table row: the store, its reference and the copy of the same bytes."""
    st, ref, t = summary[store_key], summary[ref_key], summary["_t"]
    return {
        "store_s": st["median_s"], "store_rows_per_s": st["rows_per_s"], "store_gbs": st["gbs"],
        "ref_s": ref["median_s"], "ref_rows_per_s": ref["rows_per_s"], "ref_gbs": ref["gbs"],
        "copy_gbs": summary["copy"]["gbs"],
        "ratio": float(np.median(t[ref_key] / t[store_key])),
        "vs_copy": float(np.median(t["copy"] / t[store_key])),
        "reps": st["reps"],
    }  # fmt: skip


def _measure(fns: dict, reps: int, rows: int, row_bytes: int, ref: str, after=None) -> dict:
    times = interleaved(fns, reps, after=after)
    out = summarize(times, rows=rows, row_bytes=row_bytes, ref=ref)
    out["_t"] = times
    return out


def run_lookup(ctx: Context) -> dict:
    s = SIZES[ctx.mode]
    rows_out: list[dict] = []
    configs = list(itertools.product(s["shards"], s["dims"]))
    bar = ctx.bar(total=len(configs) * len(s["batches"]) * len(DISTS), desc="lookup+push")
    for shards, dim in configs:
        store = create_store(ctx, f"lk{shards}x{dim}", s["rows"], dim, shards)
        try:
            table = store.to_numpy()
            rng = np.random.default_rng(shards * 1000 + dim)
            check = make_ids("zipf", rng, 1000, s["rows"])
            assert np.array_equal(store.lookup(check), np.take(table, check, axis=0))
            for batch, dist in itertools.product(s["batches"], DISTS):
                ids = make_ids(dist, rng, batch, s["rows"])
                common = {"shards": shards, "dim": dim, "batch": batch, "dist": dist,
                          "table_rows": s["rows"],
                          "unique_frac": float(np.unique(ids).size / ids.size)}  # fmt: skip
                lookup, push = _lookup_and_push(store, table, ids, s["reps"])
                rows_out.append({"op": "lookup", **common, **lookup})
                rows_out.append({"op": "push", **common, **push})
                bar.update()
        finally:
            store.close()
    bar.close()
    return {"table_rows": s["rows"], "dtype": "float32", "optimizer": "sgd",
            "zipf_exponent": ZIPF_EXPONENT, "rows": rows_out}  # fmt: skip


def _lookup_and_push(store, table: np.ndarray, ids: np.ndarray, reps: int) -> tuple[dict, dict]:
    """Lookup vs np.take and push (SGD, flushed) vs np.add.at, each with a copy of the
    same bytes in the same loop."""
    batch, dim = ids.size, table.shape[1]
    src, dst = np.ones(batch * dim, np.float32), np.empty(batch * dim, np.float32)
    grads = np.full((batch, dim), 1e-3, np.float32)

    def copy():
        np.copyto(dst, src)

    def push():
        store.apply_gradients(ids, grads)
        store.flush()

    lk = _measure({"take": lambda: np.take(table, ids, axis=0),
                   "store": lambda: store.lookup(ids), "copy": copy},
                  reps, batch, dim * 4, "take")  # fmt: skip
    ps = _measure({"add_at": lambda: np.add.at(table, ids, grads), "store": push, "copy": copy},
                  reps, batch, dim * 4, "add_at")  # fmt: skip
    return _flatten(lk, "store", "take"), _flatten(ps, "store", "add_at")


def run_headline(ctx: Context) -> dict:
    s = SIZES[ctx.mode]
    rows, dim, shards = s["headline_rows"], 64, 2
    n = min(HEADLINE_IDS, rows)
    store = create_store(ctx, "headline", rows, dim, shards)
    # The same table in this process (same seed): what the router costs without Ray.
    local = (
        None
        if ctx.backend != "ray"
        else create_store(
            ctx, "headline-local", rows, dim, shards, backend="inprocess", initializer="zeros"
        )
    )
    try:
        table = store.to_numpy()
        if local is not None:
            local.set_weights(table)
        ids = make_ids("zipf", np.random.default_rng(65536), n, rows)
        for dedup in ("auto", True, False):
            assert np.array_equal(store.lookup(ids, dedup=dedup), np.take(table, ids, axis=0))
        buf_a, buf_b = np.ones(n * dim, np.float32), np.empty(n * dim, np.float32)
        fns = {
            "take": lambda: np.take(table, ids, axis=0),
            "dedup_auto": lambda: store.lookup(ids, dedup="auto"),
            "dedup_on": lambda: store.lookup(ids, dedup=True),
            "dedup_off": lambda: store.lookup(ids, dedup=False),
            "copy": lambda: np.copyto(buf_b, buf_a),
        }
        if local is not None:
            assert np.array_equal(local.lookup(ids), np.take(table, ids, axis=0))
            fns["inprocess_auto"] = lambda: local.lookup(ids, dedup="auto")
        times = interleaved(fns, s["headline_reps"], warmup=2)
    finally:
        store.close()
        if local is not None:
            local.close()
    summary = summarize(times, rows=n, row_bytes=dim * 4, ref="take")
    modes = []
    for key in ("dedup_auto", "dedup_on", "dedup_off", "inprocess_auto"):
        if key not in summary:
            continue
        m = summary[key]
        modes.append({
            "dedup": key.split("_")[1],
            "backend": "inprocess" if key.startswith("inprocess") else ctx.backend,
            "store_s": m["median_s"], "store_gbs": m["gbs"],
            "store_rows_per_s": m["rows_per_s"], "ratio": m["vs_take"],
            "p10_ratio": float(np.percentile(times["take"] / times[key], 10)),
            "p90_ratio": float(np.percentile(times["take"] / times[key], 90)),
            "vs_copy": float(np.median(times["copy"] / times[key])),
            "meets_target": bool(m["vs_take"] >= HEADLINE_TARGET),
        })  # fmt: skip
    return {
        "table_rows": rows, "dim": dim, "shards": shards, "ids": n, "dist": "zipf",
        "zipf_exponent": ZIPF_EXPONENT, "unique_frac": float(np.unique(ids).size / n),
        "target": HEADLINE_TARGET, "reps": s["headline_reps"],
        "take_s": summary["take"]["median_s"], "take_gbs": summary["take"]["gbs"],
        "copy_gbs": summary["copy"]["gbs"], "modes": modes,
    }  # fmt: skip
