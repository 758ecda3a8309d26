"""CheckpointManager: numbered checkpoints under one root, keeping the last few."""

from __future__ import annotations

import numpy as np

from shardemb._validate import check_positive_int
from shardemb.checkpoint.dynamic import (
    is_dynamic_checkpoint,
    is_dynamic_store,
    restore_dynamic,
    save_dynamic,
)
from shardemb.checkpoint.format import MANIFEST, STEP_DIR, kill_stage, maybe_kill
from shardemb.checkpoint.location import Location
from shardemb.checkpoint.reader import restore_store
from shardemb.checkpoint.writer import save_store
from shardemb.errors import CheckpointError, CheckpointNotFoundError, InvalidConfigError


class CheckpointManager:
    """Numbered checkpoints ``root/step-<N>`` of a table, keeping the last ``keep``.

    A checkpoint counts once committed (its manifest written); older ones beyond ``keep``
    and leftovers of interrupted saves are deleted only after a new one is committed (first
    their manifest, so a deletion cut short leaves no half checkpoint). One process at a
    time saves under a root.
    ``save_options`` go to :func:`save_store` (``chunk_rows``, ``compression``,
    ``checksum``); with ``table``, restores check that checkpoints belong to that table.

    Example:
        >>> import tempfile, shardemb
        >>> s = shardemb.EmbeddingStore.create("doc-manager", 10, 2, num_shards=2,
        ...                                    backend="inprocess")
        >>> mgr = shardemb.CheckpointManager(tempfile.mkdtemp(), keep=2)
        >>> for step in (1, 2, 10):
        ...     _ = mgr.save(s, step)
        >>> mgr.steps(), mgr.latest().endswith("step-10")
        ([2, 10], True)
        >>> s.close()
        >>> r = mgr.restore_latest(backend="inprocess")
        >>> r.name
        'doc-manager'
        >>> r.close()
    """

    def __init__(
        self, root: str, keep: int | None = 3, *, table: str | None = None, **save_options
    ):
        check_positive_int("keep", keep, optional=True)  # None keeps all
        unknown = set(save_options) - {"chunk_rows", "compression", "checksum"}
        if unknown:
            raise InvalidConfigError(
                f"Unknown save options {sorted(unknown)}; expected chunk_rows, compression, "
                "checksum."
            )
        self.root = str(root)
        self.keep = keep
        self.table = table
        self.save_options = save_options
        self._loc = Location.of(self.root)

    def path(self, step: int) -> str:
        """Where checkpoint ``step`` is (or would be)."""
        return self._loc.child(f"step-{int(step)}")

    def _dirs(self) -> dict[int, str]:
        return {int(m.group(1)): n for n in self._loc.listdir() if (m := STEP_DIR.match(n))}

    def steps(self) -> list[int]:
        """Steps of the committed checkpoints, ascending (interrupted saves are ignored)."""
        return sorted(s for s, n in self._dirs().items() if self._loc.has(f"{n}/{MANIFEST}"))

    def latest(self) -> str | None:
        """Path of the newest committed checkpoint, or ``None``."""
        steps = self.steps()
        return self.path(steps[-1]) if steps else None

    def save(self, store, step: int, *, overwrite: bool = False) -> str:
        """Save ``store`` as checkpoint ``step``, then prune; returns its path. A committed
        checkpoint of the same step raises :class:`~shardemb.CheckpointError` unless
        ``overwrite``."""
        if isinstance(step, bool) or not isinstance(step, int | np.integer) or step < 0:
            raise InvalidConfigError(
                f"`step` must be a non-negative integer. Received: step={step!r}"
            )
        if self.table is not None and store.name != self.table:
            raise InvalidConfigError(
                f"This manager holds checkpoints of table {self.table!r}. "
                f"Received: store of table {store.name!r}"
            )
        path = self.path(step)
        if not overwrite and int(step) in self.steps():
            raise CheckpointError(
                f"Checkpoint {path!r} already exists; pass overwrite=True to replace it."
            )
        save = save_dynamic if is_dynamic_store(store) else save_store
        save(store, path, step=int(step), **self.save_options)
        self._prune(int(step))
        return path

    def _prune(self, newest: int) -> None:
        kill_at = kill_stage()
        maybe_kill("before_prune", kill_at)
        committed = self.steps()
        # The oldest beyond ``keep``, never the one just saved (even if it is not the newest).
        doomed = [s for s in committed[: -self.keep] if s != newest] if self.keep else []
        # Leftovers of interrupted saves older than the one just committed.
        doomed += [s for s in self._dirs() if s < newest and s not in committed]
        for s in doomed:
            child = Location.of(self.path(s))
            child.uncommit()
            maybe_kill("mid_prune", kill_at)
            child.remove()

    def restore(self, step: int, **kwargs):
        """Restore checkpoint ``step`` (``kwargs`` as for :func:`restore_store`)."""
        kwargs.setdefault("expected_table", self.table)
        path = self.path(step)
        restore = restore_dynamic if is_dynamic_checkpoint(path) else restore_store
        return restore(path, **kwargs)

    def restore_latest(self, **kwargs):
        """Restore the newest committed checkpoint; raises
        :class:`~shardemb.CheckpointNotFoundError` if there is none."""
        steps = self.steps()
        if not steps:
            raise CheckpointNotFoundError(f"No committed checkpoint under {self.root!r}.")
        return self.restore(steps[-1], **kwargs)

    def __repr__(self) -> str:
        return f"CheckpointManager(root={self.root!r}, keep={self.keep}, steps={self.steps()})"
