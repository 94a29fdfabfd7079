"""Does scaling out weaken the attack? Test R_f against the effective batch size (workers x batch), over seeds.

The engine's round sums the accepted steps of ``workers x batch`` images and projects once, the batched rule of
the core with that batch (tested equal in tests/test_engine.py), so a single-process ``raylab uap`` with
``--batch-size B`` measures what a cluster with an effective batch of B finds. B = 1 is the faithful mode (ART's
per-image update). Each setting runs on the 1,000-photo stream and on a longer one (more passes), with the same
seeds, both methods; the number of updates (ceil(N / B) x passes) is recorded beside each R_f, because that is what
a large batch takes away.

    python benchmarks/batch_size.py --model runs/demo/model.pt --out docs/bench/cpu-batch-size.json
"""

from __future__ import annotations

import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch  # noqa: E402

from raylab.bench import cpu_name, write_figures  # noqa: E402
from raylab.config import UAPConfig  # noqa: E402
from raylab.run import load_source, run_uap  # noqa: E402
from raylab.target import load_target  # noqa: E402

from benchmarks.common import uap_arguments  # noqa: E402

def main() -> int:
    p = uap_arguments(__doc__.splitlines()[0])
    p.add_argument("--zeta", type=float, default=0.04)
    p.add_argument("--eps", type=float, default=0.008, help="the paper's method: FGSM step")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 32, 128, 512, 1024])
    p.add_argument("--passes", type=int, nargs="+", default=[1, 3], help="passes of the paper's method (sgd: epochs)")
    p.add_argument("--methods", nargs="+", default=["paper", "sgd"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    figures: dict = {"machine": f"{cpu_name()}, {os.cpu_count()} cores, CPU, torch {torch.__version__}",
                     "model": a.model, "source": a.source, "p": "2", "zeta": a.zeta, "eps": a.eps, "seeds": a.seeds,
                     "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        base = dict(model=a.model, medical=a.data, source=a.source, p="2", zeta=a.zeta, examples=0)
        probe = UAPConfig(**base, out=Path(tmp) / "probe")
        target = load_target(probe.model, probe.medical, target=None, zeta=probe.zeta, p=probe.p)
        source = load_source(probe, target)
        n = len(source.images)
        for method in a.methods:
            for passes in a.passes:
                for b in a.batches:
                    if method == "sgd" and b == 1:
                        continue  # per-image SGD is not a mode anyone runs; its batch-1 point is the paper's faithful mode
                    mode = "faithful" if b == 1 else "batched"
                    rates, randoms, seconds = [], [], []
                    for seed in a.seeds:
                        config = UAPConfig(**base, out=Path(tmp) / f"{method}-{passes}-{b}-{seed}", method=method,
                                           eps=a.eps, max_passes=passes, batch_size=max(b, 1), mode=mode, seed=seed,
                                           chunk_size=n)
                        started = time.perf_counter()
                        record = run_uap(config, target=target, source=source, progress=False, figures=False)
                        seconds.append(time.perf_counter() - started)
                        rates.append(record.evaluation.uap.fooling_rate)
                        randoms.append(record.evaluation.random.fooling_rate)
                    row = {"method": method, "passes": passes, "batch": b, "updates": math.ceil(n / b) * passes,
                           "fooling_rate_mean": statistics.mean(rates), "fooling_rate_sd": statistics.stdev(rates),
                           "fooling_rates": rates, "random_mean": statistics.mean(randoms),
                           "seconds_mean": statistics.mean(seconds)}
                    figures["runs"].append(row)
                    print(f"{method:5s} passes={passes} B={b:5d} updates={row['updates']:5d}  R_f {row['fooling_rate_mean']:.3f} "
                          f"± {row['fooling_rate_sd']:.3f}  ({', '.join(f'{r:.3f}' for r in rates)})  random "
                          f"{row['random_mean']:.3f}  {row['seconds_mean']:.1f} s", flush=True)
    figures["images"] = n
    write_figures(figures, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
