"""Data and metrics for a two-tower retrieval demo: pure numpy, no Ray, TensorFlow or Keras.

Example:
    >>> from shardemb.recsys import evaluate, synthetic_interactions, train_test_split
    >>> log, truth = synthetic_interactions(200, 100, 4_000, return_truth=True)
    >>> train, test = train_test_split(log)
    >>> user_vectors, item_vectors = truth.oracle_vectors()
    >>> evaluate(user_vectors, item_vectors, train, test, k=10)["users"]
    200
"""

from shardemb.recsys.interactions import IdMapping, Interactions, encode
from shardemb.recsys.metrics import (
    evaluate,
    ndcg_at_k,
    popularity_baseline,
    recall_at_k,
    topk_scores,
)
from shardemb.recsys.movielens import load_ratings
from shardemb.recsys.split import train_test_split
from shardemb.recsys.synthetic import synthetic_interactions
from shardemb.recsys.tastes import SyntheticTruth

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
