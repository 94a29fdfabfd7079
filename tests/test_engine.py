"""The distributed engine on a real local Ray cluster (loopback only), with real shards and a real model.

One Ray head (the session fixture ``cluster`` in conftest.py) serves in-process runs,
subprocess drivers and the Jobs API.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import ray
import torch

from raylab.config import EngineConfig
from raylab.core import UAP, Targeted, Untargeted, zeta_radius
from raylab.data.medical import load_medmnist
from raylab.data.shards import ShardReport, decode_stream, iter_samples, read_manifest
from raylab.engine import Engine, RoundReport, run_engine
from raylab.errors import InputError
from raylab.models import load_classifier

from .conftest import PNEUMONIA, ROOT

ZETA, EPS = 0.08, 0.02


def _stream(urls: list[str]) -> torch.Tensor:
    report = ShardReport()
    return torch.stack([img for _, img in decode_stream(iter_samples(urls, report=report), channels=1, size=28, report=report)])


def _core_in_order(model, images: torch.Tensor, *, batch_size: int, seed: int = 0, p=2, zeta=ZETA,
                   criterion=Untargeted()):
    """The core attack made to visit ``images`` in the given order (its pass order is random.Random(seed).sample)."""
    perm = random.Random(seed).sample(range(len(images)), len(images))
    inverse = torch.empty(len(images), dtype=torch.long)
    inverse[torch.tensor(perm)] = torch.arange(len(images))
    radius = zeta_radius(load_medmnist(PNEUMONIA).train_images, zeta=zeta, p=p)
    attack = UAP(radius=radius, p=p, eps=EPS, mode="faithful" if batch_size == 1 else "batched", batch_size=batch_size)
    return attack(model, images[inverse], seed=seed, criterion=criterion)


def _config(models, shards, out, **kw) -> EngineConfig:
    base = dict(model=str(models["model"]), medical=PNEUMONIA, shards=str(shards), out=str(out), zeta=ZETA, eps=EPS,
                cpus_per_worker=0.5, cpus_per_reader=0.5, progress_every=0.0, examples=2)
    return EngineConfig(**{**base, **kw})


def test_one_worker_batch_one_equals_faithful_mode(cluster, models, shards, tmp_path) -> None:
    m = run_engine(_config(models, shards, tmp_path / "w1", workers=1, batch_size=1), log=lambda s: None).metrics()
    rho = torch.from_numpy(np.load(tmp_path / "w1" / "uap.npy"))
    manifest = read_manifest(shards)
    ref = _core_in_order(load_classifier(models["model"]), _stream(manifest.urls), batch_size=1)
    assert m["stats"]["images"] == 48 and m["stats"]["accepted"] == ref.stats.accepted > 0
    torch.testing.assert_close(rho, ref.rho, rtol=0, atol=1e-6)


def test_targeted_linf_engine_equals_the_core(cluster, models, shards, tmp_path) -> None:
    m = run_engine(_config(models, shards, tmp_path / "t", workers=1, batch_size=4, p="inf", zeta=0.03, target="NORMAL",
                           max_passes=2), log=lambda s: None).metrics()
    rho = torch.from_numpy(np.load(tmp_path / "t" / "uap.npy"))
    stream = _stream(read_manifest(shards).urls)
    # two passes over the same stream order: the core's pass order differs per pass, so run it pass by pass
    model = load_classifier(models["model"])
    first = _core_in_order(model, stream, batch_size=4, p="inf", zeta=0.03, criterion=Targeted(0))
    perm = random.Random(0).sample(range(48), 48)
    inverse = torch.empty(48, dtype=torch.long)
    inverse[torch.tensor(perm)] = torch.arange(48)
    second = UAP(radius=zeta_radius(load_medmnist(PNEUMONIA).train_images, zeta=0.03, p="inf"), p="inf", eps=EPS,
                 mode="batched", batch_size=4)(model, stream[inverse], seed=0, rho=first.rho, criterion=Targeted(0))
    assert m["target"] == "NORMAL" and m["stats"]["images"] == 96
    assert m["stats"]["accepted"] == first.stats.accepted + second.stats.accepted > 0
    assert rho.abs().max() <= m["radius"] + 1e-6
    torch.testing.assert_close(rho, second.rho, rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def two_worker_run(cluster, models, shards, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("w2")
    lines: list[str] = []
    metrics = run_engine(_config(models, shards, out, workers=2, batch_size=4, eval_every=3), log=lines.append).metrics()
    return {"out": out, "metrics": metrics, "rho": torch.from_numpy(np.load(out / "uap.npy")), "log": lines}


def test_two_workers_equal_batched_mode_with_their_combined_batch(two_worker_run, models, shards) -> None:
    manifest = read_manifest(shards)
    w0, w1 = _stream(manifest.urls[0::2]), _stream(manifest.urls[1::2])
    # round r: worker 0's r-th batch of 4, then worker 1's
    order = torch.cat([torch.cat([a, b]) for a, b in zip(w0.split(4), w1.split(4))])
    ref = _core_in_order(load_classifier(models["model"]), order, batch_size=8)
    m = two_worker_run["metrics"]
    assert m["rounds"] == 6 and m["stats"]["accepted"] == ref.stats.accepted > 0
    torch.testing.assert_close(two_worker_run["rho"], ref.rho, rtol=0, atol=1e-5)


def test_outputs_metrics_and_progress(two_worker_run) -> None:
    out, m = two_worker_run["out"], two_worker_run["metrics"]
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["fooling_rate"] == m["fooling_rate"] and 0 <= m["random"]["fooling_rate"] <= 1
    assert on_disk["radius"] == pytest.approx(zeta_radius(load_medmnist(PNEUMONIA).train_images, zeta=ZETA, p=2))
    assert [h["round"] for h in m["history"]] == [3, 6]
    assert 0 <= m["worker_idle_fraction"] <= 1
    assert (out / "checkpoint.pt").exists() and (out / "uap.png").exists() and (out / "examples.png").exists()
    assert any("img/s" in line and "accepted" in line and "||rho||_2" in line for line in two_worker_run["log"])


def test_a_killed_worker_is_restarted_and_its_batch_redone(cluster, models, shards, tmp_path, two_worker_run) -> None:
    config = _config(models, shards, tmp_path / "kill", workers=2, batch_size=4)
    engine = Engine(config, log=lambda s: None)
    killed: list[int] = []

    def on_round(r: RoundReport) -> None:
        if r.round == 2:
            pid = ray.get(engine.workers[0].pid.remote())
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    engine.on_round = on_round
    try:
        m = engine.run().metrics()
        new_pid = ray.get(engine.workers[0].pid.remote())
    finally:
        for a in engine.workers + engine.readers:
            ray.kill(a)
    assert killed and new_pid != killed[0]
    assert m["stats"]["images"] == 48  # none lost, none counted twice
    torch.testing.assert_close(torch.from_numpy(np.load(tmp_path / "kill" / "uap.npy")), two_worker_run["rho"], rtol=0, atol=0)


def test_a_killed_driver_resumes_from_its_checkpoint(cluster, models, shards, tmp_path, two_worker_run) -> None:
    out = tmp_path / "resume"
    args = [sys.executable, str(ROOT / "jobs" / "generate_uap.py"), "--model", str(models["model"]), "--data", str(PNEUMONIA),
            "--shards", str(shards), "--out", str(out), "--zeta", str(ZETA), "--eps", str(EPS), "--workers", "2",
            "--batch-size", "4", "--checkpoint-every", "1", "--cpus-per-worker", "0.5", "--cpus-per-reader", "0.5",
            "--address", cluster["address"], "--progress-every", "0"]
    first = subprocess.Popen(args, env=cluster["env"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    assert first.stdout is not None
    for line in first.stdout:  # kill it once it has committed (and checkpointed) round 3
        if line.startswith("round 3 ") or time.time() > deadline:
            first.send_signal(signal.SIGKILL)
            break
    first.wait(timeout=60)
    assert first.returncode == -signal.SIGKILL and (out / "checkpoint.pt").exists() and not (out / "uap.npy").exists()
    second = subprocess.run(args, env=cluster["env"], capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "resuming from" in second.stdout and "at round 3" in second.stdout
    m = json.loads((out / "metrics.json").read_text())
    assert m["stats"]["images"] == 48
    torch.testing.assert_close(torch.from_numpy(np.load(out / "uap.npy")), two_worker_run["rho"], rtol=0, atol=0)


def test_job_submitted_through_the_jobs_api(cluster, models, shards, tmp_path) -> None:
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(cluster["dashboard"])
    out = tmp_path / "job"
    entry = (f"python jobs/generate_uap.py --model {models['model']} --data {PNEUMONIA} --shards {shards} --out {out} "
             f"--zeta {ZETA} --eps {EPS} --workers 1 --batch-size 8 --cpus-per-worker 0.5 --cpus-per-reader 0.5 --examples 0")
    job = client.submit_job(entrypoint=entry, runtime_env={"working_dir": str(ROOT), "excludes": [".venv", "runs", ".git"]})
    deadline = time.time() + 300
    while (status := client.get_job_status(job)) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        assert time.time() < deadline, "job did not finish"
        time.sleep(1)
    logs = client.get_job_logs(job)
    assert status == JobStatus.SUCCEEDED, logs[-3000:]
    assert "fooling rate R_f" in logs and "img/s" in logs
    m = json.loads((out / "metrics.json").read_text())
    assert m["stats"]["images"] == 48 and (out / "uap.npy").exists()


def test_bad_engine_input_is_refused_before_any_actor_starts(models, shards, tmp_path) -> None:
    with pytest.raises(InputError, match="4 shard\\(s\\) for 5 workers"):
        Engine(_config(models, shards, tmp_path / "x", workers=5))
    with pytest.raises(InputError, match="manifest"):
        Engine(_config(models, tmp_path, tmp_path / "y"))
    with pytest.raises(InputError, match="eps must be > 0"):
        _config(models, shards, tmp_path / "z", eps=0)


def test_the_jobs_api_refuses_a_request_without_the_token(cluster) -> None:
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"{cluster['dashboard']}/api/jobs/", timeout=30)
    assert e.value.code == 401
