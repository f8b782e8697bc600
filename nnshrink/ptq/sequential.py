"""Sequential layer-wise reconstruction towards the float model's outputs.

One-pass GPTQ / SparseGPT compresses every layer against the inputs X the FLOAT model
gives it. Once the layers before it are compressed, a layer sees other inputs X~, yet what
it should reproduce is still the float layer's output X W^T. For each output row w:

    ||X~ w~ - X w||^2 = (w~ - w*)^T H~ (w~ - w*) + const,   H~ = X~^T X~,   w* = H~^-1 X~^T X w

so running the usual compensated assignment (gptq.assign) on W* = W (X^T X~) H~^-1 with the
Hessian H~ minimises exactly the distance to the float outputs, and each layer repairs part
of the error of everything before it (embeddings included). Only swapping H for H~ while
keeping W as the target (the common "sequential" shortcut) does not do that.

Layers go group after group in the order the forward pass reaches them; layers that read the
same input tensor (a transformer's query / key / value) form one group and share one
(H~, X^T X~) pair, collected with everything before the group already compressed.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from .calibrate import layer_input_rows


class _Reached(Exception):
    """Raised by a hook once the layer of interest has its input: the rest of the forward is not needed."""


def _damped(hessian: torch.Tensor, damp: float) -> torch.Tensor:
    h = hessian.to(torch.float64).clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    return h + damp * float(torch.diag(h).mean()) * torch.eye(h.shape[0], dtype=torch.float64)


def reconstruction_target(weight: torch.Tensor, cross: torch.Tensor, hessian: torch.Tensor,
                          damp: float = 0.0) -> torch.Tensor:
    """W* = (W cross + l W) (H~ + l I)^-1 with cross = X^T X~, H~ = X~^T X~, l = damp mean(diag H~):
    the weight that maps the compressed inputs X~ closest onto the float outputs X W^T, with a
    ridge towards W itself (not towards zero: equal inputs give W back at any damping)."""
    w = weight.to(torch.float64)
    if w.dim() != 2 or tuple(cross.shape) != (w.shape[1],) * 2 or tuple(hessian.shape) != (w.shape[1],) * 2:
        raise ConfigError(f"reconstruction needs an (out, in) weight with (in, in) statistics; got weight "
                          f"{tuple(weight.shape)}, cross {tuple(cross.shape)}, Hessian {tuple(hessian.shape)}")
    h = _damped(hessian, damp)
    rhs = (cross.to(torch.float64).T + (h - hessian.to(torch.float64))) @ w.T  # (X~^T X + l I) W^T
    return torch.linalg.solve(h, rhs).T


def input_groups(model: nn.Module, batch, forward: Callable, owners: dict[str, str]) -> list[list[str]]:
    """Parameter names (of ``owners``: param -> module) grouped by the input tensor their modules
    read, groups in the order one forward pass reaches them."""
    modules = dict(model.named_modules())
    seen: list[tuple[torch.Tensor, list[str]]] = []
    by_module: dict[str, list[str]] = {}
    for p, m in owners.items():
        by_module.setdefault(m, []).append(p)
    reached = set()

    def hook(module_name):
        def run(_m, inputs, _out):
            if module_name in reached:
                return
            reached.add(module_name)
            for x, group in seen:
                if x is inputs[0]:
                    group.extend(by_module[module_name])
                    return
            seen.append((inputs[0], list(by_module[module_name])))
        return run

    hooks = [modules[m].register_forward_hook(hook(m)) for m in by_module if m in modules]
    try:
        with torch.no_grad():
            forward(model, batch)
    finally:
        for h in hooks:
            h.remove()
    return [group for _, group in seen]


def _inputs(model: nn.Module, module_name: str, batch, forward: Callable) -> torch.Tensor:
    """The input rows ``module_name`` multiplies its weight with on ``batch`` (forward stops there)."""
    module = dict(model.named_modules())[module_name]
    got = []

    def hook(m, inputs, _out):
        got.append(layer_input_rows(m, inputs[0].detach()).to(torch.float64))
        raise _Reached

    handle = module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            forward(model, batch)
    except _Reached:
        pass
    finally:
        handle.remove()
    if not got:
        raise ConfigError(f"the forward pass never reached {module_name!r}: it cannot be reconstructed sequentially")
    return got[0]


def paired_statistics(float_model: nn.Module, work: nn.Module, module_name: str, batches: list,
                      forward: Callable) -> tuple[torch.Tensor, torch.Tensor]:
    """(H~ = X~^T X~, cross = X^T X~) over ``batches``: X the float model's inputs to the
    module, X~ those of ``work`` (the partly compressed copy)."""
    h = cross = None
    for batch in batches:
        x = _inputs(float_model, module_name, batch, forward)
        xt = _inputs(work, module_name, batch, forward)
        if x.shape != xt.shape:
            raise ConfigError(f"{module_name!r} saw inputs {tuple(x.shape)} in the float model but "
                              f"{tuple(xt.shape)} in the compressed one")
        h = xt.T @ xt if h is None else h + xt.T @ xt
        cross = x.T @ xt if cross is None else cross + x.T @ xt
    return h, cross


def compress_sequentially(model: nn.Module, batches: list, forward: Callable, weights: dict[str, np.ndarray],
                          owners: dict[str, str], done: dict[str, np.ndarray],
                          compress: Callable[[str, np.ndarray, torch.Tensor], tuple], *, damp: float = 0.1,
                          say: Callable[[str], None] = lambda _m: None) -> dict[str, tuple]:
    """{name: compress(name, W*, H~)} for every weight in ``owners`` (param -> its Linear /
    Conv2d module), group after group (module doc). ``weights``: the float weights;
    ``done``: the already-compressed tensors (decoded) the work copy holds from the start
    (embeddings, layers that stay one-pass). ``model`` (holding the float weights) is not changed."""
    if not batches:
        raise ConfigError("sequential reconstruction needs calibration batches: give at least one")
    was_training = model.training
    work = copy.deepcopy(model).eval()
    float_model = model.eval()
    try:
        return _run(float_model, work, batches, forward, weights, owners, done, compress, damp, say)
    finally:
        model.train(was_training)


def _run(float_model, work, batches, forward, weights, owners, done, compress, damp, say):
    params = dict(work.named_parameters())

    def put(name, value):
        with torch.no_grad():
            params[name].copy_(torch.as_tensor(np.asarray(value)).reshape(params[name].shape).to(params[name].dtype))

    for n, v in done.items():
        if n in params:
            put(n, v)
    out = {}
    for group in input_groups(float_model, batches[0], forward, owners):
        say(f"reconstructing {', '.join(group)} from the compressed prefix's inputs")
        h, cross = paired_statistics(float_model, work, owners[group[0]], batches, forward)
        for n in group:
            w = torch.as_tensor(np.asarray(weights[n], np.float64))
            target = reconstruction_target(w.reshape(w.shape[0], -1), cross, h, damp)
            out[n] = compress(n, target.reshape(w.shape).numpy().astype(np.float32), h)
        for n in group:  # after the whole group: they share one input
            put(n, out[n][0].to_dense())
    return out
