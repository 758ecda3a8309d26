"""Checkpoints of dynamic tables (``vocab_size=None``): keys beside the weights, in Zarr v3.

Layout (format version 1, ``"kind": "dynamic"`` in the manifest)::

    <path>/
      zarr.json                  root group, attributes {"shardemb_checkpoint": 1,
                                 "kind": "dynamic"}
      shards/<s>/keys            (n_s,) int64: the key of each row of shard s (for string
                                 tables its 64-bit hash, see shardemb.core.keys)
      shards/<s>/weights         (n_s, dim): the rows, in the order of keys
      shards/<s>/slots/<name>    (n_s, width): an optimizer slot
      shards/<s>/counts          (n_s,) uint32: pushes of each key (admission, LFU)
      shards/<s>/last_step       (n_s,) int64: step of each row's last update (LRU, TTL)
      shards/<s>/pending/keys    (p_s,) int64, and pending/counts, pending/last_step: keys
                                 counted for admission that have no row yet
      manifest.json              written last: name, dim, dtype, key_dtype, num_shards,
                                 shard_rows, shard_pending, step, train_step, slots,
                                 counters (per shard), table (the DynamicConfig), arrays

Each shard writes its own arrays through zarr (every chunk written, crc32c by default) and
fsyncs them; the driver writes the manifest last, atomically, as for fixed tables
(:mod:`shardemb.checkpoint`): a save killed at any point leaves earlier checkpoints
intact and is not a checkpoint itself (a save to the path of a committed checkpoint
writes beside it and swaps it in once committed), and :class:`~shardemb.CheckpointManager` saves and
restores dynamic tables too. A restore onto any number of shards rehashes the keys: each
new shard reads every saved ``keys`` array and takes the rows whose keys it owns (with
the saved shard count, only its own). Rows, slots, counts, steps, pending counts and the
optimizer step come back bit for bit, so training continues exactly. Counters come back
per shard with the saved shard count; on another one, history (evictions, rejections,
unknown lookups) is put on shard 0 so that totals still add up.

Plain zarr reads it:

    >>> import os, tempfile, numpy as np, zarr, shardemb
    >>> s = shardemb.EmbeddingStore.create("doc-dyn-ckpt", vocab_size=None, dim=2,
    ...                                    num_shards=2, seed=0, backend="inprocess")
    >>> s.apply_gradients([-7, 2**40], np.ones((2, 2), np.float32))
    >>> path = os.path.join(tempfile.mkdtemp(), "ckpt")
    >>> _ = s.save(path)
    >>> root = zarr.open(path, mode="r")
    >>> sorted(root["shards/0"].array_keys())
    ['counts', 'keys', 'last_step', 'weights']
    >>> keys = np.concatenate([root[f"shards/{i}/keys"][:] for i in range(2)])
    >>> sorted(keys.tolist()) == [-7, 2**40]
    True
    >>> r = shardemb.DynamicEmbeddingStore.restore(path, name="doc-dyn-ckpt-1", num_shards=3,
    ...                                            backend="inprocess")
    >>> bool((r.lookup([-7, 2**40]) == s.lookup([-7, 2**40])).all())
    True
    >>> r.close(); s.close()
"""

from __future__ import annotations

import datetime
import json

import numpy as np

from shardemb._validate import check_positive_int
from shardemb.checkpoint.chunks import raise_read_error
from shardemb.checkpoint.format import (
    CHUNK_BYTES,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    READ_WINDOW_BYTES,
    codecs_for,
    kill_stage,
    maybe_kill,
)
from shardemb.checkpoint.location import Location, io_error
from shardemb.checkpoint.reader import fill_restored
from shardemb.checkpoint.writer import commit, staged
from shardemb.core.keys import DynamicConfig, shard_of_keys
from shardemb.errors import (
    CheckpointCorruptError,
    CheckpointError,
    CheckpointNotFoundError,
    InvalidConfigError,
    ShardembError,
)

__all__ = [
    "is_dynamic_checkpoint",
    "is_dynamic_store",
    "read_dynamic_manifest",
    "register_dynamic_factory",
    "restore_dynamic",
    "save_dynamic",
]

KIND = "dynamic"
_factory = None  # creates an empty DynamicEmbeddingStore; the store layer registers it


def register_dynamic_factory(factory) -> None:
    """Set how :func:`restore_dynamic` creates tables (``shardemb.store`` calls this)."""
    global _factory
    _factory = factory


def is_dynamic_store(store) -> bool:
    return isinstance(getattr(store, "config", None), DynamicConfig)


def is_dynamic_checkpoint(path: str) -> bool:
    """True if ``path`` holds a committed checkpoint of a dynamic table."""
    try:
        raw = Location.of(path).read(MANIFEST)
        return raw is not None and json.loads(raw).get("kind") == KIND
    except (ShardembError, ValueError, AttributeError, UnicodeDecodeError):
        return False


# -- saving --------------------------------------------------------------------------------
def save_dynamic(
    store,
    path: str,
    *,
    step: int | None = None,
    chunk_rows: int | None = None,
    compression: str | None = None,
    checksum: bool = True,
) -> dict:
    """Save the dynamic table ``store`` to ``path`` (see the module docstring) and return
    the manifest. Pushes this process made before the call are in it, later ones are not.
    A committed checkpoint already at ``path`` is replaced; a folder that is not a
    checkpoint is refused. Options as for :func:`~shardemb.checkpoint.save_store`."""
    kill_at = kill_stage()
    maybe_kill("start", kill_at)
    loc = Location.of(path)
    loc.check_backend(store.backend_name)
    if step is not None and (isinstance(step, bool) or not isinstance(step, int | np.integer)):
        raise InvalidConfigError(f"`step` must be an integer or None. Received: step={step!r}")
    check_positive_int("chunk_rows", chunk_rows, optional=True)
    codecs_for(compression, checksum)  # a bad compression fails before anything changes
    store.flush()  # push errors surface before anything on disk changes
    target = loc.prepare_save()  # beside a committed checkpoint at ``path``, else here
    with staged(loc, target):
        manifest = _write(store, target, path, compression, checksum, chunk_rows, kill_at)
        manifest["train_step"] = None if step is None else int(step)
        commit(loc, target, path, manifest, kill_at)
    store.last_checkpoint = path
    return manifest


def _write(store, loc: Location, path: str, compression, checksum, chunk_rows, kill_at) -> dict:
    """The root group, then every shard's arrays, at ``loc``; returns the manifest."""
    import zarr

    cfg = store.config
    try:
        attrs = {"shardemb_checkpoint": FORMAT_VERSION, "kind": KIND}
        zarr.create_group(loc.zarr_store(), zarr_format=3, attributes=attrs).create_group("shards")
        loc.fsync_tree()
    except OSError as err:
        raise io_error(path, "the driver could not write its metadata", err) from err
    maybe_kill("before_data", kill_at)
    layout = {"chunk_rows": chunk_rows, "compression": compression, "checksum": checksum}
    written = store.shard_call(write_dynamic_shard, loc, layout, kill_at)
    steps = {w["step"] for w in written}
    if len(steps) != 1:
        raise CheckpointError(
            f"Shards of table {cfg.name!r} disagree on the step ({sorted(steps)}): another "
            f"process pushed during the save to {path!r}; the checkpoint was not committed."
        )
    arrays = {k: v for w in written for k, v in w["arrays"].items()}
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": KIND,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "name": cfg.name,
        "dim": cfg.dim,
        "dtype": cfg.dtype,
        "key_dtype": cfg.key_dtype,
        "num_shards": cfg.num_shards,
        "shard_rows": [w["rows"] for w in written],
        "shard_pending": [w["pending"] for w in written],
        "step": int(steps.pop()),
        "train_step": None,
        "slots": {k: w for k, (w, _) in cfg.optimizer.slot_specs(cfg.dim).items()},
        "compression": compression,
        "checksum": "crc32c" if checksum else None,
        "counters": [w["counters"] for w in written],
        "nbytes": sum(a["nbytes"] for a in arrays.values()),
        "table": cfg.to_dict(),
        "arrays": arrays,
    }


def write_dynamic_shard(shard, loc: Location, layout: dict, kill_at: str | None) -> dict:
    """Shard side of a save: this shard's arrays (it runs nothing else meanwhile, so rows,
    slots, counts and step agree), durable before it returns."""
    import zarr

    snap = shard.snapshot()
    base = f"shards/{shard.index}"
    codecs = codecs_for(layout["compression"], layout["checksum"])
    row_bytes = shard.config.dim * np.dtype(shard.config.dtype).itemsize
    chunk = layout["chunk_rows"] or max(1, CHUNK_BYTES // row_bytes)
    out: dict = {}
    try:
        for name, data in snap["arrays"].items():
            data = np.ascontiguousarray(data)
            rows = max(1, min(chunk, len(data)))
            arr = zarr.create_array(
                loc.zarr_store(), name=f"{base}/{name}", shape=data.shape,
                chunks=(rows, *data.shape[1:]), dtype=data.dtype, compressors=codecs,
                filters=None, fill_value=0, config={"write_empty_chunks": True},
                chunk_key_encoding={"name": "default", "separator": "/"},
            )  # fmt: skip
            if data.size:
                arr[...] = data
            nchunks = -(-len(data) // rows)
            out[f"{base}/{name}"] = {"shape": list(data.shape), "dtype": data.dtype.name,
                                     "chunks": rows, "nchunks": nchunks,
                                     "nbytes": int(data.nbytes)}  # fmt: skip
            if shard.index == shard.config.num_shards - 1:
                maybe_kill("mid_chunks", kill_at)
        loc.fsync_tree(base)
    except OSError as err:
        raise CheckpointError(
            f"Shard {shard.index} could not write its arrays to {loc.url!r}: I/O error "
            f"({type(err).__name__}: {err})."
        ) from err
    arrays = snap["arrays"]
    pending = len(arrays["pending/keys"]) if "pending/keys" in arrays else 0
    return {"step": snap["step"], "counters": snap["counters"], "rows": len(arrays["keys"]),
            "pending": pending, "arrays": out}  # fmt: skip


# -- reading -------------------------------------------------------------------------------
def read_dynamic_manifest(path: str, *, expected_table: str | None = None) -> dict:
    """The checked manifest of the dynamic checkpoint at ``path``; raises
    :class:`~shardemb.CheckpointNotFoundError` or :class:`~shardemb.CheckpointCorruptError`
    (unfinished save, damage, another table with ``expected_table``)."""
    loc = Location.of(path)
    raw = loc.read(MANIFEST)
    if raw is None:
        if not loc.exists() or not loc.listdir():
            raise CheckpointNotFoundError(f"No checkpoint at {path!r}: it is missing or empty.")
        raise CheckpointCorruptError(
            f"Checkpoint {path!r} is incomplete: it has no {MANIFEST} (its save did not finish)."
        )
    try:
        m = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        raise CheckpointCorruptError(f"{MANIFEST} of {path!r} is not valid JSON: {err}") from err
    if not isinstance(m, dict) or m.get("format") != FORMAT or m.get("kind") != KIND:
        raise CheckpointCorruptError(
            f"{MANIFEST} of {path!r} is not the manifest of a dynamic table's checkpoint."
        )
    if m.get("format_version") != FORMAT_VERSION:
        raise CheckpointCorruptError(
            f"Checkpoint {path!r} has unknown format version {m.get('format_version')!r}; "
            f"this shardemb reads version {FORMAT_VERSION}."
        )
    need = ("name", "num_shards", "shard_rows", "shard_pending", "step", "counters", "table")
    missing = [k for k in (*need, "arrays") if k not in m]
    if missing:
        raise CheckpointCorruptError(f"{MANIFEST} of {path!r} lacks {missing}.")
    try:
        cfg = DynamicConfig.from_dict(m["table"])
    except (ShardembError, KeyError, TypeError, ValueError) as err:
        raise CheckpointCorruptError(f"{MANIFEST} of {path!r}: bad table config: {err}") from err
    n = cfg.num_shards
    if (
        m["name"] != cfg.name
        or m["num_shards"] != n
        or any(not isinstance(m[k], list) or len(m[k]) != n for k in need[2:4] + ("counters",))
    ):
        raise CheckpointCorruptError(
            f"{MANIFEST} of {path!r}: name, num_shards, shard_rows, shard_pending or counters "
            "disagree with the table config."
        )
    if expected_table is not None and m["name"] != expected_table:
        raise CheckpointCorruptError(
            f"Checkpoint {path!r} holds table {m['name']!r}, not the expected {expected_table!r}."
        )
    return m


def _check_chunks(loc: Location, m: dict, path: str) -> None:
    """Every array the manifest lists has all its chunk files (a listing, no data read)."""
    try:
        files = set(loc.sizes("shards"))
    except OSError as err:
        raise_read_error(path, "its chunks cannot be listed", err)
    for name, entry in m["arrays"].items():
        rel = name.removeprefix("shards/")
        tail = "/0" if len(entry["shape"]) == 2 else ""
        absent = [i for i in range(entry["nchunks"]) if f"{rel}/c/{i}{tail}" not in files]
        if absent:
            raise CheckpointCorruptError(
                f"Checkpoint {path!r}: array {name!r} is missing {len(absent)} of "
                f"{entry['nchunks']} chunks (c/{absent[0]}{tail}, ...)."
            )


def restore_dynamic(
    path: str,
    *,
    name: str | None = None,
    num_shards: int | None = None,
    capacity: int | None = None,
    expected_table: str | None = None,
    **runtime,
):
    """Rebuild the dynamic table saved at ``path`` on ``num_shards`` shards (default: as
    saved) under ``name``, with ``capacity`` (default: as saved); ``runtime`` are
    ``backend``, ``address``, ``resources``, ``detached``, ``timeout``. See the module
    docstring; a shard that would exceed its capacity raises
    :class:`~shardemb.TableFullError` (restore with a larger capacity or more shards)."""
    m = read_dynamic_manifest(path, expected_table=expected_table)
    loc = Location.of(path)
    _check_chunks(loc, m, path)
    table = dict(m["table"])
    for key, value in (("name", name), ("num_shards", num_shards), ("capacity", capacity)):
        if value is not None:
            table[key] = value
    cfg = DynamicConfig.from_dict(table)  # validates the overrides
    loc.check_backend(runtime.get("backend", "ray"))
    if _factory is None:
        raise RuntimeError("import shardemb first: no dynamic table factory is registered")
    store = _factory(cfg, **runtime)
    source = {k: m[k] for k in ("num_shards", "shard_rows", "shard_pending", "step", "counters")}
    return fill_restored(store, m, path, read_dynamic_shard, loc, source, str(path))


def read_dynamic_shard(shard, loc: Location, src: dict, path: str) -> int:
    """Shard side of a restore: take the saved rows (and pending keys) whose keys this
    shard owns, a bounded window of saved rows at a time, then load them."""
    import zarr

    saved, now, me = src["num_shards"], shard.config.num_shards, shard.index
    zstore = loc.zarr_store(read_only=True)
    slots = [f"slots/{k}" for k in shard.config.optimizer.slot_specs(shard.config.dim)]
    groups = [("shard_rows", ["keys", "weights", "counts", "last_step", *slots])]
    if shard.pending is not None:
        groups.append(("shard_pending", ["pending/keys", "pending/counts", "pending/last_step"]))
    window = max(1, READ_WINDOW_BYTES // max(1, shard.config.slot_bytes_per_row()))
    parts: dict = {n: [] for _, names in groups for n in names}
    for s in [me] if saved == now else range(saved):
        for sizes, names in groups:
            count = src[sizes][s]
            if count == 0:
                continue
            try:
                arrays = {n: zarr.open_array(zstore, path=f"shards/{s}/{n}", mode="r")
                          for n in names}  # fmt: skip
                mine = None if saved == now else shard_of_keys(arrays[names[0]][:], now) == me
                for a in range(0, count, window):
                    pick = slice(None) if mine is None else mine[a : a + window]
                    for n, arr in arrays.items():
                        parts[n].append(arr[a : a + window][pick])
            except Exception as err:  # noqa: BLE001 - zarr raises ValueError/OSError/codecs
                raise_read_error(path, f"shard {s}'s arrays cannot be read", err)
    arrays = {n: np.concatenate(p) for n, p in parts.items() if p}
    shard.load(arrays, src["step"], _counters(src, me, now, len(arrays.get("keys", ()))))
    return len(arrays.get("keys", ()))


def _counters(src: dict, me: int, now: int, rows: int) -> dict:
    """This shard's counters: as saved with the saved shard count; otherwise the history
    goes to shard 0, so that inserts - evictions = rows on every shard and in total."""
    if src["num_shards"] == now:
        return src["counters"][me]
    total = {k: sum(c.get(k, 0) for c in src["counters"]) for k in src["counters"][0]}
    out = dict.fromkeys(total, 0) if me else dict(total)
    out["inserts"] = rows + out.get("evictions", 0)
    return out
