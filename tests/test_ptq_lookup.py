"""Pruning an embedding table with error compensation: the lookups' output-gradient matrix
(calibrate.py ``lookup``, autograd as the oracle), row-weighted SparseGPT scores
(gptq.assign ``row_scale``), and a pruned table that errs less than Fisher x w^2 alone."""

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from nnshrink.errors import ConfigError
from nnshrink.ptq import gptq
from nnshrink.ptq.calibrate import collect
from nnshrink.ptq.compress import compress_model
from nnshrink.ptq.layer import LayerSetting, compress_weight, row_sensitivity


class Lookup(nn.Module):
    def __init__(self, vocab=64, d=32):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.a, self.b = nn.Linear(d, d), nn.Linear(d, 8)

    def forward(self, ids):
        return self.b(F.gelu(self.a(F.layer_norm(self.emb(ids), (self.emb.embedding_dim,))).mean(1)))


def _batches(vocab=64, n=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (16, 6), generator=g) for _ in range(n)]


def test_the_lookup_matrix_sums_the_output_gradients_outer_products():
    torch.manual_seed(0)
    m = Lookup().eval()
    xs = _batches()
    cal = collect(m, xs, weights={"emb.weight": "emb", "a.weight": "a"})
    assert set(cal.lookup) == {"emb.weight"} and set(cal.hessian) == {"a.weight"}
    want = torch.zeros(32, 32, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)  # collect's projections, drawn in the same order
    for x in xs:
        e = m.emb(x).detach().requires_grad_(True)
        out = m.b(F.gelu(m.a(F.layer_norm(e, (32,))).mean(1)))
        r = torch.randn(out.shape, generator=gen)
        (g,) = torch.autograd.grad((out * r).sum(), e)
        rows = g.reshape(-1, 32).to(torch.float64)
        want += rows.T @ rows
    assert torch.allclose(cal.lookup["emb.weight"], want, rtol=1e-6, atol=1e-12)
    # LayerNorm takes away the mean: the all-ones direction costs nothing, which compensation can use
    ones = torch.ones(32, dtype=torch.float64)
    assert float(ones @ want @ ones) < 1e-9 * float(torch.trace(want))


def test_row_scale_keeps_more_of_the_rows_that_matter():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(40, 24, generator=g, dtype=torch.float64)
    x = torch.randn(200, 24, generator=g, dtype=torch.float64)
    h = x.T @ x
    cb = np.linspace(-3, 3, 255)
    plain = gptq.assign(w, h, cb, sparsity=0.5)
    ones = gptq.assign(w, h, cb, sparsity=0.5, row_scale=torch.ones(40))
    assert all(torch.equal(a, b) for a, b in zip(plain, ones))
    scale = torch.ones(40)
    scale[:20] = 100.0
    _, pruned, _ = gptq.assign(w, h, cb, sparsity=0.5, row_scale=scale)
    assert float(pruned[:20].float().mean()) < 0.25 < 0.75 < float(pruned[20:].float().mean())
    assert float(pruned.float().mean()) == pytest.approx(0.5, abs=0.01)
    with pytest.raises(ConfigError, match="row_scale must hold 40 finite values >= 0, one per row; got 39 values"):
        gptq.assign(w, h, cb, sparsity=0.5, row_scale=torch.ones(39))
    with pytest.raises(ConfigError, match="row_scale must hold 40 .* got 40 values, least -100"):
        gptq.assign(w, h, cb, sparsity=0.5, row_scale=-scale)


def test_row_sensitivity_floors_rows_calibration_never_reached():
    imp = np.zeros((4, 3))
    imp[0] = 1.0
    assert row_sensitivity(imp).tolist() == [3.75, 0.75, 0.75, 0.75]


def test_a_pruned_table_is_compensated_and_errs_less_than_fisher_alone():
    torch.manual_seed(0)
    m = Lookup().eval()
    xs = _batches(n=12)
    result = compress_model(m, xs, bits=8, sparsity=0.6, min_numel=256, sparsity_over="all")
    cal = collect(m, xs, weights={"emb.weight": "emb"})
    w = m.emb.weight.detach().numpy()
    fisher_only, _ = compress_weight(w, LayerSetting(8, 0.0, 0.6), cal.fisher["emb.weight"].numpy(), None)
    compensated = result.tensors["emb.weight"]
    assert float(1 - compensated.mask.mean()) == pytest.approx(0.6, abs=0.01)

    held_out = _batches(n=12, seed=2)  # batches the calibration never saw

    def output_error(table):
        state = {**m.state_dict(), "emb.weight": torch.from_numpy(np.asarray(table, np.float32))}
        work = Lookup().eval()
        work.load_state_dict(state)
        with torch.no_grad():
            return sum(float(((work(x) - m(x)) ** 2).sum()) for x in held_out)

    errors = output_error(compensated.to_dense()), output_error(fisher_only.to_dense())
    assert errors[0] < 0.8 * errors[1], errors
