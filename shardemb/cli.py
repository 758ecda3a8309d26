"""The ``shardemb`` command: ``demo``, ``checkpoint inspect``, ``cluster``, ``bench``.

Every sub-command's flags are defined here; each command's implementation lives in its
module and is imported only when that command runs, so ``shardemb --help`` stays fast.

Example::

    shardemb demo --help
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import re
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shardemb.recsys.demo_config import DemoConfig

__all__ = [
    "add_cluster_parser",
    "build_parser",
    "cluster_main",
    "demo_main",
    "main",
    "parse_demo_args",
]


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: ...)`` except where there is nothing to show (None, off flags)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """A sub-command's parser. Its ``func`` default may name the implementation as
    ``"module:name"``: it is imported after parsing, so only the chosen command's module
    loads. ``check(parser, args)`` runs after parsing and may call ``parser.error``.
    A usage error is one ``shardemb: error: ...`` line on stderr and exit code 2."""

    def __init__(self, *args, check=None, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)
        self._check = check

    def error(self, message: str):
        self.exit(2, f"shardemb: error: {message} (see '{self.prog} --help')\n")

    def parse_known_args(self, args=None, namespace=None):
        namespace, rest = super().parse_known_args(args, namespace)
        func = getattr(namespace, "func", None)
        if isinstance(func, str):
            module, _, name = func.partition(":")
            namespace.func = getattr(importlib.import_module(module), name)
        if self._check is not None:
            self._check(self, namespace)
        return namespace, rest


def build_parser() -> argparse.ArgumentParser:
    """The ``shardemb`` parser; each leaf sets ``func``: call ``args.func(args)``."""
    parser = _Parser(
        prog="shardemb",
        formatter_class=argparse.HelpFormatter,
        description="The shardemb command: train the demo, inspect checkpoints, run a local "
        "multi-node Ray cluster, run the benchmarks.",
        epilog="Run 'shardemb COMMAND --help' for the flags of a command.",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_demo_parser(sub)
    _add_checkpoint_parser(sub)
    add_cluster_parser(sub)
    _add_bench_parser(sub)
    return parser


#: Commands that may import TensorFlow (directly or in the benchmarks they run).
_TENSORFLOW_COMMANDS = ("demo", "bench", "cluster")


def main(argv: list[str] | None = None) -> int:
    """``shardemb COMMAND ...``; returns the exit code (2 with one ``shardemb: error: ...``
    line on stderr for a bad flag, a bad input or a failed run)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    quiet_tensorflow_logs()
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        quiet_tensorflow_startup()
    return _guard(lambda: args.func(args))


def quiet_tensorflow_logs() -> None:
    """Default TensorFlow's C++ log level to errors only (``TF_CPP_MIN_LOG_LEVEL=3``);
    a level the user set is kept. Call it before anything imports TensorFlow."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def quiet_tensorflow_startup() -> None:
    """Import TensorFlow now, with its start-up lines (oneDNN, CUDA probing, ``cuInit``)
    hidden: they are written to stderr before its log level takes effect, so only
    silencing file descriptor 2 for the import hides them. Does nothing if TensorFlow is
    already imported or the user set ``TF_CPP_MIN_LOG_LEVEL`` below 3."""
    quiet_tensorflow_logs()
    if "tensorflow" in sys.modules or os.environ["TF_CPP_MIN_LOG_LEVEL"] != "3":
        return
    with _stderr_silenced():
        try:
            import tensorflow as tf

            tf.config.list_physical_devices()  # the CUDA probe logs on first use
        except Exception:  # noqa: BLE001 - the command's own import reports it, loudly
            return


@contextlib.contextmanager
def _stderr_silenced():
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def cluster_main(argv: list[str] | None = None) -> int:
    """``python -m shardemb.cluster up|down|status [flags]``; returns the exit code (1 with
    one ``shardemb cluster X: error: ...`` line when the cluster can't be reached or set up).
    """
    from shardemb.errors import ClusterConnectionError, InvalidConfigError

    quiet_tensorflow_logs()
    args = build_parser().parse_args(["cluster", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.func(args)
    except (ClusterConnectionError, InvalidConfigError) as err:
        print(f"shardemb cluster {args.cluster_command}: error: {err}", file=sys.stderr)
        return 1


def _guard(fn) -> int:
    from shardemb.errors import ShardembError

    try:
        return int(fn() or 0)
    except (ShardembError, OSError) as err:  # OSError: a folder that cannot be written...
        print(f"shardemb: error: {err}", file=sys.stderr)
        return 2


# ------------------------------------------------------------------------------------ demo

_DEMO_POSITIVE = (
    "users",
    "items",
    "interactions",
    "dim",
    "epochs",
    "batch_size",
    "num_shards",
    "eval_users",
    "capacity_ratio",
)


def _add_demo_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from shardemb.recsys.demo_config import DemoConfig  # defaults only (no TensorFlow)

    d = DemoConfig()
    p = sub.add_parser(
        "demo",
        help="train the recommender demo (examples/train_recommender.py)",
        description="Train a two-tower retrieval model whose user and item tables live in "
        "the sharded store, checkpoint it every epoch, and report recall@10 and NDCG@10 next "
        "to a most-popular baseline. Without --data it trains on a synthetic log.",
        check=_check_demo_args,
    )
    p.add_argument("--data", help="MovieLens u.data, ratings.dat or ratings.csv")
    p.add_argument("--format", choices=["tsv", "dat", "csv"], help="override the file format")
    p.add_argument("--users", type=int, default=d.users, help="users of the synthetic log")
    p.add_argument("--items", type=int, default=d.items, help="items of the synthetic log")
    p.add_argument(
        "--interactions", type=int, default=d.interactions, help="interactions of the synthetic log"
    )
    p.add_argument("--dim", type=int, default=d.dim, help="embedding dimension of both towers")
    p.add_argument("--epochs", type=int, default=d.epochs, help="training epochs")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="interactions per batch")
    p.add_argument(
        "--learning-rate", type=float, help="default: 1.0 for sgd and adagrad, 0.01 for adam"
    )
    p.add_argument(
        "--optimizer",
        default=d.optimizer,
        choices=["sgd", "adagrad", "adam"],
        help="sparse optimizer of the embedding tables",
    )
    p.add_argument(
        "--temperature",
        type=float,
        default=d.temperature,
        help="softmax temperature of the in-batch loss",
    )
    p.add_argument("--num-shards", type=int, default=d.num_shards, help="shards per table")
    p.add_argument(
        "--backend",
        default=d.backend,
        choices=["ray", "inprocess"],
        help="where the shards run: Ray actors or in this process",
    )
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or local)")
    p.add_argument(
        "--out",
        default=d.out,
        help="folder for checkpoints and results; a run without --resume replaces the "
        "previous run's there",
    )
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    p.add_argument(
        "--restore-shards", type=int, help="restore onto this many shards (with --resume)"
    )
    p.add_argument(
        "--compare-keras",
        action="store_true",
        help="also train the same model on keras.layers.Embedding",
    )
    p.add_argument(
        "--eval-users", type=int, default=d.eval_users, help="held-out users to evaluate"
    )
    p.add_argument("--seed", type=int, default=d.seed, help="seed of data, split and model")
    p.add_argument("--dynamic", action="store_true", help="dynamic tables on the raw ids "
                   "(no id mapping), LFU-evicted at --capacity-ratio; prints counters")  # fmt: skip
    p.add_argument("--capacity-ratio", type=float, default=d.capacity_ratio,
                   help="with --dynamic: each table's capacity / its distinct ids")  # fmt: skip
    p.set_defaults(func=_demo)
    return p


def _check_demo_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    from shardemb.recsys.demo_config import DEFAULT_LEARNING_RATES

    for name in (*_DEMO_POSITIVE, "temperature", "learning_rate", "restore_shards"):
        value = getattr(args, name)
        if value is not None and not value > 0:
            flag = "--" + name.replace("_", "-")
            parser.error(f"{flag} must be positive. Received: {value}")
    if args.learning_rate is None:
        args.learning_rate = DEFAULT_LEARNING_RATES[args.optimizer]
    if args.restore_shards is not None and not args.resume:
        parser.error("--restore-shards needs --resume (it restores the latest checkpoint)")
    if args.data is not None:
        if not os.path.exists(args.data):
            parser.error(f"--data: no such file: {args.data}")
        if not os.path.isfile(args.data):
            parser.error(f"--data: {args.data} is not a file")
        if not os.access(args.data, os.R_OK):
            parser.error(f"--data: {args.data} cannot be read (permission denied)")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        parser.error(f"--out: {args.out} is a file, not a folder")


def _demo_config(args: argparse.Namespace):
    from shardemb.recsys.demo_config import DemoConfig

    fields = DemoConfig.__dataclass_fields__
    return DemoConfig(**{k: v for k, v in vars(args).items() if k in fields})


def parse_demo_args(argv: list[str] | None = None) -> DemoConfig:
    """The demo's :class:`~shardemb.demo.DemoConfig` from its flags (``shardemb demo ...``)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    return _demo_config(build_parser().parse_args(["demo", *argv]))


def demo_main(argv: list[str] | None = None) -> int:
    """Run the demo with the flags in ``argv`` (``shardemb demo ...``; errors raise)."""
    from shardemb.demo import run

    run(parse_demo_args(argv))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from shardemb.demo import run

    run(_demo_config(args))
    return 0


# ------------------------------------------------------------------------------ checkpoint


def _add_checkpoint_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "checkpoint", help="inspect checkpoints", description="Inspect shardemb checkpoints."
    )
    actions = p.add_subparsers(dest="checkpoint_command", required=True, parser_class=_Parser)
    inspect = actions.add_parser(
        "inspect",
        help="print a checkpoint's manifest and whether it is complete",
        description="Print a checkpoint's manifest and check it is complete (every array "
        "and chunk present, sizes right). Exits 1 if it is missing, incomplete or damaged.",
    )
    inspect.add_argument("path", help="checkpoint folder or URL")
    inspect.add_argument("--json", action="store_true", help="print the manifest as JSON")
    inspect.add_argument("--verify", action="store_true", help="also read every chunk (checksums)")
    inspect.set_defaults(func=_inspect)
    return p


def _inspect(args: argparse.Namespace) -> int:
    from shardemb.checkpoint import inspect_path

    return inspect_path(args.path, as_json=args.json, verify=args.verify)


# --------------------------------------------------------------------------------- cluster


def add_cluster_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``cluster up|down|status`` (:mod:`shardemb.cluster`) to ``sub``.

    Example:
        >>> parser = argparse.ArgumentParser(prog="shardemb")
        >>> _ = add_cluster_parser(parser.add_subparsers(dest="command"))
        >>> args = parser.parse_args(["cluster", "up", "--workers", "3",
        ...                           "--memory-per-node", "2GiB"])
        >>> args.workers, args.memory_per_node
        (3, 2147483648)
    """
    from shardemb.cluster.state import AUTH_MODES, default_state_file  # stdlib only

    cluster = sub.add_parser(
        "cluster",
        help="start, inspect or stop a local multi-node Ray cluster",
        description="A real multi-node Ray cluster on this machine (one raylet per node).",
        formatter_class=_HelpFormatter,
    )
    actions = cluster.add_subparsers(
        dest="cluster_command", metavar="{up,down,status}", required=True, parser_class=_Parser
    )
    p_up = actions.add_parser(
        "up",
        help="start a head and --workers worker nodes",
        description="Start a head and --workers worker nodes on this machine, each its own "
        "`ray start` with the custom resource shardemb_node_<i> (the head is 0), wait until "
        "all are alive, and print the export line for drivers. Memory and object store are "
        "split evenly over the nodes unless given.",
    )
    p_up.add_argument("--workers", type=int, default=2, help="worker nodes besides the head")
    p_up.add_argument("--cpus-per-node", type=int, default=1, help="CPUs per node")
    p_up.add_argument(
        "--memory-per-node",
        type=_parse_bytes,
        help="memory resource per node, e.g. 4GiB (default: even split)",
    )
    p_up.add_argument("--gpus-per-node", type=int, default=0, help="GPUs per node")
    p_up.add_argument(
        "--object-store-memory",
        type=_parse_bytes,
        help="object store per node, e.g. 1GiB (default: even split)",
    )
    p_up.add_argument("--port", type=int, help="GCS port (default: a free one)")
    p_up.add_argument(
        "--temp-dir",
        help="Ray temp dir for this cluster "
        "(default: /tmp/shardemb-<uid>/c<port>, removed by down)",
    )
    p_up.add_argument(
        "--auth-mode",
        choices=AUTH_MODES,
        help="RAY_AUTH_MODE of every node (default: $RAY_AUTH_MODE, else token)",
    )
    p_up.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the nodes")
    p_up.set_defaults(func="shardemb.cluster.commands:_cmd_up")

    p_down = actions.add_parser(
        "down",
        help="stop the recorded cluster (only that one)",
        description="Stop the processes of the cluster in the state file, and no other Ray "
        "instance (never `ray stop`); remove the state file and the temp dir `up` chose.",
    )
    p_down.set_defaults(func="shardemb.cluster.commands:_cmd_down")

    p_status = actions.add_parser(
        "status",
        help="nodes, resources and address",
        description="Print the recorded cluster's nodes, their resources and the export "
        "line for drivers. Exits 1 if fewer nodes are alive than were started.",
    )
    p_status.add_argument("--json", action="store_true", help="print the status as JSON")
    p_status.set_defaults(func="shardemb.cluster.commands:_cmd_status")

    for p in (p_up, p_down, p_status):
        p.add_argument("--state-file", help=f"cluster state file (default: {default_state_file()})")
    return cluster


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


# ----------------------------------------------------------------------------------- bench


def _add_bench_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    # No option prefix of its own: "--quick" etc. must reach `rest` untouched (with "-",
    # argparse would take a leading "--quick" for an unknown option of this subparser).
    p = sub.add_parser(
        "bench",
        add_help=False,
        prefix_chars="+",
        help="run the benchmarks (from a source checkout; --help lists their flags)",
    )
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func="shardemb.bench:_bench")
    return p


if __name__ == "__main__":
    raise SystemExit(main())
