"""Post-training compression of a model with (or without) calibration data.

``compress_model(model, calibrate=..., bits=4)`` or ``target_bpw=B``: every float tensor
with >= 2 dims and >= ``min_numel`` values is shared through ``layer.compress_weight``
(sensitivity-weighted codebook, dense-and-sparse outliers, GPTQ / SparseGPT compensation
where the layer is a Linear / Conv2d with calibration inputs; with calibration,
``sparsity`` prunes only those layers); every other tensor is
stored exactly (or as float16 with ``half_small``). Without calibration data the
importances are all one and nothing is compensated: the data-free fallback, labelled so
in the report.

With ``target_bpw`` every layer is compressed at each candidate setting, its record
bytes measured with the archive writer, and ``allocate`` picks per-layer settings of least
estimated error whose file fits B bits per weight (all tensors, header included); the
file is then measured and the budget tightened by any excess until it fits. With
``candidate_steps`` (default ``GRID_STEPS``) the candidates are uniform grids of those steps
(x each tensor's RMS, entropy-coded: quantize/uniform.py); ``candidate_bits`` gives 2^b
k-means codebooks instead; ``step`` sets one grid
for every layer. With ``probe`` (off by default) and calibration batches (``calibrate``), each
layer's candidate errors are rescaled by one measured output error on those batches
(probe.py); on all-MiniLM-L6-v2 at 3.2 and 5.3 bits per weight that moved the mean cosine by less
than a thousandth for ~60 s more (benchmarks/sections/25-post-training.md), so it is an option. With
``max_error`` E (needs calibration) the same candidates give the fewest bytes whose
estimated relative output error -- the summed layer estimates over the calibration
outputs' energy sum(out^2); for small errors about 2 (1 - cosine) -- stays <= E.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn

from ..compressed import CompressedTensor, DenseTensor
from ..errors import ConfigError
from ..format.layout import ALIGN
from ..format.writer import encode_tensor, serialize
from .allocate import BudgetError, Candidate, allocate, allocate_for_error
from .calibrate import Calibration, _batches, collect, default_forward
from .layer import LayerSetting, compress_weight, row_sensitivity
from .probe import output_errors
from .sequential import compress_sequentially
from .sparsity import sparsity_by_layer as sparsity_by_layer_
from .tune import check_steps, tune_exact_parameters

# default budget candidates: uniform grids from ~1 to ~7 bits per weight, sqrt(2) apart (half a bit)
GRID_STEPS = (2.0, 1.4, 1.0, 0.7, 0.5, 0.35, 0.25, 0.18, 0.125, 0.09, 0.0625, 0.044)
SPARSITY_OVER = ("compensated", "all")  # which tensors a calibrated sparsity prunes
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


def _label(setting: LayerSetting) -> str:
    return f"step {setting.step:g} x RMS" if setting.step is not None else f"{setting.bits} bits"


def _compressible(state: dict[str, torch.Tensor], min_numel: int) -> list[str]:
    return [n for n, t in state.items() if t.is_floating_point() and t.dim() >= 2 and t.numel() >= min_numel]


def _stored_exactly(name: str, t: torch.Tensor, half_small: bool) -> DenseTensor:
    """A tensor the codebooks do not take: float16 with ``half_small``, else exactly as it is."""
    if t.dtype == torch.float32 and half_small:
        return DenseTensor(t.numpy(), half=True)
    from ..post_training import exact_array
    return DenseTensor(exact_array(name, t))


def _owner_map(model: nn.Module, names: list[str]) -> dict[str, str]:
    params = dict(model.named_parameters())
    return {n: n.rsplit(".", 1)[0] if "." in n else "" for n in names if n in params}


def compress_model(model: nn.Module, calibrate=None, *, forward: Callable | None = None, bits: int | None = 4,
                   outliers: float = 0.0, sparsity: float = 0.0, target_bpw: float | None = None,
                   max_error: float | None = None,
                   candidate_bits=None, min_numel: int = 1024, half_small: bool = False,
                   damp: float = 0.1, calibration: Calibration | None = None, force: bool = False,
                   state: dict[str, torch.Tensor] | None = None,
                   progress: Callable[[str], None] | None = None, step: float | None = None,
                   candidate_steps=None, probe: bool = False, probe_batches: int | None = 8,
                   tune_steps: int = 0, sparsity_by_layer: bool = False, sequential: bool = False,
                   sparsity_over: str = "compensated", skip_sums: dict[str, str] | None = None,
                   prune_rounds: int = 1) -> PTQResult:
    """Compress ``model``'s state post-training (module doc); the model is not changed.
    ``state`` (default: the model's state_dict) is what gets stored, e.g. a weight file's
    tensors, buffers the model does not hold included; calibration uses the model.
    ``tune_steps`` N > 0 (needs ``calibrate`` batches): afterwards the exactly-stored
    parameters are tuned N Adam steps towards the float model's outputs (tune.py).
    ``sparsity_by_layer`` (with ``sparsity`` S and calibration): each compensated layer's
    fraction is chosen so that S of all their weights are pruned at least error (sparsity.py;
    with ``probe``, the estimates are rescaled by measured errors).
    ``sparsity_over`` "all" (with calibration): the sparsity also prunes the lookup tables
    (embeddings): SparseGPT with their lookups' output-gradient matrix (calibrate.py), rows
    weighed by their Fisher sums; so ``sparsity_by_layer`` spreads S over all compressed
    weights; default "compensated": those keep every row.
    ``sequential`` (with ``calibrate`` batches and a fixed setting): the compensated layers are
    compressed group after group towards the float layers' outputs from the inputs the
    already-compressed prefix gives them (sequential.py); ``skip_sums`` {layer module: the
    module reading its output plus a skip connection} (e.g. ``hf.post_norm_sums``) makes
    those layers restore the float sum instead, repairing what the skip path carries.
    ``prune_rounds`` R > 1: calibrated pruning chooses its mask in R rounds, refitting the kept
    weights by least squares after each (refit.py; slower, less error than SparseGPT's one pass);
    with ``sparsity_by_layer`` the fractions are chosen on one-pass errors, then pruned so."""
    tune_steps = check_steps(tune_steps)
    if sparsity_over not in SPARSITY_OVER:
        raise ConfigError(f"sparsity_over must be one of {', '.join(SPARSITY_OVER)}; got {sparsity_over!r}")
    if not isinstance(sequential, bool):
        raise ConfigError(f"sequential must be true or false; got {sequential!r}")
    if sequential and (target_bpw is not None or max_error is not None):
        raise ConfigError("sequential reconstruction needs a fixed setting (bits or step, sparsity), not a budget "
                          f"(got target_bpw {target_bpw!r}, max_error {max_error!r})")
    if skip_sums is not None and not (sequential and isinstance(skip_sums, dict)):
        raise ConfigError(f"skip_sums must be a dict of module names and needs sequential=True; got {skip_sums!r}")
    if sequential and calibrate is None:
        raise ConfigError("sequential reconstruction needs calibration batches (calibrate=): each layer's inputs "
                          "are collected from the compressed prefix on them")
    if not isinstance(sparsity_by_layer, bool):
        raise ConfigError(f"sparsity_by_layer must be true or false; got {sparsity_by_layer!r}")
    if sparsity_by_layer and (target_bpw is not None or max_error is not None or not sparsity > 0):
        raise ConfigError(f"sparsity by layer needs a sparsity > 0 (the overall fraction) and a fixed setting "
                          f"(bits or step), not a budget; got sparsity {sparsity!r}")
    if sparsity_by_layer and calibrate is None and calibration is None:
        raise ConfigError("sparsity by layer needs calibration data: each layer's pruning error is measured on it")
    if tune_steps and calibrate is None:
        raise ConfigError("tune_steps needs calibration batches (calibrate=): the tuning fits the float model's "
                          "outputs on them")
    if not isinstance(probe, bool):
        raise ConfigError(f"probe must be true or false; got {probe!r}")
    if probe and (calibrate is None or (target_bpw is None and max_error is None and not sparsity_by_layer)):
        raise ConfigError("probe rescales the error estimates of a per-layer choice by errors measured on "
                          "calibration batches: give a budget (--target-bpw / --max-error) or sparsity by layer, and "
                          "the calibration data")
    if target_bpw is not None and not (isinstance(target_bpw, (int, float)) and 0 < target_bpw <= 32):
        raise ConfigError(f"target bits per weight must be in (0, 32]; got {target_bpw!r}")
    if max_error is not None and not (isinstance(max_error, (int, float)) and max_error > 0):
        raise ConfigError(f"max error must be > 0; got {max_error!r}")
    if max_error is not None and target_bpw is not None:
        raise ConfigError("give a bit budget (target_bpw) or an error bound (max_error), not both")
    if max_error is not None and calibrate is None and calibration is None:
        raise ConfigError("an error bound (--max-error) needs calibration data: the error is measured on it")
    if target_bpw is None and max_error is None:
        fixed_setting = LayerSetting(8 if step is not None else bits, outliers, sparsity, step,
                                     prune_rounds)  # validates
    # candidates of a budget: k-means codebooks of candidate_bits, or uniform grids of candidate_steps
    if candidate_bits is not None and candidate_steps is not None:
        raise ConfigError("give candidate_bits (k-means codebooks) or candidate_steps (uniform grids), not both")
    if candidate_bits is not None:
        candidates = [LayerSetting(b, outliers, sparsity, rounds=prune_rounds) for b in candidate_bits]
    else:
        steps = GRID_STEPS if candidate_steps is None else candidate_steps
        candidates = [LayerSetting(8, outliers, sparsity, float(st), prune_rounds) for st in steps]
    if not candidates:
        raise ConfigError("give at least one candidate setting (candidate_bits or candidate_steps)")
    say = progress or (lambda _msg: None)
    state = {n: t.detach().cpu() for n, t in (model.state_dict() if state is None else state).items()}
    names = _compressible(state, min_numel)
    t0 = time.perf_counter()
    batches = list(_batches(calibrate)) if calibrate is not None else None
    if calibration is None and batches is not None:
        say("calibrating")
        calibration = collect(model, batches, forward=forward, weights=_owner_map(model, names))
    t_cal = time.perf_counter() - t0
    fisher = calibration.fisher if calibration else {}
    hessian = calibration.hessian if calibration else {}
    lookup = calibration.lookup if calibration else {}

    def one(name, setting: LayerSetting):
        w = state[name].to(torch.float32).numpy()
        imp = fisher[name].numpy() if name in fisher else None
        # calibrated pruning is SparseGPT's: only where error compensation repairs it (Linear / Conv2d
        # layers with inputs); lookup tables (embeddings) keep every row, rare tokens included
        prune = setting.sparsity if calibration is None or name in hessian or sparsity_over == "all" else 0.0
        h, rows = hessian.get(name), None
        if h is None and prune > 0 and name in lookup and imp is not None:
            # a pruned lookup table: SparseGPT with its lookups' output-gradient matrix; rows the
            # calibration never looked up still count (floor: the mean row's Fisher)
            h, rows = lookup[name], row_sensitivity(imp)
        return compress_weight(w, replace(setting, sparsity=prune), imp, h, damp=damp, row_scale=rows)

    tensors: dict[str, CompressedTensor] = {}
    for n, t in state.items():
        if n not in names:
            tensors[n] = _stored_exactly(n, t, half_small)
    fixed = sum(record_bytes(n, t) for n, t in tensors.items()) + 1024  # preamble, header frame, metadata
    chosen: dict[str, tuple[int, CompressedTensor, float]] = {}
    warnings = []
    factors: dict[str, float] = {}
    if target_bpw is None and max_error is None:
        if sparsity_by_layer:
            measure = None
            if probe and batches is not None:
                def measure(dense):
                    return output_errors(model, batches, forward or default_forward, dense, limit=probe_batches)
            by_layer, measured = sparsity_by_layer_(
                [n for n in names if n in hessian or sparsity_over == "all"], {n: state[n].numel() for n in names},
                replace(fixed_setting, rounds=1), one,
                measure=measure, say=say)
            if fixed_setting.rounds > 1:  # fractions chosen on one-pass errors (cheap); masks then in rounds
                for n, (setting, _t, _e) in by_layer.items():
                    setting = replace(setting, rounds=fixed_setting.rounds)
                    if sequential and n in hessian:
                        by_layer[n] = (setting, None, 0.0)  # compressed below, in sequence
                    else:
                        say(f"pruning {n} in {setting.rounds} rounds")
                        by_layer[n] = (setting, *one(n, setting))
            chosen.update(by_layer)
            factors.update(measured)
        for n in (n for n in names if n not in chosen):
            if sequential and n in hessian:
                chosen[n] = (fixed_setting, None, 0.0)  # compressed below, from the compressed prefix's inputs
                continue
            say(f"compressing {n} at {_label(fixed_setting)}")
            t, err = one(n, fixed_setting)
            chosen[n] = (fixed_setting, t, err)
        if sequential:
            owners = _owner_map(model, [n for n in names if n in hessian])

            def again(n, target, h):
                return compress_weight(target, chosen[n][0], fisher[n].numpy() if n in fisher else None, h, damp=damp)

            redone = compress_sequentially(
                model, batches, forward or default_forward, {n: state[n].to(torch.float32).numpy() for n in owners},
                owners, {n: v[1].to_dense() for n, v in chosen.items() if n not in owners}, again, damp=damp,
                restore=skip_sums, say=say)
            chosen.update({n: (chosen[n][0], *redone[n]) for n in redone})
            missing = [n for n, v in chosen.items() if v[1] is None]
            for n in missing:  # a layer the forward pass never reached: one pass, as without ``sequential``
                t, err = one(n, chosen[n][0])
                chosen[n] = (chosen[n][0], t, err)
    else:
        total_numel = sum(t.numel() for t in state.values())
        options, made = {}, {}
        for n in names:
            say(f"measuring {n} at {', '.join(_label(c) for c in candidates)}")
            options[n] = []
            for c in candidates:
                t, err = one(n, c)
                made[(n, c)] = (t, err)
                options[n].append(Candidate(c, record_bytes(n, t), err))
        if probe and batches is not None:  # rescale each layer's estimates by one measured error (probe.py)
            say("measuring each layer's output error on the calibration batches")
            mid = candidates[len(candidates) // 2]
            measured = output_errors(model, batches, forward or default_forward,
                                     {n: made[(n, mid)][0].to_dense() for n in names}, limit=probe_batches)
            for n, m in measured.items():
                est = made[(n, mid)][1]
                factors[n] = m / est if est > 0 and m > 0 else 1.0
                options[n] = [replace(c, error=c.error * factors[n]) for c in options[n]]
                made.update({(n, c): (made[(n, c)][0], made[(n, c)][1] * factors[n]) for c in candidates})
        budget = int(target_bpw * total_numel / 8) - fixed if target_bpw is not None else 0
        if max_error is not None:
            scale = max(calibration.output_energy, 1e-30)
            try:
                pick = allocate_for_error(options, max_error * scale)
            except BudgetError:
                least = sum(min(c.error for c in v) for v in options.values()) / scale
                if not force:
                    raise BudgetError(f"--max-error {max_error:g} cannot be met: the least reachable estimated "
                                      f"relative output error is {least:.4g} with candidates "
                                      f"{[_label(c) for c in candidates]} (use --force to write that with a "
                                      "warning)", 0) from None
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
                                      f"{closest:.3f} bits per weight with candidates "
                                      f"{[_label(c) for c in candidates]} "
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
    tensors.update({n: v[1] for n, v in chosen.items()})
    tensors = {n: tensors[n] for n in state}  # the model's order
    tuned = None
    if tune_steps:
        say(f"tuning norms and biases, {tune_steps} steps")
        decoded = {n: tensors[n].to_dense() for n in names}
        values, tuned = tune_exact_parameters(model, decoded, [n for n in state if n not in names], batches,
                                              forward or default_forward, steps=tune_steps,
                                              progress=progress is not None)
        for n, v in values.items():
            tensors[n] = _stored_exactly(n, torch.from_numpy(v).to(state[n].dtype), half_small)
    t_all = time.perf_counter() - t0
    rows = []
    for n in state:
        if n in chosen:
            setting, t, err = chosen[n]
            n_out = int(t.outlier_mask.sum()) if t.outlier_mask is not None else 0
            rows.append({"name": n, "shape": list(t.shape), "bits": t.bits, "step": setting.step,
                         "outliers": n_out, "sparsity": float(1 - t.mask.mean()) if t.mask is not None else 0.0,
                         "compensated": n in hessian, "estimated_error": err,
                         "probe_factor": factors.get(n)})
    scale = calibration.output_energy if calibration is not None and calibration.output_energy > 0 else None
    total_err = sum(v[2] for v in chosen.values())
    report = {"calibrated": calibration is not None,
              "estimated_relative_error": total_err / scale if scale else None, "max_error": max_error,
              "method": ("calibrated: Fisher-weighted k-means, GPTQ-compensated Linear/Conv2d"
                         + ("; pruned embeddings compensated through their lookups' output gradients"
                            if sparsity > 0 and sparsity_over == "all" and lookup else "")
                         + ("; sequential: each layer reconstructs the float outputs from the compressed "
                            "prefix's inputs" if sequential else "")
                         + (f"; pruning masks chosen in {prune_rounds} rounds of least-squares refits"
                            if sparsity > 0 and prune_rounds > 1 else "")
                         if calibration is not None else "data-free fallback: unweighted k-means, no compensation")
              + (f"; {tuned['what']}" if tuned else ""),
              "bits": bits if target_bpw is None and step is None else None, "step": step,
              "candidates": [_label(c) for c in candidates] if target_bpw is not None or max_error is not None
              else None, "probed": bool(factors), "target_bpw": target_bpw, "outliers": outliers,
              "sparsity": sparsity, "calibration_batches": calibration.samples if calibration else 0,
              "sparsity_by_layer": sparsity_by_layer, "sparsity_over": sparsity_over, "sequential": sequential,
              "skip_sums_restored": len(skip_sums) if skip_sums else 0, "prune_rounds": prune_rounds, "tuned": tuned}
    return PTQResult(tensors, rows, calibration is not None,
                     {"model": None, "config": {}, "info": {"post_training": report}, "report": {}},
                     warnings, {"calibrate": t_cal, "total": t_all})
