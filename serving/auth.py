"""Optional bearer-token authentication.

The token comes from ``SLIPWAY_API_TOKEN`` or from the file named by
``SLIPWAY_API_TOKEN_FILE`` (a mounted Kubernetes secret). The file is re-read when its
modification time changes (checked at most once a second), so a rotated secret takes
effect without a restart. When both are set either token is accepted, which lets a
rotation overlap. Comparison is constant-time.

An unreadable or empty token file leaves authentication on with no valid token: every
protected request gets 401 and the service reports not ready, rather than falling open.
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
import time
from pathlib import Path

logger = logging.getLogger("slipway.serving")

RECHECK_S = 1.0


class BearerAuth:
    """Check ``Authorization: Bearer <token>`` headers.

    Args:
        token: a token given directly (environment variable).
        token_file: a file whose stripped content is a token.
    """

    def __init__(self, token: str | None = None, token_file: Path | None = None) -> None:
        self._static = token.strip().encode() if token and token.strip() else None
        self._file = Path(token_file) if token_file else None
        self._file_token: bytes | None = None
        self._mtime: float | None = None
        self._checked = 0.0
        self._lock = threading.Lock()
        self._warned = False
        if self._file is not None:
            self._refresh(force=True)

    def _refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._checked < RECHECK_S:
            return
        with self._lock:
            self._checked = now
            assert self._file is not None
            try:
                mtime = os.stat(self._file).st_mtime
                if mtime == self._mtime and not force:
                    return
                token = self._file.read_bytes().strip()
            except OSError as err:
                self._file_token, self._mtime = None, None
                self._warn(f"cannot read the API token file {self._file}: {err.strerror}")
                return
            self._mtime = mtime
            self._file_token = token or None
            if token:
                self._warned = False
            else:
                self._warn(f"the API token file {self._file} is empty")

    def _warn(self, message: str) -> None:
        if not self._warned:
            self._warned = True
            logger.error("slipway: %s; every protected request is refused (401)", message)

    def tokens(self) -> list[bytes]:
        if self._file is not None:
            self._refresh()
        return [t for t in (self._static, self._file_token) if t]

    def usable(self) -> bool:
        """Whether at least one valid token is configured."""
        return bool(self.tokens())

    def check(self, authorization: bytes | None) -> bool:
        """Whether an ``Authorization`` header value carries a valid token."""
        if not authorization:
            return False
        scheme, _, presented = authorization.strip().partition(b" ")
        if scheme.lower() != b"bearer" or not presented.strip():
            return False
        presented = presented.strip()
        ok = False
        for token in self.tokens():
            ok |= hmac.compare_digest(presented, token)  # no early exit: constant time
        return ok
