"""ShardedEmbedding: ``keras.layers.Embedding`` with its table in an :class:`EmbeddingStore`.

The table never becomes a TensorFlow variable in the trainer. The forward pass looks up the
distinct ids of the batch in the store; the backward pass pushes the gradient of those rows
(summed over duplicates, like ``tf.IndexedSlices``) to the store, whose shards apply their
sparse optimizer. Dense layers keep using the model's optimizer.

How the push is wired: the layer owns one empty trainable variable (shape ``(0,)``, zero
parameters). The lookup is a ``tf.custom_gradient`` of that variable, so every gradient
computation that asks for the model's trainable variables (``model.fit``, a user's
``tf.function`` train step, an eager ``GradientTape``) runs the layer's backward function,
which pushes; ``predict`` and ``evaluate`` compute no gradient and push nothing. The
variable receives a zero-size gradient, which every Keras optimizer applies as a no-op.

Lookups and pushes cross into Python with ``tf.numpy_function``, which XLA cannot compile:
the layer sets ``supports_jit = False``, so Keras's ``jit_compile="auto"`` resolves to
``False`` for any model that contains it (an explicit ``jit_compile=True`` is turned off
by Keras with a warning).

Example:
    >>> import numpy as np, shardemb
    >>> layer = shardemb.ShardedEmbedding(10_000, 128, num_shards=2, backend="inprocess")
    >>> layer(np.array([[1, 2, 3], [4, 5, 6]])).shape
    TensorShape([2, 3, 128])
    >>> layer.embeddings.shape
    (10000, 128)
    >>> layer.close()
"""

from __future__ import annotations

import uuid

import keras
import numpy as np
import tensorflow as tf

from shardemb._validate import check_positive_int
from shardemb.core.initializers import get_initializer
from shardemb.core.optimizers import get_optimizer
from shardemb.errors import InvalidConfigError
from shardemb.store import EmbeddingStore

__all__ = ["COMBINERS", "ShardedEmbedding", "TableView"]

COMBINERS = ("sum", "mean", "sqrtn")


class TableView:
    """What ``layer.embeddings`` is: the sharded table's ``shape``, ``dtype`` and
    ``numpy()``, without holding it (``numpy()`` fetches every row)."""

    def __init__(self, layer: ShardedEmbedding):
        self._layer = layer

    @property
    def shape(self) -> tuple[int, int]:
        return (self._layer.input_dim, self._layer.output_dim)

    @property
    def dtype(self) -> str:
        return self._layer.store.config.dtype

    def numpy(self) -> np.ndarray:
        return self._layer.store.to_numpy()

    def assign(self, value) -> None:
        self._layer.store.set_weights(np.asarray(value))

    def __array__(self, dtype=None, copy=None):
        arr = self.numpy()
        return arr if dtype is None else arr.astype(dtype)

    def __repr__(self) -> str:
        return f"<TableView shape={self.shape} dtype={self.dtype} store={self._layer.store.name!r}>"


@keras.saving.register_keras_serializable(package="shardemb")
class ShardedEmbedding(keras.layers.Layer):
    """Turns non-negative integer ids into dense vectors, from a sharded store.

    A drop-in for ``keras.layers.Embedding``: same arguments, output shape
    ``inputs.shape + (output_dim,)``, masking, ``weights=``, ``get_weights``/``set_weights``,
    ``get_config``/``from_config`` and ``model.save``. The table is updated by the store's
    sparse ``optimizer`` during training (pass the same kind as the model's optimizer, e.g.
    ``keras.optimizers.Adagrad(0.1)``; the default is SGD with Keras's learning rate 0.01).

    Args:
        input_dim: vocabulary size (maximum id + 1).
        output_dim: width of each embedding.
        embeddings_initializer: a name, a Keras initializer (``RandomUniform``,
            ``RandomNormal``, ``TruncatedNormal``, ``Constant``, ``VarianceScaling``
            family...) or a dict; default ``"uniform"`` like Keras.
        mask_zero: id 0 is padding; ``compute_mask`` is ``ids != 0``.
        weights: ``[matrix]`` of shape ``(input_dim, output_dim)`` to start from.
        trainable: ``False`` freezes the table (nothing is pushed).
        optimizer: the table's sparse optimizer (a name, a dict, a
            :class:`shardemb.core.optimizers.SparseOptimizer`, or a Keras SGD/Adagrad/Adam/Ftrl).
        num_shards: shards of a new table (default: 2, at most ``input_dim``).
        partition: ``"mod"`` or ``"div"``.
        combiner: ``"sum"``, ``"mean"`` or ``"sqrtn"`` to pool multi-hot inputs given as
            ``tf.RaggedTensor`` or ``tf.SparseTensor`` (one vector per example), like
            ``tf.nn.safe_embedding_lookup_sparse``.
        store: an existing :class:`EmbeddingStore` to use instead of creating one.
        seed: initializer seed of a new table.
        backend, address, resources: where a new table's shards run (see
            :meth:`EmbeddingStore.create`).

    Example:
        >>> import keras, numpy as np, shardemb
        >>> layer = shardemb.ShardedEmbedding(100, 4, mask_zero=True, backend="inprocess")
        >>> layer.compute_mask(np.array([[1, 0]])).numpy().tolist()
        [[True, False]]
        >>> layer.close()
    """

    def __init__(
        self,
        input_dim,
        output_dim,
        embeddings_initializer="uniform",
        mask_zero=False,
        weights=None,
        trainable=True,
        optimizer=None,
        num_shards=None,
        partition="mod",
        combiner=None,
        store=None,
        name=None,
        *,
        seed=None,
        backend="ray",
        address=None,
        resources=None,
        **kwargs,
    ):
        for arg, value in (("input_dim", input_dim), ("output_dim", output_dim)):
            check_positive_int(arg, value)
        if combiner is not None and combiner not in COMBINERS:
            raise InvalidConfigError(
                f"`combiner` must be one of {COMBINERS} or None. Received: combiner={combiner!r}"
            )
        check_positive_int("num_shards", num_shards, optional=True)
        if store is not None and not isinstance(store, EmbeddingStore):
            raise InvalidConfigError(
                f"`store` must be an EmbeddingStore. Received: store={store!r} "
                f"(of type {type(store).__name__})"
            )
        if store is not None and store.shape != (input_dim, output_dim):
            raise InvalidConfigError(
                f"`store` holds a {store.shape} table but the layer needs "
                f"{(input_dim, output_dim)}. Received: store={store!r}"
            )
        kwargs.pop("input_length", None)  # deprecated in Keras too
        super().__init__(name=name, trainable=trainable, **kwargs)
        self.input_dim = input_dim
        self.output_dim = output_dim
        # Validate now, so a bad argument fails at construction, as in Keras.
        self._initializer = get_initializer(embeddings_initializer, (input_dim, output_dim))
        self.embeddings_initializer = embeddings_initializer
        self._optimizer = get_optimizer(optimizer)
        self.mask_zero = bool(mask_zero)
        self.supports_masking = self.mask_zero
        self.supports_jit = False  # numpy_function cannot be XLA-compiled
        self.autocast = False
        self.num_shards = num_shards
        self.partition = partition
        self.combiner = combiner
        self.seed = seed
        self.backend = backend
        self.address = address
        self.resources = resources
        self.store = store
        self._owns_store = store is None
        self.embeddings = TableView(self)
        if weights is not None:
            self.build()
            if not (isinstance(weights, list) and len(weights) == 1):
                weights = [weights]
            self.set_weights(weights)

    def close(self) -> None:
        """Remove the table's shards if this layer created them (a ``store=`` passed in is
        left to its owner). Harmless before ``build`` and when called twice."""
        if self.store is not None and self._owns_store:
            self.store.close()

    # -- Keras plumbing -----------------------------------------------------------------
    def build(self, input_shape=None):
        if self.built:
            return
        if self.store is None:
            num_shards = min(self.num_shards or 2, self.input_dim)
            base = "".join(c if c.isalnum() or c in "_.-" else "-" for c in self.name)[:80]
            self.store = EmbeddingStore.create(
                f"{base}-{uuid.uuid4().hex[:8]}",
                self.input_dim,
                self.output_dim,
                num_shards=num_shards,
                partition=self.partition,
                initializer=self._initializer,
                optimizer=self._optimizer,
                seed=self.seed,
                backend=self.backend,
                address=self.address,
                resources=self.resources,
            )
        # Zero parameters; only here so gradients reach the layer (see the module doc).
        self._push_anchor = self.add_weight(
            name="push_anchor", shape=(0,), initializer="zeros", trainable=True
        )
        self.built = True

    def compute_output_shape(self, input_shape):
        if self.combiner is not None:
            return (input_shape[0], self.output_dim)
        return (*input_shape, self.output_dim)

    def compute_mask(self, inputs, mask=None):
        if not self.mask_zero or self.combiner is not None:
            return None
        return keras.ops.not_equal(inputs, 0)

    def count_params(self):
        return self.input_dim * self.output_dim

    def get_weights(self):
        return [self.store.to_numpy()] if self.built else []

    def set_weights(self, weights):
        if not self.built:
            self.build()
        if len(weights) != 1:
            raise InvalidConfigError(
                "`weights` must be a list of one matrix of shape "
                f"{(self.input_dim, self.output_dim)}. Received: {len(weights)} arrays"
            )
        self.store.set_weights(np.asarray(weights[0]))

    def save_own_variables(self, store):
        # The full table goes into the .keras archive; for tables too large for one file,
        # save a Zarr checkpoint with shardemb.TableCheckpoint instead (see the README).
        store["0"] = self.store.to_numpy()

    def load_own_variables(self, store):
        self.set_weights([np.asarray(store["0"])])

    def get_config(self):
        base_config = super().get_config()
        init = self.embeddings_initializer
        if not isinstance(init, str | dict | None):
            init = keras.initializers.serialize(init)
        config = {
            "input_dim": self.input_dim,
            "output_dim": self.output_dim,
            "embeddings_initializer": init,
            "mask_zero": self.mask_zero,
            "optimizer": self._optimizer.get_config(),
            "num_shards": self.store.num_shards if self.store is not None else self.num_shards,
            "partition": self.store.config.partition.kind if self.store else self.partition,
            "combiner": self.combiner,
            "seed": self.seed,
            "backend": self.backend,
            "address": self.address,
        }
        return {**base_config, **config}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        init = config.get("embeddings_initializer")
        if isinstance(init, dict) and "class_name" in init:
            config["embeddings_initializer"] = keras.initializers.deserialize(init)
        return cls(**config)

    # -- forward and backward ---------------------------------------------------------------
    def call(self, inputs):
        if isinstance(inputs, tf.SparseTensor):
            inputs = tf.RaggedTensor.from_sparse(inputs)
        if isinstance(inputs, tf.RaggedTensor):
            return self._pooled(inputs)
        if self.combiner is not None:
            # Dense multi-hot ids: pool over the last axis, as a ragged batch would be.
            if inputs.shape.rank != 2:
                raise InvalidConfigError(
                    f"With `combiner`, dense inputs must be 2-D (batch, ids). "
                    f"Received: shape={inputs.shape}"
                )
            return self._pooled(tf.RaggedTensor.from_tensor(inputs))
        ids = tf.cast(inputs, "int64")
        uniq, idx = tf.unique(tf.reshape(ids, [-1]))
        out = tf.gather(self._rows_of(uniq), idx)
        out = tf.reshape(out, tf.concat([tf.shape(ids, out_type="int64"), [self.output_dim]], 0))
        out.set_shape(ids.shape.concatenate([self.output_dim]))
        return out

    def _pooled(self, ragged: tf.RaggedTensor):
        if ragged.shape.rank != 2:
            raise InvalidConfigError(
                "Multi-hot inputs must be 2-D (batch, ragged ids). "
                f"Received: rank {ragged.shape.rank}"
            )
        combiner = self.combiner or "mean"
        values = tf.cast(ragged.values, "int64")
        uniq, idx = tf.unique(values)
        rows = tf.gather(self._rows_of(uniq), idx)
        segments = ragged.value_rowids()
        batch = ragged.nrows()
        summed = tf.math.unsorted_segment_sum(rows, segments, batch)
        if combiner == "sum":
            return summed
        counts = tf.cast(ragged.row_lengths(), summed.dtype)[:, None]
        scale = counts if combiner == "mean" else tf.sqrt(counts)
        # Empty examples give zeros, as tf.nn.safe_embedding_lookup_sparse does.
        return tf.math.divide_no_nan(summed, scale)

    def _rows_of(self, uniq):
        """Rows of distinct ids; its gradient is pushed to the store."""
        layer = self
        dtype = self.store.config.dtype

        @tf.custom_gradient
        def lookup(anchor):
            rows = tf.numpy_function(layer._lookup_np, [uniq], dtype, stateful=True)
            rows.set_shape([None, layer.output_dim])

            def grad(dy):
                if not layer.trainable:
                    return tf.zeros_like(anchor)
                pushed = tf.numpy_function(
                    layer._push_np, [uniq, tf.convert_to_tensor(dy)], "int64", stateful=True
                )
                with tf.control_dependencies([pushed]):
                    return tf.zeros_like(anchor)

            return rows, grad

        return lookup(tf.convert_to_tensor(self._push_anchor))

    def _lookup_np(self, ids: np.ndarray) -> np.ndarray:
        # Ids are already distinct: no second deduplication in the router.
        return self.store.lookup(ids, dedup=False)

    def _push_np(self, ids: np.ndarray, grads: np.ndarray) -> np.int64:
        self.store.apply_gradients(ids, grads)
        return np.int64(ids.size)
