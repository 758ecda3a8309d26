"""KeyMap, the vectorized hash map of dynamic shards, against a Python dict: batches of
inserts, finds and removes (with duplicates, int64 edges, structured keys), growth,
tombstone reuse and rebuilds."""

import numpy as np
import pytest

from shardemb.shard.keymap import MAX_LOAD, KeyMap

EDGES = np.array([-(2**63), -(2**63) + 1, -1, 0, 1, 2**63 - 2, 2**63 - 1], dtype=np.int64)


def _check(m: KeyMap, ref: dict, probe: np.ndarray) -> None:
    want = np.array([ref.get(int(k), -1) for k in probe], dtype=np.int64)
    assert m.find(probe).tolist() == want.tolist()
    assert len(m) == len(ref)
    assert m.live_rows().tolist() == sorted(ref.values())


def test_edges_and_empty_map():
    m = KeyMap()
    assert m.find(EDGES).tolist() == [-1] * EDGES.size
    assert m.find(np.empty(0, np.int64)).tolist() == []
    m.insert(EDGES, np.arange(EDGES.size))
    assert m.find(EDGES[::-1]).tolist() == list(range(EDGES.size))[::-1]
    assert m.find(np.array([2, -2, 2**62])).tolist() == [-1, -1, -1]


def test_random_batches_match_a_dict(rng):
    m, ref = KeyMap(), {}
    free = list(range(50_000))[::-1]
    universe = np.concatenate([rng.integers(-(2**63), 2**63 - 1, 20_000, dtype=np.int64), EDGES])
    universe = np.unique(universe)
    for _ in range(60):
        batch = rng.choice(universe, 700)
        found = m.find(batch)
        new = np.unique(batch[found < 0])
        rows = np.array([free.pop() for _ in new], dtype=np.int64)
        m.insert(new, rows)
        ref.update(zip(new.tolist(), rows.tolist(), strict=True))
        if ref and rng.random() < 0.5:  # remove a random part, rows go back to the pool
            gone = rng.choice(sorted(ref), min(len(ref), 300), replace=False)
            rows = [ref.pop(int(k)) for k in gone]
            m.remove(np.array(rows))
            free.extend(rows)
        _check(m, ref, rng.choice(universe, 2000))  # duplicates and absent keys included
        assert (m.size + m._removed) <= MAX_LOAD * m.num_slots
    _check(m, ref, universe)


def test_growth_keeps_every_entry_and_the_load_bounded():
    m = KeyMap()
    keys = np.arange(200_000, dtype=np.int64) * (2**40) - 2**62  # keys differing in high bits
    for a in range(0, keys.size, 10_000):
        m.insert(keys[a : a + 10_000], np.arange(a, a + 10_000))
        assert m.size <= MAX_LOAD * m.num_slots
    assert (m.find(keys) == np.arange(keys.size)).all()
    assert m.row_keys.size >= keys.size and m.nbytes == m.num_slots * 4 + m.row_keys.nbytes


def test_tombstones_are_reused_and_cleared_by_a_rebuild(rng):
    m = KeyMap(expected=1000)
    slots = m.num_slots
    keys = rng.integers(-(2**63), 2**63 - 1, 1000, dtype=np.int64)
    m.insert(keys, np.arange(1000))
    for i in range(50):  # steady state: remove 100, insert 100 new
        rows = np.arange(100) + (i % 10) * 100
        m.remove(rows)
        fresh = rng.integers(-(2**63), 2**63 - 1, 100, dtype=np.int64)
        m.insert(fresh, rows)
        keys[rows] = fresh
    assert (m.find(keys) == np.arange(1000)).all()
    assert m.num_slots == slots  # rebuilt in place, never grown
    assert m.size + m._removed <= MAX_LOAD * m.num_slots


def test_concurrent_inserts_into_one_cluster():
    m = KeyMap(expected=64)
    home = m._home(np.arange(10_000, dtype=np.int64))
    same = np.flatnonzero(home == home[0])[:20]  # keys that all start at one slot
    m.insert(same.astype(np.int64), np.arange(same.size))
    assert m.find(same.astype(np.int64)).tolist() == list(range(same.size))


def test_remove_of_a_row_not_in_the_map_raises_and_changes_nothing():
    m = KeyMap()
    m.insert(np.array([5, 6]), np.array([0, 1]))
    with pytest.raises(KeyError):
        m.remove(np.array([7]))
    assert m.find(np.array([5, 6])).tolist() == [0, 1] and len(m) == 2
    m.clear()
    assert m.find(np.array([5, 6])).tolist() == [-1, -1] and len(m) == 0
