"""One shard of a table: its rows, its optimizer slots and the pushes it applied.

A plain class: the Ray actor is made from it where actors are created
(:mod:`shardemb.transport.backends`), so all of this is unit-tested in-process.

Rows are addressed by *local* row index (see :mod:`shardemb.core.partition`); the router
validates ids and gradients before anything reaches a shard, and the shard re-checks
shapes so that no call can leave it half-updated.

A shard made with ``initialize=False`` (a restore, or a restart after a crash) holds no
rows until a checkpoint is read into it (``loaded``); until then it refuses every lookup,
push, read and save with :class:`~shardemb.errors.ShardNotLoadedError`, so its zeros are
never served as rows.

Example:
    >>> import numpy as np
    >>> from shardemb.core.config import TableConfig
    >>> cfg = TableConfig.build("t", 10, 4, num_shards=2, optimizer={"name": "sgd",
    ...                         "learning_rate": 1.0}, initializer="zeros", seed=0)
    >>> shard = Shard(cfg, 1)
    >>> shard.apply_gradients(np.array([0, 0]), np.ones((2, 4), np.float32))
    >>> shard.lookup(np.array([0]))[0].tolist()
    [-2.0, -2.0, -2.0, -2.0]
"""

from __future__ import annotations

import numpy as np

from shardemb.core.arrays import segment_sum
from shardemb.core.config import TableConfig
from shardemb.errors import InvalidGradientError, InvalidIdsError, ShardNotLoadedError
from shardemb.shard.storage import make_storage

__all__ = ["INIT_BLOCK_ROWS", "Shard", "sum_duplicates"]

# Rows generated per block at start-up: bounds the temporary memory of initialisation.
INIT_BLOCK_ROWS = 65536


class Shard:
    """Rows ``partition.global_rows(index)`` of a table, with their optimizer slots."""

    def __init__(self, config: TableConfig, index: int, *, initialize: bool = True):
        self.config = config
        self.index = int(index)
        self.num_rows = int(config.partition.shard_sizes()[index])
        #: The table-wide number of the last push applied here (Adam's bias correction
        #: uses it); pushes that did not address this shard are counted too.
        self.step = 0
        #: Pushes this shard applied itself.
        self.pushes = 0
        #: Whether the rows are the table's: initialized, or read from a checkpoint.
        self.loaded = bool(initialize)
        #: ``(time_ns, path)`` of the newest committed checkpoint of the table this shard
        #: was told of (saved or loaded): where a replacement of any shard reloads from.
        self.checkpoint: tuple[int, str] | None = None
        #: ``(path, step)`` of the checkpoint this shard's rows were read from, if any.
        self.loaded_from: tuple[str, int] | None = None
        self._push_step: int | None = None  # set by push_at for a transport's push method
        kind, dtype, device = config.storage, config.dtype, _tf_device(config.device)
        self.weights = make_storage(kind, self.num_rows, config.dim, dtype, device)
        self.slots = {
            name: make_storage(kind, self.num_rows, width, config.slot_dtype, device)
            for name, (width, _) in config.optimizer.slot_specs(config.dim).items()
        }
        if initialize:
            self._initialize()

    def _initialize(self) -> None:
        cfg = self.config
        specs = cfg.optimizer.slot_specs(cfg.dim)
        for start in range(0, self.num_rows, INIT_BLOCK_ROWS):
            stop = min(start + INIT_BLOCK_ROWS, self.num_rows)
            rows = cfg.partition.global_rows(self.index, np.arange(start, stop))
            self.weights.write(start, cfg.initializer.generate(rows, cfg.dim, cfg.seed, cfg.dtype))
            for name, (width, init) in specs.items():
                self.slots[name].write(start, np.full((stop - start, width), init, cfg.slot_dtype))

    # -- serving ----------------------------------------------------------------------
    def lookup(self, local: np.ndarray) -> np.ndarray:
        """Rows at ``local`` (any order, duplicates allowed), as a numpy array."""
        local = self.check_rows(local)
        return self.weights.host(self.weights.gather(local))

    def apply_gradients(
        self, local: np.ndarray, grads: np.ndarray, step: int | None = None
    ) -> None:
        """Sum the gradients of duplicate rows, then run one optimizer step on them.

        ``step`` is the push's number in the table's sequence: the router numbers every
        push, also those that reach only other shards, so the optimizer's step (Adam's bias
        correction) counts the table's pushes as Keras counts iterations. The shard's step
        becomes ``step``, or one more than before where that is larger (pushes of several
        processes); without ``step``, one more than before.
        """
        local = self.check_rows(local)
        grads = np.asarray(grads)
        if grads.shape != (local.size, self.config.dim):
            raise InvalidGradientError(
                f"Shard {self.index} expected gradients of shape {(local.size, self.config.dim)}."
                f" Received: shape={grads.shape}"
            )
        step = self._push_step if step is None else step
        self.step = self.step + 1 if step is None else max(int(step), self.step + 1)
        self.pushes += 1
        if local.size == 0:
            return
        # Duplicates are summed, and the optimizer runs, at the slots' precision (float32
        # for a float16 table); the new rows are stored at the table's.
        cfg = self.config
        rows, summed = sum_duplicates(local, grads.astype(cfg.slot_dtype, copy=False))
        w = self.weights
        slots = {k: s.gather(rows) for k, s in self.slots.items()}
        new_rows, new_slots = cfg.optimizer.update(
            w.ops, w.gather(rows), slots, w.native(summed), self.step
        )
        if cfg.constraint is not None:  # on the host: a few rows, after the optimizer
            new_rows = w.native(cfg.constraint.apply(w.host(new_rows)))
        w.scatter(rows, new_rows)
        for k, v in new_slots.items():
            self.slots[k].scatter(rows, v)

    def push_at(self, step: int, method: str, *args) -> None:
        """Apply the push ``method(*args)`` (a transport's form of :meth:`apply_gradients`,
        e.g. through shared memory) as push number ``step`` of the table."""
        self._push_step = int(step)
        try:
            getattr(self, method)(*args)
        finally:
            self._push_step = None

    def write_rows(self, start: int, values: np.ndarray) -> None:
        """Overwrite contiguous local rows from ``start`` (``set_weights``); slots are kept."""
        self.check_loaded()
        values = np.asarray(values, dtype=self.config.dtype)
        if (
            values.ndim != 2
            or values.shape[1] != self.config.dim
            or not (0 <= start and start + len(values) <= self.num_rows)
        ):
            raise InvalidGradientError(
                f"Shard {self.index} cannot write rows [{start}, {start + len(values)}) of "
                f"width {values.shape[1:]}: it holds {self.num_rows} rows of width "
                f"{self.config.dim}"
            )
        self.weights.write(start, values)

    def read(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """A copy of the contiguous local rows ``[start, stop)``."""
        self.check_loaded()
        return self.weights.to_numpy(start, self.num_rows if stop is None else stop)

    def read_slot(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        self.check_loaded()
        return self.slots[name].to_numpy(start, self.num_rows if stop is None else stop)

    def write_block(self, start: int, weights: np.ndarray, slots: dict, step: int) -> None:
        """Overwrite contiguous rows and their slots (restore), and set the step."""
        self.weights.write(start, np.asarray(weights, self.config.dtype))
        for name, values in slots.items():
            self.slots[name].write(start, np.asarray(values, self.config.slot_dtype))
        self.step = int(step)

    def info(self) -> dict:
        """Size, memory, step and pushes of this shard; whether it holds its rows
        (``loaded``) and the newest checkpoint of the table it knows (``checkpoint``)."""
        return {
            "index": self.index,
            "num_rows": self.num_rows,
            "step": self.step,
            "pushes": self.pushes,
            "loaded": self.loaded,
            "checkpoint": self.checkpoint,
            "loaded_from": self.loaded_from,
            "bytes": self.weights.nbytes + sum(s.nbytes for s in self.slots.values()),
            "storage": self.config.storage,
            "device": getattr(self.weights, "device", "cpu"),
        }

    def ping(self) -> int:
        return self.index

    def call(self, fn, *args):
        """Run ``fn(self, *args)`` here: lets modules above (checkpoints) add shard-side
        work without the shard importing them. ``fn`` must be a module-level function."""
        return fn(self, *args)

    def check_loaded(self) -> None:
        """Raise :class:`ShardNotLoadedError` unless this shard holds its rows."""
        if not self.loaded:
            raise ShardNotLoadedError(
                f"Shard {self.index} of table {self.config.name!r} was restarted and has not "
                "loaded its rows from a checkpoint: it serves nothing until it has."
            )

    def check_rows(self, local) -> np.ndarray:
        """``local`` as int64 local rows of this shard (which must hold its rows: see
        :meth:`check_loaded`); raises on anything else."""
        self.check_loaded()
        local = np.asarray(local)
        if local.ndim != 1 or local.dtype.kind not in "iu":
            raise InvalidIdsError(
                f"Shard {self.index} expected a 1-D integer array of local rows. "
                f"Received: shape={local.shape}, dtype={local.dtype}"
            )
        if local.size and (local.min() < 0 or local.max() >= self.num_rows):
            raise InvalidIdsError(
                f"Shard {self.index} holds local rows [0, {self.num_rows}). "
                f"Received: rows in [{local.min()}, {local.max()}]"
            )
        return local.astype(np.int64, copy=False)


def sum_duplicates(rows: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique ``rows`` (sorted) and the sum of ``values`` over each one's occurrences,
    added in order of occurrence (``np.add.at`` semantics, as TensorFlow's
    ``unsorted_segment_sum`` on CPU adds them). Rows that are already strictly increasing
    (the trainer sends them so) come back as they are.

    Example:
        >>> r, v = sum_duplicates(np.array([3, 1, 3]), np.array([[1.0], [2.0], [4.0]]))
        >>> r.tolist(), v.tolist()
        ([1, 3], [[2.0], [5.0]])
    """
    if rows.size < 2 or bool((rows[1:] > rows[:-1]).all()):
        return rows, values
    # The order of the sort does not matter: the sum below follows the occurrences.
    order = np.argsort(rows)
    sorted_rows = rows[order]
    first = np.empty(rows.size, bool)
    first[0] = True
    np.not_equal(sorted_rows[1:], sorted_rows[:-1], out=first[1:])
    if first.all():  # already unique: no reduction needed
        return sorted_rows, values[order]
    starts = np.flatnonzero(first)
    inverse = np.empty(rows.size, np.int64)
    inverse[order] = np.cumsum(first) - 1
    return sorted_rows[starts], segment_sum(inverse, values, starts.size)


def _tf_device(device: str) -> str | None:
    return "/GPU:0" if device == "gpu" else ("/CPU:0" if device == "cpu" else None)
