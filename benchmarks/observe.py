"""The dashboard during a real run: a local Ray, a local Prometheus, an engine run and a small sweep, one PNG.

    python benchmarks/observe.py --model runs/demo/model.pt --shards runs/shards --out docs/dashboard.png

Everything stays on 127.0.0.1. Needs Debian's ``prometheus`` on PATH (``apt-get install prometheus``).
Prometheus finds Ray's metrics agents through Ray's service-discovery file, with the configuration
``raylab dashboard prometheus-config`` prints; the PNG is ``raylab dashboard render`` of the whole run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_metrics_report_interval_ms", "2000")

import ray  # noqa: E402

from raylab import dashboards  # noqa: E402
from raylab.config import EngineConfig  # noqa: E402
from raylab.engine import run_engine  # noqa: E402
from raylab.sweep import SweepConfig, run_sweep  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", default="../shared/data/pneumoniamnist.npz")
    ap.add_argument("--shards", required=True)
    ap.add_argument("--passes", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--prometheus-port", type=int, default=9090)
    ap.add_argument("--out", type=Path, default=Path("docs/dashboard.png"))
    a = ap.parse_args()
    prom_bin = shutil.which("prometheus")
    if prom_bin is None:
        raise SystemExit("observe.py: prometheus not found (apt-get install prometheus)")
    work = Path(tempfile.mkdtemp(prefix="raylab-observe-"))
    ray.init(address="local", num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1", logging_level="ERROR")
    cfg = work / "prometheus.yml"
    cfg.write_text(dashboards.prometheus_config(scrape_interval="2s"))
    url = f"http://127.0.0.1:{a.prometheus_port}"
    prom = subprocess.Popen([prom_bin, f"--config.file={cfg}", f"--storage.tsdb.path={work / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{a.prometheus_port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(60):
            try:
                urllib.request.urlopen(f"{url}/-/ready", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        started = time.time()
        time.sleep(10)  # a baseline before the run
        run_engine(EngineConfig(model=a.model, medical=Path(a.data), shards=a.shards, out=str(work / "engine-run"),
                                workers=a.workers, batch_size=a.batch_size, max_passes=a.passes, eps=0.002, zeta=0.04,
                                cpus_per_worker=0.5, cpus_per_reader=0.5, progress_every=10.0, examples=0))
        run_sweep(SweepConfig(name="observe", medical=a.data, models=(a.model,), sources=(a.shards, "random"),
                              eps=(0.002,), zeta=(0.02, 0.04), results=str(work / "results"), out=str(work / "sweeps"),
                              batch_size=a.batch_size, cpus_per_trial=0.25, cpus_per_worker=0.5, cpus_per_reader=0.5,
                              max_concurrent=1))
        time.sleep(10)
        counts = dashboards.render(url, a.out, start=started, rate_interval="30s")
        print(f"wrote {a.out}; series per panel: {counts}")
    finally:
        prom.terminate()
        prom.wait(timeout=30)
        ray.shutdown()


if __name__ == "__main__":
    main()
