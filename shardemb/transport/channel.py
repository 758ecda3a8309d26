"""The router's side of the shared-memory path to the shards on its host.

:class:`RequestBuffers` holds one request's ids, output positions and rows in
:class:`~shardemb.transport.shm.ShmSegment` files; :class:`ShmChannel` holds one set for
lookups and a ring of sets for pushes still in flight. The shard's side is
:class:`~shardemb.transport.endpoint.SharedMemoryEndpoint`.
"""

from __future__ import annotations

import itertools
import os

import numpy as np

from shardemb.errors import ShardembError, ShardTimeoutError
from shardemb.transport.shared_table import JoinedRows, RowReader
from shardemb.transport.shm import RETIRED, STAMP_BYTES, ShmSegment, shm_available

__all__ = ["RequestBuffers", "ShmChannel", "probe_channel"]

#: Request ids, unique in this process (never :data:`~shardemb.transport.shm.RETIRED`).
_requests = itertools.count(1)


class RequestBuffers:
    """Ids, positions and rows of one request in shared memory, grown on demand and shrunk
    back after a spike.

    Each request gets an id, its stamp, written into the ids buffer (:meth:`stamp`): a
    shard serves a request only while the stamp is still its own. A request that failed
    or timed out may still be queued on a shard, so its buffers are retired
    (:meth:`retire`), never reused."""

    #: Rows of the smallest buffers, and how many requests in a row must need at most a
    #: quarter of the capacity before the buffers shrink.
    MIN_CAPACITY = 4096
    SHRINK_AFTER = 8

    def __init__(self, dim: int, dtype: str):
        self.dim, self.dtype = dim, np.dtype(dtype)
        self.capacity = 0
        self._ids: ShmSegment | None = None
        self._pos: ShmSegment | None = None
        self._rows: ShmSegment | None = None
        self._small = 0  # requests in a row that needed at most capacity // 4
        self._small_peak = 0  # the most any of them needed
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

    @property
    def nbytes(self) -> int:
        """Bytes of shared memory the buffers hold now."""
        return sum(b.size for b in (self._ids, self._pos, self._rows) if b is not None)

    def reserve(self, n: int) -> None:
        """Room for ``n`` rows. Call it only while no request uses the buffers."""
        if n <= self.capacity and self._ids is not None:  # also for n == 0: map them once
            if 4 * n > self.capacity or self.capacity <= self.MIN_CAPACITY:
                self._small = self._small_peak = 0
                return
            self._small, self._small_peak = self._small + 1, max(self._small_peak, n)
            if self._small < self.SHRINK_AFTER:
                return
            # Shrink after a spike, to twice what the recent requests needed: growing
            # (doubling) starts again only beyond that.
            capacity = max(2 * self._small_peak, self.MIN_CAPACITY)
        else:
            # Grow geometrically: shards map each new buffer once.
            capacity = max(n, 2 * self.capacity, self.MIN_CAPACITY)
        self.close()
        try:
            self._ids = ShmSegment.create(capacity * 8 + STAMP_BYTES)
            self._pos = ShmSegment.create(capacity * 8)
            self._rows = ShmSegment.create(capacity * self.dim * self.dtype.itemsize)
        except BaseException:
            self.close()  # no half-made set: the next reserve starts again
            raise
        self._ids.stamp = RETIRED
        self.capacity = capacity

    def stamp(self) -> int:
        """Start a request: a new id, written into the ids buffer's stamp; the shards are
        given it with the call and serve the request only while the stamp matches."""
        request = next(_requests)
        self._ids.stamp = request
        return request

    def ids(self, n: int) -> np.ndarray:
        return self._ids.array(np.int64, (n,))

    def pos(self, n: int) -> np.ndarray:
        return self._pos.array(np.int64, (n,))

    def rows(self, n: int) -> np.ndarray:
        return self._rows.array(self.dtype, (n, self.dim))

    def retire(self) -> None:
        """Give up the request in flight: stamp the buffers retired and remove them (the
        next :meth:`reserve` makes new ones); a shard still holding the request skips it,
        or at worst writes into memory nobody reads again."""
        self.close()

    def close(self) -> None:
        if self._ids is not None:
            self._ids.stamp = RETIRED
        for buf in (self._ids, self._pos, self._rows):
            if buf is not None:
                buf.close()
        self._ids = self._pos = self._rows = None
        self.capacity = 0
        self._small = self._small_peak = 0


class ShmChannel:
    """Buffers for lookups and a ring of buffers for pushes in flight; ``local[s]`` says
    whether shard ``s`` sees this host's shared memory."""

    PUSH_RING = 4
    #: Seconds :meth:`close` waits for the shards to unmap the channel's buffers.
    RELEASE_WAIT_S = 10.0

    def __init__(self, dim: int, dtype: str, local: list[bool], backend=None, handles=()):
        self.local = local
        self._backend, self._handles = backend, handles  # the store's list: sees restarts
        self.lookup = RequestBuffers(dim, dtype)
        self.pushes = [RequestBuffers(dim, dtype) for _ in range(self.PUSH_RING)]
        self._next = 0
        #: Per shard, a read-only view of its rows when it keeps them in shared memory
        #: here (zero-copy lookups, :mod:`shardemb.transport.shared_table`), else None.
        self.tables: list[RowReader | None] = [None] * len(local)
        # All the shards' rows in one mapping (built at the first lookup that reads them
        # all here); False where it cannot be built: then they are read shard by shard.
        self._joined: JoinedRows | bool | None = None
        self._joined_of: tuple = ()

    def readers(self, shards) -> list[RowReader] | None:
        """The row readers of ``shards`` when every one can be read here, else None."""
        readers = [self.tables[s] for s in shards]
        if all(r is not None and r.ready for r in readers):
            return readers
        return None

    def joined(self, readers: list[RowReader]) -> JoinedRows | None:
        """One mapping of the rows of ``readers`` (all ready), or None where the platform
        cannot make one."""
        if self._joined is False:
            return None
        key = tuple(id(r) for r in readers)
        if self._joined is None or self._joined_of != key:
            self._close_joined()
            try:
                self._joined, self._joined_of = JoinedRows(readers), key
            except OSError:
                self._joined = False
                return None
        return self._joined

    def _close_joined(self) -> None:
        if isinstance(self._joined, JoinedRows):
            self._joined.close()
        self._joined, self._joined_of = None, ()

    def next_push(self, backend, timeout: float) -> RequestBuffers:
        """The next push buffer, once the shards have finished reading it (backpressure).
        Errors of those pushes are left to the store's pending queue."""
        buf = self.pushes[self._next]
        self._next = (self._next + 1) % len(self.pushes)
        if buf.futures:
            backend.wait(buf.futures, timeout)
            buf.futures = []
        return buf

    def close(self, *, remove_tables: bool = False) -> None:
        """Remove the buffers, and have the shards unmap them: a shard's mapping would
        hold their memory (until it attaches a new buffer) after this client is gone.
        ``remove_tables``: the shards are gone (their owner closed the table): also remove
        the files of their shared rows."""
        self._close_joined()
        for i, reader in enumerate(self.tables):
            if reader is not None:
                reader.close(unlink=remove_tables)
                self.tables[i] = None
        bufs = (self.lookup, *self.pushes)
        names = [n for b in bufs if b.capacity for n in b.names]
        for buf in bufs:
            buf.close()
        if names and self._backend is not None:
            self._release(names)

    def _release(self, names: list[str]) -> None:
        shards = [h for h, local in zip(self._handles, self.local, strict=True) if local]
        futures = [self._backend.submit(h, "release_shm", names) for h in shards]
        try:
            self._backend.wait(futures, self.RELEASE_WAIT_S)
        except ShardTimeoutError:
            pass  # a stopped shard drops them at its next call (their files are gone)
        ready, _ = self._backend.done(futures)
        for fut in ready:
            try:
                self._backend.get([fut])
            except ShardembError:
                pass  # a dead or killed shard (the owner closes after the kill) maps nothing


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
        futures = [backend.submit(h, "probe_shm", probe.name) for h in handles]
        futures += [backend.submit(h, "shared_rows_info") for h in handles]
        answers = get(futures)
    finally:
        probe.close()
    seen, infos = answers[: len(handles)], answers[len(handles) :]
    local = [t == token for t in seen]
    if not any(local):
        return None
    channel = ShmChannel(dim, dtype, local, backend, handles)
    for s, (here, info) in enumerate(zip(local, infos, strict=True)):
        if here and info is not None:
            try:
                channel.tables[s] = RowReader(info)
            except OSError:
                pass  # gone meanwhile (a restart): that shard's lookups take the Ray path
    return channel
