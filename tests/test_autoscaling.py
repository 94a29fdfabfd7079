"""An autoscaled sweep on Ray's real autoscaler (its ``fake_multinode`` provider: worker nodes are raylets it starts
and stops on this machine), with node types derived from cluster.yaml's ``available_node_types``.

The head is started with ``ray start --head --block`` in its own process group, as conftest.py's session cluster is
(``AutoscalingCluster.start()`` is never used: it runs ``ray stop --force``, which stops every Ray on the machine).
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import ray
import yaml
from ray.autoscaler._private.fake_multi_node.node_provider import FAKE_HEAD_NODE_TYPE

from raylab.results import read_results

from .conftest import PNEUMONIA, ROOT, _free_port, connect, start_head, stop_head

pytestmark = pytest.mark.own_cluster

#: This machine's share of each node type: cluster.yaml's CPUs times this (at least 1), GPUs as a custom resource.
CPU_SCALE, MAX_PER_TYPE = 0.25, 2


def fake_node_types(cluster_yaml: Path) -> dict[str, dict[str, Any]]:
    """cluster.yaml's worker node types for the fake provider: the same resources scaled down to this machine (CPUs
    times CPU_SCALE, at least 1; a GPU becomes the custom resource ``fake_gpu``, there being no GPU here), min 0, at
    most MAX_PER_TYPE nodes each; the head advertises 0 CPUs as in cluster.yaml."""
    c = yaml.safe_load(cluster_yaml.read_text())
    types: dict[str, dict[str, Any]] = {}
    for name, t in c["available_node_types"].items():
        res = dict(t.get("resources", {}))
        cpus = res.pop("CPU", 0)
        if name == c["head_node_type"]:
            types[name] = {"resources": {"CPU": cpus}, "node_config": {}, "max_workers": 0}
            continue
        if res.get("GPU"):
            res["fake_gpu"] = res.pop("GPU")
        types[name] = {"resources": {"CPU": max(1, int(cpus * CPU_SCALE)), **res, "object_store_memory": 100 * 2**20},
                       "node_config": {}, "min_workers": 0, "max_workers": min(t.get("max_workers", 1), MAX_PER_TYPE)}
    return {"types": types, "head": c["head_node_type"]}


def autoscaling_config(cluster_yaml: Path, gcs_port: int) -> dict[str, Any]:
    """A whole autoscaling config for the fake provider, after Ray's fake_multi_node/example.yaml.

    The head's type takes the name the fake provider gives its head node (``ray.head.default``): under cluster.yaml's
    name the autoscaler found the running head's type missing from the config and launched a node of the head type
    every second or two, only to remove it again (29 in one run; the sweep took 77 s instead of 43 s)."""
    derived = fake_node_types(cluster_yaml)
    types = dict(derived["types"])
    types[FAKE_HEAD_NODE_TYPE] = types.pop(derived["head"])
    empty: dict[str, Any] = {k: [] for k in ("initialization_commands", "setup_commands", "head_setup_commands",
                                              "worker_setup_commands", "head_start_ray_commands",
                                              "worker_start_ray_commands", "cluster_synced_files", "rsync_exclude",
                                              "rsync_filter")}
    return {"cluster_name": "raylab-fake", "max_workers": MAX_PER_TYPE * (len(types) - 1),
            "upscaling_speed": 2.0, "idle_timeout_minutes": 0.1,
            "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                         "disable_launch_config_check": True, "gcs_address": f"127.0.0.1:{gcs_port}"},
            "available_node_types": types, "head_node_type": FAKE_HEAD_NODE_TYPE, "auth": {}, "docker": {},
            "file_mounts": {}, "file_mounts_sync_continuously": False, **empty}


def test_fake_node_types_follow_cluster_yaml() -> None:
    types = fake_node_types(ROOT / "cluster.yaml")["types"]
    assert types["head"]["resources"] == {"CPU": 0}
    assert types["gpu_worker"]["resources"]["CPU"] == 1 and types["gpu_worker"]["resources"]["fake_gpu"] == 1
    assert types["cpu_worker"]["resources"]["CPU"] == 2 and "fake_gpu" not in types["cpu_worker"]["resources"]
    assert all(t.get("min_workers", 0) == 0 for t in types.values())


@pytest.fixture
def autoscaled(cluster, tmp_path):
    """A head (0 CPUs) with the fake provider's autoscaler, joined by this process for the test; the session's
    cluster is rejoined after."""
    env = {**cluster["env"], "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}
    port = _free_port()
    cfg = tmp_path / "autoscaling.yaml"
    cfg.write_text(yaml.safe_dump(autoscaling_config(ROOT / "cluster.yaml", port)))
    head = start_head(port, ["--num-cpus=0", f"--autoscaling-config={cfg}", "--include-dashboard=false"], env,
                      tmp_path / "head.log", timeout=120)
    address = f"127.0.0.1:{port}"
    ray.shutdown()
    connect(address)
    try:
        yield {"address": address, "env": env}
    finally:
        ray.shutdown()
        stop_head(head)  # the head, its autoscaler and the nodes the autoscaler started
        connect(cluster["address"])


class _NodeCount(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.counts: list[int] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.counts.append(sum(1 for n in ray.nodes() if n["Alive"]))
            time.sleep(0.5)


def test_an_autoscaled_sweep_grows_the_cluster_writes_every_row_and_shrinks_back(autoscaled, models, shards, tmp_path) -> None:
    """2 engine trials whose placement groups (trial + 1 worker + 1 reader, 2 CPUs in all, a whole cpu_worker node's)
    need more CPUs than the head's 0: the autoscaler starts nodes of cluster.yaml's types, every trial writes its row,
    idle nodes go away."""
    assert sum(1 for n in ray.nodes() if n["Alive"]) == 1  # the head only
    count = _NodeCount()
    count.start()
    args = [sys.executable, str(ROOT / "jobs" / "sweep.py"), "--name", "auto", "--model", str(models["model"]),
            "--data", str(PNEUMONIA), "--source", str(shards), "--eps", "0.01", "0.02", "--p", "2", "--zeta", "0.08",
            "--results", str(tmp_path / "results"), "--out", str(tmp_path / "sweeps"), "--cpus-per-trial", "1",
            "--cpus-per-worker", "0.5", "--cpus-per-reader", "0.5", "--batch-size", "8", "--address", autoscaled["address"]]
    done = subprocess.run(args, env=autoscaled["env"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    table = read_results(tmp_path / "results", filters={"sweep": "auto"})
    assert table.num_rows == 2 and sorted(zip(table["eps"].to_pylist(), table["p"].to_pylist())) == [(0.01, "2"), (0.02, "2")]
    assert all(n == 48 for n in table["images_processed"].to_pylist())
    peak = max(count.counts)
    assert peak >= 3, count.counts  # the head and at least two nodes the autoscaler started
    deadline = time.time() + 120
    while sum(1 for n in ray.nodes() if n["Alive"]) > 1:  # idle nodes are terminated (idle_timeout_minutes: 0.1)
        assert time.time() < deadline, count.counts[-20:]
        time.sleep(1)
    count.stop.set()
    count.join()
