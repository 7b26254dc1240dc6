"""``python -m entrypoints``: the same as the ``loader-ws-trades`` command."""

from entrypoints.launch import main

raise SystemExit(main())
