"""The Deep Compression pipeline: prune (+retrain) -> share (+fine-tune) -> encode.

Each stage maps (model, context) to a model and returns a JSON-able record for the
report. After each stage the model is written as a plain checkpoint into a work folder
beside the output (``OUT.work/``), atomically, followed by the stage's record: a killed
run resumes (``resume=True``) from the last finished stage and, training being seeded,
reaches the same result. The state a later stage needs is recovered from the plain
weights alone: pruned = exactly 0.0, shared = at most 2^b distinct values per layer.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from . import __version__
from .checkpoint import load_checkpoint, load_tensors, save_checkpoint
from .compressed import CompressedTensor, DenseTensor, SharedTensor, SparseTensor
from .data import Dataset
from .errors import ConfigError
from .io_utils import atomic_write_bytes, check_output_file
from .post_training import compress_tensors  # noqa: F401  (moved; re-exported for callers)
from .recipes import EncodeConfig, PruneConfig, Recipe, ShareConfig
from .train import TrainConfig, default_train_config, evaluate, fit
from .workdir import work_dir

WEIGHT_LAYERS = (nn.Linear, nn.Conv2d, nn.Conv1d)


@dataclass
class Context:
    """What every stage may use: the data (None = no retraining), device, base training."""

    data: Dataset | None
    train_cfg: TrainConfig
    device: str = "cpu"
    progress: bool = True
    retrain: bool = True


@dataclass
class RunState:
    """What the encode stage needs to know about earlier stages, per weight tensor."""

    pruned: list[str] = field(default_factory=list)
    shared_bits: dict[str, int] = field(default_factory=dict)
    binary: list[str] = field(default_factory=list)
    half_scales: bool = False


def _layer_kind(module: nn.Module) -> str:
    return "conv" if isinstance(module, (nn.Conv2d, nn.Conv1d)) else "fc"


def weight_layers(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, WEIGHT_LAYERS) and n}


def check_patterns(patterns, layers: dict[str, nn.Module]) -> None:
    """A per-layer pattern that matches no layer is a typo, never silently unused."""
    for pat in patterns:
        if not any(fnmatch.fnmatchcase(n, pat) for n in layers):
            raise ConfigError(f"layer pattern {pat!r} matches no layer; layers are {', '.join(layers)}")


def per_layer(model: nn.Module, patterns: dict[str, Any], default_fc, default_conv) -> dict[str, Any]:
    """Value per weight layer: the first matching pattern, else the fc / conv default."""
    layers = weight_layers(model)
    check_patterns(patterns, layers)
    out = {}
    for name, mod in layers.items():
        hit = next((v for p, v in patterns.items() if fnmatch.fnmatchcase(name, p)), None)
        out[name] = hit if hit is not None else (default_conv if _layer_kind(mod) == "conv" else default_fc)
    return out


# ---------------------------------------------------------------- stages
def run_prune(model: nn.Module, cfg: PruneConfig, ctx: Context, state: RunState) -> dict:
    from .prune import GlobalMagnitude, StdThreshold, iterative_prune, prune_model, remove_masks, sparsity_report

    if cfg.method == "std":
        target: Any = StdThreshold(cfg.q)
        overrides = {p: StdThreshold(v) for p, v in cfg.layers.items()}
    elif cfg.method == "global":
        target, overrides = GlobalMagnitude(cfg.sparsity), dict(cfg.layers)
    else:
        target, overrides = cfg.sparsity, dict(cfg.layers)
    if overrides:
        plan = per_layer(model, overrides, target, target)
        for pat in cfg.exclude:
            plan = {n: v for n, v in plan.items() if not fnmatch.fnmatchcase(n, pat)}
        target = plan
    exclude = list(cfg.exclude) or None
    if ctx.retrain and ctx.data is not None and cfg.retrain_epochs > 0:
        train_cfg = ctx.train_cfg.replace(l2=cfg.l2)
        rep = iterative_prune(model, ctx.data, target, rounds=cfg.rounds, train_cfg=train_cfg,
                              lr_scale=cfg.lr_factor, epochs_per_round=cfg.retrain_epochs,
                              final_epochs=None if cfg.final_epochs < 0 else cfg.final_epochs,
                              exclude=None if isinstance(target, dict) else exclude,
                              device=ctx.device, progress=ctx.progress, evaluate_rounds=False)
        rounds = [r.__dict__ for r in rep.rounds]
    else:
        if isinstance(target, dict):
            prune_model(model, None, overrides=target)
        else:
            prune_model(model, target, exclude=exclude)
        rounds = []
    rows = [r.as_dict() for r in sparsity_report(model)]
    remove_masks(model)
    state.pruned = [f"{n}.weight" for n, m in weight_layers(model).items() if bool((m.weight == 0).any())]
    return {"rounds": rounds, "layers": rows}


def run_share(model: nn.Module, cfg: ShareConfig, ctx: Context, state: RunState) -> dict:
    from .quantize.share import share_weights, strip

    bits = per_layer(model, cfg.layers, cfg.fc_bits, cfg.conv_bits)
    layer_rows = share_weights(model, bits=bits, init=cfg.init, seed=ctx.train_cfg.seed)
    if ctx.retrain and ctx.data is not None and cfg.finetune_epochs > 0:
        from .quantize.share import finetune_filter

        fit(model, ctx.data, ctx.train_cfg.replace(lr=ctx.train_cfg.lr * cfg.lr_factor, epochs=cfg.finetune_epochs,
                                                   weight_decay=0.0),
            device=ctx.device, param_filter=finetune_filter(model), eval_each_epoch=False,
            progress=ctx.progress, desc="centroid fine-tuning")
    strip(model)
    state.shared_bits = {f"{n}.weight": b for n, b in bits.items()}
    return {"layers": [r if isinstance(r, dict) else r.as_dict() for r in layer_rows]}


def run_binary(model: nn.Module, cfg, ctx: Context, state: RunState) -> dict:
    from .quantize.binary import export_binary

    state.binary = sorted(export_binary(model))
    state.half_scales = cfg.half_scales
    if not state.binary:
        raise ConfigError("recipe 'binary' needs a model with binary layers (e.g. lenet5-bwn, lenet5-xnor)")
    return {"layers": state.binary}


STAGE_FUNCS = {"prune": run_prune, "share": run_share, "binary": run_binary}


# ---------------------------------------------------------------- encoding
def shared_from_values(weight: np.ndarray, bits: int, sparse: bool) -> SharedTensor:
    """Recover (codebook, indices) from a plain weight holding at most 2^bits distinct values."""
    mask = weight != 0 if sparse else None
    vals = weight[mask] if sparse else weight.ravel()
    codebook, indices = np.unique(vals, return_inverse=True)
    if len(codebook) > 2 ** bits:
        raise ConfigError(f"weight has {len(codebook)} distinct values, more than 2^{bits}: not a shared weight")
    if len(codebook) == 0:
        codebook = np.zeros(1, np.float32)
    width = np.uint8 if bits <= 8 else np.uint16
    return SharedTensor(tuple(weight.shape), codebook.astype(np.float32), indices.astype(width).ravel(), bits, mask)


def to_compressed(model: nn.Module, state: RunState, *, share: bool = True) -> dict[str, CompressedTensor]:
    """Every state_dict tensor as the encoding its stages earned (``share=False``: stop at pruning)."""
    binary = {}
    if state.binary:
        from .quantize.binary import export_binary

        binary = {n: replace(t, half_scales=state.half_scales) for n, t in export_binary(model).items()}
    out: dict[str, CompressedTensor] = {}
    for name, t in model.state_dict().items():
        arr = t.detach().cpu().numpy()
        if name in binary:
            out[name] = binary[name]
        elif share and name in state.shared_bits:
            out[name] = shared_from_values(arr.astype(np.float32), state.shared_bits[name], name in state.pruned)
        elif name in state.pruned:
            mask = arr != 0
            out[name] = SparseTensor(tuple(arr.shape), mask, arr[mask].astype(np.float32))
        else:
            out[name] = DenseTensor(arr if arr.dtype != np.float64 else arr.astype(np.float32))
    return out


def index_bits_for(model_layers: dict[str, nn.Module], cfg: EncodeConfig) -> dict[str, int]:
    out = {}
    for name, mod in model_layers.items():
        hit = next((v for p, v in cfg.layers.items() if fnmatch.fnmatchcase(name, p)), None)
        out[f"{name}.weight"] = hit or (cfg.conv_index_bits if _layer_kind(mod) == "conv" else cfg.fc_index_bits)
    return out


def search_index_bits(tensors: dict[str, CompressedTensor], index_bits: dict[str, int], metadata: dict,
                      huffman: bool) -> dict[str, int]:
    """Per sparse tensor, the gap width in 3..8 whose encoding is smallest (measured)."""
    best = dict(index_bits)
    for name, t in tensors.items():
        if getattr(t, "mask", None) is None:
            continue
        sizes = {w: archive_size({name: t}, metadata, {name: w}, huffman) for w in range(3, 9)}
        best[name] = min(sizes, key=lambda w: (sizes[w], w))
    return best


def halve_dense(tensors: dict[str, CompressedTensor]) -> dict[str, CompressedTensor]:
    return {n: DenseTensor(t.array, half=True) if isinstance(t, DenseTensor) and t.array.dtype == np.float32 else t
            for n, t in tensors.items()}


def write(path: Path, tensors: dict[str, CompressedTensor], metadata: dict, index_bits: dict[str, int],
          huffman: bool) -> int:
    from .format import write_archive

    return write_archive(path, tensors, metadata, index_bits=index_bits, huffman=huffman)


def archive_size(tensors, metadata, index_bits, huffman: bool) -> int:
    """The real size in bytes of an archive of ``tensors``: written to a temp file and measured."""
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "rung.nsk"
        write(p, tensors, metadata, index_bits, huffman)
        return p.stat().st_size


# ---------------------------------------------------------------- the run
def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def compress_checkpoint(
    input_path: str | os.PathLike,
    output: str | os.PathLike,
    recipe: Recipe,
    *,
    data: Dataset | None,
    device: str = "cpu",
    retrain: bool = True,
    resume: bool = False,
    progress: bool = True,
    plots: str | os.PathLike | None = None,
    keep_work: bool = False,
) -> dict[str, Any]:
    """Run ``recipe`` on an nnshrink checkpoint and write the archive; returns the report."""
    input_path, output = Path(input_path), Path(output)
    if plots:
        check_output_file(plots, force=True)  # a bad plot path fails now, not after the long work
    model, meta = load_checkpoint(input_path)
    for patterns in (recipe.prune.layers, recipe.share.layers, recipe.encode.layers):
        check_patterns(patterns, weight_layers(model))  # before OUT.work/ exists
    if recipe.retrains and retrain and data is None:
        raise ConfigError(f"recipe {recipe.name!r} retrains, which needs --dataset NAME "
                          "(or pass --no-retrain to compress without retraining)")
    ctx = Context(data=data, train_cfg=default_train_config(meta["model"]), device=device, progress=progress,
                  retrain=retrain)
    run_id = {"input_sha256": _sha(input_path), "recipe": recipe.as_dict(), "retrain": retrain,
              "dataset": data.name if data else None, "nnshrink_version": __version__}
    with work_dir(output, run_id, resume=resume, keep=keep_work) as work:
        return _run_stages(model, meta, recipe, ctx, input_path, output, work, resume=resume, plots=plots)


def _run_stages(model, meta, recipe, ctx, input_path, output, work, *, resume, plots) -> dict[str, Any]:
    """The stage loop, the encode step and the report, with ``work`` held for checkpoints."""
    data, device = ctx.data, ctx.device
    t_start = time.perf_counter()
    dense_weights = {n: m.weight.detach().numpy().copy() for n, m in weight_layers(model).items()}
    top1_before = evaluate(model, data, device=device) if data is not None else None
    state = RunState()
    stages: list[dict] = []
    rungs = []
    snapshots: dict[str, dict[str, np.ndarray]] = {}
    meta_small = {"model": meta["model"], "config": meta["config"], "nnshrink_version": __version__,
                  "info": {"dataset": data.name if data else meta["info"].get("dataset"), "recipe": recipe.name},
                  "report": {}}
    model_layers = weight_layers(model)
    idx_bits = index_bits_for(model_layers, recipe.encode)
    for i, stage in enumerate(s for s in recipe.stages if s != "encode"):
        ckpt, record_path = work / f"{i + 1}-{stage}.safetensors", work / f"{i + 1}-{stage}.json"
        if resume and record_path.is_file() and ckpt.is_file():
            record = json.loads(record_path.read_text())
            model, _ = load_checkpoint(ckpt)
            record["resumed"] = True
        else:
            t0 = time.perf_counter()
            details = STAGE_FUNCS[stage](model, getattr(recipe, stage), ctx, state)
            top1 = evaluate(model, data, device=device) if data is not None else None
            record = {"stage": stage, "seconds": time.perf_counter() - t0, "top1": top1, "details": details,
                      "state": state.__dict__.copy()}
            save_checkpoint(model, ckpt, meta["model"], meta["config"], info={"stage": stage})
            atomic_write_bytes(record_path, json.dumps(record).encode())
        state = RunState(**record["state"])
        stages.append(record)
        tensors = to_compressed(model, state, share=stage != "prune")
        rung_name = {"prune": "pruned", "share": "pruned+shared" if state.pruned else "shared",
                     "binary": "binary"}[stage]
        rungs.append({"rung": rung_name, "bytes": archive_size(tensors, meta_small, idx_bits, False),
                      "top1": record["top1"]})
        snapshots[stage] = {n: m.weight.detach().numpy().copy() for n, m in weight_layers(model).items()}

    t0 = time.perf_counter()
    tensors = to_compressed(model, state)
    if recipe.encode.half_dense:
        tensors = halve_dense(tensors)
    if recipe.encode.search_index_bits:
        idx_bits = search_index_bits(tensors, idx_bits, meta_small, recipe.encode.huffman)
    write(output, tensors, meta_small, idx_bits, recipe.encode.huffman)
    encode_s = time.perf_counter() - t0
    from .format import read_archive
    from .runtime.decode import load_archive_model

    archive = read_archive(output)
    compressed_bytes = output.stat().st_size
    top1_after = None
    if data is not None:
        decoded, _ = load_archive_model(output)
        top1_after = evaluate(decoded, data, device=device)
    original_bytes = 4 * sum(int(np.prod(t.shape)) for t in model.state_dict().values())
    rungs.insert(0, {"rung": "dense", "bytes": original_bytes, "top1": top1_before})
    rungs.append({"rung": "+Huffman" if recipe.encode.huffman else "archive", "bytes": compressed_bytes,
                  "top1": top1_after})
    for r in rungs:
        r["ratio"] = original_bytes / r["bytes"]
    stages.append({"stage": "encode", "seconds": encode_s, "top1": top1_after})
    report = {
        "input": str(input_path), "output": str(output), "model": meta["model"], "recipe": recipe.as_dict(),
        "dataset": data.name if data else None,
        "original_bytes": original_bytes, "compressed_bytes": compressed_bytes,
        "ratio": original_bytes / compressed_bytes, "top1_before": top1_before, "top1_after": top1_after,
        "top1_drop_points": None if top1_after is None else 100 * (top1_before - top1_after),
        "ladder": rungs, "stages": [{k: v for k, v in s.items() if k != "state"} for s in stages],
        "layers": archive.layer_rows() if hasattr(archive, "layer_rows") else [r.as_dict() for r in archive.records],
        "seconds": time.perf_counter() - t_start,
    }
    if plots:
        from .report import plot_weights

        plot_weights(plots, dense_weights, snapshots.get("prune"), snapshots.get("share"),
                     title=f"{meta['model']}: weights through the pipeline")
        report["plot"] = str(plots)
    return report
