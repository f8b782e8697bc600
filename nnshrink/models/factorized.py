"""The ``factorized`` model: a registered base model with some layers rewritten into
low-rank pairs (nnshrink.arch.factorize). Its config {base, base_config, plan} fully
describes the structure, so factorised checkpoints load like any other."""

from __future__ import annotations

import torch.nn as nn

from . import register_model


@register_model("factorized", description="a base model with low-rank factorised layers (nnshrink factorize)",
                base="lenet5", base_config={}, plan={})
def factorized(base: str, base_config: dict, plan: dict) -> nn.Module:
    from ..arch.factorize import build_factorized

    return build_factorized(base, base_config, plan)
