"""The manifest: read, check against the table config, and refuse what is damaged."""

from __future__ import annotations

import json

from shardemb.checkpoint.format import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    RETIRING,
    STAGING,
    codecs_for,
)
from shardemb.checkpoint.location import Location
from shardemb.core.config import TableConfig
from shardemb.errors import (
    CheckpointCorruptError,
    CheckpointNotFoundError,
    InvalidConfigError,
    ShardembError,
)

__all__ = ["array_shapes", "read_manifest"]


def read_manifest(path: str, *, expected_table: str | None = None) -> dict:
    """The checked manifest of the committed checkpoint at ``path``.

    Raises :class:`~shardemb.CheckpointNotFoundError` if nothing is there and
    :class:`~shardemb.CheckpointCorruptError` if the save did not finish, the manifest is
    damaged or of an unknown format version, or (with ``expected_table``) belongs to
    another table. Arrays are not looked at: see :func:`verify_checkpoint`.

    Example:
        >>> import os, tempfile, shardemb
        >>> s = shardemb.EmbeddingStore.create("doc-manifest", 10, 2, num_shards=2,
        ...                                    optimizer="adam", backend="inprocess")
        >>> path = os.path.join(tempfile.mkdtemp(), "c")
        >>> _ = s.save(path)
        >>> m = read_manifest(path, expected_table="doc-manifest")
        >>> m["partition"], m["slots"]
        ('mod', {'m': 2, 'v': 2})
        >>> s.close()
    """
    loc = Location.of(path)
    raw = loc.read(MANIFEST)
    if raw is None:
        if not loc.exists():
            raise CheckpointNotFoundError(
                f"No checkpoint at {path!r}: it does not exist.{_beside(loc)}"
            )
        if not loc.listdir():
            raise CheckpointNotFoundError(
                f"No checkpoint at {path!r}: the folder is empty.{_beside(loc)}"
            )
        raise CheckpointCorruptError(
            f"Checkpoint {path!r} is incomplete: it has no {MANIFEST} (its save did not "
            f"finish).{_beside(loc)}"
        )
    try:
        m = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        raise CheckpointCorruptError(f"{MANIFEST} of {path!r} is not valid JSON: {err}") from err
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise CheckpointCorruptError(
            f"{MANIFEST} of {path!r} is not a shardemb checkpoint manifest "
            f"(format={m.get('format') if isinstance(m, dict) else None!r})."
        )
    if m.get("format_version") != FORMAT_VERSION:
        raise CheckpointCorruptError(
            f"Checkpoint {path!r} has unknown format version {m.get('format_version')!r}; "
            f"this shardemb reads version {FORMAT_VERSION}."
        )
    _check_manifest(m, path)
    if expected_table is not None and m["name"] != expected_table:
        raise CheckpointCorruptError(
            f"Checkpoint {path!r} holds table {m['name']!r}, not the expected {expected_table!r}."
        )
    return m


def _check_manifest(m: dict, path: str) -> None:
    """Every field present and consistent with the table config (hand edits, bit rot)."""
    required = (
        "name",
        "shape",
        "dtype",
        "num_shards",
        "partition",
        "shard_rows",
        "step",
        "slots",
        "chunk_rows",
        "compression",
        "checksum",
        "table",
        "arrays",
    )
    missing = [k for k in required if k not in m]
    if missing:
        raise CheckpointCorruptError(f"{MANIFEST} of {path!r} lacks {missing}.")
    try:
        cfg = TableConfig.from_dict(m["table"])
    except (ShardembError, KeyError, TypeError, ValueError) as err:
        raise CheckpointCorruptError(f"{MANIFEST} of {path!r}: bad table config: {err}") from err
    found = {
        "name": m["name"],
        "shape": m["shape"],
        "dtype": m["dtype"],
        "num_shards": m["num_shards"],
        "partition": m["partition"],
        "shard_rows": m["shard_rows"],
        "slots": m["slots"],
    }
    wanted = {
        "name": cfg.name,
        "shape": [cfg.vocab_size, cfg.dim],
        "dtype": cfg.dtype,
        "num_shards": cfg.num_shards,
        "partition": cfg.partition.kind,
        "shard_rows": cfg.partition.shard_sizes().tolist(),
        "slots": {k: w for k, (w, _) in cfg.optimizer.slot_specs(cfg.dim).items()},
    }
    for key, value in wanted.items():
        if found[key] != value:
            raise CheckpointCorruptError(
                f"{MANIFEST} of {path!r}: {key} is {found[key]!r} but the table config "
                f"implies {value!r}."
            )
    for key in ("step", "chunk_rows"):
        value = m[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < (key != "step"):
            raise CheckpointCorruptError(f"{MANIFEST} of {path!r}: bad {key} {value!r}.")
    if m["checksum"] not in (None, "crc32c") or not isinstance(m["arrays"], dict):
        raise CheckpointCorruptError(
            f"{MANIFEST} of {path!r}: bad checksum {m['checksum']!r} or arrays."
        )
    _check_applied(m, path)
    try:
        codecs_for(m["compression"], False)
    except InvalidConfigError as err:
        raise CheckpointCorruptError(
            f"{MANIFEST} of {path!r}: unknown compression {m['compression']!r}."
        ) from err
    for name, shape in array_shapes(m).items():
        entry = m["arrays"].get(name)
        if not isinstance(entry, dict) or entry.get("shape") != shape:
            raise CheckpointCorruptError(
                f"{MANIFEST} of {path!r}: array {name!r} should have shape {shape}; the "
                f"manifest says {entry.get('shape') if isinstance(entry, dict) else entry!r}."
            )


def _beside(loc: Location) -> str:
    """Where a save that was replacing the checkpoint at ``loc`` and was cut short left
    committed checkpoints beside it (see ``Location.replace_with``), as a hint."""
    try:
        found = [s.url for s in (loc.sibling(STAGING), loc.sibling(RETIRING)) if s.has(MANIFEST)]
    except Exception:  # noqa: BLE001 - only a hint
        return ""
    if not found:
        return ""
    return f" A save replacing it was cut short; committed checkpoint(s) are beside it: {found}."


def _check_applied(m: dict, path: str) -> None:
    """``applied`` (absent in older checkpoints): per shard, the number of its last push
    and how many pushes it applied, non-negative integers."""
    applied = m.get("applied")
    if applied is None:
        return
    ok = isinstance(applied, list) and len(applied) == m["num_shards"]
    for entry in applied if ok else ():
        ok = ok and isinstance(entry, dict) and set(entry) == {"step", "pushes"}
        ok = ok and all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in entry.values()
        )
    if not ok:
        raise CheckpointCorruptError(
            f"{MANIFEST} of {path!r}: bad applied {applied!r}: expected, for each of the "
            f"{m['num_shards']} shards, {{'step': int, 'pushes': int}}."
        )


def array_shapes(m: dict) -> dict[str, list[int]]:
    dim = m["shape"][1]
    out = {}
    for s, rows in enumerate(m["shard_rows"]):
        out[f"shards/{s}/weights"] = [rows, dim]
        for name, width in m["slots"].items():
            out[f"shards/{s}/slots/{name}"] = [rows, width]
    return out
