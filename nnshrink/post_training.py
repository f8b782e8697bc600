"""Post-training compression of any safetensors file: no model, no data, no retraining.

Lossless settings: ``sparsity=0`` and ``bits=None`` (``nnshrink compress --no-retrain``
without --sparsity or --bits). Every tensor is then stored raw in its own dtype and
shape -- 0-d, float64, float16, bfloat16, integer and bool tensors included -- and
``decompress`` gives it back bit for bit. Lossy settings (``sparsity > 0`` or ``bits``)
prune and share the float tensors with at least ``min_numel`` values and 2 dimensions,
which come back as float32; every other tensor is still stored exactly.

Nothing retrains afterwards, so the report says what each lossy tensor lost: its
reconstruction error (relative L2 of the decoded tensor against the input) per layer row
and in the summary, and a warning when that error passes ``REL_ERROR_WARN`` or when
pruning is asked (the CLI prints warnings on stderr).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from .checkpoint import LazyTensors
from .compressed import CompressedTensor, DenseTensor, SharedTensor, SparseTensor
from .errors import ConfigError
from .format.layout import BFLOAT16
from .sizes import tensor_bytes

# "Large" reconstruction error: a relative L2 error of 0.1 is a 20 dB signal-to-noise ratio
# per tensor, and with nothing retraining, the errors of successive layers add up (a dozen
# independent ones at 0.1 reach about 0.35 at the output). Measured on a 512x512 Gaussian
# tensor: 8-bit sharing 0.009, 6-bit 0.026, 5-bit 0.050, 4-bit 0.098 (the edge); pruning
# half of it 0.27 and 90 % of it 0.75, whatever the bits.
REL_ERROR_WARN = 0.1
_ERROR_CHUNK = 1 << 22  # elements per float64 slice when measuring the error
PRUNE_WARNING = ("pruning without retraining ({sparsity:g} of every large float tensor): nothing repairs what "
                 "it removes, and a pretrained network can turn into noise; prefer --bits 8 alone, or retrain "
                 "(a zoo model with --dataset, your own with --model-factory / --data-factory)")

# torch dtypes the archive stores raw (format/SPEC.md); bfloat16 travels as its 16 bits.
_RAW_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32,
               torch.int16, torch.int8, torch.uint8, torch.bool)


def exact_array(name: str, t: torch.Tensor) -> np.ndarray:
    """``t`` as a numpy array of the same dtype, shape and bits (0-d stays 0-d)."""
    if t.dtype not in _RAW_DTYPES:
        raise ConfigError(f"tensor {name!r} has dtype {str(t.dtype).removeprefix('torch.')}, which the archive "
                          f"cannot store; supported: {', '.join(str(d).removeprefix('torch.') for d in _RAW_DTYPES)}")
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(BFLOAT16)
    return t.numpy()


def compress_tensors(
    input_path: str | os.PathLike,
    output: str | os.PathLike,
    *,
    sparsity: float,
    bits: int | None,
    index_bits: int | None = None,
    huffman: bool = True,
    min_numel: int = 1024,
) -> dict[str, Any]:
    """Per tensor, magnitude pruning to ``sparsity`` and k-means sharing at ``bits``; small
    or non-float tensors, and every tensor at the lossless settings, stay raw and exact."""
    from .format import read_archive, write_archive
    from .format.errors import show
    from .quantize.kmeans import kmeans_1d

    if not 0 <= sparsity < 1:
        raise ConfigError(f"sparsity must be in [0, 1); got {sparsity}")
    if bits is not None and not (isinstance(bits, int) and 1 <= bits <= 8):
        raise ConfigError(f"bits must be an integer in 1..8; got {bits}")
    input_path, output = Path(input_path), Path(output)
    tensors_in = LazyTensors(input_path)  # one tensor in memory at a time (VGG-16 scale)
    lossless = sparsity == 0 and bits is None
    out: dict[str, CompressedTensor] = {}
    idx_bits: dict[str, int] = {}
    original = 0
    for name, t in tensors_in.items():
        original += tensor_bytes(t)  # its own dtype: an int64 tensor is 8 bytes per element
        if lossless or not t.is_floating_point() or t.dim() < 2 or t.numel() < min_numel:
            out[name] = DenseTensor(exact_array(name, t))
            continue
        arr = t.detach().to(torch.float32).numpy()
        if not np.isfinite(arr).all():
            raise ConfigError(f"tensor {name!r} holds NaN or inf values; cannot compress it")
        mask = None
        if sparsity > 0:
            k = int(round(sparsity * arr.size))
            thresh = -1
            if k > 0:
                mags = np.abs(arr).ravel()
                mags.partition(k - 1)  # in place: no second full-size copy of the tensor
                thresh = mags[k - 1]
                del mags
            mask = (arr > thresh) | (arr < -thresh)  # |arr| > thresh without a third copy
        kept = arr[mask] if mask is not None else arr.ravel()
        if bits is None:
            out[name] = SparseTensor(arr.shape, mask, kept) if mask is not None else DenseTensor(arr)
        else:
            if kept.size == 0:
                cents, labels = np.zeros(1, np.float32), np.zeros(0, np.uint8)
            else:
                cents, labels = kmeans_1d(kept.astype(np.float32), min(2 ** bits, kept.size), init="linear")
            out[name] = SharedTensor(arr.shape, np.asarray(cents, np.float32), np.asarray(labels, np.uint8), bits, mask)
        idx_bits[name] = index_bits or (8 if arr.ndim > 2 else 5)
    meta = {"model": None, "config": {}, "nnshrink_version": __version__,
            "info": {"source": input_path.name, "sparsity": sparsity, "bits": bits}, "report": {}}
    write_archive(output, out, meta, index_bits=idx_bits, huffman=huffman)
    del out  # the read-back archive below holds the same encodings
    archive = read_archive(output)
    size = output.stat().st_size
    decoded = {name: archive.tensors[name] for name in idx_bits}  # decoded one at a time below
    errors = reconstruction_errors(tensors_in, decoded, lossy=list(idx_bits))  # the lossy ones
    layers = archive.layer_rows() if hasattr(archive, "layer_rows") else [r.as_dict() for r in archive.records]
    for row in layers:
        row["rel_error"] = errors.get(row["name"], 0.0)
    worst = max(errors, key=errors.get, default=None)
    warnings = [PRUNE_WARNING.format(sparsity=sparsity)] if sparsity > 0 else []
    if worst is not None and errors[worst] > REL_ERROR_WARN:
        large = sum(e > REL_ERROR_WARN for e in errors.values())
        warnings.append(f"reconstruction error (relative L2) above {REL_ERROR_WARN:g} in {large} of {len(errors)} "
                        f"compressed tensors, worst {errors[worst]:.3f} in {show(worst)}: expect a clear loss in "
                        "quality with no retraining (use more --bits, less --sparsity)")
    return {"input": str(input_path), "output": str(output), "model": None, "original_bytes": original,
            "compressed_bytes": size, "ratio": original / size, "top1_before": None, "top1_after": None,
            "stages": [{"stage": "post-training", "sparsity": sparsity, "bits": bits, "lossless": lossless}],
            "max_rel_error": errors[worst] if worst is not None else 0.0, "max_rel_error_tensor": worst,
            "rel_error_warn": REL_ERROR_WARN, "warnings": warnings, "layers": layers}


def reconstruction_errors(original: dict[str, torch.Tensor], decoded: dict[str, np.ndarray], *,
                          lossy) -> dict[str, float]:
    """Relative L2 error ||decoded - original|| / ||original|| of every tensor in ``lossy``
    (the others are stored exactly: error 0); 0 for an all-zero tensor decoded as zeros."""
    out = {}
    for name in lossy:
        got, t = decoded[name], original[name].detach()
        ref = (t if t.dtype in (torch.float32, torch.float64) else t.to(torch.float32)).numpy().ravel()
        got = (got.to_dense() if hasattr(got, "to_dense") else got).ravel()
        diff2 = norm2 = 0.0
        for i in range(0, ref.size, _ERROR_CHUNK):  # float64 in chunks: no full-size float64 copies
            r = ref[i:i + _ERROR_CHUNK].astype(np.float64)
            diff2 += float(np.square(got[i:i + _ERROR_CHUNK].astype(np.float64) - r).sum())
            norm2 += float(np.square(r).sum())
        diff, norm = diff2 ** 0.5, norm2 ** 0.5
        out[name] = diff / norm if norm > 0 else (0.0 if diff == 0 else 1.0)
    return out
