"""`raylab uap` resumes: a run killed (a real SIGKILL of a real process) or stopped (SIGTERM) after a checkpoint
makes, rerun, the UAP of a run never stopped; another run's checkpoint, or a damaged one, is refused in one line before any compute."""

from __future__ import annotations

import json
import signal as signal_module
from pathlib import Path

import numpy as np
import pytest

from raylab.cli import main

from .conftest import PNEUMONIA, stopped_when_written


def _uap(models: dict[str, Path], source: Path, out: Path, method: str, *extra: str) -> list[str]:
    how = (["--mode", "faithful", "--chunk-size", "10", "--i-max", "25", "--eps", "0.002"] if method == "paper"
           else ["--i-max", "60", "--batch-size", "4", "--lr", "0.3"])
    return ["uap", "--model", str(models["model"]), "--data", str(PNEUMONIA), "--source", str(source), "--zeta", "0.08",
            "--method", method, *how, "--checkpoint-seconds", "0", "--out", str(out), *extra]


@pytest.mark.parametrize(("method", "signal"), [("paper", "SIGKILL"), ("sgd", "SIGTERM")])
def test_a_stopped_uap_resumes_to_the_uap_of_a_run_never_stopped(models, natural_dir, tmp_path, capsys, method,
                                                                 signal) -> None:
    assert main(_uap(models, natural_dir, tmp_path / "whole", method)) == 0
    assert not (tmp_path / "whole" / "uap-checkpoint.pt").exists()  # a finished run's checkpoint is removed
    out = tmp_path / "stopped"
    checkpoint = out / "uap-checkpoint.pt"
    code, err = stopped_when_written(_uap(models, natural_dir, out, method), checkpoint, getattr(signal_module, signal))
    assert not (out / "uap.npy").exists(), "the run finished before it was stopped"
    if signal == "SIGTERM":
        assert code == 130 and err.strip().splitlines()[-1] == (
            "raylab uap: interrupted; its last checkpoint is kept (at the end of a pass, every --checkpoint-seconds): "
            "rerun the same command to resume"), err[-2000:]
    else:
        assert code == -signal_module.SIGKILL
    kept = checkpoint.read_bytes()
    capsys.readouterr()

    # another run's checkpoint: refused in one line naming what differs, before any compute; the checkpoint is kept
    assert main(_uap(models, natural_dir, out, method, "--seed", "7")) == 2
    err = capsys.readouterr().err
    assert "checkpoint of a different run (seed=0 then, 7 now)" in err and len(err.strip().splitlines()) == 1, err
    checkpoint.write_bytes(kept[:100])
    assert main(_uap(models, natural_dir, out, method)) == 2
    assert (f"{checkpoint}: cannot read this checkpoint (RuntimeError: not a whole torch file: cut short or damaged); "
            "remove it to start over") in capsys.readouterr().err
    checkpoint.write_bytes(kept)

    assert main(_uap(models, natural_dir, out, method)) == 0
    logged = capsys.readouterr()
    assert f"resuming from {checkpoint}" in logged.out + logged.err
    assert np.array_equal(np.load(out / "uap.npy"), np.load(tmp_path / "whole" / "uap.npy"))
    whole, resumed = (json.loads((d / "metrics.json").read_text()) for d in (tmp_path / "whole", out))
    assert resumed["stats"] == whole["stats"] and resumed["fooling_rate"] == whole["fooling_rate"]
    assert not checkpoint.exists()

    # the finished UAP is replaced only by the same run: another seed, or the random control, is refused before any
    # compute and the UAP is kept (a rerun with other settings overwrote it silently)
    capsys.readouterr()
    for source, seed, differs in [(natural_dir, "7", "seed=0 then, 7 now"),
                                  ("random", "0", "a UAP made from images then, the random control now")]:
        assert main(_uap(models, source, out, method, "--seed", seed)) == 2
        err = capsys.readouterr().err
        assert err.strip() == (f"raylab uap: error: {out / 'metrics.json'}: the finished UAP of a different run ({differs}); use "
                               "another output location, or remove it to replace that UAP"), err
    assert np.array_equal(np.load(out / "uap.npy"), np.load(tmp_path / "whole" / "uap.npy"))
    if method == "paper":  # the random control is kept the same way (it needs no method: once is enough)
        control = tmp_path / "control"
        assert main(_uap(models, "random", control, method)) == 0
        assert main(_uap(models, "random", control, method, "--zeta", "0.04")) == 2
        assert "the finished UAP of a different run (zeta=0.08 then, 0.04 now; radius=" in capsys.readouterr().err
        assert main(_uap(models, natural_dir, control, method)) == 2
        assert "(the random control then, a UAP made from images now)" in capsys.readouterr().err
    assert resumed["fingerprint"]["seed"] == 0 and set(resumed["fingerprint"]) >= {"model", "images", "radius", "zeta"}
