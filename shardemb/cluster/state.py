"""The state file of a local cluster: what :func:`~shardemb.cluster.up` started.

``status`` and ``down`` read it back, so ``down`` stops this cluster's processes only.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from shardemb._files import atomic_write
from shardemb.errors import ClusterConnectionError

NODE_RESOURCE_PREFIX = "shardemb_node_"
"""Node ``i`` of a local cluster carries ``{NODE_RESOURCE_PREFIX}{i}: 1``; the head is 0."""

STATE_VERSION = 1
# `ray start --head` turns token auth on by itself when a token exists, `ray start --address`
# does not (its workers could not join): every node gets RAY_AUTH_MODE explicitly.
AUTH_MODES = ("token", "disabled")


@dataclass(frozen=True, slots=True)
class ClusterInfo:
    """A running local cluster, as :func:`~shardemb.cluster.up` started it (and as its state
    file records).

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
    """JSON file recording this cluster; ``status`` and ``down`` read it."""
    temp_dir: str
    """Ray's temp dir for this cluster only (sessions, sockets, logs)."""
    port: int
    """GCS port (the port of :attr:`address`)."""
    node_resources: tuple[str, ...]
    """Custom resource of each node, head first: ``("shardemb_node_0", "shardemb_node_1")``."""
    session_ids: tuple[int, ...]
    """Process session of each node's ``ray start``; ``down`` stops those sessions."""
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
    """Where ``up`` records the cluster unless told otherwise (one per user).

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


def write_state(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # default=int: numpy integers pass the argument checks of `up`.
    atomic_write(path, json.dumps(state, indent=2, default=int) + "\n")


def load_state(state: ClusterInfo | str | os.PathLike[str] | None) -> tuple[Path, dict]:
    """The state file's path and contents for a :class:`ClusterInfo`, a path, or the default."""
    if isinstance(state, ClusterInfo):
        path = Path(state.state_file)
        if path.exists():
            return path, read_state(path)
        # The file is gone (removed by hand): rebuild enough of it from the info itself.
        recorded = asdict(state)
        recorded["nodes"] = [{"session_id": s} for s in state.session_ids]
        return path, recorded
    path = Path(state) if state is not None else default_state_file()
    return path, read_state(path)


def read_state(path: Path) -> dict:
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
    if not isinstance(recorded, dict) or recorded.get("version") != STATE_VERSION:
        raise ClusterConnectionError(
            f"The cluster state file {str(path)!r} is not a shardemb state file "
            f"(version {STATE_VERSION})."
        )
    return recorded


def info_from_state(state: dict, path: Path) -> ClusterInfo:
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
