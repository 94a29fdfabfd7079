"""Shared fixtures: real data from ../shared/data, a small real model trained once per session."""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Ray reads these when it is imported. Every address of a local Ray is 127.0.0.1 (tests talk only to loopback),
# and every test cluster runs with token authentication, the token in a file of this test session only.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ["RAY_AUTH_MODE"] = "token"
_TOKEN = Path(tempfile.mkdtemp(prefix="raylab-test-auth-")) / "auth_token"
_TOKEN.write_text(secrets.token_hex(32))
_TOKEN.chmod(0o600)
os.environ["RAY_AUTH_TOKEN_PATH"] = str(_TOKEN)
# Ray's processes send their metrics to the node's agent every second (default 10 s), so a test run is seen by Prometheus.
os.environ.setdefault("RAY_metrics_report_interval_ms", "1000")
# A node that dies (tests/test_faults.py) is noticed within ~3 s instead of ~15 s.
os.environ.setdefault("RAY_health_check_period_ms", "1000")
os.environ.setdefault("RAY_health_check_failure_threshold", "3")

import numpy as np
import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
# ../shared/data beside the checkout; on the lent GPU machine only the checkout travels, with the data that
# benchmarks/gpu_prepare.sh puts in its own shared/data (500 of the photos, at 300 px), for gpu.sh's GPU-only tests
DATA = next((d for d in (ROOT.parent / "shared" / "data", ROOT / "shared" / "data") if (d / "pneumoniamnist.npz").exists()),
            ROOT.parent / "shared" / "data")
PNEUMONIA = DATA / "pneumoniamnist.npz"
IMAGENET = DATA / "imagenet-samples"
FLICKR = DATA / "flickr8k-samples"


#: torch's intra-op threads in the test process, as on the 2-core CI machine
THREADS = 2


def pytest_configure(config: pytest.Config) -> None:
    torch.set_num_threads(THREADS)
    if not PNEUMONIA.exists():
        raise pytest.UsageError(f"real test data not found at {DATA} (clone the repo beside ../shared)")


@pytest.fixture(autouse=True)
def _threads_kept():
    """Code that a test runs in this process must leave torch's thread count as it found it: every later test would
    run on the count it left (`raylab bench --engine` once left 1, and the tiny reproduction's setup after it took 33
    to 36 s instead of 21 s)."""
    yield
    assert torch.get_num_threads() == THREADS, f"torch's thread count left at {torch.get_num_threads()}, not {THREADS}"


_EXIT_STATUS: list[int] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _EXIT_STATUS.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """End the process with pytest's own exit status once everything is reported, skipping the interpreter's
    finalization: there, after all 310 tests had passed and been reported, the suite's process once died of a
    segmentation fault (a native thread of Ray's or torch's outliving the interpreter, as in ray-project/ray#47864),
    which fails CI with nothing wrong. Every Ray the tests started is already stopped by its fixture."""
    if _EXIT_STATUS:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_EXIT_STATUS[-1])


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked ``own_cluster`` (the multi-node and autoscaling clusters) run last: after this process has joined
    other clusters, metrics it records reach the session cluster's Prometheus more than once (seen with Ray 2.60),
    which tests/test_observability.py would count."""
    items.sort(key=lambda item: item.get_closest_marker("own_cluster") is not None)


def tiny_cnn(in_channels: int = 1, num_classes: int = 2) -> nn.Module:
    """A small conv net: enough to have a real decision boundary at 28x28, fast on CPU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(16, num_classes),
    )


@pytest.fixture(scope="session")
def pneumonia() -> dict[str, torch.Tensor]:
    with np.load(PNEUMONIA) as z:
        return {
            "train_x": torch.from_numpy(z["train_images"]).unsqueeze(1),
            "train_y": torch.from_numpy(z["train_labels"].reshape(-1)).long(),
            "test_x": torch.from_numpy(z["test_images"]).unsqueeze(1),
            "test_y": torch.from_numpy(z["test_labels"].reshape(-1)).long(),
        }


def pneumonia_subset(path: Path, **keep: int) -> Path:
    """PneumoniaMNIST's first ``keep[split]`` images of each split named (``train=1000``), every image of the others
    (real X-rays, as stored), written to ``path``."""
    with np.load(PNEUMONIA) as z:
        np.savez(path, **{k: z[k][: keep.get(k.split("_")[0])] for k in z.files})
    return path


@pytest.fixture(scope="session")
def pneumonia_small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """PneumoniaMNIST cut to its first 600 train, 200 val and 300 test images: for runs whose point is not the data's
    size, where every UAP from the training images and every evaluation costs a tenth."""
    return pneumonia_subset(tmp_path_factory.mktemp("pneumonia-small") / "pneumoniamnist-small.npz",
                            train=600, val=200, test=300)


@pytest.fixture(scope="session")
def trained_cnn(pneumonia: dict[str, torch.Tensor]) -> nn.Module:
    """tiny_cnn trained for one epoch on real PneumoniaMNIST (about 3 s on 2 cores)."""
    from raylab.core import to_model_space

    torch.manual_seed(0)
    model = tiny_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = to_model_space(pneumonia["train_x"]), pneumonia["train_y"]
    g = torch.Generator().manual_seed(0)
    for idx in torch.randperm(len(x), generator=g).split(64):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="session")
def natural_gray() -> torch.Tensor:
    """60 real ImageNet photos, gray, 28x28, uint8 N x 1 x 28 x 28."""
    from raylab.data.natural import load_image_folder

    images, _, _ = load_image_folder(IMAGENET, channels=1, size=28, limit=60, seed=0)
    return images


@pytest.fixture(scope="session")
def natural_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 real ImageNet photos plus one corrupt JPEG (truncated real bytes)."""
    d = tmp_path_factory.mktemp("natural")
    files = sorted(IMAGENET.iterdir())[:40]
    for f in files:
        shutil.copy(f, d / f.name)
    (d / "corrupt.JPEG").write_bytes(files[0].read_bytes()[:300])
    return d


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory, natural_dir: Path) -> dict[str, Path]:
    """A natural-image backbone and a transfer-learned small_cnn on PneumoniaMNIST, made by the CLI."""
    from raylab.cli import main

    d = tmp_path_factory.mktemp("models")
    common = ["--arch", "small_cnn", "--image-size", "28"]
    assert main(["pretrain", "--images", str(natural_dir), "--epochs", "1", "--batch-size", "16",
                 "--out", str(d / "backbone.pt"), *common]) == 0
    assert main(["train", "--data", str(PNEUMONIA), "--backbone", str(d / "backbone.pt"), "--epochs", "1",
                 "--out", str(d / "model.pt"), *common]) == 0
    return {"backbone": d / "backbone.pt", "model": d / "model.pt"}




def stopped_when_written(args: list[str], path: Path, sig: signal.Signals) -> tuple[int, str]:
    """Run ``raylab *args`` in its own process, send it ``sig`` as soon as ``path`` (its first checkpoint) exists,
    and return its exit code and stderr; fails if the run ends first.

    The process ignores SIGINT, as one started in the background of a script or under nohup does: SIGTERM took
    Ctrl-C's path by raising SIGINT, so there it did nothing and the run went on to its end.
    """
    command = " ".join(shlex.quote(a) for a in [sys.executable, "-m", "raylab", *args])
    proc = subprocess.Popen(["bash", "-c", f"trap '' INT; exec {command}"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"the run ended before {path.name} was written: {proc.stderr.read()[-2000:]}")
        assert time.monotonic() < deadline, f"no {path.name} within 180 s"
        time.sleep(0.02)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err


def connect(address: str) -> None:
    """Make this process (pytest's) the driver on the cluster at ``address``, for the tests that run in it. Its Ray
    workers' output is not forwarded here: lines a trial process printed as Tune stopped it (Ray's SIGTERM handler
    raising inside an ignored exception) arrived seconds later in a later test's captured stderr and broke that test's
    one-line check (a fresh clone's .ci/run). What the tests read comes from the driver, its files and Prometheus."""
    import ray

    ray.init(address=address, logging_level="ERROR", log_to_driver=False)


def start_head(port: int, args: list[str], env: dict[str, str], log: Path, timeout: float = 180) -> subprocess.Popen:
    """``ray start --head --block`` on 127.0.0.1:``port`` with ``args``, in its own process group (stop it with
    :func:`stop_head`: ``ray stop`` would stop every Ray on the machine), its output in ``log``; returns once
    ``ray status`` answers (a head that fails to come up is stopped and its log's tail raised)."""
    ray_bin = str(Path(sys.executable).parent / "ray")
    with open(log, "w") as out:
        head = subprocess.Popen([ray_bin, "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1",
                                 "--disable-usage-stats", *args], env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    deadline = time.time() + timeout
    while subprocess.run([ray_bin, "status", f"--address=127.0.0.1:{port}"], env=env, capture_output=True).returncode != 0:
        if head.poll() is not None or time.time() > deadline:
            if head.poll() is None:
                stop_head(head)
            raise AssertionError(f"ray head did not start: {log.read_text()[-2000:]}")
        time.sleep(1)
    return head


def stop_head(head: subprocess.Popen, grace: float = 1.0) -> None:
    """Stop a ``ray start --head --block`` started in its own process group, and everything it started (an
    autoscaler's nodes too): SIGTERM, then SIGKILL to the group after ``grace`` seconds (a graceful stop takes ~30 s)."""
    os.killpg(head.pid, signal.SIGTERM)
    try:
        head.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(head.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    head.wait(timeout=60)


_GIVEN: set[int] = set()


def _free_port() -> int:
    """A loopback port free now, never given before in this session, and below the kernel's ephemeral range: a port
    that ``bind(0)`` handed out and got back is soon handed out again, to the next process that binds port 0; a Ray
    head binds several that way (its dashboard's metrics server once took the port meant for its runtime-env agent,
    and the head died). Ray's workers take 10002-19999."""
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        top = int(f.read().split()[0])
    while True:
        port = 20000 + secrets.randbelow(top - 20000) if top > 21000 else 0  # 0: no room below it, the kernel's pick
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            port = s.getsockname()[1]
        if port not in _GIVEN:
            _GIVEN.add(port)
            return port


def own_ports() -> list[str]:
    """``ray start`` options giving a head's agents and managers free ports of their own. Without them the dashboard
    agent takes Ray's fixed default, 52365, and where another Ray on the machine holds it (a developer's own cluster,
    an orphaned agent) this head's agent cannot start and every job submitted to it fails with "No available agent
    to submit job"."""
    return [f"--{k}={_free_port()}" for k in ("metrics-export-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                              "runtime-env-agent-port", "node-manager-port", "object-manager-port")]


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    """A real Ray head on 127.0.0.1 with the dashboard (Jobs API) on a free loopback port.

    Started with ``ray start --head --block`` in its own process group and stopped by signalling that group, so
    the test never touches other Ray clusters on the machine (``ray stop`` would stop them all).
    """
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "PYTHONPATH": str(ROOT)}
    gcs, dash = _free_port(), _free_port()
    head = start_head(gcs, ["--num-cpus=4", "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
                            *own_ports()], env, tmp_path_factory.mktemp("ray") / "head.log")
    address = f"127.0.0.1:{gcs}"
    import ray

    connect(address)
    yield {"address": address, "dashboard": f"http://127.0.0.1:{dash}", "env": env}
    ray.shutdown()
    stop_head(head)


@pytest.fixture(scope="session")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48 real ImageNet photos, stored gray at 28 px, in 4 shards of 12."""
    out = tmp_path_factory.mktemp("shards")
    from raylab.data.shards import write_shards

    write_shards(IMAGENET, out, shard_size=12, sample=48, seed=0, size=28, channels=1)
    return out


def submit_and_wait(cluster: dict, entrypoint: str, timeout: float = 300) -> str:
    """Submit ``entrypoint`` as a Ray job (this repository as its working dir) and wait for it; returns its logs
    after asserting that it succeeded."""
    import time

    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(cluster["dashboard"])
    job = client.submit_job(entrypoint=entrypoint, runtime_env={"working_dir": str(ROOT), "excludes": [".venv", "runs", ".git"]})
    deadline = time.time() + timeout
    while (status := client.get_job_status(job)) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        assert time.time() < deadline, "job did not finish"
        time.sleep(1)
    logs = client.get_job_logs(job)
    assert status == JobStatus.SUCCEEDED, logs[-3000:]
    return logs
