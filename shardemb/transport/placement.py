"""Up-front capacity check: will the table, with its optimizer slots, fit the cluster?

Run before any actor is created, so an impossible table fails at once with the numbers and
the fixes, not with an out-of-memory kill an hour later.

Example:
    >>> from shardemb.core.config import TableConfig
    >>> cfg = TableConfig.build("t", 1000, 8, num_shards=2, optimizer="adagrad", seed=0)
    >>> shard_bytes(cfg)  # 500 rows x (8 + 8 slot) x 4 bytes
    32000
"""

from __future__ import annotations

from shardemb.core.config import TableConfig
from shardemb.errors import CapacityError

__all__ = ["HEADROOM", "check_capacity", "shard_bytes"]

#: Extra memory a shard needs beyond its rows and slots: the gathered rows, gradients and
#: slot copies of one update, and the request and answer buffers.
HEADROOM = 1.25


def shard_bytes(config: TableConfig) -> int:
    """Bytes of the largest shard: its rows plus optimizer slots."""
    return int(config.partition.shard_sizes().max()) * config.slot_bytes_per_row()


def check_capacity(config: TableConfig, resources, nodes: list[dict] | None = None) -> None:
    """Raise :class:`CapacityError` when the table cannot fit the Ray cluster.

    ``nodes`` defaults to ``ray.nodes()``; each alive node's ``Resources`` give its
    ``memory`` (bytes), ``CPU`` and ``GPU``.
    """
    if nodes is None:
        import ray

        nodes = ray.nodes()
    alive = [n.get("Resources", {}) for n in nodes if n.get("Alive", True)]
    need = shard_bytes(config) * HEADROOM
    total_need = need * config.num_shards
    mems = [float(r.get("memory", 0)) for r in alive]
    gib = 2**30
    slots = list(config.optimizer.slot_specs(config.dim))
    what = (
        f"table {config.name!r}: {config.vocab_size:,} rows x {config.dim} {config.dtype}, "
        f"optimizer {config.optimizer.name!r} (slots {slots}), {config.num_shards} shard(s)"
    )
    fixes = (
        "Fixes: use more shards (smaller shards fit smaller nodes), add nodes, use a smaller "
        "`dim` or `dtype='float16'`, or an optimizer with fewer slots ('sgd', "
        "'rowwise_adagrad')."
    )
    if resources.memory and resources.memory < need:
        raise CapacityError(
            f"Each shard of {what} needs {need / gib:.2f} GiB but `resources.memory` reserves "
            f"{resources.memory / gib:.2f} GiB. Reserve more memory per shard or use more shards."
        )
    if mems and need > max(mems):
        raise CapacityError(
            f"One shard of {what} needs {need / gib:.2f} GiB (rows + slots + "
            f"{HEADROOM - 1:.0%} headroom) but the largest node offers {max(mems) / gib:.2f} "
            f"GiB. {fixes}"
        )
    if mems and total_need > sum(mems):
        raise CapacityError(
            f"{what} needs {total_need / gib:.2f} GiB in all but the {len(mems)} node(s) offer "
            f"{sum(mems) / gib:.2f} GiB. {fixes}"
        )
    gpus = sum(float(r.get("GPU", 0)) for r in alive)
    want_gpus = (resources.num_gpus or (1.0 if config.device == "gpu" else 0.0)) * config.num_shards
    if want_gpus > gpus:
        raise CapacityError(
            f"{what} asks for {want_gpus:g} GPU(s) ({config.num_shards} shards) but the cluster "
            f"has {gpus:g}. Use fewer shards, a fraction of a GPU per shard "
            "(ShardResources(num_gpus=0.25)), or device='cpu'."
        )
    cpus = sum(float(r.get("CPU", 0)) for r in alive)
    want_cpus = resources.num_cpus * config.num_shards
    if want_cpus > cpus:
        raise CapacityError(
            f"{what} reserves {want_cpus:g} CPU(s) ({resources.num_cpus:g} per shard) but the "
            f"cluster has {cpus:g}. Reserve fewer CPUs per shard or add nodes."
        )
