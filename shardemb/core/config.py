"""The table's configuration: a plain, printable, picklable value object.

Every shard receives the same :class:`TableConfig` plus its index; a checkpoint stores it;
``EmbeddingStore.connect`` reads it back from shard 0.

Example:
    >>> cfg = TableConfig.build("items", vocab_size=1000, dim=8, num_shards=2, seed=0)
    >>> cfg.partition.shard_sizes().tolist(), cfg.optimizer.name
    ([500, 500], 'sgd')
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

import numpy as np

from shardemb._validate import check_positive_int
from shardemb.core.constraints import RowConstraint, get_constraint
from shardemb.core.initializers import Initializer, get_initializer
from shardemb.core.optimizers import SparseOptimizer, get_optimizer
from shardemb.core.partition import Partition
from shardemb.errors import InvalidConfigError

__all__ = ["DEVICES", "DTYPES", "TableConfig", "is_safe_name"]

DTYPES = ("float16", "float32", "float64")
DEVICES = ("cpu", "gpu")
# One safe path component (checkpoint folders, actor names): fullmatch, since ``$`` in
# re.match accepts a trailing newline.
_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,128}")


def is_safe_name(name: object) -> bool:
    """True for 1-128 letters, digits, ``_.-`` other than ``.`` and ``..``: a name that is
    one path component everywhere (no separator, no control character)."""
    return isinstance(name, str) and bool(_NAME.fullmatch(name)) and name not in (".", "..")


def check_group(group: object) -> None:
    """``group`` must be ``None`` or a name like a table's."""
    if group is not None and group != "auto" and not is_safe_name(group):
        raise InvalidConfigError(
            "`group` must be None, 'auto' or 1-128 letters, digits, '_', '.' or '-'. "
            f"Received: group={group!r}"
        )


@dataclass(frozen=True, slots=True)
class TableConfig:
    """Everything needed to build (or rebuild) a table's shards."""

    name: str
    """Table name; also the Ray actor name prefix."""
    vocab_size: int
    """Number of rows."""
    dim: int
    """Width of a row."""
    partition: Partition
    """Which shard holds which row."""
    initializer: Initializer
    """How rows start."""
    optimizer: SparseOptimizer
    """The sparse optimizer each shard applies."""
    dtype: str = "float32"
    """Row dtype."""
    seed: int = 0
    """Initializer seed (drawn at random when the user gives none)."""
    device: str = "cpu"
    """``"cpu"`` (numpy storage) or ``"gpu"`` (TensorFlow storage on the shard's device)."""
    storage: str = "numpy"
    """``"numpy"`` or ``"tensorflow"``; ``device="gpu"`` implies ``"tensorflow"``."""
    constraint: RowConstraint | None = None
    """Applied by each shard to the rows a push updated (``embeddings_constraint``)."""

    @classmethod
    def build(
        cls,
        name: str,
        vocab_size: int,
        dim: int,
        *,
        num_shards: int,
        partition: str = "mod",
        initializer: object = "uniform",
        optimizer: object = None,
        dtype: str = "float32",
        seed: int | None = None,
        device: str = "cpu",
        storage: str | None = None,
        constraint: object = None,
    ) -> TableConfig:
        """Validate user arguments (messages name the argument and repeat the value)."""
        if not is_safe_name(name):
            raise InvalidConfigError(
                "`name` must be 1-128 characters of letters, digits, '_', '.' or '-' "
                f"(and not '.' or '..'). Received: name={name!r}"
            )
        for arg, value in (("vocab_size", vocab_size), ("dim", dim), ("num_shards", num_shards)):
            check_positive_int(arg, value)
        dtype = np.dtype(dtype).name if _is_dtype(dtype) else str(dtype)
        if dtype not in DTYPES:
            raise InvalidConfigError(f"`dtype` must be one of {DTYPES}. Received: dtype={dtype!r}")
        if device not in DEVICES:
            raise InvalidConfigError(
                f"`device` must be one of {DEVICES}. Received: device={device!r}"
            )
        if storage is None:
            storage = "tensorflow" if device == "gpu" else "numpy"
        if storage not in ("numpy", "tensorflow") or (device == "gpu" and storage == "numpy"):
            raise InvalidConfigError(
                "`storage` must be 'numpy' or 'tensorflow' ('tensorflow' on a GPU). "
                f"Received: storage={storage!r}, device={device!r}"
            )
        if seed is None:
            seed = int(np.random.SeedSequence().generate_state(1, np.uint32)[0])
        elif isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
            raise InvalidConfigError(
                f"`seed` must be a non-negative integer or None. Received: seed={seed!r}"
            )
        return cls(
            name=name,
            vocab_size=int(vocab_size),
            dim=int(dim),
            partition=Partition(partition, int(vocab_size), int(num_shards)),
            initializer=get_initializer(initializer, (int(vocab_size), int(dim))),
            optimizer=get_optimizer(optimizer),
            dtype=dtype,
            seed=int(seed),
            device=device,
            storage=storage,
            constraint=get_constraint(constraint),
        )

    @property
    def num_shards(self) -> int:
        return self.partition.num_shards

    @property
    def slot_dtype(self) -> str:
        """Optimizer slots' dtype: float32 for a float16 table (Adam's second moment
        underflows float16, Adagrad's accumulator saturates at 65504), else the table's."""
        return "float32" if self.dtype == "float16" else self.dtype

    def slot_bytes_per_row(self) -> int:
        """Bytes of one row plus its optimizer slots."""
        slots = sum(w for w, _ in self.optimizer.slot_specs(self.dim).values())
        return self.dim * np.dtype(self.dtype).itemsize + slots * np.dtype(self.slot_dtype).itemsize

    def to_dict(self) -> dict:
        """JSON-ready description (checkpoint manifests, ``get_config``)."""
        return {
            "name": self.name,
            "vocab_size": self.vocab_size,
            "dim": self.dim,
            "num_shards": self.num_shards,
            "partition": self.partition.kind,
            "initializer": {"kind": self.initializer.kind, **_fields(self.initializer)},
            "optimizer": self.optimizer.get_config(),
            "dtype": self.dtype,
            "seed": self.seed,
            "device": self.device,
            "storage": self.storage,
            **({"constraint": self.constraint.get_config()} if self.constraint else {}),
        }

    @classmethod
    def from_dict(cls, d: dict) -> TableConfig:
        return cls.build(
            d["name"],
            d["vocab_size"],
            d["dim"],
            num_shards=d["num_shards"],
            partition=d["partition"],
            initializer=d["initializer"],
            optimizer=d["optimizer"],
            dtype=d["dtype"],
            seed=d["seed"],
            device=d.get("device", "cpu"),
            storage=d.get("storage"),
            constraint=d.get("constraint"),
        )


def _fields(obj) -> dict:
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if f.name != "kind"}


def _is_dtype(value: object) -> bool:
    try:
        np.dtype(value)
    except TypeError:
        return False
    return True
