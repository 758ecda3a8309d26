"""Row constraints: applied by a shard to the rows a push updated, after its optimizer step.

Keras applies a layer's ``embeddings_constraint`` to the whole table after every step
(``variable.assign(constraint(variable))``). A sharded table applies it to the rows each
push updates, which is the same wherever the constraint acts row by row: ``NonNeg``, and
``MaxNorm``/``MinMaxNorm``/``UnitNorm`` with ``axis=1`` (each row's norm). Rows no push has
touched keep their initial values, so start them inside the constraint. A norm over
``axis=0`` (each column across every row) is dense work on the whole table and is refused.

Example:
    >>> import numpy as np
    >>> c = get_constraint({"name": "max_norm", "max_value": 1.0})
    >>> c.apply(np.array([[3.0, 4.0], [0.3, 0.4]])).round(3).tolist()
    [[0.6, 0.8], [0.3, 0.4]]
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from shardemb.errors import InvalidConfigError

__all__ = ["CONSTRAINTS", "RowConstraint", "get_constraint"]

#: Keras's epsilon in its norm constraints.
EPSILON = 1e-7


@dataclass(frozen=True, slots=True)
class RowConstraint:
    """One of ``non_neg``, ``max_norm``, ``min_max_norm``, ``unit_norm`` over each row."""

    name: str
    """The constraint's kind."""
    max_value: float = 2.0
    """Largest row norm (``max_norm``, ``min_max_norm``)."""
    min_value: float = 0.0
    """Smallest row norm (``min_max_norm``)."""
    rate: float = 1.0
    """How far toward the bounds a row moves (``min_max_norm``)."""

    def apply(self, rows: np.ndarray) -> np.ndarray:
        """``rows`` (2-D) constrained, computed in float32 or wider, as Keras does."""
        work = rows.astype(np.promote_types(rows.dtype, np.float32), copy=False)
        if self.name == "non_neg":
            out = work * (work >= 0)
        else:
            norms = np.sqrt(np.sum(np.square(work), axis=1, keepdims=True))
            if self.name == "unit_norm":
                out = work / (EPSILON + norms)
            elif self.name == "max_norm":
                out = work * (np.clip(norms, 0, self.max_value) / (EPSILON + norms))
            else:
                desired = (
                    self.rate * np.clip(norms, self.min_value, self.max_value)
                    + (1 - self.rate) * norms
                )
                out = work * (desired / (EPSILON + norms))
        return out.astype(rows.dtype, copy=False)

    def get_config(self) -> dict:
        return asdict(self)


CONSTRAINTS = ("non_neg", "max_norm", "min_max_norm", "unit_norm")
_KERAS_NAMES = {
    "NonNeg": "non_neg",
    "MaxNorm": "max_norm",
    "MinMaxNorm": "min_max_norm",
    "UnitNorm": "unit_norm",
}


def get_constraint(constraint: object) -> RowConstraint | None:
    """A :class:`RowConstraint` from ``None``, a dict (``{"name": ..., ...}``), a
    ``RowConstraint`` or a Keras constraint (by duck typing: no Keras import here)."""
    if constraint is None or isinstance(constraint, RowConstraint):
        return constraint
    if isinstance(constraint, dict):
        config = dict(constraint)
        name = config.pop("name", None)
    else:
        name = _KERAS_NAMES.get(type(constraint).__name__)
        get_config = getattr(constraint, "get_config", None)
        config = dict(get_config()) if name and callable(get_config) else {}
    if name not in CONSTRAINTS:
        raise InvalidConfigError(
            f"`embeddings_constraint` must be None, one of Keras's NonNeg, MaxNorm, "
            f"MinMaxNorm or UnitNorm, or a dict with a 'name' in {CONSTRAINTS}. "
            f"Received: embeddings_constraint={constraint!r}"
        )
    axis = config.pop("axis", 1)
    if name != "non_neg" and axis not in (1, -1):
        raise InvalidConfigError(
            f"`embeddings_constraint` {name!r} over axis={axis} constrains each column "
            "across every row of the table (dense work); a sharded table supports the "
            "norm of each row: pass axis=1. Received: "
            f"embeddings_constraint={constraint!r}"
        )
    fields = {k: float(v) for k, v in config.items() if k in ("max_value", "min_value", "rate")}
    return RowConstraint(name, **fields)
