"""Real monitoring parts on 127.0.0.1 for the dashboard tests and ``make dashboards-preview``.

* :class:`Pushgateway` - Debian's ``prometheus-pushgateway``;
* :class:`Prometheus` - Debian's ``prometheus``, scraping a served model relabelled as the
  chart's ServiceMonitor makes the Prometheus Operator relabel it (target labels
  ``namespace``, ``service``, ``pod``, ``container``, ``endpoint``, ``job``; BentoML's own
  ``endpoint`` label becomes ``exported_endpoint``), and the Pushgateway with
  ``honor_labels``;
* :class:`ClusterStandIn` - the series a cluster adds that cannot be produced here: cAdvisor's
  ``container_cpu_usage_seconds_total`` and ``container_memory_working_set_bytes`` (read from
  the real server processes' /proc) and kube-state-metrics'
  ``kube_deployment_status_replicas_available`` / ``..._replicas`` (from the real
  server's ``/readyz``). Neither kubelet nor kube-state-metrics can run without a cluster; the
  names and labels are those of their published metric references.

Every process runs in its own process group and is stopped with SIGTERM.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

HOST = "127.0.0.1"
NAMESPACE, RELEASE = "ml", "r1"
SERVICE = f"{RELEASE}-slipway-serving"  # what the chart names the Service of release r1
POD = f"{SERVICE}-7d9f8c6b5-x2x7q"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def missing_tools() -> list[str]:
    return [t for t in ("prometheus", "prometheus-pushgateway") if shutil.which(t) is None]


def http_json(url: str, params: dict[str, Any] | None = None, timeout: float = 10) -> Any:
    import json

    if params:
        url += "?" + urllib.parse.urlencode(params)
    with urllib.request.urlopen(url, timeout=timeout) as answer:
        return json.loads(answer.read())


class _Process:
    def __init__(self, args: list[str], log: Path) -> None:
        log.parent.mkdir(parents=True, exist_ok=True)
        self.log = log
        with log.open("w") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def wait_http(self, url: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{url}: the process exited:\n{self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2):
                    return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"{url} did not answer in {timeout} s:\n{self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


class Pushgateway(_Process):
    """A real Pushgateway on a free port, in memory only.

    Debian's build persists to /var/lib/prometheus/pushgateway.data by default, which every
    Pushgateway on the machine would share: ``--persistence.file=`` turns that off.
    """

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        super().__init__(["prometheus-pushgateway", f"--web.listen-address={HOST}:{self.port}",
                          "--persistence.file="], workdir / "pushgateway.log")
        self.wait_http(self.url + "/-/ready")


def serving_scrape_config(target: str, interval: str = "1s") -> dict:
    """A scrape job equal to what the Prometheus Operator makes of the chart's ServiceMonitor
    (honorLabels false) for one pod of release r1 in namespace ml."""
    return {
        "job_name": f"serviceMonitor/{NAMESPACE}/{SERVICE}/0",
        "scrape_interval": interval,
        "honor_labels": False,
        "metrics_path": "/metrics",
        "static_configs": [{"targets": [target]}],
        "relabel_configs": [
            {"target_label": "namespace", "replacement": NAMESPACE},
            {"target_label": "service", "replacement": SERVICE},
            {"target_label": "pod", "replacement": POD},
            {"target_label": "container", "replacement": "serving"},
            {"target_label": "endpoint", "replacement": "http"},
            {"target_label": "job", "replacement": SERVICE},
        ],
    }


class Prometheus(_Process):
    """A real Prometheus on a free port with the given scrape jobs."""

    def __init__(self, workdir: Path, scrape_configs: list[dict], rule_files: list[Path] = ()):
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        config = workdir / "prometheus.yml"
        config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": scrape_configs,
            "rule_files": [str(r) for r in rule_files],
        }))
        super().__init__(["prometheus", f"--config.file={config}",
                          f"--storage.tsdb.path={workdir / 'tsdb'}",
                          f"--web.listen-address={HOST}:{self.port}"],
                         workdir / "prometheus.log")
        self.wait_http(self.url + "/-/ready")

    def query(self, promql: str) -> list[dict]:
        answer = http_json(self.url + "/api/v1/query", {"query": promql})
        return answer["data"]["result"]

    def query_range(self, promql: str, start: float, end: float, step: float) -> list[dict]:
        answer = http_json(self.url + "/api/v1/query_range",
                           {"query": promql, "start": start, "end": end, "step": step})
        return answer["data"]["result"]

    def wait_for(self, promql: str, timeout: float = 60) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if result := self.query(promql):
                    return result
            except OSError:
                pass
            time.sleep(0.5)
        targets = http_json(self.url + "/api/v1/targets")
        raise RuntimeError(f"no data for {promql} in {timeout} s; targets: {targets}")


class ClusterStandIn:
    """cAdvisor and kube-state-metrics series for the real server, on a free port.

    Args:
        pids: the server's processes (BentoML's supervisor and workers): their CPU time and
            resident memory are summed, as cAdvisor sums a container's processes.
        ready_url: the server's /readyz: 1 available replica while it answers 200.
    """

    def __init__(self, pids_of: Any, ready_url: str) -> None:
        from prometheus_client import CollectorRegistry, start_http_server
        from prometheus_client.core import GaugeMetricFamily

        self.pids_of, self.ready_url = pids_of, ready_url
        registry = CollectorRegistry()
        stand_in = self

        class Collector:
            def collect(self):
                cpu, rss = stand_in._usage()
                labels = ["namespace", "pod", "container"]
                values = [NAMESPACE, POD, "serving"]
                c = GaugeMetricFamily("container_cpu_usage_seconds_total",
                                      "cAdvisor: cumulative CPU time (stand-in)", labels=labels)
                c.add_metric(values, cpu)
                m = GaugeMetricFamily("container_memory_working_set_bytes",
                                      "cAdvisor: working set (stand-in)", labels=labels)
                m.add_metric(values, rss)
                dl = ["namespace", "deployment"]
                a = GaugeMetricFamily("kube_deployment_status_replicas_available",
                                      "kube-state-metrics (stand-in)", labels=dl)
                a.add_metric([NAMESPACE, SERVICE], stand_in._ready())
                s = GaugeMetricFamily("kube_deployment_spec_replicas",
                                      "kube-state-metrics (stand-in)", labels=dl)
                s.add_metric([NAMESPACE, SERVICE], 1)
                return [c, m, a, s]

        registry.register(Collector())
        self.port = free_port()
        self.server, self.thread = start_http_server(self.port, HOST, registry)

    def _usage(self) -> tuple[float, float]:
        tick = os.sysconf("SC_CLK_TCK")
        page = os.sysconf("SC_PAGE_SIZE")
        cpu = rss = 0.0
        for pid in self.pids_of():
            try:
                stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                cpu += (int(stat[11]) + int(stat[12])) / tick
                rss += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * page
            except (OSError, IndexError, ValueError):
                continue
        return cpu, rss

    def _ready(self) -> float:
        try:
            with urllib.request.urlopen(self.ready_url, timeout=2) as answer:
                return 1.0 if answer.status == 200 else 0.0
        except OSError:
            return 0.0

    def scrape_config(self) -> dict:
        return {"job_name": "cluster-stand-in", "scrape_interval": "1s", "honor_labels": True,
                "static_configs": [{"targets": [f"{HOST}:{self.port}"]}]}

    def stop(self) -> None:
        self.server.shutdown()


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants (BentoML's workers are children of its supervisor)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def pushgateway_scrape_config(url: str) -> dict:
    """The job the monitoring chart's ServiceMonitor makes: honor_labels keeps pushed labels."""
    return {"job_name": "pushgateway", "scrape_interval": "1s", "honor_labels": True,
            "static_configs": [{"targets": [url.removeprefix("http://")]}]}


REPO = Path(__file__).resolve().parents[2]
TRAIN_ARGS = ["--set", "dataset=breast_cancer", "--set", "train.framework=sklearn",
              "--set", "train.estimator=random_forest",
              "--set", "train.hyperparameters.random_forest.n_estimators=30",
              "--set", "train.cv_folds=3"]


class Stack:
    """Everything the dashboards read, for real, on 127.0.0.1.

    A real pipeline run (``python -m pipelines run training``) pushes its metrics to a real
    Pushgateway and packages a model into a BentoML store of the stack's own (under
    ``workdir``, so it neither adds to nor reads from the caller's store); a real
    ``bentoml serve`` serves that model under load (valid rows, rows that drift, invalid
    requests, more concurrency than it admits); a real Prometheus scrapes the server as the
    chart's ServiceMonitor would, the Pushgateway, and the cluster stand-in.

    Use as a context manager; :meth:`start_load` runs the load in the background.
    """

    def __init__(self, workdir: Path, env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.env = {**os.environ, "BENTOML_HOME": str(workdir / "bentoml"), **(env or {})}
        self.parts: list[Any] = []
        self._stop = None
        self.counts: dict[str, int] = {}

    def __enter__(self) -> Stack:
        import sys

        try:
            self.pushgateway = self._keep(Pushgateway(self.workdir))
            run = subprocess.run(
                [sys.executable, "-m", "pipelines", "run", "training", *TRAIN_ARGS],
                cwd=REPO, capture_output=True, text=True, timeout=900,
                env={**self.env, "SLIPWAY_PUSHGATEWAY": self.pushgateway.url,
                     "PYTHONPATH": str(REPO)})
            self.pipeline_output = run.stdout + run.stderr
            import re

            tag = re.search(r"BentoML model\s+(\S+)", run.stdout)
            if run.returncode != 0 or tag is None or "run metrics    pushed" not in run.stdout:
                raise RuntimeError(f"the pipeline run failed or pushed nothing:\n"
                                   f"{self.pipeline_output[-4000:]}")
            self.model_tag = tag.group(1)
            self.port = free_port()
            self.url = f"http://{HOST}:{self.port}"
            serve_env = {k: v for k, v in self.env.items() if not k.startswith("SLIPWAY_")}
            serve_env.update(SLIPWAY_MODEL=self.model_tag, SLIPWAY_MAX_CONCURRENCY="4",
                             SLIPWAY_DRIFT_WINDOW="300", PYTHONPATH=str(REPO))
            bentoml = str(Path(sys.executable).with_name("bentoml"))
            log = self.workdir / "serve.log"
            with log.open("w") as out:
                proc = subprocess.Popen(
                    [bentoml, "serve", "serving.service:Slipway", "--host", HOST, "--port",
                     str(self.port)], cwd=REPO, env=serve_env, stdout=out,
                    stderr=subprocess.STDOUT, start_new_session=True)
            self.server = _Process.__new__(_Process)
            self.server.proc, self.server.log = proc, log
            self._keep(self.server)
            self.server.wait_http(self.url + "/readyz", timeout=120)
            self.stand_in = self._keep(ClusterStandIn(lambda: process_tree(proc.pid),
                                                      self.url + "/readyz"))
            self.prometheus = self._keep(Prometheus(self.workdir, [
                serving_scrape_config(f"{HOST}:{self.port}"),
                self.stand_in.scrape_config(),
                pushgateway_scrape_config(self.pushgateway.url)]))
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _keep(self, part):
        self.parts.append(part)
        return part

    def rows(self) -> list[dict]:
        from sklearn.datasets import load_breast_cancer

        frame = load_breast_cancer(as_frame=True).data  # ingest's names: spaces -> _
        return [{k.replace(" ", "_"): float(v) for k, v in r.items()}
                for r in frame.to_dict(orient="records")]

    def start_load(self, threads: int = 5) -> None:
        """Valid rows (two fifths drawn from the largest tumours, so drift shows), a few
        invalid requests, and more concurrent clients than SLIPWAY_MAX_CONCURRENCY admits."""
        import random
        import threading

        import httpx

        rows = self.rows()
        # Drift that the range check lets through: real rows, but only the largest tumours
        # (top tenth of mean_radius), so radius, perimeter and area leave their training bins.
        cut = sorted(r["mean_radius"] for r in rows)[int(len(rows) * 0.9)]
        shifted = [r for r in rows if r["mean_radius"] >= cut]
        stop = threading.Event()
        lock = threading.Lock()

        def count(key: str) -> None:
            with lock:
                self.counts[key] = self.counts.get(key, 0) + 1

        def worker(seed: int) -> None:
            rnd = random.Random(seed)
            with httpx.Client(base_url=self.url, timeout=30) as client:
                while not stop.is_set():
                    pool = shifted if rnd.random() < 0.4 else rows
                    if rnd.random() < 0.05:
                        body = {"instances": [{"mean_radius": "wide"}]}
                    else:
                        body = {"instances": rnd.sample(pool, rnd.randint(1, 16))}
                    try:
                        count(str(client.post("/predict", json=body).status_code))
                    except httpx.HTTPError:
                        count("error")

        self._stop = stop
        self._threads = [threading.Thread(target=worker, args=(i,), daemon=True)
                         for i in range(threads)]
        for t in self._threads:
            t.start()

    def stop_load(self) -> None:
        if self._stop is not None:
            self._stop.set()
            for t in self._threads:
                t.join(30)
            self._stop = None

    def __exit__(self, *exc) -> None:
        self.stop_load()
        for part in reversed(self.parts):
            try:
                part.stop()
            except Exception:  # noqa: BLE001 - stop the rest whatever happens
                pass
        self.parts.clear()


def substitute(expr: str, values: dict[str, str], rate_interval: str = "30s") -> str:
    """A panel's PromQL with Grafana's variables replaced as Grafana would (``$x``)."""
    expr = expr.replace("$__rate_interval", rate_interval)
    for name in sorted(values, key=len, reverse=True):
        expr = expr.replace(f"${name}", values[name])
    return expr
