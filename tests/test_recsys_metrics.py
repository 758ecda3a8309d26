"""Tests for shardemb.recsys.metrics: top-k retrieval, recall/NDCG, popularity baseline."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from shardemb.errors import InvalidConfigError, InvalidIdsError
from shardemb.recsys import (
    Interactions,
    evaluate,
    ndcg_at_k,
    popularity_baseline,
    recall_at_k,
    topk_scores,
)

INV_LOG2_3 = 1 / np.log2(3)  # discount of rank 1


def _log(users, items):
    n = len(users)
    return Interactions(users, items, np.ones(n), np.arange(n))


def _reference_topk(scores: np.ndarray, k: int) -> np.ndarray:
    """Sort each row by (score descending, index ascending); -inf and missing slots -> -1."""
    top = np.full((len(scores), k), -1)
    for row, values in enumerate(scores):
        order = np.lexsort((np.arange(values.size), -values))[:k]
        order = order[values[order] > -np.inf]
        top[row, : order.size] = order
    return top


# --------------------------------------------------------------------------- topk_scores


def test_topk_breaks_ties_by_lower_item_index_also_at_the_boundary():
    users = np.array([[1.0], [-1.0]])
    items = np.array([[1.0], [2.0], [2.0], [1.0], [2.0], [0.0]])  # scores 1 2 2 1 2 0
    assert topk_scores(users, items, 2).tolist() == [[1, 2], [5, 0]]
    # The 4th place is a tie between items 0 and 3 (score 1): the lower index wins.
    assert topk_scores(users, items, 4).tolist() == [[1, 2, 4, 0], [5, 0, 3, 1]]
    assert topk_scores(users, items, 6).tolist() == [[1, 2, 4, 0, 3, 5], [5, 0, 3, 1, 2, 4]]


@pytest.mark.parametrize("k", [1, 3, 7, 20, 25])
@pytest.mark.parametrize("batch_size", [1, 4, 1024])
def test_topk_matches_a_full_sort_on_heavily_tied_scores(k, batch_size):
    rng = np.random.default_rng(k)
    users = rng.integers(-1, 2, (9, 2)).astype(np.float32)
    items = rng.integers(-2, 3, (20, 2)).astype(np.float32)
    exclude_users = rng.integers(0, 9, 30)
    exclude_items = rng.integers(0, 20, 30)
    scores = users @ items.T
    scores[exclude_users, exclude_items] = -np.inf
    top = topk_scores(
        users, items, k, exclude=(exclude_users, exclude_items), batch_size=batch_size
    )
    np.testing.assert_array_equal(top, _reference_topk(scores, k))
    assert top.dtype == np.int64


def test_topk_excludes_seen_items_given_in_any_form():
    users = np.array([[1.0], [1.0], [1.0]])
    items = np.array([[3.0], [2.0], [1.0], [0.0]])
    pairs = (np.array([0, 0, 2]), np.array([0, 1, 3]))
    expected = [[2, 3], [0, 1], [0, 1]]
    assert topk_scores(users, items, 2, exclude=pairs).tolist() == expected
    assert topk_scores(users, items, 2, exclude=_log(*pairs)).tolist() == expected
    csr = SimpleNamespace(indptr=np.array([0, 2, 2, 3]), indices=np.array([0, 1, 3]))
    assert topk_scores(users, items, 2, exclude=csr).tolist() == expected


def test_topk_pads_with_minus_one_when_k_exceeds_what_is_left():
    users = np.array([[1.0], [2.0]])
    items = np.array([[1.0], [3.0]])
    assert topk_scores(users, items, 4).tolist() == [[1, 0, -1, -1], [1, 0, -1, -1]]
    top = topk_scores(users, items, 3, exclude=([0, 1, 1], [1, 0, 1]))
    assert top.tolist() == [[0, -1, -1], [-1, -1, -1]]
    assert topk_scores(users, np.zeros((0, 1)), 2).tolist() == [[-1, -1], [-1, -1]]


def test_topk_drops_scores_that_overflow_to_nan():
    users = np.array([[3e38, 3e38]], dtype=np.float32)
    items = np.array([[3e38, -3e38], [1.0, 0.0], [0.0, 0.0]], dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        assert topk_scores(users, items, 3).tolist() == [[1, 2, -1]]


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (
            lambda: topk_scores(np.ones((2, 3)), np.ones((4, 2)), 1),
            InvalidConfigError,
            r"same number of columns.*\(2, 3\).*\(4, 2\)",
        ),
        (
            lambda: topk_scores(np.ones(3), np.ones((4, 3)), 1),
            InvalidConfigError,
            r"`user_vectors` must be a 2-D real array",
        ),
        (
            lambda: topk_scores(np.ones((2, 1)), np.ones((4, 1)), 0),
            InvalidConfigError,
            r"`k` must be a positive integer. Received: k=0",
        ),
        (
            lambda: topk_scores(np.ones((2, 1)), np.ones((4, 1)), 1, batch_size=0),
            InvalidConfigError,
            r"Received: batch_size=0",
        ),
        (
            lambda: topk_scores(np.full((2, 1), np.nan), np.ones((4, 1)), 1),
            InvalidConfigError,
            r"`user_vectors` must be finite",
        ),
        (
            lambda: topk_scores(np.ones((2, 1)), np.ones((4, 1)), 1, exclude=([0], [4])),
            InvalidIdsError,
            r"`exclude item rows` must be in \[0, 4\).*\[4\]",
        ),
        (
            lambda: topk_scores(np.ones((2, 1)), np.ones((4, 1)), 1, exclude=([2], [0])),
            InvalidIdsError,
            r"`exclude user rows` must be in \[0, 2\)",
        ),
        (
            lambda: topk_scores(np.ones((2, 1)), np.ones((4, 1)), 1, exclude={0: 1}),
            InvalidConfigError,
            r"Received: exclude of type dict",
        ),
    ],
)
def test_topk_rejects_bad_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call()


# --------------------------------------------------------------------------- recall / NDCG

# User 0 holds out items 0 and 5, user 1 item 1, user 2 nothing, user 3 item 3 (an item that
# no one has in training: it still counts).
TOPK = np.array([[2, 0, 1], [1, 2, 0], [0, 1, 2], [3, 0, -1]])
HELDOUT_USERS = [0, 0, 1, 3]
HELDOUT_ITEMS = [0, 5, 1, 3]


def test_recall_and_ndcg_match_hand_computed_values():
    # k=2: user 0 finds item 0 at rank 1 (1 of 2), users 1 and 3 find theirs at rank 0.
    assert recall_at_k(TOPK, HELDOUT_USERS, HELDOUT_ITEMS, k=2) == pytest.approx((0.5 + 1 + 1) / 3)
    user0_ndcg = INV_LOG2_3 / (1 + INV_LOG2_3)  # ideal: both held-out items on top
    assert ndcg_at_k(TOPK, HELDOUT_USERS, HELDOUT_ITEMS, k=2) == pytest.approx(
        (user0_ndcg + 1 + 1) / 3
    )
    # k=1: user 0 misses; its ideal DCG counts min(k, 2) = 1 hit.
    assert recall_at_k(TOPK, HELDOUT_USERS, HELDOUT_ITEMS, k=1) == pytest.approx(2 / 3)
    assert ndcg_at_k(TOPK, HELDOUT_USERS, HELDOUT_ITEMS, k=1) == pytest.approx(2 / 3)


def test_metrics_use_plain_recall_and_count_duplicate_pairs_once():
    topk = np.array([[4, 1]])
    # Three distinct held-out items, k=2, one hit: recall is 1/3, not 1/min(k, 3).
    assert recall_at_k(topk, [0, 0, 0, 0], [1, 7, 8, 1], k=2) == pytest.approx(1 / 3)
    assert ndcg_at_k(topk, [0, 0, 0], [1, 7, 8], k=2) == pytest.approx(
        INV_LOG2_3 / (1 + INV_LOG2_3)
    )


def test_users_without_heldout_items_do_not_count():
    more_rows = np.vstack([TOPK, [[9, 9, 9]] * 5])
    for metric in (recall_at_k, ndcg_at_k):
        assert metric(more_rows, HELDOUT_USERS, HELDOUT_ITEMS, k=3) == metric(
            TOPK, HELDOUT_USERS, HELDOUT_ITEMS, k=3
        )


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        ((TOPK, [0], [1], 4), InvalidConfigError, r"at most the number of columns.*k=4"),
        ((TOPK, [4], [1], 1), InvalidIdsError, r"`heldout_users` must be in \[0, 4\)"),
        ((TOPK, [0], [-1], 1), InvalidIdsError, r"`heldout_items` must be >= 0"),
        ((TOPK, [0, 1], [1], 1), InvalidConfigError, r"same length. Received: 2 and 1"),
        ((TOPK, [], [], 1), InvalidConfigError, r"`heldout_users` is empty"),
        ((TOPK.astype(float), [0], [1], 1), InvalidConfigError, r"`topk` must be a 2-D integer"),
    ],
)
def test_metrics_reject_bad_arguments(args, error, match):
    with pytest.raises(error, match=match):
        recall_at_k(*args)


# --------------------------------------------------------------------------- evaluate


def test_evaluate_excludes_training_items_and_recommends_unseen_ones():
    # Item 0 scores best for both users, but user 0 has it in training.
    users = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    items = np.array([[3.0, 0.0], [2.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    train = _log([0, 2], [0, 1])
    test = _log([0, 1], [1, 2])  # user 1 has no training data; user 2 has no test data
    # User 0 gets [1, 2]: hit at rank 0. User 1 gets [0, 1]: miss.
    assert evaluate(users, items, train, test, k=2) == {"recall": 0.5, "ndcg": 0.5, "users": 2}
    # Item 3 never appears in training, yet a user who likes it finds it.
    assert evaluate(users, items, train, _log([2], [3]), k=1) == {
        "recall": 1.0,
        "ndcg": 1.0,
        "users": 1,
    }


def test_evaluate_equals_topk_then_metrics():
    rng = np.random.default_rng(3)
    users, items = rng.standard_normal((40, 4)), rng.standard_normal((30, 4))
    train = _log(rng.integers(0, 40, 300), rng.integers(0, 30, 300))
    test = _log(rng.integers(0, 25, 60), rng.integers(0, 30, 60))
    top = topk_scores(users, items, 5, exclude=train, batch_size=7)
    expected = {
        "recall": recall_at_k(top, test.users, test.items, k=5),
        "ndcg": ndcg_at_k(top, test.users, test.items, k=5),
        "users": np.unique(test.users).size,
    }
    result = evaluate(users, items, train, test, k=5, batch_size=3)
    assert result == pytest.approx(expected)


def test_evaluate_rejects_ids_outside_the_vectors():
    users, items = np.ones((2, 1)), np.ones((3, 1))
    with pytest.raises(InvalidIdsError, match=r"`test.items` must be in \[0, 3\)"):
        evaluate(users, items, _log([0], [0]), _log([1], [3]))
    with pytest.raises(InvalidIdsError, match=r"`train.users` must be in \[0, 2\)"):
        evaluate(users, items, _log([2], [0]), _log([1], [0]))
    with pytest.raises(InvalidConfigError, match=r"`test` is empty"):
        evaluate(users, items, _log([0], [0]), _log([], []))


# --------------------------------------------------------------------------- popularity


def test_popularity_baseline_recommends_unseen_popular_items_lower_index_first():
    # Training counts: item 0: 1, item 1: 2, item 2: 2, item 3: 0.
    train = _log([0, 0, 1, 2, 2], [1, 2, 1, 2, 0])
    test = _log([0, 1, 3], [0, 2, 1])
    # User 0 saw 1, 2 -> [0, 3]: hit at rank 0.  User 1 saw 1 -> [2, 0]: hit at rank 0.
    # User 3 saw nothing -> [1, 2] (1 and 2 tie: lower index first): hit at rank 0.
    assert popularity_baseline(train, test, num_items=4, k=2) == {
        "recall": 1.0,
        "ndcg": 1.0,
        "users": 3,
    }
    # k=1 with user 3 holding out item 2 instead: the tie goes to item 1, a miss.
    result = popularity_baseline(train, _log([0, 1, 3], [0, 2, 2]), num_items=4, k=1)
    assert result == {"recall": pytest.approx(2 / 3), "ndcg": pytest.approx(2 / 3), "users": 3}


def test_popularity_baseline_validates_arguments():
    with pytest.raises(InvalidConfigError, match=r"`num_items` must be a positive integer"):
        popularity_baseline(_log([0], [0]), _log([0], [0]), num_items=0)
    with pytest.raises(InvalidIdsError, match=r"`train.items` must be in \[0, 2\)"):
        popularity_baseline(_log([0], [5]), _log([0], [0]), num_items=2)
