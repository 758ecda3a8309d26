"""ShardedEmbedding on a dynamic table (input_dim=None): int64 and string keys in the Keras
layer. Most tests train the same model on a dynamic table and on a fixed one whose ids are
the keys' positions in a vocabulary, from the same rows, and compare the tables."""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from shardemb import ShardedEmbedding
from shardemb.errors import InvalidConfigError, InvalidIdsError, ShardembError
from shardemb.keras.callbacks import TableStats

D, SEQ = 4, 3
EDGES = np.array([-(2**63), -(2**63) + 1, -1, 0, 1, 2**40, 2**63 - 2, 2**63 - 1], np.int64)
STRINGS = np.array(["", "a", "ünïcødé", "用户:42", "a ", "\x00", "x" * 300, "item/7"], object)
ADAGRAD = {"name": "adagrad", "learning_rate": 0.3}


def _dynamic(**kw):
    kw.setdefault("backend", "inprocess")
    kw.setdefault("seed", 5)
    layer = ShardedEmbedding(None, D, **kw)
    layer.build()
    return layer


def _model(emb, dtype, seq=SEQ):
    inp = keras.Input((seq,), dtype=dtype)
    out = keras.layers.Dense(1)(keras.layers.Flatten()(emb(inp)))
    return keras.Model(inp, out)


def _twins(vocab, key_dtype, **kw):
    """A model on a dynamic table and the same model on a fixed table of ``len(vocab)``
    rows that start as the dynamic table's initial rows of ``vocab``."""
    emb = _dynamic(key_dtype=key_dtype, optimizer=ADAGRAD, num_shards=3, **kw)
    init = emb.store.lookup(vocab)
    ref_emb = ShardedEmbedding(len(vocab), D, weights=[init], optimizer=ADAGRAD,
                               backend="inprocess")  # fmt: skip
    model = _model(emb, "string" if key_dtype == "string" else "int64")
    ref = _model(ref_emb, "int64")
    ref.layers[-1].set_weights(model.layers[-1].get_weights())
    return model, emb, ref, ref_emb


def _batches(vocab, rng, n=24):
    ids = rng.integers(0, len(vocab), (n, SEQ))
    return ids, vocab[ids], rng.normal(size=(n, 1)).astype(np.float32)


def _fit_twins(model, ref, keys, ids, y, **compile_kw):
    for m, x in ((model, keys), (ref, ids)):
        m.compile(keras.optimizers.Adagrad(0.3), "mse", **compile_kw)
        m.fit(x, y, batch_size=6, epochs=2, shuffle=False, verbose=0)


def _assert_same_table(emb, ref_emb, vocab, ids):
    keys, rows = emb.get_weights()
    seen = np.unique(ids)
    want = emb.store.hash_keys(vocab[seen])
    order = np.argsort(want)
    np.testing.assert_array_equal(keys, want[order])
    np.testing.assert_allclose(rows, ref_emb.get_weights()[0][seen[order]], rtol=1e-5, atol=1e-6)


def test_string_keys_train_in_fit_as_a_mapped_fixed_table(rng):
    model, emb, ref, ref_emb = _twins(STRINGS, "string")
    ids, keys, y = _batches(STRINGS, rng)
    _fit_twins(model, ref, tf.constant(keys.tolist()), ids, y)
    _assert_same_table(emb, ref_emb, STRINGS, ids)
    x = tf.constant(keys[:5].tolist())
    np.testing.assert_allclose(model.predict(x, verbose=0), ref.predict(ids[:5], verbose=0),
                               rtol=1e-5)  # fmt: skip
    total = emb.store.stats()["total"]
    assert total["inserts"] - total["evictions"] == total["rows"] == len(np.unique(ids))
    # str and bytes are the same key; a 1-D object array works too.
    np.testing.assert_array_equal(emb(np.array(["a", "用户:42"], object)),
                                  emb(tf.constant([b"a", "用户:42".encode()])))  # fmt: skip


def test_int64_keys_at_the_edges(rng):
    model, emb, ref, ref_emb = _twins(EDGES, "int64")
    ids, keys, y = _batches(EDGES, rng)
    # Unknown keys read their initial rows, through the layer as through the store.
    np.testing.assert_array_equal(emb(EDGES), emb.store.lookup(EDGES))
    _fit_twins(model, ref, keys.astype(np.int64), ids, y)
    _assert_same_table(emb, ref_emb, EDGES, ids)
    assert {-(2**63), 2**63 - 1} <= set(emb.get_weights()[0].tolist())


def test_ragged_and_sparse_inputs_with_combiners():
    emb = _dynamic(key_dtype="string")
    ragged = tf.ragged.constant([["a", "ü"], [], ["a", "a", ""]])
    rows = {k: emb.store.lookup([k])[0] for k in ("a", "ü", "")}
    out = emb(ragged)  # no combiner: ragged rows
    assert isinstance(out, tf.RaggedTensor)
    np.testing.assert_allclose(out.flat_values, [rows[k] for k in ("a", "ü", "a", "a", "")])
    sums = np.stack([rows["a"] + rows["ü"], np.zeros(D), 2 * rows["a"] + rows[""]])
    counts = np.array([2.0, 1.0, 3.0])[:, None]  # the empty example stays zeros
    for combiner, scale in (("sum", 1.0), ("mean", counts), ("sqrtn", np.sqrt(counts))):
        pooled = _dynamic(key_dtype="string", combiner=combiner, store=emb.store)
        for x in (ragged, ragged.to_sparse()):
            np.testing.assert_allclose(pooled(x), sums / scale, rtol=1e-6, atol=1e-7)
    # int64 keys, sparse without a combiner: absent positions read the padding key 0.
    ints = _dynamic()
    sparse = tf.SparseTensor([[0, 1], [1, 0]], tf.constant([2**62, -7], tf.int64), [2, 2])
    want = ints.store.lookup(np.array([[0, 2**62], [-7, 0]]))
    np.testing.assert_allclose(ints(sparse), want)


def test_masking_uses_the_padding_key():
    for key_dtype, keys in (("string", [["a", "", "b"]]), ("int64", [[2**50, 0, -3]])):
        emb = _dynamic(key_dtype=key_dtype, mask_zero=True)
        inp = keras.Input((3,), dtype=key_dtype)
        model = keras.Model(inp, keras.layers.GlobalAveragePooling1D()(emb(inp)))
        x = tf.constant(keys)
        assert emb.compute_mask(x).numpy().tolist() == [[True, False, True]]
        rows = emb.store.lookup(np.asarray(keys, object if key_dtype == "string" else None))
        np.testing.assert_allclose(model.predict(x, verbose=0), rows[:, [0, 2]].mean(1),
                                   rtol=1e-6)  # fmt: skip


def test_get_config_round_trip_and_keras_file(tmp_path, rng):
    emb = _dynamic(key_dtype="string", capacity=6, eviction={"ttl_steps": 3}, name="tags",
                   admission={"min_count": 1, "default_row": "zeros"})  # fmt: skip
    config = emb.get_config()
    assert config["input_dim"] is None and config["key_dtype"] == "string"
    assert config["capacity"] == 6 and config["eviction"] == {"ttl_steps": 3}
    assert ShardedEmbedding.from_config(config).get_config() == config
    model = _model(emb, "string")
    model.compile(keras.optimizers.SGD(0.1), "mse")
    _, keys, y = _batches(STRINGS, rng)
    x = tf.constant(keys.tolist())
    model.fit(x, y, batch_size=6, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    layer = loaded.get_layer("tags")
    assert layer.dynamic and layer.store is not emb.store
    for a, b in zip(layer.get_weights(), emb.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert layer.store.config.to_dict() | {"name": 0} == emb.store.config.to_dict() | {"name": 0}
    unseen = tf.constant([["never", "seen", "a"]])  # same seed: same initial rows
    np.testing.assert_array_equal(loaded.predict(unseen, verbose=0),
                                  model.predict(unseen, verbose=0))  # fmt: skip


def test_weights_are_keys_and_rows(rng):
    emb = _dynamic(key_dtype="string")
    emb.set_weights([np.array(["a", "b"], object), np.ones((2, D), np.float32)])
    keys, rows = emb.get_weights()
    assert sorted(keys.tolist()) == sorted(emb.store.hash_keys(["a", "b"]).tolist())
    other = _dynamic(key_dtype="string", weights=[keys, rows * 2])  # hashed keys load too
    np.testing.assert_array_equal(other(tf.constant(["b"])), 2 * np.ones((1, D)))
    assert emb.count_params() == 2 * D and tuple(emb.embeddings.shape) == (2, D)
    model = _model(emb, "string", seq=1)
    assert model.get_weights()[0].shape == (2, D)  # the rows, where the table sits
    with pytest.raises(InvalidConfigError, match=r"set_weights\(\[keys, rows\]\)"):
        emb.embeddings.assign(rows)
    with pytest.raises(InvalidConfigError, match=r"\[keys, rows\]"):
        emb.set_weights([rows])


def test_jit_compile_int64_table_trains_as_uncompiled(rng):
    vocab = EDGES
    ids, keys, y = _batches(vocab, rng)
    results = []
    for jit in (False, True):
        keras.utils.set_random_seed(7)  # the same Dense weights
        model, emb, _, _ = _twins(vocab, "int64", capacity=6, eviction="lfu")
        model.compile(keras.optimizers.Adagrad(0.3), "mse", jit_compile=jit)
        fit = model.fit(keys, y, batch_size=6, epochs=2, shuffle=False, verbose=0)
        assert model.jit_compile is jit
        results.append((fit.history["loss"], *emb.get_weights(), emb.store.stats()["total"]))
    (loss_a, keys_a, rows_a, stats_a), (loss_b, keys_b, rows_b, stats_b) = results
    np.testing.assert_allclose(loss_a, loss_b, rtol=1e-5)
    np.testing.assert_array_equal(keys_a, keys_b)
    np.testing.assert_allclose(rows_a, rows_b, rtol=1e-5, atol=1e-6)
    assert stats_a["evictions"] == stats_b["evictions"] > 0


def test_string_table_under_jit_falls_back_with_a_warning(rng):
    model, emb, ref, ref_emb = _twins(STRINGS, "string")
    ids, keys, y = _batches(STRINGS, rng)
    with pytest.warns(UserWarning, match="string keys.*Proceeding with jit_compile=False"):
        _fit_twins(model, ref, tf.constant(keys.tolist()), ids, y, jit_compile=True)
    _assert_same_table(emb, ref_emb, STRINGS, ids)


def test_table_stats_in_logs_and_history():
    emb = _dynamic(capacity=8, eviction="lru", name="items")
    model = _model(emb, "int64", seq=2)
    model.compile("sgd", "mse")
    stats = TableStats(["rows", "inserts", "evictions"], every_n_batches=1)
    seen = []
    spy = keras.callbacks.LambdaCallback(on_train_batch_end=lambda b, logs: seen.append(logs))
    keys = np.arange(40, dtype=np.int64).reshape(20, 2) * 2**40
    fit = model.fit(keys, np.ones((20, 1)), batch_size=4, verbose=0, callbacks=[stats, spy])
    total = emb.store.stats()["total"]
    assert fit.history["items/rows"] == [total["rows"]]
    assert seen[-1]["items/evictions"] == total["evictions"] > 0
    first = [seen[0][f"items/{c}"] for c in ("rows", "inserts", "evictions")]
    assert first[0] == first[1] - first[2] > 0 and len(seen) == 5
    with pytest.raises(InvalidConfigError, match="counters"):
        TableStats("rows")


def test_follows_the_models_optimizer_when_none_is_given(rng):
    emb = _dynamic(key_dtype="string")
    model = _model(emb, "string", seq=1)
    model.compile(keras.optimizers.Adagrad(0.2), "mse")
    model.fit(tf.constant([["a"], ["b"]]), np.ones((2, 1)), verbose=0)
    assert emb.store.config.optimizer.get_config()["name"] == "adagrad"
    assert emb.store.stats()["total"]["rows"] == 2


def test_bad_input_and_arguments_are_typed_errors():
    strings, ints = _dynamic(key_dtype="string"), _dynamic()
    for layer, bad in ((ints, tf.constant(["a"])), (ints, np.array([1.5])),
                       (strings, np.array([1, 2])), (strings, np.array([1.5]))):  # fmt: skip
        with pytest.raises(InvalidIdsError, match="inputs must be") as info:
            layer(bad)
        assert isinstance(info.value, ShardembError) and isinstance(info.value, ValueError)
    bad_args = [
        ({"key_dtype": "float32"}, "key_dtype"),
        ({"capacity": 1, "num_shards": 2}, "capacity"),
        ({"eviction": "lru"}, "capacity"),
        ({"eviction": "fifo", "capacity": 4}, "eviction"),
        ({"admission": {"min_count": 0}}, "min_count"),
        ({"partition": "div"}, "partition"),
        ({"embeddings_constraint": "non_neg"}, "embeddings_constraint"),
        ({"store": strings.store, "key_dtype": "int64"}, "key_dtype"),
        ({"store": strings.store, "capacity": 4}, "capacity"),
    ]
    for kwargs, match in bad_args:
        with pytest.raises(InvalidConfigError, match=match):
            _dynamic(**kwargs)
    for kwargs in ({"key_dtype": "string"}, {"capacity": 10}, {"store": strings.store}):
        with pytest.raises(InvalidConfigError, match="input_dim=None"):
            ShardedEmbedding(10, D, backend="inprocess", **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        strings.close()
