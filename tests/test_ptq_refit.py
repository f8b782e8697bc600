"""Pruning by least squares (refit.py): the batched refit against one exact solve per row,
its optimality for a given mask, gradual pruning against SparseGPT's one pass, and the
fixed mask gptq.assign rounds with."""

import numpy as np
import pytest
import torch

from nnshrink.errors import ConfigError
from nnshrink.ptq import gptq
from nnshrink.ptq import refit as refit_module
from nnshrink.ptq.layer import LayerSetting, compress_weight
from nnshrink.ptq.refit import prune_gradually, refit, refit_reference


def _problem(out=12, n=48, samples=400, seed=0):
    """Correlated inputs (as a layer's are) and one dead input."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(n, n, generator=g, dtype=torch.float64) * 0.3 + torch.eye(n, dtype=torch.float64)
    x = torch.randn(samples, n, generator=g, dtype=torch.float64) @ mix
    x[:, 5] = 0.0
    return torch.randn(out, n, generator=g, dtype=torch.float64), x.T @ x


FINE = np.linspace(-6, 6, 4097)  # a codebook fine enough to leave only the pruning's error


def test_the_batched_refit_equals_one_exact_solve_per_row(monkeypatch):
    w, h = _problem()
    kept = torch.rand(w.shape, generator=torch.Generator().manual_seed(1)) > 0.4
    kept[3] = False  # a row pruned whole stays zero
    want = refit_reference(w, kept, h, damp=0.1)
    got = refit(w, kept, h, damp=0.1)  # at the default tolerance: the optimum's error to 1e-6
    assert bool((got[~kept] == 0).all())
    assert gptq.output_error(w, got, h) <= gptq.output_error(w, want, h) * (1 + 1e-6)
    monkeypatch.setattr(refit_module, "TOLERANCE", 1e-12)
    assert torch.allclose(refit(w, kept, h, damp=0.1), want, atol=1e-9, rtol=0)
    assert torch.allclose(refit(w, kept, h, damp=0.1, start=torch.randn(w.shape, dtype=torch.float64)), want,
                          atol=1e-9, rtol=0)


def test_a_refit_errs_less_than_sparsegpts_own_values_on_its_mask():
    w, h = _problem()
    _, pruned, q = gptq.assign(w, h, FINE, sparsity=0.5, damp=0.01)
    fitted = refit(w, ~pruned, h, damp=0.0)
    assert gptq.output_error(w, fitted, h) < gptq.output_error(w, q, h)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gradual_pruning_errs_less_than_one_pass(seed):
    w, h = _problem(seed=seed)
    _, _, one_pass = gptq.assign(w, h, FINE, sparsity=0.6, damp=0.01)
    values, pruned = prune_gradually(w, h, 0.6, 5, damp=0.01)
    assert int(pruned.sum()) == round(0.6 * w.numel())
    assert bool((values[pruned] == 0).all())
    assert gptq.output_error(w, values, h) < 0.9 * gptq.output_error(w, one_pass, h)


def test_gradual_pruning_never_prunes_the_kept_positions_and_weighs_rows():
    w, h = _problem()
    keep = torch.zeros(w.shape, dtype=torch.bool)
    keep[:, :4] = True
    _, pruned = prune_gradually(w, h, 0.5, 3, keep=keep)
    assert not bool((pruned & keep).any())
    scale = torch.ones(w.shape[0], dtype=torch.float64)
    scale[0] = 100.0
    _, weighed = prune_gradually(w, h, 0.5, 3, row_scale=scale)
    assert int(weighed[0].sum()) < int(weighed[1:].sum(1).float().mean())


def test_assign_zeroes_exactly_a_given_mask():
    w, h = _problem()
    mask = torch.rand(w.shape, generator=torch.Generator().manual_seed(3)) > 0.7
    _, pruned, q = gptq.assign(w, h, FINE, sparsity=0.5, damp=0.01, pruned=mask)
    assert bool((pruned == mask).all()) and bool((q[mask] == 0).all())


def test_compress_weight_in_rounds_keeps_the_fraction_and_errs_less():
    w, h = _problem(out=32, n=64)
    one = compress_weight(w.float().numpy(), LayerSetting(8, 0.0, 0.5, 0.0625), None, h.float())
    five = compress_weight(w.float().numpy(), LayerSetting(8, 0.0, 0.5, 0.0625, rounds=5), None, h.float())
    for t, _ in (one, five):
        assert abs(float((t.to_dense() == 0).mean()) - 0.5) < 0.01
    assert gptq.output_error(w, torch.from_numpy(five[0].to_dense()), h) < \
        gptq.output_error(w, torch.from_numpy(one[0].to_dense()), h)


def test_bad_rounds_and_shapes_are_one_line_errors():
    w, h = _problem()
    for bad in (0, 1.5, True):
        with pytest.raises(ConfigError, match="pruning rounds"):
            LayerSetting(8, 0.0, 0.5, rounds=bad)
        with pytest.raises(ConfigError, match="pruning rounds"):
            prune_gradually(w, h, 0.5, bad)
    with pytest.raises(ConfigError, match="mask shape"):
        refit(w, torch.ones(3, 3, dtype=torch.bool), h)
    with pytest.raises(ConfigError, match="Hessian shape"):
        refit(w, torch.ones(w.shape, dtype=torch.bool), h[:3, :3])
    with pytest.raises(ConfigError, match="row_scale must hold 12 finite values >= 0, one per row; got 3 values"):
        prune_gradually(w, h, 0.5, 2, row_scale=torch.ones(3))
    with pytest.raises(ConfigError, match="row_scale must hold 12 finite values >= 0"):
        prune_gradually(w, h, 0.5, 2, row_scale=-torch.ones(12))
    with pytest.raises(ConfigError, match="mask shape"):
        prune_gradually(w, h, 0.5, 2, keep=torch.zeros(2, 2, dtype=torch.bool))
    with pytest.raises(ConfigError, match="pruned mask shape"):
        gptq.assign(w, h, FINE, pruned=torch.ones(2, 2, dtype=torch.bool))
