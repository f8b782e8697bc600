"""Trained weight sharing (Deep Compression section 3): codebook layers you can fine-tune.

``share_weights`` clusters each compressible tensor's SURVIVING weights (never across
tensors; see ``nnshrink.select``: Linear, Conv, Embedding, attention in_proj, named
parameters) into k <= 2^b centroids and turns the tensor into ``codebook[index]``.

Mechanism (why the state_dict stays clean): the owning module's class is swapped for a
subclass whose attribute (``weight``, ``in_proj_weight``, ...) is a property returning
``codebook[index]`` through :class:`_Gather` (pruned positions index one extra slot pinned
at 0.0, so they stay exactly zero and own no index). The codebook is the Parameter
``<param>_codebook`` and the index the non-persistent buffer ``<param>_index``, both on
the owning module. The original Parameter is kept, frozen (requires_grad=False, so no
optimizer, weight decay included, ever moves it) and refreshed to the shared values, so
``state_dict()`` keys are exactly the user's: saving writes the shared weights as a plain
tensor and drops the codebook; loading a plain state into a shared layer re-fits each
centroid as the mean of the loaded weights of its cluster. The swapped class pickles as
(its base class, the shared names), so ``copy.deepcopy`` and ``torch.save`` of the whole
module work for any base class.

Fine-tuning is the user's own loop or ``nnshrink.train.fit`` with
``param_filter=finetune_filter(model)`` (codebooks + biases + norm parameters; unshared
compressible tensors frozen). The gradient of a centroid is the SUM of the gradients of
the weights sharing it (paper Eq. 3), which ``_Gather.backward`` computes with one
``index_add``. ``strip`` bakes the shared values back into a plain model.

Devices: the codebook and index live on the weight's device, and so does fine-tuning;
only the clustering itself runs on CPU (``kmeans_1d_full`` is a numba kernel), on a copy
of the surviving values.

Learning rate: because a centroid's gradient is a SUM over up to thousands of weights, SGD
needs a much smaller lr than training did (Fashion-MNIST LeNet-300-100 at 6 bits, 150
steps: SGD momentum 0.9 at lr 5e-3 diverges to 10% top-1, at 5e-4 it holds); Adam at
1e-4..1e-3 is insensitive to that scale.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from ..compressed import SharedTensor
from ..distributed import broadcast_
from ..errors import ConfigError
from ..prune.masks import module_masks
from ..select import DEFAULT_BITS, DEFAULT_INDEX_BITS, Target, compressible, owner, resolve
from .kmeans import INITS, kmeans_1d_full

CODEBOOK = "weight_codebook"  # the codebook of a module's ``weight``
INDEX = "weight_index"


def codebook_name(param_name: str) -> str:
    return param_name + "_codebook"


def index_name(param_name: str) -> str:
    return param_name + "_index"


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


def _expanded(module: nn.Module, p_name: str = "weight") -> torch.Tensor:
    cb = module._parameters[codebook_name(p_name)]
    table = torch.cat([cb, cb.new_zeros(1)])  # last slot: pruned positions, always 0.0
    return _Gather.apply(table, module._buffers[index_name(p_name)])


# ----------------------------------------------------------------------------- the layer
def _shared_property(p_name: str) -> property:
    def get(self) -> torch.Tensor:
        w = _expanded(self, p_name)
        with torch.no_grad():  # keep the stored (frozen) copy current for reports / hooks
            self._parameters[p_name].copy_(w)
        return w

    return property(get)


def _save_to_state_dict(self, destination, prefix, keep_vars):
    with torch.no_grad():
        for p_name in self._nnshrink_shared:
            self._parameters[p_name].copy_(_expanded(self, p_name))
    super(type(self), self)._save_to_state_dict(destination, prefix, keep_vars)
    for p_name in self._nnshrink_shared:
        destination.pop(prefix + codebook_name(p_name), None)


def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                          unexpected_keys, error_msgs):
    super(type(self), self)._load_from_state_dict(state_dict, prefix, local_metadata, strict,
                                                  missing_keys, unexpected_keys, error_msgs)
    for p_name in self._nnshrink_shared:
        key = prefix + codebook_name(p_name)
        if key in missing_keys:
            missing_keys.remove(key)
        if prefix + p_name in state_dict and not error_msgs:
            _refit(self, p_name)


@torch.no_grad()
def _refit(module: nn.Module, p_name: str) -> None:
    """Each centroid = mean of the stored weights of its cluster (after loading a plain state)."""
    cb = module._parameters[codebook_name(p_name)]
    idx = module._buffers[index_name(p_name)].reshape(-1).long()
    w = module._parameters[p_name].detach().reshape(-1).double()  # exact when a cluster's values are equal
    k = cb.shape[0]
    keep = idx < k
    sums = torch.zeros(k, dtype=w.dtype, device=w.device).index_add_(0, idx[keep], w[keep])
    cnt = torch.bincount(idx[keep], minlength=k).to(w.dtype)
    cb.copy_(torch.where(cnt > 0, sums / cnt.clamp(min=1), cb.double()))
    module._parameters[p_name].copy_(_expanded(module, p_name))


def _reduce_ex(self, protocol):
    """Pickle / deepcopy as (base class, shared names) + state: works for any base class."""
    return _rebuild, (type(self)._nnshrink_shared_base, type(self)._nnshrink_shared), self.__dict__


def _rebuild(base: type, names: tuple[str, ...]) -> nn.Module:
    return object.__new__(_shared_class(base, names))


_CLASSES: dict[tuple[type, tuple[str, ...]], type] = {}


def _shared_class(base: type, names: tuple[str, ...]) -> type:
    """The subclass of ``base`` whose ``names`` attributes are computed from codebooks."""
    names = tuple(sorted(names))
    cls = _CLASSES.get((base, names))
    if cls is None:
        attrs = {p: _shared_property(p) for p in names}
        attrs.update(_save_to_state_dict=_save_to_state_dict, _load_from_state_dict=_load_from_state_dict,
                     __reduce_ex__=_reduce_ex, _nnshrink_shared_base=base, _nnshrink_shared=names,
                     __module__=base.__module__)
        cls = type(f"Shared{base.__name__}", (base,), attrs)
        cls.__qualname__ = f"Shared{base.__qualname__}"
        _CLASSES[(base, names)] = cls
    return cls


def shared_params(module: nn.Module) -> tuple[str, ...]:
    """Names of the shared parameters of ``module`` itself (empty when not shared)."""
    return getattr(type(module), "_nnshrink_shared", ())


def is_shared(module: nn.Module) -> bool:
    return bool(shared_params(module))


def shared_modules(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if is_shared(m)}


def _base(module: nn.Module) -> type:
    return getattr(type(module), "_nnshrink_shared_base", type(module))


def _check_bits(b, where: str) -> int:
    if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or not 1 <= b <= 8:
        raise ConfigError(f"bits must be an integer in 1..8; got {b!r}{where}")
    return int(b)


def resolve_bits(targets: dict[str, Target], bits=None) -> dict[str, int]:
    """Bits per tensor: an int for all, or {pattern: b} (first matching pattern wins; see
    ``nnshrink.select``); unmatched tensors get ``select.DEFAULT_BITS`` of their kind."""
    if bits is None or isinstance(bits, dict):
        table = {pat: _check_bits(b, f" for pattern {pat!r}") for pat, b in (bits or {}).items()}
        return resolve(table, targets, lambda t: DEFAULT_BITS[t.kind], what="bits")
    b = _check_bits(bits, "")
    return {n: b for n in targets}


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
def _kept_mask(t: Target, module: nn.Module, w: torch.Tensor) -> torch.Tensor:
    mask = module_masks(module).get(t.param_name)
    if mask is not None:
        return mask.to(device=w.device, dtype=torch.bool)
    return w != 0


@torch.no_grad()
def _share_tensor(module: nn.Module, t: Target, bits: int, init: str, seed: int, max_iter: int,
                  index_bits: int | None) -> ShareRow:
    p_name = t.param_name
    if parametrize.is_parametrized(module, p_name):
        raise ConfigError(f"{t.name!r} has a torch parametrization; remove it before sharing")
    if p_name in shared_params(module):
        _strip_param(module, p_name)
    w = broadcast_(module._parameters[p_name].detach())  # under torchrun: rank 0's weights, so one codebook
    if not torch.isfinite(w).all():
        raise ConfigError(f"{t.name!r} has NaN or inf weights; cannot share them")
    kept = _kept_mask(t, module, w)
    n_kept = int(kept.sum())
    if n_kept == 0:
        raise ConfigError(f"{t.name!r} has no surviving (nonzero) weights; nothing to share "
                          "(leave it out with targets=...)")
    # k-means is a CPU kernel (numba): the surviving values go to CPU, and the labels and
    # centroids come back to the weight's device (CUDA weights stay on CUDA)
    vals = w[kept].to("cpu", torch.float32).numpy()
    res = kmeans_1d_full(vals, 2 ** bits, init=init, seed=seed, max_iter=max_iter)
    k = res.k_used
    index = torch.full(w.shape, k, dtype=torch.int32, device=w.device)  # int32: half of int64's memory
    index[kept] = torch.from_numpy(res.labels).to(w.device)
    param = module._parameters[p_name]
    module.__class__ = _shared_class(_base(module), shared_params(module) + (p_name,))
    module.__dict__.setdefault("_nnshrink_requires_grad", {})[p_name] = param.requires_grad
    module.__dict__.setdefault("_nnshrink_bits", {})[p_name] = bits
    param.requires_grad_(False)
    codebook = torch.from_numpy(res.centroids).to(w.device, w.dtype)
    module.register_parameter(codebook_name(p_name), nn.Parameter(codebook))
    module.register_buffer(index_name(p_name), index, persistent=False)
    param.copy_(_expanded(module, p_name))
    dense = n_kept == w.numel()
    ib = 0 if dense else (index_bits if index_bits is not None else DEFAULT_INDEX_BITS[t.kind])
    entries = n_kept if dense else relative_index_entries(kept.cpu().numpy(), ib)
    return ShareRow(t.name, t.kind, tuple(w.shape), w.numel(), n_kept, bits, k, res.inertia, init,
                    res.n_iter, ib, entries)


def share_weights(model: nn.Module, bits: int | dict[str, int] | None = None, *, targets=None,
                  init: str = "linear", seed: int = 0, max_iter: int = 100_000,
                  index_bits: int | None = None) -> list[ShareRow]:
    """Share the compressible tensors of ``model`` in place; one report row per tensor.

    ``bits``: int for every tensor, or {pattern: b} with ``select.DEFAULT_BITS`` per kind
    for the rest. ``targets``: None (every compressible tensor), include patterns, or a
    ``{name: Target}`` dict from ``select.compressible``. Surviving weights are those
    where the pruning mask is True, or, without a mask, the nonzero ones. ``index_bits``
    only sets the sparse index width of the storage estimate (default per kind).
    """
    if init not in INITS:
        raise ConfigError(f"unknown init {init!r}; choose one of {', '.join(INITS)}")
    if index_bits is not None and (isinstance(index_bits, bool) or not isinstance(index_bits, int)
                                   or not 1 <= index_bits <= 16):
        raise ConfigError(f"index_bits must be an integer in 1..16; got {index_bits!r}")
    chosen = targets if isinstance(targets, dict) else compressible(model, include=targets)
    per_tensor = resolve_bits(chosen, bits)
    rows = []
    for i, (name, t) in enumerate(chosen.items()):
        rows.append(_share_tensor(owner(model, t), t, per_tensor[name], init, seed + i, max_iter, index_bits))
    return rows


@torch.no_grad()
def _strip_param(module: nn.Module, p_name: str) -> None:
    w = _expanded(module, p_name).detach()
    param = module._parameters[p_name]
    param.copy_(w)
    del module._parameters[codebook_name(p_name)]
    del module._buffers[index_name(p_name)]
    rest = tuple(n for n in shared_params(module) if n != p_name)
    module.__class__ = _shared_class(_base(module), rest) if rest else _base(module)
    param.requires_grad_(module.__dict__.get("_nnshrink_requires_grad", {}).pop(p_name, True))
    module.__dict__.get("_nnshrink_bits", {}).pop(p_name, None)
    if not rest:
        module.__dict__.pop("_nnshrink_requires_grad", None)
        module.__dict__.pop("_nnshrink_bits", None)


def strip_module(module: nn.Module) -> nn.Module:
    """Undo sharing on one module: plain parameters holding the shared values."""
    for p_name in shared_params(module):
        _strip_param(module, p_name)
    return module


def strip(model: nn.Module) -> nn.Module:
    """Turn every shared layer back into a plain one (identical outputs); returns ``model``."""
    for mod in shared_modules(model).values():
        strip_module(mod)
    return model


def finetune_filter(model: nn.Module, train_float_layers: bool = False):
    """``param_filter`` for ``fit``: codebooks, biases and norm parameters train; the
    compressible tensors that are not shared stay frozen unless asked."""
    frozen = set()
    if not train_float_layers:
        try:
            targets = compressible(model)
        except ConfigError:  # nothing compressible: nothing to freeze
            targets = {}
        frozen = {n for n, t in targets.items() if t.param_name not in shared_params(owner(model, t))}

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
    """``{tensor name: SharedTensor}`` for every shared tensor (uint8 indices over the
    kept positions in row-major order; mask None when every position is kept)."""
    out = {}
    for name, mod in shared_modules(model).items():
        for p_name in shared_params(mod):
            cb = mod._parameters[codebook_name(p_name)].detach().to("cpu", torch.float32).numpy().copy()
            idx = mod._buffers[index_name(p_name)].to("cpu").numpy()
            k = len(cb)
            kept = idx < k
            bits = max(mod._nnshrink_bits.get(p_name, 1), int(np.ceil(np.log2(k))) if k > 1 else 1)
            mask = None if kept.all() else np.ascontiguousarray(kept)
            indices = np.ascontiguousarray(idx[kept].astype(np.uint8))
            out[f"{name}.{p_name}" if name else p_name] = SharedTensor(tuple(idx.shape), cb, indices, bits, mask)
    return out
