"""End-to-end training steps/s: ShardedEmbedding vs ``keras.layers.Embedding``.

Section ``train``. Two tables (users, items) of ``rows x 64`` float32, batches of 4096
Zipf ids, ``model.fit`` with SGD or Adagrad (the sharded tables use the store's sparse
optimizer of the same kind, 2 shards per table). Two models:

- ``two_tower``: the demo's model and loss (:func:`shardemb.demo.build_model`: dot-product
  towers, in-batch softmax over the batch's 4096 items with a logQ correction);
- ``mlp`` (full run): concatenated embeddings -> Dense(64, relu) -> Dense(1), binary
  cross-entropy: little work besides the tables.

Both layers train on the same batches in alternating rounds when both fit in memory
together (otherwise one after the other, and the result says so). A step's time is the gap
between consecutive ``on_train_batch_end`` callbacks (the first step of each ``fit`` call
is dropped; the first round traces the functions and is not kept).

``floor`` is the same model on 1,000-row Keras tables: the cost of everything but the
tables, hence the best ratio any table implementation could reach with this model.
Targets from an earlier issue: >= 1.5x (SGD) and 3x (Adagrad) at 1M rows, >= 10x at 10M.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np
import psutil

from benchmarks.common import Context, zipf_ids

__all__ = ["run_train"]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SIZES = {
    "smoke": {"rows": [2000], "optimizers": ["sgd"], "models": ["two_tower"], "batch": 256,
              "steps": 3, "rounds": 1},
    "quick": {"rows": [1_000_000], "optimizers": ["sgd", "adagrad"], "models": ["two_tower"],
              "batch": 4096, "steps": 4, "rounds": 2},
    "full": {"rows": [1_000_000, 10_000_000], "optimizers": ["sgd", "adagrad"],
             "models": ["two_tower", "mlp"], "batch": 4096, "steps": 10, "rounds": 3},
}  # fmt: skip
#: Above this many rows per table, fewer steps: a Keras Adagrad step takes seconds there.
BIG_ROWS = 5_000_000
DIM = 64
SHARDS = 2
LEARNING_RATE = 0.05
TEMPERATURE = 0.1
TARGETS = {("sgd", 1_000_000): 1.5, ("adagrad", 1_000_000): 3.0,
           ("sgd", 10_000_000): 10.0, ("adagrad", 10_000_000): 10.0}  # fmt: skip
FLOOR_ROWS = 1000


def _step_clock():
    """A Keras callback recording the wall time at the end of every batch (Keras is
    imported here, not at module import)."""
    import keras

    class StepClock(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.ends: list[float] = []

        def on_train_batch_end(self, batch, logs=None):
            self.ends.append(time.perf_counter())

    return StepClock()


def _keras_optimizer(name: str):
    import keras

    return {"sgd": keras.optimizers.SGD, "adagrad": keras.optimizers.Adagrad}[name](LEARNING_RATE)


def _two_tower(layers, rows: int, optimizer: str):
    from shardemb.demo import build_model, in_batch_softmax_loss

    model = build_model(layers[0], layers[1], np.zeros(rows, np.float32), TEMPERATURE)
    model.compile(_keras_optimizer(optimizer), in_batch_softmax_loss)
    return model


def _mlp(layers, rows: int, optimizer: str):
    import keras

    user = keras.Input((), dtype="int64", name="user")
    item = keras.Input((), dtype="int64", name="item")
    h = keras.layers.Concatenate()([layers[0](user), layers[1](item)])
    h = keras.layers.Dense(64, activation="relu")(h)
    model = keras.Model({"user": user, "item": item}, keras.layers.Dense(1)(h))
    model.compile(_keras_optimizer(optimizer), keras.losses.BinaryCrossentropy(from_logits=True))
    return model


MODELS = {"two_tower": _two_tower, "mlp": _mlp}


def _fit_steps(model, x: dict, y: np.ndarray, batch: int) -> list[float]:
    """Seconds of each step of one ``fit`` call over ``x`` (first step dropped)."""
    clock = _step_clock()
    model.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0, callbacks=[clock])
    return np.diff(clock.ends).tolist()


def _create_stores(ctx: Context, rows: int, optimizer: str) -> list:
    import shardemb

    opt = {"name": optimizer, "learning_rate": LEARNING_RATE}
    return [shardemb.EmbeddingStore.create(ctx.name(f"train-{t}"), rows, DIM, num_shards=SHARDS,
                                           optimizer=opt, seed=i, backend=ctx.backend)
            for i, t in enumerate(("users", "items"))]  # fmt: skip


class _Sharded:
    """The model on ShardedEmbedding layers over existing stores (not owned)."""

    def __init__(self, stores: list, kind: str, rows: int, optimizer: str):
        import shardemb

        self.stores = stores
        layers = [shardemb.ShardedEmbedding(rows, DIM, store=s, name=f"sharded_{i}")
                  for i, s in enumerate(stores)]  # fmt: skip
        self.model = MODELS[kind](layers, rows, optimizer)

    def fit(self, x, y, batch):
        steps = _fit_steps(self.model, x, y, batch)
        for s in self.stores:
            s.flush()  # pushes of this round are not left to the next model's round
        return steps

    def close(self):
        self.model = None


class _Native:
    def __init__(self, kind: str, rows: int, optimizer: str, modulo: int | None = None):
        import keras

        self.modulo = modulo
        layers = [keras.layers.Embedding(rows, DIM, name=f"keras_{i}") for i in range(2)]
        self.model = MODELS[kind](layers, rows, optimizer)

    def fit(self, x, y, batch):
        if self.modulo:
            x = {k: v % self.modulo for k, v in x.items()}
        return _fit_steps(self.model, x, y, batch)

    def close(self):
        self.model = None


def _free() -> None:
    import keras

    keras.backend.clear_session()
    gc.collect()


def _rounds(model, data: list[dict], y: np.ndarray, batch: int) -> list[list[float]]:
    """Step times of every round but the first (which traces the functions)."""
    try:
        return [model.fit(x, y, batch) for x in data][1:]
    finally:
        model.close()
        _free()


def _keras_in_child(kind: str, rows: int, optimizer: str, data: list[dict], y, batch: int,
                    workdir: str) -> tuple[list[list[float]], int]:  # fmt: skip
    """:class:`_Native` trained in a child process, so that all its memory (Keras keeps a
    large table's gradients and temporaries) goes back before the sharded tables start.
    Returns the step times and the child's peak RSS."""
    arrays = {f"{k}{i}": x[k] for i, x in enumerate(data) for k in ("user", "item")}
    src, dst = os.path.join(workdir, "train_data.npz"), os.path.join(workdir, "train_out.json")
    np.savez(src, y=y, **arrays)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)}  # fmt: skip
    cmd = [sys.executable, "-m", "benchmarks.train_bench", "--child", src, dst, kind, str(rows),
           optimizer, str(batch), str(len(data))]  # fmt: skip
    try:
        rc = subprocess.run(cmd, cwd=ROOT, env=env, timeout=3600).returncode
        if rc != 0:
            why = " (killed: out of memory?)" if rc in (-9, 137) else ""
            raise RuntimeError(f"the Keras child exited with code {rc}{why}")
        with open(dst) as f:
            out = json.load(f)
    finally:
        for path in (src, dst):
            if os.path.exists(path):
                os.remove(path)
    return out["times"], out["peak_rss"]


def _child(argv: list[str]) -> int:
    src, dst, kind, rows, optimizer, batch, rounds = argv
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    z = np.load(src)
    data = [{"user": z[f"user{i}"], "item": z[f"item{i}"]} for i in range(int(rounds))]
    times = _rounds(_Native(kind, int(rows), optimizer), data, z["y"], int(batch))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    with open(dst, "w") as f:
        json.dump({"times": times, "peak_rss": peak}, f)
    return 0


def _data(rows: int, optimizer: str, s: dict) -> tuple[list[dict], np.ndarray, int, int]:
    rng = np.random.default_rng(rows + len(optimizer))
    steps, rounds = (s["steps"], s["rounds"]) if rows < BIG_ROWS else (5, 2)
    per_round = s["batch"] * (steps + 1)
    data = [{"user": zipf_ids(rng, per_round, rows), "item": zipf_ids(rng, per_round, rows)}
            for _ in range(rounds + 1)]  # fmt: skip
    return data, np.zeros((per_round, 1), np.float32), steps, rounds


def _keras_bytes(rows: int, optimizer: str) -> int:
    """What a process training a Keras model with two such tables peaks at: about 2.7x the
    tables with SGD and 3.8x with Adagrad (measured at 10M x 64: 13.8 and 19.6 GB)."""
    tables = 2 * rows * DIM * 4
    return int(tables * (2.7 if optimizer == "sgd" else 3.8))


def _wait_for_memory(need: int, timeout: float = 180.0) -> bool:
    """Whether ``need`` bytes are available, waiting a while for them (the machine is
    shared: another process may be about to give its memory back)."""
    deadline = time.monotonic() + timeout
    while psutil.virtual_memory().available < need:
        if time.monotonic() > deadline:
            return False
        time.sleep(5)
    return True


def _summarize(kind, rows, optimizer, s, times, together, steps, rounds, seconds) -> dict:
    out = {
        "model": kind, "rows": rows, "optimizer": optimizer, "batch": s["batch"], "dim": DIM,
        "shards": SHARDS, "interleaved": together, "rounds": rounds, "steps_per_round": steps,
        "seconds": seconds, "target": TARGETS.get((optimizer, rows)),
    }  # fmt: skip
    for k, per_round_times in times.items():
        if k.endswith(("_peak_rss", "_error", "_at_start")):
            out[k] = per_round_times
            continue
        flat = np.concatenate(per_round_times)
        out[f"{k}_step_s"] = float(np.median(flat))
        out[f"{k}_steps_per_s"] = 1.0 / float(np.median(flat))
    if "keras" not in times:
        out["ratio"] = None
    elif together:  # paired: the ratio of each round's medians, then the median over rounds
        out["ratio"] = float(
            np.median(
                [
                    np.median(k) / np.median(sh)
                    for k, sh in zip(times["keras"], times["sharded"], strict=True)
                ]
            )
        )
    else:
        out["ratio"] = out["keras_step_s"] / out["sharded_step_s"]
    if "floor_step_s" in out and "keras_step_s" in out:
        out["best_possible_ratio"] = out["keras_step_s"] / out["floor_step_s"]
    if out["target"] and out["ratio"] is not None:
        out["meets_target"] = bool(out["ratio"] >= out["target"])
    return out


def _bench_rows(ctx: Context, rows: int, optimizer: str, s: dict, floor: bool) -> list[dict]:
    """Every model of ``s["models"]`` at this size and optimizer (one pair of stores)."""
    data, y, steps, rounds = _data(rows, optimizer, s)
    store_bytes = 2 * rows * DIM * 4 * (2 if optimizer == "adagrad" else 1)
    avail = psutil.virtual_memory().available
    together = _keras_bytes(rows, optimizer) + 1.2 * store_bytes < 0.75 * avail
    times: dict[str, dict] = {k: {"available_at_start": avail} for k in s["models"]}
    seconds = dict.fromkeys(s["models"], 0.0)
    if not together:  # Keras first, in a child, with none of the sharded tables alive yet
        for kind in s["models"]:
            t0 = time.perf_counter()
            need = _keras_bytes(rows, optimizer)
            if not _wait_for_memory(need):
                times[kind]["keras_error"] = (f"not run: needs ~{need / 1e9:.1f} GB, "
                                              f"{psutil.virtual_memory().available / 1e9:.1f}"
                                              " GB available")  # fmt: skip
            else:
                try:
                    times[kind]["keras"], times[kind]["keras_peak_rss"] = _keras_in_child(
                        kind, rows, optimizer, data, y, s["batch"], ctx.out
                    )
                except (RuntimeError, subprocess.TimeoutExpired) as err:
                    times[kind]["keras_error"] = str(err)
            if floor:
                times[kind]["floor"] = _rounds(
                    _Native(kind, FLOOR_ROWS, optimizer, FLOOR_ROWS), data, y, s["batch"]
                )
            seconds[kind] += time.perf_counter() - t0
    stores = _create_stores(ctx, rows, optimizer)
    try:
        for kind in s["models"]:
            t0 = time.perf_counter()
            if not together:
                times[kind]["sharded"] = _rounds(_Sharded(stores, kind, rows, optimizer), data,
                                                 y, s["batch"])  # fmt: skip
            else:
                models = {"sharded": _Sharded(stores, kind, rows, optimizer),
                          "keras": _Native(kind, rows, optimizer)}  # fmt: skip
                if floor:
                    models["floor"] = _Native(kind, FLOOR_ROWS, optimizer, modulo=FLOOR_ROWS)
                try:
                    for r, x in enumerate(data):  # round 0 traces the functions: not kept
                        for k in list(models) if r % 2 == 0 else list(models)[::-1]:
                            took = models[k].fit(x, y, s["batch"])
                            if r:
                                times[kind].setdefault(k, []).append(took)
                finally:
                    for m in models.values():
                        m.close()
                    models = None
                    _free()
            seconds[kind] += time.perf_counter() - t0
    finally:
        for st in stores:
            st.close()
    return [_summarize(kind, rows, optimizer, s, times[kind], together, steps, rounds,
                       seconds[kind]) for kind in s["models"]]  # fmt: skip


def run_train(ctx: Context) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    s = SIZES[ctx.mode]
    # The hungriest Keras baseline first: this process has not imported TensorFlow or
    # trained anything yet, which leaves the most memory to the Keras child process.
    cases = sorted(((r, o) for r in s["rows"] for o in s["optimizers"]),
                   key=lambda c: -_keras_bytes(*c))  # fmt: skip
    results = []
    for rows, opt in ctx.bar(cases, desc="train"):
        results.extend(_bench_rows(ctx, rows, opt, s, floor=rows == s["rows"][0]))
    results.sort(key=lambda c: (s["models"].index(c["model"]), c["rows"],
                                s["optimizers"].index(c["optimizer"])))  # fmt: skip
    return {"models": {"two_tower": "shardemb.demo.build_model + in_batch_softmax_loss",
                       "mlp": "concat -> Dense(64, relu) -> Dense(1), binary cross-entropy"},
            "batch": s["batch"], "dim": DIM, "shards_per_table": SHARDS,
            "learning_rate": LEARNING_RATE, "cases": results}  # fmt: skip


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        raise SystemExit(_child(sys.argv[2:]))
    raise SystemExit("usage: python -m benchmarks.run --only train")
