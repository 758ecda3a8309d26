"""``python -m shardemb ...`` is the ``shardemb`` command."""

from shardemb.cli import main

raise SystemExit(main())
