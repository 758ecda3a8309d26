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

Pure numpy over ``mmap``; the memory is counted once (both processes map the same pages).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time

import numpy as np

from shardemb.errors import ShardTimeoutError
from shardemb.transport.shm import SHM_DIR, ShmSegment

__all__ = ["HEADER_BYTES", "RowReader", "SharedRows"]

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
        deadline = None
        while True:
            before = int(self.header[VERSION])
            if not before & 1:
                # mode="clip": with out= and the default "raise", numpy gathers into a
                # temporary first (the rows were checked by the router's partition).
                rows = np.take(self.rows, local, axis=0, out=out, mode="clip")
                if int(self.header[VERSION]) == before:
                    return rows
            deadline = deadline or time.monotonic() + self.WAIT_S
            if time.monotonic() > deadline:
                raise ShardTimeoutError(
                    f"A shard's rows stayed locked by a writer for over {self.WAIT_S} s "
                    f"(segment {self.segment.name!r})."
                )
            time.sleep(0)

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
