"""The router's side of the shared-memory path to the shards on its host.

:class:`RequestBuffers` holds one request's ids, output positions and rows in
:class:`~shardemb.transport.shm.ShmSegment` files; :class:`ShmChannel` holds one set for
lookups and a ring of sets for pushes still in flight. The shard's side is
:class:`~shardemb.transport.endpoint.SharedMemoryEndpoint`.
"""

from __future__ import annotations

import os

import numpy as np

from shardemb.transport.shm import ShmSegment, shm_available

__all__ = ["RequestBuffers", "ShmChannel", "probe_channel"]


class RequestBuffers:
    """Ids, positions and rows of one request in shared memory, grown on demand."""

    def __init__(self, dim: int, dtype: str):
        self.dim, self.dtype = dim, np.dtype(dtype)
        self.capacity = 0
        self._ids: ShmSegment | None = None
        self._pos: ShmSegment | None = None
        self._rows: ShmSegment | None = None
        self.futures: list = []  # pushes still reading these buffers

    @property
    def ids_name(self) -> str:
        return self._ids.name

    @property
    def rows_name(self) -> str:
        return self._rows.name

    @property
    def names(self) -> tuple[str, str, str]:
        return (self._ids.name, self._pos.name, self._rows.name)

    def reserve(self, n: int) -> None:
        if n <= self.capacity and self._ids is not None:  # also for n == 0: map them once
            return
        # Grow geometrically: shards map each new buffer once.
        capacity = max(n, 2 * self.capacity, 4096)
        self.close()
        try:
            self._ids = ShmSegment.create(capacity * 8)
            self._pos = ShmSegment.create(capacity * 8)
            self._rows = ShmSegment.create(capacity * self.dim * self.dtype.itemsize)
        except BaseException:
            self.close()  # no half-made set: the next reserve starts again
            raise
        self.capacity = capacity

    def ids(self, n: int) -> np.ndarray:
        return self._ids.array(np.int64, (n,))

    def pos(self, n: int) -> np.ndarray:
        return self._pos.array(np.int64, (n,))

    def rows(self, n: int) -> np.ndarray:
        return self._rows.array(self.dtype, (n, self.dim))

    def close(self) -> None:
        for buf in (self._ids, self._pos, self._rows):
            if buf is not None:
                buf.close()
        self._ids = self._pos = self._rows = None
        self.capacity = 0


class ShmChannel:
    """Buffers for lookups and a ring of buffers for pushes in flight; ``local[s]`` says
    whether shard ``s`` sees this host's shared memory."""

    PUSH_RING = 4

    def __init__(self, dim: int, dtype: str, local: list[bool]):
        self.local = local
        self.lookup = RequestBuffers(dim, dtype)
        self.pushes = [RequestBuffers(dim, dtype) for _ in range(self.PUSH_RING)]
        self._next = 0

    def next_push(self, backend, timeout: float) -> RequestBuffers:
        """The next push buffer, once the shards have finished reading it (backpressure).
        Errors of those pushes are left to the store's pending queue."""
        buf = self.pushes[self._next]
        self._next = (self._next + 1) % len(self.pushes)
        if buf.futures:
            backend.wait(buf.futures, timeout)
            buf.futures = []
        return buf

    def close(self) -> None:
        for buf in (self.lookup, *self.pushes):
            buf.close()


def probe_channel(backend, handles: list, dim: int, dtype: str, get) -> ShmChannel | None:
    """A channel to the shards that can see this host's shared memory, or ``None`` when
    none can (another host, another container, no ``/dev/shm``). Each shard reads a
    random token from a probe buffer; ``get`` waits for the answers."""
    if backend.name != "ray" or not shm_available():
        return None
    probe = ShmSegment.create(16)
    try:
        token = os.urandom(16)
        probe.array(np.uint8, (16,))[:] = np.frombuffer(token, np.uint8)
        seen = get([backend.submit(h, "probe_shm", probe.name) for h in handles])
    finally:
        probe.close()
    local = [t == token for t in seen]
    return ShmChannel(dim, dtype, local) if any(local) else None
