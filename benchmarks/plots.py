"""PNG plots of a run's JSON (matplotlib, Agg backend): one file per section."""

from __future__ import annotations

import os

__all__ = ["plot_all"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plain_ticks(ax, xticks=None) -> None:
    """Log axes with plain numbers (1k, 65k) rather than powers of ten."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    fmt = FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1000 else f"{v:g}")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(fmt)
        axis.set_minor_formatter(NullFormatter())
    if xticks:
        ax.set_xticks(xticks)


def _save(fig, out: str, name: str) -> str:
    path = os.path.join(out, f"{name}.png")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    _plt().close(fig)
    return path


def plot_lookup(r: dict, out: str, cores: int) -> str:
    plt = _plt()
    rows = r["rows"]
    dims = sorted({x["dim"] for x in rows})
    dim = 64 if 64 in dims else dims[0]
    fig, axes = plt.subplots(2, 2, figsize=(11, 8), sharex=True)
    for col, dist in enumerate(("uniform", "zipf")):
        for row, op in enumerate(("lookup", "push")):
            ax = axes[row][col]
            sel = [x for x in rows if x["op"] == op and x["dist"] == dist and x["dim"] == dim]
            for shards in sorted({x["shards"] for x in sel}):
                pts = sorted((x["batch"], x["store_gbs"]) for x in sel if x["shards"] == shards)
                ax.plot(*zip(*pts, strict=True), "o-", label=f"store, {shards} shard(s)")
            ref = sorted({x["batch"]: x["ref_gbs"] for x in sel}.items())
            copy = sorted({x["batch"]: x["copy_gbs"] for x in sel}.items())
            name = "np.take" if op == "lookup" else "np.add.at"
            if ref:
                ax.plot(*zip(*ref, strict=True), "k--", label=name)
                ax.plot(*zip(*copy, strict=True), ":", color="gray", label="np.copyto (ceiling)")
            ax.set(xscale="log", yscale="log", title=f"{op}, {dist} ids, dim {dim}",
                   xlabel="ids per call", ylabel="GB/s of rows")  # fmt: skip
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=7)
            _plain_ticks(ax, sorted({x["batch"] for x in sel}))
    fig.suptitle(f"{r['table_rows']:,}-row table, float32 ({cores}-core machine)")
    return _save(fig, out, "lookup")


def plot_train(r: dict, out: str, cores: int) -> str:
    plt = _plt()
    cases = r["cases"]
    labels = [f"{c['model']}\n{c['rows'] / 1e6:g}M {c['optimizer']}" for c in cases]
    fig, ax = plt.subplots(figsize=(max(8, 1.3 * len(cases)), 4))
    x = range(len(cases))
    w = 0.27
    ax.bar([i - w for i in x], [c["sharded_steps_per_s"] for c in cases], w,
           label="ShardedEmbedding")  # fmt: skip
    ax.bar(list(x), [c.get("keras_steps_per_s", 0) for c in cases], w,
           label="keras.layers.Embedding")  # fmt: skip
    ax.bar([i + w for i in x], [c.get("floor_steps_per_s", 0) for c in cases], w,
           label="floor (1k-row tables)", color="lightgray")  # fmt: skip
    for i, c in enumerate(cases):
        label = f"{c['ratio']:.2f}x" if c["ratio"] else "n/a"
        ax.annotate(label, (i - w, c["sharded_steps_per_s"]), ha="center", va="bottom",
                    fontsize=8)  # fmt: skip
    ax.set_xticks(list(x), labels, fontsize=7)
    ax.set(ylabel="steps/s (batch 4096)", title=f"Two-tower training ({cores}-core machine)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, out, "train")


def plot_scaling(r: dict, out: str, cores: int) -> str | None:
    if "skipped" in r:
        return None
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for t in sorted({s["transport"] for s in r["strong"]}):
        sel = [s for s in r["strong"] if s["transport"] == t]
        a1.plot([s["shards"] for s in sel], [s.get("lookup_speedup", 0) for s in sel], "o-",
                label=f"lookup ({t})")  # fmt: skip
        a1.plot([s["shards"] for s in sel], [s.get("push_speedup", 0) for s in sel], "s--",
                label=f"push ({t})")  # fmt: skip
    shards = sorted({s["shards"] for s in r["strong"]})
    a1.plot(shards, shards, ":", color="gray", label="linear")
    a1.axvline(cores, color="red", alpha=0.4, label=f"{cores} cores")
    a1.set(xlabel="shards", ylabel="speedup vs 1 shard", title="Strong scaling (fixed table)")
    sel = r["weak"]
    a2.plot([s["shards"] for s in sel], [s.get("lookup_efficiency", 0) for s in sel], "o-",
            label="lookup")  # fmt: skip
    a2.axhline(1.0, ls=":", color="gray")
    a2.axvline(cores, color="red", alpha=0.4, label=f"{cores} cores")
    a2.set(xlabel="shards (table and batch grow with them)", ylabel="efficiency",
           title="Weak scaling", ylim=(0, 1.2))  # fmt: skip
    for ax in (a1, a2):
        ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        _plain_ticks(ax, shards)
        ax.yaxis.set_major_formatter(matplotlib_scalar())
    fig.suptitle(f"{r['nodes']} Ray nodes on ONE {cores}-core machine: all shards share "
                 f"{cores} cores")  # fmt: skip
    return _save(fig, out, "scaling")


def plot_checkpoint(r: dict, out: str, cores: int) -> str | None:
    sizes = [s for s in r["sizes"] if "skipped" not in s]
    if not sizes:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    gb = [s["bytes"] / 1e9 for s in sizes]
    for key, label, style in (("np_save_gbs", "np.save + fsync", "k--"),
                              ("save_gbs", "store.save", "o-"),
                              ("np_load_gbs", "np.load", "k:"),
                              ("restore_gbs", "restore", "s-")):  # fmt: skip
        ax.plot(gb, [s[key] for s in sizes], style, label=label)
    ax.plot(gb, [s["bytes"] / s["reshard_restore_s"] / 1e9 for s in sizes], "^-",
            label="resharding restore")  # fmt: skip
    ax.set(xscale="log", xlabel="checkpoint GB (rows + Adagrad slot)", ylabel="GB/s",
           title=f"Checkpoints ({cores}-core machine)")  # fmt: skip
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _save(fig, out, "checkpoint")


def plot_memory(r: dict, out: str, cores: int) -> str | None:
    sizes = [s for s in r["sizes"] if "skipped" not in s]
    if not sizes:
        return None
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    own = [max(x["bytes"] for x in s["shard_memory"]) / 1e9 for s in sizes]
    peak = [max(x.get("peak_rss", 0) for x in s["shard_memory"]) / 1e9 for s in sizes]
    a1.plot(own, peak, "o-", label="peak RSS per shard")
    a1.plot(own, own, ":", color="gray", label="rows + slots")
    a1.set(xlabel="rows + slots per shard (GB)", ylabel="GB", title="Shard memory")
    rows = [s["table_rows"] / 1e6 for s in sizes]
    a2.plot(rows, [s["driver_rss_before"] / 1e9 for s in sizes], "o-", label="before create")
    a2.plot(rows, [s["driver_rss_after"] / 1e9 for s in sizes], "s-", label="after workload")
    a2.plot(rows, [s["table_bytes"] / 1e9 for s in sizes], ":", color="gray",
            label="table bytes (not held)")  # fmt: skip
    a2.set(xlabel="table rows (M)", ylabel="GB", title="Trainer (driver) RSS")
    for ax in (a1, a2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, out, "memory")


def plot_profile(r: dict, out: str, cores: int) -> str:
    from benchmarks.profile_bench import SHARD_STAGES

    plt = _plt()
    stages = ["validate", "dedup", "split", "stage_ids", *SHARD_STAGES, "call_overhead",
              "assemble"]  # fmt: skip
    cases = r["cases"]
    fig, ax = plt.subplots(figsize=(9, 4))
    labels = [f"{c['batch'] // 1024}k {c['dist']}\ndedup {c['dedup']}" for c in cases]
    bottom = [0.0] * len(cases)
    for st in stages:  # shares of each case's total, so small and large batches compare
        vals = [100 * c["stages"][st] / c["stages"]["total"] for c in cases]
        ax.bar(labels, vals, bottom=bottom, label=st)
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    for i, c in enumerate(cases):
        ax.annotate(f"{c['stages']['total'] * 1e3:.1f} ms\n(np.take {c['take_s'] * 1e3:.1f})",
                    (i, 101), ha="center", va="bottom", fontsize=6)  # fmt: skip
    ax.set(ylabel="% of the lookup", ylim=(0, 118),
           title=f"Where a lookup's time goes ({cores}-core machine)")  # fmt: skip
    ax.legend(fontsize=6, ncol=3, loc="lower right")
    ax.tick_params(axis="x", labelsize=7)
    return _save(fig, out, "profile")


def _short(label: str) -> str:
    """A tables_bench variant's label on three short lines."""
    for long, short in (("ShardedEmbedding", "Sharded"), ("keras Embedding", "Keras"),
                        ("pushes as Ray calls", "Ray pushes"), ("default buffer", "default"),
                        (" + ", "\n+ "), (", ", "\n")):  # fmt: skip
        label = label.replace(long, short)
    return label


def plot_tables(r: dict, out: str, cores: int) -> str:
    """Step time against the number of tables (the sweep), and each model's variants."""
    from benchmarks.tables_bench import LABELS

    plt = _plt()
    cases = r["cases"]
    fig, axes = plt.subplots(1, 1 + len(cases), figsize=(5 + 5.5 * len(cases), 4))
    ax, sw = axes[0], r["sweep"]
    pts = sorted(sw["points"], key=lambda p: p["tables"])
    n = [p["tables"] for p in pts]
    ax.plot(n, [1e3 * p["step_s"] for p in pts], "o-", label="ShardedEmbedding")
    ax.plot(n, [1e3 * p["floor_step_s"] for p in pts], "k--", label="floor (1k-row tables)")
    for p in pts:
        ax.annotate(f"{p['vs_ref']['ratio']:.1f}x", (p["tables"], 1e3 * p["step_s"]),
                    ha="center", va="bottom", fontsize=7)  # fmt: skip
    ax.set(xscale="log", yscale="log", xlabel="tables (same rows in all)", ylabel="ms per step",
           title=f"{sw['total_rows']:,} x {sw['dim']} rows; x: vs {sw['ref']} tables")  # fmt: skip
    _plain_ticks(ax, n)
    ms = [1e3 * v for p in pts for v in (p["step_s"], p["floor_step_s"])]
    ax.set_yticks(sorted({float(f"{v:.2g}") for v in (min(ms), max(ms))}))  # within a decade
    for ax, c in zip(axes[1:], cases, strict=True):
        names = list(c["variants"])
        colors = {"sharded": "C0", "keras": "C1", "floor": "lightgray"}
        ax.bar(range(len(names)), [1e3 * c["variants"][v]["step_s"] for v in names],
               color=[colors[v.split("_")[0]] for v in names],
               hatch=["//" if "xla" in v else "" for v in names])  # fmt: skip
        ax.set_xticks(range(len(names)), [_short(LABELS[v]) for v in names], fontsize=6)
        ax.set(ylabel="ms per step", title=f"{c['case']} ({c['optimizer']})")
    for ax in axes:
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Many tables, batch {r['batch']:,} ({cores}-core machine)")
    return _save(fig, out, "tables")


PLOTS = {"lookup": plot_lookup, "train": plot_train, "scaling": plot_scaling,
         "checkpoint": plot_checkpoint, "memory": plot_memory, "profile": plot_profile,
         "tables": plot_tables}  # fmt: skip


def matplotlib_scalar():
    from matplotlib.ticker import ScalarFormatter

    return ScalarFormatter()


def plot_all(results: dict, out: str, cores: int) -> list[str]:
    """Write the PNG of every section that has one and finished; returns the paths."""
    paths = []
    for name, fn in PLOTS.items():
        r = results.get(name)
        if r and "error" not in r:
            path = fn(r, out, cores)
            if path:
                paths.append(path)
    return paths
