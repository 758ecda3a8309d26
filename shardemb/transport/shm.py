"""Shared-memory buffers between the router and the shards on its machine.

Moving rows through Ray's object store costs about 1 ms per MB on a small machine, far more
than the copy itself. When a shard runs on the router's host, the router instead puts the
ids (and gradients) in a file-backed buffer under ``/dev/shm`` and the shard writes its
rows straight into the router's buffer; the Ray call carries only offsets. Whether a shard
can see the router's buffers is probed, not assumed (a shard on another host, or in
another container, falls back to Ray's object transfer).

Plain files and ``mmap`` are used rather than ``multiprocessing.shared_memory``, whose
resource tracker unlinks segments when an attaching process exits (Python < 3.13).

Example:
    >>> import numpy as np
    >>> buf = ShmSegment.create(1024)
    >>> view = buf.array(np.float32, (4, 2))
    >>> view[:] = 1.0
    >>> other = ShmSegment.attach(buf.name)
    >>> float(other.array(np.float32, (4, 2)).sum())
    8.0
    >>> other.close(); buf.close()
"""

from __future__ import annotations

import atexit
import collections
import mmap
import os
import threading
import uuid

import numpy as np

__all__ = ["SHM_DIR", "SegmentCache", "ShmSegment", "shm_available"]

SHM_DIR = "/dev/shm"
_PREFIX = "shardemb-"


# Files this process created and has not removed yet: removed at exit, and files of
# processes that died without that chance are swept by the next process that creates one.
_owned: set[str] = set()
_owned_lock = threading.Lock()
_swept = False


@atexit.register
def _remove_owned() -> None:
    with _owned_lock:
        for path in list(_owned):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        _owned.clear()


def _sweep_stale() -> None:
    """Remove buffers left behind by processes of this host that no longer exist."""
    global _swept
    _swept = True
    try:
        names = os.listdir(SHM_DIR)
    except OSError:
        return
    for name in names:
        pid = name[len(_PREFIX) :].split("-", 1)[0]
        if not name.startswith(_PREFIX) or not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            try:
                os.unlink(os.path.join(SHM_DIR, name))
            except OSError:
                pass
        except PermissionError:
            pass  # another user's live process


def shm_available() -> bool:
    """Whether this host has a writable ``/dev/shm``."""
    return os.path.isdir(SHM_DIR) and os.access(SHM_DIR, os.W_OK)


class ShmSegment:
    """A named, file-backed shared memory region."""

    def __init__(self, name: str, size: int, mm: mmap.mmap, owner: bool):
        self.name, self.size, self._mm, self._owner = name, size, mm, owner

    @classmethod
    def create(cls, size: int) -> ShmSegment:
        if not _swept:
            _sweep_stale()
        size = max(int(size), mmap.PAGESIZE)
        name = f"{_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}"
        path = os.path.join(SHM_DIR, name)
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        with _owned_lock:
            _owned.add(path)
        try:
            os.ftruncate(fd, size)
            mm = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        return cls(name, size, mm, owner=True)

    @classmethod
    def attach(cls, name: str) -> ShmSegment:
        if not name.startswith(_PREFIX) or "/" in name:
            raise ValueError(f"not a shardemb buffer name: {name!r}")
        fd = os.open(os.path.join(SHM_DIR, name), os.O_RDWR)
        try:
            size = os.fstat(fd).st_size
            mm = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        return cls(name, size, mm, owner=False)

    def array(self, dtype, shape, offset: int = 0) -> np.ndarray:
        """A numpy view of the buffer (valid until :meth:`close`)."""
        return np.ndarray(shape, dtype=dtype, buffer=self._mm, offset=offset)

    def close(self) -> None:
        """Unmap; the creator also removes the file. Views must not be used afterwards."""
        try:
            self._mm.close()
        except BufferError:
            # A view is still alive somewhere: leave the mapping to the garbage collector.
            pass
        if self._owner:
            path = os.path.join(SHM_DIR, self.name)
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            with _owned_lock:
                _owned.discard(path)
            self._owner = False


class SegmentCache:
    """A shard's cache of the routers' buffers it has mapped, least recently used out."""

    def __init__(self, capacity: int = 32):
        self.capacity = capacity
        self._maps: collections.OrderedDict[str, ShmSegment] = collections.OrderedDict()

    def get(self, name: str) -> ShmSegment:
        buf = self._maps.get(name)
        if buf is None:
            buf = ShmSegment.attach(name)
            self._maps[name] = buf
            while len(self._maps) > self.capacity:
                _, old = self._maps.popitem(last=False)
                old.close()
        else:
            self._maps.move_to_end(name)
        return buf

    def forget(self, name: str) -> None:
        buf = self._maps.pop(name, None)
        if buf is not None:
            buf.close()
