"""ShardedEmbedding: ``keras.layers.Embedding`` with its table in an :class:`EmbeddingStore`.

The table never becomes a TensorFlow variable in the trainer. What the trainer holds is a
*step buffer*: a trainable variable of ``max_ids_per_step`` rows. A training forward pass
gives the batch's distinct ids slots in the buffer, copies their rows in from the store and
gathers from the buffer, so the gradient the model computes for the table is the buffer's
gradient (``tf.IndexedSlices``, like Keras's own). The model's optimizer treats it like any
other gradient (loss-scale unscaling and skipping, accumulation, clipping with the global
norm) and, where it would update the variable, hands it to the layer instead
(:mod:`shardemb.keras.hooks`): the layer pushes it to the store, whose shards apply their
sparse optimizer. So the table moves exactly when, and by what, the optimizer applies: never
at ``tape.gradient``, ``predict`` or ``evaluate``, and once per applied step however many
times the layer was called.

Forward passes with no gradient tape recording (``predict``, ``evaluate``, inference) read
rows straight from the store. Lookups cross into Python with ``tf.numpy_function``.

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
import weakref

import keras
import numpy as np
import tensorflow as tf

from shardemb._validate import check_positive_int
from shardemb.core.config import DTYPES
from shardemb.core.constraints import get_constraint
from shardemb.core.initializers import get_initializer
from shardemb.core.optimizers import get_optimizer
from shardemb.errors import ConfigDeserializationError, InvalidConfigError
from shardemb.keras import dynamic, hooks, xla
from shardemb.keras.slots import StepSlots, StringSlots
from shardemb.keras.table_view import TableView
from shardemb.keras.training import StepBuffer
from shardemb.store import DynamicEmbeddingStore, EmbeddingStore

__all__ = ["COMBINERS", "ShardedEmbedding", "TableView"]

COMBINERS = ("sum", "mean", "sqrtn")
#: Default rows of the step buffer (capped at ``input_dim``).
MAX_IDS_PER_STEP = 1 << 16

hooks.install()
xla.install()


@keras.saving.register_keras_serializable(package="shardemb")
class ShardedEmbedding(StepBuffer, keras.layers.Layer):
    """Turns non-negative integer ids (or, with ``input_dim=None``, any int64 or string
    keys) into dense vectors, from a sharded store.

    A drop-in for ``keras.layers.Embedding``: same arguments, output shape
    ``inputs.shape + (output_dim,)``, masking, ``weights=``, ``get_weights``/``set_weights``,
    ``get_config``/``from_config`` and ``model.save``. The table is updated by the store's
    sparse ``optimizer`` during training (pass the same kind as the model's optimizer, e.g.
    ``keras.optimizers.Adagrad(0.1)``; the default is SGD with Keras's learning rate 0.01).

    Args:
        input_dim: vocabulary size (maximum id + 1); ``None`` for a dynamic table
            (a :class:`~shardemb.DynamicEmbeddingStore`, see :mod:`shardemb.keras.dynamic`).
        output_dim: width of each embedding.
        embeddings_initializer: a name, a Keras initializer (``RandomUniform``,
            ``RandomNormal``, ``TruncatedNormal``, ``Constant``, ``VarianceScaling``
            family...) or a dict; default ``"uniform"`` like Keras.
        mask_zero: id 0 is padding; ``compute_mask`` is ``ids != 0`` (dynamic tables: the
            padding key is ``0`` for int64 keys and ``""`` for strings).
        weights: ``[matrix]`` of shape ``(input_dim, output_dim)`` to start from (dynamic
            tables: ``[keys, rows]``, as :meth:`get_weights` gives them).
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
        group: the shard processes a new table shares (``group=`` of
            :meth:`EmbeddingStore.create`). ``"auto"`` (default): all the layers this
            process builds share ``num_shards`` processes, so a model with 26 sharded
            layers starts 2 processes, not 52, and pushes one step of all of them in one
            call per process. ``None``: actors of its own per table.
        key_dtype, capacity, admission, eviction: of a dynamic table (``input_dim=None``):
            ``"int64"`` (default) or ``"string"`` keys, and the table's bound and policies
            (see :meth:`shardemb.DynamicEmbeddingStore.create`).

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
        group="auto",
        max_ids_per_step=None,
        embeddings_regularizer=None,
        embeddings_constraint=None,
        key_dtype=None,
        capacity=None,
        admission=None,
        eviction=None,
        **kwargs,
    ):
        self.dynamic = input_dim is None
        for arg, value in (("input_dim", input_dim), ("output_dim", output_dim)):
            if value is not None or arg == "output_dim":  # input_dim=None: a dynamic table
                check_positive_int(arg, value)
        if combiner is not None and combiner not in COMBINERS:
            raise InvalidConfigError(
                f"`combiner` must be one of {COMBINERS} or None. Received: combiner={combiner!r}"
            )
        check_positive_int("num_shards", num_shards, optional=True)
        check_positive_int("max_ids_per_step", max_ids_per_step, optional=True)
        dynamic_args = {"key_dtype": key_dtype, "capacity": capacity, "admission": admission,
                        "eviction": eviction}  # fmt: skip
        if self.dynamic:
            key_dtype = dynamic.check_args(
                {**dynamic_args, "store": store, "output_dim": output_dim, "num_shards": num_shards,
                 "partition": partition, "embeddings_constraint": embeddings_constraint}
            )  # fmt: skip
        elif any(v is not None for v in dynamic_args.values()) or isinstance(
            store, DynamicEmbeddingStore
        ):
            raise InvalidConfigError(
                "`key_dtype`, `capacity`, `admission`, `eviction` and a DynamicEmbeddingStore "
                f"are for dynamic tables (input_dim=None). Received: input_dim={input_dim!r}, "
                + ", ".join(f"{k}={v!r}" for k, v in {**dynamic_args, "store": store}.items())
            )
        elif store is not None and not isinstance(store, EmbeddingStore):
            raise InvalidConfigError(
                f"`store` must be an EmbeddingStore. Received: store={store!r} "
                f"(of type {type(store).__name__})"
            )
        if not self.dynamic and store is not None and store.shape != (input_dim, output_dim):
            raise InvalidConfigError(
                f"`store` holds a {store.shape} table but the layer needs "
                f"{(input_dim, output_dim)}. Received: store={store!r}"
            )
        kwargs.pop("input_length", None)  # deprecated in Keras too
        super().__init__(name=name, trainable=trainable, **kwargs)
        self.input_dim = input_dim
        self.output_dim = output_dim
        self.embeddings_regularizer = keras.regularizers.get(embeddings_regularizer)
        self.embeddings_constraint = keras.constraints.get(embeddings_constraint)
        # Applied by the shards to the rows each push updates (checked here, as Keras would).
        self._row_constraint = get_constraint(self.embeddings_constraint)
        # Validate now, so a bad argument fails at construction, as in Keras.
        shape = (input_dim or capacity, output_dim) if input_dim or capacity else None
        self._initializer = get_initializer(embeddings_initializer, shape)
        self.embeddings_initializer = embeddings_initializer
        # Without `optimizer=`, the table follows the model's optimizer (kind and
        # hyperparameters) from its first applied step; see _follow_optimizer.
        self._optimizer_given = optimizer is not None
        self._optimizer = get_optimizer(optimizer)
        self.mask_zero = bool(mask_zero)
        self.supports_masking = self.mask_zero
        # Under jit_compile the store is called around the compiled step (keras/xla.py).
        self.supports_jit = True
        self._in_fed_step = False
        self._fed = None
        self.autocast = False  # the step buffer is read as is; outputs are cast in call
        self.max_ids_per_step = max_ids_per_step
        self.num_shards = num_shards
        self.partition = partition
        self.combiner = combiner
        self.seed = seed
        self.backend = backend
        self.address = address
        self.resources = resources
        self.group = group
        self.key_dtype = key_dtype or "int64"
        self.capacity, self.admission, self.eviction = capacity, admission, eviction
        self.store = store
        self._owns_store = store is None
        self.embeddings = dynamic.KeyedTableView(self) if self.dynamic else TableView(self)
        if weights is not None:
            self.build()
            if not self.dynamic and not (isinstance(weights, list) and len(weights) == 1):
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
            dtype = keras.backend.standardize_dtype(self.variable_dtype)
            if dtype not in DTYPES:
                raise InvalidConfigError(
                    f"The table's dtype (the layer's variable dtype) must be one of {DTYPES}. "
                    f"Received: dtype={dtype!r}"
                )
            base = "".join(c if c.isalnum() or c in "_.-" else "-" for c in self.name)[:80]
            name = f"{base}-{uuid.uuid4().hex[:8]}"
            if self.dynamic:
                self.store = dynamic.create_store(self, name, dtype)
        if self.store is None:
            num_shards = min(self.num_shards or 2, self.input_dim)
            self.store = EmbeddingStore.create(
                name,
                self.input_dim,
                self.output_dim,
                num_shards=num_shards,
                partition=self.partition,
                initializer=self._initializer,
                optimizer=self._optimizer,
                constraint=self._row_constraint,
                dtype=dtype,
                seed=self.seed,
                backend=self.backend,
                address=self.address,
                resources=self.resources,
                group=self.group,
            )
        capacity = min(self.max_ids_per_step or MAX_IDS_PER_STEP, self.input_dim or 1 << 62)
        slots = StringSlots if self.key_dtype == "string" else StepSlots
        self._slots = slots(capacity, layer=self.name)
        # The step buffer (see the module doc). Its gradient never updates it in place.
        self._step_rows = self.add_weight(
            name="step_rows",
            shape=(capacity, self.output_dim),
            initializer="zeros",
            dtype=self.store.config.dtype,
            trainable=True,
            autocast=False,
        )
        self._step_rows._shardemb_owner = weakref.ref(self)
        self.built = True

    def compute_output_shape(self, input_shape):
        if self.combiner is not None:
            return (input_shape[0], self.output_dim)
        return (*input_shape, self.output_dim)

    def compute_mask(self, inputs, mask=None):
        if not self.mask_zero or self.combiner is not None:
            return None
        return keras.ops.not_equal(inputs, dynamic.PADDING_KEYS[self.key_dtype])

    def count_params(self):
        return int(np.prod(self.embeddings.shape))

    def get_weights(self):
        """The table: ``[matrix]``, or for a dynamic table ``[keys, rows]`` (int64 keys, for
        string tables their 64-bit hashes, sorted; ``rows[i]`` is the row of ``keys[i]``)."""
        if not self.built:
            return []
        return dynamic.get_weights(self) if self.dynamic else [self.store.to_numpy()]

    def set_weights(self, weights):
        if not self.built:
            self.build()
        if self.dynamic:
            return dynamic.set_weights(self, weights)
        if len(weights) != 1:
            raise InvalidConfigError(
                "`weights` must be a list of one matrix of shape "
                f"{(self.input_dim, self.output_dim)}. Received: {len(weights)} arrays"
            )
        self.store.set_weights(np.asarray(weights[0]))

    def save_own_variables(self, store):
        # The full table goes into the .keras archive; for tables too large for one file,
        # save a Zarr checkpoint with shardemb.TableCheckpoint instead (see the README).
        for i, array in enumerate(self.get_weights()):
            store[str(i)] = array

    def load_own_variables(self, store):
        count = 2 if self.dynamic else 1
        self.set_weights([np.asarray(store[str(i)]) for i in range(count)])

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
            "partition": self.store.config.partition.kind
            if self.store and not self.dynamic
            else self.partition,
            "combiner": self.combiner,
            "seed": self.seed,
            "backend": self.backend,
            "address": self.address,
            "group": self.group,
            "max_ids_per_step": self.max_ids_per_step,
            "embeddings_regularizer": keras.regularizers.serialize(self.embeddings_regularizer),
            "activity_regularizer": keras.regularizers.serialize(self.activity_regularizer),
            "embeddings_constraint": keras.constraints.serialize(self.embeddings_constraint),
        }
        if self.dynamic:
            config.update(partition="mod", **dynamic.config_of(self))
        return {**base_config, **config}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        init = config.get("embeddings_initializer")
        if isinstance(init, dict) and "class_name" in init:
            config["embeddings_initializer"] = keras.initializers.deserialize(init)
        try:
            return cls(**config)
        except (ValueError, TypeError) as err:
            # Keras raises TypeError for a config its layer refuses; so does this one.
            raise ConfigDeserializationError(
                f"Error when deserializing class 'ShardedEmbedding' using config={config}. "
                f"Exception encountered: {err}"
            ) from err

    # -- forward ---------------------------------------------------------------------------
    def call(self, inputs):
        if isinstance(inputs, tf.SparseTensor):
            if self.combiner is None:
                # As Keras: each stored position is looked up, absent ones read row 0.
                inputs = tf.sparse.to_dense(tf.sparse.reorder(inputs))
            else:
                inputs = tf.RaggedTensor.from_sparse(tf.sparse.reorder(inputs))
        if isinstance(inputs, tf.RaggedTensor):
            if self.combiner is None:
                return inputs.with_flat_values(self._lookup(inputs.flat_values))
            return self._pooled(inputs)
        if self.combiner is not None:
            # Dense multi-hot ids: pool over the last axis, as a ragged batch would be.
            if inputs.shape.rank != 2:
                raise InvalidConfigError(
                    f"With `combiner`, dense inputs must be 2-D (batch, ids). "
                    f"Received: shape={inputs.shape}"
                )
            return self._pooled(tf.RaggedTensor.from_tensor(inputs))
        return self._lookup(inputs)

    def _keys(self, inputs):
        """``inputs`` as int64 ids, or as the keys of a dynamic table (int64 or string)."""
        return dynamic.keys_of(self, inputs) if self.dynamic else tf.cast(inputs, "int64")

    def _lookup(self, inputs):
        """Rows of ``inputs`` (any shape), in the compute dtype."""
        ids = self._keys(inputs)
        rows = self._rows_at(tf.reshape(ids, [-1]))
        out = tf.reshape(rows, tf.concat([tf.shape(ids, out_type="int64"), [self.output_dim]], 0))
        out.set_shape(ids.shape.concatenate([self.output_dim]))
        return tf.cast(out, self.compute_dtype)

    def _pooled(self, ragged: tf.RaggedTensor):
        if ragged.shape.rank != 2:
            raise InvalidConfigError(
                "Multi-hot inputs must be 2-D (batch, ragged ids). "
                f"Received: rank {ragged.shape.rank}"
            )
        combiner = self.combiner or "mean"
        rows = self._rows_at(self._keys(ragged.values))
        summed = tf.math.unsorted_segment_sum(rows, ragged.value_rowids(), ragged.nrows())
        if combiner != "sum":
            counts = tf.cast(ragged.row_lengths(), summed.dtype)[:, None]
            scale = counts if combiner == "mean" else tf.sqrt(counts)
            # Empty examples give zeros, as tf.nn.safe_embedding_lookup_sparse does.
            summed = tf.math.divide_no_nan(summed, scale)
        return tf.cast(summed, self.compute_dtype)
