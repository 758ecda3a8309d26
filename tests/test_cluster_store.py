"""The store on real Ray clusters: a 2-node local cluster driven from another process,
shared access from several processes, detached tables, up-front capacity errors."""

import dataclasses
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import shardemb
from shardemb import EmbeddingStore, ShardResources
from shardemb.core.config import TableConfig
from shardemb.errors import CapacityError, ClusterConnectionError, TableNotFoundError
from shardemb.transport.placement import check_capacity


def _run(script: str, env: dict | None = None, timeout: float = 240) -> str:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return out.stdout


def test_two_node_cluster_driven_by_address():
    from shardemb.cluster import local_cluster

    with local_cluster(num_workers=1, cpus_per_node=1) as info:
        stdout = _run(
            """
            import numpy as np, keras, shardemb
            store = shardemb.EmbeddingStore.create("nodes", 1000, 8, num_shards=4, seed=1,
                                                   optimizer="adagrad")
            nodes = {p["node_id"] for p in store.placement()}
            ids = np.arange(0, 1000, 7)
            assert (store.lookup(ids) == store.to_numpy()[ids]).all()
            layer = shardemb.ShardedEmbedding(1000, 8, store=store)
            model = keras.Sequential([keras.Input((2,), dtype="int64"), layer,
                                      keras.layers.Flatten(), keras.layers.Dense(1)])
            model.compile("adagrad", "mse")
            rng = np.random.default_rng(0)
            h = model.fit(rng.integers(0, 1000, (256, 2)), np.ones((256, 1)), batch_size=32,
                          epochs=2, verbose=0)
            print("NODES", len(nodes), "STEPS", sorted({i["step"] for i in store.info()}))
            store.close()
            """,
            env=info.env,
        )
        assert "NODES 2 STEPS [16]" in stdout, stdout


def test_concurrent_pushes_from_two_processes_lose_nothing(ray_session, table_name):
    address = ray_session.get_runtime_context().gcs_address
    with EmbeddingStore.create(
        table_name,
        64,
        4,
        num_shards=3,
        initializer="zeros",
        optimizer={"name": "sgd", "learning_rate": 1.0},
    ) as store:
        script = f"""
            import numpy as np, ray, shardemb, sys
            ray.init(address={address!r}, logging_level="ERROR")
            s = shardemb.EmbeddingStore.connect({table_name!r})
            rng = np.random.default_rng(int(sys.argv[1]))
            for _ in range(200):
                ids = rng.integers(0, 64, 16)
                s.apply_gradients(ids, np.full((16, 4), -1.0, np.float32))  # +1 per id
            s.flush()
        """
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", textwrap.dedent(script), str(seed)],
                stderr=subprocess.PIPE,
                text=True,
            )
            for seed in (1, 2)
        ]
        for p in procs:
            assert p.wait(timeout=240) == 0, p.stderr.read()[-3000:]
        expect = np.zeros(64)
        for seed in (1, 2):
            rng = np.random.default_rng(seed)
            for _ in range(200):
                np.add.at(expect, rng.integers(0, 64, 16), 1.0)
        # Integer-valued float32 sums are exact: every single push is in the table.
        np.testing.assert_array_equal(store.to_numpy(), np.repeat(expect[:, None], 4, 1))


def test_detached_table_outlives_its_creator(ray_session, table_name):
    address = ray_session.get_runtime_context().gcs_address
    _run(f"""
        import numpy as np, ray, shardemb
        ray.init(address={address!r}, logging_level="ERROR")
        s = shardemb.EmbeddingStore.create({table_name!r}, 20, 2, num_shards=2, detached=True,
                                           initializer="ones")
        s.apply_gradients([3], np.ones((1, 2), np.float32))
        s.flush()
    """)
    store = EmbeddingStore.connect(table_name)
    expect = np.ones((20, 2), np.float32)
    expect[3] -= 0.01
    np.testing.assert_array_equal(store.to_numpy(), expect)
    store.close()  # a detached table belongs to nobody: closing removes it
    with pytest.raises(TableNotFoundError, match=table_name):
        EmbeddingStore.connect(table_name)


def test_capacity_error_gives_the_numbers_and_fixes():
    cfg = TableConfig.build("big", 100_000_000, 128, num_shards=2, optimizer="adam", seed=0)
    nodes = [{"Alive": True, "Resources": {"CPU": 2.0, "memory": 16 * 2**30}}] * 2
    # 50M rows x 128 x 4 B x 3 (rows, m, v) = 71.5 GiB per shard, x 1.25 headroom = 89.4 GiB
    with pytest.raises(CapacityError, match=r"needs 89.41 GiB .* largest node offers 16.00 GiB"):
        check_capacity(cfg, ShardResources(), nodes)
    small = TableConfig.build("ok", 1_000_000, 128, num_shards=8, optimizer="adam", seed=0)
    with pytest.raises(CapacityError, match=r"asks for 8 GPU\(s\) .* has 0"):
        check_capacity(dataclasses.replace(small, device="gpu"), ShardResources(), nodes)
    with pytest.raises(CapacityError, match=r"reserves 16 CPU\(s\) \(2 per shard\)"):
        check_capacity(small, ShardResources(num_cpus=2), nodes)
    with pytest.raises(CapacityError, match="more shards"):
        check_capacity(
            dataclasses.replace(cfg, partition=cfg.partition.__class__("mod", 100_000_000, 8)),
            ShardResources(),
            nodes,
        )
    check_capacity(small, ShardResources(num_cpus=0.5), nodes)  # fits: no error


def test_capacity_error_before_any_actor_is_created(ray_session, table_name):
    with pytest.raises(CapacityError, match="Fixes: use more shards"):
        EmbeddingStore.create(table_name, 10**11, 64, num_shards=2)
    with pytest.raises(TableNotFoundError):
        EmbeddingStore.connect(table_name)


def test_wrong_address_is_a_clear_error():
    stdout = _run(
        """
        import shardemb
        try:
            shardemb.EmbeddingStore.create("x", 10, 2, num_shards=1, address="127.0.0.1:1")
        except shardemb.ClusterConnectionError as err:
            print("OK", "address='127.0.0.1:1'" in str(err))
    """,
        env={"RAY_ADDRESS": ""},
        timeout=120,
    )
    assert "OK True" in stdout
    assert issubclass(ClusterConnectionError, ConnectionError)
    assert shardemb.ClusterConnectionError is ClusterConnectionError
