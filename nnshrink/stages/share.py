"""The share stage: k-means weight sharing per tensor, then centroid fine-tuning.

Bits per tensor: the first ``layers`` pattern that matches, else ``fc_bits`` /
``conv_bits`` when set, else ``select.DEFAULT_BITS`` by kind. The codebooks stay in the
model while the trainer runs, so fine-tuning moves centroids, never single weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn as nn

from ..distill import check_distill
from ..errors import ConfigError
from . import Context, Stage, check_retrain_options, check_widths, register, retrain_options

INITS = ("linear", "density", "random")


@dataclass(frozen=True)
class ShareConfig:
    fc_bits: int | None = None  # None: select.DEFAULT_BITS["fc"]
    conv_bits: int | None = None  # None: select.DEFAULT_BITS["conv"]
    layers: dict[str, int] = field(default_factory=dict)
    init: str = "linear"
    finetune_epochs: float = 1.0
    # A centroid's gradient is the SUM over every weight sharing it (paper Eq. 3), so
    # centroid steps are large: 1/100 of the training lr (SGD 0.05 -> 5e-4) holds accuracy
    # where 1/10 collapsed both LeNets to chance (measured in the sharing benchmarks).
    lr_factor: float = 0.01
    # w > 0: centroid fine-tuning learns w parts from the dense net's soft targets (nnshrink.distill)
    distill: float = 0.0
    distill_temperature: float = 4.0
    # against overfitting in centroid fine-tuning (nnshrink.train.TrainConfig): EMA decay of
    # the centroids per step, random pixel shifts, label smoothing; 0 = off
    average: float = 0.0
    shift: int = 0
    label_smoothing: float = 0.0
    schedule: str = ""  # the retraining's lr schedule; "": the training's (cosine)

    def __post_init__(self):
        check_retrain_options("share", self.average, self.shift, self.label_smoothing, self.schedule)
        if self.distill > 0 and self.label_smoothing > 0:
            raise ConfigError("share.label_smoothing smooths the labels' cross-entropy, which share.distill "
                              "replaces; use one of them")
        check_widths("share", {"fc_bits": self.fc_bits, "conv_bits": self.conv_bits}, self.layers, 1, 8)
        if self.init not in INITS:
            raise ConfigError(f"share.init must be one of {', '.join(INITS)}; got {self.init!r}")
        if not self.finetune_epochs >= 0:
            raise ConfigError(f"share.finetune_epochs must be >= 0; got {self.finetune_epochs}")
        if not 0 < self.lr_factor <= 1:
            raise ConfigError(f"share.lr_factor must be in (0, 1]; got {self.lr_factor}")
        check_distill("share", self.distill, self.distill_temperature)


def bits_plan(model: nn.Module, cfg: ShareConfig) -> dict[str, int]:
    """{tensor name: bits} for every compressible tensor."""
    from ..select import DEFAULT_BITS, compressible, resolve

    kind_bits = {**DEFAULT_BITS, **{k: v for k, v in (("fc", cfg.fc_bits), ("conv", cfg.conv_bits)) if v}}
    return resolve(dict(cfg.layers) or None, compressible(model), lambda t: kind_bits[t.kind], what="share.layers")


def apply(model: nn.Module, cfg: ShareConfig, ctx: Context) -> dict:
    from ..quantize.share import finetune_filter, share_weights

    bits = bits_plan(model, cfg)
    rows = share_weights(model, bits, init=cfg.init, seed=ctx.seed)
    bn = [ctx.recalibrate(model, "share", "sharing",
                          by_training=cfg.finetune_epochs > 0 and ctx.trainer is not None)]
    if ctx.retrain(model, cfg.finetune_epochs, "share", lr_factor=cfg.lr_factor, weight_decay=0.0,
                   param_filter=finetune_filter(model), distill=cfg.distill, temperature=cfg.distill_temperature,
                   **retrain_options(cfg), desc="centroid fine-tuning"):
        bn.append(ctx.recalibrate(model, "share", "centroid fine-tuning", by_training=True))
    return {"bits": bits, "layers": [r if isinstance(r, dict) else r.as_dict() for r in rows],
            "bn_recalibrated": [r for r in bn if r is not None]}


def _rung(tensors) -> str:
    return "pruned+shared" if any(getattr(t, "mask", None) is not None for t in tensors.values()) else "shared"


register(Stage("share", ShareConfig, apply, rung=_rung, retrains=lambda cfg: cfg.finetune_epochs > 0,
               check=bits_plan, order=20))
