"""What every section shares: the run context, interleaved timing, Zipf ids, machine facts.

The machine these run on is small and shared, so a number on its own means little: every
measurement here times the store and its in-process reference (``np.take``, ``np.add.at``,
a plain ``np.copyto``) in the same loop, alternating their order, and reports the median
of the per-repetition ratios next to the medians of each.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import platform
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import metadata

import numpy as np
import psutil

__all__ = [
    "Context",
    "interleaved",
    "machine_info",
    "proc_memory",
    "summarize",
    "versions",
    "zipf_ids",
]

#: Exponent of the Zipf ids: ``P(rank k) ~ 1 / k**ZIPF_EXPONENT`` over the whole vocabulary.
ZIPF_EXPONENT = 1.05
MODES = ("smoke", "quick", "full")
_counter = itertools.count()


@dataclass
class Context:
    """One benchmark run: its size mode, where shards run, and where results go."""

    mode: str
    """``"smoke"`` (seconds, for the test), ``"quick"`` (about 12 minutes) or ``"full"``."""
    backend: str = "ray"
    """``"ray"`` or ``"inprocess"`` (no actors: only the smoke test uses it)."""
    address: str | None = None
    """Ray cluster the run connected to (``None``: a local runtime started by the run)."""
    out: str = "."
    """Folder of the JSON, plots and scratch files."""
    progress: bool = True
    """Show tqdm progress bars (on stderr)."""
    run_id: str = field(default_factory=lambda: f"{os.getpid()}-{int(time.time()) % 100000}")
    """Makes store names unique on a shared cluster."""

    @property
    def quick(self) -> bool:
        return self.mode != "full"

    def name(self, what: str) -> str:
        """A store name no other store of this run (or of a concurrent run) uses."""
        return f"bench-{what}-{self.run_id}-{next(_counter)}"

    def bar(self, iterable: Iterable | None = None, *, total: int | None = None, desc: str = ""):
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, disable=not self.progress, leave=False,
                    dynamic_ncols=True)  # fmt: skip


def interleaved(
    fns: dict[str, Callable[[], object]],
    reps: int,
    *,
    warmup: int = 1,
    after: dict[str, Callable[[], object]] | None = None,
) -> dict[str, np.ndarray]:
    """Seconds of each of ``fns`` over ``reps`` rounds, run one after the other in a
    rotating order (so that drift in the machine's load hits all of them alike).
    ``after[name]`` runs untimed after ``fns[name]`` (e.g. clean-up between repetitions)."""
    names = list(fns)
    after = after or {}
    for _ in range(warmup):
        for n in names:
            fns[n]()
            if n in after:
                after[n]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(reps):
        for n in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            fns[n]()
            times[n].append(time.perf_counter() - start)
            if n in after:
                after[n]()
    return {n: np.asarray(t) for n, t in times.items()}


def summarize(times: dict[str, np.ndarray], *, rows: int, row_bytes: int, ref: str) -> dict:
    """Medians, rows/s and GB/s of each timed function, and each one's throughput as a
    fraction of ``ref``'s: the median over repetitions of ``t_ref / t``, paired per round."""
    out: dict = {"rows": rows, "bytes": rows * row_bytes}
    for name, t in times.items():
        med = float(np.median(t))
        out[name] = {
            "median_s": med,
            "p10_s": float(np.percentile(t, 10)),
            "p90_s": float(np.percentile(t, 90)),
            "rows_per_s": rows / med,
            "gbs": rows * row_bytes / med / 1e9,
            "reps": int(t.size),
        }
        if name != ref:
            out[name][f"vs_{ref}"] = float(np.median(times[ref] / t))
    return out


def zipf_ids(rng: np.random.Generator, n: int, vocab: int, exponent: float = ZIPF_EXPONENT):
    """``n`` ids in ``[0, vocab)`` with ``P(id = k) ~ 1 / (k + 1) ** exponent`` (hot ids are
    small, as after frequency-sorting a vocabulary). Inverse-CDF of the continuous bounded
    power law, floored: memory independent of ``vocab``."""
    u = rng.random(n)
    if abs(exponent - 1.0) < 1e-9:
        x = np.exp(u * np.log(vocab + 1.0))
    else:
        e = 1.0 - exponent
        x = ((vocab + 1.0) ** e - 1.0) * u + 1.0
        x = x ** (1.0 / e)
    return np.minimum(x.astype(np.int64) - 1, vocab - 1).clip(0)


def uniform_ids(rng: np.random.Generator, n: int, vocab: int) -> np.ndarray:
    return rng.integers(0, vocab, n, dtype=np.int64)


def make_ids(dist: str, rng: np.random.Generator, n: int, vocab: int) -> np.ndarray:
    return zipf_ids(rng, n, vocab) if dist == "zipf" else uniform_ids(rng, n, vocab)


def proc_memory(pid: int) -> dict:
    """Resident and peak resident bytes of process ``pid`` (Linux ``VmRSS``/``VmHWM``), and
    of the resident bytes those of shared memory it maps (``RssShmem``: ``/dev/shm``
    pages, which every process mapping them counts again)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        kb = lambda k: int(fields[k].split()[0]) * 1024  # noqa: E731
        out = {"rss": kb("VmRSS"), "peak_rss": kb("VmHWM")}
        if "RssShmem" in fields:
            out["rss_shmem"] = kb("RssShmem")
        return out
    except (OSError, KeyError, ValueError):
        rss = psutil.Process(pid).memory_info().rss
        return {"rss": rss, "peak_rss": rss}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    """CPU model, cores, RAM, OS and current load: printed next to every table."""
    vm = psutil.virtual_memory()
    return {
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "ram_bytes": vm.total,
        "ram_available_bytes": vm.available,
        "os": platform.platform(),
        "loadavg": list(os.getloadavg()),
    }


def versions() -> dict:
    out = {"python": platform.python_version()}
    for pkg in ("numpy", "tensorflow", "keras", "ray", "zarr", "shardemb"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def git_revision() -> str | None:
    """``<short sha>`` of the checkout, ``+dirty`` when benchmarks/ or shardemb/ differ."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, text=True,
                             capture_output=True, timeout=10).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "shardemb", "benchmarks"],
            cwd=root,
            text=True,
            capture_output=True,
            timeout=10,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return (sha + ("+dirty" if dirty.strip() else "")) or None


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n:.2f} GB"


def fmt_rate(x: float) -> str:
    """Rows/s as 1.23M / 456k."""
    if x >= 1e6:
        return f"{x / 1e6:.2f}M"
    if x >= 1e3:
        return f"{x / 1e3:.0f}k"
    return f"{x:.0f}"


def shm_bytes() -> int:
    """Bytes of ``/dev/shm`` held by shardemb's files (shared rows and request buffers), as
    allocated (a reserved file counts in full)."""
    from shardemb.transport.shm import _PREFIX, SHM_DIR

    total = 0
    with os.scandir(SHM_DIR) as entries:
        for e in entries:
            if e.name.startswith(_PREFIX):
                with contextlib.suppress(OSError):
                    total += e.stat().st_blocks * 512
    return total


def ray_transfer_only(store) -> None:
    """Make ``store`` move its rows through Ray's object transfer, as shards on another node
    do: its channel is probed now with shared memory reported missing."""
    import shardemb.transport.channel as channel

    real = channel.shm_available
    channel.shm_available = lambda: False
    try:
        store._channel()
    finally:
        channel.shm_available = real
