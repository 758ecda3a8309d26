"""The dynamic-vocabulary side of :class:`~shardemb.keras.layer.ShardedEmbedding`
(``input_dim=None``): its arguments, its table, its keys and ``layer.embeddings``.

A dynamic layer's table is a :class:`~shardemb.DynamicEmbeddingStore`: rows are found by
key (any int64, or strings with ``key_dtype="string"``), a key without a row reads its
initial row (from ``(seed, key)``) and gets a row when a push updates it, subject to
``capacity``, ``admission`` and ``eviction`` (see
:meth:`~shardemb.DynamicEmbeddingStore.create`). The step buffer works as for fixed
tables: its slots are found by the int64 key (for strings, their 64-bit hash) and the
store is given the keys themselves.

Example:
    >>> import numpy as np, shardemb
    >>> layer = shardemb.ShardedEmbedding(None, 4, key_dtype="string", capacity=100,
    ...                                   eviction="lru", backend="inprocess")
    >>> layer(np.array([["user:ünï", ""]], dtype=object)).shape
    TensorShape([1, 2, 4])
    >>> keys, rows = layer.get_weights()  # keys with a row (none yet) and their rows
    >>> keys.shape, rows.shape
    ((0,), (0, 4))
    >>> layer.close()
"""

from __future__ import annotations

import uuid

import numpy as np
import tensorflow as tf

from shardemb.core.keys import KEY_DTYPES, DynamicConfig
from shardemb.errors import InvalidConfigError, InvalidIdsError
from shardemb.store import DynamicEmbeddingStore

__all__ = ["DYNAMIC_ARGS", "PADDING_KEYS", "KeyedTableView", "check_args", "keys_of"]

#: Arguments only dynamic layers take (``input_dim=None``).
DYNAMIC_ARGS = ("key_dtype", "capacity", "admission", "eviction")
#: The padding key of each key dtype: ``compute_mask`` is ``keys != padding`` with
#: ``mask_zero=True`` (the padding key is still looked up, as id 0 is in Keras).
PADDING_KEYS = {"int64": 0, "string": ""}


def check_args(layer_args: dict) -> str:
    """Validate a dynamic layer's arguments as its store will (messages name the
    argument); returns the key dtype."""
    store, key_dtype = layer_args["store"], layer_args["key_dtype"]
    if store is not None:
        if not isinstance(store, DynamicEmbeddingStore):
            raise InvalidConfigError(
                "With input_dim=None `store` must be a DynamicEmbeddingStore. "
                f"Received: store={store!r} (of type {type(store).__name__})"
            )
        if store.dim != layer_args["output_dim"] or key_dtype not in (None, store.key_dtype):
            raise InvalidConfigError(
                f"`store` holds rows of width {store.dim} with key_dtype={store.key_dtype!r}; "
                f"the layer needs output_dim={layer_args['output_dim']}, key_dtype="
                f"{key_dtype!r}. Received: store={store!r}"
            )
        extra = {k: layer_args[k] for k in DYNAMIC_ARGS[1:] if layer_args[k] is not None}
        if extra:
            raise InvalidConfigError(
                "`capacity`, `admission` and `eviction` belong to the `store` given. "
                f"Received: {', '.join(f'{k}={v!r}' for k, v in extra.items())}"
            )
        return store.key_dtype
    key_dtype = "int64" if key_dtype is None else key_dtype
    if key_dtype not in KEY_DTYPES:
        raise InvalidConfigError(
            f"`key_dtype` must be one of {KEY_DTYPES}. Received: key_dtype={key_dtype!r}"
        )
    if layer_args["embeddings_constraint"] is not None:
        raise InvalidConfigError(
            "Dynamic tables (input_dim=None) apply no `embeddings_constraint`. Received: "
            f"embeddings_constraint={layer_args['embeddings_constraint']!r}"
        )
    if layer_args["partition"] != "mod":
        raise InvalidConfigError(
            "Dynamic tables hash keys to shards: `partition` does not apply. "
            f"Received: partition={layer_args['partition']!r}"
        )
    # The table's own checks, now, so that a bad argument fails at construction.
    DynamicConfig.build("check", layer_args["output_dim"], seed=0, **store_args(layer_args))
    return key_dtype


def store_args(layer_args: dict) -> dict:
    """The table arguments of a new dynamic layer's store."""
    capacity = layer_args["capacity"]
    num_shards = layer_args["num_shards"] or 2
    if capacity is not None and layer_args["num_shards"] is None:
        num_shards = max(1, min(num_shards, int(capacity)))
    return {
        "num_shards": num_shards,
        "key_dtype": layer_args["key_dtype"] or "int64",
        "capacity": capacity,
        "admission": layer_args["admission"],
        "eviction": layer_args["eviction"],
    }


def create_store(layer, name: str, dtype: str, *, optimizer=None, seed=None):
    """A new table for ``layer``; ``optimizer`` and ``seed`` default to the layer's."""
    args = {k: getattr(layer, k) for k in ("num_shards", *DYNAMIC_ARGS)}
    return DynamicEmbeddingStore.create(
        name,
        layer.output_dim,
        **store_args(args),
        initializer=layer._initializer,
        optimizer=optimizer or layer._optimizer,
        dtype=dtype,
        seed=layer.seed if seed is None else seed,
        backend=layer.backend,
        address=layer.address,
        resources=layer.resources,
    )


def set_optimizer(layer, optimizer) -> None:
    """Give the table a layer created, before its first push, ``optimizer``: a dynamic
    shard lays out its slots at creation, so the table is made again (same seed and
    arguments, rows kept)."""
    old = layer.store
    keys, rows = old.get_weights()
    cfg = old.config
    name = f"{cfg.name[:110]}-{uuid.uuid4().hex[:6]}"
    new = create_store(layer, name, cfg.dtype, optimizer=optimizer, seed=cfg.seed)
    if keys.size:
        new.set_weights(keys, rows, hashed=True)
    old.close()
    layer.store, layer._optimizer = new, optimizer


def has_pushed(store) -> bool:
    """Whether ``store`` (a dynamic table) has applied a push."""
    return store.stats()["total"]["step"] > 0


def keys_of(layer, values):
    """``values`` (a tensor of any shape) as the layer's keys: ``tf.string`` for string
    tables, ``int64`` for int64 tables; anything else raises :class:`InvalidIdsError`."""
    values = tf.convert_to_tensor(values)
    if layer.key_dtype == "string":
        if values.dtype != tf.string:
            raise InvalidIdsError(
                f"Layer {layer.name!r} has key_dtype='string': its inputs must be strings "
                f"(tf.string). Received: dtype={values.dtype.name}"
            )
        return values
    if not values.dtype.is_integer or values.dtype == tf.uint64:
        raise InvalidIdsError(
            f"Layer {layer.name!r} has key_dtype='int64': its inputs must be integers that "
            f"fit in int64 (cast them yourself). Received: dtype={values.dtype.name}"
        )
    return tf.cast(values, "int64")


def get_weights(layer) -> list[np.ndarray]:
    """``[keys, rows]``: the int64 keys with a row (for string tables their 64-bit hashes,
    see :meth:`~shardemb.DynamicEmbeddingStore.hash_keys`), sorted, and their rows."""
    return list(layer.store.get_weights())


def set_weights(layer, weights) -> None:
    """Write ``[keys, rows]`` (keys as :func:`get_weights` gives them, or strings for a
    string table); other keys keep their rows."""
    if not (isinstance(weights, list | tuple) and len(weights) == 2):
        raise InvalidConfigError(
            f"Layer {layer.name!r} has a dynamic table: `weights` must be [keys, rows] "
            f"(rows of shape (len(keys), {layer.output_dim})). Received: "
            f"{len(weights) if isinstance(weights, list | tuple) else type(weights).__name__}"
            " array(s)"
        )
    keys, rows = np.asarray(weights[0]), np.asarray(weights[1])
    hashed = layer.key_dtype == "string" and keys.dtype.kind in "iu"
    layer.store.set_weights(keys, rows, hashed=hashed)


def config_of(layer) -> dict:
    """The dynamic entries of ``get_config`` (from the table once it exists, so a loaded
    model reads the same initial rows for keys without a row)."""
    if layer.store is None:
        return {k: getattr(layer, k) for k in DYNAMIC_ARGS}
    cfg = layer.store.config.to_dict()
    out = {k: cfg[k] for k in DYNAMIC_ARGS}
    if not layer._owns_store:  # a table given with `store=`: its own initializer
        out.update(embeddings_initializer=cfg["initializer"], optimizer=cfg["optimizer"])
    return {**out, "seed": cfg["seed"], "num_shards": cfg["num_shards"]}


class KeyedTableView:
    """``layer.embeddings`` of a dynamic layer: ``shape`` is ``(rows held, output_dim)``,
    ``numpy()`` the rows sorted by key, ``keys()`` their keys (each a call to the shards).
    ``model.get_weights()`` shows the rows where the table sits; write a dynamic table
    with ``layer.set_weights([keys, rows])``."""

    def __init__(self, layer):
        self._layer = layer

    @property
    def shape(self) -> tuple[int, int]:
        rows = self._layer.store.stats()["total"]["rows"] if self._layer.store else 0
        return (int(rows), self._layer.output_dim)

    @property
    def dtype(self) -> str:
        return self._layer.store.config.dtype

    def numpy(self) -> np.ndarray:
        return self._layer.store.get_weights()[1]

    def keys(self) -> np.ndarray:
        return self._layer.store.get_weights()[0]

    def assign(self, value) -> None:
        raise InvalidConfigError(
            f"Layer {self._layer.name!r} has a dynamic table, whose rows need their keys: "
            "use layer.set_weights([keys, rows]). Received: one array of shape "
            f"{np.shape(value)}"
        )

    def __array__(self, dtype=None, copy=None):
        arr = self.numpy()
        return arr if dtype is None else arr.astype(dtype)

    def __repr__(self) -> str:
        return f"<KeyedTableView store={self._layer.store.name!r}>"
