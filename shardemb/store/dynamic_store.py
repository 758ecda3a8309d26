"""DynamicEmbeddingStore: an embedding table addressed by keys (any int64, or strings),
that grows as keys arrive, with admission, eviction and visible counters.

``EmbeddingStore.create(name, vocab_size=None, dim=...)`` returns one. Keys are spread over
shards by a stable 64-bit hash (:mod:`shardemb.core.keys`); each shard maps keys to rows
with a vectorized hash map (:class:`~shardemb.shard.dynamic.DynamicShard`). A lookup of a
key without a row returns its initial row (deterministic from ``(seed, key)``, the same
for every shard count) and does not insert it; a push inserts the keys it updates.

Example:
    >>> import numpy as np, shardemb
    >>> store = shardemb.EmbeddingStore.create(
    ...     "doc-dynamic", vocab_size=None, dim=4, key_dtype="string", num_shards=2,
    ...     capacity=1000, eviction="lru", optimizer={"name": "sgd", "learning_rate": 0.5},
    ...     seed=0, backend="inprocess")
    >>> before = store.lookup(["user:ünï", ""])  # unknown keys: initial rows, not stored
    >>> store.apply_gradients(["user:ünï"], np.ones((1, 4), np.float32))
    >>> bool(np.allclose(store.lookup("user:ünï")[0], before[0] - 0.5))
    True
    >>> {k: store.stats()["total"][k] for k in ("rows", "inserts", "unknown_lookups")}
    {'rows': 1, 'inserts': 1, 'unknown_lookups': 2}
    >>> store.close()
"""

from __future__ import annotations

import functools
import threading
import weakref
from typing import Any

import numpy as np

from shardemb.checkpoint import dynamic as dynamic_checkpoint
from shardemb.core.keys import DynamicConfig, check_keys, split_keys
from shardemb.core.router import DEDUP_KEEP_RATIO, check_dedup, check_grads, check_matrix
from shardemb.errors import InvalidConfigError, InvalidIdsError, TableFullError, TableNotFoundError
from shardemb.store.handle import ShardsHandle
from shardemb.store.pending import PendingPushes
from shardemb.transport.backends import ShardResources, check_timeout
from shardemb.transport.dynamic_actor import get_dynamic_backend

__all__ = ["DynamicEmbeddingStore", "dynamic_vocabulary"]

#: Arguments only dynamic tables take.
DYNAMIC_ARGS = ("key_dtype", "capacity", "admission", "eviction")

#: Per-shard counters that add up to the table's.
TOTALS = ("rows", "inserts", "evictions", "admissions_pending", "admissions_rejected",
          "pending_evictions", "unknown_lookups")  # fmt: skip


class DynamicEmbeddingStore(ShardsHandle):
    """A table of ``dim``-wide rows found by key, sharded over Ray actors (or in-process).

    Build one with :meth:`create` (or ``EmbeddingStore.create(..., vocab_size=None)``),
    attach to one with :meth:`connect`, restore one with :meth:`restore`. As for fixed
    tables, calls from one process apply in order, pushes return at once and their errors
    surface at :meth:`flush` or the next call.
    """

    def __init__(
        self,
        config: DynamicConfig,
        backend,
        handles: list,
        *,
        owner: bool,
        timeout: float | None = 300.0,
        resources: ShardResources | None = None,
        detached: bool = False,
    ):
        self.config = config
        self._backend, self._handles, self._owner = backend, handles, owner
        self._resources, self._detached = resources or ShardResources(), detached
        self.timeout = timeout
        #: The latest checkpoint this handle saved or restored from.
        self.last_checkpoint: str | None = None
        #: The saved name when restored under a new one.
        self.restored_from: str | None = None
        self._lock = threading.RLock()
        self._pending = PendingPushes(config.num_shards)
        # Lower bounds of each shard's free rows, for tables that raise when full.
        self._room = [0] * config.num_shards
        self._closed = False
        self._finalizer: weakref.finalize | None = None

    # -- construction -----------------------------------------------------------------
    @classmethod
    def create(
        cls,
        name: str,
        dim: int | None = None,
        *,
        num_shards: int,
        key_dtype: str = "int64",
        capacity: int | None = None,
        admission: dict | None = None,
        eviction: str | dict | None = None,
        initializer: object = "uniform",
        optimizer: object = "sgd",
        dtype: str = "float32",
        seed: int | None = None,
        vocab_size: None = None,
        partition: str = "mod",
        device: str = "cpu",
        storage: str | None = None,
        resources: ShardResources | None = None,
        detached: bool = False,
        backend: str = "ray",
        address: str | None = None,
        timeout: float | None = 300.0,
    ) -> DynamicEmbeddingStore:
        """Create an empty dynamic table of rows of width ``dim`` over ``num_shards``.

        Args:
            key_dtype: ``"int64"`` (any int64 key) or ``"string"`` (``str`` or UTF-8
                ``bytes``, hashed to 64 bits: see :mod:`shardemb.core.keys`).
            capacity: most rows in the table, split evenly over shards (at least one each);
                ``None`` for no bound.
            admission: ``{"min_count": k}``: a key gets its own row on its k-th push (earlier
                pushes only count it); ``"default_row"`` (``"initial"`` or ``"zeros"``) is
                what lookups of keys without a row return.
            eviction: what a full shard frees for new keys (at least 1/64 of its capacity
                at once): ``"lru"``, ``"lfu"``, ``{"ttl_steps": N}``, or ``None`` (a push
                that does not fit raises :class:`~shardemb.TableFullError`, nothing applied).
            initializer, optimizer, dtype, seed, resources, detached, backend, address,
                timeout: as for :meth:`EmbeddingStore.create`. ``vocab_size`` must be
                ``None``; ``partition``, ``device`` and ``storage`` keep their defaults.
        """
        extra = {"key_dtype": key_dtype, "capacity": capacity, "admission": admission}
        if vocab_size is not None:
            raise InvalidConfigError(
                "`key_dtype`, `capacity`, `admission` and `eviction` are for dynamic tables "
                f"(vocab_size=None). Received: vocab_size={vocab_size!r}, "
                + ", ".join(f"{k}={v!r}" for k, v in {**extra, "eviction": eviction}.items())
            )
        if partition != "mod" or device != "cpu" or storage not in (None, "numpy"):
            raise InvalidConfigError(
                "Dynamic tables hash keys to shards and keep numpy rows: `partition`, "
                "`device` and `storage` do not apply. Received: "
                f"partition={partition!r}, device={device!r}, storage={storage!r}"
            )
        config = DynamicConfig.build(
            name, dim, num_shards=num_shards, eviction=eviction, initializer=initializer,
            optimizer=optimizer, dtype=dtype, seed=seed, **extra,
        )  # fmt: skip
        return cls._start(config, resources=resources, detached=detached, backend=backend,
                          address=address, timeout=timeout)  # fmt: skip

    @classmethod
    def _start(
        cls, config, *, resources=None, detached=False, backend="ray", address=None, timeout=300.0
    ) -> DynamicEmbeddingStore:
        check_timeout(timeout)
        if detached and backend != "ray":
            raise InvalidConfigError("`detached=True` needs backend='ray'.")
        be = get_dynamic_backend(backend, address)
        resources = resources or ShardResources()
        handles = be.create(config, resources, detached=detached)
        store = cls(
            config, be, handles, owner=True, timeout=timeout, resources=resources, detached=detached
        )
        if not detached:
            store._finalizer = weakref.finalize(store, be.kill, config.name, list(handles))
            store._finalizer.atexit = False  # a kill at exit can run after Ray's own shutdown
        return store

    @classmethod
    def connect(
        cls, name: str, *, backend: str = "ray", address: str | None = None, timeout=300.0
    ) -> DynamicEmbeddingStore:
        """Attach to the dynamic table ``name`` created by another process."""
        check_timeout(timeout)
        be = get_dynamic_backend(backend, address)
        config, handles, detached = be.attach(name)
        if not isinstance(config, DynamicConfig):
            raise InvalidConfigError(
                f"Table {name!r} has a fixed vocabulary: use EmbeddingStore.connect. "
                f"Received: name={name!r}"
            )
        return cls(config, be, handles, owner=detached, timeout=timeout, detached=detached)

    # -- properties -------------------------------------------------------------------
    name = property(lambda self: self.config.name)
    dim = property(lambda self: self.config.dim)
    num_shards = property(lambda self: self.config.num_shards)
    key_dtype = property(lambda self: self.config.key_dtype, doc="``int64`` or ``string``.")
    capacity = property(lambda self: self.config.capacity)
    vocab_size = property(lambda self: None, doc="Always ``None``: the vocabulary is open.")
    dtype = property(lambda self: np.dtype(self.config.dtype))
    backend_name = property(lambda self: self._backend.name, doc="``ray`` or ``inprocess``.")

    def __repr__(self) -> str:
        c = self.config
        return (f"DynamicEmbeddingStore(name={c.name!r}, dim={c.dim}, key_dtype={c.key_dtype!r}, "
                f"num_shards={c.num_shards}, capacity={c.capacity}, eviction="
                f"{c.eviction.to_json()!r}, backend={self._backend.name!r})")  # fmt: skip

    def hash_keys(self, keys: Any) -> np.ndarray:
        """The int64 keys the table stores for ``keys`` (strings hashed; ints unchanged):
        what :meth:`get_weights` returns."""
        return check_keys(keys, self.config.key_dtype)

    # -- reads ------------------------------------------------------------------------
    def lookup(self, keys: Any, *, insert: bool = False, dedup: bool | str = "auto"):
        """Rows of ``keys`` (any rank), shape ``keys.shape + (dim,)``. Keys without a row
        get their default row (initial, or zeros per ``admission``) and are counted in
        ``unknown_lookups`` (once per key the shards are asked for); with ``insert=True``
        they get rows of their own (no admission). ``dedup`` asks for each distinct key
        once (``"auto"``: when that removes at least 30% of the keys)."""
        dedup = check_dedup(dedup)
        if not isinstance(insert, bool | np.bool_):
            raise InvalidConfigError(f"`insert` must be a bool. Received: insert={insert!r}")
        arr = check_keys(keys, self.config.key_dtype)
        flat = arr.reshape(-1)
        with self._lock:
            self._raise_pending()
            out = self._lookup_flat(flat, bool(insert), dedup)
        return out.reshape(arr.shape + (self.config.dim,))

    def _lookup_flat(self, flat: np.ndarray, insert: bool, dedup) -> np.ndarray:
        cfg = self.config
        if flat.size == 0:
            return np.empty((0, cfg.dim), cfg.dtype)
        inverse = None
        if dedup and flat.size > 1:  # as fixed tables: kept when it removes enough keys
            uniq, inv = np.unique(flat, return_inverse=True)
            if dedup is True or uniq.size <= DEDUP_KEEP_RATIO * flat.size:
                flat, inverse = uniq, inv
        split = split_keys(flat, cfg.num_shards)
        if insert and self._strict:
            self._check_room(split, push=False)
        asked = [s for s in range(cfg.num_shards) if split.bounds[s + 1] > split.bounds[s]]
        answers = self._get([self._backend.submit(self._handles[s], "lookup", split.local_rows(s),
                                                  insert) for s in asked])  # fmt: skip
        grouped = answers[0] if len(answers) == 1 else np.concatenate(answers)
        if cfg.num_shards == 1:
            return grouped if inverse is None else np.take(grouped, inverse, axis=0)
        back = np.empty(flat.size, np.int64)  # where each key's row is in ``grouped``
        back[split.order] = np.arange(flat.size)
        return np.take(grouped, back if inverse is None else back[inverse], axis=0)

    def get_weights(self) -> tuple[np.ndarray, np.ndarray]:
        """``(keys, rows)`` of every key with a row, sorted by key: int64 keys (for string
        tables their 64-bit hashes, see :meth:`hash_keys`) and a ``(n, dim)`` array."""
        with self._lock:
            self._raise_pending()
            parts = self._get([self._backend.submit(h, "export") for h in self._handles])
        keys = np.concatenate([k for k, _ in parts])
        rows = np.concatenate([r for _, r in parts]).reshape(-1, self.config.dim)
        order = np.argsort(keys, kind="stable")
        return keys[order], rows[order]

    def stats(self) -> dict:
        """Counters, ``{"total": {...}, "shards": [{...}, ...]}``: ``rows``, ``capacity``,
        ``inserts`` and ``evictions`` (``inserts - evictions == rows``),
        ``admissions_pending`` (keys counted, not yet admitted), ``admissions_rejected``
        (pushed keys whose gradient was not applied: not yet admitted, or no row could
        be freed), ``pending_evictions`` (pending keys forgotten when their table was
        full), ``unknown_lookups`` (keys looked up without a row), ``step``, and
        ``hash_collisions`` (int64 tables: always 0) or ``hash_collisions_expected``
        (string tables: collisions cannot be detected, this is the expected number)."""
        with self._lock:
            self._raise_pending()
            shards = self._get([self._backend.submit(h, "stats") for h in self._handles])
        total = {k: sum(s[k] for s in shards) for k in TOTALS}
        total["capacity"] = self.config.capacity
        total["step"] = max(s["step"] for s in shards)
        if self.config.key_dtype == "string":
            total["hash_collisions_expected"] = total["rows"] * (total["rows"] - 1) / 2**65
        else:
            total["hash_collisions"] = 0
        return {"total": total, "shards": shards}

    def info(self) -> list[dict]:
        """Per shard: rows, bytes of rows and slots, bytes of the key index, step."""
        with self._lock:
            return self._get([self._backend.submit(h, "info") for h in self._handles])

    # -- writes -----------------------------------------------------------------------
    def apply_gradients(self, keys: Any, grads: Any, *, allow_nonfinite: bool = False) -> None:
        """Push gradients for ``keys``: duplicates are summed, new keys get rows (subject to
        admission and capacity), then each shard runs one step of its sparse optimizer.

        Returns before the update is applied; errors surface at :meth:`flush` or the next
        call. Invalid keys or gradients (shape, dtype, NaN/Inf), and with
        ``eviction=None`` a push that does not fit, raise here and nothing is applied.
        """
        cfg = self.config
        arr = check_keys(keys, cfg.key_dtype)
        grads = check_grads(
            grads, arr.shape, cfg.dim, dtype=cfg.dtype, allow_nonfinite=allow_nonfinite
        )
        flat_grads = grads.reshape(-1, cfg.dim)
        split = split_keys(arr.reshape(-1), cfg.num_shards)
        with self._lock:
            self._raise_pending()
            if self._strict:
                self._check_room(split, push=True)
            for s, handle in enumerate(self._handles):  # every shard steps, also with no key
                pos = split.positions(s)
                g = flat_grads if cfg.num_shards == 1 else flat_grads[pos]
                fut = self._backend.submit(handle, "apply_gradients", split.local_rows(s), g)
                self._pending.append((s, fut))
            overflow = self._pending.take_overflow()
            if overflow:
                self._get(overflow)

    def set_weights(self, keys: Any, rows: Any, *, hashed: bool = False) -> None:
        """Set the rows of distinct ``keys`` (with ``hashed=True`` the int64 keys of
        :meth:`get_weights`, also for string tables). Keys without a row get one (never by
        eviction: :class:`~shardemb.TableFullError` if there is no room, nothing written);
        other rows, and the slots of known keys, are kept."""
        cfg = self.config
        flat = check_keys(keys, "int64" if hashed else cfg.key_dtype).reshape(-1)
        if np.unique(flat).size != flat.size:
            raise InvalidIdsError(f"`keys` must be distinct. Received: {flat.size} keys with "
                                  f"{flat.size - np.unique(flat).size} repeats")  # fmt: skip
        values = check_matrix(rows, (flat.size, cfg.dim), cfg.dtype)
        split = split_keys(flat, cfg.num_shards)
        with self._lock:
            self._raise_pending()
            if cfg.capacity is not None:
                self._check_room(split, push=False, force=True)
            asked = [s for s in range(cfg.num_shards) if split.bounds[s + 1] > split.bounds[s]]
            rows_of = [(self._handles[s], split.local_rows(s), values[split.positions(s)])
                       for s in asked]  # fmt: skip
            self._get([self._backend.submit(h, "write_rows", k, v) for h, k, v in rows_of])

    @property
    def _strict(self) -> bool:
        return self.config.capacity is not None and self.config.eviction.kind is None

    def _check_room(self, split, *, push: bool, force: bool = False) -> None:
        """Refuse, before any shard changes, a call that does not fit a full shard. Shards
        are asked only once the known lower bound of their free rows runs out."""
        asks = []
        for s in range(self.config.num_shards):
            n = int(split.bounds[s + 1] - split.bounds[s])
            if n and (force or n > self._room[s]):
                asks.append(s)
            else:
                self._room[s] -= n
        answers = self._get([self._backend.submit(self._handles[s], "room", split.local_rows(s),
                                                  push) for s in asks])  # fmt: skip
        for s, (free, need) in zip(asks, answers, strict=True):
            self._room[s] = int(free - need) if need <= free else 0
            if need > free:
                cfg = self.config
                raise TableFullError(
                    f"Table {cfg.name!r} is full: shard {s} has {int(free)} free row(s) of "
                    f"{cfg.shard_capacity(s)} (capacity={cfg.capacity} over {cfg.num_shards} "
                    f"shard(s)) and this {'push' if push else 'call'} needs {need} new "
                    "row(s); nothing was applied. Create the table with eviction='lru', "
                    "'lfu' or {'ttl_steps': N} to free rows, or with a larger capacity."
                )

    # -- checkpoints (shardemb.checkpoint.dynamic) --------------------------------------
    def save(self, path: str, *, step: int | None = None, **options) -> dict:
        """Write keys, rows, optimizer slots, per-key counts and steps, pending admission
        counts and counters to a Zarr v3 checkpoint at ``path``; ``options`` are
        ``chunk_rows``, ``compression`` and ``checksum``. Returns the manifest."""
        return dynamic_checkpoint.save_dynamic(self, path, step=step, **options)

    @classmethod
    def restore(
        cls, path: str, *, name=None, num_shards=None, capacity=None, **runtime
    ) -> DynamicEmbeddingStore:
        """Rebuild the table saved at ``path`` on any number of shards (keys are rehashed);
        ``name``, ``num_shards`` and ``capacity`` default to the saved ones, ``runtime``
        are :meth:`create`'s ``backend``, ``address``, ``resources``, ``detached``,
        ``timeout``. Training continues bit for bit."""
        return dynamic_checkpoint.restore_dynamic(
            path, name=name, num_shards=num_shards, capacity=capacity, **runtime
        )

    # -- internals --------------------------------------------------------------------
    def _get(self, futures: list) -> list:
        """Values of ``futures``; shard errors re-raised. A dead shard raises
        :class:`~shardemb.ShardUnavailableError` (dynamic tables are not restarted)."""
        if self._closed:
            raise TableNotFoundError(f"Table {self.config.name!r} was closed.")
        return self._backend.get(futures, timeout=self.timeout)

    def _raise_pending(self) -> None:
        """Raise the error of any push that already finished with one."""
        self._get(self._pending.take_finished(self._backend) if not self._closed else [])


def dynamic_vocabulary(create):
    """Decorates ``EmbeddingStore.create``: with ``vocab_size=None`` (or any of
    :data:`DYNAMIC_ARGS`) it returns :meth:`DynamicEmbeddingStore.create`'s table."""

    @functools.wraps(create)
    def create_any(cls, name, vocab_size=None, dim=None, **kwargs):
        dynamic = {k: kwargs.pop(k) for k in DYNAMIC_ARGS if k in kwargs}
        if vocab_size is None or dynamic:
            return DynamicEmbeddingStore.create(name, dim, vocab_size=vocab_size, **dynamic,
                                                **kwargs)  # fmt: skip
        return create(cls, name, vocab_size, dim, **kwargs)

    create_any.__doc__ = (create.__doc__ or "").rstrip() + DYNAMIC_DOC
    return create_any


DYNAMIC_DOC = """

        ``vocab_size=None`` makes a table of keys instead, a :class:`DynamicEmbeddingStore`:
        see :meth:`DynamicEmbeddingStore.create` (``key_dtype``, ``capacity``, ...).
        """
