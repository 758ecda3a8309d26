"""`python -m shardemb.soak --faults`: shards and a writer SIGKILLed while one process pushes
and saves over its own path and another looks up and saves over its own. The table must
equal the replay of what the typed errors say was kept, and no zeros are ever served."""

import subprocess
import sys

import numpy as np

import shardemb.checkpoint as ckpt
from shardemb import soak


def test_fault_soak_short(ray_session, table_name, tmp_path):
    address = ray_session.get_runtime_context().gcs_address
    cmd = [sys.executable, "-m", "shardemb.soak", "--faults", "--address", address]
    cmd += ["--name", table_name, "--ops", "40", "--processes", "2", "--shard-kills", "2"]
    cmd += ["--checkpoint-dir", str(tmp_path)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    report = out.stdout[-3000:] + out.stderr[-3000:]
    assert out.returncode == 0, report
    for line in (
        "the writer SIGKILLed once",
        "untyped errors: none",
        "all-zero rows served: 0",
        "table equals the replayed reference: True",
    ):
        assert line in out.stdout, report
    # The killed writer (index 0) may have died in a save over its own path: the last
    # checkpoint it committed there is whole. Every other save cleaned up beside it.
    assert ckpt.read_manifest(str(tmp_path / "writer-0"))["name"] == table_name
    leftovers = {p.name for p in tmp_path.iterdir() if p.name.startswith(".")}
    assert leftovers <= {".writer-0.shardemb-new"}, leftovers


def test_recovery_errors_name_each_shard_and_its_step():
    cases = {
        "Shard(s) [1] of table 't' died and were restarted from the checkpoint '/c' "
        "(step 17). Pushes applied to them since that checkpoint were lost": [(1, 17)],
        "Shard(s) [0, 2] of table 't' died and were restarted from the checkpoint '/c' "
        "(shard 0 at step 3, shard 2 at step 5). Pushes ...": [(0, 3), (2, 5)],
        "Shard(s) [2] of table 't' died and could not be reloaded from the checkpoint": [(2, None)],
        "Shard 1 of table 't' was restarted and has not loaded its rows": [(1, None)],
    }
    for text, named in cases.items():
        assert soak._named(RuntimeError(text)) == named


def test_replay_keeps_what_each_shard_kept(tmp_path, monkeypatch):
    """Push 1 everywhere; shard 1 goes back to step 1 after push 2; push 3 is refused by
    shard 0; the writer dies in push 4, which only shard 2 got."""
    monkeypatch.setattr(soak, "VOCAB", 6)
    args = type("Args", (), {"checkpoint_dir": str(tmp_path), "name": "replay"})()
    log = soak._log(str(tmp_path / "writer-0.log"))
    everywhere = [0, 1, 2, 3, 4, 5]
    for event in (
        ("push", 1, everywhere),
        ("end", 1),
        ("push", 2, everywhere),
        ("reset", 1, 1),
        ("end", 2),
        ("push", 3, everywhere),
        ("refused", 3, 0),
        ("end", 3),
        ("push", 4, everywhere),
    ):
        log(*event)
    table, lost, partial = soak._replay(args, [("writer", 0)], {("writer", 0): [3, 3, 4]})
    assert lost == [(1, (1, [2]))] and partial == "mid-push: push 4 reached shards [2]"
    start = soak._replay(args, [], {})[0]
    # Rows of shard s are s, s + 3 (mod partition over 3 shards).
    np.testing.assert_allclose(table - start, [[2] * 16, [2] * 16, [4] * 16] * 2, atol=1e-5)
