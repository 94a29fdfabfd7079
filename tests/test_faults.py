"""Faults a shared cluster has, met on a real local Ray cluster: a lost node's actors, a results location that fills up,
a driver without the cluster's token, and paths that try to leave the output location."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import ray
import torch

from raylab.config import EngineConfig
from raylab.engine import Engine, RoundReport, run_engine
from raylab.errors import InputError, OutputError
from raylab.store import Store

from .conftest import IMAGENET, PNEUMONIA, ROOT

ZETA, EPS = 0.08, 0.02


def _config(models, shards, out, **kw) -> EngineConfig:
    base = dict(model=str(models["model"]), medical=PNEUMONIA, shards=str(shards), out=str(out), zeta=ZETA, eps=EPS,
                workers=1, batch_size=4, max_passes=3, cpus_per_worker=0.5, cpus_per_reader=0.5, progress_every=0.0,
                examples=0, checkpoint_every=1)
    return EngineConfig(**{**base, **kw})


def test_losing_every_actor_of_a_node_at_once_ends_with_the_same_rho(cluster, models, shards, tmp_path) -> None:
    """Every actor of the run at once, twice: its reader and its worker SIGKILLed together mid-run, as when the one
    node holding them dies but the cluster lives on (test_multinode.py removes whole nodes of a multi-node cluster)."""
    config = _config(models, shards, tmp_path / "lost", workers=1, batch_size=4)
    reference = run_engine(_config(models, shards, tmp_path / "reference", workers=1, batch_size=4), log=lambda s: None).metrics()
    lines: list[str] = []
    engine = Engine(config, log=lines.append)
    killed: list[int] = []

    def on_round(r: RoundReport) -> None:
        if r.round in (3, 9):
            pids = ray.get([a.pid.remote() for a in engine.workers + engine.readers])
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            killed.extend(pids)

    engine.on_round = on_round
    try:
        m = engine.run().metrics()
        after = ray.get([a.pid.remote() for a in engine.workers + engine.readers])
    finally:
        for a in engine.workers + engine.readers:
            ray.kill(a)
    assert len(killed) == 4 and not set(after) & set(killed)  # both actors were restarted, twice
    assert m["stats"]["images"] == reference["stats"]["images"] == 3 * 48  # none lost, none counted twice
    assert m["source"]["skipped"] == reference["source"]["skipped"]
    torch.testing.assert_close(torch.from_numpy(np.load(tmp_path / "lost" / "uap.npy")),
                               torch.from_numpy(np.load(tmp_path / "reference" / "uap.npy")), rtol=0, atol=0)


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs: a results location that fills up (needs mount rights, as root in CI)."""
    d = tmp_path / "small"
    d.mkdir()
    if shutil.which("mount") is None or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(d)],
                                                       capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (not root)")
    yield d
    subprocess.run(["umount", "-l", str(d)], check=False)


#: Run in one process, each command in turn: it starts its local Ray, is refused, and the local Ray is stopped.
_EACH_COMMAND = """
import contextlib, io, json, os, sys
import ray
from raylab.cli import main
seen = {}
for name, argv in json.loads(sys.argv[1]).items():
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(argv)
    seen[name] = [code, ray.is_initialized(), err.getvalue()]
    ray.shutdown()
print(json.dumps(seen), flush=True)
os._exit(0)  # Ray's C++ teardown at exit, after four starts and stops in one process, segfaulted 1 time in 6 (not the product's
# path: a command starts one Ray per process); what is checked is above
"""


def test_an_ask_the_commands_own_local_ray_cannot_hold_is_refused_at_once(models, shards, tmp_path) -> None:
    """With no cluster given, a command starts its own local Ray, which no node will ever join: workers or tasks it
    cannot hold are an error naming the option, not a wait that never ends (found running `raylab generate
    --workers 2` on 2 cores, which waited forever for CPUs). `generate` is asked for too many CPUs and a GPU at once,
    for both of its fixes; the four commands run in one process, one after the other (a process each took 10 s)."""
    out = {name: str(tmp_path / name) for name in ("generate", "sweep", "shard", "audit")}
    cases = {
        "generate": (["--model", str(models["model"]), "--data", str(PNEUMONIA), "--shards", str(shards), "--out",
                      out["generate"], "--device", "cuda", "--cpus-per-worker", "1000", "--cpus-per-reader", "0.5"],
                     "--workers 1: 1 worker(s) and their reader(s) need 1000.5 CPU and 1 GPU, the cluster has ",
                     "use fewer --workers or lower --cpus-per-worker/--cpus-per-reader; each worker asks for a GPU under "
                     "--device cuda: use --device cpu here, or fewer --workers"),  # both short: both fixes
        "sweep": (["--name", "big", "--model", str(models["model"]), "--data", str(PNEUMONIA), "--source", "random",
                   "--results", out["sweep"], "--out", out["sweep"], "--device", "cuda", "--cpus-per-trial", "1000"],
                  # the random control's trial, with the GPU it computes on (it asked for none, so saw none on a GPU node)
                  "one trial (its own process, its workers and readers) would need 1000 CPU and 1 GPU, the cluster has ",
                  "use fewer --workers or lower --cpus-per-trial/--cpus-per-worker/--cpus-per-reader; under --device cuda "
                  "each engine worker, and each trial of 'train' or 'random', asks for a GPU: use --device cpu here, or "
                  "fewer --workers"),
        "shard": ([str(IMAGENET), out["shard"], "--ray", "--cpus-per-task", "1000"],
                  "--cpus-per-task 1000: one shard task would need 1000 CPU and 0 GPU, the cluster has ", "lower --cpus-per-task"),
        "audit": (["--model", str(models["model"]), "--data", str(PNEUMONIA), "--natural", str(IMAGENET), "--out",
                   out["audit"], "--ray", "--cpus-per-uap", "1000", "--device", "cuda", "--gpus-per-uap", "0.5"],
                  "--cpus-per-uap 1000: one UAP task would need 1000 CPU and 0.5 GPU, the cluster has ",
                  "lower --cpus-per-uap; each UAP task asks for --gpus-per-uap of a GPU under --device cuda: use --device cpu here"),
    }
    if torch.cuda.is_available():  # this machine's local Ray has a GPU: only the CPUs are short
        for name in ("generate", "sweep", "audit"):
            args, first, fix = cases[name]
            cases[name] = (args, first, fix.split("; ")[0])
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    argv = {name: [name, *args] for name, (args, _, _) in cases.items()}
    run = subprocess.run([sys.executable, "-c", _EACH_COMMAND, json.dumps(argv)], env=env, capture_output=True, text=True,
                         timeout=300, cwd=ROOT)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    for name, (_, first, fix) in cases.items():
        code, started, err = seen[name]
        assert code == 2 and started, (name, err[-2000:])  # refused on the local Ray the command started
        last = err.strip().splitlines()[-1]
        assert last.startswith(f"raylab {name}: error: {first}"), last
        assert last.endswith(f" GPU (a local Ray started by this run: no node will join); {fix}"), last
        o = Path(out[name])
        assert not list(o.glob("**/*.npy")) and not list(o.glob("**/*.parquet")) and not list(o.glob("*.tar"))


def test_a_full_results_location_fails_clearly_and_keeps_what_was_there(cluster, models, shards, small_disk) -> None:
    out = small_disk / "run"
    store = Store.at(out)
    store.makedirs()
    previous = store.write_text("metrics.json", '{"previous": true}')
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (1024 * 1024 - 4096))  # one page left: not enough for a checkpoint
    config = _config(models, shards, out, max_passes=1)
    with pytest.raises(OutputError, match=r"cannot write .*run/checkpoint.pt \(No space left on device\)"):
        run_engine(config, log=lambda s: None)
    assert Path(previous).read_text() == '{"previous": true}'  # never replaced by half a file
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json"]  # no temporary left behind
    filler.unlink()  # space again: the same command now completes
    m = run_engine(config, log=lambda s: None).metrics()
    assert json.loads(Path(previous).read_text())["fooling_rate"] == m["fooling_rate"]


def test_a_read_only_results_location_fails_clearly_and_keeps_what_was_there(cluster, models, shards, small_disk) -> None:
    out = small_disk / "run"
    previous = Store.at(out).write_text("metrics.json", '{"previous": true}')
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    with pytest.raises(OutputError, match=r"cannot write .*run/checkpoint.pt \(Read-only file system\)"):
        run_engine(_config(models, shards, out, max_passes=1), log=lambda s: None)
    assert Path(previous).read_text() == '{"previous": true}' and sorted(p.name for p in out.iterdir()) == ["metrics.json"]


def test_file_names_cannot_leave_the_output_location(tmp_path) -> None:
    store = Store.at(tmp_path / "out")
    for bad in ("../escape.json", "/etc/passwd", "a/../../b"):
        with pytest.raises(InputError, match="must stay inside the output location"):
            store.write_bytes(bad, b"x")
        with pytest.raises(InputError, match="must stay inside the output location"):
            store.exists(bad)
    assert not (tmp_path / "escape.json").exists()


def test_a_driver_without_the_token_cannot_connect(cluster, tmp_path) -> None:
    wrong = tmp_path / "wrong_token"
    wrong.write_text("0" * 64)
    code = f"import ray; ray.init(address={cluster['address']!r}); print('CONNECTED')"
    for token_env in ({"RAY_AUTH_TOKEN_PATH": str(wrong)}, {"RAY_AUTH_TOKEN_PATH": str(tmp_path / "none")}):
        # two tries at the GCS, not Ray's default 20 (one a second): a refused token is refused on every try
        env = {**cluster["env"], **token_env, "RAY_gcs_server_port_wait_time_s": "2"}
        r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode != 0 and "CONNECTED" not in r.stdout, r.stdout[-500:]
        assert "token" in (r.stdout + r.stderr).lower()



def test_a_stream_larger_than_the_object_store_flows_through(cluster, tmp_path) -> None:
    """A second, separate Ray head with the smallest object store Ray allows (75 MiB), and 7 passes over 1,000 photos
    at 64 px RGB: 86 MB of decoded batches, more than the store holds, stream through it (batches are freed as used).
    RGB: three times the bytes of gray. The model is a TorchScript program that pools each image to 8x8 before one
    linear layer (a model trained elsewhere, with its card): its compute is next to nothing, so the readers run
    ahead of the workers as far as back-pressure lets them, and the test's time is the stream's."""
    from raylab.cards import import_model
    from raylab.data.shards import write_shards
    from raylab.models import save_classifier

    from .conftest import IMAGENET, _free_port, own_ports, start_head, stop_head

    shards = tmp_path / "shards"
    write_shards(IMAGENET, shards, shard_size=250, size=64, channels=3)
    net = torch.nn.Sequential(torch.nn.AvgPool2d(8), torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2))
    torch.jit.save(torch.jit.script(net), tmp_path / "pool.ts.pt")
    card = tmp_path / "pool.json"
    card.write_text(json.dumps({"format": "torchscript", "class_names": ["NORMAL", "PNEUMONIA"], "channels": 3,
                                "image_size": 64, "scale": 255, "mean": [128] * 3, "std": [128] * 3}))
    model = save_classifier(import_model(card, tmp_path / "pool.ts.pt"), tmp_path / "rgb64.pt")
    medical = tmp_path / "pneumonia-rgb.npz"  # the real chest X-rays as RGB (gray repeated), for the RGB model
    with np.load(PNEUMONIA) as z:
        np.savez(medical, **{k: np.repeat(v[..., None], 3, -1) if k.endswith("_images") else v for k, v in z.items()})
    gcs = _free_port()
    store_bytes = 75 * 1024 * 1024
    head = start_head(gcs, ["--num-cpus=2", f"--object-store-memory={store_bytes}", "--include-dashboard=false", *own_ports()],
                      cluster["env"], tmp_path / "head.log", timeout=120)
    try:
        out = tmp_path / "run"
        r = subprocess.run([sys.executable, "-m", "raylab", "generate", "--model", str(model), "--data", str(medical),
                            "--shards", str(shards), "--out", str(out), "--workers", "2", "--batch-size", "64", "--i-max", "7",
                            "--cpus-per-worker", "0.5", "--cpus-per-reader", "0.5", "--examples", "0", "--progress-every", "30",
                            "--checkpoint-every", "100", "--address", f"127.0.0.1:{gcs}"],
                           env=cluster["env"], capture_output=True, text=True, timeout=480)
    finally:
        stop_head(head)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    m = json.loads((out / "metrics.json").read_text())
    assert m["stats"]["images"] == 7 * 1000 and 7 * 1000 * 3 * 64 * 64 > store_bytes
