"""A real Ray Tune sweep on the local test cluster: 4 UAP trials, Parquet results, and resume without duplicates."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest

from raylab.cli import main
from raylab.errors import InputError
from raylab.results import SCHEMA, read_results
from raylab.sweep import SweepConfig

from .conftest import PNEUMONIA, ROOT


def _args(models, shards, tmp_path: Path, cluster, name: str) -> list[str]:
    return ["--name", name, "--model", str(models["model"]), "--data", str(PNEUMONIA), "--source", str(shards), "random",
            "--eps", "0.01", "0.02", "--zeta", "0.08", "--results", str(tmp_path / "results"), "--out", str(tmp_path / "sweeps"),
            "--cpus-per-trial", "0.25", "--cpus-per-worker", "0.5", "--cpus-per-reader", "0.5", "--batch-size", "8",
            "--max-concurrent", "2", "--address", cluster["address"]]


def test_sweep_writes_one_checked_row_per_trial(cluster, models, shards, tmp_path, capsys) -> None:
    rc = main(["sweep", *_args(models, shards, tmp_path, cluster, "grid"), "--select", "best"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "4 trial(s), 0 failed" in out and "fooling_rate" in out
    table = read_results(tmp_path / "results", filters={"sweep": "grid"})
    assert table.schema.equals(SCHEMA, check_metadata=False)
    assert table.num_rows == 4 and len(set(table["trial_id"].to_pylist())) == 4
    rows = table.to_pylist()
    assert sorted((r["source_kind"], r["eps"]) for r in rows) == [("random", 0.01), ("random", 0.02), ("shards", 0.01), ("shards", 0.02)]
    for r in rows:
        assert r["zeta"] == 0.08 and r["p"] == "2" and r["arch"] == "small_cnn" and r["image_size"] == 28
        assert 0 <= r["fooling_rate"] <= 1 and 0 <= r["random_fooling_rate"] <= 1 and r["clean_accuracy"] > 0.6
        assert len(r["confusion_matrix"]) == 2 and all(abs(sum(row) - 1) < 1e-6 or sum(row) == 0 for row in r["confusion_matrix"])
        assert Path(r["uap_uri"]).exists() and r["uap_l2"] > 0
        assert r["torch_version"] and r["ray_version"] and r["raylab_version"] == "0.1.0"
    shard_rows = [r for r in rows if r["source_kind"] == "shards"]
    assert all(r["images_processed"] == 48 and r["images_per_second"] > 0 for r in shard_rows)
    # the CLI reads it back, filtered
    assert main(["results", str(tmp_path / "results"), "--filter", "source_kind=shards", "--filter", "eps=0.02"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 3 and "shards" in printed[2]  # header, rule, one row


def test_an_interrupted_sweep_resumes_without_duplicate_rows(cluster, models, shards, tmp_path) -> None:
    args = [sys.executable, str(ROOT / "jobs" / "sweep.py"), *_args(models, shards, tmp_path, cluster, "resume"),
            "--max-concurrent", "1"]
    first = subprocess.Popen(args, env=cluster["env"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = tmp_path / "results" / "sweep=resume"
    deadline = time.time() + 240
    while not (results.exists() and len(list(results.glob("trial-*.parquet"))) >= 1):
        assert first.poll() is None and time.time() < deadline, "the first sweep ended or stalled before one trial finished"
        time.sleep(0.5)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=60)
    done_before = len(list(results.glob("trial-*.parquet")))
    assert 1 <= done_before < 4
    second = subprocess.run(args, env=cluster["env"], capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "resuming sweep resume" in second.stdout
    table = read_results(tmp_path / "results", filters={"sweep": "resume"})
    assert table.num_rows == 4 and len(set(table["trial_id"].to_pylist())) == 4
    assert isinstance(table, pa.Table)


def test_bad_sweep_input_is_refused(models, shards, tmp_path) -> None:
    base = dict(name="x", medical=str(PNEUMONIA), models=(str(models["model"]),), sources=(str(shards),))
    with pytest.raises(InputError, match="eps must be > 0"):
        SweepConfig(**base, eps=(0.01, -1.0))
    with pytest.raises(InputError, match="p must be 2 or inf"):
        SweepConfig(**base, p=("3",))
    with pytest.raises(InputError, match="not 'train', 'random' or a shard location"):
        SweepConfig(**{**base, "sources": (str(tmp_path),)})
