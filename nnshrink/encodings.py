"""The encodings of a model compressed in-process: one exporter for every stage.

Each stage exports what it installed (pruning: masks; sharing: codebook + index; binary
layers: signs + scales), so the archive gets exactly what the stages earned, read from
the live model rather than re-derived from final float weights.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from .compressed import CompressedTensor, DenseTensor
from .prune.masks import export_sparse
from .quantize.binary import export_binary
from .quantize.share import export_shared

_NUMPY_LESS = (torch.bfloat16,)  # dtypes numpy cannot hold: stored as float32


def _dense(value: torch.Tensor) -> DenseTensor:
    value = value.detach().cpu()
    if value.dtype in _NUMPY_LESS:
        value = value.float()
    return DenseTensor(value.contiguous().clone().numpy())  # a copy (not a view of the live tensor); 0-d stays 0-d


@torch.no_grad()
def export_encodings(model: nn.Module) -> dict[str, CompressedTensor]:
    """Every ``state_dict`` tensor of ``model`` as a CompressedTensor, in state_dict order.

    SharedTensor for shared tensors (their pruning mask kept), SparseTensor for pruned
    ones, BinaryTensor for binary layers, DenseTensor in its own dtype for the rest.
    The model stays as it is (masks and codebooks installed).
    """
    special: dict[str, CompressedTensor] = {**export_sparse(model), **export_shared(model),
                                            **export_binary(model)}
    return {key: special[key] if key in special else _dense(value) for key, value in model.state_dict().items()}
