"""``nnshrink inspect``: the per-layer table of Deep Compression for an .nsk archive."""

from __future__ import annotations

from ..format.errors import printable
from ._common import add_force_arg, add_json_arg, check_outputs, emit_json


def register(sub) -> None:
    p = sub.add_parser("inspect", help="per-layer sizes of an .nsk archive (kept %%, bits, bytes, ratio)")
    p.add_argument("input", help="archive (.nsk)")
    p.add_argument("--header", action="store_true",
                   help="print the archive's JSON header (validated; inflated for format 2) instead of the table")
    add_json_arg(p)
    add_force_arg(p)
    p.set_defaults(func=run)


def summarize(archive) -> dict:
    """The JSON report: per layer and totals. ``original_bytes`` counts each tensor in the
    dtype it decodes to (an int64 tensor 8 bytes per element); ``percent_of_float32`` is
    given for float tensors only (None for integer and bool ones); ``compressed_bytes``
    is the real file size."""
    from ..sizes import dtype_bytes, is_float_dtype

    layers = []
    for r in archive.records:
        dtype = r.get("dtype", "float32")
        own = r["params"] * dtype_bytes(dtype)
        f32 = 4 * r["params"] if is_float_dtype(dtype) else None
        layers.append({**r, "kept": r["nonzero"] / r["params"] if r["params"] else 0.0,
                       "original_bytes": own, "percent_of_original": 100.0 * r["bytes"] / own if own else 0.0,
                       "float32_bytes": f32, "percent_of_float32": 100.0 * r["bytes"] / f32 if f32 else None})
    for l in layers:
        l["auto_runtime"] = _auto_runtime(l)
    original = sum(l["original_bytes"] for l in layers)
    params = sum(l["params"] for l in layers)
    nonzero = sum(l["nonzero"] for l in layers)
    info = archive.metadata.get("info")
    return {"input": archive.source, "model": archive.metadata.get("model"),
            "class": info.get("class") if isinstance(info, dict) else None,
            "source": info.get("source") if isinstance(info, dict) else None, "layers": layers,
            "params": params, "nonzero": nonzero, "original_bytes": original,
            "record_bytes": sum(l["bytes"] for l in layers), "compressed_bytes": archive.file_bytes,
            "format_version": getattr(archive, "version", None), "header_bytes": getattr(archive, "header_bytes", None),
            "ratio": original / archive.file_bytes if archive.file_bytes else 0.0}


def _auto_runtime(layer: dict) -> str | None:
    """What ``runtime="auto"`` would run this weight as, judged from the header alone:
    4-D weights as Conv2d, 2-D ones as Linear (an Embedding table is told apart only once
    the model is loaded). None for tensors that stay as they are (raw, binary, biases)."""
    if layer["encoding"] not in ("sparse_f32", "shared") or len(layer["shape"]) not in (2, 4):
        return None
    from ..runtime.swap import auto_rule

    kind = "conv2d" if len(layer["shape"]) == 4 else "linear"
    why = auto_rule(kind, tuple(layer["shape"]), int(layer["nonzero"]), layer["encoding"] == "shared")
    return ("codebook" if layer["encoding"] == "shared" else "sparse") if why is None else f"dense ({why})"


def _what(rep: dict) -> str:
    """What the archive holds: a zoo model, the user's own class, or plain tensors."""
    if rep["model"]:
        return f"model {printable(rep['model'])}"
    if rep["class"]:
        return f"class {printable(rep['class'])}"
    if rep["source"]:
        return f"tensors of {printable(rep['source'])} (post-training)"
    return "tensors (no model named)"


def format_table(rep: dict) -> str:
    from ..report import name_width, ratio_text, short_name

    w = name_width((l["name"] for l in rep["layers"]), "layer")
    head = (f"{'layer':<{w}} {'shape':<18} {'dtype':<8} {'weights':>10} {'kept':>7} {'enc':<10} {'w bits':>11} "
            f"{'idx bits':>11} {'bytes':>10} {'% orig':>7} {'% f32':>7}")
    lines = [f"{printable(rep['input'])}: {_what(rep)}", head, "-" * len(head)]
    for l in rep["layers"]:
        wb, ib = l["weight_bits"], l["index_bits"]
        f32 = "-" if l["percent_of_float32"] is None else f"{l['percent_of_float32']:.2f}%"
        lines.append(f"{short_name(l['name']):<{w}} {'x'.join(map(str, l['shape'])) or '()':<18} "
                     f"{l.get('dtype', '-'):<8} {l['params']:>10} {100 * l['kept']:>6.1f}% {l['encoding']:<10} "
                     f"{wb['before']:>3}->{wb['after']:<6.2f} {ib['before']:>3}->{ib['after']:<6.2f} {l['bytes']:>10} "
                     f"{l['percent_of_original']:>6.2f}% {f32:>7}")
    lines.append("-" * len(head))
    kept = 100 * rep["nonzero"] / rep["params"] if rep["params"] else 0.0
    pct = 100 * rep["compressed_bytes"] / rep["original_bytes"] if rep["original_bytes"] else 0.0
    lines.append(f"{'total':<{w}} {'':<18} {'':<8} {rep['params']:>10} {kept:>6.1f}% "
                 f"tensors {rep['original_bytes']} B (own dtypes) -> file {rep['compressed_bytes']} B "
                 f"({pct:.2f}%, {ratio_text(rep['original_bytes'], rep['compressed_bytes'])})")
    auto = [f"{short_name(l['name'])} {l['auto_runtime']}" for l in rep["layers"] if l.get("auto_runtime")]
    if auto:
        lines.append("runtime auto (4-D weights as Conv2d, 2-D as Linear): " + ", ".join(auto))
    return "\n".join(lines)


def run(args) -> int:
    from ..format import open_archive

    check_outputs(args)
    with open_archive(args.input) as archive:  # header only: O(header) memory whatever the records claim
        if args.header:
            import json

            print(json.dumps(archive.header, indent=1))
            return 0
        rep = summarize(archive)
    if args.json:
        emit_json(rep, args.json, force=args.force)
    if args.json != "-":
        print(format_table(rep))
    return 0
