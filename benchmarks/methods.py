"""The paper's UAP method and the stochastic-gradient one side by side on one model and one image set, over seeds:
test R_f (mean ± sd), the random control at the same radius, and the time each took — in one run.

    python benchmarks/methods.py --model runs/demo/model.pt --out docs/bench/cpu-methods.json

Each seed is a ``raylab uap`` run (:func:`raylab.run.run_uap`, the images loaded once), so the numbers are the
ones users get from ``raylab uap --method paper|sgd``.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from raylab.bench import cpu_name, write_figures  # noqa: E402
import torch  # noqa: E402

from raylab.run import load_source, run_uap  # noqa: E402
from raylab.config import UAPConfig  # noqa: E402
from raylab.target import load_target  # noqa: E402

from benchmarks.common import uap_arguments  # noqa: E402

def main() -> int:
    p = uap_arguments(__doc__.splitlines()[0])
    p.add_argument("--p", default="2")
    p.add_argument("--zeta", type=float, default=0.04)
    p.add_argument("--eps", type=float, default=0.008, help="the paper's method: FGSM step")
    p.add_argument("--passes", type=int, default=3, help="the paper's method: i_max")
    p.add_argument("--epochs", type=int, default=10, help="sgd: epochs")
    p.add_argument("--lrs", type=float, nargs="+", default=[1.0, 0.2], help="sgd: first steps to compare (the first is 'sgd')")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)

    figures: dict = {"machine": f"{cpu_name()}, {os.cpu_count()} cores, CPU, torch {torch.__version__}",
                     "model": a.model, "source": a.source, "p": a.p, "zeta": a.zeta, "batch_size": a.batch_size, "seeds": a.seeds}
    methods = {"paper": dict(method="paper", eps=a.eps, max_passes=a.passes)}
    for k, lr in enumerate(a.lrs):
        methods["sgd" if k == 0 else f"sgd_lr_{lr:g}"] = dict(method="sgd", lr=lr, max_passes=a.epochs)
    with tempfile.TemporaryDirectory() as tmp:
        base = dict(model=a.model, medical=a.data, source=a.source, p=a.p, zeta=a.zeta, batch_size=a.batch_size, examples=0)
        probe = UAPConfig(**base, out=Path(tmp) / "probe")
        target = load_target(probe.model, probe.medical, target=None, zeta=probe.zeta, p=probe.p)
        source = load_source(probe, target)
        for name, settings in methods.items():
            runs = []
            for seed in a.seeds:
                config = UAPConfig(**base, **settings, seed=seed, out=Path(tmp) / f"{name}-{seed}")
                started = time.perf_counter()
                record = run_uap(config, target=target, source=source, progress=False, figures=False)
                runs.append({"seed": seed, "fooling_rate": record.evaluation.uap.fooling_rate,
                             "random_fooling_rate": record.evaluation.random.fooling_rate, "rho_l2": record.rho_l2,
                             "uap_seconds": record.build.seconds, "run_seconds": time.perf_counter() - started,
                             "images_per_second": record.build.images_per_second})
                print(name, runs[-1], flush=True)
            rates = [r["fooling_rate"] for r in runs]
            figures[name] = {"settings": settings, "runs": runs, "fooling_rate_mean": statistics.mean(rates),
                             "fooling_rate_sd": statistics.stdev(rates) if len(rates) > 1 else 0.0,
                             "uap_seconds_mean": statistics.mean(r["uap_seconds"] for r in runs)}
        figures["clean_accuracy"] = record.evaluation.clean_accuracy
        # R_f when every test image is sent to one class: the share the clean model gives the other class(es), at most
        figures["single_class_ceiling"] = max(record.evaluation.clean_label_composition.values())
    figures["sgd_over_paper_fooling_rate"] = figures["sgd"]["fooling_rate_mean"] / max(1e-9, figures["paper"]["fooling_rate_mean"])
    write_figures(figures, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
