"""A test stuck on a dead subprocess fails with a message, and the run still ends with
pytest's summary line (the suite's backstop timeout, set in pyproject.toml)."""

import subprocess
import sys
import textwrap
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"

STUCK = textwrap.dedent(
    """
    import subprocess, sys

    def test_stuck_on_a_silent_child():
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
                                 stdout=subprocess.PIPE, text=True)
        try:
            child.stdout.readline()  # no timeout: would hang for two minutes
        finally:
            child.kill()

    def test_runs_afterwards():
        pass
    """
)


def test_a_stuck_test_fails_and_the_run_ends_with_its_summary(tmp_path):
    (tmp_path / "test_stuck.py").write_text(STUCK)
    cmd = [sys.executable, "-m", "pytest", "-c", str(PYPROJECT), "--rootdir", str(tmp_path)]
    cmd += ["-p", "no:cacheprovider", "--timeout", "3", str(tmp_path / "test_stuck.py")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=90, cwd=tmp_path)
    last = done.stdout.strip().splitlines()[-1]
    assert done.returncode == 1 and "1 failed, 1 passed" in last, done.stdout[-2000:]
    assert "Timeout" in done.stdout
