"""The store's exchange with its shards: one request per shard, all in flight at once,
through shared memory for co-located shards and Ray's object transfer for the others.

Called by :class:`~shardemb.store.embedding_store.EmbeddingStore` under its lock, after it
validated the ids and gradients.
"""

from __future__ import annotations

import warnings

import numpy as np

from shardemb.core.router import assemble, plan_lookup
from shardemb.errors import ShardError

__all__ = ["gather_table", "lookup", "plan_push", "push", "write_table"]

#: Rows per block when the whole table moves (to_numpy, set_weights).
BLOCK_ROWS = 1 << 20


def lookup(store, flat: np.ndarray, dedup) -> np.ndarray:
    """Rows of the 1-D ids ``flat``: one request per shard that holds any, all in flight at
    once; co-located shards write rows straight into shared memory."""
    cfg = store.config
    if flat.size == 0:
        return np.empty((0, cfg.dim), dtype=cfg.dtype)
    channel = store._channel()
    readers = channel.readers(range(cfg.num_shards)) if channel is not None else None
    if readers is not None:
        return _read_shared(store, flat, channel, readers)
    plan = plan_lookup(flat, cfg.partition, dedup=dedup, deduplicator=store._dedup)
    split = plan.split
    n = split.local.size
    if channel is not None and not _reserve(store, channel.lookup, n):
        channel = None
    if channel is None:
        asked = [s for s in range(cfg.num_shards) if split.bounds[s + 1] > split.bounds[s]]
        futures = [
            store._backend.submit(store._handles[s], "lookup", split.local_rows(s)) for s in asked
        ]
        answers = store._get(futures)
        grouped = answers[0] if len(answers) == 1 else np.concatenate(answers)
        return assemble(plan, grouped)
    # Shards write each row straight to its final place in shared memory: at its
    # asked position, or for a deduplicated plan at its grouped position.
    buf = channel.lookup
    request = buf.stamp()  # shards serve the request only while this is its stamp
    buf.ids(n)[:] = split.local
    dest = split.order if plan.inverse is None else np.arange(n)
    buf.pos(n)[:] = dest
    futures, remote, shm = [], [], []
    try:
        for s in range(cfg.num_shards):
            a, b = int(split.bounds[s]), int(split.bounds[s + 1])
            if a == b:
                continue
            if channel.local[s]:
                method, args = "lookup_shm", (buf.names, a, b, request)
                shm.append((len(futures), s, b - a))
            else:
                method, args = "lookup", (split.local_rows(s),)
                remote.append((len(futures), a, b))
            futures.append(store._backend.submit(store._handles[s], method, *args))
        answers = store._get(futures)
    except BaseException:
        # A request still queued on a slow shard would run later, on buffers the next
        # lookup has filled: retire these (stamped, removed; the next lookup makes new ones).
        buf.retire()
        raise
    for i, s, rows in shm:
        if answers[i] != rows:
            buf.retire()
            raise ShardError(
                f"Shard {s} of table {cfg.name!r} skipped lookup request {request} "
                f"({rows} rows): its shared buffers no longer carried that request. "
                f"Received: {answers[i]!r}"
            )
    placed = buf.rows(n)
    for i, a, b in remote:
        placed[dest[a:b]] = answers[i]
    return assemble(plan, placed, owned=False, placed=True)


def _read_shared(store, flat: np.ndarray, channel, readers: list) -> np.ndarray:
    """The rows of ``flat``, gathered here from the shards' shared rows: no Ray call, no
    dedup (a duplicate costs one more copied row, less than deduplicating). Read-your-
    writes: this process's pushes in flight are waited for first."""
    cfg = store.config
    mine = store._pending.futures_of(range(cfg.num_shards))
    if mine:
        store._backend.wait(mine, store.timeout)
        store._raise_pending()  # a push that failed is raised now, not read around
    if len(readers) == 1:
        return readers[0].take(flat)
    joined = channel.joined(readers)
    if joined is not None:  # one gather over all the shards, in the ids' order
        part = cfg.partition
        shard = part.shard_of(flat)
        return joined.take(joined.starts.take(shard) + part.local_rows(flat, shard))
    split = cfg.partition.split(flat)
    grouped = np.empty((flat.size, cfg.dim), dtype=cfg.dtype)
    for s, reader in enumerate(readers):
        a, b = int(split.bounds[s]), int(split.bounds[s + 1])
        if a < b:
            reader.take(split.local[a:b], out=grouped[a:b])
    out = np.empty_like(grouped)
    out[split.order] = grouped
    return out


def push(store, split, flat_grads: np.ndarray) -> None:
    """Send one push (``split`` of the ids, their gradients) without waiting to the shards
    that hold its rows, and only to them; the futures go to the store's pending queue."""
    planned = plan_push(store, split, flat_grads)
    # Through submit_many, as fused pushes: a shard actor on this machine is rung.
    sent = store._backend.submit_many([(store._handles[s], m, a) for s, m, a, _ in planned])
    for (s, _, _, buf), (fut, pick) in zip(planned, sent, strict=True):
        if buf is not None:
            buf.futures.append(fut)
        store._pending.append((s, fut), pick)


def plan_push(store, split, flat_grads: np.ndarray) -> list[tuple]:
    """The calls of one push: ``(shard, method, args, buffers)`` for each shard that holds
    its rows (``buffers``: the shared-memory push buffers the call reads, or None). The
    caller sends them all, at once (:func:`push`, :mod:`shardemb.store.fused`).

    Each push gets the next number of the table's sequence (``store._seq``, continued from
    the shards' steps on a handle's first push), and every shard it reaches applies it as
    that step: a shard that no push addressed for a while still counts the table's
    pushes (Adam's bias correction), exactly as if every push had reached every shard."""
    if store._seq is None:  # this handle's first push: continue the table's count
        infos = store._get([store._backend.submit(h, "info") for h in store._handles])
        store._seq = max(i["step"] for i in infos)
    asked = [s for s in range(len(store._handles)) if split.bounds[s + 1] > split.bounds[s]]
    channel = store._channel() if asked else None
    if channel is not None:
        buf = channel.next_push(store._backend, store.timeout)
        if not _reserve(store, buf, split.local.size):
            channel = None
    if channel is not None:
        buf.ids(split.local.size)[:] = split.local
        np.take(flat_grads, split.order, axis=0, out=buf.rows(split.local.size), mode="clip")
    # Numbered once nothing can fail before it is sent: a numbered push is sent.
    store._seq += 1
    step = store._seq
    planned = []
    for s in asked:
        if channel is not None and channel.local[s]:
            a, b = int(split.bounds[s]), int(split.bounds[s + 1])
            args = (step, "apply_gradients_shm", buf.ids_name, buf.rows_name, a, b)
            planned.append((s, "push_at", args, buf))
        else:
            rows, grads = split.local_rows(s), flat_grads[split.positions(s)]
            planned.append((s, "apply_gradients", (rows, grads, step), None))
    return planned


def gather_table(store, method: str, *args) -> np.ndarray:
    """A whole per-row array gathered from every shard by ``method``, in global row order."""
    cfg = store.config
    part = cfg.partition
    # A slot may be narrower than a row (row-wise Adagrad keeps one value per row).
    width = cfg.optimizer.slot_specs(cfg.dim)[args[0]][0] if method == "read_slot" else cfg.dim
    dtype = cfg.slot_dtype if method == "read_slot" else cfg.dtype
    out = np.empty((cfg.vocab_size, width), dtype=dtype)
    for block in _blocks(part):
        futures = [
            store._backend.submit(store._handles[s], method, *args, a, b) for s, a, b in block
        ]
        for (s, a, b), rows in zip(block, store._get(futures), strict=True):
            out[part.global_slice(s, a, b)] = rows
    return out


def write_table(store, arr: np.ndarray) -> None:
    """Overwrite every row of every shard with the checked ``(vocab_size, dim)`` ``arr``."""
    cfg = store.config
    part = cfg.partition
    for block in _blocks(part):
        futures = []
        for s, a, b in block:
            rows = np.ascontiguousarray(arr[part.global_slice(s, a, b)], cfg.dtype)
            futures.append(store._backend.submit(store._handles[s], "write_rows", a, rows))
        store._get(futures)


def _blocks(part):
    """Contiguous local rows of every shard, ``BLOCK_ROWS`` at a time: for each block the
    ``(shard, start, stop)`` of the shards that still have rows."""
    sizes = part.shard_sizes().tolist()
    for start in range(0, max(sizes), BLOCK_ROWS):
        yield [(s, start, min(start + BLOCK_ROWS, n)) for s, n in enumerate(sizes) if start < n]


def _reserve(store, buf, n: int) -> bool:
    """Make room for ``n`` rows in shared memory; when ``/dev/shm`` is too small, warn once
    and send this table's rows through Ray from now on (slower, never a crash)."""
    try:
        buf.reserve(n)
    except OSError as err:
        warnings.warn(
            f"Table {store.config.name!r}: shared memory is too small ({err}); its rows go "
            "through Ray's object transfer from now on (slower). Give /dev/shm more room "
            "(e.g. docker run --shm-size=2g) to keep the fast path.",
            RuntimeWarning,
            stacklevel=4,
        )
        store._reset_channel(probe_again=False)
        return False
    return True
