"""The fold stage: each BatchNorm goes into the conv / linear that feeds it.

At inference a BatchNorm is a per-channel affine map, ``y = s * (z - mean) + beta`` with
``s = gamma / sqrt(var + eps)``, so it can be folded into the layer ``z = W x + b`` in
front of it: ``W' = s * W`` (per output channel) and a shift ``s * (b - mean) + beta``.

Representation: the BatchNorm module stays (the user's class has it, and
``nnshrink.load(path, model=UserNet())`` fills every one of its state_dict keys), but
emptied: weight 1, running mean 0, running variance ``1 - eps`` (it divides by exactly
``sqrt(1 - eps + eps) = 1``) and the shift in its bias (many convs before a BN have no
bias to take it; a conv bias, if any, becomes 0). The scale goes into the weight per
output channel, so pruned zeros stay zeros and the masks stay valid, and the share stage
after it clusters the weights the deployed net really uses. A folded BN is recognised by
that state alone (``batchnorm.is_folded``): recalibration leaves it alone and retraining
keeps it in eval mode, also after a resume.

Pairs come from ``torch.fx``: a BatchNorm whose only input is a Conv1d/2d/3d or Linear
module whose only user is that BatchNorm, each module called once. A model that does not
trace is left as it is, with a note in the report (no guessing from module order: a
wrong guess would silently change the outputs). A Linear feeding BatchNorm1d is assumed
to give (N, C) outputs (its out_features must equal num_features).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ..errors import ConfigError
from . import Context, Stage, register

_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_BN = nn.modules.batchnorm._BatchNorm


@dataclass(frozen=True)
class FoldConfig:
    """No knobs: folding is exact (within float rounding) or not done."""


def _out_channels(layer: nn.Module) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


def fold_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(layer name, BatchNorm name) for every foldable pair, found with ``torch.fx``
    (raises what tracing raises when the model does not trace)."""
    import torch.fx

    graph = torch.fx.symbolic_trace(model).graph
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs = []
    for node in graph.nodes:
        bn = modules.get(node.target) if node.op == "call_module" else None
        if not isinstance(bn, _BN) or len(node.args) != 1 or node.kwargs or calls[node.target] != 1:
            continue
        prev = node.args[0]
        layer = modules.get(prev.target) if isinstance(prev, torch.fx.Node) and prev.op == "call_module" else None
        if (isinstance(layer, _LAYERS) and len(prev.users) == 1 and calls[prev.target] == 1
                and _out_channels(layer) == bn.num_features):
            pairs.append((prev.target, node.target))
    return pairs


@torch.no_grad()
def fold_into(layer: nn.Module, bn: nn.Module) -> bool:
    """Fold ``bn`` (eval-mode statistics) into ``layer`` in place; False when the shift
    has nowhere to go (a BatchNorm without affine after a layer without bias)."""
    if not bn.affine and layer.bias is None:
        return False
    var, mean = bn.running_var.double(), bn.running_mean.double()
    gamma = bn.weight.double() if bn.affine else torch.ones_like(var)
    beta = bn.bias.double() if bn.affine else torch.zeros_like(var)
    s = gamma / torch.sqrt(var + bn.eps)
    b = layer.bias.double() if layer.bias is not None else torch.zeros_like(var)
    shift = s * (b - mean) + beta
    w = layer.weight
    w.copy_((w.double() * s.view(-1, *[1] * (w.dim() - 1))).to(w.dtype))  # zeros stay zeros
    if bn.affine:
        bn.bias.copy_(shift.to(bn.bias.dtype))
        bn.weight.fill_(1.0)
        if layer.bias is not None:
            layer.bias.zero_()
    else:
        layer.bias.copy_(shift.to(layer.bias.dtype))
    bn.running_mean.zero_()
    bn.running_var.fill_(1.0 - bn.eps)
    return True


def apply(model: nn.Module, cfg: FoldConfig, ctx: Context) -> dict:
    from ..batchnorm import is_folded
    from ..quantize.share import is_shared

    bns = [n for n, m in model.named_modules() if isinstance(m, _BN) and m.track_running_stats
           and m.running_mean is not None and not is_folded(m)]
    if not bns:
        ctx.note("fold: the model has no BatchNorm to fold")
        return {"folded": [], "kept": []}
    try:
        pairs = fold_pairs(model)
    except Exception as exc:  # fx raises many kinds (TraceError, TypeError, ...) on dynamic code
        ctx.note(f"fold: the model does not trace with torch.fx ({type(exc).__name__}: {str(exc)[:120]}); "
                 "no BatchNorm folded")
        return {"folded": [], "kept": bns, "untraceable": True}
    modules = dict(model.named_modules())
    folded = []
    for layer_name, bn_name in pairs:
        if bn_name not in bns:
            continue
        if is_shared(modules[layer_name]):
            raise ConfigError(f"fold: {layer_name!r} is already shared; fold before sharing "
                              "(stages = [\"prune\", \"fold\", \"share\", \"encode\"])")
        if fold_into(modules[layer_name], modules[bn_name]):
            folded.append({"layer": layer_name, "bn": bn_name})
    done = {f["bn"] for f in folded}
    kept = [n for n in bns if n not in done]
    if kept:
        ctx.note(f"fold: {len(kept)} BatchNorm layer(s) not fed by a conv / linear alone stay as they are "
                 f"({', '.join(kept[:3])}{', ...' if len(kept) > 3 else ''})")
    return {"folded": folded, "kept": kept}


register(Stage("fold", FoldConfig, apply, rung=lambda tensors: "folded", order=15))
