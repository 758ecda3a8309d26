"""Checkpoint save / restore throughput against np.save / np.load of the same bytes.

    python -m benchmarks.checkpoint_bench [--rows N] [--dim D] [--shards S] [--out DIR]

Builds a ``rows x dim`` float32 table with Adagrad (rows plus one slot of the same size:
5.1 GB at the default 10M x 64), then times, in one run:

- ``np.save`` of the same arrays (one file each) with fsync, and ``np.load`` of them;
- ``store.save`` (each shard writes its arrays; fsync included);
- ``EmbeddingStore.restore`` onto the same sharding (shard start-up included; its two
  phases, starting the shards and their reading, are timed apart in a second restore) and
  onto ``S + 1`` shards with the other partition (resharding).

Each operation runs ``--repeat`` times (default 2) and the best time counts, for both sides
alike. Prints a markdown table and writes ``checkpoint_bench.json`` under ``--out``. Reads
hit the page cache for both sides alike (nothing here can drop it). Target: save and
restore at least half the np.save / np.load rate.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time

import numpy as np

from shardemb import EmbeddingStore
from shardemb.checkpoint import save_store, verify_checkpoint
from shardemb.checkpoint.location import Location
from shardemb.checkpoint.reader import read_args, read_shard
from shardemb.core.config import TableConfig


def _fsync_save(path: str, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, array)
        f.flush()
        os.fsync(f.fileno())


def _best(repeat: int, fn, cleanup=None) -> tuple[float, list[float], object]:
    """Run ``fn`` ``repeat`` times: (best seconds, all seconds, last value). ``cleanup``
    gets each value but the last (outside the timing)."""
    times, value = [], None
    for i in range(repeat):
        if value is not None and cleanup is not None:
            cleanup(value)
        start = time.perf_counter()
        value = fn(i)
        times.append(time.perf_counter() - start)
    return min(times), times, value


def run(rows: int, dim: int, shards: int, out: str, backend: str, workdir: str,
        compression: str | None, repeat: int) -> dict:  # fmt: skip
    os.makedirs(workdir, exist_ok=True)
    name = f"bench-{os.getpid()}"
    start = time.perf_counter()
    store = EmbeddingStore.create(name, rows, dim, num_shards=shards, optimizer="adagrad",
                                  seed=0, backend=backend)  # fmt: skip
    t_create = time.perf_counter() - start
    nbytes = rows * dim * 4 * 2
    rng = np.random.default_rng(0)
    ids = rng.integers(0, rows, 4096)
    store.apply_gradients(ids, rng.standard_normal((ids.size, dim)).astype(np.float32))
    probe = rng.integers(0, rows, 1000)
    want = store.lookup(probe)

    # Baseline: the same bytes (rows and accumulator) through np.save / np.load.
    arrays = [np.random.default_rng(1).standard_normal((rows, dim), np.float32),
              np.full((rows, dim), 0.1, np.float32)]  # fmt: skip
    raw = [os.path.join(workdir, f"raw-{i}.npy") for i in range(2)]
    t_np_save, np_save_all, _ = _best(
        repeat, lambda i: [_fsync_save(p, a) for p, a in zip(raw, arrays, strict=True)]
    )
    arrays.clear()  # free before the store work
    t_np_load, np_load_all, _ = _best(repeat, lambda i: [np.load(p) for p in raw])

    paths = [os.path.join(workdir, f"ckpt-{i}") for i in range(repeat)]
    t_save, save_all, manifest = _best(
        repeat,
        lambda i: save_store(store, paths[i], compression=compression),
        cleanup=lambda m: shutil.rmtree(paths[0], ignore_errors=True),
    )
    path = paths[-1]

    def close(s):
        s.close()

    # The same restore in its two phases: shard start-up, then the shards' reading.
    phases = []

    def phased(i):
        m = verify_checkpoint(path)
        cfg = TableConfig.from_dict({**m["table"], "name": f"{name}-p{i}"})
        t0 = time.perf_counter()
        empty = EmbeddingStore._start(cfg, initialize=False, backend=backend)
        t1 = time.perf_counter()
        empty.shard_call(read_shard, Location.of(path), *read_args(m, path))
        phases.append((t1 - t0, time.perf_counter() - t1))
        return empty

    _best(repeat, phased, cleanup=close)[2].close()
    t_start, t_read = min(p[0] for p in phases), min(p[1] for p in phases)
    t_restore, restore_all, restored = _best(
        repeat,
        lambda i: EmbeddingStore.restore(path, name=f"{name}-r{i}", backend=backend),
        cleanup=close,
    )
    assert (restored.lookup(probe) == want).all()
    restored.close()
    other = "div" if store.config.partition.kind == "mod" else "mod"
    t_reshard, reshard_all, resharded = _best(
        repeat, lambda i: EmbeddingStore.restore(path, name=f"{name}-s{i}",
                                                 num_shards=shards + 1, partition=other,
                                                 backend=backend),
        cleanup=close,
    )  # fmt: skip
    assert (resharded.lookup(probe) == want).all()
    resharded.close()
    store.close()

    def gbs(t):
        return nbytes / t / 1e9

    result = {
        "rows": rows, "dim": dim, "shards": shards, "backend": backend, "bytes": nbytes,
        "stored_bytes": manifest["stored_bytes"], "compression": compression,
        "chunk_rows": manifest["chunk_rows"], "cpus": os.cpu_count(), "repeat": repeat,
        "machine": platform.platform(), "create_s": t_create,
        "np_save_s": t_np_save, "np_save_gbs": gbs(t_np_save),
        "np_load_s": t_np_load, "np_load_gbs": gbs(t_np_load),
        "save_s": t_save, "save_gbs": gbs(t_save),
        "restore_s": t_restore, "restore_gbs": gbs(t_restore),
        "shard_start_s": t_start, "restore_read_s": t_read, "restore_read_gbs": gbs(t_read),
        "reshard_restore_s": t_reshard, "reshard_to": f"{shards + 1} {other}",
        "save_vs_np_save": t_np_save / t_save, "restore_vs_np_load": t_np_load / t_restore,
        "restore_read_vs_np_load": t_np_load / t_read,
        "all_seconds": {"np_save": np_save_all, "np_load": np_load_all, "save": save_all,
                        "restore_phases": phases, "restore": restore_all,
                        "reshard_restore": reshard_all},
    }  # fmt: skip
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "checkpoint_bench.json"), "w") as f:
        json.dump(result, f, indent=1)
    return result


def table(r: dict) -> str:
    size = f"{r['rows']:,} x {r['dim']} float32 + Adagrad slot = {r['bytes'] / 1e9:.2f} GB"
    lines = [
        f"Checkpoint benchmark: {size}, {r['shards']} shards ({r['backend']}), "
        f"{r['cpus']} CPUs, chunks of {r['chunk_rows']} rows, "
        f"compression {r['compression'] or 'none'}; best of {r['repeat']} runs each",
        "",
        "| operation | seconds | GB/s | vs np |",
        "|---|---:|---:|---:|",
        f"| np.save + fsync | {r['np_save_s']:.2f} | {r['np_save_gbs']:.2f} | 1.00 |",
        f"| store.save (fsync) | {r['save_s']:.2f} | {r['save_gbs']:.2f} | "
        f"{r['save_vs_np_save']:.2f} |",
        f"| np.load | {r['np_load_s']:.2f} | {r['np_load_gbs']:.2f} | 1.00 |",
        f"| restore, same sharding | {r['restore_s']:.2f} | {r['restore_gbs']:.2f} | "
        f"{r['restore_vs_np_load']:.2f} |",
        f"| - of which shard start-up | {r['shard_start_s']:.2f} | | |",
        f"| - of which the shards' reading | {r['restore_read_s']:.2f} | "
        f"{r['restore_read_gbs']:.2f} | {r['restore_read_vs_np_load']:.2f} |",
        f"| restore onto {r['reshard_to']} | {r['reshard_restore_s']:.2f} | "
        f"{r['bytes'] / r['reshard_restore_s'] / 1e9:.2f} | |",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--backend", choices=("ray", "inprocess"), default="ray")
    parser.add_argument("--compression", default=None, help="None, zstd, zstd:<level>, lz4")
    parser.add_argument("--repeat", type=int, default=2, help="runs per operation (best)")
    parser.add_argument("--out", default="benchmarks/out", help="where the JSON goes")
    parser.add_argument("--workdir", default=None, help="scratch folder (default: a temp dir)")
    args = parser.parse_args(argv)
    workdir = args.workdir or tempfile.mkdtemp(prefix="shardemb-ckpt-bench-")
    try:
        result = run(args.rows, args.dim, args.shards, args.out, args.backend,
                     os.path.join(workdir, "bench"), args.compression, args.repeat)  # fmt: skip
    finally:
        shutil.rmtree(os.path.join(workdir, "bench"), ignore_errors=True)
    print(table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
