"""The checkpoint format: constants, the manifest and its checks, chunk layout and
codecs, and the crash-test hooks. See :mod:`shardemb.checkpoint` for the layout."""

from __future__ import annotations

import os
import re
import signal

from shardemb._validate import check_positive_int
from shardemb.errors import (
    InvalidConfigError,
)

FORMAT = "shardemb.checkpoint"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
#: Target bytes of one chunk of the weights (64k rows of 64 float32: measured best).
CHUNK_BYTES = 16 << 20
#: Bytes of rows a saving shard has in flight (their chunks are written concurrently).
WRITE_BLOCK_BYTES = 128 << 20
#: Rows (weights plus slots) a restoring shard holds in memory at once, in bytes.
READ_WINDOW_BYTES = 256 << 20
#: Test hook: the save process kills itself (SIGKILL) at this stage ("mid_chunks" runs in
#: the last shard: on Ray it kills that shard's process; "after_replace" only happens when a
#: save replaces a committed checkpoint at its own path).
KILL_ENV = "SHARDEMB_CHECKPOINT_KILL_AT"
KILL_STAGES = (
    "start",
    "before_data",
    "mid_chunks",
    "before_manifest",
    "manifest_tmp",
    "after_manifest",
    "after_replace",
    "before_prune",
    "mid_prune",
)
COMPRESSIONS = ("zstd", "zstd:<level>", "lz4")
STEP_DIR = re.compile(r"^step-(0|[1-9][0-9]*)$")
#: Beside a checkpoint ``<name>``: the save that will replace it (``.<name>.shardemb-new``)
#: and, while two renames swap them where no atomic exchange exists, the old one.
STAGING = ".{}.shardemb-new"
RETIRING = ".{}.shardemb-old"


def array_dtype(m: dict, name: str) -> str:
    """The dtype of array ``name`` (``.../weights`` or ``.../slots/<slot>``) of manifest
    ``m``: slots may be wider than rows (float32 slots of a float16 table)."""
    return m.get("slot_dtype", m["dtype"]) if "slots/" in name else m["dtype"]


def layout_of(m: dict) -> dict:
    """How the arrays of manifest ``m`` are chunked and encoded (:class:`ChunkIO`)."""
    return {
        "dtype": m["dtype"],
        "slot_dtype": m.get("slot_dtype", m["dtype"]),
        "chunk_rows": m["chunk_rows"],
        "compression": m.get("compression"),
        "checksum": bool(m.get("checksum")),
    }


def chunk_rows_for(chunk_rows: int | None, row_bytes: int, max_rows: int) -> int:
    if chunk_rows is None:
        # About CHUNK_BYTES each, evened out so the last chunk of a shard is barely padded.
        target = max(1, min(max_rows, CHUNK_BYTES // row_bytes))
        return -(-max_rows // -(-max_rows // target))
    check_positive_int("chunk_rows", chunk_rows, optional=True)
    return int(min(chunk_rows, max_rows))


def codecs_for(compression: str | None, checksum: bool) -> list:
    from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

    codecs: list = []
    if compression in (None, "none"):
        pass
    elif compression == "lz4":
        codecs.append(BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"))
    elif isinstance(compression, str) and re.fullmatch(r"zstd(:-?\d+)?", compression):
        level = int(compression.split(":")[1]) if ":" in compression else 0
        codecs.append(ZstdCodec(level=level))
    else:
        raise InvalidConfigError(
            f"`compression` must be None or one of {COMPRESSIONS}. "
            f"Received: compression={compression!r}"
        )
    if checksum:
        codecs.append(Crc32cCodec())
    return codecs


def kill_stage() -> str | None:
    stage = os.environ.get(KILL_ENV) or None
    if stage is not None and stage not in KILL_STAGES:
        raise InvalidConfigError(
            f"{KILL_ENV} must be one of {KILL_STAGES}. Received: {KILL_ENV}={stage!r}"
        )
    return stage


def maybe_kill(stage: str, kill_at: str | None) -> None:
    if stage == kill_at:  # crash-safety tests: die here as a power cut would
        os.kill(os.getpid(), signal.SIGKILL)
