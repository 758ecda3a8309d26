"""Table initializers that depend on (seed, global row, column) only.

Every value is a counter-based hash of its global position, so a table built with the same
seed is identical bit for bit whatever the shard count or partition: each shard generates
exactly its own rows, and nobody generates the whole table.

The distributions and defaults follow Keras: ``uniform`` is ``RandomUniform(-0.05, 0.05)``
(``keras.layers.Embedding``'s default), ``normal`` is ``RandomNormal(0, 0.05)``,
``truncated_normal`` redraws values beyond two standard deviations. Keras initializer
objects (``RandomUniform``, ``RandomNormal``, ``TruncatedNormal``, ``Zeros``, ``Ones``,
``Constant`` and the ``VarianceScaling`` family such as ``GlorotUniform``) are translated
with their parameters; the random stream is shardemb's own, not Keras's.

Example:
    >>> import numpy as np
    >>> init = get_initializer("uniform")
    >>> a = init.generate(np.array([3, 7]), dim=4, seed=1, dtype="float32")
    >>> b = init.generate(np.array([7]), dim=4, seed=1, dtype="float32")
    >>> bool((a[1] == b[0]).all()) and bool((np.abs(a) <= 0.05).all())
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from shardemb.errors import InvalidConfigError

__all__ = ["INITIALIZERS", "Initializer", "get_initializer"]

INITIALIZERS = ("uniform", "normal", "truncated_normal", "zeros", "ones", "constant")

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


@dataclass(frozen=True, slots=True)
class Initializer:
    """A serialisable description of how rows are initialised."""

    kind: str
    """One of :data:`INITIALIZERS`."""
    minval: float = -0.05
    """Lower bound for ``uniform``."""
    maxval: float = 0.05
    """Upper bound for ``uniform``."""
    mean: float = 0.0
    """Mean for ``normal`` and ``truncated_normal``."""
    stddev: float = 0.05
    """Standard deviation for ``normal`` and ``truncated_normal``."""
    value: float = 0.0
    """Fill value for ``constant``."""

    def generate(self, global_rows: np.ndarray, dim: int, seed: int, dtype: str) -> np.ndarray:
        """Values of ``global_rows``, shape ``(len(global_rows), dim)``."""
        rows = np.asarray(global_rows, dtype=np.uint64).reshape(-1, 1)
        shape = (rows.shape[0], dim)
        if self.kind in ("zeros", "ones", "constant"):
            fill = {"zeros": 0.0, "ones": 1.0}.get(self.kind, self.value)
            return np.full(shape, fill, dtype=dtype)
        # Flat position of every value in the full table: the only input of the hash.
        counter = rows * np.uint64(dim) + np.arange(dim, dtype=np.uint64)
        with np.errstate(over="ignore"):
            base = _mix(np.array(seed, dtype=np.uint64) * _GOLDEN + np.uint64(0x5EED))
        if self.kind == "uniform":
            u = _unit(counter, base, 0)
            out = self.minval + (self.maxval - self.minval) * u
        elif self.kind == "normal":
            out = self.mean + self.stddev * _gauss(counter, base, 0)
        else:  # truncated_normal: redraw beyond 2 stddev, stream by stream, deterministically
            z = _gauss(counter, base, 0)
            bad = np.abs(z) > 2.0
            stream = 1
            while bad.any():
                z[bad] = _gauss(counter[bad], base, stream)
                bad = np.abs(z) > 2.0
                stream += 1
            out = self.mean + self.stddev * z
        return out.astype(dtype, copy=False)


def _mix(x: np.ndarray | np.uint64) -> np.ndarray:
    """splitmix64 finaliser: a bijective avalanche on uint64."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
        return x ^ (x >> np.uint64(31))


def _unit(counter: np.ndarray, base: np.uint64, stream: int) -> np.ndarray:
    """Uniform float64 in [0, 1) from 53 hash bits."""
    with np.errstate(over="ignore"):
        key = counter * _GOLDEN + base + np.uint64(stream) * np.uint64(0xD1B54A32D192ED03)
    return (_mix(key) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _gauss(counter: np.ndarray, base: np.uint64, stream: int) -> np.ndarray:
    """Standard normal by Box-Muller from two independent uniform streams."""
    u1 = _unit(counter, base, 2 * stream + 1)
    u2 = _unit(counter, base, 2 * stream + 2)
    return np.sqrt(-2.0 * np.log1p(-u1)) * np.cos(2.0 * np.pi * u2)


def get_initializer(initializer: object, shape: tuple[int, int] | None = None) -> Initializer:
    """Turn a name, a config dict, an :class:`Initializer` or a Keras initializer into an
    :class:`Initializer`. ``shape`` (``(vocab_size, dim)``) is needed for the
    ``VarianceScaling`` family, whose scale depends on fan-in and fan-out.

    Example:
        >>> get_initializer("normal").stddev
        0.05
    """
    if isinstance(initializer, Initializer):
        return initializer
    if initializer is None:
        return Initializer("uniform")
    if isinstance(initializer, str):
        name = initializer.lower()
        aliases = {"random_uniform": "uniform", "random_normal": "normal", "zero": "zeros"}
        name = aliases.get(name, name)
        if name not in INITIALIZERS:
            raise InvalidConfigError(
                f"`initializer` must be one of {INITIALIZERS}, a dict, or a Keras initializer. "
                f"Received: initializer={initializer!r}"
            )
        return Initializer(name)
    if isinstance(initializer, dict):
        params = dict(initializer)
        kind = params.pop("kind", None)
        try:
            return Initializer(get_initializer(kind).kind, **params)
        except TypeError as err:
            raise InvalidConfigError(
                f"`initializer` dict has unknown keys. Received: initializer={initializer!r}"
            ) from err
    return _from_keras(initializer, shape)


def _from_keras(obj: object, shape: tuple[int, int] | None) -> Initializer:
    """Translate a Keras initializer by duck typing, so this module never imports Keras."""
    cls = type(obj).__name__
    get_config = getattr(obj, "get_config", None)
    config = get_config() if callable(get_config) else None
    if config is None:
        raise InvalidConfigError(
            "`initializer` must be a name, a dict, an Initializer or a Keras initializer. "
            f"Received: initializer={obj!r} (of type {cls})"
        )
    if cls == "RandomUniform":
        return Initializer("uniform", minval=config["minval"], maxval=config["maxval"])
    if cls == "RandomNormal":
        return Initializer("normal", mean=config["mean"], stddev=config["stddev"])
    if cls == "TruncatedNormal":
        return Initializer("truncated_normal", mean=config["mean"], stddev=config["stddev"])
    if cls == "Zeros":
        return Initializer("zeros")
    if cls == "Ones":
        return Initializer("ones")
    if cls == "Constant":
        return Initializer("constant", value=float(np.asarray(config["value"])))
    if all(hasattr(obj, a) for a in ("scale", "mode", "distribution")):
        if shape is None:
            raise InvalidConfigError(f"`{cls}` needs the table shape to compute its scale.")
        fan_in, fan_out = shape
        fan = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2.0}[obj.mode]
        variance = obj.scale / max(1.0, fan)
        if obj.distribution == "uniform":
            limit = math.sqrt(3.0 * variance)
            return Initializer("uniform", minval=-limit, maxval=limit)
        if obj.distribution == "truncated_normal":
            # Keras divides by the std of a unit normal truncated at 2 sigma.
            return Initializer("truncated_normal", stddev=math.sqrt(variance) / 0.87962566103423978)
        return Initializer("normal", stddev=math.sqrt(variance))
    raise InvalidConfigError(
        f"Keras initializer `{cls}` cannot be generated shard by shard. Use one of "
        f"{INITIALIZERS}, RandomUniform/RandomNormal/TruncatedNormal/Constant/Zeros/Ones or a "
        f"VarianceScaling initializer, or pass `weights=`. Received: initializer={obj!r}"
    )
