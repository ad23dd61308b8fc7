"""Entry point: ``python -m pipelines``."""

from pipelines.cli import main

raise SystemExit(main())
