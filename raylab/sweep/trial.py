"""One sweep trial (:func:`uap_trial`), a plain function: one UAP, its reports to Tune, one results row."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from ..config import SOURCE_RANDOM, SOURCE_TRAIN, EngineConfig
from ..record import ResultsKey
from ..results import read_row
from .config import SweepConfig
from .space import axes_of

#: Tune's objective: the running rate on the stream while a trial runs, R_f (R_s) on the test set at its end.
METRIC, MODE = "score", "max"


def final_report(row: dict[str, Any]) -> dict[str, Any]:
    """A trial's last report to Tune, from its results row: its test-set score (R_f, or R_s of the target), the
    controls, its speed."""
    targeted = row["target"] is not None
    return {METRIC: row["success_rate"] if targeted else row["fooling_rate"], "fooling_rate": row["fooling_rate"],
            "random_fooling_rate": row["random_fooling_rate"], "success_rate": row["success_rate"],
            "random_success_rate": row["random_success_rate"], "images": row["images_processed"],
            "images_per_second": row["images_per_second"], "wall_seconds": row["wall_seconds"]}


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
    """One Tune trial: one UAP with the config's ε, p, ζ, source, target, model, i_max and seed; one results row.

    A trial whose row is already written (it finished just before an interrupt or a crash that Tune's saved state
    does not know of) reports that row and is not redone."""
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
    written = read_row(s.results, s.name, trial_id)
    if written is not None:
        print(f"trial {trial_id}: its row was written before the sweep stopped; not redone", flush=True)
        tune.report(final_report(written))
        return
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
    tune.report(final_report(record.row(sweep=s.name, trial_id=trial_id)))
