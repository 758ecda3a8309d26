"""A real multi-node Ray cluster on one machine: ``up``, ``status``, ``down``.

Each node is its own ``ray start`` (its own raylet, object store and workers) and carries a
custom resource ``shardemb_node_<i>`` (head is 0), so a test or a benchmark can pin an actor
to a node. The cluster lives in its own temp dir and on explicitly chosen ports, so it
coexists with any other Ray instance on the machine (a plain ``ray.init()``, ``ray start``
clusters), and :func:`down` stops this cluster's processes only, never a plain ``ray stop``.
What :func:`up` started is recorded in a JSON state file that :func:`status` and
:func:`down` read back. Needs ``psutil`` (``pip install "shardemb[cluster]"``).

Modules: :mod:`~shardemb.cluster.state` (the state file, :class:`ClusterInfo`),
:mod:`~shardemb.cluster.processes` (finding and stopping this cluster's processes),
:mod:`~shardemb.cluster.bringup` (:func:`up`, :func:`down`), :mod:`~shardemb.cluster.probe`
(:func:`status`) and :mod:`~shardemb.cluster.commands` (what the ``shardemb cluster``
commands run; their flags are in :mod:`shardemb.cli`).

Example:
    >>> with local_cluster(num_workers=1) as info:  # doctest: +SKIP
    ...     print(info.num_nodes, info.address)
    2 192.0.2.2:41234
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator

from shardemb.cluster.bringup import down, up
from shardemb.cluster.probe import format_status, status
from shardemb.cluster.state import NODE_RESOURCE_PREFIX, ClusterInfo, default_state_file

__all__ = [
    "NODE_RESOURCE_PREFIX",
    "ClusterInfo",
    "default_state_file",
    "down",
    "format_status",
    "local_cluster",
    "status",
    "up",
]


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
