"""Grafana dashboards for raylab's metrics, generated from code, and a Prometheus to feed them.

:data:`PANELS` is the dashboard: each panel is a title, a unit and PromQL
queries over the metrics of :mod:`raylab.telemetry` (and Ray's own node
metrics for CPU and GPU). :func:`grafana_dashboard` turns it into the JSON
Grafana imports (``dashboards/raylab.json``, written by ``raylab dashboard
write``), with a Prometheus datasource variable and a ``run`` filter.
:func:`prometheus_config` writes a scrape configuration that finds Ray's
metrics agents through Ray's service-discovery file, and :func:`render` draws
the same panels from a Prometheus into one PNG, for a look without Grafana.
"""

from __future__ import annotations

import json
import math
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .errors import InputError, one_line

UID = "raylab-uap"
TITLE = "raylab: UAP runs and sweeps"
RAY_SD_FILE = "/tmp/ray/prom_metrics_service_discovery.json"
RUN = 'run=~"$run"'
RATE = "$__rate_interval"


@dataclass(frozen=True)
class Query:
    """One PromQL expression of a panel; ``gpu`` marks Ray's GPU metrics, which exist only on GPU nodes, ``fault`` a
    counter that exists only once its fault happened (an actor replaced)."""

    expr: str
    legend: str
    gpu: bool = False
    fault: bool = False


@dataclass(frozen=True)
class Panel:
    title: str
    queries: tuple[Query, ...]
    unit: str = "short"
    description: str = ""


def _q(metric: str, by: str = "") -> str:
    return f"sum {f'by ({by}) ' if by else ''}(rate(ray_{metric}{{{RUN}}}[{RATE}]))"


def _quantile(q: float, metric: str) -> str:
    return f"histogram_quantile({q}, sum by (le) (rate(ray_{metric}_bucket{{{RUN}}}[{RATE}])))"


PANELS: tuple[Panel, ...] = (
    Panel("Images/s, all workers", (Query(_q("raylab_images_processed_total"), "images/s"),), "short",
          "Natural images whose FGSM step was committed, per second."),
    Panel("Images/s per worker", (Query(_q("raylab_images_processed_total", "run, worker"), "{{run}} worker {{worker}}"),)),
    Panel("Batches/s and rounds/s", (Query(_q("raylab_batches_processed_total", "run"), "{{run}} batches/s"),
                                     Query(_q("raylab_rounds_total", "run"), "{{run}} rounds/s (projections)")), "short"),
    Panel("Decode vs step time per batch", (
        Query(_quantile(0.5, "raylab_decode_seconds"), "decode p50"),
        Query(_quantile(0.95, "raylab_decode_seconds"), "decode p95"),
        Query(_quantile(0.5, "raylab_step_seconds"), "step p50"),
        Query(_quantile(0.95, "raylab_step_seconds"), "step p95"),
    ), "s", "Reader decode time vs worker FGSM-update time: decode above step means the workers starve."),
    Panel("Acceptance rate", (Query(f"{_q('raylab_updates_accepted_total', 'run')} / {_q('raylab_images_processed_total', 'run')}",
                                    "{{run}}"),),
          "percentunit", "Share of images whose step was accepted (Section 2.2's rule)."),
    Panel("||rho||_p", (Query(f"max by (run, p) (ray_raylab_rho_norm{{{RUN}}})", "{{run}} L{{p}}"),), "short",
          "Norm of the perturbation; it reaches the zeta budget when the projection binds."),
    Panel("Running rate on the stream", (Query(f"max by (run, criterion) (ray_raylab_stream_rate_ratio{{{RUN}}})",
                                               "{{run}} {{criterion}}"),),
          "percentunit", "1 - active/images: images already fooled (or already the target) when their step came."),
    Panel("Decoded batches queued", (Query(f"sum by (run, reader) (ray_raylab_queue_depth{{{RUN}}})", "{{run}} reader {{reader}}"),),
          "short", "Prefetched batches waiting between each reader and its worker; 0 for long means decode is the bottleneck."),
    Panel("Worker idle fraction", (Query(f"max by (run) (ray_raylab_worker_idle_ratio{{{RUN}}})", "{{run}}"),), "percentunit"),
    Panel("Shard read throughput", (Query(_q("raylab_shard_bytes_read_total", "run"), "{{run}}"),), "Bps"),
    Panel("Corrupt images skipped, shards failed, actors replaced", (
        Query(f"sum by (run) (ray_raylab_images_skipped_total{{{RUN}}})", "{{run}} images skipped"),
        Query(f"sum by (run) (ray_raylab_shards_failed_total{{{RUN}}})", "{{run}} shards failed"),
        Query(f"sum by (run, role) (ray_raylab_actors_replaced_total{{{RUN}}})", "{{run}} {{role}}s replaced (hung)",
              fault=True),
    ), "short"),
    Panel("Trials of sweeps and audits", (Query("sum by (sweep, status) (ray_raylab_trials_total)", "{{sweep}} {{status}}"),), "short"),
    Panel("Node CPU and GPU utilization", (
        Query("avg by (instance) (ray_node_cpu_utilization)", "{{instance}} CPU"),
        Query("avg by (instance, GpuIndex) (ray_node_gpus_utilization)", "{{instance}} GPU {{GpuIndex}}", gpu=True),
    ), "percent", "Ray's own node metrics."),
    Panel("GPU memory used", (Query("sum by (instance, GpuIndex) (ray_node_gram_used) * 1024 * 1024",
                                    "{{instance}} GPU {{GpuIndex}}", gpu=True),), "bytes", "Ray's own node metrics."),
)


def queries(panels: Sequence[Panel] = PANELS) -> list[tuple[Panel, Query]]:
    return [(p, q) for p in panels for q in p.queries]


def concrete(expr: str, *, run: str = ".*", rate_interval: str = "1m") -> str:
    """The PromQL Grafana sends: ``$run`` and ``$__rate_interval`` filled in."""
    return expr.replace("$run", run).replace("$__rate_interval", rate_interval)


# --------------------------------------------------------------------------- Grafana JSON


def grafana_dashboard(panels: Sequence[Panel] = PANELS, *, title: str = TITLE, uid: str = UID) -> dict[str, Any]:
    """A Grafana dashboard (schema 39; Grafana 10 and 11 import it as is) with datasource and run variables."""
    ds = {"type": "prometheus", "uid": "${datasource}"}
    out = []
    for i, p in enumerate(panels):
        out.append({
            "id": i + 1, "type": "timeseries", "title": p.title, "description": p.description, "datasource": ds,
            "gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)},
            "fieldConfig": {"defaults": {"unit": p.unit, "custom": {"lineWidth": 1, "fillOpacity": 10}}, "overrides": []},
            "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                        "tooltip": {"mode": "multi", "sort": "none"}},
            "targets": [{"datasource": ds, "expr": q.expr, "legendFormat": q.legend, "refId": chr(ord("A") + k)}
                        for k, q in enumerate(p.queries)],
        })
    return {
        "uid": uid, "title": title, "tags": ["raylab", "ray"], "editable": True, "schemaVersion": 39, "version": 1,
        "time": {"from": "now-1h", "to": "now"}, "refresh": "10s", "timezone": "", "graphTooltip": 1,
        "annotations": {"list": []}, "links": [],
        "templating": {"list": [
            {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus", "current": {},
             "hide": 0, "refresh": 1, "options": []},
            {"name": "run", "label": "Run", "type": "query", "datasource": ds,
             "query": {"query": "label_values(ray_raylab_images_processed_total, run)", "refId": "run"},
             "definition": "label_values(ray_raylab_images_processed_total, run)",
             "includeAll": True, "multi": True, "allValue": ".*", "current": {"text": "All", "value": "$__all"},
             "refresh": 2, "sort": 1, "hide": 0, "options": []},
        ]},
        "panels": out,
    }


def write_dashboards(folder: str | Path) -> Path:
    """Write ``raylab.json`` into ``folder`` (the file committed under ``dashboards/``)."""
    from .store import Store

    return Path(Store.at(folder).write_text("raylab.json", json.dumps(grafana_dashboard(), indent=2) + "\n"))


# --------------------------------------------------------------------------- Prometheus


def prometheus_config(*, sd_file: str = RAY_SD_FILE, targets: Sequence[str] = (), scrape_interval: str = "10s") -> str:
    """A ``prometheus.yml`` scraping Ray's metrics agents (``file_sd`` on Ray's discovery file) and ``targets``.

    ``targets`` are ``host:port`` of single-process runs (``raylab uap --metrics-port``). The text is YAML
    written as JSON, which YAML reads as is.
    """
    jobs: list[dict[str, Any]] = [{"job_name": "ray", "file_sd_configs": [{"files": [sd_file], "refresh_interval": "5s"}]}]
    if targets:
        jobs.append({"job_name": "raylab", "static_configs": [{"targets": list(targets)}]})
    return json.dumps({"global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
                       "scrape_configs": jobs}, indent=2) + "\n"


def _http_detail(body: bytes) -> str:
    """``": <why>"`` from an error answer: Prometheus' own ``error`` field, else the body's first 300 characters (a
    proxy's page); nothing for an empty body."""
    text = body.decode(errors="replace").strip()
    try:
        text = str(json.loads(text).get("error", text))
    except (ValueError, AttributeError):
        pass
    return f": {one_line(text, 300)}" if text else ""


class Prometheus:
    """A small client of Prometheus' HTTP API (``/api/v1/query``, ``/api/v1/query_range``)."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def _get(self, path: str, params: dict[str, Any]) -> Any:
        full = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(full, timeout=30) as r:
                doc = json.load(r)
        except urllib.error.HTTPError as e:
            raise InputError(f"Prometheus at {self.url} answered HTTP {e.code} {e.reason} to {params.get('query', path)!r}"
                             + _http_detail(e.read())) from None
        except OSError as e:
            raise InputError(f"cannot reach Prometheus at {self.url} ({e})") from None
        if doc.get("status") != "success":
            raise InputError(f"Prometheus at {self.url}: {doc.get('error', doc)}")
        return doc["data"]["result"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        return self._get("/api/v1/query", {"query": expr, **({"time": at} if at is not None else {})})

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        return self._get("/api/v1/query_range", {"query": expr, "start": start, "end": end, "step": step})


UNIT_LABELS = {"short": "", "percentunit": "ratio", "percent": "%", "s": "seconds", "Bps": "bytes/s", "bytes": "bytes"}


def _label(legend: str, metric: dict[str, str]) -> str:
    out = legend
    for k, v in metric.items():
        out = out.replace("{{" + k + "}}", v)
    return out


#: Series a panel's legend names; a panel of more (a worker or a node each, on a large cluster) names the first ones.
LEGEND_MAX = 8


def _legend(ax: Any) -> None:
    """The panel's legend, at most :data:`LEGEND_MAX` entries and a count of the others, kept out of the figure's
    layout (a legend of every worker of a large run is taller than its panel: the layout then failed, with a
    warning, and the panels overlapped)."""
    from matplotlib.lines import Line2D

    handles, labels = ax.get_legend_handles_labels()
    if len(handles) > LEGEND_MAX:
        more = len(handles) - LEGEND_MAX
        handles, labels = handles[:LEGEND_MAX] + [Line2D([], [], linestyle="none")], labels[:LEGEND_MAX] + [f"… and {more} more"]
    ax.legend(handles, labels, fontsize=6, loc="best").set_in_layout(False)


def render(prometheus_url: str, out: str | Path, *, start: float, end: float | None = None, run: str = ".*",
           step: float | None = None, rate_interval: str = "1m", panels: Sequence[Panel] = PANELS) -> dict[str, int]:
    """Draw every panel from a Prometheus into one PNG; returns the number of series per panel title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    end = time.time() if end is None else end
    if end <= start:
        raise InputError(f"render: end ({end}) must be after start ({start})")
    step = step or max(1.0, (end - start) / 300)
    prom = Prometheus(prometheus_url)
    cols = 2
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(14, 3.2 * rows), squeeze=False)
    counts: dict[str, int] = {}
    for ax, p in zip(axes.flat, panels):
        n = 0
        for q in p.queries:
            for series in prom.query_range(concrete(q.expr, run=run, rate_interval=rate_interval), start, end, step):
                t = [float(v[0]) - start for v in series["values"]]
                y = [float(v[1]) for v in series["values"]]
                ax.plot(t, y, lw=1.2, marker="." if len(t) < 3 else None,  # one sample: a dot, not nothing
                        label=_label(q.legend, series["metric"]))
                n += 1
        counts[p.title] = n
        ax.set_title(p.title + ("" if n else "  (no data)"), fontsize=10)
        ax.set_ylabel(UNIT_LABELS.get(p.unit, p.unit), fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if n:
            _legend(ax)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("seconds since start", fontsize=8)
    fig.suptitle(f"{TITLE} (rendered from {prometheus_url}, run={run})", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    from .figures import png_bytes
    from .store import Store

    store, name = Store.beside(out)
    store.write_bytes(name, png_bytes(fig, dpi=90))
    return counts
