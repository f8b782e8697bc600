"""Error-compensating codebook assignment and pruning (OBQ / GPTQ / SparseGPT), no retraining.

A layer's output error for a weight change dW is ||dW X^T||^2 = tr(dW H dW^T) with
H = X^T X from calibration. GPTQ walks the input columns in order; each column is rounded
(here: to the nearest entry of the layer's shared codebook, or to zero where SparseGPT's
criterion w^2 / [H^-1]_jj^2 prunes it), and the rounding error is spread over the columns
not yet rounded through the Cholesky factor of H^-1, so later columns absorb it. Weights
marked ``keep`` (the dense-and-sparse outliers) stay exact and are never pruned.

``assign_reference`` is the plain one-column-at-a-time form; ``assign`` is the blocked form
(lazy batch updates, GPTQ section 4) that tests compare against it.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import ConfigError


def damped(h: torch.Tensor, damp: float) -> torch.Tensor:
    """H + damp * mean(diag H) I in float64; dead inputs (diag 0) get a unit diagonal first,
    so their columns are simply rounded."""
    h = torch.as_tensor(h).to(torch.float64).clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    return h + damp * float(torch.diag(h).mean()) * torch.eye(h.shape[0], dtype=torch.float64)


def inverse_cholesky(h: torch.Tensor, damp: float = 0.01) -> torch.Tensor:
    """Upper Cholesky factor of ``damped(H)``^-1 (float64)."""
    h = damped(h, damp)
    mean = float(torch.diag(h).mean()) / (1 + damp)  # the undamped mean diagonal: each retry adds damp x it
    for _ in range(6):
        try:
            lower = torch.linalg.cholesky(h)
            break
        except RuntimeError:  # not positive definite in floating point: damp harder
            h += damp * mean * torch.eye(h.shape[0], dtype=torch.float64)
    else:
        raise ConfigError("the calibration Hessian is not positive definite even after damping")
    return torch.linalg.cholesky(torch.cholesky_inverse(lower), upper=True)


def _nearest(w: torch.Tensor, cb: torch.Tensor, mids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    idx = torch.searchsorted(mids, w.contiguous())
    return cb[idx], idx


def _check(weight, hessian, codebook, keep, sparsity):
    if weight.dim() != 2:
        raise ConfigError(f"assign needs an (out, in) weight matrix; got shape {tuple(weight.shape)}")
    if tuple(hessian.shape) != (weight.shape[1],) * 2:
        raise ConfigError(f"Hessian shape {tuple(hessian.shape)} does not fit weight {tuple(weight.shape)}")
    if keep is not None and tuple(keep.shape) != tuple(weight.shape):
        raise ConfigError(f"keep mask shape {tuple(keep.shape)} does not fit weight {tuple(weight.shape)}")
    if not 0 <= sparsity < 1:
        raise ConfigError(f"sparsity must be in [0, 1); got {sparsity}")
    cb = torch.as_tensor(np.sort(np.asarray(codebook, np.float64)))
    return cb, 0.5 * (cb[1:] + cb[:-1])


def row_weights(row_scale, n_out: int) -> torch.Tensor | None:
    """``row_scale`` as an (out, 1) float64 column, checked: one finite value >= 0 per row."""
    if row_scale is None:
        return None
    column = torch.as_tensor(row_scale, dtype=torch.float64).reshape(-1, 1)
    if column.shape[0] != n_out or not bool(torch.isfinite(column).all() and (column >= 0).all()):
        raise ConfigError(f"row_scale must hold {n_out} finite values >= 0, one per row; got "
                          f"{column.shape[0]} values, least {float(column.min()):g}")
    return column


def assign(weight: torch.Tensor, hessian: torch.Tensor, codebook: np.ndarray, *, keep: torch.Tensor | None = None,
           sparsity: float = 0.0, block: int = 128, damp: float = 0.01, act_order: bool = True,
           row_scale: torch.Tensor | None = None,
           pruned: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(indices, pruned, values), each (out, in): the nearest-codebook index of every
    compensated weight, the SparseGPT-pruned positions (never ``keep`` ones), and the
    result: codebook[index], 0 where pruned, the compensated weight itself where ``keep``.
    ``row_scale`` (out,) weighs each row's pruning scores: rows whose output matters more
    (an embedding's often-seen tokens) keep more entries. ``pruned`` (out, in): a mask chosen
    beforehand (refit.prune_gradually); those positions are zeroed in order and nothing else
    is pruned (``sparsity`` is then ignored)."""
    cb, mids = _check(weight, hessian, codebook, keep, sparsity)
    if pruned is not None and tuple(pruned.shape) != tuple(weight.shape):
        raise ConfigError(f"pruned mask shape {tuple(pruned.shape)} does not fit weight {tuple(weight.shape)}")
    row_scale = row_weights(row_scale, weight.shape[0])
    W = weight.detach().to(torch.float64).clone()
    n_out, n_in = W.shape
    keep = torch.zeros_like(W, dtype=torch.bool) if keep is None else keep.to(torch.bool)
    H = hessian.to(torch.float64)
    perm = torch.argsort(torch.diag(H), descending=True) if act_order else torch.arange(n_in)
    W, H, keep = W[:, perm], H[perm][:, perm], keep[:, perm]
    fixed = None if pruned is None else torch.as_tensor(pruned).to(torch.bool)[:, perm]
    U = inverse_cholesky(H, damp)
    Q = torch.zeros_like(W)
    idx = torch.zeros(W.shape, dtype=torch.int64)
    pruned = torch.zeros_like(W, dtype=torch.bool)
    for i1 in range(0, n_in, block):
        i2 = min(i1 + block, n_in)
        W1, U1, K1 = W[:, i1:i2].clone(), U[i1:i2, i1:i2], keep[:, i1:i2]
        E1 = torch.zeros_like(W1)
        P1 = torch.zeros_like(W1, dtype=torch.bool)
        if fixed is not None:
            P1 = fixed[:, i1:i2] & ~K1
        elif sparsity > 0:
            score = W1 ** 2 / torch.diag(U1).reshape(1, -1) ** 2
            if row_scale is not None:
                score = score * row_scale
            score[K1] = float("inf")
            n_prune = int(round(sparsity * score.numel()))
            if n_prune:
                thresh = torch.kthvalue(score.reshape(-1), n_prune).values
                P1 = score <= thresh
        for i in range(i2 - i1):
            w, d = W1[:, i], U1[i, i]
            q, qi = _nearest(w, cb, mids)
            q = torch.where(P1[:, i], torch.zeros_like(q), q)
            q = torch.where(K1[:, i], w, q)
            Q[:, i1 + i], idx[:, i1 + i] = q, qi
            err = (w - q) / d
            W1[:, i:] -= err.unsqueeze(1) * U1[i, i:].unsqueeze(0)
            E1[:, i] = err
        pruned[:, i1:i2] = P1 & ~K1
        W[:, i2:] -= E1 @ U[i1:i2, i2:]
    inv = torch.argsort(perm)
    return idx[:, inv], pruned[:, inv], Q[:, inv]


def assign_reference(weight, hessian, codebook, *, keep=None, damp: float = 0.01):
    """Plain OBQ-order GPTQ without blocks, act-order or pruning: the oracle for ``assign``."""
    cb, mids = _check(weight, hessian, codebook, keep, 0.0)
    W = weight.detach().to(torch.float64).clone()
    keep = torch.zeros_like(W, dtype=torch.bool) if keep is None else keep.to(torch.bool)
    U = inverse_cholesky(hessian, damp)
    Q = torch.zeros_like(W)
    for i in range(W.shape[1]):
        q, _ = _nearest(W[:, i], cb, mids)
        q = torch.where(keep[:, i], W[:, i], q)
        Q[:, i] = q
        err = (W[:, i] - q) / U[i, i]
        W[:, i:] -= err.unsqueeze(1) * U[i, i:].unsqueeze(0)
    return Q


def output_error(weight: torch.Tensor, approx: torch.Tensor, hessian: torch.Tensor) -> float:
    """tr(dW H dW^T): the summed squared output error over the calibration inputs."""
    d = (approx.to(torch.float64) - weight.to(torch.float64))
    return float(torch.einsum("oi,ij,oj->", d, hessian.to(torch.float64), d))
