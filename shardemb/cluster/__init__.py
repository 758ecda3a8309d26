"""A real multi-node Ray cluster on one machine: ``up``, ``status``, ``down``.

Each node is its own ``ray start`` (its own raylet, object store and workers) and carries a
custom resource ``shardemb_node_<i>`` (head is 0), so a test or a benchmark can pin an actor
to a node. The cluster lives in its own temp dir and on explicitly chosen ports, so it
coexists with any other Ray instance on the machine (a plain ``ray.init()``, ``ray start``
clusters), and :func:`down` stops this cluster's processes only, never a plain ``ray stop``.
What :func:`up` started is recorded in a JSON state file that :func:`status` and
:func:`down` read back.

Example:
    >>> with local_cluster(num_workers=1) as info:  # doctest: +SKIP
    ...     print(info.num_nodes, info.address)
    2 192.0.2.2:41234
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from shardemb.errors import ClusterConnectionError, InvalidConfigError

__all__ = [
    "NODE_RESOURCE_PREFIX",
    "ClusterInfo",
    "default_state_file",
    "down",
    "format_status",
    "local_cluster",
    "main",
    "register_cli",
    "status",
    "up",
]

NODE_RESOURCE_PREFIX = "shardemb_node_"
"""Node ``i`` of a local cluster carries ``{NODE_RESOURCE_PREFIX}{i}: 1``; the head is 0."""

_STATE_VERSION = 1
_WORKER_PORTS = (20000, 32768)  # below Linux's ephemeral range, away from Ray's 10002-19999
_WORKER_PORTS_PER_NODE = 256
_MAX_SOCKET_PATH = 107  # AF_UNIX sun_path limit on Linux, minus the NUL
# Ray puts "session_<date>_<time>_<us>_<pid>/sockets/plasma_store.<n>" under the temp dir.
_SOCKET_SUFFIX_LEN = len("/session_2026-01-01_00-00-00_000000_4194304/sockets/plasma_store.99")
_GRACE_S = 5.0  # SIGTERM -> SIGKILL, per bucket
# `ray start --head` turns token auth on by itself when a token exists, `ray start --address`
# does not (its workers could not join): every node gets RAY_AUTH_MODE explicitly.
_AUTH_MODES = ("token", "disabled")


@dataclass(frozen=True, slots=True)
class ClusterInfo:
    """A running local cluster, as :func:`up` started it (and as its state file records).

    Example:
        >>> info = up(num_workers=1)  # doctest: +SKIP
        >>> env = {**os.environ, **info.env}  # doctest: +SKIP
        >>> subprocess.run([sys.executable, "train.py"], env=env)  # doctest: +SKIP
    """

    address: str
    """GCS address ``"<node ip>:<port>"``: give it to ``ray.init(address=...)`` or ``--address``."""
    num_nodes: int
    """Head plus workers."""
    state_file: str
    """JSON file recording this cluster; :func:`status` and :func:`down` read it."""
    temp_dir: str
    """Ray's temp dir for this cluster only (sessions, sockets, logs)."""
    port: int
    """GCS port (the port of :attr:`address`)."""
    node_resources: tuple[str, ...]
    """Custom resource of each node, head first: ``("shardemb_node_0", "shardemb_node_1")``."""
    session_ids: tuple[int, ...]
    """Process session of each node's ``ray start``; :func:`down` stops those sessions."""
    cpus_per_node: int
    """``--num-cpus`` of every node."""
    gpus_per_node: int
    """``--num-gpus`` of every node."""
    memory_per_node: int
    """``--memory`` (bytes) of every node."""
    object_store_memory: int
    """``--object-store-memory`` (bytes) of every node."""
    auth_mode: str = "token"
    """``RAY_AUTH_MODE`` of the cluster; drivers need the same (see :attr:`env`)."""

    @property
    def env(self) -> dict[str, str]:
        """Environment for a driver of this cluster: ``RAY_ADDRESS`` and ``RAY_AUTH_MODE``.

        Ray only turns token auth on by itself for ``ray.init()`` without an address, so a
        driver calling ``ray.init(address=...)`` must have ``RAY_AUTH_MODE=token`` set.

        Example:
            >>> sorted(info.env)  # doctest: +SKIP
            ['RAY_ADDRESS', 'RAY_AUTH_MODE']
        """
        return {"RAY_ADDRESS": self.address, "RAY_AUTH_MODE": self.auth_mode}


def default_state_file() -> Path:
    """Where :func:`up` records the cluster unless told otherwise (one per user).

    ``$SHARDEMB_CLUSTER_STATE`` if set, else ``$XDG_STATE_HOME/shardemb/local_cluster.json``
    (``~/.local/state/shardemb/local_cluster.json``).

    Example:
        >>> default_state_file().name
        'local_cluster.json'
    """
    if os.environ.get("SHARDEMB_CLUSTER_STATE"):
        return Path(os.environ["SHARDEMB_CLUSTER_STATE"])
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(Path.home(), ".local", "state")
    return Path(base) / "shardemb" / "local_cluster.json"


# ----------------------------------------------------------------------------------- up


def up(
    num_workers: int = 2,
    *,
    cpus_per_node: int = 1,
    memory_per_node: int | None = None,
    gpus_per_node: int = 0,
    port: int | None = None,
    object_store_memory: int | None = None,
    temp_dir: str | os.PathLike[str] | None = None,
    state_file: str | os.PathLike[str] | None = None,
    auth_mode: str | None = None,
    timeout: float = 60.0,
) -> ClusterInfo:
    """Start a head node and ``num_workers`` worker nodes on this machine, wait until all are alive.

    ``memory_per_node`` and ``object_store_memory`` default to an even split, over the nodes,
    of what Ray would give a single node (70% and 30% of available memory), so the nodes do
    not promise the scheduler the same RAM several times. ``auth_mode`` (default
    ``$RAY_AUTH_MODE``, else ``"token"``, with a token generated in ``~/.ray/auth_token`` if
    there is none) applies to every node; ``"disabled"`` lets drivers connect without setting
    ``RAY_AUTH_MODE``, but then anyone who can reach this machine can run code on it. Anything
    half-started is stopped before the error is raised.

    Raises:
        InvalidConfigError: an argument is out of range, or a cluster is already recorded
            (and alive) in ``state_file``.
        ClusterConnectionError: ``port`` is taken, or a node did not start or join in time.

    Example:
        >>> info = up(num_workers=1, cpus_per_node=1)  # doctest: +SKIP
        >>> info.num_nodes, info.node_resources  # doctest: +SKIP
        (2, ('shardemb_node_0', 'shardemb_node_1'))
        >>> down(info)  # doctest: +SKIP
    """
    _check_int("num_workers", num_workers, minimum=0)
    _check_int("cpus_per_node", cpus_per_node, minimum=1)
    _check_int("gpus_per_node", gpus_per_node, minimum=0)
    _check_int("memory_per_node", memory_per_node, minimum=1, optional=True)
    _check_int("object_store_memory", object_store_memory, minimum=75 * 2**20, optional=True)
    _check_int("port", port, minimum=1, maximum=65535, optional=True)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        raise InvalidConfigError(
            f"`timeout` must be a positive number of seconds. Received: timeout={timeout!r}"
        )
    if auth_mode is None:
        auth_mode = os.environ.get("RAY_AUTH_MODE") or "token"
    if auth_mode not in _AUTH_MODES:
        raise InvalidConfigError(
            f"`auth_mode` must be one of {_AUTH_MODES} or None. Received: auth_mode={auth_mode!r}"
        )
    state_path = Path(state_file) if state_file is not None else default_state_file()
    _refuse_live_cluster(state_path)

    num_nodes = num_workers + 1
    available = psutil.virtual_memory().available
    if memory_per_node is None:
        memory_per_node = max(2**28, int(0.7 * available / num_nodes))
    if object_store_memory is None:
        object_store_memory = max(80 * 2**20, int(0.3 * available / num_nodes))
    if port is None:
        port = _free_port()
    elif not _port_is_free(port):
        raise ClusterConnectionError(
            f"`port` is already in use on this machine; pass another port or omit it to pick a "
            f"free one. Received: port={port}"
        )
    owns_temp_dir = temp_dir is None
    temp = Path(temp_dir) if temp_dir is not None else _default_temp_root() / f"c{port}"
    temp = temp.expanduser().absolute()
    if len(str(temp)) + _SOCKET_SUFFIX_LEN > _MAX_SOCKET_PATH:
        raise InvalidConfigError(
            f"`temp_dir` is too long for Ray's unix sockets (at most "
            f"{_MAX_SOCKET_PATH - _SOCKET_SUFFIX_LEN} characters). "
            f"Received: temp_dir={str(temp)!r} ({len(str(temp))} characters)"
        )
    shared = Path(tempfile.gettempdir(), "ray").absolute()
    if shared == temp or temp in shared.parents:
        raise InvalidConfigError(
            f"`temp_dir` must not hold the default Ray temp dir {str(shared)!r}: the cluster "
            f"would share it with every plain `ray.init()`, and `down` would stop those too. "
            f"Received: temp_dir={str(temp)!r}"
        )
    temp.mkdir(parents=True, exist_ok=True)

    worker_port_blocks = _worker_port_blocks(num_nodes)
    state: dict = {
        "version": _STATE_VERSION,
        "address": None,  # known once the head is up
        "port": port,
        "temp_dir": str(temp),
        "owns_temp_dir": owns_temp_dir,
        "started_at": time.time(),
        "cpus_per_node": cpus_per_node,
        "gpus_per_node": gpus_per_node,
        "memory_per_node": memory_per_node,
        "object_store_memory": object_store_memory,
        "auth_mode": auth_mode,
        "nodes": [],
        "ready": False,
    }
    deadline = time.monotonic() + timeout
    if auth_mode == "token":
        _ensure_token()
    try:
        for index in range(num_nodes):
            node = _start_node(index, temp, worker_port_blocks[index], state, deadline)
            state["nodes"].append(node)
            if index == 0:
                state["address"] = _head_address(temp, port)
            _write_state(state_path, state)  # written early so `down` can clean up a failed up
        _wait_for_nodes(state["address"], num_nodes, deadline, state["auth_mode"])
    except BaseException:
        _stop_cluster(state, remove_temp_dir=False)  # keep the logs for the error message
        with contextlib.suppress(FileNotFoundError):
            state_path.unlink()
        raise
    state["ready"] = True
    _write_state(state_path, state)
    return _info_from_state(state, state_path)


def _start_node(
    index: int, temp: Path, worker_ports: tuple[int, int], state: dict, deadline: float
) -> dict:
    """``ray start`` one node in a session of its own; returns what the state file records."""
    ports = {
        "dashboard_agent_listen": _free_port(),
        "min_worker": worker_ports[0],
        "max_worker": worker_ports[1],
    }
    args = [
        *_ray_command(),
        "start",
        f"--num-cpus={state['cpus_per_node']}",
        f"--num-gpus={state['gpus_per_node']}",
        f"--memory={state['memory_per_node']}",
        f"--object-store-memory={state['object_store_memory']}",
        f"--resources={json.dumps({f'{NODE_RESOURCE_PREFIX}{index}': 1})}",
        f"--temp-dir={temp}",
        # Ray's fixed defaults (52365, 10002-19999) would collide with any other Ray instance.
        f"--dashboard-agent-listen-port={ports['dashboard_agent_listen']}",
        f"--min-worker-port={ports['min_worker']}",
        f"--max-worker-port={ports['max_worker']}",
        "--disable-usage-stats",
        "--log-style=record",
        "--log-color=false",
    ]
    if index == 0:
        ports["ray_client_server"] = _free_port()
        ports["dashboard"] = _free_port()
        args += [
            "--head",
            f"--port={state['port']}",
            "--include-dashboard=false",
            # Even without the dashboard UI Ray binds these (10001, 8265 by default).
            f"--ray-client-server-port={ports['ray_client_server']}",
            f"--dashboard-port={ports['dashboard']}",
        ]
    else:
        # All nodes share one session dir here; a second log monitor would echo every line twice.
        args += [f"--address={state['address']}", "--include-log-monitor=false"]
    log_path = temp / f"ray_start_node{index}.log"
    with open(log_path, "wb") as log:
        # A new session per node: its daemons keep the session id, which `down` looks for.
        proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=_ray_env(state["auth_mode"]),
            start_new_session=True,
        )
        node = {
            "index": index,
            "resource": f"{NODE_RESOURCE_PREFIX}{index}",
            "session_id": proc.pid,
            "ports": ports,
        }
        try:
            rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            state["nodes"].append(node)  # so the caller's cleanup finds its session
            raise ClusterConnectionError(
                f"`ray start` of node {index} did not finish within the timeout; "
                f"raise `timeout`. Log ({log_path}):\n{_tail(log_path)}"
            ) from None
    if rc != 0:
        state["nodes"].append(node)
        raise ClusterConnectionError(
            f"`ray start` of node {index} failed with exit code {rc}. Log ({log_path}):\n"
            f"{_tail(log_path)}"
        )
    return node


def _head_address(temp: Path, port: int) -> str:
    """The GCS address the head advertises (Ray binds the machine's IP, never loopback)."""
    try:
        address = (temp / "ray_current_cluster").read_text().strip()
    except OSError:
        address = ""
    if not address.endswith(f":{port}"):
        raise ClusterConnectionError(
            f"The head node started but did not record its address in {temp}; "
            f"expected '<ip>:{port}', found {address!r}."
        )
    return address


_PROBE = r"""
import json, sys, time
import ray
address, want, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
ray.init(address=address, logging_level="ERROR", log_to_driver=False)
deadline = time.monotonic() + timeout
while True:
    nodes = ray.nodes()
    if sum(n["Alive"] for n in nodes) >= want or time.monotonic() > deadline:
        break
    time.sleep(0.2)
print(json.dumps([{"node_id": n["NodeID"], "alive": bool(n["Alive"]),
                   "address": f"{n['NodeManagerAddress']}:{n['NodeManagerPort']}",
                   "resources": n.get("Resources", {})} for n in nodes]))
"""


def _probe_nodes(address: str, want: int, timeout: float, auth_mode: str | None) -> list[dict]:
    """``ray.nodes()`` from a throwaway driver process, so this process never joins a cluster."""
    env = _ray_env(auth_mode)
    try:
        out = subprocess.run(
            [sys.executable, "-c", _PROBE, address, str(want), str(max(0.0, timeout))],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout + 60.0,
            check=False,
        )
    except subprocess.TimeoutExpired as err:
        raise ClusterConnectionError(
            f"Could not reach the Ray cluster at {address}: the probe timed out."
        ) from err
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or not lines:
        raise ClusterConnectionError(
            f"Could not reach the Ray cluster at {address} (probe exit code {out.returncode}):\n"
            + "\n".join(out.stderr.strip().splitlines()[-15:])
        )
    return json.loads(lines[-1])


def _wait_for_nodes(address: str, num_nodes: int, deadline: float, auth_mode: str) -> None:
    nodes = _probe_nodes(address, num_nodes, deadline - time.monotonic(), auth_mode)
    alive = [n for n in nodes if n["alive"]]
    if len(alive) < num_nodes:
        raise ClusterConnectionError(
            f"Only {len(alive)} of {num_nodes} nodes of the cluster at {address} are alive "
            f"after the timeout; raise `timeout` or look at the logs under the temp dir."
        )


# --------------------------------------------------------------------------------- down


def down(state: ClusterInfo | str | os.PathLike[str] | None = None) -> int:
    """Stop the cluster recorded in ``state`` (a :class:`ClusterInfo` or a state file path).

    Only that cluster's processes are stopped: Ray processes in the sessions of its
    ``ray start`` commands or whose command line names its temp dir or GCS port, and their
    children. Raylets first, then the agents, then the GCS (as ``ray stop`` orders them);
    SIGTERM, then SIGKILL after a grace period. Other Ray instances keep running. The state
    file is removed, and the temp dir too when :func:`up` chose it.

    Returns:
        How many processes were stopped.

    Raises:
        ClusterConnectionError: no cluster is recorded, or a process would not die.

    Example:
        >>> info = up(num_workers=1)  # doctest: +SKIP
        >>> down(info) > 0  # doctest: +SKIP
        True
    """
    state_path, recorded = _load_state(state)
    stopped = _stop_cluster(recorded, remove_temp_dir=recorded.get("owns_temp_dir", False))
    with contextlib.suppress(FileNotFoundError):
        state_path.unlink()
    return stopped


def _stop_cluster(state: dict, *, remove_temp_dir: bool) -> int:
    stopped: set[int] = set()
    for _ in range(5):  # a raylet may fork a worker while we look; look again until none
        procs = _cluster_processes(state)
        if not procs:
            break
        _terminate_in_buckets(procs)
        stopped.update(p.pid for p in procs)
    else:
        left = _cluster_processes(state)
        if left:
            raise ClusterConnectionError(
                f"Could not stop the cluster in {state['temp_dir']}: processes "
                f"{sorted(p.pid for p in left)} are still alive."
            )
    if remove_temp_dir:
        shutil.rmtree(state["temp_dir"], ignore_errors=True)
    return len(stopped)


def _terminate_in_buckets(procs: list[psutil.Process]) -> None:
    def bucket(p: psutil.Process) -> int:
        try:
            name = p.name()
        except psutil.Error:
            return 1
        return 0 if name == "raylet" else 2 if name == "gcs_server" else 1

    for b in (0, 1, 2):
        group = [p for p in procs if bucket(p) == b]
        for p in group:
            with contextlib.suppress(psutil.Error):
                p.send_signal(signal.SIGTERM)
        _, alive = psutil.wait_procs(group, timeout=_GRACE_S)
        for p in alive:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(alive, timeout=_GRACE_S)


def _cluster_processes(state: dict) -> list[psutil.Process]:
    """This cluster's live processes, found by temp dir, GCS port, session id and ancestry."""
    temp_dir = state["temp_dir"].rstrip(os.sep)
    port = str(state["port"])
    sessions = {n["session_id"] for n in state.get("nodes", [])}
    started_at = float(state.get("started_at", 0.0)) - 1.0
    me = os.getpid()
    found: dict[int, psutil.Process] = {}
    for p in psutil.process_iter(["pid", "cmdline", "create_time"]):
        try:
            if p.pid == me or p.info["create_time"] < started_at:
                continue  # older than the cluster (e.g. a reused session id): not ours
            cmdline = p.info["cmdline"] or []
            # Ray processes only: a `tail -f` of this cluster's logs is not part of it.
            if _is_ray_component(cmdline) and (
                _names_temp_dir(cmdline, temp_dir)
                or os.getsid(p.pid) in sessions
                or _names_gcs_port(cmdline, port)
            ):
                found[p.pid] = p
        except (psutil.Error, OSError):
            continue
    for p in list(found.values()):
        with contextlib.suppress(psutil.Error):
            for child in p.children(recursive=True):
                if child.pid != me:
                    found.setdefault(child.pid, child)
    return [p for p in found.values() if _alive(p)]


def _names_temp_dir(cmdline: list[str], temp_dir: str) -> bool:
    for arg in cmdline:
        value = arg.split("=", 1)[-1]
        if value == temp_dir or value.startswith(temp_dir + os.sep):
            return True
    return False


def _names_gcs_port(cmdline: list[str], port: str) -> bool:
    # The head's client server names the GCS only by address, not by temp dir.
    for arg in cmdline:
        key, _, value = arg.partition("=")
        if key in ("--address", "--gcs-address", "--gcs_server_port"):
            if value.rsplit(":", 1)[-1] == port:
                return True
    return False


def _is_ray_component(cmdline: list[str]) -> bool:
    """Ray's own daemons and workers, not a user's driver that merely talks to the cluster."""
    if not cmdline:
        return False
    if cmdline[0].startswith("ray::") or os.path.basename(cmdline[0]) in ("raylet", "gcs_server"):
        return True
    head = " ".join(cmdline[:3])
    return f"{os.sep}ray{os.sep}" in head or " -m ray." in head


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


# ------------------------------------------------------------------------------- status


def status(
    state: ClusterInfo | str | os.PathLike[str] | None = None, *, timeout: float = 30.0
) -> dict:
    """Ask the recorded cluster which nodes are alive and what resources they offer.

    Returns a plain dict: ``address``, ``state_file``, ``temp_dir``, ``auth_mode``,
    ``expected_nodes``,
    ``alive_nodes``, ``nodes`` (each with ``node_id``, ``alive``, ``address``, ``shardemb_node``
    and ``resources``) and ``total_resources`` over the alive nodes. :func:`format_status`
    prints it.

    Raises:
        ClusterConnectionError: no cluster is recorded, it is not running, or it cannot be
            reached.

    Example:
        >>> st = status()  # doctest: +SKIP
        >>> st["alive_nodes"], st["address"]  # doctest: +SKIP
        (3, '192.0.2.2:41234')
    """
    state_path, recorded = _load_state(state)
    if not _cluster_processes(recorded):  # a driver would retry a dead GCS for a long time
        raise ClusterConnectionError(
            f"The cluster recorded in {str(state_path)!r} ({recorded['address']}) is not "
            f"running: none of its processes is left. Run `down` to clear the record."
        )
    nodes = _probe_nodes(recorded["address"], 0, timeout, recorded.get("auth_mode"))
    total: dict[str, float] = {}
    for node in nodes:
        tags = [r for r in node["resources"] if r.startswith(NODE_RESOURCE_PREFIX)]
        node["shardemb_node"] = tags[0] if tags else None
        if node["alive"]:
            for name, amount in node["resources"].items():
                if not name.startswith("node:"):
                    total[name] = total.get(name, 0.0) + amount
    nodes.sort(key=lambda n: (not n["alive"], n["shardemb_node"] or "~"))
    return {
        "address": recorded["address"],
        "state_file": str(state_path),
        "temp_dir": recorded["temp_dir"],
        "auth_mode": recorded.get("auth_mode"),
        "expected_nodes": len(recorded.get("nodes", [])),
        "alive_nodes": sum(n["alive"] for n in nodes),
        "nodes": nodes,
        "total_resources": total,
    }


def format_status(st: dict) -> str:
    """A few printable lines for a :func:`status` dict.

    Example:
        >>> print(format_status({"address": "127.0.0.1:1", "alive_nodes": 0, "expected_nodes": 1,
        ...                      "state_file": "s.json", "nodes": [], "total_resources": {},
        ...                      "auth_mode": "token"}))
        Ray cluster at 127.0.0.1:1: 0/1 nodes alive (state file s.json)
        export RAY_ADDRESS=127.0.0.1:1 RAY_AUTH_MODE=token
    """
    lines = [
        f"Ray cluster at {st['address']}: {st['alive_nodes']}/{st['expected_nodes']} nodes alive "
        f"(state file {st['state_file']})"
    ]
    for n in st["nodes"]:
        res = n["resources"]
        lines.append(
            f"  {n['shardemb_node'] or '?':<16} {'alive' if n['alive'] else 'DEAD ':<5} "
            f"{n['node_id'][:12]} CPU={res.get('CPU', 0):g} GPU={res.get('GPU', 0):g} "
            f"memory={_fmt_bytes(res.get('memory', 0))} "
            f"object_store={_fmt_bytes(res.get('object_store_memory', 0))}"
        )
    if st["total_resources"]:
        tot = st["total_resources"]
        lines.append(
            f"  total: CPU={tot.get('CPU', 0):g} GPU={tot.get('GPU', 0):g} "
            f"memory={_fmt_bytes(tot.get('memory', 0))}"
        )
    lines.append(_export_line(st["address"], st.get("auth_mode")))
    return "\n".join(lines)


@contextlib.contextmanager
def local_cluster(num_workers: int = 1, **kwargs) -> Iterator[ClusterInfo]:
    """:func:`up` a cluster for the ``with`` block, and always :func:`down` it afterwards.

    Takes :func:`up`'s arguments. Unless ``state_file`` is given, the state goes to a fresh
    temporary file, so tests never touch the user's own recorded cluster.

    Example:
        >>> with local_cluster(num_workers=1) as info:  # doctest: +SKIP
        ...     subprocess.run([sys.executable, "driver.py"], env={**os.environ, **info.env})
    """
    scratch = None
    if kwargs.get("state_file") is None:
        scratch = tempfile.mkdtemp(prefix="shardemb-cluster-")
        kwargs["state_file"] = os.path.join(scratch, "state.json")
    try:
        info = up(num_workers, **kwargs)
        try:
            yield info
        finally:
            down(info)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


# ---------------------------------------------------------------------------- state file


def _write_state(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    os.replace(tmp, path)


def _load_state(state: ClusterInfo | str | os.PathLike[str] | None) -> tuple[Path, dict]:
    if isinstance(state, ClusterInfo):
        path = Path(state.state_file)
        if path.exists():
            return path, _read_state(path)
        # The file is gone (removed by hand): rebuild enough of it from the info itself.
        recorded = asdict(state)
        recorded["nodes"] = [{"session_id": s} for s in state.session_ids]
        return path, recorded
    path = Path(state) if state is not None else default_state_file()
    return path, _read_state(path)


def _read_state(path: Path) -> dict:
    try:
        recorded = json.loads(path.read_text())
    except FileNotFoundError:
        raise ClusterConnectionError(
            f"No local cluster is recorded in {str(path)!r}: start one with "
            f"`shardemb cluster up` (or pass the --state-file that `up` used)."
        ) from None
    except (OSError, ValueError) as err:
        raise ClusterConnectionError(
            f"The cluster state file {str(path)!r} cannot be read: {err}"
        ) from err
    if not isinstance(recorded, dict) or recorded.get("version") != _STATE_VERSION:
        raise ClusterConnectionError(
            f"The cluster state file {str(path)!r} is not a shardemb state file "
            f"(version {_STATE_VERSION})."
        )
    return recorded


def _info_from_state(state: dict, path: Path) -> ClusterInfo:
    return ClusterInfo(
        address=state["address"],
        num_nodes=len(state["nodes"]),
        state_file=str(path),
        temp_dir=state["temp_dir"],
        port=state["port"],
        node_resources=tuple(n["resource"] for n in state["nodes"]),
        session_ids=tuple(n["session_id"] for n in state["nodes"]),
        cpus_per_node=state["cpus_per_node"],
        gpus_per_node=state["gpus_per_node"],
        memory_per_node=state["memory_per_node"],
        object_store_memory=state["object_store_memory"],
        auth_mode=state["auth_mode"],
    )


def _refuse_live_cluster(path: Path) -> None:
    if not path.exists():
        return
    with contextlib.suppress(ClusterConnectionError):
        if _cluster_processes(_read_state(path)):
            raise InvalidConfigError(
                f"`state_file` already records a running cluster; run `down` first or pass "
                f"another state file. Received: state_file={str(path)!r}"
            )


# -------------------------------------------------------------------------------- helpers


def _check_int(
    name: str, value: object, *, minimum: int, maximum: int | None = None, optional: bool = False
) -> None:
    if value is None and optional:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < minimum
        or (maximum is not None and value > maximum)
    ):
        bound = (
            f"an integer >= {minimum}"
            if maximum is None
            else (f"an integer in [{minimum}, {maximum}]")
        )
        raise InvalidConfigError(
            f"`{name}` must be {bound}{' or None' if optional else ''}. "
            f"Received: {name}={value!r} (of type {type(value).__name__})"
        )


def _ray_command() -> list[str]:
    """The ``ray`` CLI of this interpreter's environment (so versions match the drivers)."""
    beside = Path(sys.executable).parent / "ray"
    if beside.exists():
        return [str(beside)]
    return [sys.executable, "-c", "from ray.scripts.scripts import main; main()"]


def _ensure_token() -> None:
    """Token auth needs a token; make one where Ray looks for it, as ``ray.init()`` would."""
    token_file = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.join(
        Path.home(), ".ray", "auth_token"
    )
    if not os.environ.get("RAY_AUTH_TOKEN") and not os.path.exists(token_file):
        subprocess.run(
            [*_ray_command(), "get-auth-token", "--generate"],
            capture_output=True,
            check=False,
            timeout=60,
        )


def _ray_env(auth_mode: str | None) -> dict[str, str]:
    """Environment for ``ray start`` and probes: no inherited ``RAY_ADDRESS``; the auth mode."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    if auth_mode:
        env["RAY_AUTH_MODE"] = auth_mode
    return env


def _default_temp_root() -> Path:
    root = Path(tempfile.gettempdir())
    if len(str(root)) > 24:  # keep Ray's unix socket paths short
        root = Path("/tmp")
    return root / f"shardemb-{os.getuid()}"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("", port))
        except OSError:
            return False
    return True


def _worker_port_blocks(count: int) -> list[tuple[int, int]]:
    """``count`` disjoint, currently free port ranges for Ray workers, one per node."""
    lo, hi = _WORKER_PORTS
    starts = list(range(lo, hi - _WORKER_PORTS_PER_NODE, _WORKER_PORTS_PER_NODE))
    random.shuffle(starts)  # two clusters started at once rarely pick the same blocks
    blocks = []
    for start in starts:
        end = start + _WORKER_PORTS_PER_NODE - 1
        if all(_port_is_free(p) for p in (start, (start + end) // 2, end)):
            blocks.append((start, end))
            if len(blocks) == count:
                return blocks
    raise ClusterConnectionError(
        f"Could not find {count} free worker port ranges in {lo}-{hi - 1}."
    )


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


_UNITS = {
    "": 1,
    "k": 10**3,
    "m": 10**6,
    "g": 10**9,
    "t": 10**12,
    "ki": 2**10,
    "mi": 2**20,
    "gi": 2**30,
    "ti": 2**40,
}


def _parse_bytes(text: str) -> int:
    """``"512MiB"``, ``"4G"``, ``"1000000"`` -> bytes (argparse type)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]i?)?b?\s*", text, flags=re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(
            f"expected bytes such as 4GiB, 512MiB or 1000000, got {text!r}"
        )
    return int(float(m.group(1)) * _UNITS[(m.group(2) or "").lower()])


def _fmt_bytes(n: float) -> str:
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return f"{int(n)}B"


# ------------------------------------------------------------------------------------ CLI


def register_cli(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``cluster up|down|status`` to an argparse ``subparsers`` object.

    Each leaf parser sets ``func``: call ``args.func(args)``, which returns an exit code.

    Example:
        >>> parser = argparse.ArgumentParser(prog="shardemb")
        >>> register_cli(parser.add_subparsers(dest="command")).prog
        'shardemb cluster'
        >>> args = parser.parse_args(["cluster", "up", "--workers", "3",
        ...                           "--memory-per-node", "2GiB"])
        >>> args.workers, args.memory_per_node
        (3, 2147483648)
    """
    cluster = subparsers.add_parser(
        "cluster",
        help="start, inspect or stop a local multi-node Ray cluster",
        description="A real multi-node Ray cluster on this machine (one raylet per node).",
    )
    actions = cluster.add_subparsers(dest="cluster_command", metavar="{up,down,status}")
    actions.required = True

    p_up = actions.add_parser("up", help="start a head and --workers worker nodes")
    p_up.add_argument("--workers", type=int, default=2, help="worker nodes (default 2)")
    p_up.add_argument("--cpus-per-node", type=int, default=1, help="CPUs per node (default 1)")
    p_up.add_argument(
        "--memory-per-node",
        type=_parse_bytes,
        default=None,
        help="memory resource per node, e.g. 4GiB (default: even split)",
    )
    p_up.add_argument("--gpus-per-node", type=int, default=0, help="GPUs per node (default 0)")
    p_up.add_argument(
        "--object-store-memory",
        type=_parse_bytes,
        default=None,
        help="object store per node, e.g. 1GiB (default: even split)",
    )
    p_up.add_argument("--port", type=int, default=None, help="GCS port (default: a free one)")
    p_up.add_argument("--temp-dir", default=None, help="Ray temp dir for this cluster")
    p_up.add_argument(
        "--auth-mode",
        choices=_AUTH_MODES,
        default=None,
        help="RAY_AUTH_MODE of every node (default $RAY_AUTH_MODE, else token)",
    )
    p_up.add_argument("--timeout", type=float, default=60.0, help="seconds to wait (default 60)")
    p_up.set_defaults(func=_cmd_up)

    p_down = actions.add_parser("down", help="stop the recorded cluster (only that one)")
    p_down.set_defaults(func=_cmd_down)

    p_status = actions.add_parser("status", help="nodes, resources and address")
    p_status.add_argument("--json", action="store_true", help="print the status as JSON")
    p_status.set_defaults(func=_cmd_status)

    for p in (p_up, p_down, p_status):
        p.add_argument(
            "--state-file",
            default=None,
            help=f"cluster state file (default {default_state_file()})",
        )
    return cluster


def _cmd_up(args: argparse.Namespace) -> int:
    start = time.monotonic()
    info = up(
        args.workers,
        cpus_per_node=args.cpus_per_node,
        memory_per_node=args.memory_per_node,
        gpus_per_node=args.gpus_per_node,
        port=args.port,
        object_store_memory=args.object_store_memory,
        temp_dir=args.temp_dir,
        state_file=args.state_file,
        auth_mode=args.auth_mode,
        timeout=args.timeout,
    )
    print(
        f"Ray cluster with {info.num_nodes} nodes is up at {info.address} "
        f"({time.monotonic() - start:.1f}s; state file {info.state_file})"
    )
    print(_export_line(info.address, info.auth_mode))
    return 0


def _export_line(address: str, auth_mode: str | None) -> str:
    # With an explicit address Ray never turns token auth on by itself: drivers need the mode.
    return f"export RAY_ADDRESS={address}" + (f" RAY_AUTH_MODE={auth_mode}" if auth_mode else "")


def _cmd_down(args: argparse.Namespace) -> int:
    path, recorded = _load_state(args.state_file)
    count = down(path)
    print(f"Stopped the Ray cluster at {recorded['address']} ({count} processes).")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    st = status(args.state_file)
    print(json.dumps(st, indent=2) if args.json else format_status(st))
    return 0 if st["alive_nodes"] >= st["expected_nodes"] else 1


def main(argv: list[str] | None = None) -> int:
    """``python -m shardemb.cluster up|down|status [flags]``; returns the exit code.

    Example:
        >>> main(["status", "--state-file", "/nonexistent/state.json"])  # doctest: +SKIP
        1
    """
    parser = argparse.ArgumentParser(prog="shardemb")
    register_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["cluster", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.func(args)
    except (ClusterConnectionError, InvalidConfigError) as err:
        print(f"shardemb cluster {args.cluster_command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
