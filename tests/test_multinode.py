"""The engine on a real multi-node Ray cluster on this one machine: a head that takes no work (0 CPUs, as in
cluster.yaml) and worker nodes with their own raylets and object stores, all on 127.0.0.1
(``ray.cluster_utils.Cluster``, as Ray's own tests do; ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` from conftest.py keeps
every address on loopback). Nodes are added and removed while runs go on.

Every test compares ρ with the same run on the session's single-node cluster, to the bit.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import ray
import torch
from ray.cluster_utils import Cluster

from raylab.config import EngineConfig
from raylab.data.shards import write_shards
from raylab.engine import Engine, RoundReport, run_engine
from raylab.errors import RaylabError
from raylab.models import ModelSpec, build_model, save_classifier

from .conftest import IMAGENET, PNEUMONIA, connect

pytestmark = pytest.mark.own_cluster

SIZE = 96  # batches of 16 gray 96-px images are 147 KB: above Ray's 100 KB inline limit, so they live in object stores


@pytest.fixture(scope="module")
def wide(tmp_path_factory) -> dict[str, Path]:
    """A small_cnn at 96 px (random init: these tests are about where the work runs, not how well it fools) and
    48 real ImageNet photos stored at 96 px gray in 4 shards."""
    root = tmp_path_factory.mktemp("wide")
    spec = ModelSpec(arch="small_cnn", num_classes=2, in_channels=1, image_size=SIZE, class_names=("NORMAL", "PNEUMONIA"))
    model = save_classifier(build_model(spec, seed=0).eval(), root / "model.pt")
    write_shards(IMAGENET, root / "shards", shard_size=12, sample=48, seed=0, size=SIZE, channels=1)
    return {"model": model, "shards": root / "shards"}


def _config(wide: dict[str, Path], out: Path, **kw) -> EngineConfig:
    """The stochastic-gradient method: ρ moves every round whatever the (untrained) model, a strict bitwise check."""
    base = dict(model=str(wide["model"]), medical=PNEUMONIA, shards=str(wide["shards"]), out=str(out), zeta=0.08,
                method="sgd", workers=2, batch_size=16, max_passes=2, cpus_per_worker=0.5, cpus_per_reader=0.5, progress_every=0.0,
                checkpoint_every=1, examples=0)
    return EngineConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def reference(cluster, wide, tmp_path_factory) -> torch.Tensor:
    """ρ of the run on the session's single-node cluster."""
    out = tmp_path_factory.mktemp("single")
    m = run_engine(_config(wide, out), log=lambda s: None).metrics()
    rho = torch.from_numpy(np.load(out / "uap.npy"))
    assert m["rounds"] == 4 and float(rho.norm()) > 0
    return rho


class _Nodes:
    """A multi-node cluster of its own: the driver (this process) on a head with 0 CPUs, and worker nodes."""

    def __init__(self, workers: int, cpus: float = 1.0) -> None:
        self.cluster = Cluster(initialize_head=True, head_node_args={"node_ip_address": "127.0.0.1", "num_cpus": 0,
                                                                     "include_dashboard": False})
        self.cpus = cpus
        for _ in range(workers):
            self.add()
        connect(self.cluster.address)

    def add(self):
        return self.cluster.add_node(num_cpus=self.cpus, node_ip_address="127.0.0.1")

    def remove(self, node_id: str) -> None:
        node = next(n for n in self.cluster.worker_nodes if n.node_id == node_id)
        self.cluster.remove_node(node, allow_graceful=False)

    def live(self) -> int:
        """Live worker nodes (the head not counted)."""
        return sum(1 for n in ray.nodes() if n["Alive"] and n["NodeID"] != self.head_id)

    @property
    def head_id(self) -> str:
        return self.cluster.head_node.node_id


@pytest.fixture(scope="module")
def nodes(cluster, reference):
    """One multi-node cluster for the module's tests, which add and remove nodes in turn (each test starts from the
    node count it needs); the session's cluster is rejoined after."""
    address = cluster["address"]
    ray.shutdown()
    n = _Nodes(workers=2)
    yield n
    ray.shutdown()
    n.cluster.shutdown()
    connect(address)


def _with(n: _Nodes, workers: int) -> _Nodes:
    while n.live() < workers:
        n.add()
    assert n.live() == workers
    return n


class _StorePeaks(threading.Thread):
    """The most object-store bytes each node held, sampled every 0.1 s from its raylet."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        from ray._private.internal_api import node_stats

        self.node_stats = node_stats
        self.peak: dict[str, int] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for n in ray.nodes():
                if not n["Alive"]:
                    continue
                try:
                    used = self.node_stats(n["NodeManagerAddress"], n["NodeManagerPort"], include_memory_info=False)
                except Exception:  # a node going away between the listing and the call
                    continue
                self.peak[n["NodeID"]] = max(self.peak.get(n["NodeID"], 0), used.store_stats.object_store_bytes_used)
            time.sleep(0.1)


def _where(engine: Engine) -> dict[str, list[str]]:
    return {"workers": ray.get([w.node.remote() for w in engine.workers]),
            "readers": ray.get([r.node.remote() for r in engine.readers])}


def _run(engine: Engine) -> dict:
    try:
        return engine.run().metrics()
    finally:
        for a in engine.workers + engine.readers:
            ray.kill(a)


def test_spread_over_two_nodes_the_head_holds_nothing_heavy(nodes, wide, reference, tmp_path) -> None:
    n = _with(nodes, 2)
    engine = Engine(_config(wide, tmp_path / "spread"), log=lambda s: None)
    placed: dict[str, list[str]] = {}
    engine.on_round = lambda r: placed.update(_where(engine)) if r.round == 1 else None
    peaks = _StorePeaks()
    peaks.start()
    try:
        m = _run(engine)
    finally:
        peaks.stop.set()
        peaks.join()
    workers, readers = placed["workers"], placed["readers"]
    assert n.head_id not in workers + readers  # the head takes no work
    assert len(set(workers)) == 2 and len(set(readers)) == 2  # one worker and one reader per node
    assert m["stats"]["images"] == 96
    torch.testing.assert_close(torch.from_numpy(np.load(tmp_path / "spread" / "uap.npy")), reference, rtol=0, atol=0)
    # The head's store holds the model and the medical test images (each put once by the driver, for the restarts
    # and the evaluation) and nothing that grows with the stream: a run of 100,000 images stays under the same bound.
    # The batches lived in the worker nodes' stores.
    fixed = wide["model"].stat().st_size + 624 * SIZE * SIZE
    assert peaks.peak.get(n.head_id, 0) <= fixed + (1 << 20)
    assert max(v for k, v in peaks.peak.items() if k != n.head_id) > 100_000


def test_nodes_lost_mid_run_with_and_then_without_spare_capacity_end_with_the_same_rho(nodes, wide, reference,
                                                                                       tmp_path) -> None:
    """Three nodes. After round 1 worker 0's node goes (its actors, and the batches and rho copies in its object store,
    go with it): the actors restart on the spare node. After round 2 worker 1's node goes too, and no capacity is left:
    the run says it is waiting for resources, and completes once a node joins. Same rho, every image once."""
    n = _with(nodes, 3)
    lines: list[str] = []
    engine = Engine(_config(wide, tmp_path / "lost"), log=lines.append)
    lost: list[str] = []
    second = threading.Event()

    def on_round(r: RoundReport) -> None:
        if r.round in (1, 2):
            lost.append(_where(engine)["workers"][r.round - 1])
            n.remove(lost[-1])
            if r.round == 2:
                second.set()

    engine.on_round = on_round
    result: dict = {}
    run = threading.Thread(target=lambda: result.update(m=_run(engine)), daemon=True)  # Ray's calls work from a thread
    run.start()
    assert second.wait(120), lines
    assert any(line.startswith("worker 0 failed") or "lost" in line for line in lines), lines  # the first loss, named
    deadline = time.time() + 60
    while not any("waiting for resources to restart" in line for line in lines):
        assert time.time() < deadline and run.is_alive(), lines
        time.sleep(0.2)
    n.add()  # a node joins, as the autoscaler would add one (Ray starts nodes from the main thread only)
    run.join(300)
    assert not run.is_alive() and "m" in result, lines
    assert len(lost) == 2 and not any(x["NodeID"] in lost and x["Alive"] for x in ray.nodes())
    assert result["m"]["stats"]["images"] == 96  # none lost, none counted twice
    torch.testing.assert_close(torch.from_numpy(np.load(tmp_path / "lost" / "uap.npy")), reference, rtol=0, atol=0)


def test_without_capacity_the_run_fails_after_its_timeout_keeping_its_checkpoint(nodes, wide, tmp_path) -> None:
    n = _with(nodes, 2)
    lines: list[str] = []
    engine = Engine(_config(wide, tmp_path / "gone", restart_timeout=3.0), log=lines.append)
    engine.on_round = lambda r: n.remove(_where(engine)["workers"][0]) if r.round == 2 else None
    with pytest.raises(RaylabError, match=r"^(worker|reader) \d did not come back within 3 s after it was lost .*no node "
                                          r"could take it\); stopping, the last checkpoint is .*checkpoint.pt$"):
        _run(engine)
    assert any("waiting for resources to restart" in line for line in lines), lines
    state = json.loads(torch.load(tmp_path / "gone" / "checkpoint.pt", weights_only=True)["state"])
    assert state["round"] == 2 and not (tmp_path / "gone" / "uap.npy").exists()


def _write_where(job):
    """A shard job run as a Ray task, with the node it ran on."""
    from raylab.data.shards import write_shard

    return write_shard(job), ray.get_runtime_context().get_node_id()


def test_sharding_over_two_nodes_writes_the_one_process_shards(nodes, natural_dir, tmp_path) -> None:
    """``raylab shard --ray``: each shard a Ray task, spread over the nodes; same bytes and manifest as one process,
    the corrupt photo skipped and listed in both."""
    from raylab.data.shards import write_shards
    from raylab.engine.sharding import ray_map

    kw = dict(shard_size=8, size=32, channels=3)
    one = write_shards(natural_dir, tmp_path / "one", **kw)
    n = _with(nodes, 2)
    ran_on: list[str] = []

    def mapper(fn, jobs):  # write_shard as a Ray task (fn is write_shard: _write_where calls it)
        for result, node in ray_map(_write_where, jobs, cpus=1.0):
            ran_on.append(node)
            yield result

    many = write_shards(natural_dir, tmp_path / "many", mapper=mapper, **kw)
    assert len(set(ran_on)) == 2 and n.head_id not in ran_on
    assert many.shards == one.shards and many.skipped == one.skipped and [s for s, _ in one.skipped] == ["corrupt.JPEG"]
    assert (tmp_path / "many" / "manifest.json").read_bytes() == (tmp_path / "one" / "manifest.json").read_bytes()
