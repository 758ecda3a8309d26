"""The ``shardemb`` command: ``demo``, ``checkpoint inspect``, ``cluster``, ``bench``.

Example::

    shardemb demo --help
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


def _demo(args: argparse.Namespace) -> int:
    from shardemb.demo import main as demo_main

    return demo_main(args.rest)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shardemb", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train the recommender demo (examples/train_recommender.py)",
                          add_help=False)  # fmt: skip
    demo.add_argument("rest", nargs=argparse.REMAINDER)
    demo.set_defaults(func=_demo)
    for register in _registrars():
        register(sub)
    return parser


def _registrars():
    """Sub-commands contributed by other modules (each imports only what it needs)."""
    import importlib

    for module in ("shardemb.checkpoint", "shardemb.cluster", "shardemb.bench"):
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        register = getattr(mod, "register_cli", None)
        if register is not None:
            yield register


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
