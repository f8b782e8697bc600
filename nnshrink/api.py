"""The public API: compress any nn.Module with the user's own training loop and metric,
save the archive, load it back into the user's module.

    result = nnshrink.compress(model, "deep-compression", fine_tune=fn, evaluate=fn)
    result.model, result.report, result.save("m.nsk")
    model = nnshrink.load("m.nsk", model=MyNet())

Without a training loop (post-training: calibration batches only):

    result = nnshrink.compress(model, "post-training", calibrate=batches)          # 4 bits
    result = nnshrink.compress(model, PostTraining(target_bpw=3.5, outliers=0.01), calibrate=batches)

The pipeline, report and archive are the ones the CLI uses for nnshrink's own models.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import torch.nn as nn

from .batchnorm import check_batches
from .compressed import CompressedTensor
from .errors import ConfigError
from .io_utils import atomic_write_bytes
from .ptq.module import PostTraining, settings_from
from .recipes import Recipe, load_recipe


@dataclass
class Result:
    """What ``compress`` returns. ``model`` is the compressed module (masks and codebooks
    still installed, so it can be fine-tuned further; ``state_dict`` keys are the user's),
    ``report`` the dict the CLI writes as JSON, ``tensors`` the archive's encodings."""

    model: nn.Module
    report: dict[str, Any]
    tensors: dict[str, CompressedTensor]
    blob: bytes

    def save(self, path: str | os.PathLike) -> int:
        """Write the archive atomically (a killed process leaves no half file); its size in
        bytes. Under torchrun only rank 0 writes (every rank holds the same archive) and
        the others return the size without touching ``path``."""
        from .distributed import is_writer

        path = Path(path)
        if not path.parent.is_dir():
            raise ConfigError(f"folder {str(path.parent)!r} does not exist (for {str(path)!r})")
        if is_writer():
            atomic_write_bytes(path, self.blob)
        return len(self.blob)


def _recipe(recipe: str | os.PathLike | Recipe) -> Recipe:
    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, (str, os.PathLike)):
        return load_recipe(str(recipe))  # built-ins take the generic defaults: nnshrink does not know the model
    raise ConfigError(f"recipe must be a built-in name, a .toml path, a Recipe or a PostTraining; "
                      f"got {type(recipe).__name__}")


def _callable(fn, name: str) -> None:
    if fn is not None and not callable(fn):
        raise ConfigError(f"{name} must be a function; got {type(fn).__name__}")


def compress(
    model: nn.Module,
    recipe: str | os.PathLike | Recipe | PostTraining = "deep-compression",
    *,
    fine_tune: Callable[[nn.Module, int], None] | None = None,
    evaluate: Callable[[nn.Module], float] | None = None,
    calibrate: Iterable[Any] | Callable[[], Iterable[Any]] | None = None,
    device: str = "cpu",
    progress: bool = True,
    work_dir: str | os.PathLike | None = None,
    seed: int = 0,
    epochs_scale: float | None = None,
    forward: Callable[[nn.Module, Any], Any] | None = None,
) -> Result:
    """Compress ``model`` in place with ``recipe`` and return a Result.

    ``fine_tune(model, epochs)`` is the user's own training loop, called wherever a stage
    retrains (prune rounds, centroid fine-tuning); without it those stages do not retrain
    and the report's ``warnings`` say so. ``evaluate(model) -> float`` (higher is better)
    fills the ladder and per-stage rows; ``top1_after`` is measured on the archive itself.
    ``calibrate``: input batches (tensors or ``(x, y, ...)`` tuples) as a list, a
    DataLoader or a function returning a fresh iterable; it is read again (at most 100
    batches) after every step that changes weights, so not a one-shot generator. With it,
    BatchNorm running statistics are re-estimated after each prune step and after
    sharing, before anything is measured (``batchnorm.recalibrate_bn``; the stage
    records' ``bn_recalibrated`` say when); without it, a BN model that no ``fine_tune``
    retrains gets a warning instead.
    ``work_dir``: a folder for the run's stage files; each finished stage is kept there,
    and a run with the same (uncompressed) weights and recipe continues from the last one
    (e.g. after ``fine_tune`` raised); it is removed when the run succeeds. ``seed`` seeds
    k-means; ``progress`` shows nnshrink's own progress bars. ``epochs_scale`` multiplies
    every retraining of the recipe (prune rounds, final epochs, centroid fine-tuning) by a
    factor > 0, as the CLI's ``--epochs-scale``: 0.5 for a quicker run.

    Post-training (no training loop): ``recipe="post-training"`` (4 bits) or a
    ``PostTraining(bits= | target_bpw= | max_error=, outliers=, sparsity=, force=)``. It is
    a recipe rather than keyword arguments of ``compress`` because it replaces the stage
    pipeline (prune / share / encode with retraining) by one calibrated pass, so settings
    such as ``bits`` would mean something else for the other recipes; a frozen config
    object is validated when built, like torchao's ``quantize_(model, config)``.
    ``calibrate`` is then read ONCE into per-weight sensitivities (the Fisher diagonal of
    the output) and per-layer input statistics (for GPTQ / SparseGPT error compensation);
    batches that do not fit the model are a ConfigError naming their shapes. Without
    ``calibrate`` the data-free fallback runs (plain k-means, nothing compensated) and the
    report's ``warnings`` say so. ``forward(model, batch) -> tensor`` picks the output the
    sensitivities are taken of (default: ``model(batch)``, ``model(batch[0])`` for
    ``(x, y)`` pairs, ``model(**batch)`` for dicts). The model is filled with the decoded
    weights, so ``result.model`` behaves as ``nnshrink.load(path, model=MyNet())`` will;
    ``fine_tune``, ``work_dir`` and ``epochs_scale`` do not apply and are refused.

    Under torchrun (``torch.distributed`` initialised by the caller) every rank calls
    ``compress`` on the same model. ``fine_tune`` must then train through
    DistributedDataParallel, wrapping the model anew in each call (stages change which
    parameters train), with a ``DistributedSampler`` (``set_epoch`` every epoch), so every
    rank takes the same optimizer steps. Masks and codebooks are taken from rank 0 and
    compared across ranks after every stage (a mismatch is a StageError); only rank 0
    writes (``work_dir``, ``Result.save``).
    """
    from .distributed import is_writer
    from .pipeline import archive_metadata, check_recipe, compress_model, hold_work, state_digest
    from .stages import Context, user_trainer
    from .train import resolve_device

    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be an nn.Module; got {type(model).__name__}")
    _callable(fine_tune, "fine_tune")
    _callable(evaluate, "evaluate")
    _callable(forward, "forward")
    settings = settings_from(recipe)
    if calibrate is not None and settings is None:  # post-training reads it once: a generator will do
        calibrate = check_batches(calibrate, "calibrate")
    if settings is not None:
        return _post_training(model, settings, evaluate=evaluate, calibrate=calibrate, forward=forward,
                              device=device, progress=progress, seed=seed,
                              unused={"fine_tune": fine_tune, "work_dir": work_dir, "epochs_scale": epochs_scale})
    if forward is not None:
        raise ConfigError("forward= applies to post-training compression only (recipe='post-training')")
    recipe = _recipe(recipe)
    if epochs_scale is not None:
        from .recipes import check_epochs_scale

        check_epochs_scale(epochs_scale, "epochs_scale")
        if not recipe.retrains:
            raise ConfigError(f"epochs_scale={epochs_scale:g} given, but recipe {recipe.name!r} retrains nothing")
        recipe = recipe.scaled(epochs_scale)
    model.to(resolve_device(device))
    cls = f"{type(model).__module__}.{type(model).__qualname__}"
    ctx = Context(trainer=user_trainer(fine_tune) if fine_tune is not None else None, metric=evaluate,
                  device=device, progress=progress and is_writer(), seed=seed, calibration=calibrate)
    metadata = archive_metadata(None, {}, {"class": cls, "recipe": recipe.name})
    if work_dir is None:
        done = compress_model(model, recipe, ctx, metadata=metadata)
    else:
        check_recipe(model, recipe)
        run_id = {"class": cls, "state_sha256": state_digest(model), "recipe": recipe.as_dict(),
                  "fine_tune": fine_tune is not None, "seed": seed,
                  "calibrate": calibrate is not None}
        with hold_work(work_dir, run_id, resume=True) as work:
            done = compress_model(model, recipe, ctx, metadata=metadata, work=work)
    return Result(model, done.report, done.tensors, done.blob)


def _post_training(model: nn.Module, settings: PostTraining, *, evaluate, calibrate, forward, device: str,
                   progress: bool, seed: int, unused: dict[str, Any]) -> Result:
    """``compress`` with a PostTraining recipe (its docstring says what differs)."""
    from .ptq.module import compress_module

    given = [name for name, value in unused.items() if value is not None]
    if given:
        raise ConfigError(f"{', '.join(given)} given, but post-training compression does not retrain; "
                          "leave it out or use a retraining recipe such as 'deep-compression'")
    if str(device) != "cpu":
        raise ConfigError(f"post-training compression runs on the CPU; got device={device!r}")
    model.to("cpu")
    cls = f"{type(model).__module__}.{type(model).__qualname__}"
    blob, tensors, report = compress_module(model, settings, calibrate=calibrate, forward=forward,
                                            evaluate=evaluate, metadata={"class": cls}, seed=seed,
                                            progress=progress)
    return Result(model, report, tensors, blob)


def export(model: nn.Module) -> dict[str, CompressedTensor]:
    """The encodings of a model compressed in-process with the lower-level API (pruned,
    shared and binary tensors alike; the rest dense): what ``serialize`` / ``write_archive`` take."""
    from .encodings import export_encodings

    return export_encodings(model)
