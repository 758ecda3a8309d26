"""Checkpoints: round trips, resharding, exact continuation, consistency under pushes,
damage detection, the manager, fsspec URLs, the CLI; in-process and on Ray."""

import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import shardemb
import shardemb.checkpoint as ckpt
import shardemb.cli
from shardemb import CheckpointManager, EmbeddingStore
from shardemb.errors import (
    CheckpointCorruptError,
    CheckpointError,
    CheckpointNotFoundError,
    InvalidConfigError,
    ShardUnavailableError,
    TableExistsError,
)


def make_store(
    name,
    *,
    vocab=101,
    dim=6,
    shards=3,
    partition="mod",
    optimizer="adagrad",
    backend="inprocess",
    dtype="float32",
    seed=3,
):
    return EmbeddingStore.create(
        name,
        vocab,
        dim,
        num_shards=shards,
        partition=partition,
        optimizer=optimizer,
        seed=seed,
        dtype=dtype,
        backend=backend,
    )


def batches(vocab, dim, count, seed=0, size=40):
    """Deterministic pushes, with duplicate ids."""
    rng = np.random.default_rng(seed)
    return [
        (rng.integers(0, vocab, size), rng.standard_normal((size, dim)).astype(np.float32))
        for _ in range(count)
    ]


def train(store, pushes):
    for ids, grads in pushes:
        store.apply_gradients(ids, grads)


def state(store) -> dict:
    """Rows, every slot and the step of each shard, in global row order."""
    out = {"weights": store.to_numpy()}
    for name in store.config.optimizer.slot_specs(store.dim):
        out[name] = store._gather_table("read_slot", name)
    out["steps"] = [i["step"] for i in store.info()]
    return out


def assert_same(a: dict, b: dict, steps=True):
    assert sorted(a) == sorted(b)
    for key in a:
        if key == "steps":
            if steps:
                assert set(a[key]) == set(b[key]) and len(set(a[key])) == 1
            continue
        assert a[key].dtype == b[key].dtype
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)  # bit for bit


@pytest.fixture
def saved(tmp_path, table_name):
    """A trained 3-shard Adam table saved in small chunks: (store, path, state)."""
    store = make_store(table_name, optimizer="adam")
    train(store, batches(101, 6, 4))
    path = str(tmp_path / "ckpt")
    ckpt.save_store(store, path, step=4, chunk_rows=8)
    yield store, path, state(store)
    store.close()


# -- round trips -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "optimizer",
    ["sgd", "adagrad", "rowwise_adagrad", "adam", "ftrl", {"name": "sgd", "momentum": 0.9}],
)
@pytest.mark.parametrize("dtype", ["float32", "float16", "float64"])
def test_round_trip_is_bit_exact(optimizer, dtype, tmp_path, table_name):
    with make_store(table_name, optimizer=optimizer, dtype=dtype) as store:
        train(store, batches(101, 6, 3))
        manifest = store.save(str(tmp_path / "c"), step=11)
        before = state(store)
    assert manifest["step"] == 3 and manifest["train_step"] == 11
    assert manifest["dtype"] == dtype and os.path.exists(tmp_path / "c" / "manifest.json")
    with EmbeddingStore.restore(str(tmp_path / "c"), backend="inprocess") as restored:
        assert restored.name == table_name and restored.num_shards == 3
        assert_same(state(restored), before)


_RESHARD = [
    (4, "mod", 3, "mod"),
    (3, "mod", 4, "mod"),
    (1, "mod", 5, "mod"),
    (5, "mod", 1, "mod"),
    (3, "mod", 3, "div"),
    (4, "div", 3, "mod"),
    (2, "div", 5, "div"),
    (7, "mod", 2, "div"),
]


@pytest.mark.parametrize("old_n,old_p,new_n,new_p", _RESHARD)
@pytest.mark.parametrize("optimizer", ["adagrad", "adam"])
def test_reshard_keeps_rows_and_slots(
    old_n, old_p, new_n, new_p, optimizer, tmp_path, table_name, monkeypatch
):
    # Tiny chunks and read windows: blocks span several windows and partial chunks.
    monkeypatch.setattr(ckpt.reader, "READ_WINDOW_BYTES", 1500)
    with make_store(table_name, shards=old_n, partition=old_p, optimizer=optimizer) as store:
        train(store, batches(101, 6, 3))
        ckpt.save_store(store, str(tmp_path / "c"), chunk_rows=5)
        before = state(store)
    with EmbeddingStore.restore(
        str(tmp_path / "c"), num_shards=new_n, partition=new_p, backend="inprocess"
    ) as restored:
        assert restored.num_shards == new_n and restored.config.partition.kind == new_p
        assert_same(state(restored), before)


def test_training_continues_exactly_after_restore(tmp_path, table_name):
    """N steps, save, restore on another sharding, M steps == N + M steps unbroken."""
    pushes = batches(101, 6, 9, seed=7)
    with make_store(table_name + "-ref", optimizer="adam") as ref:
        train(ref, pushes)
        expected = state(ref)
    with make_store(table_name, optimizer="adam") as store:
        train(store, pushes[:5])
        store.save(str(tmp_path / "c"))
    with EmbeddingStore.restore(
        str(tmp_path / "c"), num_shards=2, partition="div", backend="inprocess"
    ) as restored:
        assert [i["step"] for i in restored.info()] == [5, 5]
        train(restored, pushes[5:])
        assert_same(state(restored), expected)


def test_tensorflow_storage_round_trip_and_reshard(tmp_path, table_name):
    """Storages without a host view (TensorFlow, GPU) go through read/write_block."""
    store = EmbeddingStore.create(
        table_name,
        53,
        4,
        num_shards=2,
        optimizer="adam",
        seed=1,
        storage="tensorflow",
        backend="inprocess",
    )
    with store:
        train(store, batches(53, 4, 2))
        ckpt.save_store(store, str(tmp_path / "c"), chunk_rows=4)
        before = state(store)
    with EmbeddingStore.restore(str(tmp_path / "c"), num_shards=3, backend="inprocess") as restored:
        assert restored.config.storage == "tensorflow"
        assert_same(state(restored), before)


def test_load_shard_refills_one_shard_from_any_sharding(saved, table_name):
    store, path, before = saved  # 3 mod shards
    with EmbeddingStore.restore(
        path, name=table_name + "-2", num_shards=2, partition="div", backend="inprocess"
    ) as other:
        empty = type(other._handles[1])(other.config, 1, initialize=False)  # as if restarted
        other._handles[1] = empty
        assert ckpt.load_shard(other, 1, path) == 4
        assert_same(state(other), before)
        assert ckpt.load_shard(other, 0, path, step=9) == 4
        assert [i["step"] for i in other.info()] == [9, 4]
    with make_store(table_name + "-3", optimizer="adagrad") as wrong:
        with pytest.raises(CheckpointCorruptError, match="with slots {'m': 6, 'v': 6}; table"):
            ckpt.load_shard(wrong, 0, path)
    with pytest.raises(InvalidConfigError, match="`index` must be a shard of table"):
        ckpt.load_shard(store, 3, path)


def test_saved_arrays_are_plain_zarr(saved):
    import zarr

    store, path, before = saved
    m = ckpt.read_manifest(path)
    part = store.config.partition
    for s in range(3):
        rows = zarr.open_array(path, path=f"shards/{s}/weights", mode="r")[:]
        np.testing.assert_array_equal(rows, before["weights"][part.global_rows(s)])
        assert m["arrays"][f"shards/{s}/slots/v"]["shape"] == [len(rows), 6]
    np.testing.assert_array_equal(ckpt.read_table(path), before["weights"])
    np.testing.assert_array_equal(ckpt.read_table(path, slot="m"), before["m"])
    assert m["table"] == store.config.to_dict() and m["chunk_rows"] == 8
    assert m["nbytes"] == 101 * 6 * 4 * 3 and m["stored_bytes"] > m["nbytes"]
    with pytest.raises(InvalidConfigError, match="`slot` must be one of"):
        ckpt.read_table(path, slot="momentum")


@pytest.mark.parametrize(
    "options",
    [
        {"compression": "zstd"},
        {"compression": "zstd:5"},
        {"compression": "lz4"},
        {"checksum": False},
        {"chunk_rows": 1},
    ],
)
def test_save_options(options, tmp_path, table_name):
    with make_store(table_name) as store:
        train(store, batches(101, 6, 2))
        m = ckpt.save_store(store, str(tmp_path / "c"), **options)
        before = state(store)
    assert m["compression"] == options.get("compression")
    with EmbeddingStore.restore(str(tmp_path / "c"), num_shards=2, backend="inprocess") as restored:
        assert_same(state(restored), before)


def test_save_replaces_an_older_checkpoint(tmp_path, table_name):
    path = str(tmp_path / "c")
    with make_store(table_name, shards=5) as store:
        store.save(path)
    with make_store(table_name, shards=2, seed=9) as store:
        store.save(path)
        before = state(store)
    assert not (tmp_path / "c" / "shards" / "4").exists()  # no stale arrays
    with EmbeddingStore.restore(path, backend="inprocess") as restored:
        assert restored.num_shards == 2
        assert_same(state(restored), before)


def test_pushes_before_save_are_in_and_after_are_not(tmp_path, table_name):
    pushes = batches(101, 6, 3)
    with make_store(table_name, optimizer="adam") as store:
        train(store, pushes[:2])
        store.save(str(tmp_path / "c"))
        before = state(store)
        train(store, pushes[2:])
        assert not np.array_equal(store.to_numpy(), before["weights"])
    with EmbeddingStore.restore(str(tmp_path / "c"), backend="inprocess") as restored:
        assert_same(state(restored), before)


def test_write_errors_name_the_path_and_commit_nothing(tmp_path, table_name, monkeypatch):
    def disk_full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt.chunks.ChunkIO, "_write_chunk", disk_full)
    with make_store(table_name) as store:
        with pytest.raises(
            CheckpointError,
            match=r"Shard 0 could not write its arrays to "
            r"'.*full'.*No space left",
        ):
            store.save(str(tmp_path / "full"))
    assert not (tmp_path / "full" / "manifest.json").exists()


def test_a_push_that_reached_some_shards_only_stays_saveable(tmp_path, table_name):
    """A trainer killed mid-push leaves that push on some shards only: the table is still
    saved (never refused), the manifest says what each shard applied, a restore gives each
    shard back its own, and the next push is number 4 on every shard it reaches."""
    pushes = batches(101, 6, 4)
    with make_store(table_name, optimizer="adam") as store:
        train(store, pushes[:2])
        ids, grads = pushes[2]
        split = store.config.partition.split(ids)  # push 3 reaches shard 1 only
        store._handles[1].apply_gradients(split.local_rows(1), grads[split.positions(1)], 3)
        m = store.save(str(tmp_path / "c"))
        before = state(store)
    assert m["step"] == 3
    assert m["applied"] == [
        {"step": 2, "pushes": 2},
        {"step": 3, "pushes": 3},
        {"step": 2, "pushes": 2},
    ]
    with EmbeddingStore.restore(str(tmp_path / "c"), backend="inprocess") as restored:
        assert_same(state(restored), before, steps=False)
        assert [(i["step"], i["pushes"]) for i in restored.info()] == [(2, 2), (3, 3), (2, 2)]
        restored.apply_gradients(*pushes[3])
        assert [(i["step"], i["pushes"]) for i in restored.info()] == [(4, 3), (4, 4), (4, 3)]
        assert restored.save(str(tmp_path / "c"))["applied"][0] == {"step": 4, "pushes": 3}


def test_a_checkpoint_replaced_while_a_shard_reads_it_is_not_loaded(tmp_path, table_name):
    """Another save swapped a new checkpoint in at the path while a shard read it: the read
    could mix two versions, so the shard keeps no rows (typed errors, never a mix) until
    a reload of the path works."""
    path = str(tmp_path / "c")
    with make_store(table_name, optimizer="adam") as store:
        train(store, batches(101, 6, 2))
        store.save(path)
        source, window, _ = ckpt.reader.read_args(ckpt.read_manifest(path), path)
        train(store, batches(101, 6, 1, seed=9))
        store.save(path)  # a new save_id at the path
        before = state(store)
        loc = ckpt.location.Location.of(path)
        with pytest.raises(CheckpointError, match="replaced by another save while it was read"):
            store.shard_call(ckpt.reader.read_shard, loc, source, window, path, only=1)
        with pytest.raises(ShardUnavailableError, match=r"Shard\(s\) \[1\]"):
            store.to_numpy()  # shard 1 is reloaded from the path as it is now
        assert_same(state(store), before)


def test_a_bad_applied_record_is_corrupt(tmp_path, table_name):
    path = tmp_path / "c"
    with make_store(table_name) as store:
        store.save(str(path))
    m = json.loads((path / "manifest.json").read_text())
    for bad in ([{"step": 1}], [{"step": -1, "pushes": 0}] * 3, "x", [None] * 3):
        (path / "manifest.json").write_text(json.dumps({**m, "applied": bad}))
        with pytest.raises(CheckpointCorruptError, match="bad applied"):
            ckpt.read_manifest(str(path))


# -- errors ------------------------------------------------------------------------------
def _delete_chunk(path):
    os.remove(os.path.join(path, "shards", "1", "weights", "c", "2", "0"))


def _garbage_chunk(path):
    chunk = os.path.join(path, "shards", "2", "slots", "m", "c", "0", "0")
    size = os.path.getsize(chunk)
    with open(chunk, "wb") as f:
        f.write(np.random.default_rng(0).bytes(size))


def _truncate_chunk(path):
    with open(os.path.join(path, "shards", "0", "weights", "c", "1", "0"), "r+b") as f:
        f.truncate(10)


def _edit_manifest(**changes):
    def edit(path):
        with open(os.path.join(path, "manifest.json")) as f:
            m = json.load(f)
        m.update(changes)
        if "array_shape" in changes:
            m["arrays"]["shards/0/weights"]["shape"] = changes["array_shape"]
        with open(os.path.join(path, "manifest.json"), "w") as f:
            json.dump(m, f)

    return edit


def _rewrite_array_shape(path):
    import zarr

    zarr.open_array(path, path="shards/1/slots/v", mode="r+").resize((20, 6))


def _bad_json(path):
    with open(os.path.join(path, "manifest.json"), "w") as f:
        f.write("{not json")


def _drop_manifest(path):
    os.remove(os.path.join(path, "manifest.json"))


def _drop_array(path):
    os.remove(os.path.join(path, "shards", "0", "slots", "v", "zarr.json"))


_DAMAGE = [
    (_delete_chunk, r"'shards/1/weights' is missing 1 of 5 chunks \(c/2/0\)"),
    (_garbage_chunk, r"checksum mismatch \(crc32c\) in chunk 'shards/2/slots/m/c/0/0'"),
    (_truncate_chunk, r"'shards/0/weights' has chunks of the wrong size \(c/1/0\)"),
    (_edit_manifest(shape=[100, 6]), r"shape is \[100, 6\] but the table config implies"),
    (_edit_manifest(array_shape=[3, 6]), r"array 'shards/0/weights' should have shape"),
    (_edit_manifest(format_version=99), r"unknown format version 99; this shardemb reads"),
    (_edit_manifest(format="other"), r"is not a shardemb checkpoint manifest"),
    (_edit_manifest(step=-1), r"bad step -1"),
    (_edit_manifest(chunk_rows=0), r"bad chunk_rows 0"),
    (_edit_manifest(compression="brotli"), r"unknown compression 'brotli'"),
    (_edit_manifest(table={"name": "x"}), r"bad table config"),
    (_rewrite_array_shape, r"'shards/1/slots/v' has shape \[20, 6\].*manifest says shape"),
    (_bad_json, r"manifest.json of .* is not valid JSON"),
    (_drop_manifest, r"is incomplete: it has no manifest.json"),
    (_drop_array, r"array 'shards/0/slots/v' cannot be opened"),
]


@pytest.mark.parametrize("damage,message", _DAMAGE, ids=[f"{i}" for i in range(len(_DAMAGE))])
def test_damaged_checkpoints_raise_corrupt_error(damage, message, saved, table_name):
    _, path, _ = saved
    damage(path)
    with pytest.raises(CheckpointCorruptError, match=message):
        EmbeddingStore.restore(path, name=table_name + "-r", backend="inprocess")
    # The half-built table was removed: its name is free again.
    EmbeddingStore.create(table_name + "-r", 3, 1, num_shards=1, backend="inprocess").close()


def test_damage_found_through_zarr_for_compressed_and_memory_checkpoints(tmp_path, table_name):
    with make_store(table_name) as store:
        ckpt.save_store(store, str(tmp_path / "z"), compression="zstd", chunk_rows=8)
        ckpt.save_store(store, f"memory://{table_name}", chunk_rows=8)
    _garbage_chunk_of(str(tmp_path / "z"), "shards/1/weights/c/2/0")
    with pytest.raises(
        CheckpointCorruptError,
        match=r"rows \[\d+, \d+\) of array 'shards/1/"
        r"weights' cannot be read: checksum mismatch",
    ):
        EmbeddingStore.restore(str(tmp_path / "z"), backend="inprocess")
    import fsspec

    fs = fsspec.filesystem("memory")
    chunk = f"/{table_name}/shards/0/slots/accumulator/c/1/0"
    fs.pipe_file(chunk, bytes(len(fs.cat_file(chunk))))
    with pytest.raises(CheckpointCorruptError, match="'shards/0/slots/accumulator' cannot be re"):
        EmbeddingStore.restore(f"memory://{table_name}", backend="inprocess")
    fs.rm_file(chunk)
    with pytest.raises(CheckpointCorruptError, match=r"missing 1 of \d+ chunks \(c/1/0\)"):
        EmbeddingStore.restore(f"memory://{table_name}", backend="inprocess")


def _garbage_chunk_of(path, key):
    chunk = os.path.join(path, *key.split("/"))
    size = os.path.getsize(chunk)
    with open(chunk, "wb") as f:
        f.write(np.random.default_rng(0).bytes(size))


def test_verify_reads_checksums_only_when_asked(saved):
    _, path, _ = saved
    _garbage_chunk(path)
    ckpt.verify_checkpoint(path)  # listing and metadata only
    with pytest.raises(CheckpointCorruptError, match="checksum mismatch"):
        ckpt.verify_checkpoint(path, read_data=True)


def test_missing_checkpoints_raise_not_found(tmp_path):
    (tmp_path / "empty").mkdir()
    for path in (tmp_path / "empty", tmp_path / "nothing", "memory://nothing-here"):
        with pytest.raises(CheckpointNotFoundError, match="No checkpoint at"):
            EmbeddingStore.restore(str(path), backend="inprocess")
    with pytest.raises(FileNotFoundError):  # also a standard error
        ckpt.read_manifest(str(tmp_path / "nothing"))


def test_checkpoint_of_another_table(saved, table_name):
    _, path, _ = saved
    assert ckpt.read_manifest(path, expected_table=table_name)["name"] == table_name
    with pytest.raises(CheckpointCorruptError, match=f"holds table '{table_name}', not the"):
        EmbeddingStore.restore(path, expected_table="other", backend="inprocess")


def test_invalid_arguments(saved, tmp_path, table_name):
    store, path, _ = saved
    cases = [
        (lambda: ckpt.save_store(store, str(tmp_path / "x"), chunk_rows=0), "`chunk_rows`"),
        (
            lambda: ckpt.save_store(store, str(tmp_path / "x"), compression="gzip"),
            "`compression` must be None or one of",
        ),
        (lambda: ckpt.save_store(store, str(tmp_path / "x"), step="3"), "`step` must be"),
        (lambda: store.save(""), "`path` must be a non-empty"),
        (
            lambda: EmbeddingStore.restore(path, num_shards=200, backend="inprocess"),
            "`num_shards` must not exceed",
        ),
        (
            lambda: EmbeddingStore.restore(path, partition="hash", backend="inprocess"),
            "`partition` must be one of",
        ),
        (lambda: CheckpointManager(str(tmp_path), keep=0), "`keep` must be a positive"),
        (lambda: CheckpointManager(str(tmp_path), level=3), "Unknown save options"),
        (lambda: CheckpointManager(str(tmp_path)).save(store, -1), "`step` must be a non"),
        (
            lambda: CheckpointManager(str(tmp_path), table="x").save(store, 1),
            "holds checkpoints of table 'x'",
        ),
    ]
    for call, message in cases:
        with pytest.raises(InvalidConfigError, match=message):
            call()
    with pytest.raises(TableExistsError):  # the saved table is still open under its name
        EmbeddingStore.restore(path, backend="inprocess")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match="Refusing to save into .*notes"):
        store.save(str(tmp_path / "notes"))
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"
    with pytest.raises(CheckpointError, match="Refusing to save into .*todo.txt.*a file"):
        store.save(str(tmp_path / "notes" / "todo.txt"))


# -- manager -----------------------------------------------------------------------------
def test_manager_keeps_the_last_k_and_sorts_numerically(tmp_path, table_name):
    root = str(tmp_path / "run")
    mgr = CheckpointManager(root, keep=3, chunk_rows=16)
    assert mgr.steps() == [] and mgr.latest() is None
    with pytest.raises(CheckpointNotFoundError, match="No committed checkpoint under"):
        mgr.restore_latest(backend="inprocess")
    pushes = batches(101, 6, 12)
    with make_store(table_name, optimizer="adam") as store:
        for step in (2, 9, 10, 100):
            train(store, pushes[:1])
            pushes = pushes[1:]
            assert mgr.save(store, step) == os.path.join(root, f"step-{step}")
        before = state(store)
        assert mgr.steps() == [9, 10, 100] and sorted(os.listdir(root)) == [
            "step-10",
            "step-100",
            "step-9",
        ]
        assert mgr.latest() == os.path.join(root, "step-100")
        with pytest.raises(CheckpointError, match="step-100' already exists"):
            mgr.save(store, 100)
        os.makedirs(os.path.join(root, "step-50", "shards"))  # an interrupted save
        os.makedirs(os.path.join(root, "unrelated"))
        os.makedirs(os.path.join(root, "step-007"))  # not a name the manager writes
        with open(os.path.join(root, "step-007", "manifest.json"), "w") as f:
            f.write("{}")
        assert mgr.steps() == [9, 10, 100]
        train(store, pushes[:1])
        mgr.save(store, 100, overwrite=True)
        after = state(store)
    assert sorted(os.listdir(root)) == ["step-007", "step-10", "step-100", "step-9", "unrelated"]
    assert ckpt.read_manifest(mgr.latest())["train_step"] == 100
    with mgr.restore_latest(backend="inprocess", num_shards=2) as restored:
        assert_same(state(restored), after)
    with mgr.restore(9, backend="inprocess", name=table_name + "-9") as restored:
        assert restored.info()[0]["step"] == 2 and not np.array_equal(
            restored.to_numpy(), before["weights"]
        )
    with pytest.raises(CheckpointCorruptError, match="holds table"):
        CheckpointManager(root, table="other").restore_latest(backend="inprocess")


def test_manager_never_prunes_the_checkpoint_it_just_saved(tmp_path, table_name):
    mgr = CheckpointManager(str(tmp_path), keep=1)
    with make_store(table_name) as store:
        mgr.save(store, 20)
        mgr.save(store, 5)  # e.g. training restarted from an older checkpoint
        assert mgr.steps() == [5, 20]
        mgr.save(store, 6)
    assert mgr.steps() == [6, 20]  # by step order 5 goes; 20 stays newest, 6 was just saved


def test_memory_urls_with_the_inprocess_backend(table_name):
    mgr = CheckpointManager(f"memory://{table_name}", keep=1)
    with make_store(table_name, optimizer="adam") as store:
        train(store, batches(101, 6, 2))
        mgr.save(store, 1)
        mgr.save(store, 2)
        before = state(store)
        with pytest.raises(InvalidConfigError, match="backend='inprocess' only"):
            EmbeddingStore.restore(mgr.latest(), backend="ray", name="never")
    assert mgr.steps() == [2] and mgr.latest() == f"memory://{table_name}/step-2"
    assert ckpt.read_manifest(mgr.latest())["train_step"] == 2
    with mgr.restore_latest(backend="inprocess", num_shards=4, partition="div") as restored:
        assert_same(state(restored), before)


# -- command line ------------------------------------------------------------------------
def test_cli_inspect(saved, tmp_path, capsys, table_name):
    _, path, _ = saved
    parser = shardemb.cli.build_parser()

    def run(*argv):
        args = parser.parse_args(["checkpoint", "inspect", *argv])
        code = args.func(args)
        return code, capsys.readouterr()

    code, out = run(path)
    assert code == 0 and out.err == ""
    for text in (
        f"table      {table_name}",
        "shape      101 x 6",
        "dtype      float32",
        "shards     3 (mod), 33-34 rows each",
        "step       4 (train step 4)",
        "slots      m (6), v (6)",
        "complete   yes",
        "bytes      7272 (",
    ):
        assert text in out.out
    code, out = run(path, "--json", "--verify")
    assert code == 0 and json.loads(out.out)["complete"] is True
    _garbage_chunk(path)
    code, out = run(path, "--verify")
    assert code == 1 and "checksum mismatch" in out.err
    _delete_chunk(path)
    code, out = run(path)
    assert code == 1 and "is missing 1 of 5 chunks" in out.err
    code, out = run(str(tmp_path / "nothing"))
    assert code == 1 and "No checkpoint at" in out.err and out.out == ""


def test_cli_module_entry_point(saved):
    _, path, _ = saved
    run = [sys.executable, "-m", "shardemb.checkpoint", "inspect"]
    ok = subprocess.run([*run, path], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "complete   yes" in ok.stdout, ok.stderr
    _drop_manifest(path)
    bad = subprocess.run([*run, path], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "is incomplete" in bad.stderr


# -- Ray ---------------------------------------------------------------------------------
def test_ray_save_and_reshard_through_file_urls(ray_session, tmp_path, table_name):
    """Ray shards write and read their own arrays; file:// URLs; 3 -> 2 div, continue."""
    pushes = batches(101, 6, 6, seed=3)
    with make_store(table_name + "-ref", optimizer="adam") as ref:
        train(ref, pushes)
        expected = state(ref)
    url = f"file://{tmp_path}/ray-ckpt"
    with make_store(table_name, optimizer="adam", backend="ray") as store:
        train(store, pushes[:4])  # no flush: the save is ordered after them
        m = ckpt.save_store(store, url, chunk_rows=7)
        before = state(store)
    assert m["step"] == 4 and ckpt.read_manifest(str(tmp_path / "ray-ckpt"))["step"] == 4
    with EmbeddingStore.restore(url, num_shards=2, partition="div", backend="ray") as restored:
        assert_same(state(restored), before)
        train(restored, pushes[4:])
        assert_same(state(restored), expected)


def test_ray_save_racing_with_pushes_holds_one_version(ray_session, tmp_path, table_name):
    """A thread keeps pushing while the main thread saves: the checkpoint equals the table
    after exactly its recorded step count of pushes, rows and slots alike."""
    pushes = batches(101, 6, 150, seed=5)
    started = threading.Event()

    def pusher():
        for i, (ids, grads) in enumerate(pushes):
            store.apply_gradients(ids, grads)
            if i == 20:
                started.set()

    with make_store(table_name, optimizer="adam", backend="ray") as store:
        thread = threading.Thread(target=pusher)
        thread.start()
        started.wait(60)
        m = store.save(str(tmp_path / "c"))
        thread.join(60)
        store.flush()
    assert 21 <= m["step"] <= len(pushes)
    with make_store(table_name + "-replay", optimizer="adam") as replay:
        train(replay, pushes[: m["step"]])
        expected = state(replay)
    with EmbeddingStore.restore(str(tmp_path / "c"), backend="inprocess") as restored:
        assert_same(state(restored), expected)


def test_public_api():
    assert shardemb.CheckpointManager is CheckpointManager
    assert set(ckpt.__all__) <= set(dir(ckpt))
