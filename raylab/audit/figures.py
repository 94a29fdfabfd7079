"""The audit report's figures, as PNG bytes: R_f over ζ, R_s toward each class, the predicted-label composition."""

from __future__ import annotations

from typing import Any

from ..figures import png_bytes
from .verdict import METHOD_NAMES, SOURCE_NAMES, best_targeted, cell, headline, methods, norm_name


def curves_png(summary: dict[str, Any]) -> bytes:
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


def targeted_png(summary: dict[str, Any]) -> bytes | None:
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
    rnd = [(best_targeted(summary, n) or {}).get("random") for n in names]
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


def composition_png(summary: dict[str, Any]) -> bytes:
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
