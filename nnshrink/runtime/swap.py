"""One swap from a decoded model to the compressed runtime, and what it keeps resident.

``accelerate(model, tensors, runtime=...)`` replaces each layer whose archived weight is
pruned or shared by the layer that runs from that encoding: Linear -> SparseLinear /
CodebookLinear, Conv2d -> KernelConv2d, Embedding -> CodebookEmbedding; binary layers
are bit-packed (``binary_infer.pack_model``). ``runtime="compressed"`` swaps every such
layer and names any that has no kernel; ``"auto"`` swaps a layer only where the
measured rule (``auto_choice``) says its kernel pays and keeps the decoded torch layer
otherwise. The choice per layer is recorded as ``model.nnshrink_runtime`` so ``bench``
and ``eval`` can print it.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn as nn

from ..compressed import BinaryTensor, CompressedTensor, SharedTensor, SparseTensor
from ..errors import ConfigError, DeviceError
from .conv import KernelConv2d, conv_unsupported
from .embedding import CodebookEmbedding, embedding_unsupported
from .layers import CodebookLinear, SparseLinear

RUNTIMES = ("dense", "compressed", "auto")

# The auto rule, read off ``benchmarks/runtime_auto.py`` at batch 1, single thread (see
# benchmarks/sections/81-runtime.md): a kernel layer replaces the torch layer when its
# weight keeps at most this fraction and has at least this many kept weights. fc layers
# broke even at ~12-15 % density (300x784: x1.16 at 10 %, x0.70 at 20 %), and below ~8k
# kept weights the ~5 us Python + numba call costs what dense torch spends on the whole
# layer (100x300: x0.92 at 10 %). A conv pays at <= 15 % density (128 channels, 14x14:
# x1.69 at 10 %, x0.96 at 20 %) or with <= 128 kept weights per output channel, where torch's
# own conv is inefficient (20 x 1 x 5x5: x2.45 at 50 %; 64 x 64 x 3x3 at 20 %, 115 per
# channel: x1.37). Batch 64 pays at higher densities, but the choice is made once per
# layer, for batch 1.
AUTO_LINEAR_MAX_DENSITY = 0.12
AUTO_LINEAR_MIN_KEPT = 8192
AUTO_CONV_MAX_DENSITY = 0.15
AUTO_CONV_MAX_KEPT_PER_CHANNEL = 128

# Modules whose forward reads their Linear children's ``.weight`` directly (torch's fused
# eval fast path of the transformer layers): a kernel layer there has no weight to read.
_READS_CHILD_WEIGHTS = (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer, nn.MultiheadAttention)


def density(t: CompressedTensor) -> float:
    """Kept fraction of a sparse or shared tensor (1.0 for an unpruned one)."""
    mask = getattr(t, "mask", None)
    n = int(np.prod(t.shape)) or 1
    return 1.0 if mask is None else float(np.count_nonzero(mask)) / n


def auto_choice(kind: str, t: CompressedTensor) -> str | None:
    """Why ``auto`` keeps this layer dense torch, or None when its kernel pays."""
    n = int(np.prod(t.shape))
    return auto_rule(kind, tuple(t.shape), int(round(density(t) * n)), isinstance(t, SharedTensor))


def auto_rule(kind: str, shape: tuple[int, ...], kept: int, shared: bool) -> str | None:
    """``auto_choice`` from numbers alone (what an archive's header says), so ``inspect``
    can show the choice without loading anything."""
    n = int(np.prod(shape)) or 1
    d = kept / n
    if kind == "embedding":
        return None if shared else "a pruned-only table: dense lookup"
    if kind == "conv2d":
        per_channel = kept / max(1, shape[0])
        if d > AUTO_CONV_MAX_DENSITY and per_channel > AUTO_CONV_MAX_KEPT_PER_CHANNEL:
            return (f"density {d:.2f} > {AUTO_CONV_MAX_DENSITY} and {per_channel:.0f} kept weights per channel > "
                    f"{AUTO_CONV_MAX_KEPT_PER_CHANNEL}")
        return None
    if d > AUTO_LINEAR_MAX_DENSITY:
        return f"density {d:.2f} > {AUTO_LINEAR_MAX_DENSITY}"
    if kept < AUTO_LINEAR_MIN_KEPT:
        return f"{kept} kept weights < {AUTO_LINEAR_MIN_KEPT}"
    return None


def _kind(mod: nn.Module) -> str | None:
    return {nn.Linear: "linear", nn.Conv2d: "conv2d", nn.Embedding: "embedding"}.get(type(mod))


def _unsupported(kind: str | None, mod: nn.Module, t) -> str | None:
    if kind is None:
        return f"no compressed kernel for {type(mod).__name__}"
    if isinstance(t, SharedTensor) and getattr(t, "outlier_mask", None) is not None:
        return "dense-and-sparse outliers (no kernel adds them yet)"
    if kind == "conv2d":
        return conv_unsupported(mod)
    if kind == "embedding":
        return embedding_unsupported(mod, t)
    if isinstance(t, SharedTensor) and len(t.codebook) > 256:
        return f"{len(t.codebook)} centroids (uint8 codes take at most 256)"
    return None


def _bias_for(name: str, mod: nn.Module, tensors) -> object:
    key = f"{name}.bias" if name else "bias"
    return tensors[key] if key in tensors else getattr(mod, "bias", None)


def _build(kind: str, name: str, mod: nn.Module, t, tensors, sparse_linear_for_shared: bool) -> tuple[nn.Module, str]:
    bias = _bias_for(name, mod, tensors)
    if kind == "linear":
        if isinstance(t, SparseTensor) or sparse_linear_for_shared:
            return SparseLinear.from_compressed(t, bias), "sparse"
        return CodebookLinear.from_compressed(t, bias), "codebook"
    if kind == "conv2d":
        return KernelConv2d.from_compressed(t, mod, bias), "sparse" if isinstance(t, SparseTensor) else "codebook"
    return CodebookEmbedding(t, mod), "codebook"


def accelerate(model: nn.Module, tensors: dict[str, CompressedTensor], *, runtime: str = "compressed",
               inplace: bool = False, sparse_linear_for_shared: bool = False) -> nn.Module:
    """Swap the layers whose ``<name>.weight`` in ``tensors`` is sparse, shared or binary.

    Returns a copy unless ``inplace``; the result is inference-only and in eval mode, with
    ``nnshrink_runtime`` = {layer: "sparse" | "codebook" | "packed" | "dense (why)"}.
    """
    if runtime not in RUNTIMES:
        raise ConfigError(f"runtime must be one of {', '.join(RUNTIMES)}; got {runtime!r}")
    if not inplace:
        model = copy.deepcopy(model)
    choices: dict[str, str] = {}
    if runtime == "dense":
        model.nnshrink_runtime = choices
        return model.eval()
    off_cpu = next((t.device for t in (*model.parameters(), *model.buffers()) if t.device.type != "cpu"), None)
    if off_cpu is not None:  # the kernels are CPU code: on an accelerator every layer stays dense
        why = f"the compressed kernels run on CPU only; the model is on {off_cpu}"
        if runtime == "compressed":
            raise DeviceError(f"runtime 'compressed': {why} (move it to CPU, or use runtime 'auto' or 'dense')")
        model.nnshrink_runtime = {(n[:-len(".weight")] if n != "weight" else "(model)"): f"dense ({why})"
                                  for n, t in tensors.items() if n.endswith("weight")
                                  and isinstance(t, (SparseTensor, SharedTensor, BinaryTensor))}
        return model.eval()
    model = _pack_binary(model, tensors, choices)
    kept_dense = {f"{parent}.{child}" if parent else child
                  for parent, mod in model.named_modules() if isinstance(mod, _READS_CHILD_WEIGHTS)
                  for child, _ in mod.named_children()}
    swaps = []
    for name, mod in model.named_modules():
        t = tensors.get(f"{name}.weight" if name else "weight")
        if not isinstance(t, (SparseTensor, SharedTensor)) or name in choices:
            continue
        label = name or "(model)"
        if tuple(t.shape) != tuple(getattr(mod, "weight", torch.empty(0)).shape):
            raise ConfigError(f"{label}.weight: compressed shape {tuple(t.shape)} does not match the "
                              f"model's {tuple(getattr(mod, 'weight', torch.empty(0)).shape)}")
        kind = _kind(mod)
        why = ("its parent reads the weight directly (transformer fast path)" if name in kept_dense
               else _unsupported(kind, mod, t))
        if why is None and runtime == "auto":
            why = auto_choice(kind, t)
        elif why is not None and runtime == "compressed" and name not in kept_dense:
            raise ConfigError(f"layer {label!r} has no compressed kernel: {why}; use runtime 'auto' or 'dense'")
        if why is not None:
            choices[label] = f"dense ({why})"
            continue
        new, choices[label] = _build(kind, name, mod, t, tensors, sparse_linear_for_shared)
        swaps.append((name, new))
    for name, new in swaps:
        if not name:
            new.nnshrink_runtime = choices
            return new
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, new)
    model.nnshrink_runtime = choices
    return model.eval()


def _pack_binary(model: nn.Module, tensors, choices: dict[str, str]) -> nn.Module:
    """XNOR layers bit-packed, BWN layers decoded to float (their gain is storage on a CPU)."""
    from ..quantize.binary import BinaryConv2d, BinaryLinear

    names = {n: m for n, m in model.named_modules() if isinstance(m, (BinaryLinear, BinaryConv2d))}
    if not names:
        return model
    from .binary_infer import pack_model

    bins = {k: t for k, t in tensors.items() if isinstance(t, BinaryTensor)}
    packed = pack_model(model, bins or None)
    for n, m in names.items():
        choices[n] = "packed" if m.mode == "xnor" else "dense (BWN decoded to float)"
    return packed


def resident_weight_bytes(model: nn.Module) -> int:
    """Bytes a model holds for its weights: every parameter and buffer of torch layers,
    the compressed arrays of kernel layers, and any array a module keeps as an attribute
    (the packed binary layers)."""
    total = 0
    for mod in model.modules():
        if hasattr(mod, "weight_nbytes"):
            total += mod.weight_nbytes()
            continue
        for t in list(mod.parameters(recurse=False)) + list(mod.buffers(recurse=False)):
            total += t.numel() * t.element_size()
        for v in vars(mod).values():
            if isinstance(v, np.ndarray):
                total += v.nbytes
            elif isinstance(v, torch.Tensor) and not isinstance(v, nn.Parameter):
                total += v.numel() * v.element_size()
    return total
