"""A synthetic MovieLens-like interaction log that a two-tower model can learn.

Pure numpy (no Ray, TensorFlow or Keras) and vectorized: nothing loops over interactions.

Example:
    >>> from shardemb.recsys.synthetic import synthetic_interactions
    >>> log = synthetic_interactions(100, 50, 2_000, seed=1)
    >>> len(log), int(log.users.max())
    (2000, 99)
"""

from __future__ import annotations

import math
from typing import Any, Literal, overload

import numpy as np

from shardemb._validate import check_int
from shardemb.errors import InvalidConfigError
from shardemb.recsys.interactions import Interactions
from shardemb.recsys.tastes import SyntheticTruth, choose_items

__all__ = ["raw_ids", "synthetic_interactions"]

#: An odd 64-bit constant (2**64 / golden ratio): multiplying by it is a bijection.
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)

_MIN_PER_USER = 3  # enough for a per-user held-out split
_START_TIME = 1_577_836_800  # 2020-01-01, so timestamps look like a real log


@overload
def synthetic_interactions(
    num_users: int,
    num_items: int,
    num_interactions: int,
    *,
    seed: int = ...,
    taste_dim: int = ...,
    zipf_exponent: float = ...,
    noise: float = ...,
    return_truth: Literal[False] = ...,
) -> Interactions: ...


@overload
def synthetic_interactions(
    num_users: int,
    num_items: int,
    num_interactions: int,
    *,
    seed: int = ...,
    taste_dim: int = ...,
    zipf_exponent: float = ...,
    noise: float = ...,
    return_truth: Literal[True],
) -> tuple[Interactions, SyntheticTruth]: ...


def synthetic_interactions(
    num_users: int,
    num_items: int,
    num_interactions: int,
    *,
    seed: int = 0,
    taste_dim: int = 8,
    zipf_exponent: float = 1.0,
    noise: float = 0.5,
    return_truth: bool = False,
) -> Interactions | tuple[Interactions, SyntheticTruth]:
    """Generate a MovieLens-like log that a two-tower dot-product model can learn.

    Users and items get latent taste vectors (dot products have unit variance); items get a
    Zipf popularity (``1 / rank ** zipf_exponent``, ranks shuffled over item ids). Each user
    picks distinct items with probability ``∝ popularity * exp(affinity / noise)``, so
    ``noise`` is a temperature: small means taste dominates, large means popularity does.
    Sampling is exact (Gumbel-top-k) up to 2**25 user-item pairs, e.g. 6k users x 4k items;
    beyond, each user importance-samples from one of about 5e7 / num_items k-means
    prototype users' exact distributions, which blurs tastes a little.
    Users' activity is heavy-tailed with at least 3 interactions each; ratings (1 to 5)
    grow with affinity; timestamps strictly increase within a user in random item order
    and the log is sorted by time (users interleave). Ids are rows ``0..n-1``.
    Deterministic for a ``seed``; with ``return_truth=True`` also returns the
    :class:`SyntheticTruth`.

    Example:
        >>> log = synthetic_interactions(50, 40, 1_000, seed=3)
        >>> len(log), int(log.users.max()) < 50, set(log.ratings.tolist()) <= {1, 2, 3, 4, 5}
        (1000, True, True)
    """
    check_int("num_users", num_users, minimum=1)
    check_int("num_items", num_items, minimum=_MIN_PER_USER)
    check_int("num_interactions", num_interactions, minimum=_MIN_PER_USER * num_users)
    if num_interactions > num_users * num_items:
        raise InvalidConfigError(
            f"`num_interactions` must be at most num_users * num_items = "
            f"{num_users * num_items} (a user picks each item once). "
            f"Received: num_interactions={num_interactions}"
        )
    check_int("taste_dim", taste_dim, minimum=1)
    check_int("seed", seed, minimum=0)
    _check_real("zipf_exponent", zipf_exponent, allow_zero=True)
    _check_real("noise", noise, allow_zero=False)

    rng = np.random.default_rng(seed)
    scale = taste_dim**-0.25  # so that a user-item dot product has unit variance
    truth = SyntheticTruth(
        user_tastes=(rng.standard_normal((num_users, taste_dim)) * scale).astype(np.float32),
        item_tastes=(rng.standard_normal((num_items, taste_dim)) * scale).astype(np.float32),
        item_popularity=_zipf_popularity(rng, num_items, zipf_exponent),
        temperature=float(noise),
    )
    counts = _interactions_per_user(rng, num_users, num_items, num_interactions)
    items = choose_items(rng, truth, counts)
    users = np.repeat(np.arange(num_users, dtype=np.int64), counts)
    affinity = np.einsum("nd,nd->n", truth.user_tastes[users], truth.item_tastes[items])
    # Around MovieLens' 3.6 stars on average, higher for items closer to the user's taste.
    stars = np.rint(3.6 + (affinity - affinity.mean()) + 0.6 * rng.standard_normal(len(items)))
    ratings = np.clip(stars, 1, 5).astype(np.float32)
    timestamps = _timestamps(rng, counts)
    # Items may come in preference order: shuffle them within each user before the times.
    shuffled = np.argsort(users + rng.random(len(items)))  # users are grouped: stays in group
    order = np.argsort(timestamps, kind="stable")
    log = Interactions(
        users[order], items[shuffled][order], ratings[shuffled][order], timestamps[order]
    )
    return (log, truth) if return_truth else log


def raw_ids(rows: Any, salt: int) -> np.ndarray:
    """Raw 64-bit ids for the rows ``0..n-1`` of a synthetic log, spread over the whole
    int64 range like hashed ids (negatives included): ``(row * odd constant) ^ salt``
    modulo 2**64, a bijection, so distinct rows keep distinct ids.

    Example:
        >>> ids = raw_ids(np.arange(4), salt=1)
        >>> len(set(ids.tolist())), bool(ids.min() < 0 < ids.max())
        (4, True)
    """
    rows = np.asarray(rows, dtype=np.int64).view(np.uint64)
    with np.errstate(over="ignore"):
        return ((rows * _GOLDEN) ^ np.uint64(salt)).view(np.int64)


def _check_real(name: str, value: Any, *, allow_zero: bool) -> None:
    ok = (
        isinstance(value, int | float | np.integer | np.floating)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (value >= 0 if allow_zero else value > 0)
    )
    if not ok:
        bound = "non-negative" if allow_zero else "positive"
        raise InvalidConfigError(f"`{name}` must be a {bound} number. Received: {name}={value!r}")


def _zipf_popularity(rng: np.random.Generator, num_items: int, exponent: float) -> np.ndarray:
    weights = np.arange(1, num_items + 1, dtype=np.float64) ** -exponent
    popularity = weights[rng.permutation(num_items)]  # popular items anywhere in the id range
    return popularity / popularity.sum()


def _interactions_per_user(
    rng: np.random.Generator, num_users: int, num_items: int, total: int
) -> np.ndarray:
    activity = rng.lognormal(0.0, 1.0, num_users)  # a few heavy users, many light ones
    counts = np.full(num_users, _MIN_PER_USER, dtype=np.int64)
    extra = total - counts.sum()
    while extra > 0:  # hand out the rest by activity; users who saw every item are full
        room = num_items - counts
        weights = activity * (room > 0)
        added = np.minimum(rng.multinomial(extra, weights / weights.sum()), room)
        counts += added
        extra -= added.sum()
    return counts


def _timestamps(rng: np.random.Generator, counts: np.ndarray) -> np.ndarray:
    """Strictly increasing times per user (grouped by user), users starting at random."""
    total = int(counts.sum())
    user_start = rng.integers(0, 2 * 365 * 86_400, counts.size)  # joined within two years
    gaps = 1 + rng.exponential(6 * 3600, total).astype(np.int64)  # hours apart, never 0
    running = np.cumsum(gaps)
    first = np.concatenate(([0], np.cumsum(counts)[:-1]))
    before = np.repeat(running[first] - gaps[first], counts)  # cumsum reset at each user
    return _START_TIME + np.repeat(user_start, counts) + running - before
