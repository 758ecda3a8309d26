"""The latent taste model behind the synthetic log, and drawing distinct items from it.

Pure numpy (no Ray, TensorFlow or Keras). A user picks distinct items by Gumbel-top-k:
exactly over the whole catalogue in small worlds, by importance sampling from k-means
prototype users' distributions in large ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["SyntheticTruth"]

_EXACT_ENTRIES = 2**25  # up to this many (user, item) pairs, sample exactly
_PROTOTYPE_ENTRIES = 5 * 10**7  # beyond: (prototypes x items) exact distributions to draw from
_LLOYD_STEPS = 3
_GUIDE_ENTRIES = 2**18  # (prototypes x items) per inverse-CDF table, to stay in cache
_GUIDE_STEPS = 4
_POOL_FACTOR, _POOL_EXTRA = 3, 32  # candidates drawn per user: 3 * count + 32
_BATCH_ENTRIES = 2**21  # (users x candidates) scored at once


@dataclass(frozen=True, slots=True, eq=False)
class SyntheticTruth:
    """The latent model behind :func:`synthetic_interactions`.

    A user picks item ``j`` with probability proportional to
    ``item_popularity[j] * exp(user_tastes[u] @ item_tastes[j] / temperature)`` (exactly in
    small worlds, approximately in large ones: see :func:`synthetic_interactions`).
    """

    user_tastes: np.ndarray
    """Latent taste vector of each user, (num_users, taste_dim) float32."""
    item_tastes: np.ndarray
    """Latent vector of each item, (num_items, taste_dim) float32."""
    item_popularity: np.ndarray
    """Zipf-distributed popularity of each item, (num_items,) float64 summing to 1."""
    temperature: float
    """Softness of the taste signal (the ``noise`` argument)."""

    def oracle_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """Return (user, item) vectors whose dot product is the true log-preference.

        ``user @ item.T == log(popularity) + tastes_u @ tastes_i / temperature``: the
        ranking the data was drawn from, an upper reference for a learned model.

        Example:
            >>> from shardemb.recsys.synthetic import synthetic_interactions
            >>> _, truth = synthetic_interactions(10, 20, 60, return_truth=True)
            >>> users, items = truth.oracle_vectors()
            >>> users.shape, items.shape
            ((10, 9), (20, 9))
        """
        users = np.hstack(
            [self.user_tastes / self.temperature, np.ones((len(self.user_tastes), 1))]
        )
        items = np.hstack([self.item_tastes, np.log(self.item_popularity)[:, None]])
        return users, items


def choose_items(rng: np.random.Generator, truth: SyntheticTruth, counts: np.ndarray) -> np.ndarray:
    """Sample ``counts[u]`` distinct items per user, grouped by user (in no useful order)."""
    offsets = np.concatenate(([0], np.cumsum(counts)))
    items = np.empty(offsets[-1], dtype=np.int64)
    users = np.arange(len(counts))
    if len(counts) * len(truth.item_popularity) > _EXACT_ENTRIES:
        users = _choose_by_prototypes(rng, truth, counts, items, offsets)
    _choose_exact(rng, truth, users, counts, items, offsets)
    return items


def _choose_exact(
    rng: np.random.Generator,
    truth: SyntheticTruth,
    users: np.ndarray,
    counts: np.ndarray,
    items: np.ndarray,
    offsets: np.ndarray,
) -> None:
    """Gumbel-top-k over the whole catalogue: exact sampling without replacement."""
    num_items = len(truth.item_popularity)
    log_popularity = np.log(truth.item_popularity).astype(np.float32)
    users = users[np.argsort(counts[users], kind="stable")]  # similar counts per batch
    step = max(1, _BATCH_ENTRIES // num_items)
    for start in range(0, users.size, step):
        batch = users[start : start + step]
        keys = (truth.user_tastes[batch] @ truth.item_tastes.T) / np.float32(truth.temperature)
        keys += log_popularity
        keys -= np.log(_exponential(rng, keys.shape))  # + Gumbel noise
        candidates = np.broadcast_to(np.arange(num_items), keys.shape)
        _write_top(keys, candidates, offsets[batch], counts[batch], items)


def _choose_by_prototypes(
    rng: np.random.Generator,
    truth: SyntheticTruth,
    counts: np.ndarray,
    items: np.ndarray,
    offsets: np.ndarray,
) -> np.ndarray:
    """Importance-sample each user's items from a nearby prototype user's exact distribution.

    Prototypes are k-means centres of the tastes. A user draws a pool from its prototype's
    distribution ``q``; a distinct candidate drawn ``m`` times gets the weight
    ``m * p_user / q = m * exp((taste - prototype) @ item / temperature)`` and Gumbel-top-k
    over the pool picks the items. Returns the users whose pool held too few distinct items.
    """
    num_items = len(truth.item_popularity)
    tastes = truth.user_tastes
    prototypes = _kmeans(rng, tastes, max(1, _PROTOTYPE_ENTRIES // num_items))
    nearest = _nearest(tastes, prototypes)
    by_prototype = np.argsort(nearest, kind="stable")
    bounds = np.searchsorted(nearest[by_prototype], np.arange(len(prototypes) + 1))
    step = max(1, _GUIDE_ENTRIES // num_items)
    leftovers = [np.empty(0, dtype=np.int64)]
    for first in range(0, len(prototypes), step):
        sampler = _InverseCdf(truth, prototypes[first : first + step])
        users = by_prototype[bounds[first] : bounds[min(first + step, len(prototypes))]]
        leftovers.append(
            _choose_from_pools(
                rng,
                truth,
                sampler,
                users,
                nearest[users] - first,
                prototypes[nearest[users]],
                counts,
                items,
                offsets,
            )
        )
    return np.concatenate(leftovers)


def _choose_from_pools(
    rng: np.random.Generator,
    truth: SyntheticTruth,
    sampler: _InverseCdf,
    users: np.ndarray,
    rows: np.ndarray,
    prototypes: np.ndarray,
    counts: np.ndarray,
    items: np.ndarray,
    offsets: np.ndarray,
) -> np.ndarray:
    """Draw each user's pool from its prototype row, pick its items; return the short pools.

    Pools are ragged (one segment per user) so heavy and light users waste no padding.
    """
    need = counts[users]
    pool = _POOL_FACTOR * need + _POOL_EXTRA
    owner = np.repeat(np.arange(users.size), pool)
    uniform = np.sort(owner + rng.random(owner.size)) - owner  # sorted within each user
    uniform = np.minimum(uniform, 1.0 - 2.0**-53)  # owner + r may round up to owner + 1
    draws = sampler.draw(rows[owner], uniform)  # so draws are sorted within each user too
    new_run = np.ones(draws.size, dtype=bool)
    new_run[1:] = (draws[1:] != draws[:-1]) | (owner[1:] != owner[:-1])
    run_starts = np.flatnonzero(new_run)
    owner, candidates = owner[run_starts], draws[run_starts]
    residual = (truth.user_tastes[users] - prototypes) / np.float32(truth.temperature)
    keys = np.log(np.diff(run_starts, append=draws.size).astype(np.float32))
    keys += np.einsum("nd,nd->n", residual[owner], truth.item_tastes[candidates])
    keys -= np.log(_exponential(rng, keys.shape))  # + Gumbel noise
    enough = np.bincount(owner, minlength=users.size) >= need
    order = np.lexsort((-keys, owner))
    owner, candidates = owner[order], candidates[order]
    rank = np.arange(owner.size) - np.searchsorted(owner, owner)
    take = (rank < need[owner]) & enough[owner]
    items[offsets[users[owner[take]]] + rank[take]] = candidates[take]
    return users[~enough]


class _InverseCdf:
    """Draws items from ``popularity * exp(prototype @ items / temperature)``, per prototype.

    A guide table (first item of each of ``num_items`` equal probability buckets) replaces a
    binary search: a draw looks up its bucket and steps forward about one item on average.
    """

    def __init__(self, truth: SyntheticTruth, prototypes: np.ndarray) -> None:
        num_items = len(truth.item_popularity)
        logits = np.log(truth.item_popularity) + (
            prototypes @ truth.item_tastes.T / truth.temperature
        )
        cdf = np.cumsum(np.exp(logits - logits.max(axis=1, keepdims=True)), axis=1)
        cdf /= cdf[:, -1:]  # the last value is exactly 1, above every draw
        bucket = np.minimum((cdf * num_items).astype(np.int64), num_items - 1)
        bucket += np.arange(len(prototypes))[:, None] * num_items
        below = np.bincount(bucket.ravel(), minlength=cdf.size)
        self._guide = np.cumsum(below) - below  # items whose cdf lies in earlier buckets
        self._cdf = cdf.ravel()
        # Increasing over all rows (row r spans (r, r + 1]): a binary search for long scans.
        self._cdf_with_row = (cdf + np.arange(len(prototypes))[:, None]).ravel()
        self._num_items = num_items

    def draw(self, rows: np.ndarray, uniform: np.ndarray) -> np.ndarray:
        """The item at quantile ``uniform`` (in [0, 1)) of each prototype row in ``rows``."""
        offset = rows * self._num_items
        flat = self._guide[offset + (uniform * self._num_items).astype(np.int64)]
        behind = np.flatnonzero(self._cdf[flat] <= uniform)
        for _ in range(_GUIDE_STEPS):  # most buckets hold an item or two
            flat[behind] += 1
            behind = behind[self._cdf[flat[behind]] <= uniform[behind]]
        if behind.size:  # buckets crowded with improbable items: binary search
            flat[behind] = np.searchsorted(
                self._cdf_with_row, uniform[behind] + rows[behind], side="right"
            )
        return flat - offset


def _kmeans(rng: np.random.Generator, points: np.ndarray, k: int) -> np.ndarray:
    """A few Lloyd steps on a sample of ``points``: centres that keep residuals small."""
    sample = points[rng.choice(len(points), min(len(points), 20 * k), replace=False)]
    centres = sample[rng.choice(len(sample), min(len(sample), k), replace=False)]
    for _ in range(_LLOYD_STEPS):
        nearest = _nearest(sample, centres)
        sizes = np.bincount(nearest, minlength=len(centres))[:, None]
        sums = np.zeros_like(centres)
        np.add.at(sums, nearest, sample)
        centres = np.where(sizes > 0, sums / np.maximum(sizes, 1), centres).astype(np.float32)
    return centres


def _nearest(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Index of the nearest centre (Euclidean) of each point, in batches."""
    half_norms = 0.5 * np.einsum("kd,kd->k", centres, centres)
    step = max(1, _BATCH_ENTRIES // len(centres))
    return np.concatenate(
        [
            np.argmax(points[start : start + step] @ centres.T - half_norms, axis=1)
            for start in range(0, len(points), step)
        ]
    )


def _exponential(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Standard exponential draws, never 0 (``-log`` of them is Gumbel noise)."""
    draws = rng.standard_exponential(shape, dtype=np.float32)
    return np.maximum(draws, np.finfo(np.float32).tiny)


def _write_top(
    keys: np.ndarray,
    candidates: np.ndarray,
    starts: np.ndarray,
    counts: np.ndarray,
    items: np.ndarray,
) -> None:
    """Write row ``r``'s ``counts[r]`` highest-key candidates at ``items[starts[r]:]``."""
    if counts.size == 0:
        return
    top = int(counts.max())
    if top < keys.shape[1]:
        best = np.argpartition(-keys, top - 1, axis=1)[:, :top]
        keys = np.take_along_axis(keys, best, axis=1)
        candidates = np.take_along_axis(candidates, best, axis=1)
    if counts.min() < top:  # rows that need fewer keep their best
        order = np.argsort(-keys, axis=1, kind="stable")[:, :top]
        candidates = np.take_along_axis(candidates, order, axis=1)
    keep = np.arange(top)[None, :] < counts[:, None]
    items[_segment_positions(starts, counts)] = candidates[:, :top][keep]


def _segment_positions(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenate ``arange(start, start + length)`` for each pair, vectorized."""
    total = int(lengths.sum())
    if total == 0:
        return np.empty(0, dtype=np.int64)
    ends = np.cumsum(lengths)
    return np.repeat(starts - (ends - lengths), lengths) + np.arange(total)
