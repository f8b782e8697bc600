"""Calibration statistics from a few real inputs: what post-training compression knows.

Two numbers per compressible weight tensor, gathered in one pass over the batches:

- ``fisher[name]``: the Fisher diagonal, E[(d out / d w)^2] summed over the output. No
  labels are needed: the output is projected on a fresh Gaussian direction r per batch
  and sample, and E_r[(grad <out, r>)^2] equals the summed squared Jacobian row, so one
  backward pass per batch estimates it (cross-sample terms vanish in expectation).
- ``hessian[name]``: X^T X of the inputs each Linear / Conv2d layer saw (conv inputs
  unfolded into patches), the layer-wise proxy Hessian of OBQ / GPTQ / SparseGPT.
- ``lookup[name]``: G^T G of the output gradients (same projection) at every row an
  nn.Embedding looked up: how a change of a row's entries moves the output, one matrix for
  all rows (a row's own is too rarely seen to estimate), so pruning a table can compensate
  its kept entries the way SparseGPT does a Linear layer's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import ConfigError


@dataclass
class Calibration:
    """Per-weight sensitivities and per-layer input second moments (float64, CPU)."""

    fisher: dict[str, torch.Tensor] = field(default_factory=dict)
    hessian: dict[str, torch.Tensor] = field(default_factory=dict)
    lookup: dict[str, torch.Tensor] = field(default_factory=dict)  # nn.Embedding: G^T G of output gradients
    samples: int = 0  # batches seen
    rows: dict[str, int] = field(default_factory=dict)  # input rows (tokens / patches) per layer
    output_energy: float = 0.0  # mean over batches of sum(out^2): the scale of the estimated errors


def default_forward(model: nn.Module, batch) -> torch.Tensor:
    """``model(batch)``; a dict batch goes in as keywords, a (inputs, labels) pair as its inputs."""
    if isinstance(batch, dict):
        out = model(**batch)
    elif isinstance(batch, (tuple, list)):
        out = model(batch[0])
    else:
        out = model(batch)
    if isinstance(out, torch.Tensor):
        return out
    for key in ("last_hidden_state", "logits"):
        if hasattr(out, key):
            return getattr(out, key)
    raise ConfigError(f"the model's output is a {type(out).__name__}, not a tensor; pass forward= to pick one")


def _batches(calibrate) -> Iterable:
    if callable(calibrate):
        calibrate = calibrate()
    if isinstance(calibrate, torch.Tensor) or not isinstance(calibrate, Iterable):
        raise ConfigError(f"calibrate= must be an iterable of batches or a callable returning one; "
                          f"got {type(calibrate).__name__}")
    return calibrate


def _shape_of(batch) -> str:
    if isinstance(batch, torch.Tensor):
        return str(tuple(batch.shape))
    if isinstance(batch, dict):
        return "{" + ", ".join(f"{k}: {_shape_of(v)}" for k, v in batch.items()) + "}"
    if isinstance(batch, (tuple, list)):
        return "(" + ", ".join(_shape_of(v) for v in batch) + ")"
    return type(batch).__name__


def layer_input_rows(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The input rows a layer multiplies its (out, in) weight matrix with: (rows, in)."""
    if isinstance(module, nn.Conv2d):
        cols = nn.functional.unfold(x, module.kernel_size, dilation=module.dilation, padding=module.padding,
                                    stride=module.stride)  # (B, C*kh*kw, L)
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])
    return x.reshape(-1, x.shape[-1])


def collect(model: nn.Module, calibrate, *, forward: Callable | None = None, weights: dict[str, str] | None = None,
            seed: int = 0, max_batches: int | None = None) -> Calibration:
    """Fisher diagonals of the parameters named in ``weights`` (param name -> owning module
    name) and input Hessians of the Linear / Conv2d (groups=1) modules that own them."""
    forward = forward or default_forward
    modules = dict(model.named_modules())
    params = dict(model.named_parameters())
    weights = weights if weights is not None else {n: n.rsplit(".", 1)[0] if "." in n else "" for n, p in params.items()
                                                   if p.dim() >= 2 and p.is_floating_point()}
    cal = Calibration(fisher={n: torch.zeros(params[n].shape, dtype=torch.float64) for n in weights})
    hooks = []
    for pname, mname in weights.items():
        mod = modules.get(mname)
        if isinstance(mod, nn.Linear) or (isinstance(mod, nn.Conv2d) and mod.groups == 1):
            def hook(m, inputs, _out, pname=pname):
                rows = layer_input_rows(m, inputs[0].detach()).to(torch.float64)
                h = (rows.T @ rows).cpu()  # computed where the model runs, kept on CPU
                cal.hessian[pname] = cal.hessian[pname] + h if pname in cal.hessian else h
                cal.rows[pname] = cal.rows.get(pname, 0) + rows.shape[0]
            hooks.append(mod.register_forward_hook(hook))
        elif isinstance(mod, nn.Embedding):
            def grad_hook(g, pname=pname):
                rows = g.detach().reshape(-1, g.shape[-1]).to(torch.float64)
                h = (rows.T @ rows).cpu()
                cal.lookup[pname] = cal.lookup[pname] + h if pname in cal.lookup else h

            def lookup_hook(m, _inputs, out, grad_hook=grad_hook):
                if out.requires_grad:
                    out.register_hook(grad_hook)
            hooks.append(mod.register_forward_hook(lookup_hook))
    gen = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    grads_before = {n: p.requires_grad for n, p in params.items()}
    try:
        for n, p in params.items():
            p.requires_grad_(n in weights)
        for batch in _batches(calibrate):
            if max_batches is not None and cal.samples >= max_batches:
                break
            model.zero_grad(set_to_none=True)
            try:
                out = forward(model, batch)
            except (RuntimeError, ValueError, TypeError, IndexError) as exc:
                raise ConfigError(f"calibration batch {_shape_of(batch)} does not fit the model: "
                                  f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
            if not out.is_floating_point():
                raise ConfigError(f"the model's calibration output must be floating point; got {out.dtype}")
            cal.output_energy += float((out.detach().to(torch.float64) ** 2).sum())
            r = torch.randn(out.shape, generator=gen, dtype=out.dtype).to(out.device)  # same draws on any device
            (out * r).sum().backward()
            for n in weights:
                g = params[n].grad
                if g is not None:
                    cal.fisher[n] += (g.detach().to(torch.float64) ** 2).cpu()
            cal.samples += 1
    finally:
        for h in hooks:
            h.remove()
        for n, p in params.items():
            p.requires_grad_(grads_before[n])
            p.grad = None
        model.train(was_training)
    if cal.samples == 0:
        raise ConfigError("calibration data is empty: give at least one batch")
    for n, f in cal.fisher.items():
        if not torch.isfinite(f).all():
            raise ConfigError(f"sensitivities of {n!r} are not finite (NaN or inf gradients): check the "
                              "calibration data and the model's output")
        f /= cal.samples
    cal.output_energy /= cal.samples
    return cal
