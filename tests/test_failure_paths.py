"""Failure paths: values that overflow the table's dtype, names that reach paths, Ray
start-up, unchecked store arguments, checkpoints of other tables, I/O errors, folders that
are not checkpoints, chunks that leave the checkpoint, an empty first push on Ray, and a
failed save over the previous checkpoint's own path.
Each error is typed, names what was wrong and leaves the table (and the disk) unchanged."""

from __future__ import annotations

import errno
import json
import os

import numpy as np
import pytest

import shardemb.checkpoint.chunks as chunks_mod
import shardemb.checkpoint.location as location_mod
from shardemb import EmbeddingStore
from shardemb import checkpoint as ckpt
from shardemb.core.config import TableConfig
from shardemb.errors import (
    CapacityError,
    CheckpointCorruptError,
    CheckpointError,
    InvalidConfigError,
    InvalidGradientError,
    InvalidIdsError,
    ShardembError,
)
from shardemb.transport import backends


def make(name: str, dtype: str = "float32", **kw) -> EmbeddingStore:
    args = {"num_shards": 2, "seed": 0, "backend": "inprocess", "dtype": dtype, **kw}
    return EmbeddingStore.create(name, 10, 4, **args)


# -- 1. finiteness after the cast ---------------------------------------------------------
@pytest.mark.parametrize(
    "table_dtype, grads",
    [
        ("float32", np.full((2, 4), 1e39, np.float64)),
        ("float32", np.full((2, 4), -1e39, np.float64)),
        ("float16", np.full((2, 4), 1e5, np.float32)),
    ],
)
def test_gradients_that_overflow_the_table_dtype_are_refused(table_name, table_dtype, grads):
    with make(table_name, table_dtype) as store:
        before = store.to_numpy()
        with pytest.raises(InvalidGradientError, match=f"Inf.*{table_dtype}"):
            store.apply_gradients([1, 2], grads)
        store.flush()
        np.testing.assert_array_equal(store.to_numpy(), before)


@pytest.mark.parametrize(
    "table_dtype, value", [("float32", 1e39), ("float16", 1e5), ("float16", 10**6)]
)
def test_set_weights_that_overflow_the_table_dtype_are_refused(table_name, table_dtype, value):
    with make(table_name, table_dtype) as store:
        before = store.to_numpy()
        matrix = np.full((10, 4), value)
        with pytest.raises(InvalidConfigError, match="NaN or Inf"):
            store.set_weights(matrix)
        np.testing.assert_array_equal(store.to_numpy(), before)


# -- 2. names that reach paths ----------------------------------------------------------
@pytest.mark.parametrize("name", [".", "..", "a/b", "../x", "t\n", "a\x00b", "tab\tle", ""])
def test_table_names_that_are_not_one_safe_path_component_are_refused(name):
    with pytest.raises(InvalidConfigError, match="`name`.*Received: name="):
        TableConfig.build(name, 10, 4, num_shards=1)


def test_table_checkpoint_refuses_a_layer_name_that_leaves_the_root(tmp_path):
    import keras

    import shardemb

    root = tmp_path / "root"
    root.mkdir()
    layer = shardemb.ShardedEmbedding(10, 2, name="..", backend="inprocess")
    model = keras.Sequential([keras.Input((1,), dtype="int64"), layer])
    model(np.zeros((1, 1), "int64"))
    callback = shardemb.TableCheckpoint(str(root))
    callback.set_model(model)
    try:
        with pytest.raises(InvalidConfigError, match=r"layer '\.\.'"):
            callback.save(1)
        with pytest.raises(InvalidConfigError, match=r"layer '\.\.'"):
            shardemb.TableCheckpoint.restore(model, str(root))
    finally:
        layer.close()
    assert sorted(os.listdir(tmp_path)) == ["root"]
    assert os.listdir(root) == []


# -- 3. the embedded default starts its own Ray ---------------------------------------------
def test_ensure_ray_starts_a_local_runtime_unless_an_address_is_given(monkeypatch):
    import ray

    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    monkeypatch.setattr(backends, "_check_reachable", lambda address: None)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    backends.ensure_ray()
    assert calls[-1]["address"] == "local"
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    backends.ensure_ray()
    assert calls[-1]["address"] == "10.0.0.1:6379"
    backends.ensure_ray("auto")
    assert calls[-1]["address"] == "auto"


# -- 4. unchecked store arguments ---------------------------------------------------------
@pytest.mark.parametrize("timeout", ["x", -1, 0, float("nan"), float("inf"), True])
def test_bad_timeout_is_refused_before_any_shard_starts(table_name, timeout):
    with pytest.raises(InvalidConfigError, match=r"`timeout`.*Received: timeout="):
        make(table_name, timeout=timeout)
    with make(table_name) as store:  # the name was never taken
        with pytest.raises(InvalidConfigError, match="`timeout`"):
            EmbeddingStore.connect(table_name, backend="inprocess", timeout=timeout)
    with make(table_name, timeout=None) as store:
        assert store.timeout is None


@pytest.mark.parametrize("dedup", ["bogus", 2, None, "AUTO"])
def test_bad_dedup_is_refused(table_name, dedup):
    with make(table_name) as store:
        with pytest.raises(InvalidConfigError, match=r"`dedup`.*Received: dedup="):
            store.lookup([1, 1, 2], dedup=dedup)
        for ok in (True, False, "auto", np.bool_(True)):
            assert store.lookup([1, 1, 2], dedup=ok).shape == (3, 4)


def test_ragged_ids_and_grads_are_typed_errors(table_name):
    with make(table_name) as store:
        before = store.to_numpy()
        with pytest.raises(InvalidIdsError, match=r"`ids`.*Received:"):
            store.lookup([[1, 2], [3]])
        with pytest.raises(InvalidIdsError, match=r"`ids`"):
            store.apply_gradients([[1, 2], [3]], np.zeros((3, 4), np.float32))
        with pytest.raises(InvalidGradientError, match=r"`grads`"):
            store.apply_gradients([1, 2], [[0.0] * 4, [0.0] * 3])
        store.flush()
        np.testing.assert_array_equal(store.to_numpy(), before)


def test_a_table_too_big_for_memory_says_how_many_bytes(table_name):
    with pytest.raises(CapacityError, match=r"bytes") as info:
        EmbeddingStore.create(table_name, 10**13, 8, num_shards=1, backend="inprocess")
    assert f"{10**13 * 8 * 4:,}" in str(info.value) or str(10**13 * 8 * 4) in str(info.value)
    with make(table_name):  # nothing was left behind under that name
        pass


# -- 5. another table's checkpoint -----------------------------------------------------------
def test_load_shard_refuses_another_tables_checkpoint(tmp_path, table_name):
    path = str(tmp_path / "c")
    with make(table_name + "-a") as a, make(table_name + "-b") as b:
        a.save(path)
        before = b.to_numpy()
        with pytest.raises(CheckpointCorruptError, match=f"{table_name}-a.*{table_name}-b"):
            ckpt.load_shard(b, 0, path)
        np.testing.assert_array_equal(b.to_numpy(), before)
        # A table restored from that checkpoint under a new name may reload it.
        with EmbeddingStore.restore(path, name=table_name + "-c", backend="inprocess") as c:
            assert ckpt.load_shard(c, 1, path) == 0


# -- 6. I/O errors are not "corrupt" -------------------------------------------------------------
def test_corrupt_errors_keep_their_cause(tmp_path, table_name):
    path = tmp_path / "c"
    with make(table_name) as store:
        store.save(str(path))
    (path / "manifest.json").write_text("{not json")
    with pytest.raises(CheckpointCorruptError) as info:
        ckpt.verify_checkpoint(str(path))
    assert info.value.__cause__ is not None


def test_permission_errors_are_io_errors_not_corruption(tmp_path, table_name, monkeypatch):
    path = str(tmp_path / "c")
    with make(table_name) as store:
        store.save(path)

    def denied(file, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", file)

    monkeypatch.setattr(location_mod, "open", denied, raising=False)
    with pytest.raises(CheckpointError, match="I/O") as info:
        ckpt.verify_checkpoint(path)
    assert not isinstance(info.value, CheckpointCorruptError)
    assert isinstance(info.value.__cause__, PermissionError)
    monkeypatch.undo()
    monkeypatch.setattr(chunks_mod, "open", denied, raising=False)
    with pytest.raises(CheckpointError, match="I/O") as info:
        ckpt.read_table(path)
    assert not isinstance(info.value, CheckpointCorruptError)
    assert isinstance(info.value.__cause__, PermissionError)


def test_symlink_loops_and_unwritable_paths_are_checkpoint_errors(tmp_path, table_name):
    loop = tmp_path / "loop"
    os.symlink(loop, loop)
    with make(table_name) as store:
        with pytest.raises(CheckpointError, match="loop"):
            store.save(str(loop))
        with pytest.raises(CheckpointError, match="/proc/x"):
            store.save("/proc/x")
    with pytest.raises(CheckpointError, match="loop"):
        EmbeddingStore.restore(str(loop), backend="inprocess")


def test_disk_full_while_writing_metadata_is_a_checkpoint_error(tmp_path, table_name, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(location_mod, "atomic_write", full)
    path = str(tmp_path / "c")
    with make(table_name) as store:
        with pytest.raises(CheckpointError, match="No space left") as info:
            store.save(path)
    assert path in str(info.value) and isinstance(info.value.__cause__, OSError)


# -- 7. save() deletes only checkpoints --------------------------------------------------------
def _web_app(folder):
    (folder / "src").mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"name": "app"}))
    (folder / "index.html").write_text("<html></html>")
    (folder / "src" / "app.js").write_text("console.log(1)")


def _zarr_store(folder):
    folder.mkdir()
    (folder / "zarr.json").write_text(
        json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}})
    )
    (folder / "data").mkdir()
    (folder / "data" / "zarr.json").write_text("{}")


def _checkpoint_plus_extra(folder):
    folder.mkdir()
    (folder / "zarr.json").write_text(
        json.dumps({"zarr_format": 3, "attributes": {"shardemb_checkpoint": 1}})
    )
    (folder / "notes.txt").write_text("mine")


@pytest.mark.parametrize("build", [_web_app, _zarr_store, _checkpoint_plus_extra])
def test_save_refuses_folders_that_are_not_shardemb_checkpoints(tmp_path, table_name, build):
    folder = tmp_path / "target"
    build(folder)
    before = sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))
    with make(table_name) as store:
        with pytest.raises(CheckpointError, match="Refusing to save"):
            store.save(str(folder))
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) == before


def test_save_still_replaces_its_own_checkpoint(tmp_path, table_name):
    path = str(tmp_path / "c")
    with make(table_name) as store:
        store.save(path, step=1)
        assert store.save(path, step=2)["train_step"] == 2
    assert ckpt.read_manifest(path)["train_step"] == 2


# -- 8. chunks that leave the checkpoint ---------------------------------------------------------
def test_chunks_that_are_symlinks_out_of_the_checkpoint_are_refused(tmp_path, table_name):
    path = tmp_path / "c"
    with make(table_name) as store:
        store.save(str(path), checksum=False)
    chunk = path / "shards" / "0" / "weights" / "c" / "0" / "0"
    outside = tmp_path / "secret"
    outside.write_bytes(b"\x01" * chunk.stat().st_size)
    chunk.unlink()
    os.symlink(outside, chunk)
    with pytest.raises(CheckpointCorruptError, match="outside"):
        ckpt.verify_checkpoint(str(path))
    with pytest.raises(CheckpointCorruptError, match="outside"):
        chunks_mod.ChunkIO(
            location_mod.Location.of(str(path)),
            str(path),
            **ckpt.format.layout_of(ckpt.read_manifest(str(path))),
        ).read("shards/0/weights", 5, 0, 5, np.empty((5, 4), np.float32))


# -- 9. an empty first push on Ray ------------------------------------------------------------
def test_empty_first_push_on_ray(ray_session, table_name):
    store = EmbeddingStore.create(table_name, 10, 4, num_shards=2, seed=0)
    try:
        before = store.to_numpy()
        store.apply_gradients(np.array([], np.int64), np.zeros((0, 4), np.float32))
        store.flush()
        np.testing.assert_array_equal(store.to_numpy(), before)
        assert [i["step"] for i in store.info()] == [0, 0]  # no shard had rows in it
        store.apply_gradients([1], np.ones((1, 4), np.float32))
        store.flush()
        assert not np.array_equal(store.to_numpy()[1], before[1])
        assert [i["step"] for i in store.info()] == [0, 2]  # the empty push was number 1
    finally:
        store.close()


def test_every_error_here_is_a_shardemb_error():
    for cls in (CapacityError, CheckpointError, InvalidConfigError):
        assert issubclass(cls, ShardembError)


# -- 10. saving over the previous checkpoint's own path ---------------------------------------
@pytest.mark.parametrize("where", ["folder", "memory"])
def test_a_failed_save_over_the_same_path_keeps_the_old_checkpoint(
    tmp_path, table_name, monkeypatch, where
):
    path = str(tmp_path / "c") if where == "folder" else f"memory://{table_name}/c"

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    with make(table_name, optimizer="adam") as store:
        store.apply_gradients([1, 2], np.ones((2, 4), np.float32))
        store.save(path, step=1)
        first = store.to_numpy()
        store.apply_gradients([1, 2], np.ones((2, 4), np.float32))
        with monkeypatch.context() as patch:
            patch.setattr(chunks_mod.ChunkIO, "write", full)
            with pytest.raises(CheckpointError, match="No space left"):
                store.save(path, step=2)
        assert ckpt.read_manifest(path)["train_step"] == 1  # whole, still committed
        if where == "folder":
            assert sorted(os.listdir(tmp_path)) == ["c"]  # the new one's leftovers are gone
        with EmbeddingStore.restore(path, name=table_name + "-r", backend="inprocess") as r:
            np.testing.assert_array_equal(r.to_numpy(), first)
        second = store.to_numpy()
        assert store.save(path, step=3)["train_step"] == 3  # later saves work
    with EmbeddingStore.restore(path, name=table_name + "-3", backend="inprocess") as r:
        np.testing.assert_array_equal(r.to_numpy(), second)
