"""ShardedEmbedding against keras.layers.Embedding."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import shardemb
from shardemb import ShardedEmbedding
from shardemb.errors import InvalidConfigError

V, D = 40, 4


def _sharded(**kw):
    kw.setdefault("backend", "inprocess")
    return ShardedEmbedding(V, D, **kw)


def _apply(tape, loss, layer, optimizer):
    grads = tape.gradient(loss, layer.trainable_variables)
    optimizer.apply_gradients(zip(grads, layer.trainable_variables, strict=True))


def _step_counts(layer):
    return [i["step"] for i in layer.store.info()]


@pytest.fixture
def init(rng):
    return rng.normal(size=(V, D)).astype(np.float32)


@pytest.mark.parametrize("shape", [(), (5,), (2, 3), (2, 3, 4)])
def test_output_shape_and_values_any_rank(shape, init, rng):
    layer = _sharded(weights=[init], num_shards=3)
    ids = rng.integers(0, V, shape)
    out = layer(ids)
    assert tuple(out.shape) == shape + (D,)
    np.testing.assert_array_equal(out.numpy(), init[ids])
    graph_out = tf.function(lambda x: layer(x))(tf.constant(ids))
    np.testing.assert_array_equal(graph_out.numpy(), init[ids])


def test_functional_model_and_mask_propagation(init):
    ids = np.array([[1, 2, 0], [4, 5, 6]])
    ref_layer = keras.layers.Embedding(V, D, mask_zero=True, weights=[init])
    layer = _sharded(mask_zero=True, weights=[init])
    np.testing.assert_array_equal(layer.compute_mask(ids).numpy(), ref_layer.compute_mask(ids))
    outputs = []
    for emb in (ref_layer, layer):
        inp = keras.Input((None,), dtype="int64")
        x = emb(inp)
        assert tuple(x.shape) == (None, None, D)
        out = keras.layers.GlobalAveragePooling1D()(x)  # masked mean
        outputs.append(keras.Model(inp, out).predict(ids, verbose=0))
    np.testing.assert_array_equal(outputs[0], outputs[1])
    np.testing.assert_allclose(outputs[1][0], init[[1, 2]].mean(0), rtol=1e-6)


def test_weights_count_params_embeddings_and_config(init):
    layer = _sharded(
        weights=[init], optimizer="adagrad", num_shards=3, partition="div", name="items"
    )
    assert layer.count_params() == V * D
    np.testing.assert_array_equal(layer.get_weights()[0], init)
    assert layer.embeddings.shape == (V, D) and layer.embeddings.dtype == "float32"
    np.testing.assert_array_equal(layer.embeddings.numpy(), init)
    layer.set_weights([init * 2])
    np.testing.assert_array_equal(layer.get_weights()[0], init * 2)
    config = layer.get_config()
    assert config["num_shards"] == 3 and config["partition"] == "div"
    clone = ShardedEmbedding.from_config(config)
    assert clone.get_config() == {**config, "name": clone.name}
    assert clone.store is None or clone.store.name != layer.store.name


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"input_dim": 0}, r"`input_dim` must be a positive integer. Received: input_dim=0"),
        ({"output_dim": 2.5}, r"Received: output_dim=2.5 \(of type float\)"),
        ({"combiner": "max"}, "Received: combiner='max'"),
        ({"num_shards": 0}, "Received: num_shards=0"),
        ({"optimizer": "rmsprop"}, "Received: optimizer='rmsprop'"),
        ({"embeddings_initializer": "glorot"}, "Received: initializer='glorot'"),
        ({"store": "a-store"}, "`store` must be an EmbeddingStore"),
    ],
)
def test_bad_arguments(kwargs, match):
    args = {"input_dim": V, "output_dim": D, "backend": "inprocess", **kwargs}
    with pytest.raises(InvalidConfigError, match=match):
        ShardedEmbedding(**args)


def _two_models(init, keras_opt, **layer_kw):
    models = []
    for emb in (
        keras.layers.Embedding(V, D, weights=[init]),
        _sharded(weights=[init], optimizer=keras_opt(), **layer_kw),
    ):
        inp = keras.Input((3,), dtype="int64")
        x = keras.layers.Flatten()(emb(inp))
        x = keras.layers.Dense(5, activation="tanh", kernel_initializer="glorot_uniform")(x)
        out = keras.layers.Dense(1)(x)
        models.append(keras.Model(inp, out))
    for a, b in zip(models[0].layers[2:], models[1].layers[2:], strict=True):
        b.set_weights(a.get_weights())
    for m in models:
        m.compile(keras_opt(), "mse")
    return models


@pytest.mark.parametrize(
    "keras_opt",
    [lambda: keras.optimizers.SGD(0.1), lambda: keras.optimizers.Adagrad(0.5)],
    ids=["sgd", "adagrad"],
)
def test_fit_parity_with_keras_embedding(keras_opt, init, rng):
    # Each batch of 8 rows x 3 ids holds distinct ids: Keras's Adagrad squares duplicate
    # ids' gradients one by one instead of summing them first (see the next test).
    x = np.stack([rng.permutation(V)[:24].reshape(8, 3) for _ in range(5)]).reshape(40, 3)
    y = rng.normal(size=(40, 1)).astype(np.float32)
    ref, sharded = _two_models(init, keras_opt)
    np.testing.assert_array_equal(ref.predict(x, verbose=0), sharded.predict(x, verbose=0))
    for m in (ref, sharded):
        m.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    assert _step_counts(sharded.layers[1]) == [5, 5]
    for a, b in zip(ref.layers[1:], sharded.layers[1:], strict=True):
        for wa, wb in zip(a.get_weights(), b.get_weights(), strict=True):
            np.testing.assert_allclose(wa, wb, atol=1e-5)
    assert not np.allclose(sharded.layers[1].get_weights()[0], init)


def test_duplicate_ids_are_summed_before_adagrad(init):
    """Documented difference: shardemb applies Adagrad to the summed gradient of a row
    (the gradient of the dense table); Keras's sparse path squares each duplicate."""
    layer = _sharded(weights=[init], optimizer=keras.optimizers.Adagrad(0.1))
    dense = keras.Variable(init.copy())
    ids = np.array([1, 1, 2])
    weights = tf.constant(np.arange(12, dtype=np.float32).reshape(3, 4))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(ids) * weights)
    grads = tape.gradient(loss, layer.trainable_variables)
    keras.optimizers.Adagrad(0.1).apply_gradients(
        zip(grads, layer.trainable_variables, strict=True)
    )
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.gather(dense, ids) * weights)
    g = tf.convert_to_tensor(tape.gradient(loss, [dense])[0])  # densified: duplicates summed
    keras.optimizers.Adagrad(0.1).apply_gradients([(g, dense)])
    np.testing.assert_allclose(layer.get_weights()[0], dense.numpy(), atol=1e-6)


def test_duplicate_ids_sum_in_order_of_occurrence_bit_for_bit(init, rng):
    """The trainer sums a row's duplicates as TensorFlow densifies the gradient (in order
    of occurrence) and the table moves by exactly that sum: SGD(1.0) gives the same bits
    as a dense Keras variable."""
    layer = _sharded(weights=[init], optimizer={"name": "sgd", "learning_rate": 1.0})
    dense = keras.Variable(init.copy())
    ids = rng.integers(0, 8, size=(64, 5))  # many duplicates of a few rows
    weights = tf.constant(rng.normal(size=(64, 5, D)).astype(np.float32))
    for var, lookup in ((None, layer), (dense, lambda i: tf.gather(dense, i))):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(lookup(ids) * weights)
        variables = layer.trainable_variables if var is None else [dense]
        (grad,) = tape.gradient(loss, variables)
        if var is not None:
            grad = tf.convert_to_tensor(grad)  # unsorted_segment_sum: sequential on CPU
        keras.optimizers.SGD(1.0).apply_gradients([(grad, variables[0])])
    np.testing.assert_array_equal(layer.get_weights()[0], dense.numpy())
    assert not np.array_equal(dense.numpy(), init)


def test_gradient_tape_and_custom_train_step_push(init):
    layer = _sharded(weights=[init], optimizer={"name": "sgd", "learning_rate": 1.0})
    ids = np.array([[3, 3], [7, 0]])
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(ids))
    grads = tape.gradient(loss, layer.trainable_variables)
    assert isinstance(grads[0], tf.IndexedSlices)  # the step buffer's, like Keras's table
    np.testing.assert_array_equal(layer.get_weights()[0], init)  # tape.gradient pushes nothing
    keras.optimizers.SGD(1.0).apply_gradients(zip(grads, layer.trainable_variables, strict=True))
    expect = init.copy()
    expect[3] -= 2.0
    expect[[7, 0]] -= 1.0
    np.testing.assert_allclose(layer.get_weights()[0], expect, rtol=1e-6)

    # A model whose only trainable weight is the sharded table, in a user's tf.function.
    model = keras.Sequential(
        [keras.Input((2,), dtype="int64"), layer, keras.layers.GlobalAveragePooling1D()]
    )
    opt = keras.optimizers.SGD(0.5)

    @tf.function
    def train_step(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(model(x, training=True))
        opt.apply_gradients(
            zip(
                tape.gradient(loss, model.trainable_variables),
                model.trainable_variables,
                strict=True,
            )
        )
        return loss

    before = layer.get_weights()[0]
    train_step(tf.constant([[5, 6]]))
    after = layer.get_weights()[0]
    np.testing.assert_allclose(after[[5, 6]], before[[5, 6]] - 0.5, rtol=1e-6)
    np.testing.assert_array_equal(np.delete(after, [5, 6], 0), np.delete(before, [5, 6], 0))


def test_fit_with_no_other_weight_and_predict_evaluate_push_nothing(init, rng):
    layer = _sharded(weights=[init], optimizer="adagrad")
    model = keras.Sequential(
        [keras.Input((3,), dtype="int64"), layer, keras.layers.GlobalAveragePooling1D()]
    )
    model.compile(keras.optimizers.SGD(0.1), "mse")
    x, y = rng.integers(0, V, (16, 3)), np.zeros((16, D), np.float32)
    model.predict(x, verbose=0)
    model.evaluate(x, y, verbose=0)
    assert _step_counts(layer) == [0, 0]
    np.testing.assert_array_equal(layer.get_weights()[0], init)
    history = model.fit(x, y, batch_size=4, epochs=3, verbose=0)
    assert _step_counts(layer) == [12, 12]
    assert history.history["loss"][-1] < history.history["loss"][0]


def test_frozen_layer_is_bit_for_bit_unchanged(init, rng):
    layer = _sharded(weights=[init], trainable=False)
    inp = keras.Input((3,), dtype="int64")
    model = keras.Model(inp, keras.layers.Dense(1)(keras.layers.Flatten()(layer(inp))))
    model.compile("sgd", "mse")
    model.fit(rng.integers(0, V, (16, 3)), np.ones((16, 1)), epochs=2, verbose=0)
    np.testing.assert_array_equal(layer.get_weights()[0], init)
    assert _step_counts(layer) == [0, 0]


def test_out_of_range_id_during_fit_raises_and_changes_nothing(init):
    layer = _sharded(weights=[init])
    model = keras.Sequential(
        [keras.Input((2,), dtype="int64"), layer, keras.layers.Flatten(), keras.layers.Dense(1)]
    )
    model.compile("sgd", "mse")
    with pytest.raises(Exception, match=r"must be in \[0, 40\). Received: 1 id\(s\) out of range"):
        model.fit(np.array([[1, 2], [3, V]]), np.ones((2, 1)), batch_size=2, verbose=0)
    np.testing.assert_array_equal(layer.get_weights()[0], init)
    assert _step_counts(layer) == [0, 0]


def test_out_of_range_id_in_a_compiled_step_leaves_every_layer_as_it_was(init):
    """Under jit_compile=True the layers are fed together: when one layer's ids are bad,
    no layer keeps slots of that step, and the next good step trains all of them."""
    a, b = _sharded(weights=[init], name="first"), _sharded(weights=[init], name="second")
    xa, xb = keras.Input((2,), dtype="int64"), keras.Input((2,), dtype="int64")
    out = keras.layers.Dense(1)(keras.layers.Flatten()(keras.layers.Concatenate()([a(xa), b(xb)])))
    model = keras.Model([xa, xb], out)
    model.compile(keras.optimizers.SGD(0.1), "mse", jit_compile=True)
    good, y = np.array([[1, 2], [3, 4]]), np.ones((2, 1))
    with pytest.raises(Exception, match=r"out of range"):
        model.fit([good, np.array([[1, 2], [3, V]])], y, batch_size=2, verbose=0)
    assert a._slots.used == b._slots.used == 0
    for layer in (a, b):
        np.testing.assert_array_equal(layer.get_weights()[0], init)
    model.fit([good, good + 10], y, batch_size=2, verbose=0)
    assert _step_counts(a) == _step_counts(b) == [1, 1]
    assert not np.array_equal(a.get_weights()[0][1:5], init[1:5])
    assert not np.array_equal(b.get_weights()[0][11:15], init[11:15])


def _combiner_reference(table, ragged, combiner):
    var = tf.Variable(table)
    sparse = ragged.to_sparse()
    with tf.GradientTape() as tape:
        out = tf.nn.safe_embedding_lookup_sparse(var, sparse, combiner=combiner)
        loss = tf.reduce_sum(out * tf.range(1.0, D + 1.0))
    return out.numpy(), tf.convert_to_tensor(tape.gradient(loss, var)).numpy()


@pytest.mark.parametrize("combiner", ["sum", "mean", "sqrtn"])
@pytest.mark.parametrize("kind", ["ragged", "sparse"])
def test_combiners_equal_safe_embedding_lookup_sparse(combiner, kind, init):
    ragged = tf.ragged.constant([[1, 2, 2], [], [5], [7, 1, 3, 3]], dtype=tf.int64)
    layer = _sharded(
        weights=[init], combiner=combiner, optimizer={"name": "sgd", "learning_rate": 1.0}
    )
    ref_out, ref_grad = _combiner_reference(init, ragged, combiner)
    inputs = ragged if kind == "ragged" else ragged.to_sparse()
    with tf.GradientTape() as tape:
        out = layer(inputs)
        loss = tf.reduce_sum(out * tf.range(1.0, D + 1.0))
    _apply(tape, loss, layer, keras.optimizers.SGD(1.0))
    np.testing.assert_allclose(out.numpy(), ref_out, rtol=1e-6, atol=1e-7)
    # SGD with learning rate 1: the table moved by exactly minus the gradient.
    np.testing.assert_allclose(init - layer.get_weights()[0], ref_grad, rtol=1e-5, atol=1e-6)


def test_combiner_rejects_wrong_rank(init):
    layer = _sharded(weights=[init], combiner="sum")
    with pytest.raises(InvalidConfigError, match="must be 2-D"):
        layer(np.zeros((2, 2, 2), np.int64))


def test_model_save_and_load_round_trip(tmp_path, init, rng):
    layer = _sharded(weights=[init], optimizer="adagrad", num_shards=3)
    inp = keras.Input((3,), dtype="int64")
    model = keras.Model(inp, keras.layers.Dense(1)(keras.layers.Flatten()(layer(inp))))
    model.compile("sgd", "mse")
    x = rng.integers(0, V, (8, 3))
    model.fit(x, np.ones((8, 1)), verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    new_layer = loaded.layers[1]
    assert isinstance(new_layer, ShardedEmbedding) and new_layer.store.name != layer.store.name
    np.testing.assert_array_equal(new_layer.get_weights()[0], layer.get_weights()[0])
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    assert new_layer.store.num_shards == 3 and new_layer.store.config.optimizer.name == "adagrad"


def test_jit_compile_is_kept(init, rng):
    model = keras.Sequential([keras.Input((2,), dtype="int64"), _sharded(weights=[init])])
    model.compile("sgd", "mse", jit_compile=True)  # no "doesn't support" warning
    assert model.jit_compile is True
    x = rng.integers(0, V, (4, 2))
    np.testing.assert_array_equal(model.predict(x, verbose=0), init[x])


def test_attach_existing_store_and_fit_on_ray(ray_session, table_name, init, rng):
    with shardemb.EmbeddingStore.create(
        table_name, V, D, num_shards=2, optimizer={"name": "sgd", "learning_rate": 0.1}
    ) as store:
        store.set_weights(init)
        layer = ShardedEmbedding(V, D, store=store)
        model = keras.Sequential(
            [keras.Input((3,), dtype="int64"), layer, keras.layers.Flatten(), keras.layers.Dense(1)]
        )
        model.compile(keras.optimizers.SGD(0.1), "mse")
        model.fit(rng.integers(0, V, (32, 3)), np.ones((32, 1)), batch_size=8, verbose=0)
        assert [i["step"] for i in store.info()] == [4, 4]
        assert not np.array_equal(store.to_numpy(), init)


def test_table_checkpoint_callback_saves_on_schedule_and_restores(tmp_path, init, rng):
    layer = _sharded(weights=[init], optimizer="adagrad", name="items")
    model = keras.Sequential(
        [keras.Input((3,), dtype="int64"), layer, keras.layers.Flatten(), keras.layers.Dense(1)]
    )
    model.compile("sgd", "mse")
    x, y = rng.integers(0, V, (32, 3)), np.ones((32, 1))
    callback = shardemb.TableCheckpoint(str(tmp_path), every_n_batches=3, keep=2)
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[callback])  # 8 batches
    mgr = shardemb.CheckpointManager(str(tmp_path / "items"))
    assert mgr.steps() == [6, 8]  # every 3 batches (3, 6) and each epoch end (4, 8); keep 2
    saved = layer.get_weights()[0]
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)  # train past the checkpoint
    assert not np.array_equal(layer.get_weights()[0], saved)
    old_store = layer.store
    assert shardemb.TableCheckpoint.restore(model, str(tmp_path), num_shards=3) == {"items": 8}
    assert layer.store is not old_store and layer.store.num_shards == 3
    np.testing.assert_array_equal(layer.get_weights()[0], saved)
    model.predict(x, verbose=0)  # the model works on the restored table
    with pytest.raises(InvalidConfigError, match="every_n_epochs"):
        shardemb.TableCheckpoint(str(tmp_path), every_n_epochs=0)
