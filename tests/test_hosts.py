"""Tables that share shard processes (``group=``): one host actor per shard index, one
fused call per host for a step's pushes to all of them, and everything a table with its
own actors does (connect, name checks, checkpoints, recovery), bit for bit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import psutil
import pytest
import ray

from shardemb import EmbeddingStore, ShardError, ShardRestartedError, ShardUnavailableError
from shardemb.errors import InvalidConfigError, TableExistsError
from shardemb.transport import backends, bells, hosts
from shardemb.transport.doorbell import DoorbellFuture

OPT = {"name": "adam", "learning_rate": 0.05}


def _tables(prefix: str, n: int, group: str | None, num_shards: int = 2, **kw) -> list:
    return [
        EmbeddingStore.create(
            f"{prefix}-{i}",
            200,
            4,
            num_shards=num_shards,
            optimizer=OPT,
            seed=i,
            group=group,
            **kw,
        )  # fmt: skip
        for i in range(n)
    ]


def _named_actors(ray) -> set[str]:
    return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)}


def _steps(rng, n_tables: int, n_steps: int):
    return [
        [(rng.integers(0, 200, 64), rng.normal(size=(64, 4)).astype(np.float32))
         for _ in range(n_tables)]
        for _ in range(n_steps)
    ]  # fmt: skip


def _kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    psutil.Process(pid).wait(timeout=30)


@pytest.fixture
def grouped(ray_session, table_name):
    """Three Adam tables in one group: ``(group, tables, table_name)``."""
    group = f"g-{table_name}"
    tables = _tables(f"{table_name}-h", 3, group)
    yield group, tables, table_name
    for t in tables:
        t.close()


@pytest.fixture
def plain(grouped):
    """Three tables like ``grouped``'s (same seeds), each with actors of its own."""
    tables = _tables(f"{grouped[2]}-p", 3, None)
    yield tables
    for t in tables:
        t.close()


def test_grouped_tables_share_num_shards_processes_and_train_bit_identically(grouped, plain, rng):
    group, tables, _ = grouped
    pids = [[p["pid"] for p in t.placement()] for t in tables]
    assert pids[0] == pids[1] == pids[2] and len(set(pids[0])) == 2  # 2 processes for 3
    for step in _steps(rng, 3, 6):
        EmbeddingStore.apply_gradients_many(
            [(t, ids, g) for t, (ids, g) in zip(tables, step, strict=True)]
        )
        for t, (ids, g) in zip(plain, step, strict=True):
            t.apply_gradients(ids, g)
    for t, p in zip(tables, plain, strict=True):
        np.testing.assert_array_equal(t.to_numpy(), p.to_numpy())
        np.testing.assert_array_equal(
            t._gather_table("read_slot", "m"), p._gather_table("read_slot", "m")
        )
        assert [i["step"] for i in t.info()] == [6, 6]


@pytest.mark.parametrize("ring", [True, False], ids=["doorbell", "ray"])
def test_a_step_of_many_grouped_tables_costs_one_exchange_per_host(grouped, monkeypatch, rng,
                                                                   ring):  # fmt: skip
    _, tables, _ = grouped
    monkeypatch.setattr(bells, "RING_DOORBELLS", ring)
    sent, calls_made = [], []
    submit_many = backends.RayBackend.submit_many

    def counting(self, calls):
        out = submit_many(self, calls)
        sent.append(out)
        return out

    monkeypatch.setattr(backends.RayBackend, "submit_many", counting)
    remote = hosts._Method.remote
    monkeypatch.setattr(
        hosts._Method, "remote", lambda m, *a: calls_made.append(m) or remote(m, *a)
    )
    warm, step = _steps(rng, 3, 2)
    # A handle's first push asks the shards their step and probes shared memory.
    EmbeddingStore.apply_gradients_many([(t, *w) for t, w in zip(tables, warm, strict=True)])
    for t in tables:
        t.flush()
    calls_made.clear()
    sent.clear()
    EmbeddingStore.apply_gradients_many(
        [(t, ids, g) for t, (ids, g) in zip(tables, step, strict=True)]
    )
    assert [m.method for m in calls_made] == []  # no per-table call went out
    (calls,) = sent
    assert len(calls) == 6  # 3 tables x 2 shards ...
    assert len({id(f) for f, _ in calls}) == 2  # ... in 2 exchanges, one per host
    rung = {type(f) is DoorbellFuture for f, _ in calls}
    assert rung == {ring}  # rung on the hosts' doorbells: no Ray call at all
    fetched = []
    ray_get = ray.get
    monkeypatch.setattr(ray, "get", lambda refs, **kw: fetched.append(refs) or ray_get(refs, **kw))
    for t in tables:
        t.flush()
    # The 2 answers are fetched once, by the first table; the others reuse them; a
    # doorbell's answers are read from its ring.
    assert sum(len(refs) for refs in fetched) == (0 if ring else 2)


def test_one_tables_failure_in_a_fused_call_is_raised_by_that_table_only(grouped, rng):
    _, (a, b, c), _ = grouped

    def break_pushes(shard):
        def fail(*args, **kwargs):
            raise RuntimeError("disk on fire")

        shard.push_at = fail
        shard.apply_gradients = fail

    break_pushes.__module__ = "__main__"  # pickled by value: the shard cannot import tests
    a.shard_call(break_pushes, only=1)
    before_b = b.to_numpy()
    ids = np.arange(0, 200, 7)
    grads = np.ones((ids.size, 4), np.float32)
    EmbeddingStore.apply_gradients_many([(a, ids, grads), (b, ids, grads), (c, ids, grads)])
    with pytest.raises(ShardError, match="disk on fire"):
        a.flush()
    b.flush()  # its items in the same calls were applied, and nothing is raised here
    c.flush()
    assert not np.array_equal(b.to_numpy(), before_b)


def test_invalid_input_in_one_push_sends_nothing_to_any_table(grouped):
    _, (a, b, _), _ = grouped
    before = [a.to_numpy(), b.to_numpy()]
    good = (a, [1, 2], np.ones((2, 4), np.float32))
    with pytest.raises(ValueError, match="vocab_size|out of range"):
        EmbeddingStore.apply_gradients_many([good, (b, [1, 999], np.ones((2, 4), np.float32))])
    with pytest.raises(InvalidConfigError, match="triple"):
        EmbeddingStore.apply_gradients_many([good, (b, [1])])
    np.testing.assert_array_equal(a.to_numpy(), before[0])
    np.testing.assert_array_equal(b.to_numpy(), before[1])
    assert [i["step"] for i in a.info()] == [0, 0]


def test_a_grouped_tables_name_is_taken_on_the_cluster_and_free_after_close(
    ray_session, table_name
):
    group = f"g-{table_name}"
    (t,) = _tables(table_name, 1, group)
    with pytest.raises(TableExistsError, match="already exists"):
        EmbeddingStore.create(f"{table_name}-0", 10, 2, num_shards=1)  # own actors
    with pytest.raises(TableExistsError, match="already exists"):
        EmbeddingStore.create(f"{table_name}-0", 10, 2, num_shards=1, group="another")
    t.close()
    assert not {n for n in _named_actors(ray_session) if n.startswith(group)}  # hosts stopped
    again = EmbeddingStore.create(f"{table_name}-0", 10, 2, num_shards=1, group=group)
    assert again.lookup([3]).shape == (1, 2)
    again.close()


def test_another_process_connects_to_a_grouped_table(grouped):
    _, (a, _, _), _ = grouped
    a.apply_gradients([5, 6], np.ones((2, 4), np.float32))
    a.flush()
    code = textwrap.dedent(
        f"""
        import sys, ray, numpy as np, shardemb
        ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
        s = shardemb.EmbeddingStore.connect({a.name!r})
        s.apply_gradients([5], np.ones((1, 4), np.float32))
        s.flush()
        print(s.num_shards, s.placement()[0]["pid"])
        """
    )
    import ray

    address = ray.get_runtime_context().gcs_address
    done = subprocess.run(
        [sys.executable, "-c", code, address], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    shards, pid = done.stdout.split()
    assert int(shards) == 2 and int(pid) == a.placement()[0]["pid"]
    # The other process's push is the table's step 2; id 5 lives on shard 1 only.
    assert [i["step"] for i in a.info()] == [1, 2]


def test_a_killed_host_is_recovered_by_each_of_its_tables(grouped, tmp_path):
    group, (a, b, c), _ = grouped
    ones = np.ones((200, 4), np.float32)
    for t in (a, b, c):
        t.apply_gradients(np.arange(200), ones)
    a.save(str(tmp_path / "a"))
    b.save(str(tmp_path / "b"))
    saved = [a.to_numpy(), b.to_numpy()]
    for t in (a, b, c):
        t.apply_gradients(np.arange(200), ones)  # lost on shard 1 when its host dies
    for t in (a, b, c):
        t.flush()
    old = a.placement()[1]["pid"]
    _kill(old)
    for t, path, want in ((a, "a", saved[0]), (b, "b", saved[1])):
        with pytest.raises(ShardRestartedError, match=str(tmp_path / path)):
            t.lookup(np.arange(200))
        got = t.to_numpy()
        np.testing.assert_array_equal(got[1::2], want[1::2])  # shard 1: its checkpoint
        assert not np.array_equal(got[0::2], want[0::2])  # shard 0: untouched, 2 pushes
    assert a.placement()[1]["pid"] == b.placement()[1]["pid"] != old  # one new host
    with pytest.raises(ShardUnavailableError, match="no checkpoint"):
        c.lookup([1])  # nothing to restart it from: never zeros
    assert a.lookup([1]).shape == (1, 4)


def test_a_grouped_table_restores_into_a_group_onto_more_shards(grouped, tmp_path):
    group, (a, _, _), _ = grouped
    a.apply_gradients(np.arange(200), np.ones((200, 4), np.float32))
    a.save(str(tmp_path / "ck"))
    back = EmbeddingStore.restore(
        str(tmp_path / "ck"), name=f"{a.name}-r", num_shards=3, group=group
    )
    try:
        np.testing.assert_array_equal(back.to_numpy(), a.to_numpy())
        assert back.placement()[0]["pid"] == a.placement()[0]["pid"]  # joined the hosts
        assert len({p["pid"] for p in back.placement()}) == 3
    finally:
        back.close()


def test_a_group_must_be_a_safe_name_and_auto_is_one_per_process(ray_session, table_name):
    with pytest.raises(InvalidConfigError, match="group"):
        EmbeddingStore.create(table_name, 10, 2, num_shards=1, group="a/b")
    x = EmbeddingStore.create(f"{table_name}-x", 10, 2, num_shards=1, group="auto")
    y = EmbeddingStore.create(f"{table_name}-y", 10, 2, num_shards=1, group="auto")
    try:
        assert x.placement()[0]["pid"] == y.placement()[0]["pid"]
        assert x._handles[0].host.startswith(f"process-{os.getpid()}-")
    finally:
        x.close()
        y.close()
    mem = EmbeddingStore.create(table_name, 10, 2, num_shards=1, group="auto", backend="inprocess")
    mem.close()  # nothing to share in one process: accepted, ignored


@pytest.mark.parametrize("jit_compile", [False, True])
def test_a_models_sharded_layers_are_fused_and_train_as_keras_embeddings(
    ray_session, rng, jit_compile, monkeypatch
):
    keras = pytest.importorskip("keras")
    import shardemb

    vocab, dim, feats, batch, steps = 60, 4, 3, 8, 4
    inits = [rng.normal(size=(vocab, dim)).astype(np.float32) for _ in range(feats)]
    x = [np.stack([rng.permutation(vocab)[:batch] for _ in range(steps)]).reshape(-1, 1)
         for _ in range(feats)]  # fmt: skip
    y = rng.normal(size=(batch * steps, 1)).astype(np.float32)
    built = []
    for make in (
        lambda w: keras.layers.Embedding(vocab, dim, weights=[w]),
        lambda w: shardemb.ShardedEmbedding(vocab, dim, weights=[w], num_shards=2),
    ):
        embs = [make(w) for w in inits]
        inputs = [keras.Input((1,), dtype="int64") for _ in range(feats)]
        flat = [keras.layers.Flatten()(e(i)) for e, i in zip(embs, inputs, strict=True)]
        h = keras.layers.Concatenate()(flat)
        model = keras.Model(inputs, keras.layers.Dense(1)(h))
        built.append((model, embs))
    (ref, ref_embs), (model, embs) = built
    model.layers[-1].set_weights(ref.layers[-1].get_weights())
    pids = [tuple(p["pid"] for p in e.store.placement()) for e in embs]
    assert len(set(pids)) == 1 and len(set(pids[0])) == 2  # 3 tables in 2 processes
    fused = []
    submit_many = backends.RayBackend.submit_many

    def counting(self, calls):
        out = submit_many(self, calls)
        fused.append(len({id(f) for f, _ in out}))
        return out

    monkeypatch.setattr(backends.RayBackend, "submit_many", counting)
    for m in (ref, model):
        m.compile(keras.optimizers.Adagrad(0.1), "mse", jit_compile=jit_compile)
        m.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0)
    assert fused == [2] * steps  # every step: one call per host for all three tables
    for r, e in zip(ref_embs, embs, strict=True):
        np.testing.assert_allclose(e.get_weights()[0], r.get_weights()[0], atol=1e-5)
    for e in embs:
        e.close()
