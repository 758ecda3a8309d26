"""EmbeddingStore: lookups, pushes, read-your-writes, errors; in-process and on Ray."""

import subprocess
import sys

import numpy as np
import pytest

import shardemb
from shardemb import EmbeddingStore
from shardemb.errors import (
    InvalidConfigError,
    InvalidGradientError,
    InvalidIdsError,
    TableExistsError,
    TableNotFoundError,
)


@pytest.fixture(params=["inprocess", "ray"])
def backend(request):
    if request.param == "ray":
        request.getfixturevalue("ray_session")
    return request.param


# Every sharding in-process; Ray actors (a second each to start) on a representative few.
_SHARDINGS = [(b, n, p) for b in ["inprocess"] for n in (1, 2, 3, 7) for p in ("mod", "div")]
_SHARDINGS += [("ray", 1, "mod"), ("ray", 3, "mod"), ("ray", 7, "div")]


@pytest.mark.parametrize("backend_name,num_shards,partition", _SHARDINGS)
def test_lookup_equals_table_rows(backend_name, partition, num_shards, table_name, rng, request):
    backend = backend_name
    if backend == "ray":
        request.getfixturevalue("ray_session")
    with EmbeddingStore.create(
        table_name, 50, 6, num_shards=num_shards, partition=partition, seed=5, backend=backend
    ) as store:
        table = store.to_numpy()
        assert table.shape == (50, 6) and table.dtype == np.float32
        cases = [
            np.int64(17),
            np.array([3, 3, 49, 0, 3]),
            rng.integers(0, 50, (4, 5)),
            rng.integers(0, 50, (2, 3, 4)).astype(np.int32),
            np.array([], np.int64),
            np.zeros((2, 0), np.int64),
        ]
        for ids in cases:
            for dedup in ("auto", True, False):
                got = store.lookup(ids, dedup=dedup)
                assert got.shape == np.shape(ids) + (6,)
                np.testing.assert_array_equal(got, table[ids])
        assert store.lookup([1, 2]).tolist() == table[[1, 2]].tolist()  # plain lists too


def test_large_lookup_is_chunked(monkeypatch, table_name, rng):
    monkeypatch.setattr(shardemb.store.embedding_store, "LOOKUP_CHUNK_IDS", 64)
    with EmbeddingStore.create(
        table_name, 300, 4, num_shards=3, seed=1, backend="inprocess"
    ) as store:
        ids = rng.integers(0, 300, 1000)
        np.testing.assert_array_equal(store.lookup(ids), store.to_numpy()[ids])


@pytest.mark.parametrize(
    "backend_name,num_shards,partition",
    [("inprocess", 1, "mod"), ("inprocess", 4, "mod"), ("inprocess", 7, "div"), ("ray", 5, "div")],
)
def test_same_seed_same_table_for_any_sharding(
    backend_name, num_shards, partition, table_name, request
):
    backend = backend_name
    if backend == "ray":
        request.getfixturevalue("ray_session")
    ref = EmbeddingStore.create(
        table_name + "-ref", 60, 5, num_shards=2, seed=99, backend="inprocess"
    )
    with EmbeddingStore.create(
        table_name, 60, 5, num_shards=num_shards, partition=partition, seed=99, backend=backend
    ) as store:
        np.testing.assert_array_equal(store.to_numpy(), ref.to_numpy())
    ref.close()


def test_pushes_sum_duplicates_and_read_your_writes(backend, table_name, rng):
    with EmbeddingStore.create(
        table_name,
        40,
        3,
        num_shards=3,
        seed=2,
        backend=backend,
        optimizer={"name": "sgd", "learning_rate": 0.5},
    ) as store:
        expect = store.to_numpy().astype(np.float64)
        for _ in range(20):
            ids = rng.integers(0, 40, (3, 4))
            grads = rng.normal(size=(3, 4, 3)).astype(np.float32)
            store.apply_gradients(ids, grads)  # fire and forget...
            dense = np.zeros_like(expect)
            np.add.at(dense, ids.ravel(), grads.reshape(-1, 3))
            expect -= 0.5 * dense
            # ...but the very next lookup from this process sees it.
            np.testing.assert_allclose(store.lookup(ids), expect[ids], rtol=1e-5, atol=1e-6)
        store.flush()
        np.testing.assert_allclose(store.to_numpy(), expect, rtol=1e-5, atol=1e-6)
        assert [i["step"] for i in store.info()] == [20, 20, 20]


def test_set_weights_and_shard_sizes(backend, table_name):
    with EmbeddingStore.create(
        table_name, 11, 2, num_shards=3, partition="div", backend=backend
    ) as store:
        matrix = np.arange(22, dtype=np.float32).reshape(11, 2)
        store.set_weights(matrix)
        np.testing.assert_array_equal(store.to_numpy(), matrix)
        assert store.shard_sizes() == [4, 4, 3] and store.num_shards == 3
        assert store.shape == (11, 2) and store.dtype == np.float32


def test_flush_raises_a_shard_error(backend, table_name):
    with EmbeddingStore.create(table_name, 10, 2, num_shards=2, backend=backend) as store:
        # Bypass the router's checks to make the shard itself fail on a push.
        bad = store._backend.submit(
            store._handles[1], "apply_gradients", np.array([0]), np.ones((1, 3), np.float32)
        )
        store._pending.append((1, bad))
        with pytest.raises(InvalidGradientError, match="Shard 1 expected gradients"):
            store.flush()
        store.flush()  # reported once, then the store goes on
        assert store.lookup([1]).shape == (1, 2)


def test_pending_push_errors_surface_at_the_next_call(ray_session, table_name):
    with EmbeddingStore.create(table_name, 10, 2, num_shards=2) as store:
        bad = store._backend.submit(
            store._handles[0], "apply_gradients", np.array([99]), np.ones((1, 2), np.float32)
        )
        store._pending.append((0, bad))
        ray_session.wait([bad])
        with pytest.raises(InvalidIdsError, match="Shard 0 holds local rows"):
            store.lookup([1])


def _bad_input_cases():
    f = np.float32
    return [
        ("lookup", ([10],), InvalidIdsError, r"must be in \[0, 10\). Received: 1 id\(s\)"),
        ("lookup", ([-1, 3],), InvalidIdsError, r"e.g. \[-1\]"),
        ("lookup", ([1.5],), InvalidIdsError, "Received: dtype float64"),
        ("lookup", ([np.nan],), InvalidIdsError, "Received: NaN"),
        ("lookup", (["a"],), InvalidIdsError, "Received: dtype <U1"),
        ("lookup", ([2**62],), InvalidIdsError, "out of range"),
        ("apply_gradients", ([1, 10], np.ones((2, 4), f)), InvalidIdsError, "out of range"),
        (
            "apply_gradients",
            ([1, 2], np.ones((2, 3), f)),
            InvalidGradientError,
            r"shape ids.shape \+ \(dim,\) = \(2, 4\). Received: shape=\(2, 3\)",
        ),
        (
            "apply_gradients",
            ([1], np.ones((1, 4), np.int32)),
            InvalidGradientError,
            "floating point array. Received: dtype=int32",
        ),
        (
            "apply_gradients",
            ([1, 2], np.array([[0, 0, 0, np.nan], [1, 1, 1, 1]], f)),
            InvalidGradientError,
            r"NaN or Inf in 1 row\(s\) of 2",
        ),
        ("apply_gradients", ([1], np.full((1, 4), np.inf, f)), InvalidGradientError, "NaN or Inf"),
        ("set_weights", (np.ones((10, 3)),), InvalidConfigError, r"shape \(10, 4\)"),
        ("set_weights", (np.full((10, 4), np.nan),), InvalidConfigError, "NaN or Inf"),
    ]


@pytest.fixture(scope="module", params=["inprocess", "ray"])
def shared_store(request):
    if request.param == "ray":
        request.getfixturevalue("ray_session")
    store = EmbeddingStore.create(
        f"bad-input-{request.param}",
        10,
        4,
        num_shards=3,
        optimizer="adagrad",
        backend=request.param,
    )
    yield store
    store.close()


@pytest.mark.parametrize("method,args,error,match", _bad_input_cases())
def test_bad_input_raises_and_changes_nothing(shared_store, method, args, error, match):
    store = shared_store
    before = store.to_numpy()
    with pytest.raises(error, match=match):
        getattr(store, method)(*args)
    store.flush()
    np.testing.assert_array_equal(store.to_numpy(), before)
    assert [i["step"] for i in store.info()] == [0, 0, 0]
    assert isinstance(error("x"), shardemb.ShardembError)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"vocab_size": 0}, "`vocab_size` must be a positive integer. Received: vocab_size=0"),
        ({"dim": -2}, "Received: dim=-2"),
        ({"num_shards": 11}, "must not exceed `vocab_size`"),
        ({"partition": "hash"}, "Received: partition='hash'"),
        ({"optimizer": "rmsprop"}, "Received: optimizer='rmsprop'"),
        ({"dtype": "int32"}, "Received: dtype='int32'"),
        ({"device": "tpu"}, "Received: device='tpu'"),
        ({"seed": -1}, "Received: seed=-1"),
        ({"name": "a b"}, "Received: name='a b'"),
        ({"backend": "spark"}, "Received: backend='spark'"),
    ],
)
def test_bad_configs(kwargs, match):
    args = {"name": "cfg", "vocab_size": 10, "dim": 4, "num_shards": 2, "backend": "inprocess"}
    args.update(kwargs)
    name, vocab, dim = args.pop("name"), args.pop("vocab_size"), args.pop("dim")
    with pytest.raises(InvalidConfigError, match=match):
        EmbeddingStore.create(name, vocab, dim, **args)


def test_name_in_use_and_close(backend, table_name):
    store = EmbeddingStore.create(table_name, 10, 2, num_shards=2, backend=backend)
    with pytest.raises(TableExistsError, match=f"Received: name='{table_name}'"):
        EmbeddingStore.create(table_name, 10, 2, num_shards=2, backend=backend)
    other = EmbeddingStore.connect(table_name, backend=backend)
    assert other.config == store.config
    store.close()
    store.close()  # twice is harmless
    with pytest.raises(TableNotFoundError, match="was closed"):
        store.lookup([1])
    with pytest.raises(TableNotFoundError, match=f"No table named '{table_name}'"):
        EmbeddingStore.connect(table_name, backend=backend)


def test_connect_from_another_process(ray_session, table_name, tmp_path):
    address = ray_session.get_runtime_context().gcs_address
    with EmbeddingStore.create(
        table_name, 30, 4, num_shards=2, seed=3, optimizer={"name": "sgd", "learning_rate": 1.0}
    ) as store:
        before = store.to_numpy()
        script = (
            "import numpy as np, ray, shardemb\n"
            f"ray.init(address={address!r}, logging_level='ERROR')\n"
            f"s = shardemb.EmbeddingStore.connect({table_name!r})\n"
            "s.apply_gradients([5, 5, 7], np.ones((3, 4), np.float32))\n"
            "s.flush()\n"
            "print(s.lookup([5]).sum())\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 0, out.stderr[-2000:]
        expect = before.copy()
        expect[5] -= 2.0
        expect[7] -= 1.0
        np.testing.assert_allclose(store.to_numpy(), expect, rtol=1e-6)
        assert float(out.stdout.strip()) == pytest.approx(expect[5].sum(), rel=1e-5)


def test_placement_and_info(ray_session, table_name):
    with EmbeddingStore.create(table_name, 100, 8, num_shards=2, optimizer="adam") as store:
        where = store.placement()
        assert [p["shard"] for p in where] == [0, 1] and all(p["node_id"] for p in where)
        info = store.info()
        assert [i["bytes"] for i in info] == [50 * 8 * 4 * 3] * 2


def test_a_push_goes_only_to_the_shards_holding_its_rows(table_name, monkeypatch):
    """One call per addressed shard (not one per shard), numbered in the table's sequence
    (which a handle reads from the shards once, at its first push)."""
    calls = []
    submit = shardemb.transport.backends.InProcessBackend.submit

    def counting(self, handle, method, *args):
        calls.append((handle.index, method, args[2:]))
        return submit(self, handle, method, *args)

    with EmbeddingStore.create(table_name, 30, 2, num_shards=3, backend="inprocess") as store:
        monkeypatch.setattr(shardemb.transport.backends.InProcessBackend, "submit", counting)
        store.apply_gradients([1, 4], np.ones((2, 2), np.float32))  # shard 1 only
        store.apply_gradients([], np.ones((0, 2), np.float32))  # no shard: still push 2
        store.apply_gradients([0, 2], np.ones((2, 2), np.float32))  # shards 0 and 2
        store.flush()
        assert calls[:3] == [(s, "info", ()) for s in range(3)]  # the count, read once
        assert calls[3:] == [
            (1, "apply_gradients", (1,)),
            (0, "apply_gradients", (3,)),
            (2, "apply_gradients", (3,)),
        ]
        monkeypatch.undo()
        info = store.info()
        assert [(i["step"], i["pushes"]) for i in info] == [(3, 1), (1, 1), (3, 1)]


@pytest.mark.parametrize("backend_name", ["inprocess", "ray"])
def test_adam_on_shards_that_skip_pushes_equals_one_shard(backend_name, table_name, request):
    """A push that reaches some shards only still counts as a step on the others (Adam's
    bias correction), so any sharding gives the bits of a single shard, which every push
    reaches."""
    if backend_name == "ray":
        request.getfixturevalue("ray_session")
    rng = np.random.default_rng(5)
    pushes = [
        (rng.integers(0, 4, 3) * 3 + rng.integers(0, 2), rng.standard_normal((3, 4)))
        for _ in range(12)
    ]  # each push touches shard 0 or shard 1 of 3 (mod), never shard 2
    tables = []
    for n, backend in ((1, "inprocess"), (3, backend_name)):
        with EmbeddingStore.create(
            f"{table_name}-{n}", 12, 4, num_shards=n, optimizer="adam", seed=2, backend=backend
        ) as store:
            for ids, grads in pushes:
                store.apply_gradients(ids, grads.astype(np.float32))
            tables.append((store.to_numpy(), store._gather_table("read_slot", "v")))
    for a, b in zip(*tables, strict=True):
        np.testing.assert_array_equal(a, b)  # bit for bit
