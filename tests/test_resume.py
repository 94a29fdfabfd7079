"""`raylab uap` resumes: a run killed (a real SIGKILL of a real process) after a checkpoint makes, rerun, the UAP of
a run never stopped; another run's checkpoint, or a damaged one, is refused in one line before any compute."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from raylab.cli import main

from .conftest import PNEUMONIA


def _uap(models: dict[str, Path], source: Path, out: Path, method: str, *extra: str) -> list[str]:
    how = (["--mode", "faithful", "--chunk-size", "10", "--i-max", "25", "--eps", "0.002"] if method == "paper"
           else ["--i-max", "60", "--batch-size", "4", "--lr", "0.3"])
    return ["uap", "--model", str(models["model"]), "--data", str(PNEUMONIA), "--source", str(source), "--zeta", "0.08",
            "--method", method, *how, "--checkpoint-seconds", "0", "--out", str(out), *extra]


def _killed_after_a_checkpoint(args: list[str], out: Path) -> None:
    """Run ``raylab *args`` in its own process and SIGKILL it as soon as its first checkpoint is written."""
    proc = subprocess.Popen([sys.executable, "-m", "raylab", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    checkpoint, deadline = out / "uap-checkpoint.pt", time.monotonic() + 180
    while not checkpoint.exists():
        if proc.poll() is not None:
            pytest.fail(f"the run ended before its first checkpoint: {proc.stderr.read()[-2000:]}")
        assert time.monotonic() < deadline, "no checkpoint within 180 s"
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    assert proc.returncode != 0 and not (out / "uap.npy").exists(), "the run finished before it was killed"


@pytest.mark.parametrize("method", ["paper", "sgd"])
def test_a_killed_uap_resumes_to_the_uap_of_a_run_never_stopped(models, natural_dir, tmp_path, capsys, method) -> None:
    assert main(_uap(models, natural_dir, tmp_path / "whole", method)) == 0
    assert not (tmp_path / "whole" / "uap-checkpoint.pt").exists()  # a finished run's checkpoint is removed
    out = tmp_path / "killed"
    _killed_after_a_checkpoint(_uap(models, natural_dir, out, method), out)
    checkpoint = out / "uap-checkpoint.pt"
    kept = checkpoint.read_bytes()
    capsys.readouterr()

    # another run's checkpoint: refused in one line naming what differs, before any compute; the checkpoint is kept
    assert main(_uap(models, natural_dir, out, method, "--seed", "7")) == 2
    err = capsys.readouterr().err
    assert "checkpoint of a different run (seed=0 then, 7 now)" in err and len(err.strip().splitlines()) == 1, err
    checkpoint.write_bytes(kept[:100])
    assert main(_uap(models, natural_dir, out, method)) == 2
    assert "cannot read this checkpoint" in capsys.readouterr().err
    checkpoint.write_bytes(kept)

    assert main(_uap(models, natural_dir, out, method)) == 0
    logged = capsys.readouterr()
    assert f"resuming from {checkpoint}" in logged.out + logged.err
    assert np.array_equal(np.load(out / "uap.npy"), np.load(tmp_path / "whole" / "uap.npy"))
    whole, resumed = (json.loads((d / "metrics.json").read_text()) for d in (tmp_path / "whole", out))
    assert resumed["stats"] == whole["stats"] and resumed["fooling_rate"] == whole["fooling_rate"]
    assert not checkpoint.exists()
