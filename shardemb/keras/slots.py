"""Which row of a layer's step buffer holds which id, for the step now being trained.

A :class:`~shardemb.keras.layer.ShardedEmbedding` does not hold its table as a Keras
variable. It holds a small trainable *step buffer* of ``capacity`` rows: before a training
forward pass reads rows, the ids of the batch get slots in the buffer and their rows are
copied in from the store. The model's optimizer then hands the buffer's gradient to the
layer, which pushes it to the store under the ids of its slots.

Slots are given out contiguously from 0 and kept until the window is closed: at the push
(every applied optimizer step), or at the end of a step that applied nothing (an inference
step, a step the loss-scale optimizer skipped). With ``gradient_accumulation_steps`` the
window spans the accumulated steps: an id seen twice keeps its slot, so Keras's positional
accumulation of the buffer's gradient is an accumulation per id. Pure numpy.

Example:
    >>> import numpy as np
    >>> slots = StepSlots(capacity=8)
    >>> pos, new_slots, new_ids = slots.assign(np.array([7, 3, 7]))
    >>> pos.tolist(), new_slots.tolist(), new_ids.tolist()
    ([1, 0, 1], [0, 1], [3, 7])
    >>> slots.assign(np.array([3, 9]))[0].tolist()   # 3 keeps its slot
    [0, 2]
    >>> slots.ids(np.array([2, 0])).tolist()
    [9, 3]

A layer with string keys (``key_dtype="string"``) uses :class:`StringSlots`: slots are
found by the strings' 64-bit keys (:func:`shardemb.core.keys.hash_strings`) and each slot
keeps its string, which is what the store is given.

    >>> slots = StringSlots(capacity=4)
    >>> slots.assign(np.array([b"b", b"a", b"b"], dtype=object))[2].tolist()
    [b'a', b'b']
    >>> slots.held.tolist()
    [b'a', b'b']
"""

from __future__ import annotations

import numpy as np

from shardemb.core.arrays import unique_inverse
from shardemb.core.keys import hash_strings
from shardemb.errors import CapacityError

__all__ = ["StepSlots", "StringSlots"]


class StepSlots:
    """Slots ``0..used-1`` of a step buffer and the ids they hold."""

    def __init__(self, capacity: int, *, layer: str = "layer"):
        self.capacity = int(capacity)
        self.layer = layer
        self._ids = np.empty(self.capacity, dtype=np.int64)
        self.used = 0
        # Sorted ids of the window and their slots, for finding an id's slot by bisection.
        self._sorted = np.empty(0, dtype=np.int64)
        self._sorted_slots = np.empty(0, dtype=np.int64)
        #: True where slot i surely holds the window's i-th smallest id (its slots went out
        #: in one first pass, in id order): the push then needs no reordering.
        self.in_id_order = True

    def assign(self, flat_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Slots for ``flat_ids`` (1-D int64): ``(slot of each id, slots given out now,
        the ids given those slots)``; ids that already hold a slot keep it. Raises
        :class:`CapacityError` (and changes nothing) when the new ids do not fit."""
        uniq, inverse = unique_inverse(flat_ids)
        if self.used == 0 and uniq.size <= self.capacity:
            # A step's first forward pass (the usual case): every id is new and the
            # slots go out in id order, so the window's sorted view is known already.
            new_slots = np.arange(uniq.size, dtype=np.int64)
            self._ids[: uniq.size] = uniq
            self.used = uniq.size
            self._sorted, self._sorted_slots = uniq, new_slots
            self.in_id_order = True
            return new_slots[inverse.reshape(-1)], new_slots, uniq
        where = np.searchsorted(self._sorted, uniq)
        where_c = np.minimum(where, max(self._sorted.size - 1, 0))
        known = self._sorted[where_c] == uniq if self._sorted.size else np.zeros(uniq.size, bool)
        new_ids = uniq[~known]
        if self.used + new_ids.size > self.capacity:
            raise CapacityError(
                f"Layer {self.layer!r}: this training step needs "
                f"{self.used + new_ids.size} distinct ids but the layer's step buffer holds "
                f"{self.capacity} (its `max_ids_per_step`). Pass a larger "
                "`max_ids_per_step` to ShardedEmbedding (at most input_dim), or run forward "
                "passes that are not trained with training=False."
            )
        new_slots = np.arange(self.used, self.used + new_ids.size, dtype=np.int64)
        self._ids[self.used : self.used + new_ids.size] = new_ids
        self.used += new_ids.size
        uniq_slots = np.empty(uniq.size, dtype=np.int64)
        uniq_slots[known] = self._sorted_slots[where_c[known]]
        uniq_slots[~known] = new_slots
        if new_ids.size:
            self.in_id_order = False
            self._sorted = uniq if not self._sorted.size else np.union1d(self._sorted, uniq)
            order = np.searchsorted(self._sorted, self._ids[: self.used])
            self._sorted_slots = np.empty(self.used, dtype=np.int64)
            self._sorted_slots[order] = np.arange(self.used, dtype=np.int64)
        return uniq_slots[inverse.reshape(-1)], new_slots, new_ids

    def ids(self, slots: np.ndarray) -> np.ndarray:
        """The ids held by ``slots``."""
        return self._ids[: self.used][slots]

    @property
    def held(self) -> np.ndarray:
        """The ids of slots ``0..used-1``, in slot order."""
        return self._ids[: self.used]

    def sorted_view(self) -> tuple[np.ndarray, np.ndarray]:
        """``(sorted ids, their slots)`` of the window."""
        return self._sorted, self._sorted_slots

    def snapshot(self) -> tuple:
        """The window's state, for :meth:`restore` when a lookup that followed failed."""
        return self.used, self._sorted, self._sorted_slots, self.in_id_order

    def restore(self, state: tuple) -> None:
        """Undo the :meth:`assign` calls since ``state`` was taken."""
        self.used, self._sorted, self._sorted_slots, self.in_id_order = state

    def reset(self) -> None:
        """Close the window: every slot is free again."""
        self.used = 0
        self._sorted = np.empty(0, dtype=np.int64)
        self._sorted_slots = np.empty(0, dtype=np.int64)
        self.in_id_order = True


class StringSlots(StepSlots):
    """:class:`StepSlots` for string keys: slots are found by the strings' int64 hashes and
    :meth:`ids`, :attr:`held` and :meth:`assign`'s new ids are the strings themselves."""

    def __init__(self, capacity: int, *, layer: str = "layer"):
        super().__init__(capacity, layer=layer)
        self._strings = np.empty(self.capacity, dtype=object)

    def assign(self, flat_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """As :meth:`StepSlots.assign` for a 1-D array of strings (``bytes`` or ``str``)."""
        flat_keys = np.asarray(flat_keys, dtype=object).reshape(-1)
        hashes = hash_strings(flat_keys)
        pos, new_slots, new_hashes = super().assign(hashes)
        if new_slots.size:
            uniq, first = np.unique(hashes, return_index=True)
            self._strings[new_slots] = flat_keys[first[np.searchsorted(uniq, new_hashes)]]
        return pos, new_slots, self._strings[new_slots]

    def ids(self, slots: np.ndarray) -> np.ndarray:
        """The strings held by ``slots``."""
        return self._strings[: self.used][slots]

    @property
    def held(self) -> np.ndarray:
        """The strings of slots ``0..used-1``, in slot order."""
        return self._strings[: self.used]
