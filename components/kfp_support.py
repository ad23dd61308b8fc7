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


def write_metrics_file(*artifacts) -> None:
    """Write each metrics artifact's metadata to its file as JSON.

    KFP keeps logged metrics in metadata only; kfp.local's cache counts an output without
    a file as missing, so tasks with metrics outputs were never reused. The file also
    makes the metrics readable from the artifact store on a cluster.
    """
    import json
    from pathlib import Path

    for artifact in artifacts:
        Path(artifact.path).parent.mkdir(parents=True, exist_ok=True)
        Path(artifact.path).write_text(json.dumps(artifact.metadata, indent=2, sort_keys=True))
