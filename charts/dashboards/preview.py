"""Render every dashboard's panels to a PNG from a real Prometheus (``make dashboards-preview``).

No Grafana server can run here, so this draws the panels itself with matplotlib from the
Prometheus query API: it starts the real stack of :class:`charts.dashboards.harness.Stack`
(a pipeline run pushing to a Pushgateway, ``bentoml serve`` of its model under load, a
Prometheus scraping both as the charts' ServiceMonitors would), lets the load run, then
queries each target of the committed dashboard JSON over the window and plots it: time series
as lines (with their threshold lines), stats and tables as their last values, bar gauges as
bars, state timelines as steps.

    python -m charts.dashboards.preview --out docs/dashboards [--seconds 90]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path

from charts import dashboards
from charts.dashboards import harness

VALUES = {"namespace": harness.NAMESPACE, "service": harness.SERVICE, "model_version": ".*",
          "pipeline": "training", "model_name": ".*"}


def legend(fmt: str, labels: dict[str, str]) -> str:
    out = fmt
    for k, v in labels.items():
        out = out.replace("{{" + k + "}}", v)
    return out


def draw(prom: harness.Prometheus, uid: str, start: float, end: float, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    board = json.loads((dashboards.OUT_DIR / f"{uid}.json").read_text())
    panels = board["panels"]
    cols = 3
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 6, rows * 3.2), squeeze=False)
    where = (f"namespace {harness.NAMESPACE}, service {harness.SERVICE}"
             if uid == "slipway-inference" else "pipeline training, every model")
    fig.suptitle(f"{board['title']}  ({where}; drawn from Prometheus by "
                 "make dashboards-preview, not by Grafana)", fontsize=13)
    step = max(1.0, (end - start) / 200)
    for ax, panel in zip(axes.flat, panels, strict=False):
        ax.set_title(panel["title"], fontsize=10)
        unit = panel["fieldConfig"]["defaults"].get("unit", "short")
        kind = panel["type"]
        drew = False
        for t in panel["targets"]:
            expr = harness.substitute(t["expr"], VALUES)
            if kind in ("timeseries", "state-timeline"):
                for series in prom.query_range(expr, start, end, step):
                    xs = [float(v[0]) - end for v in series["values"]]
                    ys = [float(v[1]) for v in series["values"]]
                    if not any(ys) and len(panel["targets"]) == 1:
                        continue  # an all-zero series (a 4xx reason never seen): no line
                    ax.plot(xs, ys, drawstyle="steps-post" if kind == "state-timeline" else
                            "default", label=legend(t.get("legendFormat", ""), series["metric"]))
                    drew = True
            else:
                result = prom.query(expr)
                labels = [legend(t.get("legendFormat", ""), r["metric"]) for r in result]
                values = [float(r["value"][1]) for r in result]
                if kind == "bargauge" and values:
                    ax.barh(labels, values)
                    drew = True
                elif values:
                    text = "\n".join(f"{lab}: {_fmt(v, unit)}" for lab, v in
                                     zip(labels, values, strict=True))
                    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=11,
                            transform=ax.transAxes, wrap=True)
                    ax.set_xticks([])
                    ax.set_yticks([])
                    drew = True
        for step_ in panel["fieldConfig"]["defaults"].get("thresholds", {}).get("steps", []):
            if step_["value"] is not None and kind == "timeseries":
                ax.axhline(step_["value"], color=step_["color"], linestyle="--", linewidth=1)
        if not drew:
            ax.text(0.5, 0.5, "no data here", ha="center", va="center", color="grey",
                    transform=ax.transAxes)
        elif kind in ("timeseries", "state-timeline"):
            ax.set_xlabel("seconds before the end", fontsize=8)
            ax.set_ylabel(unit, fontsize=8)
            if kind == "state-timeline":
                ax.set_yticks([0, 1], ["rejected", "passed"])
            handles, _ = ax.get_legend_handles_labels()
            if 0 < len(handles) <= 8:
                ax.legend(fontsize=7, loc="upper left")
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{uid}.png"
    fig.savefig(path, dpi=70)
    plt.close(fig)
    return path


def _fmt(v: float, unit: str) -> str:
    if unit == "s":
        return f"{v:.0f} s" if v >= 10 else f"{v:.3f} s"
    if unit == "bytes":
        return f"{v / 2**20:.0f} MiB"
    return f"{v:g}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/dashboards"))
    parser.add_argument("--seconds", type=float, default=90.0, help="seconds of load")
    args = parser.parse_args(argv)
    if missing := harness.missing_tools():
        parser.error(f"needs {', '.join(missing)}: run `make deploy-tools`")
    with tempfile.TemporaryDirectory(prefix="slipway-preview-") as tmp:
        work = Path(tmp)
        env = {"BENTOML_HOME": str(work / "bentoml")}
        os.makedirs(env["BENTOML_HOME"])
        print("==> pipeline run, bentoml serve, Pushgateway, Prometheus (a few minutes)")
        with harness.Stack(work, env) as stack:
            stack.start_load()
            start = time.time()
            time.sleep(args.seconds)
            end = time.time()
            for uid in dashboards.DASHBOARDS:
                print(f"wrote {draw(stack.prometheus, uid, start, end, args.out)}")
            print(f"load: {stack.counts}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
