"""``shardemb checkpoint inspect``: a checkpoint's manifest and whether it is complete."""

from __future__ import annotations

import json
import sys

from shardemb.checkpoint.reader import verify_checkpoint
from shardemb.errors import CheckpointError


def inspect_path(path: str, *, as_json: bool = False, verify: bool = False) -> int:
    """Print the checkpoint at ``path`` (or, with ``as_json``, its manifest as JSON) and
    return the exit code of ``shardemb checkpoint inspect``: 0 when it is complete, 1 when
    it is missing, incomplete or damaged (the reason goes to stderr). ``verify`` also reads
    every chunk and checks its checksum.
    """
    try:
        m = verify_checkpoint(path, read_data=verify)
    except CheckpointError as err:
        print(f"checkpoint {path}: {err}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps({**m, "complete": True}, indent=1))
        return 0
    slots = ", ".join(f"{k} ({w})" for k, w in m["slots"].items()) or "none"
    train = "" if m.get("train_step") is None else f" (train step {m['train_step']})"
    rows = m["shard_rows"]
    lines = [
        ("checkpoint", path),
        ("complete", "yes" + (", checksums verified" if verify else "")),
        ("table", m["name"]),
        ("shape", f"{m['shape'][0]} x {m['shape'][1]}"),
        ("dtype", m["dtype"]),
        ("shards", f"{m['num_shards']} ({m['partition']}), {min(rows)}-{max(rows)} rows each"),
        ("step", f"{m['step']}{train}"),
        ("optimizer", m["table"]["optimizer"].get("name", "?")),
        ("slots", slots),
        (
            "bytes",
            f"{m['nbytes']} ({m['stored_bytes']} stored, compression "
            f"{m.get('compression') or 'none'}, checksum {m.get('checksum')})",
        ),
        ("created", m.get("created", "?")),
        ("format", f"{m['format']} v{m['format_version']}"),
    ]
    for key, value in lines:
        print(f"{key:<11}{value}")
    return 0
