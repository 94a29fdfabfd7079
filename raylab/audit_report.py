"""The audit's report: a verdict a reviewer can quote, findings worded from the numbers, figures, tables.

Rendered from :func:`raylab.audit.summarize`'s summary (``audit.json``) as one self-contained HTML page (its
figures inline as data URIs, no external file or address) and as Markdown with PNGs beside it. The content is one
list of blocks (:func:`blocks`), written out by :mod:`raylab.page`, so the two never disagree.

Every sentence that compares two numbers is chosen by the comparison (:func:`raylab.spread.clearly_above`: the difference
exceeds both spreads and 2 points), never worded the same whatever the outcome.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .page import Block, to_html, to_markdown
from .plots import png_bytes
from .record import BUDGET_REACHED
from .spread import clearly_above
from .store import Store

METHOD_NAMES = {"paper": "the paper's method", "sgd": "the stochastic-gradient method"}
SOURCE_NAMES = {"natural": "natural images", "train": "the model's training images"}


def pct(stats: dict[str, float] | None) -> str:
    """``41.2 % ± 3.1 %`` (mean ± sd over seeds)."""
    if stats is None:
        return "–"
    return f"{100 * stats['mean']:.1f} % ± {100 * stats['sd']:.1f} %"


def norm_name(p: str) -> str:
    return "L2" if str(p) == "2" else "L∞"


def cell(summary: dict[str, Any], source: str, method: str, zeta: float, target: str | None = None) -> dict[str, Any] | None:
    for c in summary["cells"]:
        if (c["source"], c["method"], c["zeta"], c["target"]) == (source, method, zeta, target):
            return c
    return None


def methods(summary: dict[str, Any]) -> list[str]:
    return list(summary["config"]["methods"])


def headline(summary: dict[str, Any]) -> dict[str, Any]:
    """The natural-image, non-targeted cell at the verdict's ζ of the stronger method (the higher mean R_f)."""
    z = summary["config"]["zeta"]
    found = [c for c in (cell(summary, "natural", m, z) for m in methods(summary)) if c is not None]
    return max(found, key=lambda c: c["rate"]["mean"])


def one(rate: float) -> str:
    """``52.9 %`` (one UAP's rate)."""
    return f"{100 * rate:.1f} %"


def _kept(h: dict[str, Any]) -> str:
    """``, and the strongest of the 3, kept on validation, flips 52.9 %`` (nothing for a summary without it)."""
    kept = h.get("kept")
    return "" if kept is None else f", and the strongest of the {h['rate']['n']}, kept on validation, flips {one(kept['rate'])}"


def verdict(summary: dict[str, Any]) -> str:
    """The one line to quote: natural-image R_f at the headline ζ (the mean over seeds, and the strongest seed kept on
    validation) beside random noise of the same size."""
    h = headline(summary)
    z, n = summary["config"]["zeta"], h["rate"]["n"]
    budget = f"{norm_name(h['p'])} ζ = {100 * z:g} %"
    how = f"{METHOD_NAMES[h['method']]}, mean ± sd over {n} seeds"
    if clearly_above(h["rate"], h["random"]):
        return (f"Natural-image UAPs at {budget} flip {pct(h['rate'])} of test diagnoses{_kept(h)}; random noise of the "
                f"same size flips {pct(h['random'])} ({how}).")
    return (f"Natural-image UAPs at {budget} flip {pct(h['rate'])} of test diagnoses{_kept(h)}, not clearly more than "
            f"random noise of the same size ({pct(h['random'])}): no natural-image vulnerability found at this budget "
            f"({how}).")


def findings(summary: dict[str, Any]) -> list[str]:
    """What the numbers say, each sentence worded from its own comparison."""
    out: list[str] = []
    z, h = summary["config"]["zeta"], headline(summary)
    at = f"ζ = {100 * z:g} %"
    ms = methods(summary)
    if len(ms) == 2:
        a, b = (cell(summary, "natural", m, z) for m in ms)
        assert a is not None and b is not None
        if clearly_above(a["rate"], b["rate"]) or clearly_above(b["rate"], a["rate"]):
            strong, weak = (a, b) if a["rate"]["mean"] > b["rate"]["mean"] else (b, a)
            out.append(f"{METHOD_NAMES[strong['method']].capitalize()} is the stronger attack on this model: natural-image "
                       f"R_f {pct(strong['rate'])} against {pct(weak['rate'])} for {METHOD_NAMES[weak['method']]} at {at}; "
                       "the verdict reports the stronger.")
        else:
            out.append(f"The two methods are about as strong here: natural-image R_f {pct(a['rate'])} "
                       f"({METHOD_NAMES[a['method']]}) and {pct(b['rate'])} ({METHOD_NAMES[b['method']]}) at {at}.")
    if h.get("kept") is not None:
        out.append(_seeds_finding(h, at))
    train = cell(summary, "train", h["method"], z)
    if train is not None:
        if clearly_above(train["rate"], h["rate"]):
            out.append(f"UAPs from the model's own training images (the upper reference) are stronger: R_f {pct(train['rate'])} "
                       f"against {pct(h['rate'])} from natural images, as in the paper.")
        else:
            out.append(f"Natural-image UAPs are as strong as UAPs from the model's own training images here: R_f "
                       f"{pct(h['rate'])} against {pct(train['rate'])} (the paper found training images stronger).")
    curve = sorted((c["zeta"], c) for c in summary["cells"]
                   if c["source"] == "natural" and c["method"] == h["method"] and c["target"] is None)
    if len(curve) >= 2:
        (z0, lo), (z1, hi) = curve[0], curve[-1]
        grows = "grows" if clearly_above(hi["rate"], lo["rate"]) else "does not clearly grow"
        out.append(f"Natural-image R_f {grows} with the budget: {pct(lo['rate'])} at ζ = {100 * z0:g} %, "
                   f"{pct(hi['rate'])} at ζ = {100 * z1:g} % ({METHOD_NAMES[h['method']]}).")
    if curve:
        out.append(_ceiling(summary, *curve[-1]))
    out += _targeted_findings(summary)
    return out


def _seeds_finding(h: dict[str, Any], at: str) -> str:
    """Seed by seed at the headline ζ: does the mean under-state the strongest UAP an attacker would keep?"""
    kept, rates = h["kept"], h["per_seed"]
    each = ", ".join(one(r) for r in rates)
    keep = (f"the one that fools the most validation images (seed {kept['seed']}, {one(kept['val_rate'])} of them) flips "
            f"{one(kept['rate'])} of test diagnoses")
    if kept["rate"] - h["rate"]["mean"] >= 0.02:  # under 2 points is never a difference (spread.clearly_above)
        return (f"The seeds' UAPs differ ({METHOD_NAMES[h['method']]} at {at}, test R_f {each}): {keep}, so the mean "
                f"under-states an attacker who makes {len(rates)} UAPs and keeps the best on a few labelled images.")
    return (f"Keeping the best of the seeds' UAPs on validation ({METHOD_NAMES[h['method']]} at {at}, test R_f {each}) "
            f"adds nothing to the mean here: {keep}.")


def _ceiling(summary: dict[str, Any], zeta: float, c: dict[str, Any]) -> str:
    """Where the largest ζ's R_f stands against the most a UAP that sends every image to one class can flip."""
    clean = summary["check"]["clean_label_composition"]
    least = min(clean, key=lambda n: clean[n])
    ceiling, rate = 1 - clean[least], c["rate"]["mean"]
    where = ("reaches" if rate >= ceiling - 0.01 else f"is {100 * rate / ceiling:.0f} % of") if ceiling > 0 else "is beside"
    return (f"At ζ = {100 * zeta:g} % natural-image R_f ({100 * rate:.1f} %) {where} the {100 * ceiling:.1f} % that a UAP "
            f"sending every test image to one class can flip at most (sending them all to {least}, which the model "
            f"gives {100 * clean[least]:.1f} % of them clean).")


def _best_targeted(summary: dict[str, Any], name: str) -> dict[str, Any] | None:
    z = summary["config"]["zeta"]
    found = [c for c in (cell(summary, "natural", m, z, name) for m in methods(summary)) if c is not None]
    return max(found, key=lambda c: c["rate"]["mean"]) if found else None


def _unused(nat: dict[str, Any]) -> str:
    """`` (3 unreadable skipped; 20 lost in 2 failed shards)``: the natural images listed that no UAP saw."""
    parts = [f"{nat['skipped']} unreadable skipped"] if nat["skipped"] else []
    if nat.get("lost"):  # audits before 2026-12 recorded no lost images
        parts.append(f"{nat['lost']} lost in {nat['shards_failed']} failed shard(s)")
    return f" ({'; '.join(parts)})" if parts else ""


def _against_clean(rate: dict[str, float], share: float, name: str) -> str:
    """A targeted R_s beside the share of test images the model calls ``name`` with no perturbation at all, which R_s
    counts too (Section 2.3): a UAP that does not clearly exceed it moves nothing toward its target."""
    if clearly_above(rate, {"mean": share, "sd": 0.0, "n": 1}):
        return f"{100 * share:.1f} % are called {name} without any perturbation"
    return (f"no more than the {100 * share:.1f} % called {name} without any perturbation: on balance these UAPs do "
            f"not move test images toward it")


def _targeted_findings(summary: dict[str, Any]) -> list[str]:
    names = summary["class_names"]
    best = {n: c for n in names if (c := _best_targeted(summary, n)) is not None}
    if not best:
        return []
    out = []
    clean = summary["check"]["clean_label_composition"]
    # R_s counts the images already called the target (Section 2.3), so targets are ranked by how far R_s rises
    # above that share: by R_s alone, the class most test images already have came first even when no image moved
    rise = {n: best[n]["rate"]["mean"] - clean.get(n, 0) for n in best}
    easiest = max(best, key=rise.__getitem__)
    e = best[easiest]
    moved = "pushes" if clearly_above(e["rate"], e["random"]) else "does not clearly push"
    strongest = ("" if e.get("kept") is None else
                 f", the strongest of the {e['rate']['n']}, kept on validation, {one(e['kept']['rate'])}")
    out.append(f"The easiest target is {easiest} (R_s furthest above the share called so without a perturbation): a "
               f"natural-image UAP {moved} test images to it beyond random noise (R_s {pct(e['rate'])}{strongest}; "
               f"random {pct(e['random'])}; {_against_clean(e['rate'], clean.get(easiest, 0), easiest)}).")
    if len(best) > 1:
        hardest = min(best, key=rise.__getitem__)
        h = best[hardest]
        out.append(f"The hardest target is {hardest} (R_s least above that share): R_s {pct(h['rate'])} (random "
                   f"{pct(h['random'])}; {_against_clean(h['rate'], clean.get(hardest, 0), hardest)}).")
    comp = summary["composition"]["natural"]
    top = max(comp, key=lambda n: comp[n])
    relation = ("the easiest target is that class, as the paper's Tables S1–S3 explain" if top == easiest
                else f"yet the easiest target is {easiest}, so the composition does not explain it here")
    out.append(f"The model calls {100 * comp[top]:.1f} % of the natural images {top}; {relation}.")
    return out


# --------------------------------------------------------------------------- figures


def _fig_curves(summary: dict[str, Any]) -> bytes:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    styles = {("natural", "paper"): ("C1", "-o"), ("natural", "sgd"): ("C3", "-s"),
              ("train", "paper"): ("C0", "--o"), ("train", "sgd"): ("C2", "--s")}
    for (source, method), (color, style) in styles.items():
        pts = sorted((c["zeta"], c["rate"]) for c in summary["cells"]
                     if c["source"] == source and c["method"] == method and c["target"] is None)
        if pts:
            ax.errorbar([100 * z for z, _ in pts], [100 * r["mean"] for _, r in pts], yerr=[100 * r["sd"] for _, r in pts],
                        fmt=style, color=color, capsize=3, label=f"{SOURCE_NAMES[source]}, {METHOD_NAMES[method]}")
    h = headline(summary)
    pts = sorted((c["zeta"], c["random"]) for c in summary["cells"]
                 if c["source"] == "natural" and c["method"] == h["method"] and c["target"] is None)
    ax.errorbar([100 * z for z, _ in pts], [100 * r["mean"] for _, r in pts], yerr=[100 * r["sd"] for _, r in pts],
                fmt="k:.", capsize=3, label="random noise of the same norm")
    ax.axvline(100 * summary["config"]["zeta"], color="grey", lw=0.8, alpha=0.5)
    ax.set_xlabel(f"ζ (%, {norm_name(h['p'])})")
    ax.set_ylabel("fooling rate R_f (%)")
    ax.set_title(f"Non-targeted UAPs (mean ± sd over {h['rate']['n']} seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
    fig.tight_layout()
    return png_bytes(fig, dpi=100)


def _fig_targeted(summary: dict[str, Any]) -> bytes | None:
    import matplotlib.pyplot as plt

    names, z = summary["class_names"], summary["config"]["zeta"]
    series = [(s, m) for s in ("natural", "train") for m in methods(summary)
              if any(cell(summary, s, m, z, n) for n in names)]
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(max(6.4, 1.4 * len(names) + 2), 5.0))
    width = 0.8 / (len(series) + 1)
    for i, (s, m) in enumerate(series):
        cs = [cell(summary, s, m, z, n) for n in names]
        ax.bar([k + i * width for k in range(len(names))], [100 * c["rate"]["mean"] if c else 0 for c in cs], width,
               yerr=[100 * c["rate"]["sd"] if c else 0 for c in cs], capsize=2, label=f"{SOURCE_NAMES[s]}, {METHOD_NAMES[m]}")
    rnd = [(_best_targeted(summary, n) or {}).get("random") for n in names]
    ax.bar([k + len(series) * width for k in range(len(names))], [100 * r["mean"] if r else 0 for r in rnd], width,
           color="grey", label="random noise")
    clean = summary["check"]["clean_label_composition"]
    ax.scatter([k + 0.4 - width / 2 for k in range(len(names))], [100 * clean.get(n, 0) for n in names], marker="_", s=600,
               color="k", zorder=5, label="share called so without a UAP")
    ax.set_xticks([k + 0.4 - width / 2 for k in range(len(names))], names, fontsize=8)
    ax.set_ylabel("success rate R_s (%)")
    ax.set_title(f"Targeted UAPs toward each class at ζ = {100 * z:g} %")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2)  # below: bars reach the top
    fig.tight_layout()
    return png_bytes(fig, dpi=100)


def _fig_composition(summary: dict[str, Any]) -> bytes:
    import matplotlib.pyplot as plt

    names = summary["class_names"]
    rows = [("natural images", summary["composition"]["natural"]), ("training images", summary["composition"]["train"]),
            ("test images (clean)", summary["check"]["clean_label_composition"])]
    fig, ax = plt.subplots(figsize=(6.4, 0.6 * len(rows) + 1.6 + 0.2 * ((len(names) + 3) // 4)))
    left = [0.0] * len(rows)
    for k, n in enumerate(names):
        vals = [100 * comp.get(n, 0) for _, comp in rows]
        ax.barh([r for r, _ in rows], vals, left=left, color=f"C{k}", label=n)
        left = [a + b for a, b in zip(left, vals)]
    ax.set_xlabel("share of the images the model gives each label (%)")
    ax.set_xlim(0, 100)
    ax.set_title("Predicted-label composition (the paper's Tables S1–S3)")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.24), ncol=min(len(names), 4))  # below the bars
    fig.tight_layout()
    return png_bytes(fig, dpi=100)


# --------------------------------------------------------------------------- the content


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
            b = _best_targeted(summary, n)
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
    figures = {"curves.png": _fig_curves(summary), "composition.png": _fig_composition(summary)}
    targeted = _fig_targeted(summary)
    if targeted is not None:
        figures["targeted.png"] = targeted
    if Store.at(out).exists("kept-examples.png"):  # the UAP the verdict quotes (raylab.audit.draw_kept)
        figures["examples.png"] = Store.at(out).read_bytes("kept-examples.png")
    for name, data in figures.items():
        dest.write_bytes(name, data)
    content = blocks(summary, figures)
    dest.write_text("report.md", to_markdown(content))
    dest.write_text("report.html", to_html(content, figures))
    return Path(dest.path("report.html"))
