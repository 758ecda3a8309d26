"""keras layer of shardemb; see docs/ARCHITECTURE.md."""

# Whichever module of this package is imported first, the layer is imported before it: it
# registers ShardedEmbedding with Keras and wraps Keras's optimizer and trainer, which an
# import that started inside this package (a circular one) could not finish.
from shardemb.keras import layer as _layer  # noqa: F401
