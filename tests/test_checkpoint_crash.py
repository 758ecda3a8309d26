"""kill -9 during a save, at every stage: the previous checkpoint restores bit for bit, the
interrupted one is never listed, and restoring it reports what is wrong.

Each stage runs in its own subprocess (started together: they take a second each) whose
in-process shards make the saving process the one that dies.
"""

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import shardemb.checkpoint as ckpt
from shardemb import CheckpointManager, EmbeddingStore
from shardemb.errors import CheckpointCorruptError, CheckpointNotFoundError

#: A trained Adam table in a process of its own, whose shards die with it; ``dump`` keeps
#: what a checkpoint must restore.
PRELUDE = textwrap.dedent(
    """
    import os, sys
    import numpy as np
    import shardemb.checkpoint as ckpt
    from shardemb import CheckpointManager, EmbeddingStore

    root, stage = sys.argv[1], sys.argv[2]
    ckpt.writer.WRITE_BLOCK_BYTES = 256  # blocks of 2 chunks: "mid_chunks" is mid-shard
    store = EmbeddingStore.create("crash", 101, 8, num_shards=2, optimizer="adam", seed=4,
                                  backend="inprocess")
    rng = np.random.default_rng(0)

    def push(n):
        for _ in range(n):
            store.apply_gradients(rng.integers(0, 101, 30),
                                  rng.standard_normal((30, 8)).astype(np.float32))

    def dump(name):
        arrays = {"weights": store.to_numpy()}
        for slot in ("m", "v"):
            arrays[slot] = store._gather_table("read_slot", slot)
        np.savez(os.path.join(root, name), **arrays)
    """
)

SCRIPT = PRELUDE + textwrap.dedent(
    """
    mgr = CheckpointManager(os.path.join(root, "run"), keep=1, chunk_rows=4)
    push(3)
    mgr.save(store, 1)
    dump("expected-1.npz")
    push(2)
    dump("expected-2.npz")
    os.environ[ckpt.format.KILL_ENV] = stage
    mgr.save(store, 2)
    print("survived", flush=True)
    """
)

#: Stage -> committed steps after the crash.
STAGES = {
    "start": [1],
    "before_data": [1],
    "mid_chunks": [1],
    "before_manifest": [1],
    "manifest_tmp": [1],
    "after_manifest": [1, 2],
    "before_prune": [1, 2],
    "mid_prune": [2],
}


@pytest.fixture(scope="module")
def crashed(tmp_path_factory):
    """Stage -> folder of a save killed at that stage."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop(ckpt.format.KILL_ENV, None)
    runs = {}
    for stage in STAGES:
        root = tmp_path_factory.mktemp(stage)
        argv = [sys.executable, "-c", SCRIPT, str(root), stage]
        proc = subprocess.Popen(
            argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        runs[stage] = (root, proc)
    out = {}
    for stage, (root, proc) in runs.items():
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == -signal.SIGKILL, (stage, proc.returncode, stdout, stderr)
        assert "survived" not in stdout
        out[stage] = root
    return out


def expected(root, step) -> dict:
    with np.load(root / f"expected-{step}.npz") as data:
        return {k: data[k] for k in data.files}


def restored_state(path, name, step=None) -> dict:
    step = (3 if path.endswith("step-1") else 5) if step is None else step
    with EmbeddingStore.restore(path, name=name, backend="inprocess") as store:
        out = {"weights": store.to_numpy()}
        for slot in ("m", "v"):
            out[slot] = store._gather_table("read_slot", slot)
        assert {i["step"] for i in store.info()} == {step}
    return out


@pytest.mark.parametrize("stage", list(STAGES))
def test_kill_during_save_leaves_the_previous_checkpoint(stage, crashed):
    root = crashed[stage]
    mgr = CheckpointManager(str(root / "run"), keep=1)
    assert mgr.steps() == STAGES[stage]
    latest = mgr.latest()
    assert latest == mgr.path(STAGES[stage][-1])
    want = expected(root, STAGES[stage][-1])
    got = restored_state(latest, f"crash-{stage}")
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)  # bit for bit
    if 2 not in STAGES[stage]:
        # The interrupted save is reported, never loaded.
        error = CheckpointNotFoundError if stage == "start" else CheckpointCorruptError
        with pytest.raises(error, match="does not exist|is incomplete: it has no manifest"):
            EmbeddingStore.restore(mgr.path(2), name=f"crash-{stage}-2", backend="inprocess")
    if stage == "mid_prune":
        # Step 1 lost its manifest first: gone as a checkpoint, even if data is left.
        with pytest.raises(CheckpointCorruptError, match="is incomplete"):
            ckpt.read_manifest(mgr.path(1))


def test_mid_chunks_crash_left_a_partial_shard(crashed):
    shard = crashed["mid_chunks"] / "run" / "step-2" / "shards" / "1" / "weights" / "c"
    assert 0 < len(os.listdir(shard)) < 13  # 50 rows in chunks of 4: 13 when complete
    assert len(os.listdir(shard.parent.parent.parent / "0" / "weights" / "c")) == 13


def test_next_save_after_a_crash_commits_and_cleans_up(crashed, tmp_path):
    root = crashed["mid_chunks"]
    mgr = CheckpointManager(str(root / "run"), keep=1)
    path = mgr.latest()
    with EmbeddingStore.restore(path, name="crash-resume", backend="inprocess") as store:
        mgr.save(store, 3)
    assert mgr.steps() == [3] and sorted(os.listdir(root / "run")) == ["step-3"]


# -- saving over the previous checkpoint's own path -----------------------------------------
SAME_PATH = PRELUDE + textwrap.dedent(
    """
    if sys.argv[3] != "exchange":  # as on a system without an atomic exchange of folders
        ckpt.location._exchange = lambda a, b: False
    path = os.path.join(root, "c")
    push(3)
    store.save(path, chunk_rows=4)
    dump("expected-1.npz")
    push(2)
    dump("expected-2.npz")
    os.environ[ckpt.format.KILL_ENV] = stage
    store.save(path, chunk_rows=4)
    print("survived", flush=True)
    """
)

#: (stage, how the folders are swapped) -> the checkpoint at the path after the crash.
SAME_PATH_STAGES = {
    ("start", "exchange"): 1,
    ("before_data", "exchange"): 1,
    ("mid_chunks", "exchange"): 1,
    ("before_manifest", "exchange"): 1,
    ("manifest_tmp", "exchange"): 1,
    ("after_manifest", "exchange"): 1,
    ("after_replace", "exchange"): 2,
    ("after_manifest", "renames"): 1,
    ("after_replace", "renames"): 2,
}


@pytest.fixture(scope="module")
def crashed_same_path(tmp_path_factory):
    """(stage, swap) -> folder of a trainer killed there while saving over its own path."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop(ckpt.format.KILL_ENV, None)
    runs = {}
    for stage, swap in SAME_PATH_STAGES:
        root = tmp_path_factory.mktemp(f"same-{stage}-{swap}")
        argv = [sys.executable, "-c", SAME_PATH, str(root), stage, swap]
        proc = subprocess.Popen(
            argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        runs[stage, swap] = (root, proc)
    out = {}
    for key, (root, proc) in runs.items():
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == -signal.SIGKILL, (key, proc.returncode, stdout, stderr)
        out[key] = root
    return out


@pytest.mark.parametrize("key", list(SAME_PATH_STAGES), ids=lambda k: "-".join(k))
def test_trainer_killed_while_saving_over_its_own_path_keeps_a_checkpoint(key, crashed_same_path):
    """`store.save(p)` twice, the trainer SIGKILLed during the second: `p` holds the first
    checkpoint, or the second once it was swapped in; never nothing, never a mix."""
    root = crashed_same_path[key]
    path = str(root / "c")
    version = SAME_PATH_STAGES[key]
    want = expected(root, version)
    got = restored_state(path, f"same-{'-'.join(key)}", step=3 if version == 1 else 5)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)  # bit for bit
    # The next save to that path commits and leaves nothing beside it.
    name = f"same-next-{'-'.join(key)}"
    with EmbeddingStore.restore(path, name=name, backend="inprocess") as store:
        store.save(path)
    assert sorted(os.listdir(root)) == ["c", "expected-1.npz", "expected-2.npz"]
    assert ckpt.read_manifest(path)["name"] == name
