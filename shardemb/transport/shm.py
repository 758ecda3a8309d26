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
import errno
import fcntl
import mmap
import os
import threading
import time
import uuid

import numpy as np

__all__ = ["RETIRED", "SHM_DIR", "STAMP_BYTES", "SegmentCache", "ShmSegment", "shm_available"]

SHM_DIR = "/dev/shm"
_PREFIX = "shardemb-"

#: Bytes at the end of a request buffer that hold its stamp: the id of the request it
#: carries now (one int64, alone in its cache line). At the end, so the ids stay at offset 0.
STAMP_BYTES = 64
#: The stamp of a buffer the router has given up: no request matches it.
RETIRED = -1


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
    """Remove buffers left behind by processes that no longer exist.

    A creator holds an exclusive ``flock`` on its file for the file's life, so a file whose
    lock can be taken has no live owner. That holds across PID namespaces (containers
    sharing ``/dev/shm``), where a PID says nothing. Only this user's files are looked at.
    A file gets its final name only once locked (see :meth:`ShmSegment.create`).
    """
    global _swept
    _swept = True
    try:
        names = os.listdir(SHM_DIR)
    except OSError:
        return
    uid, now = os.getuid(), time.time()
    for name in names:
        # ".shardemb-..." files are being created (locked, then renamed within a moment);
        # one left by a creator killed in that moment is swept once it is old.
        creating = name.startswith(f".{_PREFIX}")
        if not (name.startswith(_PREFIX) or creating):
            continue
        path = os.path.join(SHM_DIR, name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            st = os.fstat(fd)
            if st.st_uid != uid or (creating and now - st.st_mtime < 60):
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # locked: its creator is alive
            os.unlink(path)
        except OSError:
            pass
        finally:
            os.close(fd)


def _reserve(fd: int, size: int, path: str) -> None:
    """Back the whole file with memory now. A file only ``ftruncate``d is sparse: on a full
    tmpfs (Docker's default ``/dev/shm`` is 64 MiB) writing through the mapping later
    kills the process with SIGBUS instead of raising."""
    st = os.statvfs(os.path.dirname(path))
    free = st.f_bavail * st.f_frsize
    if size > free:
        raise OSError(
            errno.ENOSPC,
            f"{SHM_DIR} has {free} bytes free; a {size}-byte shared buffer does not fit",
            path,
        )
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as err:
        if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # a filesystem without it
            raise
        os.ftruncate(fd, size)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    with _owned_lock:
        _owned.discard(path)


def shm_available() -> bool:
    """Whether this host has a writable ``/dev/shm``."""
    return os.path.isdir(SHM_DIR) and os.access(SHM_DIR, os.W_OK)


class ShmSegment:
    """A named, file-backed shared memory region."""

    def __init__(self, name: str, size: int, mm: mmap.mmap, owner: bool):
        self.name, self.size, self._mm, self._owner = name, size, mm, owner
        self._lock_fd: int | None = None  # the creator's flock: "its owner is alive"

    @classmethod
    def create(cls, size: int) -> ShmSegment:
        if not _swept:
            _sweep_stale()
        size = max(int(size), mmap.PAGESIZE)
        name = f"{_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}"
        path = os.path.join(SHM_DIR, name)
        # Locked under a name the sweep ignores, then renamed: a sweeper never sees it unlocked.
        tmp = os.path.join(SHM_DIR, f".{name}")
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held while the file lives
            _reserve(fd, size, tmp)
            mm = mmap.mmap(fd, size)
            with _owned_lock:
                _owned.add(path)
            os.rename(tmp, path)
        except BaseException:
            os.close(fd)
            _unlink(tmp)
            _unlink(path)
            raise
        seg = cls(name, size, mm, owner=True)
        seg._lock_fd = fd
        return seg

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

    @property
    def stamp(self) -> int:
        """The request id in the buffer's last :data:`STAMP_BYTES` (see :data:`RETIRED`)."""
        return int(self.array(np.int64, (1,), offset=self.size - STAMP_BYTES)[0])

    @stamp.setter
    def stamp(self, request: int) -> None:
        self.array(np.int64, (1,), offset=self.size - STAMP_BYTES)[0] = request

    def close(self) -> None:
        """Unmap; the creator also removes the file. Views must not be used afterwards."""
        try:
            self._mm.close()
        except BufferError:
            # A view is still alive somewhere: leave the mapping to the garbage collector.
            pass
        if self._owner:
            _unlink(os.path.join(SHM_DIR, self.name))
            self._owner = False
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


class SegmentCache:
    """A shard's cache of the routers' buffers it has mapped, least recently used out.

    A router removes the file of a buffer it retires (grown, shrunk, given up after an
    error, closed); its memory is freed only once every mapping is gone. So a mapping whose
    file is gone is dropped: whenever a new buffer is attached (a router that retires one
    sends a new one next), and at most every ``check_every`` seconds otherwise.
    """

    def __init__(self, capacity: int = 32, check_every: float = 1.0):
        self.capacity, self.check_every = capacity, check_every
        self._maps: collections.OrderedDict[str, ShmSegment] = collections.OrderedDict()
        self._checked = time.monotonic()

    def get(self, name: str) -> ShmSegment:
        if name not in self._maps or time.monotonic() - self._checked > self.check_every:
            self.drop_unlinked()
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

    def release(self, names) -> None:
        """Unmap ``names`` (a router closing its buffers), and any buffer already removed."""
        for name in names:
            self.forget(name)
        self.drop_unlinked()

    def drop_unlinked(self) -> None:
        """Unmap the buffers whose file is gone: their router retired them."""
        self._checked = time.monotonic()
        for name in list(self._maps):
            if not os.path.exists(os.path.join(SHM_DIR, name)):
                self.forget(name)

    def info(self) -> dict:
        """The names and total bytes of the buffers mapped now (for tests and diagnostics)."""
        return {
            "names": list(self._maps),
            "bytes": sum(b.size for b in self._maps.values()),
            "capacity": self.capacity,
        }
