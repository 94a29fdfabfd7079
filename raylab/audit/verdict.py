"""The audit's words: a verdict a reviewer can quote (:func:`verdict`) and findings worded from the numbers
(:func:`findings`), from :func:`raylab.audit.summary.summarize`'s summary (``audit.json``).

Every sentence that compares two numbers is chosen by the comparison (:func:`raylab.spread.clearly_above`: the
difference exceeds both spreads and 2 points), never worded the same whatever the outcome.
"""

from __future__ import annotations

from typing import Any

from ..spread import clearly_above

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


def best_targeted(summary: dict[str, Any], name: str) -> dict[str, Any] | None:
    """The natural-image UAP toward class ``name`` at the verdict's ζ of the method with the higher mean R_s (None
    when the audit made none)."""
    z = summary["config"]["zeta"]
    found = [c for c in (cell(summary, "natural", m, z, name) for m in methods(summary)) if c is not None]
    return max(found, key=lambda c: c["rate"]["mean"]) if found else None


def _against_clean(rate: dict[str, float], share: float, name: str) -> str:
    """A targeted R_s beside the share of test images the model calls ``name`` with no perturbation at all, which R_s
    counts too (Section 2.3): a UAP that does not clearly exceed it moves nothing toward its target."""
    if clearly_above(rate, {"mean": share, "sd": 0.0, "n": 1}):
        return f"{100 * share:.1f} % are called {name} without any perturbation"
    return (f"no more than the {100 * share:.1f} % called {name} without any perturbation: on balance these UAPs do "
            f"not move test images toward it")


def _targeted_findings(summary: dict[str, Any]) -> list[str]:
    names = summary["class_names"]
    best = {n: c for n in names if (c := best_targeted(summary, n)) is not None}
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
