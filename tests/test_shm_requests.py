"""Requests through shared memory: a timed-out lookup never writes into a later one, and
the buffers of both sides are let go once the router has retired them."""

from __future__ import annotations

import os
import signal
import threading

import numpy as np
import psutil
import pytest

from shardemb import EmbeddingStore
from shardemb.errors import ShardTimeoutError

DIM = 4
VOCAB = 64


def _table(name, **kw) -> EmbeddingStore:
    """Two shards (mod partition: even ids on shard 0, odd on shard 1); row ``i`` is all ``i``."""
    store = EmbeddingStore.create(name, VOCAB, DIM, num_shards=2, seed=0, **kw)
    store.set_weights(np.repeat(np.arange(VOCAB, dtype=np.float32)[:, None], DIM, axis=1))
    return store


def _expected(ids) -> np.ndarray:
    return np.repeat(np.asarray(ids, np.float32)[:, None], DIM, axis=1)


def _shard_call(store, index, method, *args):
    return store._get([store._backend.submit(store._handles[index], method, *args)])[0]


def _request_path(store):
    """Lookups through the request buffers (the path of shards whose rows are not in
    shared memory, e.g. on a GPU), not the shared-rows reads."""
    channel = store._channel()
    channel.tables[:] = [None] * len(channel.tables)
    return channel


def test_a_timed_out_lookup_does_not_write_into_the_next_one(ray_session, table_name):
    with _table(table_name) as store:
        _request_path(store)
        np.testing.assert_array_equal(store.lookup([0, 1]), _expected([0, 1]))
        assert store._channel() is not None and all(store._channel().local)
        pid = store.placement()[1]["pid"]
        slow = np.arange(1, 17, 2)  # 8 odd ids: all on shard 1, at request slots [0, 8)
        os.kill(pid, signal.SIGSTOP)
        resumed = threading.Timer(2.0, os.kill, (pid, signal.SIGCONT))
        try:
            store.timeout = 0.5
            with pytest.raises(ShardTimeoutError):
                store.lookup(slow)  # still queued on the stopped shard 1
            # The next lookup's first 8 slots hold shard 0's ids; the late request of
            # shard 1 runs first once it resumes, while shard 0 has answered already.
            store.timeout = 60.0
            nxt = np.concatenate([np.arange(0, 32, 2), [33]])
            resumed.start()
            rows = store.lookup(nxt)
        finally:
            resumed.cancel()
            os.kill(pid, signal.SIGCONT)
        np.testing.assert_array_equal(rows, _expected(nxt))
        again = np.arange(VOCAB)[::-1]
        np.testing.assert_array_equal(store.lookup(again), _expected(again))


def test_the_router_shrinks_after_a_spike_and_shards_drop_retired_buffers(ray_session, table_name):
    with _table(table_name) as store:
        _request_path(store)
        big = np.tile(np.arange(VOCAB), 50_000 // VOCAB + 1)[:50_000]
        np.testing.assert_array_equal(store.lookup(big, dedup=False), _expected(big))
        buf = store._channel().lookup
        spike = buf.capacity
        assert spike >= 50_000
        spike_names = set(buf.names)
        small = np.arange(10)
        for _ in range(20):
            np.testing.assert_array_equal(store.lookup(small), _expected(small))
        assert buf.capacity < spike and buf.capacity <= 16_384
        assert not spike_names & set(buf.names)
        for s in range(2):
            cached = set(_shard_call(store, s, "shm_cache_info")["names"])
            assert not cached & spike_names, f"shard {s} still maps a retired buffer"
            assert cached <= set(buf.names)


def test_a_closed_client_leaves_no_mapping_in_the_shards(ray_session, table_name):
    with _table(table_name) as store:
        pids = [p["pid"] for p in store.placement()]
        if not os.path.exists(f"/proc/{pids[0]}/maps"):
            pytest.skip("no /proc/<pid>/maps on this system")
        client = EmbeddingStore.connect(table_name)
        ids = np.arange(VOCAB)
        np.testing.assert_array_equal(client.lookup(ids), _expected(ids))
        client.apply_gradients(ids, np.zeros((VOCAB, DIM), np.float32))
        client.flush()
        channel = client._channel()
        assert channel is not None
        names = {n for b in (channel.lookup, *channel.pushes) if b.capacity for n in b.names}
        assert names
        maps = [open(f"/proc/{pid}/maps").read() for pid in pids]
        assert any(n in m for n in names for m in maps)  # the shards map them now
        client.close()
        for s, pid in enumerate(pids):
            assert psutil.pid_exists(pid)  # the table lives on: only the client let go
            held = [n for n in names if n in open(f"/proc/{pid}/maps").read()]
            assert not held, f"shard {s} still maps {held}"
            assert not set(_shard_call(store, s, "shm_cache_info")["names"]) & names
        np.testing.assert_array_equal(store.lookup(ids), _expected(ids))


class _LocalShard:
    """A shard with the shared-memory endpoint, in this process (no Ray)."""

    def __new__(cls, name):
        from shardemb.core.config import TableConfig
        from shardemb.shard.shard import Shard
        from shardemb.transport.endpoint import SharedMemoryEndpoint

        class Local(SharedMemoryEndpoint, Shard):
            pass

        config = TableConfig.build(name, VOCAB, DIM, num_shards=1, initializer="zeros")
        shard = Local(config, 0)
        shard.write_rows(0, np.repeat(np.arange(VOCAB, dtype=np.float32)[:, None], DIM, 1))
        return shard


def test_a_shard_serves_a_request_only_while_the_stamp_is_its_own(table_name):
    from shardemb.transport.channel import RequestBuffers
    from shardemb.transport.endpoint import STALE

    shard = _LocalShard(table_name)
    buf = RequestBuffers(DIM, "float32")
    ids = np.array([5, 9, 2])
    buf.reserve(ids.size)
    first = buf.stamp()
    buf.ids(3)[:], buf.pos(3)[:] = ids, [2, 0, 1]
    assert shard.lookup_shm(buf.names, 0, 3, first) == 3
    np.testing.assert_array_equal(buf.rows(3), _expected([9, 2, 5]))
    second = buf.stamp()
    assert second != first
    buf.rows(3)[:] = -1.0
    assert shard.lookup_shm(buf.names, 0, 3, first) == STALE  # an earlier request's call
    np.testing.assert_array_equal(buf.rows(3), -1.0)  # nothing written
    old = buf.names
    buf.retire()
    assert shard.lookup_shm(old, 0, 3, second) == STALE  # retired: mapped, stamped retired
    buf.reserve(ids.size)
    buf.stamp()
    shard.release_shm(())  # drops the mappings of removed files
    assert not set(shard.shm_cache_info()["names"]) & set(old)
    assert shard.lookup_shm(old, 0, 3, second) == STALE  # retired and unmapped: file gone
    buf.close()
