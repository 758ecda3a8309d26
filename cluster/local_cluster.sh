#!/usr/bin/env bash
# A real multi-node Ray cluster on this machine (one raylet per node), for tests and demos.
#
#   cluster/local_cluster.sh up --workers 2 --cpus-per-node 1   # prints `export RAY_ADDRESS=...`
#   cluster/local_cluster.sh status
#   cluster/local_cluster.sh down                               # stops this cluster only
#
# Same as `shardemb cluster up|down|status`; run any of them with --help for the flags.
# PYTHON picks the interpreter (default: python3), so the nodes run the driver's Ray version.
set -euo pipefail

if [[ $# -lt 1 || "$1" == "-h" || "$1" == "--help" ]]; then
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
fi

# Run from a checkout without installing: put the repository root on the import path.
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="${repo_root}${PYTHONPATH:+:${PYTHONPATH}}"
exec "${PYTHON:-python3}" -m shardemb.cluster "$@"
