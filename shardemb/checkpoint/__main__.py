"""``python -m shardemb.checkpoint inspect PATH``: the same as ``shardemb checkpoint``."""

import sys

from shardemb.cli import main

sys.exit(main(["checkpoint", *sys.argv[1:]]))
