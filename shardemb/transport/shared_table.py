"""Zero-copy reads of co-located shards: a shard keeps its rows in shared memory, and a
router on the same host maps them read-only and gathers lookups itself, with no Ray call.

The shard side (:class:`SharedRows`) puts the shard's weights in a :class:`ShmSegment`
whose first :data:`HEADER_BYTES` hold a header of int64 words:

- ``VERSION``: a sequence lock. Every write of rows (a push's scatter, ``set_weights``,
  a restore) makes it odd before and even after.
- ``READY``: 1 once the shard holds the table's rows (initialized or loaded), 0 while a
  restarted shard has not loaded them: then readers take the Ray path, which refuses.

The router side (:class:`RowReader`) reads rows as a seqlock reader: it waits for an
even version, gathers, and starts over if the version moved meanwhile, so a row is never
torn by a concurrent writer (another process's push). Read-your-writes is the caller's
part: it waits for its own pushes to the shard before reading (their Ray futures).

:class:`JoinedRows` maps the rows of all of a table's co-located shards side by side in
one read-only address range (Linux ``mmap`` with ``MAP_FIXED``), so that a lookup over
several shards is one gather straight into its output, in the ids' order: no grouping by
shard, no scatter back.

Pure numpy over ``mmap``; the memory is counted once (both processes map the same pages).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import math
import mmap
import os
import sys
import time

import numpy as np

from shardemb.errors import ShardTimeoutError
from shardemb.transport.shm import SHM_DIR, ShmSegment

__all__ = ["HEADER_BYTES", "JoinedRows", "RowReader", "SharedRows"]

HEADER_BYTES = 64
VERSION, READY = 0, 1


class SharedRows:
    """A shard's rows moved into shared memory (the storage keeps its interface)."""

    def __init__(self, storage):
        rows, width, dtype = storage.num_rows, storage.width, storage.dtype
        self.segment = ShmSegment.create(HEADER_BYTES + max(rows * width, 1) * dtype.itemsize)
        self.header = self.segment.array(np.int64, (HEADER_BYTES // 8,))
        data = self.segment.array(dtype, (rows, width), offset=HEADER_BYTES)
        data[:] = storage._data
        storage._data = data
        self.storage = storage
        _wrap_writes(storage, self.header)

    def info(self) -> dict:
        """What a router needs to map the rows."""
        s = self.storage
        return {"name": self.segment.name, "rows": s.num_rows, "dim": s.width,
                "dtype": s.dtype.name}  # fmt: skip

    def set_ready(self, ready: bool) -> None:
        self.header[READY] = int(ready)


def _wrap_writes(storage, header) -> None:
    """Make every write of ``storage`` a seqlock writer section."""
    for name in ("scatter", "write"):
        method = getattr(storage, name)

        def locked(*args, _method=method):
            header[VERSION] += 1
            try:
                return _method(*args)
            finally:
                header[VERSION] += 1

        setattr(storage, name, locked)


class RowReader:
    """A router's read-only view of one co-located shard's rows."""

    #: How long a read waits for a writer before :class:`ShardTimeoutError`.
    WAIT_S = 30.0

    def __init__(self, info: dict):
        self.segment = ShmSegment.attach(info["name"])
        # The shard holds an exclusive flock on the file for its life (ShmSegment.create):
        # a shared lock that can be taken means the shard is dead.
        self._fd = os.open(os.path.join(SHM_DIR, info["name"]), os.O_RDONLY)
        self.header = self.segment.array(np.int64, (HEADER_BYTES // 8,))
        self.rows = self.segment.array(
            np.dtype(info["dtype"]), (info["rows"], info["dim"]), offset=HEADER_BYTES
        )
        self.rows.flags.writeable = False

    @property
    def ready(self) -> bool:
        """The shard is alive and holds its rows: they may be read here. (Else the caller
        takes the Ray path, which reports the dead or unloaded shard.)"""
        return self.header is not None and bool(self.header[READY]) and self.alive()

    def alive(self) -> bool:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True  # the shard holds its lock
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        return False

    def take(self, local: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """The rows ``local``, none torn: gathered between two equal, even versions."""
        return _gather_unlocked(self.rows, local, out, [self.header],
                                f"segment {self.segment.name!r}")  # fmt: skip

    def close(self, *, unlink: bool = False) -> None:
        """Unmap; with ``unlink``, also remove the file (its shard is gone)."""
        name = self.segment.name
        self.rows = self.header = None
        self.segment.close()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if unlink:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(SHM_DIR, name))


class JoinedRows:
    """The rows of several co-located shards of one table (their :class:`RowReader` s)
    mapped again, side by side, in one read-only address range: shard ``s``'s row ``local``
    is row ``starts[s] + local`` of :attr:`rows`. Between two shards lie a few unmapped
    rows (each shard starts at a page boundary), never read: the caller's partition gives
    every local row in range.

    Raises ``OSError`` where this cannot be built (not Linux, a file shorter than its
    rows); the caller then reads shard by shard."""

    def __init__(self, readers: list[RowReader]):
        if not sys.platform.startswith("linux"):
            raise OSError("joined mappings need Linux's mmap(MAP_FIXED)")
        dtype, dim = readers[0].rows.dtype, readers[0].rows.shape[1]
        row_bytes = dtype.itemsize * dim
        # Each shard starts on a page (mmap) and on a whole row from the first one.
        align = math.lcm(mmap.PAGESIZE, row_bytes, HEADER_BYTES)
        sizes = [HEADER_BYTES + r.rows.shape[0] * row_bytes for r in readers]
        offsets, end = [], 0
        for size in sizes:
            offsets.append(end)
            end = _round_up(end + size, align)
        self._size = end
        self._base = _mmap(None, end, _PROT_NONE, _MAP_PRIVATE | _MAP_ANONYMOUS | _MAP_NORESERVE)
        try:
            for reader, offset, size in zip(readers, offsets, sizes, strict=True):
                fd = os.open(os.path.join(SHM_DIR, reader.segment.name), os.O_RDONLY)
                try:
                    if os.fstat(fd).st_size < size:
                        raise OSError(f"segment {reader.segment.name!r} is shorter than its rows")
                    _mmap(self._base + offset, _round_up(size, mmap.PAGESIZE), _PROT_READ,
                          _MAP_SHARED | _MAP_FIXED, fd)  # fmt: skip
                finally:
                    os.close(fd)
        except BaseException:
            _munmap(self._base, self._size)
            raise
        nrows = (offsets[-1] + sizes[-1] - HEADER_BYTES) // row_bytes
        self.rows = _view(self._base + HEADER_BYTES, dtype, (nrows, dim))
        self.starts = np.array([o // row_bytes for o in offsets], dtype=np.int64)
        self.headers = [_view(self._base + o, np.dtype(np.int64), (HEADER_BYTES // 8,))
                        for o in offsets]  # fmt: skip
        self.names = tuple(r.segment.name for r in readers)

    def take(self, index: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Rows ``index`` (``starts[shard] + local``), none torn: one gather between two
        equal, even versions of every shard."""
        return _gather_unlocked(self.rows, index, out, self.headers, f"segments {list(self.names)}")

    def close(self) -> None:
        """Unmap (no view of the mapping is left: :meth:`take` returns copies)."""
        if self._base is not None:
            self.rows, self.headers = None, []
            _munmap(self._base, self._size)
            self._base = None


def _gather_unlocked(rows, index, out, headers, what: str) -> np.ndarray:
    """``rows[index]`` as a seqlock reader of ``headers``: gathered while every version is
    even, and again until none moved meanwhile; :class:`ShardTimeoutError` after
    :attr:`RowReader.WAIT_S` of writers."""
    deadline = None
    while True:
        before = [int(h[VERSION]) for h in headers]
        if not any(v & 1 for v in before):
            # mode="clip": with out= and the default "raise", numpy gathers into a
            # temporary first (the rows were checked by the router's partition).
            got = np.take(rows, index, axis=0, out=out, mode="clip")
            if all(int(h[VERSION]) == v for h, v in zip(headers, before, strict=True)):
                return got
        deadline = deadline or time.monotonic() + RowReader.WAIT_S
        if time.monotonic() > deadline:
            raise ShardTimeoutError(
                f"A shard's rows stayed locked by a writer for over {RowReader.WAIT_S} s ({what})."
            )
        time.sleep(0)


_PROT_NONE, _PROT_READ = 0, 1
_MAP_SHARED, _MAP_PRIVATE, _MAP_FIXED, _MAP_ANONYMOUS, _MAP_NORESERVE = 1, 2, 0x10, 0x20, 0x4000
_libc = None


def _c():
    global _libc
    if _libc is None:
        lib = ctypes.CDLL(None, use_errno=True)
        lib.mmap.restype = ctypes.c_void_p
        lib.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                             ctypes.c_int, ctypes.c_long]  # fmt: skip
        lib.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        _libc = lib
    return _libc


def _mmap(addr, size: int, prot: int, flags: int, fd: int = -1) -> int:
    got = _c().mmap(addr, size, prot, flags, fd, 0)
    if got is None or got == ctypes.c_void_p(-1).value:
        err = ctypes.get_errno()
        raise OSError(err, f"mmap: {os.strerror(err)}")
    return got


def _munmap(addr: int, size: int) -> None:
    _c().munmap(addr, size)


def _view(addr: int, dtype: np.dtype, shape: tuple) -> np.ndarray:
    count = int(np.prod(shape))
    raw = (ctypes.c_char * (count * dtype.itemsize)).from_address(addr)
    arr = np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)
    arr.flags.writeable = False
    return arr


def _round_up(n: int, to: int) -> int:
    return -(-n // to) * to
