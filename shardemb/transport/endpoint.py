"""The shard's side of the shared-memory path: methods the shard actor gains from its
transport. The shard itself (:mod:`shardemb.shard`) knows no transport.
"""

from __future__ import annotations

import numpy as np

from shardemb.errors import InvalidIdsError
from shardemb.transport.shm import SegmentCache

__all__ = ["SharedMemoryEndpoint"]


class SharedMemoryEndpoint:
    """Mixed into a shard actor (before :class:`~shardemb.shard.shard.Shard`): serves
    lookups and pushes whose ids, gradients and rows sit in the router's buffers."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._segments = SegmentCache()
        self._itemsize = np.dtype(self.config.dtype).itemsize

    def lookup_shm(self, names: tuple[str, str, str], start: int, stop: int) -> int:
        """Serve ``ids[start:stop]`` of the router's buffers: write the row of each to
        ``out[pos[i]]``. ``names`` are the ids, positions and output buffers."""
        ids_name, pos_name, out_name = names
        local = self.check_rows(self._shm_ids(ids_name, start, stop))
        pos = self._shm_ids(pos_name, start, stop)
        out_buf = self._segments.get(out_name)
        dim = self.config.dim
        out = out_buf.array(self.config.dtype, (out_buf.size // (dim * self._itemsize), dim))
        if pos.size and (pos.min() < 0 or pos.max() >= len(out)):
            raise InvalidIdsError(f"Shard {self.index}: output positions out of range.")
        # Gather here, then scatter into the router's output: both run in this process, in
        # parallel with the other shards; the router makes one copy (or one un-dedup take).
        out[pos] = self.weights.host(self.weights.gather(local))
        return stop - start

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

    def _shm_ids(self, name: str, start: int, stop: int) -> np.ndarray:
        return self._segments.get(name).array(np.int64, (stop - start,), offset=start * 8)
