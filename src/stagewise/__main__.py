"""``python -m stagewise``: see :mod:`stagewise.cli`."""

from stagewise.cli import main

raise SystemExit(main())
