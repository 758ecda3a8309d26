"""Local-file helpers shared by every layer: fsync and atomic writes."""

from __future__ import annotations

import os


def fsync(path: str | os.PathLike[str], *, directory: bool = False) -> None:
    """Flush ``path`` (a file, or with ``directory`` a folder whose entries changed) to disk."""
    fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(
    path: str | os.PathLike[str], data: bytes | str, *, tmp: str | None = None, before_rename=None
) -> None:
    """Write ``data`` to ``path`` so that a reader sees the old file or the new one, never a
    torn one: a temporary file beside it, fsync, rename, fsync the folder.

    ``tmp`` names the temporary file (default: ``PATH.tmp-PID``). ``before_rename`` (no
    arguments) runs between the fsync and the rename; crash tests use it.

    Example:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "state.json")
        >>> atomic_write(path, '{"ok": true}')
        >>> open(path).read()
        '{"ok": true}'
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
    fsync(os.path.dirname(os.path.abspath(path)), directory=True)
