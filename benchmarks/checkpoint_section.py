"""Checkpoint save, restore and resharding restore vs ``np.save``/``np.load``, by table size.

Section ``checkpoint``. Each size is measured by :func:`benchmarks.checkpoint_bench.run`
(``rows x 64`` float32 with Adagrad: the rows and one slot, ``np.save`` + fsync and
``np.load`` of the same bytes in the same run, ``store.save``, ``EmbeddingStore.restore``
onto the same sharding and onto one more shard with the other partition). If that module
cannot be used, a minimal equivalent here measures the same things with ``store.save`` and
``EmbeddingStore.restore``, and the result names which one ran.
"""

from __future__ import annotations

import inspect
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import psutil

from benchmarks.common import Context

__all__ = ["run_checkpoint"]

SIZES = {
    "smoke": {"rows": [10_000, 20_000], "shards": 2},
    "quick": {"rows": [100_000, 400_000], "shards": 2},
    "full": {"rows": [1_000_000, 5_000_000, 10_000_000], "shards": 4},
}
DIM = 64


def _fsync_save(path: str, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, array)
        f.flush()
        os.fsync(f.fileno())


def _timed(fn):
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def _fallback(ctx: Context, rows: int, shards: int, workdir: str) -> dict:
    """The same measurements as checkpoint_bench.run, through the public API only."""
    from shardemb import EmbeddingStore

    nbytes = rows * DIM * 4 * 2
    t_create, store = _timed(lambda: EmbeddingStore.create(
        ctx.name("ckpt"), rows, DIM, num_shards=shards, optimizer="adagrad", seed=0,
        backend=ctx.backend))  # fmt: skip
    try:
        probe = np.random.default_rng(0).integers(0, rows, 1000)
        want = store.lookup(probe)
        arrays = [np.random.default_rng(1).standard_normal((rows, DIM), np.float32),
                  np.full((rows, DIM), 0.1, np.float32)]  # fmt: skip
        raw = [os.path.join(workdir, f"raw-{i}.npy") for i in range(2)]
        t_np_save, _ = _timed(lambda: [_fsync_save(p, a) for p, a in zip(raw, arrays, strict=True)])
        arrays = None  # free before loading
        t_np_load, _ = _timed(lambda: [np.load(p) for p in raw])
        path = os.path.join(workdir, "ckpt")
        t_save, _ = _timed(lambda: store.save(path))
    finally:
        store.close()
    t_restore, restored = _timed(
        lambda: EmbeddingStore.restore(path, name=ctx.name("ckr"), backend=ctx.backend)
    )
    try:
        assert np.array_equal(restored.lookup(probe), want)
    finally:
        restored.close()
    other = "div"
    t_reshard, resharded = _timed(lambda: EmbeddingStore.restore(
        path, name=ctx.name("ckrs"), num_shards=shards + 1, partition=other,
        backend=ctx.backend))  # fmt: skip
    try:
        assert np.array_equal(resharded.lookup(probe), want)
    finally:
        resharded.close()
    gbs = lambda t: nbytes / t / 1e9  # noqa: E731
    return {
        "rows": rows, "dim": DIM, "shards": shards, "bytes": nbytes, "create_s": t_create,
        "np_save_s": t_np_save, "np_save_gbs": gbs(t_np_save),
        "np_load_s": t_np_load, "np_load_gbs": gbs(t_np_load),
        "save_s": t_save, "save_gbs": gbs(t_save), "restore_s": t_restore,
        "restore_gbs": gbs(t_restore), "reshard_restore_s": t_reshard,
        "reshard_to": f"{shards + 1} {other}", "save_vs_np_save": t_np_save / t_save,
        "restore_vs_np_load": t_np_load / t_restore,
    }  # fmt: skip


def _with_checkpoint_bench(ctx: Context, rows: int, shards: int, workdir: str) -> dict:
    from benchmarks import checkpoint_bench

    run = checkpoint_bench.run
    given = {"rows": rows, "dim": DIM, "shards": shards, "backend": ctx.backend,
             "out": os.path.join(ctx.out, f"checkpoint_{rows}"), "workdir": workdir,
             "compression": None, "repeat": 2 if ctx.mode == "full" else 1}  # fmt: skip
    params = inspect.signature(run).parameters
    missing = [p for p, v in params.items() if v.default is inspect.Parameter.empty
               and p not in given]  # fmt: skip
    if missing:
        raise TypeError(f"checkpoint_bench.run wants {missing}, which the runner cannot give")
    return run(**{k: v for k, v in given.items() if k in params})


def run_checkpoint(ctx: Context) -> dict:
    s = SIZES[ctx.mode]
    results = []
    source = "benchmarks/checkpoint_bench.py"
    for rows in ctx.bar(s["rows"], desc="checkpoint"):
        need = rows * DIM * 4 * 2 * 2.6  # the table, a restored copy of it, slack
        if need > 0.85 * psutil.virtual_memory().available:
            results.append({"rows": rows, "skipped": f"needs ~{need / 1e9:.1f} GB of memory"})
            continue
        workdir = tempfile.mkdtemp(prefix="shardemb-bench-ckpt-")
        try:
            if source.endswith(".py"):
                try:
                    r = _with_checkpoint_bench(ctx, rows, s["shards"], workdir)
                except (ImportError, NameError, TypeError, AttributeError) as err:
                    # The module is being written alongside: fall back, and say so.
                    source = f"fallback in benchmarks/checkpoint_section.py ({err!r:.200})"
                    print(
                        f"checkpoint_bench unusable, using the fallback: {err!r}", file=sys.stderr
                    )
                    shutil.rmtree(workdir, ignore_errors=True)
                    os.makedirs(workdir, exist_ok=True)
            if not source.endswith(".py"):
                r = _fallback(ctx, rows, s["shards"], workdir)
            results.append(r)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    return {"source": source, "dim": DIM, "optimizer": "adagrad", "sizes": results}
