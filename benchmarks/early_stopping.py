"""How much of a sweep's compute early stopping (``raylab sweep --early-stop``) saves, and whether it changes the
selected ε and p: the same ε × p grid run twice side by side, without and with early stopping, on one local Ray.

    python benchmarks/early_stopping.py --model runs/demo/model.pt --out docs/bench/cpu-early-stopping.json

Writes the images each trial processed, the trials stopped, the wall time of each grid and the (ε, p) that the
paper's rule (``select_best``) picks from each grid's rows.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # a local Ray on 127.0.0.1 only

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from raylab.bench import cpu_name, write_figures  # noqa: E402
from raylab.data.shards import write_shards  # noqa: E402
from raylab.models import checkpoint_spec  # noqa: E402
from raylab.results import read_results, select_best  # noqa: E402
from raylab.sweep import SweepConfig, axes_of, outcome, run_sweep  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="a raylab classifier checkpoint (e.g. the demo's runs/demo/model.pt)")
    p.add_argument("--data", default=str(DATA / "pneumoniamnist.npz"))
    p.add_argument("--images", default=str(DATA / "imagenet-samples"))
    p.add_argument("--eps", nargs="+", type=float, default=[0.002, 0.004, 0.008, 0.016])
    p.add_argument("--p", nargs="+", default=["2", "inf"])
    p.add_argument("--zeta", type=float, default=0.04)
    p.add_argument("--i-max", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--grace", type=int, default=512, help="images every trial sees before it may be stopped")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()

    import ray

    spec = checkpoint_spec(a.model)
    assert spec is not None, f"{a.model} is not a raylab checkpoint"
    figures: dict = {"machine": f"{cpu_name()}, {os.cpu_count()} cores, CPU",
                     "model": f"{spec.arch} {spec.in_channels}x{spec.image_size}", "grid": {"eps": a.eps, "p": a.p},
                     "zeta": a.zeta, "i_max": a.i_max, "batch_size": a.batch_size, "grace_images": a.grace}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        m = write_shards(a.images, root / "shards", shard_size=250, size=spec.image_size, channels=spec.in_channels)
        figures["stream_images"] = m.total
        ray.init(address="local", num_cpus=os.cpu_count(), logging_level="ERROR")
        cpus = float(os.cpu_count() or 2)
        for label, early in (("plain", False), ("early_stop", True)):
            s = SweepConfig(name=label, medical=a.data, models=(a.model,), sources=(str(root / "shards"),), eps=tuple(a.eps),
                            p=tuple(a.p), zeta=(a.zeta,), max_passes=(a.i_max,), batch_size=a.batch_size,
                            results=str(root / "results"), out=str(root / "sweeps"), cpus_per_trial=0.1,
                            cpus_per_worker=cpus / 2 - 0.1, cpus_per_reader=cpus / 2 - 0.1, max_concurrent=1,
                            report_every=4, early_stop=early, early_stop_grace=a.grace)
            started = time.perf_counter()
            grid = run_sweep(s, log=print)
            seconds = time.perf_counter() - started
            trials = [{"eps": axes_of(r.config, s.runs())["attack"]["eps"], "p": r.config["p"], "outcome": outcome(r),
                       "images": int(r.metrics.get("images") or 0), "score": r.metrics.get("score")} for r in grid]
            best = select_best(read_results(root / "results", filters={"sweep": label})).to_pylist()
            figures[label] = {"wall_seconds": seconds, "images": sum(t["images"] for t in trials),
                              "stopped": sum(t["outcome"] == "stopped" for t in trials), "trials": trials,
                              "selected": [{"eps": b["eps"], "p": b["p"], "fooling_rate": b["fooling_rate"]} for b in best]}
        ray.shutdown()
    plain, early = figures["plain"], figures["early_stop"]
    figures["images_saved_fraction"] = 1 - early["images"] / plain["images"]
    figures["wall_time_ratio"] = early["wall_seconds"] / plain["wall_seconds"]
    figures["same_selection"] = [(s["eps"], s["p"]) for s in plain["selected"]] == [(s["eps"], s["p"]) for s in early["selected"]]
    write_figures(figures, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
