"""The engine's fixed cost per round on a multi-node Ray cluster, and the scaling efficiency it implies for GPU workers.

    python benchmarks/scaling.py --out docs/bench/cpu-scaling.json

A cluster of a head with 0 CPUs (the driver's node, as in cluster.yaml) and two worker nodes on 127.0.0.1
(``ray.cluster_utils.Cluster``), a tiny model (small_cnn at 28 px, compute ≈ 0) and real ImageNet photos: the
rounds/s of W = 1, 2, 4, 8 workers measure what a round costs besides compute (ρ broadcast, the readers' and workers'
calls, gathering the results, the reduction and projection, checkpoints). A fit ``fixed(W) = a + b·W`` of the
measured round time minus the workers' compute, with a GPU worker's measured (docs/bench) or target compute per
round, gives the projected efficiency ``compute / (compute + fixed(W))`` of 8 and 64 GPU workers at B = 128 and 256.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # every address on 127.0.0.1

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from raylab.bench import cpu_name, write_figures  # noqa: E402
from raylab.config import EngineConfig  # noqa: E402
from raylab.data.shards import write_shards  # noqa: E402
from raylab.engine import Engine  # noqa: E402
from raylab.models import ModelSpec, build_model, save_classifier  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
#: The bytes of one ρ (and of one worker's summed step) of InceptionV3 at 3 x 299 x 299 in float32.
RHO_BYTES = 3 * 299 * 299 * 4


def _gpu_round_seconds() -> dict[str, float]:
    """A GPU worker's compute per round: InceptionV3 at 299 px, RGB, AMP, on an H200 (docs/bench, measured), and the
    throughput goal of the GPU issue (5,000 images/s, a target, not a measurement)."""
    measured = json.loads((ROOT / "docs" / "bench" / "gpu-inception-299-rgb-amp-b256.json").read_text())
    rate = measured["batched_images_per_s"]
    return {f"measured_b{b}": b / rate for b in (128, 256)} | {f"goal_b{b}": b / 5000.0 for b in (128, 256)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", nargs="+", type=int, default=[1, 2, 4, 8])
    p.add_argument("--nodes", type=int, default=2, help="worker nodes of the test cluster")
    p.add_argument("--images", type=int, default=1000, help="ImageNet photos in the stream")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--passes", type=int, default=4)
    p.add_argument("--method", default="paper", choices=("paper", "sgd"))
    p.add_argument("--profile", action="store_true", help="print where the driver's time goes (cProfile, by own time)")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()

    import ray
    from ray.cluster_utils import Cluster

    spec = ModelSpec(arch="small_cnn", num_classes=2, in_channels=1, image_size=28, class_names=("NORMAL", "PNEUMONIA"))
    figures: dict = {"machine": f"{cpu_name()}, {os.cpu_count()} cores, CPU only; "
                                f"a Ray head with 0 CPUs and {a.nodes} worker nodes on 127.0.0.1",
                     "model": "small_cnn 1x28x28 (compute ~ 0)", "method": a.method, "batch_size": a.batch_size,
                     "passes": a.passes, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = save_classifier(build_model(spec, seed=0).eval(), root / "model.pt")
        m = write_shards(DATA / "imagenet-samples", root / "shards", shard_size=63, sample=a.images, seed=0, size=28,
                         channels=1)
        cluster = Cluster(initialize_head=True, head_node_args={"node_ip_address": "127.0.0.1", "num_cpus": 0,
                                                                "include_dashboard": False})
        per_node = max(a.workers)  # logical CPUs: every worker and reader asks for 0.5
        for _ in range(a.nodes):
            cluster.add_node(num_cpus=per_node, node_ip_address="127.0.0.1")
        ray.init(address=cluster.address, logging_level="ERROR")
        try:
            for w in a.workers:
                c = EngineConfig(model=str(model), medical=DATA / "pneumoniamnist.npz", shards=str(root / "shards"),
                                 out=str(root / f"w{w}"), method=a.method, workers=w, batch_size=a.batch_size,
                                 max_passes=a.passes, cpus_per_worker=0.5, cpus_per_reader=0.5, progress_every=1e9,
                                 examples=0)
                engine = Engine(c, log=lambda s: None)
                stamps: list[float] = []
                cpu: list[float] = []  # the driver process's CPU seconds (its threads, Ray's included)
                engine.on_round = lambda r: (stamps.append(time.perf_counter()), cpu.append(time.process_time()))
                try:
                    if a.profile:
                        import cProfile
                        import pstats

                        with cProfile.Profile() as prof:
                            record = engine.run()
                        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
                    else:
                        record = engine.run()
                finally:
                    for actor in engine.workers + engine.readers:
                        ray.kill(actor)
                k = len(stamps) // 10  # the first tenth of the rounds warms up
                round_s = (stamps[-1] - stamps[k]) / (len(stamps) - 1 - k)
                driver_s = (cpu[-1] - cpu[k]) / (len(cpu) - 1 - k)
                compute_s = engine.compute / max(1, len(stamps)) / w  # one worker's compute per round
                figures["runs"].append({"workers": w, "rounds": len(stamps), "rounds_per_s": 1 / round_s,
                                        "round_ms": 1e3 * round_s, "worker_compute_ms": 1e3 * compute_s,
                                        "fixed_ms": 1e3 * (round_s - compute_s), "driver_cpu_ms": 1e3 * driver_s,
                                        "images_per_s": record.build.images_per_second})
                print(json.dumps(figures["runs"][-1]), flush=True)
        finally:
            ray.shutdown()
            cluster.shutdown()
    figures["stream_images"] = m.total
    figures |= project(figures["runs"])
    write_figures(figures, a.out)
    return 0


def project(runs: list[dict]) -> dict:
    """Least squares ``fixed(W) = a + b·W`` over the runs, and the efficiency of GPU workers it implies.

    Two fits: of the measured round time minus compute (on this machine every actor shares 2 cores, so it holds CPU
    contention a cluster would not have: a pessimistic bound), and of the driver's own CPU time per round (the
    serial part that no number of nodes overlaps: the optimistic bound).
    """
    import numpy as np

    w = np.array([r["workers"] for r in runs], dtype=float)
    out: dict = {"fit": {}, "projection": {}}
    for key in ("fixed_ms", "driver_cpu_ms"):
        y = np.array([r[key] for r in runs]) / 1e3
        b, a = np.polyfit(w, y, 1) if len(runs) > 1 else (0.0, float(y[0]))
        out["fit"][key] = {"a_ms": 1e3 * a, "b_ms_per_worker": 1e3 * b}
        for name, compute in _gpu_round_seconds().items():
            row = out["projection"].setdefault(name, {"compute_ms": 1e3 * compute})
            for n in (8, 64):
                row[f"efficiency_w{n}_{key.removesuffix('_ms')}"] = compute / (compute + a + b * n)
    # What loopback cannot show: the head's network. Per round it sends ρ to each worker and receives each worker's
    # step: 2·W·|ρ| bytes through one NIC (an estimate, at 10 Gbit/s = 1.25 GB/s).
    out["head_network_ms_estimate"] = {f"w{n}": 1e3 * 2 * n * RHO_BYTES / 1.25e9 for n in (8, 64)}
    return out


if __name__ == "__main__":
    sys.exit(main())
