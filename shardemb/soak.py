"""A bounded soak test: several processes mix lookups, pushes and saves on one table.

Every push adds exactly +1 (SGD, learning rate 1, gradient -1) to its rows, so the final
table must equal the count of pushes per row, exactly; each worker also checks that its
resident memory stays flat. ``python -m shardemb.soak --ops 200000 --processes 2`` is the
long version (about an hour here); CI runs ``--ops 300``.

Example::

    python -m shardemb.soak --ops 5000 --processes 2
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile

import numpy as np

VOCAB, DIM, BATCH = 4096, 16, 256


def _worker(args, seed: int, queue) -> None:
    try:
        queue.put(("ok", _work(args, seed)))
    except BaseException as err:  # report, never die silently
        import traceback

        queue.put(("error", f"worker {seed}: {err!r}\n{traceback.format_exc()}"))


def _work(args, seed: int):
    import psutil
    import ray

    import shardemb
    from shardemb.errors import CheckpointError

    ray.init(address=args.address, logging_level="ERROR", log_to_driver=False)
    store = shardemb.EmbeddingStore.connect(args.name)
    rng = np.random.default_rng(seed)
    saves = [0, 0]  # committed, refused
    counts = np.zeros(VOCAB, np.int64)
    grads = np.full((BATCH, DIM), -1.0, np.float32)
    proc = psutil.Process()
    rss = []
    for op in range(args.ops):
        kind = rng.random()
        ids = rng.integers(0, VOCAB, BATCH)
        if kind < 0.6:
            store.apply_gradients(ids, grads)
            np.add.at(counts, ids, 1)
        elif kind < 0.98:
            store.lookup(ids)
        else:
            # A save that races another process's pushes is refused rather than committed
            # with shards of different versions; both outcomes are fine here.
            try:
                store.save(os.path.join(args.checkpoint_dir, f"w{seed}-{op}"))
                saves[0] += 1
            except CheckpointError:
                saves[1] += 1
        if op % max(1, args.ops // 10) == 0:
            rss.append(proc.memory_info().rss)
    store.flush()
    rss.append(proc.memory_info().rss)
    return counts, rss, saves


def main(argv: list[str] | None = None) -> int:
    # Before anything imports TensorFlow (here or in the spawned workers, which inherit it).
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", help="Ray address (default: start a local runtime)")
    parser.add_argument("--name", default="soak")
    parser.add_argument("--ops", type=int, default=2000, help="operations per process")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--checkpoint-dir", default=None)
    args = parser.parse_args(argv)

    import ray

    import shardemb

    if args.address is None:
        ray.init(num_cpus=2, logging_level="ERROR")
        args.address = ray.get_runtime_context().gcs_address
    else:
        ray.init(address=args.address, logging_level="ERROR")
    args.checkpoint_dir = args.checkpoint_dir or tempfile.mkdtemp(prefix="shardemb-soak-")
    store = shardemb.EmbeddingStore.create(
        args.name,
        VOCAB,
        DIM,
        num_shards=3,
        initializer="zeros",
        optimizer={"name": "sgd", "learning_rate": 1.0},
    )
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [
        ctx.Process(target=_worker, args=(args, seed, queue)) for seed in range(args.processes)
    ]
    for p in procs:
        p.start()
    results, errors = [], []
    while len(results) + len(errors) < len(procs):
        try:
            status, payload = queue.get(timeout=2)
        except Exception:  # noqa: BLE001 - queue.Empty: check nobody died without a word
            if any(p.exitcode not in (None, 0) for p in procs):
                errors.append(f"a worker died: exit codes {[p.exitcode for p in procs]}")
                break
            continue
        (results if status == "ok" else errors).append(payload)
    for p in procs:
        p.join(timeout=60)
    if errors:
        print("\n".join(errors))
        store.close()
        return 1
    expect = sum(r[0] for r in results).astype(np.float32)
    table = store.to_numpy()
    exact = bool((table == expect[:, None]).all())
    # Flat: the last samples may not exceed the first one after warm-up by more than 64 MiB.
    growth = [max(r[2:]) - r[1] if len(r) > 2 else 0 for _, r, _ in results]
    flat = all(g < 64 * 2**20 for g in growth)
    print(f"processes: {args.processes}, ops each: {args.ops}, row updates: {int(expect.sum())}")
    print(f"rss growth per process (MiB): {[round(g / 2**20, 1) for g in growth]}")
    print(
        f"saves committed / refused (raced another process): "
        f"{sum(r[2][0] for r in results)} / {sum(r[2][1] for r in results)}"
    )
    print(f"table exact: {exact}")
    print(f"rss flat: {flat}")
    store.close()
    codes = [p.exitcode for p in procs]
    return 0 if exact and flat and codes == [0] * len(procs) else 1


if __name__ == "__main__":
    sys.exit(main())
