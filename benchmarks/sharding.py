"""``raylab shard`` in one process and as Ray tasks over 1 and 2 nodes, side by side on the same photos.

    python benchmarks/sharding.py --out docs/bench/cpu-sharding.json

Each configuration writes the same real ImageNet photos (resized and re-encoded: the read–resize–encode work) to
its own folder; the Ray runs use a cluster of a head with 0 CPUs and 1 or 2 worker nodes of ``--cpus`` CPUs each
on 127.0.0.1 (``ray.cluster_utils.Cluster``). Every run's shards must equal the one-process shards byte for byte.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # every address on 127.0.0.1

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from raylab.bench import cpu_name, write_figures  # noqa: E402
from raylab.data.shards import write_shards  # noqa: E402
from raylab.engine.sharding import ray_map  # noqa: E402

DATA = ROOT.parent / "shared" / "data"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", default=str(DATA / "imagenet-samples"))
    p.add_argument("--sample", type=int, default=1000)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--format", default="jpg", choices=("png", "jpg"))
    p.add_argument("--shard-size", type=int, default=50)
    p.add_argument("--cpus", type=int, default=1, help="CPUs of each worker node")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()

    import ray
    from ray.cluster_utils import Cluster

    kw = dict(shard_size=a.shard_size, sample=a.sample, seed=0, size=a.size, channels=3, image_format=a.format)
    figures: dict = {"machine": f"{cpu_name()}, {os.cpu_count()} cores, CPU only",
                     "photos": a.sample, "size": a.size, "format": a.format, "shard_size": a.shard_size,
                     "cpus_per_node": a.cpus, "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        one = write_shards(a.images, root / "one", **kw)
        figures["runs"]["one_process"] = {"seconds": time.perf_counter() - t}
        for nodes in (1, 2):
            cluster = Cluster(initialize_head=True, head_node_args={"node_ip_address": "127.0.0.1", "num_cpus": 0,
                                                                    "include_dashboard": False})
            for _ in range(nodes):
                cluster.add_node(num_cpus=a.cpus, node_ip_address="127.0.0.1")
            ray.init(address=cluster.address, logging_level="ERROR")
            try:
                ray.get([ray.remote(num_cpus=a.cpus)(lambda: 0).remote() for _ in range(2 * nodes)])  # workers up
                t = time.perf_counter()
                m = write_shards(a.images, root / f"ray{nodes}", mapper=partial(ray_map, cpus=1.0), **kw)
                seconds = time.perf_counter() - t
            finally:
                ray.shutdown()
                cluster.shutdown()
            same = m.shards == one.shards and all(
                (root / f"ray{nodes}" / s.name).read_bytes() == (root / "one" / s.name).read_bytes() for s in one.shards)
            assert same, f"ray over {nodes} node(s) wrote other shards than one process"
            figures["runs"][f"ray_{nodes}_node"] = {"seconds": seconds, "same_bytes_as_one_process": same}
        for run in figures["runs"].values():
            run["images_per_s"] = one.total / run["seconds"]
        base = figures["runs"]["one_process"]["images_per_s"]
        figures["speedup_over_one_process"] = {k: v["images_per_s"] / base for k, v in figures["runs"].items()}
        figures["ray_2_over_1_node"] = figures["runs"]["ray_2_node"]["images_per_s"] / figures["runs"]["ray_1_node"]["images_per_s"]
    write_figures(figures, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
