"""``python -m shardemb ...`` is the ``shardemb`` command."""

import os

# Before anything imports TensorFlow: its C++ start-up logging reads this once.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from shardemb.cli import main  # noqa: E402

raise SystemExit(main())
