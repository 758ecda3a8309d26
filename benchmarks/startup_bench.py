"""Start-up and exit time of a script that uses shardemb, beside bare Ray scripts.

Section ``startup``. Each round runs these scripts, each in a fresh Python process with no
``RAY_ADDRESS`` (so each starts its own embedded Ray runtime, as a user's first script
would), in a rotating order:

- ``ray``: ``import ray`` and ``ray.init()``, with the arguments shardemb's embedded
  default uses (``address="local"``, no dashboard); its last line is ``ray.shutdown()``;
- ``ray_actors``: the same, plus one empty actor per shard, created and pinged: Ray's own
  cost of the worker processes a table's shards need;
- ``shardemb``: ``import shardemb``, ``EmbeddingStore.create`` of a new table, its first
  ``lookup``; then the script ends, without ``close`` (the table dies with the process).

Start-up is the time from the script's first line to ``ray.init`` returning (to the actors
answering, to the first lookup returning). Exit is the time from the script's last line
(a timestamp it writes) to this process seeing it end. Ratios are the medians over rounds
of the per-round ratio of times (lower is better). Goals: start-up <= 1.3x the bare
``ray.init()`` script's, exit <= 1.5x the bare ``ray.shutdown()`` script's.

With the in-process backend (``--smoke``) the scripts run without Ray (``import ray`` only,
shards in the process): the harness runs, the numbers mean nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np

from benchmarks.common import Context

__all__ = ["GOALS", "KINDS", "block_startup", "run_child", "run_startup", "summarize"]

KINDS = ("ray", "ray_actors", "shardemb")
GOALS = {"start": 1.3, "exit": 1.5}
SIZES = {
    "smoke": {"rounds": 1, "rows": 1_000, "dim": 8, "shards": 2},
    "quick": {"rounds": 2, "rows": 100_000, "dim": 64, "shards": 4},
    "full": {"rounds": 5, "rows": 100_000, "dim": 64, "shards": 4},
}
CHILD_TIMEOUT_S = 300
LOOKUP_IDS = 64

# One script for every kind: argv is the kind, the JSON parameters and the result file.
_CHILD = r"""
import json, sys, time
t0 = time.time()
kind, p, path = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
out = {}
if kind == "shardemb":
    import numpy as np
    import shardemb
    out["import_s"] = time.time() - t0
    from shardemb.transport import backends
    connect = backends.RayBackend.__init__  # `import ray` and `ensure_ray`
    def timed_connect(self, *args):  # only to tell Ray's start-up from the shards' in create
        start = time.time()
        connect(self, *args)
        out["ray_init_s"] = time.time() - start
    backends.RayBackend.__init__ = timed_connect
    store = shardemb.EmbeddingStore.create(
        "startup", p["rows"], p["dim"], num_shards=p["shards"], seed=0, backend=p["backend"])
    out["create_s"] = time.time() - t0 - out["import_s"]
    out["shards_s"] = out["create_s"] - out.get("ray_init_s", 0.0)
    store.lookup(np.arange(p["ids"]) % p["rows"])
    out["start_s"] = time.time() - t0
    out["first_lookup_s"] = out["start_s"] - out["import_s"] - out["create_s"]
else:
    import ray
    out["import_s"] = time.time() - t0
    if p["ray"]:
        ray.init(address="local", include_dashboard=False, logging_level="WARNING")
    out["init_s"] = time.time() - t0 - out["import_s"]
    if kind == "ray_actors" and p["ray"]:
        @ray.remote(num_cpus=0.01)
        class Empty:
            def ping(self):
                return 0
        actors = [Empty.options(scheduling_strategy="SPREAD").remote()
                  for _ in range(p["shards"])]
        ray.get([a.ping.remote() for a in actors])
        out["actors_s"] = time.time() - t0 - out["import_s"] - out["init_s"]
    out["start_s"] = time.time() - t0
out["last"] = time.time()
with open(path, "w") as f:
    json.dump(out, f)
if kind != "shardemb" and p["ray"]:
    ray.shutdown()
"""


def run_child(kind: str, params: dict, folder: str, tag: str) -> dict:
    """Run one script in a fresh process; its phases, ``start_s`` and ``exit_s``."""
    result, log = os.path.join(folder, f"{tag}.json"), os.path.join(folder, f"{tag}.err")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD, kind, json.dumps(params), result],
            stdin=subprocess.DEVNULL,
            stdout=err,
            stderr=subprocess.STDOUT,
            cwd=folder,
            env=env,
        )
        try:
            rc = proc.wait(timeout=CHILD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            rc = None
    ended = time.time()
    if rc != 0:
        with open(log) as f:
            tail = f.read()[-1500:]
        how = f"did not end within {CHILD_TIMEOUT_S} s" if rc is None else f"exited with {rc}"
        raise RuntimeError(f"the {kind!r} start-up script {how}; its output ends:\n{tail}")
    with open(result) as f:
        out = json.load(f)
    out["exit_s"] = ended - out.pop("last")
    return out


def ratio(runs: list[dict], base: list[dict], what: str) -> float:
    """Median over rounds of ``runs``' time ``what`` (``start``, ``exit``) / ``base``'s."""
    key = f"{what}_s"
    return float(np.median([r[key] / b[key] for r, b in zip(runs, base, strict=True)]))


def summarize(runs: dict[str, list[dict]], sizes: dict, backend: str = "ray") -> dict:
    """The section's result from the rounds' ``runs`` (kind -> one dict per round): per
    kind the median of each time, the ratios of each kind to ``ray``, shardemb's ratios to
    ``ray_actors``, and whether shardemb meets the goals (with Ray only)."""
    kinds: dict = {}
    for kind, rows in runs.items():
        kinds[kind] = {k: float(np.median([r[k] for r in rows])) for k in rows[0]}
        for what in ("start", "exit") if kind != "ray" else ():
            kinds[kind][f"{what}_ratio"] = ratio(rows, runs["ray"], what)
    mine, with_ray = kinds["shardemb"], backend == "ray"
    out = {"rounds": len(runs["ray"]), "table_rows": sizes["rows"], "dim": sizes["dim"],
           "shards": sizes["shards"], "lookup_ids": LOOKUP_IDS, "backend": backend,
           "goals": GOALS if with_ray else None, "kinds": kinds, "runs": runs,
           "start_ratio": mine["start_ratio"], "exit_ratio": mine["exit_ratio"]}  # fmt: skip
    if "ray_actors" in runs:  # what is left once Ray's own worker processes are counted
        for what in ("start", "exit"):
            out[f"{what}_vs_actors"] = ratio(runs["shardemb"], runs["ray_actors"], what)
    if with_ray:
        for what in ("start", "exit"):
            out[f"meets_{what}_goal"] = mine[f"{what}_ratio"] <= GOALS[what]
    return out


def run_startup(ctx: Context) -> dict:
    s = SIZES[ctx.mode]
    with_ray = ctx.backend == "ray"
    kinds = list(KINDS) if with_ray else ["ray", "shardemb"]
    params = {"rows": s["rows"], "dim": s["dim"], "shards": s["shards"], "ids": LOOKUP_IDS,
              "backend": ctx.backend, "ray": with_ray}  # fmt: skip
    folder = os.path.join(os.path.abspath(ctx.out), "startup")
    os.makedirs(folder, exist_ok=True)
    runs: dict[str, list[dict]] = {k: [] for k in kinds}
    rotations = [kinds[r % len(kinds) :] + kinds[: r % len(kinds)] for r in range(s["rounds"])]
    order = [(r, kind) for r, kinds_now in enumerate(rotations) for kind in kinds_now]
    for r, kind in ctx.bar(order, desc="startup"):
        runs[kind].append(run_child(kind, params, folder, f"{kind}-{r}"))
    return summarize(runs, s, ctx.backend)


def _x(r: float) -> str:
    return f"{r:.2f}x"


def block_startup(r: dict, meta: dict) -> str:
    """The README table of a ``startup`` result."""
    k, goals = r["kinds"], r.get("goals")

    def vs(kind: str, what: str) -> str:
        if kind == "ray":
            return "1.00x"
        if kind != "shardemb":
            return _x(k[kind][f"{what}_ratio"])
        met = r.get(f"meets_{what}_goal")
        goal = "" if met is None else f" (goal <= {goals[what]}x: {'met' if met else 'not met'})"
        return f"**{_x(k[kind][f'{what}_ratio'])}**{goal}"

    def phases(kind: str, p: dict) -> str:
        if kind == "shardemb":
            return (f"import {p['import_s']:.2f}, Ray's import and start "
                    f"{p.get('ray_init_s', 0):.2f}, shards {p['shards_s']:.2f}, first lookup "
                    f"{p['first_lookup_s']:.2f}")  # fmt: skip
        actors = f", actors {p['actors_s']:.2f}" if "actors_s" in p else ""
        return f"import {p['import_s']:.2f}, ray.init {p['init_s']:.2f}{actors}"

    names = {
        "ray": "bare Ray: `import ray; ray.init()` ... `ray.shutdown()`",
        "ray_actors": f"bare Ray + {r['shards']} empty actors, pinged",
        "shardemb": f"`import shardemb`, create {r['table_rows']:,} x {r['dim']} on "
        f"{r['shards']} shards, first lookup of {r['lookup_ids']} ids",
    }
    rows = [[names[kind], f"{k[kind]['start_s']:.2f}", vs(kind, "start"),
             f"{k[kind]['exit_s']:.2f}", vs(kind, "exit"), phases(kind, k[kind])]
            for kind in KINDS if kind in k]  # fmt: skip
    header = ["script", "start-up s", "vs bare ray.init()", "exit s", "vs bare ray.shutdown()",
              "start-up phases (s)"]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "| --- | ---: | ---: | ---: | ---: | --- |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    if "start_vs_actors" in r:
        lines += [
            "",
            f"Against the bare script with {r['shards']} empty actors (Ray's own cost of the "
            f"shards' worker processes), shardemb's start-up is "
            f"**{_x(r['start_vs_actors'])}** and its exit {_x(r['exit_vs_actors'])}.",
        ]
    return "\n".join([
        f"Each script in a fresh process with its own embedded Ray runtime, {r['rounds']} "
        "rounds in a rotating order; medians. Start-up: from the script's first line to "
        "its last step returning. Exit: from its last line to the process's end. Ratios: "
        "median over rounds of this script's time / the bare Ray script's (lower is better).",
        "", *lines,
    ])  # fmt: skip
