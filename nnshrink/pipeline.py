"""The stage loop, resume, the size ladder and the report: the same for every model.

``compress_model`` runs a recipe's stages (``nnshrink.stages``) on any nn.Module: each
stage leaves its compression inside the model and exports the encodings it earned; the
encodings of the last stage are what the archive stores (nothing is re-derived from the
final weights). After each stage its encodings are serialised once: the length is the
ladder's rung, and with a work folder the bytes are also its checkpoint, written
atomically with the stage's record, so a killed run resumes from the last finished stage
and, training being seeded, reaches the same result. ``compress_checkpoint`` is the zoo
and CLI path around it (a checkpoint in, an archive file out); ``nnshrink.compress`` the
library's.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from . import __version__
from .checkpoint import load_tensors
from .compressed import CompressedTensor, DenseTensor, SharedTensor, SparseTensor
from .data import Dataset
from .errors import ConfigError
from .io_utils import atomic_write_bytes
from .recipes import EncodeConfig, Recipe
from .stages import Context, export_all, fit_trainer, get_stage, top1_metric


# ---------------------------------------------------------------- encoding
def serialize_archive(tensors: dict[str, CompressedTensor], metadata: dict, index_bits: dict[str, int],
                      huffman: bool) -> bytes:
    """The archive of ``tensors`` as bytes (its length is the real file size)."""
    from .format import serialize

    return serialize(tensors, metadata, index_bits=index_bits, huffman=huffman)


def write(path: Path, tensors: dict[str, CompressedTensor], metadata: dict, index_bits: dict[str, int],
          huffman: bool) -> int:
    from .format import write_archive

    return write_archive(path, tensors, metadata, index_bits=index_bits, huffman=huffman)


def index_bits_for(model: nn.Module, cfg: EncodeConfig) -> dict[str, int]:
    """Relative-index width per compressible tensor: ``layers`` pattern, fc / conv
    setting, else ``select.DEFAULT_INDEX_BITS`` by kind."""
    from .select import DEFAULT_INDEX_BITS, compressible, resolve

    kinds = {**DEFAULT_INDEX_BITS,
             **{k: v for k, v in (("fc", cfg.fc_index_bits), ("conv", cfg.conv_index_bits)) if v}}
    return resolve(dict(cfg.layers) or None, compressible(model), lambda t: kinds[t.kind], what="encode.layers")


def has_targets(model: nn.Module) -> bool:
    from .select import compressible

    try:
        compressible(model)
    except ConfigError:
        return False
    return True


def search_index_bits(tensors: dict[str, CompressedTensor], index_bits: dict[str, int], metadata: dict,
                      huffman: bool) -> dict[str, int]:
    """Per sparse tensor, the gap width in 3..8 whose encoding is smallest (measured)."""
    best = dict(index_bits)
    for name, t in tensors.items():
        if getattr(t, "mask", None) is None:
            continue
        sizes = {w: len(serialize_archive({name: t}, metadata, {name: w}, huffman)) for w in range(3, 9)}
        best[name] = min(sizes, key=lambda w: (sizes[w], w))
    return best


def halve_dense(tensors: dict[str, CompressedTensor]) -> dict[str, CompressedTensor]:
    return {n: DenseTensor(t.array, half=True) if isinstance(t, DenseTensor) and t.array.dtype == np.float32 else t
            for n, t in tensors.items()}


# ---------------------------------------------------------------- work folder
def state_digest(model: nn.Module) -> str:
    """sha256 over the state_dict (names, dtypes, shapes, bytes): identifies a run's input."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class WorkFolder:
    """Per finished stage ``{i}-{stage}.nsk`` (its encodings) + ``.json`` (its record),
    beside ``run.json`` naming the run; a different run's folder is refused."""

    def __init__(self, path: str | os.PathLike, run_id: dict, *, resume: bool):
        self.path = Path(path)
        if self.path.exists() and (self.path / "run.json").exists():
            if not resume:
                raise ConfigError(f"{self.path} exists from an earlier run; pass --resume to continue it, "
                                  "or remove it")
            try:
                previous = json.loads((self.path / "run.json").read_text())
            except (OSError, json.JSONDecodeError):
                previous = None
            if previous != run_id:
                raise ConfigError(f"{self.path} belongs to a different run (input, recipe or data changed); "
                                  "remove it")
        else:
            self.path.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.path / "run.json", json.dumps(run_id, indent=1).encode())

    def _files(self, i: int, stage: str) -> tuple[Path, Path]:
        return self.path / f"{i + 1}-{stage}.nsk", self.path / f"{i + 1}-{stage}.json"

    def load(self, i: int, stage: str) -> tuple[dict, bytes] | None:
        blob_path, record_path = self._files(i, stage)
        if not (blob_path.is_file() and record_path.is_file()):
            return None
        return json.loads(record_path.read_text()), blob_path.read_bytes()

    def save(self, i: int, stage: str, blob: bytes, record: dict) -> None:
        blob_path, record_path = self._files(i, stage)
        atomic_write_bytes(blob_path, blob)
        atomic_write_bytes(record_path, json.dumps(record).encode())

    def remove(self) -> None:
        """Delete what this class wrote (never anything else a user keeps there)."""
        for p in list(self.path.glob("*-*.nsk")) + list(self.path.glob("*-*.json")) + [self.path / "run.json"]:
            p.unlink(missing_ok=True)
        try:
            self.path.rmdir()
        except OSError:
            pass


@torch.no_grad()
def restore(model: nn.Module, archive) -> None:
    """Put a finished stage's encodings back into ``model``: the decoded values, and the
    masks of sparse tensors, so the next stage sees what that stage left."""
    from .loading import load_into
    from .prune import apply_masks

    load_into(model, archive.dense_state(), source="work folder")
    masks = {n: torch.from_numpy(np.asarray(t.mask)) for n, t in archive.tensors.items()
             if isinstance(t, (SparseTensor, SharedTensor)) and t.mask is not None}
    if masks:
        apply_masks(model, masks)


# ---------------------------------------------------------------- the run
@dataclass
class Compressed:
    """A finished run: the archive's bytes, its encodings, and the report."""

    blob: bytes
    tensors: dict[str, CompressedTensor]
    report: dict[str, Any]


def _weights(model: nn.Module) -> dict[str, np.ndarray]:
    from .select import compressible

    state = model.state_dict()
    names = compressible(model) if has_targets(model) else []
    return {n: state[n].detach().to("cpu", torch.float32).numpy().copy() for n in names}


@torch.no_grad()
def _sync_lossy(model: nn.Module, tensors: dict[str, CompressedTensor]) -> None:
    """Tensors the encode step stored lossily (float16 dense) take their stored value in
    ``model``, so the model in hand computes what the archive decodes to."""
    state = model.state_dict()
    for name, t in tensors.items():
        if isinstance(t, DenseTensor) and t.half and name in state:
            state[name].copy_(torch.from_numpy(t.to_dense()))


def compress_model(model: nn.Module, recipe: Recipe, ctx: Context, *, metadata: dict[str, Any],
                   work: WorkFolder | None = None, snapshots: dict | None = None) -> Compressed:
    """Run ``recipe`` on ``model`` in place (compression stays installed in it); returns
    the archive bytes, encodings and report. ``snapshots``, when a dict, receives the
    compressible weights after each stage (for plots)."""
    from .format import parse_archive
    from .loading import load_into
    from .select import compressible

    t_start = time.perf_counter()
    if not all(get_stage(s).exclusive for s in recipe.compression_stages):
        compressible(model)  # a model with nothing to compress fails here, before any work
    original_bytes = 4 * sum(int(np.prod(t.shape)) for t in model.state_dict().values())
    pristine = copy.deepcopy(model) if ctx.metric is not None else None
    if snapshots is not None:
        snapshots["dense"] = _weights(model)
    top1_before = ctx.evaluate(model, "before compression")
    idx_bits = index_bits_for(model, recipe.encode) if has_targets(model) else {}
    records, rungs = [], []
    tensors: dict[str, CompressedTensor] | None = None
    for i, name in enumerate(recipe.compression_stages):
        stage, cfg = get_stage(name), getattr(recipe, name)
        done = work.load(i, name) if work is not None else None
        if done is not None:
            record, blob = done
            archive = parse_archive(blob, f"{work.path}/{i + 1}-{name}.nsk")
            restore(model, archive)
            tensors = archive.tensors
            record["resumed"] = True
        else:
            t0 = time.perf_counter()
            details = stage.apply(model, cfg, ctx)
            tensors = stage.export(model, cfg)
            record = {"stage": name, "seconds": time.perf_counter() - t0,
                      "top1": ctx.evaluate(model, f"after stage {name!r}"), "details": details}
            blob = serialize_archive(tensors, metadata, idx_bits, False)
            if work is not None:
                work.save(i, name, blob, record)
        records.append(record)
        rungs.append({"rung": stage.rung(tensors), "bytes": len(blob), "top1": record["top1"]})
        if snapshots is not None:
            snapshots[name] = {n: tensors[n].to_dense() for n in snapshots["dense"]}

    t0 = time.perf_counter()
    if tensors is None:  # a recipe of "encode" alone stores the model as it is
        tensors = export_all(model)
    if recipe.encode.half_dense:
        tensors = halve_dense(tensors)
    if recipe.encode.search_index_bits:
        idx_bits = search_index_bits(tensors, idx_bits, metadata, recipe.encode.huffman)
    blob = serialize_archive(tensors, metadata, idx_bits, recipe.encode.huffman)
    archive = parse_archive(blob, "<compressed>")
    _sync_lossy(model, tensors)
    encode_s = time.perf_counter() - t0
    top1_after = None
    if pristine is not None:  # measured FROM the archive: decoded into a copy of the input model
        top1_after = ctx.evaluate(load_into(pristine, archive.dense_state(), source="the archive"), "after encode")
    rungs.insert(0, {"rung": "dense", "bytes": original_bytes, "top1": top1_before})
    rungs.append({"rung": "+Huffman" if recipe.encode.huffman else "archive", "bytes": len(blob),
                  "top1": top1_after})
    for r in rungs:
        r["ratio"] = original_bytes / r["bytes"]
    records.append({"stage": "encode", "seconds": encode_s, "top1": top1_after})
    report = {
        "model": metadata.get("model") or (metadata.get("info") or {}).get("class"),
        "recipe": recipe.as_dict(), "defaults": recipe.defaults,
        "original_bytes": original_bytes, "compressed_bytes": len(blob), "ratio": original_bytes / len(blob),
        "top1_before": top1_before, "top1_after": top1_after,
        "top1_drop_points": None if top1_after is None or top1_before is None else 100 * (top1_before - top1_after),
        "ladder": rungs, "stages": records, "layers": archive.layer_rows(), "warnings": list(ctx.notes),
        "seconds": time.perf_counter() - t_start,
    }
    return Compressed(blob, dict(tensors), report)


def compress_to_file(model: nn.Module, output: str | os.PathLike, recipe: Recipe, ctx: Context, *,
                     metadata: dict[str, Any], run_id: dict, resume: bool = False,
                     plots: str | os.PathLike | None = None, keep_work: bool = False) -> dict[str, Any]:
    """``compress_model`` with the work folder ``OUTPUT.work/`` and the archive written
    atomically to ``output``; returns the report (with ``output`` and optional ``plot``)."""
    output = Path(output)
    work = WorkFolder(output.with_name(output.name + ".work"),
                      {**run_id, "state_sha256": state_digest(model), "recipe": recipe.as_dict(),
                       "nnshrink_version": __version__}, resume=resume)
    snapshots: dict | None = {} if plots else None
    done = compress_model(model, recipe, ctx, metadata=metadata, work=work, snapshots=snapshots)
    atomic_write_bytes(output, done.blob)
    report = {"output": str(output), **done.report}
    if plots:
        from .report import plot_weights

        plot_weights(plots, snapshots["dense"], snapshots.get("prune"), snapshots.get("share"),
                     title=f"{report['model']}: weights through the pipeline")
        report["plot"] = str(plots)
    if not keep_work:
        work.remove()
    return report


def archive_metadata(model_name: str | None, config: dict, info: dict) -> dict[str, Any]:
    return {"model": model_name, "config": config, "nnshrink_version": __version__, "info": info, "report": {}}


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
    """Run ``recipe`` on an nnshrink (zoo) checkpoint and write the archive; returns the
    report. Retraining is nnshrink's own ``fit`` with the model's training defaults."""
    from .checkpoint import load_checkpoint
    from .train import default_train_config

    model, meta = load_checkpoint(input_path)
    if recipe.retrains and retrain and data is None:
        raise ConfigError(f"recipe {recipe.name!r} retrains, which needs --dataset NAME "
                          "(or pass --no-retrain to compress without retraining)")
    train_cfg = default_train_config(meta["model"])
    ctx = Context(trainer=fit_trainer(data, train_cfg, device=device, progress=progress)
                  if retrain and data is not None else None,
                  metric=top1_metric(data, device=device) if data is not None else None,
                  device=device, progress=progress, seed=train_cfg.seed)
    metadata = archive_metadata(meta["model"], meta["config"],
                                {"dataset": data.name if data else meta["info"].get("dataset"),
                                 "recipe": recipe.name})
    report = compress_to_file(model, output, recipe, ctx, metadata=metadata,
                              run_id={"retrain": retrain, "dataset": data.name if data else None},
                              resume=resume, plots=plots, keep_work=keep_work)
    return {"input": str(input_path), "dataset": data.name if data else None, **report}


def compress_tensors(
    input_path: str | os.PathLike,
    output: str | os.PathLike,
    *,
    sparsity: float,
    bits: int | None,
    index_bits: int | None = None,
    huffman: bool = True,
    min_numel: int = 1024,
) -> dict[str, Any]:
    """Post-training compression of any safetensors file: per tensor, magnitude pruning to
    ``sparsity`` and k-means sharing at ``bits``; small or non-float tensors stay raw."""
    from .quantize.kmeans import kmeans_1d

    if not 0 <= sparsity < 1:
        raise ConfigError(f"sparsity must be in [0, 1); got {sparsity}")
    if bits is not None and not (isinstance(bits, int) and 1 <= bits <= 8):
        raise ConfigError(f"bits must be an integer in 1..8; got {bits}")
    input_path, output = Path(input_path), Path(output)
    tensors_in = load_tensors(input_path)
    out: dict[str, CompressedTensor] = {}
    idx_bits: dict[str, int] = {}
    original = 0
    for name, t in tensors_in.items():
        original += t.numel() * 4
        arr = t.detach().to(torch.float32).numpy() if t.is_floating_point() else t.numpy()
        if not t.is_floating_point() or t.dim() < 2 or t.numel() < min_numel:
            out[name] = DenseTensor(np.ascontiguousarray(arr) if t.is_floating_point() else t.numpy())
            continue
        if not np.isfinite(arr).all():
            raise ConfigError(f"tensor {name!r} holds NaN or inf values; cannot compress it")
        mask = None
        if sparsity > 0:
            k = int(round(sparsity * arr.size))
            thresh = np.partition(np.abs(arr).ravel(), k - 1)[k - 1] if k > 0 else -1
            mask = np.abs(arr) > thresh
        kept = arr[mask] if mask is not None else arr.ravel()
        if bits is None:
            out[name] = SparseTensor(arr.shape, mask, kept) if mask is not None else DenseTensor(arr)
        else:
            if kept.size == 0:
                cents, labels = np.zeros(1, np.float32), np.zeros(0, np.uint8)
            else:
                cents, labels = kmeans_1d(kept.astype(np.float32), min(2 ** bits, kept.size), init="linear")
            out[name] = SharedTensor(arr.shape, np.asarray(cents, np.float32), np.asarray(labels, np.uint8), bits, mask)
        idx_bits[name] = index_bits or (8 if arr.ndim > 2 else 5)
    meta = {"model": None, "config": {}, "nnshrink_version": __version__,
            "info": {"source": input_path.name, "sparsity": sparsity, "bits": bits}, "report": {}}
    write(output, out, meta, idx_bits, huffman)
    from .format import read_archive

    archive = read_archive(output)
    size = output.stat().st_size
    return {"input": str(input_path), "output": str(output), "model": None, "original_bytes": original,
            "compressed_bytes": size, "ratio": original / size, "top1_before": None, "top1_after": None,
            "stages": [{"stage": "post-training", "sparsity": sparsity, "bits": bits}],
            "layers": archive.layer_rows() if hasattr(archive, "layer_rows") else [r.as_dict() for r in archive.records]}
