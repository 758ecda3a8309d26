"""``python -m shardemb.checkpoint``: the same as ``shardemb checkpoint``."""

import sys

from shardemb.checkpoint import main

sys.exit(main())
