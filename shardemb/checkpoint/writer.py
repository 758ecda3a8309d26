"""Saving: the driver writes metadata and the manifest; each shard writes its own arrays."""

from __future__ import annotations

import contextlib
import datetime
import json
import time
import uuid

import numpy as np

from shardemb.checkpoint.chunks import ChunkIO
from shardemb.checkpoint.format import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    WRITE_BLOCK_BYTES,
    array_dtype,
    chunk_rows_for,
    codecs_for,
    kill_stage,
    maybe_kill,
)
from shardemb.checkpoint.location import Location, io_error
from shardemb.errors import CheckpointError, InvalidConfigError


def save_store(
    store,
    path: str,
    *,
    step: int | None = None,
    chunk_rows: int | None = None,
    compression: str | None = None,
    checksum: bool = True,
) -> dict:
    """Save ``store`` to ``path`` (see the module docstring) and return the manifest.

    Pushes this process made before the call are in the checkpoint, later ones are not;
    each shard writes its own arrays in parallel, and the manifest records what each one
    had applied (``applied``: the number of its last push, ``step``, and how many it
    applied, ``pushes``; ``step`` is the highest). Shards may differ (a push cut short by
    a crash, another process pushing meanwhile): the save records that, it never refuses.

    A committed checkpoint already at ``path`` is replaced safely: the new one is written
    beside it and swapped in once committed, and only then is the old one removed, so
    a save that fails or is killed (the trainer, a shard, a full disk) leaves it whole. A
    non-empty folder that is not a checkpoint is refused.

    Args:
        step: the caller's training step, recorded as ``train_step``; the optimizer's
            own step count (restored, used by Adam) is always saved as ``step``.
        chunk_rows: rows per chunk; default about 16 MiB of weights per chunk.
        compression: ``None`` (default, fastest), ``"zstd"``, ``"zstd:<level>"``, ``"lz4"``.
        checksum: append a crc32c to every chunk (checked by every read).

    Example:
        >>> import os, tempfile, shardemb
        >>> s = shardemb.EmbeddingStore.create("doc-save", 100, 4, num_shards=2,
        ...                                    backend="inprocess")
        >>> m = save_store(s, os.path.join(tempfile.mkdtemp(), "c"), step=7)
        >>> m["shape"], m["num_shards"], m["train_step"], m["step"]
        ([100, 4], 2, 7, 0)
        >>> s.close()
    """
    kill_at = kill_stage()
    maybe_kill("start", kill_at)
    cfg = store.config
    loc = Location.of(path)
    loc.check_backend(store.backend_name)
    if step is not None and (isinstance(step, bool) or not isinstance(step, int | np.integer)):
        raise InvalidConfigError(f"`step` must be an integer or None. Received: step={step!r}")
    widths = {"weights": cfg.dim}
    widths.update({f"slots/{k}": w for k, (w, _) in cfg.optimizer.slot_specs(cfg.dim).items()})
    sizes = cfg.partition.shard_sizes()
    row_bytes = cfg.dim * np.dtype(cfg.dtype).itemsize
    layout = {
        "dtype": cfg.dtype,
        "slot_dtype": cfg.slot_dtype,
        "chunk_rows": chunk_rows_for(chunk_rows, row_bytes, int(sizes.max())),
        "compression": compression,
        "checksum": checksum,
    }
    codecs = codecs_for(compression, checksum)

    store.flush()  # push errors surface before anything on disk changes
    target = loc.prepare_save()  # beside a committed checkpoint at ``path``, else here
    with staged(loc, target):
        manifest = _write(store, target, path, widths, layout, codecs, kill_at)
        manifest["train_step"] = None if step is None else int(step)
        commit(loc, target, path, manifest, kill_at)
    store.last_checkpoint = path  # a shard that dies is restarted from here
    # Tell every shard, so that a process recovering any shard of the table finds it.
    store.shard_call(note_checkpoint, time.time_ns(), loc.url)
    return manifest


@contextlib.contextmanager
def staged(loc: Location, target: Location):
    """Around a save to ``target`` (from ``loc.prepare_save()``): if it fails while the old
    checkpoint at ``loc`` is whole, remove the new one's leftovers beside it."""
    try:
        yield
    except BaseException:
        if target is not loc and loc.has(MANIFEST):
            with contextlib.suppress(Exception):
                target.uncommit()
                target.remove()
        raise


def commit(loc: Location, target: Location, path: str, manifest: dict, kill_at) -> None:
    """Commit a save whose data is durable at ``target``: write its manifest, and when it
    replaces the checkpoint at ``loc`` (``target`` is beside it), swap it in."""
    maybe_kill("before_manifest", kill_at)
    try:
        target.commit(MANIFEST, json.dumps(manifest, indent=1).encode(), kill_at)
    except OSError as err:
        raise io_error(path, f"the driver could not write {MANIFEST}", err) from err
    maybe_kill("after_manifest", kill_at)
    if target is not loc:
        try:
            loc.replace_with(target, kill_at)
        except OSError as err:
            what = f"the new checkpoint, committed at {target.url!r}, could not replace it"
            raise io_error(path, what, err) from err


def note_checkpoint(shard, stamp: int, path: str) -> None:
    """Shard side, after a commit: remember the table's newest committed checkpoint."""
    if shard.checkpoint is None or tuple(shard.checkpoint) < (stamp, path):
        shard.checkpoint = (stamp, path)


def _write(store, loc: Location, path: str, widths: dict, layout: dict, codecs, kill_at) -> dict:
    """Metadata, then every shard's arrays, at ``loc``; returns the manifest to commit."""
    cfg = store.config
    sizes = cfg.partition.shard_sizes().tolist()
    chunk_rows, itemsize = layout["chunk_rows"], np.dtype(cfg.dtype).itemsize
    try:
        _write_metadata(loc, sizes, widths, chunk_rows, layout, codecs)
    except OSError as err:  # disk full, permissions: say where
        raise io_error(path, "the driver could not write its metadata", err) from err
    maybe_kill("before_data", kill_at)

    chunk_bytes = chunk_rows * cfg.dim * itemsize
    block_rows = chunk_rows * max(1, WRITE_BLOCK_BYTES // chunk_bytes)
    written = store.shard_call(write_shard, loc, layout, list(widths), block_rows, kill_at)
    arrays = {}
    for s, (w, rows) in enumerate(zip(written, sizes, strict=True)):
        for kind, width in widths.items():
            arrays[f"shards/{s}/{kind}"] = {
                "shape": [rows, width],
                "chunks": [chunk_rows, width],
                "nchunks": -(-rows // chunk_rows),
                "nbytes": rows * width * np.dtype(array_dtype(layout, kind)).itemsize,
                "stored_bytes": w["stored"][kind],
            }
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "save_id": uuid.uuid4().hex,  # a restore checks it did not change while it read
        "name": cfg.name,
        "shape": [cfg.vocab_size, cfg.dim],
        "dtype": cfg.dtype,
        "slot_dtype": cfg.slot_dtype,
        "num_shards": cfg.num_shards,
        "partition": cfg.partition.kind,
        "shard_rows": sizes,
        # The table's step is the highest number of a push any shard applied; per shard,
        # the number of its last push and how many it applied (a crash may cut a push
        # short: some shards then have it, the others not).
        "step": max(w["step"] for w in written),
        "applied": [{"step": w["step"], "pushes": w["pushes"]} for w in written],
        "train_step": None,
        "slots": {k.removeprefix("slots/"): w for k, w in widths.items() if k != "weights"},
        "chunk_rows": chunk_rows,
        "compression": layout["compression"],
        "checksum": "crc32c" if layout["checksum"] else None,
        "nbytes": sum(a["nbytes"] for a in arrays.values()),
        "stored_bytes": sum(a["stored_bytes"] for a in arrays.values()),
        "table": cfg.to_dict(),
        "arrays": arrays,
    }


def write_shard(
    shard, loc: Location, layout: dict, kinds: list[str], block_rows: int, kill_at: str | None
) -> dict:
    """Shard side of a save: write this shard's rows and slots block by block; a block's
    chunks are written (and made durable) while the next block is prepared."""
    try:
        return _write_arrays(shard, loc, layout, kinds, block_rows, kill_at)
    except OSError as err:  # disk full, permissions: say where
        raise CheckpointError(
            f"Shard {shard.index} could not write its arrays to {loc.url!r}: I/O error "
            f"({type(err).__name__}: {err})."
        ) from err


def _write_metadata(loc: Location, sizes: list, widths: dict, chunk_rows, layout, codecs) -> None:
    """The driver's part of a save: the root group and every array's metadata, durable."""
    import zarr

    zroot = zarr.create_group(
        loc.zarr_store(), zarr_format=3, attributes={"shardemb_checkpoint": FORMAT_VERSION}
    )
    for s, rows in enumerate(sizes):
        for kind, width in widths.items():
            zroot.create_array(
                f"shards/{s}/{kind}",
                shape=(rows, width),
                chunks=(chunk_rows, width),
                dtype=array_dtype(layout, kind),
                compressors=codecs,
                filters=None,
                fill_value=0,
                chunk_key_encoding={"name": "default", "separator": "/"},
            )
    loc.fsync_tree()  # the metadata written so far


def _write_arrays(
    shard, loc: Location, layout: dict, kinds: list[str], block_rows: int, kill_at: str | None
) -> dict:
    shard.check_loaded()  # a restarted shard that has not loaded its rows saves none
    base = f"shards/{shard.index}"
    # The actor runs nothing else meanwhile: rows, slots, step and pushes agree.
    step, pushes = shard.step, shard.pushes
    with ChunkIO(loc, loc.url, **layout) as chunks:
        pending: list = []
        for start in range(0, shard.num_rows, block_rows):
            stop = min(start + block_rows, shard.num_rows)
            futures = []
            for kind in kinds:
                storage = shard.weights if kind == "weights" else shard.slots[kind[6:]]
                block = storage.view(start, stop)  # no copy: nothing runs meanwhile
                if block is None:
                    block = storage.to_numpy(start, stop)
                futures += chunks.write(f"{base}/{kind}", start, block)
            for f in pending:  # at most two blocks in flight
                f.result()
            pending = futures
            if shard.index == shard.config.num_shards - 1:
                maybe_kill("mid_chunks", kill_at)
        for f in pending:
            f.result()
    loc.fsync_tree(base, files=False)
    sizes = loc.sizes(base)
    stored = {k: sum(n for key, n in sizes.items() if key.startswith(f"{k}/c/")) for k in kinds}
    return {"step": step, "pushes": pushes, "stored": stored}
