"""Splitting an interaction log into train and test sets by time, per user.

Example:
    >>> from shardemb.recsys.split import train_test_split
    >>> from shardemb.recsys.synthetic import synthetic_interactions
    >>> log = synthetic_interactions(100, 50, 2_000, seed=1)
    >>> train, test = train_test_split(log, holdout=1)
    >>> len(train) + len(test) == len(log), len(test)
    (True, 100)
"""

from __future__ import annotations

import numpy as np

from shardemb._validate import check_int
from shardemb.recsys.interactions import Interactions, check_interactions

__all__ = ["train_test_split"]


def train_test_split(
    interactions: Interactions, *, holdout: int = 1
) -> tuple[Interactions, Interactions]:
    """Hold out each user's latest ``holdout`` interactions as the test set.

    "Latest" is by timestamp, ties broken by position in ``interactions`` (later position is
    later). Users with ``holdout`` or fewer interactions keep them all in train. Both parts
    keep the original order.

    Example:
        >>> log = Interactions([1, 1, 1, 2], [10, 11, 12, 10], [5, 4, 3, 2], [3, 1, 3, 9])
        >>> train, test = train_test_split(log)
        >>> train.items.tolist(), test.items.tolist()
        ([10, 11, 10], [12])
    """
    check_interactions("interactions", interactions)
    check_int("holdout", holdout, minimum=1)
    n = len(interactions)
    order = np.lexsort((interactions.timestamps, interactions.users))  # stable: ties by position
    users = interactions.users[order]
    starts = np.flatnonzero(np.concatenate(([True], users[1:] != users[:-1])))
    sizes = np.diff(np.append(starts, n))
    from_end = np.repeat(starts + sizes, sizes) - np.arange(n)  # 1 for a user's latest
    is_test = np.empty(n, dtype=bool)
    is_test[order] = (from_end <= holdout) & (np.repeat(sizes, sizes) > holdout)
    return interactions.take(~is_test), interactions.take(is_test)
