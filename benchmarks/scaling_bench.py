"""Strong and weak scaling on a multi-node Ray cluster (by default a local one).

Section ``scaling``. Without ``--address`` the runner starts
:func:`shardemb.cluster.local_cluster` (several real Ray nodes, each its own raylet and
object store, all on this machine) and drives it from a child process
(``python -m benchmarks.scaling_bench``), since a process joins one Ray cluster only.
With ``--address`` it measures on that cluster from the runner itself.

- strong scaling: one table (fixed size), 1 to 8 shards spread over the nodes, lookup
  of 65,536 Zipf ids and push of the same, beside ``np.take`` on the same table;
- weak scaling: ``rows_per_shard`` rows and ``ids_per_shard`` uniform ids per shard, so
  the table and the batch grow with the shards; efficiency = rate(N) / (N x rate(1)).

All nodes of a local cluster share this machine's cores (stated next to the plot): past
the core count more shards only add processes competing for the same cores. Shards on one
host exchange rows through shared memory; ``transport="object_store"`` (full run) turns
that off in the benchmark driver, which is what shards on other hosts would use.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

from benchmarks.common import Context, interleaved, make_ids, ray_transfer_only, summarize

__all__ = ["measure", "run_scaling"]

SIZES = {
    "smoke": {"nodes": 2, "strong_rows": 20_000, "shards": [1, 2], "rows_per_shard": 10_000,
              "ids_per_shard": 2048, "batch": 4096, "reps": 3,
              "transports": ["shm", "object_store"]},
    "quick": {"nodes": 2, "strong_rows": 500_000, "shards": [1, 2, 4],
              "rows_per_shard": 100_000, "ids_per_shard": 16384, "batch": 65536, "reps": 5,
              "transports": ["shm"]},
    "full": {"nodes": 4, "strong_rows": 4_000_000, "shards": [1, 2, 4, 8],
             "rows_per_shard": 1_000_000, "ids_per_shard": 16384, "batch": 65536, "reps": 9,
             "transports": ["shm", "object_store"]},
}  # fmt: skip
DIM = 64
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _store(ctx: Context, what: str, rows: int, shards: int, transport: str):
    from benchmarks.lookup_bench import create_store
    from shardemb import ShardResources

    # A hundredth of a CPU per shard: Ray's SPREAD places zero-CPU actors arbitrarily
    # (several shards on one node while another stays empty), so the nodes would not count.
    store = create_store(ctx, what, rows, DIM, shards, resources=ShardResources(num_cpus=0.01))
    if transport == "object_store":
        ray_transfer_only(store)  # rows go through Ray, as from another node
    return store


def _point(store, table, ids, reps) -> dict:
    grads = np.full((ids.size, DIM), 1e-3, np.float32)

    def push():
        store.apply_gradients(ids, grads)
        store.flush()

    times = interleaved({"take": lambda: np.take(table, ids, axis=0),
                         "lookup": lambda: store.lookup(ids), "push": push}, reps)  # fmt: skip
    s = summarize(times, rows=ids.size, row_bytes=DIM * 4, ref="take")
    placement = store.placement()
    return {"nodes_used": len({p["node_id"] for p in placement}), "batch": int(ids.size),
            "placement": [p["node_id"][:8] for p in placement],
            "lookup_rows_per_s": s["lookup"]["rows_per_s"], "lookup_gbs": s["lookup"]["gbs"],
            "push_rows_per_s": s["push"]["rows_per_s"], "push_gbs": s["push"]["gbs"],
            "take_rows_per_s": s["take"]["rows_per_s"],
            "lookup_vs_take": s["lookup"]["vs_take"]}  # fmt: skip


def measure(ctx: Context) -> dict:
    """Both series on the Ray cluster this process is connected to."""
    import ray

    s = SIZES[ctx.mode]
    rng = np.random.default_rng(11)
    strong, weak = [], []
    cases = [("strong", t, n) for t in s["transports"] for n in s["shards"]]
    cases += [("weak", "shm", n) for n in s["shards"]]
    for kind, transport, shards in ctx.bar(cases, desc="scaling"):
        rows = s["strong_rows"] if kind == "strong" else s["rows_per_shard"] * shards
        start = time.perf_counter()
        store = _store(ctx, f"{kind}{shards}", rows, shards, transport)
        create_s = time.perf_counter() - start
        try:
            table = store.to_numpy()
            if kind == "strong":
                ids = make_ids("zipf", rng, s["batch"], rows)
            else:
                ids = make_ids("uniform", rng, s["ids_per_shard"] * shards, rows)
            point = _point(store, table, ids, s["reps"])
            table = None
        finally:
            store.close()
        row = {"shards": shards, "table_rows": rows, "transport": transport,
               "create_s": create_s, **point}  # fmt: skip
        (strong if kind == "strong" else weak).append(row)
    for series in (weak, *[[r for r in strong if r["transport"] == t] for t in s["transports"]]):
        base = next((r for r in series if r["shards"] == 1), None)
        for r in series:
            if base:
                r["lookup_speedup"] = r["lookup_rows_per_s"] / base["lookup_rows_per_s"]
                r["push_speedup"] = r["push_rows_per_s"] / base["push_rows_per_s"]
                r["lookup_efficiency"] = r["lookup_speedup"] / r["shards"]
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    return {"nodes": len(nodes), "cpus": sum(n["Resources"].get("CPU", 0) for n in nodes),
            "machine_cores": os.cpu_count(), "dim": DIM, "zipf_batch": s["batch"],
            "rows_per_shard": s["rows_per_shard"], "ids_per_shard": s["ids_per_shard"],
            "strong": strong, "weak": weak}  # fmt: skip


def run_scaling(ctx: Context) -> dict:
    if ctx.backend != "ray":
        return {"skipped": "scaling needs the Ray backend"}
    if ctx.address:
        out = measure(ctx)
        out["cluster"] = f"given: {ctx.address}"
        return out
    from shardemb.cluster import local_cluster

    s = SIZES[ctx.mode]
    path = os.path.join(ctx.out, "scaling_driver.json")
    start = time.perf_counter()
    with local_cluster(num_workers=s["nodes"] - 1, cpus_per_node=1) as info:
        up_s = time.perf_counter() - start
        cmd = [sys.executable, "-m", "benchmarks.scaling_bench", "--mode", ctx.mode,
               "--json", path, "--run-id", ctx.run_id]  # fmt: skip
        if not ctx.progress:
            cmd.append("--no-progress")
        env = {**os.environ, **info.env, "PYTHONPATH": os.pathsep.join(
            p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)}  # fmt: skip
        proc = subprocess.run(cmd, cwd=ROOT, env=env, timeout=3600)
        if proc.returncode != 0:
            raise RuntimeError(f"scaling driver failed with exit code {proc.returncode}")
    with open(path) as f:
        out = json.load(f)
    out["cluster"] = (f"shardemb.cluster.local_cluster: {s['nodes']} nodes x 1 CPU on one "
                      f"{os.cpu_count()}-core machine")  # fmt: skip
    out["cluster_up_s"] = up_s
    return out


def main(argv: list[str] | None = None) -> int:
    """The child driver: connects to ``RAY_ADDRESS`` and writes :func:`measure`'s JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", choices=list(SIZES), default="quick")
    p.add_argument("--json", required=True)
    p.add_argument("--run-id", default=None)
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    from shardemb.transport.backends import ensure_ray

    ensure_ray(os.environ.get("RAY_ADDRESS"))
    ctx = Context(mode=a.mode, address=os.environ.get("RAY_ADDRESS"),
                  progress=not a.no_progress)  # fmt: skip
    if a.run_id:
        ctx.run_id = a.run_id + "-s"
    result = measure(ctx)
    with open(a.json, "w") as f:
        json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
