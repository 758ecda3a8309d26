"""What a local cluster looks like from inside: ``status`` and its printout.

A ``ray.init()`` here would make this process part of the cluster: the nodes are asked
from a throwaway driver process instead.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from shardemb.cluster.processes import cluster_processes
from shardemb.cluster.state import NODE_RESOURCE_PREFIX, ClusterInfo, load_state
from shardemb.errors import ClusterConnectionError

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


def probe_nodes(address: str, want: int, timeout: float, auth_mode: str | None) -> list[dict]:
    """``ray.nodes()`` from a throwaway driver process, so this process never joins a cluster."""
    env = ray_env(auth_mode)
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
    state_path, recorded = load_state(state)
    if not cluster_processes(recorded):  # a driver would retry a dead GCS for a long time
        raise ClusterConnectionError(
            f"The cluster recorded in {str(state_path)!r} ({recorded['address']}) is not "
            f"running: none of its processes is left. Run `down` to clear the record."
        )
    nodes = probe_nodes(recorded["address"], 0, timeout, recorded.get("auth_mode"))
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
    lines.append(export_line(st["address"], st.get("auth_mode")))
    return "\n".join(lines)


def ray_env(auth_mode: str | None) -> dict[str, str]:
    """Environment for ``ray start`` and probes: no inherited ``RAY_ADDRESS``; the auth mode."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    if auth_mode:
        env["RAY_AUTH_MODE"] = auth_mode
    return env


def _fmt_bytes(n: float) -> str:
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return f"{int(n)}B"


def export_line(address: str, auth_mode: str | None) -> str:
    # With an explicit address Ray never turns token auth on by itself: drivers need the mode.
    return f"export RAY_ADDRESS={address}" + (f" RAY_AUTH_MODE={auth_mode}" if auth_mode else "")
