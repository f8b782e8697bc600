"""``nnshrink bench``: dense vs sparse vs codebook (vs binary) inference latency on CPU.

Per fc layer and for the whole model, median of interleaved repeats after warm-up,
as ratios against the FLOAT model measured in the same run (thread CPU time when single-
threaded, see ``runtime.timing``). For a binary net that is the float network of the same
architecture (``float_twin``), not the slow float emulation of the binary layers, which is
a column of its own (``float_emulation``); ``LEGEND`` says what every column is. The
compressed weights come from an .nsk archive (sparse, shared or binary records), or (for a
model name or a checkpoint) from an in-process magnitude prune to ``--sparsity`` plus
linear-init k-means to 2**bits centroids.
"""

from __future__ import annotations

import os
import sys

from ._common import add_force_arg, add_json_arg, add_max_elements_arg, check_outputs, emit_json


def register(sub) -> None:
    p = sub.add_parser("bench", help="dense vs sparse vs codebook (vs binary) CPU inference latency")
    p.add_argument("input", nargs="?", default=None,
                   help="an .nsk archive: time it whole as loaded with runtime dense / compressed / auto, "
                        "with resident weight bytes (default batches 1,64 and threads 1,all)")
    p.add_argument("--model", default="lenet300", help="model name, checkpoint (.safetensors) or archive (.nsk)")
    p.add_argument("--sparsity", type=float, default=0.91, help="pruned fraction for in-process compression")
    p.add_argument("--bits", type=int, default=5, help="codebook bits (1..8) for in-process compression")
    p.add_argument("--batch", default="1,64", help="comma-separated batch sizes")
    p.add_argument("--threads", default=None,
                   help="torch threads: a count (default 1), or for an archive INPUT a list such as '1,all' "
                        "(its default)")
    p.add_argument("--repeats", type=int, default=9, help="timed repeats per variant (median; >= 3)")
    add_max_elements_arg(p)
    add_json_arg(p)
    add_force_arg(p)
    p.set_defaults(func=run)


def _batches(text: str) -> list[int]:
    from ..errors import ConfigError

    try:
        out = [int(b) for b in text.split(",") if b.strip()]
    except ValueError:
        raise ConfigError(f"--batch must be comma-separated positive integers; got {text!r}") from None
    if not out or min(out) < 1:
        raise ConfigError(f"--batch must be comma-separated positive integers; got {text!r}")
    return out


def compress_linears(model, sparsity: float, bits: int) -> tuple[dict, dict]:
    """Magnitude-prune and k-means-share every plain nn.Linear weight of ``model`` IN PLACE.

    Returns ({name.weight: SparseTensor}, {name.weight: SharedTensor}); afterwards the
    model's dense weights equal the shared ones, so all variants compute one function.
    """
    import numpy as np
    import torch
    import torch.nn as nn

    from ..compressed import SharedTensor, SparseTensor
    from ..quantize.kmeans import kmeans_1d

    sparse, shared = {}, {}
    for name, mod in model.named_modules():
        if type(mod) is not nn.Linear:  # binary layers etc. keep their own weights
            continue
        w = mod.weight.detach().to("cpu", torch.float32).numpy().copy()
        keep = max(1, int(round(w.size * (1.0 - sparsity))))
        thresh = np.partition(np.abs(w).reshape(-1), w.size - keep)[w.size - keep]
        mask = np.abs(w) >= thresh
        cb, labels = kmeans_1d(w[mask], 2 ** bits, init="linear")
        labels = labels.astype(np.uint8)
        key = f"{name}.weight"
        shared[key] = SharedTensor(w.shape, cb.astype(np.float32), labels, bits, mask)
        sparse[key] = SparseTensor(w.shape, mask, cb.astype(np.float32)[labels])
        with torch.no_grad():
            mod.weight.copy_(torch.from_numpy(shared[key].to_dense()))
    return sparse, shared


def _load(args):
    """(dense model, {name: CompressedTensor}, input shape, source description)."""
    from ..errors import ConfigError
    from ..loading import is_archive, load_model
    from ..models import build_model, get_spec, model_names

    src = args.model
    if os.path.isfile(src) and is_archive(src):
        from ..format import read_archive

        model, meta = load_model(src, max_elements=args.max_elements)
        tensors = read_archive(src, max_elements=args.max_elements).tensors
        name = meta.get("model") or meta.get("model_name")
        shape = tuple(get_spec(name).input_shape) if name in model_names() else None
        return model, tensors, shape, f"archive {src}"
    if not 0.0 <= args.sparsity < 1.0:
        raise ConfigError(f"sparsity must be in [0, 1); got {args.sparsity}")
    if not 1 <= args.bits <= 8:
        raise ConfigError(f"bits must be in 1..8; got {args.bits}")
    if os.path.isfile(src):
        from ..checkpoint import load_checkpoint

        model, meta = load_checkpoint(src)
        name = meta.get("model") or meta.get("model_name")
        shape = tuple(get_spec(name).input_shape) if name in model_names() else None
        what = f"checkpoint {src}"
    elif src in model_names():
        model, shape, what = build_model(src), tuple(get_spec(src).input_shape), f"model {src} (random init)"
    else:
        raise ConfigError(f"--model must be a model name ({', '.join(model_names())}), a checkpoint "
                          f"or an .nsk archive; got {src!r}")
    sparse, shared = compress_linears(model.eval(), args.sparsity, args.bits)
    tensors = {k: ("sparse", sparse[k], shared[k]) for k in sparse}
    return model, tensors, shape, what + f", pruned to {args.sparsity:.0%} and shared to {args.bits} bits in-process"


# What each column is; every speed-up is the dense column's time over the column's time.
LEGEND = {
    "dense": "the float model in plain torch layers: the baseline of every speed-up",
    "sparse": "its pruned / shared Linear layers run from CSR by nnshrink's sparse kernel",
    "codebook": "its shared Linear layers run from codes + codebook by nnshrink's codebook kernel",
    "binary": "the binary net deployed: XNOR layers bit-packed (XNOR + popcount kernels), BWN layers decoded "
              "to float",
    "float_emulation": "the binary net as trained: its binary layers emulated in float (sign and scale on "
                       "every call); slow by construction, not a deployment",
}
DENSE_OF_BINARY = ("the float model of the same architecture (each binary layer a plain float layer of the same "
                   "shape) in plain torch layers: the baseline of every speed-up")


def float_twin(model):
    """``model`` with every binary layer replaced by a plain float layer of the same shape:
    the float network a binary net is measured against (``model`` itself when it has no
    binary layers). Its weights are the binarised ones; timing does not depend on them."""
    import copy

    from ..quantize.binary import binary_layers
    from ..runtime.binary_infer import _dense_twin

    names = list(binary_layers(model))
    if not names:
        return model
    twin = copy.deepcopy(model).eval()
    modules = dict(twin.named_modules())
    for name in names:
        parent, _, attr = name.rpartition(".")
        setattr(modules[parent], attr, _dense_twin(modules[name]))
    return twin


def _split(model, tensors: dict) -> tuple[dict, dict]:
    """({name: SparseTensor-or-SharedTensor for SparseLinear}, {name: SharedTensor for
    CodebookLinear}), for the plain nn.Linear layers of ``model`` only."""
    import torch.nn as nn

    from ..compressed import SharedTensor, SparseTensor

    modules = dict(model.named_modules())
    for_sparse, for_codebook = {}, {}
    for k, t in tensors.items():
        if type(modules.get(k.removesuffix(".weight"))) is not nn.Linear or not k.endswith(".weight"):
            continue
        if isinstance(t, tuple):
            for_sparse[k], for_codebook[k] = t[1], t[2]
        elif isinstance(t, SparseTensor):
            for_sparse[k] = t
        elif isinstance(t, SharedTensor):
            for_sparse[k] = for_codebook[k] = t
    return for_sparse, for_codebook


def _binary_model(model, tensors):
    """The bit-packed model of the XNOR runtime, or (None, why)."""
    try:
        from ..runtime.binary_infer import pack_model
    except ImportError:
        return None, "nnshrink.runtime.binary_infer not available"
    from ..compressed import BinaryTensor

    bins = {k: t for k, t in tensors.items() if isinstance(t, BinaryTensor)}
    try:
        packed = pack_model(model, bins or None)
    except Exception as e:  # noqa: BLE001 - optional comparison; report why it was skipped
        return None, f"pack_model failed: {e}"
    if packed is model or all(type(a) is type(b) for a, b in zip(model.modules(), packed.modules())):
        return None, "model has no binary layers"
    return packed, None


def run(args) -> int:
    from ..errors import ConfigError
    from ._bench_runtime import thread_counts

    threads = thread_counts(args.threads or ("1,all" if args.input else "1"))
    if args.repeats < 3:
        raise ConfigError(f"--repeats must be >= 3; got {args.repeats}")
    batches = _batches(args.batch)
    check_outputs(args)
    os.environ["NUMBA_NUM_THREADS"] = str(max(threads))
    if args.input is not None:
        return _run_archive(args, batches, threads)
    if len(threads) != 1:
        raise ConfigError(f"--threads takes one count with --model; got {args.threads!r}")
    args.threads = threads[0]

    import torch

    from ..runtime.swap import accelerate
    from ..runtime.timing import pick_clock, time_interleaved

    torch.set_num_threads(args.threads)
    model, tensors, in_shape, source = _load(args)
    model = model.eval()
    base = float_twin(model)  # the float model every column is measured against
    is_binary = base is not model
    for_sparse, for_codebook = _split(base, tensors)
    skipped = {}
    sparse_model = accelerate(base, for_sparse, sparse_linear_for_shared=True) if for_sparse else None
    codebook_model = accelerate(base, for_codebook) if for_codebook else None
    if not for_sparse:
        skipped["sparse"] = "no sparse or shared Linear weights"
    if not for_codebook:
        skipped["codebook"] = "no shared Linear weights"
    binary_model, skipped["binary"] = _binary_model(model, tensors)
    if sparse_model is None and binary_model is None:
        raise ConfigError(f"{args.model}: nothing compressed to run (no sparse or shared Linear weights, "
                          "no binary layers)")

    def sub(m, name):
        return m.get_submodule(name) if m is not None else None

    layers, whole = [], []
    with torch.no_grad():
        for key in for_sparse:
            name = key[: -len(".weight")]
            dense = base.get_submodule(name)
            for b in batches:
                x = torch.randn(b, dense.in_features)
                fns = {"dense": lambda d=dense, x=x: d(x), "sparse": lambda m=sub(sparse_model, name), x=x: m(x)}
                if key in for_codebook:
                    fns["codebook"] = lambda m=sub(codebook_model, name), x=x: m(x)
                layers.append(_row(name, b, time_interleaved(fns, repeats=args.repeats),
                                   shape=list(dense.weight.shape)))
        if in_shape is not None:
            for b in batches:
                x = torch.randn(b, *in_shape)
                ref = base(x)
                fns = {"dense": lambda x=x: base(x)}
                for k, m in (("sparse", sparse_model), ("codebook", codebook_model), ("binary", binary_model),
                             ("float_emulation", model if is_binary else None)):
                    if m is not None:
                        fns[k] = lambda x=x, m=m: m(x)
                for k in ("sparse", "codebook"):
                    if k in fns and not torch.allclose(fns[k](), ref, rtol=1e-3, atol=1e-3):
                        raise ConfigError(f"{k} model output disagrees with the dense model; please report")
                whole.append(_row("model", b, time_interleaved(fns, repeats=args.repeats)))
    present = {k for row in layers + whole for k in row["median_us"]}
    columns = {k: (DENSE_OF_BINARY if k == "dense" and is_binary else text)
               for k, text in LEGEND.items() if k in present}
    report = {"source": source, "threads": args.threads, "repeats": args.repeats, "batches": batches,
              "clock": pick_clock(), "columns": columns,
              "skipped": {k: v for k, v in skipped.items() if v and k not in present},
              "binary_skipped": skipped["binary"], "layers": layers, "model": whole}
    if args.json is not None:
        emit_json(report, args.json, force=args.force)
        if args.json != "-":
            _print(report)
    else:
        _print(report)
    return 0


def _run_archive(args, batches, threads) -> int:
    from ..errors import ConfigError
    from ..loading import is_archive
    from ..io_utils import check_input_file
    from ._bench_runtime import bench_archive, print_report

    path = str(check_input_file(args.input, ConfigError))
    if not is_archive(path):
        raise ConfigError(f"bench FILE takes an .nsk archive; {path!r} is not one (use --model for a checkpoint)")
    rep = bench_archive(path, batches, threads, args.repeats, args.max_elements)
    if args.json is not None:
        emit_json(rep, args.json, force=args.force)
    if args.json != "-":
        print_report(rep)
    return 0


def _row(name, batch, med, **extra) -> dict:
    return {"name": name, "batch": batch, **extra, "median_us": {k: v * 1e6 for k, v in med.items()},
            "speedup_vs_dense": {k: med["dense"] / v for k, v in med.items() if k != "dense"}}


def _print(report) -> None:
    out = sys.stdout
    clock = "thread CPU time" if report["clock"] == "thread" else "wall time"
    out.write(f"{report['source']}\n{report['threads']} thread(s), {clock}, median of {report['repeats']} "
              "interleaved repeats after warm-up\n")
    out.write(f"{'layer':<12} {'batch':>5} {'dense us':>10}   speed-up vs dense (dense time / column time)\n")
    for row in report["layers"] + report["model"]:
        sp = "  ".join(f"{k} x{v:.2f}" for k, v in row["speedup_vs_dense"].items())
        out.write(f"{row['name']:<12} {row['batch']:>5} {row['median_us']['dense']:>10.1f}   {sp}\n")
    write_legend(out, report["columns"], report["skipped"])


def write_legend(out, columns: dict[str, str], skipped: dict[str, str]) -> None:
    """What each speed-up column is, and which were skipped and why (both bench tables)."""
    width = max(map(len, columns))
    out.write("columns:\n")
    for k, text in columns.items():
        out.write(f"  {k:<{width}}  {text}\n")
    for k, why in skipped.items():
        out.write(f"  {k:<{width}}  skipped ({why})\n")
