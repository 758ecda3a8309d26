"""Keras callbacks for models with :class:`~shardemb.ShardedEmbedding` layers."""

from __future__ import annotations

import os
import uuid

import keras

from shardemb._validate import check_positive_int
from shardemb.checkpoint import CheckpointManager, read_manifest
from shardemb.core.config import is_safe_name
from shardemb.errors import CheckpointNotFoundError, InvalidConfigError
from shardemb.keras.layer import ShardedEmbedding
from shardemb.store import DynamicEmbeddingStore, EmbeddingStore

__all__ = ["TableCheckpoint", "TableStats"]

#: Counters :class:`TableStats` logs by default (see ``DynamicEmbeddingStore.stats``).
STATS = ("rows", "inserts", "evictions", "admissions_rejected", "unknown_lookups")


class TableCheckpoint(keras.callbacks.Callback):
    """Checkpoint every :class:`ShardedEmbedding` table of a model to Zarr during ``fit``.

    Each table goes to ``root/<layer name>/step-<N>`` through a
    :class:`~shardemb.CheckpointManager` (its shards write their own rows; the table never
    passes through the trainer), after every ``every_n_epochs`` epochs or every
    ``every_n_batches`` training batches; the last ``keep`` are kept. The step ``N`` is the
    number of training batches seen so far. A layer whose name is not one safe path
    component (``..``, a ``/``) raises :class:`~shardemb.InvalidConfigError`.
    :meth:`restore` puts the newest checkpoint of each table back into a model (for
    instance one rebuilt or loaded after a crash). A store that saved a checkpoint also
    restarts a dead shard from it.

    Example:
        >>> import tempfile, keras, numpy as np, shardemb
        >>> layer = shardemb.ShardedEmbedding(50, 4, name="items", backend="inprocess")
        >>> model = keras.Sequential([keras.Input((2,), dtype="int64"), layer,
        ...                           keras.layers.Flatten(), keras.layers.Dense(1)])
        >>> model.compile("sgd", "mse")
        >>> root = tempfile.mkdtemp()
        >>> _ = model.fit(np.ones((8, 2), "int64"), np.ones((8, 1)), batch_size=4, verbose=0,
        ...               callbacks=[shardemb.TableCheckpoint(root)])
        >>> shardemb.TableCheckpoint.restore(model, root)
        {'items': 2}
        >>> layer.close()
    """

    def __init__(
        self,
        root: str,
        *,
        every_n_epochs: int | None = 1,
        every_n_batches: int | None = None,
        keep: int | None = 3,
    ):
        super().__init__()
        check_positive_int("every_n_epochs", every_n_epochs, optional=True)
        check_positive_int("every_n_batches", every_n_batches, optional=True)
        self.root = str(root)
        self.every_n_epochs = every_n_epochs
        self.every_n_batches = every_n_batches
        self.keep = keep
        self._batches = 0

    def on_train_batch_end(self, batch, logs=None):
        self._batches += 1
        if self.every_n_batches and self._batches % self.every_n_batches == 0:
            self.save(self._batches)

    def on_epoch_end(self, epoch, logs=None):
        if self.every_n_epochs and (epoch + 1) % self.every_n_epochs == 0:
            self.save(self._batches)

    def save(self, step: int) -> dict[str, str]:
        """Checkpoint every sharded table of the model now, as ``step``."""
        paths = {}
        for layer in _sharded_layers(self.model):
            mgr = _manager(self.root, layer, self.keep)
            if step not in mgr.steps():
                mgr.save(layer.store, step)
            paths[layer.name] = mgr.path(step)
        return paths

    @staticmethod
    def restore(model, root: str, **restore_kwargs) -> dict[str, int]:
        """Replace each sharded table of ``model`` by its newest checkpoint under ``root``
        (rows, slots and step); returns ``{layer name: step}``. ``restore_kwargs`` go to
        :meth:`EmbeddingStore.restore` (e.g. ``num_shards``)."""
        steps = {}
        for layer in _sharded_layers(model):
            mgr = _manager(str(root), layer, None)
            latest = mgr.latest()
            if latest is None:
                raise CheckpointNotFoundError(
                    f"No checkpoint of layer {layer.name!r} under {mgr.root!r}."
                )
            old = layer.store
            kwargs = {"backend": layer.backend, **restore_kwargs}
            kind = DynamicEmbeddingStore if layer.dynamic else EmbeddingStore
            new = kind.restore(latest, name=f"{old.name}-r{uuid.uuid4().hex[:6]}", **kwargs)
            shape = (None, new.dim) if layer.dynamic else new.shape
            if shape != (layer.input_dim, layer.output_dim):
                new.close()
                raise InvalidConfigError(
                    f"Checkpoint {latest!r} holds a {shape} table; layer {layer.name!r} "
                    f"needs {(layer.input_dim, layer.output_dim)}."
                )
            if layer._owns_store:
                old.close()
            layer.store, layer._owns_store = new, True
            steps[layer.name] = int(read_manifest(latest)["step"])
        return steps


class TableStats(keras.callbacks.Callback):
    """Put the counters of every dynamic :class:`ShardedEmbedding` table of a model into
    Keras's ``logs`` during ``fit``, as ``<layer name>/<counter>`` (the totals of
    ``store.stats()``), so the progress bar, ``History`` and later callbacks see them:
    at the end of every epoch, and every ``every_n_batches`` training batches. Put it
    before callbacks that read them. Each update asks every shard once.

    Example:
        >>> import keras, numpy as np, shardemb
        >>> from shardemb.keras.callbacks import TableStats
        >>> layer = shardemb.ShardedEmbedding(None, 4, name="items", capacity=8,
        ...                                   eviction="lru", backend="inprocess")
        >>> model = keras.Sequential([keras.Input((2,), dtype="int64"), layer,
        ...                           keras.layers.Flatten(), keras.layers.Dense(1)])
        >>> model.compile("sgd", "mse")
        >>> keys = np.arange(20, dtype="int64").reshape(10, 2) * 2**40
        >>> fit = model.fit(keys, np.ones((10, 1)), batch_size=2, verbose=0,
        ...                 callbacks=[TableStats(["rows", "evictions"])])
        >>> fit.history["items/rows"][-1] <= 8 < fit.history["items/evictions"][-1] + 8
        True
        >>> layer.close()
    """

    def __init__(self, counters=STATS, *, every_n_batches: int | None = 1):
        super().__init__()
        check_positive_int("every_n_batches", every_n_batches, optional=True)
        if isinstance(counters, str) or not all(isinstance(c, str) for c in counters):
            raise InvalidConfigError(
                f"`counters` must be a list of counter names such as {list(STATS)}. "
                f"Received: counters={counters!r}"
            )
        self.counters = tuple(counters)
        self.every_n_batches = every_n_batches

    def on_train_batch_end(self, batch, logs=None):
        if self.every_n_batches and (batch + 1) % self.every_n_batches == 0:
            self.log(logs)

    def on_epoch_end(self, epoch, logs=None):
        self.log(logs)

    def log(self, logs: dict | None) -> dict:
        """Add the counters to ``logs`` (a dict, changed in place) and return them."""
        found = {}
        for layer in _sharded_layers(self.model):
            if not layer.dynamic or not layer.built:
                continue
            total = layer.store.stats()["total"]
            unknown = sorted(set(self.counters) - set(total))
            if unknown:
                raise InvalidConfigError(
                    f"`counters` names counters a dynamic table does not keep: {unknown}; "
                    f"it keeps {sorted(total)}. Received: counters={list(self.counters)}"
                )
            found.update({f"{layer.name}/{c}": total[c] for c in self.counters})
        if logs is not None:
            logs.update(found)
        return found


def _sharded_layers(model) -> list[ShardedEmbedding]:
    return [layer for layer in model._flatten_layers() if isinstance(layer, ShardedEmbedding)]


def _manager(root: str, layer: ShardedEmbedding, keep):
    # The layer name becomes a folder under root: it must be one safe path component.
    if not is_safe_name(layer.name):
        raise InvalidConfigError(
            f"TableCheckpoint stores layer {layer.name!r} in root/<layer name>, so the name "
            "must be 1-128 letters, digits, '_', '.' or '-' (not '.' or '..'); rename the "
            f"layer. Received: layer name={layer.name!r}, root={root!r}"
        )
    sep = "/" if "://" in root else os.sep
    return CheckpointManager(root.rstrip("/\\") + sep + layer.name, keep=keep)
