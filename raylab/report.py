"""The reproduction's report: our numbers beside the paper's, as one self-contained HTML page and as Markdown with
PNG figures (one list of blocks, written out by :mod:`raylab.page`).

Rendered from a :func:`raylab.reproduce.run_reproduce` output folder (its
Parquet results and ``study.json``). Figure and table numbers follow the
paper; each says which data and scale produced it. Every number is the mean ±
sd over the study's seeds (the UAP's image order, the random control's noise),
for both methods, and the figures draw the spread as error bars; a figure of
one UAP shows the first seed's. The paper's published
values shown are its chest X-ray figures (the dataset we have here), quoted
from its text and tables.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .figures import png_bytes
from .page import Block, to_html, to_markdown
from .plots import draw_confusion
from .record import BUDGET_REACHED, budget_used, trial_metrics, trial_uap
from .reproduce import model_path, parse_trial
from .spread import Spread, clearly_above, spread
from .store import Store

LABELS = {"train": "training images (medical)", "natural_a": "natural set A", "natural_b": "natural set B",
          "natural_a_balanced": "natural set A, label-balanced", "random": "random control"}
#: One colour per image source, the paper's method solid and the stochastic-gradient one dotted.
COLORS = {"train": "C0", "natural_a": "C1", "natural_b": "C2"}
#: Paper, chest X-ray (Kermany): Table 1 (R_s %, ζ=4 %), Table 2 (R_f %, random initialization, ζ=8 %), text of 3.1.
PAPER_TABLE1 = {
    ("NORMAL", "train"): (99.3, 99.3, 99.6), ("NORMAL", "natural_a"): (97.6, 100.0, 95.7),
    ("NORMAL", "natural_b"): (97.0, 99.8, 94.3), ("NORMAL", "random"): (55.7, 54.4, 54.8),
    ("PNEUMONIA", "train"): (97.8, 99.1, 99.8), ("PNEUMONIA", "natural_a"): (60.0, 75.3, 72.3),
    ("PNEUMONIA", "natural_b"): (62.8, 79.8, 68.0), ("PNEUMONIA", "random"): (45.0, 46.1, 44.1),
}
PAPER_TABLE2 = {"train": 45.9, "natural_a": 22.2, "random": 0.4}
PAPER_FIG1 = "natural-image UAPs reach R_f ≈ 50 % at ζ = 4 % (InceptionV3, ResNet50 and VGG16 alike), training-image UAPs nearly 100 %, random ≈ 0–5 %"
PAPER_S3 = "≈ 80 % of both ImageNet and Open Images photos are classified PNEUMONIA, whatever the architecture"


def _pct(x: float | None) -> str:
    return "–" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{100 * x:.1f}"


def _load(out: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from .results import read_results

    study = json.loads(Store.at(out).read_text("study.json"))
    rows = read_results(out / "results", filters={"sweep": f"reproduce-{study['config']['preset']}"}).to_pylist()
    for r in rows:  # read every file from the study folder as it is now, which may have moved since
        r.update(parse_trial(r["trial_id"]), uap_uri=str(trial_uap(out, r["trial_id"])))
        m = trial_metrics(out, r["trial_id"])
        r["budget_used"] = budget_used(out, r["trial_id"], m)
        r["clean_composition"] = m.get("clean_label_composition", {})  # the model's clean test labels, by class
    for key, info in study["models"].items():
        info["path"] = str(model_path(out, key))
    return study, rows


def _pick(rows: list[dict[str, Any]], **kw: Any) -> list[dict[str, Any]]:
    """Rows matching ``kw`` (the paper's method unless ``method`` is given)."""
    kw.setdefault("method", "paper")
    return [r for r in rows if all(r.get(k) == v for k, v in kw.items())]


def _stat(rows: list[dict[str, Any]], field: str = "fooling_rate", **kw: Any) -> Spread | None:
    """Mean, sd and count over seeds of ``field`` in the rows matching ``kw`` (the paper's method unless given)."""
    return spread(r.get(field) for r in _pick(rows, **kw))


def _pm(stats: Spread | None) -> str:
    return "–" if stats is None else f"{100 * stats['mean']:.1f} ± {100 * stats['sd']:.1f}"


def _one(rows: list[dict[str, Any]], **kw: Any) -> dict[str, Any] | None:
    """The matching row of the first seed: the UAP a figure draws."""
    found = sorted(_pick(rows, **kw), key=lambda r: r["seed"])
    return found[0] if found else None


def _curve(rows: list[dict[str, Any]], **kw: Any) -> tuple[list[float], list[float], list[float], int]:
    """ζ (%), mean and sd of R_f (%) over seeds, per ζ of the rows matching ``kw``; and the seeds per point."""
    zs = sorted({r["zeta"] for r in _pick(rows, **kw)})
    stats = [_stat(rows, zeta=z, **kw) for z in zs]
    return ([100 * z for z in zs], [100 * st["mean"] for st in stats if st], [100 * st["sd"] for st in stats if st],
            min((st["n"] for st in stats if st), default=0))


def _fig1(rows: list[dict[str, Any]], model: str) -> bytes:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    seeds = 0
    for source in ("train", "natural_a", "natural_b"):
        z, m, sd, n = _curve(rows, model=model, source=source, target=None)
        seeds = max(seeds, n)
        if z:
            ax.errorbar(z, m, yerr=sd, marker="o", capsize=3, color=COLORS[source], label=LABELS[source])
    z, m, sd, n = _curve(rows, model=model, source="random", target=None)
    ax.errorbar(z, m, yerr=sd, fmt="k--", marker=".", capsize=3, label=LABELS["random"])
    for source in ("train", "natural_a", "natural_b"):
        z, m, sd, n = _curve(rows, method="sgd", model=model, source=source, target=None)
        if z:
            ax.errorbar(z, m, yerr=sd, marker="s", linestyle=":", capsize=3, color=COLORS[source], label=f"{LABELS[source]}, SGD")
    ax.scatter([4], [50], marker="*", s=150, color="red", zorder=5, label="paper: natural images at ζ=4 % (≈50 %)")
    ax.set_xlabel("ζ (%)")
    ax.set_ylabel(f"fooling rate R_f (%), mean ± sd over {seeds} seeds")
    ax.set_title(f"Figure 1: non-targeted UAPs against {model}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return png_bytes(fig, dpi=100)


def _fig3(rows: list[dict[str, Any]], models: list[str], zeta: float) -> bytes:
    import matplotlib.pyplot as plt

    sources = ["train", "natural_a", "natural_b", "natural_a_balanced"]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    width = 0.8 / len(sources)
    for i, s in enumerate(sources):
        stats = [_stat(rows, model=m, source=s, zeta=zeta, target=None) for m in models]
        ax.bar([k + i * width for k in range(len(models))], [100 * st["mean"] if st else 0 for st in stats], width,
               yerr=[100 * st["sd"] if st else 0 for st in stats], capsize=3, label=LABELS[s])
    for k, m in enumerate(models):
        st = _stat(rows, model=m, source="random", zeta=zeta, target=None)
        if st:
            ax.hlines(100 * st["mean"], k - 0.1, k + 0.9, colors="k", linestyles="dashed")
    for k, m in enumerate(models):
        sg = _stat(rows, method="sgd", model=m, source="natural_a", zeta=zeta, target=None)
        if sg:
            ax.errorbar([k + 0.8], [100 * sg["mean"]], yerr=[100 * sg["sd"]], fmt="D", color="purple", capsize=4,
                        label="natural set A, SGD" if k == 0 else None)
    ax.axhline(50, color="red", lw=0.8, alpha=0.6, label="paper: natural ≈ 50 %")
    ax.set_xticks([k + 0.4 - width / 2 for k in range(len(models))], models, fontsize=7)
    ax.set_ylabel("R_f (%), mean ± sd over seeds")
    ax.set_title(f"Figure 3: R_f by model at ζ = {100 * zeta:g} % (dashed: random)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return png_bytes(fig, dpi=100)


def _uap_grid(items: list[tuple[str, str]], title: str) -> bytes:
    import matplotlib.pyplot as plt

    from .plots import scaled_uap

    fig, axes = plt.subplots(1, len(items), figsize=(2.6 * len(items), 2.9), squeeze=False)
    for ax, (label, uri) in zip(axes[0], items):
        img = scaled_uap(torch.from_numpy(np.load(uri)))
        arr = img.permute(1, 2, 0).numpy()
        ax.imshow(arr[..., 0] if arr.shape[2] == 1 else arr, cmap="gray" if arr.shape[2] == 1 else None, vmin=0, vmax=1)
        ax.set_title(label, fontsize=8)
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return png_bytes(fig, dpi=100)


def _budget_note(rows: list[dict[str, Any]], c: dict[str, Any]) -> list[Block]:
    """Where the paper's method's UAPs end inside their budget. Its ε is chosen once, at the headline ζ, and one pass
    over the images accepts a bounded number of ε-steps (Section 2.2: i_max = 1), so at a larger ζ the norm of ρ may
    never reach the radius: that R_f is then bounded by ε and the images, not by ζ, and the same UAP's at every ζ
    above. Said per model and source (ρ's norm as a share of the radius, mean over seeds), so that a flat curve is not
    read as a saturated model."""
    short: dict[tuple[str, str], list[str]] = {}
    for m in dict.fromkeys(r["model"] for r in rows):
        for s in ("train", "natural_a", "natural_b", "natural_a_balanced"):
            for z in sorted({r["zeta"] for r in rows}):
                used = spread(r["budget_used"] for r in _pick(rows, model=m, source=s, zeta=z, target=None))
                if used is not None and used["mean"] < BUDGET_REACHED:
                    short.setdefault((m, LABELS[s]), []).append(f"{100 * z:g} % ({100 * used['mean']:.0f} %)")
    if not short:
        return []
    cases = "; ".join(f"{m}, {src}: ζ = {', '.join(zs)}" for (m, src), zs in short.items())
    return [("p", f"**Budget not reached.** These UAPs of the paper's method end inside their budget (ρ's norm as a "
                  f"share of the radius, mean over the seeds): {cases}. Their ε, chosen at ζ = {100 * c['paper_zeta']:g} %, "
                  f"and {c['max_passes']} pass(es) over the images bound them, not ζ, so a larger ζ gives the same UAP "
                  "and the curve there shows that one UAP, not what the budget allows; the stochastic-gradient "
                  "method's step scales with the radius and uses it.")]


def _sgd_grid(study: dict[str, Any], zeta: float) -> list[Block]:
    """The stochastic-gradient method's selection grid (first step × p), as the paper's method's ε × p grid."""
    sgd = {k: v for k, v in study["selected"].items() if k.endswith("/sgd")}
    if not sgd:
        return []
    lr0 = study["config"].get("sgd_lr", 1.0)  # a study from before the first step was chosen has one lr
    keys = list(dict.fromkeys((g["p"], g.get("lr", lr0)) for sel in sgd.values() for g in sel["grid"]))
    table = []
    for key, sel in sgd.items():
        vals = {(g["p"], g.get("lr", lr0)): g["val_fooling_rate"] for g in sel["grid"]}
        table.append([key.removesuffix("/sgd"), *(_pct(vals.get(k)) for k in keys)])
    return [("p", f"The stochastic-gradient method's grid (validation R_f %, the mean over the seeds, ζ = {100 * zeta:g} %; "
                  "lr is its first step as a fraction of the radius):"),
            ("table", ["model / images", *(f"p={p_}, lr={lr:g}" for p_, lr in keys)], table)]


def _sgd_steps(c: dict[str, Any]) -> str:
    """The stochastic-gradient method's first step as the study set it: chosen on validation from ``sgd_lrs``, or the
    one ``sgd_lr`` of a study from before it was chosen."""
    if "sgd_lrs" not in c:
        return f"lr {c.get('sgd_lr')}"
    lrs = [f"{lr:g}" for lr in c["sgd_lrs"]]
    return f"lr {lrs[0]}" if len(lrs) == 1 else f"lr chosen on validation from {', '.join(lrs)}"


def _wall_time(study: dict[str, Any]) -> str:
    """The study's wall time, summed over the runs of the command (a rerun resumes it, or renders the report again)."""
    runs = study.get("runs", 1)
    if runs == 1:
        return f"Wall time {study['seconds'] / 60:.1f} min."
    return (f"Wall time {study['seconds'] / 60:.1f} min over {runs} runs of the command (the last, resuming, "
            f"{study['last_run_seconds'] / 60:.1f} min).")


def _fig5(rows: list[dict[str, Any]], model: str, zeta: float, class_names: list[str]) -> bytes:
    import matplotlib.pyplot as plt

    sources = ["train", "natural_a", "natural_b"]
    fig, axes = plt.subplots(1, len(sources), figsize=(3.4 * len(sources), 3.2), squeeze=False)
    for ax, s in zip(axes[0], sources):
        found = _pick(rows, model=model, source=s, zeta=zeta, target=None)
        if not found:
            ax.axis("off")
            continue
        m = np.mean([np.array(r["confusion_matrix"]) for r in found], axis=0)  # over seeds
        draw_confusion(ax, m, class_names, fontsize=8)
        ax.set_title(LABELS[s], fontsize=8)
    fig.suptitle(f"Figure 5: row-normalized confusion matrices, {model}, ζ = {100 * zeta:g} % (mean over seeds)", fontsize=9)
    fig.tight_layout()
    return png_bytes(fig, dpi=100)


def _fig2(study: dict[str, Any], row: dict[str, Any]) -> bytes:
    from .core import predict_labels
    from .data.medical import load_medical
    from .models import load_classifier
    from .plots import examples_png
    from .target import fit

    c = study["config"]
    path = study["models"][row["model"]]["path"]
    model = load_classifier(path)
    m = fit(model, load_medical(c["medical"], size=c["image_size"]), where=c["medical"], name=path)  # as the model takes it
    rho = torch.from_numpy(np.load(row["uap_uri"]))
    clean, adv = predict_labels(model, m.test_images), predict_labels(model, m.test_images, rho=rho)
    correct = (clean == m.test_labels)
    fooled = (correct & (clean != adv)).nonzero().flatten()[:4]
    kept = (correct & (clean == adv)).nonzero().flatten()[: 6 - len(fooled)]
    order = torch.cat([fooled, kept])
    return examples_png(m.test_images[order], rho, clean[order], adv[order], tuple(study["class_names"]))


def render_report(out: str | Path, dest: str | Path | None = None) -> Path:
    """Write ``report.html`` (one self-contained page), ``report.md`` and its PNGs into ``dest`` (default
    ``<out>/report``); returns the HTML page's path."""
    out = Path(out)
    dest = Path(dest) if dest is not None else out / "report"
    study, rows = _load(out)
    figures = _figures(study, rows)
    content = blocks(study, rows, figures)
    store = Store.at(dest)
    for name, data in figures.items():
        store.write_bytes(name, data)
    store.write_text("report.md", to_markdown(content))
    return Path(store.write_text("report.html", to_html(content, figures)))


def _figures(study: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, bytes]:
    """The report's PNGs by name; a figure whose UAPs the study did not make is left out."""
    c = study["config"]
    archs, pz = list(c["archs"]), c["paper_zeta"]
    first = f"{archs[0]}-transfer"
    out = {"figure1.png": _fig1(rows, first), "figure3.png": _fig3(rows, [f"{a}-transfer" for a in archs], pz)}
    ex = _one(rows, model=first, source="natural_a", zeta=pz, target=None)
    if ex is not None:
        out["figure2.png"] = _fig2(study, ex)
    items = [(LABELS[s], r["uap_uri"]) for s in ("train", "natural_a", "natural_b")
             if (r := _one(rows, model=first, source=s, zeta=pz, target=None))]
    if items:
        out["figure4.png"] = _uap_grid(items, f"Figure 4: non-targeted UAPs ({first}, ζ = {100 * pz:g} %, first seed), "
                                              "scaled to 0..1")
    out["figure5.png"] = _fig5(rows, first, pz, study["class_names"])
    titems = [(f"{t} / {LABELS[s]}", r["uap_uri"]) for t in c["targets"] for s in ("train", "natural_a", "natural_b")
              if (r := _one(rows, model=first, source=s, zeta=pz, target=t))]
    if titems:
        out["figure6.png"] = _uap_grid(titems, f"Figure 6: targeted UAPs ({first}, ζ = {100 * pz:g} %, first seed), "
                                               "scaled to 0..1")
    return out


def blocks(study: dict[str, Any], rows: list[dict[str, Any]], figures: dict[str, bytes]) -> list[Block]:
    """The report's content, in order (:mod:`raylab.page` writes it as Markdown and as HTML)."""
    c = study["config"]
    archs, pz, sz = list(c["archs"]), c["paper_zeta"], c["scratch_zeta"]
    first = f"{archs[0]}-transfer"
    names = study["class_names"]
    seeds = len(c.get("seeds", ()))
    sgd_sources = list(c.get("sgd_sources", ()))
    origins = "; ".join(f"{key}: {info.get('origin', info['regime'])}" for key, info in study["models"].items())
    out: list[Block] = [("h1", f"raylab reproduction report: preset `{c['preset']}`")]
    out += [("warning", w) for w in baseline_warnings(rows)]
    out += [
        ("p", "Reproduces Minagi, Hirano & Takemoto (J. Imaging 2022) with `raylab reproduce`. **Data and scale of our "
              f"numbers**: medical set `{Path(c['medical']).name}` at {c['image_size']} px; natural set A = "
              f"`{c['natural_a']}` ({study['natural_images']['natural_a']} photos), natural set B = `{c['natural_b']}` "
              f"({study['natural_images']['natural_b']} photos; the paper's second set was Open Images), both converted to "
              f"the models' channels; models ({origins}), fine-tuned {c['train_epochs']} epoch(s); UAPs from "
              f"{c['train_limit'] or 'all'} training images or the natural sets, {c['max_passes']} pass(es), batched mode "
              f"(batch {c['batch_size']}). The paper's values are its chest X-ray figures (InceptionV3/ResNet50/VGG16 at "
              "299/224 px, ImageNet weights, 10,000 training images, 100,000-image natural sets)."),
        ("p", f"**Every number is the mean ± sd over {seeds} seeds** of the UAP (its image order; the random control's "
              "noise), for both methods; the figures draw the sd as error bars, and a figure of one UAP shows the first "
              "seed's."),
        ("p", _wall_time(study)),
        ("h2", "Models and the ε, p selection"),
        ("p", "ε and p were picked per model and source kind by the paper's grid search (Section 2.2) at ζ = "
              f"{100 * pz:g} %: each candidate made from the very images its UAPs use, once per seed, and scored by its "
              "mean R_f over the seeds on the medical **validation** split (never the test set); the pick's ± is the sd "
              "over the seeds."),
    ]
    table = []
    for key, info in study["models"].items():
        cells = []
        for name in (f"{key}/natural", f"{key}/train", f"{key}/natural/sgd", f"{key}/train/sgd"):
            sel = study["selected"].get(name)
            if sel is None:
                cells.append("–")
                continue
            best = max(sel["grid"], key=lambda g: g["val_fooling_rate"])
            sd_ = best.get("val_fooling_rate_sd")  # None in a study selected on one seed, before the seeds' mean
            sd = "" if sd_ is None else f" ± {_pct(sd_)}"
            # a study from before the first step was chosen has one lr, in its config
            step = f"lr={sel.get('lr', c.get('sgd_lr')):g}, " if name.endswith("/sgd") else f"ε={sel['eps']:g}, "
            cells.append(f"{step}p={sel['p']} ({_pct(best['val_fooling_rate'])}{sd} %)")
        table.append([key, f"{_pct(info['test_accuracy'])} %", *cells])
    out.append(("table", ["model", "test accuracy", "ε, p for natural images (val R_f)", "ε, p for training images (val R_f)",
                          "SGD: lr, p for natural images (val R_f)", "SGD: lr, p for training images (val R_f)"], table))
    paper_selected = {k: v for k, v in study["selected"].items() if not k.endswith("/sgd")}
    grid_keys = [(g["p"], g["eps"]) for g in next(iter(paper_selected.values()))["grid"]]
    table = []
    for key, sel in paper_selected.items():
        vals = {(g["p"], g["eps"]): g["val_fooling_rate"] for g in sel["grid"]}
        table.append([key, *(_pct(vals.get(k)) for k in grid_keys)])
    out += [("p", f"The whole grid (validation R_f %, the mean over the seeds, ζ = {100 * pz:g} %):"),
            ("table", ["model / images", *(f"p={p_}, ε={e:g}" for p_, e in grid_keys)], table)]
    out += _sgd_grid(study, pz)

    table = []
    for z in sorted(set(c["zetas"]) | set(c.get("sgd_zetas", ()))):
        vals = [_stat(rows, model=first, source=s, zeta=z, target=None) for s in ("train", "natural_a", "natural_b", "random")]
        sgd = [_stat(rows, method="sgd", model=first, source=s, zeta=z, target=None) for s in sgd_sources]
        table.append([f"{100 * z:g}", *(_pm(v) for v in vals + sgd)])
    out += [("h2", "Figure 1: R_f against ζ"), ("p", f"Paper (Fig. 1c): {PAPER_FIG1}."),
            ("p", f"The paper's method (solid), and the stochastic-gradient UAP (SGD, dotted; {c.get('sgd_epochs')} "
                  f"epochs, its first step {_sgd_steps(c)} of the radius), against {first}."),
            ("figure", "figure1.png", "Figure 1"),
            ("table", ["ζ (%)", *(LABELS[s] for s in ("train", "natural_a", "natural_b", "random")),
                       *(f"{LABELS[s]}, SGD" for s in sgd_sources)], table)]
    out += _budget_note(rows, c)

    if "figure2.png" in figures:
        out += [("h2", f"Figure 2: clean and adversarial test images (natural set A UAP, {first}, ζ = {100 * pz:g} %, "
                       "first seed)"),
                ("p", "Predicted labels above each image; fooled examples first."), ("figure", "figure2.png", "Figure 2")]

    models = [f"{a}-transfer" for a in archs]
    table = []
    for m in models:
        vals = [_stat(rows, model=m, source=s, zeta=pz, target=None)
                for s in ("train", "natural_a", "natural_b", "natural_a_balanced", "random")]
        sgd = [_stat(rows, method="sgd", model=m, source=s, zeta=pz, target=None) for s in sgd_sources]
        table.append([m, *(_pm(v) for v in vals + sgd)])
    out += [("h2", f"Figure 3: R_f by architecture at ζ = {100 * pz:g} %"),
            ("p", "Paper (Fig. 3c): ≈ 50 % for natural images, independent of the architecture."),
            ("figure", "figure3.png", "Figure 3"),
            ("table", ["model", *(LABELS[s] for s in ("train", "natural_a", "natural_b", "natural_a_balanced", "random")),
                       *(f"{LABELS[s]}, SGD" for s in sgd_sources)], table)]

    if "figure4.png" in figures:
        out += [("h2", "Figure 4: the non-targeted UAPs, scaled to 0..1"), ("figure", "figure4.png", "Figure 4")]
    out += [("h2", "Figure 5: confusion matrices"),
            ("p", "Paper (Fig. 5c): natural-image UAPs send most test images to NORMAL; training-image UAPs misclassify "
                  "almost all."),
            ("figure", "figure5.png", "Figure 5")]
    if "figure6.png" in figures:
        out += [("h2", "Figure 6: the targeted UAPs, scaled to 0..1"), ("figure", "figure6.png", "Figure 6")]

    table = []
    for t in c["targets"]:
        # R_s counts the test images already called the target (Section 2.3): what no perturbation at all scores
        clean = [next((r["clean_composition"].get(t) for r in rows if r["model"] == m and r["clean_composition"]), None)
                 for m in models]
        table.append([t, "no perturbation (called so clean)", *(_pct(v) for v in clean), "–"])
        for s in ("train", "natural_a", "natural_b", "natural_a_balanced", "random"):
            vals = [_stat(rows, "success_rate", model=m, source=s, zeta=pz, target=t) for m in models]
            if all(v is None for v in vals):
                continue
            paper = PAPER_TABLE1.get((t, s))
            table.append([t, LABELS[s], *(_pm(v) for v in vals), " / ".join(map(str, paper)) if paper else "–"])
        for s in sgd_sources:
            sgd = [_stat(rows, "success_rate", method="sgd", model=m, source=s, zeta=pz, target=t) for m in models]
            if any(sgd):
                table.append([t, f"{LABELS[s]}, SGD", *(_pm(v) for v in sgd), "–"])
    out += [("h2", f"Table 1: targeted success rates R_s (%) at ζ = {100 * pz:g} %"),
            ("p", "Ours, with the paper's InceptionV3 / ResNet50 / VGG16 values in brackets (natural set A ↔ ImageNet, "
                  "B ↔ Open Images). R_s counts the test images the model already calls the target, so each target's "
                  "first row, the share it calls so without any perturbation, is what doing nothing scores."),
            ("table", ["target", "UAP from", *models, "paper (IncV3 / RN50 / VGG16)"], table)]

    if c["scratch"]:
        scratch = f"{archs[0]}-scratch"
        table = []
        for s in ("train", "natural_a", "random"):
            a = _stat(rows, model=scratch, source=s, zeta=sz, target=None)
            b = _stat(rows, model=first, source=s, zeta=sz, target=None)
            table.append([LABELS[s], _pm(a), _pm(b), str(PAPER_TABLE2.get(s, "–"))])
        out += [("h2", f"Table 2: models trained from random initialization, R_f (%) at ζ = {100 * sz:g} %"),
                ("table", ["UAP from", f"{archs[0]} from scratch", f"{archs[0]} transfer learning",
                           "paper (IncV3 from scratch)"], table),
                ("p", f"Test accuracy from scratch {_pct(study['models'][scratch]['test_accuracy'])} % vs transfer "
                      f"{_pct(study['models'][first]['test_accuracy'])} % (paper: 97.8 % vs 97.6 %).")]

    out += [("h2", "Tables S1–S3: predicted-label composition of the image sets (%)"), ("p", f"Paper (Table S3): {PAPER_S3}."),
            ("table", ["model", "images", *names],
             [[comp["model"], LABELS[comp["source"]], *(_pct(comp[n]) for n in names)] for comp in study["composition"]])]

    if c["balanced"]:
        table = []
        for m in models:
            cells = [_pm(_stat(rows, model=m, source=s, zeta=pz, target=None)) for s in ("natural_a", "natural_a_balanced")]
            for t in c["targets"]:
                cells += [_pm(_stat(rows, "success_rate", model=m, source=s, zeta=pz, target=t))
                          for s in ("natural_a", "natural_a_balanced")]
            table.append([m, *cells])
        out += [("h2", "Beyond the paper: label-balanced natural images"),
                ("p", "Natural set A resampled so that every label the model predicts for it is equally frequent (the "
                      "control the paper's Discussion suggests for the ~50 % ceiling and the weak PNEUMONIA-targeted UAP)."),
                ("table", ["model", "R_f, A", "R_f, A balanced",
                           *(x for t in c["targets"] for x in (f"R_s({t}), A", f"R_s({t}), A balanced"))], table)]
    if study["cross_arch"]:
        table = [[a, *(_pm(spread(x["fooling_rate"] for x in study["cross_arch"] if x["made_on"] == a and x["applied_to"] == b))
                       for b in archs)] for a in archs]
        out += [("h2", f"Beyond the paper: cross-architecture transfer, R_f (%) at ζ = {100 * pz:g} %"),
                ("p", "The natural set A UAP made on the row's architecture, applied to the column's (a gray-box attack)."),
                ("table", ["made on \\ applied to", *archs], table)]
    out += [("h2", "Findings at this scale"), ("list", findings(study, rows))]
    return out


def baseline_warnings(rows: list[dict[str, Any]]) -> list[str]:
    """A warning at the top for each model whose clean accuracy is not clearly above always answering the test set's
    most frequent class: its fooling rates mean little (rows of version 2 results carry no baseline: no warning)."""
    from .evaluation import BASELINE_MARGIN

    out, seen = [], set()
    for r in rows:
        if r["model"] in seen or r.get("majority_accuracy") is None:
            continue
        seen.add(r["model"])
        if r["clean_accuracy"] <= r["majority_accuracy"] + BASELINE_MARGIN:
            out.append(f"model `{Path(r['model']).stem}` has test accuracy {_pct(r['clean_accuracy'])} %, not above always "
                       f"answering the most frequent class ({_pct(r['majority_accuracy'])} %; balanced accuracy "
                       f"{_pct(r['balanced_accuracy'])} %): its fooling rates below mean little.")
    return out


def findings(study: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    """The paper's claims, checked on our numbers (mean ± sd over seeds): each sentence is worded from its outcome,
    a difference only when :func:`raylab.spread.clearly_above` says so (more than both sds and 2 points)."""
    c = study["config"]
    pz, sz, first = c["paper_zeta"], c["scratch_zeta"], f"{c['archs'][0]}-transfer"
    z = f"ζ={100 * pz:g} %"

    def rf(model: str, source: str, zeta: float, method: str = "paper") -> Spread | None:
        return _stat(rows, model=model, source=source, zeta=zeta, target=None, method=method)

    def pm(s: Spread) -> str:
        return f"{_pm(s)} %"

    out = []
    for a in c["archs"]:
        m = f"{a}-transfer"
        nat, rnd, trn = rf(m, "natural_a", pz), rf(m, "random", pz), rf(m, "train", pz)
        if nat is not None and rnd is not None:
            if clearly_above(nat, rnd):
                out.append(f"Natural-image UAPs fool more test images than random noise of the same norm ({m}, {z}): "
                           f"R_f {pm(nat)} vs {pm(rnd)} — the paper's main finding reproduces (paper ≈ 50 % vs a few %).")
            else:
                out.append(f"Natural-image UAPs do not fool clearly more test images than random noise of the same norm ({m}, "
                           f"{z}): R_f {pm(nat)} vs {pm(rnd)} — the paper's main finding does not reproduce here "
                           "(paper ≈ 50 % vs a few %).")
        if nat is not None and trn is not None:
            above = clearly_above(trn, nat)
            out.append(f"Training-image UAPs are {'stronger than' if above else 'not clearly stronger than'} natural-image ones "
                       f"({m}): {pm(trn)} vs {pm(nat)} ({'as in' if above else 'unlike'} the paper).")
        sgd = rf(m, "natural_a", pz, "sgd")
        if sgd is not None and nat is not None:
            word = ("stronger than" if clearly_above(sgd, nat) else "weaker than" if clearly_above(nat, sgd)
                    else "about as strong as")
            out.append(f"The stochastic-gradient UAP from natural set A ({m}, {z}) is {word} the paper's method: "
                       f"R_f {pm(sgd)} vs {pm(nat)}.")
    if c["scratch"]:
        s_nat, t_nat = rf(f"{c['archs'][0]}-scratch", "natural_a", sz), rf(first, "natural_a", sz)
        if s_nat is not None and t_nat is not None:
            lower = clearly_above(t_nat, s_nat)
            out.append(f"Training from random initialization {'lowers' if lower else 'does not clearly lower'} the natural-image "
                       f"UAP's R_f ({c['archs'][0]}, ζ={100 * sz:g} %): {pm(s_nat)} from scratch vs {pm(t_nat)} with transfer "
                       f"learning ({'as in' if lower else 'unlike'} the paper's Table 2).")
    heads = [(s, a) for a in c["archs"] for meth in ("paper", "sgd")
             if (s := rf(f"{a}-transfer", "natural_a", pz, meth)) is not None]
    if heads:
        best, arch = max(heads, key=lambda h: h[0]["mean"])
        gap = "below" if best["mean"] < 0.45 else "near" if best["mean"] < 0.55 else "above"
        out.append(f"The strongest natural-image UAP at {z} (either method, any model) reaches R_f {pm(best)} on {arch}, "
                   f"{gap} the paper's ≈ 50 % (our models: {', '.join(c['archs'])} at {c['image_size']} px).")
    return out
