"""One step's pushes to many tables in one exchange: a call per shard process, not per
table.

Tables whose shards share host processes (``group=``, :mod:`shardemb.transport.hosts`)
get their pushes of a step in one call per host: 26 tables on 2 shards cost 2 Ray calls a
step instead of 52. Each table's push keeps its own sequence number, its own pending queue
and its own errors: a failure of one table's item is raised by that table, never by the
others in the same call. The Keras layers call this once per optimizer step for all the
sharded layers of a model (:mod:`shardemb.keras.training`).

Example:
    >>> import numpy as np, shardemb
    >>> a = shardemb.EmbeddingStore.create("doc-fa", 10, 2, num_shards=2, backend="inprocess",
    ...     optimizer={"name": "sgd", "learning_rate": 1.0}, initializer="zeros")
    >>> b = shardemb.EmbeddingStore.create("doc-fb", 10, 2, num_shards=2, backend="inprocess",
    ...     optimizer={"name": "sgd", "learning_rate": 1.0}, initializer="zeros")
    >>> shardemb.EmbeddingStore.apply_gradients_many(
    ...     [(a, [1, 2], np.ones((2, 2), np.float32)), (b, [3], np.ones((1, 2), np.float32))])
    >>> a.lookup(1).tolist(), b.lookup(3).tolist()
    ([-1.0, -1.0], [-1.0, -1.0])
    >>> a.close(); b.close()
"""

from __future__ import annotations

import contextlib

import shardemb.store.exchange as exchange
from shardemb.errors import InvalidConfigError

__all__ = ["apply_gradients_many"]


def apply_gradients_many(pushes) -> None:
    """Push ``(store, ids, grads)`` for each item of ``pushes``, as each store's
    ``apply_gradients`` would, with the calls to shards that share a process fused (the
    stores are :class:`EmbeddingStore` tables: the caller checks).

    Every item is checked before anything is sent: an invalid one raises and nothing is
    applied to any table."""
    checked = []
    for item in pushes:
        try:
            store, ids, grads = item
        except (TypeError, ValueError):
            raise InvalidConfigError(
                f"Each push must be a (store, ids, grads) triple. Received: {item!r}"
            ) from None
        checked.append((store, *store._checked_push(ids, grads)))
    if not checked:
        return
    stores = sorted({id(s): s for s, _, _ in checked}.values(), key=lambda s: s.config.name)
    with contextlib.ExitStack() as locks:
        for store in stores:  # one order everywhere: no two callers deadlock
            locks.enter_context(store._lock)
        for store in stores:
            store._raise_pending()
        calls, owners = {}, {}
        for store, split, grads in checked:
            backend = store._backend
            calls.setdefault(backend.name, (backend, []))
            for s, method, args, buf in exchange.plan_push(store, split, grads):
                owners.setdefault(backend.name, []).append((store, s, buf))
                calls[backend.name][1].append((store._handles[s], method, args))
        for name, (backend, batch) in calls.items():
            sent = backend.submit_many(batch)
            for (store, s, buf), (future, pick) in zip(owners[name], sent, strict=True):
                if buf is not None:
                    buf.futures.append(future)
                store._pending.append((s, future), pick)
        for store in stores:
            overflow = store._pending.take_overflow()
            if overflow:
                store._settle(overflow)
