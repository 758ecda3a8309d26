"""Bad input across the whole API, in one table: each case raises a typed shardemb error
whose message names what was wrong and what was received, and the table is unchanged."""

import json
import os

import numpy as np
import pytest

import shardemb
from shardemb import EmbeddingStore, ShardedEmbedding
from shardemb.errors import (
    CheckpointCorruptError,
    CheckpointNotFoundError,
    InvalidConfigError,
    InvalidGradientError,
    InvalidIdsError,
    ShardembError,
    TableExistsError,
)

F = np.float32


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    store = EmbeddingStore.create(
        "bad-api", 10, 4, num_shards=3, optimizer="adagrad", backend="inprocess", seed=1
    )
    other = EmbeddingStore.create("bad-api-other", 10, 4, num_shards=2, backend="inprocess")
    good = str(root / "good")
    store.save(good)
    other.save(str(root / "other"))
    damaged = str(root / "damaged")
    store.save(damaged)
    manifest = os.path.join(damaged, "manifest.json")
    m = json.load(open(manifest))
    m["format_version"] = 99
    json.dump(m, open(manifest, "w"))
    yield {"store": store, "root": root, "good": good, "damaged": damaged}
    store.close()
    other.close()


def _cases():
    def lookup(ids):
        return lambda e: e["store"].lookup(ids)

    def push(ids, grads):
        return lambda e: e["store"].apply_gradients(ids, grads)

    def create(**kw):
        args = {
            "name": "bad-new",
            "vocab_size": 10,
            "dim": 4,
            "num_shards": 2,
            "backend": "inprocess",
            **kw,
        }
        return lambda e: EmbeddingStore.create(
            args.pop("name"), args.pop("vocab_size"), args.pop("dim"), **args
        )

    def restore(key, **kw):
        return lambda e: EmbeddingStore.restore(str(e["root"] / key), backend="inprocess", **kw)

    return [
        # ids
        ("id out of range", lookup([3, 10]), InvalidIdsError, r"\[0, 10\). Received: 1 id"),
        ("negative id", lookup([-4]), InvalidIdsError, r"e.g. \[-4\]"),
        ("float id", lookup([1.0]), InvalidIdsError, "Received: dtype float64"),
        ("NaN id", lookup([np.nan]), InvalidIdsError, "Received: NaN"),
        ("huge int64", lookup([np.iinfo(np.int64).max]), InvalidIdsError, "out of range"),
        ("string id", lookup(["7"]), InvalidIdsError, "Received: dtype <U1"),
        (
            "id out of range in a push",
            push([10], np.ones((1, 4), F)),
            InvalidIdsError,
            "out of range",
        ),
        (
            "empty ids, grads of another shape",
            push([], np.ones((1, 4), F)),
            InvalidGradientError,
            r"= \(0, 4\). Received: shape=\(1, 4\)",
        ),
        # grads
        (
            "grads shape",
            push([1, 2], np.ones((2, 5), F)),
            InvalidGradientError,
            r"Received: shape=\(2, 5\)",
        ),
        (
            "grads dtype",
            push([1], np.ones((1, 4), np.int64)),
            InvalidGradientError,
            "Received: dtype=int64",
        ),
        (
            "grads NaN",
            push([1, 2], np.array([[np.nan] * 4, [0] * 4], F)),
            InvalidGradientError,
            r"NaN or Inf in 1 row\(s\)",
        ),
        ("grads Inf", push([1], np.full((1, 4), -np.inf, F)), InvalidGradientError, "Inf"),
        # configs
        ("zero vocab", create(vocab_size=0), InvalidConfigError, "Received: vocab_size=0"),
        ("negative dim", create(dim=-1), InvalidConfigError, "Received: dim=-1"),
        (
            "more shards than rows",
            create(num_shards=11),
            InvalidConfigError,
            "num_shards=11, vocab_size=10",
        ),
        (
            "unknown optimizer",
            create(optimizer="lamb"),
            InvalidConfigError,
            "Received: optimizer='lamb'",
        ),
        (
            "unknown partition",
            create(partition="range"),
            InvalidConfigError,
            "Received: partition='range'",
        ),
        ("name in use", create(name="bad-api"), TableExistsError, "Received: name='bad-api'"),
        (
            "layer combiner rank",
            lambda e: ShardedEmbedding(10, 4, combiner="sum", store=e["store"])(
                np.zeros((1, 2, 2), "int64")
            ),
            InvalidConfigError,
            "must be 2-D",
        ),
        # paths and checkpoints
        ("missing checkpoint", restore("nowhere"), CheckpointNotFoundError, "nowhere"),
        ("damaged checkpoint", restore("damaged"), CheckpointCorruptError, "version"),
        (
            "another table's checkpoint",
            lambda e: shardemb.checkpoint.restore_store(
                e["good"], expected_table="bad-api-other", backend="inprocess"
            ),
            CheckpointCorruptError,
            "bad-api-other",
        ),
    ]


@pytest.mark.parametrize("what,call,error,match", _cases(), ids=[c[0] for c in _cases()])
def test_bad_input(env, what, call, error, match):
    store = env["store"]
    before = store.to_numpy()
    steps = [i["step"] for i in store.info()]
    with pytest.raises(error, match=match) as info:
        call(env)
    assert isinstance(info.value, ShardembError)
    store.flush()
    np.testing.assert_array_equal(store.to_numpy(), before)
    assert [i["step"] for i in store.info()] == steps
