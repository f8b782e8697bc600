"""Reports: deterministic text tables, the paper's reference figures, and PNG plots."""

from __future__ import annotations

import os
from typing import Any, Iterable, Mapping

import numpy as np

from .format.errors import printable
from .sizes import dtype_bytes

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


def ratio_text(original: int, compressed: int) -> str:
    """``original / compressed`` as "12.3x"; an output larger than its input says so
    (a 0.97 ratio must never read as "1.0x")."""
    if compressed <= 0:
        return "-"
    ratio = original / compressed
    return f"{ratio:.2f}x, LARGER than the input" if compressed > original else f"{ratio:.1f}x"


def growth_warning(original: int, compressed: int) -> str | None:
    """The report's warning for an output larger than its input (None when it is not)."""
    if compressed <= original:
        return None
    return (f"the output ({compressed:,} bytes) is larger than the input ({original:,} bytes): "
            "this compression gains nothing on this input")


def flag_growth(report: dict[str, Any]) -> dict[str, Any]:
    """Add ``growth_warning`` to ``report['warnings']`` (once) when the output grew."""
    text = growth_warning(report["original_bytes"], report["compressed_bytes"])
    warnings = report.setdefault("warnings", [])
    if text is not None and text not in warnings:
        warnings.append(text)
    return report


MAX_NAME = 80  # longer names are cut in the middle: both ends of a key say the most


def short_name(name: Any, limit: int = MAX_NAME) -> str:
    """A tensor name, escaped for the terminal and at most ``limit`` characters."""
    text = printable(name)
    if len(text) <= limit:
        return text
    head = (limit - 3) // 2
    return f"{text[:head]}...{text[len(text) - (limit - 3 - head):]}"


def name_width(names: Iterable[str], header: str) -> int:
    """The width of a name column: the longest (shortened) name, at least the header."""
    return max([len(header), *(len(short_name(n)) for n in names)])


def _bits(v) -> str:
    """'before->after' for {before, after} bit counts (after = with Huffman), '-' for none."""
    if not v or not v.get("before"):
        return "-"
    return f"{v['before']:g}->{v['after']:.2f}"


def layer_table(layers: Iterable[Mapping[str, Any]], model: str | None = None) -> str:
    """The paper's per-layer table (bits before -> after Huffman); the paper's own row
    beside ours only for the models the paper has (``PAPER``). "% of input" is the stored
    size against the tensor's own dtype (``sizes.dtype_bytes``), so integers count honestly."""
    layers = list(layers)
    paper = PAPER.get(model or "", {}).get("layers")
    w = name_width((row["name"] for row in layers), "tensor")
    head = (f"{'tensor':<{w}} {'params':>9} {'kept %':>7} {'weight bits':>12} {'index bits':>11} {'bytes':>8} "
            f"{'% of input':>10}")
    lines = [head + ("  paper (kept %, weight bits, % after P+Q+H)" if paper else "")]
    for row in layers:
        name = row["name"]
        ref = paper.get(name.rsplit(".", 1)[0]) if paper and name.endswith(".weight") else None
        ref_s = "" if ref is None else f"  {ref[0]}%, {ref[1]} bits, {ref[3]}%"
        own = row["params"] * dtype_bytes(row.get("dtype", "float32"))
        lines.append(f"{short_name(name):<{w}} {row['params']:>9,} "
                     f"{100 * row['nonzero'] / max(row['params'], 1):>7.1f} {_bits(row.get('weight_bits')):>12} "
                     f"{_bits(row.get('index_bits')):>11} {row['bytes']:>8,} {100 * row['bytes'] / max(own, 1):>10.2f}"
                     f"{ref_s}")
    return "\n".join(lines)


def ladder_table(rungs: Iterable[Mapping[str, Any]]) -> str:
    """dense -> pruned -> pruned+shared -> +Huffman, like the paper's AlexNet ladder; the
    first rung is the input, and a rung larger than it is marked."""
    rungs = list(rungs)
    original = rungs[0]["bytes"] if rungs else 0
    lines = [f"{'rung':<22} {'bytes':>10} {'ratio':>8} {'top-1':>8}"]
    for r in rungs:
        grew = r["bytes"] > original
        lines.append(f"{r['rung']:<22} {r['bytes']:>10,} {r['ratio']:>7.{2 if grew else 1}f}x "
                     f"{_fmt(r.get('top1'), '.4f'):>8}" + ("  LARGER than the input" if grew else ""))
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
