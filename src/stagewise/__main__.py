"""``python -m stagewise``: see :mod:`stagewise.book.cli`."""

from stagewise.book.cli import main

raise SystemExit(main())
