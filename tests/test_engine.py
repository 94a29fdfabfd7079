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
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import ray
import torch

from raylab.cli import main
from raylab.config import EngineConfig
from raylab.core import UAP, Targeted, Untargeted, zeta_radius
from raylab.data.medical import load_medmnist
from raylab.data.shards import ShardReport, decode_stream, iter_samples, read_manifest
from raylab.data.shards.order import shuffled_samples
from raylab.engine import Engine, RoundReport, run_engine
from raylab.errors import InputError, OutputError, RaylabError
from raylab.models import load_classifier

from .conftest import IMAGENET, PNEUMONIA, ROOT, submit_and_wait

ZETA, EPS = 0.08, 0.02


def _stream(urls: list[str], *, seed: int | None = None, stream: int = 0, pass_: int = 0) -> torch.Tensor:
    """The images of ``urls`` as a reader streams them: in shard order, or (``seed``) in its seeded order."""
    report = ShardReport()
    samples = (iter_samples(urls, report=report) if seed is None else
               shuffled_samples(urls, [None] * len(urls), seed=seed, stream=stream, pass_=pass_, report=report))
    return torch.stack([img for _, img in decode_stream(samples, channels=1, size=28, report=report)])


def _for_core_order(images: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """``images`` rearranged so that the core's pass order (``random.Random(seed).sample``) visits them as given."""
    perm = random.Random(seed).sample(range(len(images)), len(images))
    inverse = torch.empty(len(images), dtype=torch.long)
    inverse[torch.tensor(perm)] = torch.arange(len(images))
    return images[inverse]


def _core_in_order(model, images: torch.Tensor, *, batch_size: int, seed: int = 0, p=2, zeta=ZETA,
                   criterion=Untargeted()):
    """The core attack made to visit ``images`` in the given order (its pass order is random.Random(seed).sample)."""
    radius = zeta_radius(load_medmnist(PNEUMONIA).train_images, zeta=zeta, p=p)
    attack = UAP(radius=radius, p=p, eps=EPS, mode="faithful" if batch_size == 1 else "batched", batch_size=batch_size)
    return attack(model, _for_core_order(images, seed), seed=seed, criterion=criterion)


def _config(models, shards, out, **kw) -> EngineConfig:
    """The engine's mechanics are tested on the stream in shard order (``shuffle=False``), which the references here
    take; the seeded order has its own tests (``test_the_seeded_order_...``)."""
    base = dict(model=str(models["model"]), medical=PNEUMONIA, shards=str(shards), out=str(out), zeta=ZETA, eps=EPS,
                cpus_per_worker=0.5, cpus_per_reader=0.5, progress_every=0.0, examples=2, shuffle=False)
    return EngineConfig(**{**base, **kw})


def test_one_worker_batch_one_equals_faithful_mode(cluster, models, shards, tmp_path) -> None:
    m = run_engine(_config(models, shards, tmp_path / "w1", workers=1, batch_size=1), log=lambda s: None).metrics()
    rho = torch.from_numpy(np.load(tmp_path / "w1" / "uap.npy"))
    manifest = read_manifest(shards)
    ref = _core_in_order(load_classifier(models["model"]), _stream(manifest.urls), batch_size=1)
    assert m["stats"]["images"] == 48 and m["stats"]["accepted"] == ref.stats.accepted > 0
    torch.testing.assert_close(rho, ref.rho, rtol=0, atol=1e-6)


def test_targeted_linf_engine_equals_the_core(cluster, models, shards, tmp_path) -> None:
    """On the GPU path's static-shape update (as on a cuda worker), against the core's reference rule."""
    m = run_engine(_config(models, shards, tmp_path / "t", workers=1, batch_size=4, p="inf", zeta=0.03, target="NORMAL",
                           max_passes=2, static_shapes=True), log=lambda s: None).metrics()
    rho = torch.from_numpy(np.load(tmp_path / "t" / "uap.npy"))
    stream = _stream(read_manifest(shards).urls)
    # two passes over the same stream order: the core's pass order differs per pass, so run it pass by pass
    model = load_classifier(models["model"])
    first = _core_in_order(model, stream, batch_size=4, p="inf", zeta=0.03, criterion=Targeted(0))
    second = UAP(radius=zeta_radius(load_medmnist(PNEUMONIA).train_images, zeta=0.03, p="inf"), p="inf", eps=EPS,
                 mode="batched", batch_size=4)(model, _for_core_order(stream), seed=0, rho=first.rho, criterion=Targeted(0))
    assert m["target"] == "NORMAL" and m["stats"]["images"] == 96
    assert m["stats"]["accepted"] == first.stats.accepted + second.stats.accepted > 0
    assert rho.abs().max() <= m["radius"] + 1e-6
    torch.testing.assert_close(rho, second.rho, rtol=0, atol=1e-5)


def test_the_seeded_order_is_the_papers_random_order_and_each_seed_draws_its_own(cluster, models, shards, tmp_path) -> None:
    """By default the readers visit their images in a seeded random order, drawn anew each pass (the paper: each image
    "selected randomly from X without replacement"): the engine's UAP is the core's over that order, pass by pass, and
    another seed makes another UAP (in shard order every seed made the same one)."""
    rhos = {}
    for seed in (0, 1):
        run_engine(_config(models, shards, tmp_path / f"s{seed}", workers=1, batch_size=4, max_passes=2, shuffle=True,
                           seed=seed), log=lambda s: None)
        rhos[seed] = torch.from_numpy(np.load(tmp_path / f"s{seed}" / "uap.npy"))
    urls, model = read_manifest(shards).urls, load_classifier(models["model"])
    first = _core_in_order(model, _stream(urls, seed=0, pass_=0), batch_size=4)
    second = UAP(radius=zeta_radius(load_medmnist(PNEUMONIA).train_images, zeta=ZETA, p=2), p=2, eps=EPS, mode="batched",
                 batch_size=4)(model, _for_core_order(_stream(urls, seed=0, pass_=1)), seed=0, rho=first.rho)
    torch.testing.assert_close(rhos[0], second.rho, rtol=0, atol=1e-5)
    assert not torch.equal(_stream(urls, seed=0, pass_=0), _stream(urls))  # not the shard order
    assert (rhos[0] - rhos[1]).abs().max() > 1e-3


def _cut_one_jpeg(tar: Path, index: int) -> str:
    """Rewrite ``tar`` with sample ``index``'s JPEG cut short (its header intact, the shard's count unchanged);
    returns ``<shard>:<key>`` of the damaged sample."""
    import webdataset as wds

    samples = list(iter_samples([str(tar)]))
    with open(tar, "wb") as f, wds.TarWriter(f, encoder=False) as w:
        for i, raw in enumerate(samples):
            data = raw.data[: int(len(raw.data) * 0.7)] if i == index else raw.data
            w.write({"__key__": raw.key, "jpg": data, "name.txt": raw.name.encode()})
    return f"{tar.name}:{samples[index].key}"


def test_decoding_on_the_worker_gives_the_readers_uap_and_skips(cluster, models, tmp_path) -> None:
    """``--decode-on worker``: JPEGs travel encoded and the worker decodes them (libjpeg-turbo on a CPU worker: the
    reader's pixels exactly, so the same UAP); a JPEG cut short is skipped, named and counted as on the reader."""
    from raylab.data.shards import write_shards

    jpg = tmp_path / "jpg"
    write_shards(IMAGENET, jpg, shard_size=12, sample=48, seed=0, size=28, channels=1, image_format="jpg")
    damaged = _cut_one_jpeg(jpg / "shard-000001.tar", index=3)
    runs = {}
    for where in ("reader", "worker"):
        m = run_engine(_config(models, jpg, tmp_path / where, workers=1, batch_size=4, decode_on=where),
                       log=lambda s: None).metrics()
        runs[where] = (m, np.load(tmp_path / where / "uap.npy"))
    (m_r, rho_r), (m_w, rho_w) = runs["reader"], runs["worker"]
    assert m_w["config"]["decode_on"] == "worker" and m_w["stats"] == m_r["stats"] and m_w["stats"]["images"] == 47
    assert np.array_equal(rho_w, rho_r) and np.abs(rho_w).max() > 0
    assert m_w["source"]["skipped_files"] == m_r["source"]["skipped_files"] and m_w["source"]["skipped"] == 1
    assert [s.split(": ", 1)[0] for s in m_w["source"]["skipped_files"]] == [damaged]
    assert "image file is truncated" in m_w["source"]["skipped_files"][0]


def test_starved_workers_are_told_how_many_reader_cpus_would_feed_them(cluster, models, tmp_path) -> None:
    """Shards of full-size photos (decoded and resized by the reader) against a tiny model: the workers wait, and
    the run says so once, from its own measured rates."""
    from raylab.data.shards import write_shards

    large = tmp_path / "large"
    # 448 px PNGs: a reader takes ~4x a worker's time per batch here, and still ~3x with the CPUs oversubscribed
    # (500 px JPEGs decode in draft mode straight to 28 px: only ~1.5x, which a loaded CI machine once erased)
    write_shards(IMAGENET, large, shard_size=24, sample=48, seed=0, size=448, channels=3)
    lines: list[str] = []
    m = run_engine(_config(models, large, tmp_path / "run", workers=1, batch_size=4, cpus_per_reader=0.25),
                   log=lines.append).metrics()
    warnings = [line for line in lines if "waited for data" in line]
    assert len(warnings) == 1 and "--cpus-per-reader" in warnings[0] and "--decode-on worker" in warnings[0]
    assert m["decode_seconds_per_batch"] > m["compute_seconds_per_batch"] > 0 and m["worker_idle_fraction"] > 0.05


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


def test_staging_hands_each_batch_to_its_update_once_and_drops_what_came_late() -> None:
    """The store of batches copied ahead (engine/staging.py), on its own: a staged batch is taken once; an update that
    comes first takes nothing and makes the late copy a no-op; a take waits for a copy under way."""
    import threading

    from raylab.engine.staging import Staging

    staging = Staging(torch.device("cpu"))
    a, b = torch.arange(6, dtype=torch.uint8).view(2, 3), torch.ones(2, 3, dtype=torch.uint8)
    assert staging.put(0, a) and torch.equal(staging.take(0), a) and staging.take(0) is None
    assert staging.take(1) is None and not staging.put(1, b)  # the update ran first: its late copy is dropped
    assert staging.put(2, a) and staging.put(3, b) and staging.held() == 2
    assert torch.equal(staging.take(3), b) and staging.held() == 0  # batch 2's update was redone elsewhere: dropped

    class Slow(Staging):
        def _copy(self, images):
            time.sleep(0.5)
            return super()._copy(images)

    slow = Slow(torch.device("cpu"))
    copier = threading.Thread(target=slow.put, args=(4, a))
    copier.start()
    time.sleep(0.1)  # the copy is under way
    assert torch.equal(slow.take(4), a)  # waited for it instead of copying again
    copier.join()


def test_staged_batches_give_the_unstaged_runs_uap(cluster, models, shards, tmp_path, two_worker_run) -> None:
    """``--stage on`` on CPU workers (auto turns it on for cuda): the readers' batches reach the workers' staging
    thread ahead of their update, and the run's rho is the unstaged run's to the bit."""
    m = run_engine(_config(models, shards, tmp_path / "staged", workers=2, batch_size=4, eval_every=3, stage="on"),
                   log=lambda s: None).metrics()
    assert m["config"]["stage"] == "on" and m["stats"] == two_worker_run["metrics"]["stats"]
    # a batch's stage call reaches its worker as soon as the batch is decoded, before the driver submits its update:
    # all 12 were staged here; at least half, whatever the machine's load
    assert 6 <= m["batches_staged"] <= 12 and two_worker_run["metrics"]["batches_staged"] == 0
    torch.testing.assert_close(torch.from_numpy(np.load(tmp_path / "staged" / "uap.npy")), two_worker_run["rho"], rtol=0, atol=0)


def test_a_killed_worker_is_restarted_and_its_batch_redone(cluster, models, shards, tmp_path, two_worker_run) -> None:
    """With staging on: the restarted worker has lost what it staged, and copies its batch itself."""
    config = _config(models, shards, tmp_path / "kill", workers=2, batch_size=4, stage="on")
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
    assert 0 < m["batches_staged"] < 12  # the new worker 0 copied round 3's batch itself: its staged copy died with it
    torch.testing.assert_close(torch.from_numpy(np.load(tmp_path / "kill" / "uap.npy")), two_worker_run["rho"], rtol=0, atol=0)


def test_an_interrupted_or_killed_driver_resumes_from_its_checkpoint(cluster, models, shards, tmp_path) -> None:
    """Ctrl-C (SIGINT; `ray job stop`'s SIGTERM takes the same path) checkpoints the last committed round, not only the
    last periodic checkpoint, and exits 130 in one line; a SIGKILL keeps the last periodic one. In the command's
    default seeded order: the readers' positions in it, checkpointed, name the same images again."""
    out = tmp_path / "resume"
    args = [sys.executable, str(ROOT / "jobs" / "generate_uap.py"), "--model", str(models["model"]), "--data", str(PNEUMONIA),
            "--shards", str(shards), "--out", str(out), "--zeta", str(ZETA), "--eps", str(EPS), "--workers", "1",
            "--batch-size", "2", "--checkpoint-every", "2", "--cpus-per-worker", "0.5", "--cpus-per-reader", "0.5",
            "--address", cluster["address"], "--progress-every", "0"]  # 24 rounds, a checkpoint every even one

    def stop(sig: int, at: Callable[[int], bool]) -> tuple[int, str]:
        """Start the driver, send ``sig`` once it prints a round ``at`` accepts; its exit code and output."""
        run = subprocess.Popen(args, env=cluster["env"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert run.stdout is not None
        seen, deadline = [], time.time() + 120
        for line in run.stdout:
            seen.append(line)
            if (line.startswith("round ") and at(int(line.split()[1]))) or time.time() > deadline:
                run.send_signal(sig)
                break
        return run.wait(timeout=60), "".join(seen) + run.stdout.read()

    code, log = stop(signal.SIGINT, lambda r: r == 3)
    assert code == 130 and "raylab generate: interrupted; rerun with the same --out to resume" in log, log[-2000:]
    interrupted = int(log.split("interrupted after round ")[1].split()[0])  # 3, or 4 if it committed one more
    assert interrupted >= 3 and (out / "checkpoint.pt").exists() and not (out / "uap.npy").exists()
    code, log = stop(signal.SIGKILL, lambda r: r > interrupted and r % 2 == 0)
    assert code == -signal.SIGKILL and f"at round {interrupted} " in log  # an odd round: only the interrupt wrote it
    killed = int([line for line in log.splitlines() if line.startswith("round ")][-1].split()[1])
    last = subprocess.run(args, env=cluster["env"], capture_output=True, text=True, timeout=300)
    assert last.returncode == 0, last.stderr[-2000:]
    assert f"resuming from {out / 'checkpoint.pt'} at round {killed} " in last.stdout
    m = json.loads((out / "metrics.json").read_text())
    assert m["stats"]["images"] == 48 and m["config"]["shuffle"]
    run_engine(_config(models, shards, tmp_path / "whole", workers=1, batch_size=2, shuffle=True), log=lambda s: None)
    torch.testing.assert_close(torch.from_numpy(np.load(out / "uap.npy")),
                               torch.from_numpy(np.load(tmp_path / "whole" / "uap.npy")), rtol=0, atol=0)


def test_job_submitted_through_the_jobs_api(cluster, models, shards, tmp_path) -> None:
    out = tmp_path / "job"
    entry = (f"python jobs/generate_uap.py --model {models['model']} --data {PNEUMONIA} --shards {shards} --out {out} "
             f"--zeta {ZETA} --eps {EPS} --workers 1 --batch-size 8 --cpus-per-worker 0.5 --cpus-per-reader 0.5 --examples 0")
    logs = submit_and_wait(cluster, entry)
    assert "fooling rate R_f" in logs and "img/s" in logs
    m = json.loads((out / "metrics.json").read_text())
    assert m["stats"]["images"] == 48 and (out / "uap.npy").exists()


def test_ray_job_stop_checkpoints_the_last_round_and_says_so(cluster, models, shards, tmp_path) -> None:
    """`ray job stop` sends the driver SIGTERM (then SIGKILL after 3 s): it takes Ctrl-C's path. Before, Ray's core
    dumped a C++ stack trace for it and aborted, and the rounds since the last periodic checkpoint were lost."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    out = tmp_path / "stopped"
    entry = (f"python jobs/generate_uap.py --model {models['model']} --data {PNEUMONIA} --shards {shards} --out {out} "
             f"--zeta {ZETA} --eps {EPS} --workers 1 --batch-size 2 --i-max 50 --checkpoint-every 100000 "
             f"--cpus-per-worker 0.5 --cpus-per-reader 0.5 --progress-every 0")  # 1,200 rounds: it is stopped first
    client = JobSubmissionClient(cluster["dashboard"])
    job = client.submit_job(entrypoint=entry, runtime_env={"working_dir": str(ROOT), "excludes": [".venv", "runs", ".git"]})
    deadline = time.time() + 120
    while "\nround 3 " not in client.get_job_logs(job):
        assert client.get_job_status(job) in {JobStatus.PENDING, JobStatus.RUNNING}, client.get_job_logs(job)[-2000:]
        assert time.time() < deadline, "the job made no round 3"
        time.sleep(0.5)
    client.stop_job(job)
    while client.get_job_status(job) not in {JobStatus.STOPPED, JobStatus.FAILED, JobStatus.SUCCEEDED}:
        time.sleep(0.5)
    logs = client.get_job_logs(job)
    assert client.get_job_status(job) == JobStatus.STOPPED and "raylab generate: interrupted; rerun with the same --out" in logs
    assert f"checkpoint written to {out / 'checkpoint.pt'}" in logs and "SIGTERM received" not in logs, logs[-2000:]
    assert (out / "checkpoint.pt").exists() and not (out / "uap.npy").exists()


def test_bad_engine_input_is_refused_before_any_actor_starts(models, shards, tmp_path) -> None:
    with pytest.raises(InputError, match="4 shard\\(s\\) for 5 workers"):
        Engine(_config(models, shards, tmp_path / "x", workers=5))
    with pytest.raises(InputError, match="manifest"):
        Engine(_config(models, tmp_path, tmp_path / "y"))
    with pytest.raises(InputError, match="eps must be > 0"):
        _config(models, shards, tmp_path / "z", eps=0)
    with pytest.raises(InputError, match="stage must be one of auto, on, off, got 'yes'"):
        _config(models, shards, tmp_path / "z", stage="yes")
    with pytest.raises(InputError, match=r"^progress_every must be a finite number, got nan$"):
        _config(models, shards, tmp_path / "z", progress_every=float("nan"))
    (tmp_path / "afile").write_text("")
    with pytest.raises(OutputError, match=r"^cannot create output location \S+/afile: a file of that name is in the way$"):
        Engine(_config(models, shards, tmp_path / "afile"))
    assert _config(models, shards, tmp_path / "z", device="cuda").staged and not _config(models, shards, tmp_path / "z").staged


def test_workers_a_cluster_cannot_place_stop_the_run_after_the_start_timeout(cluster, models, shards, tmp_path) -> None:
    """On a cluster that may grow (one this run joined), the driver says what it waits for, waits at most
    --start-timeout, then stops in one line; its pending actors are gone, so the cluster is free for the next run."""
    lines: list[str] = []
    config = _config(models, shards, tmp_path / "out", workers=2, cpus_per_worker=3.0, start_timeout=3.0)
    t0 = time.monotonic()
    with pytest.raises(RaylabError, match=r"^\d of 4 workers and readers not placed within 3 s \(2 worker\(s\) and their "
                                          r"reader\(s\) need 7 CPU and 0 GPU, the cluster has 4 CPU"):
        run_engine(config, log=lines.append)
    assert time.monotonic() - t0 < 60
    assert lines[0].startswith("warning: 2 worker(s) and their reader(s) need 7 CPU") and "waiting at most 3 s" in lines[0]
    with pytest.raises(InputError, match=r"^--workers 2: .* no node will join"):
        Engine(config).run(fixed_cluster=True)
    deadline = time.time() + 30  # the killed actors give their CPUs back
    while ray.available_resources().get("CPU", 0) < 4 and time.time() < deadline:
        time.sleep(0.5)
    assert ray.available_resources().get("CPU", 0) == 4


def test_the_jobs_api_refuses_a_request_without_the_token(cluster) -> None:
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"{cluster['dashboard']}/api/jobs/", timeout=30)
    assert e.value.code == 401


def _other_medical_set(tmp_path) -> Path:
    """PneumoniaMNIST with half of its training images: another dataset, another zeta radius."""
    with np.load(PNEUMONIA) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["train_images"], arrays["train_labels"] = arrays["train_images"][::2], arrays["train_labels"][::2]
    path = tmp_path / "pneumoniamnist_half.npz"
    np.savez(path, **arrays)
    return path


def test_a_checkpoint_is_not_resumed_against_another_medical_dataset(cluster, models, shards, tmp_path, capsys) -> None:
    """The radius comes from the medical training images: a finished run rerun with other data is refused, one line."""
    out = tmp_path / "run"
    args = ["generate", "--model", str(models["model"]), "--shards", str(shards), "--out", str(out), "--zeta", str(ZETA),
            "--eps", str(EPS), "--batch-size", "16", "--cpus-per-worker", "0.5", "--cpus-per-reader", "0.5",
            "--examples", "0", "--address", cluster["address"]]
    assert main([*args, "--data", str(PNEUMONIA)]) == 0
    capsys.readouterr()
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert main([*args, "--data", str(_other_medical_set(tmp_path))]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "checkpoint of a different run (the medical data differs (the radius comes" in err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before  # nothing was touched


def test_a_reader_whose_decode_thread_dies_fails_the_read_with_one_line(cluster, tmp_path) -> None:
    """Images of different sizes without a resize break batching inside the reader's thread: read() must raise
    (naming the shard and key), not wait for ever."""
    from raylab.data.shards import write_shards
    from raylab.engine.readers import Position, ShardReader

    m = write_shards(sorted((ROOT.parent / "shared" / "data" / "imagenet-samples").iterdir())[:6], tmp_path / "raw", shard_size=6)
    reader = ShardReader.options(num_cpus=0.25).remote(m.urls, counts=[6], passes=1, channels=1, size=None, batch_size=3,
                                                       prefetch=2)
    try:
        _, meta = reader.read.remote(Position().to_list())
        with pytest.raises(RaylabError, match=r"reader 0: decoding failed at shard-000000\.tar:0000000\d \(InputError: .*differs"):
            ray.get(meta, timeout=60)
    finally:
        ray.kill(reader)


def test_a_reader_hands_its_batch_to_workers_zero_copy(cluster, shards) -> None:
    """A batch travels as a NumPy array, which Ray maps read-only from its object store instead of copying out (a
    pickled tensor is copied: :mod:`raylab.engine.transport`); the worker's tensor over it holds the stream's pixels."""
    from raylab.engine.readers import Position, ShardReader
    from raylab.engine.transport import from_wire

    urls = read_manifest(shards).urls
    reader = ShardReader.options(num_cpus=0.25).remote(urls[:1], counts=[12], passes=1, channels=1, size=28,
                                                       batch_size=5, prefetch=2)
    try:
        images_ref, meta_ref = reader.read.remote(Position().to_list())
        images, meta = ray.get([images_ref, meta_ref], timeout=60)
    finally:
        ray.kill(reader)
    assert isinstance(images, np.ndarray) and not images.flags.writeable  # the store's memory, not a copy
    x = from_wire(images)
    assert x.dtype == torch.uint8 and meta.size == 5 and torch.equal(x, _stream(urls[:1])[:5])


def test_a_batch_that_kills_its_worker_every_time_fails_the_run_naming_it(cluster, models, shards, tmp_path, monkeypatch) -> None:
    """Bounded retries: the third time the same batch kills its worker, the run stops with one line naming the batch,
    and the checkpoint of the last good round stays."""
    from raylab.engine import driver
    from raylab.engine.workers import UAPWorker, worker_actor

    stream = _stream(read_manifest(shards).urls)  # what the one reader streams
    poison = int(stream[4:8].sum())  # its second batch of 4

    class PoisonWorker(UAPWorker):
        def update(self, images, rho, **kw):
            if int(images.sum()) == poison:
                os._exit(1)  # like a segfaulting kernel on one input
            return super().update(images, rho, **kw)

    monkeypatch.setattr(driver, "WorkerActor", worker_actor(PoisonWorker))
    config = _config(models, shards, tmp_path / "poison", workers=1, batch_size=4, checkpoint_every=1)
    with pytest.raises(RaylabError, match=r"^shard-000000\.tar:00000004 \(a batch of 4 read by reader 0\) failed 3 times"):
        run_engine(config, log=lambda s: None)
    state = torch.load(tmp_path / "poison" / "checkpoint.pt", weights_only=True)
    assert json.loads(state["state"])["round"] == 1 and not (tmp_path / "poison" / "uap.npy").exists()


def test_the_summary_names_failed_shards_and_lost_images(cluster, models, natural_dir, tmp_path, capsys) -> None:
    """What never reached the attack is named: a shard cut short (its lost images), and a file that `raylab shard`
    could not read (not in the shards; the manifest lists it, and the run's source now does too)."""
    from raylab.data.shards import write_shards

    damaged = tmp_path / "damaged"
    write_shards(natural_dir, damaged, shard_size=10, size=28, channels=1)  # 40 photos; corrupt.JPEG left out
    tar = damaged / "shard-000002.tar"
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])  # the tail of one shard of 10 is gone
    out = tmp_path / "run"
    assert main(["generate", "--model", str(models["model"]), "--data", str(PNEUMONIA), "--shards", str(damaged),
                 "--out", str(out), "--zeta", str(ZETA), "--eps", str(EPS), "--batch-size", "8", "--i-max", "2",
                 "--cpus-per-worker", "0.5", "--cpus-per-reader", "0.5", "--examples", "0", "--address", cluster["address"]]) == 0
    m = json.loads((out / "metrics.json").read_text())
    used, lost = m["source"]["images_used"], m["source"]["images_lost"]
    assert 30 <= used < 40 and used + lost == 40 and m["stats"]["images"] == 2 * used
    assert len(m["source"]["shards_failed"]) == 1  # once, though both passes met it
    assert m["source"]["skipped_when_sharded"] == 1 and m["source"]["skipped_when_sharded_files"][0].startswith("corrupt.JPEG: ")
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("source: "))
    assert f"(40 images, {used} used, 0 skipped; {lost} lost in 1 failed shard(s): shard-000002.tar: " in line
    assert "; 1 unreadable file(s) left out when sharded (first: corrupt.JPEG: " in line


def _sgd_core_by_pass(model, images: torch.Tensor, *, batch_size: int, passes: int, p, zeta: float = ZETA):
    """The core's SGD-UAP made to visit ``images`` in the given order on every pass, ρ and the schedule carried."""
    from raylab.core import SGDUAP

    attack = SGDUAP(radius=zeta_radius(load_medmnist(PNEUMONIA).train_images, zeta=zeta, p=p), p=p, max_passes=1,
                    batch_size=batch_size)
    steps = -(-len(images) // batch_size)
    rho = None
    for k in range(passes):
        rho = attack(model, _for_core_order(images), rho=rho, seed=0, first_step=k * steps, total_steps=passes * steps).rho
    return rho


def test_sgd_on_one_worker_equals_the_core_over_two_passes(cluster, models, shards, tmp_path) -> None:
    """Pass 2 runs on pass 1's clean labels, carried by the driver (``engine/labels.py``), the readers decode
    with two threads, and batches are staged across the pass's end: the same stream, the same UAP as the core's,
    which computes C(x) once per image."""
    m = run_engine(_config(models, shards, tmp_path / "s1", method="sgd", workers=1, batch_size=4, p="inf", max_passes=2,
                           decode_threads=2, stage="on"), log=lambda s: None).metrics()
    rho = torch.from_numpy(np.load(tmp_path / "s1" / "uap.npy"))
    ref = _sgd_core_by_pass(load_classifier(models["model"]), _stream(read_manifest(shards).urls), batch_size=4, passes=2, p="inf")
    assert m["config"]["method"] == "sgd" and m["stats"]["images"] == 96 == m["stats"]["accepted"] and m["rounds"] == 24
    assert m["clean_labels_reused"] == 48  # the second pass ran on the first pass's clean labels
    assert m["batches_staged"] >= 12  # of 24 (24 here: pass 2's first batch too, staged after the end-of-pass marker)
    torch.testing.assert_close(rho, ref, rtol=0, atol=1e-6)


def test_sgd_on_two_workers_equals_the_core_with_their_combined_batch(cluster, models, shards, tmp_path) -> None:
    run_engine(_config(models, shards, tmp_path / "s2", method="sgd", workers=2, batch_size=4, max_passes=1), log=lambda s: None)
    manifest = read_manifest(shards)
    w0, w1 = _stream(manifest.urls[0::2]), _stream(manifest.urls[1::2])
    order = torch.cat([torch.cat([a, b]) for a, b in zip(w0.split(4), w1.split(4))])
    ref = _sgd_core_by_pass(load_classifier(models["model"]), order, batch_size=8, passes=1, p=2)
    torch.testing.assert_close(torch.from_numpy(np.load(tmp_path / "s2" / "uap.npy")), ref, rtol=0, atol=1e-5)


def test_bench_engine_measures_both_methods_against_their_kernels(cluster, tmp_path) -> None:
    out = tmp_path / "bench.json"
    assert main(["bench", "--engine", "--arch", "small_cnn", "--image-size", "28", "--images", "48", "--batch-size", "16",
                 "--workers", "1", "--channels", "3", "--shard-format", "jpg", "--decode-on", "reader", "worker",
                 "--cpus-per-reader", "2", "--out", str(out)]) == 0  # an RGB model: the bench repeats the gray
    # X-rays to RGB for it, and gives each reader 2 decode threads (as gpu.sh's run gives it 4)
    f = json.loads(out.read_text())
    for key in ("engine_1w_images_per_s", "engine_sgd_1w_images_per_s", "engine_1w_over_bare_kernel",
                "engine_sgd_1w_over_bare_kernel", "decode_images_per_s_per_core_stored_resized",
                "engine_decode_on_worker_1w_images_per_s", "device_decode_images_per_s", "transport_tensor_to_start_s",
                "transport_wire_to_start_s", "transport_wire_convert_s", "transport_tensor_over_wire",
                "transport_tensor_over_wire_to_start", "engine_stage_on_1w_images_per_s", "engine_1w_staged_over_unstaged"):
        assert f[key] > 0, key
    assert f["engine_1w_batches_staged"] == 0 and f["engine_stage_on_1w_batches_staged"] > 0  # staging: on for cuda only
    assert f["transport_batch_mib"] == 16 * 3 * 28 * 28 / 2**20  # one engine batch of the run's shape
    assert f["decode_on"] == ["reader", "worker"] and f["shard_format"] == "jpg"
    assert f["decode_threads_per_reader"] == 2 and f["decode_images_per_s_one_reader_stored_resized"] > 0


def test_sgd_resumes_on_its_schedule_and_survives_a_killed_worker(cluster, models, shards, tmp_path) -> None:
    """A crash after round 3 and a worker SIGKILLed at round 2: both end with the uninterrupted run's rho, to the bit
    (the step schedule continues from the checkpointed round). One worker: two lose their nodes in test_multinode.py."""
    common = dict(method="sgd", workers=1, batch_size=8, max_passes=2, checkpoint_every=1)
    run_engine(_config(models, shards, tmp_path / "plain", **common), log=lambda s: None)
    reference = torch.from_numpy(np.load(tmp_path / "plain" / "uap.npy"))

    class Crash(Exception):
        pass

    def crash(r: RoundReport) -> None:
        if r.round == 3:
            raise Crash

    with pytest.raises(Crash):
        run_engine(_config(models, shards, tmp_path / "resumed", **common), on_round=crash, log=lambda s: None)
    lines: list[str] = []
    m = run_engine(_config(models, shards, tmp_path / "resumed", **common), log=lines.append).metrics()
    assert any("at round 3" in line for line in lines) and m["rounds"] == 12 and m["stats"]["images"] == 96
    torch.testing.assert_close(torch.from_numpy(np.load(tmp_path / "resumed" / "uap.npy")), reference, rtol=0, atol=0)

    engine = Engine(_config(models, shards, tmp_path / "killed", **common), log=lambda s: None)

    def kill(r: RoundReport) -> None:
        if r.round == 2:
            os.kill(ray.get(engine.workers[0].pid.remote()), signal.SIGKILL)

    engine.on_round = kill
    try:
        m = engine.run().metrics()
    finally:
        for a in engine.workers + engine.readers:
            ray.kill(a)
    assert m["stats"]["images"] == 96
    torch.testing.assert_close(torch.from_numpy(np.load(tmp_path / "killed" / "uap.npy")), reference, rtol=0, atol=0)


def test_a_hung_worker_is_detected_replaced_and_its_batch_redone(cluster, models, shards, tmp_path, monkeypatch,
                                                                  two_worker_run) -> None:
    """A worker that stops making progress without dying (a stuck device, a frozen process): after the deadline it is
    killed and replaced, its batch redone, and the run ends with the uninterrupted run's rho, to the bit."""
    from raylab.engine import driver
    from raylab.engine.workers import UAPWorker, worker_actor

    stream = _stream(read_manifest(shards).urls[1::2])  # what reader 1 of 2 streams
    stuck = int(stream[4:8].sum())  # its second batch of 4
    marker = tmp_path / "hung-once"

    class HangingWorker(UAPWorker):
        def update(self, images, rho, **kw):
            if int(images.sum()) == stuck and not marker.exists():
                marker.write_text("hung")
                time.sleep(3600)  # no progress, no exit
            return super().update(images, rho, **kw)

    monkeypatch.setattr(driver, "WorkerActor", worker_actor(HangingWorker))
    lines: list[str] = []
    started = time.time()
    m = run_engine(_config(models, shards, tmp_path / "hung", workers=2, batch_size=4, hang_timeout=3.0),
                   log=lines.append).metrics()
    assert marker.exists() and time.time() - started < 120
    assert any("worker 1 made no progress on shard-000001.tar:00000016" in line and "killing it" in line for line in lines), lines
    assert m["actors_replaced"] == 1 and m["stats"]["images"] == 48
    torch.testing.assert_close(torch.from_numpy(np.load(tmp_path / "hung" / "uap.npy")), two_worker_run["rho"], rtol=0, atol=0)
