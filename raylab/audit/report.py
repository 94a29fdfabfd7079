"""The audit's report: the verdict, findings, figures and tables as one list of blocks (:func:`blocks`), written by
:mod:`raylab.page` as one self-contained HTML page (figures inline as data URIs, no external file or address) and
as Markdown with PNGs beside it (:func:`render_audit`), so the two never disagree."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..page import Block, to_html, to_markdown
from ..record import BUDGET_REACHED
from ..store import Store
from .figures import composition_png, curves_png, targeted_png
from .verdict import METHOD_NAMES, SOURCE_NAMES, best_targeted, cell, findings, headline, methods, one, pct, verdict


def _unused(nat: dict[str, Any]) -> str:
    """`` (3 unreadable skipped; 20 lost in 2 failed shards; 2 unreadable left out when sharded)``: the natural
    images listed that no UAP saw, and the files the shards were written without."""
    parts = [f"{nat['skipped']} unreadable skipped"] if nat["skipped"] else []
    if nat.get("lost"):  # audits before 2026-12 recorded no lost images
        parts.append(f"{nat['lost']} lost in {nat['shards_failed']} failed shard(s)")
    if nat.get("skipped_when_sharded"):  # nor files left out of the shards
        parts.append(f"{nat['skipped_when_sharded']} unreadable left out when sharded")
    return f" ({'; '.join(parts)})" if parts else ""


def _seed_table(keys: list[str], cells: list[tuple[list[str], dict[str, Any]]], rate: str) -> Block:
    """The seed-by-seed table of cells with a kept seed: each row's key columns, the test and validation rates by
    seed, and the kept seed's test rate."""
    return ("table", [*keys, f"test {rate} by seed", f"validation {rate} by seed", f"kept: test {rate}"],
            [[*key, ", ".join(one(r) for r in x["per_seed"]), ", ".join(one(r) for r in x["kept"]["validation"]),
              f"{one(x['kept']['rate'])} (seed {x['kept']['seed']})"] for key, x in cells])


def _budget_note(summary: dict[str, Any]) -> list[Block]:
    """Where a non-targeted UAP ended inside its budget (:func:`raylab.record.budget_used`): the paper's method's ε is
    chosen at one ζ, and at a larger one its passes may never reach the radius, so that rate is bounded by ε and the
    images, not by ζ: said, so that it is not read as what the budget allows."""
    short = [x for x in summary["cells"] if x["target"] is None and x.get("budget_used")
             and x["budget_used"]["mean"] < BUDGET_REACHED]
    if not short:
        return []
    cases = "; ".join(f"{'training' if x['source'] == 'train' else x['source']} images, {METHOD_NAMES[x['method']]}, ζ = {100 * x['zeta']:g} % "
                      f"({100 * x['budget_used']['mean']:.0f} % of the radius)" for x in short)
    return [("p", f"**Budget not reached**: these UAPs end inside their budget, bounded by their step (chosen at ζ = "
                  f"{100 * summary['config']['zeta']:g} %) and the passes over the images rather than by ζ, so their "
                  f"rate is not what that ζ allows: {cases}.")]


def blocks(summary: dict[str, Any], figures: dict[str, bytes]) -> list[Block]:
    """The report's content, in order."""
    c, plan, check = summary["config"], summary["plan"], summary["check"]
    names, z = summary["class_names"], c["zeta"]
    nat = summary["natural"]
    out: list[Block] = [("h1", f"raylab audit: {Path(summary['model']).name}")]
    if check.get("warning"):
        out.append(("warning", check["warning"]))
    out.append(("verdict", verdict(summary)))
    out.append(("p", f"Model {summary['model']} ({summary['arch']}, {summary['image_size']} px), medical data "
                     f"{c['medical']}, UAPs from {nat['images']} natural images of {nat['location']}"
                     + _unused(nat)
                     + f" and {summary['train_images']} of the model's training images; budget `{c['budget']}` "
                     f"({plan['seeds']} seeds per UAP, ζ grid {', '.join(f'{100 * x:g} %' for x in plan['zetas'])}). "
                     f"Protocol of Minagi, Hirano & Takemoto (J. Imaging 2022), Sections 2.2–2.3."))
    out.append(("h2", "Findings"))
    out.append(("list", findings(summary)))
    out.append(("h2", "The model on clean test images"))
    out.append(("p", f"Clean accuracy {100 * check['clean_accuracy']:.1f} %, balanced accuracy "
                     f"{100 * check['balanced_accuracy']:.1f} %; always answering the most frequent class scores "
                     f"{100 * check['majority_accuracy']:.1f} % ({check['test_images']} test images)."))
    out.append(("table", ["class", "recall", "share called so"],
                [[n, f"{100 * check['class_accuracy'].get(n, float('nan')):.1f} %",
                  f"{100 * check['clean_label_composition'].get(n, 0):.1f} %"] for n in names]))
    out.append(("h2", "Non-targeted UAPs"))
    out.append(("figure", "curves.png", "R_f against ζ; natural images and the model's own training images (the upper "
                                        "reference), random noise of the same norm (the lower reference)"))
    ms = methods(summary)
    header = ["ζ"] + [f"{s}, {m}" for s in ("natural", "train") for m in ms] + ["random noise"]
    table = []
    h = headline(summary)
    for zz in plan["zetas"]:
        row = [f"{100 * zz:g} %"] + [pct((cell(summary, s, m, zz) or {}).get("rate")) for s in ("natural", "train") for m in ms]
        table.append(row + [pct((cell(summary, "natural", h["method"], zz) or {}).get("random"))])
    out.append(("table", header, table))
    out += _budget_note(summary)
    kept = [(s, m, x) for s in ("natural", "train") for m in ms if (x := cell(summary, s, m, z)) and x.get("kept")]
    if kept:
        out.append(("p", f"Seed by seed at ζ = {100 * z:g} %: each UAP's R_f on the test images and on the validation "
                         "images; the seed kept is the one with the highest validation R_f (the test split never "
                         "chooses)."))
        out.append(_seed_table(["images", "method"], [([SOURCE_NAMES[s], METHOD_NAMES[m]], x) for s, m, x in kept], "R_f"))
    if "examples.png" in figures:
        out.append(("figure", "examples.png", f"the headline UAP ({METHOD_NAMES[h['method']]}, seed {h['kept']['seed']}, "
                                              "kept on validation) on test images"))
    if "targeted.png" in figures:
        out.append(("h2", "Targeted UAPs"))
        out.append(("figure", "targeted.png", f"R_s toward each class at ζ = {100 * z:g} %"))
        header = ["target", "called so without a UAP"] + [f"{s}, {m}" for s in ("natural", "train") for m in ms] + ["random noise"]
        rows = []
        for n in names:
            b = best_targeted(summary, n)
            if b is None:
                continue
            rows.append([n, f"{100 * check['clean_label_composition'].get(n, 0):.1f} %"]
                        + [pct((cell(summary, s, m, z, n) or {}).get("rate")) for s in ("natural", "train") for m in ms]
                        + [pct(b["random"])])
        out.append(("table", header, rows))
        kept_t = [(n, s, m, x) for n in names for s in ("natural", "train") for m in ms
                  if (x := cell(summary, s, m, z, n)) and x.get("kept")]
        if kept_t:
            out.append(("p", "Seed by seed: each targeted UAP's R_s toward its class on the test images and on the "
                             "validation images; the seed kept is the one with the highest validation R_s."))
            out.append(_seed_table(["target", "images", "method"],
                                   [([n, SOURCE_NAMES[s], METHOD_NAMES[m]], x) for n, s, m, x in kept_t], "R_s"))
    out.append(("h2", "Which labels the model gives natural images"))
    out.append(("figure", "composition.png", "predicted-label composition of the natural, training and test images"))
    out.append(("h2", "Each method's step and p, chosen on validation"))
    out.append(("p", f"Chosen by the paper's grid search (Section 2.2) at ζ = {100 * z:g} %, each candidate a UAP per "
                     f"seed from the audit's own images, scored by its mean R_f (± sd over the seeds) on "
                     f"{summary['validation']}; never on the test split."))
    sel_rows = []
    for key, sel in summary["selected"].items():
        source, method = key.split("/")
        step = f"ε = {sel['eps']:g}" if method == "paper" else f"lr = {sel['lr']:g}"
        grid = "; ".join(f"p={g['p']}, {'ε' if method == 'paper' else 'lr'}={g['eps'] if method == 'paper' else g['lr']:g}: "
                         f"{100 * g['val_fooling_rate']:.1f} %" + (f" ± {100 * g['val_fooling_rate_sd']:.1f}"
                                                                     if "val_fooling_rate_sd" in g else "")
                         for g in sel["grid"])
        sel_rows.append([SOURCE_NAMES[source], METHOD_NAMES[method], f"{step}, p = {sel['p']}", grid])
    out.append(("table", ["images", "method", "chosen", "validation R_f of the grid"], sel_rows))
    out.append(("p", f"Every UAP is one row of the Parquet results at {summary['results']} (sweep {summary['sweep']}); "
                     f"the numbers above are in audit.json. Building the {summary['uaps']} UAPs took "
                     f"{summary['uap_seconds'] / 60:.1f} min; this run of the audit {summary.get('seconds', 0) / 60:.1f} min "
                     "(a resumed audit does not redo the UAPs it finds)."))
    return out


def render_audit(out: str | Path, summary: dict[str, Any]) -> Path:
    """Write ``<out>/report/``: ``report.html`` (self-contained), ``report.md`` and its PNGs; returns the HTML's path."""
    out = Path(out)
    dest = Store.at(out / "report")
    figures = {"curves.png": curves_png(summary), "composition.png": composition_png(summary)}
    targeted = targeted_png(summary)
    if targeted is not None:
        figures["targeted.png"] = targeted
    if Store.at(out).exists("kept-examples.png"):  # the UAP the verdict quotes (raylab.audit.summary.draw_kept)
        figures["examples.png"] = Store.at(out).read_bytes("kept-examples.png")
    for name, data in figures.items():
        dest.write_bytes(name, data)
    content = blocks(summary, figures)
    dest.write_text("report.md", to_markdown(content))
    dest.write_text("report.html", to_html(content, figures))
    return Path(dest.path("report.html"))
