"""What every store handle does with its shards, whatever the kind of table: run a
function on each, wait for its pushes, close, and serve as a context manager.

:class:`~shardemb.store.embedding_store.EmbeddingStore` and
:class:`~shardemb.store.dynamic_store.DynamicEmbeddingStore` both derive from it. A
subclass sets ``config``, ``_lock``, ``_handles``, ``_backend``, ``_pending``, ``_owner``,
``_closed`` and ``_finalizer``, and defines ``_get`` and ``_raise_pending``.
"""

from __future__ import annotations

from typing import Any, Self

from shardemb.errors import InvalidConfigError, ShardRestartedError, ShardUnavailableError

__all__ = ["ShardsHandle"]


class ShardsHandle:
    """The shard-facing part of a store handle."""

    def shard_call(self, fn, *args, only: int | None = None) -> Any:
        """Run ``fn(shard, *args)`` on every shard (a module-level function) and return
        the results in shard order; with ``only``, on that shard alone, returning its
        result. Pushes already finished with an error raise first."""
        if only is not None and not 0 <= only < self.config.num_shards:
            raise InvalidConfigError(
                f"`only` must be a shard of table {self.config.name!r} (0 to "
                f"{self.config.num_shards - 1}). Received: only={only!r}"
            )
        with self._lock:
            self._raise_pending()
            handles = self._handles if only is None else [self._handles[only]]
            results = self._get([self._backend.submit(h, "call", fn, *args) for h in handles])
        return results if only is None else results[0]

    def flush(self) -> None:
        """Wait until every push made so far is applied; raise the first shard error."""
        with self._lock:
            self._settle(self._pending.take_all())

    def _settle(self, futures: list) -> None:
        """Wait for the pushes ``futures`` (taken from the pending queue): raise the first
        error, also one of this table's items in a fused call."""
        picks = self._pending.take_picks(futures)
        values = self._get(futures)
        try:
            self._pending.check(picks, values)
        except ShardRestartedError:
            raise
        except ShardUnavailableError as err:
            self._recover(err)  # a fused answer's item names a gone shard: as a failed call
            raise

    def _recover(self, err: ShardUnavailableError) -> None:
        """Bring back dead shards named by ``err`` (raising); tables that cannot recover
        leave ``err`` to be raised."""

    def close(self) -> None:
        """Apply pending pushes, then remove the table's shards if this handle owns them:
        it created the table, or the table is detached (it belongs to nobody, so closing
        any handle to it removes it). A handle from ``connect`` to a table another
        process owns only lets go. Closing twice is harmless."""
        if self._closed:
            return
        with self._lock:
            try:
                self.flush()
            finally:
                self._closed = True
                if self._owner:
                    self._backend.kill(self.config.name, self._handles)
                self._let_go()
                if self._finalizer is not None:
                    self._finalizer.detach()

    def _let_go(self) -> None:
        """What a closing handle releases besides its shards (nothing here)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
