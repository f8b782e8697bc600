"""Sequential layer-wise reconstruction towards the float model's outputs.

One-pass GPTQ / SparseGPT compresses every layer against the inputs X the FLOAT model
gives it. Once the layers before it are compressed, a layer sees other inputs X~, yet what
it should reproduce is still the float layer's output X W^T. For each output row w:

    ||X~ w~ - X w||^2 = (w~ - w*)^T H~ (w~ - w*) + const,   H~ = X~^T X~,   w* = H~^-1 X~^T X w

so running the usual compensated assignment (gptq.assign) on W* = W (X^T X~) H~^-1 with the
Hessian H~ minimises exactly the distance to the float outputs, and each layer repairs part
of the error of everything before it (embeddings included). Only swapping H for H~ while
keeping W as the target (the common "sequential" shortcut) does not do that. Written as a
correction, W*^T = W^T + H~^-1 X~^T (T - T~): T the float outputs, T~ those of the layer
(still float) on X~. With a ridge l = damp mean(diag H~) the correction pulls towards W,
not towards zero. Where a layer's output is summed with a skip connection before anything
reads it (a transformer's attention / FFN output projection before its LayerNorm), the
target T can be that sum (``restore``: layer -> the module reading the sum): then the layer
also repairs the error the skip path carries.

Layers go group after group in the order the forward pass reaches them; layers that read the
same input tensor (a transformer's query / key / value) form one group and share one H~,
collected with everything before the group already compressed.

On all-MiniLM-L6-v2 with half of the Linear weights pruned this raised the mean cosine by
about two hundredths over one pass, and restoring the skip sums by about one more
hundredth with per-layer fractions; with the embeddings pruned too, the embeddings' error
dominates and the gain is a few thousandths (benchmarks/sections/27-post-training-sparsity.md).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from .calibrate import layer_input_rows
from .gptq import damped


class _Reached(Exception):
    """Raised by a hook once everything wanted is captured: the rest of the forward is not needed."""


def reconstruction_target(weight: torch.Tensor, gap: torch.Tensor, hessian: torch.Tensor,
                          damp: float = 0.0) -> torch.Tensor:
    """W* = W + gap^T (H~ + l I)^-1 with gap = X~^T (T - X~ W^T), H~ = X~^T X~, l = damp mean(diag H~):
    the weight that maps the compressed inputs X~ closest onto the target outputs T, with a
    ridge towards W itself (equal inputs and T = X W^T give W back at any damping)."""
    w = weight.to(torch.float64)
    if w.dim() != 2 or tuple(gap.shape) != (w.shape[1], w.shape[0]) or tuple(hessian.shape) != (w.shape[1],) * 2:
        raise ConfigError(f"reconstruction needs an (out, in) weight with an (in, out) gap and an (in, in) Hessian; "
                          f"got weight {tuple(weight.shape)}, gap {tuple(gap.shape)}, Hessian {tuple(hessian.shape)}")
    return w + torch.linalg.solve(damped(hessian, damp), gap.to(torch.float64)).T


def output_rows(module: nn.Module, y: torch.Tensor) -> torch.Tensor:
    """A layer's outputs (or a same-shaped sum of them) as rows aligned with ``layer_input_rows``."""
    if isinstance(module, nn.Conv2d):
        return y.flatten(2).transpose(1, 2).reshape(-1, y.shape[1])
    return y.reshape(-1, y.shape[-1])


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


def _capture(model: nn.Module, batch, forward: Callable, wanted: dict) -> dict[object, torch.Tensor]:
    """{key: rows} for ``wanted`` {key: (module name, take(module, inputs, output) -> rows)}; the
    forward pass stops once every key is captured."""
    modules = dict(model.named_modules())
    by_module: dict[str, list] = {}
    for key, (name, take) in wanted.items():
        by_module.setdefault(name, []).append((key, take))
    got = {}

    def hook(name):
        def run(m, inputs, output):
            for key, take in by_module[name]:
                if key not in got:
                    got[key] = take(m, inputs, output).detach().to(torch.float64)
            if len(got) == len(wanted):
                raise _Reached
        return run

    handles = [modules[n].register_forward_hook(hook(n)) for n in by_module]
    try:
        with torch.no_grad():
            forward(model, batch)
    except _Reached:
        pass
    finally:
        for h in handles:
            h.remove()
    missing = sorted({wanted[k][0] for k in wanted if k not in got})
    if missing:
        raise ConfigError(f"the forward pass never reached {', '.join(missing)}: cannot reconstruct sequentially")
    return got


def paired_statistics(float_model: nn.Module, work: nn.Module, layers: list[str], batches: list, forward: Callable,
                      restore: dict[str, str] | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(H~ = X~^T X~, {layer: gap = X~^T (T - T~)}) over ``batches`` for ``layers`` (module
    names reading one input): X~ the inputs in ``work`` (the partly compressed copy), T the
    float model's outputs of each layer (or, with ``restore``, the input of the module
    reading the layer's output plus a skip connection), T~ the same in ``work``."""
    restore = restore or {}
    modules = dict(float_model.named_modules())
    unknown = sorted(v for v in (restore.get(n) for n in layers) if v is not None and v not in modules)
    if unknown:
        raise ConfigError(f"skip-sum modules {unknown} are not in the model")

    def target(layer):
        owner = modules[layer]
        if layer in restore:
            return restore[layer], lambda m, i, o: output_rows(owner, i[0])
        return layer, lambda m, i, o: output_rows(owner, o)

    targets = {("t", n): target(n) for n in layers}
    h, gaps = None, {}
    for batch in batches:
        want = _capture(float_model, batch, forward, targets)
        have = _capture(work, batch, forward, {"x": (layers[0], lambda m, i, o: layer_input_rows(m, i[0])),
                                               **targets})
        xt = have["x"]
        h = xt.T @ xt if h is None else h + xt.T @ xt
        for n in layers:
            t, tt = want[("t", n)], have[("t", n)]
            if t.shape != tt.shape or t.shape[0] != xt.shape[0]:
                raise ConfigError(f"{n!r}: float outputs {tuple(t.shape)}, compressed {tuple(tt.shape)} and inputs "
                                  f"{tuple(xt.shape)} do not line up row by row")
            g = xt.T @ (t - tt)
            gaps[n] = g if n not in gaps else gaps[n] + g
    return h, gaps


def compress_sequentially(model: nn.Module, batches: list, forward: Callable, weights: dict[str, np.ndarray],
                          owners: dict[str, str], done: dict[str, np.ndarray],
                          compress: Callable[[str, np.ndarray, torch.Tensor], tuple], *, damp: float = 0.1,
                          restore: dict[str, str] | None = None,
                          say: Callable[[str], None] = lambda _m: None) -> dict[str, tuple]:
    """{name: compress(name, W*, H~)} for every weight in ``owners`` (param -> its Linear /
    Conv2d module), group after group (module doc). ``weights``: the float weights;
    ``done``: the already-compressed tensors (decoded) the work copy holds from the start
    (embeddings, layers that stay one-pass); ``restore``: see the module doc. ``model``
    (holding the float weights) is not changed."""
    if not batches:
        raise ConfigError("sequential reconstruction needs calibration batches: give at least one")
    was_training = model.training
    work = copy.deepcopy(model).eval()
    float_model = model.eval()
    try:
        return _run(float_model, work, batches, forward, weights, owners, done, compress, damp, restore, say)
    finally:
        model.train(was_training)


def _run(float_model, work, batches, forward, weights, owners, done, compress, damp, restore, say):
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
        h, gaps = paired_statistics(float_model, work, [owners[n] for n in group], batches, forward, restore)
        for n in group:
            w = torch.as_tensor(np.asarray(weights[n], np.float64))
            target = reconstruction_target(w.reshape(w.shape[0], -1), gaps[owners[n]], h, damp)
            out[n] = compress(n, target.reshape(w.shape).numpy().astype(np.float32), h)
        for n in group:  # after the whole group: they share one input
            put(n, out[n][0].to_dense())
    return out
