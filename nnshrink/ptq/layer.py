"""One weight tensor, post-training: outliers, weighted codebook, compensated assignment.

Order of work for a tensor W with importances s (Fisher diagonal, or |W|-free ones when
there is no calibration) and, for Linear / Conv2d weights, an input Hessian H:

1. dense-and-sparse: the ``outliers`` fraction with the largest s * W^2 is kept exactly,
   in float16, outside the codebook (the weights that would stretch its range most);
2. the codebook: importance-weighted 1-D k-means over the remaining weights (over the
   ones likely to survive pruning when ``sparsity`` > 0); or, with ``step``, a uniform
   grid of that step (in units of the tensor's RMS) for entropy coding (quantize/uniform.py),
   weights past its 255 levels kept as outliers, unused levels dropped afterwards;
3. assignment: with H, GPTQ order with error compensation and SparseGPT pruning (with
   ``rounds`` > 1 the mask is chosen first in rounds of least-squares refits, refit.py, and
   GPTQ then rounds the refit weights onto the grid with that mask fixed); without
   H (embeddings, data-free), nearest centroid, pruning the least s * W^2. A pruned
   embedding with calibration takes the H of its lookups (calibrate.py ``lookup``: G^T G of
   the output gradients), SparseGPT's scores weighed by each row's floored Fisher sum.

GPTQ's damping is 0.1 x mean(diag H), ten times its paper's default: with a few thousand
calibration tokens a lighter damping fits the calibration text and loses elsewhere
(MiniLM, 4 bits, unweighted codebooks, 64 held-out sentences: mean cosine 0.936 at
0.01, 0.970 at 0.1; measured with a scratch script on a loaded machine).

``estimated_error`` puts every tensor on one scale, the Fisher estimate of the change of
the model's output: sum s (dW)^2 for lookups; for matrices with H, each row's
compensated output error dW_r H dW_r^T times that row's output sensitivity
sum_j s_rj / tr(H) (the Fisher of a linear layer factors as output-gradient power times
input power), so compensation is credited and layers can be compared for bit allocation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..compressed import SharedTensor
from ..errors import ConfigError
from ..quantize.uniform import compact, uniform_grid
from ..quantize.weighted_kmeans import nearest, weighted_kmeans_1d
from . import gptq, refit


@dataclass(frozen=True)
class LayerSetting:
    bits: int
    outliers: float = 0.0  # fraction kept exactly (float16)
    sparsity: float = 0.0  # fraction pruned
    step: float | None = None  # uniform grid step / RMS of the tensor (ECSQ); None = 2^bits k-means
    rounds: int = 1  # pruning with H: 1 = SparseGPT's one pass; more = gradual with refits (refit.py)

    def __post_init__(self):
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not 1 <= self.bits <= 8:
            raise ConfigError(f"bits must be an integer in 1..8; got {self.bits!r}")
        if not 0 <= self.outliers < 0.5:
            raise ConfigError(f"outlier fraction must be in [0, 0.5); got {self.outliers}")
        if not 0 <= self.sparsity < 1:
            raise ConfigError(f"sparsity must be in [0, 1); got {self.sparsity}")
        if self.step is not None and not (isinstance(self.step, (int, float)) and not isinstance(self.step, bool)
                                          and np.isfinite(self.step) and self.step > 0):
            raise ConfigError(f"grid step must be a finite number > 0; got {self.step!r}")
        if isinstance(self.rounds, bool) or not isinstance(self.rounds, int) or self.rounds < 1:
            raise ConfigError(f"pruning rounds must be an integer >= 1; got {self.rounds!r}")


def _as_matrix(w: np.ndarray) -> np.ndarray:
    return w.reshape(w.shape[0], -1)


def _top(score: np.ndarray, count: int) -> np.ndarray:
    mask = np.zeros(score.size, bool)
    if count > 0:
        mask[np.argpartition(score.ravel(), -count)[-count:]] = True
    return mask.reshape(score.shape)


def compress_weight(weight: np.ndarray, setting: LayerSetting, importance: np.ndarray | None = None,
                    hessian: torch.Tensor | None = None, *, damp: float = 0.1,
                    row_scale: np.ndarray | None = None) -> tuple[SharedTensor, float]:
    """(the compressed tensor, its estimated output error; see module doc). ``row_scale``
    (with H) weighs each row's pruning scores (gptq.assign)."""
    w = np.asarray(weight, np.float32)
    if not np.isfinite(w).all():
        raise ConfigError("weights hold NaN or inf values; cannot compress them")
    s = np.ones(w.shape) if importance is None else np.asarray(importance, np.float64)
    if s.shape != w.shape:
        raise ConfigError(f"importance shape {s.shape} does not fit weight {w.shape}")
    k = 1 << setting.bits
    n_out = int(round(setting.outliers * w.size))
    keep = np.zeros(w.shape, bool)
    fit = s.copy()
    if n_out:  # the largest importance-weighted magnitudes: they stretch the codebook's range most
        keep = _top(s * w.astype(np.float64) ** 2 + 1e-30 * w.astype(np.float64) ** 2, n_out)
        fit[keep] = 0.0
    if setting.sparsity > 0:  # fit the codebook to the weights likely to survive pruning
        scale = s if hessian is None else np.broadcast_to(
            np.diag(hessian.numpy()).reshape(1, -1), _as_matrix(w).shape).reshape(w.shape)
        likely = _top(np.where(keep, np.inf, scale * w.astype(np.float64) ** 2),
                      int(round((1 - setting.sparsity) * w.size)))
        fit = np.where(likely, fit, 0.0)
    if setting.step is not None:
        rms = float(np.sqrt(np.mean(w.astype(np.float64) ** 2))) or 1.0
        cents, beyond = uniform_grid(w, setting.step * rms)
        keep |= beyond
    else:
        cents = weighted_kmeans_1d(w, fit if fit.any() else s, k).centroids
    if hessian is not None:
        mat = torch.as_tensor(_as_matrix(w), dtype=torch.float64)
        kept_exactly = torch.as_tensor(_as_matrix(keep))
        chosen = None
        if setting.sparsity > 0 and setting.rounds > 1:  # the mask first, kept weights refit; then the grid
            mat, chosen = refit.prune_gradually(mat, hessian, setting.sparsity, setting.rounds, damp=damp,
                                                row_scale=row_scale, keep=kept_exactly)
        idx, pruned, q = gptq.assign(mat, hessian, cents, keep=kept_exactly, sparsity=setting.sparsity, damp=damp,
                                     row_scale=row_scale, pruned=chosen)
        idx, pruned, q = idx.numpy().reshape(w.shape), pruned.numpy().reshape(w.shape), q.numpy().reshape(w.shape)
    else:
        idx = nearest(w, cents).reshape(w.shape)
        pruned = np.zeros(w.shape, bool)
        if setting.sparsity > 0:  # floored importances: weights calibration never reached still count
            floored = s + (float(s.mean()) if s.any() else 1.0)
            pruned = _top(np.where(keep, -np.inf, -floored * w.astype(np.float64) ** 2),
                          int(round(setting.sparsity * w.size)))
        q = np.where(pruned, 0.0, cents[idx])
        q = np.where(keep, w, q)
    bits = setting.bits
    if setting.step is not None:
        cents, idx, bits = compact(idx, cents, keep | pruned)
    n_out = int(keep.sum())
    common = int(np.bincount(idx[~keep & ~pruned].ravel(), minlength=len(cents)).argmax()) if (~keep).any() else 0
    idx = np.where(keep, common, idx)  # an outlier's own index is never read: spend the cheapest code on it
    mask = ~pruned if setting.sparsity > 0 else None
    kept_idx = idx[mask] if mask is not None else idx.ravel()
    out_mask = keep if n_out else None
    out_vals = q[keep].astype(np.float16) if n_out else None
    tensor = SharedTensor(tuple(w.shape), cents.astype(np.float32), kept_idx.astype(np.uint8), bits, mask,
                          out_mask, out_vals)
    return tensor, estimated_error(w, tensor.to_dense(), s, hessian)


def row_sensitivity(importance: np.ndarray) -> np.ndarray:
    """Each row's Fisher sum plus the mean row's: how much a row's pruning scores weigh
    (gptq.assign's ``row_scale``); the floor keeps rows calibration never reached (an
    embedding's unseen tokens) from being emptied first."""
    rows = np.asarray(importance, np.float64).reshape(len(importance), -1).sum(1)
    return rows + rows.mean()


def estimated_error(weight: np.ndarray, approx: np.ndarray, importance: np.ndarray,
                    hessian: torch.Tensor | None) -> float:
    """The Fisher estimate of the output change a weight change causes (module doc)."""
    d = approx.astype(np.float64) - weight.astype(np.float64)
    if hessian is None:
        return float((importance * d * d).sum())
    dm = torch.as_tensor(_as_matrix(d))
    h = hessian.to(torch.float64)
    per_row = torch.einsum("oi,ij,oj->o", dm, h, dm).numpy()
    sens = _as_matrix(importance).sum(1) / max(float(torch.trace(h)), 1e-30)
    return float((per_row * sens).sum())
