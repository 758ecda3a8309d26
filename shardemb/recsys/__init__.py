"""Data and metrics for a two-tower retrieval demo: pure numpy, no Ray, TensorFlow or Keras.

Example:
    >>> from shardemb.recsys import evaluate, synthetic_interactions, train_test_split
    >>> log, truth = synthetic_interactions(200, 100, 4_000, return_truth=True)
    >>> train, test = train_test_split(log)
    >>> user_vectors, item_vectors = truth.oracle_vectors()
    >>> evaluate(user_vectors, item_vectors, train, test, k=10)["users"]
    200
"""

from shardemb.recsys.data import (
    IdMapping,
    Interactions,
    SyntheticTruth,
    encode,
    load_ratings,
    synthetic_interactions,
    train_test_split,
)
from shardemb.recsys.metrics import (
    evaluate,
    ndcg_at_k,
    popularity_baseline,
    recall_at_k,
    topk_scores,
)

__all__ = [
    "IdMapping",
    "Interactions",
    "SyntheticTruth",
    "encode",
    "evaluate",
    "load_ratings",
    "ndcg_at_k",
    "popularity_baseline",
    "recall_at_k",
    "synthetic_interactions",
    "topk_scores",
    "train_test_split",
]
