"""The engine's driver: rounds of batched UAP updates on Ray workers, reduced into one ρ.

Each round of the paper's method (Section 2.2's rule, batched as in :func:`raylab.core.batch_update`):
every worker w takes the next batch of its reader's stream, computes the sum of
its accepted FGSM steps against the current ρ, and the driver commits
``ρ <- Proj(ρ + Σ_w step_w)`` (:func:`raylab.engine.state.commit_round`,
summed in worker order, so runs are deterministic on CPU) and broadcasts the
new ρ through the object store. With 1 worker and B=1 this is the faithful
per-image algorithm; with W workers of batch B it is batched mode with batch
W×B over the order "round by round, worker by worker". A round of the
stochastic-gradient method (``method="sgd"``, :mod:`raylab.core.sgd`) sums the
workers' gradients instead and takes one scheduled step (``SGDRule``).

Fault tolerance: batches live in the object store, owned by the driver, so a
worker that dies is restarted by Ray and the driver redoes its update on the
same batch and ρ (at most ``max_batch_attempts`` times: a batch that kills
its worker every time fails the run with one line naming it); readers seek to
the position they are asked for. Every ``checkpoint_every`` rounds ρ, the
reader positions and the counters are written atomically to the output
location; a rerun with the same output location resumes from there and ends
with the same ρ. The finished run is evaluated on the workers (:mod:`.testset`) and written as
one :class:`~raylab.record.RunRecord` (:func:`raylab.record.write_run`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

import ray
from torch import Tensor

from ..config import EngineConfig
from ..core import VALID_RANGE, StepStats, Untargeted, lp_norm, weak_regime
from ..data.shards import read_manifest
from ..errors import InputError, RaylabError
from ..evaluation import Evaluation, evaluate
from ..record import Build, Figures, ResultsKey, RunRecord, Source, write_run
from ..store import Store
from ..target import Target, load_target, medical_digest, read_model
from ..telemetry import Telemetry, ray_sink, run_tags
from .capacity import refuse_on_local_ray, shortfall
from .feed import FeedCheck
from .labels import CleanLabels
from .placement import placement
from .readers import BatchMeta, ShardReader
from .state import (
    CHECKPOINT, PaperRule, Rule, RunState, SGDRule, WorkerResult, commit_round, distinct, end_of_pass, fingerprint,
    record_marker,
)
from .testset import WorkerPredict
from .workers import Update, WorkerActor


#: A worker or reader is presumed hung after this many times its slowest recent update, and never sooner than
#: HANG_FLOOR seconds (``EngineConfig.hang_timeout`` overrides both).
HANG_FACTOR, HANG_FLOOR = 10.0, 120.0


@dataclass(frozen=True)
class RoundReport:
    """Passed to ``on_round`` after every committed round."""

    round: int
    stats: StepStats
    rho: Tensor
    totals: dict[str, int]
    seconds: float
    worker_pids: dict[int, int] = field(default_factory=dict)


def _cause(e: ray.exceptions.RayTaskError) -> str:
    """The one line of an error raised inside an actor (not Ray's traceback around it)."""
    cause = getattr(e, "cause", None)
    return str(cause) if cause is not None else str(e).strip().splitlines()[-1]


class Engine:
    """One distributed UAP run; ``Engine(config).run()`` returns its record (see :func:`run_engine`)."""

    def __init__(self, config: EngineConfig, *, on_round: Callable[[RoundReport], None] | None = None,
                 log: Callable[[str], None] = print, results: ResultsKey | None = None) -> None:
        self.config, self.on_round, self.log, self.results = config, on_round, log, results
        self.store = Store.at(config.out)
        self.model_bytes = read_model(config.model)
        self.target: Target = load_target(self.model_bytes, config.medical, target=config.target, zeta=config.zeta,
                                          p=config.p, model_name=config.model)
        self.manifest = read_manifest(config.shards)
        if len(self.manifest.shards) < config.workers:
            raise InputError(f"{config.shards}: {len(self.manifest.shards)} shard(s) for {config.workers} workers; "
                             "write smaller shards (raylab shard --shard-size) or use fewer workers")
        self.fingerprint = fingerprint(config.to_dict(), self.model_bytes,
                                       [(s.name, s.count, s.sha256) for s in self.manifest.shards],
                                       medical_digest(self.target.medical))
        self.clip = VALID_RANGE if config.clip else None
        self.rule = self._rule()
        #: The shard names each reader owns (worker w reads shards w, w+W, ...), to name a batch in messages.
        self.reader_shards = [[s.name for s in self.manifest.shards[w::config.workers]] for w in range(config.workers)]
        self.workers: list[Any] = []
        self.readers: list[Any] = []
        #: C(x) of the stream's batches, handed back on their later passes (non-targeted runs of several passes)
        self.labels = CleanLabels() if isinstance(self.target.criterion, Untargeted) and (config.max_passes or 1) > 1 else None
        self.compute = self.idle = 0.0  # worker seconds computing and waiting, this session
        self.recent: deque[float] = deque(maxlen=20)  # seconds of the last updates, for the hang deadline
        self.replaced = 0
        #: the batch (its object ref) each worker was last asked to stage, and its key (:mod:`.staging`)
        self.staged_for: dict[int, tuple[Any, int]] = {}
        self.batches_staged = 0
        self.resume = self._read_checkpoint()  # a checkpoint of another run is refused here, before any actor starts
        self.store.makedirs()

    def _rule(self) -> Rule:
        """How a round's summed parts become the next ρ: the paper's rule, or the stochastic-gradient step."""
        c, t = self.config, self.target
        if c.method != "sgd":
            return PaperRule(t.radius, c.p)
        assert c.max_passes is not None
        per_worker = [sum(s.count for s in self.manifest.shards[w::c.workers]) for w in range(c.workers)]
        rounds = c.max_passes * max(math.ceil(n / c.batch_size) for n in per_worker)  # T of the step schedule
        return SGDRule(t.radius, c.p, c.lr, c.schedule, rounds, t.criterion.sign)

    def _read(self, w: int, position: list[int]) -> Any:
        """Ask reader ``w`` for the item at ``position``; with staging, its worker copies it to its device as soon
        as it is decoded, while the worker still computes the current round (:mod:`raylab.engine.staging`)."""
        pending = self.readers[w].read.remote(position)
        if self.config.staged:
            key = self.staged_for[w][1] + 1 if w in self.staged_for else 0
            self.workers[w].stage.remote(pending[0], key)
            self.staged_for[w] = (pending[0], key)
        return pending

    def _submit(self, w: int, images: Any, rho_ref: Any, meta: BatchMeta) -> Any:
        c = self.config
        clean = None if self.labels is None else self.labels.get(w, meta)
        staged = self.staged_for.get(w)
        return self.workers[w].update.remote(images, rho_ref, method=c.method, criterion=self.target.criterion,
                                             clip=self.clip, eps=c.eps, step_norm=c.step_norm, loss_clamp=c.loss_clamp,
                                             clean=clean, staged=staged[1] if staged and staged[0] is images else None)

    # -- set-up ---------------------------------------------------------------------------------------------------
    def _needs(self) -> tuple[float, float]:
        """The CPUs and GPUs the workers and their readers ask for, together."""
        c = self.config
        return c.workers * (c.cpus_per_worker + c.cpus_per_reader), c.workers * c.num_gpus_per_worker

    def _shortfall(self) -> str | None:
        """What the workers and readers ask for beside what the cluster has now, when it has less; else None."""
        short = shortfall(*self._needs())
        return short and f"{self.config.workers} worker(s) and their reader(s) {short}"

    def _start_actors(self, fixed_cluster: bool) -> None:
        c, spec = self.config, self.target.model.spec
        if fixed_cluster:
            refuse_on_local_ray(f"--workers {c.workers}: {c.workers} worker(s) and their reader(s)", *self._needs(),
                                fix="use fewer --workers or lower --cpus-per-worker/--cpus-per-reader")
        short = self._shortfall()
        if short:
            self.log(f"warning: {short} now; waiting at most {c.start_timeout:g} s (--start-timeout) for the autoscaler "
                     "(lower --cpus-per-worker/--cpus-per-reader or --workers on a fixed cluster)")
        # Held for the whole run: a restarted worker re-reads its creation arguments.
        self.model_ref = model_ref = ray.put(self.model_bytes)
        tags = run_tags(out=c.out, source=c.shards, model=c.model)
        self.telemetry = Telemetry(ray_sink(), **tags)
        # Workers first: in a sweep trial's placement group each actor takes a bundle of its own shape (engine.placement).
        where = placement([{"CPU": c.cpus_per_worker, "GPU": c.num_gpus_per_worker, **c.resources}] * c.workers
                          + [{"CPU": c.cpus_per_reader, **c.resources}] * c.workers, spread=c.spread)
        self.readers = [
            ShardReader.options(num_cpus=c.cpus_per_reader, resources=dict(c.resources), **where[c.workers + w]).remote(
                [self.manifest.url(i) for i in range(w, len(self.manifest.shards), c.workers)],
                counts=[s.count for s in self.manifest.shards[w::c.workers]], passes=c.max_passes,
                channels=spec.in_channels, size=spec.image_size, batch_size=c.batch_size, prefetch=c.prefetch,
                threads=c.reader_threads, device_jpegs=c.decode_on == "worker", seed=c.seed if c.shuffle else None,
                index=w, tags=tags)
            for w in range(c.workers)
        ]
        self.workers = [
            WorkerActor.options(num_cpus=c.cpus_per_worker, num_gpus=c.num_gpus_per_worker, resources=dict(c.resources),
                                **where[w]).remote(
                model_ref, device=c.device, amp=c.amp, threads=int(c.cpus_per_worker), name=c.model, index=w, tags=tags,
                static_shapes=c.static, compile=c.compile)
            for w in range(c.workers)
        ]
        self.predict = WorkerPredict(self.workers, self.target.medical.test_images, self.clip)

    def _read_checkpoint(self) -> RunState | None:
        """The state to resume from, if the output location holds this run's checkpoint; InputError for another run's."""
        if not self.store.exists(CHECKPOINT):
            return None
        return RunState.from_bytes(self.store.read_bytes(CHECKPOINT), self.fingerprint, self.store.path(CHECKPOINT))

    def _initial_state(self) -> RunState:
        if self.resume is not None:
            s = self.resume
            self.log(f"resuming from {self.store.path(CHECKPOINT)} at round {s.round} ({s.stats['images']} images done)")
            return s
        return RunState.start(self.target.image_shape, self.config.workers)

    def _checkpoint(self, state: RunState) -> None:
        self.store.write_bytes(CHECKPOINT, state.to_bytes(self.fingerprint))

    # -- the loop -------------------------------------------------------------------------------------------------
    def run(self, *, fixed_cluster: bool = False) -> RunRecord:
        """The whole run; ``fixed_cluster``: Ray was started by this run, so workers it cannot place are an error at
        once (on a cluster that can grow they are waited for, at most ``start_timeout`` seconds)."""
        c = self.config
        self._start_actors(fixed_cluster)
        state = self._initial_state()
        step = f"eps={c.eps:g}" if c.method == "paper" else f"lr={c.lr:g} x radius, {c.schedule}"
        self.log(f"{c.method} UAP on {c.workers} worker(s) x batch {c.batch_size}, {self.manifest.total} images in "
                 f"{len(self.manifest.shards)} shards x {c.max_passes} pass(es), L{c.p} zeta={c.zeta:g} "
                 f"(radius {self.target.radius:.4g}), {step}")
        for warning in (weak_regime(self.manifest.total, c.workers * c.batch_size, passes=c.max_passes or 1,
                                    method=c.method), self._stored_short()):
            if warning:
                self.log(warning)
        self._await_actors()  # actors up (models loaded) before the clock starts
        session = time.perf_counter()
        started, last_log = session - state.seconds, 0.0
        self.compute = self.idle = 0.0
        self.feed = FeedCheck(c.reader_threads)
        pending = {w: self._read(w, state.positions[w]) for w in range(c.workers) if not state.done[w]}
        images_at_start, rounds_at_start = state.stats["images"], state.round
        try:
            while not state.stopped_by_delta:
                state, batch_for = self._next_batches(state, pending)
                if not batch_for:
                    break
                rho_ref = ray.put(state.rho)
                futures = {w: self._submit(w, img, rho_ref, meta) for w, (img, meta) in batch_for.items()}
                for w, (_, meta) in batch_for.items():  # decode the next round while this one computes
                    pending[w] = self._read(w, meta.end.to_list())
                results = []
                for w in sorted(futures):
                    upd = self._get_update(w, futures[w], batch_for[w], rho_ref)
                    meta = batch_for[w][1]
                    self._keep_labels(w, meta, upd)
                    self.batches_staged += upd.staged
                    if upd.skipped:  # images the worker's device could not decode count as the reader's skips
                        meta = dataclasses.replace(meta, skipped=[*meta.skipped, *upd.skipped])
                    results.append(WorkerResult(w, upd.step, upd.stats, meta))
                    timing = upd.timing
                    self.compute, self.idle = self.compute + timing["compute_seconds"], self.idle + timing["idle_seconds"]
                    self.recent.append(timing["compute_seconds"])
                    self.feed.add(meta.decode_seconds, timing["compute_seconds"])
                state = commit_round(state, results, rule=self.rule)
                state.seconds = time.perf_counter() - started
                self._count(results)
                self._round_telemetry(state)
                starving = self.feed.verdict(self._idle_fraction(), state.round - rounds_at_start)
                if starving:
                    self.log(starving)
                state, stop_line = end_of_pass(state, max_passes=c.max_passes, delta=c.delta)
                if stop_line:
                    self.log(stop_line)
                if state.round % c.checkpoint_every == 0:
                    self._checkpoint(state)
                if c.eval_every and state.round % c.eval_every == 0:
                    state.history.append({"round": state.round, "images": state.stats["images"], **self._rates(state.rho)})
                if self.on_round is not None:
                    round_stats = sum((r.stats for r in results), StepStats())
                    self.on_round(RoundReport(state.round, round_stats, state.rho, dict(state.stats), state.seconds))
                if state.seconds - last_log >= c.progress_every:
                    last_log = state.seconds
                    self.log(self._progress(state, images_at_start, session))
        except (KeyboardInterrupt, SystemExit):  # Ctrl-C, or SIGTERM (`ray job stop`; ray.init makes it SystemExit)
            # `state` is the last committed round (commit_round is pure): keep it, not only the last periodic checkpoint
            state.seconds = time.perf_counter() - started
            self._checkpoint(state)
            self.log(f"interrupted after round {state.round} ({state.stats['images']} images): checkpoint written to "
                     f"{self.store.path(CHECKPOINT)}; rerun with the same --out to resume")
            raise
        state.seconds = time.perf_counter() - started
        self._checkpoint(state)
        self.log(self._progress(state, images_at_start, session))
        return self._finish(state)

    def _keep_labels(self, w: int, meta: BatchMeta, upd: Update) -> None:
        """Keep the clean labels a worker computed for its batch's later passes, or count the ones it was handed."""
        if self.labels is None:
            return
        if upd.labels is not None:
            self.labels.put(w, meta, upd.labels)
        else:
            self.labels.count_reused(upd.stats.images)

    def _idle_fraction(self) -> float:
        """The share of this session's worker time spent waiting for the next batch."""
        return self.idle / max(1e-9, self.idle + self.compute)

    def _count(self, results: list[WorkerResult]) -> None:
        """Telemetry of a committed round (counted only once the commit succeeded)."""
        for r in results:
            self.telemetry.batch_done(worker=r.worker, images=r.stats.images, accepted=r.stats.accepted)
            self.telemetry.skipped(images=len(r.meta.skipped), shards=len(r.meta.shards_failed))

    def _round_telemetry(self, state: RunState) -> None:
        c = self.config
        self.telemetry.round_done(rho_norm=float(lp_norm(state.rho[None], c.p)), p=str(c.p), stream_rate=state.stream_rate,
                                  criterion="fooling" if self.target.target is None else "success",
                                  idle_ratio=self.idle / (self.idle + self.compute) if self.idle + self.compute > 0 else None)

    def deadline(self) -> float:
        """Seconds one batch may take before its worker or reader is presumed hung (not dead: Ray sees a dead one)."""
        if self.config.hang_timeout is not None:
            return self.config.hang_timeout
        return max(HANG_FLOOR, HANG_FACTOR * max(self.recent, default=0.0))

    def _replace(self, role: str, w: int, why: str) -> None:
        """Kill a hung worker or reader so that Ray restarts it, and wait for the new one."""
        actor = self.workers[w] if role == "worker" else self.readers[w]
        self.log(f"{role} {w} {why}; killing it so that Ray replaces it")
        ray.kill(actor, no_restart=False)
        self.replaced += 1
        self.telemetry.replaced(role=role)  # type: ignore[arg-type]
        self._await_restart(role, w)

    def _get_meta(self, w: int, state: RunState, pending: dict[int, Any]) -> BatchMeta:
        """The meta of reader ``w``'s next item; a reader that delivers nothing within the deadline is replaced and
        asked again from its position (readers seek)."""
        for attempt in range(1, self.config.max_batch_attempts + 1):
            try:
                return ray.get(pending[w][1], timeout=self.deadline())
            except ray.exceptions.RayTaskError as e:  # the reader failed (not a bad shard: those are reported, not raised)
                raise RaylabError(_cause(e)) from None
            except ray.exceptions.GetTimeoutError:
                self._replace("reader", w, f"delivered nothing for {self.deadline():g} s")
            except ray.exceptions.RayActorError as e:
                self.log(f"reader {w} failed ({type(e).__name__}); reading from its position again")
                self._await_restart("reader", w)
            pending[w] = self._read(w, state.positions[w])
        raise RaylabError(f"reader {w} failed {self.config.max_batch_attempts} times at its position {state.positions[w]}; "
                          f"stopping, the last checkpoint is {self.store.path(CHECKPOINT)}")

    def _next_batches(self, state: RunState, pending: dict[int, Any]) -> tuple[RunState, dict[int, tuple[Any, BatchMeta]]]:
        """The batch each live reader has next; pass ends and skip records are consumed on the way."""
        batch_for = {}
        for w in sorted(pending):
            while True:
                meta = self._get_meta(w, state, pending)
                img_ref = pending[w][0]
                if meta.exhausted:
                    state.done[w] = True
                    del pending[w]
                    break
                if meta.size == 0:  # end of a pass: record its skips and move on
                    state = record_marker(state, w, meta)
                    self.telemetry.skipped(images=len(meta.skipped), shards=len(meta.shards_failed))
                    pending[w] = self._read(w, state.positions[w])
                    continue
                batch_for[w] = (img_ref, meta)
                break
        return state, batch_for

    def batch_name(self, w: int, meta: BatchMeta) -> str:
        """``<shard>:<first key>`` of a batch (and its size), for messages."""
        shards = self.reader_shards[w]
        shard = shards[meta.start.cursor.shard] if meta.start.cursor.shard < len(shards) else f"shard #{meta.start.cursor.shard}"
        return f"{shard}:{meta.keys[0] if meta.keys else '?'} (a batch of {meta.size} read by reader {w})"

    def _get_update(self, w: int, future: Any, batch: tuple[Any, BatchMeta], rho_ref: Any) -> Update:
        """The worker's result, redone when its worker died (Ray restarts it) or its batch was lost with a node.

        A lost batch is read again from its reader at the batch's start position (readers seek), so the redone
        update is the same update. After ``max_batch_attempts`` failed tries the run stops, naming the batch.
        """
        images, meta = batch
        c = self.config
        for attempt in range(1, c.max_batch_attempts + 1):
            try:
                return ray.get(future, timeout=self.deadline())
            except ray.exceptions.GetTimeoutError as e:
                self._replace("worker", w, f"made no progress on {self.batch_name(w, meta)} for {self.deadline():g} s (hung?)")
                last = e
            except ray.exceptions.ObjectLostError as e:
                self.log(f"batch of worker {w} lost ({type(e).__name__}); reading it again (attempt {attempt + 1})")
                self._await_restart("reader", w)  # its reader may have gone with the same node
                images, _ = self.readers[w].read.remote(meta.start.to_list())
                last = e
            except ray.exceptions.RayActorError as e:
                self.log(f"worker {w} failed ({type(e).__name__}) on {self.batch_name(w, meta)}; redoing it (attempt {attempt + 1})")
                last = e
                self._await_restart("worker", w)
            except ray.exceptions.RayTaskError as e:
                raise RaylabError(f"worker {w} failed on {self.batch_name(w, meta)}: {_cause(e)}") from None
            if attempt < c.max_batch_attempts:
                future = self._submit(w, images, rho_ref, meta)
        raise RaylabError(f"{self.batch_name(w, meta)} failed {c.max_batch_attempts} times ({type(last).__name__}: its update "
                          f"kills the worker?); stopping, the last checkpoint is {self.store.path(CHECKPOINT)}")

    def _await_actors(self) -> None:
        """Wait until every worker and reader is placed and constructed; after ``start_timeout`` the run stops with
        one line (nothing is computed yet: a rerun resumes from the last checkpoint, if any)."""
        refs = [a.pid.remote() for a in self.readers + self.workers]
        _, waiting = ray.wait(refs, num_returns=len(refs), timeout=self.config.start_timeout)
        if waiting:
            short = self._shortfall() or "the cluster could not place them together"
            raise RaylabError(f"{len(waiting)} of {len(refs)} workers and readers not placed within "
                              f"{self.config.start_timeout:g} s ({short}); use fewer --workers, lower "
                              "--cpus-per-worker/--cpus-per-reader, or give the autoscaler longer (--start-timeout)")
        ray.get(refs)  # an actor whose constructor failed raises here

    def _await_restart(self, role: str, w: int) -> None:
        """Wait until Ray has restarted worker (or reader) ``w`` — on a node that joined, or in capacity freed —
        before its batch is asked for again; after ``restart_timeout`` the run fails with one line, checkpoint kept."""
        actor = self.workers[w] if role == "worker" else self.readers[w]
        timeout = self.config.restart_timeout
        ref, first = actor.pid.remote(), min(5.0, timeout)
        ready, _ = ray.wait([ref], timeout=first)
        if not ready:
            self.log(f"waiting for resources to restart {role} {w} (at most {timeout:g} s; the autoscaler or a node "
                      "joining can provide them)")
        try:
            ray.get(ref, timeout=max(0.0, timeout - first) if not ready else None)
        except (ray.exceptions.GetTimeoutError, ray.exceptions.RayActorError) as e:
            raise RaylabError(f"{role} {w} did not come back within {timeout:g} s after it was lost ({type(e).__name__}: "
                              f"no node could take it); stopping, the last checkpoint is {self.store.path(CHECKPOINT)}") from None

    def _progress(self, state: RunState, images_at_start: int, session: float) -> str:
        """The live line: images/s of this session, accepted updates, ||ρ||, the running rate on the stream."""
        c, s = self.config, state.stats
        rate = (s["images"] - images_at_start) / max(1e-9, time.perf_counter() - session)
        idle_frac = self._idle_fraction()
        return (f"round {state.round} | {s['images']} images | {rate:.0f} img/s | accepted {s['accepted']} | "
                f"||rho||_{c.p} {float(lp_norm(state.rho[None], c.p)):.4g} | stream rate {state.stream_rate:.3f} | "
                f"skipped {len(distinct(state.skipped))} | worker idle {idle_frac:.0%}")

    # -- evaluation and outputs -----------------------------------------------------------------------------------
    def _evaluate(self, rho: Tensor) -> Evaluation:
        t, c = self.target, self.config
        return evaluate(self.predict, rho, test_images=t.medical.test_images, test_labels=t.medical.test_labels,
                        class_names=t.class_names, target=t.target, radius=t.radius, p=c.p, seed=c.seed,
                        clean=self.predict.clean())

    def _rates(self, rho: Tensor) -> dict[str, float]:
        """R_f (or R_s) of ρ on the test set, for the ``eval_every`` history."""
        e = self._evaluate(rho)
        return {"fooling_rate": e.uap.fooling_rate} if e.target is None else {"success_rate": e.headline}

    def _stored_short(self) -> str | None:
        """What the shards' stored images lack for the model (gray for an RGB model, smaller than its input)."""
        spec = self.target.model.spec
        assert spec.image_size is not None
        return self.manifest.short_of(channels=spec.in_channels, size=spec.image_size)

    def _finish(self, state: RunState) -> RunRecord:
        c, t = self.config, self.target
        spec = t.model.spec
        source = Source(kind="shards", location=c.shards, images=self.manifest.total,
                        used=state.per_pass.get("0", {}).get("images", 0), skipped=distinct(state.skipped),
                        shards_failed=distinct(state.shards_failed), warning=self._stored_short(),
                        skipped_when_sharded=self.manifest.skipped_lines)
        decode_s, compute_s = self.feed.medians()
        engine = {"rounds": state.round, "per_pass": state.per_pass, "history": state.history,
                  "stopped_by_delta": state.stopped_by_delta, "actors_replaced": self.replaced,
                  "worker_idle_fraction": self._idle_fraction(),
                  "decode_seconds_per_batch": decode_s, "compute_seconds_per_batch": compute_s,
                  "clean_labels_reused": 0 if self.labels is None else self.labels.reused,
                  "batches_staged": self.batches_staged}
        evaluation = self._evaluate(state.rho)
        record = RunRecord(
            attack=c.attack_only(), config=c.to_dict(), model=c.model, arch=spec.arch, image_size=spec.image_size or 0,
            medical=str(c.medical), radius=t.radius, source=source,
            build=Build(images=state.stats["images"], active=state.stats["active"], accepted=state.stats["accepted"],
                        passes=len(state.per_pass), seconds=state.seconds, workers=c.workers, batch_size=c.batch_size,
                        engine=engine),
            evaluation=evaluation, **RunRecord.norms(state.rho))
        title = (f"UAP from {c.shards.rstrip('/').rsplit('/', 1)[-1]}, L{c.p} zeta={c.zeta:g}, "
                 f"{evaluation.headline_text()}")
        figures = Figures(examples=c.examples, test_images=t.medical.test_images, title=title)
        return write_run(record, state.rho, self.store, figures=figures, results=self.results)


def run_engine(config: EngineConfig, *, on_round: Callable[[RoundReport], None] | None = None,
               log: Callable[[str], None] = print, results: ResultsKey | None = None,
               connect: Callable[[], object] | None = None) -> RunRecord:
    """Run one distributed UAP and return its record.

    Every input is checked first, then ``connect`` joins the cluster (the CLI's: ``--address``, the job's cluster or a
    new local Ray) and returns whether it started a new local Ray; without it a local Ray is started unless one is
    initialized. Bad input never waits for Ray, and a local Ray started here that cannot hold the workers is an error
    at once: no node will join it.
    """
    engine = Engine(config, on_round=on_round, log=log, results=results)  # every input check happens here, before any actor
    started_here = False
    if connect is not None:
        started_here = bool(connect())
    elif not ray.is_initialized():
        ray.init()
        started_here = True
    try:
        return engine.run(fixed_cluster=started_here)
    finally:
        for actor in engine.workers + engine.readers:
            ray.kill(actor)
