"""Where shards run: Ray actors (the default) or plain objects in this process.

This is the one module that applies ``ray.remote`` and the one boundary where Ray's
exceptions become shardemb's own. The in-process backend runs the same :class:`Shard`
objects synchronously; it serves fast unit tests and users who want a store without Ray
(like httpx's ``MockTransport``).

Both backends expose: ``create``, ``attach``, ``submit`` (returns a future), ``get``
(values of futures, or the first error as a shardemb error), ``done`` (non-blocking split
of futures), ``alive``, ``kill`` and ``node_of``; Ray's also ``restart``.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import math
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shardemb.core.config import TableConfig
from shardemb.errors import (
    ClusterConnectionError,
    InvalidConfigError,
    ShardembError,
    ShardError,
    ShardTimeoutError,
    ShardUnavailableError,
    TableExistsError,
    TableNotFoundError,
)
from shardemb.transport import bells, doorbell, hosts
from shardemb.transport.auth import auth_help, check_token, refused_auth
from shardemb.transport.inprocess import InProcessBackend
from shardemb.transport.shard_actor import RungShardActor

__all__ = [
    "BACKENDS",
    "InProcessBackend",
    "RayBackend",
    "ShardResources",
    "check_timeout",
    "get_backend",
]

BACKENDS = ("ray", "inprocess")
NAMESPACE = "shardemb"


@dataclass(frozen=True, slots=True)
class ShardResources:
    """What each shard actor asks Ray for."""

    num_cpus: float = 0.01
    """CPUs reserved per shard. The default lets a hundred shards share a core on a small
    machine; it is not 0 because Ray does not spread zero-CPU actors over nodes (measured:
    4 shards all on one of 2 nodes). Reserve 1 per shard on a real cluster so shards do
    not compete with training processes."""
    num_gpus: float = 0.0
    """GPUs per shard; ``device="gpu"`` makes it 1 unless set."""
    memory: int | None = None
    """Bytes of memory reserved per shard (Ray's ``memory`` resource); default: none."""
    spread: bool = True
    """Spread shards over nodes (Ray's SPREAD scheduling) rather than packing them."""
    resources: dict = field(default_factory=dict)
    """Extra custom resources per shard, e.g. ``{"shard_node": 0.01}``."""


def actor_name(table: str, index: int) -> str:
    return f"{table}/shard-{index}"


# --------------------------------------------------------------------------------------
# Ray backend
# --------------------------------------------------------------------------------------
class RayBackend:
    """Shards as named Ray actors in the ``shardemb`` namespace."""

    name = "ray"

    def __init__(self, address: str | None = None):
        import ray

        self._ray = ray
        ensure_ray(address)
        self._actor_cls = None

    def _cls(self):
        if self._actor_cls is None:
            self._actor_cls = self._ray.remote(RungShardActor)
        return self._actor_cls

    def create(
        self,
        config: TableConfig,
        resources: ShardResources,
        detached: bool = False,
        initialize: bool = True,
        group: str | None = None,
    ):
        """The table's shards: actors of their own, or with ``group`` shards in the
        group's hosts (:mod:`shardemb.transport.hosts`)."""
        if self._exists(actor_name(config.name, 0)) or hosts.hosted_holders(self, config.name):
            raise TableExistsError(
                f"A table named {config.name!r} already exists on this Ray cluster "
                f"(namespace {NAMESPACE!r}); close it or choose another name. "
                f"Received: name={config.name!r}"
            )
        if group is not None:
            return hosts.create_hosted(self, config, resources, detached, initialize, group)
        handles = []
        try:
            for i in range(config.num_shards):
                handles.append(self._start_actor(config, i, resources, detached, initialize))
            # Wait for every constructor, so a failure surfaces here, not at first use.
            self.get([h.ping.remote() for h in handles], timeout=600)
        except BaseException:
            self.kill(config.name, handles)
            raise
        return handles

    def restart(
        self, config: TableConfig, index: int, old, resources: ShardResources, detached=False
    ):
        """The actor of shard ``index`` in place of ``old``, which died: the replacement
        another process started first, or a new, empty one (to be loaded from a checkpoint).
        The name is the lock; no actor but ``old`` (it may hang, not be gone) is killed."""
        if isinstance(old, hosts.HostedHandle):
            return hosts.restart_hosted(self, config, index, old, resources, detached)
        name = actor_name(config.name, index)
        with contextlib.suppress(Exception):  # already gone
            self._ray.kill(old, no_restart=True)
        deadline = time.monotonic() + 60
        while True:
            held = self._holder(name)
            if held is not None and held._actor_id != old._actor_id:
                return held  # another process restarted it first: use that one
            if held is None:
                try:
                    handle = self._start_actor(config, index, resources, detached, initialize=False)
                    self.get([handle.ping.remote()], timeout=600)
                    return handle
                except self._ray.exceptions.ActorAlreadyExistsError:
                    pass  # another process took the name just now (or the dead one holds it)
            if time.monotonic() > deadline:  # the cluster frees a dead actor's name late
                raise ShardUnavailableError(
                    f"Shard {index} of table {config.name!r}: its dead actor kept its name 60 s."
                )
            time.sleep(0.2)

    def alive(self, handles: list, timeout: float = 30.0) -> list[dict | None]:
        """Each shard's ``info()``; ``None`` for a shard that died or does not answer."""
        refs = [h.info.remote() for h in handles]
        out = []
        for ref in refs:
            try:
                out.append(self._ray.get(ref, timeout=timeout))
            except (self._ray.exceptions.RayActorError, self._ray.exceptions.GetTimeoutError):
                out.append(None)
            except self._ray.exceptions.RayTaskError as err:
                if not isinstance(getattr(err, "cause", None), hosts.TableNotHostedError):
                    raise
                out.append(None)  # its host was restarted without it
        return out

    def _holder(self, name: str):
        """The actor named ``name`` now, or ``None``."""
        try:
            return self._ray.get_actor(name, namespace=NAMESPACE)
        except ValueError:
            return None

    def _start_actor(self, config, index, resources, detached, initialize):
        options = self.actor_options(actor_name(config.name, index), config.device,
                                     resources, detached)  # fmt: skip
        return (
            self._cls()
            .options(**options)
            .remote(config, index, initialize=initialize, detached=detached)
        )

    def actor_options(self, name: str, device: str, resources, detached: bool) -> dict:
        """Ray's options for a shard (or host) actor named ``name``."""
        num_gpus = resources.num_gpus or (1.0 if device == "gpu" else 0.0)
        options: dict[str, Any] = {
            "name": name,
            "num_cpus": resources.num_cpus,
            "num_gpus": num_gpus,
            "namespace": NAMESPACE,
            # A retried push could apply twice: no restarts, no retries, ever.
            "max_restarts": 0,
            "max_task_retries": 0,
            "max_concurrency": 1,
        }
        if resources.memory:
            options["memory"] = int(resources.memory)
        if resources.resources:
            options["resources"] = dict(resources.resources)
        if resources.spread:
            options["scheduling_strategy"] = "SPREAD"
        if detached:
            options["lifetime"] = "detached"
        return options

    def _exists(self, name: str) -> bool:
        try:
            self._ray.get_actor(name, namespace=NAMESPACE)
        except ValueError:
            return False
        return True

    def attach(self, name: str) -> tuple[TableConfig, list, bool]:
        first = self._holder(actor_name(name, 0))
        if first is None and (hosted := hosts.attach_hosted(self, name)) is not None:
            return hosted
        if first is None:
            raise TableNotFoundError(
                f"No table named {name!r} on this Ray cluster (namespace {NAMESPACE!r}). "
                f"Received: name={name!r}"
            )
        config, detached = self.get([first.get_config.remote()], timeout=60)[0]
        handles = [first, *(self._holder(actor_name(name, i)) for i in range(1, config.num_shards))]
        missing = [i for i, h in enumerate(handles) if h is None]
        if missing:
            raise ShardUnavailableError(f"Shard(s) {missing} of table {name!r} are missing.")
        return config, handles, detached

    def submit(self, handle, method: str, *args):
        return getattr(handle, method).remote(*args)

    def submit_many(self, calls: list[tuple]) -> list[tuple]:
        """Send the ``(handle, method, args)`` ``calls`` at once; those to one actor (a shard
        host, or for pushes a shard's own) travel together (``call_many``), rung on its
        doorbell where it shares this machine (:func:`bells.send_many`). Returns per call
        ``(future, pick)``: ``pick`` is its item in the fused answer (a list of errors)."""
        out: list = [None] * len(calls)
        by_actor: dict = {}
        for i, (handle, method, args) in enumerate(calls):
            if isinstance(handle, hosts.HostedHandle) or method == "push_at":
                by_actor.setdefault(handle._actor_id, []).append(i)
            else:
                out[i] = (self.submit(handle, method, *args), None)
        for idx in by_actor.values():
            first = calls[idx[0]][0]
            hosted = isinstance(first, hosts.HostedHandle)
            items = [(calls[i][0].table if hosted else None, calls[i][1], calls[i][2])
                     for i in idx]  # fmt: skip
            future = bells.send_many(self, first.actor if hosted else first, items)
            for pick, i in enumerate(idx):
                out[i] = (future, pick)
        return out

    def get(self, futures: list, timeout: float | None = None) -> list:
        if any(type(f) is doorbell.DoorbellFuture for f in futures):
            return doorbell.values(futures, timeout, lambda rest: self.get(rest, timeout))
        ray = self._ray
        known = _FINISHED.values(futures)
        if known is not None:
            return known  # a fused push's answer, fetched already for another table
        try:
            values = ray.get(futures, timeout=timeout)
            _FINISHED.add(futures, values)
            return values
        except ray.exceptions.GetTimeoutError as err:
            raise ShardTimeoutError(
                f"A shard did not answer within {timeout} s ({len(futures)} requests)."
            ) from err
        except ray.exceptions.RayTaskError as err:
            cause = getattr(err, "cause", None)
            if isinstance(cause, ShardembError):
                raise cause from None
            raise ShardError(f"A shard failed: {cause!r}") from err
        except ray.exceptions.RayActorError as err:
            raise ShardUnavailableError(
                f"A shard actor died or is unreachable: {_short(err)}"
            ) from err

    def done(self, futures: list) -> tuple[list, list]:
        """``(finished, not finished)`` of ``futures``, without waiting."""
        if any(type(f) is doorbell.DoorbellFuture for f in futures):
            return doorbell.done(futures, self.done)
        unknown = _FINISHED.unknown(futures)
        if unknown:
            ready, _ = self._ray.wait(
                unknown, num_returns=len(unknown), timeout=0, fetch_local=False
            )
            _FINISHED.add(ready)
        running = _FINISHED.unknown(futures)
        still = set(map(id, running))
        return [f for f in futures if id(f) not in still], running

    def wait(self, futures: list, timeout: float | None = None) -> None:
        """Block until ``futures`` are finished (successfully or not), without raising
        their errors: the caller collects those separately."""
        if any(type(f) is doorbell.DoorbellFuture for f in futures):
            return doorbell.wait(futures, timeout, self.wait)
        unknown = _FINISHED.unknown(futures)
        if not unknown:
            return
        _, not_ready = self._ray.wait(
            unknown, num_returns=len(unknown), timeout=timeout, fetch_local=False
        )
        if not_ready:
            raise ShardTimeoutError(f"{len(not_ready)} push(es) did not finish within {timeout} s.")
        _FINISHED.add(unknown)

    def kill(self, name: str, handles: list) -> None:
        """Kill the shards ``handles`` of table ``name`` and whatever holds their names (a
        replacement this handle never saw); return once the names are free for everyone."""
        if handles and isinstance(handles[0], hosts.HostedHandle):
            return hosts.kill_hosted(self, name, handles)
        for h in handles:  # dead ones too: a hung actor keeps its name
            with contextlib.suppress(Exception):  # already gone is fine when closing
                self._ray.kill(h, no_restart=True)
        deadline = time.monotonic() + 30  # the cluster frees the names a moment later
        for i in range(len(handles)):
            while (held := self._holder(actor_name(name, i))) and time.monotonic() < deadline:
                with contextlib.suppress(Exception):
                    self._ray.kill(held, no_restart=True)
                time.sleep(0.05)

    def node_of(self, handles: list) -> list[dict]:
        return self.get([h.node.remote() for h in handles], timeout=60)


class _FinishedFutures:
    """The futures this process has seen finished (the newest few thousand), with their
    answers where they are a push's (None, or a fused call's list of errors). The tables
    of a group share one future per host and step (a fused push): the first table to see
    it finished, or to fetch its answer, spares the others a Ray call each (~0.1 ms)."""

    KEEP = 4096

    def __init__(self) -> None:
        self._seen: collections.OrderedDict[bytes, object] = collections.OrderedDict()
        self._lock = threading.Lock()

    def unknown(self, futures: list) -> list:
        """The futures of ``futures`` not known to be finished."""
        with self._lock:
            return [f for f in futures if f.binary() not in self._seen]

    def values(self, futures: list) -> list | None:
        """The answers of ``futures`` when every one is kept, else None."""
        with self._lock:
            got = [self._seen.get(f.binary(), _NOT_KEPT) for f in futures]
        return None if any(v is _NOT_KEPT for v in got) else got

    def add(self, futures: list, values: list | None = None) -> None:
        """``futures`` finished; ``values``: their answers (only pushes' are kept)."""
        with self._lock:
            for i, f in enumerate(futures):
                value = values[i] if values is not None else _NOT_KEPT
                keep = value is None or type(value) is list
                key = f.binary()
                if keep or key not in self._seen:
                    self._seen[key] = value if keep else _NOT_KEPT
            while len(self._seen) > self.KEEP:
                self._seen.popitem(last=False)


_NOT_KEPT = object()
_FINISHED = _FinishedFutures()


def ensure_ray(address: str | None = None) -> None:
    """Connect to ``address`` (or ``RAY_ADDRESS``), or start a local Ray runtime if none
    is running. A runtime the caller already started with ``ray.init`` is used as is.

    Without an address a new local runtime is started (``address="local"``): a bare
    ``ray.init()`` would join whatever cluster another user's ``ray_current_cluster``
    file in the shared temp folder points to. Clusters are joined only when asked."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        _check_reachable(address)
    try:
        if address:
            ray.init(address=address, logging_level="WARNING")
        else:
            ray.init(address="local", include_dashboard=False, logging_level="WARNING")
            # Ours to stop at exit as a script's last ray.shutdown() would (this runs before
            # Ray's own exit hook, which first sleeps 0.5 s for the workers' last log lines).
            atexit.register(ray.shutdown)
    except Exception as err:
        ray.shutdown()
        if refused_auth(err):  # Ray's own message is a bare "Failed to connect"
            raise ClusterConnectionError(auth_help(address)) from err
        raise ClusterConnectionError(
            f"Could not connect to the Ray cluster. Received: address={address!r} "
            f"({type(err).__name__}: {str(err).strip()[:300]})"
        ) from err


def _check_reachable(address: str, timeout: float = 10.0) -> None:
    """Fail fast on a ``host:port`` nobody listens on (``ray.init`` would retry for
    minutes) or that refuses this process's token (20 s of retries). Other forms
    (``auto``, ``ray://...``) are left to Ray."""
    import socket

    host, sep, port = address.rpartition(":")
    if not sep or "/" in address or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as err:
        raise ClusterConnectionError(
            f"No Ray cluster answers at that address ({err.strerror or err}). Start one with "
            f"`ray start --head` or `shardemb cluster up`, or fix the address. "
            f"Received: address={address!r}"
        ) from None
    check_token(address, timeout)


def check_timeout(timeout: object) -> None:
    """``timeout`` must be a positive finite number of seconds, or ``None`` (no limit)."""
    if timeout is None:
        return
    ok = isinstance(timeout, int | float | np.integer | np.floating) and not isinstance(
        timeout, bool | np.bool_
    )
    if not ok or not math.isfinite(timeout) or timeout <= 0:
        raise InvalidConfigError(
            "`timeout` must be a positive finite number of seconds or None (no limit). "
            f"Received: timeout={timeout!r} (of type {type(timeout).__name__})"
        )


def get_backend(backend: str, address: str | None = None):
    """The backend called ``backend`` (one of :data:`BACKENDS`)."""
    if backend == "ray":
        return RayBackend(address)
    if backend == "inprocess":
        return InProcessBackend()
    raise InvalidConfigError(f"`backend` must be one of {BACKENDS}. Received: backend={backend!r}")


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:300] if text else type(err).__name__
