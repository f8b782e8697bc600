"""``nnshrink bench FILE``: a real archive run the ways a user can load it, timed whole.

Columns: ``dense`` (the float model of the same architecture in plain torch layers: the
decoded weights, or for a binary net its float twin), ``decoded`` (binary nets only: the
archive decoded into its own layers, which emulate the binary ones in float),
``compressed`` (``nnshrink.load(..., runtime="compressed")``) and ``auto``. Every speed-up
is dense time / column time from one interleaved run, at each batch and thread count;
resident weight bytes are given per runtime with the auto rule's choice per layer.
"""

from __future__ import annotations

import os
import sys

LEGEND = {
    "dense": "the float model of the same architecture in plain torch layers (the decoded weights): the baseline",
    "decoded": "the archive decoded into the net's own layers (binary layers emulated in float)",
    "compressed": "nnshrink.load(..., runtime='compressed'): every pruned / shared / binary layer run from its "
                  "encoding",
    "auto": "nnshrink.load(..., runtime='auto'): a layer runs from its encoding where the measured rule says it pays",
}


def thread_counts(text: str) -> list[int]:
    """'1,all' -> [1, os.cpu_count()]."""
    from ..errors import ConfigError

    out = []
    for part in text.split(","):
        part = part.strip()
        if part == "all":
            out.append(os.cpu_count() or 1)
        elif part.isdigit() and int(part) >= 1:
            out.append(int(part))
        else:
            raise ConfigError(f"--threads must be comma-separated counts >= 1 or 'all'; got {text!r}")
    return list(dict.fromkeys(out))


def bench_archive(path: str, batches: list[int], threads: list[int], repeats: int, max_elements) -> dict:
    import torch

    from ..errors import ConfigError
    from ..format import read_archive
    from ..loading import load_model
    from ..models import get_spec, model_names
    from ..runtime.swap import accelerate, resident_weight_bytes
    from ..runtime.timing import time_interleaved
    from .bench import float_twin

    model, meta = load_model(path, max_elements=max_elements)
    name = meta.get("model")
    if name not in model_names():
        raise ConfigError(f"{path}: bench needs a model nnshrink builds (to know its input); got {name!r}")
    in_shape = tuple(get_spec(name).input_shape)
    tensors = read_archive(path, max_elements=max_elements).tensors
    model = model.eval()
    dense = float_twin(model).eval()
    variants = {"dense": dense}
    if dense is not model:
        variants["decoded"] = model
    skipped = {}
    for rt in ("compressed", "auto"):
        try:
            variants[rt] = accelerate(model, tensors, runtime=rt)
        except ConfigError as e:  # a layer with no kernel: compressed cannot run this archive
            skipped[rt] = str(e)
    rows = []
    with torch.no_grad():
        for t in threads:
            torch.set_num_threads(t)
            for b in batches:
                x = torch.randn(b, *in_shape)
                ref = variants.get("decoded", dense)(x)
                for k in ("compressed", "auto"):
                    if k in variants and not torch.allclose(variants[k](x), ref, rtol=1e-3, atol=1e-3):
                        raise ConfigError(f"{k} runtime output disagrees with the decoded model; please report")
                med = time_interleaved({k: (lambda m=m, x=x: m(x)) for k, m in variants.items()}, repeats=repeats)
                rows.append({"threads": t, "batch": b, "median_us": {k: v * 1e6 for k, v in med.items()},
                             "speedup_vs_dense": {k: med["dense"] / v for k, v in med.items() if k != "dense"}})
    return {"source": f"archive {path}", "model": name, "archive_bytes": os.path.getsize(path),
            "batches": batches, "threads": threads, "repeats": repeats,
            "clock": {t: ("thread" if t == 1 else "wall") for t in threads},
            "columns": {k: LEGEND[k] for k in variants}, "skipped": skipped,
            "resident_weight_bytes": {k: resident_weight_bytes(m) for k, m in variants.items()},
            "layers_runtime": {k: getattr(variants[k], "nnshrink_runtime", {}) for k in ("compressed", "auto")
                               if k in variants},
            "rows": rows}


def print_report(rep: dict, out=None) -> None:
    from .bench import write_legend

    out = sys.stdout if out is None else out
    out.write(f"{rep['source']} ({rep['model']}, {rep['archive_bytes']} bytes), median of {rep['repeats']} "
              "interleaved repeats (thread CPU time at 1 thread, wall time above)\n")
    res = rep["resident_weight_bytes"]
    out.write("resident weight bytes: " + ", ".join(f"{k} {v} ({v / res['dense']:.1%})" for k, v in res.items())
              + "\n")
    for rt, layers in rep["layers_runtime"].items():
        out.write(f"{rt}: " + ", ".join(f"{k} {v}" for k, v in layers.items()) + "\n")
    out.write(f"{'threads':>7} {'batch':>5} {'dense us':>10}   speed-up vs dense\n")
    for row in rep["rows"]:
        sp = "  ".join(f"{k} x{v:.2f}" for k, v in row["speedup_vs_dense"].items())
        out.write(f"{row['threads']:>7} {row['batch']:>5} {row['median_us']['dense']:>10.1f}   {sp}\n")
    write_legend(out, rep["columns"], rep["skipped"])
