"""Evaluate stage: test-split metrics, plots, and a self-contained HTML report.

Classification: accuracy, macro precision / recall / F1, per-class accuracy, the confusion
matrix and (binary tasks) the ROC curve. Regression: MAE, RMSE and R². Plots are PNGs
embedded in the HTML as data URIs, so the report renders offline; a Markdown summary goes
with it.

    python -m components.evaluate --model models/model \\
        --test data/processed/test.parquet --out reports
"""

from __future__ import annotations

import argparse
import base64
import html
import io
from pathlib import Path
from typing import Any

import numpy as np

from components.config import Params
from components.io import atomic_path, read_table, write_json, write_text
from components.train import encode_target, features_and_target, load_model

METRICS_FILE = "metrics.json"
EVALUATION_FILE = "evaluation.json"
REPORT_FILE = "report.html"
SUMMARY_FILE = "summary.md"
PLOTS_DIR = "plots"


def classification_metrics(
    y: np.ndarray, pred: np.ndarray, proba: np.ndarray | None, classes: list[str]
) -> dict[str, Any]:
    """Scores of class-index predictions against class-index truth."""
    from sklearn import metrics as m

    labels = list(range(len(classes)))
    cm = m.confusion_matrix(y, pred, labels=labels)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(cm.sum(1) > 0, np.diag(cm) / cm.sum(1), np.nan)
    out: dict[str, Any] = {
        "accuracy": float(m.accuracy_score(y, pred)),
        "precision_macro": float(m.precision_score(y, pred, labels=labels, average="macro",
                                                   zero_division=0)),
        "recall_macro": float(m.recall_score(y, pred, labels=labels, average="macro",
                                             zero_division=0)),
        "f1_macro": float(m.f1_score(y, pred, labels=labels, average="macro", zero_division=0)),
        "per_class_accuracy": {
            c: (None if np.isnan(v) else float(v)) for c, v in zip(classes, per_class, strict=True)
        },
        "confusion_matrix": cm.tolist(),
        "classes": classes,
    }
    if proba is not None and len(classes) == 2 and len(np.unique(y)) == 2:
        fpr, tpr, thresholds = m.roc_curve(y, proba[:, 1])
        out["roc_auc"] = float(m.roc_auc_score(y, proba[:, 1]))
        # roc_curve's first threshold is +inf, which JSON cannot hold.
        out["roc"] = {
            "fpr": fpr.tolist(), "tpr": tpr.tolist(),
            "thresholds": np.minimum(thresholds, np.finfo("float64").max).tolist(),
        }
    return out


def regression_metrics(y: np.ndarray, pred: np.ndarray) -> dict[str, Any]:
    from sklearn import metrics as m

    return {
        "mae": float(m.mean_absolute_error(y, pred)),
        "rmse": float(np.sqrt(m.mean_squared_error(y, pred))),
        "r2": float(m.r2_score(y, pred)),
    }


def evaluate(model_dir: str | Path, test_path: str | Path) -> dict[str, Any]:
    """Score the model on the test split.

    Returns:
        ``task``, ``metrics`` (scalars), the detail needed for plots, and the training record.
    """
    trainer, record = load_model(model_dir)
    test_df, meta = read_table(test_path)
    x, y_raw = features_and_target(test_df, meta)
    task = meta["task"]
    y, _ = encode_target(y_raw, task, record.get("classes"))
    pred = trainer.predict(x)
    result: dict[str, Any] = {"task": task, "dataset": meta, "training": record, "rows": len(y)}
    if task == "classification":
        detail = classification_metrics(y, pred, trainer.predict_proba(x), record["classes"])
    else:
        detail = regression_metrics(y, pred)
        result["predictions"] = {"actual": y.tolist(), "predicted": np.asarray(pred).tolist()}
    result["detail"] = detail
    result["metrics"] = {k: v for k, v in detail.items() if isinstance(v, float)}
    return result


# ---- plots -------------------------------------------------------------------------------

def _figure():
    import matplotlib

    matplotlib.use("Agg")  # no display; set here, not at import time
    import matplotlib.pyplot as plt

    return plt


def make_plots(result: dict[str, Any]) -> dict[str, bytes]:
    """PNG bytes by plot name."""
    plt = _figure()
    detail, pngs = result["detail"], {}

    def save(name: str, fig) -> None:
        buf = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buf, format="png", dpi=100)
        plt.close(fig)
        pngs[name] = buf.getvalue()

    if result["task"] == "classification":
        classes, cm = detail["classes"], np.array(detail["confusion_matrix"])
        size = min(10, 2.5 + 0.5 * len(classes))
        fig, ax = plt.subplots(figsize=(size, size))
        ax.imshow(cm, cmap="Blues")
        ax.set(xticks=range(len(classes)), yticks=range(len(classes)),
               xticklabels=classes, yticklabels=classes,
               xlabel="predicted", ylabel="actual", title="Confusion matrix (test)")
        plt.setp(ax.get_xticklabels(), rotation=45, ha="right")
        for (i, j), v in np.ndenumerate(cm):
            ax.text(j, i, str(v), ha="center", va="center",
                    color="white" if v > cm.max() / 2 else "black")
        save("confusion_matrix", fig)

        fig, ax = plt.subplots(figsize=(6, 3.5))
        acc = detail["per_class_accuracy"]
        ax.bar([str(k) for k in acc], [v or 0 for v in acc.values()], color="#4c72b0")
        ax.set(ylim=(0, 1.05), ylabel="accuracy (recall)", title="Per-class accuracy (test)")
        plt.setp(ax.get_xticklabels(), rotation=45, ha="right")
        save("per_class_accuracy", fig)

        if "roc" in detail:
            fig, ax = plt.subplots(figsize=(4.5, 4.5))
            ax.plot(detail["roc"]["fpr"], detail["roc"]["tpr"],
                    label=f"AUC {detail['roc_auc']:.3f}")
            ax.plot([0, 1], [0, 1], ls="--", color="grey")
            ax.set(xlabel="false positive rate", ylabel="true positive rate",
                   title=f"ROC (positive class {classes[1]!r})")
            ax.legend(loc="lower right")
            save("roc", fig)
    else:
        actual = np.array(result["predictions"]["actual"])
        predicted = np.array(result["predictions"]["predicted"])
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        ax.scatter(actual, predicted, s=12, alpha=0.7)
        lo = float(min(actual.min(), predicted.min()))
        hi = float(max(actual.max(), predicted.max()))
        ax.plot([lo, hi], [lo, hi], ls="--", color="grey")
        ax.set(xlabel="actual", ylabel="predicted", title="Predicted vs actual (test)")
        save("predicted_vs_actual", fig)
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.hist(predicted - actual, bins=20, color="#4c72b0")
        ax.set(xlabel="prediction error", ylabel="rows", title="Residuals (test)")
        save("residuals", fig)

    tuning = result["training"].get("tuning")
    if tuning:
        rows = sorted(tuning["results"], key=lambda r: r["trial"])
        labels = [f"{r['trial']}: {r['estimator']}" for r in rows]
        pos = np.arange(len(rows))
        fig, ax = plt.subplots(figsize=(max(5, 0.6 * len(rows) + 2), 3.8))
        ax.bar(pos - 0.2, [r["cv_mean"] for r in rows], 0.4,
               yerr=[r["cv_std"] for r in rows], label="cv (train)", color="#9db4d6")
        ax.bar(pos + 0.2, [r["val_score"] for r in rows], 0.4, label="validation",
               color="#4c72b0")
        best = tuning["best"]["trial"]
        ax.annotate("best", (best + 0.2, tuning["best"]["val_score"]), ha="center",
                    va="bottom", fontsize=9)
        ax.set(xticks=pos, xticklabels=labels, ylabel=rows[0]["metric"],
               title="Tuning trials")
        lo = min(min(r["cv_mean"] for r in rows), min(r["val_score"] for r in rows))
        ax.set_ylim(max(0.0, lo - 0.05), None)
        plt.setp(ax.get_xticklabels(), rotation=45, ha="right")
        ax.legend(loc="lower right")
        save("tuning_trials", fig)

    history = result["training"].get("history") or {}
    curves = {k: v for k, v in history.items() if v}
    if curves:
        # Loss and the metric on separate axes: their scales differ (MSE vs MAE, say).
        losses = {k: v for k, v in curves.items() if k.endswith("loss")}
        metrics = {k: v for k, v in curves.items() if not k.endswith("loss")}
        panels = [(n, c) for n, c in (("loss", losses), ("metric", metrics)) if c]
        fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.5), squeeze=False)
        for ax, (title, group) in zip(axes[0], panels, strict=True):
            for name, values in group.items():
                ax.plot(range(1, len(values) + 1), values, label=name)
            ax.set(xlabel="epoch", title=f"Training {title}")
            ax.legend()
        save("training_curves", fig)
    return pngs


# ---- reports -----------------------------------------------------------------------------

def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else html.escape(str(v))


def render_markdown(result: dict[str, Any]) -> str:
    ds, tr = result["dataset"], result["training"]
    lines = [
        f"# Evaluation: {ds['name']} ({result['task']})",
        "",
        f"Model **{tr['framework']}/{tr['estimator']}**, test split of {result['rows']} rows; "
        f"dataset md5 `{ds['md5']}`.",
        "",
        "| metric | test |",
        "|---|---|",
        *[f"| {k} | {v:.4f} |" for k, v in result["metrics"].items()],
        f"| cv {tr['cv']['metric']} (train, {len(tr['cv']['folds'])}-fold) | "
        f"{tr['cv']['mean']:.4f} ± {tr['cv']['std']:.4f} |",
    ]
    if "val_score" in tr:
        lines.append(f"| validation {tr['cv']['metric']} | {tr['val_score']:.4f} |")
    if tr.get("tuning"):
        from components.tune import results_markdown

        lines += ["", results_markdown(tr["tuning"]["results"], tr["tuning"]["best"]).strip()]
    per_class = result["detail"].get("per_class_accuracy")
    if per_class:
        lines += ["", "| class | accuracy |", "|---|---|"]
        lines += [f"| {c} | {'n/a' if v is None else f'{v:.4f}'} |" for c, v in per_class.items()]
    return "\n".join(lines) + "\n"


def render_html(result: dict[str, Any], pngs: dict[str, bytes]) -> str:
    """One self-contained page: no scripts, no external links, plots as data URIs."""
    ds, tr, detail = result["dataset"], result["training"], result["detail"]
    rows = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{_fmt(v)}</td></tr>"
        for k, v in result["metrics"].items()
    )
    cv = tr["cv"]
    rows += (f"<tr><th>cv {html.escape(cv['metric'])} (train)</th>"
             f"<td>{cv['mean']:.4f} ± {cv['std']:.4f}</td></tr>")
    if "val_score" in tr:
        rows += (f"<tr><th>validation {html.escape(cv['metric'])}</th>"
                 f"<td>{tr['val_score']:.4f}</td></tr>")
    extra = ""
    if "per_class_accuracy" in detail:
        extra += "<h2>Per-class accuracy</h2><table>" + "".join(
            f"<tr><th>{html.escape(str(c))}</th><td>{'n/a' if v is None else f'{v:.4f}'}</td></tr>"
            for c, v in detail["per_class_accuracy"].items()
        ) + "</table>"
        classes = detail["classes"]
        extra += ("<h2>Confusion matrix</h2><table><tr><th>actual \\ predicted</th>"
                  + "".join(f"<th>{html.escape(str(c))}</th>" for c in classes) + "</tr>"
                  + "".join(
                      f"<tr><th>{html.escape(str(c))}</th>"
                      + "".join(f"<td>{v}</td>" for v in row) + "</tr>"
                      for c, row in zip(classes, detail["confusion_matrix"], strict=True))
                  + "</table>")
    if tr.get("tuning"):
        tuning = tr["tuning"]
        metric = tuning["best"]["metric"]
        extra += (f"<h2>Tuning ({len(tuning['results'])} trials)</h2><table><tr><th>trial</th>"
                  f"<th>model</th><th>hyperparameters</th><th>cv {html.escape(metric)}</th>"
                  f"<th>validation {html.escape(metric)}</th></tr>")
        for r in sorted(tuning["results"], key=lambda r: -r["val_score"]):
            hp = ", ".join(f"{k}={v}" for k, v in r["hyperparameters"].items())
            best = " (best)" if r["trial"] == tuning["best"]["trial"] else ""
            extra += (f"<tr><th>{r['trial']}{best}</th><td>{html.escape(r['framework'])}/"
                      f"{html.escape(r['estimator'])}</td><td>{html.escape(hp)}</td>"
                      f"<td>{r['cv_mean']:.4f} ± {r['cv_std']:.4f}</td>"
                      f"<td>{r['val_score']:.4f}</td></tr>")
        extra += "</table>"
    figures = "".join(
        f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,'
        f'{base64.b64encode(png).decode()}"><figcaption>{html.escape(name.replace("_", " "))}'
        "</figcaption></figure>"
        for name, png in pngs.items()
    )
    hyper = html.escape(
        ", ".join(f"{k}={v}" for k, v in tr["hyperparameters"].items()) or "defaults"
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Slipway evaluation: {html.escape(ds['name'])}</title>
<style>
body {{ font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 980px; color: #222; }}
table {{ border-collapse: collapse; margin: .5em 0 1.5em; }}
th, td {{ border: 1px solid #ccc; padding: 3px 10px; text-align: right; }}
th {{ background: #f4f4f4; text-align: left; }}
figure {{ display: inline-block; margin: 0 1em 1em 0; }}
img {{ max-width: 460px; }}
code {{ background: #f4f4f4; padding: 0 3px; }}
</style></head><body>
<h1>Evaluation: {html.escape(ds['name'])} <small>({html.escape(result['task'])})</small></h1>
<p>Model <b>{html.escape(tr['framework'])}/{html.escape(tr['estimator'])}</b> ({hyper}),
trained on {html.escape(tr.get('device', 'cpu'))};
scored on the test split of {result['rows']} rows.
Dataset <code>{html.escape(ds['source'])}</code>, md5 <code>{html.escape(ds['md5'])}</code>.</p>
<h2>Metrics</h2><table>{rows}</table>
{extra}
<h2>Plots</h2>{figures}
</body></html>
"""


def write_outputs(result: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write metrics.json, evaluation.json, report.html, summary.md and plots/*.png."""
    out_dir = Path(out_dir)
    pngs = make_plots(result)
    paths = {
        "metrics": out_dir / METRICS_FILE,
        "evaluation": out_dir / EVALUATION_FILE,
        "report": out_dir / REPORT_FILE,
        "summary": out_dir / SUMMARY_FILE,
    }
    for name, png in pngs.items():
        with atomic_path(out_dir / PLOTS_DIR / f"{name}.png") as tmp:
            tmp.write_bytes(png)
    write_json(paths["evaluation"], result)
    write_text(paths["report"], render_html(result, pngs))
    write_text(paths["summary"], render_markdown(result))
    write_json(paths["metrics"], result["metrics"])  # last: its presence means all is written
    return paths


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model directory from train")
    parser.add_argument("--test", required=True, help="preprocessed test table")
    parser.add_argument("--out", required=True, help="directory for metrics, plots and report")


def _run(args: argparse.Namespace, params: Params) -> None:
    result = evaluate(args.model, args.test)
    paths = write_outputs(result, args.out)
    scores = ", ".join(f"{k} {v:.4f}" for k, v in result["metrics"].items())
    print(f"evaluate: {scores}; report {paths['report']}")


def main(argv: list[str] | None = None) -> int:
    from components.cli import stage_main

    return stage_main("evaluate", __doc__.splitlines()[0], _add_arguments, _run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
