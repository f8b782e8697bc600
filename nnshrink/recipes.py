"""Recipes: which compression stages run, in which order, with which knobs.

A recipe is a TOML file (or a built-in name) with a ``stages`` list and one table per
stage. Every key is checked: an unknown key, a stage order that makes no sense or a value
out of range fails loudly before any work starts. Per-layer knobs are tables of
``"glob pattern" = value`` matched against parameter-owning module names (``ip1``,
``conv*``...).

    stages = ["prune", "share", "encode"]
    [prune]
    method = "sparsity"        # std (q x std of the layer), sparsity (per layer), global
    sparsity = 0.92
    rounds = 3
    retrain_epochs = 2
    [prune.layers]
    conv1 = 0.4
    [share]
    fc_bits = 5
    conv_bits = 8
    [encode]
    huffman = true
"""

from __future__ import annotations

import math
import tomllib
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import ConfigError

STAGES = ("prune", "share", "binary", "encode")
PRUNE_METHODS = ("std", "sparsity", "global")
INITS = ("linear", "density", "random")


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


@dataclass(frozen=True)
class PruneConfig:
    method: str = "sparsity"
    sparsity: float = 0.9
    q: float = 1.0
    layers: dict[str, float] = field(default_factory=dict)
    exclude: tuple[str, ...] = ()
    rounds: int = 3
    retrain_epochs: float = 2.0
    final_epochs: float = -1.0  # retraining after the last round; -1 = retrain_epochs
    lr_factor: float = 0.1
    l2: float = 0.0

    def __post_init__(self):
        _check(self.method in PRUNE_METHODS,
               f"prune.method must be one of {', '.join(PRUNE_METHODS)}; got {self.method!r}")
        _check(0 <= self.sparsity < 1, f"prune.sparsity must be in [0, 1); got {self.sparsity}")
        _check(self.q >= 0, f"prune.q must be >= 0; got {self.q}")
        for pat, v in self.layers.items():
            if self.method == "std":
                _check(v >= 0, f"prune.layers[{pat!r}] (q) must be >= 0; got {v}")
            else:
                _check(0 <= v < 1, f"prune.layers[{pat!r}] (sparsity) must be in [0, 1); got {v}")
        _check(isinstance(self.rounds, int) and self.rounds >= 1, f"prune.rounds must be an integer >= 1; got {self.rounds}")
        _check(self.retrain_epochs >= 0, f"prune.retrain_epochs must be >= 0; got {self.retrain_epochs}")
        _check(self.final_epochs == -1 or self.final_epochs >= 0,
               f"prune.final_epochs must be >= 0 (or -1 for retrain_epochs); got {self.final_epochs}")
        _check(0 < self.lr_factor <= 1, f"prune.lr_factor must be in (0, 1]; got {self.lr_factor}")
        _check(self.l2 >= 0, f"prune.l2 must be >= 0; got {self.l2}")


@dataclass(frozen=True)
class ShareConfig:
    fc_bits: int = 5
    conv_bits: int = 8
    layers: dict[str, int] = field(default_factory=dict)
    init: str = "linear"
    finetune_epochs: float = 1.0
    # A centroid's gradient is the SUM over every weight sharing it (paper Eq. 3), so
    # centroid steps are large: 1/100 of the training lr (SGD 0.05 -> 5e-4) holds accuracy
    # where 1/10 collapsed both LeNets to chance (measured in the sharing benchmarks).
    lr_factor: float = 0.01

    def __post_init__(self):
        for name, b in [("fc_bits", self.fc_bits), ("conv_bits", self.conv_bits),
                        *((f"layers[{p!r}]", v) for p, v in self.layers.items())]:
            _check(isinstance(b, int) and 1 <= b <= 8, f"share.{name} must be an integer in 1..8; got {b}")
        _check(self.init in INITS, f"share.init must be one of {', '.join(INITS)}; got {self.init!r}")
        _check(self.finetune_epochs >= 0, f"share.finetune_epochs must be >= 0; got {self.finetune_epochs}")
        _check(0 < self.lr_factor <= 1, f"share.lr_factor must be in (0, 1]; got {self.lr_factor}")


@dataclass(frozen=True)
class BinaryConfig:
    """Packs the binary layers of a BWN / XNOR model (they train binary from scratch).
    ``half_scales`` stores each output channel's scale as float16: with 500-800 weights
    per channel, float32 scales alone hold a layer under 31x of its float32 size."""

    half_scales: bool = True


@dataclass(frozen=True)
class EncodeConfig:
    """``search_index_bits`` tries every gap width 3..8 per sparse tensor and keeps the
    smallest encoding (the fixed widths are then unused); ``half_dense`` stores the tensors
    that stay dense (biases) as float16, which is lossy and therefore off by default."""

    huffman: bool = True
    fc_index_bits: int = 5
    conv_index_bits: int = 8
    layers: dict[str, int] = field(default_factory=dict)
    search_index_bits: bool = True
    half_dense: bool = False

    def __post_init__(self):
        for name, b in [("fc_index_bits", self.fc_index_bits), ("conv_index_bits", self.conv_index_bits),
                        *((f"layers[{p!r}]", v) for p, v in self.layers.items())]:
            _check(isinstance(b, int) and 3 <= b <= 8, f"encode.{name} must be an integer in 3..8; got {b}")


_STAGE_TYPES = {"prune": PruneConfig, "share": ShareConfig, "binary": BinaryConfig, "encode": EncodeConfig}


@dataclass(frozen=True)
class Recipe:
    name: str
    stages: tuple[str, ...]
    prune: PruneConfig = PruneConfig()
    share: ShareConfig = ShareConfig()
    binary: BinaryConfig = BinaryConfig()
    encode: EncodeConfig = EncodeConfig()

    @property
    def retrains(self) -> bool:
        return ("prune" in self.stages and self.prune.retrain_epochs > 0) or (
            "share" in self.stages and self.share.finetune_epochs > 0)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "stages": list(self.stages)}
        for stage in self.stages:
            cfg = getattr(self, stage)
            out[stage] = {f.name: (list(v) if isinstance(v := getattr(cfg, f.name), tuple) else v)
                          for f in fields(cfg)}
        return out


_TYPE_WORDS = {bool: "bool (true or false)", int: "int", float: "finite float", str: "str"}


def _typed(where: str, value: Any, tp: Any) -> Any:
    """``value`` checked against a config field's declared type (bool, int, float, str,
    tuple[str, ...], dict[str, T]); ints become floats where a float is declared. TOML
    would otherwise let ``"false"`` through as a truthy string."""
    def bad(expected: str, shown: Any = value):
        return ConfigError(f"recipe {where} = {shown!r}: expected {expected}, got {type(shown).__name__}")

    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):  # float | int: the first that fits
        for option in args:
            try:
                return _typed(where, value, option)
            except ConfigError:
                pass
        raise bad(" or ".join(_word(a) for a in args))
    if origin is tuple:  # tuple[str, ...]: one str means one pattern, never its letters
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
            raise bad("a str or a list of str")
        return tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise bad(f"a table of pattern = {_word(args[1])}")
        return {k: _typed(f"{where}[{k!r}]", v, args[1]) for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise bad(_TYPE_WORDS[float])
        return float(value)
    if isinstance(value, bool) != (tp is bool) or not isinstance(value, tp):
        raise bad(_word(tp))
    return value


def _word(tp: Any) -> str:
    return _TYPE_WORDS.get(tp, getattr(tp, "__name__", str(tp)))


def _stage_config(stage: str, table: Any):
    cls = _STAGE_TYPES[stage]
    if not isinstance(table, dict):
        raise ConfigError(f"recipe table [{stage}] must be a table; got {table!r}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(table) - known)
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(map(repr, unknown))} in [{stage}]; "
                          f"known: {', '.join(sorted(known)) or '(none)'}")
    types = typing.get_type_hints(cls)
    kw = {key: _typed(f"[{stage}] {key}", value, types[key]) for key, value in table.items()}
    try:
        return cls(**kw)
    except TypeError as exc:
        raise ConfigError(f"[{stage}]: {exc}") from None


def recipe_from_dict(data: dict[str, Any], name: str = "custom") -> Recipe:
    """Build and validate a recipe from its TOML-shaped dict."""
    data = dict(data)
    stages = data.pop("stages", None)
    if not isinstance(stages, list) or not stages or not all(isinstance(s, str) for s in stages):
        raise ConfigError(f"recipe {name!r} needs `stages = [...]`, a non-empty list of stage names")
    for s in stages:
        if s not in STAGES:
            raise ConfigError(f"recipe {name!r}: unknown stage {s!r}; stages are {', '.join(STAGES)}")
    if len(set(stages)) != len(stages):
        raise ConfigError(f"recipe {name!r}: a stage appears twice in {stages}")
    if stages[-1] != "encode":
        raise ConfigError(f"recipe {name!r}: the last stage must be 'encode' (it writes the archive); got {stages}")
    if "prune" in stages and "share" in stages and stages.index("share") < stages.index("prune"):
        raise ConfigError(f"recipe {name!r}: 'share' before 'prune' makes no sense (sharing clusters the "
                          "weights that survive pruning); order them prune, share, encode")
    if "binary" in stages and ({"prune", "share"} & set(stages)):
        raise ConfigError(f"recipe {name!r}: 'binary' layers are 1-bit already; do not combine with prune/share")
    extra = sorted(set(data) - set(STAGES) - {"name", "description"})
    if extra:
        raise ConfigError(f"recipe {name!r}: unknown top-level key(s) {', '.join(map(repr, extra))}")
    unused = sorted(s for s in STAGES if s in data and s not in stages)
    if unused:
        raise ConfigError(f"recipe {name!r}: table(s) {', '.join(unused)} given but not in stages {stages}")
    configs = {s: _stage_config(s, data.get(s, {})) for s in stages}
    return Recipe(name=str(data.get("name", name)), stages=tuple(stages), **configs)


# Built-in recipes. Per-model tables override the generic one; the figures they reach are
# in BENCHMARKS.md (benchmarks/deep_compression.py).
BUILTIN: dict[str, dict[str, Any]] = {
    "deep-compression": {"stages": ["prune", "share", "encode"]},
    "prune": {"stages": ["prune", "encode"]},
    "share": {"stages": ["share", "encode"]},
    "binary": {"stages": ["binary", "encode"]},
}
# Tuned on Fashion-MNIST (benchmarks/deep_compression.py): per-layer sparsities from the
# pruning benchmarks, near the paper's per-layer kept fractions; retraining at half the
# training lr recovered more than the paper's 1/10 in a few epochs per round.
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "lenet300": {
        "prune": {"method": "sparsity", "layers": {"ip1": 0.93, "ip2": 0.9, "ip3": 0.7}, "rounds": 5,
                  "retrain_epochs": 3, "final_epochs": 20, "lr_factor": 0.5},
        # 5 bits, not 4: 4-bit sharing cost 0.31 points in one of two runs (the demo's).
        "share": {"fc_bits": 5, "finetune_epochs": 1},
        "encode": {"half_dense": True},
    },
    "lenet5": {
        "prune": {"method": "sparsity", "layers": {"conv1": 0.3, "conv2": 0.85, "ip1": 0.95, "ip2": 0.8},
                  "rounds": 4, "retrain_epochs": 2, "final_epochs": 6, "lr_factor": 0.5},
        "share": {"fc_bits": 5, "conv_bits": 8, "finetune_epochs": 1},
        "encode": {"half_dense": True},
    },
}


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_recipe(name_or_path: str, model: str | None = None) -> Recipe:
    """A built-in recipe (tuned for ``model`` when nnshrink has defaults for it) or a TOML file."""
    if name_or_path in BUILTIN:
        data = dict(BUILTIN[name_or_path])
        tuned = MODEL_DEFAULTS.get(model or "", {})
        data = _merge(data, {k: v for k, v in tuned.items() if k in data["stages"]})
        return recipe_from_dict(data, name_or_path)
    path = Path(name_or_path)
    if path.suffix != ".toml" or not path.is_file():
        raise ConfigError(f"unknown recipe {name_or_path!r}; use one of {', '.join(BUILTIN)} or a .toml file")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    return recipe_from_dict(data, path.stem)
