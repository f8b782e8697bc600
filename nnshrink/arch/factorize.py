"""Factorise a trained model: low-rank replacements initialised from its own weights.

Three rewrites, each a truncated SVD of the trained weight (exact at full rank):

- ``spatial`` (kxk conv): a kx1 conv to R channels, then a 1xk conv. The kernel
  W[o, c, i, j] is read as a matrix M[(c, i), (o, j)] = U S V^T; the kx1 filters are
  U sqrt(S), the 1xk filters sqrt(S) V^T. Costs R*k*(c + o) instead of o*c*k*k.
- ``channel`` (kxk conv): a bottleneck, a kxk conv to R channels then a 1x1 conv;
  M[o, (c, i, j)]. Costs R*(c*k*k + o).
- ``linear`` (fc): Linear(i, R) then Linear(R, o); costs R*(i + o) instead of i*o.

A *plan* ``{layer name: {"kind": ..., "rank": R}}`` says what was rewritten. It is all
that is needed to rebuild the structure, so a factorised model is saved as the
registered model ``factorized`` with config {base, base_config, plan}: ``nnshrink eval``
and every other loader rebuild it like any other checkpoint.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..errors import ConfigError

KINDS = ("spatial", "channel", "linear")
CONV_MODES = ("spatial", "channel")


class Factorized(nn.Sequential):
    """Two layers standing in for one (``first`` then ``second``); bias on ``second``."""


@dataclass(frozen=True)
class LayerChoice:
    name: str
    kind: str
    rank: int
    max_rank: int
    params_before: int
    params_after: int
    energy: float  # fraction of the squared singular values kept

    def as_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "rank": self.rank, "max_rank": self.max_rank,
                "params_before": self.params_before, "params_after": self.params_after,
                "ratio": self.params_before / max(self.params_after, 1), "energy": self.energy}


def _eligible_kind(module: nn.Module, conv_mode: str) -> str | None:
    """The rewrite that applies to ``module``, or None (1x1 / grouped / odd-padded convs)."""
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, nn.Conv2d):
        if module.groups != 1 or module.padding_mode != "zeros" or isinstance(module.padding, str):
            return None
        kh, kw = module.kernel_size
        if conv_mode == "spatial" and kh > 1 and kw > 1:
            return "spatial"
        if conv_mode == "channel" and kh * kw > 1:
            return "channel"
    return None


def _matrix(module: nn.Module, kind: str) -> torch.Tensor:
    w = module.weight.detach().to("cpu", torch.float64)
    if kind == "linear":
        return w  # (o, i)
    if kind == "channel":
        return w.reshape(w.shape[0], -1)  # (o, c*kh*kw)
    o, c, kh, kw = w.shape
    return w.permute(1, 2, 0, 3).reshape(c * kh, o * kw)  # (c*kh, o*kw)


def max_rank(module: nn.Module, kind: str) -> int:
    shape = _shape(module, kind)
    return min(shape)


def _shape(module: nn.Module, kind: str) -> tuple[int, int]:
    if kind == "linear":
        return module.out_features, module.in_features
    o, c = module.out_channels, module.in_channels
    kh, kw = module.kernel_size
    if kind == "channel":
        return o, c * kh * kw
    return c * kh, o * kw


def factorized_weights(module: nn.Module, kind: str, rank: int) -> int:
    """Weights (not biases) of the factorised pair at ``rank``."""
    if kind == "linear":
        return rank * (module.in_features + module.out_features)
    o, c = module.out_channels, module.in_channels
    kh, kw = module.kernel_size
    if kind == "channel":
        return rank * (c * kh * kw + o)
    return rank * (c * kh + o * kw)


def _energy_rank(s: torch.Tensor, energy: float) -> int:
    power = s.pow(2)
    cum = torch.cumsum(power, 0) / power.sum().clamp_min(1e-300)
    return int(torch.searchsorted(cum, torch.tensor(energy - 1e-12, dtype=cum.dtype, device=cum.device)).item()) + 1


def _budget_rank(module: nn.Module, kind: str, ratio: float) -> int:
    """Largest rank whose factorised weights are at most ``ratio`` of the original's."""
    per_rank = factorized_weights(module, kind, 1)
    return max(1, int(ratio * module.weight.numel() // per_rank))


def plan_factorization(model: nn.Module, *, rank: int | None = None, energy: float | None = None,
                       ratio: float | None = None, layers: list[str] | None = None,
                       conv_mode: str = "spatial", min_weights: int = 10_000) -> list[LayerChoice]:
    """Choose a rank per layer. Exactly one of ``rank`` (the same R everywhere), ``energy``
    (smallest R keeping that fraction of sum(s^2)) or ``ratio`` (largest R whose layer keeps
    at most that fraction of its weights; the default, 0.5) decides it.

    ``layers`` names the layers to rewrite; by default every conv / fc layer with at least
    ``min_weights`` weights where the rewrite saves weights (tiny first / last layers cost
    accuracy and save nothing worth having). A named layer whose rank exceeds what it
    allows is an error.
    """
    if sum(v is not None for v in (rank, energy, ratio)) > 1:
        raise ConfigError("give at most one of rank, energy and ratio")
    if rank is None and energy is None and ratio is None:
        ratio = 0.5
    if rank is not None and (not isinstance(rank, int) or isinstance(rank, bool) or rank < 1):
        raise ConfigError(f"rank must be a positive integer; got {rank!r}")
    if energy is not None and not 0 < energy <= 1:
        raise ConfigError(f"energy must be in (0, 1]; got {energy}")
    if ratio is not None and not 0 < ratio < 1:
        raise ConfigError(f"ratio must be in (0, 1); got {ratio}")
    if conv_mode not in CONV_MODES:
        raise ConfigError(f"unknown conv mode {conv_mode!r}; choose one of {', '.join(CONV_MODES)}")
    modules = dict(model.named_modules())
    explicit = layers is not None
    if explicit:
        unknown = [n for n in layers if n not in modules or n == ""]
        if unknown:
            raise ConfigError(f"no layer named {', '.join(map(repr, unknown))}; layers: "
                              f"{', '.join(n for n, m in modules.items() if isinstance(m, (nn.Linear, nn.Conv2d)))}")
        names = list(layers)
    else:
        names = [n for n, m in modules.items()
                 if _eligible_kind(m, conv_mode) is not None and m.weight.numel() >= min_weights]
    choices, too_big = [], []
    for name in names:
        module = modules[name]
        kind = _eligible_kind(module, conv_mode)
        if kind is None:
            raise ConfigError(f"layer {name!r} ({type(module).__name__}) cannot be factorised "
                              f"in {conv_mode} mode")
        limit = max_rank(module, kind)
        s = torch.linalg.svdvals(_matrix(module, kind))
        if rank is not None:
            r = rank
        elif energy is not None:
            r = _energy_rank(s, energy)
        else:
            r = _budget_rank(module, kind, ratio)
        if r > limit:
            if explicit or rank is None:
                raise ConfigError(f"rank {r} is larger than layer {name!r} allows (at most {limit})")
            too_big.append(f"{name} (at most {limit})")
            continue
        before = module.weight.numel()
        after = factorized_weights(module, kind, r)
        if not explicit and after >= before:
            continue  # factorising this layer would not save weights
        kept = float(s[:r].pow(2).sum() / s.pow(2).sum().clamp_min(1e-300))
        choices.append(LayerChoice(name, kind, r, limit, before, after, kept))
    if not choices:
        detail = f"; rank {rank} is larger than {', '.join(too_big)} allow" if too_big else ""
        raise ConfigError(f"no layer would get smaller with rank={rank} energy={energy} ratio={ratio}"
                          f"{detail}")
    return choices


def _pair(module: nn.Module, kind: str, rank: int) -> Factorized:
    """The empty (randomly initialised) two-layer structure for one rewrite."""
    bias = module.bias is not None
    if kind == "linear":
        return Factorized(OrderedDict(first=nn.Linear(module.in_features, rank, bias=False),
                                      second=nn.Linear(rank, module.out_features, bias=bias)))
    (kh, kw), (sh, sw) = module.kernel_size, module.stride
    (ph, pw), (dh, dw) = module.padding, module.dilation
    c, o = module.in_channels, module.out_channels
    if kind == "channel":
        first = nn.Conv2d(c, rank, (kh, kw), (sh, sw), (ph, pw), (dh, dw), bias=False)
        second = nn.Conv2d(rank, o, 1, bias=bias)
    else:
        first = nn.Conv2d(c, rank, (kh, 1), (sh, 1), (ph, 0), (dh, 1), bias=False)
        second = nn.Conv2d(rank, o, (1, kw), (1, sw), (0, pw), (1, dw), bias=bias)
    return Factorized(OrderedDict(first=first, second=second))


@torch.no_grad()
def _init_from_svd(pair: Factorized, module: nn.Module, kind: str, rank: int) -> None:
    u, s, vh = torch.linalg.svd(_matrix(module, kind), full_matrices=False)
    root = s[:rank].sqrt()
    a = u[:, :rank] * root  # (rows, R)
    b = root[:, None] * vh[:rank]  # (R, cols)
    dtype = module.weight.dtype
    if kind == "linear":
        pair.first.weight.copy_(b.to(dtype))  # (R, i)
        pair.second.weight.copy_(a.to(dtype))  # (o, R)
    elif kind == "channel":
        pair.first.weight.copy_(b.reshape(pair.first.weight.shape).to(dtype))
        pair.second.weight.copy_(a.reshape(pair.second.weight.shape).to(dtype))
    else:
        o, c, kh, kw = module.weight.shape
        pair.first.weight.copy_(a.reshape(c, kh, rank).permute(2, 0, 1).unsqueeze(-1).to(dtype))
        pair.second.weight.copy_(b.reshape(rank, o, kw).permute(1, 0, 2).unsqueeze(2).to(dtype))
    if module.bias is not None:
        pair.second.bias.copy_(module.bias)


def _set(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)


def plan_dict(choices: list[LayerChoice]) -> dict[str, dict]:
    """The JSON-able plan stored in a checkpoint's config."""
    return {c.name: {"kind": c.kind, "rank": c.rank} for c in choices}


def apply_plan(model: nn.Module, plan: dict[str, dict], *, from_weights: bool = True) -> nn.Module:
    """Rewrite ``model`` in place by ``plan``; ``from_weights`` initialises each pair from the
    SVD of the layer it replaces (else the pair keeps its random init, to be loaded)."""
    if not isinstance(plan, dict):
        raise ConfigError(f"factorisation plan must be a mapping of layer -> {{kind, rank}}; got {plan!r}")
    for name, entry in plan.items():
        if not isinstance(entry, dict) or entry.get("kind") not in KINDS:
            raise ConfigError(f"plan entry for {name!r} needs kind in {KINDS}; got {entry!r}")
        kind, rank = entry["kind"], entry.get("rank")
        module = dict(model.named_modules()).get(name)  # again each time: entries may nest
        if module is None:
            raise ConfigError(f"plan names layer {name!r}, which the model does not have")
        expected = nn.Linear if kind == "linear" else nn.Conv2d
        if not isinstance(module, expected):
            raise ConfigError(f"plan says layer {name!r} is {kind}, but it is {type(module).__name__}")
        if not isinstance(rank, int) or isinstance(rank, bool) or not 1 <= rank <= max_rank(module, kind):
            raise ConfigError(f"rank {rank!r} for layer {name!r} must be in [1, {max_rank(module, kind)}]")
        pair = _pair(module, kind, rank).to(module.weight.device)
        if from_weights:
            _init_from_svd(pair, module, kind, rank)
        _set(model, name, pair)
    return model


def factorize(model: nn.Module, **plan_options) -> tuple[nn.Module, list[LayerChoice]]:
    """Plan (see :func:`plan_factorization`) and rewrite ``model`` in place."""
    choices = plan_factorization(model, **plan_options)
    apply_plan(model, plan_dict(choices))
    return model, choices


def build_factorized(base: str, base_config: dict, plan: dict) -> nn.Module:
    """The structure of a factorised ``base`` model (weights to be loaded from a checkpoint)."""
    from ..models import build_model

    if not isinstance(base, str) or not base:
        raise ConfigError(f"factorized model needs the name of its base model; got {base!r}")
    if base == "factorized":
        raise ConfigError("a factorized model's base cannot itself be 'factorized'; merge the plans "
                          "(see merge_plans)")
    model = build_model(base, **(base_config or {}))
    return apply_plan(model, plan, from_weights=False)


def merge_plans(meta_model: str, meta_config: dict, plan: dict) -> tuple[str, dict]:
    """(base, base_config, plan) for saving: factorising an already factorised model extends
    its plan (new entries name nested layers such as ``ip1.first``) instead of nesting."""
    if meta_model == "factorized":
        return meta_config["base"], {"base": meta_config["base"], "base_config": meta_config.get("base_config", {}),
                                     "plan": {**meta_config.get("plan", {}), **plan}}
    return meta_model, {"base": meta_model, "base_config": meta_config, "plan": plan}
