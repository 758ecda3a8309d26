"""Where the shards of dynamic tables run: Ray actors or plain objects in this process.

The same two backends as :mod:`shardemb.transport.backends` (whose ``get``, ``done``,
``kill``, ``attach``... they inherit), building :class:`~shardemb.shard.dynamic.DynamicShard`
objects instead of fixed-vocabulary shards. Requests travel by Ray's object transfer (no
shared-memory fast path yet). Table names are shared with fixed tables: one name, one
table, whatever its kind.

Example:
    >>> from shardemb.core.keys import DynamicConfig
    >>> cfg = DynamicConfig.build("doc-dyn-backend", 4, num_shards=2, seed=0)
    >>> backend = get_dynamic_backend("inprocess")
    >>> shards = backend.create(cfg, ShardResources())
    >>> [backend.get([backend.submit(s, "ping")])[0] for s in shards]
    [0, 1]
    >>> backend.kill(cfg.name, shards)
"""

from __future__ import annotations

import os

from shardemb.core.keys import DynamicConfig
from shardemb.errors import InvalidConfigError, TableExistsError
from shardemb.shard.dynamic import DynamicShard
from shardemb.transport.backends import (
    BACKENDS,
    InProcessBackend,
    RayBackend,
    ShardResources,
)

__all__ = ["DynamicInProcessBackend", "DynamicRayBackend", "ShardResources", "get_dynamic_backend"]


class DynamicInProcessBackend(InProcessBackend):
    """Dynamic shards as plain objects in this process, called synchronously."""

    def create(
        self,
        config: DynamicConfig,
        resources: ShardResources,
        detached: bool = False,
        initialize: bool = True,
    ):
        with self._lock:
            if config.name in self._tables:
                raise TableExistsError(
                    f"A table named {config.name!r} already exists in this process. "
                    f"Received: name={config.name!r}"
                )
            shards = [DynamicShard(config, i) for i in range(config.num_shards)]
            self._tables[config.name] = shards
        return shards


class DynamicRayBackend(RayBackend):
    """Dynamic shards as named Ray actors in the ``shardemb`` namespace."""

    def _cls(self):
        if self._actor_cls is None:
            self._actor_cls = self._ray.remote(_DynamicShardActor)
        return self._actor_cls


class _DynamicShardActor(DynamicShard):
    """The dynamic shard as a Ray actor: its config and node for ``connect`` and
    ``placement``."""

    def __init__(
        self, config: DynamicConfig, index: int, *, initialize: bool = True, detached: bool = False
    ):
        super().__init__(config, index)
        self.detached = detached

    def get_config(self) -> tuple[DynamicConfig, bool]:
        return self.config, self.detached

    def node(self) -> dict:
        import ray

        ctx = ray.get_runtime_context()
        return {"node_id": ctx.get_node_id(), "pid": os.getpid()}


def get_dynamic_backend(backend: str, address: str | None = None):
    """The backend called ``backend`` (one of ``"ray"``, ``"inprocess"``) for dynamic
    tables."""
    if backend == "ray":
        return DynamicRayBackend(address)
    if backend == "inprocess":
        return DynamicInProcessBackend()
    raise InvalidConfigError(f"`backend` must be one of {BACKENDS}. Received: backend={backend!r}")
