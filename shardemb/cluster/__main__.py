"""``python -m shardemb.cluster``: the same as ``shardemb cluster``."""

import sys

from shardemb.cli import cluster_main

sys.exit(cluster_main())
