"""shardemb beside TensorFlow Recommenders-Addons (TFRA), side by side in one run.

Optional, and not a section of ``benchmarks.run``: TFRA 0.8 needs TensorFlow 2.16 and
tf-keras, so it runs in a virtual environment of its own, as a child process of this one.

    SHARDEMB_TFRA_PYTHON=/path/to/tfra-venv/bin/python python -m benchmarks.tfra_bench
    python -m benchmarks.tfra_bench --tfra-python /path/to/tfra-venv/bin/python [--quick]

(benchmarks/README.md, section "TFRA", says how to make the venv.) The parent (the repo's
Python) runs the shardemb side; the child (the venv's Python, this same file with
``--child``) builds the TFRA side and answers one command per line on stdin with the
timings it measured, as JSON. The two sides take turns, round by round (rotating order),
on the same ids, which the parent generates with a fixed seed and hands over as ``.npy``.

Two measurements (issues 14 and 16):

- ``train``: 2 tables of 1,000,000 x 64 float32 (users, items), batch 4,096 of Zipf ids,
  concat -> Dense(64, relu) -> Dense(1), binary cross-entropy, SGD (learning rate 0.05),
  ``model.fit`` (the ``mlp`` model of ``train_bench``). shardemb: ``ShardedEmbedding`` on
  2-shard stores over Ray (a local runtime started here) in one group (``group="auto"``,
  as the layers' own stores), ``jit_compile=False`` and ``True``; and, without XLA, the
  same stores with every push a Ray call (doorbells off), and the same tables with actors
  of their own (``group=None``). TFRA:
  ``de.keras.layers.Embedding`` (one CPU hash table per feature, filled with 1,000,000 keys
  before training, so both sides hold the same number of rows) and
  ``de.DynamicEmbeddingOptimizer(SGD)``, ``jit_compile=False`` (its hash-table ops do not
  compile with XLA). A step is the gap between consecutive ``on_train_batch_end``; each
  round is one ``fit`` of ``steps + 1`` batches (the first step dropped), round 0 traces
  and is not kept. Ratio: TFRA step / shardemb step (above 1x shardemb is faster), the
  median over rounds of the ratio of the rounds' medians.
- ``lookup``: 65,536 keys, all present, from 1,000,000 rows x 64, uniform and Zipf over the
  rows. The same rows under the same random int64 keys in shardemb's dynamic table
  (``EmbeddingStore.create(name, vocab_size=None, dim=64, num_shards=2)``) and in a TFRA
  ``dynamic_embedding`` variable (``de.get_variable``, CPU hash table); the fixed-vocab
  shardemb table holds the same rows and is asked for the row numbers. shardemb on Ray
  and in-process shards. Every lookup takes a numpy array and gives one back; TFRA's is
  also timed as a ``tf.function`` on a tensor already in TensorFlow (``tfra_graph``). All
  answers are checked equal to the rows. Ratio: TFRA time / shardemb time, the median
  over repetitions of the per-repetition ratio (each repetition runs every variant once,
  in rotating order).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings

import numpy as np

ENV_VAR = "SHARDEMB_TFRA_PYTHON"
ROWS = 1_000_000
DIM = 64
BATCH = 4096
SHARDS = 2
LEARNING_RATE = 0.05
LOOKUP_KEYS = 65536
SIZES = {"full": {"steps": 10, "rounds": 7, "reps": 30},
         "quick": {"steps": 5, "rounds": 2, "reps": 10}}  # fmt: skip
#: Marks the child's answers on its stdout (anything else TensorFlow prints goes to stderr).
MARK = "@@tfra "


# -- the child: TFRA, in its own venv (stdlib, numpy and TensorFlow only) -------------------
def _child() -> int:
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # whatever else writes to stdout lands on stderr

    import platform
    from importlib import metadata

    import tensorflow as tf
    from tensorflow_recommenders_addons import dynamic_embedding as de

    keras = tf.keras
    state: dict = {}

    def versions() -> dict:
        out = {"python": platform.python_version(), "keras_in_use": keras.__name__}
        for pkg in ("tensorflow", "tf-keras", "tensorflow-recommenders-addons", "numpy"):
            out[pkg] = metadata.version(pkg)
        return out

    def setup_train(d: str, seed: int) -> dict:
        t0 = time.perf_counter()
        init = keras.initializers.RandomUniform(-0.05, 0.05, seed=seed)
        user = keras.Input((), dtype=tf.int64, name="user")
        item = keras.Input((), dtype=tf.int64, name="item")
        layers = [de.keras.layers.Embedding(DIM, key_dtype=tf.int64, value_dtype=tf.float32,
                                            initializer=init, name=n, init_capacity=ROWS)
                  for n in ("users", "items")]  # fmt: skip
        h = keras.layers.Concatenate()([layers[0](user), layers[1](item)])
        h = keras.layers.Dense(64, activation="relu")(h)
        model = keras.Model({"user": user, "item": item}, keras.layers.Dense(1)(h))
        opt = de.DynamicEmbeddingOptimizer(keras.optimizers.SGD(LEARNING_RATE))
        model.compile(opt, keras.losses.BinaryCrossentropy(from_logits=True), jit_compile=False)
        rng = np.random.default_rng(seed)
        all_keys = tf.constant(np.arange(ROWS, dtype=np.int64))
        for layer in layers:  # the same number of rows as the shardemb tables hold
            rows = rng.uniform(-0.05, 0.05, (ROWS, DIM)).astype(np.float32)
            layer.params.upsert(all_keys, tf.constant(rows))
        z = np.load(os.path.join(d, "train.npz"))
        state.update(model=model, layers=layers, y=z["y"],
                     data=[{"user": z[f"user{r}"], "item": z[f"item{r}"]}
                           for r in range(int(z["rounds"]))])  # fmt: skip
        return {"setup_s": time.perf_counter() - t0,
                "rows": [int(la.params.size().numpy()) for la in layers]}  # fmt: skip

    class Clock(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.ends: list[float] = []

        def on_train_batch_end(self, batch, logs=None):
            self.ends.append(time.perf_counter())

    def train(r: int) -> dict:
        probe = tf.constant(state["data"][r]["user"][:1])
        before = state["layers"][0].params.lookup(probe).numpy()
        clock = Clock()
        state["model"].fit(state["data"][r], state["y"], batch_size=BATCH, epochs=1,
                           shuffle=False, verbose=0, callbacks=[clock])  # fmt: skip
        after = state["layers"][0].params.lookup(probe).numpy()
        return {"steps": np.diff(clock.ends).tolist(), "trained": bool((before != after).any()),
                "rows": [int(la.params.size().numpy()) for la in state["layers"]]}  # fmt: skip

    def setup_lookup(d: str) -> dict:
        t0 = time.perf_counter()
        keys, rows = np.load(os.path.join(d, "keys.npy")), np.load(os.path.join(d, "rows.npy"))
        var = de.get_variable("lookup_bench", key_dtype=tf.int64, value_dtype=tf.float32,
                              dim=DIM, initializer=0.0, init_size=keys.size)  # fmt: skip
        var.upsert(tf.constant(keys), tf.constant(rows))
        graph = tf.function(lambda k: var.lookup(k))
        cases = {}
        for dist in ("uniform", "zipf"):
            ids = np.load(os.path.join(d, f"ids_{dist}.npy"))
            asked = keys[ids]
            ok = bool(np.array_equal(var.lookup(tf.constant(asked)).numpy(), rows[ids]))
            tensor = tf.constant(asked)
            ok = ok and bool(np.array_equal(graph(tensor).numpy(), rows[ids]))
            cases[dist] = {"asked": asked, "tensor": tensor, "equal": ok}
        state.update(var=var, graph=graph, cases=cases)
        return {"setup_s": time.perf_counter() - t0, "rows": int(var.size().numpy()),
                "equal": {k: c["equal"] for k, c in cases.items()}}  # fmt: skip

    def lookup(dist: str, variant: str) -> dict:
        c = state["cases"][dist]
        if variant == "tfra":  # numpy in, numpy out, as shardemb's lookup
            t0 = time.perf_counter()
            state["var"].lookup(tf.constant(c["asked"])).numpy()
        else:  # a tensor already in TensorFlow, the graph's result left as a tensor
            t0 = time.perf_counter()
            out = state["graph"](c["tensor"])
            _ = out.shape  # eager CPU ops are done when they return
        return {"s": time.perf_counter() - t0}

    commands = {"versions": lambda: versions(), "setup_train": setup_train, "train": train,
                "setup_lookup": setup_lookup, "lookup": lookup}  # fmt: skip
    for line in sys.stdin:
        msg = json.loads(line)
        if msg["cmd"] == "quit":
            break
        try:
            out = {"ok": True, **commands[msg["cmd"]](*msg.get("args", []))}
        except Exception as err:  # sent back: the parent raises it with the child's log
            out = {"ok": False, "error": f"{type(err).__name__}: {err}"}
        answers.write(MARK + json.dumps(out) + "\n")
    return 0


# -- the parent: shardemb, and the child in alternation -------------------------------------
class _Child:
    """The TFRA child process: one JSON command per line in, one answer per line out."""

    def __init__(self, python: str, workdir: str):
        self.log_path = os.path.join(workdir, "tfra_child.log")
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        env.update(TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="3", PYTHONNOUSERSITE="1")
        self.log = open(self.log_path, "w")  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen([python, os.path.abspath(__file__), "--child"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, text=True, cwd=workdir, env=env)  # fmt: skip

    def __call__(self, cmd: str, *args) -> dict:
        self.proc.stdin.write(json.dumps({"cmd": cmd, "args": list(args)}) + "\n")
        self.proc.stdin.flush()
        for line in self.proc.stdout:
            if line.startswith(MARK):
                out = json.loads(line[len(MARK) :])
                if not out.pop("ok"):
                    raise RuntimeError(f"TFRA child, {cmd}: {out['error']}")
                return out
        raise RuntimeError(f"the TFRA child exited (code {self.proc.wait()}) during {cmd!r}; "
                           f"its log:\n{self._tail()}")  # fmt: skip

    def _tail(self, n: int = 4000) -> str:
        self.log.flush()
        with open(self.log_path) as f:
            return f.read()[-n:]

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def _start_ray() -> None:
    import ray

    if not ray.is_initialized():  # as benchmarks.run does: an embedded local runtime
        ray.init(num_cpus=max(2, os.cpu_count() or 2), include_dashboard=False,
                 logging_level="ERROR", log_to_driver=False)  # fmt: skip


def _train(child: _Child, workdir: str, size: dict, bar) -> dict:
    import keras

    import shardemb
    from benchmarks.common import zipf_ids
    from benchmarks.train_bench import _fit_steps, _free

    rng = np.random.default_rng(14)
    n = BATCH * (size["steps"] + 1)
    rounds = size["rounds"] + 1  # round 0: tracing, not kept
    data = [{"user": zipf_ids(rng, n, ROWS), "item": zipf_ids(rng, n, ROWS)}
            for _ in range(rounds)]  # fmt: skip
    y = rng.integers(0, 2, (n, 1)).astype(np.float32)
    np.savez(os.path.join(workdir, "train.npz"), y=y, rounds=rounds,
             **{f"{k}{r}": x[k] for r, x in enumerate(data) for k in ("user", "item")})  # fmt: skip
    tfra_setup = child("setup_train", workdir, 0)
    opt = {"name": "sgd", "learning_rate": LEARNING_RATE}
    # In one group, as the layers' own stores are by default (group="auto"): their shards
    # share 2 host processes, and a step's pushes are one exchange per host (rung on the
    # hosts' doorbells). ``own``: the same tables with actors of their own (group=None),
    # whose pushes are a Ray call per shard.
    stores, own = ([shardemb.EmbeddingStore.create(f"tfra-bench-{t}{tag}-{os.getpid()}", ROWS,
                                                   DIM, num_shards=SHARDS, optimizer=opt,
                                                   seed=i, group=group)
                    for i, t in enumerate(("users", "items"))]
                   for tag, group in (("", "auto"), ("-own", None)))  # fmt: skip

    def model(jit: bool, tables=stores):
        layers = [shardemb.ShardedEmbedding(ROWS, DIM, store=s, optimizer=opt, name=f"emb_{i}")
                  for i, s in enumerate(tables)]  # fmt: skip
        user = keras.Input((), dtype="int64", name="user")
        item = keras.Input((), dtype="int64", name="item")
        h = keras.layers.Concatenate()([layers[0](user), layers[1](item)])
        h = keras.layers.Dense(64, activation="relu")(h)
        m = keras.Model({"user": user, "item": item}, keras.layers.Dense(1)(h))
        m.compile(keras.optimizers.SGD(LEARNING_RATE),
                  keras.losses.BinaryCrossentropy(from_logits=True), jit_compile=jit)  # fmt: skip
        return m

    from shardemb.transport import bells

    models = {"sharded": model(False), "sharded_xla": model(True),
              "sharded_ray_pushes": model(False), "sharded_own": model(False, own)}  # fmt: skip

    fallbacks: list[str] = []

    def sharded(name):
        def fit(r):
            bells.RING_DOORBELLS = name != "sharded_ray_pushes"
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    steps = _fit_steps(models[name], data[r], y, BATCH)
                # shardemb warns when a model cannot run compiled and falls back to no XLA
                fallbacks.extend(str(w.message) for w in caught if "jit_compile" in str(w.message))
                for s in stores + own:
                    s.flush()  # a round's pushes are not left to the next variant's round
            finally:
                bells.RING_DOORBELLS = True
            return {"steps": steps}

        return fit

    runs = {**{k: sharded(k) for k in models}, "tfra": lambda r: child("train", r)}
    names = list(runs)
    times: dict[str, list[list[float]]] = {k: [] for k in names}
    trained = True
    try:
        for r in range(rounds):
            for k in names[r % len(names) :] + names[: r % len(names)]:
                out = runs[k](r)
                trained = trained and out.get("trained", True)
                if r:
                    times[k].append(out["steps"])
                bar.update(1)
    finally:
        models = None
        _free()
        for s in stores + own:
            s.close()
    med = {k: [float(np.median(t)) for t in v] for k, v in times.items()}
    res = {"rows": ROWS, "dim": DIM, "batch": BATCH, "shards": SHARDS, "optimizer": "sgd",
           "learning_rate": LEARNING_RATE, "steps_per_round": size["steps"],
           "rounds": size["rounds"], "tfra_rows": tfra_setup["rows"], "tfra_trained": trained,
           "xla_fallback_warnings": sorted(set(fallbacks)),
           "step_ms": {k: 1e3 * float(np.median(v)) for k, v in med.items()},
           "round_ms": {k: [1e3 * x for x in v] for k, v in med.items()}}  # fmt: skip
    res["ratio"] = {}
    for k in (k for k in med if k != "tfra"):
        per_round = [t / s for t, s in zip(med["tfra"], med[k], strict=True)]
        res["ratio"][k] = {"median": float(np.median(per_round)),
                           "min": float(min(per_round)), "max": float(max(per_round))}  # fmt: skip
    return res


def _lookup(child: _Child, workdir: str, size: dict, bar) -> dict:
    import shardemb
    from benchmarks.common import make_ids

    rng = np.random.default_rng(16)
    keys = np.unique(rng.integers(-(2**63), 2**63 - 1, ROWS + ROWS // 8, dtype=np.int64))
    keys = rng.permutation(keys)[:ROWS]  # the key of row r is keys[r]
    ids = {d: make_ids(d, rng, LOOKUP_KEYS, ROWS) for d in ("uniform", "zipf")}
    opt = {"name": "sgd", "learning_rate": 1e-3}
    stores = {}
    try:
        for backend in ("ray", "inprocess"):
            tag = "" if backend == "ray" else "_inprocess"
            fixed = shardemb.EmbeddingStore.create(f"tfra-lk-fixed{tag}-{os.getpid()}", ROWS,
                                                   DIM, num_shards=SHARDS, seed=0,
                                                   optimizer=opt, backend=backend)  # fmt: skip
            stores[f"fixed{tag}"] = fixed
            if backend == "ray":
                rows = fixed.to_numpy()
            else:
                fixed.set_weights(rows)
            dyn = shardemb.EmbeddingStore.create(
                f"tfra-lk-dyn{tag}-{os.getpid()}", vocab_size=None, dim=DIM, num_shards=SHARDS,
                seed=0, optimizer=opt, backend=backend)  # fmt: skip
            dyn.set_weights(keys, rows)
            stores[f"dynamic{tag}"] = dyn
        np.save(os.path.join(workdir, "keys.npy"), keys)
        np.save(os.path.join(workdir, "rows.npy"), rows)
        for d, i in ids.items():
            np.save(os.path.join(workdir, f"ids_{d}.npy"), i)
        tfra_setup = child("setup_lookup", workdir)
        cases = []
        for dist, i in ids.items():
            asked = keys[i]
            fns = {}
            for name, st in stores.items():
                q = asked if name.startswith("dynamic") else i
                assert np.array_equal(st.lookup(q), rows[i]), name
                fns[name] = lambda st=st, q=q: st.lookup(q)
            for v in ("tfra", "tfra_graph"):
                fns[v] = lambda v=v, dist=dist: child("lookup", dist, v)["s"]
            names = list(fns)
            times: dict[str, list[float]] = {n: [] for n in names}
            for r in range(size["reps"] + 2):  # 2 warm-up repetitions
                for n in names[r % len(names) :] + names[: r % len(names)]:
                    t0 = time.perf_counter()
                    got = fns[n]()
                    took = got if n.startswith("tfra") else time.perf_counter() - t0
                    if r >= 2:
                        times[n].append(took)
                bar.update(1)
            t = {n: np.asarray(v) for n, v in times.items()}
            case = {"dist": dist, "keys": LOOKUP_KEYS,
                    "distinct": float(np.unique(i).size / i.size), "ratio": {},
                    "ms": {n: 1e3 * float(np.median(v)) for n, v in t.items()}}  # fmt: skip
            for tf_name in ("tfra", "tfra_graph"):
                for sh in stores:
                    r = t[tf_name] / t[sh]
                    case["ratio"][f"{tf_name}/{sh}"] = {
                        "median": float(np.median(r)), "p10": float(np.percentile(r, 10)),
                        "p90": float(np.percentile(r, 90))}  # fmt: skip
            cases.append(case)
    finally:
        for st in stores.values():
            st.close()
    return {"rows": ROWS, "dim": DIM, "shards": SHARDS, "reps": size["reps"],
            "tfra_rows": tfra_setup["rows"], "tfra_equal": tfra_setup["equal"],
            "cases": cases}  # fmt: skip


TRAIN_LABELS = {
    "sharded": "ShardedEmbedding, jit_compile=False",
    "sharded_xla": "ShardedEmbedding, jit_compile=True",
    "sharded_ray_pushes": "ShardedEmbedding, pushes as Ray calls (no doorbell)",
    "sharded_own": "ShardedEmbedding, tables with actors of their own (group=None)",
}


def _report(res: dict) -> str:
    from benchmarks.report import _table, _x

    lines = [f"Run: `{res['command']}`, {res['date']}.",
             "shardemb side: " + ", ".join(f"{k} {v}" for k, v in res["versions"].items()),
             "TFRA side: " + ", ".join(f"{k} {v}" for k, v in res["tfra_versions"].items()),
             ""]  # fmt: skip
    if "train" in res:
        tr = res["train"]
        ms = tr["step_ms"]
        lines += [f"**Training step**, 2 x {tr['rows']:,} x {tr['dim']}, SGD, batch "
                  f"{tr['batch']:,} Zipf, {tr['rounds']} rounds x {tr['steps_per_round']} steps "
                  "(ratio: TFRA step / shardemb step, above 1x shardemb is faster):", "",
                  _table(["shardemb variant", "shardemb ms", "TFRA ms", "ratio",
                          "range over rounds"],
                         [[lab, f"{ms[k]:.1f}", f"{ms['tfra']:.1f}",
                           f"**{_x(tr['ratio'][k]['median'])}**",
                           f"{_x(tr['ratio'][k]['min'])} - {_x(tr['ratio'][k]['max'])}"]
                          for k, lab in TRAIN_LABELS.items() if k in ms]),
                  "", f"TFRA tables held {tr['tfra_rows']} rows; its training moved them: "
                  f"{tr['tfra_trained']}; XLA fall-back warnings: "
                  f"{tr['xla_fallback_warnings'] or 'none'}.", ""]  # fmt: skip
    if "lookup" in res:
        lk = res["lookup"]
        lines += [f"**Lookup** of {LOOKUP_KEYS:,} keys, all present, {lk['rows']:,} x {lk['dim']}, "
                  f"{lk['reps']} repetitions (ratio: TFRA time / shardemb time, above 1x "
                  "shardemb is faster; `tfra`: numpy in and out, `tfra_graph`: tf.function on "
                  "a tensor):", ""]  # fmt: skip
        rows = []
        for c in lk["cases"]:
            for sh in ("dynamic", "fixed", "dynamic_inprocess", "fixed_inprocess"):
                rows.append([c["dist"], sh, f"{c['ms'][sh]:.2f}", f"{c['ms']['tfra']:.2f}",
                             f"**{_x(c['ratio'][f'tfra/{sh}']['median'])}**",
                             f"{c['ms']['tfra_graph']:.2f}",
                             f"{_x(c['ratio'][f'tfra_graph/{sh}']['median'])}"])  # fmt: skip
        head = ["ids", "shardemb table", "shardemb ms", "tfra ms", "tfra / shardemb",
                "tfra_graph ms", "tfra_graph / shardemb"]  # fmt: skip
        lines += [_table(head, rows, "llrrrrr"), "",
                  f"TFRA variable held {lk['tfra_rows']:,} rows; its answers equal the rows: "
                  f"{lk['tfra_equal']}."]  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.tfra_bench",
                                description=__doc__.split("\n\n")[0])  # fmt: skip
    p.add_argument("--tfra-python", default=os.environ.get(ENV_VAR),
                   help=f"python of the TFRA venv (default: ${ENV_VAR})")  # fmt: skip
    p.add_argument("--quick", action="store_true", help="fewer rounds and repetitions")
    p.add_argument("--only", choices=("train", "lookup"), help="one of the two measurements")
    p.add_argument("--out", help="folder of results.json (default benchmarks/out/tfra-<time>/)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if not args.tfra_python:
        print(f"tfra_bench: no TFRA interpreter. Set {ENV_VAR} (or pass --tfra-python) to the "
              "python of a virtual environment with tensorflow==2.16.*, tf-keras==2.16.* and "
              "tensorflow-recommenders-addons; benchmarks/README.md (section TFRA) says how "
              "to make one.", file=sys.stderr)  # fmt: skip
        return 2
    if not os.access(args.tfra_python, os.X_OK):
        print(f"tfra_bench: {args.tfra_python!r} is not an executable python.", file=sys.stderr)
        return 2
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import datetime as dt
    import shlex

    from tqdm.auto import tqdm

    from benchmarks.common import git_revision, machine_info, versions

    size = SIZES["quick" if args.quick else "full"]
    now = dt.datetime.now(dt.UTC)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    # Absolute: the child runs in this folder, where a relative path would not resolve.
    out = os.path.abspath(args.out) if args.out else os.path.join(
        root, "benchmarks", "out", now.strftime("tfra-%Y%m%d-%H%M%S"))  # fmt: skip
    os.makedirs(out, exist_ok=True)
    shown = list(argv if argv is not None else sys.argv[1:])
    for i, a in enumerate(shown):  # the venv's path is this machine's: not in the report
        if a.startswith("--tfra-python="):
            shown[i] = f"--tfra-python=${ENV_VAR}"
        elif a == "--tfra-python" and i + 1 < len(shown):
            shown[i + 1] = f"${ENV_VAR}"
    res = {"command": "python -m benchmarks.tfra_bench " + shlex.join(shown),
           "date": now.strftime("%Y-%m-%d %H:%M UTC"), "revision": git_revision(),
           "machine": machine_info(), "versions": versions()}  # fmt: skip
    res["command"] = res["command"].strip()
    parts = [args.only] if args.only else ["train", "lookup"]
    total = (size["rounds"] + 1) * 3 * ("train" in parts) + 2 * (size["reps"] + 2) * (
        "lookup" in parts
    )
    child = _Child(args.tfra_python, out)
    try:
        res["tfra_versions"] = child("versions")
        _start_ray()
        with tqdm(total=total, desc="tfra", disable=args.no_progress, leave=False) as bar:
            t0 = time.perf_counter()
            if "train" in parts:
                res["train"] = _train(child, out, size, bar)
            if "lookup" in parts:
                res["lookup"] = _lookup(child, out, size, bar)
            res["seconds"] = time.perf_counter() - t0
    finally:
        child.close()
        for f in ("train.npz", "keys.npy", "rows.npy", "ids_uniform.npy", "ids_zipf.npy"):
            if os.path.exists(os.path.join(out, f)):
                os.remove(os.path.join(out, f))
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(res, f, indent=1, default=float)
    print(_report(res))
    print(f"\n(results: {os.path.join(out, 'results.json')}, {res['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        raise SystemExit(_child())
    raise SystemExit(main())
