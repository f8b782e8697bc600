"""Reports: deterministic text tables, the paper's reference figures, and PNG plots."""

from __future__ import annotations

import os
from typing import Any, Iterable, Mapping

import numpy as np

# Deep Compression (Han, Mao, Dally 2016), Tables 1-3: error before -> after, size, ratio,
# and per layer kept %, weight bits (P+Q), index bits, % of original after P+Q+H.
PAPER = {
    "lenet300": {"net": "LeNet-300-100", "error_before": 1.64, "error_after": 1.58, "kb_before": 1070,
                 "kb_after": 27, "ratio": 40,
                 "layers": {"ip1": (8, 6, 5, 2.32), "ip2": (9, 6, 5, 3.04), "ip3": (26, 6, 5, 12.70)}},
    "lenet5": {"net": "LeNet-5", "error_before": 0.80, "error_after": 0.74, "kb_before": 1720, "kb_after": 44,
               "ratio": 39,
               "layers": {"conv1": (66, 8, None, 67.45), "conv2": (12, 8, None, 5.28), "ip1": (8, 5, None, 2.45),
                          "ip2": (19, 5, None, 6.13)}},
}


def _fmt(v, spec: str, empty: str = "-") -> str:
    return empty if v is None else format(v, spec)



def _bits(v) -> str:
    """'before->after' for {before, after} bit counts (after = with Huffman), '-' for none."""
    if not v or not v.get("before"):
        return "-"
    return f"{v['before']:g}->{v['after']:.2f}"


def layer_table(layers: Iterable[Mapping[str, Any]], model: str | None = None) -> str:
    """The paper's per-layer table (bits before -> after Huffman), the paper's row beside ours."""
    paper = PAPER.get(model or "", {}).get("layers", {})
    lines = [f"{'tensor':<14} {'params':>9} {'kept %':>7} {'weight bits':>12} {'index bits':>11} {'bytes':>8} "
             f"{'% of f32':>8}  paper (kept %, weight bits, % after P+Q+H)"]
    for row in layers:
        name = row["name"]
        ref = paper.get(name.rsplit(".", 1)[0]) if name.endswith(".weight") else None
        ref_s = "" if ref is None else f"{ref[0]}%, {ref[1]} bits, {ref[3]}%"
        pct = 100 * row["bytes"] / max(4 * row["params"], 1)
        lines.append(f"{name:<14} {row['params']:>9,} {100 * row['nonzero'] / max(row['params'], 1):>7.1f} "
                     f"{_bits(row.get('weight_bits')):>12} {_bits(row.get('index_bits')):>11} {row['bytes']:>8,} "
                     f"{pct:>8.2f}  {ref_s}".rstrip())
    return "\n".join(lines)


def ladder_table(rungs: Iterable[Mapping[str, Any]]) -> str:
    """dense -> pruned -> pruned+shared -> +Huffman, like the paper's AlexNet ladder."""
    lines = [f"{'rung':<22} {'bytes':>10} {'ratio':>8} {'top-1':>8}"]
    for r in rungs:
        lines.append(f"{r['rung']:<22} {r['bytes']:>10,} {r['ratio']:>7.1f}x {_fmt(r.get('top1'), '.4f'):>8}")
    return "\n".join(lines)


def paper_comparison(rows: Iterable[Mapping[str, Any]]) -> str:
    """Side by side with the paper's Table 1 (MNIST there, our dataset here)."""
    lines = [f"{'network':<15} {'':<8} {'error before':>12} {'error after':>12} {'size before':>12} "
             f"{'size after':>11} {'ratio':>7}"]
    for r in rows:
        p = PAPER.get(r["model"])
        lines.append(f"{(p or {}).get('net', r['model']):<15} {'nnshrink':<8} {100 * (1 - r['top1_before']):>11.2f}% "
                     f"{100 * (1 - r['top1_after']):>11.2f}% {r['original_bytes'] / 1000:>9.0f} KB "
                     f"{r['compressed_bytes'] / 1000:>8.1f} KB {r['ratio']:>6.1f}x")
        if p:
            lines.append(f"{'':<15} {'paper':<8} {p['error_before']:>11.2f}% {p['error_after']:>11.2f}% "
                         f"{p['kb_before']:>9} KB {p['kb_after']:>8} KB {p['ratio']:>6}x")
    return "\n".join(lines)


def plot_weights(path: str | os.PathLike, dense: Mapping[str, np.ndarray], pruned: Mapping[str, np.ndarray] | None,
                 shared: Mapping[str, np.ndarray] | None, title: str = "") -> None:
    """One row per layer: weights before pruning, after pruning, after sharing (centroids marked)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dense)
    cols = 1 + (pruned is not None) + (shared is not None)
    fig, axes = plt.subplots(len(names), cols, figsize=(4 * cols, 2.4 * len(names)), squeeze=False)
    for i, name in enumerate(names):
        w = dense[name].ravel()
        panels = [("dense", w, None)]
        if pruned is not None:
            p = pruned[name].ravel()
            panels.append(("pruned (nonzero)", p[p != 0], None))
        if shared is not None:
            s = shared[name].ravel()
            s = s[s != 0]
            panels.append(("shared (centroids)", s, np.unique(s)))
        for j, (label, values, cents) in enumerate(panels):
            ax = axes[i][j]
            ax.hist(values, bins=120, color="tab:blue", alpha=0.8)
            if cents is not None:
                for c in cents:
                    ax.axvline(c, color="tab:red", lw=0.5, alpha=0.6)
            ax.set_title(f"{name}: {label}", fontsize=8)
            ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
