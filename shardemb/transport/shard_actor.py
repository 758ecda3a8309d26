"""The shard as it runs in a Ray actor (its own, or inside a shard host): the shard plus
what only makes sense there (shared memory with the router, its config and node for
``connect`` and ``placement``)."""

from __future__ import annotations

import os

from shardemb.core.config import TableConfig
from shardemb.shard.shard import Shard
from shardemb.transport.endpoint import SharedMemoryEndpoint

__all__ = ["ShardActor"]


class ShardActor(SharedMemoryEndpoint, Shard):
    """The shard as a Ray actor: adds what only makes sense inside Ray (shared memory with
    the router, its config and node for ``connect`` and ``placement``)."""

    def __init__(
        self, config: TableConfig, index: int, *, initialize: bool = True, detached: bool = False
    ):
        super().__init__(config, index, initialize=initialize)
        self.detached = detached

    def get_config(self) -> tuple[TableConfig, bool]:
        return self.config, self.detached

    def node(self) -> dict:
        import ray

        ctx = ray.get_runtime_context()
        return {"node_id": ctx.get_node_id(), "pid": os.getpid()}
