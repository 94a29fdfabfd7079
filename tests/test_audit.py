"""`raylab audit` end to end: a real small model on real PneumoniaMNIST, real ImageNet photos; the verdict and
findings worded from the numbers (both outcomes of every comparison); the self-contained HTML report."""

from __future__ import annotations

import base64
import copy
import dataclasses
import io
import json
import os
import random
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from raylab.audit import AuditConfig, plan_jobs
from raylab.audit.report import _budget_note, _unused
from raylab.audit.verdict import findings, verdict
from raylab.config import UAPConfig
from raylab.errors import InputError
from raylab.selection import select_on_validation
from raylab.run import source_images
from raylab.target import load_target
from raylab.spread import clearly_above
from raylab.cli import main
from raylab.data.shards import load_shard_images, read_manifest, write_shards
from raylab.models import load_classifier
from raylab.record import trial_uap
from raylab.results import read_results

from .conftest import PNEUMONIA, submit_and_wait
from .html_page import Page

#: Small enough for the suite (small_cnn at 28 px, the 40 photos and a corrupt one): 2 ζ x 2 sources x 2 methods x 2 seeds, plus one target.
SMALL = ["--budget", "quick", "--limit", "50", "--zetas", "0.04", "0.08", "--seeds", "2", "--targets", "PNEUMONIA"]


def _audit(model: Path, natural: Path, out: Path, *extra: str, data: Path = PNEUMONIA) -> int:
    return main(["audit", "--model", str(model), "--natural", str(natural), "--data", str(data), "--out", str(out),
                 *SMALL, *extra])


@pytest.fixture(scope="module")
def audited(tmp_path_factory, models, natural_dir, pneumonia_small) -> Path:
    """The audit, made in one folder and then moved: every test below, and the rerun that resumes it, reads a moved
    audit folder, as after copying one from a cluster's disk (nothing may be read from where it was made). On the
    first 600/200/300 of PneumoniaMNIST's train/val/test images: every UAP is evaluated on val and test, and the
    whole set made this fixture twice as long."""
    made = tmp_path_factory.mktemp("audit") / "made-here"
    assert _audit(models["model"], natural_dir, made, data=pneumonia_small) == 0
    out = made.parent / "a"
    shutil.move(made, out)
    return out


def _summary(out: Path) -> dict:
    return json.loads((out / "audit.json").read_text())


def test_every_uap_of_the_audit_is_one_row_and_every_number_is_mean_sd_over_its_seeds(audited, models, natural_dir,
                                                                                      pneumonia_small) -> None:
    config = AuditConfig(model=str(models["model"]), natural=natural_dir, out=audited, medical=pneumonia_small,
                         budget="quick", limit=50, zetas=(0.04, 0.08), seeds=2, targets=("PNEUMONIA",))
    jobs = plan_jobs(config, (1,))
    rows = read_results(audited / "results", filters={"sweep": "audit-model"}).to_pylist()
    assert sorted(r["trial_id"] for r in rows) == sorted(j.trial_id for j in jobs)
    assert len(rows) == 2 * 2 * 2 * 2 + 2 * 2 * 2
    assert {r["method"] for r in rows} == {"paper", "sgd"} and {r["seed"] for r in rows} == {0, 1}
    assert {r["source_kind"] for r in rows} == {"folder", "train"}
    assert {r["target"] for r in rows} == {None, "PNEUMONIA"}
    by_id = {r["trial_id"]: r for r in rows}
    summary = _summary(audited)
    for c in summary["cells"]:
        field = "fooling_rate" if c["target"] is None else "success_rate"
        values = [by_id[t][field] for t in c["trials"]]
        assert c["rate"]["n"] == 2 and c["rate"]["mean"] == pytest.approx(np.mean(values))
        assert c["rate"]["sd"] == pytest.approx(np.std(values, ddof=1))
        randoms = [by_id[t]["random_" + field] for t in c["trials"]]
        assert c["random"]["mean"] == pytest.approx(np.mean(randoms))
    # the selection: each method's step and p, the best of its grid by validation R_f (never the test split)
    assert set(summary["selected"]) == {"natural/paper", "natural/sgd", "train/paper", "train/sgd"}
    for key, sel in summary["selected"].items():
        top = max(sel["grid"], key=lambda g: g["val_fooling_rate"])
        assert (sel["p"], sel["eps"], sel["lr"]) == (top["p"], top["eps"], top["lr"])
        assert len(sel["grid"]) == (4 if key.endswith("paper") else 1)
    assert summary["validation"].startswith("the validation split (200 images)")
    for r in rows:
        sel = summary["selected"][f"{'natural' if r['source_kind'] == 'folder' else 'train'}/{r['method']}"]
        assert r["p"] == sel["p"] and (r["eps"] == sel["eps"] if r["method"] == "paper" else r["lr"] == sel["lr"])
    # the model check and the label composition of the natural images (Tables S1-S3)
    check = summary["check"]
    assert 0.5 < check["clean_accuracy"] <= 1 and check["majority_accuracy"] == pytest.approx(183 / 300)  # PNEUMONIA
    assert sum(summary["composition"]["natural"].values()) == pytest.approx(1.0)
    assert summary["natural"] == {"location": str(natural_dir), "kind": "folder", "images": 40, "skipped": 1,
                                  "shards_failed": 0, "lost": 0, "skipped_when_sharded": 0}


def test_the_strongest_seed_is_kept_on_validation_and_never_on_test(audited, models, pneumonia_small) -> None:
    """At the verdict's ζ every cell scores each seed's saved ρ on the validation split (recomputed here from the
    files: R_f, or R_s toward a targeted cell's class), keeps the highest and reports that UAP's test rate beside the
    mean; the verdict and the report say it."""
    from raylab.core import fooling_rate, predict_labels, success_rate
    from raylab.data.medical import load_medmnist

    summary = _summary(audited)
    model = load_classifier(models["model"]).eval()
    val = load_medmnist(pneumonia_small).val_images
    clean = predict_labels(model, val)
    rows = {r["trial_id"]: r for r in read_results(audited / "results").to_pylist()}
    kept_cells = [c for c in summary["cells"] if "kept" in c]
    assert ({(c["source"], c["method"], c["target"]) for c in kept_cells}
            == {(s, m, t) for s in ("natural", "train") for m in ("paper", "sgd") for t in (None, "PNEUMONIA")})
    assert all(c["zeta"] == 0.04 for c in kept_cells)
    for c in kept_cells:
        k = c["kept"]
        score, field = ((lambda adv: fooling_rate(clean, adv)), "fooling_rate") if c["target"] is None else \
            ((lambda adv: success_rate(adv, 1)), "success_rate")
        got = [score(predict_labels(model, val, rho=torch.from_numpy(np.load(trial_uap(audited, t))))) for t in c["trials"]]
        assert k["validation"] == pytest.approx(got, abs=1e-9)
        i = got.index(max(got))
        assert k["seed"] == c["seeds"][i] and k["rate"] == rows[c["trials"][i]][field] == c["per_seed"][i]
        if c["target"] is None:  # the selection built its pick as the audit builds its UAPs (their images, passes,
            sel = summary["selected"][f"{c['source']}/{c['method']}"]  # batch, seeds): the pick's are the seeds' UAPs
            assert sel["val_per_seed"] == pytest.approx([got[c["seeds"].index(s)] for s in (0, 1)], abs=1e-9)
            assert sel["val_fooling_rate"] == pytest.approx(np.mean(got)) and sel["val_fooling_rate_sd"] == pytest.approx(
                np.std(got, ddof=1))  # scored by the mean over the seeds, not one seed
    line = verdict(summary)
    assert ", and the strongest of the 2, kept on validation, flips " in line
    page = (audited / "report" / "report.md").read_text()
    assert "Seed by seed at ζ = 4 %" in page and "kept: test R_f" in page and "kept: test R_s" in page
    # the report's examples are the quoted UAP's: the headline's kept seed, not seed 0 by default
    head = max((c for c in kept_cells if c["source"] == "natural"), key=lambda c: c["rate"]["mean"])
    assert (audited / "report" / "examples.png").read_bytes() == (audited / "kept-examples.png").read_bytes()
    assert f"the headline UAP (the {'stochastic-gradient' if head['method'] == 'sgd' else 'paper'}" in page
    assert f"seed {head['kept']['seed']}, kept on validation) on test images" in page


def test_a_uap_that_ends_inside_its_budget_is_said_so(audited) -> None:
    """Each cell carries its UAPs' norm as a share of the radius (from their metrics.json), and the report says which
    non-targeted UAPs ended inside their budget: their rate is bounded by the step, not by ζ."""
    summary = _summary(audited)
    for x in summary["cells"]:
        shares = []
        for t in x["trials"]:
            m = json.loads((audited / "uaps" / t / "metrics.json").read_text())
            shares.append(m["uap_norms"]["l2" if str(m["config"]["p"]) == "2" else "linf"] / m["radius"])
        assert x["budget_used"]["mean"] == pytest.approx(sum(shares) / len(shares)) and max(shares) <= 1 + 1e-6
    md = (audited / "report" / "report.md").read_text()
    real = _budget_note(summary)
    assert ("**Budget not reached**" in md) == bool(real) and all(b[1] in md for b in real)
    full = copy.deepcopy(summary)
    for x in full["cells"]:
        x["budget_used"]["mean"] = 1.0
    assert _budget_note(full) == []
    (x8,) = [x for x in full["cells"] if (x["source"], x["method"], x["zeta"], x["target"]) == ("natural", "paper", 0.08, None)]
    x8["budget_used"]["mean"] = 0.5
    (note,) = _budget_note(full)
    assert note[1].endswith("natural images, the paper's method, ζ = 8 % (50 % of the radius).")


def test_the_selection_scores_every_candidate_over_the_seeds_and_shows_its_progress(models, tmp_path, capsys) -> None:
    target = load_target(models["model"], PNEUMONIA, target=None, zeta=0.04, p=2)
    assert load_target(models["model"], PNEUMONIA, target=None, zeta=0.04, p="2").radius == target.radius  # text p
    with pytest.raises(InputError, match="p must be 2 or inf, got '3'"):
        load_target(models["model"], PNEUMONIA, target=None, zeta=0.04, p="3")
    config = UAPConfig(model=str(models["model"]), source="train", out=tmp_path, eps=0.02)
    candidates = [config, dataclasses.replace(config, eps=0.08)]
    grid = select_on_validation(target, target.medical.train_images[:48], target.medical.val_images[:64], candidates,
                                zeta=0.04, seeds=(0, 1))
    assert [r["eps"] for r in grid] == [0.02, 0.08] and [len(r["val_per_seed"]) for r in grid] == [2, 2]
    assert [r["val_fooling_rate"] for r in grid] == pytest.approx([np.mean(r["val_per_seed"]) for r in grid])
    err = capsys.readouterr().err  # a selection at the paper's scale is 24 UAPs of 100,000 images: it shows a bar
    assert "ε, p selection" in err and "/4 " in err, err


def test_the_report_is_one_self_contained_page_with_the_verdict_the_cli_printed(audited, capsys) -> None:
    summary = _summary(audited)
    page = Page((audited / "report" / "report.html").read_text())
    assert page.refs and all(r.startswith("data:image/png;base64,") for r in page.refs)  # nothing outside the page
    assert len(page.images) == 4  # R_f against ζ, the examples of the headline UAP, targeted R_s, label composition
    for src in page.images:
        image = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        assert image.format == "PNG" and image.width > 300
    text = page.plain()
    line = verdict(summary)
    assert line in text and line in (audited / "report" / "report.md").read_text()
    assert "Natural-image UAPs at L2 ζ = 4 %" in line and "mean ± sd over 2 seeds" in line
    for f in findings(summary):
        assert " ".join(f.split()) in text
    for name in ("curves.png", "examples.png", "targeted.png", "composition.png"):
        assert (audited / "report" / name).stat().st_size > 5000


def test_a_model_near_the_majority_baseline_is_warned_about_at_the_top(audited) -> None:
    from raylab.audit.report import blocks
    from raylab.page import to_html, to_markdown

    summary = _summary(audited)
    assert summary["check"]["warning"] is None  # this model is well above always answering PNEUMONIA
    summary["check"]["warning"] = "warning: clean accuracy 0.620 is not above always answering the most frequent class"
    figures = {p.name: p.read_bytes() for p in (audited / "report").glob("*.png")}
    content = blocks(summary, figures)
    assert content[1] == ("warning", summary["check"]["warning"]) and content[2][0] == "verdict"
    page = to_html(content, figures)
    assert page.index("class=warning") < page.index("class=verdict")
    assert to_markdown(content).splitlines()[2].startswith("> **Warning.** warning: clean accuracy 0.620")


def test_a_rerun_resumes_and_other_settings_are_refused(audited, models, natural_dir, pneumonia_small, capsys) -> None:
    before = {r["trial_id"]: r["created_at"] for r in read_results(audited / "results").to_pylist()}
    assert _audit(models["model"], natural_dir, audited, data=pneumonia_small) == 0
    out = capsys.readouterr().out
    assert f"{len(before)} UAPs ({len(before)} done before)" in out
    # the picks are kept, not chosen again, and said (the rerun printed the selection's heading and nothing under it)
    selected = json.loads((audited / "selected.json").read_text())
    picks = [line for line in out.splitlines() if line.endswith("; chosen before)")]
    assert len(picks) == len(selected) and f"  natural (paper): eps={selected['natural/paper']['eps']:g} " in out
    assert {r["trial_id"]: r["created_at"] for r in read_results(audited / "results").to_pylist()} == before
    assert _audit(models["model"], natural_dir, audited, "--zeta", "0.08", data=pneumonia_small) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "was started with other settings (zeta=0.04 then, 0.08 now)" in err
    # a UAP stopped mid-way left its checkpoint (here a damaged one) and no row: the rerun counts it as resuming, and
    # the damaged file is one line naming it; every other row stays as it was
    trial = sorted(before)[0]
    row = next((audited / "results").glob(f"*/trial-{trial}.parquet"))
    aside = row.rename(row.parent.parent.parent / row.name)  # out of the results location
    checkpoint = audited / "uaps" / trial / "uap-checkpoint.pt"
    checkpoint.write_bytes(b"not a checkpoint")
    try:
        assert _audit(models["model"], natural_dir, audited, data=pneumonia_small) == 2
        logged = capsys.readouterr()
        assert f"{len(before)} UAPs ({len(before) - 1} done before, 1 resuming from a checkpoint)" in logged.out
        errors = [line for line in logged.err.splitlines() if line.startswith("raylab audit:")]  # not the bar's lines
        assert errors == [f"raylab audit: error: {checkpoint}: cannot read this checkpoint (UnpicklingError: not plain "
                          "tensors, refused unread: Unsupported operand 110); remove it to start over"], logged.err
    finally:
        checkpoint.unlink()
        aside.rename(row)
    assert {r["trial_id"]: r["created_at"] for r in read_results(audited / "results").to_pylist()} == before


def test_bad_input_is_one_line_before_any_compute(models, natural_dir, tmp_path, capsys) -> None:
    out = tmp_path / "bad"
    assert _audit(models["model"], natural_dir, out, "--targets", "TUMOUR") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "target class 'TUMOUR' does not exist; classes are NORMAL, PNEUMONIA" in err
    assert not (out / "uaps").exists() and not (out / "selected.json").exists()
    assert _audit(models["model"], tmp_path / "nowhere", out) == 2
    assert "natural images: " in capsys.readouterr().err
    assert _audit(models["model"], natural_dir, out, "--seeds", "1") == 2
    assert "seeds must be >= 2 (one seed is not a result)" in capsys.readouterr().err
    card = tmp_path / "card.json"
    card.write_text(json.dumps({"format": "state_dict", "arch": "small_cnn", "class_names": ["A", "B", "C"], "channels": 1,
                                "image_size": 28, "scale": 255, "mean": [128] * 3, "std": [128] * 3}))
    weights = tmp_path / "w.pt"
    torch.save(load_classifier(models["model"]).backbone.state_dict(), weights)
    assert _audit(weights, natural_dir, out, "--card", str(card)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(card) in err and "class" in err


def test_a_model_trained_elsewhere_is_audited_through_its_card(models, natural_dir, pneumonia_small, tmp_path, capsys) -> None:
    weights = tmp_path / "weights.pth"
    torch.save(load_classifier(models["model"]).backbone.state_dict(), weights)  # a plain state dict
    card = tmp_path / "card.yaml"
    card.write_text("format: state_dict\narch: small_cnn\nclass_names: [NORMAL, PNEUMONIA]\nchannels: 1\n"
                    "image_size: 28\nscale: 255\nmean: [128, 128, 128]\nstd: [128, 128, 128]\n")
    out = tmp_path / "carded"
    assert main(["audit", "--model", str(weights), "--card", str(card), "--natural", str(natural_dir), "--data",
                 str(pneumonia_small), "--out", str(out), "--limit", "40", "--zetas", "0.04", "--seeds", "2", "--targets",
                 "none", "--methods", "sgd"]) == 0
    assert (out / "model.pt").is_file() and f"imported {weights}" in capsys.readouterr().out
    rows = read_results(out / "results").to_pylist()
    assert len(rows) == 2 * 2 and {r["model"] for r in rows} == {str(out / "model.pt")}
    assert {r["sweep"] for r in rows} == {"audit-weights"}
    assert (out / "report" / "report.html").is_file()


def test_natural_images_from_shards(models, shards, natural_dir, tmp_path) -> None:
    whole = load_shard_images(str(shards), channels=1, size=28)
    images = whole.images
    assert images.shape == (48, 1, 28, 28) and images.dtype == torch.uint8 and not whole.skipped and not whole.failed
    assert whole.listed == 48 and whole.warning is None  # stored gray at 28 px: what this model takes
    assert whole.skipped_when_sharded == ()
    some = load_shard_images(str(shards), channels=1, size=28, limit=10, seed=3)
    assert len(some.images) == some.listed == 10 and read_manifest(str(shards)).total == 48
    positions = sorted(random.Random(3).sample(range(48), 10))  # the manifest's positions, in stream order
    assert torch.equal(some.images, images[positions])
    assert torch.equal(load_shard_images(str(shards), channels=1, size=28, limit=10, seed=3).images, some.images)
    # a missing shard loses its own sampled images and moves no other; what it lost is counted, as the engine counts it
    damaged = tmp_path / "damaged"
    shutil.copytree(shards, damaged)
    (damaged / "shard-000001.tar").unlink()  # positions 12..23
    part = load_shard_images(str(damaged), channels=1, size=28, limit=10, seed=3)
    kept = [p for p in positions if not 12 <= p < 24]
    assert part.listed == 10 and len(part.failed) == 1 and part.failed[0].startswith("shard-000001.tar: missing")
    assert len(kept) < 10 and torch.equal(part.images, images[kept])
    # the audit's report names them beside the unreadable ones (an older audit.json without "lost" reads as before)
    assert _unused({"skipped": 3, "lost": 12, "shards_failed": 1}) == " (3 unreadable skipped; 12 lost in 1 failed shard(s))"
    assert _unused({"skipped": 0, "lost": 12, "shards_failed": 1}) == " (12 lost in 1 failed shard(s))"
    assert _unused({"skipped": 0, "skipped_when_sharded": 1}) == " (1 unreadable left out when sharded)"
    # a file `raylab shard` could not read is not in the shards, but the run's source still names it
    write_shards(natural_dir, tmp_path / "with-corrupt", shard_size=20, size=28, channels=1)
    loaded = load_shard_images(str(tmp_path / "with-corrupt"), channels=1, size=28)
    assert len(loaded.images) == loaded.listed == 40 and not loaded.skipped
    assert [s.split(": ", 1)[0] for s in loaded.skipped_when_sharded] == ["corrupt.JPEG"]
    assert _unused({"skipped": 2, "shards_failed": 0}) == " (2 unreadable skipped)" and _unused({"skipped": 0}) == ""
    target = load_target(str(models["model"]), PNEUMONIA, target=None, zeta=0.04, p=2)
    source = source_images(str(damaged), target, limit=None, seed=0).source
    assert (source.images, source.used, source.lost) == (48, 36, 12)
    assert source.summary().startswith(f"source: {damaged} (48 images, 36 used, 0 skipped; 12 lost in 1 failed shard(s): "
                                       "shard-000001.tar: missing")


def test_the_audit_as_a_ray_job_fans_out_and_makes_the_uaps_of_a_local_run(cluster, models, shards, pneumonia_small,
                                                                           tmp_path) -> None:
    """jobs/audit.py --ray submitted through the Jobs API: its UAPs run as Ray tasks, natural images from shards.
    (One method: a task runs either as it runs the other, and the paper's ε grid, chosen in the driver twice, took
    most of this test's minute.)"""
    args = ["--zetas", "0.04", "--seeds", "2", "--targets", "none", "--budget", "quick", "--methods", "sgd"]
    local, remote = tmp_path / "local", tmp_path / "ray"
    common = ["--model", str(models["model"]), "--natural", str(shards), "--data", str(pneumonia_small), *args]
    assert main(["audit", *common, "--out", str(local)]) == 0
    logs = submit_and_wait(cluster, " ".join(["python jobs/audit.py", *common, "--out", str(remote), "--ray",
                                              "--cpus-per-uap", "2"]), timeout=400)  # 2 task processes at a time
    assert "Natural-image UAPs at L2 ζ = 4 %" in logs and "4 UAPs (0 done before)" in logs
    assert (f"medical data: {pneumonia_small}, as the model takes it: 2 classes (NORMAL, PNEUMONIA), gray 28 px: 600 "
            "train, 200 val, 300 test images") in logs
    # the progress bar as lines of the job's log (it was one line redrawn with carriage returns)
    assert "\r" not in logs and any(line.startswith("UAPs: 100%|##########| 4/4 [") for line in logs.splitlines())
    a = {r["trial_id"]: r for r in read_results(local / "results").to_pylist()}
    b = {r["trial_id"]: r for r in read_results(remote / "results").to_pylist()}
    assert sorted(a) == sorted(b) and len(a) == 2 * 2  # (natural, train) x 2 seeds
    assert {r["source_kind"] for r in b.values()} == {"shards", "train"}
    for t in a:  # the same UAPs, made in Ray tasks instead of this process
        np.testing.assert_allclose(np.load(b[t]["uap_uri"]), np.load(a[t]["uap_uri"]), atol=1e-6)
        assert b[t]["fooling_rate"] == a[t]["fooling_rate"], t
    assert json.loads((remote / "audit.json").read_text())["natural"]["kind"] == "shards"


def test_an_audit_serves_its_metrics_while_it_runs(models, natural_dir, pneumonia_small, tmp_path, capsys) -> None:
    """`raylab audit --metrics-port` serves the same Prometheus metrics as `raylab uap` (Grafana's throughput panels),
    each UAP tagged with its trial id, and counts every UAP done as a finished trial of the audit's sweep; an audit
    exported nothing before. Scraped over HTTP from 127.0.0.1 while the audit lingers."""
    import re
    import threading
    import urllib.request

    args = ["--limit", "20", "--zetas", "0.04", "--seeds", "2", "--targets", "none", "--methods", "sgd",
            "--metrics-port", "0", "--metrics-linger", "2"]
    codes: list[int] = []
    done = threading.Thread(target=lambda: codes.append(_audit(models["model"], natural_dir, tmp_path / "m", *args,
                                                               data=pneumonia_small)),
                            daemon=True)
    done.start()
    finished = 'ray_raylab_trials_total{model="",run="",source="",status="finished",sweep="audit-model"} 4.0'
    deadline, printed, url, text = time.monotonic() + 240, "", None, ""
    while time.monotonic() < deadline and finished not in text:
        printed += capsys.readouterr().out
        url = url or next((line.split()[-1] for line in printed.splitlines() if line.startswith("serving metrics on ")), None)
        if url:
            text = urllib.request.urlopen(url, timeout=5).read().decode()
        time.sleep(0.5)
    assert url and url.startswith("http://127.0.0.1:"), printed
    assert finished in text
    trials = set(re.findall(r'ray_raylab_images_processed_total\{[^}]*run="([^"]+)"', text))
    assert trials == {"natural-z0.04-u-sgd-s0", "natural-z0.04-u-sgd-s1", "train-z0.04-u-sgd-s0", "train-z0.04-u-sgd-s1"}
    done.join(timeout=120)
    assert codes == [0] and (tmp_path / "m" / "report" / "report.html").exists()
    assert (printed + capsys.readouterr().out).rstrip().endswith("run done; serving its final metrics for 2 s more")


# --------------------------------------------------------------------------- wording follows the numbers


def _s(mean: float, sd: float = 0.01, n: int = 3) -> dict:
    return {"mean": mean, "sd": sd, "n": n}


def _fake(nat_paper: float, nat_sgd: float, rnd: float, train: float, grow: bool, easy: str, top: str) -> dict:
    cells = []
    for method, nat in (("paper", nat_paper), ("sgd", nat_sgd)):
        for z, scale in ((0.02, 0.5 if grow else 1.0), (0.04, 1.0)):
            cells.append({"source": "natural", "method": method, "zeta": z, "target": None, "p": "2",
                          "rate": _s(nat * scale), "random": _s(rnd), "trials": [], "seeds": [0, 1, 2]})
            cells.append({"source": "train", "method": method, "zeta": z, "target": None, "p": "2",
                          "rate": _s(train * scale), "random": _s(rnd), "trials": [], "seeds": [0, 1, 2]})
        for name in ("NORMAL", "PNEUMONIA"):
            cells.append({"source": "natural", "method": method, "zeta": 0.04, "target": name, "p": "2",
                          "rate": _s(0.9 if name == easy else 0.45), "random": _s(0.4), "trials": [], "seeds": [0, 1, 2]})
    return {"config": {"zeta": 0.04, "methods": ["paper", "sgd"]}, "cells": cells, "class_names": ["NORMAL", "PNEUMONIA"],
            "check": {"clean_label_composition": {"NORMAL": 0.4, "PNEUMONIA": 0.6}},
            "composition": {"natural": {"NORMAL": 0.8 if top == "NORMAL" else 0.2, "PNEUMONIA": 0.2 if top == "NORMAL" else 0.8}}}


def test_the_verdict_follows_the_numbers() -> None:
    vulnerable = verdict(_fake(0.2, 0.41, 0.01, 0.6, True, "NORMAL", "NORMAL"))
    assert vulnerable == ("Natural-image UAPs at L2 ζ = 4 % flip 41.0 % ± 1.0 % of test diagnoses; random noise of the "
                          "same size flips 1.0 % ± 1.0 % (the stochastic-gradient method, mean ± sd over 3 seeds).")
    safe = verdict(_fake(0.015, 0.02, 0.01, 0.6, True, "NORMAL", "NORMAL"))
    assert "not clearly more than random noise" in safe and "no natural-image vulnerability found" in safe
    assert "flip 2.0 % ± 1.0 %" in safe  # the stronger method, even when it is weak
    assert clearly_above(_s(0.3), _s(0.1)) and not clearly_above(_s(0.3, 0.25), _s(0.1))
    assert not clearly_above(_s(0.11, 0.0), _s(0.1, 0.0))  # under 2 points is never a difference


def test_the_strongest_seed_is_worded_from_its_own_outcome() -> None:
    """A seed kept on validation that beats the mean by 2 points or more is called what the mean under-states; one
    that does not is said to add nothing. The verdict quotes it either way."""
    split = copy.deepcopy(_fake(0.2, 0.36, 0.01, 0.6, True, "NORMAL", "NORMAL"))
    head = next(c for c in split["cells"] if (c["source"], c["method"], c["zeta"], c["target"]) == ("natural", "sgd", 0.04, None))
    head.update(per_seed=[0.511, 0.04, 0.529], kept={"validation": [0.48, 0.05, 0.5], "seed": 2, "val_rate": 0.5,
                                                      "rate": 0.529})
    assert verdict(split) == ("Natural-image UAPs at L2 ζ = 4 % flip 36.0 % ± 1.0 % of test diagnoses, and the strongest "
                              "of the 3, kept on validation, flips 52.9 %; random noise of the same size flips 1.0 % ± "
                              "1.0 % (the stochastic-gradient method, mean ± sd over 3 seeds).")
    seeds = findings(split)[1]
    assert seeds == ("The seeds' UAPs differ (the stochastic-gradient method at ζ = 4 %, test R_f 51.1 %, 4.0 %, 52.9 %): "
                     "the one that fools the most validation images (seed 2, 50.0 % of them) flips 52.9 % of test "
                     "diagnoses, so the mean under-states an attacker who makes 3 UAPs and keeps the best on a few "
                     "labelled images.")
    head.update(per_seed=[0.35, 0.36, 0.37], kept={"validation": [0.3, 0.31, 0.32], "seed": 2, "val_rate": 0.32,
                                                   "rate": 0.37})
    assert findings(split)[1].startswith("Keeping the best of the seeds' UAPs on validation (the stochastic-gradient "
                                         "method at ζ = 4 %, test R_f 35.0 %, 36.0 %, 37.0 %) adds nothing to the mean")


def test_each_finding_is_worded_from_its_own_outcome() -> None:
    a = findings(_fake(0.2, 0.41, 0.01, 0.6, True, "NORMAL", "NORMAL"))
    assert a[0].startswith("The stochastic-gradient method is the stronger attack on this model: natural-image R_f 41.0 %")
    assert "are stronger: R_f 60.0 %" in a[1] and "as in the paper" in a[1]
    assert "grows with the budget: 20.5 % ± 1.0 % at ζ = 2 %" in a[2]
    assert a[3] == ("At ζ = 4 % natural-image R_f (41.0 %) is 68 % of the 60.0 % that a UAP sending every test image to "
                    "one class can flip at most (sending them all to NORMAL, which the model gives 40.0 % of them clean).")
    assert a[4].startswith("The easiest target is NORMAL (R_s furthest above the share called so without a "
                           "perturbation): a natural-image UAP pushes test images to it beyond random")
    assert a[4].endswith("; 40.0 % are called NORMAL without any perturbation).")
    # R_s counts the images already called the target: 45 % toward PNEUMONIA, which the model calls 60 % of them clean,
    # moves nothing, and says so (random noise's 40 % alone made it look like a push)
    assert a[5] == ("The hardest target is PNEUMONIA (R_s least above that share): R_s 45.0 % ± 1.0 % (random 40.0 % ± "
                    "1.0 %; no more than the 60.0 % "
                    "called PNEUMONIA without any perturbation: on balance these UAPs do not move test images toward it).")
    assert "80.0 % of the natural images NORMAL; the easiest target is that class" in a[6]
    b = findings(_fake(0.41, 0.2, 0.01, 0.3, False, "PNEUMONIA", "NORMAL"))
    assert b[0].startswith("The paper's method is the stronger attack on this model")
    assert "as strong as UAPs from the model's own training images" in b[1] and "the paper found training images stronger" in b[1]
    assert "does not clearly grow with the budget" in b[2]
    assert "yet the easiest target is PNEUMONIA, so the composition does not explain it here" in b[6]
    assert b[5].endswith("(random 40.0 % ± 1.0 %; 40.0 % are called NORMAL without any perturbation).")  # 45 % > 40 %
    assert "natural-image R_f (41.0 %) is 68 % of the 60.0 %" in b[3]  # the headline method is the paper's here
    c = findings(_fake(0.40, 0.405, 0.01, 0.6, True, "NORMAL", "NORMAL"))
    assert c[0].startswith("The two methods are about as strong here")
    d = copy.deepcopy(_fake(0.2, 0.41, 0.01, 0.6, True, "NORMAL", "NORMAL"))
    for cell in d["cells"]:
        if cell["target"] is not None:
            cell["rate"] = _s(0.41)  # every target barely above the random control's 0.40
    assert "does not clearly push test images to it" in findings(d)[4]
    f = copy.deepcopy(_fake(0.2, 0.41, 0.01, 0.6, True, "NORMAL", "NORMAL"))
    for cell in f["cells"]:
        if cell["target"] == "NORMAL" and cell["method"] == "sgd":  # the easiest target's best cell (the paper's set lower)
            cell["kept"] = {"validation": [0.9, 0.95, 0.9], "seed": 1, "val_rate": 0.95, "rate": 0.97}
        elif cell["target"] == "NORMAL":
            cell["rate"] = _s(0.8)
    assert findings(f)[4].startswith("The easiest target is NORMAL (R_s furthest above the share called so without a "
                                     "perturbation): a natural-image UAP pushes test images to it beyond "
                                     "random noise (R_s 90.0 % ± 1.0 %, the strongest of the 3, kept on validation, "
                                     "97.0 %; random 40.0 % ± 1.0 %;")
    e = _fake(0.2, 0.6, 0.01, 0.6, True, "NORMAL", "NORMAL")
    assert "natural-image R_f (60.0 %) reaches the 60.0 %" in findings(e)[3]


def test_targets_are_ranked_by_how_far_r_s_rises_above_the_clean_share() -> None:
    """Three classes (as the paper's OCT and skin-lesion sets have more than two): R_s counts the images already called
    the target, so the class most test images have led a ranking by R_s alone even where the UAPs moved none to it
    (seen auditing a 3-class CSV set: PNEUMONIA 'easiest' at 48.2 % beside 49.2 % clean, NORMAL 'hardest' at 27.9 %
    from 18.9 %)."""
    three = copy.deepcopy(_fake(0.2, 0.41, 0.01, 0.6, True, "NORMAL", "PHOTO"))
    three["class_names"] = ["NORMAL", "PHOTO", "PNEUMONIA"]
    three["check"]["clean_label_composition"] = {"NORMAL": 0.19, "PHOTO": 0.32, "PNEUMONIA": 0.49}
    three["composition"]["natural"] = {"NORMAL": 0.1, "PHOTO": 0.6, "PNEUMONIA": 0.3}
    rates = {"NORMAL": 0.28, "PHOTO": 0.34, "PNEUMONIA": 0.48}
    three["cells"] = [c for c in three["cells"] if c["target"] is None] + [
        {"source": "natural", "method": "sgd", "zeta": 0.04, "target": name, "p": "2", "rate": _s(rate),
         "random": _s(rate - 0.05), "trials": [], "seeds": [0, 1, 2]} for name, rate in rates.items()]
    easiest, hardest, composition = findings(three)[4:7]
    assert easiest.startswith("The easiest target is NORMAL (R_s furthest above the share called so without a "
                              "perturbation): a natural-image UAP pushes test images to it beyond random noise (R_s "
                              "28.0 % ± 1.0 %") and easiest.endswith("; 19.0 % are called NORMAL without any perturbation).")
    assert hardest.startswith("The hardest target is PNEUMONIA (R_s least above that share): R_s 48.0 % ± 1.0 %")
    assert hardest.endswith("no more than the 49.0 % called PNEUMONIA without any perturbation: on balance these UAPs do "
                            "not move test images toward it).")
    assert composition == ("The model calls 60.0 % of the natural images PHOTO; yet the easiest target is NORMAL, so the "
                           "composition does not explain it here.")


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# .ci/run installs Debian's chromium and sets this, so in CI a missing browser fails instead of skipping.
CHROMIUM_REQUIRED = os.environ.get("RAYLAB_TEST_REQUIRE_CHROMIUM") == "1"


@pytest.mark.skipif(CHROMIUM is None and not CHROMIUM_REQUIRED, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_the_report_renders_in_a_headless_browser(audited, tmp_path) -> None:
    assert CHROMIUM is not None, "chromium is required here (RAYLAB_TEST_REQUIRE_CHROMIUM=1) but not installed"
    shot = tmp_path / "report.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1100,3200",
                    f"--screenshot={shot}", (audited / "report" / "report.html").as_uri()],
                   check=True, capture_output=True, timeout=120)
    image = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert image.shape[:2] == (3200, 1100)
    verdict_box = (abs(image[..., 0] - 0xFD) < 6) & (abs(image[..., 1] - 0xEC) < 6) & (abs(image[..., 2] - 0xEA) < 6)
    assert verdict_box[:500].sum() > 20_000  # the verdict's box is drawn near the top
    dark = (image.sum(axis=2) < 200)
    assert dark[:500].sum() > 2_000  # with its text
    colourful = (image.max(axis=2) - image.min(axis=2)) > 80
    assert colourful[500:].sum() > 20_000  # and the figures (inline PNGs) below it
