"""``shardemb bench``: run the benchmarks of a source checkout (``benchmarks/run.py``).

The benchmarks are not part of the installed package: they live in the top-level
``benchmarks/`` folder of the repository. Run ``shardemb bench`` from a source checkout
(the repository root, or with ``SHARDEMB_SOURCE`` naming it); everything after ``bench``
is passed to ``python -m benchmarks.run``.

Example::

    cd shardemb && shardemb bench --quick
"""

from __future__ import annotations

import argparse
import os
import sys

__all__ = ["find_checkout", "register_cli"]


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
    if root is None:
        print("shardemb bench: no benchmarks/run.py found. The benchmarks ship with the source "
              "checkout, not the package: run this from the repository root, or set "
              "SHARDEMB_SOURCE=/path/to/shardemb.", file=sys.stderr)  # fmt: skip
        return 2
    if root not in sys.path:
        sys.path.insert(0, root)
    from benchmarks.run import main

    return main(args.rest, prog="shardemb bench")


def register_cli(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``bench`` to the ``shardemb`` command."""
    # No option prefix of its own: "--quick" etc. must reach `rest` untouched (with "-",
    # argparse would take a leading "--quick" for an unknown option of this subparser).
    p = subparsers.add_parser("bench", add_help=False, prefix_chars="+",
                              help="run the benchmarks (from a source checkout)")  # fmt: skip
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=_bench)
    return p
