"""Checkpoints of an :class:`~shardemb.EmbeddingStore`: a Zarr v3 hierarchy that every
shard writes and reads itself, committed by a manifest written last.

Layout (format version 1)::

    <path>/
      zarr.json                    root group, attributes {"shardemb_checkpoint": 1}
      shards/<s>/weights/          array (rows of shard s, dim): its rows in local order
        zarr.json, c/<i>/0         chunk i: rows [i * chunk_rows, (i + 1) * chunk_rows)
      shards/<s>/slots/<name>/     array (rows of shard s, width): an optimizer slot
      manifest.json                written last: format_version, name, shape, dtype,
                                   num_shards, partition, shard_rows, step, applied (per
                                   shard: step and pushes), train_step,
                                   slots, chunk_rows, compression, checksum, nbytes,
                                   stored_bytes, created, table (the full TableConfig),
                                   arrays (shape, chunks, nchunks, bytes of each)

Local row ``i`` of shard ``s`` is global row ``i * N + s`` for the ``mod`` partition and
``start_s + i`` (contiguous ranges, the first ``vocab_size % N`` shards one row longer) for
``div``. Chunks are ``chunk_rows`` full rows (about 16 MiB of weights by default; the last
is zero-padded, as zarr stores edge chunks), every chunk is written (also all-zero ones)
and ends with a crc32c (zarr's ``crc32c`` codec); compression is off by default
(``compression="zstd"`` halved the speed for an 8% smaller checkpoint). Two shards never
write the same chunk: each writes its own arrays (local disks: chunk files directly, in
zarr's encoding, several at a time; elsewhere through zarr). A shard of a restored table
reads only the saved arrays holding its rows, a bounded window of chunks at a time; for
``mod`` onto ``mod`` with another shard count its rows are spread over every chunk, so
each new shard reads (in parallel) most of the saved chunks.

A checkpoint exists once ``manifest.json`` does: it is written to a temporary name and
renamed (file and folder fsynced on local disks) after every chunk is durable, so a save
killed at any point leaves earlier checkpoints intact and its own folder is ignored
(:class:`CheckpointManager`) or reported (:func:`restore_store` raises
:class:`~shardemb.CheckpointCorruptError`). A save to the path of a committed checkpoint
writes beside it (``.<name>.shardemb-new``) and swaps the two once the new one is committed
(one atomic exchange on Linux), so that one too survives any crash of the save. Paths are
local folders or URLs fsspec knows (``file://``, ``s3://``...; on a Ray cluster, a place
every node sees). ``memory://`` lives in one process, so it only works with
``backend="inprocess"``.

Plain zarr and numpy read it back:

    >>> import json, os, tempfile, numpy as np, zarr, shardemb
    >>> store = shardemb.EmbeddingStore.create("doc-ckpt", 10, 4, num_shards=3, seed=0,
    ...                                        backend="inprocess")
    >>> path = os.path.join(tempfile.mkdtemp(), "ckpt")
    >>> manifest = store.save(path)
    >>> m = json.load(open(os.path.join(path, "manifest.json")))
    >>> n, table, start = m["num_shards"], np.empty(m["shape"], m["dtype"]), 0
    >>> for s in range(n):
    ...     rows = zarr.open_array(path, path=f"shards/{s}/weights", mode="r")[:]
    ...     if m["partition"] == "mod":
    ...         table[s::n] = rows
    ...     else:
    ...         table[start : start + len(rows)] = rows
    ...         start += len(rows)
    >>> from shardemb.checkpoint import read_table
    >>> bool((table == store.to_numpy()).all()) and bool((read_table(path) == table).all())
    True
    >>> store.close()

Modules: :mod:`~shardemb.checkpoint.format` (constants, codecs),
:mod:`~shardemb.checkpoint.manifest` (the manifest and its checks),
:mod:`~shardemb.checkpoint.location` (local folder or fsspec URL),
:mod:`~shardemb.checkpoint.chunks` (chunk I/O), :mod:`~shardemb.checkpoint.writer`,
:mod:`~shardemb.checkpoint.reader`, :mod:`~shardemb.checkpoint.manager` and
:mod:`~shardemb.checkpoint.inspect`. The layer sits below the store: it talks to a set of
shards through the small interface :class:`~shardemb.checkpoint.shardset.ShardSet`.
"""

from shardemb.checkpoint.format import FORMAT_VERSION
from shardemb.checkpoint.inspect import inspect_path
from shardemb.checkpoint.manager import CheckpointManager
from shardemb.checkpoint.manifest import read_manifest
from shardemb.checkpoint.reader import (
    load_shard,
    read_table,
    register_table_factory,
    restore_store,
    verify_checkpoint,
)
from shardemb.checkpoint.shardset import ShardSet
from shardemb.checkpoint.writer import save_store

__all__ = [
    "FORMAT_VERSION",
    "CheckpointManager",
    "ShardSet",
    "inspect_path",
    "load_shard",
    "read_manifest",
    "read_table",
    "register_table_factory",
    "restore_store",
    "save_store",
    "verify_checkpoint",
]
