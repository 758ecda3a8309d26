"""EmbeddingStore: a table partitioned by row over shard actors, and its router.

Example:
    >>> import numpy as np, shardemb
    >>> store = shardemb.EmbeddingStore.create("doc-items", 1000, 8, num_shards=2,
    ...                                        optimizer={"name": "sgd", "learning_rate": 0.5},
    ...                                        seed=0, backend="inprocess")
    >>> before = store.lookup([7, 7])
    >>> store.apply_gradients([7, 7], np.ones((2, 8), np.float32))
    >>> after = store.lookup(7)
    >>> bool(np.allclose(after, before[0] - 0.5 * 2))
    True
    >>> store.close()
"""

from __future__ import annotations

import collections
import os
import threading
import weakref
from typing import Any

import numpy as np

from shardemb.transport.backends import ShardResources, get_backend
from shardemb.core.config import TableConfig
from shardemb.errors import (
    InvalidConfigError,
    ShardRestartedError,
    ShardUnavailableError,
    TableNotFoundError,
)
from shardemb.core.router import Deduplicator, assemble, check_grads, check_ids, plan_lookup
from shardemb.transport.shm import SharedBuffer, shm_available

__all__ = ["EmbeddingStore"]

#: Ids per lookup request batch: bounds the router's temporary memory on huge calls.
LOOKUP_CHUNK_IDS = 1 << 20
#: Rows per block when the whole table moves (to_numpy, set_weights).
BLOCK_ROWS = 1 << 20
#: Pushes in flight per shard before apply_gradients waits (backpressure).
MAX_PENDING_PER_SHARD = 16


class EmbeddingStore:
    """A ``vocab_size x dim`` embedding table sharded by row over Ray actors.

    Build one with :meth:`create`, attach to an existing one with :meth:`connect`, or
    restore one from a checkpoint with :meth:`restore`. Calls from one process are applied
    in the order they are made (read-your-writes); pushes return at once and their errors
    surface at :meth:`flush` or the next call.
    """

    def __init__(
        self,
        config: TableConfig,
        backend,
        handles: list,
        *,
        owner: bool,
        timeout: float = 300.0,
        resources: ShardResources | None = None,
        detached: bool = False,
    ):
        self.config = config
        self._resources = resources or ShardResources()
        self._detached = detached
        #: Path of the latest checkpoint this handle saved or restored from: a shard that
        #: dies is restarted from it.
        self.last_checkpoint: str | None = None
        self._backend = backend
        self._handles = handles
        self._owner = owner
        self.timeout = timeout
        self._lock = threading.RLock()
        self._pending: collections.deque = collections.deque()  # (shard, future) of pushes
        self._dedup = Deduplicator(config.vocab_size)
        self._closed = False
        self._shm: _ShmChannel | None | bool = False  # False: not probed yet
        self._finalizer: weakref.finalize | None = None  # set for tables that die with us

    # -- construction -----------------------------------------------------------------
    @classmethod
    def create(
        cls,
        name: str,
        vocab_size: int,
        dim: int,
        *,
        num_shards: int,
        partition: str = "mod",
        initializer: object = "uniform",
        optimizer: object = "sgd",
        dtype: str = "float32",
        seed: int | None = None,
        device: str = "cpu",
        storage: str | None = None,
        resources: ShardResources | None = None,
        detached: bool = False,
        backend: str = "ray",
        address: str | None = None,
        timeout: float = 300.0,
    ) -> EmbeddingStore:
        """Create a table of ``vocab_size`` rows of width ``dim`` over ``num_shards`` shards.

        Args:
            name: unique table name on the cluster (letters, digits, ``_.-``).
            vocab_size, dim, num_shards: positive integers, ``num_shards <= vocab_size``.
            partition: ``"mod"`` (row r on shard r % N) or ``"div"`` (contiguous ranges).
            initializer: ``"uniform"`` (Keras's default range), ``"normal"``,
                ``"truncated_normal"``, ``"zeros"``, a dict, or a Keras initializer.
            optimizer: ``"sgd"``, ``"adagrad"``, ``"rowwise_adagrad"``, ``"adam"``,
                ``"ftrl"``, a dict such as ``{"name": "adam", "learning_rate": 0.01}``, a
                :class:`shardemb.core.optimizers.SparseOptimizer`, or a Keras optimizer.
            dtype: ``"float32"`` (default), ``"float16"`` or ``"float64"``.
            seed: initializer seed; the same seed gives the same table for any shard
                count and partition. ``None`` draws one.
            device: ``"cpu"`` (numpy rows) or ``"gpu"`` (TensorFlow rows in the shard's GPU
                memory; each shard actor gets a GPU).
            storage: ``"numpy"`` or ``"tensorflow"`` (defaults from ``device``).
            resources: per-shard CPUs, GPUs, memory and spreading (:class:`ShardResources`).
            detached: shards outlive this process until :meth:`close` (Ray only).
            backend: ``"ray"`` (default) or ``"inprocess"`` (no Ray, same process).
            address: Ray cluster address; default ``RAY_ADDRESS`` or a local runtime
                started here (if no ``ray.init`` was called).
            timeout: seconds any call waits for a shard before :class:`ShardTimeoutError`.
        """
        config = TableConfig.build(
            name,
            vocab_size,
            dim,
            num_shards=num_shards,
            partition=partition,
            initializer=initializer,
            optimizer=optimizer,
            dtype=dtype,
            seed=seed,
            device=device,
            storage=storage,
        )
        return cls._start(
            config,
            resources=resources,
            detached=detached,
            backend=backend,
            address=address,
            timeout=timeout,
        )

    @classmethod
    def _start(
        cls,
        config: TableConfig,
        *,
        resources=None,
        detached=False,
        backend="ray",
        address=None,
        timeout=300.0,
        initialize=True,
    ) -> EmbeddingStore:
        if detached and backend != "ray":
            raise InvalidConfigError("`detached=True` needs backend='ray'.")
        be = get_backend(backend, address)
        resources = resources or ShardResources()
        if backend == "ray":
            from shardemb.transport.placement import check_capacity

            check_capacity(config, resources)
        handles = be.create(config, resources, detached=detached, initialize=initialize)
        store = cls(
            config, be, handles, owner=True, timeout=timeout, resources=resources, detached=detached
        )
        if not detached:
            # A non-detached table dies with its creator: make that explicit and prompt.
            store._finalizer = weakref.finalize(store, be.kill, config.name, list(handles))
        return store

    @classmethod
    def connect(
        cls, name: str, *, backend: str = "ray", address: str | None = None, timeout: float = 300.0
    ) -> EmbeddingStore:
        """Attach to the table ``name`` created by another process on the same cluster.

        Example:
            >>> import shardemb
            >>> s = shardemb.EmbeddingStore.create("doc-shared", 10, 2, num_shards=1,
            ...                                    backend="inprocess")
            >>> shardemb.EmbeddingStore.connect("doc-shared", backend="inprocess").dim
            2
            >>> s.close()
        """
        be = get_backend(backend, address)
        config, handles, detached = be.attach(name)
        # A detached table has no owning process: whoever closes it removes it.
        return cls(config, be, handles, owner=detached, timeout=timeout, detached=detached)

    # -- properties -------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.config.name

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def dim(self) -> int:
        return self.config.dim

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.config.dtype)

    @property
    def num_shards(self) -> int:
        return self.config.num_shards

    @property
    def shape(self) -> tuple[int, int]:
        return (self.config.vocab_size, self.config.dim)

    def shard_sizes(self) -> list[int]:
        """Rows held by each shard."""
        return self.config.partition.shard_sizes().tolist()

    def __repr__(self) -> str:
        cfg = self.config
        return (
            f"EmbeddingStore(name={cfg.name!r}, vocab_size={cfg.vocab_size}, dim={cfg.dim}, "
            f"num_shards={cfg.num_shards}, partition={cfg.partition.kind!r}, "
            f"optimizer={cfg.optimizer.name!r}, backend={self._backend.name!r})"
        )

    # -- reads ------------------------------------------------------------------------
    def lookup(self, ids: Any, *, dedup: bool | str = "auto") -> np.ndarray:
        """Rows of ``ids`` (integers of any rank), shape ``ids.shape + (dim,)``.

        ``dedup`` fetches each distinct id once (``"auto"``: when that pays, i.e. the
        batch is skewed; ``True``/``False`` force it).
        """
        ids = check_ids(ids, self.config.vocab_size)
        flat = ids.reshape(-1)
        dim, dtype = self.config.dim, self.config.dtype
        with self._lock:
            self._raise_pending()
            if flat.size <= LOOKUP_CHUNK_IDS:
                out = self._lookup_flat(flat, dedup)
            else:
                out = np.empty((flat.size, dim), dtype=dtype)
                for start in range(0, flat.size, LOOKUP_CHUNK_IDS):
                    chunk = flat[start : start + LOOKUP_CHUNK_IDS]
                    out[start : start + chunk.size] = self._lookup_flat(chunk, dedup)
        return out.reshape(ids.shape + (dim,))

    def _lookup_flat(self, flat: np.ndarray, dedup) -> np.ndarray:
        cfg = self.config
        if flat.size == 0:
            return np.empty((0, cfg.dim), dtype=cfg.dtype)
        plan = plan_lookup(flat, cfg.partition, dedup=dedup, deduplicator=self._dedup)
        split = plan.split
        n = split.local.size
        channel = self._channel()
        if channel is None:
            asked = [s for s in range(cfg.num_shards) if split.bounds[s + 1] > split.bounds[s]]
            futures = [
                self._backend.submit(self._handles[s], "lookup", split.local_rows(s)) for s in asked
            ]
            answers = self._get(futures)
            grouped = answers[0] if len(answers) == 1 else np.concatenate(answers)
            return assemble(plan, grouped)
        # Shards write each row straight to its final place in shared memory: at its
        # asked position, or for a deduplicated plan at its grouped position.
        buf = channel.lookup
        buf.reserve(n)
        buf.ids(n)[:] = split.local
        dest = split.order if plan.inverse is None else np.arange(n)
        buf.pos(n)[:] = dest
        futures, remote = [], []
        for s in range(cfg.num_shards):
            a, b = int(split.bounds[s]), int(split.bounds[s + 1])
            if a == b:
                continue
            if channel.local[s]:
                method, args = "lookup_shm", (buf.names, a, b)
            else:
                method, args = "lookup", (split.local_rows(s),)
                remote.append((len(futures), a, b))
            futures.append(self._backend.submit(self._handles[s], method, *args))
        answers = self._get(futures)
        placed = buf.rows(n)
        for i, a, b in remote:
            placed[dest[a:b]] = answers[i]
        if plan.inverse is not None:
            return np.take(placed, plan.inverse, axis=0)
        return placed.copy()

    def to_numpy(self) -> np.ndarray:
        """The whole table as one ``(vocab_size, dim)`` array (moves every row here)."""
        return self._gather_table("read")

    def _gather_table(self, method: str, *args) -> np.ndarray:
        """A whole per-row array gathered from every shard by ``method`` (``read``, or
        ``read_slot`` with a slot name), in global row order."""
        cfg = self.config
        part = cfg.partition
        # A slot may be narrower than a row (row-wise Adagrad keeps one value per row).
        width = cfg.optimizer.slot_specs(cfg.dim)[args[0]][0] if method == "read_slot" else cfg.dim
        out = np.empty((cfg.vocab_size, width), dtype=cfg.dtype)
        sizes = part.shard_sizes()
        with self._lock:
            self._raise_pending()
            for start in range(0, int(sizes.max()), BLOCK_ROWS):
                futures, shards = [], []
                for s, size in enumerate(sizes):
                    if start < size:
                        stop = min(start + BLOCK_ROWS, int(size))
                        futures.append(
                            self._backend.submit(self._handles[s], method, *args, start, stop)
                        )
                        shards.append((s, start, stop))
                for (s, a, b), block in zip(shards, self._get(futures), strict=True):
                    out[_global_slice(part, s, a, b)] = block
        return out

    # -- writes -----------------------------------------------------------------------
    def apply_gradients(self, ids: Any, grads: Any, *, allow_nonfinite: bool = False) -> None:
        """Push gradients for ``ids``: rows of duplicate ids are summed, then each shard
        runs one step of its sparse optimizer on its rows.

        Returns before the update is applied; a later call from this process sees it.
        Errors surface at :meth:`flush` or the next call. Invalid ids or gradients (wrong
        shape or dtype, NaN/Inf) raise here and nothing is applied anywhere.
        """
        ids = check_ids(ids, self.config.vocab_size)
        grads = check_grads(grads, ids.shape, self.config.dim, allow_nonfinite=allow_nonfinite)
        flat = ids.reshape(-1)
        flat_grads = grads.reshape(-1, self.config.dim).astype(self.config.dtype, copy=False)
        split = self.config.partition.split(flat)
        with self._lock:
            self._raise_pending()
            channel = self._channel()
            if channel is not None:
                buf = channel.next_push(self._backend, self.timeout)
                buf.reserve(split.local.size)
                buf.ids(split.local.size)[:] = split.local
                np.take(
                    flat_grads, split.order, axis=0, out=buf.rows(split.local.size), mode="clip"
                )
            # Every shard gets the call, also with no rows, so all agree on the step count.
            for s, handle in enumerate(self._handles):
                if channel is not None and channel.local[s]:
                    a, b = int(split.bounds[s]), int(split.bounds[s + 1])
                    fut = self._backend.submit(
                        handle, "apply_gradients_shm", buf.ids_name, buf.rows_name, a, b
                    )
                    buf.futures.append(fut)
                else:
                    fut = self._backend.submit(
                        handle,
                        "apply_gradients",
                        split.local_rows(s),
                        flat_grads[split.positions(s)],
                    )
                self._pending.append((s, fut))
            self._bound_pending()

    def set_weights(self, matrix: Any) -> None:
        """Overwrite every row with ``matrix`` (shape ``(vocab_size, dim)``); optimizer
        slots are kept, as Keras keeps them."""
        cfg = self.config
        arr = np.asarray(matrix)
        if arr.shape != (cfg.vocab_size, cfg.dim) or arr.dtype.kind not in "fiu":
            raise InvalidConfigError(
                f"`matrix` must be a numeric array of shape {(cfg.vocab_size, cfg.dim)}. "
                f"Received: shape={arr.shape}, dtype={arr.dtype}"
            )
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise InvalidConfigError("`matrix` holds NaN or Inf; the table was left unchanged.")
        part = cfg.partition
        sizes = part.shard_sizes()
        with self._lock:
            self._raise_pending()
            for start in range(0, int(sizes.max()), BLOCK_ROWS):
                futures = []
                for s, size in enumerate(sizes):
                    if start < size:
                        stop = min(start + BLOCK_ROWS, int(size))
                        block = np.ascontiguousarray(arr[_global_slice(part, s, start, stop)])
                        futures.append(
                            self._backend.submit(
                                self._handles[s], "write_rows", start, block.astype(cfg.dtype)
                            )
                        )
                self._get(futures)

    def flush(self) -> None:
        """Wait until every push made so far is applied; raise the first shard error."""
        with self._lock:
            pending, self._pending = list(self._pending), collections.deque()
            self._get([f for _, f in pending])

    # -- checkpoints (shardemb.checkpoint) ------------------------------------------------
    def save(self, path: str, *, step: int | None = None, **options) -> dict:
        """Write rows, optimizer slots, step, config and partition to a Zarr v3 checkpoint
        at ``path`` (a folder or an fsspec URL); each shard writes its own rows. ``step``
        is recorded as the training step; ``options`` are ``chunk_rows``,
        ``compression`` (``None``, ``"zstd"``, ``"lz4"``) and ``checksum``. Returns the
        committed manifest. See :mod:`shardemb.checkpoint`."""
        from shardemb.checkpoint import save_store

        return save_store(self, path, step=step, **options)

    @classmethod
    def restore(
        cls,
        path: str,
        *,
        name: str | None = None,
        num_shards: int | None = None,
        partition: str | None = None,
        **create_kwargs,
    ) -> EmbeddingStore:
        """Rebuild a table from the checkpoint at ``path``, on any number of shards and
        either partition (``name``, ``num_shards``, ``partition`` default to the saved
        ones). ``create_kwargs`` are :meth:`create`'s runtime arguments (``backend``,
        ``address``, ``resources``, ``detached``, ``timeout``)."""
        from shardemb.checkpoint import restore_store

        return restore_store(
            path, name=name, num_shards=num_shards, partition=partition, **create_kwargs
        )

    # -- cluster ----------------------------------------------------------------------
    def placement(self) -> list[dict]:
        """For each shard: its index, row count and the node (and process) holding it."""
        with self._lock:
            nodes = self._backend.node_of(self._handles)
        sizes = self.shard_sizes()
        return [{"shard": i, "rows": sizes[i], **n} for i, n in enumerate(nodes)]

    def info(self) -> list[dict]:
        """Per shard: rows, bytes (rows plus slots), step, storage and device."""
        futures = [self._backend.submit(h, "info") for h in self._handles]
        with self._lock:
            return self._get(futures)

    def shard_call(self, fn, *args) -> list:
        """Run ``fn(shard, *args)`` on every shard (a module-level function) and return
        the results in shard order. Pending pushes are applied first."""
        with self._lock:
            self._raise_pending()
            return self._get([self._backend.submit(h, "call", fn, *args) for h in self._handles])

    def close(self) -> None:
        """Apply pending pushes, then remove the table's shards if this handle owns them:
        it created the table, or the table is detached (it belongs to nobody, so closing
        any handle to it removes it). A handle from :meth:`connect` to a table another
        process owns only lets go. Closing twice is harmless."""
        if self._closed:
            return
        with self._lock:
            try:
                self.flush()
            finally:
                self._closed = True
                if self._owner:
                    self._backend.kill(self.config.name, self._handles)
                if self._shm:
                    self._shm.close()
                if self._finalizer is not None:
                    self._finalizer.detach()

    def __enter__(self) -> EmbeddingStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- internals --------------------------------------------------------------------
    def _get(self, futures: list) -> list:
        if self._closed:
            raise TableNotFoundError(f"Table {self.config.name!r} was closed.")
        try:
            return self._backend.get(futures, timeout=self.timeout)
        except ShardRestartedError:
            raise
        except ShardUnavailableError as err:
            self._recover(err)  # always raises
            raise

    def _recover(self, err: ShardUnavailableError) -> None:
        """Find the dead shards; restart them from :attr:`last_checkpoint` if there is one
        (raising :class:`ShardRestartedError`), else raise naming them."""
        alive = self._backend.alive(self._handles)
        dead = [i for i, ok in enumerate(alive) if not ok]
        if not dead:
            raise err
        # Pushes to dead shards are lost; those to live shards are still applied by them.
        self._pending = collections.deque((s, f) for s, f in self._pending if s not in dead)
        name = self.config.name
        if self.last_checkpoint is None:
            raise ShardUnavailableError(
                f"Shard(s) {dead} of table {name!r} died and there is no checkpoint to "
                "restart them from (save one with store.save or a CheckpointManager). "
                f"Cause: {err}"
            ) from err
        from shardemb.checkpoint import load_shard

        # The restarted shard keeps the table's step (all shards count every push, and a
        # save needs them to agree); its rows and slots go back to the checkpoint's.
        live = next(i for i, ok in enumerate(alive) if ok) if len(dead) < len(alive) else None
        table_step = (
            self._get([self._backend.submit(self._handles[live], "info")])[0]["step"]
            if live is not None
            else None
        )
        step = None
        for i in dead:
            self._handles[i] = self._backend.restart(
                self.config, i, self._resources, self._detached
            )
            step = load_shard(self, i, self.last_checkpoint, step=table_step)
        if self._shm:
            self._shm.close()
        self._shm = False  # probe again: a restarted shard may run elsewhere
        raise ShardRestartedError(
            f"Shard(s) {dead} of table {name!r} died and were restarted from the checkpoint "
            f"{self.last_checkpoint!r} (step {step}). Pushes applied to them since that "
            "checkpoint were lost; the other shards are untouched."
        ) from err

    def _raise_pending(self) -> None:
        """Raise the error of any push that already finished with one (fire-and-forget
        errors are never only logged)."""
        if self._closed:
            raise TableNotFoundError(f"Table {self.config.name!r} was closed.")
        if self._pending:
            done, _ = self._backend.done([f for _, f in self._pending])
            if done:
                done_ids = set(map(id, done))
                finished = [f for _, f in self._pending if id(f) in done_ids]
                self._pending = collections.deque(
                    (s, f) for s, f in self._pending if id(f) not in done_ids
                )
                self._get(finished)

    def _channel(self) -> _ShmChannel | None:
        """The shared-memory channel to the shards on this host, probed on first use."""
        if self._shm is False:
            self._shm = None
            if self._backend.name == "ray" and shm_available():
                probe = SharedBuffer.create(16)
                try:
                    token = os.urandom(16)
                    probe.array(np.uint8, (16,))[:] = np.frombuffer(token, np.uint8)
                    seen = self._get(
                        [self._backend.submit(h, "probe_shm", probe.name) for h in self._handles]
                    )
                finally:
                    probe.close()
                local = [t == token for t in seen]
                if any(local):
                    self._shm = _ShmChannel(self.config.dim, self.config.dtype, local)
        return self._shm

    def _bound_pending(self) -> None:
        limit = MAX_PENDING_PER_SHARD * self.config.num_shards
        if len(self._pending) > limit:
            oldest = [self._pending.popleft()[1] for _ in range(len(self._pending) - limit // 2)]
            self._get(oldest)


class _Buffers:
    """Ids, positions and rows buffers in shared memory, grown on demand."""

    def __init__(self, dim: int, dtype: str):
        self.dim, self.dtype = dim, np.dtype(dtype)
        self.capacity = 0
        self._ids: SharedBuffer | None = None
        self._pos: SharedBuffer | None = None
        self._rows: SharedBuffer | None = None
        self.futures: list = []  # pushes still reading these buffers

    @property
    def ids_name(self) -> str:
        return self._ids.name

    @property
    def rows_name(self) -> str:
        return self._rows.name

    @property
    def names(self) -> tuple[str, str, str]:
        return (self._ids.name, self._pos.name, self._rows.name)

    def reserve(self, n: int) -> None:
        if n <= self.capacity:
            return
        self.close()
        # Grow geometrically: shards map each new buffer once.
        self.capacity = max(n, 2 * self.capacity, 4096)
        self._ids = SharedBuffer.create(self.capacity * 8)
        self._pos = SharedBuffer.create(self.capacity * 8)
        self._rows = SharedBuffer.create(self.capacity * self.dim * self.dtype.itemsize)

    def ids(self, n: int) -> np.ndarray:
        return self._ids.array(np.int64, (n,))

    def pos(self, n: int) -> np.ndarray:
        return self._pos.array(np.int64, (n,))

    def rows(self, n: int) -> np.ndarray:
        return self._rows.array(self.dtype, (n, self.dim))

    def close(self) -> None:
        for buf in (self._ids, self._pos, self._rows):
            if buf is not None:
                buf.close()
        self._ids = self._pos = self._rows = None
        self.capacity = 0


class _ShmChannel:
    """Buffers for lookups and a ring of buffers for pushes in flight."""

    PUSH_RING = 4

    def __init__(self, dim: int, dtype: str, local: list[bool]):
        self.local = local
        self.lookup = _Buffers(dim, dtype)
        self.pushes = [_Buffers(dim, dtype) for _ in range(self.PUSH_RING)]
        self._next = 0

    def next_push(self, backend, timeout: float) -> _Buffers:
        """The next push buffer, once the shards have finished reading it (backpressure).
        Errors of those pushes are left to the store's pending queue."""
        buf = self.pushes[self._next]
        self._next = (self._next + 1) % len(self.pushes)
        if buf.futures:
            backend.wait(buf.futures, timeout)
            buf.futures = []
        return buf

    def close(self) -> None:
        for buf in (self.lookup, *self.pushes):
            buf.close()


def _global_slice(part, shard: int, start: int, stop: int):
    """Global rows of local rows ``[start, stop)`` of ``shard`` as a slice (no copy)."""
    if part.kind == "mod":
        n = part.num_shards
        return slice(start * n + shard, (stop - 1) * n + shard + 1, n)
    base = int(part.shard_starts()[shard])
    return slice(base + start, base + stop)
