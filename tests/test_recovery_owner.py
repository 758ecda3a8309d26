"""Recovery has one owner per shard: two processes using one table, a shard SIGKILLed.

The first process to notice starts the replacement (the shard actor's name is the lock);
the other attaches to it, never kills it, and never reloads an older checkpoint over a push
made since. A process that saved nothing finds the table's newest checkpoint through the
shards. Each process is a small server driven over its stdin (``Client``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import psutil
import pytest

from shardemb import EmbeddingStore

SERVER = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import ray
    import shardemb

    ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
    store = None
    for line in sys.stdin:
        cmd = json.loads(line)
        try:
            op, out = cmd["op"], None
            if op == "connect":
                store = shardemb.EmbeddingStore.connect(cmd["name"])
            elif op == "push":
                ids = np.asarray(cmd["ids"])
                store.apply_gradients(ids, np.full((ids.size, 2), -1.0, np.float32))
                store.flush()
            elif op == "lookup":
                out = store.lookup(cmd["ids"]).tolist()
            elif op == "save":
                store.save(cmd["path"])
            elif op == "pid":
                out = store.placement()[cmd["shard"]]["pid"]
            elif op == "leave":
                store, out = None, "left"
            print(json.dumps({"ok": out}), flush=True)
        except Exception as err:
            print(json.dumps({"error": type(err).__name__, "message": str(err)}), flush=True)
    """
)


class Client:
    """A process with its own handle to the table, answering one command at a time."""

    def __init__(self, address: str):
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVER, address],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )

    def send(self, op: str, **args) -> None:
        self.proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.proc.stdin.flush()

    def answer(self) -> dict:
        line = self.proc.stdout.readline()
        assert line, f"client exited with {self.proc.poll()}"
        return json.loads(line)

    def __call__(self, op: str, **args):
        """The result; raises AssertionError carrying the error's type and message."""
        self.send(op, **args)
        reply = self.answer()
        assert "ok" in reply, reply
        return reply["ok"]

    def fails(self, op: str, **args) -> dict:
        self.send(op, **args)
        reply = self.answer()
        assert "error" in reply, reply
        return reply

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def clients(ray_session):
    address = ray_session.get_runtime_context().gcs_address
    pair = [Client(address), Client(address)]
    yield pair
    for c in pair:
        c.close()


@pytest.fixture(params=[None, "hosted"], ids=["own-actors", "hosted"])
def table(clients, table_name, request):
    """A detached 3-shard SGD table (rows start at 0, each push adds 1) both clients use;
    its shards in actors of their own, or in a group's shared hosts (beside another
    table), where the host's actor name is the lock."""
    group = f"g-{table_name}" if request.param else None
    store = EmbeddingStore.create(
        table_name,
        30,
        2,
        num_shards=3,
        initializer="zeros",
        optimizer={"name": "sgd", "learning_rate": 1.0},
        detached=True,
        group=group,
    )
    # A neighbour in the same hosts: it dies with them and is never reloaded here.
    other = EmbeddingStore.create(f"{table_name}-n", 30, 2, num_shards=3, detached=True,
                                  group=group)  # fmt: skip
    for c in clients:
        c("connect", name=table_name)
    yield store
    for c in clients:
        c("leave")
    store.close()
    other.close()


def _kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    psutil.Process(pid).wait(timeout=30)


ALL = list(range(30))


def test_the_second_process_attaches_to_the_first_ones_replacement(clients, table, tmp_path):
    a, b = clients
    b("push", ids=ALL)
    b("save", path=str(tmp_path / "b"))  # the older checkpoint: every row 1
    a("push", ids=ALL)
    a("save", path=str(tmp_path / "a"))  # the newer: every row 2
    _kill(a("pid", shard=1))
    error = a.fails("lookup", ids=ALL)
    assert error["error"] == "ShardRestartedError", error
    assert f"{tmp_path / 'a'}" in error["message"] and "(step 2)" in error["message"]
    replacement = a("pid", shard=1)
    a("push", ids=ALL)  # every row 3, shard 1's on the replacement
    error = b.fails("lookup", ids=ALL)  # B notices once: it attaches, kills nothing
    assert error["error"] == "ShardRestartedError", error
    assert b("lookup", ids=ALL) == [[3.0, 3.0]] * 30  # A's push is not lost
    assert b("pid", shard=1) == replacement
    assert a("lookup", ids=ALL) == [[3.0, 3.0]] * 30  # no ShardRestartedError for A again
    b("push", ids=ALL)
    assert a("lookup", ids=ALL) == [[4.0, 4.0]] * 30 == b("lookup", ids=ALL)
    assert a("pid", shard=1) == replacement


def test_a_process_that_saved_nothing_recovers_from_the_tables_checkpoint(clients, table, tmp_path):
    a, b = clients
    a("push", ids=ALL)
    a("save", path=str(tmp_path / "a"))  # B saves nothing
    a("push", ids=ALL)  # every row 2; lost on shard 1 when it dies
    _kill(a("pid", shard=1))
    error = b.fails("lookup", ids=ALL)  # B notices first
    assert error["error"] == "ShardRestartedError", error
    assert str(tmp_path / "a") in error["message"]
    want = np.full((30, 2), 2.0)
    want[1::3] = 1.0
    assert np.array_equal(b("lookup", ids=ALL), want)
    error = a.fails("lookup", ids=ALL)
    assert error["error"] == "ShardRestartedError", error
    assert np.array_equal(a("lookup", ids=ALL), want)
    assert a("pid", shard=1) == b("pid", shard=1)


def test_two_processes_noticing_at_once_start_one_replacement(clients, table, tmp_path):
    a, b = clients
    a("push", ids=ALL)
    b("push", ids=ALL)
    b("save", path=str(tmp_path / "b"))  # every row 2
    old = a("pid", shard=2)
    _kill(old)
    a.send("push", ids=ALL)  # both at once: one wins the name, the other attaches
    b.send("push", ids=ALL)
    replies = [a.answer(), b.answer()]
    assert all(r.get("error") == "ShardRestartedError" for r in replies), replies
    assert a("pid", shard=2) == b("pid", shard=2) != old
    table_a, table_b = np.array(a("lookup", ids=ALL)), np.array(b("lookup", ids=ALL))
    assert np.array_equal(table_a, table_b)
    np.testing.assert_array_equal(table_a[2::3], 2.0)  # shard 2: the checkpoint's rows
    np.testing.assert_array_equal(np.delete(table_a, np.s_[2::3], axis=0), 4.0)
