"""Serving benchmark (``make bench-serve``): Slipway's service against three baselines.

Measured in one run, on this machine, with the same model version and the same request
rows, at several concurrencies, for single-row and 64-row requests:

* ``in-process``  - the model called directly (preprocess + predict_proba), one call at a
  time: what a request costs without any server;
* ``bare``        - a bare Starlette app on uvicorn serving the same model;
* ``stock``       - a stock BentoML service as in BentoML's quickstart (``@bentoml.api``);
* ``stock-batch`` - the same with ``batchable=True`` as in BentoML's adaptive batching guide;
* ``slipway``     - ``serving.service:Slipway``, the real service (validation, auth off,
  adaptive micro-batching, metrics, drift).

Each server runs alone (started, measured, stopped) on 127.0.0.1; the load generator is
closed-loop (``benchmarks/serving_load.py``), bounded by request count and time; each
point is measured ``--repeat`` times (3) and the run with the median throughput is shown.
Then the large-batch path: one request of 4,096 rows as JSON rows, JSON columns, ``.npy``
and Arrow, and of 100,000 rows as ``.npy`` and Arrow. The summary prints the issue's targets
as ratios measured in this run; nothing here is a pass/fail test. Raw results go to
``build/benchmarks/serve.json``.

Every ``bentoml serve`` empties the Prometheus directory under its ``BENTOML_HOME`` when it
starts: do not benchmark while another BentoML server uses the same home (its metrics go).

    python -m benchmarks.serve [--quick] [--repeat N] [--model TAG] [--json PATH]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.serving_load import LoadResult, run_load

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
SERVERS = ("bare", "stock", "stock-batch", "slipway")
ARROW = "application/vnd.apache.arrow.stream"


# ---- request data ------------------------------------------------------------------------

def sample_rows(schema: dict[str, Any], n: int, seed: int = 0) -> np.ndarray:
    """Rows drawn inside each numeric feature's training range (numeric-only schemas)."""
    rng = np.random.default_rng(seed)
    cols = []
    for f in schema["features"]:
        if f["type"] != "numeric":
            raise SystemExit(f"bench-serve needs a numeric-only model; feature {f['name']!r} is "
                             f"{f['type']} (serve e.g. the default breast_cancer model)")
        cols.append(rng.uniform(f["min"], f["max"], n))
    return np.column_stack(cols)


def bodies(rows: np.ndarray, server: str) -> bytes:
    key = "input_data" if server.startswith("stock") else "instances"
    return json.dumps({key: rows.tolist()}).encode()


# ---- servers -----------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def server_command(server: str, port: int) -> list[str]:
    bentoml = [str(Path(sys.executable).with_name("bentoml")), "serve", "--host", HOST,
               "--port", str(port)]
    if server == "bare":
        return [sys.executable, "-m", "uvicorn", "--factory",
                "benchmarks.serving_baselines:create_bare_app", "--host", HOST, "--port",
                str(port), "--no-access-log", "--log-level", "warning"]
    if server == "stock":
        return [*bentoml, "benchmarks.serving_baselines:StockClassifier"]
    if server == "stock-batch":
        return [*bentoml, "benchmarks.serving_baselines:StockBatchedClassifier"]
    return [*bentoml, "serving.service:Slipway"]


class ServerProcess:
    """A server subprocess on a free port of 127.0.0.1, in its own process group, logging to
    ``log_path``; stopped with SIGTERM. ``tests/serving/test_server.py`` uses it too.

    Its environment is the caller's without any ``SLIPWAY_*`` variable, plus ``env``: a
    setting left in the caller's shell would change the server under test (with
    ``SLIPWAY_API_TOKEN`` set, every request would get 401).
    """

    def __init__(self, command: Callable[[int], list[str]], env: dict[str, str],
                 log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.log_path = log_path
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("SLIPWAY_")}
        full_env.update(env, PYTHONPATH=str(REPO))
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("w") as log:
            self.proc = subprocess.Popen(command(self.port), cwd=REPO, env=full_env, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


class Server(ServerProcess):
    """One of ``SERVERS``, serving model ``tag``."""

    def __init__(self, server: str, tag: str, log_dir: Path) -> None:
        self.name = server
        super().__init__(lambda port: server_command(server, port), {"SLIPWAY_MODEL": tag},
                         log_dir / f"{server}.log")

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.name} server exited; see {self.log_path}")
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.25)
        self.stop()
        raise SystemExit(f"{self.name} server not ready after {timeout:.0f} s; see {self.log_path}")


# ---- measurements ------------------------------------------------------------------------

def in_process(model: Any, rows: np.ndarray, calls: int, seconds: float) -> LoadResult:
    """The model called directly, one call after another (``concurrency`` 1)."""
    from benchmarks.serving_baselines import _proba

    result = LoadResult(concurrency=1, rows_per_request=rows.shape[0])
    for _ in range(3):
        _proba(model, rows)
    started = time.perf_counter()
    while len(result.latencies) < calls and time.perf_counter() - started < seconds:
        t0 = time.perf_counter()
        _proba(model, rows)
        result.latencies.append(time.perf_counter() - t0)
    result.seconds = time.perf_counter() - started
    result.statuses[200] = len(result.latencies)
    return result


def _arrow_stream(rows: np.ndarray, names: list[str]) -> bytes:
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    table = pa.table({n: rows[:, i] for i, n in enumerate(names)})
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _npy(rows: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, rows)
    return buf.getvalue()


def large_batches(port: int, rows: np.ndarray, json_rows: int,
                  repeats: int) -> dict[str, dict[str, float]]:
    """Big requests, one at a time: JSON at the JSON row limit, binary at ``len(rows)``."""
    meta = json.loads(urllib.request.urlopen(f"http://{HOST}:{port}/metadata").read())
    names = meta["input_schema"]["order"]
    small = rows[:json_rows]
    cases = {
        f"json rows, {json_rows}": ("application/json", json.dumps(
            {"instances": small.tolist()}).encode(), None, json_rows),
        f"json columns, {json_rows}": ("application/json", json.dumps(
            {"inputs": {n: small[:, i].tolist() for i, n in enumerate(names)}}).encode(),
            None, json_rows),
        f".npy, {json_rows}": ("application/x-npy", _npy(small), None, json_rows),
        f"arrow, {json_rows}": (ARROW, _arrow_stream(small, names), ARROW, json_rows),
        f".npy, {len(rows)}": ("application/x-npy", _npy(rows), None, len(rows)),
        f"arrow, {len(rows)}": (ARROW, _arrow_stream(rows, names), ARROW, len(rows)),
    }
    out = {}
    for label, (ctype, body, accept, n) in cases.items():
        times = []
        for _ in range(repeats):
            headers = {"Content-Type": ctype, **({"Accept": accept} if accept else {})}
            req = urllib.request.Request(f"http://{HOST}:{port}/predict", data=body,
                                         headers=headers)
            t0 = time.perf_counter()
            with urllib.request.urlopen(req, timeout=300) as r:
                r.read()
            times.append(time.perf_counter() - t0)
        p50 = statistics.median(times)
        out[label] = {"rows": n, "body_mb": len(body) / 1e6, "p50_ms": p50 * 1e3,
                      "rows_per_s": n / p50, "answer": "arrow" if accept else "json"}
    return out


def fmt(result: LoadResult | None) -> str:
    if result is None:
        return f"{'-':>38}"
    flag = f" ({result.rejected} non-200)" if result.rejected else ""
    return (f"{result.req_per_s:8.0f} {result.rows_per_s:9.0f} {result.percentile_ms(0.5):7.1f} "
            f"{result.percentile_ms(0.99):7.1f}{flag}")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("bentoml", "uvicorn", "starlette", "scikit-learn", "numpy", "pandas", "pyarrow",
                 "orjson", "uvloop", "httptools"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def hardware() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}"


def saturation_concurrency(results: dict[int, LoadResult]) -> int:
    """The lowest concurrency after which throughput grows by less than 10%."""
    levels = sorted(results)
    for low, high in zip(levels, levels[1:], strict=False):
        if results[high].req_per_s < 1.10 * results[low].req_per_s:
            return low
    return levels[-1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=os.environ.get("SLIPWAY_MODEL", ""),
                        help="model spec (default: the newest Slipway model in the store)")
    parser.add_argument("--quick", action="store_true", help="shorter runs, fewer levels")
    parser.add_argument("--servers", default=",".join(SERVERS), help="comma-separated subset")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs per measurement point; the median one is shown (3)")
    parser.add_argument("--json", default=str(REPO / "build" / "benchmarks" / "serve.json"),
                        help="where to write the raw results")
    args = parser.parse_args(argv)

    from components.errors import SlipwayError
    from serving.model import LoadedModel

    try:
        model = LoadedModel.from_store(args.model)
    except SlipwayError as err:
        print(f"bench-serve: {err}", file=sys.stderr)
        return 1
    tag = model.tag
    levels = (1, 4, 16) if args.quick else (1, 4, 16, 48)
    seconds = 2.0 if args.quick else 2.5
    repeat = 1 if args.quick else args.repeat
    if repeat < 1:
        parser.error("--repeat must be at least 1")
    sizes = (1, 64)
    rows = {n: sample_rows(model.schema, n, seed=n) for n in sizes}
    big = sample_rows(model.schema, 100_000, seed=7)
    servers = [s for s in args.servers.split(",") if s]
    print(f"bench-serve: model {tag} ({model.lineage.get('estimator')}), {hardware()}")
    print("  " + ", ".join(f"{k} {v}" for k, v in versions().items()))

    results: dict[str, dict[int, dict[int, LoadResult]]] = {}
    runs: dict[str, dict[int, dict[int, list[LoadResult]]]] = {}
    load_before = os.getloadavg()
    inproc = {n: in_process(model, rows[n], calls=2000, seconds=seconds) for n in sizes}
    large: dict[str, Any] = {}
    for server in servers:
        print(f"  measuring {server} ...", flush=True)
        proc = Server(server, tag, REPO / "build" / "benchmarks" / "serve-logs")
        try:
            proc.wait_ready()
            results[server], runs[server] = {}, {}
            for n in sizes:
                body = bodies(rows[n], server)
                results[server][n], runs[server][n] = {}, {}
                for c in levels:
                    tries = [run_load(HOST, proc.port, "/predict", body, concurrency=c,
                                      rows_per_request=n, max_requests=50_000,
                                      max_seconds=seconds, warmup_requests=max(20, 2 * c))
                             for _ in range(repeat)]
                    runs[server][n][c] = tries
                    results[server][n][c] = sorted(tries, key=lambda r: r.req_per_s)[
                        len(tries) // 2]
            if server == "slipway":
                large = large_batches(proc.port, big, json_rows=4096, repeats=repeat)
        finally:
            proc.stop()
    load_after = os.getloadavg()

    header = f"{'req/s':>8} {'rows/s':>9} {'p50 ms':>7} {'p99 ms':>7}"
    for n in sizes:
        print(f"\n{n}-row requests: req/s, rows/s, p50 and p99 latency (ms) per concurrency")
        print(f"{'':>14} {'conc':>4}  " + "  ".join(f"{s:^34}" for s in ["in-process", *servers]))
        print(f"{'':>14} {'':>4}  " + "  ".join(header for _ in ["in-process", *servers]))
        for c in levels:
            cells = [fmt(inproc[n]) if c == 1 else fmt(None)]
            cells += [fmt(results[s][n][c]) for s in servers]
            print(f"{'':>14} {c:>4}  " + "  ".join(cells))

    summary: dict[str, Any] = {}
    if {"stock", "slipway"} <= set(results):
        best = max(r.req_per_s for r in results["slipway"][1].values())
        stock_best = max(r.req_per_s for r in results["stock"][1].values())
        sat = saturation_concurrency(results["stock"][1])
        summary["single_row_vs_stock"] = best / stock_best
        summary["stock_saturation_concurrency"] = sat
        summary["slipway_p99_ms_at_stock_saturation"] = (
            results["slipway"][1][sat].percentile_ms(0.99))
    if {"bare", "slipway"} <= set(results):
        best = max(r.rows_per_s for r in results["slipway"][64].values())
        bare_best = max(r.rows_per_s for r in results["bare"][64].values())
        summary["rows64_vs_bare"] = best / bare_best
    print("\nTargets (ratios measured in this run):")
    if "single_row_vs_stock" in summary:
        r = summary["single_row_vs_stock"]
        print(f"  single-row throughput, best slipway / best stock: {r:.1f}x "
              f"(target >= 3x: {'met' if r >= 3 else 'NOT met'})")
        p99 = summary["slipway_p99_ms_at_stock_saturation"]
        print(f"  stock saturates at concurrency {summary['stock_saturation_concurrency']}; "
              f"slipway p99 there: {p99:.1f} ms (target < 50 ms: "
              f"{'met' if p99 < 50 else 'NOT met'})")
    if "rows64_vs_bare" in summary:
        r = summary["rows64_vs_bare"]
        print(f"  64-row rows/s, best slipway / best bare: {r:.2f} "
              f"(target >= 0.5: {'met' if r >= 0.5 else 'NOT met'})")
    if large:
        per_row = in_process(model, big[:4096], 3, 30).percentile_ms(0.5) / 4096
        print(f"\nLarge batches: one request at a time, p50 (in-process model on 4096 rows: "
              f"{1e3 / per_row:.0f} rows/s)")
        for label, m in large.items():
            print(f"  {label:<20} body {m['body_mb']:6.2f} MB  answer {m['answer']:<5}  "
                  f"p50 {m['p50_ms']:8.1f} ms  {m['rows_per_s']:9.0f} rows/s")

    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "model": tag, "hardware": hardware(), "versions": versions(), "summary": summary,
        "load_average": {"before": load_before, "after": load_after}, "repeat": repeat,
        "seconds_per_run": seconds, "levels": levels,
        "large_batch": large,
        "in_process": {n: _as_dict(r) for n, r in inproc.items()},
        "servers": {s: {n: {c: [_as_dict(r) for r in tries] for c, tries in per.items()}
                        for n, per in by.items()} for s, by in runs.items()},
    }, indent=2))
    print(f"\n1-minute load average {load_before[0]:.2f} before, {load_after[0]:.2f} after "
          f"(on {os.cpu_count()} cores); raw results: {out}")
    return 0


def _as_dict(r: LoadResult) -> dict[str, Any]:
    return {"concurrency": r.concurrency, "rows_per_request": r.rows_per_request,
            "req_per_s": r.req_per_s, "rows_per_s": r.rows_per_s,
            "p50_ms": r.percentile_ms(0.5), "p99_ms": r.percentile_ms(0.99),
            "statuses": dict(r.statuses), "errors": r.errors}


if __name__ == "__main__":
    raise SystemExit(main())
