"""The in-process backend: shards as plain objects in this process, called synchronously.

It serves fast unit tests and users who want a store without Ray (like httpx's
``MockTransport``); :mod:`shardemb.transport.backends` documents the interface.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from shardemb.core.config import TableConfig
from shardemb.errors import (
    CapacityError,
    ShardembError,
    ShardError,
    TableExistsError,
    TableNotFoundError,
)
from shardemb.shard.shard import Shard

__all__ = ["InProcessBackend"]


# --------------------------------------------------------------------------------------
class _Done:
    """A resolved future."""

    __slots__ = ("value", "error")

    def __init__(self, value: Any = None, error: BaseException | None = None):
        self.value, self.error = value, error


class InProcessBackend:
    """Shards as plain objects in this process, called synchronously."""

    name = "inprocess"
    _tables: dict[str, list[Shard]] = {}
    _lock = threading.Lock()

    def create(
        self,
        config: TableConfig,
        resources,  # ShardResources: unused in one process
        detached: bool = False,
        initialize: bool = True,
        group: str | None = None,  # one process already: nothing to fuse
    ):
        with self._lock:
            if config.name in self._tables:
                raise TableExistsError(
                    f"A table named {config.name!r} already exists in this process. "
                    f"Received: name={config.name!r}"
                )
            try:
                shards = [Shard(config, i, initialize=initialize) for i in range(config.num_shards)]
            except MemoryError as err:
                asked = config.vocab_size * config.slot_bytes_per_row()
                raise CapacityError(
                    f"Table {config.name!r} does not fit in this process's memory: its rows "
                    f"and optimizer slots need {asked:,} bytes ({config.vocab_size} rows x "
                    f"{config.slot_bytes_per_row()} bytes). Use a smaller vocab_size or dim, "
                    "or backend='ray' on a cluster with more memory. "
                    f"Received: vocab_size={config.vocab_size}, dim={config.dim}"
                ) from err
            self._tables[config.name] = shards
        return shards

    def attach(self, name: str) -> tuple[TableConfig, list, bool]:
        shards = self._tables.get(name)
        if shards is None:
            raise TableNotFoundError(f"No table named {name!r} in this process.")
        return shards[0].config, shards, False

    def submit(self, handle: Shard, method: str, *args) -> _Done:
        try:
            return _Done(getattr(handle, method)(*args))
        except ShardembError as err:
            return _Done(error=err)
        except Exception as err:  # noqa: BLE001 - reported like a remote failure
            return _Done(error=ShardError(f"Shard {handle.index} failed in {method}: {err!r}"))

    def submit_many(self, calls: list[tuple]) -> list[tuple]:
        """Each ``(handle, method, args)`` call in turn (see RayBackend.submit_many)."""
        return [(self.submit(h, method, *args), None) for h, method, args in calls]

    def get(self, futures: list, timeout: float | None = None) -> list:
        for f in futures:
            if f.error is not None:
                raise f.error
        return [f.value for f in futures]

    def done(self, futures: list) -> tuple[list, list]:
        return list(futures), []

    def wait(self, futures: list, timeout: float | None = None) -> None:
        return None

    def alive(self, handles: list, timeout: float = 30.0) -> list[dict | None]:
        return [h.info() for h in handles]

    def kill(self, name: str, handles: list) -> None:
        with self._lock:
            if self._tables.get(name) is handles:
                del self._tables[name]

    def node_of(self, handles: list) -> list[dict]:
        return [{"node_id": "local", "pid": os.getpid()} for _ in handles]
