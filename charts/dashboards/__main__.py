"""``python -m charts.dashboards`` (``make dashboards``): write the dashboards' JSON into
charts/slipway-monitoring/dashboards/ from their source in charts/dashboards/__init__.py."""

from __future__ import annotations

from pathlib import Path

from charts.dashboards import write_all


def main() -> int:
    for path in write_all():
        print(f"wrote {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
