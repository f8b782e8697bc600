"""Post-training compression of a model with (or without) calibration data.

``compress_model(model, calibrate=..., bits=4)`` or ``target_bpw=B``: every float tensor
with >= 2 dims and >= ``min_numel`` values is shared through ``layer.compress_weight``
(sensitivity-weighted codebook, dense-and-sparse outliers, GPTQ / SparseGPT compensation
where the layer is a Linear / Conv2d with calibration inputs; with calibration,
``sparsity`` prunes only those layers); every other tensor is
stored exactly (or as float16 with ``half_small``). Without calibration data the
importances are all one and nothing is compensated: the data-free fallback, labelled so
in the report.

With ``target_bpw`` every layer is compressed at each of ``candidate_bits``, its record
bytes measured with the archive writer, and ``allocate`` picks per-layer bits of least
estimated error whose file fits B bits per weight (all tensors, header included); the
file is then measured and the budget tightened by any excess until it fits. With
``max_error`` E (needs calibration) the same candidates give the fewest bytes whose
estimated relative output error -- the summed layer estimates over the calibration
outputs' energy sum(out^2); for small errors about 2 (1 - cosine) -- stays <= E.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..compressed import CompressedTensor, DenseTensor
from ..errors import ConfigError
from ..format.layout import ALIGN
from ..format.writer import encode_tensor, serialize
from .allocate import BudgetError, Candidate, allocate, allocate_for_error
from .calibrate import Calibration, collect
from .layer import LayerSetting, compress_weight

RECORD_OVERHEAD = 260  # header JSON bytes of one shared record (names excluded), for the byte estimates


@dataclass
class PTQResult:
    tensors: dict[str, CompressedTensor]
    rows: list[dict]
    calibrated: bool
    metadata: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    seconds: dict = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        return serialize(self.tensors, self.metadata)

    def save(self, path) -> int:
        """Write the .nsk archive atomically; return its size in bytes."""
        from ..format.writer import write_archive

        return write_archive(path, self.tensors, self.metadata)


def record_bytes(name: str, t: CompressedTensor) -> int:
    rec, parts = encode_tensor(name, t, 8 if len(t.shape) >= 3 else 5)
    n = sum(len(p) for _, p in parts)
    return n + (-n % ALIGN) + RECORD_OVERHEAD + len(name)


def _compressible(state: dict[str, torch.Tensor], min_numel: int) -> list[str]:
    return [n for n, t in state.items() if t.is_floating_point() and t.dim() >= 2 and t.numel() >= min_numel]


def _owner_map(model: nn.Module, names: list[str]) -> dict[str, str]:
    params = dict(model.named_parameters())
    return {n: n.rsplit(".", 1)[0] if "." in n else "" for n in names if n in params}


def compress_model(model: nn.Module, calibrate=None, *, forward: Callable | None = None, bits: int | None = 4,
                   outliers: float = 0.0, sparsity: float = 0.0, target_bpw: float | None = None,
                   max_error: float | None = None,
                   candidate_bits=(2, 3, 4, 5, 6, 8), min_numel: int = 1024, half_small: bool = False,
                   damp: float = 0.1, calibration: Calibration | None = None, force: bool = False,
                   state: dict[str, torch.Tensor] | None = None,
                   progress: Callable[[str], None] | None = None) -> PTQResult:
    """Compress ``model``'s state post-training (module doc); the model is not changed.
    ``state`` (default: the model's state_dict) is what gets stored, e.g. a weight file's
    tensors, buffers the model does not hold included; calibration uses the model."""
    if target_bpw is not None and not (isinstance(target_bpw, (int, float)) and 0 < target_bpw <= 32):
        raise ConfigError(f"target bits per weight must be in (0, 32]; got {target_bpw!r}")
    if max_error is not None and not (isinstance(max_error, (int, float)) and max_error > 0):
        raise ConfigError(f"max error must be > 0; got {max_error!r}")
    if max_error is not None and target_bpw is not None:
        raise ConfigError("give a bit budget (target_bpw) or an error bound (max_error), not both")
    if max_error is not None and calibrate is None and calibration is None:
        raise ConfigError("an error bound (--max-error) needs calibration data: the error is measured on it")
    if target_bpw is None and max_error is None:
        LayerSetting(bits, outliers, sparsity)  # validates
    for b in candidate_bits:
        LayerSetting(b, outliers, sparsity)
    say = progress or (lambda _msg: None)
    state = {n: t.detach().cpu() for n, t in (model.state_dict() if state is None else state).items()}
    names = _compressible(state, min_numel)
    t0 = time.perf_counter()
    if calibration is None and calibrate is not None:
        say("calibrating")
        calibration = collect(model, calibrate, forward=forward, weights=_owner_map(model, names))
    t_cal = time.perf_counter() - t0
    fisher = calibration.fisher if calibration else {}
    hessian = calibration.hessian if calibration else {}

    def one(name, b):
        w = state[name].to(torch.float32).numpy()
        imp = fisher[name].numpy() if name in fisher else None
        # calibrated pruning is SparseGPT's: only where error compensation repairs it (Linear / Conv2d
        # layers with inputs); lookup tables (embeddings) keep every row, rare tokens included
        prune = sparsity if calibration is None or name in hessian else 0.0
        return compress_weight(w, LayerSetting(b, outliers, prune), imp, hessian.get(name), damp=damp)

    tensors: dict[str, CompressedTensor] = {}
    for n, t in state.items():
        if n not in names:
            if t.dtype == torch.float32 and half_small:
                tensors[n] = DenseTensor(t.numpy(), half=True)
            else:
                from ..post_training import exact_array
                tensors[n] = DenseTensor(exact_array(n, t))
    fixed = sum(record_bytes(n, t) for n, t in tensors.items()) + 1024  # preamble, header frame, metadata
    chosen: dict[str, tuple[int, CompressedTensor, float]] = {}
    warnings = []
    if target_bpw is None and max_error is None:
        for n in names:
            say(f"compressing {n} at {bits} bits")
            t, err = one(n, bits)
            chosen[n] = (bits, t, err)
    else:
        total_numel = sum(t.numel() for t in state.values())
        options, made = {}, {}
        for n in names:
            say(f"measuring {n} at {', '.join(map(str, candidate_bits))} bits")
            options[n] = []
            for b in candidate_bits:
                t, err = one(n, b)
                made[(n, b)] = (t, err)
                options[n].append(Candidate(b, record_bytes(n, t), err))
        budget = int(target_bpw * total_numel / 8) - fixed if target_bpw is not None else 0
        if max_error is not None:
            scale = max(calibration.output_energy, 1e-30)
            try:
                pick = allocate_for_error(options, max_error * scale)
            except BudgetError:
                least = sum(min(c.error for c in v) for v in options.values()) / scale
                if not force:
                    raise BudgetError(f"--max-error {max_error:g} cannot be met: the least reachable estimated "
                                      f"relative output error is {least:.4g} with candidate bits "
                                      f"{list(candidate_bits)} (use --force to write that with a warning)", 0) from None
                warnings.append(f"error bound {max_error:g} cannot be met; wrote the least reachable, {least:.4g}")
                pick = {n: min(c, key=lambda x: x.error) for n, c in options.items()}
            chosen = {n: (c.setting, *made[(n, c.setting)]) for n, c in pick.items()}
        for _ in range(4 if target_bpw is not None else 0):
            try:
                pick = allocate(options, budget)
            except BudgetError as exc:
                closest = 8 * (exc.closest + fixed) / total_numel
                if not force:
                    raise BudgetError(f"--target-bpw {target_bpw:g} cannot be met: the smallest reachable is about "
                                      f"{closest:.3f} bits per weight with candidate bits {list(candidate_bits)} "
                                      "(use --force to write that with a warning)", exc.closest) from None
                warnings.append(f"target {target_bpw:g} bits per weight cannot be met; wrote the smallest "
                                f"reachable, about {closest:.3f}")
                pick = {n: min(c, key=lambda x: x.bytes) for n, c in options.items()}
            chosen = {n: (c.setting, *made[(n, c.setting)]) for n, c in pick.items()}
            all_t = {**tensors, **{n: v[1] for n, v in chosen.items()}}
            size = len(serialize({n: all_t[n] for n in state}, {"info": {}}))
            over = size - int(target_bpw * total_numel / 8)
            if over <= 0 or warnings:
                break
            budget -= over
    t_all = time.perf_counter() - t0
    tensors.update({n: v[1] for n, v in chosen.items()})
    tensors = {n: tensors[n] for n in state}  # the model's order
    rows = []
    for n in state:
        if n in chosen:
            b, t, err = chosen[n]
            n_out = int(t.outlier_mask.sum()) if t.outlier_mask is not None else 0
            rows.append({"name": n, "shape": list(t.shape), "bits": b, "outliers": n_out,
                         "sparsity": float(1 - t.mask.mean()) if t.mask is not None else 0.0,
                         "compensated": n in hessian, "estimated_error": err})
    scale = calibration.output_energy if calibration is not None and calibration.output_energy > 0 else None
    total_err = sum(v[2] for v in chosen.values())
    report = {"calibrated": calibration is not None,
              "estimated_relative_error": total_err / scale if scale else None, "max_error": max_error,
              "method": ("calibrated: Fisher-weighted k-means, GPTQ-compensated Linear/Conv2d"
                         if calibration is not None else "data-free fallback: unweighted k-means, no compensation"),
              "bits": bits if target_bpw is None else None, "target_bpw": target_bpw, "outliers": outliers,
              "sparsity": sparsity, "calibration_batches": calibration.samples if calibration else 0}
    return PTQResult(tensors, rows, calibration is not None,
                     {"model": None, "config": {}, "info": {"post_training": report}, "report": {}},
                     warnings, {"calibrate": t_cal, "total": t_all})
