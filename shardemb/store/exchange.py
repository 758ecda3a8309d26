"""The store's exchange with its shards: one request per shard, all in flight at once,
through shared memory for co-located shards and Ray's object transfer for the others.

Called by :class:`~shardemb.store.embedding_store.EmbeddingStore` under its lock, after it
validated the ids and gradients.
"""

from __future__ import annotations

import warnings

import numpy as np

from shardemb.core.router import assemble, plan_lookup

__all__ = ["gather_table", "lookup", "push", "write_table"]

#: Rows per block when the whole table moves (to_numpy, set_weights).
BLOCK_ROWS = 1 << 20


def lookup(store, flat: np.ndarray, dedup) -> np.ndarray:
    """Rows of the 1-D ids ``flat``: one request per shard that holds any, all in flight at
    once; co-located shards write rows straight into shared memory."""
    cfg = store.config
    if flat.size == 0:
        return np.empty((0, cfg.dim), dtype=cfg.dtype)
    plan = plan_lookup(flat, cfg.partition, dedup=dedup, deduplicator=store._dedup)
    split = plan.split
    n = split.local.size
    channel = store._channel()
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
    buf.ids(n)[:] = split.local
    dest = split.order if plan.inverse is None else np.arange(n)
    buf.pos(n)[:] = dest
    futures, remote = [], []
    for s in range(cfg.num_shards):
        a, b = int(split.bounds[s]), int(split.bounds[s + 1])
        if a == b:
            continue
        if channel.local[s]:
            method, args = "lookup_shm", (buf.names, a, b)
        else:
            method, args = "lookup", (split.local_rows(s),)
            remote.append((len(futures), a, b))
        futures.append(store._backend.submit(store._handles[s], method, *args))
    answers = store._get(futures)
    placed = buf.rows(n)
    for i, a, b in remote:
        placed[dest[a:b]] = answers[i]
    return assemble(plan, placed, owned=False, placed=True)


def push(store, split, flat_grads: np.ndarray) -> None:
    """Send one push (``split`` of the ids, their gradients) to the shards without waiting;
    the futures go to the store's pending queue."""
    channel = store._channel()
    if channel is not None:
        buf = channel.next_push(store._backend, store.timeout)
        if not _reserve(store, buf, split.local.size):
            channel = None
    if channel is not None:
        buf.ids(split.local.size)[:] = split.local
        np.take(flat_grads, split.order, axis=0, out=buf.rows(split.local.size), mode="clip")
    # Every shard gets the call, also with no rows, so all agree on the step count.
    for s, handle in enumerate(store._handles):
        if channel is not None and channel.local[s]:
            a, b = int(split.bounds[s]), int(split.bounds[s + 1])
            fut = store._backend.submit(
                handle, "apply_gradients_shm", buf.ids_name, buf.rows_name, a, b
            )
            buf.futures.append(fut)
        else:
            fut = store._backend.submit(
                handle,
                "apply_gradients",
                split.local_rows(s),
                flat_grads[split.positions(s)],
            )
        store._pending.append((s, fut))


def gather_table(store, method: str, *args) -> np.ndarray:
    """A whole per-row array gathered from every shard by ``method``, in global row order."""
    cfg = store.config
    part = cfg.partition
    # A slot may be narrower than a row (row-wise Adagrad keeps one value per row).
    width = cfg.optimizer.slot_specs(cfg.dim)[args[0]][0] if method == "read_slot" else cfg.dim
    out = np.empty((cfg.vocab_size, width), dtype=cfg.dtype)
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
