"""Faults: shards killed mid-training and mid-save, a replacement that cannot load, a
trainer killed mid-push, errors of fire-and-forget pushes, backpressure, ordering across a
restart, and a bounded soak of two processes."""

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import psutil
import pytest

import shardemb.checkpoint as ckpt
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
        # The restarted shard went back to step 1; push 8 reached it alone, and it applied
        # it as the table's push 8 (Adam's bias correction counts the table's pushes).
        assert [i["step"] for i in store.info()] == [7, 8, 7]


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


def test_shard_killed_while_saving_over_the_same_path(
    ray_session, table_name, tmp_path, monkeypatch
):
    """`store.save(p)` twice, the last shard SIGKILLed in the middle of the second: `p` is
    still the first checkpoint, the shard comes back with its rows (never zeros), and the
    next save to `p` is not refused."""
    path = str(tmp_path / "c")
    with _sgd_store(table_name) as store:
        ones = np.ones((30, 2), np.float32)
        store.apply_gradients(np.arange(30), -ones)  # every row 1
        store.save(path, chunk_rows=2)
        store.apply_gradients(np.arange(30), -ones)  # every row 2
        monkeypatch.setattr(ckpt.writer, "WRITE_BLOCK_BYTES", 16)  # blocks of 2 chunks
        monkeypatch.setenv(ckpt.format.KILL_ENV, "mid_chunks")  # shard 2 kills itself
        with pytest.raises(ShardRestartedError, match=r"Shard\(s\) \[2\] .* \(step 1\)"):
            store.save(path, chunk_rows=2)
        monkeypatch.delenv(ckpt.format.KILL_ENV)
        assert sorted(os.listdir(tmp_path)) == ["c"]  # the half-written one is gone
        assert ckpt.read_manifest(path)["step"] == 1
        table = store.to_numpy()
        rows_of_2 = np.arange(2, 30, 3)
        np.testing.assert_array_equal(table[rows_of_2], 1.0)  # the checkpoint's rows
        np.testing.assert_array_equal(np.delete(table, rows_of_2, axis=0), 2.0)
        m = store.save(path, chunk_rows=2)
        assert m["applied"] == [
            {"step": 2, "pushes": 2},
            {"step": 2, "pushes": 2},
            {"step": 1, "pushes": 1},
        ]
    with EmbeddingStore.restore(path, name=table_name + "-r", backend="inprocess") as restored:
        np.testing.assert_array_equal(restored.to_numpy(), table)


@pytest.mark.parametrize("group", [None, "own-group"], ids=["own-actors", "hosted"])
def test_a_replacement_that_cannot_load_refuses_every_call(ray_session, table_name, tmp_path,
                                                           group):  # fmt: skip
    """The checkpoint a dead shard should come back from is damaged: its replacement serves
    no zeros, only typed errors, until the checkpoint is whole again (also where a push's
    error comes back as an item of a fused answer, as from a host or a doorbell)."""
    path = tmp_path / "c"
    with _sgd_store(table_name, group=group and f"{group}-{table_name}") as store:
        store.apply_gradients(np.arange(30), -np.ones((30, 2), np.float32))
        store.save(str(path))
        chunk = path / "shards" / "1" / "weights" / "c" / "0" / "0"
        shutil.move(chunk, tmp_path / "chunk")
        _kill_shard(store, 1)
        for call in (
            lambda: store.lookup(np.arange(30)),
            lambda: store.lookup([1]),
            store.to_numpy,
            lambda: store.apply_gradients([1], np.ones((1, 2), np.float32)) or store.flush(),
            lambda: store.save(str(tmp_path / "other")),
        ):
            with pytest.raises(ShardUnavailableError, match=r"Shard\(s\) \[1\] .* reloaded"):
                call()
        assert store.lookup([0, 2]).tolist() == [[1, 1], [1, 1]]  # live shards serve
        assert not (tmp_path / "other" / "manifest.json").exists()
        shutil.move(tmp_path / "chunk", chunk)
        other = EmbeddingStore.connect(table_name)  # another handle reloads it first
        with pytest.raises(ShardRestartedError, match=r"\[1\] .* \(step 1\)"):
            other.lookup([1])
        # This handle is told once, even by a call that does not reach shard 1.
        with pytest.raises(ShardRestartedError, match=r"\[1\] .* \(step 1\)"):
            store.lookup([0])
        np.testing.assert_array_equal(store.to_numpy(), 1.0)


TRAINER = textwrap.dedent(
    """
    import os, signal, sys
    import numpy as np
    import ray
    import shardemb

    ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
    store = shardemb.EmbeddingStore.connect(sys.argv[2])
    for _ in range(3):
        store.apply_gradients(np.arange(30), -np.ones((30, 2), np.float32))
    store.flush()
    # Push 4 reaches shard 0 and then the trainer dies, before its calls to shards 1, 2.
    split = store.config.partition.split(np.arange(30))
    ray.get(store._backend.submit(store._handles[0], "apply_gradients",
                                  split.local_rows(0), -np.ones((10, 2), np.float32), 4))
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_trainer_killed_mid_push_leaves_a_saveable_table(ray_session, table_name, tmp_path):
    address = ray_session.get_runtime_context().gcs_address
    with _sgd_store(table_name, detached=True) as store:
        trainer = subprocess.run(
            [sys.executable, "-c", TRAINER, address, table_name], capture_output=True, timeout=300
        )
        assert trainer.returncode == -signal.SIGKILL, trainer.stderr[-2000:]
        m = store.save(str(tmp_path / "c"))  # not refused
        assert m["step"] == 4 and m["applied"] == [
            {"step": 4, "pushes": 4},
            {"step": 3, "pushes": 3},
            {"step": 3, "pushes": 3},
        ]
        table = store.to_numpy()
        np.testing.assert_array_equal(table[0::3], 4.0)  # push 4 is in shard 0 only
        np.testing.assert_array_equal(np.delete(table, np.s_[0::3], axis=0), 3.0)
        store.apply_gradients(np.arange(30), -np.ones((30, 2), np.float32))  # push 5
        assert [i["step"] for i in store.info()] == [5, 5, 5]
        store.save(str(tmp_path / "c"))
    with EmbeddingStore.restore(str(tmp_path / "c"), backend="inprocess") as restored:
        assert [i["step"] for i in restored.info()] == [5, 5, 5]
        np.testing.assert_array_equal(restored.to_numpy()[0::3], 5.0)
