"""The table trains exactly when, and by what, the model's optimizer applies: each test
trains the same model with keras.layers.Embedding and with ShardedEmbedding from the same
weights and compares the tables."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import shardemb
from shardemb import ShardedEmbedding
from shardemb.errors import InvalidConfigError
from shardemb.store.reconfigure import pushes_of

V, D, SEQ = 64, 4, 3


@pytest.fixture
def init(rng):
    return rng.normal(size=(V, D)).astype(np.float32)


@pytest.fixture
def mixed_float16():
    keras.mixed_precision.set_global_policy("mixed_float16")
    yield
    keras.mixed_precision.set_global_policy("float32")


def _models(init, *, two_inputs=False, **sharded_kw):
    """The same model twice: with keras.layers.Embedding and with ShardedEmbedding."""
    sharded_kw.setdefault("backend", "inprocess")
    built = []
    for emb in (
        keras.layers.Embedding(V, D, weights=[init]),
        ShardedEmbedding(V, D, weights=[init], **sharded_kw),
    ):
        inputs = [keras.Input((SEQ,), dtype="int64") for _ in range(1 + two_inputs)]
        x = (
            keras.layers.Concatenate(axis=1)([emb(i) for i in inputs])
            if two_inputs
            else emb(inputs[0])
        )
        x = keras.layers.Flatten()(x)
        out = keras.layers.Dense(1, dtype="float32")(keras.layers.Dense(3)(x))
        built.append((keras.Model(inputs if two_inputs else inputs[0], out), emb))
    (ref, ref_emb), (model, emb) = built
    for a, b in zip(ref.layers, model.layers, strict=True):
        if a is not ref_emb:
            b.set_weights(a.get_weights())
    return ref, ref_emb, model, emb


def _distinct_batches(rng, steps, batch, inputs=1):
    """Ids distinct within every batch (Keras's sparse Adagrad squares duplicates apart)."""
    xs = [
        np.stack([rng.permutation(V)[: batch * SEQ].reshape(batch, SEQ) for _ in range(steps)])
        for _ in range(inputs)
    ]
    xs = [x.reshape(steps * batch, SEQ) for x in xs]
    y = rng.normal(size=(steps * batch, 1)).astype(np.float32)
    return (xs if inputs > 1 else xs[0]), y


def _fit_both(ref, model, optimizer, x, y, batch, **compile_kw):
    compile_kw.setdefault("jit_compile", False)
    for m in (ref, model):
        m.compile(optimizer(), "mse", **compile_kw)
        m.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0)


def _table(emb):
    return np.asarray(emb.get_weights()[0], dtype=np.float32)


@pytest.mark.parametrize(
    "optimizer, tol",
    [
        (lambda: keras.optimizers.SGD(0.05), 1e-6),
        (lambda: keras.optimizers.SGD(0.05, gradient_accumulation_steps=2), 1e-6),
        (lambda: keras.optimizers.SGD(0.05, global_clipnorm=0.05), 1e-6),
        (lambda: keras.optimizers.SGD(0.05, clipnorm=0.05), 1e-6),
        (lambda: keras.optimizers.SGD(0.05, clipvalue=0.01), 1e-6),
        (lambda: keras.optimizers.Adagrad(0.3, global_clipnorm=0.5), 1e-5),
    ],
    ids=["sgd", "accumulation", "global_clipnorm", "clipnorm", "clipvalue", "adagrad-clip"],
)
def test_fit_table_parity_with_keras(optimizer, tol, init, rng):
    ref, ref_emb, model, emb = _models(init)
    x, y = _distinct_batches(rng, steps=6, batch=4)
    _fit_both(ref, model, optimizer, x, y, batch=4)
    assert np.abs(_table(ref_emb) - init).max() > 1e-4  # it trained
    np.testing.assert_allclose(_table(emb), _table(ref_emb), atol=tol, rtol=tol)
    # The dense layers saw the same gradients too.
    np.testing.assert_allclose(
        model.layers[-1].get_weights()[0], ref.layers[-1].get_weights()[0], atol=1e-5
    )


def test_accumulation_pushes_once_per_applied_step(init, rng):
    _, _, model, emb = _models(init)
    x, y = _distinct_batches(rng, steps=6, batch=4)
    model.compile(keras.optimizers.SGD(0.05, gradient_accumulation_steps=3), "mse")
    model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    assert emb.store.shard_call(pushes_of) == [2, 2]


def test_mixed_float16_fit_parity_and_dtypes(mixed_float16, init, rng):
    ref, ref_emb, model, emb = _models(init)
    assert emb.compute_dtype == "float16" and emb.store.config.dtype == "float32"
    out = emb(np.array([[1, 2, 3]]))
    assert out.dtype == ref_emb(np.array([[1, 2, 3]])).dtype == tf.float16
    x, y = _distinct_batches(rng, steps=4, batch=4)
    _fit_both(ref, model, lambda: keras.optimizers.SGD(0.05), x, y, batch=4)
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert np.abs(_table(ref_emb) - init).max() > 1e-3
    np.testing.assert_allclose(_table(emb), _table(ref_emb), atol=2e-3)


def test_loss_scale_optimizer_skips_a_non_finite_step(mixed_float16, init):
    _, _, model, emb = _models(init)
    model.compile(keras.optimizers.SGD(0.05), "mse")
    x = np.arange(SEQ)[None]
    model.fit(x, np.full((1, 1), 1e9, np.float32), verbose=0)  # loss overflows in float16
    np.testing.assert_array_equal(_table(emb), init)
    assert emb.store.shard_call(pushes_of) == [0, 0]


def test_float64_layer_outputs_float64(init):
    emb = ShardedEmbedding(V, D, weights=[init], dtype="float64", backend="inprocess")
    ref = keras.layers.Embedding(V, D, weights=[init], dtype="float64")
    ids = np.array([[1, 5]])
    assert emb(ids).dtype == ref(ids).dtype == tf.float64
    assert emb.store.config.dtype == "float64"
    np.testing.assert_array_equal(emb(ids).numpy(), ref(ids).numpy())


def test_shared_layer_with_adam_counts_one_step(init, rng):
    ref, ref_emb, model, emb = _models(init, two_inputs=True)
    (x1, x2), y = _distinct_batches(rng, steps=1, batch=2, inputs=2)
    _fit_both(ref, model, lambda: keras.optimizers.Adam(0.1), [x1, x2], y, batch=2)
    # One push for the two calls, so Adam's bias correction used step 1, as Keras's did.
    assert max(emb.store.shard_call(pushes_of)) == 1
    np.testing.assert_allclose(_table(emb), _table(ref_emb), atol=1e-5)


def test_custom_loop_tape_gradient_changes_nothing_apply_moves(init, rng):
    ref, ref_emb, model, emb = _models(init)
    x, y = _distinct_batches(rng, steps=1, batch=4)
    for m in (ref, model):
        opt = keras.optimizers.Adagrad(0.2)
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean((m(x, training=True) - y) ** 2)
        grads = tape.gradient(loss, m.trainable_variables)
        if m is model:
            np.testing.assert_array_equal(_table(emb), init)  # tape.gradient: nothing moved
        opt.apply_gradients(zip(grads, m.trainable_variables, strict=True))
    np.testing.assert_allclose(_table(emb), _table(ref_emb), atol=1e-6)


def test_custom_loop_in_tf_function_with_optimizer_apply(init, rng):
    ref, ref_emb, model, emb = _models(init)
    x, y = _distinct_batches(rng, steps=3, batch=4)
    for m in (ref, model):
        opt = keras.optimizers.SGD(0.03)

        @tf.function
        def step(xb, yb, m=m, opt=opt):
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean((m(xb, training=True) - yb) ** 2)
            opt.apply(tape.gradient(loss, m.trainable_variables), m.trainable_variables)

        for i in range(3):
            step(tf.constant(x[4 * i : 4 * i + 4]), tf.constant(y[4 * i : 4 * i + 4]))
    np.testing.assert_allclose(_table(emb), _table(ref_emb), atol=1e-6)


def test_saliency_gradient_changes_nothing(init):
    emb = ShardedEmbedding(V, D, weights=[init], backend="inprocess")
    ids = np.array([[1, 2, 3]])
    for _ in range(3):
        with tf.GradientTape(persistent=True) as tape:
            out = emb(ids)
            loss = tf.reduce_sum(out**2)
        g1 = tape.gradient(loss, out)
        g2 = tape.gradient(loss, emb.trainable_variables)
        del tape
    np.testing.assert_allclose(g1.numpy(), 2 * init[ids], rtol=1e-6)
    assert isinstance(g2[0], tf.IndexedSlices)
    np.testing.assert_array_equal(_table(emb), init)
    assert emb.store.shard_call(pushes_of) == [0, 0]


def test_predict_and_evaluate_push_nothing(init, rng):
    _, _, model, emb = _models(init)
    model.compile(keras.optimizers.SGD(0.05), "mse")
    x, y = _distinct_batches(rng, steps=2, batch=4)
    model.predict(x, verbose=0)
    model.evaluate(x, y, verbose=0)
    np.testing.assert_array_equal(_table(emb), init)


def test_model_optimizer_is_followed_without_optimizer_argument(init, rng):
    ref, ref_emb, model, emb = _models(init)  # no optimizer= given
    x, y = _distinct_batches(rng, steps=3, batch=4)
    _fit_both(ref, model, lambda: keras.optimizers.Adagrad(0.25), x, y, batch=4)
    assert emb.store.config.optimizer.name == "adagrad"
    np.testing.assert_allclose(_table(emb), _table(ref_emb), atol=1e-5)


@pytest.mark.parametrize("combiner", [None, "sum", "mean"])
def test_ragged_and_unordered_sparse_inputs(combiner, init):
    ref = keras.layers.Embedding(V, D, weights=[init])
    emb = ShardedEmbedding(V, D, weights=[init], combiner=combiner, backend="inprocess")
    ragged = tf.ragged.constant([[1, 2, 2], [], [5], [7, 1, 3, 3]], dtype=tf.int64)
    sparse = ragged.to_sparse()
    unordered = tf.SparseTensor(
        tf.reverse(sparse.indices, [0]), tf.reverse(sparse.values, [0]), sparse.dense_shape
    )
    if combiner is None:
        out = emb(ragged)
        assert isinstance(out, tf.RaggedTensor)
        np.testing.assert_array_equal(out.flat_values.numpy(), ref(ragged).flat_values.numpy())
        np.testing.assert_array_equal(out.row_lengths().numpy(), ref(ragged).row_lengths().numpy())
        np.testing.assert_array_equal(emb(unordered).numpy(), ref(sparse).numpy())
    else:
        want = tf.nn.safe_embedding_lookup_sparse(init, sparse, combiner=combiner).numpy()
        np.testing.assert_allclose(emb(ragged).numpy(), want, rtol=1e-6)
        np.testing.assert_allclose(emb(unordered).numpy(), want, rtol=1e-6)


def test_ragged_rank_3_input(init):
    ref = keras.layers.Embedding(V, D, weights=[init])
    emb = ShardedEmbedding(V, D, weights=[init], backend="inprocess")
    ragged = tf.ragged.constant([[[1, 2], [3]], [], [[4, 5, 6]]], dtype=tf.int64)
    np.testing.assert_array_equal(emb(ragged).flat_values.numpy(), ref(ragged).flat_values.numpy())


@pytest.mark.parametrize(
    "optimizer",
    [
        lambda: keras.optimizers.SGD(0.05),
        lambda: keras.optimizers.Adagrad(0.3, global_clipnorm=0.5),
        lambda: keras.optimizers.SGD(0.05, gradient_accumulation_steps=2),
    ],
    ids=["sgd", "adagrad-clip", "accumulation"],
)
def test_jit_compile_fit_parity(optimizer, init, rng):
    ref, ref_emb, model, emb = _models(init)
    x, y = _distinct_batches(rng, steps=6, batch=4)
    _fit_both(ref, model, optimizer, x, y, batch=4, jit_compile=True)
    assert model.jit_compile is True
    assert np.abs(_table(ref_emb) - init).max() > 1e-4
    np.testing.assert_allclose(_table(emb), _table(ref_emb), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(
        model.predict(x, verbose=0), ref.predict(x, verbose=0), atol=1e-5, rtol=1e-5
    )
    assert model.evaluate(x, y, verbose=0) == pytest.approx(ref.evaluate(x, y, verbose=0), 1e-5)


def test_jit_compile_mixed_float16_and_shared_layer(mixed_float16, init, rng):
    ref, ref_emb, model, emb = _models(init, two_inputs=True)
    (x1, x2), y = _distinct_batches(rng, steps=4, batch=2, inputs=2)
    _fit_both(
        ref, model, lambda: keras.optimizers.SGD(0.05), [x1, x2], y, batch=2, jit_compile=True
    )
    # One push per step that the loss-scale optimizer applied (it skips overflowing ones).
    assert max(emb.store.shard_call(pushes_of)) == int(ref.optimizer.iterations.numpy()) > 0
    np.testing.assert_allclose(_table(emb), _table(ref_emb), atol=2e-3)


class _TrainingIds(keras.layers.Layer):
    """Ids as given, except in training: reversed along the sequence (``shift=0``), or
    moved by ``shift``. So the compiled step reads other ids than the feeder saw."""

    def __init__(self, shift=0, **kwargs):
        super().__init__(**kwargs)
        self.shift = shift

    def call(self, ids, training=None):
        if not training:
            return ids
        return (ids + self.shift) % V if self.shift else tf.reverse(ids, [1])


def _models_through(init, shift):
    """keras.layers.Embedding and ShardedEmbedding behind a :class:`_TrainingIds`."""
    built = []
    for emb in (
        keras.layers.Embedding(V, D, weights=[init]),
        ShardedEmbedding(V, D, weights=[init], backend="inprocess"),
    ):
        ids = keras.Input((SEQ,), dtype="int64")
        x = keras.layers.Flatten()(emb(_TrainingIds(shift)(ids)))
        built.append((keras.Model(ids, keras.layers.Dense(1)(x)), emb))
    (ref, ref_emb), (model, emb) = built
    model.layers[-1].set_weights(ref.layers[-1].get_weights())
    return ref, ref_emb, model, emb


def test_jit_compile_ids_in_another_order_than_fed_are_searched(init, rng):
    # The feeder computes the ids outside training (in order), the compiled step in
    # training (reversed): their slots cannot be read by position and are searched.
    ref, ref_emb, model, emb = _models_through(init, shift=0)
    x, y = _distinct_batches(rng, steps=4, batch=4)
    _fit_both(ref, model, lambda: keras.optimizers.SGD(0.05), x, y, batch=4, jit_compile=True)
    assert np.abs(_table(ref_emb) - init).max() > 1e-4
    np.testing.assert_allclose(_table(emb), _table(ref_emb), atol=1e-6, rtol=1e-6)


def test_jit_compile_search_reads_only_this_steps_ids(init, rng):
    # The sorted ids beyond this step's lie there from a larger step before: the search
    # must not read them (unsorted after this step's, they would hide id 63).
    ref, ref_emb, model, emb = _models_through(init, shift=0)
    first = rng.permutation(np.arange(20, 62))[:12].reshape(4, SEQ)
    second = np.tile([62, 63, 63], (4, 1))  # reversed in training: searched
    x = np.concatenate([first, second]).astype(np.int64)
    y = rng.normal(size=(8, 1)).astype(np.float32)
    _fit_both(ref, model, lambda: keras.optimizers.SGD(0.05), x, y, batch=4, jit_compile=True)
    assert np.abs(_table(ref_emb)[63] - init[63]).max() > 1e-4
    np.testing.assert_allclose(_table(emb), _table(ref_emb), atol=1e-6, rtol=1e-6)


def test_jit_compile_ids_that_were_not_fed_raise(init, rng):
    _, _, model, emb = _models_through(init, shift=1)
    x, y = _distinct_batches(rng, steps=1, batch=4)
    x = (x // 2) * 2  # even ids fed; the compiled step reads odd ones
    model.compile(keras.optimizers.SGD(0.05), "mse", jit_compile=True)
    with pytest.raises((shardemb.errors.InvalidIdsError, tf.errors.OpError), match="not fed"):
        model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    np.testing.assert_array_equal(_table(emb), init)  # nothing was pushed


def test_jit_compile_subclassed_model_runs_uncompiled_with_warning(init, rng):
    class Tower(keras.Model):
        def __init__(self):
            super().__init__()
            self.emb = ShardedEmbedding(V, D, weights=[init], backend="inprocess")
            self.out = keras.layers.Dense(1)

        def call(self, x):
            return self.out(keras.ops.sum(self.emb(x), axis=1))

    model = Tower()
    model.compile(keras.optimizers.SGD(0.05), "mse", jit_compile=True)
    x, y = _distinct_batches(rng, steps=2, batch=4)
    with pytest.warns(UserWarning, match="Proceeding with jit_compile=False"):
        model.fit(x, y, batch_size=4, verbose=0)
    assert np.abs(_table(model.emb) - init).max() > 0


def test_model_weights_line_up_with_a_keras_model_both_ways(init, rng):
    ref, ref_emb, model, emb = _models(init)
    assert model.count_params() == ref.count_params() == V * D + (SEQ * D * 3 + 3) + 4
    assert [w.shape for w in model.get_weights()] == [w.shape for w in ref.get_weights()]
    x, y = _distinct_batches(rng, steps=2, batch=4)
    ref.compile(keras.optimizers.SGD(0.05), "mse", jit_compile=False)
    ref.fit(x, y, batch_size=4, verbose=0)
    model.set_weights(ref.get_weights())  # Keras -> sharded
    np.testing.assert_array_equal(_table(emb), _table(ref_emb))
    np.testing.assert_array_equal(model.predict(x, verbose=0), ref.predict(x, verbose=0))
    emb.embeddings.assign(init)
    ref.set_weights(model.get_weights())  # sharded -> Keras
    np.testing.assert_array_equal(_table(ref_emb), init)
    lines = []
    model.summary(print_fn=lines.append)
    assert f"{ref.count_params():,}" in "\n".join(lines)


def test_embeddings_in_tf_function_reads_the_live_table(init):
    emb = ShardedEmbedding(V, D, weights=[init], backend="inprocess")
    emb.build()

    @tf.function
    def scores(q):
        return tf.matmul(q, emb.embeddings, transpose_b=True)

    q = tf.ones((1, D))
    np.testing.assert_allclose(scores(q).numpy(), init.sum(1)[None], rtol=1e-5)
    emb.set_weights([2 * init])
    np.testing.assert_allclose(scores(q).numpy(), 2 * init.sum(1)[None], rtol=1e-5)


def test_regularizer_and_activity_regularizer(init, rng):
    ids = np.array([[1, 2, 2]])
    reg = keras.regularizers.L2(0.01)
    ref = keras.layers.Embedding(V, D, weights=[init], activity_regularizer=reg)
    emb = ShardedEmbedding(
        V,
        D,
        weights=[init],
        embeddings_regularizer=reg,
        activity_regularizer=reg,
        backend="inprocess",
    )
    ref(ids)
    emb(ids)
    # The activity regularizer as Keras's; the table's over the distinct rows read.
    assert emb.losses[-1].numpy() == pytest.approx(ref.losses[0].numpy(), rel=1e-6)
    assert emb.losses[0].numpy() == pytest.approx(0.01 * np.sum(init[[1, 2]] ** 2), rel=1e-5)
    # Trained, the regularizer's gradient reaches the rows it was taken over.
    opt = keras.optimizers.SGD(1.0)
    with tf.GradientTape() as tape:
        emb(ids)
        loss = tf.add_n(emb.losses[-2:-1])
    grads = tape.gradient(loss, emb.trainable_variables)
    opt.apply_gradients(zip(grads, emb.trainable_variables, strict=True))
    want = init.copy()
    want[[1, 2]] *= 1 - 0.02
    np.testing.assert_allclose(_table(emb), want, rtol=1e-5)
    config = ShardedEmbedding.from_config(emb.get_config()).get_config()
    assert config["embeddings_regularizer"]["config"] == {"l2": 0.01}


@pytest.mark.parametrize(
    "constraint",
    [
        keras.constraints.NonNeg(),
        keras.constraints.MaxNorm(0.5, axis=1),
        keras.constraints.UnitNorm(axis=1),
        keras.constraints.MinMaxNorm(0.2, 0.6, 1.0, axis=1),
    ],
    ids=["non_neg", "max_norm", "unit_norm", "min_max_norm"],
)
def test_constraint_parity_on_rows_a_step_updates(constraint, init, rng):
    start = constraint(init).numpy()  # rows start inside the constraint, as Keras leaves them
    ref, ref_emb, model, emb = _models(start, embeddings_constraint=constraint)
    ref_emb.embeddings_constraint = constraint
    ref_emb.embeddings.constraint = constraint
    x, y = _distinct_batches(rng, steps=3, batch=4)
    _fit_both(ref, model, lambda: keras.optimizers.SGD(0.5), x, y, batch=4)
    np.testing.assert_allclose(_table(emb), _table(ref_emb), atol=1e-5)


def test_axis0_constraint_is_refused():
    with pytest.raises(InvalidConfigError, match="axis=1"):
        ShardedEmbedding(V, D, embeddings_constraint=keras.constraints.MaxNorm(2.0))


def test_from_config_bad_input_dim_raises_type_error_like_keras():
    for cls in (keras.layers.Embedding, ShardedEmbedding):
        with pytest.raises(TypeError, match="input_dim"):
            cls.from_config({"input_dim": -1, "output_dim": 2})


def test_float16_table_with_adam_keeps_float32_slots_and_trains(rng):
    store = shardemb.EmbeddingStore.create(
        "fp16-adam",
        V,
        D,
        num_shards=2,
        dtype="float16",
        optimizer="adam",
        backend="inprocess",
        initializer="zeros",
    )
    try:
        ids = np.arange(8)
        for _ in range(50):
            store.apply_gradients(ids, np.full((8, D), 1e-4, np.float16))
        # Adam's second moment of 1e-8 underflows float16 (its smallest normal is 6e-5).
        slots = store.shard_call(lambda s: {k: v.dtype.name for k, v in s.slots.items()})
        assert all(dt == "float32" for shard in slots for dt in shard.values())
        rows = store.lookup(ids)
        assert rows.dtype == np.float16
        # Each Adam step moves a row by about the learning rate (0.001) against the sign.
        np.testing.assert_allclose(rows.astype(np.float32), -0.05, rtol=0.05)
    finally:
        store.close()
