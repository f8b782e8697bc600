"""``nnshrink inspect``: the per-layer table of Deep Compression for an .nsk archive."""

from __future__ import annotations

from ..format.errors import printable
from ._common import emit_json


def register(sub) -> None:
    p = sub.add_parser("inspect", help="per-layer sizes of an .nsk archive (kept %%, bits, bytes, ratio)")
    p.add_argument("input", help="archive (.nsk)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def summarize(arch) -> dict:
    """The JSON report: per layer and totals; compressed_bytes is the real file size."""
    layers = []
    for r in arch.records:
        f32 = 4 * r["params"]
        layers.append({**r, "kept": r["nonzero"] / r["params"] if r["params"] else 0.0,
                       "float32_bytes": f32, "percent_of_float32": 100.0 * r["bytes"] / f32 if f32 else 0.0})
    original = sum(l["float32_bytes"] for l in layers)
    params = sum(l["params"] for l in layers)
    nonzero = sum(l["nonzero"] for l in layers)
    return {"input": arch.source, "model": arch.metadata.get("model"), "layers": layers,
            "params": params, "nonzero": nonzero, "original_bytes": original,
            "record_bytes": sum(l["bytes"] for l in layers), "compressed_bytes": arch.file_bytes,
            "ratio": original / arch.file_bytes if arch.file_bytes else 0.0}


def format_table(rep: dict) -> str:
    head = (f"{'layer':<28} {'shape':<18} {'weights':>10} {'kept':>7} {'enc':<10} {'w bits':>11} "
            f"{'idx bits':>11} {'bytes':>10} {'% f32':>7}")
    lines = [f"{printable(rep['input'])}: model {printable(rep['model'])}", head, "-" * len(head)]
    for l in rep["layers"]:
        wb, ib = l["weight_bits"], l["index_bits"]
        lines.append(f"{printable(l['name'])[:28]:<28} {'x'.join(map(str, l['shape'])) or '()':<18} {l['params']:>10} "
                     f"{100 * l['kept']:>6.1f}% {l['encoding']:<10} {wb['before']:>3}->{wb['after']:<6.2f} "
                     f"{ib['before']:>3}->{ib['after']:<6.2f} {l['bytes']:>10} {l['percent_of_float32']:>6.2f}%")
    lines.append("-" * len(head))
    kept = 100 * rep["nonzero"] / rep["params"] if rep["params"] else 0.0
    lines.append(f"{'total':<28} {'':<18} {rep['params']:>10} {kept:>6.1f}% "
                 f"float32 {rep['original_bytes']} B -> file {rep['compressed_bytes']} B "
                 f"({100 / rep['ratio'] if rep['ratio'] else 0:.2f}%, {rep['ratio']:.1f}x)")
    return "\n".join(lines)


def run(args) -> int:
    from ..format import open_archive

    with open_archive(args.input) as arch:  # header only: O(header) memory whatever the records claim
        rep = summarize(arch)
    if args.json:
        emit_json(rep, "-")
    else:
        print(format_table(rep))
    return 0
