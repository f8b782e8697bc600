"""Per-layer sparsity under one overall fraction: prune most where it costs least.

With ``sparsity_by_layer`` and ``sparsity`` S, every error-compensated layer (Linear /
Conv2d with calibration inputs) is pruned (SparseGPT) at each candidate fraction around S,
its estimated output error recorded, and the allocator (allocate.py) picks one fraction per
layer of least summed error such that at least S of all those layers' weights are zero:
on all-MiniLM-L6-v2 at 50% the query / key projections take the most and the value
projections the least, and the mean cosine rises by about two hundredths over one fraction
everywhere (benchmarks/sections/25-post-training.md). Layers no compensation reaches
(embeddings) stay dense, as with a uniform ``sparsity``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np

from ..errors import ConfigError
from .allocate import Candidate, allocate
from .layer import LayerSetting

SPREAD = (-0.3, -0.2, -0.1, 0.0, 0.1, 0.2, 0.3, 0.4)  # candidate fractions: S plus these, kept in (0, 0.95]


def candidate_fractions(target: float) -> list[float]:
    """The fractions each layer may take around the overall ``target``."""
    return sorted({round(f, 4) for f in (target + d for d in SPREAD) if 0 < f <= 0.95})


def sparsity_by_layer(names: list[str], numel: dict[str, int], setting: LayerSetting,
                      one: Callable[[str, LayerSetting], tuple], *,
                      measure: Callable[[dict[str, np.ndarray]], dict[str, float]] | None = None,
                      say: Callable[[str], None] = lambda _m: None) -> tuple[dict[str, tuple], dict[str, float]]:
    """({name: (setting, tensor, estimated error)}, {name: probe factor}) with at least
    ``setting.sparsity`` of the weights of ``names`` pruned overall. ``one`` compresses a
    tensor at a setting, returning (tensor, error); ``measure`` (optional, probe.py) gives
    each layer's measured output error at the overall fraction, and that layer's estimates
    are rescaled by measured / estimated."""
    if not names:
        raise ConfigError("sparsity by layer needs layers with calibration inputs (Linear / Conv2d) to prune")
    target = setting.sparsity
    if not 0 < target < 1:
        raise ConfigError(f"sparsity by layer needs a sparsity in (0, 1); got {target!r}")
    fractions = candidate_fractions(target)
    made = {}
    for n in names:
        say(f"measuring {n} at sparsity {', '.join(f'{f:g}' for f in fractions)}")
        for f in fractions:
            made[(n, f)] = one(n, replace(setting, sparsity=f))
    factors = {}
    if measure is not None:
        here = min(fractions, key=lambda f: abs(f - target))
        for n, m in measure({n: made[(n, here)][0].to_dense() for n in names}).items():
            est = made[(n, here)][1]
            factors[n] = m / est if est > 0 and m > 0 else 1.0
    options = {n: [Candidate(f, int(made[(n, f)][0].mask.sum()) if made[(n, f)][0].mask is not None else numel[n],
                             made[(n, f)][1] * factors.get(n, 1.0)) for f in fractions] for n in names}
    total = sum(numel[n] for n in names)
    pick = allocate(options, int(np.floor((1 - target) * total)))  # kept weights <= (1 - S) of them
    return {n: (replace(setting, sparsity=c.setting), made[(n, c.setting)][0], c.error)
            for n, c in pick.items()}, factors
