"""Does one first step suit the stochastic-gradient UAP on every model? Validation and test R_f over lr and p, per seed.

The reproduction used to fix the stochastic-gradient method's first step at lr = 1 (a whole radius, decaying
linearly) and choose p alone; this measures what the step is worth on one model: for each p and lr, a non-targeted
UAP from the natural photos per seed (``core.SGDUAP``, 3 epochs, batch 32, as the cpu-small study makes them),
scored by R_f on the medical validation and test splits; each lr's mean ± sd over the seeds. The model runs as
loaded (NCHW memory), so a seed's UAP is not bit for bit the study's (channels-last on CPUs): the steps compare
within one layout.

    python benchmarks/sgd_lr.py --model runs/reproduce/cpu-small/models/efficientnet_lite0-transfer.pt \\
        --out docs/bench/cpu-sgd-lr.json
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch  # noqa: E402

from raylab.bench import cpu_name, write_figures  # noqa: E402
from raylab.core import SGDUAP, fooling_rate, predict_labels  # noqa: E402
from raylab.run import source_images  # noqa: E402
from raylab.selection import validation_images  # noqa: E402
from raylab.spread import spread  # noqa: E402
from raylab.target import load_target  # noqa: E402

from benchmarks.common import uap_arguments  # noqa: E402


def main() -> int:
    p = uap_arguments(__doc__.splitlines()[0])
    p.add_argument("--p", nargs="+", default=["2", "inf"])
    p.add_argument("--zeta", type=float, default=0.04)
    p.add_argument("--lr", type=float, nargs="+", default=[0.25, 0.5, 1.0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()
    figures: dict = {"machine": f"{cpu_name()}, {torch.get_num_threads()} torch threads, CPU, torch {torch.__version__}",
                     "model": a.model, "source": a.source, "zeta": a.zeta, "epochs": a.epochs, "batch_size": 32,
                     "seeds": a.seeds, "runs": {}}
    for p_text in a.p:
        target = load_target(a.model, a.data, target=None, zeta=a.zeta, p=p_text)
        photos = source_images(a.source, target, limit=None, seed=0).images
        assert photos is not None
        val, figures["validation"] = validation_images(target, 0)
        test = target.medical.test_images
        clean_val, clean_test = predict_labels(target.model, val), predict_labels(target.model, test)
        for lr in a.lr:
            runs = []
            for seed in a.seeds:
                started = time.perf_counter()
                rho = SGDUAP(radius=target.radius, p=target.p, lr=lr, max_passes=a.epochs)(target.model, photos, seed=seed).rho
                runs.append({"seed": seed, "val": fooling_rate(clean_val, predict_labels(target.model, val, rho=rho)),
                             "test": fooling_rate(clean_test, predict_labels(target.model, test, rho=rho))})
                print(f"p={p_text} lr={lr:g} seed {seed}: validation {runs[-1]['val']:.3f}, test {runs[-1]['test']:.3f} "
                      f"({time.perf_counter() - started:.0f} s)", flush=True)
            figures["runs"][f"p={p_text} lr={lr:g}"] = {"per_seed": runs, "val": spread(r["val"] for r in runs),
                                                        "test": spread(r["test"] for r in runs)}
    write_figures(figures, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
