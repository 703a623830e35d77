"""`python -m sipushd` is the `sipushd` command."""

from sipushd.cli import main

raise SystemExit(main())
