"""What ``shardemb cluster up|down|status`` do once :mod:`shardemb.cli` has parsed them."""

from __future__ import annotations

import argparse
import json
import time

from shardemb.cluster.bringup import down, up
from shardemb.cluster.probe import export_line, format_status, status
from shardemb.cluster.state import load_state


def _cmd_up(args: argparse.Namespace) -> int:
    start = time.monotonic()
    info = up(
        args.workers,
        cpus_per_node=args.cpus_per_node,
        memory_per_node=args.memory_per_node,
        gpus_per_node=args.gpus_per_node,
        port=args.port,
        object_store_memory=args.object_store_memory,
        temp_dir=args.temp_dir,
        state_file=args.state_file,
        auth_mode=args.auth_mode,
        timeout=args.timeout,
    )
    print(
        f"Ray cluster with {info.num_nodes} nodes is up at {info.address} "
        f"({time.monotonic() - start:.1f}s; state file {info.state_file})"
    )
    print(export_line(info.address, info.auth_mode))
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    path, recorded = load_state(args.state_file)
    count = down(path)
    print(f"Stopped the Ray cluster at {recorded['address']} ({count} processes).")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    st = status(args.state_file)
    print(json.dumps(st, indent=2) if args.json else format_status(st))
    return 0 if st["alive_nodes"] >= st["expected_nodes"] else 1
