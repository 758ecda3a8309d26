import numpy as np
import pytest

from shardemb.core.partition import Partition
from shardemb.errors import InvalidConfigError


@pytest.mark.parametrize("kind", ["mod", "div"])
@pytest.mark.parametrize("vocab,shards", [(1, 1), (10, 3), (17, 7), (100, 1), (64, 8)])
def test_mapping_round_trips(kind, vocab, shards):
    p = Partition(kind, vocab, shards)
    ids = np.arange(vocab)
    shard, local = p.shard_of(ids), p.local_rows(ids)
    sizes = p.shard_sizes()
    assert sizes.sum() == vocab and sizes.max() - sizes.min() <= 1
    assert ((local >= 0) & (local < sizes[shard])).all()
    for s in range(shards):
        mine = ids[shard == s]
        np.testing.assert_array_equal(p.global_rows(s), mine)
        np.testing.assert_array_equal(p.global_rows(s, local[shard == s]), mine)


def test_mod_and_div_layouts():
    assert Partition("mod", 10, 3).shard_of(np.arange(10)).tolist() == [0, 1, 2] * 3 + [0]
    assert Partition("div", 10, 3).shard_of(np.arange(10)).tolist() == [0] * 4 + [1] * 3 + [2] * 3
    assert Partition("div", 10, 3).local_rows(np.array([4, 9])).tolist() == [0, 2]


@pytest.mark.parametrize("kind", ["mod", "div"])
def test_split_groups_by_shard_stably(kind, rng):
    p = Partition(kind, 1000, 4)
    ids = rng.integers(0, 1000, 500)
    split = p.split(ids)
    assert sorted(split.order.tolist()) == list(range(500))
    for s in range(4):
        pos = split.positions(s)
        assert (np.diff(pos) > 0).all()  # stable: original order kept inside a shard
        assert (p.shard_of(ids[pos]) == s).all()
        np.testing.assert_array_equal(split.local_rows(s), p.local_rows(ids[pos]))


@pytest.mark.parametrize(
    "args,match",
    [
        (("hash", 10, 2), "`partition` must be one of"),
        (("mod", 0, 1), "`vocab_size` must be a positive integer. Received: vocab_size=0"),
        (("mod", 10, -1), "`num_shards` must be a positive integer. Received: num_shards=-1"),
        (("mod", 10, 2.0), r"Received: num_shards=2.0 \(of type float\)"),
        (("div", 3, 4), "`num_shards` must not exceed `vocab_size`"),
    ],
)
def test_bad_partitions(args, match):
    with pytest.raises(InvalidConfigError, match=match):
        Partition(*args)
