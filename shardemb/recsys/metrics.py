"""Full-catalogue retrieval metrics: top-k by dot product, recall@k, NDCG@k, popularity baseline.

Pure numpy (no Ray, TensorFlow or Keras). Users and items are rows ``0..n-1`` (see
:func:`shardemb.recsys.encode`). Rankings are deterministic: among equal scores the
lower item index ranks first.

Example:
    >>> import numpy as np
    >>> from shardemb.recsys import Interactions
    >>> train = Interactions([0, 0, 1], [0, 1, 0], [5, 4, 3], [1, 2, 3])
    >>> test = Interactions([0, 1], [2, 2], [5, 5], [4, 4])
    >>> popularity_baseline(train, test, num_items=3, k=1)
    {'recall': 0.5, 'ndcg': 0.5, 'users': 2}
"""

from __future__ import annotations

from typing import Any

import numpy as np

from shardemb._validate import check_positive_int
from shardemb.errors import InvalidConfigError, InvalidIdsError
from shardemb.recsys.interactions import Interactions, check_interactions

__all__ = [
    "evaluate",
    "ndcg_at_k",
    "popularity_baseline",
    "recall_at_k",
    "topk_scores",
]


def topk_scores(
    user_vectors: Any,
    item_vectors: Any,
    k: int,
    *,
    exclude: Any = None,
    batch_size: int = 1024,
) -> np.ndarray:
    """Return each user's ``k`` best items by ``user_vectors @ item_vectors.T``, best first.

    Scores are computed for ``batch_size`` users at a time (memory ``batch_size x
    num_items``). Among equal scores the lower item index ranks first, also at the k-th
    boundary. ``exclude`` lists (user row, item row) pairs that must not be recommended
    (typically the training items): an :class:`Interactions`, a ``(user_rows, item_rows)``
    pair of arrays, or a CSR matrix (anything with ``indptr`` and ``indices``, one row per
    user). Where a user has fewer than ``k`` items left (``k`` above the catalogue size, or
    after exclusion) the remaining slots hold ``-1``; so do scores that overflow to NaN.

    Returns:
        An int64 array of shape ``(num_users, k)`` of item rows.

    Example:
        >>> users = np.array([[1.0], [-1.0]])
        >>> items = np.array([[2.0], [1.0], [2.0]])
        >>> topk_scores(users, items, 2).tolist()
        [[0, 2], [1, 0]]
        >>> topk_scores(users, items, 4, exclude=([0], [2])).tolist()
        [[0, 1, -1, -1], [1, 0, 2, -1]]
    """
    users = _matrix(user_vectors, "user_vectors")
    items = _matrix(item_vectors, "item_vectors")
    if users.shape[1] != items.shape[1]:
        raise InvalidConfigError(
            "`user_vectors` and `item_vectors` must have the same number of columns. "
            f"Received: user_vectors of shape {users.shape}, item_vectors of shape {items.shape}"
        )
    check_positive_int("k", k)
    check_positive_int("batch_size", batch_size)
    num_users, num_items = len(users), len(items)
    excluded = _exclusion_csr(exclude, num_users, num_items)
    top = np.full((num_users, k), -1, dtype=np.int64)
    width = min(k, num_items)
    if width == 0:
        return top
    for start in range(0, num_users, batch_size):
        stop = min(start + batch_size, num_users)
        scores = users[start:stop] @ items.T
        if excluded is not None:
            indptr, indices = excluded
            rows = np.repeat(np.arange(stop - start), np.diff(indptr[start : stop + 1]))
            scores[rows, indices[indptr[start] : indptr[stop]]] = -np.inf
        top[start:stop, :width] = _top_rows(scores, width)
    return top


def _top_rows(scores: np.ndarray, k: int) -> np.ndarray:
    """Top ``k`` columns of each row by (score descending, column ascending); -inf -> -1."""
    num_rows, num_cols = scores.shape
    # Candidates: every score at least the k-th best, ties included; exactly k per row
    # unless scores tie at the boundary, where the sort below keeps the lowest columns.
    kth = np.partition(scores, num_cols - k, axis=1)[:, num_cols - k, None]
    rows, cols = np.nonzero(scores >= kth)
    if np.bincount(rows, minlength=num_rows).min() < k:  # NaN compares false: drop them
        scores[np.isnan(scores)] = -np.inf
        return _top_rows(scores, k)
    values = scores[rows, cols]
    order = np.lexsort((cols, -values, rows))
    rows, cols, values = rows[order], cols[order], values[order]
    keep = np.arange(rows.size) - np.searchsorted(rows, rows) < k  # rank within the row
    top = cols[keep].reshape(num_rows, k)
    return np.where(values[keep].reshape(num_rows, k) == -np.inf, -1, top)


def recall_at_k(topk: Any, heldout_users: Any, heldout_items: Any, k: int = 10) -> float:
    """Mean over users with held-out items of ``hits / n_heldout`` in their first ``k`` items.

    This is the plain recall (not divided by ``min(k, n_heldout)``), so a user with more
    than ``k`` held-out items cannot reach 1. ``topk`` is ``(num_users, >= k)`` item rows
    (``-1`` = empty slot) as returned by :func:`topk_scores`; held-out pairs are
    (user row, item row) and duplicates count once. Users without held-out items are ignored.

    Example:
        >>> topk = np.array([[3, 1], [0, 2], [1, 0]])
        >>> recall_at_k(topk, [0, 0, 1], [1, 4, 5], k=2)  # user 0: 1/2, user 1: 0/1
        0.25
    """
    recall, _ = _per_user_metrics(topk, heldout_users, heldout_items, k)
    return float(recall.mean())


def ndcg_at_k(topk: Any, heldout_users: Any, heldout_items: Any, k: int = 10) -> float:
    """Mean over users with held-out items of NDCG@k with binary relevance.

    ``DCG = sum(1 / log2(rank + 2))`` over hits at 0-based ``rank < k``; the ideal DCG puts
    ``min(k, n_heldout)`` hits first. Arguments as for :func:`recall_at_k`.

    Example:
        >>> topk = np.array([[3, 1], [0, 2]])
        >>> round(ndcg_at_k(topk, [0, 1], [1, 0], k=2), 4)  # (1/log2(3) + 1) / 2
        0.8155
    """
    _, ndcg = _per_user_metrics(topk, heldout_users, heldout_items, k)
    return float(ndcg.mean())


def _per_user_metrics(
    topk: Any, heldout_users: Any, heldout_items: Any, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Recall and NDCG of each user that has held-out items."""
    check_positive_int("k", k)
    top = np.asarray(topk)
    if top.ndim != 2 or (top.size and top.dtype.kind not in "iu"):
        raise InvalidConfigError(
            "`topk` must be a 2-D integer array of item rows. "
            f"Received: topk of dtype {top.dtype} and shape {top.shape}"
        )
    if k > top.shape[1]:
        raise InvalidConfigError(
            f"`k` must be at most the number of columns of `topk` ({top.shape[1]}). Received: k={k}"
        )
    users = _ids(heldout_users, "heldout_users", len(top))
    items = _ids(heldout_items, "heldout_items", None)
    if users.size != items.size:
        raise InvalidConfigError(
            "`heldout_users` and `heldout_items` must have the same length. "
            f"Received: {users.size} and {items.size}"
        )
    if users.size == 0:
        raise InvalidConfigError("No held-out interactions to evaluate: `heldout_users` is empty.")
    pairs = np.unique(np.stack([users, items], axis=1), axis=0)  # a pair counts once
    users, items = pairs[:, 0], pairs[:, 1]
    matches = top[users, :k] == items[:, None]
    hit = matches.any(axis=1)
    rank = matches.argmax(axis=1)
    discount = 1.0 / np.log2(np.arange(k) + 2.0)
    heldout = np.bincount(users, minlength=len(top))
    hits = np.bincount(users[hit], minlength=len(top))
    dcg = np.bincount(users[hit], weights=discount[rank[hit]], minlength=len(top))
    evaluated = np.flatnonzero(heldout)
    ideal = np.cumsum(discount)[np.minimum(heldout[evaluated], k) - 1]
    return hits[evaluated] / heldout[evaluated], dcg[evaluated] / ideal


def evaluate(
    user_vectors: Any,
    item_vectors: Any,
    train: Interactions,
    test: Interactions,
    k: int = 10,
    *,
    batch_size: int = 1024,
) -> dict[str, float | int]:
    """Recall@k and NDCG@k of dot-product retrieval over the whole catalogue.

    Each user with test items is scored against every item; the user's training items are
    excluded, so a test item the user also has in train can never be a hit. Items never
    seen in training still count and can be recommended.

    Returns:
        ``{"recall": ..., "ndcg": ..., "users": number of users evaluated}``.

    Example:
        >>> from shardemb.recsys import Interactions
        >>> train = Interactions([0, 1], [0, 1], [5, 5], [1, 1])
        >>> test = Interactions([0, 1], [1, 2], [5, 5], [2, 2])
        >>> users = np.array([[1.0, 0.0], [0.0, 1.0]])
        >>> items = np.array([[1.0, 0.0], [0.9, 0.0], [0.0, 0.5]])
        >>> evaluate(users, items, train, test, k=1)
        {'recall': 1.0, 'ndcg': 1.0, 'users': 2}
    """
    user_matrix = _matrix(user_vectors, "user_vectors")
    num_items = len(_matrix(item_vectors, "item_vectors"))
    return _evaluate_rows(
        lambda rows, exclude: topk_scores(
            user_matrix[rows], item_vectors, k, exclude=exclude, batch_size=batch_size
        ),
        train,
        test,
        len(user_matrix),
        num_items,
        k,
    )


def popularity_baseline(
    train: Interactions, test: Interactions, num_items: int, k: int = 10
) -> dict[str, float | int]:
    """Metrics of recommending the most popular training items that each user has not seen.

    Popularity is the number of training interactions of an item; ties go to the lower item
    index. Returns the same dictionary as :func:`evaluate`.

    Example:
        >>> from shardemb.recsys import Interactions
        >>> train = Interactions([0, 1, 2], [2, 2, 1], [5, 5, 5], [1, 1, 1])
        >>> test = Interactions([0, 1], [1, 0], [5, 5], [2, 2])
        >>> popularity_baseline(train, test, num_items=3, k=1)  # user 0 gets 1, user 1 gets 1
        {'recall': 0.5, 'ndcg': 0.5, 'users': 2}
    """
    check_positive_int("num_items", num_items)
    train_items = _ids(train.items, "train.items", num_items)
    counts = np.bincount(train_items, minlength=num_items).astype(np.float64)
    num_users = int(max(train.users.max(initial=-1), test.users.max(initial=-1))) + 1
    return _evaluate_rows(
        lambda rows, exclude: topk_scores(
            np.ones((rows.size, 1)), counts[:, None], k, exclude=exclude
        ),
        train,
        test,
        num_users,
        num_items,
        k,
    )


def _evaluate_rows(
    rank: Any, train: Interactions, test: Interactions, num_users: int, num_items: int, k: int
) -> dict[str, float | int]:
    """Rank only the users that have test items, then score them."""
    check_positive_int("k", k)
    for name, log in (("train", train), ("test", test)):
        check_interactions(name, log)
        _ids(log.users, f"{name}.users", num_users)
        _ids(log.items, f"{name}.items", num_items)
    rows = np.unique(test.users)
    if rows.size == 0:
        raise InvalidConfigError("No held-out interactions to evaluate: `test` is empty.")
    seen = np.isin(train.users, rows)
    exclude = (np.searchsorted(rows, train.users[seen]), train.items[seen])
    topk = rank(rows, exclude)
    recall, ndcg = _per_user_metrics(topk, np.searchsorted(rows, test.users), test.items, k)
    return {"recall": float(recall.mean()), "ndcg": float(ndcg.mean()), "users": int(rows.size)}


def _exclusion_csr(
    exclude: Any, num_users: int, num_items: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """``exclude`` as (indptr, item rows) with one row per user."""
    if exclude is None:
        return None
    if hasattr(exclude, "indptr") and hasattr(exclude, "indices"):
        indptr = np.asarray(exclude.indptr, dtype=np.int64)
        if indptr.ndim != 1 or indptr.size != num_users + 1:
            raise InvalidConfigError(
                f"A CSR `exclude` must have one row per user ({num_users}). "
                f"Received: indptr of shape {indptr.shape}"
            )
        return indptr, _ids(exclude.indices, "exclude.indices", num_items)
    if isinstance(exclude, Interactions):
        users, items = exclude.users, exclude.items
    elif isinstance(exclude, tuple | list) and len(exclude) == 2:
        users, items = exclude
    else:
        raise InvalidConfigError(
            "`exclude` must be None, an Interactions, a (user_rows, item_rows) pair or a CSR "
            f"matrix. Received: exclude of type {type(exclude).__name__}"
        )
    users = _ids(users, "exclude user rows", num_users)
    items = _ids(items, "exclude item rows", num_items)
    if users.size != items.size:
        raise InvalidConfigError(
            "`exclude` user and item rows must have the same length. "
            f"Received: {users.size} and {items.size}"
        )
    indptr = np.concatenate(([0], np.cumsum(np.bincount(users, minlength=num_users))))
    return indptr, items[np.argsort(users, kind="stable")]


def _matrix(value: Any, name: str) -> np.ndarray:
    array = np.asarray(value)
    if array.ndim != 2 or array.dtype.kind not in "iuf":
        raise InvalidConfigError(
            f"`{name}` must be a 2-D real array. "
            f"Received: {name} of dtype {array.dtype} and shape {array.shape}"
        )
    if not np.isfinite(array).all():
        raise InvalidConfigError(f"`{name}` must be finite. Received: {name} with NaN or Inf")
    return array if array.dtype.kind == "f" else array.astype(np.float64)


def _ids(value: Any, name: str, bound: int | None) -> np.ndarray:
    array = np.asarray(value)
    if array.ndim != 1 or (array.size and array.dtype.kind not in "iu"):
        raise InvalidIdsError(
            f"`{name}` must be a 1-D integer array. "
            f"Received: {name} of dtype {array.dtype} and shape {array.shape}"
        )
    array = array.astype(np.int64, copy=False)
    bad = (array < 0) | (array >= bound) if bound is not None else array < 0
    if bad.any():
        limit = f"in [0, {bound})" if bound is not None else ">= 0"
        raise InvalidIdsError(
            f"`{name}` must be {limit}. Received: {np.count_nonzero(bad)} outside, "
            f"first: {array[bad][:5].tolist()}"
        )
    return array
