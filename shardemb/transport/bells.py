"""Doorbells as the shard actors and the router use them.

:mod:`shardemb.transport.doorbell` is the ring itself; here are its two users:

- :class:`RungActor`, mixed into a Ray actor class (the shard hosts of grouped tables, and
  :class:`~shardemb.transport.shard_actor.RungShardActor`, a table's shard in an actor of
  its own): it serves the doorbells of the routers on its machine, and with
  :func:`in_order` on every Ray method it runs each Ray call under its lock and only after
  the pushes rung before it, so a router's lookup, flush or save through Ray sees them;
- :func:`send_many`, the router's side: one push's items to one actor, rung where the
  actor shares this machine's memory, else one Ray call.
"""

from __future__ import annotations

import functools
import inspect
import threading
import warnings

from shardemb.errors import ShardembError, ShardError
from shardemb.transport.doorbell import DoorbellClient, DoorbellServer

__all__ = ["RING_DOORBELLS", "RungActor", "in_order", "send_many", "serve_in_order"]

#: Ring the doorbells of actors on this machine (False: every push is a Ray call; for
#: comparison, as the benchmarks do).
RING_DOORBELLS = True


def in_order(method):
    """An actor's Ray method: run under the actor's lock, after every push rung before it.
    Only the outermost call drains: a method called from another (or from a rung push)
    must not apply later pushes in the middle of an earlier one."""

    @functools.wraps(method)
    def run(self, *args, **kwargs):
        with self._lock:
            self._drain_bells()
            self._depth += 1
            try:
                return method(self, *args, **kwargs)
            finally:
                self._depth -= 1

    run.in_order = True
    return run


def serve_in_order(cls):
    """Class decorator: :func:`in_order` on every public method of ``cls`` and its bases
    (an actor whose every Ray method must see the pushes rung before it)."""
    for name in dir(cls):
        if name.startswith("_"):
            continue
        raw = inspect.getattr_static(cls, name)
        if inspect.isfunction(raw) and not getattr(raw, "in_order", False):
            setattr(cls, name, in_order(raw))
    return cls


class RungActor:
    """Mixed into a Ray actor class: serves doorbells. Call :meth:`_init_bells` in
    ``__init__``; :meth:`_target` finds the object an item's table names."""

    def _init_bells(self) -> None:
        self._lock = threading.RLock()  # Ray's calls and the doorbells' threads
        self._bells: list[DoorbellServer] = []
        self._depth = 0  # calls in progress under the lock (only the outermost drains)

    def _drain_bells(self) -> None:
        """Apply what every doorbell has rung so far (the lock held)."""
        if self._depth or not self._bells:
            return
        self._depth += 1
        try:
            for bell in list(self._bells):
                bell.drain()
        finally:
            self._depth -= 1

    @in_order
    def attach_doorbell(self, names) -> int:
        """Serve a router's doorbell (:class:`~shardemb.transport.doorbell.DoorbellServer`);
        returns the doorbells served now."""
        self._bells.append(DoorbellServer(names, self._apply_rung, self._lock, self._bells.remove))
        return len(self._bells)

    def _apply_rung(self, items: list) -> list:
        """A rung push, applied by a doorbell's thread (the lock held)."""
        self._depth += 1  # the methods it calls must not drain again
        try:
            return self._call_many(items)
        finally:
            self._depth -= 1

    @in_order
    def doorbells(self) -> int:
        """How many routers' doorbells this actor serves now."""
        return len(self._bells)

    @in_order
    def call_many(self, items: list) -> list:
        """Run every ``(table, method, args)`` of ``items`` in order; one item's failure
        does not stop the others. Returns, per item, ``None`` or its error (each table's
        router raises its own)."""
        return self._call_many(items)

    def _call_many(self, items: list) -> list:
        out: list = []
        for table, method, args in items:
            try:
                getattr(self._target(table), method)(*args)
                out.append(None)
            except ShardembError as err:
                out.append(err)
            except Exception as err:  # noqa: BLE001 - reported to the table's router
                out.append(ShardError(f"{self._describe(table)}: {method} failed: {err!r}"))
        return out

    def _target(self, table: str | None):
        """The object that serves ``table``'s items."""
        raise NotImplementedError

    def _describe(self, table: str | None) -> str:
        """``table``'s shard here, in words, for errors."""
        raise NotImplementedError


# -- the router's side -------------------------------------------------------------------
#: This process's doorbells, by actor id (None: that actor is called through Ray), and per
#: actor its last push sent through Ray: until that one is applied, pushes keep to Ray (a
#: rung push is applied as soon as it is rung: it could overtake the Ray call).
_bells: dict = {}
_ray_pushes: dict = {}
_bells_lock = threading.Lock()


def send_many(backend, actor, items: list):
    """Send ``items`` (``(table, method, args)``) to ``actor`` (a :class:`RungActor`) in
    one go: rung on its doorbell (:mod:`shardemb.transport.doorbell`) when they are pushes
    through this machine's shared memory, else one ``call_many`` Ray call. Returns the
    future; its answer is per item None or its error."""
    key = actor._actor_id.binary()
    with _bells_lock:
        pushes = all(m == "push_at" and a[1] == "apply_gradients_shm" for _, m, a in items)
        if pushes and RING_DOORBELLS:
            bell = _doorbell(backend, actor, key)
            last = _ray_pushes.get(key)
            if bell is not None and (last is None or backend.done([last])[0]):
                _ray_pushes.pop(key, None)
                future = bell.send(items)
                if future is not None:
                    return future
        future = actor.call_many.remote(items)
        _ray_pushes[key] = future
        return future


def _doorbell(backend, actor, key: bytes) -> DoorbellClient | None:
    """This process's doorbell of ``actor`` (made on first use), or None."""
    if key not in _bells:
        bell = None
        try:
            bell = DoorbellClient()
            backend._ray.get(actor.attach_doorbell.remote(bell.names), timeout=60)
            bell.opened()
        except Exception as err:  # noqa: BLE001 - no doorbell: the actor is called through Ray
            if bell is not None:
                bell.close()
            bell = None
            if isinstance(err, OSError):  # this machine's shared memory, not the actor
                warnings.warn(
                    f"No doorbell for shard actor {actor._actor_id.hex()[:12]} ({err}): its "
                    "pushes go as Ray calls from now on (slower). Give /dev/shm more room "
                    "(e.g. docker run --shm-size=2g) to keep the fast path.",
                    RuntimeWarning,
                    stacklevel=5,
                )
        _bells[key] = bell
    bell = _bells[key]
    return bell if bell is not None and bell.gone is None else None
