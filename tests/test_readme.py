"""The README's Python blocks run as written, in order, as one script in a fresh process,
and a second time in the same folder (a user re-running the quick tour)."""

import os
import subprocess
import sys
from pathlib import Path

from readme_blocks import python_blocks

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run_in_order_twice(tmp_path):
    blocks = python_blocks(README)
    assert len(blocks) >= 3  # the store, the Keras layer, checkpoints
    script = tmp_path / "readme.py"
    script.write_text("\n".join(blocks))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    for attempt in (1, 2):
        done = subprocess.run(
            [sys.executable, str(script)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=420,
        )
        assert done.returncode == 0, f"run {attempt}: {done.stderr[-3000:]}"
    assert (tmp_path / "checkpoints" / "items" / "step-100" / "manifest.json").exists()
