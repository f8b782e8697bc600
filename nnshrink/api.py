"""The public API: compress any nn.Module with the user's own training loop and metric,
save the archive, load it back into the user's module.

    result = nnshrink.compress(model, "deep-compression", fine_tune=fn, evaluate=fn)
    result.model, result.report, result.save("m.nsk")
    model = nnshrink.load("m.nsk", model=MyNet())

The pipeline, report and archive are the ones the CLI uses for nnshrink's own models.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch.nn as nn

from .compressed import CompressedTensor
from .errors import ConfigError
from .io_utils import atomic_write_bytes
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
        """Write the archive atomically (a killed process leaves no half file); bytes written."""
        path = Path(path)
        if not path.parent.is_dir():
            raise ConfigError(f"folder {str(path.parent)!r} does not exist (for {str(path)!r})")
        atomic_write_bytes(path, self.blob)
        return len(self.blob)


def _recipe(recipe: str | os.PathLike | Recipe) -> Recipe:
    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, (str, os.PathLike)):
        return load_recipe(str(recipe))  # built-ins take the generic defaults: nnshrink does not know the model
    raise ConfigError(f"recipe must be a built-in name, a .toml path or a Recipe; got {type(recipe).__name__}")


def _callable(fn, name: str) -> None:
    if fn is not None and not callable(fn):
        raise ConfigError(f"{name} must be a function; got {type(fn).__name__}")


def compress(
    model: nn.Module,
    recipe: str | os.PathLike | Recipe = "deep-compression",
    *,
    fine_tune: Callable[[nn.Module, int], None] | None = None,
    evaluate: Callable[[nn.Module], float] | None = None,
    device: str = "cpu",
    progress: bool = True,
    work_dir: str | os.PathLike | None = None,
    seed: int = 0,
) -> Result:
    """Compress ``model`` in place with ``recipe`` and return a Result.

    ``fine_tune(model, epochs)`` is the user's own training loop, called wherever a stage
    retrains (prune rounds, centroid fine-tuning); without it those stages do not retrain
    and the report's ``warnings`` say so. ``evaluate(model) -> float`` (higher is better)
    fills the ladder and per-stage rows; ``top1_after`` is measured on the archive itself.
    ``work_dir``: each finished stage is kept there, and a run with the same model and
    recipe continues from the last one (e.g. after ``fine_tune`` raised).
    """
    from .pipeline import WorkFolder, archive_metadata, compress_model, state_digest
    from .stages import Context, user_trainer
    from .train import resolve_device

    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be an nn.Module; got {type(model).__name__}")
    _callable(fine_tune, "fine_tune")
    _callable(evaluate, "evaluate")
    recipe = _recipe(recipe)
    model.to(resolve_device(device))
    cls = f"{type(model).__module__}.{type(model).__qualname__}"
    ctx = Context(trainer=user_trainer(fine_tune) if fine_tune is not None else None, metric=evaluate,
                  device=device, progress=progress, seed=seed)
    work = None
    if work_dir is not None:
        work = WorkFolder(work_dir, {"class": cls, "state_sha256": state_digest(model), "recipe": recipe.as_dict(),
                                     "fine_tune": fine_tune is not None, "seed": seed}, resume=True)
    done = compress_model(model, recipe, ctx, work=work,
                          metadata=archive_metadata(None, {}, {"class": cls, "recipe": recipe.name}))
    if work is not None:
        work.remove()
    return Result(model, done.report, done.tensors, done.blob)


def export(model: nn.Module) -> dict[str, CompressedTensor]:
    """The encodings of a model compressed in-process with the lower-level API (pruned,
    shared and binary tensors alike; the rest dense): what ``serialize`` / ``write_archive`` take."""
    from .encodings import export_encodings

    return export_encodings(model)
