"""Run the shardemb benchmarks: JSON, plots, and the tables of benchmarks/README.md.

    python -m benchmarks.run [--quick | --smoke] [--address HOST:PORT] [--out DIR]
                             [--only SECTION,...] [--skip SECTION,...] [--update-readme]
    shardemb bench [same arguments]          # from a source checkout

Sections: startup, bandwidth, headline, lookup, profile, memory, checkpoint, dynamic, scaling,
train, tables.
``--quick`` takes about 12 minutes on a 2-core machine; the full run prints its expected
duration first. Results go to ``--out`` (default ``benchmarks/out/<timestamp>/``):
``results.json`` (written after every section, so a stopped run keeps what it measured)
and one PNG per section. Nothing outside ``--out`` changes unless asked: with
``--update-readme`` the committed README's tables between ``<!-- results:NAME -->``
markers and its plots in ``benchmarks/img/`` are regenerated from the run (``--readme
PATH`` rewrites the tables of another copy instead). Ray is started once
(``ray.init(num_cpus=...)``) unless ``--address`` names a cluster.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import os
import shlex
import shutil
import sys
import time
import traceback

from benchmarks import report
from benchmarks.common import Context, git_revision, machine_info, versions
from benchmarks.dynamic_bench import block_dynamic
from benchmarks.startup_bench import block_startup
from benchmarks.tables_bench import block_tables

__all__ = ["SECTIONS", "main"]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "benchmarks", "README.md")
IMG = os.path.join(ROOT, "benchmarks", "img")

#: name -> (module, function); run in this order.
SECTIONS = {
    # First, on a machine no other section has loaded yet: fresh processes, each its own Ray.
    "startup": ("benchmarks.startup_bench", "run_startup"),
    "bandwidth": ("benchmarks.lookup_bench", "run_bandwidth"),
    "headline": ("benchmarks.lookup_bench", "run_headline"),
    "lookup": ("benchmarks.lookup_bench", "run_lookup"),
    "profile": ("benchmarks.profile_bench", "run_profile"),
    "memory": ("benchmarks.memory_bench", "run_memory"),
    "checkpoint": ("benchmarks.checkpoint_section", "run_checkpoint"),
    "dynamic": ("benchmarks.dynamic_bench", "run_dynamic"),  # in-process shards only
    "scaling": ("benchmarks.scaling_bench", "run_scaling"),
    # Last: it imports TensorFlow and holds Keras tables, which would blur the trainer's
    # memory measured by `memory`.
    "train": ("benchmarks.train_bench", "run_train"),
    "tables": ("benchmarks.tables_bench", "run_tables"),  # TensorFlow and Keras tables too
}
#: Seconds each section took on the 2-core, 24 GiB development machine (for the estimate;
#: measured 2026-11-28: quick 126 s in all, full 1265 s plus the Keras 10M Adagrad baseline;
#: tables re-measured 2026-12-03 with its 2 x 10M x 64 model: quick 473 s).
EXPECTED_S = {
    "smoke": {"startup": 2, "bandwidth": 1, "headline": 1, "lookup": 2, "profile": 1,
              "train": 8, "memory": 1, "checkpoint": 2, "dynamic": 2, "scaling": 40,
              "tables": 15},
    "quick": {"startup": 75, "bandwidth": 1, "headline": 5, "lookup": 11, "profile": 4,
              "train": 42, "memory": 8, "checkpoint": 14, "dynamic": 30, "scaling": 35,
              "tables": 480},
    "full": {"startup": 185, "bandwidth": 5, "headline": 10, "lookup": 420, "profile": 40,
             "train": 420, "memory": 130, "checkpoint": 225, "dynamic": 60, "scaling": 185,
             "tables": 1100},
}  # fmt: skip
#: Sections the in-process backend cannot run meaningfully.
RAY_ONLY = ("scaling",)
#: Sections that start processes with Ray runtimes of their own: the runner's is not needed.
OWN_RUNTIMES = ("startup",)
report.BLOCKS.setdefault("startup", block_startup)  # its README table
report.BLOCKS.setdefault("dynamic", block_dynamic)
report.BLOCKS.setdefault("tables", block_tables)


def parse_args(argv: list[str] | None, prog: str | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=prog or "python -m benchmarks.run",
                                description=__doc__.splitlines()[0])  # fmt: skip
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small sizes, about 12 minutes")
    size.add_argument(
        "--smoke",
        action="store_true",
        help="tiny sizes, seconds; in-process shards unless --backend ray",
    )
    p.add_argument("--address", help="Ray cluster to use (default: start a local runtime)")
    p.add_argument(
        "--backend",
        choices=["ray", "inprocess"],
        default=None,
        help="where shards run (default: ray; inprocess with --smoke)",
    )
    p.add_argument("--out", help="output folder (default: benchmarks/out/<timestamp>/)")
    p.add_argument("--only", help=f"comma-separated sections: {','.join(SECTIONS)}")
    p.add_argument("--skip", help="comma-separated sections to leave out")
    readme = p.add_mutually_exclusive_group()
    readme.add_argument(
        "--update-readme",
        action="store_true",
        help="rewrite the tables and plots of the committed benchmarks/README.md",
    )
    readme.add_argument("--readme", help="rewrite the tables of this README (a copy) instead")
    readme.add_argument("--no-readme", action="store_true", help=argparse.SUPPRESS)  # default
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--num-cpus",
        type=int,
        default=None,
        help="CPUs of the local Ray runtime (default: this machine's, at least 2)",
    )
    p.add_argument(
        "--render",
        metavar="RESULTS_JSON",
        help="measure nothing: rewrite the README and plots from a run's JSON",
    )
    a = p.parse_args(argv)
    a.mode = "smoke" if a.smoke else "quick" if a.quick else "full"
    a.backend = a.backend or ("inprocess" if a.smoke else "ray")
    if a.address and a.backend != "ray":
        p.error("--address needs the Ray backend")
    chosen = list(SECTIONS)
    for flag in ("only", "skip"):
        names = [n.strip() for n in (getattr(a, flag) or "").split(",") if n.strip()]
        bad = [n for n in names if n not in SECTIONS]
        if bad:
            p.error(f"--{flag}: unknown section(s) {bad}; choose from {list(SECTIONS)}")
        if names and flag == "only":
            chosen = [n for n in SECTIONS if n in names]
        elif names:
            chosen = [n for n in chosen if n not in names]
    if a.backend != "ray":
        chosen = [n for n in chosen if n not in RAY_ONLY]
    a.sections = chosen
    return a


def _start_ray(args) -> bool:
    """Connect to ``--address`` or start a local runtime; True if this run started it."""
    if args.backend != "ray" or all(s in OWN_RUNTIMES for s in args.sections):
        return False
    import ray

    from shardemb.transport.backends import ensure_ray

    if args.address:
        ensure_ray(args.address)
        return False
    if not ray.is_initialized():
        ray.init(num_cpus=args.num_cpus or max(2, os.cpu_count() or 2), include_dashboard=False,
                 logging_level="ERROR", log_to_driver=False)  # fmt: skip
        return True
    return False


def _write_json(path: str, obj: dict) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, default=float)
    os.replace(tmp, path)


def _target(target) -> str:
    """`` (target 2x)``, or nothing for a size that has no target (``--smoke``)."""
    return "" if target is None else f" (target {target}x)"


def _goal(goal) -> str:
    """`` (goal <= 1.3x)``, or nothing without a goal (``--smoke``)."""
    return "" if goal is None else f" (goal <= {goal}x)"


def _summary(results: dict) -> list[str]:
    """The headline numbers, one line each."""
    lines = []
    st = results.get("startup", {})
    if "start_ratio" in st:
        goals = st.get("goals") or {}
        how = "" if st.get("backend") == "ray" else " (in-process, no Ray: means nothing)"
        lines.append(f"start-up to first lookup: {st['start_ratio']:.2f}x bare ray.init()"
                     f"{_goal(goals.get('start'))}; exit: {st['exit_ratio']:.2f}x bare "
                     f"ray.shutdown(){_goal(goals.get('exit'))}{how}")  # fmt: skip
    if "bandwidth" in results and "gbs" in results["bandwidth"]:
        lines.append(f"memory copy: {results['bandwidth']['gbs']:.2f} GB/s")
    h = results.get("headline", {})
    for m in h.get("modes", []):
        lines.append(f"headline lookup ({h['ids']:,} Zipf ids, {h['table_rows']:,} x {h['dim']},"
                     f" {h['shards']} shards, {m['backend']}) dedup={m['dedup']}: "
                     f"{m['ratio']:.2f}x np.take{_target(h.get('target'))}")  # fmt: skip
    for c in results.get("train", {}).get("cases", []):
        keras = c.get("keras_steps_per_s")
        vs = (f"{keras:.2f} steps/s = {c['ratio']:.2f}x keras" if keras
              else f"keras n/a ({c.get('keras_error')})")  # fmt: skip
        target = _target(c.get("target"))
        lines.append(f"train {c['model']} {c['rows']:,} rows {c['optimizer']}: "
                     f"{c['sharded_steps_per_s']:.2f} vs {vs}{target}")  # fmt: skip
    for name, r in results.items():
        if isinstance(r, dict) and "error" in r:
            lines.append(f"{name}: FAILED ({r['error']})")
    return lines


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = parse_args(argv, prog)
    if args.render:
        return _render(args)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    stamp = dt.datetime.now(dt.UTC)
    out = args.out or os.path.join(ROOT, "benchmarks", "out", stamp.strftime("%Y%m%d-%H%M%S"))
    os.makedirs(out, exist_ok=True)
    expected = sum(EXPECTED_S[args.mode][s] for s in args.sections)
    shown = prog or "python -m benchmarks.run"
    command = " ".join([shown, *map(shlex.quote, sys.argv[1:] if argv is None else argv)])
    print(f"shardemb benchmarks ({args.mode}): {', '.join(args.sections)}", flush=True)
    print(f"expected duration: about {expected / 60:.0f} min ({expected} s) on a 2-core "
          f"machine; results in {out}", flush=True)  # fmt: skip
    meta = {"command": command, "mode": args.mode, "backend": args.backend,
            "address": args.address, "date": stamp.strftime("%Y-%m-%d %H:%M UTC"),
            "machine": machine_info(), "versions": versions(), "revision": git_revision(),
            "sections": args.sections, "durations": {}, "expected_s": expected}  # fmt: skip
    ctx = Context(mode=args.mode, backend=args.backend, address=args.address, out=out,
                  progress=not args.no_progress)  # fmt: skip
    results: dict = {}
    path = os.path.join(out, "results.json")
    t0 = time.perf_counter()
    started = _start_ray(args)
    meta["ray_start_s"] = time.perf_counter() - t0
    try:
        for name in args.sections:
            module, fn = SECTIONS[name]
            start = time.perf_counter()
            print(f"[{name}] ...", flush=True)
            try:
                results[name] = getattr(importlib.import_module(module), fn)(ctx)
            except Exception as err:  # noqa: BLE001 - one failed section must not lose the rest
                traceback.print_exc()
                results[name] = {"error": f"{type(err).__name__}: {str(err)[:500]}"}
            meta["durations"][name] = time.perf_counter() - start
            print(f"[{name}] {meta['durations'][name]:.1f} s", flush=True)
            _write_json(path, {"meta": meta, **results})
    finally:
        if started:
            import ray

            ray.shutdown()
    meta["total_s"] = time.perf_counter() - t0
    meta["loadavg_end"] = list(os.getloadavg())
    _write_json(path, {"meta": meta, **results})
    _finish(args, results, meta, out)
    print("\n".join(_summary(results)))
    print(f"total {meta['total_s']:.0f} s (expected {expected} s); results: {path}")
    return 1 if any("error" in r for r in results.values()) else 0


def _render(args) -> int:
    """README and plots from an earlier run's results.json (the numbers are that run's)."""
    with open(args.render) as f:
        results = json.load(f)
    meta = results.pop("meta")
    if args.only or args.skip:  # re-render just those sections (and the run summary)
        results = {k: v for k, v in results.items() if k in args.sections}
    args.mode = meta["mode"]
    out = args.out or os.path.dirname(os.path.abspath(args.render))
    os.makedirs(out, exist_ok=True)
    _finish(args, results, meta, out)
    return 0


def _finish(args, results: dict, meta: dict, out: str) -> None:
    from benchmarks.plots import plot_all
    from benchmarks.report import update_readme

    pngs = plot_all(results, out, meta["machine"]["logical_cores"])
    readme = args.readme or (README if args.update_readme else None)
    if readme:
        if readme == README:  # the README shows the plots of the run that wrote it
            os.makedirs(IMG, exist_ok=True)
            for png in pngs:
                shutil.copy(png, IMG)
        done = update_readme(readme, results, meta)
        print(f"README tables regenerated: {', '.join(done)} ({readme})")


if __name__ == "__main__":
    raise SystemExit(main())
