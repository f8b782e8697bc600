"""Per-layer parameters, multiply-adds and bytes of any nn.Module.

Multiply-adds follow the literature's convention (MobileNet, SqueezeNet papers): one
multiply-add per weight use in conv and linear layers; biases, norms, activations and
pooling add parameters but no counted multiply-adds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn


@dataclass
class LayerProfile:
    name: str
    kind: str
    output_shape: tuple[int, ...]
    params: int
    macs: int

    @property
    def bytes(self) -> int:
        return self.params * 4

    def as_dict(self) -> dict:
        d = asdict(self)
        d["output_shape"] = list(self.output_shape)
        d["bytes"] = self.bytes
        return d


@dataclass
class ModelProfile:
    layers: list[LayerProfile]
    total_params: int
    total_macs: int
    input_shape: tuple[int, ...]

    @property
    def total_bytes(self) -> int:
        return self.total_params * 4

    def as_dict(self) -> dict:
        return {"input_shape": list(self.input_shape), "total_params": self.total_params,
                "total_macs": self.total_macs, "total_bytes": self.total_bytes,
                "layers": [layer.as_dict() for layer in self.layers]}


def _macs(module: nn.Module, out: torch.Tensor) -> int:
    if isinstance(module, nn.modules.conv._ConvNd):
        per_output = (module.in_channels // module.groups) * int(torch.tensor(module.kernel_size).prod())
        return int(out.numel()) * per_output
    if isinstance(module, nn.Linear):
        return int(out.numel()) * module.in_features
    return 0


def profile_model(model: nn.Module, input_shape: tuple[int, ...]) -> ModelProfile:
    """Run one forward pass of a batch-1 input and record each leaf layer with weights.

    ``input_shape`` excludes the batch dimension, e.g. (1, 28, 28).
    """
    rows: list[LayerProfile] = []
    handles = []
    for name, module in model.named_modules():
        own = sum(p.numel() for p in module.parameters(recurse=False))
        if own == 0:
            continue

        def hook(mod, _inp, out, name=name, own=own):
            rows.append(LayerProfile(name, type(mod).__name__, tuple(out.shape[1:]), own, _macs(mod, out)))

        handles.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    first = next(iter(model.parameters()), None)
    device = first.device if first is not None else torch.device("cpu")
    try:
        with torch.no_grad():
            model(torch.zeros((1, *input_shape), device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    total_params = sum(p.numel() for p in model.parameters())
    return ModelProfile(rows, total_params, sum(r.macs for r in rows), tuple(input_shape))


def model_input_shape(name: str, config: dict) -> tuple[int, ...]:
    """The input a registered model is built for: its spec's shape, with the side set to
    ``config["resolution"]`` where the model has one (MobileNet's rho)."""
    from ..models import get_spec

    shape = get_spec(name).input_shape
    if "resolution" in config:
        shape = (shape[0], config["resolution"], config["resolution"])
    return tuple(shape)


def profile_named(name: str, input_shape: tuple[int, ...] | None = None, **overrides) -> ModelProfile:
    """Profile a registered model without allocating its weights (built on the meta
    device, so VGG-16's 553 MB cost nothing). Bad config or an input the net cannot
    take raises ConfigError."""
    from ..errors import ConfigError
    from ..models import build_model, resolve_config

    config = resolve_config(name, **overrides)
    shape = tuple(input_shape) if input_shape is not None else model_input_shape(name, config)
    with torch.device("meta"):
        model = build_model(name, **config)
    try:
        return profile_model(model, shape)
    except RuntimeError as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"model {name!r} cannot run at input {'x'.join(map(str, shape))}: {msg}") from None


def format_profile(profile: ModelProfile, title: str = "") -> str:
    lines = [title] if title else []
    lines.append(f"{'layer':<28} {'kind':<12} {'output':<16} {'params':>12} {'mult-adds':>14} {'bytes':>12}")
    for r in profile.layers:
        shape = "x".join(map(str, r.output_shape))
        lines.append(f"{r.name:<28} {r.kind:<12} {shape:<16} {r.params:>12,} {r.macs:>14,} {r.bytes:>12,}")
    lines.append(f"{'total':<28} {'':<12} {'':<16} {profile.total_params:>12,} {profile.total_macs:>14,} "
                 f"{profile.total_bytes:>12,}")
    return "\n".join(lines)
