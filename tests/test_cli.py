"""The ``shardemb`` command line: errors, output, checkpoint inspection, benchmark files."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

import shardemb
from shardemb.checkpoint import inspect_path
from shardemb.cli import main as cli_main

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import run as bench_run  # noqa: E402

# The tiny demo of tests/test_demo.py.
TINY = ["--backend", "inprocess", "--users", "120", "--items", "80", "--interactions", "1500",
        "--batch-size", "128", "--dim", "8", "--eval-users", "100"]  # fmt: skip


def _shardemb(*args: str, cwd=None) -> subprocess.CompletedProcess:
    """``python -m shardemb ARGS`` with stdout and stderr to pipes (not a terminal), and
    TensorFlow's log level left to the command."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_CPP_")}
    return subprocess.run(
        [sys.executable, "-m", "shardemb", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )


# ---------------------------------------------------------------------------------- errors


def test_missing_data_is_one_error_line_and_creates_nothing(tmp_path):
    out = tmp_path / "run"
    r = _shardemb("demo", "--data", str(tmp_path / "nonexistent.dat"), "--out", str(out))
    assert r.returncode == 2
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("shardemb: error:"), r.stderr
    assert "nonexistent.dat" in lines[0]
    assert not out.exists()


@pytest.mark.parametrize(
    "flags,match",
    [
        (["--data", "{tmp}"], "is not a file"),
        (["--epochs", "0"], "--epochs must be positive"),
        (["--temperature", "-1"], "--temperature must be positive"),
        (["--restore-shards", "2"], "needs --resume"),
        (["--optimizer", "nope"], "invalid choice"),
        (["--out", "{tmp}/file.txt"], "is a file, not a folder"),
    ],
)
def test_bad_demo_flags_are_one_error_line(flags, match, tmp_path, capsys):
    (tmp_path / "file.txt").write_text("x")
    flags = [f.format(tmp=tmp_path) for f in flags]
    out = ["--out", str(tmp_path / "run")] if "--out" not in flags else []
    with pytest.raises(SystemExit) as exc:
        cli_main(["demo", "--backend", "inprocess", *out, *flags])
    assert exc.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("shardemb: error:") and match in err[0], err
    assert not (tmp_path / "run").exists()


def test_unknown_command_is_one_error_line(capsys):
    with pytest.raises(SystemExit) as exc:
        cli_main(["nope"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("shardemb: error:"), err


def test_address_is_on_demo_and_bench():
    # README and cluster/README.md name these two commands as the ones taking --address.
    for command in ("demo", "bench"):
        assert "--address" in _shardemb(command, "--help").stdout, command
    assert "--address" not in _shardemb("checkpoint", "inspect", "--help").stdout


# ----------------------------------------------------------------------- the demo's output


@pytest.fixture(scope="module")
def piped_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("piped") / "run"
    r = _shardemb("demo", *TINY, "--epochs", "2", "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    return r, out


def test_piped_demo_prints_no_progress_bars_or_tensorflow_noise(piped_demo):
    r, _ = piped_demo
    assert "\x1b" not in r.stdout and "\r" not in r.stdout
    noise = [line for line in r.stderr.splitlines() if "cuInit" in line or "oneDNN" in line]
    assert not noise, noise
    assert "epoch 2/2" in r.stdout and "recall@10" in r.stdout


def _keys(obj):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield k
            yield from _keys(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _keys(v)


def test_results_name_metrics_at_10_everywhere(piped_demo):
    _, out = piped_demo
    res = json.loads((out / "results.json").read_text())
    keys = set(_keys(res))
    assert not keys & {"recall", "ndcg"}, keys
    assert {"recall@10", "ndcg@10"} <= set(res["most_popular"]) & set(res["final"])


# ------------------------------------------------------------------- checkpoint inspect


def _manager_root(path, steps, *, incomplete=()):
    store = shardemb.EmbeddingStore.create(
        f"cli-inspect-{path.name}", 10, 2, num_shards=2, backend="inprocess"
    )
    mgr = shardemb.CheckpointManager(str(path), keep=None)
    for step in steps:
        mgr.save(store, step)
    store.close()
    for step in incomplete:  # an interrupted save: arrays, no manifest
        (path / f"step-{step}" / "shards").mkdir(parents=True)
    return mgr


def test_inspect_manager_root_lists_its_steps(tmp_path, capsys):
    root = tmp_path / "users"
    _manager_root(root, [1, 2], incomplete=[3])
    assert inspect_path(str(root)) == 0
    out = capsys.readouterr().out
    assert "CheckpointManager" in out and "it has no manifest.json" not in out
    lines = {line.split()[1]: line for line in out.splitlines() if line.startswith("step ")}
    assert set(lines) == {"1", "2", "3"}
    assert "complete" in lines["1"] and "complete" in lines["2"]
    assert "incomplete" in lines["3"]
    assert str(root / "step-2") in out  # the latest

    assert inspect_path(str(root), as_json=True) == 0
    report = json.loads(capsys.readouterr().out)
    assert [(s["step"], s["complete"]) for s in report["steps"]] == [
        (1, True),
        (2, True),
        (3, False),
    ]


def test_inspect_folder_of_roots_and_root_without_committed_steps(tmp_path, capsys):
    _manager_root(tmp_path / "ckpts" / "users", [4])
    _manager_root(tmp_path / "ckpts" / "items", [4])
    assert cli_main(["checkpoint", "inspect", str(tmp_path / "ckpts")]) == 0
    out = capsys.readouterr().out
    assert out.count("step 4") == 2

    broken = tmp_path / "broken"
    (broken / "step-1" / "shards").mkdir(parents=True)
    assert inspect_path(str(broken)) == 1
    assert "no complete checkpoint" in capsys.readouterr().out


def test_inspect_a_file_says_it_is_a_file(tmp_path, capsys):
    f = tmp_path / "results.json"
    f.write_text("{}")
    assert inspect_path(str(f)) == 1
    err = capsys.readouterr().err
    assert "is a file, not a checkpoint folder" in err and "does not exist" not in err


def test_inspect_one_checkpoint_still_prints_its_manifest(tmp_path, capsys):
    mgr = _manager_root(tmp_path / "one", [7])
    assert inspect_path(mgr.path(7)) == 0
    assert "complete   yes" in capsys.readouterr().out


# ------------------------------------------------------------------------------- bench


def _tracked_benchmark_files() -> dict[str, bytes]:
    files = [ROOT / "benchmarks" / "README.md", *sorted((ROOT / "benchmarks" / "img").iterdir())]
    return {str(p.relative_to(ROOT)): p.read_bytes() for p in files}


def test_benchmarks_leave_the_committed_readme_alone_by_default(tmp_path):
    before = _tracked_benchmark_files()
    for mode in ("--smoke", "--quick"):  # --quick used to rewrite it
        out = tmp_path / mode.strip("-")
        rc = bench_run.main([mode, "--only", "bandwidth", "--backend", "inprocess",
                             "--no-progress", "--out", str(out)])  # fmt: skip
        assert rc == 0 and (out / "results.json").exists()
    assert _tracked_benchmark_files() == before
    assert bench_run.parse_args(["--quick"]).update_readme is False
    assert bench_run.parse_args(["--update-readme"]).update_readme is True


def test_bench_summary_prints_no_missing_target():
    results = {
        "headline": {"ids": 10, "table_rows": 100, "dim": 4, "shards": 2, "target": None,
                     "modes": [{"backend": "inprocess", "dedup": "auto", "ratio": 0.5}]},
        "train": {"cases": [{"model": "mlp", "rows": 100, "optimizer": "sgd", "target": None,
                             "sharded_steps_per_s": 2.0, "keras_steps_per_s": 1.0,
                             "ratio": 2.0}]},
    }  # fmt: skip
    text = "\n".join(bench_run._summary(results))
    assert "None" not in text and "target" not in text
    results["train"]["cases"][0]["target"] = 1.5
    assert "(target 1.5x)" in "\n".join(bench_run._summary(results))
