"""Memory over a long engine run: RSS of the driver, the workers and the readers, sampled while the engine streams.

    python benchmarks/soak.py --model runs/demo/model.pt --shards runs/shards --passes 20 [--out FILE]

Runs `raylab generate`'s engine on a local Ray (loopback only) for many passes over the shards and samples
every Ray worker process's resident memory every second. Reports the first and last samples after warm-up.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import ray  # noqa: E402

from raylab.bench import write_figures  # noqa: E402
from raylab.config import EngineConfig  # noqa: E402
from raylab.engine import run_engine  # noqa: E402


def _rss_mib(pid: str) -> float:
    """Resident memory of a process from /proc (Linux), in MiB; 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _actor_pids() -> list[str]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if cmd.startswith(("ray::UAPWorker", "ray::ShardReader")):
                pids.append(d.name)
    return pids


def _leaks(timeout: float = 30.0) -> dict[str, int]:
    """What the run left behind, from Ray's state API: live engine actors and objects still in the cluster."""
    from ray.util.state import list_actors, list_objects

    address = ray.get_runtime_context().gcs_address  # this run's cluster, whatever else runs on the machine
    deadline = time.time() + timeout
    while True:  # ray.kill is asynchronous: give the actors a moment to go
        actors = [a for a in list_actors(address=address, filters=[("state", "!=", "DEAD")], limit=10_000)
                  if a.class_name in ("UAPWorker", "ShardReader")]
        if not actors or time.time() > deadline:
            break
        time.sleep(1)
    objects = list_objects(address=address, limit=10_000)
    return {"engine_actors_alive_after": len(actors), "objects_in_cluster_after": len(objects),
            "object_bytes_in_cluster_after": sum(int(o.object_size or 0) for o in objects)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", default="../shared/data/pneumoniamnist.npz")
    ap.add_argument("--shards", required=True)
    ap.add_argument("--passes", type=int, default=20)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    ray.init(address="local", logging_level="ERROR")
    samples: list[dict[str, float]] = []
    stop = threading.Event()

    def sample() -> None:
        t0 = time.time()
        while not stop.is_set():
            rss = {"driver": _rss_mib(str(os.getpid())), "actors": sum(_rss_mib(p) for p in _actor_pids())}
            samples.append({"t": time.time() - t0, **rss})
            stop.wait(1.0)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    with tempfile.TemporaryDirectory() as out:
        m = run_engine(EngineConfig(model=a.model, medical=Path(a.data), shards=a.shards, out=out, workers=a.workers,
                                    batch_size=a.batch_size, max_passes=a.passes, zeta=0.04, eps=0.002, examples=0,
                                    cpus_per_worker=0.5, cpus_per_reader=0.5, checkpoint_every=50, progress_every=30),
                       log=print).metrics()
    stop.set()
    thread.join()
    leaks = _leaks()
    live = [s for s in samples if s["actors"] > 0]
    warm = live[len(live) // 10:]  # skip the first tenth: model loading, first batches
    fig = {
        "images": m["stats"]["images"], "seconds": m["seconds"], "images_per_second": m["images_per_second"],
        "actors_rss_mib_after_warmup_first": warm[0]["actors"], "actors_rss_mib_last": warm[-1]["actors"],
        "actors_rss_mib_max": max(s["actors"] for s in warm), "actors_rss_mib_min": min(s["actors"] for s in warm),
        "driver_rss_mib_first": warm[0]["driver"], "driver_rss_mib_last": warm[-1]["driver"], "samples": len(warm),
        # the actors' RSS at each tenth of the run after warm-up: flat, or growing?
        "actors_rss_mib_by_tenth": [round(warm[i * (len(warm) - 1) // 10]["actors"]) for i in range(11)],
        **leaks,
    }
    write_figures(fig, a.out)


if __name__ == "__main__":
    main()
