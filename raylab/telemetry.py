"""raylab's Prometheus metrics: one set of definitions, exported through Ray or through prometheus-client.

Inside a Ray cluster every process (driver, reader and worker actors, Tune
trials) records through ``ray.util.metrics``; Ray's metrics agent on each
node exports them and Prometheus finds the agents with Ray's service-discovery
file (``/tmp/ray/prom_metrics_service_discovery.json``). Ray puts ``ray_`` in
front of every application metric and ``_total`` after counters, so
``raylab_images_processed`` is scraped as ``ray_raylab_images_processed_total``.
Outside Ray (``raylab uap --metrics-port``) the same definitions go to a
prometheus-client registry served on the port the user picks, under the same
exported names, so the dashboards in ``dashboards/`` read either.

Usage::

    t = Telemetry(ray_sink(), run="trial-7", source="imagenet", model="resnet18.pt")
    t.batch_done(worker=0, images=64, accepted=3)
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, Protocol

Kind = Literal["counter", "gauge", "histogram"]

#: Seconds buckets for decode and step latency: 1 ms .. 2 min.
SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0)
#: Every metric carries these tags, so runs and sweeps can be told apart in one Prometheus.
RUN_TAGS = ("run", "source", "model")
PREFIX = "ray_"


@dataclass(frozen=True)
class Metric:
    """One metric as declared: ``name`` without Ray's prefix and without the counter's ``_total``."""

    name: str
    kind: Kind
    help: str
    tags: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if not re.fullmatch(r"raylab_[a-z0-9_]+", self.name) or self.name.endswith("_total"):
            raise ValueError(f"metric name must be raylab_<snake_case> without _total, got {self.name!r}")
        if (self.kind == "histogram") != bool(self.buckets):
            raise ValueError(f"{self.name}: histograms, and only histograms, need buckets")

    @property
    def exported(self) -> str:
        """The name Prometheus stores: ``ray_`` prefix, ``_total`` on counters (histograms add ``_bucket`` etc.)."""
        return PREFIX + self.name + ("_total" if self.kind == "counter" else "")

    @property
    def tag_keys(self) -> tuple[str, ...]:
        return RUN_TAGS + self.tags


METRICS: tuple[Metric, ...] = (
    Metric("raylab_images_processed", "counter", "Natural images whose FGSM step was computed and committed", ("worker",)),
    Metric("raylab_updates_accepted", "counter", "Images whose step was accepted (Section 2.2: not yet fooled, step fools)", ("worker",)),
    Metric("raylab_batches_processed", "counter", "Batches committed into rho", ("worker",)),
    Metric("raylab_images_skipped", "counter", "Corrupt or image-less samples skipped in the stream"),
    Metric("raylab_shards_failed", "counter", "Shards that were missing, truncated or disagreed with the manifest"),
    Metric("raylab_shard_bytes_read", "counter", "Image bytes read from shards", ("reader",)),
    Metric("raylab_decode_seconds", "histogram", "Seconds to read and decode one batch", ("reader",), SECONDS_BUCKETS),
    Metric("raylab_step_seconds", "histogram", "Seconds of one worker's batched FGSM update", ("worker",), SECONDS_BUCKETS),
    Metric("raylab_queue_depth", "gauge", "Decoded batches waiting between a reader and its worker", ("reader",)),
    Metric("raylab_worker_idle_ratio", "gauge", "Fraction of worker time spent waiting for batches"),
    Metric("raylab_rho_norm", "gauge", "||rho||_p of the current perturbation", ("p",)),
    Metric("raylab_stream_rate_ratio", "gauge",
           "Running fooling (or success) rate on the input stream: 1 - active/images (Section 2.2's stop rule)", ("criterion",)),
    Metric("raylab_rounds", "counter", "Rounds committed (one projection each)"),
    Metric("raylab_trials", "counter", "Trials (sweep trials; UAPs of audits and reproductions) by outcome", ("sweep", "status")),
    Metric("raylab_actors_replaced", "counter", "Workers and readers killed and replaced after they stopped making "
           "progress (hung, not dead)", ("role",)),
)
BY_NAME = {m.name: m for m in METRICS}


class Sink(Protocol):
    """Where recorded values go: Ray's metrics pipeline, a prometheus-client registry, or nowhere."""

    def record(self, metric: Metric, value: float, tags: dict[str, str]) -> None: ...


class NullSink:
    def record(self, metric: Metric, value: float, tags: dict[str, str]) -> None:
        pass


class RaySink:
    """``ray.util.metrics`` objects, made on first use in this process (Ray's agent exports them)."""

    def __init__(self) -> None:
        self._made: dict[str, Any] = {}

    def _get(self, m: Metric) -> Any:
        if m.name not in self._made:
            from ray.util import metrics as rm

            if m.kind == "counter":
                self._made[m.name] = rm.Counter(m.name, description=m.help, tag_keys=m.tag_keys)
            elif m.kind == "gauge":
                self._made[m.name] = rm.Gauge(m.name, description=m.help, tag_keys=m.tag_keys)
            else:
                self._made[m.name] = rm.Histogram(m.name, description=m.help, boundaries=list(m.buckets), tag_keys=m.tag_keys)
        return self._made[m.name]

    def record(self, metric: Metric, value: float, tags: dict[str, str]) -> None:
        obj = self._get(metric)
        if metric.kind == "counter":
            obj.inc(value, tags=tags)
        elif metric.kind == "gauge":
            obj.set(value, tags=tags)
        else:
            obj.observe(value, tags=tags)


class PrometheusSink:
    """A prometheus-client registry with the same exported names; ``serve`` exposes it over HTTP."""

    def __init__(self) -> None:
        import prometheus_client as pc

        self.registry = pc.CollectorRegistry()
        self._made: dict[str, Any] = {}
        for m in METRICS:
            name = PREFIX + m.name  # prometheus-client adds _total to counters itself
            if m.kind == "counter":
                self._made[m.name] = pc.Counter(name, m.help, m.tag_keys, registry=self.registry)
            elif m.kind == "gauge":
                self._made[m.name] = pc.Gauge(name, m.help, m.tag_keys, registry=self.registry)
            else:
                self._made[m.name] = pc.Histogram(name, m.help, m.tag_keys, buckets=m.buckets, registry=self.registry)
        self.server: Any = None

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Serve ``/metrics`` on ``host:port`` (port 0 picks a free one); returns the port."""
        import prometheus_client as pc

        from .errors import InputError

        try:
            self.server, _thread = pc.start_http_server(port, addr=host, registry=self.registry)
        except (OSError, OverflowError) as e:  # a port taken or not allowed; OverflowError: not a port number
            raise InputError(f"cannot serve metrics on {host}:{port} ({getattr(e, 'strerror', None) or e})") from None
        return int(self.server.server_port)

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def record(self, metric: Metric, value: float, tags: dict[str, str]) -> None:
        obj = self._made[metric.name].labels(**tags)
        if metric.kind == "counter":
            obj.inc(value)
        elif metric.kind == "gauge":
            obj.set(value)
        else:
            obj.observe(value)


@contextmanager
def served(port: int | None, host: str = "127.0.0.1", linger: float = 0.0,
           log: Callable[[str], None] = print) -> Iterator[Sink]:
    """A :class:`PrometheusSink` served on ``host:port`` while the block runs (a :class:`NullSink` without a port),
    kept serving ``linger`` seconds after a block that ends well, so that the last values get scraped. A port
    that cannot be served is an InputError before the block starts."""
    if port is None:
        yield NullSink()
        return
    sink = PrometheusSink()
    bound = sink.serve(port, host)
    log(f"serving metrics on http://{host}:{bound}/metrics")
    try:
        yield sink
        if linger > 0:
            log(f"run done; serving its final metrics for {linger:g} s more")
            time.sleep(linger)
    finally:
        sink.close()


def ray_sink() -> Sink:
    """A :class:`RaySink` when this process is part of a Ray cluster, else a :class:`NullSink`."""
    import ray

    return RaySink() if ray.is_initialized() else NullSink()


def _basename(location: str | object) -> str:
    text = str(location).rstrip("/")
    return text.rsplit("/", 1)[-1] or text


def run_tags(*, out: object, source: object, model: object) -> dict[str, str]:
    """The tags every metric of a run carries: the output folder's name (a sweep's trial id), the source's and the
    model's file names."""
    return {"run": _basename(out), "source": _basename(source), "model": _basename(model)}


class Telemetry:
    """What raylab records, in the paper's words; tags of the run are fixed at construction."""

    def __init__(self, sink: Sink | None = None, *, run: str = "", source: str = "", model: str = "") -> None:
        self.sink: Sink = sink if sink is not None else NullSink()
        self.base = {"run": run, "source": source, "model": model}

    def _record(self, name: str, value: float, **tags: Any) -> None:
        m = BY_NAME[name]
        full = {**self.base, **{k: str(v) for k, v in tags.items()}}
        if set(full) != set(m.tag_keys):
            raise ValueError(f"{name}: tags {sorted(full)} differ from the declared {sorted(m.tag_keys)}")
        if m.kind == "counter" and value == 0:
            return  # Ray's counters refuse 0; with either sink a counter appears at its first increment
        self.sink.record(m, float(value), full)

    def batch_done(self, *, worker: int | str, images: int, accepted: int) -> None:
        """A batch's step was committed into ρ."""
        self._record("raylab_images_processed", images, worker=worker)
        self._record("raylab_updates_accepted", accepted, worker=worker)
        self._record("raylab_batches_processed", 1, worker=worker)

    def round_done(self, *, rho_norm: float, p: str, stream_rate: float, criterion: str, idle_ratio: float | None) -> None:
        """After a projection: ||ρ||_p, the running rate on the stream and the workers' idle fraction."""
        self._record("raylab_rounds", 1)
        self._record("raylab_rho_norm", rho_norm, p=p)
        self._record("raylab_stream_rate_ratio", stream_rate, criterion=criterion)
        if idle_ratio is not None:
            self._record("raylab_worker_idle_ratio", idle_ratio)

    def skipped(self, *, images: int = 0, shards: int = 0) -> None:
        if images:
            self._record("raylab_images_skipped", images)
        if shards:
            self._record("raylab_shards_failed", shards)

    def decoded(self, *, reader: int | str, seconds: float, nbytes: int, queue_depth: int) -> None:
        """A reader handed out a batch: its decode time, the bytes it read, and what is left queued."""
        self._record("raylab_decode_seconds", seconds, reader=reader)
        self._record("raylab_shard_bytes_read", nbytes, reader=reader)
        self._record("raylab_queue_depth", queue_depth, reader=reader)

    def step_time(self, *, worker: int | str, seconds: float) -> None:
        self._record("raylab_step_seconds", seconds, worker=worker)

    def replaced(self, *, role: Literal["worker", "reader"]) -> None:
        """A hung worker or reader was killed so that Ray replaces it."""
        self._record("raylab_actors_replaced", 1, role=role)

    def trial_done(self, *, sweep: str, status: Literal["finished", "stopped", "failed"]) -> None:
        self._record("raylab_trials", 1, sweep=sweep, status=status)
