"""Faults: shards killed mid-training, errors of fire-and-forget pushes, backpressure,
ordering across a restart, and a bounded soak of two processes."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest

from shardemb import EmbeddingStore
from shardemb.errors import ShardRestartedError, ShardUnavailableError


def _kill_shard(store, index):
    pid = store.placement()[index]["pid"]
    os.kill(pid, signal.SIGKILL)
    psutil.Process(pid).wait(timeout=30)


def _sgd_store(name, **kw):
    return EmbeddingStore.create(
        name,
        30,
        2,
        num_shards=3,
        initializer="zeros",
        optimizer={"name": "sgd", "learning_rate": 1.0},
        **kw,
    )


def test_killed_shard_restarts_from_the_checkpoint(ray_session, table_name, tmp_path):
    with _sgd_store(table_name) as store:
        ones = np.ones((30, 2), np.float32)
        store.apply_gradients(np.arange(30), -ones)  # every row +1
        store.save(str(tmp_path / "ckpt"))
        assert store.last_checkpoint == str(tmp_path / "ckpt")
        for _ in range(5):  # fire-and-forget pushes in flight when the shard dies
            store.apply_gradients(np.arange(30), -ones)
        store.flush()
        _kill_shard(store, 1)
        store.apply_gradients(np.arange(30), -ones)
        with pytest.raises(ShardRestartedError, match=r"Shard\(s\) \[1\] .* \(step 1\)"):
            store.flush()
        table = store.to_numpy()
        rows_of_1 = np.arange(1, 30, 3)
        np.testing.assert_array_equal(table[rows_of_1], 1.0)  # back to the checkpoint
        others = np.setdiff1d(np.arange(30), rows_of_1)
        np.testing.assert_array_equal(table[others], 7.0)  # untouched, pushes all applied
        # Ordering holds across the restart: a push is seen by the next lookup.
        store.apply_gradients([1, 4], -np.ones((2, 2), np.float32))
        np.testing.assert_array_equal(store.lookup([1, 4, 0]), [[2, 2], [2, 2], [7, 7]])
        assert [i["step"] for i in store.info()] == [8, 8, 8]  # the table's step is kept


def test_killed_shard_without_checkpoint_is_named(ray_session, table_name):
    with _sgd_store(table_name) as store:
        _kill_shard(store, 2)
        started = time.monotonic()
        with pytest.raises(ShardUnavailableError, match=r"Shard\(s\) \[2\] .* no checkpoint"):
            store.lookup(np.arange(30))
        assert time.monotonic() - started < 120  # an error, not a hang
        with pytest.raises(ShardUnavailableError, match=r"\[2\]"):
            store.lookup([2])
        assert store.lookup([0, 1]).tolist() == [[0, 0], [0, 0]]  # live shards still serve


def test_pushes_are_bounded_and_memory_stays_flat(ray_session, table_name):
    with EmbeddingStore.create(table_name, 100_000, 32, num_shards=2) as store:
        rng = np.random.default_rng(0)
        ids = rng.integers(0, 100_000, 8192)
        grads = np.full((8192, 32), 1e-6, np.float32)
        me = psutil.Process()
        for _ in range(20):
            store.apply_gradients(ids, grads)
        store.flush()
        rss_before = me.memory_info().rss
        for _ in range(300):  # a flood: 300 x 1 MiB of gradients, far more than in flight
            store.apply_gradients(ids, grads)
            assert len(store._pending) <= 16 * 2
        store.flush()
        grown = me.memory_info().rss - rss_before
        assert grown < 64 * 2**20, f"trainer RSS grew by {grown / 2**20:.0f} MiB"
        assert {i["step"] for i in store.info()} == {320}


def test_soak_two_processes_short(ray_session, table_name, tmp_path):
    """The CI version of `python -m shardemb.soak` (see the README)."""
    address = ray_session.get_runtime_context().gcs_address
    cmd = [
        sys.executable,
        "-m",
        "shardemb.soak",
        "--address",
        address,
        "--name",
        table_name,
        "--ops",
        "300",
        "--processes",
        "2",
        "--checkpoint-dir",
        str(tmp_path),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "table exact: True" in out.stdout and "rss flat: True" in out.stdout, out.stdout
