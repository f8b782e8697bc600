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

import contextlib
import copy
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn as nn

from . import __version__
from .compressed import CompressedTensor, DenseTensor, SharedTensor, SparseTensor
from .data import Dataset
from .errors import ConfigError
from .io_utils import atomic_write_bytes, check_output_file
from .post_training import compress_tensors  # noqa: F401  (moved; re-exported for callers)
from .recipes import EncodeConfig, Recipe
from .report import growth_warning
from .sizes import state_bytes
from .stages import Context, export_all, fit_trainer, get_stage, top1_metric
from .workdir import work_folder, work_path


# ---------------------------------------------------------------- encoding
def serialize_archive(tensors: dict[str, CompressedTensor], metadata: dict, index_bits: dict[str, int],
                      huffman: bool) -> bytes:
    """The archive of ``tensors`` as bytes (its length is the real file size)."""
    from .format import serialize

    return serialize(tensors, metadata, index_bits=index_bits, huffman=huffman)


def index_bits_for(model: nn.Module, cfg: EncodeConfig) -> dict[str, int]:
    """Relative-index width per compressible tensor: ``layers`` pattern, fc / conv
    setting, else ``select.DEFAULT_INDEX_BITS`` by kind."""
    from .select import DEFAULT_INDEX_BITS, compressible, resolve

    kinds = {**DEFAULT_INDEX_BITS,
             **{k: v for k, v in (("fc", cfg.fc_index_bits), ("conv", cfg.conv_index_bits)) if v}}
    return resolve(dict(cfg.layers) or None, compressible(model), lambda t: kinds[t.kind], what="encode.layers")


def check_recipe(model: nn.Module, recipe: Recipe) -> None:
    """Resolve every per-tensor pattern of ``recipe`` against ``model`` now: a typo fails
    before any work (and before a work folder exists), not stages later."""
    for name in recipe.compression_stages:
        stage = get_stage(name)
        if stage.check is not None:
            stage.check(model, getattr(recipe, name))
    if has_targets(model):
        index_bits_for(model, recipe.encode)


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
    """The stage files of a held work folder: ``{i}-{stage}.nsk`` (the stage's encodings)
    and ``{i}-{stage}.json`` (its record; a stage is finished when its record exists)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

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


class ReadOnlyWorkFolder(WorkFolder):
    """The work folder as a rank other than 0 sees it under torchrun: it reads finished
    stages (``--resume``) and writes nothing (rank 0 writes the same stage files)."""

    def save(self, i: int, stage: str, blob: bytes, record: dict) -> None:
        return None


@contextlib.contextmanager
def hold_work(path: str | os.PathLike, run_id: dict, *, resume: bool, keep: bool = False,
              output: str | os.PathLike | None = None) -> Iterator[WorkFolder]:
    """The work folder of one run, locked for the run's duration (``workdir.work_folder``).

    Under torchrun only rank 0 locks, resets and writes it; the other ranks wait until it
    holds the folder (or failed to: then they fail too) and read it without writing."""
    from .distributed import agree, is_writer

    if is_writer():
        with contextlib.ExitStack() as stack:
            try:
                folder = stack.enter_context(work_folder(path, run_id, resume=resume, keep=keep, output=output))
            except BaseException:
                agree(False, "taking the work folder")
                raise
            agree(True, "taking the work folder")
            yield WorkFolder(folder)
            agree(True, "the run")  # rank 0 removes the folder only after every rank finished with it
    else:
        agree(True, "taking the work folder")
        yield ReadOnlyWorkFolder(path)
        agree(True, "the run")


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
def _clock(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"


class StageProgress:
    """The run's overall progress: one line per stage on stderr (stage k of n, its name,
    elapsed time) with an estimate of what is left once some retraining has run: the
    seconds per planned retraining epoch so far times the epochs still planned
    (``Recipe.planned_epochs``). Stages resumed from the work folder cost no time here,
    so they count no epochs."""

    def __init__(self, recipe: Recipe, *, enabled: bool, retrains: bool, stream=None):
        self.stages, self.enabled, self.stream = recipe.stages, enabled, stream
        self.epochs = recipe.planned_epochs() if retrains else {}
        self.start, self.done_epochs = time.perf_counter(), 0.0

    def line(self, k: int) -> str:
        """The line shown as stage ``k`` (0-based) starts."""
        elapsed = time.perf_counter() - self.start
        left = sum(self.epochs.get(s, 0.0) for s in self.stages[k:])
        estimate = f", about {_clock(elapsed / self.done_epochs * left)} left" if self.done_epochs and left else ""
        return (f"compress: stage {k + 1} of {len(self.stages)}: {self.stages[k]} "
                f"(elapsed {_clock(elapsed)}{estimate})")

    def begin(self, k: int) -> None:
        self._write(self.line(k))

    def finished(self, k: int, resumed: bool = False) -> None:
        if not resumed:
            self.done_epochs += self.epochs.get(self.stages[k], 0.0)

    def done(self) -> None:
        self._write(f"compress: done, {len(self.stages)} stages in {_clock(time.perf_counter() - self.start)}")

    def _write(self, text: str) -> None:
        if self.enabled:
            print(text, file=self.stream or sys.stderr, flush=True)


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


def _top1_through_runtime(ctx: Context, decoded: nn.Module, tensors) -> tuple[float | None, str]:
    """The metric of the archive's model as ``nnshrink.load(..., runtime="auto")`` runs it:
    its pruned / shared layers swapped for kernels where they pay. Dense where the model
    or the user's metric uses an accelerator (the kernels run on CPU only)."""
    from .errors import DeviceError, StageError
    from .runtime.swap import accelerate

    if any(t.device.type != "cpu" for t in decoded.parameters()):
        return ctx.evaluate(decoded, "after encode"), "dense"
    try:
        return ctx.evaluate(accelerate(decoded, tensors, runtime="auto"), "after encode"), "auto"
    except StageError as exc:
        if not isinstance(exc.__cause__, DeviceError):
            raise
    return ctx.evaluate(decoded, "after encode"), "dense"


def compress_model(model: nn.Module, recipe: Recipe, ctx: Context, *, metadata: dict[str, Any],
                   work: WorkFolder | None = None, snapshots: dict | None = None) -> Compressed:
    """Run ``recipe`` on ``model`` in place (compression stays installed in it); returns
    the archive bytes, encodings and report. ``snapshots``, when a dict, receives the
    compressible weights after each stage (for plots)."""
    from .distributed import check_same
    from .format import parse_archive
    from .loading import load_into
    from .select import compressible

    t_start = time.perf_counter()
    if not all(get_stage(s).exclusive for s in recipe.compression_stages):
        compressible(model)  # a model with nothing to compress fails here, before any work
    check_recipe(model, recipe)
    original_bytes = state_bytes(model.state_dict())  # each tensor's own dtype
    progress = StageProgress(recipe, enabled=ctx.progress, retrains=ctx.trainer is not None)
    pristine = copy.deepcopy(model) if ctx.metric is not None else None
    if recipe.distills:
        ctx.keep_teacher(model)
    if snapshots is not None:
        snapshots["dense"] = _weights(model)
    top1_before = ctx.evaluate(model, "before compression")
    allocation = None
    if "prune" in recipe.stages and recipe.prune.target_ratio is not None:
        from .prune.target_ratio import allocate_sparsity

        recipe, allocation = allocate_sparsity(model, recipe, ctx, metadata)
    idx_bits = index_bits_for(model, recipe.encode) if has_targets(model) else {}
    records, rungs = [], []
    tensors: dict[str, CompressedTensor] | None = None
    for i, name in enumerate(recipe.compression_stages):
        stage, cfg = get_stage(name), getattr(recipe, name)
        progress.begin(i)
        done = work.load(i, name) if work is not None else None
        if done is not None:
            record, blob = done
            archive = parse_archive(blob, f"{work.path}/{i + 1}-{name}.nsk")
            restore(model, archive)
            tensors = archive.tensors
            record["resumed"] = True
            for text in record.get("warnings", []):
                ctx.note(text)
        else:
            t0, n_notes = time.perf_counter(), len(ctx.notes)
            details = stage.apply(model, cfg, ctx)
            tensors = stage.export(model, cfg)
            record = {"stage": name, "seconds": time.perf_counter() - t0,
                      "top1": ctx.evaluate(model, f"after stage {name!r}"), "details": details,
                      "warnings": ctx.notes[n_notes:]}
            blob = serialize_archive(tensors, metadata, idx_bits, False)
            if work is not None:
                work.save(i, name, blob, record)
        check_same(model, f"after stage {name!r}")
        progress.finished(i, resumed=done is not None)
        records.append(record)
        rungs.append({"rung": stage.rung(tensors), "bytes": len(blob), "top1": record["top1"]})
        if snapshots is not None:
            snapshots[name] = {n: tensors[n].to_dense() for n in snapshots["dense"]}

    progress.begin(len(recipe.stages) - 1)
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
    top1_after, top1_runtime = None, None
    if pristine is not None:  # measured FROM the archive, through the runtime users will run
        top1_after, top1_runtime = _top1_through_runtime(
            ctx, load_into(pristine, archive.dense_state(), source="the archive"), archive.tensors)
    rungs.insert(0, {"rung": "dense", "bytes": original_bytes, "top1": top1_before})
    rungs.append({"rung": "+Huffman" if recipe.encode.huffman else "archive", "bytes": len(blob),
                  "top1": top1_after})
    for r in rungs:
        r["ratio"] = original_bytes / r["bytes"]
    records.append({"stage": "encode", "seconds": encode_s, "top1": top1_after})
    grew = growth_warning(original_bytes, len(blob))
    if grew:
        ctx.note(grew)
    report = {
        "model": metadata.get("model") or (metadata.get("info") or {}).get("class"),
        "recipe": recipe.as_dict(), "defaults": recipe.defaults,
        "original_bytes": original_bytes, "compressed_bytes": len(blob), "ratio": original_bytes / len(blob),
        "top1_before": top1_before, "top1_after": top1_after, "top1_after_runtime": top1_runtime,
        "top1_drop_points": None if top1_after is None or top1_before is None else 100 * (top1_before - top1_after),
        "ladder": rungs, "stages": records, "allocation": allocation, "layers": archive.layer_rows(),
        "warnings": list(ctx.notes),
        "seconds": time.perf_counter() - t_start,
    }
    progress.done()
    return Compressed(blob, dict(tensors), report)


def compress_to_file(model: nn.Module, output: str | os.PathLike, recipe: Recipe, ctx: Context, *,
                     metadata: dict[str, Any], run_id: dict, resume: bool = False,
                     plots: str | os.PathLike | None = None, keep_work: bool = False) -> dict[str, Any]:
    """``compress_model`` with the work folder ``OUTPUT.work/`` and the archive written
    atomically to ``output``; returns the report (with ``output`` and optional ``plot``)."""
    from .distributed import is_writer

    output = Path(output)
    if plots:
        check_output_file(plots, force=True)  # a bad plot path fails now, not after the long work
    check_recipe(model, recipe)
    run_id = {**run_id, "state_sha256": state_digest(model), "recipe": recipe.as_dict(),
              "nnshrink_version": __version__}
    snapshots: dict | None = {} if plots else None
    with hold_work(work_path(output), run_id, resume=resume, keep=keep_work, output=output) as work:
        done = compress_model(model, recipe, ctx, metadata=metadata, work=work, snapshots=snapshots)
        if is_writer():
            atomic_write_bytes(output, done.blob)
    report = {"output": str(output), **done.report}
    if plots and is_writer():
        from .report import plot_weights

        plot_weights(plots, snapshots["dense"], snapshots.get("prune"), snapshots.get("share"),
                     title=f"{report['model']}: weights through the pipeline")
        report["plot"] = str(plots)
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
    seed: int | None = None,
) -> dict[str, Any]:
    """Run ``recipe`` on an nnshrink (zoo) checkpoint and write the archive; returns the
    report. Retraining is nnshrink's own ``fit`` with the model's training defaults;
    ``seed`` (default: the training default's) seeds its shuffles and the k-means init."""
    from .batchnorm import calibration_batches
    from .checkpoint import load_checkpoint
    from .train import default_train_config

    model, meta = load_checkpoint(input_path)
    if recipe.retrains and retrain and data is None:
        raise ConfigError(f"recipe {recipe.name!r} retrains, which needs --dataset NAME "
                          "(or pass --no-retrain to compress without retraining)")
    train_cfg = default_train_config(meta["model"])
    if seed is not None:
        train_cfg = train_cfg.replace(seed=seed)
    ctx = Context(trainer=fit_trainer(data, train_cfg, device=device, progress=progress)
                  if retrain and data is not None else None,
                  metric=top1_metric(data, device=device) if data is not None else None,
                  device=device, progress=progress, seed=train_cfg.seed,
                  calibration=calibration_batches(data.train_x, seed=train_cfg.seed) if data is not None else None)
    metadata = archive_metadata(meta["model"], meta["config"],
                                {"dataset": data.name if data else meta["info"].get("dataset"),
                                 "recipe": recipe.name})
    report = compress_to_file(model, output, recipe, ctx, metadata=metadata,
                              run_id={"retrain": retrain, "dataset": data.name if data else None},
                              resume=resume, plots=plots, keep_work=keep_work)
    return {"input": str(input_path), "dataset": data.name if data else None, **report}

