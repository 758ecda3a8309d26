"""``shardemb bench``: run the benchmarks of a source checkout (``benchmarks/run.py``).

The benchmarks are not part of the installed package: they live in the top-level
``benchmarks/`` folder of the repository. Run ``shardemb bench`` from a source checkout
(the repository root, or with ``SHARDEMB_SOURCE`` naming it); everything after ``bench``
is passed to ``python -m benchmarks.run``. Its flags are parsed in :mod:`shardemb.cli`.

Example::

    cd shardemb && shardemb bench --quick
"""

from __future__ import annotations

import argparse
import os
import sys

__all__ = ["find_checkout"]

_NO_BENCHMARKS = (
    "the benchmarks ship with the source repository, not with the installed package: "
    "from a clone of it, run `python -m benchmarks.run` (or `shardemb bench` there, or "
    "set SHARDEMB_SOURCE to the clone)"
)


def find_checkout() -> str | None:
    """The repository root holding ``benchmarks/run.py``: ``$SHARDEMB_SOURCE``, the current
    folder or one of its parents, or the folder above this installed module."""
    candidates = [os.environ.get("SHARDEMB_SOURCE")]
    here = os.path.abspath(os.getcwd())
    while True:
        candidates.append(here)
        parent = os.path.dirname(here)
        if parent == here:
            break
        here = parent
    candidates.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for root in candidates:
        if root and os.path.isfile(os.path.join(root, "benchmarks", "run.py")):
            return root
    return None


def _bench(args: argparse.Namespace) -> int:
    root = find_checkout()
    if root is not None and root not in sys.path:
        sys.path.insert(0, root)
    try:
        from benchmarks.run import main
    except ModuleNotFoundError as err:
        if err.name not in ("benchmarks", "benchmarks.run"):
            raise  # a dependency of the benchmarks is missing: say which
        print(f"shardemb: error: {_NO_BENCHMARKS}", file=sys.stderr)
        return 2
    return main(args.rest, prog="shardemb bench")
