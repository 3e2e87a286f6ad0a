"""`python -m stepline_server …`: the same commands as `stepline …`."""

from __future__ import annotations

from stepline_server.cli import main

raise SystemExit(main())
