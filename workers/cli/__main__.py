"""``python -m workers.cli``: what the supervisor, tests and containers run."""

from __future__ import annotations

import sys

from workers.cli.main import main

sys.exit(main())
