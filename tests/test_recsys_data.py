"""Tests for shardemb.recsys: MovieLens loading, id mapping, synthetic logs, split."""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import fsspec
import numpy as np
import pytest

import shardemb.recsys
import shardemb.recsys.movielens as movielens_module
import shardemb.recsys.tastes as tastes_module
from shardemb.errors import DataFormatError, InvalidConfigError, InvalidIdsError
from shardemb.recsys import (
    IdMapping,
    Interactions,
    encode,
    evaluate,
    load_ratings,
    popularity_baseline,
    synthetic_interactions,
    train_test_split,
)

# (user, item, rating, timestamp): the first rows of ML-100k, with a half star as in ML-20M.
ROWS = [
    (196, 242, 3.0, 881250949),
    (186, 302, 3.0, 891717742),
    (22, 377, 1.0, 878887116),
    (244, 51, 2.5, 880606923),
]
HEADER = "userId,movieId,rating,timestamp\n"


def _lines(sep: str) -> str:
    return "".join(f"{u}{sep}{i}{sep}{r:g}{sep}{t}\n" for u, i, r, t in ROWS)


FILES = {
    "u.data": _lines("\t"),
    "ratings.dat": _lines("::"),
    "ratings.csv": HEADER + _lines(","),
}


def _write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text)
    return path


# --------------------------------------------------------------------------- Interactions


def test_interactions_casts_columns_and_takes_subsets():
    log = Interactions([1, 2, 3], np.array([4, 5, 6], dtype=np.int32), [5, 4, 3], [7, 8, 9])
    assert [a.dtype for a in (log.users, log.items, log.ratings, log.timestamps)] == [
        np.int64,
        np.int64,
        np.float32,
        np.int64,
    ]
    assert len(log) == 3
    assert log.take([2, 0]) == Interactions([3, 1], [6, 4], [3, 5], [9, 7])
    assert log.take(log.ratings > 3.5).users.tolist() == [1, 2]
    assert log != log.take([0, 1, 2][::-1])
    with pytest.raises(TypeError):
        hash(log)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(users=[1, 2], items=[1, 2], ratings=[1.0], timestamps=[1, 2]), "len\\(ratings\\)=1"),
        (dict(users=[1.5], items=[1], ratings=[1.0], timestamps=[1]), "`users` must be a 1-D"),
        (dict(users=[1], items=[[1]], ratings=[1.0], timestamps=[1]), "`items` must be a 1-D"),
        (dict(users=[1], items=[1], ratings=["a"], timestamps=[1]), "`ratings` must be a 1-D"),
        (dict(users=[1], items=[1], ratings=[1.0], timestamps=[0.5]), "`timestamps` must be"),
    ],
)
def test_interactions_rejects_bad_columns(kwargs, match):
    with pytest.raises(InvalidConfigError, match=match):
        Interactions(**kwargs)


# --------------------------------------------------------------------------- load_ratings


@pytest.mark.parametrize("name", sorted(FILES))
def test_load_ratings_parses_each_format_exactly(tmp_path, name):
    log = load_ratings(_write(tmp_path, name, FILES[name]))
    np.testing.assert_array_equal(log.users, np.array([196, 186, 22, 244], dtype=np.int64))
    np.testing.assert_array_equal(log.items, np.array([242, 302, 377, 51], dtype=np.int64))
    np.testing.assert_array_equal(log.ratings, np.array([3, 3, 1, 2.5], dtype=np.float32))
    np.testing.assert_array_equal(
        log.timestamps, np.array([881250949, 891717742, 878887116, 880606923], dtype=np.int64)
    )


def test_load_ratings_formats_agree_and_format_argument_overrides_name(tmp_path):
    logs = [load_ratings(_write(tmp_path, name, text)) for name, text in FILES.items()]
    assert logs[0] == logs[1] == logs[2]
    for fmt, name in (("tsv", "u.data"), ("dat", "ratings.dat"), ("csv", "ratings.csv")):
        renamed = _write(tmp_path, f"{fmt}.txt", FILES[name])
        assert load_ratings(renamed, format=fmt) == logs[0]


def test_load_ratings_accepts_crlf_no_final_newline_and_fsspec_urls(tmp_path):
    text = FILES["ratings.csv"].replace("\n", "\r\n").rstrip()
    expected = load_ratings(_write(tmp_path, "ratings.csv", FILES["ratings.csv"]))
    assert load_ratings(_write(tmp_path, "crlf.csv", text)) == expected
    url = "memory://shardemb-test/ml-latest/ratings.csv"
    with fsspec.open(url, "w") as f:
        f.write(FILES["ratings.csv"])
    assert load_ratings(url) == expected


def test_load_ratings_counts_lines_across_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(movielens_module, "_CHUNK_BYTES", 50)  # a few lines per chunk
    lines = [f"{u}::{u % 7}::4::{1000 + u}\n" for u in range(200)]
    log = load_ratings(_write(tmp_path, "ratings.dat", "".join(lines)))
    np.testing.assert_array_equal(log.users, np.arange(200))
    np.testing.assert_array_equal(log.timestamps, np.arange(1000, 1200))
    lines[156] = "156::x::4::1156\n"
    with pytest.raises(DataFormatError, match=r"ratings\.dat, line 157: item id 'x'"):
        load_ratings(_write(tmp_path, "ratings.dat", "".join(lines)))


BAD_FILES = [
    # (file name, contents, message pattern)
    ("ratings.csv", "", r"ratings\.csv, line 1: the file is empty"),
    ("u.data", "\n \n", r"u\.data, line 1: the file is empty"),
    ("ratings.csv", HEADER, r"ratings\.csv, line 2: expected ratings after the header"),
    (
        "ratings.dat",
        "1::2::3::4\n1::3::4::5\n1::4::5\n1::5::5::6\n",
        r"ratings\.dat, line 3: expected 4 fields .* found 3",
    ),
    ("u.data", "1\t2\t3\t4\nx1\t2\t3\t4\n", r"u\.data, line 2: user id 'x1' is not a number"),
    ("ratings.csv", HEADER + "1,2,3,4\n", None),  # control: fine
    ("ratings.csv", HEADER + "1,abc,3,4\n", r"ratings\.csv, line 2: item id 'abc' is not a"),
    ("ratings.csv", HEADER + "1,2,3.5,4\n1,2,x,4\n", r"ratings\.csv, line 3: rating 'x'"),
    ("ratings.csv", HEADER + "1,2,nan,4\n", r"ratings\.csv, line 2: rating 'nan' is not finite"),
    ("ratings.dat", "1::2::3::4\n1::2::3::t\n", r"ratings\.dat, line 2: timestamp 't' is not a"),
    ("u.data", "1\t2.5\t3\t4\n", r"u\.data, line 1: item id '2\.5' is not an integer"),
    ("u.data", "1\t2\t3\t4\t5\n", r"u\.data, line 1: expected 4 fields .* found 5"),
    ("ratings.dat", "1::2::3::4\n\n1::2::3::4\n", r"ratings\.dat, line 2: expected 4 fields"),
    ("ratings.csv", "1,2,3,4\n5,6,7,8\n", r"ratings\.csv, line 1: expected the header"),
    ("ratings.csv", "userId;movieId\n1,2,3,4\n", r"ratings\.csv, line 1: expected a header"),
]


@pytest.mark.parametrize(("name", "text", "match"), BAD_FILES)
def test_load_ratings_reports_file_and_line_of_bad_data(tmp_path, name, text, match):
    path = _write(tmp_path, name, text)
    if match is None:
        assert len(load_ratings(path)) == 1
        return
    with pytest.raises(DataFormatError, match=match):
        load_ratings(path)


def test_load_ratings_rejects_unknown_formats(tmp_path):
    path = _write(tmp_path, "ratings.txt", FILES["u.data"])
    with pytest.raises(InvalidConfigError, match=r"'ratings\.txt'.*'tsv'.*'dat'.*'csv'"):
        load_ratings(path)
    with pytest.raises(InvalidConfigError, match=r"Received: format='xlsx'"):
        load_ratings(path, format="xlsx")


# --------------------------------------------------------------------------- IdMapping


def test_id_mapping_round_trips_any_shape():
    raw = np.array([[900, -5], [42, 900]])
    mapping = IdMapping.fit(raw)
    assert len(mapping) == 3
    assert mapping.raw_ids.tolist() == [-5, 42, 900]
    rows = mapping.to_rows(raw)
    assert rows.tolist() == [[2, 0], [1, 2]] and rows.dtype == np.int64
    np.testing.assert_array_equal(mapping.to_raw(rows), raw)
    assert mapping.to_rows(np.array([], dtype=np.int64)).shape == (0,)
    with pytest.raises(ValueError):
        mapping.raw_ids[0] = 1  # read-only


def test_id_mapping_reports_unknown_ids_or_maps_them_to_default():
    mapping = IdMapping.fit([10, 20, 30])
    with pytest.raises(InvalidIdsError, match=r"3 of 5 raw ids are not in the mapping .*\[7, 99\]"):
        mapping.to_rows([10, 99, 7, 30, 7])
    assert mapping.to_rows([10, 99, 7], default=-1).tolist() == [0, -1, -1]
    with pytest.raises(InvalidIdsError, match="must be integers"):
        mapping.to_rows([1.5])
    with pytest.raises(InvalidIdsError, match=r"`rows` must be in \[0, 3\).*\[3, -1\]"):
        mapping.to_raw([0, 3, -1])
    assert IdMapping.fit([]).to_rows([4], default=-1).tolist() == [-1]
    with pytest.raises(InvalidConfigError, match="strictly increasing"):
        IdMapping([3, 1])


def test_id_mapping_saves_and_loads_json(tmp_path):
    mapping = IdMapping.fit([7, 3, 2**40])
    path = tmp_path / "users.json"
    mapping.save(path)
    assert json.loads(path.read_text())["raw_ids"] == [3, 7, 2**40]
    assert os.listdir(tmp_path) == ["users.json"]  # no temporary file left behind
    assert IdMapping.load(path) == mapping
    assert IdMapping.load(f"file://{path}") == mapping
    assert IdMapping.load(path) != IdMapping.fit([3, 7])
    assert mapping != [3, 7, 2**40]
    url = "memory://shardemb-test/mappings/items.json"
    mapping.save(url)
    assert IdMapping.load(url) == mapping


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        '{"format": "other", "version": 1, "raw_ids": []}',
        '{"format": "shardemb.IdMapping", "version": 1, "raw_ids": [2, 1]}',
        '{"format": "shardemb.IdMapping", "version": 1, "raw_ids": ["a"]}',
    ],
)
def test_id_mapping_load_rejects_other_files(tmp_path, text):
    path = _write(tmp_path, "broken.json", text)
    with pytest.raises(DataFormatError, match=r"broken\.json: not a saved IdMapping"):
        IdMapping.load(path)


def test_id_mapping_load_of_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        IdMapping.load(tmp_path / "missing.json")


def test_encode_maps_raw_ids_to_contiguous_rows():
    log = Interactions([42, 7, 42, 1000], [100, 100, 5, 6], [4, 3, 5, 1], [1, 2, 3, 4])
    encoded, users, items = encode(log)
    assert encoded.users.tolist() == [1, 0, 1, 2]
    assert encoded.items.tolist() == [2, 2, 0, 1]
    assert users == IdMapping.fit([7, 42, 1000]) and items == IdMapping.fit([5, 6, 100])
    np.testing.assert_array_equal(users.to_raw(encoded.users), log.users)
    np.testing.assert_array_equal(encoded.ratings, log.ratings)


# --------------------------------------------------------------------------- synthetic data


def _check_log_invariants(log: Interactions, num_users: int, num_items: int, total: int):
    assert len(log) == total
    per_user = np.bincount(log.users, minlength=num_users)
    assert per_user.size == num_users and per_user.min() >= 3
    assert 0 <= log.items.min() and log.items.max() < num_items
    assert np.unique(log.users * num_items + log.items).size == total  # each item once per user
    assert set(np.unique(log.ratings).tolist()) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    assert np.all(np.diff(log.timestamps) >= 0)  # a log in time order
    by_user = np.lexsort((log.timestamps, log.users))
    same_user = np.diff(log.users[by_user]) == 0
    assert np.all(np.diff(log.timestamps[by_user])[same_user] > 0)  # strictly, per user


def test_synthetic_interactions_has_the_requested_shape():
    log = synthetic_interactions(300, 200, 9_000, seed=4)
    _check_log_invariants(log, 300, 200, 9_000)
    assert np.count_nonzero(np.diff(log.users)) > 10 * 300  # users interleave in time


def test_synthetic_interactions_is_deterministic_for_a_seed():
    assert synthetic_interactions(100, 80, 2_000, seed=7) == synthetic_interactions(
        100, 80, 2_000, seed=7
    )
    assert synthetic_interactions(100, 80, 2_000, seed=7) != synthetic_interactions(
        100, 80, 2_000, seed=8
    )


def test_synthetic_interactions_fills_small_catalogues():
    log = synthetic_interactions(20, 5, 100)  # every user rates every item
    _check_log_invariants(log, 20, 5, 100)
    assert np.all(np.bincount(log.users) == 5)


def test_synthetic_popularity_is_zipf_like():
    def top_decile_share(exponent: float) -> float:
        log = synthetic_interactions(2_000, 1_000, 40_000, zipf_exponent=exponent, seed=1)
        counts = np.sort(np.bincount(log.items, minlength=1_000))[::-1]
        return counts[:100].sum() / len(log)

    assert top_decile_share(1.0) > 0.4
    assert top_decile_share(0.0) < 0.3  # tastes alone spread choices out


def _recalls(log, truth, num_items):
    train, test = train_test_split(log)
    oracle = evaluate(*truth.oracle_vectors(), train, test, k=10)["recall"]
    popular = popularity_baseline(train, test, num_items, k=10)["recall"]
    rng = np.random.default_rng(12345)  # not a seed of the log: its tastes would come out
    random_vectors = (
        rng.standard_normal((len(truth.user_tastes), 8)),
        rng.standard_normal((num_items, 8)),
    )
    random = evaluate(*random_vectors, train, test, k=10)["recall"]
    return oracle, popular, random


def test_synthetic_tastes_are_learnable():
    log, truth = synthetic_interactions(1_000, 500, 30_000, seed=2, return_truth=True)
    oracle, popular, random = _recalls(log, truth, 500)
    assert random < 0.06  # about k / num_items
    assert popular > 3 * random
    assert oracle > 1.5 * popular


def test_synthetic_interactions_large_worlds_sample_from_prototypes(monkeypatch):
    # Force the approximate path used above 2**25 user-item pairs, with 20 prototypes.
    monkeypatch.setattr(tastes_module, "_EXACT_ENTRIES", 0)
    monkeypatch.setattr(tastes_module, "_PROTOTYPE_ENTRIES", 20 * 500)
    monkeypatch.setattr(tastes_module, "_GUIDE_ENTRIES", 3 * 500)
    log, truth = synthetic_interactions(1_000, 500, 30_000, seed=2, return_truth=True)
    _check_log_invariants(log, 1_000, 500, 30_000)
    oracle, popular, random = _recalls(log, truth, 500)
    assert popular > 3 * random
    assert oracle > 1.3 * popular


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((0, 10, 30), {}, r"`num_users` must be an integer >= 1. Received: num_users=0"),
        ((10, 2, 30), {}, r"`num_items` must be an integer >= 3. Received: num_items=2"),
        ((10, 10, 29), {}, r"`num_interactions` must be an integer >= 30\. .*=29"),
        ((10, 10, 101), {}, r"at most num_users \* num_items = 100.*num_interactions=101"),
        ((10.0, 10, 30), {}, r"Received: num_users=10\.0"),
        ((True, 10, 30), {}, r"Received: num_users=True"),
        ((10, 10, 30), {"taste_dim": 0}, r"`taste_dim` must be an integer >= 1"),
        ((10, 10, 30), {"seed": -1}, r"`seed` must be an integer >= 0"),
        ((10, 10, 30), {"noise": 0.0}, r"`noise` must be a positive number. Received: noise=0\.0"),
        ((10, 10, 30), {"noise": float("nan")}, r"`noise` must be a positive number"),
        ((10, 10, 30), {"zipf_exponent": -1}, r"`zipf_exponent` must be a non-negative number"),
    ],
)
def test_synthetic_interactions_validates_arguments(args, kwargs, match):
    with pytest.raises(InvalidConfigError, match=match):
        synthetic_interactions(*args, **kwargs)


# --------------------------------------------------------------------------- split

# position: user, item, timestamp
SPLIT_LOG = Interactions(
    users=[1, 2, 1, 1, 3, 3, 1],
    items=[10, 20, 11, 12, 30, 31, 13],
    ratings=[5, 4, 3, 2, 1, 2, 3],
    timestamps=[100, 50, 300, 300, 10, 5, 200],
)


def test_train_test_split_holds_out_latest_with_ties_by_position():
    train, test = train_test_split(SPLIT_LOG)
    # User 1: items 11 and 12 tie at t=300, 12 comes later; user 2 has a single interaction.
    assert test == SPLIT_LOG.take([3, 4])
    assert train == SPLIT_LOG.take([0, 1, 2, 5, 6])


def test_train_test_split_keeps_users_with_at_most_holdout_interactions_in_train():
    train, test = train_test_split(SPLIT_LOG, holdout=2)
    assert test == SPLIT_LOG.take([2, 3])  # user 3 has exactly 2: all stay in train
    assert train == SPLIT_LOG.take([0, 1, 4, 5, 6])
    train, test = train_test_split(SPLIT_LOG, holdout=4)
    assert len(test) == 0 and train == SPLIT_LOG


def test_train_test_split_of_empty_log_and_bad_holdout():
    empty = SPLIT_LOG.take(np.zeros(7, dtype=bool))
    train, test = train_test_split(empty)
    assert len(train) == len(test) == 0
    for holdout in (0, -1, 1.5):
        with pytest.raises(InvalidConfigError, match=f"Received: holdout={holdout}"):
            train_test_split(SPLIT_LOG, holdout=holdout)


def test_train_test_split_on_synthetic_log_holds_out_the_latest():
    log = synthetic_interactions(200, 100, 5_000, seed=5)
    train, test = train_test_split(log, holdout=2)
    assert len(test) == 400 and np.all(np.bincount(test.users) == 2)
    latest_train = np.full(200, np.iinfo(np.int64).min)
    np.maximum.at(latest_train, train.users, train.timestamps)
    assert np.all(test.timestamps > latest_train[test.users])


# --------------------------------------------------------------------------- package


def test_recsys_modules_import_no_ray_tensorflow_or_keras():
    package = Path(shardemb.recsys.__file__).parent
    for source in sorted(package.glob("*.py")):
        tree = ast.parse(source.read_text())
        imported = {
            alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
        }
        imported |= {
            node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
        }
        assert not {name.split(".")[0] for name in imported} & {"ray", "tensorflow", "keras"}


def test_package_exports():
    assert sorted(shardemb.recsys.__all__) == shardemb.recsys.__all__
    for name in shardemb.recsys.__all__:
        assert getattr(shardemb.recsys, name).__doc__
