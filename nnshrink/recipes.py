"""Recipes: which compression stages run, in which order, with which knobs.

A recipe is a TOML file (or a built-in name) with a ``stages`` list and one table per
stage; the stages and their config types come from the registry in ``nnshrink.stages``
(each stage file documents its keys), plus ``encode``, always last, which writes the
archive. Every key is checked: an unknown key, a stage order that makes no sense or a
value out of range fails loudly before any work starts. Per-layer knobs are tables of
``"pattern" = value``; a pattern is a tensor name (``ip1.weight``), a module name
(``conv*``) or a kind (``fc``, ``conv``, ``embedding``, ``attention``, ``param``), and the
first pattern that matches wins (``nnshrink.select.resolve``).

    stages = ["prune", "share", "encode"]
    [prune]
    method = "sparsity"        # std (q x std of the layer), sparsity (per layer), global
    sparsity = 0.92
    rounds = 3
    retrain_epochs = 2
    distill = 0.7              # retrain 0.7 parts on the dense net's soft targets (and
    distill_temperature = 4.0  # [share] too when given at the top level: nnshrink.distill)
    schedule = "constant"      # the retraining's lr schedule ("" = the training's cosine);
    average = 0.999            # with a weight average: stochastic weight averaging
    # (nnshrink.averaging); also shift = 1 (random pixel shifts of the training images) and
    # label_smoothing = 0.1; the same four keys in [share] for the centroid fine-tuning
    [prune.layers]
    conv1 = 0.4
    # or instead of the sparsities: target_ratio = 60 (per-layer sparsities chosen by
    # measured sensitivity and encoded bytes; also allowed at the top level)
    [share]
    fc_bits = 5
    conv_bits = 8
    [encode]
    huffman = true

Built-in recipes on a model nnshrink knows use that model's tuned numbers
(``MODEL_DEFAULTS``); on any other model they use generic documented defaults: a
sparsity per kind (``stages.prune.GENERIC_SPARSITY``), weight bits and index bits per
kind (``select.DEFAULT_BITS`` / ``DEFAULT_INDEX_BITS``). ``Recipe.defaults`` says which.
"""

from __future__ import annotations

import math
import tomllib
import types
import typing
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

from .errors import ConfigError
from .select import DEFAULT_BITS, DEFAULT_INDEX_BITS
from .stages import REGISTRY, BinaryConfig, PruneConfig, ShareConfig, check_widths  # noqa: F401  (re-exported)

from .stages.prune import GENERIC_SPARSITY  # noqa: E402

ENCODE = "encode"


@dataclass(frozen=True)
class EncodeConfig:
    """``search_index_bits`` tries every gap width 3..8 per sparse tensor and keeps the
    smallest encoding (the fixed widths are then unused); ``half_dense`` stores the tensors
    that stay dense (biases) as float16, which is lossy and therefore off by default.
    Index bits unset (None) come from ``select.DEFAULT_INDEX_BITS`` by kind."""

    huffman: bool = True
    fc_index_bits: int | None = None
    conv_index_bits: int | None = None
    layers: dict[str, int] = field(default_factory=dict)
    search_index_bits: bool = True
    half_dense: bool = False

    def __post_init__(self):
        check_widths("encode", {"fc_index_bits": self.fc_index_bits, "conv_index_bits": self.conv_index_bits},
                     self.layers, 3, 8)


def config_type(stage: str) -> type:
    return EncodeConfig if stage == ENCODE else REGISTRY[stage].config


@dataclass(frozen=True)
class Recipe:
    """Stages in order and one frozen config per stage (``recipe.prune`` reads one; a
    stage not listed reads as its defaults). ``defaults`` says where the numbers came from."""

    name: str
    stages: tuple[str, ...]
    configs: Mapping[str, Any] = field(default_factory=dict)
    defaults: str = "recipe"

    def __getattr__(self, stage: str):
        if stage.startswith("_") or (stage not in REGISTRY and stage != ENCODE):
            raise AttributeError(stage)
        cfg = self.__dict__.get("configs", {}).get(stage)
        return cfg if cfg is not None else config_type(stage)()

    def with_configs(self, **configs) -> "Recipe":
        """A copy with some stages' configs replaced (``recipe.with_configs(prune=cfg)``)."""
        for stage, cfg in configs.items():
            if not isinstance(cfg, config_type(stage)):
                raise ConfigError(f"{stage} config must be a {config_type(stage).__name__}; got {cfg!r}")
        return Recipe(self.name, self.stages, {**self.configs, **configs}, self.defaults)

    def scaled(self, factor: float) -> "Recipe":
        """A copy in which every retraining runs ``factor`` times its epochs: every stage
        config field named ``*_epochs`` (prune ``retrain_epochs`` / ``final_epochs``, share
        ``finetune_epochs``) that is > 0; 0 (no retraining) and -1 ("same as
        retrain_epochs") keep their meaning."""
        check_epochs_scale(factor)
        configs = {}
        for stage in self.compression_stages:
            cfg = getattr(self, stage)
            configs[stage] = replace(cfg, **{name: value * factor for name, value in _epoch_fields(cfg).items()
                                             if value > 0})
        return Recipe(self.name, self.stages, {**self.configs, **configs},
                      f"{self.defaults}; retraining epochs x{factor:g}")

    def planned_epochs(self) -> dict[str, float]:
        """Epochs each stage retrains when a trainer is given (the progress estimate):
        prune retrains after each of its ``rounds``, the last time for ``final_epochs``;
        other stages once for each ``*_epochs`` field."""
        out = {}
        for stage in self.compression_stages:
            cfg = getattr(self, stage)
            if stage == "prune":
                final = cfg.final_epochs if cfg.final_epochs >= 0 else cfg.retrain_epochs
                out[stage] = (cfg.rounds - 1) * cfg.retrain_epochs + final if cfg.retrain_epochs > 0 else 0.0
            else:
                out[stage] = float(sum(v for v in _epoch_fields(cfg).values() if v > 0))
        return out

    @property
    def distills(self) -> bool:
        """Whether any stage's retraining learns from the dense net (``distill`` > 0)."""
        return any(getattr(getattr(self, s), "distill", 0) > 0 for s in self.compression_stages)

    @property
    def compression_stages(self) -> tuple[str, ...]:
        return tuple(s for s in self.stages if s != ENCODE)

    @property
    def retrains(self) -> bool:
        return any(REGISTRY[s].retrains(getattr(self, s)) for s in self.compression_stages)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "stages": list(self.stages), "defaults": self.defaults}
        for stage in self.stages:
            cfg = getattr(self, stage)
            out[stage] = {f.name: (list(v) if isinstance(v := getattr(cfg, f.name), tuple) else v)
                          for f in fields(cfg)}
        return out


def _epoch_fields(cfg: Any) -> dict[str, float]:
    return {f.name: getattr(cfg, f.name) for f in fields(cfg) if f.name.endswith("_epochs")}


def check_epochs_scale(factor: Any, what: str = "epochs scale") -> float:
    """``factor`` if it is a finite number > 0, else a ConfigError naming it."""
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not math.isfinite(factor) or factor <= 0:
        raise ConfigError(f"{what} must be a finite number > 0; got {factor!r}")
    return float(factor)


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
    cls = config_type(stage)
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


def _check_order(stages: list[str], name: str) -> None:
    """Known stages, each once, in the registry's order, exclusive ones alone, encode last."""
    known = (*REGISTRY, ENCODE)
    for s in stages:
        if s not in known:
            raise ConfigError(f"recipe {name!r}: unknown stage {s!r}; stages are {', '.join(known)}")
    if len(set(stages)) != len(stages):
        raise ConfigError(f"recipe {name!r}: a stage appears twice in {stages}")
    if stages[-1] != ENCODE or ENCODE in stages[:-1]:
        raise ConfigError(f"recipe {name!r}: the last stage must be 'encode' (it writes the archive); got {stages}")
    body = [REGISTRY[s] for s in stages[:-1]]
    for a, b in zip(body, body[1:]):
        if b.order < a.order:
            raise ConfigError(f"recipe {name!r}: {a.name!r} before {b.name!r} makes no sense; order them "
                              f"{', '.join(s.name for s in sorted(body, key=lambda s: s.order))}, encode")
    lone = [s.name for s in body if s.exclusive]
    if lone and len(body) > 1:
        others = ", ".join(s.name for s in body if s.name != lone[0])
        raise ConfigError(f"recipe {name!r}: {lone[0]!r} runs alone (its layers are 1-bit already); "
                          f"do not combine it with {others}")


DISTILL_KEYS = ("distill", "distill_temperature")


def _spread_distill(data: dict[str, Any], stages: list[str], name: str) -> None:
    """The top-level ``distill`` / ``distill_temperature`` shorthand: the same value in every
    listed stage that retrains with it (prune, share), unless that stage's table sets it."""
    given = {k: data.pop(k) for k in DISTILL_KEYS if k in data}
    if not given:
        return
    takers = [s for s in stages if s != ENCODE and "distill" in {f.name for f in fields(config_type(s))}]
    if not takers:
        raise ConfigError(f"recipe {name!r}: distill applies to retraining stages (prune, share), but stages "
                          f"{stages} have none")
    for stage in takers:
        table = data.get(stage, {})
        if not isinstance(table, dict):
            continue  # _stage_config names the bad table
        clash = sorted(set(given) & set(table))
        if clash:
            raise ConfigError(f"recipe {name!r}: {', '.join(clash)} given both at the top level and in [{stage}]")
        data[stage] = {**given, **table}


def recipe_from_dict(data: dict[str, Any], name: str = "custom", defaults: str = "recipe") -> Recipe:
    """Build and validate a recipe from its TOML-shaped dict."""
    data = dict(data)
    stages = data.pop("stages", None)
    if not isinstance(stages, list) or not stages or not all(isinstance(s, str) for s in stages):
        raise ConfigError(f"recipe {name!r} needs `stages = [...]`, a non-empty list of stage names")
    _check_order(stages, name)
    tables = (*REGISTRY, ENCODE)
    if "target_ratio" in data:  # top-level shorthand for [prune] target_ratio
        if "prune" not in stages:
            raise ConfigError(f"recipe {name!r}: target_ratio chooses prune sparsities, but stages {stages} "
                              "have no 'prune'")
        prune = data.get("prune", {})
        if not isinstance(prune, dict) or "target_ratio" in prune:
            raise ConfigError(f"recipe {name!r}: target_ratio given both at the top level and in [prune]")
        data["prune"] = {**prune, "target_ratio": data.pop("target_ratio")}
    _spread_distill(data, stages, name)
    extra = sorted(set(data) - set(tables) - {"name", "description"})
    if extra:
        raise ConfigError(f"recipe {name!r}: unknown top-level key(s) {', '.join(map(repr, extra))}")
    unused = sorted(s for s in tables if s in data and s not in stages)
    if unused:
        raise ConfigError(f"recipe {name!r}: table(s) {', '.join(unused)} given but not in stages {stages}")
    configs = {s: _stage_config(s, data.get(s, {})) for s in stages}
    return Recipe(name=str(data.get("name", name)), stages=tuple(stages), configs=configs, defaults=defaults)


# Built-in recipes. Per-model tables override the generic one; the figures they reach are
# in BENCHMARKS.md (benchmarks/deep_compression.py).
BUILTIN: dict[str, dict[str, Any]] = {
    "deep-compression": {"stages": ["prune", "share", "encode"]},
    "prune": {"stages": ["prune", "encode"]},
    "share": {"stages": ["share", "encode"]},
    "binary": {"stages": ["binary", "encode"]},
}
# Tuned on Fashion-MNIST (benchmarks/deep_compression.py --seeds 3 / 5, BENCHMARKS.md): per-layer
# sparsities from the pruning benchmarks, pushed past the stretch recipes that reached 61.6x /
# 71.9x at no loss on one seed (benchmarks/recipes/*-stretch.toml), measured over training seeds.
# LeNet-300-100's is benchmarks/recipes/lenet300-candidate-j.toml: over five dense nets it lost
# 0.13 points on average, 0.24 at worst, at 62.6x worst (candidate r, the previous default, on
# the same nets: 0.30 / 0.58). Its pruning retraining runs at a constant half training lr and
# keeps a running average of the weights (stochastic weight averaging, ``prune.schedule`` /
# ``prune.average``: nnshrink.averaging), with 15 final epochs under an L2 penalty; the centroid
# fine-tuning averages too. Retraining at half the training lr recovered more than the paper's
# 1/10 in a few epochs.
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "lenet300": {
        "prune": {"method": "sparsity", "layers": {"ip1": 0.955, "ip2": 0.92, "ip3": 0.75}, "rounds": 6,
                  "retrain_epochs": 3, "final_epochs": 15, "lr_factor": 0.5, "l2": 2e-4,
                  "schedule": "constant", "average": 0.999},
        # 5 bits (the last layer's 250 weights at 6): 4-bit sharing lost up to 0.37 points over
        # three seeds even with four epochs of centroid tuning; 5 bits lost at most 0.01.
        "share": {"fc_bits": 5, "layers": {"ip3": 6}, "finetune_epochs": 4, "average": 0.998},
        "encode": {"half_dense": True},
    },
    "lenet5": {
        "prune": {"method": "sparsity", "layers": {"conv1": 0.3, "conv2": 0.92, "ip1": 0.97, "ip2": 0.85},
                  "rounds": 5, "retrain_epochs": 2, "final_epochs": 8, "lr_factor": 0.5},
        "share": {"fc_bits": 4, "conv_bits": 6, "finetune_epochs": 1},
        "encode": {"half_dense": True},
    },
}
GENERIC = (f"generic: prune sparsity per kind {GENERIC_SPARSITY}, weight bits per kind {DEFAULT_BITS}, "
           f"index bits per kind {DEFAULT_INDEX_BITS}")


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_recipe(name_or_path: str, model: str | None = None) -> Recipe:
    """A built-in recipe or a TOML file. Built-ins take ``model``'s tuned numbers when
    nnshrink has them, nnshrink's plain defaults for its other zoo models, and the
    generic per-kind defaults for ``model=None`` (a model nnshrink does not know)."""
    if name_or_path in BUILTIN:
        data = dict(BUILTIN[name_or_path])
        if model is None:
            recipe = recipe_from_dict(data, name_or_path, defaults=GENERIC)
            if "prune" in recipe.stages:
                from dataclasses import replace

                recipe = recipe.with_configs(prune=replace(recipe.prune, sparsity=None))
            return recipe
        tuned = MODEL_DEFAULTS.get(model, {})
        data = _merge(data, {k: v for k, v in tuned.items() if k in data["stages"]})
        source = f"tuned for {model}" if tuned else f"nnshrink defaults for {model}"
        return recipe_from_dict(data, name_or_path, defaults=source)
    path = Path(name_or_path)
    if path.suffix != ".toml" or not path.is_file():
        raise ConfigError(f"unknown recipe {name_or_path!r}; use one of {', '.join(BUILTIN)} or a .toml file")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    return recipe_from_dict(data, path.stem, defaults=f"recipe file {path.name}")
