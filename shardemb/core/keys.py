"""Keys of dynamic tables: checks, stable 64-bit hashing, routing to shards, keyed initial
rows, and the table's configuration (:class:`DynamicConfig`).

A dynamic table (``vocab_size=None``) is addressed by keys instead of row numbers: any
int64 (the whole range, negatives included) or any string. Everything here is pure numpy
and stable: a key gets the same 64-bit key, shard and initial row in every process, on
every machine and in every version of shardemb (changing any of it would be a new
checkpoint format version).

- **int64 keys** are their own 64-bit key: distinct int64 keys never share a row.
- **string keys** become the FNV-1a 64 hash of their UTF-8 bytes (offset basis
  ``0xcbf29ce484222325``, prime ``0x100000001b3``, the standard FNV-1a; any FNV library
  reproduces it), read as a two's-complement int64. ``str`` and ``bytes`` are the same key
  when the bytes are the string's UTF-8 (TensorFlow hands ``tf.string`` over as bytes).
  Distinct strings with the same 64-bit hash share one row. Tables keep only the 64-bit
  keys, not the strings, so such collisions cannot be detected; among ``n`` distinct
  strings about ``n**2 / 2**65`` pairs collide (0.03 for a billion strings).
- **shard** of a key: ``splitmix64(key) % num_shards``, with ``splitmix64`` the finaliser
  of Vigna's splitmix64 (a bijection on 64 bits, see :func:`mix64`).
- **initial row** of a key: the table's initializer evaluated at the counter
  ``mix64(key ^ INIT_SALT)`` instead of a row number (see
  :mod:`shardemb.core.initializers`), so it depends on ``(seed, key)`` only.

Example:
    >>> import numpy as np
    >>> hash_strings(["", "a"]).tolist() == [-3750763034362895579, -5808556873153909620]
    True
    >>> keys = check_keys([-2**63, 2**63 - 1], "int64")
    >>> shard_of_keys(keys, 3).tolist() == shard_of_keys(keys[::-1], 3)[::-1].tolist()
    True
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from shardemb._validate import check_int, check_positive_int
from shardemb.core.config import DTYPES, is_safe_name
from shardemb.core.initializers import Initializer, get_initializer
from shardemb.core.optimizers import SparseOptimizer, get_optimizer
from shardemb.core.partition import ShardSplit
from shardemb.errors import InvalidConfigError, InvalidIdsError

__all__ = [
    "EVICTIONS",
    "KEY_DTYPES",
    "Admission",
    "DynamicConfig",
    "Eviction",
    "check_keys",
    "hash_strings",
    "initial_rows",
    "mix64",
    "shard_of_keys",
    "split_keys",
]

KEY_DTYPES = ("int64", "string")
EVICTIONS = (None, "lru", "lfu", "ttl")
DEFAULT_ROWS = ("initial", "zeros")
#: Rows one shard can hold (its rows are int32 indexes).
MAX_SHARD_ROWS = 2**31 - 1
FNV_OFFSET = np.uint64(0xCBF29CE484222325)
FNV_PRIME = np.uint64(0x100000001B3)
#: Strings longer than this many bytes are hashed apart, byte by byte in Python.
LONG_KEY = 1024
#: Strings hashed together (their bytes padded to the longest: bounded memory).
HASH_BLOCK = 1 << 16
#: Mixed into a key before it becomes an initializer counter.
INIT_SALT = np.uint64(0x6B65795F696E6974)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64 (``x ^= x >> 30; x *= 0xbf58476d1ce4e5b9;
    x ^= x >> 27; x *= 0x94d049bb133111eb; x ^= x >> 31``), wrapping modulo 2**64."""
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
        return x ^ (x >> np.uint64(31))


def shard_of_keys(keys: np.ndarray, num_shards: int) -> np.ndarray:
    """Shard of each int64 key: ``mix64(key) % num_shards``."""
    if num_shards == 1:
        return np.zeros(np.shape(keys), dtype=np.int64)
    u = np.asarray(keys, dtype=np.int64).view(np.uint64)
    return (mix64(u) % np.uint64(num_shards)).astype(np.int64)


def split_keys(keys: np.ndarray, num_shards: int) -> ShardSplit:
    """Group flat int64 keys by shard (a radix sort); ``local`` holds the keys in shard
    order. See :class:`~shardemb.core.partition.ShardSplit`."""
    keys = np.asarray(keys, dtype=np.int64).reshape(-1)
    if num_shards == 1:
        order = np.arange(keys.size, dtype=np.int64)
        return ShardSplit(order=order, bounds=np.array([0, keys.size], np.int64), local=keys)
    shard = shard_of_keys(keys, num_shards)
    order = np.argsort(shard.astype(np.uint16 if num_shards < 65536 else np.int64), kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(shard, minlength=num_shards))])
    return ShardSplit(order=order, bounds=bounds.astype(np.int64), local=keys[order])


def initial_rows(config: DynamicConfig, keys: np.ndarray) -> np.ndarray:
    """The initial rows of int64 ``keys`` from ``(config.seed, key)`` alone."""
    counter = mix64(np.asarray(keys, dtype=np.int64).view(np.uint64) ^ INIT_SALT)
    return config.initializer.generate(counter, config.dim, config.seed, config.dtype)


def hash_strings(values: object) -> np.ndarray:
    """The int64 keys of strings (``str`` or UTF-8 ``bytes``; any shape): FNV-1a 64 of the
    UTF-8 bytes, vectorized over the batch (one pass per byte position, not per key)."""
    arr = values if isinstance(values, np.ndarray) else np.asarray(values, dtype=object)
    flat = arr.reshape(-1).tolist()
    kinds = set(map(type, flat))
    if kinds and all(issubclass(k, bytes) for k in kinds):
        chunks = flat
    elif kinds and all(issubclass(k, str) for k in kinds) and "".join(flat).isascii():
        chunks = flat  # ASCII: numpy encodes it, one byte per character
    else:
        try:
            chunks = [v.encode("utf-8") if isinstance(v, str) else v for v in flat]
        except UnicodeEncodeError as err:
            raise InvalidIdsError(
                f"`keys` holds a string that is not valid unicode ({err})."
            ) from err
        bad = next((v for v in chunks if not isinstance(v, bytes)), None)
        if bad is not None:
            raise InvalidIdsError(
                "`keys` of a table with key_dtype='string' must be str or bytes. "
                f"Received: {bad!r} (of type {type(bad).__name__})"
            )
    return _fnv1a(chunks).reshape(arr.shape)


def _fnv1a(chunks: list) -> np.ndarray:
    """FNV-1a 64 of each of ``chunks`` (bytes, or ASCII str), as int64."""
    n = len(chunks)
    lengths = np.fromiter(map(len, chunks), dtype=np.int64, count=n)
    long = np.flatnonzero(lengths > LONG_KEY).tolist()
    h = np.full(n, FNV_OFFSET, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for start in range(0, n, HASH_BLOCK):
            part = chunks[start : start + HASH_BLOCK]
            if long:  # rare: hashed apart below, left out of the matrix
                part = [b"" if len(c) > LONG_KEY else c for c in part]
            size = lengths[start : start + len(part)].clip(max=LONG_KEY)
            order = np.argsort(-size, kind="stable")  # longest first
            width = int(size[order[0]])
            if width == 0:
                continue
            # Byte j of every string as row j of a matrix: strings longer than j first.
            matrix = np.array(part, dtype=f"S{width}").view(np.uint8).reshape(-1, width)
            by_position = matrix[order].T.copy()
            block = h[start + order]
            for j, m in enumerate(np.searchsorted(-size[order], -np.arange(width)).tolist()):
                head = block[:m]
                np.bitwise_xor(head, by_position[j, :m], out=head)
                np.multiply(head, FNV_PRIME, out=head)
            h[start + order] = block
    for i in long:  # plain Python
        chunk = chunks[i] if isinstance(chunks[i], bytes) else chunks[i].encode()
        h[i] = _fnv1a_python(chunk)
    return h.view(np.int64)


def _fnv1a_python(data: bytes) -> int:
    h, prime, mask = int(FNV_OFFSET), int(FNV_PRIME), (1 << 64) - 1
    for byte in data:
        h = ((h ^ byte) * prime) & mask
    return h


def check_keys(keys: object, key_dtype: str, *, name: str = "keys") -> np.ndarray:
    """``keys`` as an int64 array of the same shape (strings hashed), or
    :class:`InvalidIdsError` naming what is wrong."""
    if key_dtype == "string":
        if isinstance(keys, str | bytes):
            keys = [keys]  # one key, shape (1,) like np.asarray("a")[None]
        arr = keys if isinstance(keys, np.ndarray) else _as_array(keys, name, object)
        if arr.dtype.kind not in "USO" and arr.size:
            raise InvalidIdsError(
                f"`{name}` of a table with key_dtype='string' must be str or bytes. "
                f"Received: dtype {arr.dtype} (shape {arr.shape}){_preview(arr)}"
            )
        return hash_strings(arr) if arr.size else np.zeros(arr.shape, dtype=np.int64)
    arr = keys if isinstance(keys, np.ndarray) else _as_array(keys, name, None)
    if arr.size == 0 and arr.dtype.kind in "fiub":  # np.asarray([]) is float64
        return arr.astype(np.int64)
    if arr.dtype.kind not in "iu":
        raise InvalidIdsError(
            f"`{name}` of a table with key_dtype='int64' must be integers in "
            f"[-2**63, 2**63). Received: dtype {arr.dtype} (shape {arr.shape}){_preview(arr)}"
        )
    if arr.dtype == np.uint64 and arr.size and arr.max() > np.iinfo(np.int64).max:
        raise InvalidIdsError(
            f"`{name}` must fit in int64. Received: uint64 values up to {arr.max()}"
        )
    return arr.astype(np.int64, copy=False)


def _as_array(value: object, name: str, dtype) -> np.ndarray:
    try:
        return np.asarray(value, dtype=dtype)
    except (ValueError, TypeError, OverflowError) as err:
        raise InvalidIdsError(
            f"`{name}` must be a rectangular array of keys. Received: {str(value)[:80]} ({err})"
        ) from err


def _preview(arr: np.ndarray) -> str:
    flat = arr.ravel()[:5]
    return f", e.g. {flat.tolist()}" if flat.size else ""


# --------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Admission:
    """When a new key gets a row of its own."""

    min_count: int = 1
    """Pushes of a key before it gets a trained row; until then its pushes only count."""
    default_row: str = "initial"
    """What lookups of a key without a row return: its ``"initial"`` row or ``"zeros"``."""

    @classmethod
    def of(cls, admission: object) -> Admission:
        if admission is None:
            return cls()
        if isinstance(admission, Admission):
            return admission
        if not isinstance(admission, dict) or set(admission) - {"min_count", "default_row"}:
            raise InvalidConfigError(
                "`admission` must be None or a dict with 'min_count' (an integer >= 1) and "
                f"optionally 'default_row' ({DEFAULT_ROWS}). Received: admission={admission!r}"
            )
        out = cls(**admission)
        check_positive_int("admission['min_count']", out.min_count)
        if out.default_row not in DEFAULT_ROWS:
            raise InvalidConfigError(
                f"`admission['default_row']` must be one of {DEFAULT_ROWS}. "
                f"Received: default_row={out.default_row!r}"
            )
        return out


@dataclass(frozen=True, slots=True)
class Eviction:
    """Which rows a full shard frees for new keys."""

    kind: str | None = None
    """``None`` (a full table raises), ``"lru"``, ``"lfu"`` or ``"ttl"``."""
    ttl_steps: int | None = None
    """For ``"ttl"``: rows not updated in the last ``ttl_steps`` pushes can be freed."""

    @classmethod
    def of(cls, eviction: object) -> Eviction:
        if eviction is None or isinstance(eviction, Eviction):
            return eviction or cls()
        if eviction in ("lru", "lfu"):
            return cls(str(eviction))
        if isinstance(eviction, dict) and set(eviction) == {"ttl_steps"}:
            check_positive_int("eviction['ttl_steps']", eviction["ttl_steps"])
            return cls("ttl", int(eviction["ttl_steps"]))
        raise InvalidConfigError(
            "`eviction` must be None, 'lru', 'lfu' or {'ttl_steps': N}. "
            f"Received: eviction={eviction!r}"
        )

    def to_json(self) -> object:
        return {"ttl_steps": self.ttl_steps} if self.kind == "ttl" else self.kind


@dataclass(frozen=True, slots=True)
class DynamicConfig:
    """Everything needed to build (or rebuild) the shards of a dynamic table."""

    name: str
    """Table name; also the Ray actor name prefix."""
    dim: int
    """Width of a row."""
    num_shards: int
    """Shards the keys are hashed over."""
    key_dtype: str
    """``"int64"`` or ``"string"``."""
    capacity: int | None
    """Most rows in the table (split evenly over shards), or ``None`` for no bound."""
    admission: Admission
    """When a new key gets a row."""
    eviction: Eviction
    """What a full shard frees."""
    initializer: Initializer
    """How rows start (keyed by the key, see :func:`initial_rows`)."""
    optimizer: SparseOptimizer
    """The sparse optimizer each shard applies."""
    dtype: str = "float32"
    """Row dtype."""
    seed: int = 0
    """Initializer seed."""
    device: str = "cpu"
    """Always ``"cpu"``: dynamic tables keep numpy rows."""
    vocab_size: None = None
    """Always ``None``: what tells a dynamic table's config from a fixed one."""

    @classmethod
    def build(
        cls,
        name: str,
        dim: int,
        *,
        num_shards: int,
        key_dtype: str = "int64",
        capacity: int | None = None,
        admission: object = None,
        eviction: object = None,
        initializer: object = "uniform",
        optimizer: object = None,
        dtype: str = "float32",
        seed: int | None = None,
    ) -> DynamicConfig:
        """Validate user arguments (messages name the argument and repeat the value)."""
        if not is_safe_name(name):
            raise InvalidConfigError(
                "`name` must be 1-128 characters of letters, digits, '_', '.' or '-' "
                f"(and not '.' or '..'). Received: name={name!r}"
            )
        check_positive_int("dim", dim)
        check_positive_int("num_shards", num_shards)
        check_int("capacity", capacity, minimum=1, optional=True)
        if capacity is not None and not num_shards <= capacity <= MAX_SHARD_ROWS * num_shards:
            raise InvalidConfigError(
                "`capacity` must be at least `num_shards` (every shard needs a row) and at "
                f"most {MAX_SHARD_ROWS:,} rows per shard. "
                f"Received: capacity={capacity}, num_shards={num_shards}"
            )
        if key_dtype not in KEY_DTYPES:
            raise InvalidConfigError(
                f"`key_dtype` must be one of {KEY_DTYPES}. Received: key_dtype={key_dtype!r}"
            )
        evict = Eviction.of(eviction)
        if evict.kind is not None and capacity is None:
            raise InvalidConfigError(
                "`eviction` frees rows when `capacity` is reached: give a capacity. "
                f"Received: eviction={eviction!r}, capacity=None"
            )
        try:
            dtype = np.dtype(dtype).name
        except TypeError:
            dtype = str(dtype)
        if dtype not in DTYPES:
            raise InvalidConfigError(f"`dtype` must be one of {DTYPES}. Received: dtype={dtype!r}")
        if seed is None:
            seed = int(np.random.SeedSequence().generate_state(1, np.uint32)[0])
        check_int("seed", seed, minimum=0)
        shape = None if capacity is None else (int(capacity), int(dim))
        return cls(
            name=name,
            dim=int(dim),
            num_shards=int(num_shards),
            key_dtype=key_dtype,
            capacity=None if capacity is None else int(capacity),
            admission=Admission.of(admission),
            eviction=evict,
            initializer=get_initializer(initializer, shape),
            optimizer=get_optimizer(optimizer),
            dtype=dtype,
            seed=int(seed),
        )

    def shard_capacity(self, index: int) -> int | None:
        """Rows shard ``index`` may hold: ``capacity`` split evenly, the first shards one
        row more."""
        if self.capacity is None:
            return None
        base, extra = divmod(self.capacity, self.num_shards)
        return base + (index < extra)

    def slot_bytes_per_row(self) -> int:
        """Bytes of one row plus its optimizer slots."""
        width = self.dim + sum(w for w, _ in self.optimizer.slot_specs(self.dim).values())
        return width * np.dtype(self.dtype).itemsize

    def to_dict(self) -> dict:
        """JSON-ready description (checkpoint manifests, ``get_config``)."""
        init = {f.name: getattr(self.initializer, f.name) for f in dataclasses.fields(Initializer)}
        return {
            "name": self.name,
            "vocab_size": None,
            "dim": self.dim,
            "num_shards": self.num_shards,
            "key_dtype": self.key_dtype,
            "capacity": self.capacity,
            "admission": dataclasses.asdict(self.admission),
            "eviction": self.eviction.to_json(),
            "initializer": init,
            "optimizer": self.optimizer.get_config(),
            "dtype": self.dtype,
            "seed": self.seed,
        }

    @classmethod
    def from_dict(cls, d: dict) -> DynamicConfig:
        args = {k: d[k] for k in ("key_dtype", "capacity", "admission", "eviction", "dtype")}
        return cls.build(
            d["name"],
            d["dim"],
            num_shards=d["num_shards"],
            initializer=d["initializer"],
            optimizer=d["optimizer"],
            seed=d["seed"],
            **args,
        )
