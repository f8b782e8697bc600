"""Trained weight sharing (Deep Compression section 3): codebook layers you can fine-tune.

``share_weights`` clusters each chosen Linear / Conv layer's SURVIVING weights (never
across layers) into k <= 2^b centroids and turns the layer into ``codebook[index]``.

Mechanism (why the state_dict stays clean): the module's class is swapped for a
subclass whose ``weight`` is a property returning ``codebook[index]`` through
:class:`_Gather` (pruned positions index one extra slot pinned at 0.0, so they stay
exactly zero and own no index). The codebook is the Parameter ``weight_codebook``; the
index is a non-persistent buffer ``weight_index``. The original ``weight`` Parameter is
kept, frozen (requires_grad=False) and refreshed to the shared values, so
``state_dict()`` keys are exactly the user's (``weight``, ``bias``): saving writes the
shared weights as a plain tensor and drops ``weight_codebook``; loading a plain state
into a shared layer re-fits each centroid as the mean of the loaded weights of its
cluster. A shared model therefore checkpoints as a plain model.

Fine-tuning is the ordinary ``nnshrink.train.fit`` loop with
``param_filter=finetune_filter(model)`` (codebooks + biases + norm parameters; float
Linear/Conv weights frozen). The gradient of a centroid is the SUM of the gradients of
the weights sharing it (paper Eq. 3), which ``_Gather.backward`` computes with one
``index_add``. ``strip`` bakes the shared values back into a plain model.

Learning rate: because a centroid's gradient is a SUM over up to thousands of weights, SGD
needs a much smaller lr than training did (Fashion-MNIST LeNet-300-100 at 6 bits, 150
steps: SGD momentum 0.9 at lr 5e-3 diverges to 10% top-1, at 5e-4 it holds); Adam at
1e-4..1e-3 is insensitive to that scale.
"""

from __future__ import annotations

import fnmatch
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from ..compressed import SharedTensor
from ..errors import ConfigError
from .kmeans import INITS, kmeans_1d_full

CODEBOOK = "weight_codebook"
INDEX = "weight_index"
MASK = "weight_mask"  # the pruning stage's non-persistent mask buffer, if present
DEFAULT_BITS = {"conv": 8, "fc": 5}
DEFAULT_INDEX_BITS = {"conv": 8, "fc": 5}  # relative-index width of the paper's text


# ----------------------------------------------------------------------------- autograd
class _Gather(torch.autograd.Function):
    """``table[index]`` whose backward is Eq. 3: dL/dc_k = sum over {i: index_i = k} of dL/dW_i."""

    @staticmethod
    def forward(ctx, table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(index)
        ctx.k = table.shape[0]
        return table[index]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (index,) = ctx.saved_tensors
        g = grad.new_zeros(ctx.k).index_add_(0, index.reshape(-1), grad.reshape(-1))
        return g, None


def centroid_grad(weight_grad: torch.Tensor, index: torch.Tensor, k: int) -> torch.Tensor:
    """Eq. 3 on its own: per-centroid sum of the weight gradients (index < 0 or >= k ignored)."""
    idx = index.reshape(-1).long()
    keep = (idx >= 0) & (idx < k)
    return weight_grad.new_zeros(k).index_add_(0, idx[keep], weight_grad.reshape(-1)[keep])


def _expanded(module: nn.Module) -> torch.Tensor:
    cb = module._parameters[CODEBOOK]
    table = torch.cat([cb, cb.new_zeros(1)])  # last slot: pruned positions, always 0.0
    return _Gather.apply(table, module._buffers[INDEX])


# ----------------------------------------------------------------------------- the layer
def _get_weight(self) -> torch.Tensor:
    w = _expanded(self)
    with torch.no_grad():  # keep the stored (frozen) copy current for reports / hooks
        self._parameters["weight"].copy_(w)
    return w


def _save_to_state_dict(self, destination, prefix, keep_vars):
    with torch.no_grad():
        self._parameters["weight"].copy_(_expanded(self))
    super(type(self), self)._save_to_state_dict(destination, prefix, keep_vars)
    destination.pop(prefix + CODEBOOK, None)


def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                          unexpected_keys, error_msgs):
    super(type(self), self)._load_from_state_dict(state_dict, prefix, local_metadata, strict,
                                                  missing_keys, unexpected_keys, error_msgs)
    key = prefix + CODEBOOK
    if key in missing_keys:
        missing_keys.remove(key)
    if prefix + "weight" in state_dict and not error_msgs:
        with torch.no_grad():  # re-fit: each centroid = mean of the loaded weights of its cluster
            cb = self._parameters[CODEBOOK]
            idx = self._buffers[INDEX].reshape(-1).long()
            w = self._parameters["weight"].detach().reshape(-1)
            k = cb.shape[0]
            keep = idx < k
            sums = torch.zeros(k, dtype=w.dtype, device=w.device).index_add_(0, idx[keep], w[keep])
            cnt = torch.bincount(idx[keep], minlength=k).to(w.dtype)
            cb.copy_(torch.where(cnt > 0, sums / cnt.clamp(min=1), cb))
            self._parameters["weight"].copy_(_expanded(self))


_CLASSES: dict[type, type] = {}


def _shared_class(base: type) -> type:
    cls = _CLASSES.get(base)
    if cls is None:
        name = f"Shared{base.__name__}"
        cls = type(name, (base,), {
            "weight": property(_get_weight),
            "_save_to_state_dict": _save_to_state_dict,
            "_load_from_state_dict": _load_from_state_dict,
            "_nnshrink_shared_base": base,
            "__module__": __name__,
        })
        if name not in globals():  # picklable by name for the common bases
            globals()[name] = cls
            cls.__qualname__ = name
        _CLASSES[base] = cls
    return cls


def is_shared(module: nn.Module) -> bool:
    return getattr(type(module), "_nnshrink_shared_base", None) is not None


def shared_modules(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if is_shared(m)}


# ----------------------------------------------------------------------------- selection
def layer_kind(module: nn.Module) -> str | None:
    """"fc" for Linear, "conv" for ConvNd, None for anything else."""
    if isinstance(module, nn.Linear):
        return "fc"
    if isinstance(module, nn.modules.conv._ConvNd):
        return "conv"
    return None


def _matches(name: str, kind: str, pat: str) -> bool:
    return pat == kind or fnmatch.fnmatchcase(name, pat) or fnmatch.fnmatchcase(f"{name}.weight", pat)


def _check_bits(b, where: str) -> int:
    if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or not 1 <= b <= 8:
        raise ConfigError(f"bits must be an integer in 1..8; got {b!r}{where}")
    return int(b)


def select_shareable(model: nn.Module, layers=None) -> dict[str, nn.Module]:
    """Linear / Conv layers by name; ``layers`` patterns (fnmatch, or "fc" / "conv" for a
    whole kind) narrow the choice, and each pattern must match something."""
    found = {n: m for n, m in model.named_modules() if layer_kind(m) is not None}
    if not found:
        raise ConfigError(f"model {type(model).__name__} has no Linear or Conv layer to share")
    if layers is None:
        return found
    if isinstance(layers, str):
        layers = [layers]
    out = {}
    for pat in layers:
        if not isinstance(pat, str) or not pat:
            raise ConfigError(f"layer pattern must be a non-empty string; got {pat!r}")
        hit = [n for n, m in found.items() if _matches(n, layer_kind(m), pat)]
        if not hit:
            raise ConfigError(f"layer pattern {pat!r} matches no Linear/Conv layer; layers are: {', '.join(found)}")
        out.update({n: found[n] for n in hit})
    return {n: out[n] for n in found if n in out}


def resolve_bits(layers: dict[str, nn.Module], bits=None) -> dict[str, int]:
    """Bits per layer: an int for all, or {pattern: b} (first matching pattern wins; a
    pattern may be "fc" / "conv"; unmatched layers get the defaults conv 8 / fc 5)."""
    if bits is None or isinstance(bits, dict):
        table = dict(bits or {})
        for pat, b in table.items():
            _check_bits(b, f" for pattern {pat!r}")
            if not any(_matches(n, layer_kind(m), pat) for n, m in layers.items()):
                raise ConfigError(f"bits pattern {pat!r} matches no selected layer; layers are: {', '.join(layers)}")
        out = {}
        for n, m in layers.items():
            kind = layer_kind(m)
            out[n] = next((int(b) for pat, b in table.items() if _matches(n, kind, pat)), DEFAULT_BITS[kind])
        return out
    b = _check_bits(bits, "")
    return {n: b for n in layers}


# ----------------------------------------------------------------------------- report
@dataclass(frozen=True)
class ShareRow:
    """One shared layer: what it costs to store (weights n*b + codebook k*32 [+ sparse index])."""

    name: str
    kind: str
    shape: tuple[int, ...]
    params: int
    kept: int
    bits: int
    k_used: int
    inertia: float
    init: str
    iterations: int
    index_bits: int  # relative-index width (0 when dense)
    index_entries: int  # kept weights + filler zeros of the relative index (== kept when dense)

    @property
    def storage_bits(self) -> int:
        """n*b + k*32 when dense; pruned: (kept + fillers) * (b + index_bits) + k*32."""
        return self.index_entries * (self.bits + self.index_bits) + self.k_used * 32

    @property
    def ratio(self) -> float:
        return self.params * 32 / self.storage_bits

    def as_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        d["storage_bits"] = self.storage_bits
        d["ratio"] = round(self.ratio, 3)
        return d


def relative_index_entries(mask: np.ndarray | None, index_bits: int) -> int:
    """Entries of a relative-index sparse layout (gap to the previous kept position,
    row-major, 1..2^index_bits per entry; a longer gap inserts filler zeros)."""
    if mask is None:
        return 0
    pos = np.flatnonzero(np.asarray(mask).reshape(-1))
    if len(pos) == 0:
        return 0
    gaps = np.diff(np.concatenate(([-1], pos)))
    return int(np.sum(-(-gaps // (1 << index_bits))))


# ----------------------------------------------------------------------------- verbs
def _kept_mask(name: str, module: nn.Module, w: torch.Tensor) -> torch.Tensor:
    mask = module._buffers.get(MASK)
    if mask is not None:
        mask = mask.to(device=w.device, dtype=torch.bool)
        if mask.shape != w.shape:
            raise ConfigError(f"layer {name!r}: weight_mask shape {tuple(mask.shape)} does not fit weight {tuple(w.shape)}")
        return mask
    return w != 0


@torch.no_grad()
def _share_layer(name: str, module: nn.Module, bits: int, init: str, seed: int, max_iter: int,
                 index_bits: int | None) -> ShareRow:
    if parametrize.is_parametrized(module, "weight"):
        raise ConfigError(f"layer {name!r} has a torch parametrization on weight; remove it before sharing")
    if is_shared(module):
        strip_module(module)
    w = module.weight.detach()
    if not torch.isfinite(w).all():
        raise ConfigError(f"layer {name!r} has NaN or inf weights; cannot share them")
    kept = _kept_mask(name, module, w)
    n_kept = int(kept.sum())
    if n_kept == 0:
        raise ConfigError(f"layer {name!r} has no surviving (nonzero) weights; nothing to share "
                          "(leave it out with layers=...)")
    vals = w[kept].to("cpu", torch.float32).numpy()
    res = kmeans_1d_full(vals, 2 ** bits, init=init, seed=seed, max_iter=max_iter)
    k = res.k_used
    index = torch.full(w.shape, k, dtype=torch.int32, device=w.device)  # int32: half of int64's memory
    index[kept] = torch.from_numpy(res.labels).to(w.device)
    param = module._parameters["weight"]
    module.__class__ = _shared_class(type(module))
    module._nnshrink_weight_requires_grad = param.requires_grad
    module._nnshrink_bits = bits
    param.requires_grad_(False)
    module.register_parameter(CODEBOOK, nn.Parameter(torch.from_numpy(res.centroids).to(w.device, w.dtype)))
    module.register_buffer(INDEX, index, persistent=False)
    param.copy_(_expanded(module))
    kind = layer_kind(module)
    dense = n_kept == w.numel()
    ib = 0 if dense else (index_bits if index_bits is not None else DEFAULT_INDEX_BITS[kind])
    entries = n_kept if dense else relative_index_entries(kept.cpu().numpy(), ib)
    return ShareRow(name, kind, tuple(w.shape), w.numel(), n_kept, bits, k, res.inertia, init,
                    res.n_iter, ib, entries)


def share_weights(model: nn.Module, bits: int | dict[str, int] | None = None, *, init: str = "linear",
                  layers=None, seed: int = 0, max_iter: int = 100_000,
                  index_bits: int | None = None) -> list[ShareRow]:
    """Share the weights of ``model``'s Linear/Conv layers in place; one report row per layer.

    ``bits``: int for every layer, or {pattern: b} with defaults conv 8 / fc 5 (see
    ``resolve_bits``). Surviving weights are those where ``weight_mask`` (pruning's buffer)
    is True, or, without a mask, the nonzero ones. ``index_bits`` only sets the sparse
    index width used for the storage estimate (default fc 5 / conv 8).
    """
    if init not in INITS:
        raise ConfigError(f"unknown init {init!r}; choose one of {', '.join(INITS)}")
    if index_bits is not None and (isinstance(index_bits, bool) or not isinstance(index_bits, int)
                                   or not 1 <= index_bits <= 16):
        raise ConfigError(f"index_bits must be an integer in 1..16; got {index_bits!r}")
    chosen = select_shareable(model, layers)
    per_layer = resolve_bits(chosen, bits)
    rows = []
    for i, (name, mod) in enumerate(chosen.items()):
        rows.append(_share_layer(name, mod, per_layer[name], init, seed + i, max_iter, index_bits))
    return rows


@torch.no_grad()
def strip_module(module: nn.Module) -> nn.Module:
    """Undo sharing on one layer: a plain layer whose weight holds the shared values."""
    if not is_shared(module):
        return module
    w = _expanded(module).detach()
    param = module._parameters["weight"]
    param.copy_(w)
    del module._parameters[CODEBOOK]
    del module._buffers[INDEX]
    module.__class__ = type(module)._nnshrink_shared_base
    param.requires_grad_(module.__dict__.pop("_nnshrink_weight_requires_grad", True))
    module.__dict__.pop("_nnshrink_bits", None)
    return module


def strip(model: nn.Module) -> nn.Module:
    """Turn every shared layer back into a plain one (identical outputs); returns ``model``."""
    for mod in shared_modules(model).values():
        strip_module(mod)
    return model


def finetune_filter(model: nn.Module, train_float_layers: bool = False):
    """``param_filter`` for ``fit``: codebooks, biases and other small parameters train;
    the weights of Linear/Conv layers that are not shared stay frozen unless asked."""
    frozen = set()
    if not train_float_layers:
        for name, mod in model.named_modules():
            if layer_kind(mod) is not None and not is_shared(mod):
                frozen.add(f"{name}.weight" if name else "weight")

    def keep(name: str, p: nn.Parameter) -> bool:
        return name not in frozen

    return keep


def finetune(model: nn.Module, data, cfg, *, train_float_layers: bool = False, **fit_kwargs):
    """Centroid fine-tuning = ``nnshrink.train.fit`` with ``finetune_filter`` (no new loop)."""
    from ..train import fit

    if not shared_modules(model):
        raise ConfigError("model has no shared layers; call share_weights first")
    fit_kwargs.setdefault("desc", "finetune codebooks")
    return fit(model, data, cfg, param_filter=finetune_filter(model, train_float_layers), **fit_kwargs)


@torch.no_grad()
def export_shared(model: nn.Module) -> dict[str, SharedTensor]:
    """``{"<layer>.weight": SharedTensor}`` for every shared layer (uint8 indices over the
    kept positions in row-major order; mask None when every position is kept)."""
    out = {}
    for name, mod in shared_modules(model).items():
        cb = mod._parameters[CODEBOOK].detach().to("cpu", torch.float32).numpy().copy()
        idx = mod._buffers[INDEX].to("cpu").numpy()
        k = len(cb)
        kept = idx < k
        bits = max(getattr(mod, "_nnshrink_bits", 1), int(np.ceil(np.log2(k))) if k > 1 else 1)
        mask = None if kept.all() else np.ascontiguousarray(kept)
        indices = np.ascontiguousarray(idx[kept].astype(np.uint8))
        key = f"{name}.weight" if name else "weight"
        out[key] = SharedTensor(tuple(idx.shape), cb, indices, bits, mask)
    return out
