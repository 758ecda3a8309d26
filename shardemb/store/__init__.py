"""The store layer: :class:`EmbeddingStore` (the facade a trainer uses), its pending
pushes and its recovery, and :class:`DynamicEmbeddingStore` (tables of keys). It sits above
the checkpoint layer and registers itself there as the factory that restores create tables
with."""

from shardemb.checkpoint import register_table_factory
from shardemb.checkpoint.dynamic import register_dynamic_factory
from shardemb.store.dynamic_store import DynamicEmbeddingStore
from shardemb.store.embedding_store import EmbeddingStore

__all__ = ["DynamicEmbeddingStore", "EmbeddingStore"]


def _empty_table(config, **runtime) -> EmbeddingStore:
    return EmbeddingStore._start(config, initialize=False, **runtime)


register_table_factory(_empty_table)
register_dynamic_factory(DynamicEmbeddingStore._start)
