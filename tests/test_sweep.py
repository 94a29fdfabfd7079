"""A real Ray Tune sweep on the local test cluster: 4 UAP trials, Parquet results, and resume without duplicates."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from raylab.cli import main
from raylab.config import EngineConfig
from raylab.engine import run_engine
from raylab.errors import InputError
from raylab.results import SCHEMA, read_results
from raylab.sweep import SweepConfig, axes_of, param_space, run_sweep

from .conftest import PNEUMONIA, ROOT


def _args(models, shards, tmp_path: Path, cluster, name: str, model: str | None = None) -> list[str]:
    return ["--name", name, "--model", model or str(models["model"]), "--data", str(PNEUMONIA), "--source", str(shards), "random",
            "--eps", "0.01", "0.02", "--zeta", "0.08", "--results", str(tmp_path / "results"), "--out", str(tmp_path / "sweeps"),
            "--cpus-per-trial", "0.25", "--cpus-per-worker", "0.5", "--cpus-per-reader", "0.5", "--batch-size", "8",
            "--max-concurrent", "2", "--address", cluster["address"]]


def test_sweep_writes_one_checked_row_per_trial(cluster, models, shards, tmp_path, capsys) -> None:
    """Over both methods, with --select best: one row per trial, and the best of each method selected. Also: a model
    given as a URL keeps its architecture and input size in the rows, and every row's wall_seconds is its UAP's own
    time, as in the trial's metrics.json. And a trial's engine actors use the bundles it reserved: its placement group
    holds 3.25 of the cluster's 4 CPUs (itself, a 1.5-CPU worker, a 1.5-CPU reader); actors that left it (Ray's SPREAD
    strategy did) would ask for 3 CPUs more and never start."""
    from raylab.results import select_best

    url = "file://" + str(models["model"])
    rc = main(["sweep", *_args(models, shards, tmp_path, cluster, "grid", model=url), "--method", "paper", "sgd",
               "--lr", "0.2", "--i-max", "2", "--cpus-per-worker", "1.5", "--cpus-per-reader", "1.5", "--select", "best"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "4 trial(s), 0 failed" in out and "fooling_rate" in out
    # Tune's trial table names each trial's run by its label (it showed "...ax_passes': None}" for every trial)
    rows = [line for line in out.splitlines() if "TERMINATED" in line]
    assert any(" eps=0.02 " in r for r in rows) and any(" eps=0.01 " in r for r in rows) and "'max_passes'" not in out
    table = read_results(tmp_path / "results", filters={"sweep": "grid"})
    assert table.schema.equals(SCHEMA, check_metadata=False)
    assert table.num_rows == 4 and len(set(table["trial_id"].to_pylist())) == 4
    best = select_best(table).to_pylist()  # the best of each method, per source
    assert sorted((r["source_kind"], r["method"]) for r in best) == [("random", "paper"), ("shards", "paper"), ("shards", "sgd")]
    rows = table.to_pylist()
    # the random control has no step: one trial, not one per eps or method; sgd has no trial per eps
    assert sorted((r["source_kind"], r["method"], r["eps"] or 0, r["lr"] or 0) for r in rows) == [
        ("random", "paper", 0, 0), ("shards", "paper", 0.01, 0), ("shards", "paper", 0.02, 0), ("shards", "sgd", 0, 0.2)]
    assert [r["eps"] for r in rows if r["source_kind"] == "random"] == [None]  # no step, so no placeholder's
    shown = [line.split() for line in out.splitlines() if line.startswith("grid ") and " random " in line]
    assert shown and all(w[w.index("random") + 1] == "-" for w in shown)  # nor a method in the summary (it read "paper")
    for r in rows:
        assert r["zeta"] == 0.08 and r["p"] == "2" and r["arch"] == "small_cnn" and r["image_size"] == 28
        assert 0 <= r["fooling_rate"] <= 1 and 0 <= r["random_fooling_rate"] <= 1 and r["clean_accuracy"] > 0.6
        assert len(r["confusion_matrix"]) == 2 and all(abs(sum(row) - 1) < 1e-6 or sum(row) == 0 for row in r["confusion_matrix"])
        assert Path(r["uap_uri"]).exists() and r["uap_l2"] > 0
        assert r["torch_version"] and r["ray_version"] and r["raylab_version"] == "0.1.0"
        assert r["model"] == url
        m = json.loads((tmp_path / "sweeps" / "grid" / r["trial_id"] / "metrics.json").read_text())
        assert r["wall_seconds"] == m["seconds"] and r["fooling_rate"] == m["fooling_rate"]
    shard_rows = [r for r in rows if r["source_kind"] == "shards"]
    assert all(r["images_processed"] == 2 * 48 and r["images_per_second"] > 0 for r in shard_rows)  # i_max 2
    # the CLI reads it back, filtered
    assert main(["results", str(tmp_path / "results"), "--filter", "source_kind=shards", "--filter", "eps=0.02"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 3 and "shards" in printed[2]  # header, rule, one row


def test_an_interrupted_sweep_resumes_without_duplicate_rows(cluster, models, pneumonia_small, tmp_path) -> None:
    """Ctrl-C (Tune catches it, saves its state and returns as if done) says so and exits 130, where the sweep said
    '2 trial(s), 0 failed, 1 stopped early' and exited 0; then a SIGKILL; each rerun resumes. Trials of UAPs from
    600 training images, one at a time, each a few seconds long and with no engine actors to start."""
    args = [sys.executable, str(ROOT / "jobs" / "sweep.py"), "--name", "resume", "--model", str(models["model"]),
            "--data", str(pneumonia_small), "--source", "train", "--eps", "0.01", "--zeta", "0.04", "0.06", "0.08",
            "--results", str(tmp_path / "results"), "--out", str(tmp_path / "sweeps"), "--cpus-per-trial", "0.25",
            "--max-concurrent", "1", "--address", cluster["address"]]
    results = tmp_path / "results" / "resume"

    def stop(sig: int, rows: int) -> tuple[int, str]:
        """Run the sweep, send ``sig`` once ``rows`` trials have written their rows; its exit code and output."""
        log = tmp_path / f"sweep-{sig}.log"
        with open(log, "w") as sink:  # a file, not a pipe nobody reads while the sweep runs
            run = subprocess.Popen(args, env=cluster["env"], stdout=sink, stderr=subprocess.STDOUT, text=True)
            deadline = time.time() + 240
            while not (results.exists() and len(list(results.glob("trial-*.parquet"))) >= rows):
                assert run.poll() is None and time.time() < deadline, "the sweep ended or stalled before its trials finished"
                time.sleep(0.5)
            run.send_signal(sig)
            return run.wait(timeout=120), log.read_text()

    code, out = stop(signal.SIGINT, 1)
    done = len(list(results.glob("trial-*.parquet")))
    assert code == 130 and 1 <= done < 3, out[-3000:]
    # the trial running when interrupted and the one never started: Tune marks the first terminated, as if done (one
    # that wrote its row just before the interrupt may not have reported to Tune yet)
    unfinished = re.search(r"3 trial\(s\), 0 failed, (\d) not finished", out)
    assert unfinished and 3 - done <= int(unfinished[1]) <= 2 and "stopped early" not in out, out[-3000:]
    assert "raylab sweep: interrupted; finished trials are kept: rerun the same command to resume" in out
    if done == 1:  # (the second trial could finish before the interrupt landed)
        code, _ = stop(signal.SIGKILL, 2)
        assert code == -signal.SIGKILL and len(list(results.glob("trial-*.parquet"))) < 3
    kept = {r["trial_id"]: r["run_id"] for r in read_results(tmp_path / "results", filters={"sweep": "resume"}).to_pylist()}
    last = subprocess.run(args, env=cluster["env"], capture_output=True, text=True, timeout=600)
    assert last.returncode == 0, last.stdout[-3000:] + last.stderr[-3000:]
    assert "resuming sweep resume" in last.stdout and "3 trial(s), 0 failed; results" in last.stdout
    table = read_results(tmp_path / "results", filters={"sweep": "resume"})
    assert table.num_rows == 3 and len(set(table["trial_id"].to_pylist())) == 3
    # no trial with a row is redone, whether or not Tune's saved state (written every few seconds, and not after a
    # SIGKILL) knew it had finished
    assert {r["trial_id"]: r["run_id"] for r in table.to_pylist() if r["trial_id"] in kept} == kept
    assert isinstance(table, pa.Table)


def test_a_resumed_sweep_with_other_settings_is_refused(cluster, models, tmp_path, capsys) -> None:
    args = ["sweep", "--name", "changed", "--model", str(models["model"]), "--data", str(PNEUMONIA), "--source", "random",
            "--results", str(tmp_path / "results"), "--out", str(tmp_path / "sweeps"), "--address", cluster["address"]]
    assert main([*args, "--eps", "0.01"]) == 0
    capsys.readouterr()
    before = read_results(tmp_path / "results", filters={"sweep": "changed"})["run_id"].to_pylist()
    assert main([*args, "--eps", "0.03"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "sweep 'changed' was started with other settings (eps=[0.01] then, [0.03] now)" in err
    assert read_results(tmp_path / "results", filters={"sweep": "changed"})["run_id"].to_pylist() == before  # untouched
    assert main([*args, "--eps", "0.01", "--max-concurrent", "1"]) == 0  # where trials run may change


def test_the_random_control_runs_once_per_p_zeta_target_and_seed_not_once_per_step(models, shards, tmp_path) -> None:
    """Its rho is noise drawn from the seed at the radius of p and zeta: a trial per method, step or i_max would
    make the same row again (a sweep of 4 eps x 2 p x 7 zeta x 3 seeds ran 168 random-control trials for 42)."""
    s = SweepConfig(name="grid", medical=str(PNEUMONIA), models=(str(models["model"]),),
                    sources=(str(shards), "train", "random"), methods=("paper", "sgd"), eps=(0.01, 0.02), lr=(0.5,),
                    max_passes=(1, 2), p=("2", "inf"), zeta=(0.04,), seeds=(0, 1))
    space, runs = param_space(s), s.runs()
    assert space["run"]["grid_search"] == list(runs) and space["model"] == Path(s.models[0]).name  # one: a constant
    assert axes_of({"model": space["model"], "run": "random"}, runs, s.model_labels())["model"] == s.models[0]
    per_source = {src: [(r["attack"], r["max_passes"]) for r in runs.values() if r["source"] == src] for src in s.sources}
    assert len(per_source[str(shards)]) == len(per_source["train"]) == 3 * 2  # (paper eps 0.01, 0.02; sgd lr 0.5) x i_max
    assert per_source["random"] == [({"method": "paper", "eps": 0.01}, 1)]
    # Tune's trial table shows the label, which says what the trial computes
    assert list(runs)[:3] == ["eps=0.01 i_max=1", "eps=0.01 i_max=2", "eps=0.02 i_max=1"]
    assert "lr=0.5 i_max=2" in runs and "train lr=0.5 i_max=1" in runs and list(runs)[-1] == "random"
    other = Path(shutil.copytree(shards, tmp_path / shards.name))  # a second location of the same name
    two = replace(s, sources=(str(shards), "s3://bucket/photos-b/", str(other)), methods=("paper",), eps=(0.0080001,),
                  max_passes=(None,)).runs()
    assert list(two) == [f"{shards.parent.name}/{shards.name} eps=0.0080001", "photos-b eps=0.0080001",
                         f"{other.parent.name}/{other.name} eps=0.0080001"]  # each by the fewest last parts of its own
    assert list(replace(s, sources=(str(shards), "s3://bucket/photos-b/"), methods=("paper",), eps=(0.008,),
                        max_passes=(None,)).runs()) == [f"{shards.name} eps=0.008", "photos-b eps=0.008"]
    # two checkpoints of one name: Tune's table shows a value's last 17 characters, so the folder goes last
    copy = Path(shutil.copy(models["model"], tmp_path / "model.pt"))
    labels = replace(s, models=(str(models["model"]), str(copy))).model_labels()
    assert labels == {f"model.pt ({models['model'].parent.name})": str(models["model"]), f"model.pt ({tmp_path.name})": str(copy)}
    assert axes_of({"model": str(copy), "run": "random"}, runs, labels)["model"] == str(copy)  # an older sweep's path
    assert axes_of({"run": list(runs)[0], "p": "2", "seed": 1}, runs) == {
        "source": str(shards), "attack": {"method": "paper", "eps": 0.01}, "max_passes": 1, "p": "2", "seed": 1}
    old = {"run": runs["random"], "p": "2"}  # a trial of a sweep started before runs had labels, restored
    assert axes_of(old) == {"source": "random", "attack": {"method": "paper", "eps": 0.01}, "max_passes": 1, "p": "2"}
    flat = {"source": "train", "attack": {"method": "paper", "eps": 0.01}, "max_passes": None, "p": "2"}
    assert axes_of(flat) == flat  # a trial of a sweep started before the run axis, restored


def test_trials_without_a_stream_ask_for_no_engine_workers(cluster, models, pneumonia_small, tmp_path, capsys) -> None:
    """The training-image and random trials run inside the trial: workers the cluster cannot give do not block them.
    Also: ``seeds`` runs every grid point once per seed, and the results give each point's mean ± sd over them, in
    a table and drawn over ζ. (The first 600 training images: a UAP from all 4,708 took 13 s of the test's 35.)"""
    s = SweepConfig(name="light", medical=str(pneumonia_small), models=(str(models["model"]),), sources=("random", "train"),
                    eps=(0.01,), zeta=(0.04, 0.08), results=str(tmp_path / "results"), out=str(tmp_path / "sweeps"),
                    workers=2, cpus_per_worker=64.0, seeds=(0, 1))
    assert s.bundles("random") == [{"CPU": 0.25}] and len(s.bundles("/some/shards")) == 5
    # under --device cuda the GPU goes where the UAP is computed: the trial itself, or each engine worker (a trial that
    # reserved none would see no GPU: Ray hides them)
    gpu = replace(s, device="cuda")
    assert gpu.bundles("train") == [{"CPU": 0.25, "GPU": 1.0}] and gpu.largest_trial() == (0.25, 1.0)
    assert gpu.bundles("/some/shards")[:2] == [{"CPU": 0.25}, {"CPU": 64.0, "GPU": 1.0}]
    rc = main(["sweep", "--name", "light", "--model", str(models["model"]), "--data", str(pneumonia_small), "--source", "random",
               "train", "--eps", "0.01", "--zeta", "0.04", "0.08", "--results", str(tmp_path / "results"), "--out",
               str(tmp_path / "sweeps"), "--workers", "2", "--cpus-per-worker", "64", "--seeds", "0", "1",
               "--max-concurrent", "2", "--address", cluster["address"]])  # 2 trial processes, reused, not 8
    out = capsys.readouterr().out
    assert rc == 0 and "8 trial(s), 0 failed" in out, out
    assert f"plot: {tmp_path / 'sweeps'}/light/curves.png (2 curve(s) over zeta)" in out  # a sweep over zeta draws it
    with Image.open(tmp_path / "sweeps" / "light" / "curves.png") as image:
        assert image.width == 640 and image.height > 440  # one panel, R_f; a legend below it
    rows = read_results(tmp_path / "results", filters={"sweep": "light"}).to_pylist()
    assert sorted((r["source_kind"], r["zeta"], r["seed"]) for r in rows) == [
        (kind, zeta, seed) for kind in ("random", "train") for zeta in (0.04, 0.08) for seed in (0, 1)]
    train = sorted((r for r in rows if r["source_kind"] == "train" and r["zeta"] == 0.08), key=lambda r: r["seed"])
    assert not np.array_equal(*(np.load(r["uap_uri"]) for r in train))  # two seeds, two image orders, two UAPs
    plot = tmp_path / "plots" / "light.png"
    assert main(["results", str(tmp_path / "results"), "--filter", "sweep=light", "--over-seeds", "--plot", str(plot)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    mean = sum(r["fooling_rate"] for r in train) / 2
    assert len(lines) == 7 and all("[0, 1]" in line for line in lines[2:6])  # header, rule, one line per grid point
    assert any(line.split()[2] == "train" and " 0.08 " in line and f"{mean:.3g} ± " in line for line in lines[2:6])
    assert lines[6] == f"plot: {plot} (2 curve(s) over zeta)"  # random and train, each over the two zetas
    assert Image.open(plot).width == 640
    for fmt, magic in (("pdf", b"%PDF-"), ("svg", b"<?xml")):  # vector figures for a paper, by the file's extension
        assert main(["results", str(tmp_path / "results"), "--over-seeds", "--plot", str(tmp_path / f"light.{fmt}")]) == 0
        assert (tmp_path / f"light.{fmt}").read_bytes().startswith(magic)
    capsys.readouterr()
    assert main(["results", str(tmp_path / "nothing-here"), "--plot", str(tmp_path / "light.txt")]) == 2
    assert capsys.readouterr().err.strip() == (f"raylab results: error: {tmp_path}/light.txt: a figure is written as .png, "
                                               ".pdf, .svg; give a file name with one of those extensions")
    with pytest.raises(InputError, match="give one or more distinct seeds"):
        SweepConfig(**{**{k: getattr(s, k) for k in ("name", "medical", "models", "sources")}, "seeds": (1, 1)})


def test_each_engine_actor_takes_a_bundle_of_its_own_shape() -> None:
    from raylab.engine.placement import bundle_indices

    trial, worker, reader = {"CPU": 0.25}, {"CPU": 0.5, "GPU": 1.0}, {"CPU": 0.5}
    bundles = [trial, worker, worker, reader, reader]  # SweepConfig.bundles of 2 workers on a GPU
    assert bundle_indices(bundles, [dict(worker, memory=0)] * 2 + [reader] * 2) == [1, 2, 3, 4]
    # the head bundle is the trial's own, even when a worker has its shape; a shape no bundle has goes anywhere
    assert bundle_indices([trial, trial], [trial, trial]) == [1, -1]
    assert bundle_indices(bundles, [{"CPU": 2.0}]) == [-1]


def test_tune_ranks_trials_and_sees_them_progress(cluster, models, shards, tmp_path) -> None:
    """Also: the second trial runs in the first one's process (Tune's reuse_actors) and makes the UAP that a fresh
    process makes with its settings."""
    s = SweepConfig(name="ranked", medical=str(PNEUMONIA), models=(str(models["model"]),), sources=(str(shards),),
                    eps=(0.005, 0.02), zeta=(0.08,), results=str(tmp_path / "results"), out=str(tmp_path / "sweeps"),
                    batch_size=4, cpus_per_worker=0.5, cpus_per_reader=0.5, max_concurrent=1, report_every=2)
    grid = run_sweep(s, log=lambda line: None)
    rows = read_results(tmp_path / "results", filters={"sweep": "ranked"}).to_pylist()
    best = grid.get_best_result()  # the Tuner's own metric and mode
    assert best.metrics["score"] == max(r["fooling_rate"] for r in rows) == best.metrics["fooling_rate"]
    for r in grid:
        progress = r.metrics_dataframe
        assert len(progress) == 12 // 2 + 1  # a report every 2 of the 12 rounds, then the final one
        assert list(progress["stream_images"].dropna()) == [8.0 * k for k in range(1, 7)]
    assert len({r.metrics["pid"] for r in grid}) == 1  # one trial process for both trials
    fresh = run_engine(EngineConfig(model=s.models[0], medical=Path(s.medical), shards=s.sources[0], out=str(tmp_path / "fresh"),
                                    eps=0.02, zeta=0.08, batch_size=4, cpus_per_worker=0.5, cpus_per_reader=0.5, examples=4),
                       log=lambda line: None)
    reused = next(r for r in rows if r["eps"] == 0.02)
    assert fresh.evaluation.uap.fooling_rate == reused["fooling_rate"]
    np.testing.assert_array_equal(np.load(fresh.uap_uri), np.load(reused["uap_uri"]))


def test_early_stopping_stops_the_trailing_trial_of_its_group(cluster, models, shards, tmp_path, capsys) -> None:
    """ASHA within one zeta: the trial whose step is too small to fool anything is stopped and writes no row."""
    rc = main(["sweep", "--name", "asha", "--model", str(models["model"]), "--data", str(PNEUMONIA), "--source", str(shards),
               "--eps", "0.05", "0.00001", "--p", "inf", "--zeta", "0.08", "--batch-size", "4", "--report-every", "3",
               "--early-stop", "--early-stop-grace", "12", "--max-concurrent", "1", "--cpus-per-worker", "0.5",
               "--cpus-per-reader", "0.5", "--results", str(tmp_path / "results"), "--out", str(tmp_path / "sweeps"),
               "--address", cluster["address"]])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "2 trial(s), 0 failed, 1 stopped early" in out
    assert read_results(tmp_path / "results", filters={"sweep": "asha"})["eps"].to_pylist() == [0.05]


def test_bad_sweep_input_is_refused(models, shards, tmp_path) -> None:
    base = dict(name="x", medical=str(PNEUMONIA), models=(str(models["model"]),), sources=(str(shards),))
    with pytest.raises(InputError, match="eps must be > 0"):
        SweepConfig(**base, eps=(0.01, -1.0))
    with pytest.raises(InputError, match="p must be 2 or inf"):
        SweepConfig(**base, p=("3",))
    with pytest.raises(InputError, match="not 'train', 'random' or a shard location"):
        SweepConfig(**{**base, "sources": (str(tmp_path),)})
    with pytest.raises(InputError, match=r"^cpus_per_trial must be a finite number, got inf$"):  # Tune would wait forever
        SweepConfig(**base, cpus_per_trial=float("inf"))
    with pytest.raises(InputError, match=r"^seed must be an integer in \[0, 4294967295\), got -1$"):
        SweepConfig(**base, seeds=(-1,))
