"""Pushes in flight: their errors are raised, never only logged, and their number is
bounded (backpressure)."""

from __future__ import annotations

import collections

__all__ = ["PendingPushes"]

#: Pushes in flight per shard before apply_gradients waits (backpressure).
MAX_PENDING_PER_SHARD = 16


class PendingPushes:
    """The ``(shard, future)`` of every push not yet known to be applied."""

    def __init__(self, num_shards: int):
        self.limit = MAX_PENDING_PER_SHARD * num_shards
        self._items: collections.deque = collections.deque()
        #: For futures of calls that carried several tables' pushes (``call_many``): the
        #: positions of this table's items in their answer, a list of errors or None.
        self._picks: dict[int, list[int]] = {}

    def __len__(self) -> int:
        return len(self._items)

    def append(self, item: tuple[int, object], pick: int | None = None) -> None:
        """Add the ``(shard, future)`` of a push just sent; ``pick``: the push is item
        ``pick`` of a fused call, whose answer lists each item's error (or None)."""
        self._items.append(item)
        if pick is not None:
            self._picks.setdefault(id(item[1]), []).append(pick)

    def take_picks(self, futures: list) -> list:
        """This table's item positions in the answers of ``futures`` (taken from the
        queue), removed: call it before waiting, so none is left behind on an error."""
        return [self._picks.pop(id(f), ()) for f in futures]

    @staticmethod
    def check(picks: list, values: list) -> None:
        """Raise the first error among this table's items (``picks``, from
        :meth:`take_picks`) in the answers ``values``; a plain push's answer is None."""
        for positions, value in zip(picks, values, strict=True):
            for pick in positions:
                if value[pick] is not None:
                    raise value[pick]

    def futures_of(self, shards) -> list:
        """The futures of the pushes in flight to ``shards`` (left in the queue)."""
        shards = set(shards)
        return [f for s, f in self._items if s in shards]

    def take_all(self) -> list:
        """Every pending future (the queue is left empty)."""
        items, self._items = list(self._items), collections.deque()
        return [f for _, f in items]

    def take_finished(self, backend) -> list:
        """The futures that have finished (with a result or an error), removed."""
        if not self._items:
            return []
        done, _ = backend.done([f for _, f in self._items])
        if not done:
            return []
        done_ids = set(map(id, done))
        finished = [f for _, f in self._items if id(f) in done_ids]
        self._items = collections.deque((s, f) for s, f in self._items if id(f) not in done_ids)
        return finished

    def take_overflow(self) -> list:
        """When more than ``limit`` are in flight, the oldest ones down to half the limit
        (the caller waits for them)."""
        if len(self._items) <= self.limit:
            return []
        return [self._items.popleft()[1] for _ in range(len(self._items) - self.limit // 2)]

    def drop_shards(self, shards: list[int]) -> None:
        """Forget the pushes to ``shards`` (they died: those pushes are lost)."""
        gone = [f for s, f in self._items if s in shards]
        self._items = collections.deque((s, f) for s, f in self._items if s not in shards)
        for f in gone:
            self._picks.pop(id(f), None)
