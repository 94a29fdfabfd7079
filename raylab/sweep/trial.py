"""One sweep trial (:func:`uap_trial`), a plain function: one UAP, its reports to Tune, one results row."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from ..config import SOURCE_RANDOM, SOURCE_TRAIN, EngineConfig
from ..record import ResultsKey, RunRecord
from .config import SweepConfig
from .space import axes_of

#: Tune's objective: the running rate on the stream while a trial runs, R_f (R_s) on the test set at its end.
METRIC, MODE = "score", "max"


def final_report(record: RunRecord) -> dict[str, Any]:
    """A trial's last report to Tune: its test-set score (R_f, or R_s of the target), the controls, its speed."""
    e = record.evaluation
    return {METRIC: e.headline, "fooling_rate": e.uap.fooling_rate, "random_fooling_rate": e.random.fooling_rate,
            "success_rate": e.headline if e.target else None, "random_success_rate": e.random_headline if e.target else None,
            "images": record.build.images, "images_per_second": record.build.images_per_second,
            "wall_seconds": record.build.seconds}


class StreamReporter:
    """The engine's ``on_round`` hook in a trial: every ``every`` rounds, the running rate over the stream since the
    last report (the share of natural images already fooled, or at the target, when visited) goes to Tune."""

    def __init__(self, every: int, report: Callable[[dict[str, Any]], None]) -> None:
        self.every, self.report = every, report
        self.last = {"images": 0, "active": 0}

    def __call__(self, r: Any) -> None:  # r: raylab.engine.RoundReport
        if r.round % self.every:
            return
        images, active = r.totals["images"] - self.last["images"], r.totals["active"] - self.last["active"]
        self.last = {"images": r.totals["images"], "active": r.totals["active"]}
        window = 1 - active / images if images else 0.0
        self.report({METRIC: window, "stream_rate": 1 - r.totals["active"] / max(1, r.totals["images"]),
                     "stream_images": r.totals["images"], "images": r.totals["images"], "round": r.round})


def uap_trial(config: dict[str, Any], sweep: SweepConfig) -> None:
    """One Tune trial: one UAP with the config's ε, p, ζ, source, target, model, i_max and seed; one results row."""
    from ray import tune

    from ..config import UAPConfig
    from ..engine import run_engine
    from ..run import run_uap
    from ..telemetry import Telemetry, ray_sink, run_tags

    s, config = sweep, axes_of(config, sweep.runs(), sweep.model_labels())
    trial_id = tune.get_context().get_trial_id()
    out = f"{s.out}/{s.name}/{trial_id}"
    attack = dict(**config["attack"], p=config["p"], zeta=config["zeta"], max_passes=config["max_passes"],
                  target=config["target"], batch_size=s.batch_size, seed=config["seed"], device=s.device, amp=s.amp, examples=4)
    results = ResultsKey(s.results, s.name, trial_id)
    source = config["source"]
    if source in (SOURCE_TRAIN, SOURCE_RANDOM):
        uap = UAPConfig(model=config["model"], medical=Path(s.medical), source=source, out=Path(out), **attack)
        record = run_uap(uap, progress=False, results=results,
                         telemetry=Telemetry(ray_sink(), **run_tags(out=out, source=source, model=config["model"])))
    else:
        engine = EngineConfig(model=config["model"], medical=Path(s.medical), shards=source, out=out, workers=s.workers,
                              cpus_per_worker=s.cpus_per_worker, cpus_per_reader=s.cpus_per_reader, progress_every=60.0,
                              **attack)
        record = run_engine(engine, on_round=StreamReporter(s.report_every, tune.report), results=results,
                            log=lambda line: print(line, flush=True))
    tune.report(final_report(record))
