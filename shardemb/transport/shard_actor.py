"""The shard as it runs in a Ray actor (its own, or inside a shard host): the shard plus
what only makes sense there (shared memory with the router, its config and node for
``connect`` and ``placement``), and, in an actor of its own, doorbells."""

from __future__ import annotations

import os

from shardemb.core.config import TableConfig
from shardemb.shard.shard import Shard
from shardemb.transport.bells import RungActor, serve_in_order
from shardemb.transport.endpoint import SharedMemoryEndpoint

__all__ = ["RungShardActor", "ShardActor"]


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


@serve_in_order
class RungShardActor(RungActor, ShardActor):
    """A table's shard in a Ray actor of its own: also serves the doorbells of the routers
    on its machine (:mod:`shardemb.transport.bells`), and runs every Ray call after the
    pushes rung before it. (A shard inside a host is the host's to serve.)"""

    def __init__(self, *args, **kwargs):
        self._init_bells()
        super().__init__(*args, **kwargs)

    def _target(self, table: str | None):
        return self

    def _describe(self, table: str | None) -> str:
        return f"Shard {self.index} of table {self.config.name!r}"
