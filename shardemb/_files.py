"""Local-file helpers shared by every layer."""

from __future__ import annotations

import os


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a rename inside ``path`` durable (a no-op where folders can't be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(
    path: str | os.PathLike[str], data: bytes | str, *, tmp: str | None = None, before_rename=None
) -> None:
    """Write ``data`` to ``path`` so that a reader sees the old file or the new one, never a
    torn one: a temporary file beside it, fsync, rename, fsync the folder.

    ``tmp`` names the temporary file (default: ``PATH.tmp-PID``). ``before_rename`` (no
    arguments) runs between the fsync and the rename; crash tests use it.
    """
    path = os.fspath(path)
    tmp = tmp or f"{path}.tmp-{os.getpid()}"
    raw = data.encode() if isinstance(data, str) else data
    try:
        with open(tmp, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        if before_rename is not None:
            before_rename()
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(os.path.dirname(path) or ".")
