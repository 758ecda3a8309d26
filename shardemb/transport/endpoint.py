"""The shard's side of the shared-memory path: methods the shard actor gains from its
transport. The shard itself (:mod:`shardemb.shard`) knows no transport.
"""

from __future__ import annotations

import numpy as np

from shardemb.errors import InvalidIdsError
from shardemb.transport.shared_table import SharedRows
from shardemb.transport.shm import SegmentCache, shm_available

__all__ = ["STALE", "SharedMemoryEndpoint"]

#: What :meth:`SharedMemoryEndpoint.lookup_shm` returns for a request the router gave up.
STALE = -1


class SharedMemoryEndpoint:
    """Mixed into a shard actor (before :class:`~shardemb.shard.shard.Shard`): serves
    lookups and pushes whose ids, gradients and rows sit in the router's buffers."""

    def __init__(self, *args, **kwargs):
        self._shared = None
        super().__init__(*args, **kwargs)
        self._segments = SegmentCache()
        self._itemsize = np.dtype(self.config.dtype).itemsize
        if self.config.storage == "numpy" and shm_available():
            try:
                self._shared = SharedRows(self.weights)
            except OSError:
                self._shared = None  # /dev/shm too small: lookups keep the Ray path
            else:
                self._shared.set_ready(self.loaded)

    # A router reads shared rows only while the shard holds the table's rows.
    @property
    def loaded(self) -> bool:
        return self._loaded

    @loaded.setter
    def loaded(self, value: bool) -> None:
        self._loaded = bool(value)
        if self._shared is not None:
            self._shared.set_ready(self._loaded)

    def close_shared(self) -> None:
        """Remove the shared rows (the shard leaves a host that lives on): routers see
        the shard gone. The rows stay valid here until the shard is dropped."""
        if self._shared is not None:
            self._shared.segment.close()
            self._shared = None

    def shared_rows_info(self) -> dict | None:
        """How a router on this host maps this shard's rows (``None``: it cannot)."""
        return self._shared.info() if self._shared is not None else None

    def lookup_shm(self, names: tuple[str, ...], start: int, stop: int, request: int) -> int:
        """Serve ``ids[start:stop]`` of the router's buffers: write the row of each to
        ``out[pos[i]]``. ``names`` are the ids, positions and output buffers; ``request``
        is the id the router stamped into the ids buffer for this call. Returns the rows
        written, or :data:`STALE` when the router no longer waits for this request (it
        timed out or failed, and its buffers were retired): then nothing was written, or
        only into those retired buffers."""
        ids_name, pos_name, out_name = names
        try:
            ids_buf = self._segments.get(ids_name)
            if ids_buf.stamp != request:
                return STALE
            ids = ids_buf.array(np.int64, (stop - start,), offset=start * 8)  # held: mapped
            local = self.check_rows(ids)
            pos = self._shm_ids(pos_name, start, stop)
            out_buf = self._segments.get(out_name)
        except FileNotFoundError:
            return STALE  # removed: retired by the router
        dim = self.config.dim
        out = out_buf.array(self.config.dtype, (out_buf.size // (dim * self._itemsize), dim))
        if pos.size and (pos.min() < 0 or pos.max() >= len(out)):
            raise InvalidIdsError(f"Shard {self.index}: output positions out of range.")
        # Gather here, then scatter into the router's output: both run in this process, in
        # parallel with the other shards; the router makes one copy (or one un-dedup take).
        rows = self.weights.host(self.weights.gather(local))
        # The check and the write are not one atomic step: the router may give up in
        # between. That is safe because it retires (never reuses) the buffers of a request
        # it gave up, so a late write lands in memory no later request reads. The stamp
        # only spares the work and keeps a stale request from reading another one's ids.
        if ids_buf.stamp != request:
            return STALE
        out[pos] = rows
        return stop - start if ids_buf.stamp == request else STALE

    def apply_gradients_shm(self, ids_name: str, grads_name: str, start: int, stop: int) -> None:
        """``apply_gradients`` with ids and gradients read from the router's buffers."""
        local = self._shm_ids(ids_name, start, stop).copy()
        dim = self.config.dim
        grads = self._segments.get(grads_name).array(
            self.config.dtype, (stop - start, dim), offset=start * dim * self._itemsize
        )
        self.apply_gradients(local, grads.copy())

    def probe_shm(self, name: str) -> bytes:
        """The first 16 bytes of the router's probe buffer (``b""`` if it cannot be seen)."""
        try:
            buf = self._segments.get(name)
        except OSError:
            return b""
        token = bytes(buf.array(np.uint8, (16,)))
        self._segments.forget(name)
        return token

    def release_shm(self, names) -> None:
        """Unmap the router's buffers ``names`` (it closed them), and any already removed."""
        self._segments.release(names)

    def shm_cache_info(self) -> dict:
        """The router buffers this shard maps now: ``names``, ``bytes``, ``capacity``."""
        return self._segments.info()

    def _shm_ids(self, name: str, start: int, stop: int) -> np.ndarray:
        return self._segments.get(name).array(np.int64, (stop - start,), offset=start * 8)
