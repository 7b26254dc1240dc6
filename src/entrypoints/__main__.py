"""``python -m entrypoints``: the same as the ``loader-ws-trades`` command."""

from entrypoints.cli import main

raise SystemExit(main())
