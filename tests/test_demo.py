"""The recommender demo (shardemb demo / examples/train_recommender.py) at tiny sizes."""

import json

import numpy as np
import pytest

from shardemb.cli import demo_main
from shardemb.cli import main as cli_main
from shardemb.errors import DataFormatError
from shardemb.recsys import synthetic_interactions

TINY = [
    "--backend",
    "inprocess",
    "--users",
    "120",
    "--items",
    "80",
    "--interactions",
    "1500",
    "--batch-size",
    "128",
    "--dim",
    "8",
    "--eval-users",
    "100",
]


def _results(out):
    with open(out / "results.json") as f:
        return json.load(f)


def _write(path, fmt, log):
    # Raw ids far from 0..n-1, so the demo must remap them.
    users, items = log.users * 7 + 100, log.items * 3 + 5000
    rows = zip(users, items, log.ratings, log.timestamps, strict=True)
    if fmt == "tsv":
        text = "".join(f"{u}\t{i}\t{r:g}\t{t}\n" for u, i, r, t in rows)
    elif fmt == "dat":
        text = "".join(f"{u}::{i}::{r:g}::{t}\n" for u, i, r, t in rows)
    else:
        text = "userId,movieId,rating,timestamp\n" + "".join(
            f"{u},{i},{r:g},{t}\n" for u, i, r, t in rows
        )
    path.write_text(text)


@pytest.mark.parametrize(
    "fmt,name", [("tsv", "u.data"), ("dat", "ratings.dat"), ("csv", "ratings.csv")]
)
def test_each_movielens_format_trains(fmt, name, tmp_path):
    log = synthetic_interactions(60, 40, 600, seed=3)
    data = tmp_path / name
    _write(data, fmt, log)
    out = tmp_path / "run"
    demo_main(
        [
            "--backend",
            "inprocess",
            "--data",
            str(data),
            "--epochs",
            "4",
            "--batch-size",
            "64",
            "--dim",
            "8",
            "--learning-rate",
            "0.3",
            "--out",
            str(out),
        ]
    )
    res = _results(out)
    losses = [h["loss"] for h in res["history"]]
    assert res["data"]["users"] == 60 and res["data"]["items"] <= 40
    assert losses[-1] < losses[0]
    assert (out / "mappings" / "users.json").exists() and (out / "training.png").exists()
    assert res["checkpoints"]["users"].endswith("step-4")


def test_resume_with_restore_shards_equals_an_unbroken_run(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    demo_main([*TINY, "--epochs", "3", "--out", str(straight)])
    demo_main([*TINY, "--epochs", "1", "--out", str(resumed)])  # "interrupted" after epoch 1
    demo_main([*TINY, "--epochs", "3", "--out", str(resumed), "--resume", "--restore-shards", "3"])
    a, b = _results(straight), _results(resumed)
    assert b["shards"] == {"users": 3, "items": 3} and a["shards"] == {"users": 2, "items": 2}
    assert [h["epoch"] for h in b["history"]] == [1, 2, 3]
    for key in ("loss", "recall@10", "ndcg@10"):
        assert [h[key] for h in a["history"]] == pytest.approx(
            [h[key] for h in b["history"]], rel=1e-6
        )


def test_resume_reuses_the_saved_id_mapping(tmp_path):
    log = synthetic_interactions(50, 30, 400, seed=1)
    data = tmp_path / "ratings.csv"
    _write(data, "csv", log)
    out = tmp_path / "run"
    args = [
        "--backend",
        "inprocess",
        "--data",
        str(data),
        "--batch-size",
        "64",
        "--dim",
        "4",
        "--out",
        str(out),
    ]
    demo_main([*args, "--epochs", "1"])
    mapping = (out / "mappings" / "items.json").read_text()
    # Append a rating of a new item: a fresh mapping would shift every row after it.
    with open(data, "a") as f:
        f.write("100,4999,5,99999999\n")
    with pytest.raises(DataFormatError, match="not in the saved id mapping"):
        demo_main([*args, "--epochs", "2", "--resume"])
    assert (out / "mappings" / "items.json").read_text() == mapping


@pytest.mark.parametrize(
    "content,match",
    [
        ("", r"ratings.csv.*empty"),
        ("userId,movieId,rating,timestamp\n1,2,5,100\n3,x,4,101\n", r"ratings.csv.*line 3"),
        ("userId,movieId,rating,timestamp\n1,2,5\n", r"ratings.csv.*line 2"),
    ],
)
def test_bad_data_names_file_and_line(content, match, tmp_path, capsys):
    data = tmp_path / "ratings.csv"
    data.write_text(content)
    code = cli_main(
        ["demo", "--backend", "inprocess", "--data", str(data), "--out", str(tmp_path / "o")]
    )
    assert code == 2
    assert np.any([m for m in [__import__("re").search(match, capsys.readouterr().err, 16)]])


def _steps(out):
    return {
        t: sorted(p.name for p in (out / "checkpoints" / t).iterdir()) for t in ("users", "items")
    }


def test_a_second_fresh_run_replaces_the_first_and_resume_continues(tmp_path, capsys):
    out = tmp_path / "run"
    demo_main([*TINY, "--epochs", "4", "--out", str(out)])
    capsys.readouterr()
    demo_main([*TINY, "--epochs", "3", "--out", str(out)])  # used to die on step-4
    assert "replacing the previous run" in capsys.readouterr().out
    # Exactly the checkpoints of one 3-epoch run (keep=2), none left from the first.
    assert _steps(out) == {"users": ["step-2", "step-3"], "items": ["step-2", "step-3"]}
    assert [h["epoch"] for h in _results(out)["history"]] == [1, 2, 3]
    demo_main([*TINY, "--epochs", "5", "--out", str(out), "--resume"])
    assert "replacing" not in capsys.readouterr().out
    assert _steps(out) == {"users": ["step-4", "step-5"], "items": ["step-4", "step-5"]}
    assert [h["epoch"] for h in _results(out)["history"]] == [1, 2, 3, 4, 5]


def test_a_fresh_run_refuses_a_folder_with_other_files(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "results.json").write_text("{}")
    assert cli_main(["demo", *TINY, "--epochs", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("shardemb: error:") and "notes.txt" in err[0]
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "results.json"]


def test_dynamic_trains_on_raw_ids_with_eviction_and_resumes(tmp_path, capsys):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    demo_main([*TINY, "--dynamic", "--epochs", "2", "--out", str(straight)])
    printed = capsys.readouterr().out
    assert "evictions" in printed and "lookups of ids without a row" in printed
    res = _results(straight)
    assert res["config"]["dynamic"] and not (straight / "mappings").exists()
    for t, distinct in (("users", 120), ("items", 80)):
        c = res["history"][-1]["tables"][t]
        assert c["rows"] <= c["capacity"] < distinct and c["evictions"] > 0
        assert c["inserts"] - c["evictions"] == c["rows"]
    assert res["final"]["recall@10"] > 0
    # A resumed run continues from the dynamic checkpoints as if never stopped.
    demo_main([*TINY, "--dynamic", "--epochs", "1", "--out", str(resumed)])
    demo_main([*TINY, "--dynamic", "--epochs", "2", "--out", str(resumed), "--resume"])
    b = _results(resumed)
    for key in ("loss", "recall@10"):
        assert [h[key] for h in b["history"]] == pytest.approx(
            [h[key] for h in res["history"]], rel=1e-6
        )
