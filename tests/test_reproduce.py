"""`raylab reproduce` end to end on the tiny preset: real PneumoniaMNIST, real ImageNet and Flickr8k photos, a small model."""

from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from raylab.cli import main
from raylab.run import balanced_by_prediction
from raylab.core import predict_labels
from raylab.data.medical import load_medmnist
from raylab.models import load_classifier
from raylab.reproduce import model_path, preset, study_jobs, trial_id
from raylab.report import _budget_note, _load, findings
from raylab.record import trial_uap
from raylab.results import read_results

from .conftest import DATA
from .html_page import Page


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, natural_dir) -> Path:
    """The tiny study, with natural set A = 40 ImageNet photos and one corrupt JPEG, made in one folder and then moved:
    every test below, and the rerun that resumes it and renders its report again, reads a moved study folder, as
    after copying one from a cluster's disk (nothing may be read from where it was made)."""
    made = tmp_path_factory.mktemp("reproduce") / "made-here"
    assert main(["reproduce", "--preset", "tiny", "--data-dir", str(DATA), "--natural-a", str(natural_dir), "--out", str(made)]) == 0
    out = made.parent / "tiny"
    shutil.move(made, out)
    return out


def _rerun(out: Path, natural_dir: Path, *extra: str) -> int:
    return main(["reproduce", "--preset", "tiny", "--data-dir", str(DATA), "--natural-a", str(natural_dir), "--out", str(out), *extra])


def _table(md: str, heading: str) -> list[list[str]]:
    """The body rows of the first Markdown table after ``heading``."""
    lines = md.split(heading, 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def test_every_uap_of_the_study_is_one_results_row(tiny) -> None:
    config = preset("tiny", data_dir=DATA, out=tiny)
    want = {trial_id(*job) for job in study_jobs(config)}
    table = read_results(tiny / "results", filters={"sweep": "reproduce-tiny"})
    assert sorted(table.column("trial_id").to_pylist()) == sorted(want)
    rows = table.to_pylist()
    assert {r["source_kind"] for r in rows} == {"train", "folder", "random"}
    for r in rows:  # uap_uri: where the UAP was written, before the study folder moved; it is read from where it is
        uap = trial_uap(tiny, r["trial_id"])
        assert 0 <= r["fooling_rate"] <= 1 and r["uap_uri"].endswith(f"/made-here/uaps/{r['trial_id']}/uap.npy")
        rho = torch.from_numpy(np.load(uap))
        assert rho.shape == (1, 28, 28) and float(rho.norm()) <= r["uap_l2"] + 1e-4
    study = json.loads((tiny / "study.json").read_text())
    for name, sel in study["selected"].items():  # ε, p chosen by validation R_f, the best of the grid
        best = max(sel["grid"], key=lambda g: g["val_fooling_rate"])
        assert (best["eps"], best["p"], best["lr"]) == (sel["eps"], sel["p"], sel["lr"])
        sgd = name.endswith("/sgd")  # the paper's method: ε x p; the stochastic-gradient one: its first step x p
        assert {g["eps"] for g in sel["grid"]} == ({0.01} if sgd else {0.01, 0.02})
        assert {(g["p"], g["lr"]) for g in sel["grid"]} == {("2", lr) for lr in ((0.5, 1.0) if sgd else (1.0,))}  # tiny: p = 2 alone
    assert set(study["selected"]) >= {"small_cnn-transfer/natural/sgd", "small_cnn-transfer/train/sgd"}


def test_the_report_has_the_papers_figures_and_tables_with_numbers(tiny) -> None:
    md = (tiny / "report" / "report.md").read_text()
    fig1 = _table(md, "## Figure 1")
    assert [r[0] for r in fig1] == ["4", "8"] and len(fig1[0]) == 7
    assert all(re.fullmatch(r"\d+\.\d ± \d+\.\d", c) for r in fig1 for c in r[1:])  # both methods, over 2 seeds
    assert "Every number is the mean ± sd over 2 seeds" in md
    selection = _table(md, "## Models and the ε, p selection")  # each pick's validation R_f: mean ± sd over the seeds
    study = json.loads((tiny / "study.json").read_text())
    for cell, name in zip(selection[0][2:], ("natural", "train", "natural/sgd", "train/sgd")):
        best = max(study["selected"][f"small_cnn-transfer/{name}"]["grid"], key=lambda g: g["val_fooling_rate"])
        assert cell.endswith(f"({100 * best['val_fooling_rate']:.1f} ± {100 * best['val_fooling_rate_sd']:.1f} %)"), cell
    sgd_grid = _table(md, "The stochastic-gradient method's grid")  # its first step x p, as the paper's ε x p grid
    assert [r[0] for r in sgd_grid] == ["small_cnn-transfer/natural", "small_cnn-transfer/train"]
    assert "| model / images | p=2, lr=0.5 | p=2, lr=1 |" in md
    for row, name in zip(sgd_grid, ("natural/sgd", "train/sgd")):
        grid = study["selected"][f"small_cnn-transfer/{name}"]["grid"]
        assert row[1:] == [f"{100 * g['val_fooling_rate']:.1f}" for g in sorted(grid, key=lambda g: g["lr"])]
    table1 = _table(md, "## Table 1")
    assert [r[1] for r in table1[-2:]] == ["training images (medical), SGD", "natural set A, SGD"]
    assert all(re.fullmatch(r"\d+\.\d ± \d+\.\d", r[2]) for r in table1[1:])
    # the target's first row: the share of test images the model calls PNEUMONIA with no perturbation, which R_s counts
    model = load_classifier(model_path(tiny, "small_cnn-transfer"))
    called = predict_labels(model, load_medmnist(DATA / "pneumoniamnist.npz").test_images)
    assert table1[0] == ["PNEUMONIA", "no perturbation (called so clean)", f"{100 * float((called == 1).float().mean()):.1f}", "–"]
    assert ["PNEUMONIA", "natural set A"] == table1[2][:2] and table1[2][-1] == "60.0 / 75.3 / 72.3"
    assert {r[1] for r in table1} >= {"training images (medical)", "natural set A", "natural set B", "random control"}
    table2 = _table(md, "## Table 2")
    assert [r[0] for r in table2] == ["training images (medical)", "natural set A", "random control"] and table2[1][3] == "22.2"
    assert all(re.fullmatch(r"\d+\.\d ± \d+\.\d", c) for r in table2 for c in r[1:3])
    comp = _table(md, "## Tables S1")
    assert len(comp) == 2 * 3  # two models x (A, B, training images)
    for r in comp:
        assert abs(float(r[2]) + float(r[3]) - 100) < 0.2
    balanced = _table(md, "label-balanced natural images")
    assert balanced[0][0] == "small_cnn-transfer" and len(balanced[0]) == 5
    assert "## Findings at this scale" in md and "random noise of the same norm" in md
    for name in ("figure1", "figure2", "figure3", "figure4", "figure5", "figure6"):
        assert f"({name}.png)" in md
        img = np.asarray(Image.open(tiny / "report" / f"{name}.png").convert("L"), dtype=np.float32)
        assert img.shape[0] > 150 and img.std() > 10, name  # a drawn figure, not a blank canvas


def test_the_report_is_also_one_self_contained_page_with_the_markdowns_tables(tiny) -> None:
    md = (tiny / "report" / "report.md").read_text()
    page = Page((tiny / "report" / "report.html").read_text())
    assert page.refs and all(r.startswith("data:image/png;base64,") for r in page.refs)  # nothing outside the page
    linked = re.findall(r"!\[[^]]*\]\((figure\d\.png)\)", md)
    assert len(linked) == 6 and [base64.b64decode(src.split(",", 1)[1]) for src in page.images] == [
        (tiny / "report" / name).read_bytes() for name in linked]  # the same figures, in the same places
    md_tables, table = [], None
    for line in md.splitlines():
        if line.startswith("|"):
            if table is None:
                table = []
                md_tables.append(table)
            if not line.startswith("| ---"):
                table.append([re.sub(r"`|\*\*", "", c.strip()) for c in line.strip("|").split("|")])
        else:
            table = None
    assert len(md_tables) >= 8 and page.tables == md_tables  # every table, cell by cell
    text = page.plain()
    for finding in findings(*_load(tiny)):
        assert " ".join(re.sub(r"`|\*\*", "", finding).split()) in text


def test_the_stochastic_gradient_rows_are_one_per_seed_and_stronger(tiny) -> None:
    rows = read_results(tiny / "results", filters={"sweep": "reproduce-tiny", "method": "sgd"}).to_pylist()
    assert {r["trial_id"].rsplit("@", 1)[1] for r in rows} == {"sgd0", "sgd1"}
    paper = read_results(tiny / "results", filters={"sweep": "reproduce-tiny", "method": "paper"}).to_pylist()
    assert {r["trial_id"].rsplit("@", 1)[1] for r in paper} == {"paper0", "paper1"}
    assert {r["seed"] for r in paper} == {0, 1}
    selected = json.loads((tiny / "study.json").read_text())["selected"]
    for r in rows:  # each UAP with the first step its selection chose (by model and source kind)
        kind = "train" if r["trial_id"].split("-z")[0].endswith("-train") else "natural"
        assert r["eps"] is None and r["lr"] == selected[f"small_cnn-transfer/{kind}/sgd"]["lr"] and r["max_passes"] == 3
    by = {r["trial_id"]: r for r in read_results(tiny / "results", filters={"sweep": "reproduce-tiny"}).to_pylist()}
    runs = [by[f"small_cnn-transfer-train-z0.04-u@sgd{s}"] for s in (0, 1)]
    rhos = [np.load(trial_uap(tiny, r["trial_id"])) for r in runs]
    assert not np.array_equal(*rhos)  # two seeds, two image orders, two UAPs
    assert min(r["fooling_rate"] for r in runs) > by["small_cnn-transfer-random-z0.04-u@paper0"]["fooling_rate"]
    for source in ("natural_a", "random"):  # the paper's method and the random control: one UAP per seed too
        a, b = (np.load(trial_uap(tiny, f"small_cnn-transfer-{source}-z0.04-u@paper{s}")) for s in (0, 1))
        assert not np.array_equal(a, b), source


def test_rows_count_every_pass_and_every_skipped_image(tiny) -> None:
    """images_processed counts image visits over both passes, images_skipped the corrupt photo, wall_seconds the
    UAP's own time as in metrics.json (the same definition in every writer)."""
    rows = {r["trial_id"]: r for r in read_results(tiny / "results", filters={"sweep": "reproduce-tiny"}).to_pylist()}
    natural = rows["small_cnn-transfer-natural_a-z0.04-u@paper1"]
    assert natural["max_passes"] == 2 and natural["images_skipped"] == 1 and natural["images_processed"] == 2 * 40
    assert rows["small_cnn-transfer-train-z0.04-u@paper0"]["images_processed"] == 2 * 200
    assert rows["small_cnn-transfer-natural_b-z0.04-u@paper0"]["images_skipped"] == 0
    assert rows["small_cnn-transfer-random-z0.04-u@paper1"]["images_processed"] == 0
    for trial, r in rows.items():
        m = json.loads((tiny / "uaps" / trial / "metrics.json").read_text())
        assert r["wall_seconds"] == m["seconds"] and r["images_processed"] == m["stats"]["images"], trial
        assert r["images_skipped"] == m["source"]["skipped"] and Path(r["uap_uri"]) == tiny.parent / "made-here" / "uaps" / trial / "uap.npy"


def test_a_model_whose_report_was_lost_is_trained_again(tiny, natural_dir, tmp_path, capsys) -> None:
    """A crash between a model's weights and its report must not break every later resume."""
    out = tmp_path / "tiny"
    shutil.copytree(tiny, out)
    (out / "models" / "small_cnn-transfer.json").unlink()
    assert _rerun(out, natural_dir) == 0
    out_text = capsys.readouterr().out
    assert "training small_cnn-transfer" in out_text
    assert re.search(r"^ +epoch=1 +loss=[0-9.]+ +train_accuracy=[0-9.]+ .*val_accuracy=", out_text, re.M), out_text  # progress
    assert json.loads((out / "models" / "small_cnn-transfer.json").read_text())["test_accuracy"] > 0.5


def test_a_rerun_with_other_settings_is_refused_and_targets_take_indices(tiny, natural_dir, tmp_path, capsys) -> None:
    out = tmp_path / "tiny"
    shutil.copytree(tiny, out)
    assert _rerun(out, natural_dir, "--targets", "NORMAL") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "was started with other settings (targets=" in err and "new --out" in err
    assert _rerun(out, natural_dir, "--targets", "1") == 0  # index 1 is PNEUMONIA, the class it was started with
    assert _rerun(out, natural_dir, "--targets", "7") == 2
    assert "target class '7' does not exist" in capsys.readouterr().err


def test_a_rerun_resumes_without_redoing_anything(tiny, natural_dir, capsys) -> None:
    files = sorted((tiny / "results").rglob("*.parquet"))
    stamps = [f.stat().st_mtime_ns for f in files]
    first = json.loads((tiny / "study.json").read_text())
    assert first["runs"] == 1  # the only test that reruns the module's study in place
    assert f"Wall time {first['seconds'] / 60:.1f} min.\n" in (tiny / "report" / "report.md").read_text()
    assert _rerun(tiny, natural_dir, "--metrics-port", "0", "--metrics-linger", "0") == 0  # served while it runs
    assert sorted((tiny / "results").rglob("*.parquet")) == files
    assert [f.stat().st_mtime_ns for f in files] == stamps
    out = capsys.readouterr().out
    assert "pretraining" not in out and out.startswith("serving metrics on http://127.0.0.1:")
    assert "\nmedical data: " in out and ": 2 classes (NORMAL, PNEUMONIA), gray 28 px: " in out  # what the study reads
    # the rerun adds its time to the study's instead of replacing it, and the report and the last line say so
    study = json.loads((tiny / "study.json").read_text())
    assert study["runs"] == first["runs"] + 1
    assert study["seconds"] == pytest.approx(first["seconds"] + study["last_run_seconds"])
    assert f"over {study['runs']} runs of the command (the last, resuming, " in (tiny / "report" / "report.md").read_text()
    assert f"min over its {study['runs']} runs); report:" in out


def test_a_uap_that_ends_inside_its_budget_is_said_so(tiny) -> None:
    """The paper's method's ε is chosen at one ζ; at a larger ζ its UAP may never reach the radius, and the report
    must say so rather than let a flat curve read as a saturated model. Shares come from each UAP's own norm and the
    radius in its metrics.json."""
    study, rows = _load(tiny)
    for r in rows:  # ρ's norm in its own p over the radius, both from the UAP's metrics.json
        m = json.loads((tiny / "uaps" / r["trial_id"] / "metrics.json").read_text())
        assert r["budget_used"] == pytest.approx(m["uap_norms"]["l2"] / m["radius"]) and 0 < r["budget_used"] <= 1 + 1e-6
        if r["source"] == "random":
            assert r["budget_used"] == pytest.approx(1)  # the control is drawn on the sphere of the radius
    md = (tiny / "report" / "report.md").read_text()
    full = [dict(r, budget_used=1.0) for r in rows]  # every UAP on its budget: no note
    assert _budget_note(full, study["config"]) == []
    half = [dict(r, budget_used=0.5) if r["trial_id"].startswith("small_cnn-transfer-natural_b-z0.08-u@paper")
            else r for r in full]
    (note,) = _budget_note(half, study["config"])
    assert note[0] == "p" and "small_cnn-transfer, natural set B: ζ = 8 % (50 %)." in note[1]
    assert "natural set A" not in note[1] and "ζ = 4 %, and 2 pass(es)" in note[1]
    real = _budget_note(rows, study["config"])  # the report says it exactly when the study's own UAPs call for it
    assert ("**Budget not reached.**" in md) == bool(real) and all(b[1] in md for b in real)


def test_findings_are_worded_from_their_outcome(tiny) -> None:
    """Each claim reads one way when the numbers support it and the other way when they do not."""
    study, rows = _load(tiny)
    for flip in (False, True):
        changed = [dict(r) for r in rows]
        for r in changed:
            if r["method"] == "paper" and r["target"] is None and r["source"] in ("natural_a", "random", "train"):
                r["fooling_rate"] = {("natural_a", False): 0.40, ("random", False): 0.05, ("train", False): 0.60,
                                     ("natural_a", True): 0.05, ("random", True): 0.40, ("train", True): 0.01}[(r["source"], flip)]
        text = " ".join(findings(study, changed))
        if flip:
            assert "do not fool clearly more" in text and "does not reproduce" in text and "not clearly stronger than" in text
        else:
            assert "fool more test images than random noise" in text and "reproduces" in text
            assert "Training-image UAPs are stronger than" in text and "does not" not in text.split("Training from")[0]


def test_a_model_no_better_than_the_majority_class_is_warned_about_at_the_top(tiny) -> None:
    from raylab.page import to_markdown
    from raylab.report import baseline_warnings, blocks

    study, rows = _load(tiny)
    assert all(r["majority_accuracy"] is not None and 0.5 <= r["majority_accuracy"] < 1 for r in rows)
    fine = [r for r in rows if r["clean_accuracy"] > r["majority_accuracy"] + 0.02]
    assert baseline_warnings(fine) == []
    weak = [dict(r, clean_accuracy=r["majority_accuracy"]) for r in fine]
    warned = baseline_warnings(weak)
    assert len(warned) == len({r["model"] for r in fine})
    assert all("not above always answering the most frequent class" in w for w in warned)
    content = blocks(study, weak, {})  # at the top of the report, under its title
    assert content[1:1 + len(warned)] == [("warning", w) for w in warned] and content[1 + len(warned)][0] == "p"
    assert to_markdown(content).splitlines()[2] == f"> **Warning.** {warned[0]}"


def test_balanced_source_equalizes_the_predicted_labels() -> None:
    images = torch.arange(100).view(100, 1, 1, 1).to(torch.uint8)
    predicted = torch.tensor([1] * 90 + [0] * 10)
    out = balanced_by_prediction(images, predicted, num_classes=2, seed=0)
    labels = predicted[out.view(-1).long()]
    assert len(out) == 100 and int((labels == 0).sum()) == int((labels == 1).sum()) == 50


def test_missing_pieces_and_the_paper_estimate(tmp_path, capsys) -> None:
    assert main(["reproduce", "--preset", "paper", "--data-dir", str(DATA), "--natural-a", str(tmp_path / "imagenet"),
                 "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert f"natural set A {tmp_path / 'imagenet'}: does not exist" in err and err.count("\n") == 1
    assert main(["reproduce", "--preset", "paper", "--data-dir", str(DATA), "--estimate", "970"]) == 0
    out = capsys.readouterr().out
    hours = float(re.search(r"about ([\d.]+) GPU-hours", out).group(1))
    updates = int(re.search(r"([\d,]+) image updates", out).group(1).replace(",", ""))
    assert "1053 UAPs (648 of the paper's method, 405 stochastic-gradient)" in out and updates > 10_000_000 and hours == round(updates / 970 / 3600, 1)
    from raylab.reproduce import estimate_gpu_hours

    c = preset("paper", data_dir=DATA, out=tmp_path / "p")
    e = estimate_gpu_hours(c, images_per_second={"inception_v3": 970.0, "resnet50": 1940.0, "vgg16": 485.0})
    n = e["per_arch_update_images"]
    assert sum(n.values()) == updates and n["inception_v3"] > n["resnet50"] == n["vgg16"]  # Figure 1 runs on the first
    assert abs(e["gpu_hours"] - (n["inception_v3"] / 970 + n["resnet50"] / 1940 + n["vgg16"] / 485) / 3600) < 1e-9
    assert main(["reproduce", "--preset", "paper", "--data-dir", str(DATA), "--estimate", "inception_v3=970,resnet50=1940"]) == 2
    assert "no update rate for vgg16" in capsys.readouterr().err
    for rate in ("0", "nan", "-5", "inception_v3=970,resnet50=0,vgg16=358"):  # a division by zero, or hours < 0 or nan
        with pytest.raises(SystemExit):
            main(["reproduce", "--preset", "paper", "--data-dir", str(DATA), "--estimate", rate])
        err = capsys.readouterr().err
        assert "a rate must be a finite number of images/s > 0" in err and "Traceback" not in err


def test_a_difference_within_the_seeds_spread_is_not_called_a_finding(tiny) -> None:
    """Natural-image R_f 0.20 and 0.50 over two seeds (sd 0.21) is not clearly above a random control of 0.25."""
    study, rows = _load(tiny)
    changed = [dict(r) for r in rows]
    for r in changed:
        if r["method"] == "paper" and r["target"] is None and r["zeta"] == 0.04 and r["source"] in ("natural_a", "random"):
            r["fooling_rate"] = 0.25 if r["source"] == "random" else (0.20, 0.50)[r["seed"]]
    text = " ".join(findings(study, changed))
    assert "do not fool clearly more test images than random noise" in text and "35.0 ± 21.2 % vs 25.0 ± 0.0 %" in text


def test_trial_ids_round_trip_and_the_cpu_small_study_is_planned_over_seeds(tmp_path) -> None:
    from raylab.reproduce import parse_trial

    for job in (("resnet18-transfer", "natural_a_balanced", 0.04, None, "paper", 2),
                ("efficientnet_lite0-scratch", "train", 0.08, "NORMAL", "sgd", 0)):
        got = parse_trial(trial_id(*job))
        assert (got["model"], got["source"], got["zeta"], got["target"], got["method"], got["seed"]) == job
    c = preset("cpu-small", data_dir=DATA, out=tmp_path)
    assert c.archs == ("efficientnet_lite0", "resnet18") and c.seeds == (0, 1, 2)
    assert (c.backbone("efficientnet_lite0"), c.normalize("efficientnet_lite0")) == ("imagenet", "lite")
    assert (c.backbone("resnet18"), c.normalize("resnet18")) == ("natural", "none")
    jobs = study_jobs(c)
    assert len({trial_id(*j) for j in jobs}) == len(jobs) == 189  # the README's count: 63 a seed, 147 + 42
    assert sum(j[4] == "sgd" for j in jobs) == 42
    for method in ("paper", "sgd"):  # every UAP of both methods once per seed
        per = {}
        for j in jobs:
            if j[4] == method:
                per.setdefault(j[:4], set()).add(j[5])
        assert per and all(seeds == {0, 1, 2} for seeds in per.values()), method
    assert ("efficientnet_lite0-scratch", "natural_a", 0.08, None, "paper", 2) in jobs  # Table 2 on the ImageNet-weights model


def test_bad_backbones_and_seeds_are_one_line_errors(tmp_path, capsys) -> None:
    from raylab.errors import InputError

    with pytest.raises(InputError, match="needs pretrain_epochs > 0"):
        preset("tiny", data_dir=DATA, out=tmp_path, pretrain_epochs=0, backbones=("natural",))
    with pytest.raises(InputError, match="distinct seeds"):
        preset("tiny", data_dir=DATA, out=tmp_path, seeds=(1, 1))
    assert main(["reproduce", "--preset", "tiny", "--data-dir", str(DATA), "--out", str(tmp_path / "x"), "--seeds", "0"]) == 2
    assert "give one or more distinct seeds" in capsys.readouterr().err
