"""``model.fit``/``evaluate``/``predict`` with ``jit_compile=True``: the store's calls stay
outside the XLA-compiled step.

XLA cannot compile ``tf.numpy_function``, so under ``jit_compile=True`` a
:class:`ShardedEmbedding` never calls the store from inside the step. Keras's TensorFlow
trainer runs the compiled step from an outer, uncompiled function; shardemb wraps the
compiled step there (``TensorFlowTrainer._autoconvert_optionals``) with a *feeder*:

1. before the step, the feeder computes each sharded layer's ids from the batch (a
   sub-model from the model's inputs to the layers' inputs, uncompiled), gives them slots
   in the layer's step buffer, copies their rows in from the store, and writes the ids it
   saw with the slot of each, and the window's sorted ids with theirs, into small variables;
2. the compiled step reads each position's slot where it sees the ids the feeder saw (one
   gather), and otherwise finds each id's slot by binary search in the sorted ids
   (:func:`~shardemb.keras.training.lower_bound`); then it gathers from the step buffer.
   Where the optimizer applies the buffer's gradient, the gradient is written into a
   capture variable and a counter moves;
3. after the step, the feeder pushes the captured gradient to the store (only if the
   optimizer applied it: a skipped or accumulating step pushes nothing).

This needs the ids to be computable from the model's inputs: a Functional or Sequential
model with the layers at its top level, and int64 ids or keys (a dynamic table with
``key_dtype="string"`` hashes its strings in Python). For other models the step runs
uncompiled, with a warning, as Keras does for a layer that does not support XLA.
"""

from __future__ import annotations

import contextlib
import warnings

import keras
import numpy as np
import tensorflow as tf
from keras.src.backend.tensorflow import trainer as tf_trainer
from keras.src.trainers.data_adapters import data_adapter_utils

from shardemb.errors import InvalidConfigError
from shardemb.keras.training import StepBuffer, push_many

__all__ = ["Feeder", "install"]

_MARK = "_shardemb_wrapped"


class _Fed:
    """The variables through which one layer's compiled calls read their rows."""

    def __init__(self, layer, accumulates: bool):
        self.accumulates = accumulates
        cap, dim = layer._slots.capacity, layer.output_dim
        dtype = layer.store.config.dtype
        # A power of two for lower_bound.
        self.size = 1 << max(cap - 1, 1).bit_length()
        # The window's sorted ids and their slots; only the first `used` are this step's.
        self.sorted_ids = tf.Variable(np.zeros(self.size, np.int64), trainable=False)
        self.sorted_slots = tf.Variable(np.zeros(self.size, np.int64), trainable=False)
        self.used = tf.Variable(np.int64(0), trainable=False)
        # This step's ids as the feeder saw them, and each one's slot: the compiled step
        # reads its slots from here when it finds the same ids (room for twice the buffer:
        # duplicates, multi-hot features). `n`: how many, or -1 (nothing there to read).
        self.span = 2 * self.size
        self.flat = tf.Variable(np.zeros(self.span, np.int64), trainable=False)
        self.pos = tf.Variable(np.zeros(self.span, np.int64), trainable=False)
        self.n = tf.Variable(np.int64(-1), trainable=False)
        self.grads = tf.Variable(np.zeros((cap, dim), dtype), trainable=False)
        self.applied = tf.Variable(np.int64(0), trainable=False)
        self.missed = tf.Variable(np.int64(0), trainable=False)
        self.seen_applied = 0
        self.seen_missed = 0


class Feeder:
    """Feeds the sharded layers of ``model`` around its compiled step."""

    def __init__(self, model, layers):
        self.model = model
        self.layers = layers
        strings = [layer.name for layer in layers if layer.key_dtype == "string"]
        if strings:  # slots are found by int64 key, and the strings' hash has no TF op
            raise InvalidConfigError(
                f"Model {model.name!r} uses ShardedEmbedding with jit_compile=True, but "
                f"layer(s) {strings} take string keys (key_dtype='string'), which are hashed "
                "outside the compiled step."
            )
        nodes = _nodes_of(model, layers)
        tensors = [node.arguments.args[0] for _, node in nodes]
        self.owners = [layer for layer, _ in nodes]
        try:
            self.extractor = keras.Model(model.inputs, tensors)
        except Exception as err:  # noqa: BLE001 - Keras raises several types here
            raise _unsupported(
                model, f"its sharded layers' inputs are not reachable ({err})"
            ) from err
        optimizer = getattr(model, "optimizer", None)
        inner = getattr(optimizer, "inner_optimizer", optimizer)
        accumulates = bool(getattr(inner, "gradient_accumulation_steps", None))
        for layer in layers:
            fed = getattr(layer, "_fed", None)
            if fed is None:
                layer._fed = _Fed(layer, accumulates)
            else:
                fed.accumulates = accumulates

    @contextlib.contextmanager
    def compiled(self):
        """While tracing the compiled step: the layers read through their fed variables."""
        for layer in self.layers:
            layer._in_fed_step = True
        try:
            yield
        finally:
            for layer in self.layers:
                layer._in_fed_step = False

    def before(self, data) -> None:
        """Before the compiled step: every layer's rows, in one ``tf.numpy_function``.

        Its outputs are few whatever the number of layers (each costs about as much as a
        small op): the layers' slots, sorted ids and positions in one int64 array, sized
        by a second one, and each layer's rows."""
        x, _, _ = data_adapter_utils.unpack_x_y_sample_weight(data)
        ids = self.extractor(x)
        ids = ids if isinstance(ids, list | tuple) else [ids]
        flats, one = [], []
        for layer in self.layers:
            flat = [
                _flat_ids(t) for t, owner in zip(ids, self.owners, strict=True) if owner is layer
            ]
            flats.append(tf.concat(flat, 0) if len(flat) > 1 else flat[0])
            one.append(len(flat) == 1)
        layers = list(self.layers)

        def feed(*arrays):
            saved = [layer._slots.snapshot() for layer in layers]
            try:
                # Every layer's slots first, then the rows: the lookups wait for the
                # previous step's pushes, which the shards apply meanwhile.
                given = [layer._assign_np(a) for layer, a in zip(layers, arrays, strict=True)]
                outs = [layer._feed_np(*g, o) for layer, g, o in zip(layers, given, one,
                                                                     strict=True)]  # fmt: skip
            except BaseException:
                for layer, state in zip(layers, saved, strict=True):
                    layer._slots.restore(state)  # no layer keeps this failed step's slots
                raise
            sizes = [(o[0].size, o[2].size, o[4].size, o[5]) for o in outs]
            ints = [a for o in outs for a in (o[0], o[2], o[3], o[4])]
            return [np.array(sizes, np.int64), np.concatenate(ints).astype(np.int64, copy=False),
                    *(o[1] for o in outs)]  # fmt: skip

        dtypes = ["int64", "int64"] + [layer.store.config.dtype for layer in layers]
        sizes, ints, *rows = tf.numpy_function(feed, flats, dtypes, stateful=True)
        sizes = tf.reshape(sizes, [len(layers), 4])  # new slots, used, positions, n
        new, used, k = sizes[:, 0], sizes[:, 1], sizes[:, 2]
        lengths = tf.reshape(tf.stack([new, used, used, k], 1), [-1])
        parts = tf.split(ints, lengths, num=4 * len(layers))
        for i, layer in enumerate(layers):
            new_slots, sorted_ids, sorted_slots, pos = parts[4 * i : 4 * i + 4]
            new_rows = tf.reshape(rows[i], [-1, layer.output_dim])
            fed = layer._fed
            layer._step_rows.value.scatter_update(tf.IndexedSlices(new_rows, new_slots))
            # Only the window's ids: the search reads no further than `used`.
            fed.sorted_ids[: used[i]].assign(sorted_ids)
            fed.sorted_slots[: used[i]].assign(sorted_slots)
            fed.used.assign(used[i])
            fed.pos[: k[i]].assign(pos)  # at most fed.span; none where the step must search
            fed.flat[: k[i]].assign(flats[i][: k[i]])
            fed.n.assign(sizes[i, 3])

    def after(self) -> None:
        """After the compiled step: push every layer's applied gradient, in one exchange."""
        inputs = []
        for layer in self.layers:
            fed = layer._fed
            grads = fed.grads.sparse_read(tf.range(fed.used))
            inputs += [fed.applied.read_value(), fed.missed.read_value(), grads]
        layers = list(self.layers)

        def push(*arrays) -> np.int64:
            taken = []
            for i, layer in enumerate(layers):
                kept = layer._fed_take(*arrays[3 * i : 3 * i + 3])
                if kept is not None:
                    taken.append((layer, *kept))
            return push_many(taken)

        tf.numpy_function(push, inputs, "int64", stateful=True)


def _flat_ids(tensor):
    if isinstance(tensor, tf.SparseTensor):
        tensor = tensor.values
    elif isinstance(tensor, tf.RaggedTensor):
        tensor = tensor.flat_values
    return tf.reshape(tf.cast(tensor, "int64"), [-1])


def _unsupported(model, why: str) -> InvalidConfigError:
    return InvalidConfigError(
        f"Model {model.name!r} uses ShardedEmbedding with jit_compile=True, but {why}. "
        "Under XLA the layers' ids must be computable from the model's inputs before the "
        "compiled step: use a Functional or Sequential model with the ShardedEmbedding "
        "layers at its top level."
    )


def _nodes_of(model, layers):
    fn = getattr(model, "_functional", None) or model
    by_depth = getattr(fn, "_nodes_by_depth", None)
    if by_depth is None:
        raise _unsupported(model, f"it is a subclassed {type(model).__name__}")
    nodes = [(n.operation, n) for ns in by_depth.values() for n in ns if n.operation in layers]
    missing = [layer.name for layer in layers if all(op is not layer for op, _ in nodes)]
    if missing:
        raise _unsupported(model, f"layer(s) {missing} sit inside a nested model")
    return nodes


def sharded_layers(model) -> list:
    """The built layers of ``model`` that train through a step buffer."""
    return [
        layer
        for layer in model._flatten_layers(include_self=False)
        if isinstance(layer, StepBuffer) and layer.built
    ]


def install() -> None:
    """Wrap Keras's compiled steps with a feeder where a model needs one (idempotent)."""
    cls = tf_trainer.TensorFlowTrainer
    if getattr(cls._autoconvert_optionals, _MARK, False):
        return
    autoconvert = cls._autoconvert_optionals

    def _autoconvert_optionals(self, step_func):
        step = autoconvert(self, step_func)
        if not getattr(self, "jit_compile", False) or getattr(self, "run_eagerly", False):
            return step
        layers = sharded_layers(self)
        if not layers:
            return step
        try:
            feeder = Feeder(self, layers)
        except InvalidConfigError as err:
            warnings.warn(f"{err} Proceeding with jit_compile=False.", stacklevel=2)
            plain = getattr(step_func, "python_function", step_func)
            return autoconvert(self, tf.function(plain, reduce_retracing=True))

        def fed_step(data):
            feeder.before(data)
            with feeder.compiled():
                outputs = step(data)
            feeder.after()
            return outputs

        return fed_step

    setattr(_autoconvert_optionals, _MARK, True)
    cls._autoconvert_optionals = _autoconvert_optionals
