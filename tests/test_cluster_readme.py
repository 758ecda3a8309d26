"""cluster/README.md's code blocks run as written, in order, in one shell process from the
repository root: real local clusters go up and down (about a minute on 2 cores).

Blocks marked ``<!-- readme-test: skip (...) -->`` need a cloud account, Kubernetes or a
real multi-machine cluster; the first test checks that nothing else is left out.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from readme_blocks import RUNNABLE, code_blocks, shell_script

from shardemb import cluster

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "cluster" / "README.md"


def test_every_block_runs_or_says_why_not():
    blocks = code_blocks(README)
    for b in blocks:
        assert b.lang in (*RUNNABLE, "text") or b.skip, f"line {b.line}: a {b.lang!r} block"
    skipped = [b for b in blocks if b.skip]
    assert len(skipped) == 3 and all("(needs " in b.skip for b in skipped)
    assert [b.lang for b in blocks if b.lang in RUNNABLE and not b.skip] == ["bash", "python"]


@pytest.mark.slow
def test_cluster_readme_blocks_run_in_order(tmp_path):
    script = tmp_path / "cluster_readme.sh"
    script.write_text(shell_script(README))
    state = tmp_path / "state.json"  # never the user's own recorded cluster
    drop = {"RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(
        SHARDEMB_CLUSTER_STATE=str(state),
        PYTHON=sys.executable,  # the interpreter local_cluster.sh and `python` run
        PATH=os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""),
        TF_CPP_MIN_LOG_LEVEL="3",
    )
    try:
        done = subprocess.run(
            ["bash", str(script)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=420,
            check=False,
        )
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"cluster/README.md's blocks did not finish in 420 s:\n{err.stderr}")
    finally:
        if state.exists():  # a block failed between `up` and `down`
            cluster.down(state)
    assert done.returncode == 0, done.stderr[-4000:]
    out = done.stdout.splitlines()
    assert "2.0" in out  # the bash block's driver saw both nodes' CPUs
    assert "2 nodes hold the shards" in out and out[-1] == "2"  # the Python block's prints
    assert not state.exists()  # every cluster it started is down
