"""Shard hosts: one Ray actor (one process) serving the same-numbered shard of many tables.

A table created with ``group="name"`` puts its shard ``i`` into the group's host ``i``
(the actor ``{group}/{device}-host-{i}``) instead of an actor of its own, as TorchRec fuses
tables into one collection. The group's tables then cost ``num_shards`` processes in all,
not ``num_shards`` per table (start-up, idle CPU, memory), and a step's pushes to all of
them cost one call per host (:meth:`ShardHost.call_many`, sent by
:mod:`shardemb.store.fused`). The price is shared fate: a host that dies takes shard ``i``
of every table in it, and each table recovers it from its own checkpoint.

A store holds a :class:`HostedHandle` per shard where it would hold an actor handle: the
same ``handle.method.remote(*args)`` calls reach the table's shard inside the host, in the
order they are made (Ray keeps one caller's order to a plain actor), so everything above
(exchange, checkpoints, recovery) works unchanged.

Hosted tables are found by name through Ray's key-value store (the registry below), so
``connect`` and the name check of ``create`` see them as they see tables with their own
actors; an entry whose hosts no longer hold the table is stale and ignored.
"""

from __future__ import annotations

import contextlib
import json
import os
import time

from shardemb.errors import (
    InvalidConfigError,
    ShardUnavailableError,
    TableExistsError,
)
from shardemb.transport.bells import RungActor, serve_in_order
from shardemb.transport.shard_actor import ShardActor

__all__ = ["HostedHandle", "ShardHost", "host_name", "process_group", "registry"]

#: Key-value namespace of the registry of hosted tables.
_KV_NAMESPACE = "shardemb-hosted"


_process_group: str | None = None


def process_group() -> str:
    """The group ``group="auto"`` stands for: one per process (its tables' hosts)."""
    global _process_group
    if _process_group is None:
        import uuid

        _process_group = f"process-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    return _process_group


def host_name(group: str, device: str, index: int) -> str:
    """The actor name of host ``index`` of ``group`` for shards on ``device``."""
    return f"{group}/{device}-host-{index}"


class TableNotHostedError(ShardUnavailableError):
    """The host answers but holds no shard of the table (it was restarted, or the table
    was removed): to recovery, the shard is gone."""


@serve_in_order
class ShardHost(RungActor):
    """The host actor: shard objects by table name, each called by name. Every Ray method
    runs after the pushes its routers rang before it (:mod:`shardemb.transport.bells`)."""

    def __init__(self, name: str, detached: bool = False):
        self.name, self.detached = name, bool(detached)
        self._shards: dict = {}
        self._init_bells()

    def add(self, config, index: int, initialize: bool, detached: bool) -> bool:
        """Start shard ``index`` of ``config``'s table here. Returns False (and leaves the
        shard as it is) when the table already has one here and ``initialize`` is False
        (two processes restarting it); with ``initialize`` that is a name clash."""
        if bool(detached) != self.detached:
            raise InvalidConfigError(
                f"Host {self.name!r} holds {'detached' if self.detached else 'non-detached'} "
                f"tables; table {config.name!r} asks for detached={detached}. Use a group "
                "per lifetime."
            )
        held = self._shards.get(config.name)
        if held is not None:
            if initialize:
                raise TableExistsError(
                    f"Host {self.name!r} already holds a table named {config.name!r}. "
                    f"Received: name={config.name!r}"
                )
            return False
        self._shards[config.name] = ShardActor(config, index, initialize=initialize,
                                               detached=detached)  # fmt: skip
        return True

    def remove(self, table: str) -> int:
        """Drop the table's shard (its shared rows go with it); returns the tables left."""
        shard = self._shards.pop(table, None)
        if shard is not None:
            shard.close_shared()
        return len(self._shards)

    def tables(self) -> list[str]:
        return sorted(self._shards)

    def ping(self) -> int:
        return len(self._shards)

    def call_shard(self, table: str, method: str, *args):
        """``method(*args)`` of the table's shard."""
        return getattr(self._shard(table), method)(*args)

    def _target(self, table: str):
        return self._shard(table)

    def _describe(self, table: str) -> str:
        return f"Table {table!r} on host {self.name!r}"

    def _shard(self, table: str):
        shard = self._shards.get(table)
        if shard is None:
            raise TableNotHostedError(
                f"Host {self.name!r} holds no shard of table {table!r} (the host was "
                "restarted, or the table removed)."
            )
        return shard


class _Method:
    __slots__ = ("actor", "table", "method")

    def __init__(self, actor, table: str, method: str):
        self.actor, self.table, self.method = actor, table, method

    def remote(self, *args):
        return self.actor.call_shard.remote(self.table, self.method, *args)


class HostedHandle:
    """One table's shard inside a host, called like an actor handle."""

    __slots__ = ("actor", "table", "host")

    def __init__(self, actor, table: str, host: str):
        self.actor, self.table, self.host = actor, table, host

    @property
    def _actor_id(self):
        return self.actor._actor_id

    def __getattr__(self, method: str) -> _Method:
        if method.startswith("_"):
            raise AttributeError(method)
        return _Method(self.actor, self.table, method)

    def __reduce__(self):
        return (HostedHandle, (self.actor, self.table, self.host))

    def __repr__(self) -> str:
        return f"HostedHandle(table={self.table!r}, host={self.host!r})"


class registry:  # noqa: N801 - a namespace of functions over Ray's key-value store
    """Which hosts hold a table's shards: ``name -> [host actor names]``."""

    @staticmethod
    def put(name: str, hosts: list[str], *, overwrite: bool) -> bool:
        """Record ``hosts``; returns whether an entry was there (then, without
        ``overwrite``, it is kept)."""
        from ray.experimental import internal_kv

        value = json.dumps(hosts).encode()
        return internal_kv._internal_kv_put(name, value, overwrite, namespace=_KV_NAMESPACE)

    @staticmethod
    def get(name: str) -> list[str] | None:
        from ray.experimental import internal_kv

        value = internal_kv._internal_kv_get(name, namespace=_KV_NAMESPACE)
        return json.loads(value) if value else None

    @staticmethod
    def delete(name: str) -> None:
        from ray.experimental import internal_kv

        internal_kv._internal_kv_del(name, namespace=_KV_NAMESPACE)


# --------------------------------------------------------------------------------------
# The Ray backend's side (shardemb.transport.backends.RayBackend calls these)
# --------------------------------------------------------------------------------------
def host_actor(backend, name: str, device: str, resources, detached: bool):
    """The host actor ``name``, started unless it runs (Ray's get-or-create: two processes
    asking at once get the same one)."""
    ray = backend._ray
    options = backend.actor_options(name, device, resources, detached)
    options["get_if_exists"] = True
    return ray.remote(ShardHost).options(**options).remote(name, detached)


def hosted_holders(backend, name: str) -> list[str] | None:
    """The hosts of table ``name`` when its registry entry is live (its first host holds
    it), else None."""
    hosts = registry.get(name)
    if not hosts:
        return None
    first = backend._holder(hosts[0])
    if first is None:
        return None
    try:
        held = backend._ray.get(first.tables.remote(), timeout=60)
    except Exception:  # noqa: BLE001 - a dead or hung host holds nothing
        return None
    return hosts if name in held else None


def create_hosted(backend, config, resources, detached: bool, initialize: bool, group: str):
    """Shard ``i`` of ``config``'s table in host ``i`` of ``group``; returns the handles."""
    name = config.name
    hosts = [host_name(group, config.device, i) for i in range(config.num_shards)]
    if registry.put(name, hosts, overwrite=False):
        if hosted_holders(backend, name) is not None:
            raise TableExistsError(
                f"A table named {name!r} already exists on this Ray cluster (in shard hosts "
                f"{registry.get(name)}); close it or choose another name. Received: name={name!r}"
            )
        registry.put(name, hosts, overwrite=True)  # a stale entry: its table is gone
    handles: list[HostedHandle] = []
    try:
        actors = [host_actor(backend, h, config.device, resources, detached) for h in hosts]
        added = [a.add.remote(config, i, initialize, detached) for i, a in enumerate(actors)]
        handles = [HostedHandle(a, name, h) for a, h in zip(actors, hosts, strict=True)]
        backend.get(added, timeout=600)
    except BaseException:
        kill_hosted(backend, name, handles)
        raise
    return handles


def kill_hosted(backend, name: str, handles: list) -> None:
    """Remove the table's shards from their hosts; a host left empty is stopped."""
    ray = backend._ray
    refs = []
    for h in handles:
        try:
            refs.append((h, h.actor.remove.remote(name)))
        except Exception:  # noqa: BLE001, S112 - a dead host holds nothing to remove
            continue
    for h, ref in refs:
        try:
            left = ray.get(ref, timeout=30)
        except Exception:  # noqa: BLE001, S112 - dead or hung: its processes are gone
            continue
        if left == 0:
            with contextlib.suppress(Exception):  # already gone
                ray.kill(h.actor, no_restart=True)
    if registry.get(name) == [h.host for h in handles]:
        registry.delete(name)


def restart_hosted(backend, config, index: int, old: HostedHandle, resources, detached):
    """Shard ``index`` back in its host: a replacement host another process started, or a
    new one; the shard is added empty (to be loaded from a checkpoint) unless there."""
    ray = backend._ray
    held = backend._holder(old.host)
    if held is not None and held._actor_id == old._actor_id:
        try:
            ray.get(held.ping.remote(), timeout=10)  # alive: it lost only this table
        except Exception:  # noqa: BLE001 - dead or hung: replaced below
            with contextlib.suppress(Exception):  # already gone
                ray.kill(held, no_restart=True)
            held = None
    deadline = time.monotonic() + 60
    while held is None or held._actor_id == old._actor_id:
        try:
            held = host_actor(backend, old.host, config.device, resources, detached)
            ray.get(held.ping.remote(), timeout=600)
        except Exception as err:  # noqa: BLE001 - the dead one still holds the name
            if time.monotonic() > deadline:
                raise ShardUnavailableError(
                    f"Shard {index} of table {config.name!r}: its dead host {old.host!r} "
                    f"kept its name 60 s ({err!r})."
                ) from err
            held = None
            time.sleep(0.2)
    backend.get([held.add.remote(config, index, False, detached)], timeout=600)
    return HostedHandle(held, config.name, old.host)


def attach_hosted(backend, name: str):
    """``(config, handles, detached)`` of the hosted table ``name``, or None."""
    hosts = hosted_holders(backend, name)
    if hosts is None:
        return None
    actors = [backend._holder(h) for h in hosts]
    missing = [i for i, a in enumerate(actors) if a is None]
    if missing:
        raise ShardUnavailableError(f"Shard(s) {missing} of table {name!r} are missing.")
    handles = [HostedHandle(a, name, h) for a, h in zip(actors, hosts, strict=True)]
    config, detached = backend.get([handles[0].get_config.remote()], timeout=60)[0]
    return config, handles, detached
