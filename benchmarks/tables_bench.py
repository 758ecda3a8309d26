"""Many tables per model: ``model.fit`` step time with tens of sparse features (issue 14).

Section ``tables``. The model: ``n`` single-hot sparse features, each with its own table of
``rows x dim`` float32, plus 13 dense features; the embeddings and the dense features are
concatenated into an MLP of 256-128-1 (ReLU), binary cross-entropy, batch 4,096 of Zipf
ids, ``model.fit``, 2 shards per table, a model's tables in one group (their shards share
2 processes, as the layers' default ``group="auto"`` does). Three measurements, each with
its models trained on the same batches in rotating order, round after round, in one
process:

- ``26 tables``: 26 tables of 100,000 x 16, Adagrad. ShardedEmbedding with
  ``jit_compile=False`` and ``True``, each with its step buffer (``max_ids_per_step``)
  sized to the batch and at the layer's default; ``keras.layers.Embedding`` with and
  without XLA; the floor with and without XLA;
- ``2 x 1M x 64``: 2 tables of 1,000,000 x 64, SGD, the same variants;
- ``2 x 10M x 64``: 2 tables of 10,000,000 x 64, SGD: ShardedEmbedding with and without
  XLA, Keras with XLA, and the floors (Keras without XLA reads its whole 2.56 GB table
  every step; it is left out). Skipped, with a note, when Keras's tables and the shards'
  rows would not fit in the memory available;
- the 26-table model's tables again with their rows moving through Ray's object transfer,
  as shards on another node do (``ray_transfer_only``; the Ray backend only), trained in
  the same rotation as the others, with and without XLA: what the model pays where no
  shard shares the trainer's memory (on this one machine, without a network);
- the sweep: 1, 2, 8, 26, 64 tables (``--quick``: up to 26) holding the same rows in all
  (2,600,000 x 16), Adagrad, ShardedEmbedding without XLA, each count trained alongside
  the 2-table model, so that "n tables / 2 tables" is paired round by round. Its 26-table
  point is the ``26 tables`` model above (the same tables). 64 tables run with 1 shard
  each when 128 shard processes would not fit in the memory available.

``floor`` is the same model on 1,000-row Keras tables (ids modulo 1,000): the dense part
and the input pipeline, everything but the tables, so no table implementation can make a
step faster than it. Each variant is compared with the floor of its own ``jit_compile``.

A step's time is the gap between consecutive ``on_train_batch_end`` callbacks (the first
step of each ``fit`` is dropped; round 0 traces and compiles and is not kept). Ratios are
``reference step time / store step time`` (above 1x the store is faster), the median over
rounds of the ratio of the round's medians. The Ray runtime is the run's (started once);
creating the shards is timed apart, and their idle CPU is measured right after.
``--smoke`` uses SGD throughout (XLA compiles Keras's Adagrad for many seconds).
"""

from __future__ import annotations

import time

import numpy as np
import psutil

from benchmarks.common import Context, interleaved, ray_transfer_only, zipf_ids
from benchmarks.report import _table, _x
from benchmarks.train_bench import _fit_steps, _free

__all__ = ["block_tables", "run_tables"]

SIZES = {
    # --smoke: no 2 x 1M or 10M x 64 model (their code is the 26-table one's), and SGD.
    "smoke": {"tables": 4, "rows": 1_000, "optimizer": "sgd", "big_rows": None, "big_dim": 8,
              "huge_rows": None, "sweep": [2, 4], "batch": 256, "steps": 2, "rounds": 1,
              "idle_s": 0.5},
    "quick": {"tables": 26, "rows": 100_000, "optimizer": "adagrad", "big_rows": 1_000_000,
              "big_dim": 64, "huge_rows": 10_000_000, "sweep": [1, 2, 8, 26], "batch": 4096,
              "steps": 4, "rounds": 2, "idle_s": 3.0},
    "full": {"tables": 26, "rows": 100_000, "optimizer": "adagrad", "big_rows": 1_000_000,
             "big_dim": 64, "huge_rows": 10_000_000, "sweep": [1, 2, 8, 26, 64], "batch": 4096,
             "steps": 6, "rounds": 3, "idle_s": 5.0},
}  # fmt: skip
DIM = 16
DENSE = 13
HIDDEN = (256, 128)
SHARDS = 2
LEARNING_RATE = 0.05
FLOOR_ROWS = 1000
REF_TABLES = 2  # the sweep's reference point: "n tables / 2 tables"
#: From issue 14 (none at --smoke sizes). Ratios: reference / store; the sweep: at most.
#: Roles: ``many`` is the 26-table model, ``big`` the 2 x 1M x 64 one, ``huge`` 2 x 10M x 64.
TARGETS = {("many", "keras"): 2.0, ("many", "keras_xla"): 1.5, ("big", "keras_xla"): 1.0,
           ("huge", "keras_xla"): 1.0, "sweep": 1.5}  # fmt: skip
#: Variant -> (table kind, jit_compile, step buffer sized to the batch). ``floor*`` are
#: the 1,000-row Keras tables. ShardedEmbedding's step buffer (``max_ids_per_step``) is
#: sized to the batch (the most distinct ids a single-hot feature has per step), and also
#: left at the layer's default (65,536 rows, at most the table's).
VARIANTS = {"sharded": ("sharded", False, True), "sharded_xla": ("sharded", True, True),
            "sharded_default": ("sharded", False, False),
            "sharded_xla_default": ("sharded", True, False),
            "sharded_xla_ray": ("sharded_ray", True, True),
            "keras": ("keras", False, False), "keras_xla": ("keras", True, False),
            "floor": ("floor", False, False), "floor_xla": ("floor", True, False)}  # fmt: skip
LABELS = {"sharded": "ShardedEmbedding", "sharded_xla": "ShardedEmbedding + XLA",
          "sharded_default": "ShardedEmbedding, default buffer",
          "sharded_xla_default": "ShardedEmbedding + XLA, default buffer",
          "sharded_xla_ray": "ShardedEmbedding + XLA, pushes as Ray calls",
          "keras": "keras Embedding", "keras_xla": "keras Embedding + XLA",
          "floor": "floor", "floor_xla": "floor + XLA"}  # fmt: skip
#: The 26-table model's tables with rows through Ray's object transfer: variant -> XLA.
REMOTE = {"remote": False, "remote_xla": True}
RATIOS = [("keras", "sharded"), ("keras", "sharded_xla"), ("keras_xla", "sharded"),
          ("keras_xla", "sharded_xla"), ("keras", "sharded_default"),
          ("keras_xla", "sharded_xla_default"), ("sharded_xla_ray", "sharded_xla")]  # fmt: skip
#: The variants of the 2 x 10M x 64 model: Keras without XLA (about half a second a step:
#: it reads the whole table) and the default buffer are left out, to keep the run short.
HUGE = ("sharded", "sharded_xla", "keras_xla", "floor", "floor_xla")
#: Bytes a 2 x 10M x 64 comparison holds (Keras's tables + the shards' rows), times this,
#: must be available, else the case is skipped with a note.
HUGE_MARGIN = 1.3


def _floor_of(variant: str) -> str:
    return "floor_xla" if VARIANTS[variant][1] else "floor"


def _keras_optimizer(name: str):
    import keras

    return {"sgd": keras.optimizers.SGD, "adagrad": keras.optimizers.Adagrad}[name](LEARNING_RATE)


def _table_optimizer(name: str) -> dict:
    return {"name": name, "learning_rate": LEARNING_RATE}


def _model(layers: list, optimizer: str, jit: bool):
    """``len(layers)`` sparse features + 13 dense -> 256-128-1, binary cross-entropy."""
    import keras

    dense = keras.Input((DENSE,), name="dense_features")
    sparse = {f"c{i}": keras.Input((), dtype="int64", name=f"c{i}") for i in range(len(layers))}
    embedded = [layer(x) for layer, x in zip(layers, sparse.values(), strict=True)]
    h = keras.layers.Concatenate()([dense, *embedded])
    for units in HIDDEN:
        h = keras.layers.Dense(units, activation="relu")(h)
    model = keras.Model({"dense_features": dense, **sparse}, keras.layers.Dense(1)(h))
    model.compile(_keras_optimizer(optimizer), keras.losses.BinaryCrossentropy(from_logits=True),
                  jit_compile=jit)  # fmt: skip
    return model


class _Variant:
    """One model of a comparison: its layers' kind, and the batches it trains on."""

    def __init__(self, kind: str, jit: bool, tables: int, rows: int, dim: int, optimizer: str,
                 stores: list | None = None, buffer: int | None = None):  # fmt: skip
        import keras

        import shardemb

        # "sharded_ray": co-located hosts' doorbells left unrung, every push a Ray call.
        self.ring = kind != "sharded_ray"
        self.stores = stores if kind.startswith("sharded") else []
        self.modulo = FLOOR_ROWS if kind == "floor" else None
        if kind.startswith("sharded"):
            opt = _table_optimizer(optimizer)
            layers = [shardemb.ShardedEmbedding(rows, dim, store=st, optimizer=opt,
                                                max_ids_per_step=buffer, name=f"sharded_{i}")
                      for i, st in enumerate(stores)]  # fmt: skip
        else:
            n = FLOOR_ROWS if self.modulo else rows
            layers = [keras.layers.Embedding(n, dim, name=f"{kind}_{i}") for i in range(tables)]
        self.model = _model(layers, optimizer, jit)

    def fit(self, x: dict, y: np.ndarray, batch: int) -> list[float]:
        if self.modulo:
            x = {k: v if k == "dense_features" else v % self.modulo for k, v in x.items()}
        from shardemb.transport import bells

        bells.RING_DOORBELLS = self.ring
        try:
            steps = _fit_steps(self.model, x, y, batch)
            for s in self.stores:
                s.flush()  # a round's pushes are not left to the next model's round
        finally:
            bells.RING_DOORBELLS = True
        return steps


def _variants(s: dict, tables: int, rows: int, dim: int, optimizer: str, stores: list,
              only=VARIANTS) -> dict:  # fmt: skip
    return {v: _Variant(kind, jit, tables, rows, dim, optimizer, stores,
                        s["batch"] if sized else None)
            for v, (kind, jit, sized) in VARIANTS.items() if v in only}  # fmt: skip


def _data(rng, tables: int, rows: int, s: dict, rounds: int) -> list[dict]:
    n = s["batch"] * (s["steps"] + 1)
    return [{"dense_features": rng.standard_normal((n, DENSE), dtype=np.float32),
             **{f"c{i}": zipf_ids(rng, n, rows) for i in range(tables)}}
            for _ in range(rounds + 1)]  # fmt: skip


def _interleave(variants: dict, data: dict, y: np.ndarray, s: dict, bar) -> dict:
    """Step times per round of every variant (round 0 compiles: not kept), the variants in
    rotating order. ``data[name]``: the batches of each round for that variant."""
    names = list(variants)
    times: dict[str, list[list[float]]] = {n: [] for n in names}
    for r in range(s["rounds"] + 1):
        for n in names[r % len(names) :] + names[: r % len(names)]:
            took = variants[n].fit(data[n][r], y, s["batch"])
            if r:
                times[n].append(took)
            bar.update(1)
    return times


def _create(ctx: Context, what: str, tables: int, rows: int, dim: int, optimizer: str,
            shards: int = SHARDS) -> tuple[list, float]:  # fmt: skip
    """``tables`` stores, created one after the other (as a model's layers build them), in
    one group: their shards share ``shards`` processes, as a model's layers' do by default
    (``group="auto"``)."""
    import shardemb

    group = ctx.name(f"{what}-hosts") if ctx.backend == "ray" else None
    stores: list = []
    t0 = time.perf_counter()
    try:
        for i in range(tables):
            stores.append(shardemb.EmbeddingStore.create(
                ctx.name(f"{what}-{i}"), rows, dim, num_shards=min(shards, rows),
                optimizer=_table_optimizer(optimizer), seed=i, backend=ctx.backend,
                group=group))  # fmt: skip
    except BaseException:
        _close(stores)
        raise
    return stores, time.perf_counter() - t0


def _close(stores: list) -> None:
    for st in stores:
        st.close()


def _processes(ctx: Context, stores: list) -> list:
    """The shard processes of ``stores`` (none in-process)."""
    if ctx.backend != "ray":
        return []
    pids = {p["pid"] for st in stores for p in st.placement()}  # shared by grouped tables
    return [psutil.Process(pid) for pid in sorted(pids)]


def _idle_cores(procs: list, seconds: float) -> float:
    """The cores ``procs`` use, idle, over ``seconds``: CPU seconds / wall seconds."""
    cpu = lambda: sum(sum(p.cpu_times()[:2]) for p in procs)  # noqa: E731 - user + system
    before, t0 = cpu(), time.perf_counter()
    time.sleep(seconds)
    return (cpu() - before) / (time.perf_counter() - t0)


def _shard_stats(ctx: Context, stores: list, create_s: float, idle_s: float) -> dict:
    """Start-up, then the CPU the idle shard processes use over ``idle_s`` seconds (in
    cores: CPU seconds / wall seconds) and their resident bytes."""
    procs = _processes(ctx, stores)
    out = {"tables": len(stores), "shards": sum(st.num_shards for st in stores),
           "processes": len(procs), "create_s": create_s,
           "create_per_table_s": create_s / max(1, len(stores))}  # fmt: skip
    if not procs or not idle_s:
        return {**out, "idle_cores": None, "rss_per_process": None}
    idle = _idle_cores(procs, idle_s)
    rss = [p.memory_info().rss for p in procs]
    uss = [p.memory_full_info().uss for p in procs]  # not shared with other processes
    return {**out, "idle_cores": idle, "idle_window_s": idle_s,
            "rss_per_process": float(np.median(rss)), "rss_total": int(sum(rss)),
            "uss_per_process": float(np.median(uss))}  # fmt: skip


def _step(times: list[list[float]]) -> float:
    return float(np.median(np.concatenate(times)))


def _paired(ref: list[list[float]], store: list[list[float]]) -> dict:
    """Median over rounds of ``median(ref round) / median(store round)``, and its range."""
    per = [np.median(a) / np.median(b) for a, b in zip(ref, store, strict=True)]
    return {"ratio": float(np.median(per)), "lo": float(min(per)), "hi": float(max(per))}


def _case(role: str, tables: int, rows: int, dim: int, optimizer: str, times: dict,
          smoke: bool) -> dict:  # fmt: skip
    variants = {}
    for v in (v for v in VARIANTS if v in times):
        step, floor = _step(times[v]), _step(times[_floor_of(v)])
        variants[v] = {"step_s": step, "steps_per_s": 1.0 / step, "floor": _floor_of(v),
                       "above_floor_s": step - floor, "x_floor": step / floor}  # fmt: skip
    ratios = []
    for ref, store in (r for r in RATIOS if r[0] in times and r[1] in times):
        target = None if smoke else TARGETS.get((role, ref))
        r = _paired(times[ref], times[store])
        best = variants[ref]["step_s"] / _step(times[_floor_of(store)])
        ratios.append({"ref": ref, "store": store, **r, "best_possible": best, "target": target,
                       "met": None if target is None else bool(r["ratio"] >= target)})  # fmt: skip
    name = f"{tables} tables" if role == "many" else f"{tables} x {rows:,} x {dim}"
    return {"case": name, "role": role, "tables": tables, "rows": rows, "dim": dim,
            "optimizer": optimizer, "variants": variants, "ratios": ratios}  # fmt: skip


def _sweep_point(tables: int, rows: int, shards: int, stats: dict, times: dict,
                 sharded: str, floor: str, seconds: float, note: str = "") -> dict:  # fmt: skip
    """One count of the sweep; ``vs_ref``: its step time / the 2-table model's (paired)."""
    step, floor_step = _step(times[sharded]), _step(times[floor])
    return {"tables": tables, "rows_per_table": rows, "shards_per_table": shards,
            "step_s": step, "floor_step_s": floor_step, "above_floor_s": step - floor_step,
            "ref_step_s": _step(times["ref"]), "vs_ref": _paired(times[sharded], times["ref"]),
            "startup": stats, "seconds": seconds, "note": note}  # fmt: skip


def _many(ctx: Context, s: dict, ref: dict, y, rng, bar) -> tuple[dict, list[dict]]:
    """The 26-table model, every variant, with the sweep's 2-table model beside it: the
    case, and the sweep's points at 2 and 26 tables."""
    t0 = time.perf_counter()
    n, rows = s["tables"], s["rows"]
    data = _data(rng, n, rows, s, s["rounds"])
    stores, create_s = _create(ctx, "many", n, rows, DIM, s["optimizer"])
    remote: list = []
    try:
        stats = _shard_stats(ctx, stores, create_s, s["idle_s"])
        models = _variants(s, n, rows, DIM, s["optimizer"], stores)
        models["ref"] = _Variant("sharded", False, REF_TABLES, ref["rows"], DIM, s["optimizer"],
                                 ref["stores"], s["batch"])  # fmt: skip
        models["ref_floor"] = _Variant("floor", False, REF_TABLES, ref["rows"], DIM, s["optimizer"])
        feeds = {**dict.fromkeys(VARIANTS, data), "ref": ref["data"], "ref_floor": ref["data"]}
        if ctx.backend == "ray":
            remote, _ = _create(ctx, "remote", n, rows, DIM, s["optimizer"])
            for st in remote:
                ray_transfer_only(st)
            for v, jit in REMOTE.items():
                models[v] = _Variant("sharded", jit, n, rows, DIM, s["optimizer"], remote,
                                     s["batch"])  # fmt: skip
                feeds[v] = data
        times = _interleave(models, feeds, y, s, bar)
        models = None
        procs = _processes(ctx, stores)
        if procs and s["idle_s"]:  # again, now with this process's doorbells open
            stats["idle_after_training_cores"] = _idle_cores(procs, s["idle_s"])
    finally:
        _close(stores + remote)
        _free()
    seconds = time.perf_counter() - t0
    case = _case("many", n, rows, DIM, s["optimizer"], times, ctx.mode == "smoke")
    case.update(startup=stats, seconds=seconds)
    if remote:
        pairs = (("remote", "sharded"), ("remote_xla", "sharded_xla"))
        case["remote"] = {v: {"step_s": _step(times[v]), "floor": _floor_of(base),
                              "vs_keras": _paired(times["keras"], times[v]),
                              "vs_local": _paired(times[v], times[base])}
                          for v, base in pairs}  # fmt: skip
    points = [
        _sweep_point(REF_TABLES, ref["rows"], SHARDS, ref["startup"], times, "ref", "ref_floor",
                     seconds),
        _sweep_point(n, rows, SHARDS, stats, times, "sharded", "floor", seconds),
    ]  # fmt: skip
    return case, points


def _shards_that_fit(ctx: Context, n: int, rows: int, seen: dict) -> tuple[int, str]:
    """2 shards per table, or 1 when ``n x 2`` more shard processes (at the unique bytes
    each of the 26-table model's had) would not fit in 60% of the memory available now."""
    per_process = seen.get("uss_per_process")
    if not per_process or ctx.backend != "ray":
        return SHARDS, ""
    need = n * SHARDS * per_process + 2 * n * rows * DIM * 4  # rows + Adagrad slots
    avail = psutil.virtual_memory().available
    if need <= 0.6 * avail:
        return SHARDS, ""
    return 1, (f"1 shard per table: {n * SHARDS} shard processes would need about "
               f"{need / 1e9:.1f} GB, {avail / 1e9:.1f} GB available")  # fmt: skip


def _sweep_at(ctx: Context, n: int, s: dict, ref: dict, seen: dict, y, rng, bar) -> dict:
    """The ``n``-table model of the sweep beside the 2-table one."""
    t0 = time.perf_counter()
    rows = ref["rows"] * REF_TABLES // n
    shards, note = _shards_that_fit(ctx, n, rows, seen)
    data = _data(rng, n, rows, s, s["rounds"])
    stores, create_s = _create(ctx, f"sweep{n}", n, rows, DIM, s["optimizer"], shards)
    try:
        stats = _shard_stats(ctx, stores, create_s, s["idle_s"])
        models = {"sharded": _Variant("sharded", False, n, rows, DIM, s["optimizer"], stores,
                                      s["batch"]),
                  "floor": _Variant("floor", False, n, rows, DIM, s["optimizer"]),
                  "ref": _Variant("sharded", False, REF_TABLES, ref["rows"], DIM, s["optimizer"],
                                  ref["stores"], s["batch"])}  # fmt: skip
        feeds = {"sharded": data, "floor": data, "ref": ref["data"]}
        times = _interleave(models, feeds, y, s, bar)
        models = None
    finally:
        _close(stores)
        _free()
    return _sweep_point(n, rows, shards, stats, times, "sharded", "floor",
                        time.perf_counter() - t0, note)  # fmt: skip


def _big(ctx: Context, s: dict, y, rng, bar, role: str = "big", only=VARIANTS) -> dict:
    """2 tables of ``rows x 64`` with SGD (the issue's other models: 1M rows as ``big``,
    10M as ``huge``), the variants ``only``."""
    t0 = time.perf_counter()
    rows, dim = s[f"{role}_rows"], s["big_dim"]
    data = _data(rng, REF_TABLES, rows, s, s["rounds"])
    stores, create_s = _create(ctx, role, REF_TABLES, rows, dim, "sgd")
    try:
        stats = _shard_stats(ctx, stores, create_s, 0.0)
        models = _variants(s, REF_TABLES, rows, dim, "sgd", stores, only)
        times = _interleave(models, dict.fromkeys(models, data), y, s, bar)
        models = None
        exchange = _push_and_read(stores, data[0], s) if role == "big" else None
    finally:
        _close(stores)
        _free()
    case = _case(role, REF_TABLES, rows, dim, "sgd", times, ctx.mode == "smoke")
    case.update(startup=stats, seconds=time.perf_counter() - t0)
    if exchange:
        case["exchange"] = exchange
    return case


def _push_and_read(stores: list, x: dict, s: dict) -> dict | None:
    """The store's own step, outside Keras: one batch's distinct ids of every table pushed
    (``apply_gradients_many``), then looked up (which waits for the push: read-your-writes),
    with the hosts' doorbells rung and with every push a Ray call, interleaved."""
    from shardemb import EmbeddingStore
    from shardemb.transport import bells

    if stores[0].backend_name != "ray":
        return None
    ids = [np.unique(x[f"c{i}"][: s["batch"]]) for i in range(len(stores))]
    grads = [np.full((i.size, stores[0].dim), 1e-4, np.float32) for i in ids]

    def step(ring: bool):
        bells.RING_DOORBELLS = ring
        EmbeddingStore.apply_gradients_many(list(zip(stores, ids, grads, strict=True)))
        for st, i in zip(stores, ids, strict=True):
            st.lookup(i)

    try:
        t = interleaved({"doorbell": lambda: step(True), "ray": lambda: step(False)},
                        reps=5 * s["steps"] * s["rounds"], warmup=3)  # fmt: skip
    finally:
        bells.RING_DOORBELLS = True
    per = t["ray"] / t["doorbell"]
    return {"distinct_ids": [int(i.size) for i in ids], "reps": int(per.size),
            "doorbell_s": float(np.median(t["doorbell"])), "ray_s": float(np.median(t["ray"])),
            "ratio": float(np.median(per)), "p10": float(np.percentile(per, 10)),
            "p90": float(np.percentile(per, 90))}  # fmt: skip


def _exchange_line(c: dict) -> list[str]:
    e = c.get("exchange")
    if not e:
        return []
    return [f"**The store's own step** on these tables, outside Keras: each table's "
            f"{' and '.join(f'{n:,}' for n in e['distinct_ids'])} distinct ids of one batch "
            "pushed in one `apply_gradients_many`, then looked up (read-your-writes: the "
            f"lookup waits for the push), {e['reps']} repetitions interleaved: "
            f"{_ms(e['doorbell_s'])} ms with the hosts' doorbells rung, {_ms(e['ray_s'])} ms "
            f"with every push a Ray call: **{_x(e['ratio'])}** (p10 - p90 "
            f"{_x(e['p10'])} - {_x(e['p90'])}).", ""]  # fmt: skip


def _huge_skipped(s: dict) -> str:
    """Why the 2 x 10M x 64 model cannot run now ("" when it can): Keras's tables and the
    shards' rows must fit in the memory available, with a margin."""
    need = 2 * REF_TABLES * s["huge_rows"] * s["big_dim"] * 4 * HUGE_MARGIN
    avail = psutil.virtual_memory().available
    if need <= avail:
        return ""
    return (f"2 x {s['huge_rows']:,} x {s['big_dim']} skipped: it needs about "
            f"{need / 1e9:.1f} GB, {avail / 1e9:.1f} GB available")  # fmt: skip


def run_tables(ctx: Context) -> dict:
    s = SIZES[ctx.mode]
    rng = np.random.default_rng(14)
    y = rng.integers(0, 2, (s["batch"] * (s["steps"] + 1), 1)).astype(np.float32)
    others = [n for n in s["sweep"] if n not in (REF_TABLES, s["tables"])]
    fits = (
        len(VARIANTS)
        + 2
        + (len(REMOTE) if ctx.backend == "ray" else 0)
        + 3 * len(others)
        + (len(VARIANTS) if s["big_rows"] else 0)
        + (len(HUGE) if s["huge_rows"] else 0)
    )
    bar = ctx.bar(total=(s["rounds"] + 1) * fits, desc="tables")
    # The sweep's tables hold as many rows in all as the 26-table model's; its 2-table
    # model lives through the sweep, to train beside every other count.
    ref = {"rows": s["tables"] * s["rows"] // REF_TABLES}
    ref["data"] = _data(rng, REF_TABLES, ref["rows"], s, s["rounds"])
    ref["stores"], create_s = _create(ctx, "ref", REF_TABLES, ref["rows"], DIM, s["optimizer"])
    try:
        ref["startup"] = _shard_stats(ctx, ref["stores"], create_s, s["idle_s"])
        many, sweep = _many(ctx, s, ref, y, rng, bar)
        for n in others:
            sweep.append(_sweep_at(ctx, n, s, ref, many["startup"], y, rng, bar))
    finally:
        _close(ref["stores"])
        _free()
    cases = [many, _big(ctx, s, y, rng, bar)] if s["big_rows"] else [many]
    skipped = _huge_skipped(s) if s["huge_rows"] else ""
    if s["huge_rows"] and not skipped:
        cases.append(_big(ctx, s, y, rng, bar, "huge", HUGE))
    bar.close()
    sweep.sort(key=lambda p: p["tables"])
    at = next(p for p in sweep if p["tables"] == s["tables"])
    return {"batch": s["batch"], "dense_features": DENSE, "hidden": list(HIDDEN),
            "shards_per_table": SHARDS, "learning_rate": LEARNING_RATE,
            "floor_rows": FLOOR_ROWS, "rounds": s["rounds"], "steps_per_round": s["steps"],
            "max_ids_per_step": s["batch"], "startup": many["startup"],
            "cases": cases, "skipped": [skipped] if skipped else [],
            "sweep": {"total_rows": s["tables"] * s["rows"], "dim": DIM, "ref": REF_TABLES,
                      "optimizer": s["optimizer"],
                      "points": sweep, "at": s["tables"], "ratio": at["vs_ref"]["ratio"],
                      "target": None if ctx.mode == "smoke" else TARGETS["sweep"]}}  # fmt: skip


# -- README block ---------------------------------------------------------------------------
def _ms(x: float) -> str:
    return f"{x * 1e3:.1f}"


def _above(x: float) -> str:
    return f"{x * 1e3:+.1f}"


def _target(target, met) -> str:
    return "" if target is None else f">= {target}x {'yes' if met else 'no'}"


def _case_block(c: dict) -> list[str]:
    v = c["variants"]
    steps = [[LABELS[k], _ms(x["step_s"]), f"{x['steps_per_s']:.2f}", LABELS[x["floor"]],
              _above(x["above_floor_s"]), f"{x['x_floor']:.1f}x"]
             for k, x in v.items()]  # fmt: skip
    ratios = []
    for r in c["ratios"]:
        ref, store = v[r["ref"]], v[r["store"]]
        ratios.append([f"{LABELS[r['ref']]} / {LABELS[r['store']]}", f"**{_x(r['ratio'])}**",
                       f"{_x(r['lo'])} - {_x(r['hi'])}", _target(r["target"], r["met"]),
                       f"{_ms(ref['step_s'])} ({_above(ref['above_floor_s'])})",
                       f"{_ms(store['step_s'])} ({_above(store['above_floor_s'])})",
                       _ms(v[store["floor"]]["step_s"]), _x(r["best_possible"])])  # fmt: skip
    return [
        f"**{c['case']}**: {c['tables']} tables of {c['rows']:,} x {c['dim']}, "
        f"{c['optimizer']}. `above floor`: ms more than the floor of the same `jit_compile`.",
        "",
        _table(["variant", "step ms", "steps/s", "its floor", "above floor", "x floor"],
               steps),
        "",
        _table(["ratio (reference / store)", "ratio", "range over rounds", "target",
                "reference ms (above floor)", "store ms (above floor)", "store's floor ms",
                "best possible"], ratios, "lrrlrrrr"),
        "",
        *_remote_block(c),
        *_exchange_line(c),
    ]  # fmt: skip


def _remote_block(c: dict) -> list[str]:
    """The case's tables through Ray's object transfer (the path of shards on another
    node), beside the same model on co-located shards."""
    rem = c.get("remote")
    if not rem:
        return []
    v = c["variants"]
    rows = [[label, _ms(r["step_s"]), _above(r["step_s"] - v[r["floor"]]["step_s"]),
             f"**{_x(r['vs_keras']['ratio'])}**",
             f"{_x(r['vs_keras']['lo'])} - {_x(r['vs_keras']['hi'])}",
             f"{_x(r['vs_local']['ratio'])}"]
            for label, r in (("ShardedEmbedding, Ray transfer", rem["remote"]),
                             ("ShardedEmbedding + XLA, Ray transfer", rem["remote_xla"]))
            ]  # fmt: skip
    return [
        "**The same tables, rows through Ray's object transfer** (as for shards on another "
        "node; here on the same machine, so without a network): the store's channel is "
        "probed with shared memory reported missing, so lookups and pushes travel as Ray "
        "objects, in the same rotation as the variants above. `/ co-located`: its step / "
        "the co-located variant's of the same `jit_compile` (paired; above 1x it is slower).",
        "",
        _table(["variant", "step ms", "above floor", "keras Embedding / it",
                "range over rounds", "/ co-located"], rows),
        "",
    ]  # fmt: skip


def _startup_line(st: dict) -> str:
    line = (f"Start-up (the Ray runtime already up): the {st['tables']}-table model's "
            f"{st['shards']} shards ({st['processes']} processes) took **{st['create_s']:.1f} "
            f"s** to create, one table after the other ({st['create_per_table_s']:.2f} s per "
            "table)")  # fmt: skip
    if st.get("idle_cores") is None:
        return line + " (in-process shards: no processes)."
    after = st.get("idle_after_training_cores")
    if after is not None:
        after = f", and **{after:.2f} cores** idle after training (the trainer's doorbells open)"
    return (f"{line}; idle, right after, they used **{st['idle_cores']:.2f} cores** over "
            f"{st['idle_window_s']:.0f} s (CPU seconds / wall seconds, all of them together)"
            f"{after or ''} and "
            f"held {st['rss_per_process'] / 1e6:.0f} MB RSS each ({st['rss_total'] / 1e9:.1f} "
            "GB in all).")  # fmt: skip


def _sweep_rows(points: list[dict]) -> list[list]:
    rows = []
    for p in points:
        u = p["startup"]
        idle, rss = u.get("idle_cores"), u.get("rss_per_process")
        rows.append([p["tables"], f"{p['rows_per_table']:,}", p["shards_per_table"],
                     f"{u['create_s']:.1f}", "" if idle is None else f"{idle:.2f}",
                     "" if rss is None else f"{rss / 1e6:.0f} MB", _ms(p["step_s"]),
                     _ms(p["floor_step_s"]), _above(p["above_floor_s"]), _ms(p["ref_step_s"]),
                     f"**{_x(p['vs_ref']['ratio'])}**",
                     f"{_x(p['vs_ref']['lo'])} - {_x(p['vs_ref']['hi'])}"])  # fmt: skip
    return rows


def block_tables(r: dict, meta: dict) -> str:
    """The README block of this section (``benchmarks.run`` adds it to the report's)."""
    sw = r["sweep"]
    ratio, target = sw["ratio"], sw["target"]
    met = "" if target is None else (
        f" (target <= {target}x: {'met' if ratio <= target else 'not met'})")  # fmt: skip
    rounds = f"{r['rounds']} round{'s' if r['rounds'] > 1 else ''}"
    size = "" if meta.get("mode", "full") == "full" else (
        f"**A `--{meta['mode']}` run** ({meta['date']}), at that mode's sizes (`python -m "
        "benchmarks.run --only tables` runs the full ones). ")  # fmt: skip
    return "\n".join([
        f"{size}Models: n single-hot sparse features, one table each, + "
        f"{r['dense_features']} dense features -> MLP {'-'.join(map(str, r['hidden']))}-1, "
        "binary cross-entropy, batch "
        f"{r['batch']:,} of Zipf ids, `model.fit`, {r['shards_per_table']} shards per table, "
        f"learning rate {r['learning_rate']}. ShardedEmbedding's step buffer "
        f"(`max_ids_per_step`) holds {r['max_ids_per_step']:,} rows (the batch), except in "
        "the `default buffer` rows (the layer's default: 65,536 rows, at most the table's). "
        "The variants of a model train on the same batches in "
        f"rotating order, {rounds} of {r['steps_per_round']} steps after one that compiles; "
        "a step is the median gap between batch ends. `floor`: the same model on "
        f"{r['floor_rows']:,}-row Keras tables (ids modulo {r['floor_rows']:,}), i.e. "
        "everything but the tables. Ratios: reference step / store step (above 1x the store "
        "is faster), the median over rounds of the per-round ratio; `best possible` = "
        "reference step / the store's floor. Measured by benchmarks/tables_bench.py.", "",
        _startup_line(r["startup"]), "",
        *[line for c in r["cases"] for line in _case_block(c)],
        *[f"{note}.\n" for note in r.get("skipped", [])],
        f"**Table-count sweep** (ShardedEmbedding, `jit_compile=False`): {sw['total_rows']:,} "
        f"rows x {sw['dim']} in all, split evenly, {sw['optimizer']}; each count trains beside the "
        f"{sw['ref']}-table model, and `/ {sw['ref']} tables` is the paired ratio of step "
        f"times (lower is better). {sw['at']} tables / {sw['ref']} tables: **{_x(ratio)}**"
        f"{met}. `start-up`, `idle cores` and `RSS`: that count's shard processes, just "
        "created.", "",
        _table(["tables", "rows/table", "shards/table", "start-up s", "idle cores",
                "RSS/process", "step ms", "floor ms", "above floor",
                f"{sw['ref']} tables ms (same rounds)", f"/ {sw['ref']} tables",
                "range over rounds"], _sweep_rows(sw["points"])),
        *[f"\n{p['tables']} tables: {p['note']}." for p in sw["points"] if p.get("note")],
        "", "![tables](img/tables.png)",
    ])  # fmt: skip
