"""Does the ε chosen on a subset of the photos suit UAPs made from all of them? The paper's grid search on validation,
run on a subset and on the whole stream, over seeds.

The paper's method accumulates accepted steps image by image, so how many it takes grows with the stream: a step
chosen with fewer images suits fewer updates. This runs the selection itself (``selection.select_on_validation``,
one non-targeted UAP per candidate ε, scored by R_f on the validation split) on ``--subset`` photos (a seeded
sample, as the audit and the reproduction did before they chose on the UAPs' own images) and on all of them, for
each seed (the selection's own seeds), and writes every validation R_f, each size's mean ± sd per ε and its pick.

    python benchmarks/selection_images.py --model runs/reproduce/cpu-small/models/efficientnet_lite0-transfer.pt \
        --out docs/bench/cpu-selection-images.json

(the cpu-small study's setting: p = 2, ζ = 4 %, one pass, batch 32, ε in {0.004, 0.008, 0.016, 0.032}).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch  # noqa: E402

from raylab.bench import cpu_name, write_figures  # noqa: E402
from raylab.config import UAPConfig  # noqa: E402
from raylab.run import source_images  # noqa: E402
from raylab.selection import seeded_subset, select_on_validation, validation_images  # noqa: E402
from raylab.spread import spread  # noqa: E402
from raylab.target import load_target  # noqa: E402

from benchmarks.common import uap_arguments  # noqa: E402


def main() -> int:
    p = uap_arguments(__doc__.splitlines()[0])
    p.add_argument("--p", default="2")
    p.add_argument("--zeta", type=float, default=0.04)
    p.add_argument("--eps", type=float, nargs="+", default=[0.004, 0.008, 0.016, 0.032])
    p.add_argument("--passes", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--subset", type=int, default=300, help="the subset size the selection used to run on")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()
    target = load_target(a.model, a.data, target=None, zeta=a.zeta, p=a.p)
    photos = source_images(a.source, target, limit=None, seed=0).images
    assert photos is not None
    val, validation = validation_images(target, 0)
    figures: dict = {"machine": f"{cpu_name()}, {torch.get_num_threads()} torch threads, CPU, torch {torch.__version__}",
                     "model": a.model, "source": a.source, "validation": validation, "p": a.p, "zeta": a.zeta,
                     "passes": a.passes, "batch_size": a.batch_size, "seeds": a.seeds, "sizes": {}}
    candidates = [UAPConfig(model=a.model, medical=Path(a.data), source=a.source, out=Path("unused"), p=a.p, zeta=a.zeta,
                            eps=e, max_passes=a.passes, batch_size=a.batch_size, examples=0) for e in a.eps]
    for n in (a.subset, len(photos)):
        started = time.perf_counter()
        grid = select_on_validation(target, seeded_subset(photos, n, 0), val, candidates, zeta=a.zeta, seeds=a.seeds)
        runs = {seed: {f"{g['eps']:g}": g["val_per_seed"][i] for g in grid} for i, seed in enumerate(a.seeds)}
        for seed, r in runs.items():
            print(f"{n} photos, seed {seed}: " + ", ".join(f"eps {e} {v:.3f}" for e, v in r.items()), flush=True)
        print(f"({time.perf_counter() - started:.0f} s)", flush=True)
        per_eps = {f"{e:g}": spread(runs[s][f"{e:g}"] for s in a.seeds) for e in a.eps}
        figures["sizes"][str(n)] = {"per_seed": {str(s): r for s, r in runs.items()}, "per_eps": per_eps,
                                    "pick_per_seed": {str(s): max(r, key=r.get) for s, r in runs.items()},
                                    "pick_by_mean": max(per_eps, key=lambda e: per_eps[e]["mean"])}
    write_figures(figures, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
