"""A bounded soak test: several processes mix lookups, pushes and saves on one table.

Every push adds exactly +1 (SGD, learning rate 1, gradient -1) to its rows, so the final
table must equal the count of pushes per row, exactly; each worker also checks that its
resident memory stays flat. ``python -m shardemb.soak --ops 200000 --processes 2`` is the
long version (about an hour here); CI runs ``--ops 300``.

``--faults`` SIGKILLs shards at random times and the writer once (a new one takes over),
while one writer pushes (and saves over its own path) and the other processes look up and
save over theirs. It ends with the table equal to the
replay of every push the shards kept, where what was lost is exactly what the typed
errors named, and no all-zero row was ever served.

Example::

    python -m shardemb.soak --ops 5000 --processes 2
    python -m shardemb.soak --faults --ops 2000 --shard-kills 5
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import sys
import tempfile

import numpy as np

VOCAB, DIM, BATCH = 4096, 16, 256
#: The --faults table: rows start uniform (never all zero), each push adds 1 to its rows.
_FAULT_TABLE = {
    "num_shards": 3,
    "initializer": "uniform",
    "seed": 0,
    "optimizer": {"name": "sgd", "learning_rate": 1.0},
}


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

    ray.init(address=args.address, logging_level="ERROR", log_to_driver=False)
    store = shardemb.EmbeddingStore.connect(args.name)
    rng = np.random.default_rng(seed)
    saves = 0  # never refused: a save records what each shard had applied
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
            store.save(os.path.join(args.checkpoint_dir, f"w{seed}-{op}"))
            saves += 1
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
    parser.add_argument("--faults", action="store_true", help="SIGKILL shards and a writer")
    parser.add_argument("--shard-kills", type=int, default=3, help="with --faults")
    args = parser.parse_args(argv)

    import ray

    import shardemb

    if args.address is None:
        ray.init(num_cpus=2, logging_level="ERROR")
        args.address = ray.get_runtime_context().gcs_address
    else:
        ray.init(address=args.address, logging_level="ERROR")
    args.checkpoint_dir = args.checkpoint_dir or tempfile.mkdtemp(prefix="shardemb-soak-")
    if args.faults:
        return _run_faults(args)
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
    print(f"saves committed: {sum(r[2] for r in results)}")
    print(f"table exact: {exact}")
    print(f"rss flat: {flat}")
    store.close()
    codes = [p.exitcode for p in procs]
    return 0 if exact and flat and codes == [0] * len(procs) else 1


# -- --faults ------------------------------------------------------------------------------
def _log(path: str):
    """An append-only event log that survives a SIGKILL of its writer (one write a line)."""
    import json

    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    return lambda *event: os.write(fd, (json.dumps(event) + "\n").encode())


def _events(args, worker: tuple) -> list:
    import json

    path = os.path.join(args.checkpoint_dir, "{}-{}.log".format(*worker))
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.endswith("\n")]


def _named(err) -> list[tuple[int, int | None]]:
    """``(shard, step it went back to)`` for each shard a recovery error names; the step is
    ``None`` for a shard that refused the call (not reloaded yet)."""
    import re

    text = str(err)
    many = re.match(r"Shard\(s\) \[([\d, ]+)\]", text)
    if many is None:  # ShardNotLoadedError: "Shard 1 of table ..."
        return [(int(re.match(r"Shard (\d+) ", text).group(1)), None)]
    shards = [int(x) for x in many.group(1).split(",")]
    if "restarted from" not in text:
        return [(k, None) for k in shards]
    each = {int(k): int(n) for k, n in re.findall(r"shard (\d+) at step (\d+)", text)}
    one = re.search(r"\(step (\d+)\)", text)
    return [(k, each[k] if k in each else int(one.group(1))) for k in shards]


def _fault_worker(args, role: str, index: int, queue) -> None:
    try:
        queue.put((role, index, "ok", _fault_work(args, role, index)))
    except BaseException as err:  # report, never die silently
        import traceback

        queue.put((role, index, "error", f"{role} {index}: {err!r}\n{traceback.format_exc()}"))


def _fault_work(args, role: str, index: int) -> dict:
    """The writer pushes (each flushed), looks up and saves over its own path, logging
    every push before it is sent and every loss a typed error names; readers look up and
    save over theirs. Both count all-zero rows served (there must be none)."""
    import ray

    import shardemb
    from shardemb.errors import ShardUnavailableError

    ray.init(address=args.address, logging_level="ERROR", log_to_driver=False)
    store = shardemb.EmbeddingStore.connect(args.name)
    rng = np.random.default_rng(1000 * index + (role == "writer"))
    log = _log(os.path.join(args.checkpoint_dir, f"{role}-{index}.log"))
    path = os.path.join(args.checkpoint_dir, f"{role}-{index}")
    stats = {"zeros": 0, "errors": {}, "ops": 0}
    minus_one = np.full((BATCH, DIM), -1.0, np.float32)

    def call(fn, *fn_args, push=None):
        """``fn(*fn_args)``; a recovery error is counted and what it names is logged."""
        try:
            return fn(*fn_args)
        except ShardUnavailableError as err:  # ShardRestartedError among them
            stats["errors"][type(err).__name__] = stats["errors"].get(type(err).__name__, 0) + 1
            for k, step in _named(err):
                if step is not None:
                    log("reset", k, step)  # pushes to k after that step are lost
                elif push is not None:
                    log("refused", push, k)  # push not applied on k
            return None

    while store._seq is None:  # the number of the next push is known before it is sent
        call(store.apply_gradients, [], np.empty((0, DIM), np.float32))
    if role == "writer":
        while call(store.save, path) is None:
            pass
        log("saved")
    log("ready")
    calm = os.path.join(args.checkpoint_dir, "calm")
    while stats["ops"] < args.ops or not os.path.exists(calm):
        stats["ops"] += 1
        kind, ids = rng.random(), rng.integers(0, VOCAB, BATCH)
        if role == "writer" and kind < 0.6:
            n = store._seq + 1
            log("push", n, ids.tolist())
            call(store.apply_gradients, ids, minus_one, push=n)
            if store._seq != n:  # numbered pushes are the ones sent
                log("unsent", n)
            else:
                call(store.flush, push=n)
            log("end", n)
        elif kind < (0.95 if role == "writer" else 0.98):  # else save, over its own path
            rows = call(store.lookup, ids)
            stats["zeros"] += 0 if rows is None else int((rows == 0).all(axis=1).sum())
        elif call(store.save, path) is not None:
            log("saved")
    table = None
    while table is None:  # a last look at every shard: each loss is named once
        table = call(store.to_numpy)
    stats["zeros"] += int((table == 0).all(axis=1).sum())
    return stats


def _run_faults(args) -> int:
    """Create the table, start the writer and readers, SIGKILL shards and the writer,
    then compare the table with the replay of what the logs say the shards kept."""
    import random

    import shardemb

    store = shardemb.EmbeddingStore.create(args.name, VOCAB, DIM, detached=True, **_FAULT_TABLE)
    ctx = mp.get_context("spawn")
    queue, workers = ctx.Queue(), {}

    def start(role: str, index: int) -> tuple:
        workers[role, index] = ctx.Process(target=_fault_worker, args=(args, role, index, queue))
        workers[role, index].start()
        return role, index

    try:
        writer = start("writer", 0)
        for i in range(1, max(2, args.processes)):
            start("reader", i)
        faults = ["shard"] * args.shard_kills + ["writer"]
        random.Random(0).shuffle(faults)
        killed, steps_at_death = _inject(args, faults, workers, writer, start)
        open(os.path.join(args.checkpoint_dir, "calm"), "w").close()
        results, errors = {}, []
        while len(results) + len(errors) < len(workers) - 1:  # all but the killed writer
            role, index, status, payload = queue.get(timeout=600)
            if status == "ok":
                results[role, index] = payload
            else:
                errors.append(payload)
        for p in workers.values():
            p.join(timeout=60)
        table = _current(args.name).to_numpy()
        writers = [w for w in workers if w[0] == "writer"]
        expected, lost, partial = _replay(args, writers, steps_at_death)
    finally:
        for p in workers.values():
            if p.is_alive():
                p.kill()
        store.close()
    exact = bool((table == expected).all())
    zeros = sum(r["zeros"] for r in results.values())
    typed: dict[str, int] = {}
    for r in results.values():
        for name, count in r["errors"].items():
            typed[name] = typed.get(name, 0) + count
    print(f"faults: shards {killed} SIGKILLed; the writer SIGKILLed once ({partial})")
    for k, (step, dropped) in lost:
        print(
            f"lost on shard {k} (named by ShardRestartedError): back to step {step}, "
            f"pushes {dropped} dropped"
        )
    print(f"typed errors seen: {typed}")
    print("\n".join(errors) if errors else "untyped errors: none")
    print(f"all-zero rows served: {zeros}")
    print(f"table equals the replayed reference: {exact}")
    return 0 if exact and zeros == 0 and not errors else 1


def _current(name: str):
    """A fresh handle: it sees the shards as they are now."""
    import time

    import shardemb
    from shardemb.errors import ShardUnavailableError

    for _ in range(600):
        try:
            return shardemb.EmbeddingStore.connect(name)
        except ShardUnavailableError:  # a shard between its death and its restart
            time.sleep(0.1)
    raise RuntimeError(f"soak: table {name!r} stayed incomplete for a minute")


def _inject(args, faults: list, workers: dict, writer: tuple, start) -> tuple:
    """SIGKILL a random shard or the writer for each of ``faults``, one at a time: the next
    waits until the writer has been told of the last (a new writer replaces a killed one).
    Returns the shards killed and, per killed writer, each shard's step after its death."""
    import random
    import signal
    import time

    import psutil

    chooser, killed, steps_at_death = random.Random(1), [], {}

    def wait(what: str, done) -> None:
        deadline = time.monotonic() + 300
        while not done():
            if time.monotonic() > deadline or any(p.exitcode == 1 for p in workers.values()):
                raise RuntimeError(f"soak: gave up waiting for {what}")
            time.sleep(0.05)

    wait("the writer's first save", lambda: ["saved"] in _events(args, writer))
    for fault in faults:
        time.sleep(chooser.uniform(0.2, 1.0))
        if fault == "shard":
            k = chooser.randrange(3)
            pid = _current(args.name).placement()[k]["pid"]
            told = _resets(args, writer, k)
            os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(psutil.NoSuchProcess):
                psutil.Process(pid).wait(30)
            killed.append(k)
            wait(
                f"the writer to be told shard {k} died",
                lambda k=k, w=writer, n=told: _resets(args, w, k) > n,
            )
        else:
            os.kill(workers[writer].pid, signal.SIGKILL)
            workers[writer].join()
            steps_at_death[writer] = _settled_steps(args.name)
            writer = start("writer", writer[1] + 1)
            wait("the new writer", lambda w=writer: ["ready"] in _events(args, w))
    return killed, steps_at_death


def _resets(args, writer: tuple, shard: int) -> int:
    """How often the writer was told that ``shard`` went back to a checkpoint."""
    return sum(e[:2] == ["reset", shard] for e in _events(args, writer))


def _settled_steps(name: str) -> list[int]:
    """Each shard's step once a push the dead writer left in flight has landed or not."""
    import time

    steps = None
    while True:
        now = [i["step"] for i in _current(name).info()]
        if now == steps:
            return now
        steps = now
        time.sleep(0.5)


def _replay(args, writers: list, steps_at_death: dict) -> tuple:
    """The table the writers' logs say the shards hold: every push each shard kept, applied
    in order. A reset drops a shard's pushes after the step it went back to; a push the
    dying writer left unfinished counts on the shards whose step reached it."""
    import shardemb
    from shardemb.core.partition import Partition

    part = Partition("mod", VOCAB, 3)
    kept: dict[int, set] = {k: set() for k in range(3)}
    pushes, lost, partial = {}, [], "not mid-push"
    for w in writers:
        unfinished = None
        for kind, *rest in _events(args, w):
            if kind == "push":
                unfinished, ids = rest[0], np.asarray(rest[1], np.int64)
                pushes[unfinished] = ids
                for k in np.unique(part.shard_of(ids)).tolist():
                    kept[k].add(unfinished)
            elif kind == "unsent":
                for k in range(3):
                    kept[k].discard(rest[0])
            elif kind == "refused":
                kept[rest[1]].discard(rest[0])
            elif kind == "reset":
                k, step = rest
                dropped = sorted(n for n in kept[k] if n > step)
                kept[k] -= set(dropped)
                lost += [(k, (step, dropped))] if dropped else []
            elif kind == "end":
                unfinished = None
        if w in steps_at_death and unfinished is not None:
            steps = steps_at_death[w]
            for k in range(3):
                if steps[k] < unfinished:
                    kept[k].discard(unfinished)
            reached = [k for k in range(3) if unfinished in kept[k]]
            partial = f"mid-push: push {unfinished} reached shards {reached}"
    ref = shardemb.EmbeddingStore.create(
        args.name + "-replay", VOCAB, DIM, backend="inprocess", **_FAULT_TABLE
    )
    with ref:
        for n in sorted(pushes):
            ids = pushes[n]
            ids = ids[np.isin(part.shard_of(ids), [k for k in range(3) if n in kept[k]])]
            ref.apply_gradients(ids, np.full((ids.size, DIM), -1.0, np.float32))
        return ref.to_numpy(), lost, partial


if __name__ == "__main__":
    sys.exit(main())
