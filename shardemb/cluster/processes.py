"""Finding and stopping one local cluster's processes, and no other Ray's.

``ray stop`` would stop every Ray instance of the user; here a process belongs to the
cluster when it is a Ray process whose command line names the cluster's temp dir or GCS
port, or that runs in the process session of one of its ``ray start`` commands, or a child
of one of those.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
from typing import TYPE_CHECKING

from shardemb.errors import ClusterConnectionError

if TYPE_CHECKING:
    import psutil

_GRACE_S = 5.0  # SIGTERM -> SIGKILL, per bucket


def import_psutil():
    """``psutil``, which the cluster needs and Ray does not guarantee."""
    try:
        import psutil
    except ImportError as err:
        raise ImportError(
            'shardemb.cluster needs psutil, which is not installed: pip install "shardemb[cluster]"'
        ) from err
    return psutil


def stop_cluster(state: dict, *, remove_temp_dir: bool) -> int:
    """Stop every process of the cluster ``state`` records; returns how many were stopped."""
    stopped: set[int] = set()
    for _ in range(5):  # a raylet may fork a worker while we look; look again until none
        procs = cluster_processes(state)
        if not procs:
            break
        _terminate_in_buckets(procs)
        stopped.update(p.pid for p in procs)
    else:
        left = cluster_processes(state)
        if left:
            raise ClusterConnectionError(
                f"Could not stop the cluster in {state['temp_dir']}: processes "
                f"{sorted(p.pid for p in left)} are still alive."
            )
    if remove_temp_dir:
        shutil.rmtree(state["temp_dir"], ignore_errors=True)
    return len(stopped)


def _terminate_in_buckets(procs: list[psutil.Process]) -> None:
    """Raylets first, then the agents, then the GCS (as ``ray stop`` orders them)."""
    psutil = import_psutil()

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


def cluster_processes(state: dict) -> list[psutil.Process]:
    """This cluster's live processes, found by temp dir, GCS port, session id and ancestry."""
    psutil = import_psutil()
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
    return [p for p in found.values() if _alive(p, psutil)]


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


def _alive(p: psutil.Process, psutil) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
