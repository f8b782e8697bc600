"""The binary stage: packs the binary layers of a BWN / XNOR model (they train binary
from scratch, so there is nothing to retrain here) as 1-bit signs + per-channel scales."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch.nn as nn

from ..compressed import BinaryTensor
from ..errors import ConfigError
from . import Context, Stage, export_all, register


@dataclass(frozen=True)
class BinaryConfig:
    """``half_scales`` stores each output channel's scale as float16: with 500-800 weights
    per channel, float32 scales alone hold a layer under 31x of its float32 size."""

    half_scales: bool = True


def apply(model: nn.Module, cfg: BinaryConfig, ctx: Context) -> dict:
    from ..quantize.binary import export_binary

    names = sorted(export_binary(model))
    if not names:
        raise ConfigError("recipe 'binary' needs a model with binary layers (e.g. lenet5-bwn, lenet5-xnor)")
    return {"layers": names}


def export(model: nn.Module, cfg: BinaryConfig):
    return {n: replace(t, half_scales=cfg.half_scales) if isinstance(t, BinaryTensor) else t
            for n, t in export_all(model).items()}


register(Stage("binary", BinaryConfig, apply, rung=lambda tensors: "binary", export=export, order=10,
               exclusive=True))
