"""Serving benchmark against MLServer (``make bench-serve``): Slipway vs MLServer vs stock BentoML.

Side by side in one run, on this machine, for each model version given (by default the
newest; the recorded run used a logistic regression and the default random forest on
breast_cancer):

* ``slipway v1``  - ``POST /predict`` with ``{"instances": [[...]]}``;
* ``slipway v2``  - ``POST /v2/models/<name>/infer`` with one ``[N, 30]`` FP64 tensor;
* ``mlserver v2`` - MLServer 1.7.1 with its scikit-learn runtime (``mlserver-sklearn``),
  served from a virtual environment of its own that this benchmark creates
  (``build/benchmarks/mlserver-venv``; MLServer pins an older FastAPI than BentoML's), on
  the same fitted preprocessing and estimator (exported for it as a scikit-learn
  ``Pipeline`` in joblib, MLServer's format: only MLServer reads that file), the same
  ``[N, 30]`` tensor, inference in its server process (``parallel_workers: 0``), asking
  for both ``predict`` and ``predict_proba`` as Slipway answers
  a label and the probabilities;
* ``stock v1``    - a stock BentoML service as in BentoML's quickstart
  (``benchmarks/serving_baselines.py``).

Each (server, body) is started fresh, measured at 1, 8 and 32 connections with single-row
and 64-row bodies (``fresh``), then driven by a 32-connection burst, then measured again
(``after burst``) so a stall after bursts cannot hide. The load generator is
``benchmarks/serving_load.py`` (closed loop, keep-alive, on the same cores). Ratios are of
this run only; nothing here is a pass/fail test. Raw results: ``build/benchmarks/peers.json``.

    python -m benchmarks.serve_peers [--models TAG,TAG] [--seconds S] [--burst S]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.serve import (
    HOST,
    REPO,
    Server,
    ServerProcess,
    free_port,
    hardware,
    sample_rows,
    versions,
)
from benchmarks.serving_load import LoadResult, run_load

MLSERVER_VERSION = "1.7.1"
BUILD = REPO / "build" / "benchmarks"
VENV = BUILD / "mlserver-venv"
LEVELS = (1, 8, 32)
SIZES = (1, 64)


def mlserver_venv() -> Path:
    """MLServer and its scikit-learn runtime in a venv of their own (created once), with the
    scikit-learn version of this environment so the exported pipeline loads unchanged."""
    from importlib import metadata

    mlserver = VENV / "bin" / "mlserver"
    if mlserver.exists():
        return mlserver
    print(f"  creating {VENV} with mlserver=={MLSERVER_VERSION} (a few minutes, once)",
          flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run([str(VENV / "bin" / "pip"), "install", "-q",
                    f"mlserver=={MLSERVER_VERSION}", f"mlserver-sklearn=={MLSERVER_VERSION}",
                    f"scikit-learn=={metadata.version('scikit-learn')}",
                    f"numpy=={metadata.version('numpy')}"], check=True)
    return mlserver


def export_for_mlserver(model: Any, folder: Path) -> str:
    """The model's fitted numeric preprocessing and estimator as one scikit-learn Pipeline
    (joblib) with an MLServer ``model-settings.json``; returns the MLServer model name."""
    import joblib
    from sklearn.pipeline import Pipeline

    numeric = model.transformer.named_transformers_["num"]
    pipeline = Pipeline([("pre", numeric), ("model", model.trainer.model)])
    name = "peer"
    target = folder / name
    target.mkdir(parents=True, exist_ok=True)
    joblib.dump(pipeline, target / "model.joblib")
    (target / "model-settings.json").write_text(json.dumps({
        "name": name, "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": "./model.joblib", "version": "v1"}}))
    # parallel_workers 0: inference in the server process. MLServer 1.7.1's default pool of
    # inference worker processes does not start with the uvloop its install resolves to
    # here (0.23: "no current event loop" in the worker); in-process it also skips a hop.
    (folder / "settings.json").write_text(json.dumps({"debug": False,
                                                      "parallel_workers": 0}))
    return name


def _start_mlserver(folder: Path, log_dir: Path) -> ServerProcess:
    """``mlserver start`` on a free port of 127.0.0.1 (its ports come from the environment)."""
    binary = mlserver_venv()
    port = free_port()
    env = {"MLSERVER_HTTP_PORT": str(port), "MLSERVER_GRPC_PORT": str(free_port()),
           "MLSERVER_METRICS_PORT": str(free_port()), "MLSERVER_HOST": HOST}
    proc = ServerProcess(lambda _: [str(binary), "start", str(folder)], env,
                         log_dir / "mlserver.log")
    proc.port, proc.url, proc.name = port, f"http://{HOST}:{port}", "mlserver"
    return proc


def wait_ready(proc: ServerProcess, path: str, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.proc.poll() is not None:
            raise SystemExit(f"{proc.name} exited; see {proc.log_path}")
        try:
            with urllib.request.urlopen(f"{proc.url}{path}", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.25)
    proc.stop()
    raise SystemExit(f"{proc.name} not ready after {timeout:.0f} s; see {proc.log_path}")


def v2_body(rows: np.ndarray, outputs: list[str]) -> bytes:
    return json.dumps({"inputs": [{"name": "input-0", "shape": list(rows.shape),
                                   "datatype": "FP64", "data": rows.ravel().tolist()}],
                       "outputs": [{"name": n} for n in outputs]}).encode()


def measure(port: int, path: str, bodies: dict[int, bytes], seconds: float,
            burst: float) -> dict[str, dict[int, dict[int, LoadResult]]]:
    """Fresh points, a burst, the same points again."""
    out: dict[str, dict[int, dict[int, LoadResult]]] = {"fresh": {}, "after burst": {}}

    def points(phase: str) -> None:
        for n, body in bodies.items():
            out[phase][n] = {}
            for c in LEVELS:
                out[phase][n][c] = run_load(HOST, port, path, body, concurrency=c,
                                            rows_per_request=n, max_requests=10**6,
                                            max_seconds=seconds,
                                            warmup_requests=max(20, 2 * c))

    points("fresh")
    run_load(HOST, port, path, bodies[1], concurrency=32, max_requests=10**7,
             max_seconds=burst, warmup_requests=0)
    points("after burst")
    return out


def _row(r: LoadResult) -> dict[str, Any]:
    return {"req_per_s": r.req_per_s, "p50_ms": r.percentile_ms(0.5),
            "p99_ms": r.percentile_ms(0.99), "statuses": dict(r.statuses), "errors": r.errors}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=os.environ.get("SLIPWAY_MODEL", ""),
                        help="comma-separated model specs (default: the newest model)")
    parser.add_argument("--seconds", type=float, default=2.0, help="per point (2)")
    parser.add_argument("--burst", type=float, default=10.0, help="burst length (10)")
    parser.add_argument("--json", default=str(BUILD / "peers.json"))
    args = parser.parse_args(argv)

    from serving.model import LoadedModel

    specs = [s for s in args.models.split(",")] or [""]
    log_dir = BUILD / "serve-logs"
    mlserver_venv()
    report: dict[str, Any] = {"hardware": hardware(), "versions": versions(),
                              "mlserver": MLSERVER_VERSION, "levels": LEVELS,
                              "seconds": args.seconds, "burst_seconds": args.burst,
                              "load_before": os.getloadavg(), "models": {}}
    print(f"bench-serve (peers): {hardware()}; mlserver {MLSERVER_VERSION}")
    print("  " + ", ".join(f"{k} {v}" for k, v in versions().items()))
    for spec in specs:
        model = LoadedModel.from_store(spec)
        rows = {n: sample_rows(model.schema, n, seed=n) for n in SIZES}
        estimator = model.lineage.get("estimator")
        print(f"\nmodel {model.tag} ({estimator})", flush=True)
        results: dict[str, Any] = {}
        cases = [
            ("slipway v1", "slipway", "/predict",
             {n: json.dumps({"instances": rows[n].tolist()}).encode() for n in SIZES}),
            ("slipway v2", "slipway", f"/v2/models/{model.name}/infer",
             {n: v2_body(rows[n], ["label", "probabilities"]) for n in SIZES}),
            ("mlserver v2", "mlserver", "/v2/models/peer/infer",
             {n: v2_body(rows[n], ["predict", "predict_proba"]) for n in SIZES}),
            ("stock v1", "stock", "/predict",
             {n: json.dumps({"input_data": rows[n].tolist()}).encode() for n in SIZES}),
        ]
        for label, kind, path, bodies in cases:
            print(f"  measuring {label} ...", flush=True)
            if kind == "mlserver":
                folder = BUILD / "mlserver-models" / model.version
                export_for_mlserver(model, folder)
                proc = _start_mlserver(folder, log_dir)
                ready = "/v2/models/peer/ready"
            else:
                proc = Server(kind, model.tag, log_dir)
                ready = "/readyz"
            try:
                wait_ready(proc, ready)
                results[label] = measure(proc.port, path, bodies, args.seconds, args.burst)
            finally:
                proc.stop()
        report["models"][model.tag] = {
            "estimator": estimator,
            "results": {label: {phase: {n: {c: _row(r) for c, r in per.items()}
                                        for n, per in by.items()}
                                for phase, by in res.items()}
                        for label, res in results.items()}}
        print_table(results)
    report["load_after"] = os.getloadavg()
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"\n1-minute load average {report['load_before'][0]:.2f} before, "
          f"{report['load_after'][0]:.2f} after (on {os.cpu_count()} cores); raw: {out}")
    return 0


def print_table(results: dict[str, Any]) -> None:
    labels = list(results)
    for n in SIZES:
        for phase in ("fresh", "after burst"):
            print(f"\n  {n}-row, {phase}: req/s · p50 ms · p99 ms")
            print(f"  {'conn':>4}  " + "  ".join(f"{lb:<24}" for lb in labels)
                  + "  slipway v2 / mlserver (req/s)")
            for c in LEVELS:
                cells = []
                for lb in labels:
                    r = results[lb][phase][n][c]
                    bad = f" !{r.rejected + r.errors}" if r.rejected or r.errors else ""
                    cells.append(f"{r.req_per_s:6.0f} · {r.percentile_ms(0.5):5.1f} · "
                                 f"{r.percentile_ms(0.99):6.1f}{bad}".ljust(24))
                ratio = ""
                if "slipway v2" in results and "mlserver v2" in results:
                    a = results["slipway v2"][phase][n][c].req_per_s
                    b = results["mlserver v2"][phase][n][c].req_per_s
                    ratio = f"{a / b:5.2f}x" if b else "-"
                print(f"  {c:>4}  " + "  ".join(cells) + "  " + ratio)


if __name__ == "__main__":
    raise SystemExit(main())
