"""Zero-copy reads: co-located shards keep their rows in shared memory and the router
gathers lookups itself, with no Ray call, seeing its own pushes and never a torn row."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest

from shardemb import EmbeddingStore
from shardemb.shard.storage import NumpyStorage
from shardemb.transport.shared_table import JoinedRows, RowReader, SharedRows
from shardemb.transport.shm import SHM_DIR

DIM = 8
VOCAB = 1000


def _table(name, **kw) -> EmbeddingStore:
    """Row ``i`` starts as all ``i``; SGD with learning rate 1 (a push of -c adds c)."""
    store = EmbeddingStore.create(
        name,
        VOCAB,
        DIM,
        num_shards=2,
        seed=0,
        optimizer={"name": "sgd", "learning_rate": 1.0},
        **kw,
    )
    store.set_weights(np.repeat(np.arange(VOCAB, dtype=np.float32)[:, None], DIM, axis=1))
    return store


class _CountingBackend:
    """The store's backend, counting the calls it sends."""

    def __init__(self, backend):
        self._backend, self.calls = backend, []

    def submit(self, handle, method, *args):
        self.calls.append(method)
        return self._backend.submit(handle, method, *args)

    def __getattr__(self, name):
        return getattr(self._backend, name)


def test_lookups_make_no_ray_call_and_see_own_pushes(ray_session, table_name, rng):
    with _table(table_name) as store:
        store.lookup([0])  # probes the channel once
        assert all(t is not None for t in store._channel().tables)
        counting = _CountingBackend(store._backend)
        store._backend = counting
        expect = np.repeat(np.arange(VOCAB, dtype=np.float32)[:, None], DIM, axis=1)
        for _ in range(30):
            ids = rng.integers(0, VOCAB, 64)
            np.testing.assert_array_equal(store.lookup(ids), expect[ids])
            # Read-your-writes: the next lookup sees this push, with no flush.
            store.apply_gradients(ids, -np.ones((64, DIM), np.float32))
            np.add.at(expect, ids, 1.0)
        assert "lookup" not in counting.calls and "lookup_shm" not in counting.calls
        np.testing.assert_array_equal(store.lookup(np.arange(VOCAB)), expect)


def test_no_torn_rows_while_another_handle_pushes(ray_session, table_name):
    with _table(table_name) as reader:
        writer = EmbeddingStore.connect(table_name)
        stop = threading.Event()

        def push_forever():
            ids = np.arange(0, VOCAB, 3)
            while not stop.is_set():
                writer.apply_gradients(ids, -np.ones((ids.size, DIM), np.float32))
            writer.flush()

        thread = threading.Thread(target=push_forever)
        thread.start()
        try:
            reader.lookup([0])
            assert all(t is not None for t in reader._channel().tables)
            assert isinstance(reader._channel()._joined, JoinedRows)  # one gather, 2 shards
            for _ in range(300):
                rows = reader.lookup(np.arange(VOCAB))
                # Each push adds the same value to every column of a row.
                assert (rows == rows[:, :1]).all(), "a row was read while being written"
        finally:
            stop.set()
            thread.join(60)
            writer.close()
        rows = reader.lookup(np.arange(0, VOCAB, 3))
        assert (rows[:, 0] > np.arange(0, VOCAB, 3)).all()  # the writer's pushes landed


def test_rows_are_read_only_from_a_live_shard_that_holds_them():
    storage = NumpyStorage(10, DIM, "float32")
    storage.write(0, np.ones((10, DIM), np.float32))
    shared = SharedRows(storage)  # this process plays the shard
    reader = RowReader(shared.info())
    try:
        shared.set_ready(False)  # a restarted shard that has not loaded its rows
        assert not reader.ready
        shared.set_ready(True)
        assert reader.ready
        storage.scatter(np.array([2]), np.full((1, DIM), 5.0, np.float32))
        np.testing.assert_array_equal(reader.take(np.array([2, 3]))[:, 0], [5.0, 1.0])
        shared.segment.close()  # the shard's lock goes with it, as when it is killed
        assert not reader.ready
    finally:
        reader.close(unlink=True)


def test_closing_the_table_removes_its_shared_rows(ray_session, table_name):
    store = _table(table_name)
    store.lookup([0])
    names = [t.segment.name for t in store._channel().tables]
    assert all(os.path.exists(os.path.join(SHM_DIR, n)) for n in names)
    store.close()
    assert not any(os.path.exists(os.path.join(SHM_DIR, n)) for n in names)


@pytest.mark.parametrize("dim, dtype", [(8, "float32"), (5, "float32"), (3, "float16")])
def test_joined_rows_are_every_shards_rows_in_one_mapping(dim, dtype, rng):
    """Shards of different sizes and rows of any width (not dividing a page) side by side:
    row ``starts[s] + local`` is shard s's row ``local``, and it follows their writes."""
    sizes = [7, 1000, 1, 333]
    shared, readers = [], []
    for n in sizes:
        storage = NumpyStorage(n, dim, dtype)
        storage.write(0, rng.normal(size=(n, dim)).astype(dtype))
        shared.append(SharedRows(storage))
        readers.append(RowReader(shared[-1].info()))
    joined = JoinedRows(readers)
    try:
        for s, n in enumerate(sizes):
            local = rng.integers(0, n, 50)
            np.testing.assert_array_equal(
                joined.take(joined.starts[s] + local), shared[s].storage.gather(local)
            )
        shared[1].storage.scatter(np.array([999]), np.full((1, dim), 7, dtype))
        assert (joined.take(joined.starts[1:2] + 999) == 7).all()
        with pytest.raises(ValueError):
            joined.rows[0, 0] = 1  # read-only
    finally:
        joined.close()
        for r in readers:
            r.close(unlink=True)
    assert joined.rows is None


@pytest.mark.parametrize("partition, shards", [("mod", 3), ("div", 2), ("mod", 4)])
def test_lookups_over_shards_gather_once_and_exactly(ray_session, table_name, partition,
                                                     shards, rng):  # fmt: skip
    with EmbeddingStore.create(table_name, VOCAB, 6, num_shards=shards, partition=partition,
                               seed=1) as store:  # fmt: skip
        full = store.to_numpy()
        ids = rng.integers(0, VOCAB, (40, 3))
        assert store.lookup(ids).tobytes() == full[ids].tobytes()
        assert isinstance(store._channel()._joined, JoinedRows)
        store.apply_gradients(ids, np.ones(ids.shape + (6,), np.float32))
        assert not np.array_equal(store.lookup(ids), full[ids])  # its own push, seen
        assert store.lookup(np.arange(VOCAB)).tobytes() == store.to_numpy().tobytes()
        store._channel()._close_joined()
        store._channel()._joined = False  # where no joined mapping can be made
        assert store.lookup(ids).tobytes() == store.to_numpy()[ids].tobytes()
