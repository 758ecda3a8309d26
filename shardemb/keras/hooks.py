"""Where a Keras optimizer hands a :class:`ShardedEmbedding` the gradient it applies.

A Keras optimizer (TensorFlow backend) unscales the loss-scaled gradients, skips
non-finite steps, accumulates over ``gradient_accumulation_steps``, clips
(``clipnorm``/``clipvalue``/``global_clipnorm``, the global norm over every gradient,
the table's included) and only then runs ``_backend_update_step(grads, variables, lr)``.
That is the one place where "what the optimizer applies" exists, so shardemb wraps it,
once, for every optimizer: a layer's step buffer (marked with ``_shardemb_owner``) is not
updated in place; its gradient goes to the layer, which pushes it to the store, whose
shards apply their sparse optimizer. Every other variable is updated by Keras as usual.

Weight decay and EMA act on the whole table in Keras (dense work on every row); they are
not applied to the step buffer, and the layer warns once when the optimizer asks for them.

Keras's weight lists (``get_weights``, ``set_weights``, ``count_params``, ``summary``) see
the whole table where the step buffer sits, so a model's weights line up one to one with
the same model built on ``keras.layers.Embedding``, in both directions.
"""

from __future__ import annotations

import warnings

from keras.src.backend.tensorflow import optimizer as tf_optimizer
from keras.src.layers import layer as layer_module
from keras.src.optimizers import base_optimizer
from keras.src.utils import summary_utils

from shardemb.keras.training import apply_step_gradients

__all__ = ["install", "owner_of"]

_MARK = "_shardemb_wrapped"


def owner_of(variable):
    """The layer whose step buffer ``variable`` is, or ``None``."""
    ref = getattr(variable, "_shardemb_owner", None)
    return ref() if ref is not None else None


def exported(weights) -> list:
    """``weights`` with each step buffer replaced by its layer's whole table."""
    out = []
    for w in weights:
        layer = owner_of(w)
        out.append(layer.embeddings if layer is not None else w)
    return out


def _get_weights(self):
    return [w.numpy() for w in exported(self.weights)]


def _set_weights(self, weights):
    own = exported(self.weights)
    if len(own) != len(weights):
        raise ValueError(
            f"You called `set_weights(weights)` on layer '{self.name}' with a weight list "
            f"of length {len(weights)}, but the layer was expecting {len(own)} weights."
        )
    for variable, value in zip(own, weights, strict=True):
        if tuple(variable.shape) != tuple(value.shape):
            raise ValueError(
                f"Layer {self.name} weight shape {tuple(variable.shape)} is not compatible "
                f"with provided weight shape {tuple(value.shape)}."
            )
    for variable, value in zip(own, weights, strict=True):
        variable.assign(value)


def _split(grads, variables):
    ours, theirs = [], ([], [])
    for g, v in zip(grads, variables, strict=True):
        layer = owner_of(v)
        if layer is not None:
            ours.append((layer, g))
        else:
            theirs[0].append(g)
            theirs[1].append(v)
    return ours, theirs


def install() -> None:
    """Wrap the TensorFlow optimizer's update step and weight-decay test (idempotent)."""
    cls = tf_optimizer.TFOptimizer
    if getattr(cls._backend_update_step, _MARK, False):
        return
    update_step = cls._backend_update_step
    use_weight_decay = base_optimizer.BaseOptimizer._use_weight_decay

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        ours, (grads, variables) = _split(grads, trainable_variables)
        ours = [(layer, grad) for layer, grad in ours if grad is not None]
        if ours:
            apply_step_gradients(ours, self)
        if variables:
            update_step(self, grads, variables, learning_rate)

    def _use_weight_decay(self, variable):
        layer = owner_of(variable)
        if layer is not None:
            if self.weight_decay and not getattr(layer, "_warned_decay", False):
                layer._warned_decay = True
                warnings.warn(
                    f"Layer {layer.name!r}: the optimizer's weight_decay is not applied to "
                    "the sharded table (it is dense work on every row).",
                    RuntimeWarning,
                    stacklevel=2,
                )
            return False
        return use_weight_decay(self, variable)

    setattr(_backend_update_step, _MARK, True)
    cls._backend_update_step = _backend_update_step
    base_optimizer.BaseOptimizer._use_weight_decay = _use_weight_decay
    _install_weight_lists()


def _install_weight_lists() -> None:
    base = layer_module.Layer
    count, memory = summary_utils.count_params, summary_utils.weight_memory_size
    base.get_weights, base.set_weights = _get_weights, _set_weights
    summary_utils.count_params = lambda weights: count(exported(weights))
    summary_utils.weight_memory_size = lambda weights: memory(exported(weights))
