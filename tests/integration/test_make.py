"""The Makefile front door and the CI entry point.

``make help`` lists every target the Makefile defines, each with its ``## `` description
(targets are read from the Makefile itself, so a new undocumented target fails here), and
``.ci/run`` runs the suite through ``make test``.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
MAKEFILE = REPO / "Makefile"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# A rule line: "name: prerequisites", not a variable assignment (":=", "::=", "?=").
_RULE = re.compile(r"^([A-Za-z0-9_.-]+)\s*:(?![:=])(.*)$")

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")


def makefile_targets() -> dict[str, str]:
    """Explicit targets of the Makefile -> their ``## `` description ('' when none)."""
    targets = {}
    for line in MAKEFILE.read_text().splitlines():
        m = _RULE.match(line)
        if not m or m.group(1).startswith("."):  # .PHONY and other special targets
            continue
        _, _, doc = m.group(2).partition("## ")
        targets[m.group(1)] = doc.strip()
    return targets


def phony_targets() -> set[str]:
    text = MAKEFILE.read_text().replace("\\\n", " ")
    return {t for line in re.findall(r"^\.PHONY\s*:(.*)$", text, flags=re.MULTILINE)
            for t in line.split()}


def test_every_target_is_documented_and_phony():
    targets = makefile_targets()
    assert {"help", "setup", "run", "compile", "repro", "push", "pull", "test"} <= set(targets)
    undocumented = sorted(t for t, doc in targets.items() if not doc)
    assert undocumented == [], f"targets without a `## ` description: {undocumented}"
    assert phony_targets() == set(targets)


def test_make_help_lists_every_target(run_cmd):
    proc = run_cmd(["make", "--no-print-directory", "-C", REPO, "help"], cwd=REPO, timeout=60)
    listed = {}
    for line in _ANSI.sub("", proc.stdout).splitlines():
        name, _, doc = line.strip().partition(" ")
        listed[name] = doc.strip()
    assert listed == makefile_targets()
    # help is the default goal: plain `make` prints the same list.
    plain = run_cmd(["make", "--no-print-directory", "-C", REPO], cwd=REPO, timeout=60)
    assert plain.stdout == proc.stdout


def test_ci_runs_make_test(run_cmd):
    script = REPO / ".ci" / "run"
    assert os.access(script, os.X_OK), ".ci/run is not executable"
    commands = [line.strip() for line in script.read_text().splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    assert any(re.match(r"make\s+test(\s|$)", c) for c in commands), commands
    # `make test` runs pytest through the environment's python with PYTEST_ARGS (dry run:
    # nothing is executed): the whole suite without a GPU (CI's case); with one, the suite
    # with CUDA hidden, then the gpu tests.
    dry = run_cmd(["make", "--no-print-directory", "-n", "-C", REPO, "test",
                   "PYTEST_ARGS=-p no:cacheprovider"], cwd=REPO, timeout=60)
    for command in (r"\.venv/bin/python -m pytest -p no:cacheprovider;",
                    r'CUDA_VISIBLE_DEVICES= \.venv/bin/python -m pytest -m "not gpu" '
                    r"-p no:cacheprovider \|\| \[ \$\? -eq 5 \];",
                    r"\.venv/bin/python -m pytest -m gpu -p no:cacheprovider \|\| "
                    r"\[ \$\? -eq 5 \];"):
        assert re.search(rf"^\s*{command} \\$", dry.stdout, flags=re.MULTILINE), \
            (command, dry.stdout)


def test_make_run_goes_through_dvc(run_cmd):
    """`make run` is DVC's stage (dry run: nothing is executed): `dvc repro` versions the
    model; SET= makes it an experiment (`dvc exp run -S`); CACHE=0 forces a rerun with the
    kfp cache off; another PIPELINE runs directly."""

    def dry(*args: str) -> str:
        return run_cmd(["make", "--no-print-directory", "-n", "-C", REPO, "run", *args],
                       cwd=REPO, timeout=60).stdout

    plain = dry()
    assert re.search(r"^export SLIPWAY_CACHE=1 SLIPWAY_RUNNER=subprocess; \\\n"
                     r"\.venv/bin/dvc repro +training$", plain, flags=re.MULTILINE), plain
    assert "SLIPWAY_RUNNER=containers;" in dry("RUNNER=containers")
    forced = dry("CACHE=0")
    assert "export SLIPWAY_CACHE=0 " in forced and "dvc repro --force training" in forced
    experiment = dry("SET=train.estimator=svm dataset=auto_mpg")
    assert ".venv/bin/dvc exp run -S train.estimator=svm -S dataset=auto_mpg" in experiment
    tuning = dry("PIPELINE=tuning")
    assert ".venv/bin/python -m pipelines run tuning" in tuning and "dvc" not in \
        tuning.replace("dvc-remote", "")
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["training"]
    assert stage["cmd"].startswith("python -m pipelines run training --export ")
