"""A reusable conformance suite for shard storages (like ``zarr.testing.store``).

A new storage passes when a pytest class that subclasses :class:`StorageConformance` and
sets ``storage`` (and ``device``) passes. It checks the storage directly and through a
:class:`~shardemb.shard.shard.Shard` with every optimizer, against the numpy storage as the
reference. Requires pytest.

Example (in a test module)::

    class TestMyStorage(StorageConformance):
        storage = "tensorflow"
        device = "cpu"
"""

from __future__ import annotations

import numpy as np

from shardemb.core.config import TableConfig
from shardemb.core.optimizers import OPTIMIZERS
from shardemb.errors import InvalidGradientError, InvalidIdsError
from shardemb.shard.shard import Shard
from shardemb.shard.storage import make_storage

__all__ = ["StorageConformance"]


class StorageConformance:
    storage: str = "numpy"
    device: str = "cpu"

    def make(self, num_rows=10, width=3, dtype="float32"):
        return make_storage(
            self.storage, num_rows, width, dtype, "/CPU:0" if self.device == "cpu" else "/GPU:0"
        )

    def shard(self, optimizer="sgd", vocab=40, dim=5, num_shards=2, index=1):
        cfg = TableConfig.build(
            "conf",
            vocab,
            dim,
            num_shards=num_shards,
            optimizer=optimizer,
            seed=11,
            device=self.device,
            storage=self.storage,
        )
        return Shard(cfg, index)

    def reference(self, optimizer="sgd", vocab=40, dim=5, num_shards=2, index=1):
        cfg = TableConfig.build(
            "conf", vocab, dim, num_shards=num_shards, optimizer=optimizer, seed=11, storage="numpy"
        )
        return Shard(cfg, index)

    # -- storage --------------------------------------------------------------------
    def test_starts_zeroed_with_shape_and_dtype(self):
        s = self.make(7, 2, "float64")
        out = s.to_numpy(0, 7)
        assert out.shape == (7, 2) and out.dtype == np.float64 and not out.any()
        assert s.nbytes == 7 * 2 * 8

    def test_write_scatter_gather_round_trip(self):
        s = self.make()
        block = np.arange(30, dtype=np.float32).reshape(10, 3)
        s.write(0, block)
        np.testing.assert_array_equal(s.to_numpy(2, 5), block[2:5])
        s.scatter(np.array([9, 0]), s.native(np.full((2, 3), -1.0, np.float32)))
        got = s.host(s.gather(np.array([0, 9, 0, 4])))
        np.testing.assert_array_equal(got, [[-1] * 3, [-1] * 3, [-1] * 3, block[4]])

    def test_to_numpy_is_a_copy(self):
        s = self.make()
        snap = s.to_numpy(0, 10)
        snap[:] = 5
        assert not s.to_numpy(0, 10).any()

    # -- through a shard ------------------------------------------------------------
    def test_initial_rows_equal_numpy_storage(self):
        np.testing.assert_array_equal(self.shard().read(), self.reference().read())

    def test_every_optimizer_equals_numpy_storage(self):
        rng = np.random.default_rng(0)
        for name in sorted(OPTIMIZERS):
            opt = {"name": name, "learning_rate": 0.1}
            a, b = self.shard(opt), self.reference(opt)
            for _ in range(4):
                local = rng.integers(0, a.num_rows, 12)
                grads = rng.normal(size=(12, 5)).astype(np.float32)
                a.apply_gradients(local, grads)
                b.apply_gradients(local, grads)
            np.testing.assert_allclose(a.read(), b.read(), rtol=1e-6, atol=1e-7, err_msg=name)
            for slot in b.slots:
                np.testing.assert_allclose(
                    a.read_slot(slot),
                    b.read_slot(slot),
                    rtol=1e-6,
                    atol=1e-7,
                    err_msg=f"{name}/{slot}",
                )
            assert a.step == b.step == 4

    def test_lookup_and_write_rows(self):
        a = self.shard()
        values = np.arange(10, dtype=np.float32).reshape(2, 5)
        a.write_rows(0, values)
        np.testing.assert_array_equal(a.lookup(np.array([1, 0, 1])), values[[1, 0, 1]])
        a.write_rows(5, np.ones((2, 5), np.float32))
        np.testing.assert_array_equal(a.read(5, 7), np.ones((2, 5)))

    def test_bad_requests_leave_the_shard_unchanged(self):
        import pytest

        a = self.shard("adagrad")
        before, slot = a.read(), a.read_slot("accumulator")
        with pytest.raises(InvalidIdsError, match="holds local rows"):
            a.apply_gradients(np.array([0, a.num_rows]), np.ones((2, 5), np.float32))
        with pytest.raises(InvalidIdsError, match="1-D integer"):
            a.lookup(np.array([0.5]))
        with pytest.raises(InvalidGradientError, match="expected gradients of shape"):
            a.apply_gradients(np.array([0]), np.ones((1, 4), np.float32))
        with pytest.raises(InvalidGradientError, match="cannot write rows"):
            a.write_rows(a.num_rows - 1, np.ones((2, 5), np.float32))
        np.testing.assert_array_equal(a.read(), before)
        np.testing.assert_array_equal(a.read_slot("accumulator"), slot)
        assert a.step == 0
