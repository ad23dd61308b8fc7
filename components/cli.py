"""Shared plumbing for the stage CLIs (``python -m components.<stage>``) used by dvc.yaml.

Each stage module defines ``add_arguments(parser)`` and ``run(args, params)``; this module
parses the common flags, loads ``params.yaml`` once and turns a :class:`SlipwayError` into a
two-line message and exit status 2 instead of a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from components.config import Params, load_params
from components.errors import SlipwayError


def stage_main(
    stage: str,
    description: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace, Params], None],
    argv: list[str] | None = None,
) -> int:
    """Parse arguments, load params and run one stage; returns the exit status."""
    parser = argparse.ArgumentParser(prog=f"python -m components.{stage}", description=description)
    parser.add_argument("--params", default="params.yaml", help="settings file (params.yaml)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one setting, e.g. train.estimator=svm (repeatable)",
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params, args.overrides)
        run(args, params)
    except SlipwayError as err:
        print(f"error: {stage}: {err}", file=sys.stderr)
        return 2
    return 0
