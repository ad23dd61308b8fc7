"""Run-time settings of the inference service, read from environment variables.

Everything an operator may change without rebuilding the service lives here, validated once
when the service starts (an unknown value is an error that names the variable). Nothing is
read at import time: :func:`Settings.from_env` is called by the service's ``__init__``.

* ``SLIPWAY_MODEL`` - ``name:version``, ``name`` (its latest) or a bare version; unset: the
  newest Slipway model in the store.
* ``SLIPWAY_API_TOKEN`` - a bearer token required on every path but the probes and
  ``/metrics``; unset (and no token file): authentication is off.
* ``SLIPWAY_API_TOKEN_FILE`` - a file holding the token (a mounted Kubernetes secret);
  re-read when it changes.
* ``SLIPWAY_MAX_CONCURRENCY`` (64) - prediction requests in flight per worker; more get 503
  with ``Retry-After: SLIPWAY_RETRY_AFTER_S`` (1).
* ``SLIPWAY_MAX_BODY_BYTES`` (8 MiB) and ``SLIPWAY_MAX_INSTANCES`` (4096) - caps on a JSON
  request (413 above them).
* ``SLIPWAY_MAX_BINARY_BODY_BYTES`` (128 MiB) and ``SLIPWAY_MAX_BINARY_ROWS`` (1,000,000) -
  caps on a ``.npy`` / Arrow request.
* ``SLIPWAY_MAX_DRAIN_BYTES`` (256 MiB) - a body over its cap is read and discarded up to
  this size before the 413 goes out, so clients that send the whole body before reading
  (Python's http.client: urllib, requests) receive it; larger ones are cut off at once.
* ``SLIPWAY_MAX_BATCH_ROWS`` (4096) - rows the model sees in one call: the cap on adaptive
  batches and the chunk size of big requests.
* ``SLIPWAY_INLINE_BELOW_MS`` (1) - model calls that take less than this (a moving average)
  run on the event loop instead of the inference thread: the thread hand-off costs more
  than a linear model's call. 0 sends every call to the thread.
* ``SLIPWAY_DRAIN_TIMEOUT_S`` (10) - on SIGTERM, how long to wait for clients to close their
  keep-alive connections (each answer then says ``Connection: close``) before stopping.
* ``SLIPWAY_RANGE_MARGIN`` (0.5) - numeric values may pass the training range by this
  fraction of its width on each side; ``inf`` turns the range check off.
* ``SLIPWAY_DRIFT_WINDOW`` (1000) - rows in the sliding window of the drift score (PSI).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from components.errors import SlipwayError

ENV_PREFIX = "SLIPWAY_"
MiB = 1 << 20


class Settings(BaseModel):
    """Validated service settings; field ``x`` comes from ``SLIPWAY_X``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str | None = None
    api_token: str | None = Field(default=None, repr=False)
    api_token_file: Path | None = None
    max_concurrency: int = Field(64, ge=1, le=100_000)
    retry_after_s: int = Field(1, ge=0, le=3600)
    max_body_bytes: int = Field(8 * MiB, ge=1024)
    max_instances: int = Field(4096, ge=1)
    max_binary_body_bytes: int = Field(128 * MiB, ge=1024)
    max_binary_rows: int = Field(1_000_000, ge=1)
    max_drain_bytes: int = Field(256 * MiB, ge=0)
    max_batch_rows: int = Field(4096, ge=1, le=1_000_000)
    inline_below_ms: float = Field(1.0, ge=0, le=1000)
    drain_timeout_s: float = Field(10.0, ge=0, le=3600)
    range_margin: float = Field(0.5, ge=0)
    drift_window: int = Field(1000, ge=10, le=10_000_000)

    @field_validator("model", "api_token", "api_token_file", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        """A blank ``SLIPWAY_X=`` means unset, not an empty token, path or model spec."""
        return None if isinstance(value, str) and not value.strip() else value

    @property
    def auth_enabled(self) -> bool:
        return self.api_token is not None or self.api_token_file is not None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read ``SLIPWAY_*`` variables (unknown ``SLIPWAY_`` names are ignored: other
        Slipway tools share the prefix).

        Raises:
            SlipwayError: naming each variable whose value is invalid.
        """
        environ = os.environ if environ is None else environ
        raw = {}
        for name in cls.model_fields:
            key = ENV_PREFIX + name.upper()
            if key in environ:
                raw[name] = environ[key]
        try:
            return cls.model_validate(raw)
        except ValidationError as err:
            problems = "; ".join(
                f"{ENV_PREFIX}{str(e['loc'][0]).upper()}={raw.get(str(e['loc'][0]))!r}: {e['msg']}"
                for e in err.errors()
            )
            raise SlipwayError(f"invalid service settings: {problems}",
                               "correct the environment variables named above") from None
