"""How a :class:`~shardemb.keras.layer.ShardedEmbedding` trains: its step buffer.

The trainer holds no copy of the table, only a *step buffer*: a trainable variable of
``max_ids_per_step`` rows. A training forward pass gives the batch's distinct ids slots in
the buffer (:class:`~shardemb.keras.slots.StepSlots`), copies their rows in from the store
and gathers from the buffer, so the table's gradient is the buffer's gradient. The model's
optimizer hands that gradient to :func:`apply_step_gradients` where it would
update the variable (:mod:`shardemb.keras.hooks`), and the layer pushes it to the store.
Inside an XLA-compiled step the same happens through the feeder's variables
(:mod:`shardemb.keras.xla`).
"""

from __future__ import annotations

import warnings

import numpy as np
import tensorflow as tf
from tensorflow.python.eager import record

from shardemb.core.arrays import segment_sum
from shardemb.core.optimizers import get_optimizer
from shardemb.core.router import check_ids
from shardemb.errors import InvalidConfigError, InvalidIdsError
from shardemb.keras import dynamic
from shardemb.store import reconfigure

__all__ = ["StepBuffer", "apply_step_gradients", "lower_bound", "push_many"]


def lower_bound(sorted_ids: tf.Variable, ids, used):
    """The position of each of ``ids`` among the first ``used`` of ``sorted_ids`` (a
    power-of-two length): a branchless binary search, ``log2(len)`` gathers of
    ``len(ids)`` elements. (XLA's CPU ``searchsorted`` compares every id with every
    element.)"""
    size = int(sorted_ids.shape[0])
    pos = tf.zeros_like(ids)
    step = size // 2
    while step:
        probe = pos + step
        # What lies beyond `used` (an earlier step's ids) counts as larger than every id.
        less = (tf.gather(sorted_ids, probe - 1) < ids) & (probe <= used)
        pos = tf.where(less, probe, pos)
        step //= 2
    return tf.minimum(pos, size - 1)


class StepBuffer:
    """Mixed into the layer: rows in, gradients out, through the step buffer."""

    def _rows_at(self, flat):
        """Rows of the 1-D int64 ids ``flat``, one per position, in the table's dtype."""
        dtype = self.store.config.dtype
        if self._in_fed_step:
            return self._fed_rows_at(flat)
        if not (self.trainable and record.could_possibly_record()):
            uniq, idx = tf.unique(flat)
            rows = tf.numpy_function(self._lookup_np, [uniq], dtype, stateful=True)
            rows.set_shape([None, self.output_dim])
            self._regularize(rows)
            return tf.gather(rows, idx)
        # Training: through the step buffer, so the optimizer sees the table's gradient.
        slots, new_slots, new_rows = tf.numpy_function(
            self._slots_np, [flat], ["int64", "int64", dtype], stateful=True
        )
        slots.set_shape(flat.shape)
        new_rows.set_shape([None, self.output_dim])
        buffer = self._step_rows.value
        filled = buffer.scatter_update(tf.IndexedSlices(new_rows, new_slots))
        with tf.control_dependencies([filled]):
            if self.embeddings_regularizer is not None:
                self._regularize(tf.gather(buffer, tf.unique(slots).y))
            return tf.gather(buffer, slots)

    def _regularize(self, rows) -> None:
        """The regularizer's loss over the distinct rows the batch reads (Keras takes it
        over the whole table: rows a batch does not read get no regularization here)."""
        if self.embeddings_regularizer is not None:
            self.add_loss(self.embeddings_regularizer(tf.cast(rows, self.compute_dtype)))

    def _fed_rows_at(self, flat):
        """Inside a compiled step: the rows the feeder put in the step buffer."""
        fed = self._fed
        cap = self._slots.capacity
        n = tf.size(flat, out_type="int64")
        # The feeder wrote each position's slot (fed.pos) beside the ids it saw (fed.flat):
        # where this call reads those very ids, its slots are one gather. Otherwise (the
        # layer called on other ids, or more of them) each id's slot is searched for.
        at = tf.minimum(tf.range(n), fed.span - 1)
        same = tf.equal(fed.n, n) & tf.reduce_all(tf.equal(tf.gather(fed.flat, at), flat))

        def fed_slots():
            return tf.gather(fed.pos, at), tf.constant(0, "int64")

        def searched_slots():
            pos = lower_bound(fed.sorted_ids, flat, fed.used)
            # Beyond `used` lie earlier steps' ids, and a dynamic table's key may be anything.
            found = tf.equal(tf.gather(fed.sorted_ids, pos), flat) & (pos < fed.used)
            missed = tf.reduce_sum(tf.cast(~found, "int64"))
            return tf.gather(fed.sorted_slots, pos), missed

        slots, missed = tf.cond(same, fed_slots, searched_slots)
        fed.missed.assign_add(missed)
        buffer = self._step_rows.value
        if self.embeddings_regularizer is not None:
            # XLA has no tf.unique: the buffer with the rows this batch does not read
            # zeroed (the same loss for L1/L2, whose value at zero is zero).
            used = tf.scatter_nd(slots[:, None], tf.ones_like(slots), [cap]) > 0
            self._regularize(buffer * tf.cast(used, buffer.dtype)[:, None])
        return tf.gather(buffer, slots)

    def _feed_np(self, pos: np.ndarray, new_slots: np.ndarray, new_ids: np.ndarray, one: bool):
        """The feeder's outputs for the ids :meth:`_assign_np` gave slots: ``(new slots,
        their rows, the window's sorted ids, their slots, the slot of each position,
        how many)``; no positions and -1 when the compiled step must search instead (they
        do not all fit, or the layer has several calls: ``one`` is False)."""
        rows = self.store.lookup(new_ids, dedup=False)
        ids, slots = self._slots.sorted_view()
        usable = one and pos.size <= self._fed.span
        return (new_slots, rows, ids, slots, pos if usable else pos[:0],
                pos.size if usable else -1)  # fmt: skip

    def _fed_take(self, applied, missed, grads):
        """After a compiled step: ``(ids, grads)`` of what the optimizer applied (the rows
        of every slot in use), or None when it applied nothing."""
        fed = self._fed
        if missed > fed.seen_missed:
            fed.seen_missed = int(missed)
            self._slots.reset()
            raise InvalidIdsError(
                f"Layer {self.name!r} was given ids in the compiled step that were not "
                "fed before it; under jit_compile=True its inputs must come from the "
                "model's inputs (see shardemb.keras.xla)."
            )
        if applied > fed.seen_applied:
            fed.seen_applied = int(applied)
            return self._take_dense(grads)
        if not fed.accumulates:
            self._slots.reset()  # inference, or a step the loss-scale optimizer skipped
        return None

    def _lookup_np(self, ids: np.ndarray) -> np.ndarray:
        # Ids are already distinct: no second deduplication in the router.
        return self.store.lookup(ids, dedup=False)

    def _assign_np(self, flat: np.ndarray):
        """Slots for the ids ``flat``: ``(slot of each, slots given now, their ids)``."""
        if not self.dynamic:  # dynamic tables take any int64 key, or strings
            flat = check_ids(flat, self.input_dim)
        return self._slots.assign(flat)

    def _slots_np(self, flat: np.ndarray):
        slots = self._slots
        saved = slots.snapshot()
        pos, new_slots, new_ids = self._assign_np(flat)
        try:
            rows = self.store.lookup(new_ids, dedup=False)
        except BaseException:
            slots.restore(saved)  # the buffer is unchanged too: nothing was written
            raise
        return pos, new_slots, rows

    # -- the optimizer's step (called by shardemb.keras.hooks) ------------------------------
    def _keep_fed_gradient(self, grad) -> None:
        """In a compiled step: keep the gradient for the feeder, which pushes after."""
        fed = self._fed
        if isinstance(grad, tf.IndexedSlices):
            # Every slot in use is read by this step, so each one is overwritten.
            zeros = tf.IndexedSlices(tf.zeros_like(grad.values), grad.indices)
            fed.grads.scatter_update(zeros)
            fed.grads.scatter_add(grad)
        else:
            fed.grads.assign(grad)
        fed.applied.assign_add(1)

    def _take_sparse(self, slots: np.ndarray, values: np.ndarray):
        """The ids and gradient rows of a sparse step gradient; the buffer is freed.

        Where the shard would sum in this dtype anyway, the rows of a slot are summed
        here (in order of occurrence, as the shard would) and the ids go out sorted, so
        each shard gets its rows once and in order, and skips its own sort."""
        slots = slots.astype(np.int64, copy=False)
        cfg = self.store.config
        used = self._slots.used
        if (
            values.ndim == 2
            and values.dtype == np.dtype(cfg.dtype)
            and getattr(cfg, "slot_dtype", cfg.dtype) == cfg.dtype
        ):
            summed = segment_sum(slots, values, used)
            _, by_id = self._slots.sorted_view()
            counts = np.bincount(slots, minlength=used)
            if self._slots.in_id_order and counts.all():  # the usual step: no reordering
                taken = self._slots.ids(by_id), summed
            else:
                touched = by_id[counts[by_id] > 0]
                taken = self._slots.ids(touched), summed[touched]
        else:
            taken = self._slots.ids(slots), values
        self._slots.reset()
        return taken

    def _take_dense(self, grad: np.ndarray):
        # A dense gradient (unscaled, accumulated or clipped) covers every slot given out
        # in the window; slots not used by this step carry zeros. In id order, as above
        # (where the slots went out in id order, the rows already are: no copy).
        _, by_id = self._slots.sorted_view()
        rows = grad[: by_id.size] if self._slots.in_id_order else grad[by_id]
        taken = self._slots.ids(by_id), rows
        self._slots.reset()
        return taken

    def _follow_optimizer(self, optimizer) -> None:
        """Once, at the first applied step: without ``optimizer=``, take the model's
        optimizer's kind and hyperparameters for the table."""
        if getattr(self, "_followed", False):
            return
        self._followed = True
        if getattr(optimizer, "use_ema", False):
            warnings.warn(
                f"Layer {self.name!r}: the optimizer's EMA is not kept for the sharded table.",
                RuntimeWarning,
                stacklevel=3,
            )
        if self._optimizer_given:
            return
        try:
            with tf.init_scope():  # read the hyperparameters' values, also while tracing
                derived = get_optimizer(optimizer)
        except InvalidConfigError as err:
            raise InvalidConfigError(
                f"Layer {self.name!r} has no `optimizer=` and the model's optimizer cannot "
                f"be used for the table: {err} Pass ShardedEmbedding(..., optimizer=...)."
            ) from None
        if _same_optimizer(derived, self.store.config.optimizer):
            return
        if self.dynamic and self._owns_store and not dynamic.has_pushed(self.store):
            dynamic.set_optimizer(self, derived)
        elif (
            not self.dynamic
            and self._owns_store
            and not any(self.store.shard_call(reconfigure.pushes_of))
        ):
            reconfigure.set_optimizer(self.store, derived)
            self._optimizer = derived
        else:
            warnings.warn(
                f"Layer {self.name!r}: the table keeps its own optimizer "
                f"{self.store.config.optimizer!r}, not the model's {derived!r} (it was "
                "given with the store or has trained already); pass `optimizer=` to say so.",
                RuntimeWarning,
                stacklevel=3,
            )


def _same_optimizer(a, b) -> bool:
    """Same kind and hyperparameters, compared at float32 (Keras keeps them as float32)."""
    ca, cb = a.get_config(), b.get_config()
    if ca.keys() != cb.keys():
        return False
    return all(
        np.float32(ca[k]) == np.float32(cb[k]) if isinstance(ca[k], float) else ca[k] == cb[k]
        for k in ca
    )


def apply_step_gradients(pairs, optimizer) -> None:
    """Push the gradients ``optimizer`` applies to the step buffers of ``pairs`` (``(layer,
    gradient)``, graph or eager) in one exchange: one ``tf.numpy_function`` for all the
    layers, and one call per shard process for the tables that share them."""
    eager = []
    for layer, grad in pairs:
        layer._follow_optimizer(optimizer)
        if layer._in_fed_step:
            layer._keep_fed_gradient(grad)  # compiled: the feeder pushes after the step
        else:
            eager.append((layer, grad))
    if not eager:
        return
    inputs, kinds = [], []
    for layer, grad in eager:
        sparse = isinstance(grad, tf.IndexedSlices)
        inputs += [grad.indices, grad.values] if sparse else [grad]
        kinds.append((layer, sparse))

    def push(*arrays) -> np.int64:
        it = iter(arrays)
        taken = [
            (layer, *(layer._take_sparse(next(it), next(it)) if sparse
                      else layer._take_dense(next(it))))
            for layer, sparse in kinds
        ]  # fmt: skip
        return push_many(taken)

    tf.numpy_function(push, inputs, "int64", stateful=True)


def push_many(taken) -> np.int64:
    """Push ``(layer, ids, grads)`` for each item of ``taken``: the fixed tables of all the
    layers in one :meth:`EmbeddingStore.apply_gradients_many`, dynamic ones each by
    itself. Returns the number of ids pushed."""
    from shardemb.store import EmbeddingStore

    fixed = [(layer.store, ids, g) for layer, ids, g in taken if not layer.dynamic]
    if fixed:
        EmbeddingStore.apply_gradients_many(fixed)
    for layer, ids, grads in taken:
        if layer.dynamic:
            layer.store.apply_gradients(ids, grads)
    return np.int64(sum(ids.size for _, ids, _ in taken))
