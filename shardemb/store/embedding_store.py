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

import functools
import threading
import weakref
from typing import Any

import numpy as np

import shardemb.store.exchange as exchange
from shardemb import checkpoint
from shardemb.core.config import TableConfig, check_group
from shardemb.core.router import Deduplicator, check_dedup, check_grads, check_ids, check_matrix
from shardemb.errors import (
    InvalidConfigError,
    ShardRestartedError,
    ShardUnavailableError,
    TableNotFoundError,
)
from shardemb.store.dynamic_store import dynamic_vocabulary
from shardemb.store.handle import ShardsHandle
from shardemb.store.pending import PendingPushes
from shardemb.store.recovery import recover, report_reloaded
from shardemb.transport.backends import ShardResources, check_timeout, get_backend
from shardemb.transport.channel import ShmChannel, probe_channel
from shardemb.transport.hosts import process_group

__all__ = ["EmbeddingStore"]

#: Ids per lookup request batch: bounds the router's temporary memory on huge calls.
LOOKUP_CHUNK_IDS = 1 << 20


class EmbeddingStore(ShardsHandle):
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
        #: The saved name when restored under a new one: load_shard accepts its checkpoints.
        self.restored_from: str | None = None
        self._backend = backend
        self._handles = handles
        self._owner = owner
        self.timeout = timeout
        self._lock = threading.RLock()
        self._pending = PendingPushes(config.num_shards)
        self._seq: int | None = None  # number of the last push (None: ask the shards)
        self._unreported: set[int] = set()  # shards lost, not reloaded yet (recovery)
        self._dedup = Deduplicator(config.vocab_size)
        self._closed = False
        self._shm: ShmChannel | None = None  # set once probed (self._shm_probed)
        self._shm_probed = False
        self._finalizer: weakref.finalize | None = None  # set for tables that die with us

    # -- construction -----------------------------------------------------------------
    @classmethod
    @dynamic_vocabulary  # vocab_size=None: a DynamicEmbeddingStore (store/dynamic_store.py)
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
        constraint: object = None,
        group: str | None = None,
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
            timeout: seconds (a positive finite number) any call waits for a shard before
                :class:`ShardTimeoutError`; ``None`` waits forever.
            constraint: applied by each shard to the rows a push updates
                (:mod:`shardemb.core.constraints`; a Keras ``NonNeg`` or a row-norm
                constraint with ``axis=1``).
            group: put shard ``i`` into the shared process ``i`` of this group of tables
                instead of an actor of its own (:mod:`shardemb.transport.hosts`): N
                tables then run in ``num_shards`` processes, and a step's pushes to all
                of them cost one call per process (:meth:`apply_gradients_many`). A
                process that dies takes shard ``i`` of every table in it; each recovers
                from its own checkpoint. ``"auto"``: the group of the tables this process
                creates with ``"auto"`` (the Keras layers' default). ``None`` (default):
                actors of its own. Ignored by the in-process backend.
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
            constraint=constraint,
        )
        return cls._start(
            config,
            resources=resources,
            detached=detached,
            backend=backend,
            address=address,
            timeout=timeout,
            group=group,
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
        group=None,
    ) -> EmbeddingStore:
        check_timeout(timeout)  # before any shard starts
        if detached and backend != "ray":
            raise InvalidConfigError("`detached=True` needs backend='ray'.")
        check_group(group)
        if group == "auto":
            group = process_group() if backend == "ray" else None
        be = get_backend(backend, address)
        resources = resources or ShardResources()
        if backend == "ray":
            from shardemb.transport.placement import check_capacity

            check_capacity(config, resources)
        handles = be.create(
            config, resources, detached=detached, initialize=initialize, group=group
        )
        store = cls(
            config, be, handles, owner=True, timeout=timeout, resources=resources, detached=detached
        )
        if not detached:
            # A non-detached table dies with its creator: killed once dropped; at exit, by Ray.
            store._finalizer = weakref.finalize(store, be.kill, config.name, list(handles))
            store._finalizer.atexit = False  # a kill at exit can run after Ray's own shutdown
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
        check_timeout(timeout)
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
        dedup = check_dedup(dedup)
        ids = check_ids(ids, self.config.vocab_size)
        flat = ids.reshape(-1)
        dim, dtype = self.config.dim, self.config.dtype
        with self._lock:
            self._raise_pending()
            if flat.size <= LOOKUP_CHUNK_IDS:
                out = exchange.lookup(self, flat, dedup)
            else:
                out = np.empty((flat.size, dim), dtype=dtype)
                for start in range(0, flat.size, LOOKUP_CHUNK_IDS):
                    chunk = flat[start : start + LOOKUP_CHUNK_IDS]
                    out[start : start + chunk.size] = exchange.lookup(self, chunk, dedup)
        return out.reshape(ids.shape + (dim,))

    def to_numpy(self) -> np.ndarray:
        """The whole table as one ``(vocab_size, dim)`` array (moves every row here)."""
        return self._gather_table("read")

    def _gather_table(self, method: str, *args) -> np.ndarray:
        """A whole per-row array by shard ``method`` (``read``, or ``read_slot`` with a
        slot name), in global row order."""
        with self._lock:
            self._raise_pending()
            return exchange.gather_table(self, method, *args)

    # -- writes -----------------------------------------------------------------------
    def apply_gradients(self, ids: Any, grads: Any, *, allow_nonfinite: bool = False) -> None:
        """Push gradients for ``ids``: rows of duplicate ids are summed, then each shard
        runs one step of its sparse optimizer on its rows.

        Returns before the update is applied; a later call from this process sees it.
        Errors surface at :meth:`flush` or the next call. Invalid ids or gradients (wrong
        shape or dtype, NaN/Inf) raise here and nothing is applied anywhere.
        """
        split, flat_grads = self._checked_push(ids, grads, allow_nonfinite)
        with self._lock:
            self._raise_pending()
            exchange.push(self, split, flat_grads)
            overflow = self._pending.take_overflow()
            if overflow:
                self._settle(overflow)

    def _checked_push(self, ids, grads, allow_nonfinite: bool = False):
        """The checked ``ids`` split by shard, and their gradients as rows."""
        cfg = self.config
        ids = check_ids(ids, cfg.vocab_size)
        grads = check_grads(
            grads, ids.shape, cfg.dim, dtype=cfg.dtype, allow_nonfinite=allow_nonfinite
        )
        return cfg.partition.split(ids.reshape(-1)), grads.reshape(-1, cfg.dim)

    @staticmethod
    def apply_gradients_many(pushes) -> None:
        """Push ``(store, ids, grads)`` for each item of ``pushes`` in one exchange: the
        calls to shards that share a process (tables of one ``group``) travel together,
        one call per process instead of one per table. See :mod:`shardemb.store.fused`."""
        from shardemb.store.fused import apply_gradients_many

        pushes = list(pushes)
        for item in pushes:
            store = item[0] if isinstance(item, tuple | list) and item else None
            if not isinstance(store, EmbeddingStore):
                raise InvalidConfigError(
                    "apply_gradients_many takes (EmbeddingStore, ids, grads) triples; push a "
                    f"dynamic table with its own apply_gradients. Received: {item!r}"[:500]
                )
        apply_gradients_many(pushes)

    def set_weights(self, matrix: Any) -> None:
        """Overwrite every row with ``matrix`` (shape ``(vocab_size, dim)``); optimizer
        slots are kept, as Keras keeps them."""
        cfg = self.config
        arr = check_matrix(matrix, (cfg.vocab_size, cfg.dim), cfg.dtype)
        with self._lock:
            self._raise_pending()
            exchange.write_table(self, arr)

    # -- checkpoints (shardemb.checkpoint) ------------------------------------------------
    def save(self, path: str, *, step: int | None = None, **options) -> dict:
        """Write rows, optimizer slots, step, config and partition to a Zarr v3 checkpoint
        at ``path`` (a folder or an fsspec URL); each shard writes its own rows. ``step``
        is recorded as the training step; ``options`` are ``chunk_rows``,
        ``compression`` (``None``, ``"zstd"``, ``"lz4"``) and ``checksum``. Returns the
        committed manifest. See :mod:`shardemb.checkpoint`."""
        return checkpoint.save_store(self, path, step=step, **options)

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
        return checkpoint.restore_store(
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
        """Per shard: rows, bytes (rows plus slots), storage, device, ``step`` (the number
        of its last push), ``pushes`` (how many), ``loaded``, ``checkpoint`` (Shard.info)."""
        futures = [self._backend.submit(h, "info") for h in self._handles]
        with self._lock:
            return self._get(futures)

    @property
    def backend_name(self) -> str:
        """``"ray"`` or ``"inprocess"``."""
        return self._backend.name

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

    def _let_go(self) -> None:
        self._reset_channel(remove_tables=self._owner)  # an owner's shards are gone

    def _recover(self, err: ShardUnavailableError) -> None:
        """Bring back dead shards (:mod:`.recovery`: one replacement each, loaded once)."""
        recover(self, err, functools.partial(checkpoint.load_shard, self, replace=False))

    def _raise_pending(self) -> None:
        """Raise the error of any push that already finished with one (fire-and-forget
        errors are never only logged)."""
        if self._closed:
            raise TableNotFoundError(f"Table {self.config.name!r} was closed.")
        finished = self._pending.take_finished(self._backend)
        if finished:
            self._settle(finished)
        report_reloaded(self)  # shards this handle failed to reload: loaded by now?

    def _channel(self) -> ShmChannel | None:
        """The shared-memory channel to the shards on this host, probed on first use."""
        if not self._shm_probed:
            self._shm_probed = True
            self._shm = probe_channel(
                self._backend, self._handles, self.config.dim, self.config.dtype, self._get
            )
        return self._shm

    def _reset_channel(self, *, probe_again: bool = True, remove_tables: bool = False) -> None:
        """Close the channel; the next call probes again (unless ``probe_again=False``:
        then this table stays on Ray's transfer). ``remove_tables``: the shards were
        killed, remove their shared rows."""
        if self._shm is not None:
            self._shm.close(remove_tables=remove_tables)
        self._shm, self._shm_probed = None, not probe_again
