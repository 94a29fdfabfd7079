"""Metrics and dashboards, checked against a real Prometheus scraping a real local Ray run.

The Ray path: the session's Ray head (loopback, token auth) runs an engine job over real shards (one image
corrupt, one shard truncated) and a one-trial sweep; a Prometheus (Debian's ``prometheus``, on 127.0.0.1)
scrapes Ray's metrics agents found through Ray's service-discovery file, with the configuration
``raylab dashboard prometheus-config`` writes. Every PromQL expression of every dashboard panel must return a
series, and the images counter must equal what the run reports. The prometheus-client path: ``raylab uap``
served on a local port, scraped directly.
"""

from __future__ import annotations

import contextlib
import http.server
import io
import json
import os
import shutil
import subprocess
import tarfile
import threading
import time
import urllib.request
import warnings
from pathlib import Path

import pytest
import ray
from prometheus_client.parser import text_string_to_metric_families

from raylab import dashboards
from raylab.run import run_uap
from raylab.cli import main
from raylab.config import EngineConfig, UAPConfig
from raylab.engine import run_engine
from raylab.errors import InputError
from raylab.telemetry import METRICS, PrometheusSink, Telemetry, run_tags

from .conftest import PNEUMONIA, ROOT, _free_port

PROMETHEUS = shutil.which("prometheus")
# .ci/run installs Debian's prometheus and sets this, so in CI a missing binary fails instead of skipping.
REQUIRED = os.environ.get("RAYLAB_TEST_REQUIRE_PROMETHEUS") == "1"


def test_the_committed_dashboard_is_the_generated_one_and_importable() -> None:
    committed = json.loads((ROOT / "dashboards" / "raylab.json").read_text())
    assert committed == dashboards.grafana_dashboard(), "dashboards/raylab.json is stale: run `raylab dashboard write`"
    variables = {v["name"]: v for v in committed["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["run"]["allValue"] == ".*"
    ids = [p["id"] for p in committed["panels"]]
    assert len(ids) == len(set(ids)) == len(dashboards.PANELS) >= 12
    for p in committed["panels"]:
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"} and p["targets"]
        assert {"h", "w", "x", "y"} <= set(p["gridPos"]) and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
        assert [t["refId"] for t in p["targets"]] == [chr(ord("A") + i) for i in range(len(p["targets"]))]
    exprs = " ".join(q.expr for _, q in dashboards.queries())
    for m in METRICS:  # every metric raylab records appears on the dashboard
        assert m.exported in exprs, m.name


def test_telemetry_refuses_undeclared_tags() -> None:
    t = Telemetry(run="r", source="s", model="m")
    with pytest.raises(ValueError, match="raylab_step_seconds: tags"):
        t._record("raylab_step_seconds", 1.0, reader=0)


def test_a_single_process_run_serves_its_metrics_with_prometheus_client(models, natural_dir, tmp_path) -> None:
    sink = PrometheusSink()
    port = sink.serve(0)
    try:
        config = UAPConfig(model=models["model"], medical=PNEUMONIA, source=str(natural_dir), out=tmp_path / "uap",
                           zeta=0.08, eps=0.02, batch_size=8, max_passes=2, examples=0)
        tags = run_tags(out=config.out, source=config.source, model=config.model)
        m = run_uap(config, progress=False, telemetry=Telemetry(sink, **tags)).metrics()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            text = r.read().decode()
    finally:
        sink.close()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(text) for s in fam.samples}
    tags = (("model", "model.pt"), ("run", "uap"), ("source", natural_dir.name))

    def value(name: str, **extra: str) -> float:
        return samples[(name, tuple(sorted(tags + tuple(extra.items()))))]

    assert value("ray_raylab_images_processed_total", worker="0") == m["stats"]["images"] == 80
    assert value("ray_raylab_updates_accepted_total", worker="0") == m["stats"]["accepted"] > 0
    assert value("ray_raylab_images_skipped_total") == m["source"]["skipped"] == 1  # natural_dir's corrupt JPEG
    assert value("ray_raylab_rho_norm", p="2") == pytest.approx(m["uap_norms"]["l2"], rel=1e-5)
    assert value("ray_raylab_step_seconds_count", worker="0") == value("ray_raylab_batches_processed_total", worker="0") == 10
    taken = PrometheusSink()
    busy = taken.serve(0)
    try:
        with pytest.raises(InputError, match=f"cannot serve metrics on 127.0.0.1:{busy} "):
            PrometheusSink().serve(busy)
    finally:
        taken.close()


# --------------------------------------------------------------------------- the Ray path, with a real Prometheus


def _damaged_shards(shards: Path, dest: Path) -> Path:
    """The session's shards with one image's bytes cut short (shard 0) and the last shard truncated."""
    shutil.copytree(shards, dest)
    first = dest / "shard-000000.tar"
    out = io.BytesIO()
    with tarfile.open(first) as src, tarfile.open(fileobj=out, mode="w") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read()
            if member.name.startswith("00000003.") and not member.name.endswith(".txt"):
                data = data[: len(data) // 3]
            info = tarfile.TarInfo(member.name)
            info.size, info.mtime = len(data), member.mtime
            dst.addfile(info, io.BytesIO(data))
    first.write_bytes(out.getvalue())
    last = dest / "shard-000003.tar"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    return dest


def _ray_sd_file(timeout: float = 60) -> Path:
    """This cluster's service-discovery file (other local Rays write their own); Ray's dashboard rewrites it every few seconds."""
    agents = {f"{n['NodeManagerAddress']}:{n['MetricsExportPort']}" for n in ray.nodes() if n["Alive"]}
    deadline = time.time() + timeout
    while time.time() < deadline:
        for f in sorted(Path("/tmp/ray").glob("session_*/prom_metrics_service_discovery.json"), key=os.path.getmtime, reverse=True):
            try:
                listed = {t for group in json.loads(f.read_text()) for t in group["targets"]}
            except (OSError, ValueError):
                continue
            if agents <= listed:
                return f
        time.sleep(1)
    raise AssertionError(f"no Ray service-discovery file lists {agents}")


@pytest.fixture(scope="module")
def prometheus(cluster, tmp_path_factory):
    if PROMETHEUS is None:
        assert not REQUIRED, "prometheus not found; .ci/run installs it (apt-get install prometheus)"
        pytest.skip("Debian's prometheus is not installed (apt-get install prometheus)")
    d = tmp_path_factory.mktemp("prometheus")
    (d / "prometheus.yml").write_text(dashboards.prometheus_config(sd_file=str(_ray_sd_file()), scrape_interval="1s"))
    port = _free_port()
    log = open(d / "prometheus.log", "w")
    proc = subprocess.Popen([PROMETHEUS, f"--config.file={d / 'prometheus.yml'}", f"--storage.tsdb.path={d / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        assert proc.poll() is None and time.time() < deadline, (d / "prometheus.log").read_text()[-2000:]
        time.sleep(0.5)
    yield {"url": url, "client": dashboards.Prometheus(url)}
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


@pytest.fixture(scope="module")
def observed(cluster, prometheus, models, shards, tmp_path_factory):
    """An engine run (2 workers, damaged shards) and a one-trial sweep, both scraped by the Prometheus."""
    d = tmp_path_factory.mktemp("observed")
    started = time.time()
    config = EngineConfig(model=str(models["model"]), medical=PNEUMONIA, shards=str(_damaged_shards(shards, d / "shards")),
                          out=str(d / "obs-run"), zeta=0.08, eps=0.02, workers=2, batch_size=4, max_passes=6,
                          cpus_per_worker=0.5, cpus_per_reader=0.5, progress_every=0.0, examples=0)
    metrics = run_engine(config, log=lambda line: None).metrics()
    assert main(["sweep", "--name", "obs", "--model", str(models["model"]), "--data", str(PNEUMONIA), "--source", "random",
                 "--eps", "0.01", "--zeta", "0.08", "--results", str(d / "results"), "--out", str(d / "sweeps"),
                 "--cpus-per-trial", "0.25", "--address", cluster["address"]]) == 0
    return {"metrics": metrics, "started": started, "run": "obs-run"}


def _wait_for(prom: dashboards.Prometheus, expr: str, want: float, timeout: float = 60) -> float:
    deadline, got = time.time() + timeout, None
    while time.time() < deadline:
        result = prom.query(expr)
        got = float(result[0]["value"][1]) if result else None
        if got == want:
            return got
        time.sleep(1)
    raise AssertionError(f"{expr} = {got}, expected {want}; series: {prom.query(expr.removeprefix('sum(')[:-1])}")


def test_the_images_counter_equals_the_images_the_run_reports(observed, prometheus) -> None:
    m = observed["metrics"]
    # 6 passes, each skipping the corrupt image and failing the truncated shard: the record names each once,
    # the counters count every time the stream met them
    assert m["stats"]["images"] > 200 and m["source"]["skipped"] == 1 and len(m["source"]["shards_failed"]) == 1
    passes = len(m["per_pass"])
    assert passes == 6
    prom = prometheus["client"]
    run = f'run="{observed["run"]}"'
    _wait_for(prom, f"sum(ray_raylab_images_processed_total{{{run}}})", m["stats"]["images"])
    _wait_for(prom, f"sum(ray_raylab_updates_accepted_total{{{run}}})", m["stats"]["accepted"])
    _wait_for(prom, f"sum(ray_raylab_images_skipped_total{{{run}}})", passes * m["source"]["skipped"])
    _wait_for(prom, f"sum(ray_raylab_shards_failed_total{{{run}}})", passes * len(m["source"]["shards_failed"]))
    _wait_for(prom, f"sum(ray_raylab_rounds_total{{{run}}})", m["rounds"])
    # a gauge of a finished run is no longer exported: its last scraped value
    _wait_for(prom, f"max(last_over_time(ray_raylab_rho_norm{{{run}}}[10m]))", pytest.approx(m["uap_norms"]["l2"], rel=1e-5))
    _wait_for(prom, 'sum(ray_raylab_trials_total{sweep="obs", status="finished"})', 1)


def test_every_dashboard_query_returns_series_from_the_real_run(observed, prometheus, tmp_path) -> None:
    prom, start = prometheus["client"], observed["started"]
    has_gpu = ray.cluster_resources().get("GPU", 0) > 0
    _wait_for(prom, f'sum(ray_raylab_images_processed_total{{run="{observed["run"]}"}})', observed["metrics"]["stats"]["images"])
    empty = []
    for panel, q in dashboards.queries():
        if q.gpu and not has_gpu:
            continue  # Ray exports GPU metrics only from GPU nodes
        if q.fault:
            # series only where an actor was replaced (tests/test_engine.py's hung worker, if it ran first): valid PromQL
            assert isinstance(prom.query(dashboards.concrete(q.expr, rate_interval="30s")), list)
            continue
        expr = dashboards.concrete(q.expr, rate_interval="30s")
        deadline = time.time() + 20  # a series Ray's agent exported late still counts
        while not prom.query_range(expr, start, time.time(), 1.0):
            if time.time() > deadline:
                empty.append(f"{panel.title}: {expr}")
                break
            time.sleep(1)
    assert not empty, "queries without data:\n" + "\n".join(empty)
    counts = dashboards.render(prometheus["url"], tmp_path / "dashboard.png", start=start, rate_interval="30s")
    assert all(n > 0 for title, n in counts.items() if has_gpu or title != "GPU memory used")
    assert (tmp_path / "dashboard.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@contextlib.contextmanager
def _answering(status: int, body: bytes):
    """A real HTTP server on 127.0.0.1 that answers every request with ``status`` and ``body``; yields its URL."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_dashboard_cli_writes_config_and_refuses_an_unreachable_prometheus(models, natural_dir, tmp_path, capsys) -> None:
    assert main(["dashboard", "prometheus-config", "--target", "127.0.0.1:9101", "--scrape-interval", "5s"]) == 0
    config = json.loads(capsys.readouterr().out)  # YAML written as JSON
    assert config["global"]["scrape_interval"] == "5s"
    assert config["scrape_configs"][0]["file_sd_configs"][0]["files"] == ["/tmp/ray/prom_metrics_service_discovery.json"]
    assert config["scrape_configs"][1]["static_configs"][0]["targets"] == ["127.0.0.1:9101"]
    assert main(["dashboard", "write", "--out", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "raylab.json").read_text()) == dashboards.grafana_dashboard()
    closed = _free_port()
    assert main(["dashboard", "render", "--prometheus", f"http://127.0.0.1:{closed}", "--out", str(tmp_path / "d.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"raylab dashboard: error: cannot reach Prometheus at http://127.0.0.1:{closed}") and "\n" not in err
    with _answering(403, b"") as url:  # a proxy in front of Prometheus that says no, with an empty body
        assert main(["dashboard", "render", "--prometheus", url, "--out", str(tmp_path / "d.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"raylab dashboard: error: Prometheus at {url} answered HTTP 403 Forbidden to 'sum (rate(")
    assert err.endswith("[1m]))'") and "\n" not in err
    with _answering(400, json.dumps({"status": "error", "errorType": "bad_data", "error": "parse error at char 5"}).encode()) as url:
        assert main(["dashboard", "render", "--prometheus", url, "--out", str(tmp_path / "d.png")]) == 2
    assert capsys.readouterr().err.strip().endswith("answered HTTP 400 Bad Request to 'sum (rate(ray_raylab_images_processed_"
                                                    "total{run=~\".*\"}[1m]))': parse error at char 5")
    assert main(["uap", "--model", str(models["model"]), "--data", str(PNEUMONIA), "--source", "random", "--out", str(tmp_path / "u"),
                 "--zeta", "0.08", "--examples", "0", "--metrics-port", "0", "--metrics-linger", "0"]) == 0
    assert "serving metrics on http://127.0.0.1:" in capsys.readouterr().out


def test_a_panel_of_many_series_keeps_its_legend_inside_the_layout(tmp_path) -> None:
    """A run of 30 workers on 30 nodes: every panel has 30 series or more. Its legend names the first 8 and counts
    the others; before, each panel's legend listed all and was taller than the panel, so the figure's layout failed
    with a warning and the panels overlapped."""
    start = 1_700_000_000.0
    series = [{"metric": {"run": "big", "worker": str(i), "instance": f"10.0.0.{i}:8080"},
               "values": [[start + 10 * k, str(i + k)] for k in range(6)]} for i in range(30)]
    body = json.dumps({"status": "success", "data": {"resultType": "matrix", "result": series}}).encode()
    with _answering(200, body) as url, warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib's "Tight layout not applied" is a UserWarning
        counts = dashboards.render(url, tmp_path / "many.png", start=start, end=start + 60)
    assert counts == {p.title: 30 * len(p.queries) for p in dashboards.PANELS}
    assert (tmp_path / "many.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
