"""Markdown tables for benchmarks/README.md, from the run's JSON.

Each section's table sits between ``<!-- results:NAME -->`` and ``<!-- /results:NAME -->``
in the README and is replaced wholesale by :func:`update_readme`, with the command, date,
machine and library versions of the run that produced it written above it. Sections not
run are left as they were (each keeps its own provenance line).
"""

from __future__ import annotations

import re

from benchmarks.common import fmt_bytes, fmt_rate

__all__ = ["BLOCKS", "provenance", "render", "update_readme"]


def provenance(meta: dict, section: str | None = None) -> str:
    m, v = meta["machine"], meta["versions"]
    took = meta.get("durations", {}).get(section) if section else None
    took_s = f", section took {took:.0f} s" if took is not None else ""
    load = ", ".join(f"{x:.1f}" for x in m["loadavg"])
    return (
        f"_Measured by `{meta['command']}` on {meta['date']} (revision {meta['revision']}"
        f"{took_s}). Machine: {m['cpu']}, {m['logical_cores']} logical cores, "
        f"{m['ram_bytes'] / 2**30:.1f} GiB RAM, {m['os']}; load average at start {load}. "
        f"Versions: numpy {v['numpy']}, tensorflow {v['tensorflow']}, keras {v['keras']}, "
        f"ray {v['ray']}, zarr {v['zarr']}, python {v['python']}._"
    )


def _table(header: list[str], rows: list[list], align: str | None = None) -> str:
    align = align or "l" + "r" * (len(header) - 1)
    sep = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _x(r: float) -> str:
    return f"{r:.2f}x"


def block_meta(res: dict, meta: dict) -> str:
    d = meta.get("durations", {})
    rows = [[k, f"{v:.0f}", "error" if "error" in res.get(k, {}) else "ok"] for k, v in d.items()]
    total = meta.get("total_s")
    return "\n".join([
        f"Run: `{meta['command']}`, mode `{meta['mode']}`, {meta['date']}, total {total:.0f} s "
        f"(expected {meta.get('expected_s', 0):.0f} s)." if total else f"Run: `{meta['command']}`.",
        "",
        _table(["section", "seconds", "status"], rows),
    ])  # fmt: skip


def block_bandwidth(r: dict, meta: dict) -> str:
    return (
        f"`np.copyto` of {fmt_bytes(r['bytes'])}: **{r['gbs']:.2f} GB/s** median "
        f"(best {r['best_gbs']:.2f} GB/s, {r['reps']} repetitions), counting bytes copied "
        "(each is read once and written once). No lookup can beat this rate of output bytes."
    )


def _pivot(rows: list[dict], op: str, dim: int) -> str:
    sel = [r for r in rows if r["op"] == op and r["dim"] == dim]
    shards = sorted({r["shards"] for r in sel})
    keys = sorted({(r["dist"], r["batch"]) for r in sel}, key=lambda k: (k[0], k[1]))
    ref = "np.take" if op == "lookup" else "np.add.at"
    out = []
    for dist, batch in keys:
        cells = {r["shards"]: r for r in sel if r["dist"] == dist and r["batch"] == batch}
        any_r = next(iter(cells.values()))
        line = [dist, f"{batch:,}", f"{any_r['unique_frac']:.2f}"]
        line += [f"{_x(cells[s]['ratio'])} ({cells[s]['store_gbs']:.2f} GB/s)" if s in cells
                 else "" for s in shards]  # fmt: skip
        refs = [c["ref_gbs"] for c in cells.values()]
        copies = [c["copy_gbs"] for c in cells.values()]
        line += [f"{sorted(refs)[len(refs) // 2]:.2f}", f"{sorted(copies)[len(copies) // 2]:.2f}"]
        out.append(line)
    header = ["ids", "batch", "distinct", *[f"{s} shard{'s' if s > 1 else ''}" for s in shards],
              f"{ref} GB/s", "copy GB/s"]  # fmt: skip
    return _table(header, out, "lrr" + "r" * (len(shards) + 2))


def _by_dim(rows: list[dict], op: str, shards: int) -> str:
    sel = [r for r in rows if r["op"] == op and r["shards"] == shards]
    batches = sorted({r["batch"] for r in sel})
    out = []
    for dist, dim in sorted({(r["dist"], r["dim"]) for r in sel}):
        cells = {r["batch"]: r for r in sel if r["dist"] == dist and r["dim"] == dim}
        out.append([dist, dim] + [f"{_x(cells[b]['ratio'])} ({cells[b]['store_gbs']:.2f})"
                                  if b in cells else "" for b in batches])  # fmt: skip
    return _table(["ids", "dim", *[f"{b:,}" for b in batches]], out)


def block_lookup(r: dict, meta: dict) -> str:
    rows = r["rows"]
    dims = sorted({x["dim"] for x in rows})
    dim = 64 if 64 in dims else dims[0]
    shards_all = sorted({x["shards"] for x in rows})
    mid = 2 if 2 in shards_all else shards_all[0]
    parts = [
        f"Table {r['table_rows']:,} rows, float32, SGD; Zipf exponent {r['zipf_exponent']}. "
        "Each cell: store throughput as a fraction of the in-process reference on the same "
        "table (median of per-repetition ratios, reference and store interleaved), and the "
        "store's GB/s of rows. `distinct`: distinct ids / ids. `copy`: `np.copyto` of the "
        "same bytes in the same loop.",
        "",
        f"**Lookup** (`store.lookup` vs `np.take`), dim {dim}:",
        "",
        _pivot(rows, "lookup", dim),
        "",
        f"**Push** (`apply_gradients` + `flush`, SGD, vs `np.add.at`), dim {dim}:",
        "",
        _pivot(rows, "push", dim),
    ]
    if len(dims) > 1:
        parts += ["", f"By dim, {mid} shards, ratio (store GB/s), lookup:", "",
                  _by_dim(rows, "lookup", mid), "", f"By dim, {mid} shards, push:", "",
                  _by_dim(rows, "push", mid)]  # fmt: skip
    parts += ["", "![lookup](img/lookup.png)"]
    return "\n".join(parts)


def block_headline(r: dict, meta: dict) -> str:
    rows = [[m.get("backend", "ray"), m["dedup"], f"{m['store_s'] * 1e3:.2f}",
             f"{m['store_gbs']:.2f}", f"**{_x(m['ratio'])}**",
             f"{_x(m['p10_ratio'])} - {_x(m['p90_ratio'])}", f"{_x(m['vs_copy'])}",
             "yes" if m["meets_target"] else "no"] for m in r["modes"]]  # fmt: skip
    return "\n".join([
        f"{r['ids']:,} Zipf ids ({r['unique_frac']:.0%} distinct) from a "
        f"{r['table_rows']:,} x {r['dim']} float32 table on {r['shards']} local shards, "
        f"{r['reps']} interleaved repetitions. `np.take` on the same table: "
        f"{r['take_s'] * 1e3:.2f} ms ({r['take_gbs']:.2f} GB/s); copy of the same bytes: "
        f"{r['copy_gbs']:.2f} GB/s. Target: >= {r['target']}x `np.take`. The `inprocess` "
        "row is the same table with the shards in the calling process (no Ray): the "
        "router's own cost.", "",
        _table(["backend", "dedup", "ms", "GB/s", "vs np.take", "p10 - p90", "vs copy",
                f">= {r['target']}x"], rows, "llrrrrrr"),
    ])  # fmt: skip


def block_train(r: dict, meta: dict) -> str:
    rows = []
    for c in r["cases"]:
        floor, keras = c.get("floor_steps_per_s"), c.get("keras_steps_per_s")
        peak = c.get("keras_peak_rss")
        rows.append([
            c["model"], f"{c['rows']:,}", c["optimizer"], f"{c['sharded_steps_per_s']:.2f}",
            f"{keras:.2f}" if keras else c.get("keras_error", "n/a"),
            f"**{_x(c['ratio'])}**" if c["ratio"] else "n/a",
            f"{floor:.2f}" if floor else "", _x(c["best_possible_ratio"])
            if "best_possible_ratio" in c else "", f"{c['target']}x" if c["target"] else "",
            ("yes" if c.get("meets_target") else "no") if "meets_target" in c else "",
            "interleaved" if c["interleaved"] else "one after the other",
            fmt_bytes(peak) if peak else "",
        ])  # fmt: skip
    models = "; ".join(f"`{k}`: {v}" for k, v in r["models"].items())
    return "\n".join([
        f"Models: {models}. Two tables of `rows x {r['dim']}` float32, batch {r['batch']:,} "
        f"of Zipf ids, `model.fit`, {r['shards_per_table']} shards per table, learning rate "
        f"{r['learning_rate']}. Steps/s from the median step time; the ratio is the median "
        "over rounds of (Keras step time / sharded step time) when the two alternate round "
        "by round, else the ratio of the medians. `floor`: the same model on 1,000-row "
        "Keras tables, i.e. everything but the tables; `best possible` = Keras step time / "
        "floor step time. When both do not fit in memory together, Keras trains first in a "
        "child process (`Keras peak RSS` is that process's), then the sharded tables.", "",
        _table(["model", "rows/table", "optimizer", "ShardedEmbedding steps/s",
                "keras Embedding steps/s", "ratio", "floor steps/s", "best possible", "target",
                "met", "schedule", "Keras peak RSS"], rows, "lrlrrrrrrllr"),
        "", "![train](img/train.png)",
    ])  # fmt: skip


def block_scaling(r: dict, meta: dict) -> str:
    if "skipped" in r:
        return f"Skipped: {r['skipped']}."
    cores = r["machine_cores"]
    head = (
        f"**This machine has {cores} cores.** Cluster: {r['cluster']}. All nodes share those "
        f"{cores} cores, so beyond {cores} busy processes more shards cannot add throughput "
        "here; these curves show overheads, not what a real cluster would do."
    )
    strong = [[s["transport"], s["shards"], s["nodes_used"], f"{s['table_rows']:,}",
               fmt_rate(s["lookup_rows_per_s"]), f"{s['lookup_gbs']:.2f}",
               _x(s.get("lookup_speedup", float("nan"))), _x(s["lookup_vs_take"]),
               fmt_rate(s["push_rows_per_s"]), _x(s.get("push_speedup", float("nan")))]
              for s in r["strong"]]  # fmt: skip
    weak = [[s["shards"], s["nodes_used"], f"{s['table_rows']:,}", f"{s['batch']:,}",
             fmt_rate(s["lookup_rows_per_s"]), f"{s.get('lookup_efficiency', 0):.0%}",
             fmt_rate(s["push_rows_per_s"]), _x(s["lookup_vs_take"])]
            for s in r["weak"]]  # fmt: skip
    return "\n".join([
        head, "",
        f"Strong scaling: fixed table, {r['zipf_batch']:,} Zipf ids per lookup/push, dim "
        f"{r['dim']} (speedup vs 1 shard; `vs np.take`: in the driver, same table):", "",
        _table(["transport", "shards", "nodes", "rows", "lookup rows/s", "GB/s", "speedup",
                "vs np.take", "push rows/s", "push speedup"], strong, "lrrrrrrrrr"), "",
        f"Weak scaling: {r['rows_per_shard']:,} rows and {r['ids_per_shard']:,} uniform ids "
        "per shard (efficiency = rate / (shards x rate at 1 shard)):", "",
        _table(["shards", "nodes", "rows", "batch", "lookup rows/s", "efficiency",
                "push rows/s", "vs np.take"], weak, "r" * 8), "",
        "![scaling](img/scaling.png)",
    ])  # fmt: skip


def block_checkpoint(r: dict, meta: dict) -> str:
    rows = []
    for s in r["sizes"]:
        if "skipped" in s:
            rows.append([f"{s['rows']:,}", "", s["skipped"]] + [""] * 6)
            continue
        start = s.get("shard_start_s")
        read = s.get("restore_read_gbs")
        rows.append([
            f"{s['rows']:,}", fmt_bytes(s["bytes"]),
            f"{s['np_save_s']:.2f} ({s['np_save_gbs']:.2f})",
            f"{s['save_s']:.2f} ({s['save_gbs']:.2f}) {_x(s['save_vs_np_save'])}",
            f"{s['np_load_s']:.2f} ({s['np_load_gbs']:.2f})",
            f"{s['restore_s']:.2f} ({s['restore_gbs']:.2f}) {_x(s['restore_vs_np_load'])}",
            f"{start:.2f} s; {read:.2f} GB/s" if start is not None and read else "",
            f"{s['reshard_restore_s']:.2f} ({s['bytes'] / s['reshard_restore_s'] / 1e9:.2f})",
            s["reshard_to"],
        ])  # fmt: skip
    shards = next((s["shards"] for s in r["sizes"] if "shards" in s), "?")
    repeat = next((s.get("repeat") for s in r["sizes"] if s.get("repeat")), None)
    how = f"best of {repeat} runs each, " if repeat else ""
    return "\n".join([
        f"Rows x {r['dim']} float32 with Adagrad (rows + one slot), {shards} shards; seconds "
        f"(GB/s), and the store's rate as a fraction of numpy's; {how}measured by "
        f"{r['source']}. Restores include starting the shard actors (`start-up`, measured "
        "apart; `read` is the restore's rate without it). Reads may hit the page cache, for "
        "both sides alike.", "",
        _table(["rows", "bytes", "np.save+fsync", "store.save", "np.load", "restore",
                "restore: start-up; read", "resharding restore", "onto"], rows, "lrrrrrrrl"),
        "", "![checkpoint](img/checkpoint.png)",
    ])  # fmt: skip


def block_memory(r: dict, meta: dict) -> str:
    rows = []
    for s in r["sizes"]:
        if "skipped" in s:
            rows.append([f"{s['table_rows']:,}", fmt_bytes(s["table_bytes"]), s["skipped"]]
                        + [""] * 9)  # fmt: skip
            continue
        shard = s["shard_memory"]
        peak = max(x.get("peak_rss", 0) for x in shard)
        own = max(x["bytes"] for x in shard)
        shmem = max((x["rss_shmem"] for x in shard if "rss_shmem" in x), default=None)
        trainer_shmem = s.get("driver_rss_shmem")
        rows.append([
            f"{s['table_rows']:,}", fmt_bytes(s["table_bytes"]), fmt_bytes(own),
            fmt_bytes(peak) if peak else "n/a", fmt_bytes(peak - own) if peak else "",
            fmt_bytes(shmem) if shmem is not None else "n/a",
            fmt_bytes(s["driver_rss_before"]), f"{s['driver_rss_growth'] / 1e6:+.0f} MB",
            fmt_bytes(trainer_shmem) if trainer_shmem is not None else "n/a",
            fmt_bytes(s["shm_bytes"]) if "shm_bytes" in s else "n/a",
            f"{_x(s['lookup_ratio'])} ({s['lookup_gbs']:.2f} GB/s)" if "lookup_ratio" in s
            else f"n/a ({s['lookup_gbs']:.2f} GB/s)",
            _x(s["push_ratio"]) if "push_ratio" in s else "n/a",
            f"{s['create_s']:.1f}",
        ])  # fmt: skip
    return "\n".join([
        "Rows x 64 float32 with Adagrad, 2 shards. Shard memory from `/proc/<pid>/status` "
        "(`VmHWM`) of the actor pids in `store.placement()` after lookups and pushes; `own "
        "bytes` from `store.info()` (rows + slots); `peak - own` is the rest (the Ray worker "
        "with its imports, request buffers, an update's temporaries). Trainer: this "
        "process's RSS before the table is created (with whatever earlier sections and sizes "
        "left in it), and its growth after the workload. `RssShmem`: of a process's "
        "resident bytes, those of `/dev/shm` pages it maps; `/dev/shm`: what the table's "
        "files hold there (each shard's rows, and the request buffers). The rows are one "
        "copy, in `/dev/shm`: the shard maps them all, the trainer the pages its lookups "
        "read (and a part of the trainer's growth is those pages, counted again in its RSS "
        "but no more memory). "
        "Lookup: 65,536 Zipf ids vs `np.take`; push: Adagrad + flush vs `np.add.at`, on a "
        "copy of the same table held by this process only for that comparison. "
        "`create s`: creating and initialising the table.", "",
        _table(["rows", "rows+slots", "own bytes/shard", "peak RSS/shard", "peak - own",
                "RssShmem/shard", "trainer RSS", "trainer growth", "trainer RssShmem",
                "/dev/shm", "lookup vs np.take", "push vs np.add.at", "create s"], rows),
        "", "![memory](img/memory.png)",
    ])  # fmt: skip


def block_profile(r: dict, meta: dict) -> str:
    from benchmarks.profile_bench import SHARD_STAGES, STAGES

    cols = [*STAGES[:-2], "ray_call", *SHARD_STAGES, "call_overhead", "assemble"]
    rows = []
    for c in r["cases"]:
        st = c["stages"]
        total = st["total"]
        rows.append([f"{c['batch']:,} {c['dist']}", c["dedup"], f"{int(st['distinct_ids']):,}"]
                    + [f"{st[k] * 1e3:.2f} ({st[k] / total:.0%})" for k in cols]
                    + [f"{total * 1e3:.2f}", f"{c['store_lookup_s'] * 1e3:.2f}",
                       f"{c['take_s'] * 1e3:.2f}"])  # fmt: skip
    direct = [[f"{c['batch']:,} {c['dist']}", c["dedup"],
               f"{c['stages']['total'] * 1e3:.2f}", f"{c['direct_stages']['total'] * 1e3:.2f}",
               f"{c['stages']['shard_scatter'] * 1e3:.2f}", f"**{_x(c['direct_speedup'])}**"]
              for c in r["cases"] if "direct_stages" in c]  # fmt: skip
    extra = [] if not direct else [
        "", "What moving the shard's copy would buy, measured the same way: `direct` has each "
        "shard gather straight into its slice of the shared buffer (`RowStorage.gather_into`) "
        "and the router reorder once; `current` is the store's path above (gather into a "
        "temporary, scatter it to the asked positions, the router copies). Speed-up: median "
        "of per-repetition ratios, the two interleaved.", "",
        _table(["ids", "dedup", "current ms", "direct ms", "shard_scatter ms (saved)",
                "speed-up"], direct, "llrrrr"),
    ]  # fmt: skip
    return "\n".join([
        f"Milliseconds (share of the replica's total) per stage of a lookup, "
        f"{r['table_rows']:,} x {r['dim']} float32 on {r['shards']} shards, median of "
        f"{r['reps']}. `ray_call` is the round trip; of it, `shard_*` ran inside the slowest "
        f"shard and `call_overhead` is the rest (Ray's submit, scheduling, reply). "
        f"An empty call to both shards takes {r['empty_call_s'] * 1e3:.2f} ms.", "",
        _table(["ids", "dedup", "distinct", *cols, "replica total", "store.lookup",
                "np.take"], rows, "llr" + "r" * (len(cols) + 3)),
        *extra,
        "", "![profile](img/profile.png)",
    ])  # fmt: skip


BLOCKS = {
    "meta": block_meta,
    "bandwidth": block_bandwidth,
    "headline": block_headline,
    "lookup": block_lookup,
    "profile": block_profile,
    "train": block_train,
    "memory": block_memory,
    "checkpoint": block_checkpoint,
    "scaling": block_scaling,
}


def render(name: str, results: dict, meta: dict) -> str:
    """The markdown between the markers of section ``name``."""
    body = BLOCKS[name](results if name == "meta" else results[name], meta)
    return f"{provenance(meta, None if name == 'meta' else name)}\n\n{body}"


def update_readme(path: str, results: dict, meta: dict) -> list[str]:
    """Replace the blocks of the sections in ``results`` (those without an error); returns
    the names replaced. A missing marker pair is appended at the end."""
    with open(path) as f:
        text = f.read()
    done = []
    names = ["meta"] + [n for n in BLOCKS if n != "meta" and n in results
                        and "error" not in results[n]]  # fmt: skip
    for name in names:
        block = f"<!-- results:{name} -->\n{render(name, results, meta)}\n<!-- /results:{name} -->"
        pattern = re.compile(rf"<!-- results:{name} -->.*?<!-- /results:{name} -->", re.S)
        if pattern.search(text):
            text = pattern.sub(lambda _m, b=block: b, text)
        else:
            text = text.rstrip() + f"\n\n{block}\n"
        done.append(name)
    with open(path, "w") as f:
        f.write(text)
    return done
