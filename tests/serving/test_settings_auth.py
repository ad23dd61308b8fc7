"""Service settings from the environment, and bearer-token checks (file rotation included)."""

from __future__ import annotations

import math
import os
import time

import pytest

from components.errors import SlipwayError
from serving import auth as auth_module
from serving.auth import BearerAuth
from serving.settings import Settings


def test_defaults_and_overrides():
    assert Settings.from_env({}).max_concurrency == 64
    assert not Settings.from_env({}).auth_enabled
    s = Settings.from_env({"SLIPWAY_MAX_CONCURRENCY": "3", "SLIPWAY_RANGE_MARGIN": "inf",
                           "SLIPWAY_API_TOKEN": "t0k", "SLIPWAY_MODEL": " ",
                           "SLIPWAY_SOMETHING_ELSE": "ignored"})
    assert s.max_concurrency == 3 and math.isinf(s.range_margin) and s.auth_enabled
    assert s.model is None
    assert "t0k" not in repr(s)
    blank = Settings.from_env({"SLIPWAY_API_TOKEN": "", "SLIPWAY_API_TOKEN_FILE": " "})
    assert blank.api_token is None and blank.api_token_file is None
    assert not blank.auth_enabled


def test_invalid_values_are_named():
    with pytest.raises(SlipwayError) as info:
        Settings.from_env({"SLIPWAY_MAX_CONCURRENCY": "0", "SLIPWAY_DRIFT_WINDOW": "many"})
    message = str(info.value)
    assert "SLIPWAY_MAX_CONCURRENCY='0'" in message and "SLIPWAY_DRIFT_WINDOW='many'" in message


def test_bearer_token_from_env():
    auth = BearerAuth(token="s3cret")
    assert auth.check(b"Bearer s3cret") and auth.check(b"bearer  s3cret ")
    for header in (None, b"", b"s3cret", b"Basic s3cret", b"Bearer", b"Bearer s3cre",
                   b"Bearer s3cret2"):
        assert not auth.check(header)


def test_token_file_is_reread_when_it_changes(tmp_path, monkeypatch):
    monkeypatch.setattr(auth_module, "RECHECK_S", 0.0)
    secret = tmp_path / "token"
    secret.write_text("first\n")
    auth = BearerAuth(token_file=secret)
    assert auth.check(b"Bearer first") and auth.usable()
    secret.write_text("second\n")
    os.utime(secret, (time.time() + 5, time.time() + 5))  # a new mtime, as a secret update gives
    assert auth.check(b"Bearer second") and not auth.check(b"Bearer first")


def test_missing_or_empty_token_file_fails_closed(tmp_path, caplog):
    missing = BearerAuth(token_file=tmp_path / "nope")
    assert not missing.usable() and not missing.check(b"Bearer ")
    empty = tmp_path / "empty"
    empty.write_text("\n")
    assert not BearerAuth(token_file=empty).check(b"Bearer x")
    assert "every protected request is refused" in caplog.text
