"""Dynamic tables (issue 16): keys instead of rows, admission, eviction, counters and
checkpoints. In-process shards, except one Ray test."""

import json
import os

import numpy as np
import pytest
import zarr

import shardemb
from shardemb import CheckpointManager, DynamicEmbeddingStore, EmbeddingStore
from shardemb.core.keys import DynamicConfig, hash_strings, initial_rows
from shardemb.errors import (
    InvalidConfigError,
    InvalidGradientError,
    InvalidIdsError,
    ShardembError,
    TableFullError,
)

SGD = {"name": "sgd", "learning_rate": 1.0}
EDGES = [-(2**63), -(2**63) + 1, -1, 0, 1, 2**63 - 2, 2**63 - 1]
STRINGS = ["", "a", "é", "日本語", "emoji 🙂", "a\x00b", " "]


def make(name, dim=4, num_shards=2, **kwargs):
    kwargs.setdefault("optimizer", SGD)
    kwargs.setdefault("seed", 7)
    return EmbeddingStore.create(
        name, vocab_size=None, dim=dim, num_shards=num_shards, backend="inprocess", **kwargs
    )


def ones(n, dim=4, value=1.0):
    return np.full((n, dim), value, np.float32)


def adds_up(stats):
    for part in [stats["total"], *stats["shards"]]:
        assert part["inserts"] - part["evictions"] == part["rows"], part
    assert sum(s["rows"] for s in stats["shards"]) == stats["total"]["rows"]


def state(store):
    keys, rows = store.get_weights()
    counters = {k: v for k, v in store.stats()["total"].items()}
    return keys, rows, counters


# -- lookups and pushes -------------------------------------------------------------------
@pytest.mark.parametrize("key_dtype", ["int64", "string"])
def test_unknown_keys_read_their_initial_rows_for_every_shard_count(table_name, key_dtype):
    keys = EDGES if key_dtype == "int64" else STRINGS
    answers = []
    for n in (1, 3, 4):
        with make(f"{table_name}-{n}", num_shards=n, key_dtype=key_dtype) as store:
            answers.append(store.lookup(keys))
            total = store.stats()["total"]
            assert total["rows"] == 0 and total["unknown_lookups"] == len(keys)
            cfg = store.config
    assert all((a == answers[0]).all() for a in answers)
    hashed = np.asarray(keys) if key_dtype == "int64" else hash_strings(keys)
    assert (answers[0] == initial_rows(cfg, hashed)).all()
    assert len({row.tobytes() for row in answers[0]}) == len(keys)  # distinct rows


def test_push_inserts_sums_duplicates_and_matches_any_shard_count(table_name, rng):
    stores = [make(f"{table_name}-{n}", num_shards=n, optimizer="adam") for n in (1, 2, 5)]
    for _ in range(5):
        keys = rng.choice(np.array(EDGES + list(range(-20, 20))), 30)
        grads = rng.standard_normal((30, 4)).astype(np.float32)
        for s in stores:
            s.apply_gradients(keys, grads)
    results = [s.get_weights() for s in stores]
    for keys, rows in results[1:]:
        assert (keys == results[0][0]).all() and (rows == results[0][1]).all()
    for s in stores:
        adds_up(s.stats())
        s.close()
    with make(table_name) as store:
        init = store.lookup([5, 6])
        store.apply_gradients([5, 5, 6], np.array([[1.0] * 4, [2.0] * 4, [0.5] * 4], np.float32))
        assert np.allclose(store.lookup([5, 6]), init - [[3.0], [0.5]])
        total = store.stats()["total"]
        assert (total["rows"], total["inserts"], total["step"]) == (2, 2, 1)


def test_lookup_with_insert_gives_rows_without_a_push(table_name):
    with make(table_name, capacity=10) as store:
        first = store.lookup([[3, 4], [3, 9]], insert=True)
        assert first.shape == (2, 2, 4) and store.stats()["total"]["rows"] == 3
        assert (store.lookup([3, 4, 9]) == first.reshape(-1, 4)[[0, 1, 3]]).all()
        assert store.stats()["total"]["unknown_lookups"] == 0
        with pytest.raises(InvalidConfigError, match="insert"):
            store.lookup([1], insert="yes")


def test_set_weights_and_get_weights_round_trip(table_name):
    with make(table_name, num_shards=3) as store:
        keys = np.array([9, -4, 2**62])
        rows = np.arange(12, dtype=np.float32).reshape(3, 4)
        store.set_weights(keys, rows)
        got_keys, got_rows = store.get_weights()
        order = np.argsort(keys)
        assert (got_keys == keys[order]).all() and (got_rows == rows[order]).all()
        with pytest.raises(InvalidIdsError, match="distinct"):
            store.set_weights([1, 1], np.zeros((2, 4)))


# -- admission ----------------------------------------------------------------------------
@pytest.mark.parametrize("min_count", [1, 2, 4])
def test_admission_takes_exactly_min_count_pushes(table_name, min_count):
    with make(table_name, admission={"min_count": min_count}) as store:
        init = store.lookup([11])
        for i in range(1, min_count):
            store.apply_gradients([11, 11], ones(2))  # duplicates in one push count once
            assert (store.lookup([11]) == init).all()
            total = store.stats()["total"]
            assert (total["rows"], total["admissions_pending"]) == (0, 1)
            assert total["admissions_rejected"] == i
        store.apply_gradients([11], ones(1, value=0.25))  # the k-th push is applied
        assert np.allclose(store.lookup([11]), init - 0.25)
        total = store.stats()["total"]
        assert (total["rows"], total["admissions_pending"]) == (1, 0)
        assert total["admissions_rejected"] == min_count - 1
        adds_up(store.stats())


def test_admission_default_row_can_be_zeros(table_name):
    with make(table_name, admission={"min_count": 2, "default_row": "zeros"}) as store:
        assert (store.lookup([1, 2]) == 0).all()
        store.apply_gradients([1], ones(1))
        store.apply_gradients([1], ones(1))
        cfg = store.config
        assert np.allclose(store.lookup([1]), initial_rows(cfg, np.array([1])) - 1.0)


# -- eviction -----------------------------------------------------------------------------
def _kept(store):
    return sorted(store.get_weights()[0].tolist())


def test_lru_evicts_the_least_recently_updated(table_name):
    with make(table_name, num_shards=1, capacity=3, eviction="lru") as store:
        for keys in ([1], [2], [3], [1], [4]):  # 2 is the least recently updated
            store.apply_gradients(keys, ones(len(keys)))
        assert _kept(store) == [1, 3, 4]
        store.apply_gradients([5, 6], ones(2))  # then 3, then 1
        assert _kept(store) == [4, 5, 6]
        store.lookup([4, 5, 6, 7], insert=False)  # lookups do not count as updates
        store.apply_gradients([7], ones(1))
        assert _kept(store) == [5, 6, 7]
        total = store.stats()["total"]
        assert (total["inserts"], total["evictions"], total["rows"]) == (7, 4, 3)


def test_lfu_evicts_the_least_pushed_then_the_oldest(table_name):
    with make(table_name, num_shards=1, capacity=3, eviction="lfu") as store:
        for keys in ([1, 2, 3], [1, 3], [3], [1]):  # counts: 1 -> 3, 2 -> 1, 3 -> 3
            store.apply_gradients(keys, ones(len(keys)))
        store.apply_gradients([4], ones(1))
        assert _kept(store) == [1, 3, 4]
        store.apply_gradients([5], ones(1))  # 4 has the fewest pushes
        assert _kept(store) == [1, 3, 5]
        store.apply_gradients([5, 6], ones(2))  # 5 is in the push: never its own victim
        assert _kept(store) == [1, 5, 6]  # 1 and 3 tie at 3 pushes; 3 is older
        adds_up(store.stats())


def test_ttl_frees_rows_untouched_for_n_steps_and_rejects_the_rest(table_name):
    with make(table_name, num_shards=1, capacity=2, eviction={"ttl_steps": 2}) as store:
        store.apply_gradients([1], ones(1))  # step 1
        store.apply_gradients([2], ones(1))  # step 2
        store.apply_gradients([3], ones(1))  # step 3: nothing is 2 steps old: 3 rejected
        assert _kept(store) == [1, 2]
        assert store.stats()["total"]["admissions_rejected"] == 1
        assert (store.lookup([3]) == initial_rows(store.config, np.array([3]))).all()
        store.apply_gradients([2], ones(1))  # step 4: 1 was last updated at step 1
        store.apply_gradients([4, 5], ones(2))  # step 5: 1 expired (4 > 2), 2 not (1)
        assert _kept(store) == [2, 4]
        total = store.stats()["total"]
        assert (total["evictions"], total["admissions_rejected"], total["step"]) == (1, 2, 5)
        adds_up(store.stats())


def test_counters_add_up_under_random_pushes(table_name, rng):
    for eviction in ("lru", "lfu", {"ttl_steps": 3}):
        with make(table_name, num_shards=3, capacity=40, eviction=eviction,
                  admission={"min_count": 2}) as store:  # fmt: skip
            for _ in range(40):
                keys = rng.integers(0, 200, 25)
                store.apply_gradients(keys, rng.standard_normal((25, 4)).astype(np.float32))
                store.lookup(rng.integers(0, 300, 10))
            stats = store.stats()
            adds_up(stats)
            assert stats["total"]["evictions"] > 0 and stats["total"]["rows"] <= 40
            assert all(s["rows"] <= s["capacity"] for s in stats["shards"])


def test_full_table_without_eviction_raises_and_changes_nothing(table_name):
    for shards in (1, 3):
        with make(f"{table_name}-{shards}", num_shards=shards, capacity=12) as store:
            store.apply_gradients(np.arange(4), ones(4))
            before = state(store)
            keys = np.arange(100, 130)
            with pytest.raises(TableFullError, match=r"capacity=12.*eviction='lru'"):
                store.apply_gradients(keys, ones(keys.size))
            with pytest.raises(TableFullError):
                store.lookup(keys, insert=True)
            with pytest.raises(TableFullError):
                store.set_weights(keys, ones(keys.size))
            store.flush()
            after = state(store)
            assert (after[0] == before[0]).all() and (after[1] == before[1]).all()
            assert after[2]["step"] == before[2]["step"] == 1
            assert after[2]["rows"] == 4 and after[2]["inserts"] == 4


# -- keys ---------------------------------------------------------------------------------
def test_string_keys_unicode_empty_and_bytes_are_one_key(table_name):
    with make(table_name, key_dtype="string", num_shards=3) as store:
        store.apply_gradients(STRINGS, ones(len(STRINGS)))
        as_bytes = np.array([s.encode() for s in STRINGS], dtype=object)  # as TF hands them
        a, b = store.lookup(STRINGS), store.lookup(as_bytes)
        assert (a == b).all() and store.stats()["total"]["unknown_lookups"] == 0
        assert (store.lookup(np.array(STRINGS)) == a).all()  # numpy unicode arrays
        assert store.lookup([["", "é"], ["a", ""]]).shape == (2, 2, 4)
        keys, _ = store.get_weights()
        assert sorted(keys.tolist()) == sorted(store.hash_keys(STRINGS).tolist())
        total = store.stats()["total"]
        assert "hash_collisions_expected" in total and total["rows"] == len(STRINGS)


def test_int64_keys_at_the_edges(table_name, tmp_path):
    with make(table_name, num_shards=3) as store:
        store.apply_gradients(EDGES, ones(len(EDGES)))
        store.apply_gradients(np.array(EDGES[3:], dtype=np.uint64), ones(4))  # uint64 fits
        keys, rows = store.get_weights()
        assert keys.tolist() == sorted(EDGES)
        store.save(str(tmp_path / "c"))
        with DynamicEmbeddingStore.restore(str(tmp_path / "c"), name=f"{table_name}-r",
                                           num_shards=2, backend="inprocess") as r:  # fmt: skip
            assert (r.lookup(EDGES) == store.lookup(EDGES)).all()


# -- checkpoints ----------------------------------------------------------------------------
def _train(store, rng, steps, vocab=60, n=20):
    for _ in range(steps):
        keys = rng.integers(-vocab, vocab, n) * (2**50)
        store.apply_gradients(keys, rng.standard_normal((n, 4)).astype(np.float32))


def _same(a, b):
    ka, ra = a.get_weights()
    kb, rb = b.get_weights()
    assert (ka == kb).all() and (ra == rb).all()
    keys = np.arange(-80, 80) * (2**50)
    assert (a.lookup(keys) == b.lookup(keys)).all()


def test_restore_continues_bit_exactly_on_the_same_and_other_shard_counts(table_name, tmp_path):
    path = str(tmp_path / "c")
    kwargs = {"optimizer": "adam", "admission": {"min_count": 2}, "capacity": 500}
    with make(table_name, num_shards=2, **kwargs) as store:
        _train(store, np.random.default_rng(1), 10)
        manifest = store.save(path, step=10)
        assert manifest["shard_rows"] == [s["rows"] for s in store.stats()["shards"]]
        root = zarr.open(path, mode="r")  # plain zarr: keys beside the weights
        assert {"keys", "weights", "slots", "pending"} <= set(root["shards/0"].keys())
        saved = state(store)
        _train(store, np.random.default_rng(2), 5)
        for shards in (2, 1, 4):
            with DynamicEmbeddingStore.restore(
                path, name=f"{table_name}-{shards}", num_shards=shards, backend="inprocess"
            ) as r:
                restored = state(r)  # fmt: skip
                assert (restored[0] == saved[0]).all() and (restored[1] == saved[1]).all()
                assert restored[2] == saved[2]  # counters, pending and step too
                adds_up(r.stats())
                _train(r, np.random.default_rng(2), 5)
                _same(r, store)


def test_restore_with_eviction_continues_bit_exactly(table_name, tmp_path):
    path = str(tmp_path / "c")
    with make(table_name, num_shards=2, capacity=30, eviction="lfu", optimizer="adagrad") as s:
        _train(s, np.random.default_rng(3), 8)
        s.save(path)
        _train(s, np.random.default_rng(4), 8)
        with DynamicEmbeddingStore.restore(path, name=f"{table_name}-r", backend="inprocess") as r:
            _train(r, np.random.default_rng(4), 8)
            _same(r, s)
            assert r.stats()["total"] == s.stats()["total"]
        with pytest.raises(TableFullError, match="larger capacity"):
            DynamicEmbeddingStore.restore(path, name=f"{table_name}-x", capacity=4,
                                          num_shards=4, backend="inprocess")  # fmt: skip


def test_checkpoint_manager_saves_and_restores_dynamic_tables(table_name, tmp_path):
    mgr = CheckpointManager(str(tmp_path / "run"), keep=2)
    with make(table_name, key_dtype="string") as store:
        for step in (1, 2, 3):
            store.apply_gradients([f"k{step}", "shared"], ones(2))
            mgr.save(store, step)
        mgr.save(store, 3, overwrite=True)  # same path: written beside, then swapped in
        assert mgr.steps() == [2, 3]
        manifest = json.loads(open(os.path.join(mgr.latest(), "manifest.json")).read())
        assert manifest["kind"] == "dynamic" and manifest["key_dtype"] == "string"
        with mgr.restore_latest(name=f"{table_name}-r", backend="inprocess") as r:
            assert isinstance(r, DynamicEmbeddingStore)
            _, rows = r.get_weights()
            assert (rows == store.get_weights()[1]).all()


def test_damaged_checkpoints_are_refused(table_name, tmp_path):
    path = tmp_path / "c"
    with make(table_name) as store:
        store.apply_gradients([1, 2, 3], ones(3))
        store.save(str(path))
    chunk = next(p for p in path.glob("shards/*/weights/c/0/0"))
    chunk.unlink()
    with pytest.raises(shardemb.CheckpointCorruptError, match="missing"):
        DynamicEmbeddingStore.restore(str(path), backend="inprocess")
    (path / "manifest.json").unlink()
    with pytest.raises(shardemb.CheckpointCorruptError, match="incomplete"):
        DynamicEmbeddingStore.restore(str(path), backend="inprocess")


# -- bad input ----------------------------------------------------------------------------
BAD_INT64 = [["a", "b"], np.array([1.5]), [1.0, 2.0], [2**64], np.array([2**63], np.uint64), [None]]
BAD_STRING = [[1, 2], np.array([1.5]), np.arange(3), [b"ok", 3], [["a"], ["b", "c"]], ["\ud800"]]


def test_bad_keys_are_typed_errors_and_nothing_changes(table_name):
    for key_dtype, bad_values in (("int64", BAD_INT64), ("string", BAD_STRING)):
        with make(f"{table_name}-{key_dtype}", key_dtype=key_dtype) as store:
            for bad in bad_values:
                for push in (False, True):
                    with pytest.raises(InvalidIdsError, match="keys") as info:
                        store.apply_gradients(bad, ones(len(bad))) if push else store.lookup(bad)
                    assert isinstance(info.value, ShardembError) and isinstance(
                        info.value, ValueError
                    )
            assert store.stats()["total"]["step"] == 0


def test_non_finite_gradients_are_refused_and_nothing_changes(table_name):
    with make(table_name) as store:
        store.apply_gradients([1, 2], ones(2))
        before = state(store)
        for bad in (np.nan, np.inf, 1e39):  # 1e39 is Inf as float32, the table's dtype
            with pytest.raises(InvalidGradientError, match="NaN or Inf"):
                store.apply_gradients([1, 3], np.full((2, 4), bad))
        with pytest.raises(InvalidGradientError, match="shape"):
            store.apply_gradients([1, 3], ones(3))
        after = state(store)
        assert (after[1] == before[1]).all() and after[2] == before[2]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"capacity": 2, "num_shards": 3}, "capacity"),
        ({"capacity": 0}, "capacity"),
        ({"eviction": "lru"}, "give a capacity"),
        ({"capacity": 9, "eviction": "fifo"}, "eviction"),
        ({"capacity": 9, "eviction": {"ttl_steps": 0}}, "ttl_steps"),
        ({"admission": {"min_count": 0}}, "min_count"),
        ({"admission": {"min": 2}}, "admission"),
        ({"admission": {"min_count": 2, "default_row": "ones"}}, "default_row"),
        ({"key_dtype": "float"}, "key_dtype"),
        ({"partition": "div"}, "partition"),
        ({"dim": 0}, "dim"),
    ],
)
def test_bad_dynamic_configs_are_typed_errors(table_name, kwargs, match):
    kwargs = {"num_shards": 2, "dim": 4, **kwargs}
    with pytest.raises(InvalidConfigError, match=match):
        EmbeddingStore.create(table_name, vocab_size=None, backend="inprocess", **kwargs)


def test_create_forwards_and_fixed_tables_refuse_dynamic_arguments(table_name):
    with pytest.raises(InvalidConfigError, match="vocab_size=None"):
        EmbeddingStore.create(table_name, 100, 4, num_shards=2, capacity=10, backend="inprocess")
    store = EmbeddingStore.create(table_name, None, 4, num_shards=2, backend="inprocess")
    assert isinstance(store, DynamicEmbeddingStore) and store.vocab_size is None
    assert DynamicConfig.from_dict(store.config.to_dict()) == store.config
    assert "DynamicEmbeddingStore" in repr(store)
    store.close()
    with EmbeddingStore.create(table_name, 100, 4, num_shards=2, backend="inprocess") as fixed:
        assert fixed.shape == (100, 4)


# -- Ray ----------------------------------------------------------------------------------
def test_dynamic_table_on_ray_actors(ray_session, table_name, tmp_path):
    store = EmbeddingStore.create(table_name, vocab_size=None, dim=4, num_shards=2,
                                  key_dtype="string", capacity=8, eviction="lru",
                                  optimizer=SGD, seed=1, backend="ray")  # fmt: skip
    try:
        init = store.lookup(["x", "y", "x"])
        store.apply_gradients(["x", "x", "y"], ones(3))
        assert np.allclose(store.lookup(["x", "y"]), init[:2] - [[2.0], [1.0]])
        other = DynamicEmbeddingStore.connect(table_name, backend="ray")
        assert other.stats()["total"]["rows"] == 2
        store.save(str(tmp_path / "c"))
        adds_up(store.stats())
    finally:
        store.close()
    with DynamicEmbeddingStore.restore(str(tmp_path / "c"), num_shards=1, backend="inprocess") as r:
        assert np.allclose(r.lookup(["x", "y"]), init[:2] - [[2.0], [1.0]])


# -- crash safety -------------------------------------------------------------------------
CRASH = """
import os, sys
import numpy as np
import shardemb.checkpoint as ckpt
from shardemb import CheckpointManager, EmbeddingStore

root, stage = sys.argv[1], sys.argv[2]
store = EmbeddingStore.create("crash", vocab_size=None, dim=4, num_shards=2, optimizer="adam",
                              capacity=64, eviction="lru", seed=3, backend="inprocess")
rng = np.random.default_rng(0)
def push(n):
    for _ in range(n):
        store.apply_gradients(rng.integers(-99, 99, 20) * 2**40,
                              rng.standard_normal((20, 4)).astype(np.float32))
mgr = CheckpointManager(os.path.join(root, "run"), keep=3, chunk_rows=4)
push(3)
mgr.save(store, 1)
store.save(os.path.join(root, "same"))
np.savez(os.path.join(root, "expected.npz"), *store.get_weights())
push(2)
os.environ[ckpt.format.KILL_ENV] = stage
if stage == "after_replace":
    store.save(os.path.join(root, "same"))
else:
    mgr.save(store, 2)
print("survived", flush=True)
"""


@pytest.mark.parametrize(
    "stage", ["mid_chunks", "before_manifest", "manifest_tmp", "after_replace"]
)
def test_a_save_killed_at_any_stage_keeps_the_previous_checkpoint(tmp_path, stage):
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "SHARDEMB_CHECKPOINT_KILL_AT"}
    done = subprocess.run(
        [sys.executable, "-c", CRASH, str(tmp_path), stage],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == -9, done.stderr[-2000:]
    expected = np.load(tmp_path / "expected.npz")
    mgr = CheckpointManager(str(tmp_path / "run"))
    assert mgr.steps() == [1]
    paths = [mgr.latest(), str(tmp_path / "same")]
    for i, path in enumerate(paths):
        if stage == "after_replace" and i == 1:
            continue  # the new checkpoint was swapped in whole: checked below
        with DynamicEmbeddingStore.restore(path, name=f"r{i}-{stage}", backend="inprocess") as r:
            keys, rows = r.get_weights()
            assert (keys == expected["arr_0"]).all() and (rows == expected["arr_1"]).all()
    if stage == "after_replace":
        with DynamicEmbeddingStore.restore(paths[1], name="r-new", backend="inprocess") as r:
            assert r.stats()["total"]["step"] == 5
