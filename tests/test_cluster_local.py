"""A real two-node Ray cluster on this machine: up, use from another driver, down.

The cluster test checks the coexistence guarantee: a plain ``ray.init()`` running in another
process before ``up()`` still works after ``down()``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import psutil
import pytest

import shardemb.cli
from shardemb import cluster
from shardemb.cluster import commands
from shardemb.errors import ClusterConnectionError, InvalidConfigError
from shardemb.transport import auth

# A driver of its own: ray.init() in this test process would make it part of a cluster.
_DRIVER = r"""
import json, sys
import ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)

@ray.remote(num_cpus=0)
class Where:
    def node_id(self):
        return ray.get_runtime_context().get_node_id()

nodes = ray.nodes()
worker = [n["NodeID"] for n in nodes if "shardemb_node_1" in n["Resources"]]
head = [n["NodeID"] for n in nodes if "shardemb_node_0" in n["Resources"]]
actor = Where.options(resources={"shardemb_node_1": 0.001}).remote()
print(json.dumps({"num_nodes": len(nodes), "alive": [n["Alive"] for n in nodes],
                  "worker": worker, "head": head,
                  "actor_node": ray.get(actor.node_id.remote(), timeout=60)}))
"""

# An embedded ray.init() of its own; after "go" on stdin it must still be able to run a task.
_EMBEDDED = r"""
import sys
import ray
ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
print("ready", ray.get_runtime_context().gcs_address, flush=True)
sys.stdin.readline()

@ray.remote
def square(x):
    return x * x

print("result", ray.get(square.remote(7), timeout=60), flush=True)
"""


# A driver of the token-auth cluster through shardemb: the typed error, or the node count.
_AUTH_DRIVER = r"""
import sys
import ray
from shardemb.errors import ClusterConnectionError
from shardemb.transport.backends import ensure_ray
try:
    ensure_ray(sys.argv[1])
except ClusterConnectionError as err:
    print("ERROR", err)
else:
    print("NODES", len(ray.nodes()))
"""


def _clean_env(**extra: str) -> dict[str, str]:
    drop = {"RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(extra)
    return env


def _leftovers(info: cluster.ClusterInfo) -> list[str]:
    """Processes that still belong to ``info``'s cluster, found independently of the module."""
    mine = re.compile(rf"{re.escape(info.temp_dir)}(/|\s|$)|:{info.port}(\D|$)")
    left = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            line = " ".join(p.info["cmdline"] or [])
            if mine.search(line) or os.getsid(p.pid) in info.session_ids:
                if p.status() != psutil.STATUS_ZOMBIE and p.pid != os.getpid():
                    left.append(f"{p.pid} {line[:120]}")
        except (psutil.Error, OSError):
            continue
    return left


@pytest.fixture
def embedded_ray():
    """A plain ``ray.init()`` in another process, in a temp dir of its own (so it never joins
    some other ``ray start`` cluster on the machine). Always stopped and cleaned up."""
    temp = tempfile.mkdtemp(prefix="se-emb-", dir="/tmp")
    proc = subprocess.Popen(
        [sys.executable, "-c", _EMBEDDED],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=_clean_env(RAY_TMPDIR=temp),
    )
    try:
        yield proc
    finally:
        proc.stdin.close()  # its readline() returns: it runs its task and exits
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        shutil.rmtree(temp, ignore_errors=True)


def test_two_node_cluster_up_use_down_spares_other_ray(tmp_path, embedded_ray):
    info = cluster.up(num_workers=1, state_file=tmp_path / "state.json", timeout=90)
    try:
        assert info.num_nodes == 2
        assert info.node_resources == ("shardemb_node_0", "shardemb_node_1")
        assert (tmp_path / "state.json").exists()
        assert embedded_ray.stdout.readline().startswith("ready")

        out = subprocess.run(
            [sys.executable, "-c", _DRIVER, info.address],
            capture_output=True,
            text=True,
            env=_clean_env(RAY_AUTH_MODE=info.auth_mode),
            timeout=120,
            check=False,
        )
        assert out.returncode == 0, out.stderr[-3000:]
        seen = json.loads(out.stdout.strip().splitlines()[-1])
        assert seen["num_nodes"] == 2 and seen["alive"] == [True, True]
        assert len(seen["worker"]) == 1 and len(seen["head"]) == 1
        assert seen["worker"] != seen["head"]
        assert seen["actor_node"] == seen["worker"][0]

        st = cluster.status(info)
        assert st["alive_nodes"] == 2 and st["expected_nodes"] == 2
        assert st["total_resources"]["CPU"] == 2
        assert "shardemb_node_1" in cluster.format_status(st)
    finally:
        stopped = cluster.down(info)
    assert stopped > 0
    assert _leftovers(info) == []
    assert not (tmp_path / "state.json").exists()
    assert not os.path.exists(info.temp_dir)  # up() chose it, so down() removes it

    # The other Ray instance is untouched and still schedules work.
    assert embedded_ray.poll() is None, "down() killed an unrelated Ray instance"
    embedded_ray.stdin.write("go\n")
    embedded_ray.stdin.flush()
    assert embedded_ray.stdout.readline().split() == ["result", "49"]


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"num_workers": -1}, "num_workers"),
        ({"num_workers": 1.5}, "num_workers"),
        ({"num_workers": True}, "num_workers"),
        ({"cpus_per_node": 0}, "cpus_per_node"),
        ({"cpus_per_node": -2}, "cpus_per_node"),
        ({"gpus_per_node": -1}, "gpus_per_node"),
        ({"memory_per_node": 0}, "memory_per_node"),
        ({"object_store_memory": 1024}, "object_store_memory"),
        ({"port": 70000}, "port"),
        ({"timeout": 0}, "timeout"),
        ({"auth_mode": "none"}, "auth_mode"),
        ({"temp_dir": "/tmp/" + "x" * 80}, "temp_dir"),
        ({"temp_dir": "/tmp/ray"}, "temp_dir"),
        ({"temp_dir": "/tmp"}, "temp_dir"),
    ],
)
def test_up_rejects_bad_arguments(kwargs, name, tmp_path):
    kwargs.setdefault("state_file", tmp_path / "state.json")
    with pytest.raises(InvalidConfigError, match=f"`{name}`.*Received: {name}="):
        cluster.up(**kwargs)
    assert not (tmp_path / "state.json").exists()


def test_cli_parses_up_flags():
    parser = argparse.ArgumentParser(prog="shardemb")
    shardemb.cli.add_cluster_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        [
            "cluster",
            "up",
            "--workers",
            "3",
            "--cpus-per-node",
            "2",
            "--memory-per-node",
            "4GiB",
            "--gpus-per-node",
            "1",
            "--port",
            "6390",
            "--state-file",
            "/tmp/s.json",
        ]
    )
    assert (args.workers, args.cpus_per_node, args.gpus_per_node) == (3, 2, 1)
    assert (args.memory_per_node, args.port, args.state_file) == (4 * 2**30, 6390, "/tmp/s.json")
    assert args.func is commands._cmd_up
    assert parser.parse_args(["cluster", "down"]).func is commands._cmd_down
    assert parser.parse_args(["cluster", "status", "--json"]).json is True
    with pytest.raises(SystemExit):
        parser.parse_args(["cluster", "up", "--memory-per-node", "lots"])


def test_status_and_down_of_missing_state_file_say_so(tmp_path, capsys):
    missing = tmp_path / "nope.json"
    for call in (cluster.status, cluster.down):
        with pytest.raises(ClusterConnectionError, match="No local cluster is recorded"):
            call(missing)
    assert shardemb.cli.cluster_main(["status", "--state-file", str(missing)]) == 1
    err = capsys.readouterr().err
    assert "shardemb cluster status: error: No local cluster is recorded" in err
    assert str(missing) in err


def test_local_cluster_context_manager_downs_on_error(monkeypatch):
    calls = []
    fake = cluster.ClusterInfo(
        address="192.0.2.9:1",
        num_nodes=2,
        state_file="s.json",
        temp_dir="/tmp/t",
        port=1,
        node_resources=("shardemb_node_0", "shardemb_node_1"),
        session_ids=(1, 2),
        cpus_per_node=1,
        gpus_per_node=0,
        memory_per_node=2**30,
        object_store_memory=2**28,
    )
    monkeypatch.setattr(cluster, "up", lambda n, **kw: calls.append(("up", n, kw)) or fake)
    monkeypatch.setattr(cluster, "down", lambda info: calls.append(("down", info)))
    with pytest.raises(RuntimeError, match="boom"), cluster.local_cluster(num_workers=2) as info:
        assert info is fake
        raise RuntimeError("boom")
    assert [c[0] for c in calls] == ["up", "down"]
    assert calls[0][2]["state_file"].endswith("state.json")  # never the user's own file
    assert not os.path.exists(os.path.dirname(calls[0][2]["state_file"]))


def test_status_of_a_dead_cluster_says_so_and_down_clears_it(tmp_path):
    dead = tmp_path / "dead.json"
    dead.write_text(
        json.dumps(
            {
                "version": 1,
                "address": "192.0.2.9:1",
                "port": 1,
                "nodes": [],
                "temp_dir": str(tmp_path / "gone"),
                "auth_mode": "token",
            }
        )
    )
    with pytest.raises(ClusterConnectionError, match="is not running"):
        cluster.status(dead)
    assert cluster.down(dead) == 0
    assert not dead.exists()


@pytest.fixture(scope="module")
def token_head(tmp_path_factory):
    """A one-node cluster with Ray's token auth on (``up``'s default), for this module."""
    info = cluster.up(
        num_workers=0, auth_mode="token", state_file=tmp_path_factory.mktemp("auth") / "s.json"
    )
    try:
        yield info
    finally:
        cluster.down(info)


def _drive(address: str, env: dict[str, str]) -> tuple[str, str, float]:
    start = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-c", _AUTH_DRIVER, address],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip().splitlines()[-1], out.stderr, time.monotonic() - start


@pytest.mark.parametrize(
    ("extra", "why"),
    [
        ({}, "this process sent no token: RAY_AUTH_MODE is unset"),
        ({"RAY_AUTH_MODE": "disabled"}, "RAY_AUTH_MODE is 'disabled'"),
        (
            {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "not-the-token"},
            "it refused the token from RAY_AUTH_TOKEN",
        ),
    ],
)
def test_token_cluster_refuses_a_driver_without_its_token_at_once(token_head, extra, why):
    line, stderr, took = _drive(token_head.address, _clean_env(**extra))
    assert line.startswith("ERROR The Ray cluster requires token authentication"), line
    assert why in line
    for hint in ("RAY_AUTH_MODE=token", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "auth_token"):
        assert hint in line
    assert f"Received: address={token_head.address!r}" in line
    # Ray alone retries for 20 s, logging InvalidAuthToken every second.
    assert took < 15 and "InvalidAuthToken" not in stderr, (took, stderr[-2000:])


def test_token_cluster_lets_a_driver_with_its_token_in(token_head):
    line, _, _ = _drive(token_head.address, _clean_env(**token_head.env))
    assert line == "NODES 1"


def test_auth_refusal_is_found_in_the_causes_of_rays_bare_error(monkeypatch):
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    try:
        try:
            raise RuntimeError("GCS: Unauthenticated: RPC error: InvalidAuthToken: missing")
        except RuntimeError as cause:
            raise ConnectionError("Failed to connect to Ray cluster at 192.0.2.2:1") from cause
    except ConnectionError as err:
        assert auth.refused_auth(err)
    assert not auth.refused_auth(ConnectionError("Failed to connect to Ray cluster"))
    assert auth.local_token() == (None, None)  # nothing is sent without RAY_AUTH_MODE=token
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", " abc\n")
    assert auth.local_token() == ("abc", "RAY_AUTH_TOKEN")


# A script whose process already holds a finalizer (a temporary folder) before Ray is
# imported: finalizers then run after Ray's own exit hook.
_EXITING = r"""
import tempfile, time
scratch = tempfile.TemporaryDirectory()
import numpy as np, shardemb
store = shardemb.EmbeddingStore.create("exiting", 100, 4, num_shards=2)
store.lookup(np.arange(4))
print("last", time.time(), flush=True)
"""


def test_embedded_runtime_ends_with_the_script_and_starts_no_other():
    out = subprocess.run(
        [sys.executable, "-c", _EXITING],
        capture_output=True,
        text=True,
        env=_clean_env(),
        timeout=180,
        check=False,
    )
    ended = time.time()
    assert out.returncode == 0, out.stderr[-3000:]
    # No kill of the table after Ray's shutdown at exit: that started a second runtime.
    assert "Started a local Ray instance" not in out.stderr, out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    assert ended - float(out.stdout.split()[-1]) < 30
