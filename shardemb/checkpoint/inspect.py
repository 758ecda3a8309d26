"""``shardemb checkpoint inspect``: a checkpoint's manifest and whether it is complete,
or the checkpoints of a :class:`~shardemb.CheckpointManager` root."""

from __future__ import annotations

import json
import os
import sys

from shardemb.checkpoint.format import MANIFEST, STEP_DIR
from shardemb.checkpoint.location import Location
from shardemb.checkpoint.manager import CheckpointManager
from shardemb.checkpoint.reader import verify_checkpoint
from shardemb.errors import CheckpointError


def inspect_path(path: str, *, as_json: bool = False, verify: bool = False) -> int:
    """Print the checkpoint at ``path`` (or, with ``as_json``, its manifest as JSON) and
    return the exit code of ``shardemb checkpoint inspect``: 0 when it is complete, 1 when
    it is missing, incomplete or damaged (the reason goes to stderr). ``verify`` also reads
    every chunk and checks its checksum.

    A :class:`~shardemb.CheckpointManager` root (a folder of ``step-N`` checkpoints), or a
    folder of such roots (the demo's ``checkpoints/``), lists its steps instead: 0 when
    each root has at least one complete checkpoint.
    """
    if "://" not in str(path) and os.path.isfile(path):
        print(f"checkpoint {path}: it is a file, not a checkpoint folder.", file=sys.stderr)
        return 1
    loc = Location.of(path)
    if not loc.has(MANIFEST):
        roots = _manager_roots(loc)
        if roots:
            return _inspect_roots(roots, as_json=as_json, verify=verify)
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


def _step_dirs(loc: Location) -> dict[int, str]:
    return {int(m.group(1)): n for n in loc.listdir() if (m := STEP_DIR.match(n))}


def _manager_roots(loc: Location) -> list[str]:
    """``[loc]`` if it holds ``step-N`` folders; else its sub-folders that do."""
    if _step_dirs(loc):
        return [loc.url]
    found = []
    for name in sorted(loc.listdir()):
        child = Location.of(loc.child(name))
        if not child.has(MANIFEST) and _step_dirs(child):
            found.append(child.url)
    return found


def _inspect_roots(roots: list[str], *, as_json: bool, verify: bool) -> int:
    report = [_inspect_root(root, verify) for root in roots]
    if as_json:
        print(json.dumps(report if len(report) > 1 else report[0], indent=1))
    else:
        for i, r in enumerate(report):
            print(("\n" if i else "") + _format_root(r))
    return 0 if all(r["latest"] is not None for r in report) else 1


def _inspect_root(root: str, verify: bool) -> dict:
    """A manager root's steps: committed ones checked (as the single-checkpoint view)."""
    manager = CheckpointManager(root, keep=None)
    committed = set(manager.steps())
    steps = []
    for step in sorted(_step_dirs(Location.of(root))):
        entry = {"step": step, "path": manager.path(step), "complete": False}
        if step not in committed:
            entry["error"] = f"incomplete: no {MANIFEST} (its save did not finish)"
        else:
            try:
                m = verify_checkpoint(entry["path"], read_data=verify)
            except CheckpointError as err:
                entry["error"] = f"damaged: {err}"
            else:
                entry.update(
                    complete=True,
                    table=m["name"],
                    shape=m["shape"],
                    num_shards=m["num_shards"],
                    created=m.get("created"),
                )
        steps.append(entry)
    complete = [e for e in steps if e["complete"]]
    return {
        "root": root,
        "steps": steps,
        "latest": complete[-1]["path"] if complete else None,
    }


def _format_root(r: dict) -> str:
    lines = [f"{'root':<11}{r['root']} (a CheckpointManager folder of step-N checkpoints)"]
    for e in r["steps"]:
        if e["complete"]:
            what = (
                f"complete: table {e['table']}, {e['shape'][0]} x {e['shape'][1]}, "
                f"{e['num_shards']} shard(s), created {e.get('created') or '?'}"
            )
        else:
            what = e["error"]
        lines.append(f"{'step ' + str(e['step']):<11}{what}")
    if r["latest"] is None:
        lines.append(f"{'latest':<11}none: no complete checkpoint here")
    else:
        lines.append(f"{'latest':<11}{r['latest']}")
        lines.append(f"{'':<11}(shardemb checkpoint inspect {r['latest']} shows its manifest)")
    return "\n".join(lines)
