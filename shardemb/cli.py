"""The ``shardemb`` command: ``demo``, ``checkpoint inspect``, ``cluster``, ``bench``.

Example::

    shardemb demo --help
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shardemb", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser(
        "demo", help="train the recommender demo (examples/train_recommender.py)", add_help=False
    )
    # Listed for --help only: main() hands `demo ...` to the demo's own parser.
    for register in _registrars():
        register(sub)
    return parser


def _registrars():
    """Sub-commands contributed by other modules (each imports only what it needs)."""
    from shardemb import bench, checkpoint, cluster

    return (checkpoint.register_cli, cluster.register_cli, bench.register_cli)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["demo"]:
        # The demo owns its flags; argparse sub-parsers cannot pass them through untouched.
        from shardemb.demo import main as demo_main

        return _guard(lambda: demo_main(argv[1:]))
    args = build_parser().parse_args(argv)
    return _guard(lambda: args.func(args))


def _guard(fn) -> int:
    from shardemb.errors import ShardembError

    try:
        return int(fn() or 0)
    except ShardembError as err:
        print(f"shardemb: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
