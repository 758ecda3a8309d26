"""Reading: verify a checkpoint, read it whole, restore a table or refill one shard."""

from __future__ import annotations

import time

import numpy as np

from shardemb.checkpoint.chunks import ChunkIO, check_inside, raise_read_error
from shardemb.checkpoint.format import MANIFEST, READ_WINDOW_BYTES, array_dtype, layout_of
from shardemb.checkpoint.location import Location
from shardemb.checkpoint.manifest import array_shapes, read_manifest
from shardemb.core.config import TableConfig
from shardemb.core.partition import Partition
from shardemb.errors import (
    CheckpointCorruptError,
    CheckpointError,
    InvalidConfigError,
    ShardembError,
)

#: Creates an empty table for :func:`restore_store`: ``factory(config, **runtime)``. The
#: store layer (above this one) registers it, so the checkpoint layer never imports it.
_table_factory = None


def register_table_factory(factory) -> None:
    """Set how :func:`restore_store` creates tables (``shardemb.store`` calls this)."""
    global _table_factory
    _table_factory = factory


def verify_checkpoint(
    path: str, *, expected_table: str | None = None, read_data: bool = False
) -> dict:
    """Check the checkpoint at ``path`` and return its manifest: the manifest, then each
    array's metadata (shape, dtype, chunks) and the presence and size of every chunk
    (a listing, no data read); with ``read_data`` also every chunk's checksum.

    Raises :class:`~shardemb.CheckpointCorruptError` naming the array and what is wrong.
    """
    import zarr

    m = read_manifest(path, expected_table=expected_table)
    loc = Location.of(path)
    try:
        files = loc.sizes("shards")
    except OSError as err:  # a dangling symlink is damage, a permission error is I/O
        raise_read_error(path, "its chunks cannot be listed", err)
    for key in files if loc.local else ():
        check_inside(loc, path, f"shards/{key}")
    zstore = loc.zarr_store(read_only=True)
    for name, shape in array_shapes(m).items():
        try:
            arr = zarr.open_array(zstore, path=name, mode="r")
        except Exception as err:  # noqa: BLE001 - any failure here means damage
            raise_read_error(path, f"array {name!r} cannot be opened", err)
        chunks = [m["chunk_rows"], shape[1]]
        dtype = array_dtype(m, name)
        if list(arr.shape) != shape or list(arr.chunks) != chunks or arr.dtype != dtype:
            raise CheckpointCorruptError(
                f"Checkpoint {path!r}: array {name!r} has shape {list(arr.shape)}, chunks "
                f"{list(arr.chunks)}, dtype {arr.dtype}; the manifest says shape {shape}, "
                f"chunks {chunks}, dtype {dtype}."
            )
        rel = name.removeprefix("shards/")
        nchunks = -(-shape[0] // chunks[0])
        missing = [f"c/{i}/0" for i in range(nchunks) if f"{rel}/c/{i}/0" not in files]
        if missing:
            raise CheckpointCorruptError(
                f"Checkpoint {path!r}: array {name!r} is missing {len(missing)} of {nchunks} "
                f"chunks ({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''})."
            )
        if not m.get("compression"):
            size = chunks[0] * shape[1] * np.dtype(dtype).itemsize + (4 if m.get("checksum") else 0)
            bad = [f"c/{i}/0" for i in range(nchunks) if files[f"{rel}/c/{i}/0"] != size]
            if bad:
                raise CheckpointCorruptError(
                    f"Checkpoint {path!r}: array {name!r} has chunks of the wrong size "
                    f"({', '.join(bad[:5])}); each should be {size} bytes."
                )
    if read_data:
        with ChunkIO(loc, path, **layout_of(m)) as io:
            for name, (rows, width) in array_shapes(m).items():
                window = max(m["chunk_rows"], READ_WINDOW_BYTES // (width * 8))
                window -= window % m["chunk_rows"]
                buf = np.empty((min(window, rows), width), array_dtype(m, name))
                for start in range(0, rows, window):
                    stop = min(start + window, rows)
                    io.read(name, rows, start, stop, buf[: stop - start])
    return m


def read_table(path: str, *, slot: str | None = None) -> np.ndarray:
    """The whole saved table (or optimizer ``slot``) as one numpy array, in global row
    order: reads every shard's array here (for inspection and export, not restore).

    Example:
        >>> import os, tempfile, shardemb
        >>> s = shardemb.EmbeddingStore.create("doc-read", 10, 3, num_shards=2,
        ...                                    optimizer="adagrad", backend="inprocess")
        >>> path = os.path.join(tempfile.mkdtemp(), "c")
        >>> _ = s.save(path)
        >>> acc = read_table(path, slot="accumulator")  # Adagrad's, untouched so far
        >>> read_table(path).shape, acc.shape, bool((acc == acc.dtype.type(0.1)).all())
        ((10, 3), (10, 3), True)
        >>> s.close()
    """
    m = verify_checkpoint(path)
    if slot is not None and slot not in m["slots"]:
        raise InvalidConfigError(
            f"`slot` must be one of {sorted(m['slots'])} for checkpoint {path!r}. "
            f"Received: slot={slot!r}"
        )
    kind = "weights" if slot is None else f"slots/{slot}"
    width = m["shape"][1] if slot is None else m["slots"][slot]
    part = Partition(m["partition"], m["shape"][0], m["num_shards"])
    dtype = array_dtype(m, kind)
    out = np.empty((m["shape"][0], width), dtype)
    with ChunkIO(Location.of(path), path, **layout_of(m)) as io:
        for s, rows in enumerate(m["shard_rows"]):
            block = np.empty((rows, width), dtype)
            out[part.global_rows(s)] = io.read(f"shards/{s}/{kind}", rows, 0, rows, block)
    return out


def restore_store(
    path: str,
    *,
    name: str | None = None,
    num_shards: int | None = None,
    partition: str | None = None,
    expected_table: str | None = None,
    **runtime,
):
    """Rebuild the table saved at ``path`` on ``num_shards`` shards with ``partition``
    (default: as saved) under ``name`` (default: the saved name); ``runtime`` are
    :meth:`EmbeddingStore.create`'s ``backend``, ``address``, ``resources``, ``detached``,
    ``timeout``. Rows, slots and step come back bit for bit: training continues exactly.

    Each new shard reads the saved arrays holding its rows, a bounded window at a time.
    Raises :class:`~shardemb.CheckpointNotFoundError` or
    :class:`~shardemb.CheckpointCorruptError` (see :func:`verify_checkpoint`).

    Example:
        >>> import os, tempfile, shardemb
        >>> s = shardemb.EmbeddingStore.create("doc-restore", 10, 2, num_shards=2,
        ...                                    backend="inprocess")
        >>> path = os.path.join(tempfile.mkdtemp(), "c")
        >>> _ = s.save(path)
        >>> r = shardemb.EmbeddingStore.restore(path, name="doc-restored", num_shards=3,
        ...                                     partition="div", backend="inprocess")
        >>> bool((r.to_numpy() == s.to_numpy()).all()), r.num_shards
        (True, 3)
        >>> r.close(); s.close()
    """
    m = verify_checkpoint(path, expected_table=expected_table)
    table = dict(m["table"])
    table["name"] = m["name"] if name is None else name
    table["num_shards"] = m["num_shards"] if num_shards is None else num_shards
    table["partition"] = m["partition"] if partition is None else partition
    cfg = TableConfig.from_dict(table)  # validates name, num_shards, partition
    loc = Location.of(path)
    loc.check_backend(runtime.get("backend", "ray"))
    if _table_factory is None:
        raise RuntimeError("import shardemb first: no table factory is registered")
    store = _table_factory(cfg, **runtime)
    return fill_restored(store, m, path, read_shard, loc, *read_args(m, path))


def fill_restored(store, m: dict, path: str, read, *args):
    """Run ``read(shard, *args)`` on every shard of the new ``store`` restored from
    checkpoint ``m`` at ``path``; on failure remove the store and re-raise. Returns it."""
    try:
        store.shard_call(read, *args)
    except BaseException:
        try:
            store.close()
        except ShardembError:
            pass  # the read error says more
        raise
    store.last_checkpoint = path
    # Under a new name, the table still reloads this checkpoint's shards (recovery).
    store.restored_from = m["name"] if store.config.name != m["name"] else None
    return store


def load_shard(
    store, index: int, path: str, *, step: int | None = None, replace: bool = True
) -> int:
    """Refill shard ``index`` of ``store`` (e.g. a restarted, empty one) with its rows,
    slots and step from the checkpoint at ``path``, saved with any sharding; returns the
    checkpoint's step. The other shards are not touched. ``step`` sets the shard's step
    instead. With ``replace=False`` a shard that holds its rows already is left as it is:
    the shard runs one call at a time, so several processes recovering it load it once,
    and never undo a push applied after that load.

    The checkpoint must be of this table: its saved name is the table's name, or the name
    of the table it was restored from under a new one (``EmbeddingStore.restore(path,
    name=...)`` records it as ``store.restored_from``). A checkpoint of another table,
    even of the same shape, raises :class:`~shardemb.CheckpointCorruptError` naming both.

    Example:
        >>> import os, tempfile, shardemb
        >>> s = shardemb.EmbeddingStore.create("doc-load", 10, 2, num_shards=2,
        ...                                    backend="inprocess")
        >>> path = os.path.join(tempfile.mkdtemp(), "c")
        >>> _ = s.save(path)
        >>> load_shard(s, 1, path)
        0
        >>> s.close()
    """
    m = verify_checkpoint(path)
    cfg = store.config
    slots = {k: w for k, (w, _) in cfg.optimizer.slot_specs(cfg.dim).items()}
    if (m["shape"], m["dtype"], m["slots"]) != ([cfg.vocab_size, cfg.dim], cfg.dtype, slots):
        raise CheckpointCorruptError(
            f"Checkpoint {path!r} holds a {m['shape']} {m['dtype']} table with slots "
            f"{m['slots']}; table {cfg.name!r} is {[cfg.vocab_size, cfg.dim]} {cfg.dtype} "
            f"with slots {slots}."
        )
    own = {cfg.name, getattr(store, "restored_from", None)} - {None}
    if m["name"] not in own:
        raise CheckpointCorruptError(
            f"Checkpoint {path!r} holds table {m['name']!r}, not table {cfg.name!r}"
            + (f" (restored from {store.restored_from!r})" if len(own) > 1 else "")
            + "; a shard is only reloaded from its own table's checkpoints."
        )
    if not 0 <= index < cfg.num_shards:
        raise InvalidConfigError(
            f"`index` must be a shard of table {cfg.name!r} (0 to {cfg.num_shards - 1}). "
            f"Received: index={index!r}"
        )
    if step is not None and (isinstance(step, bool) or not isinstance(step, int | np.integer)):
        raise InvalidConfigError(f"`step` must be an integer or None. Received: step={step!r}")
    loc = Location.of(path)
    loc.check_backend(store.backend_name)
    source, window_rows, path = read_args(m, path)
    if step is not None:
        source["step"], source["applied"] = int(step), None
    source["replace"] = bool(replace)
    store.shard_call(read_shard, loc, source, window_rows, path, only=index)
    return int(m["step"])


def read_args(m: dict, path: str) -> tuple:
    """What :func:`read_shard` needs to know of checkpoint ``m``."""
    source = {k: m[k] for k in ("shape", "num_shards", "partition", "shard_rows", "slots", "step")}
    source.update(layout_of(m), applied=m.get("applied"), save_id=m.get("save_id"))
    source["stamp"] = time.time_ns()
    row_bytes = (m["shape"][1] + sum(m["slots"].values())) * np.dtype(m["dtype"]).itemsize
    window_rows = max(m["chunk_rows"], READ_WINDOW_BYTES // row_bytes)
    return source, window_rows, str(path)


def read_shard(shard, loc: Location, src: dict, window_rows: int, path: str) -> bool:
    """Shard side of a restore: fill this shard's rows and slots from the saved shards'
    arrays, reading for each block of its rows the window of saved rows that holds them.
    Returns whether it did (not when ``src["replace"]`` is false and it holds its rows).
    The shard holds no rows (``loaded`` is false: it serves nothing) until the read is
    complete, so a read that fails midway never leaves a mix of rows to serve."""
    if shard.loaded and not src.get("replace", True):
        return False
    shard.loaded = False
    old = Partition(src["partition"], src["shape"][0], src["num_shards"])
    new = shard.config.partition
    widths = {"weights": src["shape"][1], **{f"slots/{k}": w for k, w in src["slots"].items()}}
    chunk_rows = src["chunk_rows"]
    # Rows of a new mod shard are spread over N times their count of saved rows.
    spread = new.num_shards if new.kind == "mod" and old != new else 1
    block = max(1, window_rows // spread)
    block = max(chunk_rows, block - block % chunk_rows) if block >= chunk_rows else block
    buffers: dict = {}

    def buffer(key, rows: int, width: int) -> np.ndarray:
        buf = buffers.get(key)
        if buf is None or len(buf) < rows:
            buf = buffers[key] = np.empty((rows, width), array_dtype(src, key))
        return buf[:rows]

    storages = {"weights": shard.weights, **{f"slots/{k}": shard.slots[k] for k in src["slots"]}}
    layout = {k: src[k] for k in ("dtype", "slot_dtype", "chunk_rows", "compression", "checksum")}
    with ChunkIO(loc, path, **layout) as chunks:
        for start in range(0, shard.num_rows, block):
            stop = min(start + block, shard.num_rows)
            if old == new:
                local, owner, sources = np.arange(start, stop), None, np.array([shard.index])
            else:
                glob = new.global_rows(shard.index, np.arange(start, stop))
                owner = old.shard_of(glob)
                local = old.local_rows(glob, owner)
                sources = np.flatnonzero(np.bincount(owner, minlength=old.num_shards))
            # Read straight into the shard's rows when they are in host memory.
            dest = {k: st.view(start, stop) for k, st in storages.items()}
            in_place = all(v is not None for v in dest.values())
            if not in_place:
                dest = {k: buffer(("block", k), stop - start, w) for k, w in widths.items()}
            for s in sources.tolist():
                sel = slice(None) if sources.size == 1 else _as_slice(np.flatnonzero(owner == s))
                rows = local[sel]
                lo, hi = int(rows[0]), int(rows[-1]) + 1  # increasing: both maps are monotone
                pick = _as_slice(rows - lo)  # mod and div give strided rows: no fancy indexing
                for kind, width in widths.items():
                    name, num = f"shards/{s}/{kind}", src["shard_rows"][s]
                    if sources.size == 1 and hi - lo == rows.size:
                        chunks.read(name, num, lo, hi, dest[kind])
                    else:
                        window = chunks.read(
                            name, num, lo, hi, buffer(("window", kind), hi - lo, width)
                        )
                        dest[kind][sel] = window[pick]
            if not in_place:
                slots = {k.removeprefix("slots/"): v for k, v in dest.items() if k != "weights"}
                shard.write_block(start, dest["weights"], slots, src["step"])
    _check_unchanged(loc, src, path)
    # Same sharding: each shard gets back what it had applied; else the table's step.
    applied = src.get("applied")
    mine = applied[shard.index] if applied and old == new else {"step": src["step"], "pushes": 0}
    shard.step, shard.pushes = int(mine["step"]), int(mine["pushes"])
    shard.loaded, shard.loaded_from = True, (loc.url, shard.step)
    shard.checkpoint = (src["stamp"], loc.url)
    return True


def _check_unchanged(loc: Location, src: dict, path: str) -> None:
    """Raise if another save replaced the checkpoint at ``path`` while this shard read it
    (its chunks could then mix two versions); the shard is then not marked loaded."""
    import json

    raw = loc.read(MANIFEST)
    try:
        now = json.loads(raw).get("save_id") if raw is not None else None
    except (ValueError, UnicodeDecodeError, AttributeError):
        now = None
    if src.get("save_id") is not None and now != src["save_id"]:
        raise CheckpointError(
            f"Checkpoint {path!r} was replaced by another save while it was read (its rows "
            "could mix two versions): the shard is left without rows. Try again."
        )


def _as_slice(positions: np.ndarray) -> slice | np.ndarray:
    """``positions`` (increasing) as a slice when they are evenly spaced."""
    if positions.size == 1:
        return slice(int(positions[0]), int(positions[0]) + 1)
    step = int(positions[1] - positions[0])
    if step > 0 and (np.diff(positions) == step).all():
        return slice(int(positions[0]), int(positions[-1]) + 1, step)
    return positions
