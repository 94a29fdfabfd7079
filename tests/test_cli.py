"""`raylab train`, `raylab pretrain`, `raylab uap` and the job entry point, end to end on real data."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from raylab.cli import main
from raylab.config import UAPConfig, ignored_settings
from raylab.core import lp_norm, zeta_radius
from raylab.data.medical import load_medmnist
from raylab.run import run_uap

from .conftest import DATA, PNEUMONIA, ROOT, _free_port


def test_progress_off_a_terminal_is_lines_not_a_redrawn_bar() -> None:
    import io

    from raylab.progress import bar

    out = io.StringIO()
    for _ in bar(range(3), desc="UAPs", unit="uap", file=out, leave=False):
        pass
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and lines[0].startswith("UAPs:   0%|") and lines[-1].startswith("UAPs: 100%|##########| 3/3")


def test_commands_that_need_no_model_start_without_torch(tmp_path: Path) -> None:
    """`raylab --help`, `raylab results` (--plot too) and `raylab dashboard` declare only their own options, so they
    import neither torch nor Ray (they took about 4 s to start, 3 of them importing torch for the other commands'
    configs); a command's own --help still lists its options."""
    from raylab.results import write_rows

    from .test_results import make_rows

    write_rows(str(tmp_path / "results"), make_rows())
    script = ("import sys; from raylab.cli import main\n"
              "for argv in (['--help'], ['results', sys.argv[1]], ['dashboard', 'prometheus-config'], ['results', '--help'],\n"
              "             ['results', sys.argv[1], '--over-seeds', '--plot', sys.argv[2]]):\n"
              "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
              "print(sorted(m for m in ('torch', 'ray', 'torchvision') if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", script, str(tmp_path / "results"), str(tmp_path / "curves.svg")],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert run.returncode == 0 and run.stdout.strip().splitlines()[-1] == "[]", run.stdout[-2000:] + run.stderr[-2000:]
    assert "grid-a" in run.stdout and "scrape_configs" in run.stdout and "--over-seeds" in run.stdout
    assert (tmp_path / "curves.svg").read_text().lstrip().startswith("<?xml")  # the plot, drawn without torch too


def test_help_says_what_raylab_and_each_command_do(capsys) -> None:
    """`raylab --help` used to open with half a sentence of the module's docstring, and a command's own --help with
    its usage alone."""
    with pytest.raises(SystemExit) as stop:
        main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert stop.value.code == 0 and "Audits medical image classifiers for universal adversarial perturbations" in out
    assert "Start with `raylab demo`" in out and "configs'" not in out
    for argv, first in ((["audit", "--help"], "How vulnerable is this model to UAPs made without any medical image?"),
                        (["dashboard", "render", "--help"], "Draw every dashboard panel from a Prometheus into one PNG")):
        with pytest.raises(SystemExit):
            main(argv)
        help_text = capsys.readouterr().out
        assert first in " ".join(help_text.split("options:")[0].split()), help_text[:600]
    # an unknown option is the command's error (it was "raylab: error: ...", as if raylab itself took no such option)
    with pytest.raises(SystemExit) as stop:
        main(["results", "runs/results", "--bogus", "3"])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and err[-1] == "raylab results: error: unrecognized arguments: --bogus 3"
    # a list given to an option of one value (a sweep's `--seeds 0 1 2` typed to audit, which takes how many) says so
    with pytest.raises(SystemExit) as stop:
        main(["audit", "--model", "m.pt", "--natural", "photos", "--out", "o", "--seeds", "0", "1", "2"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert stop.value.code == 2 and err.startswith("raylab audit: error: unrecognized arguments: 1 2 (--seeds takes "
                                                   "one value: how many seeds of the image order per UAP: seeds 0..N-1")


def test_train_writes_weights_and_accuracy(models: dict[str, Path]) -> None:
    report = json.loads(models["model"].with_suffix(".json").read_text())
    assert report["test_accuracy"] > 0.625  # above the majority class (390/624)
    assert report["from_scratch"] is False


def test_uap_from_natural_images_end_to_end(models: dict[str, Path], natural_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "uap"
    rc = main(["uap", "--model", str(models["model"]), "--data", str(PNEUMONIA), "--source", str(natural_dir),
               "--zeta", "0.08", "--eps", "0.01", "--i-max", "2", "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "fooling rate R_f" in printed and "random control R_f" in printed
    m = json.loads((out / "metrics.json").read_text())
    rho = np.load(out / "uap.npy")
    assert rho.shape == (1, 28, 28) and rho.dtype == np.float32
    radius = zeta_radius(load_medmnist(PNEUMONIA).train_images, zeta=0.08, p=2)
    assert m["radius"] == pytest.approx(radius)
    assert lp_norm(torch.from_numpy(rho)[None], 2).item() <= radius * (1 + 1e-5)
    assert m["source"]["images"] == 40 and m["source"]["skipped"] == 1
    assert "corrupt.JPEG" in m["source"]["skipped_files"][0]
    assert m["stats"]["images"] == 80 and m["stats"]["accepted"] > 0
    assert 0 <= m["fooling_rate"] <= 1 and 0 <= m["random"]["fooling_rate"] <= 1
    cm = np.array(m["confusion_matrix"])
    assert cm.shape == (2, 2) and np.allclose(cm.sum(1)[cm.sum(1) > 0], 1)
    assert set(m["source"]["label_composition"]) == {"NORMAL", "PNEUMONIA"}
    for png in ("uap.png", "confusion.png", "examples.png"):
        with Image.open(out / png) as im:
            assert im.size[0] > 100 and im.size[1] > 100


def test_a_finished_uap_is_evaluated_on_its_own_model_and_on_another(models: dict[str, Path], natural_dir: Path,
                                                                    tmp_path: Path, capsys) -> None:
    """`raylab evaluate`: on the model it was made on, a UAP's rates are its run's to the bit; on another model (one
    trained from scratch) it is that model's test set and clean accuracy that count; a UAP of another shape, or a file
    that is not one, is one line."""
    out = tmp_path / "uap"
    assert main(["uap", "--model", str(models["model"]), "--data", str(PNEUMONIA), "--source", str(natural_dir),
                 "--zeta", "0.08", "--eps", "0.01", "--examples", "0", "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    capsys.readouterr()
    assert main(["evaluate", "--uap", str(out / "uap.npy"), "--model", str(models["model"]), "--data", str(PNEUMONIA),
                 "--out", str(tmp_path / "same")]) == 0
    printed = capsys.readouterr().out
    same = json.loads((tmp_path / "same" / "metrics.json").read_text())
    assert same["fooling_rate"] == m["fooling_rate"] and same["confusion_matrix"] == m["confusion_matrix"]
    assert same["clean_accuracy"] == m["clean_accuracy"] and same["uap_norm"] == pytest.approx(m["uap_norms"]["l2"])
    assert same["zeta"] == pytest.approx(same["uap_norm"] / m["radius"] * 0.08)  # its norm as zeta of the images
    assert f"fooling rate R_f = {m['fooling_rate']:.3f}" in printed and (tmp_path / "same" / "confusion.png").stat().st_size

    scratch = tmp_path / "scratch.pt"
    assert main(["train", "--data", str(PNEUMONIA), "--arch", "small_cnn", "--image-size", "28", "--epochs", "1",
                 "--out", str(scratch)]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--uap", str(out / "uap.npy"), "--model", str(scratch), "--data", str(PNEUMONIA),
                 "--target", "normal", "--out", str(tmp_path / "other")]) == 0
    other = json.loads((tmp_path / "other" / "metrics.json").read_text())
    assert other["target"] == "NORMAL" and "success rate R_s(NORMAL)" in capsys.readouterr().out
    assert other["clean_accuracy"] == pytest.approx(json.loads(scratch.with_suffix(".json").read_text())["test_accuracy"])

    np.save(tmp_path / "rgb.npy", np.zeros((3, 28, 28), np.float32))
    (tmp_path / "junk.npy").write_bytes(b"not an array")
    for uap, error in [(tmp_path / "rgb.npy", "is 3x28x28 (C x H x W), but"),
                       (tmp_path / "junk.npy", "not a .npy file (raylab writes a UAP as uap.npy, numpy's format)")]:
        assert main(["evaluate", "--uap", str(uap), "--model", str(models["model"]), "--data", str(PNEUMONIA)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and error in err, err


def test_a_colour_csv_folder_trains_and_attacks_an_rgb_model(models: dict[str, Path], natural_dir: Path, shards: Path,
                                                              tmp_path: Path, capsys) -> None:
    """A CSV folder of colour photos of several sizes (the paper's skin-lesion layout) trains a 3-channel model and
    is attacked in colour: it was decoded gray, so the model was gray, and an RGB model was refused on it. A gray
    model sees the same folder in gray."""
    from raylab.models import load_classifier
    from raylab.target import load_target

    from .test_data import _colour_csv_folder

    data = _colour_csv_folder(tmp_path)
    model = tmp_path / "rgb.pt"
    assert main(["train", "--data", str(data), "--arch", "small_cnn", "--image-size", "28", "--epochs", "1",
                 "--out", str(model)]) == 0
    assert "training small_cnn (3-channel, 28px)" in capsys.readouterr().out
    spec = load_classifier(model).spec
    assert spec.in_channels == 3 and spec.class_names == ("NORMAL", "PHOTO", "PNEUMONIA")
    out = tmp_path / "uap"
    assert main(["uap", "--model", str(model), "--data", str(data), "--source", str(natural_dir), "--zeta", "0.08",
                 "--eps", "0.01", "--out", str(out)]) == 0
    assert np.load(out / "uap.npy").shape == (3, 28, 28)
    assert json.loads((out / "metrics.json").read_text())["test_images"] == 6
    # shards stored gray give the RGB model no colour: said, in the output and in metrics.json (it was silent)
    capsys.readouterr()
    assert main(["uap", "--model", str(model), "--data", str(data), "--source", str(shards), "--zeta", "0.08",
                 "--eps", "0.01", "--out", str(tmp_path / "gray-shards")]) == 0
    warning = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("warning: the shards"))
    assert warning.startswith(f"warning: the shards at {shards} hold the photos gray (RGB inputs get no colour), less "
                              "than the model takes") and "--image-size 28 --channels 3" in warning
    assert json.loads((tmp_path / "gray-shards" / "metrics.json").read_text())["source"]["warning"] == warning
    gray = load_target(models["model"], _colour_csv_folder(tmp_path, "NORMAL"), target=None, zeta=0.04, p=2)
    assert gray.medical.test_images.shape == (6, 1, 28, 28)


def test_a_paper_uap_bound_by_its_step_says_so(models: dict[str, Path], natural_dir: Path, tmp_path: Path, capsys) -> None:
    """One `raylab uap` run is not the paper's grid search over ε: an ε that flips no image leaves ρ = 0 (R_f 0 that
    reads like a robust model), one too small for the passes leaves ρ inside its budget; both are said, with the norm
    the run's own metrics.json records."""
    base = ["uap", "--model", str(models["model"]), "--data", str(PNEUMONIA), "--source", str(natural_dir), "--zeta",
            "0.08", "--examples", "0"]
    assert main([*base, "--eps", "0.00001", "--lr=0.5", "--schedule", "constant", "--out", str(tmp_path / "zero")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert json.loads((tmp_path / "zero" / "metrics.json").read_text())["stats"]["accepted"] == 0
    # settings of the other method are said to be ignored (they were, silently)
    assert lines[0] == "note: --lr, --schedule are ignored: they are settings of --method sgd, and this run is --method paper"
    assert ignored_settings(["sgd"], {"eps", "zeta"}).startswith("note: --eps is ignored: it is a setting of --method paper")
    assert ignored_settings(["paper", "sgd"], {"eps", "lr"}) is None  # a sweep of both methods reads both
    lines = lines[1:]
    assert lines[1] == ("warning: no FGSM step was accepted, so rho = 0: eps = 1e-05 in 1 pass(es) over 40 image(s) flipped "
                        "no image; raise --eps or --i-max (the paper chose eps by grid search on validation images, as "
                        "`raylab audit` does)")
    assert main([*base, "--eps", "0.002", "--out", str(tmp_path / "inside")]) == 0
    lines = capsys.readouterr().out.splitlines()
    m = json.loads((tmp_path / "inside" / "metrics.json").read_text())
    used = m["uap_norms"]["l2"] / m["radius"]
    assert m["stats"]["accepted"] > 0 and used < 0.9
    assert lines[1] == (f"note: rho ends at {100 * used:.0f} % of its zeta radius: eps = 0.002 in 1 pass(es) over 40 "
                        "image(s) bound it, not zeta (a larger --eps or --i-max may fool more)")
    assert main([*base, "--eps", "0.05", "--out", str(tmp_path / "full")]) == 0  # a UAP at its radius: no note
    assert not any(line.startswith(("note:", "warning:")) for line in capsys.readouterr().out.splitlines())


def test_targeted_uap_and_random_control(models: dict[str, Path], natural_dir: Path, tmp_path: Path) -> None:
    rc = main(["uap", "--model", str(models["model"]), "--data", str(PNEUMONIA), "--source", str(natural_dir),
               "--target", "NORMAL", "--zeta", "0.08", "--eps", "0.01", "--out", str(tmp_path / "t"), "--examples", "0"])
    assert rc == 0
    m = json.loads((tmp_path / "t" / "metrics.json").read_text())
    assert m["target"] == "NORMAL"
    assert m["success_rate"]["NORMAL"] >= m["clean_label_composition"]["NORMAL"] - 1e-9
    assert not (tmp_path / "t" / "examples.png").exists()
    rc = main(["uap", "--model", str(models["model"]), "--data", str(PNEUMONIA), "--source", "random",
               "--p", "inf", "--zeta", "0.05", "--out", str(tmp_path / "r")])
    assert rc == 0
    rho = np.load(tmp_path / "r" / "uap.npy")
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert np.abs(rho).max() == pytest.approx(m["radius"], rel=1e-5)
    assert m["stats"]["images"] == 0


def test_sgd_uap_from_natural_images_end_to_end(models: dict[str, Path], natural_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "sgd"
    assert main(["uap", "--model", str(models["model"]), "--data", str(PNEUMONIA), "--source", str(natural_dir),
                 "--method", "sgd", "--zeta", "0.08", "--out", str(out)]) == 0
    assert "fooling rate R_f" in capsys.readouterr().out
    m = json.loads((out / "metrics.json").read_text())
    assert m["config"]["method"] == "sgd" and m["config"]["max_passes"] == 10  # sgd's default: 10 epochs
    assert m["stats"]["images"] == m["stats"]["accepted"] == 10 * 40 and m["stats"]["passes"] == 10
    radius = zeta_radius(load_medmnist(PNEUMONIA).train_images, zeta=0.08, p=2)
    assert m["uap_norms"]["l2"] <= radius * (1 + 1e-5) and m["uap_norms"]["l2"] > 0.5 * radius
    assert m["fooling_rate"] > m["random"]["fooling_rate"]


def test_bench_measures_both_methods_beside_art(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    assert main(["bench", "--arch", "small_cnn", "--image-size", "28", "--images", "32", "--batch-size", "16",
                 "--amp", "--peak-tflops", "1", "--profile", str(tmp_path / "profile.txt"), "--out", str(out)]) == 0
    f = json.loads(out.read_text())
    ops = [row["op"] for row in f["profile_top_ops"]]
    assert any("conv" in op for op in ops) and 0 < sum(row["share"] for row in f["profile_top_ops"]) <= 1 + 1e-9
    assert "Self CPU" in (tmp_path / "profile.txt").read_text() and (tmp_path / "profile.json").stat().st_size > 0
    for key in ("faithful_images_per_s", "batched_images_per_s", "sgd_images_per_s", "art_images_per_s",
                "sgd_bare_kernel_images_per_s", "sgd_over_batched", "sgd_over_art", "static_images_per_s",
                "faithful_static_images_per_s", "batched_tflops", "static_fraction_of_peak",
                "bare_kernel_later_pass_images_per_s"):
        assert f[key] > 0, key
    assert f["faithful_rho_max_abs_diff_vs_art"] < 1e-5
    assert f["static_accepted"] == f["batched_accepted"]  # the static-shape update takes the same decisions
    from torch.utils.flop_counter import FlopCounterMode

    from raylab.models import ModelSpec, build_model

    net = build_model(ModelSpec(arch="small_cnn", num_classes=2, in_channels=1, image_size=28)).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(torch.zeros(1, 1, 28, 28))
    # clean forward, forward + input-gradient backward, acceptance forward: about 4 forwards per update
    assert abs(f["gflop_per_update_image"] * 1e9 / counter.get_total_flops() - 4) < 0.5
    assert 0.9 <= f["decision_agreement_amp_vs_fp32"] <= 1.0  # bf16 autocast on CPU against float32


def test_bench_measures_a_trained_checkpoint(models: dict[str, Path], tmp_path: Path) -> None:
    """--model: its size and channels, and a network that accepts steps, so the decision agreement means something."""
    out = tmp_path / "bench.json"
    assert main(["bench", "--model", str(models["model"]), "--images", "32", "--batch-size", "16", "--amp", "--no-art",
                 "--no-faithful", "--eps", "0.02", "--out", str(out)]) == 0
    f = json.loads(out.read_text())
    assert str(models["model"]) in f["model"] and "random init" not in f["model"]
    assert f["static_accepted"] > 0 and "faithful_images_per_s" not in f
    assert 0.9 <= f["decision_agreement_amp_vs_fp32"] <= 1.0


def test_a_target_class_is_taken_by_name_in_any_case_or_by_index(models: dict[str, Path], tmp_path: Path) -> None:
    for given, name in (("1", "PNEUMONIA"), ("normal", "NORMAL")):
        assert main(["uap", "--model", str(models["model"]), "--data", str(PNEUMONIA), "--source", "random",
                     "--target", given, "--out", str(tmp_path / given), "--examples", "0"]) == 0
        assert json.loads((tmp_path / given / "metrics.json").read_text())["target"] == name


def test_uap_from_the_medical_training_set(models: dict[str, Path], tmp_path: Path) -> None:
    rc = main(["uap", "--model", str(models["model"]), "--data", str(PNEUMONIA), "--source", "train", "--limit", "64",
               "--mode", "faithful", "--eps", "0.01", "--out", str(tmp_path / "m")])
    assert rc == 0
    m = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert m["source"]["kind"] == "train" and m["source"]["images"] == 64


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--zeta", "0"], "zeta must be > 0"),
        (["--zeta", "-0.1"], "zeta must be > 0"),
        (["--p", "3"], "p must be 2 or inf, got '3'"),
        (["--eps", "0"], "eps must be > 0"),
        (["--target", "COVID"], "target class 'COVID' does not exist; classes are NORMAL, PNEUMONIA"),
        (["--source", "/nonexistent/photos"], "UAP source '/nonexistent/photos': no such folder (give a folder of images, a shard location"),
        (["--cuda-graphs"], "cuda_graphs needs --device cuda, got 'cpu'"),
        (["--seed", "99999999999999999999"], "seed must be an integer in [0, 4294967295), got 99999999999999999999"),
    ],
)
def test_bad_input_is_one_clear_line_before_compute(models, tmp_path, capsys, args, message) -> None:
    base = ["uap", "--model", str(models["model"]), "--data", str(PNEUMONIA), "--source", "random", "--out", str(tmp_path / "x")]
    rc = main(base + args)
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x" / "metrics.json").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batch-size", "0"], "batch_size must be >= 1, got 0"),
        (["--peak-tflops", "-1"], "peak_tflops must be >= 0"),
        (["--device", "tpu"], "device must be 'cpu' or 'cuda[:N]', got 'tpu'"),
        pytest.param(["--device", "cuda"], "device 'cuda' asked for, but no CUDA GPU is visible",  # was a traceback
                     marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible here")),
        (["--engine", "--cpus-per-reader", "0"], "cpus_per_worker and cpus_per_reader must be > 0"),
        (["--engine", "--workers", "0"], "workers must be counts >= 1, got [0]"),
    ],
)
def test_bad_bench_options_are_one_line_before_compute(tmp_path, capsys, args, message) -> None:
    assert main(["bench", "--no-art", "--out", str(tmp_path / "b.json"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "b.json").exists()


def test_a_bad_engine_bench_option_is_refused_before_ray_starts(tmp_path) -> None:
    """In a process of its own, whose Ray would write its session under RAY_TMPDIR: nothing is written there."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_TMPDIR": str(tmp_path / "ray")}
    done = subprocess.run([sys.executable, "-m", "raylab", "bench", "--engine", "--no-art", "--workers", "0"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.strip() == "raylab bench: error: workers must be counts >= 1, got [0]"
    assert not (tmp_path / "ray").exists()


def test_bad_generate_input_is_refused_before_ray_starts(models, tmp_path) -> None:
    """The engine checks its inputs (here: a shard location without a manifest) before it joins or starts a Ray."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_TMPDIR": str(tmp_path / "ray")}
    done = subprocess.run([sys.executable, "-m", "raylab", "generate", "--model", str(models["model"]), "--data",
                           str(PNEUMONIA), "--shards", str(tmp_path / "none"), "--out", str(tmp_path / "out")],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == (f"raylab generate: error: {tmp_path / 'none'}: no such shard location (write shards "
                                   "there with `raylab shard`)")
    assert not (tmp_path / "ray").exists()


@pytest.mark.parametrize("given", ["--address", "RAY_ADDRESS"])
def test_an_address_where_no_cluster_answers_is_one_line_not_a_hang(given, models, shards, tmp_path) -> None:
    """Ray keeps retrying a cluster address where nothing answers (a mistyped port, a head not started yet);
    raylab refuses it in one line, from --address or from RAY_ADDRESS (here a loopback port nothing listens on)."""
    address = f"127.0.0.1:{_free_port()}"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | ({"RAY_ADDRESS": address} if given == "RAY_ADDRESS" else {})
    done = subprocess.run([sys.executable, "-m", "raylab", "generate", "--model", str(models["model"]), "--data", str(PNEUMONIA),
                           "--shards", str(shards), "--out", str(tmp_path / "out"),
                           *(["--address", address] if given == "--address" else [])],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip() == (f"raylab generate: error: {given} {address}: no Ray cluster answers there (Connection refused); "
                                   "start one with `ray start --head`, or give no address for a local Ray")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible here")
def test_a_gpu_asked_for_where_none_is_is_one_line(models, tmp_path, capsys) -> None:
    """`raylab train --device cuda` on a machine without one ended in torch's traceback from its first transfer."""
    assert main(["train", "--data", str(PNEUMONIA), "--arch", "small_cnn", "--image-size", "28", "--epochs", "1",
                 "--out", str(tmp_path / "m.pt"), "--device", "cuda:1"]) == 2
    assert capsys.readouterr().err.strip() == "raylab train: error: device 'cuda:1' asked for, but no CUDA GPU is visible"
    assert not (tmp_path / "m.pt").exists() and not (tmp_path / "m.pt.partial").exists()


def test_unreadable_weights_and_misfit_data_are_refused(models, tmp_path, capsys) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    assert main(["uap", "--model", str(junk), "--data", str(PNEUMONIA), "--source", "random", "--out", str(tmp_path / "a")]) == 2
    assert "junk.pt" in capsys.readouterr().err
    rgb = tmp_path / "rgb.npz"
    x = np.random.default_rng(0).integers(0, 255, (8, 28, 28, 3), dtype=np.uint8)
    three = np.arange(8).reshape(-1, 1) % 3
    np.savez(rgb, train_images=x, train_labels=three, test_images=x, test_labels=three)
    assert main(["uap", "--model", str(models["model"]), "--data", str(rgb), "--source", "random", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "3 classes but model" in err and "has 2 outputs" in err
    # colour images for a gray model are not a misfit: they are converted to gray, as PIL does (was refused)
    np.savez(rgb, train_images=x, train_labels=three % 2, test_images=x, test_labels=three % 2)
    assert main(["uap", "--model", str(models["model"]), "--data", str(rgb), "--source", "random", "--out", str(tmp_path / "c")]) == 0
    assert np.load(tmp_path / "c" / "uap.npy").shape == (1, 28, 28)


def _medical(path: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    np.savez(path, train_images=images, train_labels=labels, test_images=images, test_labels=labels)
    return path


def test_the_shared_data_is_found_from_another_folder(monkeypatch, tmp_path) -> None:
    """The defaults (``--data``, the demo's photos) are ``../shared/data`` from the repository's root, and the one
    beside the repository from anywhere else (they named a ``../shared/data`` relative to where raylab was run)."""
    from raylab.config import _shared_data

    if DATA != ROOT.parent / "shared" / "data":
        pytest.skip("the shared data is not beside this checkout")
    monkeypatch.chdir(ROOT)
    assert _shared_data() == Path("../shared/data")
    monkeypatch.chdir(tmp_path)
    assert _shared_data().is_absolute() and (_shared_data() / "pneumoniamnist.npz").samefile(PNEUMONIA)


def test_bad_files_and_locations_are_one_line_before_compute(models, natural_dir, tmp_path, capsys) -> None:
    """Each of these was a traceback, a silent ρ = 0, or a whole UAP computed and then lost at its first write."""
    real = np.load(PNEUMONIA)
    images, labels = real["train_images"][:16], real["train_labels"][:16]
    huge = labels.astype(np.int64)
    huge[3] = 10**7
    checkpoint = torch.load(models["model"], weights_only=True)
    torch.save({k: v for k, v in checkpoint.items() if k != "spec"}, tmp_path / "nospec.pt")
    torch.save({**checkpoint, "state_dict": [1, 2]}, tmp_path / "listed.pt")
    (tmp_path / "random.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    (tmp_path / "afile").write_text("in the way")
    cases = [
        ({"--out": tmp_path / "afile"}, f"cannot create output location {tmp_path / 'afile'}: a file of that name is in the way"),
        ({"--out": tmp_path / "afile" / "run"}, f"cannot create output location {tmp_path / 'afile' / 'run'}: a file is in the way of its path"),
        ({"--model": "foo://m.pt"}, "foo://m.pt: cannot open this location (Protocol not known: foo)"),
        ({"--model": Path(models["model"]).parent},  # it said 'model weights not found' of a folder that is there
         f"model {Path(models['model']).parent} is a folder, not a model file; it holds backbone.pt, model.pt"),
        ({"--data": "nowhere/chest.npz"}, f"medical dataset nowhere/chest.npz: does not exist (relative to {Path.cwd()})"),
        ({"--model": tmp_path / "nospec.pt"}, "nospec.pt: a damaged raylab checkpoint (its model spec: KeyError: spec)"),
        ({"--model": tmp_path / "listed.pt"}, "listed.pt: a damaged raylab checkpoint (no state_dict of tensors)"),
        ({"--model": tmp_path / "random.pt"}, "random.pt: cannot read weights (UnpicklingError: not plain tensors, refused unread: "),
        ({"--data": _medical(tmp_path / "black.npz", np.zeros_like(images), labels)},
         "black.npz: every training image is all zero, so zeta=0.04 of their mean L2 norm is a radius of 0"),
        ({"--data": _medical(tmp_path / "empty.npz", np.zeros((16, 0, 0), np.uint8), labels)},
         "empty.npz: train_images holds images of 0 x 0 pixels"),
        ({"--data": _medical(tmp_path / "huge.npz", images, huge)},
         "huge.npz: label 10000000 would make 10000001 classes for 32 images; labels must be class indices 0..K-1"),
        ({"--data": _medical(tmp_path / "objects.npz", images.astype(object), labels)},
         "objects.npz: not a valid .npz file (it holds pickled objects, which are never unpickled)"),
    ]
    for override, message in cases:
        args = {"--model": models["model"], "--data": PNEUMONIA, "--source": natural_dir, "--out": tmp_path / "x",
                "--examples": 0, **override}
        assert main(["uap", *(str(v) for kv in args.items() for v in kv)]) == 2, message
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
        assert "weights_only` set to `False" not in err and "allow_pickle" not in err  # no advice to load unsafely
    assert not (tmp_path / "x").exists() and (tmp_path / "afile").read_text() == "in the way"


def test_a_reader_that_stops_reading_gets_no_traceback(tmp_path: Path) -> None:
    """`raylab results … | head`: stdout closed by its reader is the end of the output, not a BrokenPipeError."""
    (tmp_path / "results").mkdir()
    run = subprocess.Popen([str(Path(sys.executable).parent / "raylab"), "results", str(tmp_path / "results")],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert run.stdout is not None
    run.stdout.close()  # the reader is gone before the table is written
    assert run.wait(timeout=120) == 141 and run.stderr.read() == ""


def test_shard_in_one_process_and_as_ray_tasks_writes_the_same_files(cluster, natural_dir: Path, tmp_path: Path,
                                                                       capsys) -> None:
    common = [str(natural_dir), "--image-size", "28", "--channels", "1", "--shard-size", "10"]
    assert main(["shard", common[0], "--out", str(tmp_path / "one"), *common[1:]]) == 0  # --out, as every command
    assert main(["shard", common[0], str(tmp_path / "ray"), *common[1:], "--ray", "--address", cluster["address"]]) == 0
    out = capsys.readouterr().out
    assert out.count("wrote 40 images in 5 shard(s)") == 2  # 9 (one corrupt), 10, 10, 10, 1 and out.count("skipped 1 unreadable") == 2
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "ray").iterdir()) and "manifest.json" in names
    for name in names:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "ray" / name).read_bytes(), name
    assert main(["shard", common[0], str(tmp_path / "x"), "--ray", "--cpus-per-task", "0"]) == 2
    assert "--cpus-per-task must be > 0" in capsys.readouterr().err
    assert main(["shard", common[0], str(tmp_path / "x"), "--out", str(tmp_path / "y")]) == 2
    assert capsys.readouterr().err.strip() == f"raylab shard: error: two outputs given ({tmp_path / 'x'} and --out {tmp_path / 'y'}): give one"
    assert main(["shard", common[0]]) == 2
    assert capsys.readouterr().err.strip() == "raylab shard: error: no output location: give it after the source, or as --out"
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_a_batch_as_large_as_the_stream_is_warned_about(cluster, models: dict[str, Path], natural_dir: Path, shards: Path,
                                                        tmp_path: Path, capsys) -> None:
    """One update of rho in a run is the weak regime (the README's batch-size study): raylab uap and the engine say so."""
    common = ["--model", str(models["model"]), "--data", str(PNEUMONIA), "--eps", "0.01", "--examples", "0"]
    assert main(["uap", *common, "--source", str(natural_dir), "--batch-size", "64", "--out", str(tmp_path / "big")]) == 0
    out = capsys.readouterr().out
    assert "warning: 40 images x 1 pass(es) at an effective batch of 64 make 1 update(s) of rho" in out
    assert main(["uap", *common, "--source", str(natural_dir), "--batch-size", "8", "--out", str(tmp_path / "ok")]) == 0
    assert "weak regime" not in capsys.readouterr().out
    from raylab.config import EngineConfig
    from raylab.engine import run_engine

    lines: list[str] = []
    run_engine(EngineConfig(model=str(models["model"]), medical=PNEUMONIA, shards=str(shards), out=str(tmp_path / "e"),
                            workers=2, batch_size=32, eps=0.01, examples=0, cpus_per_worker=0.5, cpus_per_reader=0.5),
               log=lines.append)
    assert any("48 images x 1 pass(es) at an effective batch of 64 make 1 update(s)" in line for line in lines)


def test_uaps_sharing_a_random_control_predict_it_once(models: dict[str, Path], natural_dir: Path, tmp_path: Path) -> None:
    """run_uap's ``controls``: the second UAP at the same radius, p and seed takes the control's test labels from the
    cache (a planted entry shows it is read, not recomputed), and a cached run's rates equal an uncached run's."""
    config = UAPConfig(model=models["model"], medical=PNEUMONIA, source=str(natural_dir), out=tmp_path / "a", zeta=0.08,
                       eps=0.02, seed=3)
    controls: dict = {}
    first = run_uap(config, controls=controls, progress=False, figures=False).evaluation
    plain = run_uap(dataclasses.replace(config, out=tmp_path / "b"), progress=False, figures=False).evaluation
    assert len(controls) == 1 and first.random == plain.random and torch.equal(first.controlled, plain.controlled)
    (key,) = controls
    controls[key] = torch.ones_like(first.controlled)  # every image "predicted" PNEUMONIA under the control
    second = run_uap(dataclasses.replace(config, out=tmp_path / "c", eps=0.01), controls=controls, progress=False,
                     figures=False).evaluation
    assert second.random.success_rate["PNEUMONIA"] == 1.0 != plain.random.success_rate["PNEUMONIA"]
    assert second.random.fooling_rate == pytest.approx(float((first.clean != 1).float().mean()))
    other = run_uap(dataclasses.replace(config, out=tmp_path / "d", seed=4), controls=controls, progress=False,
                    figures=False).evaluation
    assert len(controls) == 2 and other.random.success_rate["PNEUMONIA"] < 1.0  # another seed, another control
