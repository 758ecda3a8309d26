"""``python -m shardemb.cluster``: the same as ``shardemb cluster``."""

import sys

from shardemb.cluster import main

sys.exit(main())
