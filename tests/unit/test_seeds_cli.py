"""``make seeds``' command line: a mistyped workflow name is a usage error naming it."""

from __future__ import annotations

import pytest

from pipelines.seeds import main


@pytest.mark.parametrize(("only", "message"), [
    ("linaer", "unknown workflow 'linaer': did you mean 'linear'"),
    (",", "--only names no workflow"),
])
def test_unknown_workflow_is_a_usage_error(only, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--only", only])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
