"""The interface the checkpoint layer needs from a set of shards: nothing more.

:class:`~shardemb.EmbeddingStore` provides it; the checkpoint code never touches a
store's private state, and never imports the store layer (which sits above it).
"""

from __future__ import annotations

from typing import Any, Protocol

from shardemb.core.config import TableConfig


class ShardSet(Protocol):
    """One table's shards, as seen by a save, a restore or a shard reload."""

    config: TableConfig
    """The table's configuration (shape, dtype, partition, optimizer)."""
    last_checkpoint: str | None
    """The latest checkpoint this handle saved or restored (a save or restore sets it); a
    dead shard comes back from the table's newest one, which every save tells the shards
    (``writer.note_checkpoint``), and from this one only when no live shard knows one."""
    restored_from: str | None
    """The saved table's name when a restore gave the table a new name, else ``None``."""

    @property
    def backend_name(self) -> str:
        """``"ray"`` or ``"inprocess"`` (``memory://`` paths need the latter)."""
        ...

    def flush(self) -> None:
        """Apply every push made so far (raising its errors)."""
        ...

    def shard_call(self, fn, *args, only: int | None = None) -> Any:
        """``fn(shard, *args)`` on every shard, results in shard order; with ``only``, on
        that shard alone, returning its result."""
        ...
