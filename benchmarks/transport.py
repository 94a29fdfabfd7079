"""A batch's trip from a reader to a worker through Ray's object store: as a torch tensor beside the engine's
NumPy array (raylab.engine.transport), side by side in one run, for the CPU engine's batch and the GPU engine's.

Each figure is the median over fresh objects of the seconds from submitting an actor call with the batch to the
method's start, and then to the batch converted to model space (what a worker does first), on a local Ray on
127.0.0.1.

    python benchmarks/transport.py [--repeats 7] [--out docs/bench/cpu-transport.json]
"""

from __future__ import annotations

import argparse
import os

import ray

from common import DATA
from raylab.bench import cpu_name, write_figures
from raylab.bench.engine import transport_seconds
from raylab.data.natural import load_image_folder

#: (name, channels, size, batch): the CPU engine bench's batch and the GPU engine's (InceptionV3, gpu.sh)
SHAPES = (("gray-64-b128", 1, 64, 128), ("rgb-299-b256", 3, 299, 256))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", default=str(DATA / "imagenet-samples"))
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # every address 127.0.0.1
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    fig: dict = {"machine": f"{cpu_name()}, {os.cpu_count()} cores", "ray": ray.__version__}
    try:
        for name, channels, size, batch in SHAPES:
            images, _, _ = load_image_folder(a.images, channels=channels, size=size, limit=batch, seed=0)
            figures = transport_seconds(images, repeats=a.repeats)
            fig[name] = {"batch_mib": images.numel() / 2**20, **figures}
            print(name, {k: round(v, 4) for k, v in figures.items()})
    finally:
        ray.shutdown()
    write_figures(fig, a.out)


if __name__ == "__main__":
    main()
