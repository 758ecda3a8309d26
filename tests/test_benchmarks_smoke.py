"""The benchmark runner end to end at toy sizes (``--smoke``: in-process shards, seconds).

Checks the shape of what it writes, never a timing: the JSON has every section's keys with
positive numbers, the plots exist, and the README blocks are regenerated from the JSON.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import run as bench_run  # noqa: E402
from benchmarks import startup_bench  # noqa: E402
from benchmarks.report import update_readme  # noqa: E402

SECTIONS = [
    "startup",
    "bandwidth",
    "headline",
    "lookup",
    "profile",
    "memory",
    "checkpoint",
    "dynamic",
    "train",
    "tables",
]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    readme = out / "README.md"
    shutil.copy(ROOT / "benchmarks" / "README.md", readme)
    rc = bench_run.main(["--smoke", "--no-progress", "--out", str(out), "--readme", str(readme)])
    return rc, out, json.loads((out / "results.json").read_text()), readme


def _positive(*values):
    for v in values:
        assert isinstance(v, int | float) and v > 0, values


def test_runs_every_section_without_error(smoke):
    rc, _, res, _ = smoke
    assert rc == 0
    assert res["meta"]["sections"] == SECTIONS  # scaling needs Ray: left out in-process
    for name in SECTIONS:
        assert "error" not in res[name], res[name]
    meta = res["meta"]
    assert meta["command"].startswith("python -m benchmarks.run --smoke")
    for key in ("cpu", "logical_cores", "ram_bytes", "os"):
        assert meta["machine"][key]
    for pkg in ("numpy", "tensorflow", "keras", "ray", "zarr", "python"):
        assert meta["versions"][pkg]
    _positive(*meta["durations"].values())


def test_lookup_push_and_headline_numbers(smoke):
    _, _, res, _ = smoke
    _positive(res["bandwidth"]["gbs"])
    rows = res["lookup"]["rows"]
    assert {r["op"] for r in rows} == {"lookup", "push"}
    assert {r["dist"] for r in rows} == {"uniform", "zipf"}
    for r in rows:
        _positive(r["store_rows_per_s"], r["store_gbs"], r["ref_gbs"], r["copy_gbs"],
                  r["ratio"], r["vs_copy"])  # fmt: skip
    head = res["headline"]
    assert [m["dedup"] for m in head["modes"]] == ["auto", "on", "off"]
    for m in head["modes"]:
        _positive(m["ratio"], m["store_gbs"], m["p10_ratio"], m["p90_ratio"])
        assert isinstance(m["meets_target"], bool)


def test_profile_train_memory_checkpoint_numbers(smoke):
    _, _, res, _ = smoke
    for case in res["profile"]["cases"]:
        st = case["stages"]
        _positive(st["total"], st["ray_call"], case["store_lookup_s"], case["take_s"])
        assert all(st[k] >= 0 for k in ("validate", "dedup", "split", "shard_gather"))
    for case in res["train"]["cases"]:
        _positive(case["sharded_steps_per_s"], case["keras_steps_per_s"], case["ratio"],
                  case["floor_steps_per_s"])  # fmt: skip
    for size in res["memory"]["sizes"]:
        _positive(size["lookup_ratio"], size["push_ratio"], size["driver_rss_before"])
        assert all(s["bytes"] > 0 for s in size["shard_memory"])
    assert res["checkpoint"]["sizes"]
    for size in res["checkpoint"]["sizes"]:
        _positive(size["save_s"], size["restore_s"], size["np_save_s"], size["np_load_s"],
                  size["reshard_restore_s"])  # fmt: skip


def test_startup_numbers(smoke):
    _, out, res, _ = smoke
    st = res["startup"]
    assert set(st["runs"]) == {"ray", "shardemb"}  # in-process: no actors, no runtime
    for runs in st["runs"].values():
        assert len(runs) == st["rounds"] == 1
        for run in runs:
            _positive(run["import_s"], run["start_s"], run["exit_s"])
    _positive(st["start_ratio"], st["exit_ratio"], st["kinds"]["shardemb"]["first_lookup_s"])
    assert st["goals"] is None and "meets_start_goal" not in st  # no goal without Ray
    assert (out / "startup" / "shardemb-0.json").exists()


def test_startup_summary_and_block_of_a_ray_run():
    def run(start, exit, **phases):
        return {"import_s": 0.1, "start_s": start, "exit_s": exit, **phases}

    runs = {
        "ray": [run(4.0, 1.0, init_s=3.9), run(5.0, 2.0, init_s=4.9)],
        "ray_actors": [run(5.0, 1.0, init_s=3.9, actors_s=1.0)] * 2,
        "shardemb": [run(6.0, 1.0, create_s=5.9, ray_init_s=4.0, shards_s=1.9,
                         first_lookup_s=0.02)] * 2,
    }  # fmt: skip
    st = startup_bench.summarize(runs, startup_bench.SIZES["quick"])
    assert st["start_ratio"] == pytest.approx((1.5 + 1.2) / 2)  # per round, then the median
    assert st["exit_ratio"] == pytest.approx((1.0 + 0.5) / 2)
    assert st["start_vs_actors"] == pytest.approx(1.2)
    assert st["meets_start_goal"] is False and st["meets_exit_goal"] is True
    block = startup_bench.block_startup(st, {})
    assert "**1.35x** (goal <= 1.3x: not met)" in block
    assert "**0.75x** (goal <= 1.5x: met)" in block
    assert "4 empty actors" in block and "shardemb's start-up is **1.20x**" in block


def test_dynamic_numbers(smoke):
    r = smoke[2]["dynamic"]
    for case in [*r["lookup"], r["push"], r["push_evict"]]:
        _positive(case["ratio"], case["fixed_s"], case["dynamic_s"])
    _positive(*r["memory"].values())


def test_tables_numbers(smoke):
    r = smoke[2]["tables"]
    (case,) = r["cases"]  # no 2 x 1M x 64 model at --smoke sizes
    for v in case["variants"].values():
        _positive(v["step_s"], v["steps_per_s"], v["x_floor"])
    for ratio in case["ratios"]:
        _positive(ratio["ratio"], ratio["best_possible"])
    assert [p["tables"] for p in r["sweep"]["points"]] == [2, 4]
    _positive(r["sweep"]["ratio"], *(p["step_s"] for p in r["sweep"]["points"]))
    assert r["startup"]["processes"] == 0 and r["startup"]["idle_cores"] is None  # in-process


def _block(text: str, name: str) -> str:
    return text.split(f"<!-- results:{name} -->")[1].split(f"<!-- /results:{name} -->")[0]


def test_plots_and_readme_blocks(smoke):
    _, out, res, readme = smoke
    for name in ("lookup", "profile", "train", "memory", "checkpoint", "tables"):
        assert (out / f"{name}.png").stat().st_size > 0
    text = readme.read_text()
    for name in ["meta", *SECTIONS]:
        block = _block(text, name)
        assert "not yet generated" not in block, name
        assert res["meta"]["command"] in block and res["meta"]["versions"]["ray"] in block
    source = (ROOT / "benchmarks" / "README.md").read_text()
    assert _block(text, "scaling") == _block(source, "scaling")  # not run: left alone
    # Regenerating is idempotent: the same JSON gives the same text.
    update_readme(str(readme), {k: v for k, v in res.items() if k != "meta"}, res["meta"])
    assert readme.read_text() == text


def test_arguments_are_checked():
    assert list(bench_run.SECTIONS)[0] == "startup"  # before any section loads the machine
    assert not bench_run._start_ray(bench_run.parse_args(["--quick", "--only", "startup"]))
    with pytest.raises(SystemExit):
        bench_run.parse_args(["--only", "lookup,nope"])
    with pytest.raises(SystemExit):
        bench_run.parse_args(["--smoke", "--quick"])
    args = bench_run.parse_args(["--quick", "--skip", "train,scaling"])
    assert args.mode == "quick" and "train" not in args.sections and args.backend == "ray"


def test_shardemb_bench_subcommand_forwards_its_arguments():
    from shardemb.bench import _bench, find_checkout
    from shardemb.cli import build_parser

    args = build_parser().parse_args(["bench", "--quick", "--only", "headline"])
    assert args.func is _bench and args.rest == ["--quick", "--only", "headline"]
    assert find_checkout() == str(ROOT)
