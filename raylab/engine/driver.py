"""The engine's driver: rounds of batched UAP updates on Ray workers, reduced into one ρ.

Each round (Section 2.2's rule, batched as in :func:`raylab.core.batch_update`):
every worker w takes the next batch of its reader's stream, computes the sum of
its accepted FGSM steps against the current ρ, and the driver sets
``ρ <- Proj(ρ + Σ_w step_w)`` (summed in worker order, so runs are
deterministic on CPU) and broadcasts the new ρ through the object store.
With 1 worker and B=1 this is the faithful per-image algorithm; with W
workers of batch B it is batched mode with batch W×B over the order
"round by round, worker by worker".

Fault tolerance: batches live in the object store, owned by the driver, so a
worker that dies is restarted by Ray and its update retried on the same batch
and ρ; readers seek to the position they are asked for. Every
``checkpoint_every`` rounds ρ, the reader positions and the counters are
written atomically to the output location; a rerun with the same output
location resumes from there and ends with the same ρ.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import ray
import torch
from torch import Tensor

from ..audit import Target, load_target
from ..config import EngineConfig
from ..core import (
    VALID_RANGE, Criterion, StepStats, Targeted, Untargeted, fooling_rate, lp_norm, project_lp, random_sphere,
    success_rate,
)
from ..data.shards import Manifest, read_manifest
from ..errors import InputError, RaylabError
from ..evaluation import headline, report
from ..store import Store
from ..telemetry import Telemetry, ray_sink
from .readers import BatchMeta, Position, ShardReader
from .workers import UAPWorker

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = "raylab.engine-checkpoint/1"


@dataclass
class RunState:
    """Everything needed to resume: ρ, the round, each reader's position, and the counters."""

    rho: Tensor
    round: int = 0
    positions: list[list[int]] = field(default_factory=list)
    done: list[bool] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=lambda: {"images": 0, "active": 0, "accepted": 0})
    per_pass: dict[str, dict[str, int]] = field(default_factory=dict)
    skipped: list[list[str]] = field(default_factory=list)
    shards_failed: list[list[str]] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    stopped_by_delta: bool = False

    def to_bytes(self, fingerprint: str) -> bytes:
        meta = {k: v for k, v in self.__dict__.items() if k != "rho"}
        buf = io.BytesIO()
        torch.save({"format": CHECKPOINT_FORMAT, "fingerprint": fingerprint, "rho": self.rho,
                    "state": json.dumps(meta)}, buf)
        return buf.getvalue()

    @staticmethod
    def from_bytes(data: bytes, fingerprint: str, where: str) -> "RunState":
        try:
            obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as e:
            raise InputError(f"{where}: cannot read checkpoint ({type(e).__name__})") from None
        if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
            raise InputError(f"{where}: not a raylab engine checkpoint")
        if obj["fingerprint"] != fingerprint:
            raise InputError(f"{where}: checkpoint of a different run (model, shards or UAP parameters differ); use a new output location")
        return RunState(rho=obj["rho"], **json.loads(obj["state"]))


@dataclass(frozen=True)
class RoundReport:
    """Passed to ``on_round`` after every committed round."""

    round: int
    stats: StepStats
    rho: Tensor
    totals: dict[str, int]
    seconds: float
    worker_pids: dict[int, int] = field(default_factory=dict)


def _criterion(target: int | None) -> Criterion:
    return Untargeted() if target is None else Targeted(target)


def fingerprint(config: EngineConfig, model_bytes: bytes, manifest: Manifest) -> str:
    """What determines ρ: a resumed run must match it exactly."""
    keys = ("p", "zeta", "eps", "max_passes", "delta", "target", "batch_size", "workers", "step_norm", "clip", "seed", "amp")
    h = hashlib.sha256(model_bytes)
    h.update(json.dumps({k: getattr(config, k) for k in keys}, sort_keys=True, default=str).encode())
    h.update(json.dumps([(s.name, s.count, s.sha256) for s in manifest.shards]).encode())
    return h.hexdigest()


def _basename(location: str) -> str:
    return location.rstrip("/").rsplit("/", 1)[-1] or location


def run_tags(config: EngineConfig) -> dict[str, str]:
    """The tags every metric of this run carries: the output folder's name (a sweep's trial id), source, model."""
    return {"run": _basename(config.out), "source": _basename(config.shards), "model": _basename(config.model)}


def _read_model(location: str) -> bytes:
    try:
        if "://" in location:
            import fsspec

            with fsspec.open(location, "rb") as f:
                return f.read()
        with open(location, "rb") as f:
            return f.read()
    except OSError as e:
        raise InputError(f"cannot read model weights {location} ({e.strerror or e})") from None


class Engine:
    """One distributed UAP run; ``Engine(config).run()`` returns the metrics (see :func:`run_engine`)."""

    def __init__(self, config: EngineConfig, *, on_round: Callable[[RoundReport], None] | None = None,
                 log: Callable[[str], None] = print) -> None:
        self.config, self.on_round, self.log = config, on_round, log
        self.store = Store.at(config.out)
        self.model_bytes = _read_model(config.model)
        self.target: Target = load_target(self.model_bytes, config.medical, target=config.target, zeta=config.zeta,
                                          p=config.p, model_name=config.model)
        self.manifest = read_manifest(config.shards)
        if len(self.manifest.shards) < config.workers:
            raise InputError(f"{config.shards}: {len(self.manifest.shards)} shard(s) for {config.workers} workers; "
                             "write smaller shards (raylab shard --shard-size) or use fewer workers")
        self.fingerprint = fingerprint(config, self.model_bytes, self.manifest)
        self.criterion = _criterion(self.target.target)
        self.clip = VALID_RANGE if config.clip else None
        self._clean: Tensor | None = None
        self.store.makedirs()

    # -- set-up ---------------------------------------------------------------------------------------------------
    def _start_actors(self) -> None:
        c, spec = self.config, self.target.model.spec
        have = ray.cluster_resources()
        need_cpu, need_gpu = c.workers * (c.cpus_per_worker + c.cpus_per_reader), c.workers * c.num_gpus_per_worker
        if need_cpu > have.get("CPU", 0) or need_gpu > have.get("GPU", 0):
            self.log(f"warning: {c.workers} worker(s) and reader(s) need {need_cpu:g} CPU and {need_gpu:g} GPU, the cluster has "
                     f"{have.get('CPU', 0):g} CPU and {have.get('GPU', 0):g} GPU now; waiting for the autoscaler "
                     "(lower --cpus-per-worker/--cpus-per-reader or --workers on a fixed cluster)")
        # Held for the whole run: a restarted worker re-reads its creation arguments.
        self.model_ref = model_ref = ray.put(self.model_bytes)
        tags = run_tags(c)
        self.telemetry = Telemetry(ray_sink(), **tags)
        self.readers = [
            ShardReader.options(num_cpus=c.cpus_per_reader, resources=dict(c.resources)).remote(
                [self.manifest.url(i) for i in range(w, len(self.manifest.shards), c.workers)],
                counts=[s.count for s in self.manifest.shards[w::c.workers]], passes=c.max_passes,
                channels=spec.in_channels, size=spec.image_size, batch_size=c.batch_size, prefetch=c.prefetch, index=w, tags=tags)
            for w in range(c.workers)
        ]
        self.workers = [
            UAPWorker.options(num_cpus=c.cpus_per_worker, num_gpus=c.num_gpus_per_worker, resources=dict(c.resources)).remote(
                model_ref, device=c.device, amp=c.amp, threads=int(c.cpus_per_worker), name=c.model, index=w, tags=tags)
            for w in range(c.workers)
        ]

    def _initial_state(self) -> RunState:
        if self.store.exists(CHECKPOINT):
            state = RunState.from_bytes(self.store.read_bytes(CHECKPOINT), self.fingerprint, self.store.path(CHECKPOINT))
            self.log(f"resuming from {self.store.path(CHECKPOINT)} at round {state.round} ({state.stats['images']} images done)")
            return state
        shape = (self.target.model.spec.in_channels, self.target.model.spec.image_size, self.target.model.spec.image_size)
        return RunState(rho=torch.zeros(shape), positions=[Position().to_list() for _ in range(self.config.workers)],
                        done=[False] * self.config.workers)

    # -- the loop -------------------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        c = self.config
        self._start_actors()
        state = self._initial_state()
        self.log(f"UAP on {c.workers} worker(s) x batch {c.batch_size}, {self.manifest.total} images in "
                 f"{len(self.manifest.shards)} shards x {c.max_passes} pass(es), L{c.p} zeta={c.zeta:g} "
                 f"(radius {self.target.radius:.4g}), eps={c.eps:g}")
        ray.get([a.pid.remote() for a in self.readers + self.workers])  # actors up (models loaded) before the clock starts
        session = time.perf_counter()
        started, last_log = session - state.seconds, 0.0
        compute = idle = 0.0
        pending = {w: self.readers[w].read.remote(state.positions[w]) for w in range(c.workers) if not state.done[w]}
        images_at_start = state.stats["images"]
        while not state.stopped_by_delta:
            batch_for = self._next_batches(state, pending)
            if not batch_for:
                break
            rho_ref = ray.put(state.rho)
            futures = {w: self.workers[w].update.remote(img, rho_ref, eps=c.eps, criterion=self.criterion,
                                                        step_norm=c.step_norm, clip=self.clip)
                       for w, (img, _) in batch_for.items()}
            for w, (_, meta) in batch_for.items():  # decode the next round while this one computes
                pending[w] = self.readers[w].read.remote(meta.end.to_list())
            results = {w: self._get_update(w, futures[w], batch_for[w], rho_ref) for w in sorted(futures)}
            round_stats, total = StepStats(), torch.zeros_like(state.rho)
            for w in sorted(results):
                step, stats, timing = results[w]
                total += step
                round_stats = round_stats + stats
                compute, idle = compute + timing["compute_seconds"], idle + timing["idle_seconds"]
                meta = batch_for[w][1]
                self._count(state, meta.start.pass_, stats)
                state.positions[w] = meta.end.to_list()
                self._record_skips(state, meta)
                self.telemetry.batch_done(worker=w, images=stats.images, accepted=stats.accepted)
            if round_stats.accepted:
                rho = project_lp(state.rho + total, radius=self.target.radius, p=c.p)
                if not torch.isfinite(rho).all():  # never checkpoint a broken rho: the last good one stays on disk
                    raise RaylabError(f"round {state.round + 1}: rho became NaN/inf (non-finite gradients from the model?); "
                                      f"the last good checkpoint is {self.store.path(CHECKPOINT)}")
                state.rho = rho
            state.round += 1
            state.seconds = time.perf_counter() - started
            self.telemetry.round_done(rho_norm=float(lp_norm(state.rho[None], c.p)), p=str(c.p),
                                      stream_rate=1 - state.stats["active"] / max(1, state.stats["images"]),
                                      criterion="fooling" if self.target.target is None else "success",
                                      idle_ratio=idle / (idle + compute) if idle + compute > 0 else None)
            self._check_delta(state)
            if state.round % c.checkpoint_every == 0:
                self.store.write_bytes(CHECKPOINT, state.to_bytes(self.fingerprint))
            if c.eval_every and state.round % c.eval_every == 0:
                state.history.append({"round": state.round, "images": state.stats["images"], **self._rates(state.rho)})
            if self.on_round is not None:
                self.on_round(RoundReport(state.round, round_stats, state.rho, dict(state.stats), state.seconds))
            if state.seconds - last_log >= c.progress_every:
                last_log = state.seconds
                self.log(self._progress(state, images_at_start, session, compute, idle))
        state.seconds = time.perf_counter() - started
        self.store.write_bytes(CHECKPOINT, state.to_bytes(self.fingerprint))
        self.log(self._progress(state, images_at_start, session, compute, idle))
        return self._finish(state, compute, idle)

    def _next_batches(self, state: RunState, pending: dict[int, Any]) -> dict[int, tuple[Any, BatchMeta]]:
        """The batch each live reader has next; pass ends and skip records are consumed on the way."""
        batch_for = {}
        for w in sorted(pending):
            while True:
                img_ref, meta_ref = pending[w]
                meta: BatchMeta = ray.get(meta_ref)
                if meta.exhausted:
                    state.done[w] = True
                    del pending[w]
                    break
                if meta.size == 0:  # end of a pass: record its skips and move on
                    self._record_skips(state, meta)
                    state.positions[w] = meta.end.to_list()
                    pending[w] = self.readers[w].read.remote(state.positions[w])
                    continue
                batch_for[w] = (img_ref, meta)
                break
        return batch_for

    def _get_update(self, w: int, future: Any, batch: tuple[Any, BatchMeta], rho_ref: Any) -> tuple[Tensor, StepStats, dict[str, float]]:
        """The worker's result, redone when its worker died (Ray restarts it) or its batch was lost with a node.

        A lost batch is read again from its reader at the batch's start position (readers seek), so the redone
        update is the same update.
        """
        images, meta = batch
        c = self.config
        for attempt in range(5):
            try:
                return ray.get(future)
            except ray.exceptions.ObjectLostError as e:
                self.log(f"batch of worker {w} lost ({type(e).__name__}); reading it again (attempt {attempt + 2})")
                images, _ = self.readers[w].read.remote(meta.start.to_list())
            except ray.exceptions.RayActorError as e:
                self.log(f"worker {w} failed ({type(e).__name__}); redoing its batch (attempt {attempt + 2})")
            future = self.workers[w].update.remote(images, rho_ref, eps=c.eps, criterion=self.criterion,
                                                   step_norm=c.step_norm, clip=self.clip)
        return ray.get(future)

    def _record_skips(self, state: RunState, meta: BatchMeta) -> None:
        state.skipped += [list(s) for s in meta.skipped]
        state.shards_failed += [list(s) for s in meta.shards_failed]
        self.telemetry.skipped(images=len(meta.skipped), shards=len(meta.shards_failed))

    @staticmethod
    def _count(state: RunState, pass_: int, stats: StepStats) -> None:
        for bucket in (state.stats, state.per_pass.setdefault(str(pass_), {"images": 0, "active": 0, "accepted": 0})):
            bucket["images"] += stats.images
            bucket["active"] += stats.active
            bucket["accepted"] += stats.accepted

    def _check_delta(self, state: RunState) -> None:
        """After a pass is complete on every reader: stop once the stream score reached 1 - δ, or nothing was active."""
        live = [Position.from_list(p).pass_ for p, d in zip(state.positions, state.done) if not d]
        finished_pass = (min(live) if live else self.config.max_passes) - 1
        counts = state.per_pass.get(str(finished_pass))
        if counts is None or counts.get("checked"):
            return
        counts["checked"] = 1
        score = 1 - counts["active"] / max(1, counts["images"])
        if (self.config.delta > 0 and score >= 1 - self.config.delta) or counts["active"] == 0:
            state.stopped_by_delta = finished_pass + 1 < self.config.max_passes
            if state.stopped_by_delta:
                self.log(f"stream score {score:.3f} after pass {finished_pass + 1} reached 1 - delta; stopping")

    def _progress(self, state: RunState, images_at_start: int, session: float, compute: float, idle: float) -> str:
        """The live line: images/s of this session, accepted updates, ||ρ||, the running rate on the stream."""
        c, s = self.config, state.stats
        rate = (s["images"] - images_at_start) / max(1e-9, time.perf_counter() - session)
        stream = 1 - s["active"] / max(1, s["images"])
        idle_frac = idle / max(1e-9, idle + compute)
        return (f"round {state.round} | {s['images']} images | {rate:.0f} img/s | accepted {s['accepted']} | "
                f"||rho||_{c.p} {float(lp_norm(state.rho[None], c.p)):.4g} | stream rate {stream:.3f} | "
                f"skipped {len(state.skipped)} | worker idle {idle_frac:.0%}")

    # -- evaluation and outputs -----------------------------------------------------------------------------------
    def _predict(self, images: Tensor, rho: Tensor | None) -> Tensor:
        """Labels of the medical test images under ρ, computed in parallel on the workers."""
        chunks = images.chunk(len(self.workers))
        rho_ref = None if rho is None else ray.put(rho)
        futures = [self.workers[i].predict.remote(chunk, rho_ref, self.clip) for i, chunk in enumerate(chunks)]
        return torch.cat(ray.get(futures))

    def _clean_labels(self) -> Tensor:
        """C(x) of the medical test images: computed once, they do not depend on ρ."""
        if self._clean is None:
            self._clean = self._predict(self.target.medical.test_images, None)
        return self._clean

    def _rates(self, rho: Tensor) -> dict[str, float]:
        """R_f (or R_s) of ρ on the test set, for the ``eval_every`` history."""
        adv = self._predict(self.target.medical.test_images, rho)
        if self.target.target is None:
            return {"fooling_rate": fooling_rate(self._clean_labels(), adv)}
        return {"success_rate": success_rate(adv, self.target.target)}

    def _finish(self, state: RunState, compute: float, idle: float) -> dict[str, Any]:
        from ..plots import save_confusion_png, save_examples_png, save_uap_png

        c, t = self.config, self.target
        control = random_sphere(tuple(state.rho.shape), radius=t.radius, p=c.p,
                                generator=torch.Generator().manual_seed(c.seed + 1))
        test = t.medical.test_images
        clean, adv, adv_random = self._clean_labels(), self._predict(test, state.rho), self._predict(test, control)
        metrics = report(clean, adv, adv_random, t.medical.test_labels, t.class_names, t.target)
        metrics.update(
            radius=t.radius,
            uap_norms={"l2": float(lp_norm(state.rho[None], 2)), "linf": float(lp_norm(state.rho[None], "inf"))},
            source={"kind": "shards", "location": c.shards, "images": self.manifest.total,
                    "skipped": len(state.skipped), "skipped_files": [f"{n}: {why}" for n, why in state.skipped[:100]],
                    "shards_failed": [f"{n}: {why}" for n, why in state.shards_failed]},
            stats=dict(state.stats), rounds=state.round, per_pass=state.per_pass, history=state.history,
            stopped_by_delta=state.stopped_by_delta, seconds=state.seconds,
            images_per_second=state.stats["images"] / state.seconds if state.seconds > 0 else None,
            worker_idle_fraction=idle / max(1e-9, idle + compute),
            config=c.to_dict(),
        )
        buf = io.BytesIO()
        np.save(buf, state.rho.numpy().astype(np.float32))
        self.store.write_bytes("uap.npy", buf.getvalue())
        self.store.write_text("metrics.json", json.dumps(metrics, indent=2))
        rate = headline(metrics)
        title = f"UAP from {c.shards.rstrip('/').rsplit('/', 1)[-1]}, L{c.p} zeta={c.zeta:g}, {rate}"
        self._png("uap.png", lambda p: save_uap_png(state.rho, p, title=title))
        self._png("confusion.png", lambda p: save_confusion_png(torch.tensor(metrics["confusion_matrix"]), t.class_names, p, title=title))
        if c.examples:
            order = torch.cat([(clean != adv).nonzero().flatten(), (clean == adv).nonzero().flatten()])[: c.examples]
            self._png("examples.png", lambda p: save_examples_png(t.medical.test_images[order], state.rho, clean[order],
                                                                  adv[order], t.class_names, p))
        return metrics

    def _png(self, name: str, draw: Callable[[Any], None]) -> None:
        import tempfile
        from pathlib import Path

        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / name
            draw(path)
            self.store.write_bytes(name, path.read_bytes())


def run_engine(config: EngineConfig, *, on_round: Callable[[RoundReport], None] | None = None,
               log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run one distributed UAP (Ray must be initialized, or a local Ray is started) and return its metrics."""
    engine = Engine(config, on_round=on_round, log=log)  # all input checks happen here, before any actor starts
    if not ray.is_initialized():
        ray.init()
    try:
        return engine.run()
    finally:
        for actor in getattr(engine, "workers", []) + getattr(engine, "readers", []):
            ray.kill(actor)
