"""Post-training compression of the user's own nn.Module: the public path.

``nnshrink.compress(model, "post-training", calibrate=batches)`` or
``nnshrink.compress(model, PostTraining(target_bpw=3.5, outliers=0.01), calibrate=batches)``
and ``nnshrink compress STATE --model-factory ... --target-bpw B`` both end here: the
settings are validated up front, the calibration batches are read once (with a progress
bar) into sensitivities and layer-input statistics, ``compress_model`` shares the weights,
the archive bytes are decoded back into the user's model (so ``result.model`` is what
``nnshrink.load`` returns) and the report has the keys every nnshrink report has
(original_bytes, compressed_bytes, ratio, top1_before / top1_after, layers, warnings).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..sizes import state_bytes

POST_TRAINING = "post-training"  # the recipe name that selects this path (API and CLI)
DEFAULT_BITS = 4


def data_free_warning(how: str) -> str:
    """The report's label for a run without calibration data; ``how`` names the missing input."""
    return (f"no {how}: data-free fallback (plain k-means on the weights, no sensitivities, no error "
            "compensation); give typical inputs for the calibrated methods")


def _number(value: Any, name: str, lo: float, hi: float, *, lo_open: bool = True) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value \
        and (value > lo if lo_open else value >= lo) and value <= hi
    if not ok:
        raise ConfigError(f"{name} must be a number in {'(' if lo_open else '['}{lo:g}, {hi:g}]; got {value!r}")


@dataclass(frozen=True)
class PostTraining:
    """Settings of post-training compression (no training loop: calibration batches only).

    One of ``bits`` (every shared tensor gets 2**bits values; 4 when nothing is given),
    ``target_bpw`` (per-layer bits chosen so the FILE holds that many bits per weight,
    overhead included) or ``max_error`` (the fewest bytes whose estimated relative output
    error on the calibration batches stays below it; needs calibration). ``outliers``: the
    fraction of each shared tensor kept exactly beside its codebook; ``sparsity``: the
    fraction pruned (error-compensated where calibration inputs reach the layer).
    ``force``: an unreachable budget writes the closest reachable with a warning instead
    of failing. ``min_numel``: float tensors with >= 2 dims and at least this many values
    are shared; the rest are stored exactly. ``recalibrate_bn``: after sharing, re-estimate
    every BatchNorm's running statistics on the calibration batches (read a second time)
    and store those: the shared weights move each channel's mean and variance, and stale
    statistics add that shift on top of the weight error. ``tune_steps`` N > 0: after
    sharing, the exactly-stored parameters (norms, biases) are tuned N Adam steps so the
    compressed model's outputs on the calibration batches (read again) come closer to the
    float model's; the shared weights stay as they are (tune.py). ``sparsity_by_layer``:
    ``sparsity`` is the overall fraction of the compensated layers' weights pruned, each
    layer's own fraction chosen by its error (sparsity.py; needs calibration).
    ``sparsity_over`` "all": a calibrated ``sparsity`` prunes the embeddings too (compensated
    with their lookups' output gradients, calibrate.py), so with ``sparsity_by_layer`` S is
    spread over every shared weight. ``prune_rounds`` R > 1: calibrated pruning chooses its
    mask in R rounds of least-squares refits of the kept weights (refit.py). ``sequential``:
    the compensated layers are compressed group after group towards the float outputs from
    the inputs the already-compressed prefix gives (sequential.py; needs calibration, read
    again, and bits, not a budget). ``probe``: with ``target_bpw``, ``max_error`` or
    ``sparsity_by_layer``, each layer's error estimate is rescaled by its output error
    measured once on the calibration batches (probe.py), so the per-layer choice rests on
    measured errors.
    """

    bits: int | None = None
    target_bpw: float | None = None
    max_error: float | None = None
    outliers: float = 0.0
    sparsity: float = 0.0
    force: bool = False
    min_numel: int = 1024
    recalibrate_bn: bool = False
    tune_steps: int = 0
    sparsity_by_layer: bool = False
    sparsity_over: str = "compensated"
    sequential: bool = False
    probe: bool = False
    prune_rounds: int = 1

    def __post_init__(self):
        from .layer import LayerSetting
        from .tune import check_steps

        check_steps(self.tune_steps)

        given = [n for n in ("bits", "target_bpw", "max_error") if getattr(self, n) is not None]
        if len(given) > 1:
            raise ConfigError(f"give one of bits, target_bpw and max_error; got {' and '.join(given)}")
        if self.target_bpw is not None:
            _number(self.target_bpw, "target_bpw", 0, 32)
        if self.max_error is not None:
            _number(self.max_error, "max_error", 0, float("inf"))
        if not isinstance(self.min_numel, int) or isinstance(self.min_numel, bool) or self.min_numel < 1:
            raise ConfigError(f"min_numel must be an int >= 1; got {self.min_numel!r}")
        for flag in ("force", "recalibrate_bn", "sparsity_by_layer", "sequential", "probe"):
            if not isinstance(getattr(self, flag), bool):
                raise ConfigError(f"{flag} must be true or false; got {getattr(self, flag)!r}")
        LayerSetting(self.bits if self.bits is not None else DEFAULT_BITS, self.outliers, self.sparsity,
                     rounds=self.prune_rounds)
        if self.sparsity_by_layer and (not self.sparsity > 0 or self.target_bpw is not None
                                       or self.max_error is not None):
            raise ConfigError(f"sparsity_by_layer needs sparsity > 0 (the overall fraction) and bits, not a budget; "
                              f"got sparsity {self.sparsity!r}")
        from .compress import SPARSITY_OVER

        if self.sparsity_over not in SPARSITY_OVER:
            raise ConfigError(f"sparsity_over must be one of {', '.join(SPARSITY_OVER)}; got {self.sparsity_over!r}")
        if self.sequential and (self.target_bpw is not None or self.max_error is not None):
            raise ConfigError("sequential needs bits (a fixed setting), not a budget (target_bpw / max_error)")
        if self.probe and self.target_bpw is None and self.max_error is None and not self.sparsity_by_layer:
            raise ConfigError("probe rescales the error estimates of a per-layer choice: give target_bpw, max_error "
                              "or sparsity_by_layer with it")

    @property
    def budget(self) -> str:
        """How the bits are chosen, in words (the report's ``setting``)."""
        if self.target_bpw is not None:
            return f"target {self.target_bpw:g} bits per weight"
        if self.max_error is not None:
            return f"max estimated error {self.max_error:g}"
        return f"{self.bits or DEFAULT_BITS} bits"

    def as_dict(self) -> dict[str, Any]:
        return {"name": POST_TRAINING, **asdict(self)}


def check_finite(calibration) -> None:
    """Refuse NaN / inf sensitivities or layer-input statistics, naming the layer: they
    would silently turn the weighted k-means and the error compensation into noise."""
    for kind, table in (("sensitivities (Fisher diagonal)", calibration.fisher),
                        ("input statistics (Hessian)", calibration.hessian),
                        ("lookup output-gradient statistics", calibration.lookup)):
        for name, t in table.items():
            if not torch.isfinite(t).all():
                raise ConfigError(f"{kind} of {name!r} are not finite (NaN or inf): check the calibration "
                                  "data and the model's output on it")


class _Counted:
    """The user's batches behind a progress bar (re-iterable, as the source is)."""

    def __init__(self, source, desc: str, enabled: bool):
        self.source, self.desc, self.enabled = source, desc, enabled

    def __iter__(self):
        from tqdm.auto import tqdm

        batches = self.source() if callable(self.source) else self.source
        if isinstance(batches, torch.Tensor) or not hasattr(batches, "__iter__"):
            raise ConfigError(f"calibrate= function must return an iterable of batches; got {type(batches).__name__}")
        total = len(batches) if hasattr(batches, "__len__") else None
        yield from tqdm(batches, desc=self.desc, total=total, unit="batch", file=sys.stderr,
                        disable=not self.enabled, leave=False)


def calibrate_model(model: nn.Module, calibrate, settings: PostTraining, *, forward=None, seed: int = 0,
                    progress: bool = True):
    """The calibration statistics of ``model``'s shared weights on the user's batches."""
    from .calibrate import collect
    from .compress import _compressible, _owner_map

    if isinstance(calibrate, torch.Tensor) or not (callable(calibrate) or hasattr(calibrate, "__iter__")):
        raise ConfigError(f"calibrate= must be an iterable of batches or a callable returning one; got "
                          f"{type(calibrate).__name__} (a list of tensors, a DataLoader, a generator)")

    state = {n: t.detach() for n, t in model.state_dict().items()}
    weights = _owner_map(model, _compressible(state, settings.min_numel))
    if not weights:
        raise ConfigError(f"{type(model).__name__} has no float parameter with >= 2 dims and >= "
                          f"{settings.min_numel} values: nothing to compress post-training")
    cal = collect(model, _Counted(calibrate, "calibrating", progress), forward=forward, weights=weights, seed=seed)
    check_finite(cal)
    return cal


def _layer_bar(model: nn.Module, settings: PostTraining, enabled: bool):
    """A tqdm bar over the shared tensors and the callback ``compress_model`` reports to."""
    from tqdm.auto import tqdm

    n = sum(1 for t in model.state_dict().values()
            if t.is_floating_point() and t.dim() >= 2 and t.numel() >= settings.min_numel)
    bar = tqdm(total=n, desc="compressing", unit="tensor", file=sys.stderr, disable=not enabled, leave=False)

    def say(msg: str) -> None:
        if msg.startswith(("compressing ", "measuring ")):
            bar.set_postfix_str(msg.split(" ")[1], refresh=False)
            bar.update(1)
    return bar, say


def merged_rows(archive, rows: list[dict]) -> list[dict]:
    """The archive's per-record stats with the compressor's per-layer choices (bits,
    outliers, sparsity, estimated error) added to the shared ones."""
    by_name = {r["name"]: r for r in archive.layer_rows()}
    for r in rows:
        by_name[r["name"]].update(r)
    return list(by_name.values())


def compress_module(model: nn.Module, settings: PostTraining, *, calibrate=None, forward: Callable | None = None,
                    evaluate: Callable[[nn.Module], float] | None = None, metadata: dict[str, Any] | None = None,
                    seed: int = 0, progress: bool = True, missing_data: str = "calibrate=",
                    zoo: tuple[str, dict] | None = None) -> tuple[bytes, dict, dict]:
    """Compress ``model`` post-training and load the decoded weights back into it.

    Returns (archive bytes, encodings, report). ``metadata`` is merged into the archive's
    ``info`` (e.g. the model's class). ``missing_data`` names the absent input in the
    data-free warning (``calibrate=`` in the API, a flag in the CLI). ``zoo``: (model name,
    config) of an nnshrink zoo model, written into the archive so ``nnshrink eval`` and
    ``nnshrink.load(path)`` rebuild it."""
    from .. import __version__
    from ..format import parse_archive, serialize
    from ..loading import load_into
    from .compress import compress_model

    if not isinstance(settings, PostTraining):
        raise ConfigError(f"settings must be a PostTraining; got {type(settings).__name__}")
    # (asked, name, what the calibration data is for, read again after the first pass)
    uses = [(settings.max_error is not None, "max_error", "the error is measured on it", False),
            (settings.recalibrate_bn, "recalibrate_bn", "the statistics are measured on it", True),
            (settings.sparsity_by_layer, "sparsity_by_layer", "each layer's pruning error is measured on it", False),
            (settings.sequential, "sequential", "each layer's inputs are collected on it", True),
            (settings.probe, "probe", "each layer's output error is measured on it", True),
            (bool(settings.tune_steps), "tune_steps", "the float model's outputs on it are the target", True)]
    for asked, name, why, _ in uses:
        if asked and calibrate is None:
            raise ConfigError(f"{name} needs calibration data ({why}); give calibration batches")
    if any(asked and again for asked, _, _, again in uses):
        from ..batchnorm import check_batches

        check_batches(calibrate, "calibrate")  # read twice: not a one-shot generator
    t0 = time.perf_counter()
    original = state_bytes(model.state_dict())
    top1_before = evaluate(model) if evaluate is not None else None
    t_cal = time.perf_counter()
    cal = calibrate_model(model, calibrate, settings, forward=forward, seed=seed, progress=progress) \
        if calibrate is not None else None
    t_cal = time.perf_counter() - t_cal
    bar, say = _layer_bar(model, settings, progress)
    try:
        bits = settings.bits if settings.bits is not None else DEFAULT_BITS
        res = compress_model(model, calibrate if settings.tune_steps or settings.sequential or settings.probe else None,
                             calibration=cal, bits=bits, probe=settings.probe,
                             target_bpw=settings.target_bpw, max_error=settings.max_error, outliers=settings.outliers,
                             sparsity=settings.sparsity, min_numel=settings.min_numel, force=settings.force,
                             progress=say if progress else None, forward=forward,
                             tune_steps=settings.tune_steps, sparsity_by_layer=settings.sparsity_by_layer,
                             sparsity_over=settings.sparsity_over, sequential=settings.sequential,
                             prune_rounds=settings.prune_rounds)
    finally:
        bar.close()
    meta = res.metadata
    meta["info"].update({**(metadata or {}), "recipe": POST_TRAINING, "nnshrink_version": __version__})
    meta["nnshrink_version"] = __version__
    if zoo is not None:
        meta["model"], meta["config"] = zoo
    tensors = dict(res.tensors)
    blob = serialize(tensors, meta)
    archive = parse_archive(blob, "<compressed>")
    load_into(model, archive.dense_state(), "the archive")  # result.model is what nnshrink.load gives back
    if settings.recalibrate_bn:
        meta["info"]["post_training"]["bn_recalibrated"] = _recalibrate_bn(model, calibrate, tensors)
        blob = serialize(tensors, meta)
        archive = parse_archive(blob, "<compressed>")
    top1_after = evaluate(model) if evaluate is not None else None
    numel = sum(t.numel() for t in model.state_dict().values())
    warnings = list(res.warnings) + ([] if res.calibrated else [data_free_warning(missing_data)])
    report = {
        "model": zoo[0] if zoo is not None else (metadata or {}).get("class"), "recipe": settings.as_dict(), "setting": settings.budget,
        "original_bytes": original, "compressed_bytes": len(blob), "ratio": original / len(blob),
        "bits_per_weight": 8 * len(blob) / numel,
        "top1_before": top1_before, "top1_after": top1_after,
        "top1_drop_points": None if top1_after is None else 100 * (top1_before - top1_after),
        "post_training": meta["info"]["post_training"], "layers": merged_rows(archive, res.rows),
        "warnings": warnings,
        "seconds": {"calibrate": t_cal, "compress": res.seconds["total"], "total": time.perf_counter() - t0},
    }
    return blob, tensors, report


def _recalibrate_bn(model: nn.Module, calibrate, tensors: dict) -> int:
    """Re-estimate the BatchNorm statistics of the decoded ``model`` and put them in
    ``tensors`` (exact records); the number of batches used."""
    from ..batchnorm import batchnorm_layers, recalibrate_bn
    from ..compressed import DenseTensor
    from ..post_training import exact_array

    used = recalibrate_bn(model, calibrate)
    for prefix, bn in batchnorm_layers(model).items():
        for key, buf in bn.named_buffers(recurse=False):
            name = f"{prefix}.{key}" if prefix else key
            if name in tensors:
                tensors[name] = DenseTensor(exact_array(name, buf))
    return used


def check_calibrate(calibrate) -> Any:
    """``calibrate`` if it is re-iterable batches or a callable (the API's rule)."""
    from ..batchnorm import check_batches

    return None if calibrate is None else check_batches(calibrate, "calibrate")


def settings_from(recipe: Any) -> PostTraining | None:
    """The PostTraining settings ``recipe`` asks for, or None when it names another recipe."""
    if isinstance(recipe, PostTraining):
        return recipe
    if isinstance(recipe, str) and recipe == POST_TRAINING:
        return PostTraining()
    return None


