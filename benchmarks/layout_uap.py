"""Does the memory layout move a real UAP? The same model, photos and seeds in NCHW and in channels-last memory.

The update's arithmetic is the same in both layouts up to float rounding (tests/test_gpu_path.py: the same UAP to
1e-5 on a small stream), but the paper's method decides per image whether to accept a step, so over a long stream a
rounding difference can flip one decision and the runs part ways. This runs ``raylab uap``'s code (``run.run_uap``)
on a trained model with each layout, over the same seeds, and writes R_f per seed and as mean +- sd: the size of the
layout's effect beside the seeds' spread.

    python benchmarks/layout_uap.py --model runs/reproduce/cpu-small/models/efficientnet_lite0-transfer.pt \
        --eps 0.016 --out docs/bench/cpu-layout-uap.json

(the cpu-small study's pick for that model's natural-image UAP: p = 2, zeta = 4 %, epsilon = 0.016, batch 32).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch  # noqa: E402

import raylab.models  # noqa: E402
from raylab.bench import cpu_name, write_figures  # noqa: E402
from raylab.config import UAPConfig  # noqa: E402
from raylab.run import load_source, run_uap  # noqa: E402
from raylab.spread import spread  # noqa: E402
from raylab.target import load_target  # noqa: E402

from benchmarks.common import uap_arguments  # noqa: E402


def main() -> int:
    p = uap_arguments(__doc__.splitlines()[0])
    p.add_argument("--p", default="2")
    p.add_argument("--zeta", type=float, default=0.04)
    p.add_argument("--eps", type=float, default=0.016)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()
    figures: dict = {"machine": f"{cpu_name()}, {torch.get_num_threads()} torch threads, CPU, torch {torch.__version__}",
                     "model": a.model, "source": a.source, "p": a.p, "zeta": a.zeta, "eps": a.eps,
                     "batch_size": a.batch_size, "seeds": a.seeds, "layouts": {}}
    default_nchw = raylab.models.NCHW_ON_CPU
    try:
        with tempfile.TemporaryDirectory() as tmp:
            base = dict(model=a.model, medical=a.data, source=a.source, p=a.p, zeta=a.zeta, eps=a.eps,
                        batch_size=a.batch_size, examples=0)
            for layout in ("nchw", "channels_last"):
                probe = UAPConfig(**base, out=Path(tmp) / "probe")
                # a fresh model per layout: for_inference converts the model it is given in place
                target = load_target(probe.model, probe.medical, target=None, zeta=probe.zeta, p=probe.p)
                arch = target.model.spec.arch
                raylab.models.NCHW_ON_CPU = default_nchw | {arch} if layout == "nchw" else default_nchw - {arch}
                source = load_source(probe, target)
                rates, accepted = [], []
                for seed in a.seeds:
                    record = run_uap(UAPConfig(**base, out=Path(tmp) / f"{layout}-{seed}", seed=seed), target=target,
                                     source=source, progress=False, figures=False)
                    rates.append(record.evaluation.uap.fooling_rate)
                    accepted.append(record.build.accepted)
                r_f = spread(rates)
                figures["layouts"][layout] = {"fooling_rates": rates, "fooling_rate_mean": r_f["mean"],
                                              "fooling_rate_sd": r_f["sd"], "accepted": accepted}
                print(f"{layout:13s} R_f {r_f['mean']:.3f} ± {r_f['sd']:.3f}"
                      f"  per seed {', '.join(f'{r:.3f}' for r in rates)}  accepted {accepted}", flush=True)
    finally:
        raylab.models.NCHW_ON_CPU = default_nchw
    nchw, last = figures["layouts"]["nchw"]["fooling_rates"], figures["layouts"]["channels_last"]["fooling_rates"]
    figures["largest_seed_difference"] = max(abs(x - y) for x, y in zip(nchw, last))
    figures["arch"] = arch
    write_figures(figures, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
