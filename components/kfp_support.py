"""Runtime helpers for the kfp component bodies (kept out of the bodies themselves)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

from components.errors import SlipwayError


@contextlib.contextmanager
def reporting_errors(stage: str) -> Iterator[None]:
    """Turn a SlipwayError into one clear message on stderr and a non-zero exit."""
    try:
        yield
    except SlipwayError as err:
        print(f"error: {stage}: {err}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
