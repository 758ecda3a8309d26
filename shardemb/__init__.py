"""shardemb: a sharded, large-vocabulary embedding store on Ray, with a drop-in Keras layer.

Example:
    >>> import shardemb
    >>> store = shardemb.EmbeddingStore.create("doc-init", 100, 4, num_shards=2, seed=0,
    ...                                        backend="inprocess")
    >>> store.lookup([[1, 2], [3, 4]]).shape
    (2, 2, 4)
    >>> store.close()

The Keras layer (``ShardedEmbedding``) and the checkpoint callback import TensorFlow; they
load on first use, so shard actors and pure-numpy users never pay for it.
"""

from __future__ import annotations

from shardemb import _keras_hook
from shardemb.checkpoint import CheckpointManager
from shardemb.core.optimizers import SGD, Adagrad, Adam, Ftrl, RowWiseAdagrad, SparseOptimizer
from shardemb.errors import (
    CapacityError,
    CheckpointCorruptError,
    CheckpointError,
    CheckpointNotFoundError,
    ClusterConnectionError,
    ConfigDeserializationError,
    DataFormatError,
    InvalidConfigError,
    InvalidGradientError,
    InvalidIdsError,
    ShardembError,
    ShardError,
    ShardNotLoadedError,
    ShardRestartedError,
    ShardTimeoutError,
    ShardUnavailableError,
    TableExistsError,
    TableFullError,
    TableNotFoundError,
)
from shardemb.store import DynamicEmbeddingStore, EmbeddingStore
from shardemb.transport.backends import ShardResources

__version__ = "0.1.0"

# ShardedEmbedding registers itself with Keras when Keras is imported (load_model needs it).
_keras_hook.install()

_LAZY = {
    "ShardedEmbedding": "shardemb.keras.layer",
    "TableCheckpoint": "shardemb.keras.callbacks",
}

__all__ = [
    "SGD",
    "Adagrad",
    "Adam",
    "CapacityError",
    "CheckpointCorruptError",
    "CheckpointError",
    "CheckpointManager",
    "CheckpointNotFoundError",
    "ClusterConnectionError",
    "ConfigDeserializationError",
    "DataFormatError",
    "DynamicEmbeddingStore",
    "EmbeddingStore",
    "Ftrl",
    "InvalidConfigError",
    "InvalidGradientError",
    "InvalidIdsError",
    "RowWiseAdagrad",
    "ShardError",
    "ShardNotLoadedError",
    "ShardResources",
    "ShardRestartedError",
    "ShardTimeoutError",
    "ShardUnavailableError",
    "ShardedEmbedding",
    "ShardembError",
    "SparseOptimizer",
    "TableCheckpoint",
    "TableExistsError",
    "TableFullError",
    "TableNotFoundError",
]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'shardemb' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
