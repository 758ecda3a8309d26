"""``up`` and ``down``: several real Ray nodes on one machine, and only those stopped.

Each node is its own ``ray start`` (its own raylet, object store and workers) in a process
session of its own. What Ray lacks for several nodes on ONE machine is added here: a temp
dir of the cluster's own, explicit free ports for everything Ray puts on a fixed default,
and a state file so that ``down`` stops this cluster's processes only.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from shardemb._validate import check_int, check_positive_int
from shardemb.cluster.probe import probe_nodes, ray_env
from shardemb.cluster.processes import cluster_processes, import_psutil, stop_cluster
from shardemb.cluster.state import (
    AUTH_MODES,
    NODE_RESOURCE_PREFIX,
    STATE_VERSION,
    ClusterInfo,
    default_state_file,
    info_from_state,
    load_state,
    read_state,
    write_state,
)
from shardemb.errors import ClusterConnectionError, InvalidConfigError

_WORKER_PORTS = (20000, 32768)  # below Linux's ephemeral range, away from Ray's 10002-19999
_WORKER_PORTS_PER_NODE = 256
_MAX_SOCKET_PATH = 107  # AF_UNIX sun_path limit on Linux, minus the NUL
# Ray puts "session_<date>_<time>_<us>_<pid>/sockets/plasma_store.<n>" under the temp dir.
_SOCKET_SUFFIX_LEN = len("/session_2026-01-01_00-00-00_000000_4194304/sockets/plasma_store.99")


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
    check_int("num_workers", num_workers, minimum=0)
    check_positive_int("cpus_per_node", cpus_per_node)
    check_int("gpus_per_node", gpus_per_node, minimum=0)
    check_positive_int("memory_per_node", memory_per_node, optional=True)
    check_int("object_store_memory", object_store_memory, minimum=75 * 2**20, optional=True)
    check_int("port", port, minimum=1, maximum=65535, optional=True)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        raise InvalidConfigError(
            f"`timeout` must be a positive number of seconds. Received: timeout={timeout!r}"
        )
    if auth_mode is None:
        auth_mode = os.environ.get("RAY_AUTH_MODE") or "token"
    if auth_mode not in AUTH_MODES:
        raise InvalidConfigError(
            f"`auth_mode` must be one of {AUTH_MODES} or None. Received: auth_mode={auth_mode!r}"
        )
    state_path = Path(state_file) if state_file is not None else default_state_file()
    _refuse_live_cluster(state_path)

    num_nodes = num_workers + 1
    available = import_psutil().virtual_memory().available
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
        "version": STATE_VERSION,
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
            write_state(state_path, state)  # written early so `down` can clean up a failed up
        _wait_for_nodes(state["address"], num_nodes, deadline, state["auth_mode"])
    except BaseException:
        stop_cluster(state, remove_temp_dir=False)  # keep the logs for the error message
        with contextlib.suppress(FileNotFoundError):
            state_path.unlink()
        raise
    state["ready"] = True
    write_state(state_path, state)
    return info_from_state(state, state_path)


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
            env=ray_env(state["auth_mode"]),
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


def _wait_for_nodes(address: str, num_nodes: int, deadline: float, auth_mode: str) -> None:
    nodes = probe_nodes(address, num_nodes, deadline - time.monotonic(), auth_mode)
    alive = [n for n in nodes if n["alive"]]
    if len(alive) < num_nodes:
        raise ClusterConnectionError(
            f"Only {len(alive)} of {num_nodes} nodes of the cluster at {address} are alive "
            f"after the timeout; raise `timeout` or look at the logs under the temp dir."
        )


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
    state_path, recorded = load_state(state)
    stopped = stop_cluster(recorded, remove_temp_dir=recorded.get("owns_temp_dir", False))
    with contextlib.suppress(FileNotFoundError):
        state_path.unlink()
    return stopped


def _refuse_live_cluster(path: Path) -> None:
    if not path.exists():
        return
    with contextlib.suppress(ClusterConnectionError):
        if cluster_processes(read_state(path)):
            raise InvalidConfigError(
                f"`state_file` already records a running cluster; run `down` first or pass "
                f"another state file. Received: state_file={str(path)!r}"
            )


def _ray_command() -> list[str]:
    """The ``ray`` CLI of this interpreter (so the nodes run the drivers' Ray version)."""
    return [sys.executable, "-m", "ray.scripts.scripts"]


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
