"""Sparse optimizers: update only the rows a gradient touches.

Each optimizer is a small frozen dataclass (serialisable, printable) that declares its
slots and computes the new rows and slots of the touched rows. The math is written once
against a tiny array namespace (:class:`~shardemb.core.arrays.ArrayOps`) so the numpy
storage and the TensorFlow storage run the same code.

Semantics against Keras (same hyperparameter names and defaults):

- ``SGD`` (with or without momentum) and ``Adagrad``: identical to Keras on every row,
  because an untouched row has a zero gradient and Keras leaves it unchanged too (momentum
  is lazy: an untouched row's velocity does not decay; with ``momentum=0`` this is exact).
- ``RowWiseAdagrad``: one accumulator per row (the mean of the squared gradient over the
  row), as in TorchRec/FBGEMM; a quarter of the memory of ``Adagrad`` at dim 4, 1/dim in
  general.
- ``Adam``: lazy, like TensorFlow Addons' ``LazyAdam``: the moments of untouched rows do not
  decay, and the bias correction uses the table's step (the number of pushes applied).
- ``Ftrl``: lazy: accumulators and linear terms of untouched rows do not change.

Example:
    >>> import numpy as np
    >>> from shardemb.core.arrays import NUMPY_OPS
    >>> opt = get_optimizer({"name": "adagrad", "learning_rate": 0.1})
    >>> rows, slots = opt.update(NUMPY_OPS, np.ones((1, 2), np.float32),
    ...                          {"accumulator": np.full((1, 2), 0.1, np.float32)},
    ...                          np.ones((1, 2), np.float32), step=1)
    >>> [round(float(x), 4) for x in rows[0]]
    [0.9047, 0.9047]
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from shardemb.core.arrays import ArrayOps
from shardemb.errors import InvalidConfigError

__all__ = [
    "OPTIMIZERS",
    "SGD",
    "Adagrad",
    "Adam",
    "Ftrl",
    "RowWiseAdagrad",
    "SparseOptimizer",
    "get_optimizer",
]


@dataclass(frozen=True, slots=True)
class SparseOptimizer:
    """Base class: slots are named per-row arrays of width ``dim`` or 1."""

    name: ClassVar[str] = ""
    learning_rate: float = 0.01
    """Step size, as in the Keras optimizer of the same name."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(f.default, bool):
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidConfigError(
                    f"`{f.name}` of optimizer {self.name!r} must be a number. "
                    f"Received: {f.name}={value!r} (of type {type(value).__name__})"
                )
        if not self.learning_rate > 0 or not np.isfinite(self.learning_rate):
            raise InvalidConfigError(
                f"`learning_rate` must be a positive finite number. "
                f"Received: learning_rate={self.learning_rate!r}"
            )

    def slot_specs(self, dim: int) -> dict[str, tuple[int, float]]:
        """``{slot name: (width, initial value)}``; width is ``dim`` or 1."""
        return {}

    def update(self, ops: ArrayOps, rows, slots: dict, grads, step: int):
        """New ``(rows, slots)`` of the touched rows; ``step`` counts from 1."""
        raise NotImplementedError

    def get_config(self) -> dict:
        return {"name": self.name, **dataclasses.asdict(self)}


@dataclass(frozen=True, slots=True)
class SGD(SparseOptimizer):
    """Stochastic gradient descent, optionally with (lazy) momentum."""

    name: ClassVar[str] = "sgd"
    learning_rate: float = 0.01
    momentum: float = 0.0
    """Velocity decay; 0 disables the slot."""
    nesterov: bool = False
    """Nesterov momentum, as in Keras."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "nesterov", bool(self.nesterov))
        SparseOptimizer.__post_init__(self)
        if not 0.0 <= self.momentum <= 1.0:
            raise InvalidConfigError(
                f"`momentum` must be in [0, 1]. Received: momentum={self.momentum!r}"
            )

    def slot_specs(self, dim):
        return {"momentum": (dim, 0.0)} if self.momentum else {}

    def update(self, ops, rows, slots, grads, step):
        if not self.momentum:
            return rows - grads * self.learning_rate, {}
        m = slots["momentum"] * self.momentum - grads * self.learning_rate
        if self.nesterov:
            return rows + (m * self.momentum - grads * self.learning_rate), {"momentum": m}
        return rows + m, {"momentum": m}


@dataclass(frozen=True, slots=True)
class Adagrad(SparseOptimizer):
    """Adagrad with Keras's formula: ``acc += g^2; w -= lr * g / sqrt(acc + eps)``."""

    name: ClassVar[str] = "adagrad"
    learning_rate: float = 0.001
    initial_accumulator_value: float = 0.1
    """Starting value of every accumulator."""
    epsilon: float = 1e-7
    """Added inside the square root."""

    def slot_specs(self, dim):
        return {"accumulator": (dim, self.initial_accumulator_value)}

    def update(self, ops, rows, slots, grads, step):
        acc = slots["accumulator"] + ops.square(grads)
        return rows - (grads * self.learning_rate) / ops.sqrt(acc + self.epsilon), {
            "accumulator": acc
        }


@dataclass(frozen=True, slots=True)
class RowWiseAdagrad(SparseOptimizer):
    """Adagrad with one accumulator per row: ``acc += mean(g^2)`` over the row."""

    name: ClassVar[str] = "rowwise_adagrad"
    learning_rate: float = 0.001
    initial_accumulator_value: float = 0.1
    """Starting value of every accumulator."""
    epsilon: float = 1e-7
    """Added inside the square root."""

    def slot_specs(self, dim):
        return {"accumulator": (1, self.initial_accumulator_value)}

    def update(self, ops, rows, slots, grads, step):
        acc = slots["accumulator"] + ops.mean_rows(ops.square(grads))
        return rows - (grads * self.learning_rate) / ops.sqrt(acc + self.epsilon), {
            "accumulator": acc
        }


@dataclass(frozen=True, slots=True)
class Adam(SparseOptimizer):
    """Lazy Adam (moments of untouched rows do not decay), Keras's formula otherwise."""

    name: ClassVar[str] = "adam"
    learning_rate: float = 0.001
    beta_1: float = 0.9
    """Decay of the first moment."""
    beta_2: float = 0.999
    """Decay of the second moment."""
    epsilon: float = 1e-7
    """Added to the square root of the second moment."""

    def slot_specs(self, dim):
        return {"m": (dim, 0.0), "v": (dim, 0.0)}

    def update(self, ops, rows, slots, grads, step):
        alpha = self.learning_rate * np.sqrt(1 - self.beta_2**step) / (1 - self.beta_1**step)
        m = slots["m"] + (grads - slots["m"]) * (1 - self.beta_1)
        v = slots["v"] + (ops.square(grads) - slots["v"]) * (1 - self.beta_2)
        return rows - (m * float(alpha)) / (ops.sqrt(v) + self.epsilon), {"m": m, "v": v}


@dataclass(frozen=True, slots=True)
class Ftrl(SparseOptimizer):
    """Lazy FTRL-Proximal with Keras's formula and hyperparameters."""

    name: ClassVar[str] = "ftrl"
    learning_rate: float = 0.001
    learning_rate_power: float = -0.5
    """Must be <= 0."""
    initial_accumulator_value: float = 0.1
    """Starting value of the accumulators (>= 0)."""
    l1_regularization_strength: float = 0.0
    """L1 strength (>= 0)."""
    l2_regularization_strength: float = 0.0
    """L2 strength (>= 0)."""
    l2_shrinkage_regularization_strength: float = 0.0
    """L2 shrinkage strength (>= 0)."""
    beta: float = 0.0
    """Keras's ``beta``."""

    def __post_init__(self) -> None:
        SparseOptimizer.__post_init__(self)
        if self.learning_rate_power > 0:
            raise InvalidConfigError(
                "`learning_rate_power` must be negative or zero. "
                f"Received: learning_rate_power={self.learning_rate_power}"
            )
        for key in (
            "initial_accumulator_value",
            "l1_regularization_strength",
            "l2_regularization_strength",
            "l2_shrinkage_regularization_strength",
        ):
            if getattr(self, key) < 0:
                raise InvalidConfigError(
                    f"`{key}` must be >= 0. Received: {key}={getattr(self, key)}"
                )

    def slot_specs(self, dim):
        return {"accumulator": (dim, self.initial_accumulator_value), "linear": (dim, 0.0)}

    def update(self, ops, rows, slots, grads, step):
        lr, power = self.learning_rate, self.learning_rate_power
        l1 = self.l1_regularization_strength
        l2 = self.l2_regularization_strength + self.beta / (2.0 * lr)
        accum = slots["accumulator"]
        grad_to_use = grads + rows * (2 * self.l2_shrinkage_regularization_strength)
        new_accum = accum + ops.square(grads)
        linear = slots["linear"] + (
            grad_to_use - ((new_accum ** (-power) - accum ** (-power)) / lr) * rows
        )
        quadratic = new_accum ** (-power) / lr + 2 * l2
        clipped = ops.minimum(ops.maximum(linear, -l1), l1)
        return (clipped - linear) / quadratic, {"accumulator": new_accum, "linear": linear}


OPTIMIZERS: dict[str, type[SparseOptimizer]] = {
    cls.name: cls for cls in (SGD, Adagrad, RowWiseAdagrad, Adam, Ftrl)
}
_KERAS_NAMES = {"SGD": SGD, "Adagrad": Adagrad, "Adam": Adam, "Ftrl": Ftrl}


def get_optimizer(optimizer: object) -> SparseOptimizer:
    """Turn a name, a config dict, a :class:`SparseOptimizer` or a Keras optimizer instance
    (``keras.optimizers.SGD/Adagrad/Adam/Ftrl``) into a :class:`SparseOptimizer`.

    Example:
        >>> get_optimizer("adam")
        Adam(learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-07)
    """
    if isinstance(optimizer, SparseOptimizer):
        return optimizer
    if optimizer is None:
        return SGD()
    if isinstance(optimizer, str):
        return _build(optimizer, {}, optimizer)
    if isinstance(optimizer, dict):
        params = dict(optimizer)
        name = params.pop("name", None)
        return _build(name, params, optimizer)
    return _from_keras(optimizer)


def _build(name: object, params: dict, received: object) -> SparseOptimizer:
    cls = OPTIMIZERS.get(str(name).lower()) if isinstance(name, str) else None
    if cls is None:
        raise InvalidConfigError(
            f"`optimizer` must be one of {sorted(OPTIMIZERS)}, a dict with a 'name', a "
            f"SparseOptimizer or a Keras SGD/Adagrad/Adam/Ftrl. Received: optimizer={received!r}"
        )
    try:
        return cls(**params)
    except TypeError as err:
        allowed = [f.name for f in dataclasses.fields(cls)]
        raise InvalidConfigError(
            f"Unknown parameter for optimizer {cls.name!r} (allowed: {allowed}). "
            f"Received: optimizer={received!r}"
        ) from err


def _from_keras(obj: object) -> SparseOptimizer:
    """Translate a Keras optimizer by duck typing, so this module never imports Keras."""
    cls_name = type(obj).__name__
    cls = _KERAS_NAMES.get(cls_name)
    get_config = getattr(obj, "get_config", None)
    if cls is None or not callable(get_config):
        raise InvalidConfigError(
            f"`optimizer` must be one of {sorted(OPTIMIZERS)}, a dict, a SparseOptimizer or a "
            f"Keras SGD/Adagrad/Adam/Ftrl. Received: optimizer={obj!r} (of type {cls_name})"
        )
    config = dict(get_config())
    if not isinstance(config.get("learning_rate"), int | float):
        raise InvalidConfigError(
            "Only a constant learning rate can be translated to a sparse optimizer. "
            f"Received: learning_rate={config.get('learning_rate')!r}"
        )
    if config.get("amsgrad"):
        raise InvalidConfigError("`amsgrad=True` has no sparse translation. Received: amsgrad=True")
    if config.get("weight_decay"):
        raise InvalidConfigError(
            "`weight_decay` is dense work on every row and has no sparse translation. "
            f"Received: weight_decay={config['weight_decay']}"
        )
    fields = {f.name for f in dataclasses.fields(cls)}
    params = {k: float(v) if k != "nesterov" else v for k, v in config.items() if k in fields}
    return cls(**params)
