"""Sparse optimizers against dense references: Keras optimizers on the same rows, and
numpy implementations of the lazy rules."""

import keras
import numpy as np
import pytest

from shardemb.core.config import TableConfig
from shardemb.core.optimizers import OPTIMIZERS, Adam, get_optimizer
from shardemb.errors import InvalidConfigError
from shardemb.shard.shard import Shard, sum_duplicates

VOCAB, DIM = 12, 4


def _shard(optimizer, storage="numpy"):
    cfg = TableConfig.build(
        "opt",
        VOCAB,
        DIM,
        num_shards=1,
        optimizer=optimizer,
        initializer="normal",
        seed=7,
        storage=storage,
    )
    return Shard(cfg, 0)


def _steps(rng, n_steps=6, touch_all=False):
    steps = []
    for _ in range(n_steps):
        if touch_all:
            ids = np.concatenate([np.arange(VOCAB), rng.integers(0, VOCAB, 5)])
        else:
            ids = rng.integers(0, VOCAB // 2, 9)  # duplicates; rows >= 6 never touched
        steps.append((ids, rng.normal(size=(ids.size, DIM)).astype(np.float32)))
    return steps


def _keras_reference(keras_opt, init, steps):
    var = keras.Variable(init.copy())
    for ids, g in steps:
        dense = np.zeros_like(init)
        np.add.at(dense, ids, g)
        keras_opt.apply_gradients([(keras.ops.convert_to_tensor(dense), var)])
    return np.asarray(var)


@pytest.mark.parametrize(
    "make",
    [
        lambda: keras.optimizers.SGD(learning_rate=0.1),
        lambda: keras.optimizers.SGD(learning_rate=0.1, momentum=0.9),
        lambda: keras.optimizers.SGD(learning_rate=0.1, momentum=0.9, nesterov=True),
        lambda: keras.optimizers.Adagrad(learning_rate=0.2),
        lambda: keras.optimizers.Adagrad(learning_rate=0.2, initial_accumulator_value=0.5),
    ],
)
def test_sgd_and_adagrad_equal_keras_on_every_row(make, rng):
    # Momentum is lazy, so compare with rows touched at every step for momentum.
    momentum = make().get_config().get("momentum", 0)
    steps = _steps(rng, touch_all=bool(momentum))
    shard = _shard(make())
    init = shard.read()
    for ids, g in steps:
        shard.apply_gradients(ids, g)
    np.testing.assert_allclose(shard.read(), _keras_reference(make(), init, steps), atol=1e-6)


@pytest.mark.parametrize(
    "make",
    [
        lambda: keras.optimizers.Adam(learning_rate=0.05),
        lambda: keras.optimizers.Ftrl(learning_rate=0.3),
        lambda: keras.optimizers.Ftrl(
            learning_rate=0.3,
            l1_regularization_strength=0.01,
            l2_regularization_strength=0.02,
            beta=0.1,
        ),
    ],
)
def test_lazy_optimizers_equal_keras_when_every_row_is_touched(make, rng):
    steps = _steps(rng, touch_all=True)
    shard = _shard(make())
    init = shard.read()
    for ids, g in steps:
        shard.apply_gradients(ids, g)
    np.testing.assert_allclose(shard.read(), _keras_reference(make(), init, steps), atol=1e-5)


def _lazy_reference(opt, init, steps):
    """Numpy lazy rule: only touched rows (summed gradients) move, step = push count."""
    rows = init.astype(np.float64)
    slots = {k: np.full((VOCAB, w), v) for k, (w, v) in opt.slot_specs(DIM).items()}
    for t, (ids, g) in enumerate(steps, start=1):
        u, summed = sum_duplicates(ids, g.astype(np.float64))
        new_rows, new_slots = opt.update(
            _NP64, rows[u], {k: s[u] for k, s in slots.items()}, summed, t
        )
        rows[u] = new_rows
        for k, v in new_slots.items():
            slots[k][u] = v
    return rows, slots


class _Np64:
    sqrt, square, maximum, minimum = np.sqrt, np.square, np.maximum, np.minimum

    @staticmethod
    def mean_rows(x):
        return x.mean(axis=1, keepdims=True)


_NP64 = _Np64()


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_optimizer_is_lazy_and_matches_reference(name, rng):
    opt = get_optimizer({"name": name, "learning_rate": 0.05})
    steps = _steps(rng)
    shard = _shard(opt)
    init = shard.read()
    for ids, g in steps:
        shard.apply_gradients(ids, g)
    ref_rows, ref_slots = _lazy_reference(opt, init, steps)
    np.testing.assert_allclose(shard.read(), ref_rows, rtol=1e-5, atol=1e-6)
    for k, v in ref_slots.items():
        np.testing.assert_allclose(shard.read_slot(k), v, rtol=1e-5, atol=1e-6)
    # Rows never touched are bit-for-bit what they were, slots too.
    np.testing.assert_array_equal(shard.read()[VOCAB // 2 :], init[VOCAB // 2 :])
    for k, (_, v0) in opt.slot_specs(DIM).items():
        assert (shard.read_slot(k)[VOCAB // 2 :] == np.float32(v0)).all()
    assert shard.step == len(steps)


def test_adam_bias_correction_uses_the_table_step():
    opt = Adam(learning_rate=0.1)
    shard = _shard(opt)
    before = shard.read()
    shard.apply_gradients(np.array([], np.int64), np.zeros((0, DIM), np.float32))
    shard.apply_gradients(np.array([3]), np.ones((1, DIM), np.float32))
    # step 2: m = 0.1, v = 0.001, alpha = 0.1 * sqrt(1 - .999**2) / (1 - .9**2)
    alpha = 0.1 * np.sqrt(1 - 0.999**2) / (1 - 0.9**2)
    expect = before[3] - alpha * 0.1 / (np.sqrt(0.001) + 1e-7)
    np.testing.assert_allclose(shard.read()[3], expect, rtol=1e-5)


def test_keras_optimizers_are_translated():
    # Keras keeps the learning rate as a float32 variable; the translation keeps that value.
    assert get_optimizer(keras.optimizers.Adagrad(learning_rate=0.3)).get_config() == {
        "name": "adagrad",
        "learning_rate": float(np.float32(0.3)),
        "initial_accumulator_value": 0.1,
        "epsilon": 1e-7,
    }
    sgd = get_optimizer(keras.optimizers.SGD(learning_rate=0.5, momentum=0.9, nesterov=True))
    assert (sgd.learning_rate, sgd.momentum, sgd.nesterov) == (0.5, 0.9, True)


@pytest.mark.parametrize(
    "bad,match",
    [
        ("rmsprop", "`optimizer` must be one of"),
        ({"name": "adam", "lr": 1}, "Unknown parameter for optimizer 'adam'"),
        ({"name": "sgd", "learning_rate": -1}, "Received: learning_rate=-1"),
        ({"name": "sgd", "learning_rate": "fast"}, "must be a number"),
        ({"name": "ftrl", "learning_rate_power": 0.5}, "learning_rate_power"),
        (keras.optimizers.RMSprop(), "Received: optimizer=<"),
        (keras.optimizers.Adam(amsgrad=True), "amsgrad"),
        (keras.optimizers.SGD(weight_decay=0.1), "weight_decay"),
        (
            keras.optimizers.SGD(
                learning_rate=keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.9)
            ),
            "constant learning rate",
        ),
    ],
)
def test_bad_optimizers(bad, match):
    with pytest.raises(InvalidConfigError, match=match):
        get_optimizer(bad)


def test_sum_duplicates_adds_in_order_of_occurrence(rng):
    rows = rng.integers(0, 40, 3000)
    vals = rng.normal(size=(3000, 5)).astype(np.float32)
    uniq, summed = sum_duplicates(rows, vals)
    ref = np.full((40, 5), -0.0, np.float32)
    np.add.at(ref, rows, vals)  # one value after another, in order
    np.testing.assert_array_equal(uniq, np.unique(rows))
    assert summed.dtype == np.float32 and summed.tobytes() == ref[uniq].tobytes()
    # Sorted, distinct rows (as the trainer sends them) come back untouched.
    again = sum_duplicates(uniq, summed)
    assert again[0] is uniq and again[1] is summed
    # A lone row keeps its bits, -0.0 included.
    r, v = sum_duplicates(np.array([2, 1, 2]), np.array([[-0.0], [-0.0], [1.0]]))
    assert r.tolist() == [1, 2] and np.signbit(v[0, 0]) and v[1, 0] == 1.0
