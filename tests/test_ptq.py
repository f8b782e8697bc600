"""Post-training compression: weighted k-means, calibration, GPTQ / SparseGPT, allocation, driver."""

import numpy as np
import pytest
import torch
from torch import nn

from nnshrink.errors import ConfigError
from nnshrink.format import parse_archive
from nnshrink.ptq import gptq
from nnshrink.ptq.allocate import BudgetError, Candidate, allocate
from nnshrink.ptq.calibrate import collect
from nnshrink.ptq.compress import compress_model
from nnshrink.ptq.layer import LayerSetting, compress_weight
from nnshrink.quantize.kmeans import kmeans_1d_full
from nnshrink.quantize.weighted_kmeans import inertia_weighted, nearest, weighted_kmeans_1d


# ---------------------------------------------------------------- weighted k-means
@pytest.mark.parametrize("seed", range(4))
def test_weighted_kmeans_is_a_weighted_lloyd_fixed_point(seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(3000).astype(np.float32)
    s = rng.exponential(size=3000) ** 3
    r = weighted_kmeans_1d(x, s, 8, floor=0.0)
    assert r.converged and r.k_used == 8
    np.testing.assert_array_equal(r.labels, nearest(x, r.centroids))
    for j in range(r.k_used):  # each centroid is the importance-weighted mean of its cluster
        sel = r.labels == j
        assert r.centroids[j] == pytest.approx(np.average(x[sel], weights=s[sel]), rel=1e-5, abs=1e-6)
    assert r.inertia == pytest.approx(inertia_weighted(x, s, r.centroids, r.labels))


def test_weighted_kmeans_follows_the_importance():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(5000).astype(np.float32)
    s = np.where(x > 1.5, 100.0, 1.0)  # the tail matters: centroids should crowd there
    weighted = weighted_kmeans_1d(x, s, 8, floor=0.0)
    plain = kmeans_1d_full(x, 8)
    assert (weighted.centroids > 1.5).sum() > (plain.centroids > 1.5).sum()
    assert weighted.inertia < inertia_weighted(x, s, plain.centroids, plain.labels)


def test_weighted_kmeans_bad_input():
    with pytest.raises(ConfigError, match="shape"):
        weighted_kmeans_1d(np.zeros(10), np.ones(9), 2)
    with pytest.raises(ConfigError, match="NaN or inf"):
        weighted_kmeans_1d(np.zeros(3), np.array([1, np.nan, 1]), 2)
    with pytest.raises(ConfigError, match=">= 0"):
        weighted_kmeans_1d(np.zeros(3), np.array([1, -1, 1]), 2)
    r = weighted_kmeans_1d(np.array([1.0, 1.0, 2.0]), np.ones(3), 4)  # fewer distinct values than k
    np.testing.assert_array_equal(r.centroids, [1.0, 2.0])


# ---------------------------------------------------------------- GPTQ / SparseGPT
def _layer(seed=0, n_out=24, n_in=48, rows=2000):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, n_in, generator=g, dtype=torch.float64) @ torch.randn(n_in, n_in, generator=g,
                                                                                 dtype=torch.float64)
    w = torch.randn(n_out, n_in, generator=g, dtype=torch.float64)
    return w, x


@pytest.mark.parametrize("block", [1, 7, 128])
def test_blocked_gptq_matches_the_plain_reference(block):
    w, x = _layer()
    cb = np.linspace(-2, 2, 8)
    keep = torch.rand(w.shape, generator=torch.Generator().manual_seed(1)) < 0.05
    _, _, q = gptq.assign(w, x.T @ x, cb, keep=keep, block=block, act_order=False)
    ref = gptq.assign_reference(w, x.T @ x, cb, keep=keep)
    torch.testing.assert_close(q, ref, rtol=0, atol=1e-9)


def test_gptq_lowers_the_output_error_against_rounding():
    w, x = _layer(2)
    h = x.T @ x
    cb = np.linspace(-2.5, 2.5, 8)
    rounded = torch.as_tensor(cb[nearest(w.numpy(), cb)])
    idx, pruned, q = gptq.assign(w, h, cb)
    assert not pruned.any()
    assert torch.equal(q, torch.as_tensor(cb)[idx])  # every value is a codebook entry
    assert gptq.output_error(w, q, h) < 0.8 * gptq.output_error(w, rounded, h)


def test_sparsegpt_prunes_the_fraction_and_beats_magnitude_pruning():
    w, x = _layer(3)
    h = x.T @ x
    cb = np.unique(w.numpy())  # a codebook holding every value: only pruning changes the weights
    keep = torch.zeros(w.shape, dtype=torch.bool)
    keep[0, :5] = True
    idx, pruned, q = gptq.assign(w, h, cb, keep=keep, sparsity=0.5, block=16)
    assert abs(pruned.float().mean().item() - 0.5) < 0.02
    assert not (pruned & keep).any() and (q[pruned] == 0).all()
    thresh = w.abs().flatten().kthvalue(w.numel() // 2).values
    magnitude = torch.where(w.abs() <= thresh, 0.0, w)
    assert gptq.output_error(w, q, h) < 0.7 * gptq.output_error(w, magnitude, h)


def test_gptq_bad_shapes():
    w, x = _layer()
    with pytest.raises(ConfigError, match="Hessian shape"):
        gptq.assign(w, torch.eye(5, dtype=torch.float64), np.array([0.0, 1.0]))
    with pytest.raises(ConfigError, match="sparsity"):
        gptq.assign(w, x.T @ x, np.array([0.0, 1.0]), sparsity=1.0)


# ---------------------------------------------------------------- calibration
class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(32, 64), nn.Linear(64, 10)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


MIX = torch.randn(32, 32, generator=torch.Generator().manual_seed(99)) * torch.logspace(0, -2, 32).unsqueeze(1)


def _batches(n=8, seed=0):
    """Correlated, anisotropic inputs (like real features), the same distribution for every seed."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(16, 32, generator=g) @ MIX for _ in range(n)]


def test_calibration_collects_hessians_and_fisher():
    torch.manual_seed(0)
    model, batches = MLP(), _batches(32)
    cal = collect(model, batches)
    x = torch.cat(batches).to(torch.float64)
    torch.testing.assert_close(cal.hessian["fc1.weight"], x.T @ x)
    assert cal.samples == 32 and cal.rows["fc1.weight"] == 512
    assert cal.fisher["fc2.weight"].shape == (10, 64) and (cal.fisher["fc2.weight"] >= 0).all()
    # fc2's Fisher with an identity output Jacobian: E[r^2] * sum of squared inputs, per input column
    h = torch.relu(model.fc1(torch.cat(batches))).detach().to(torch.float64)
    col = (h ** 2).sum(0) / 32
    assert torch.corrcoef(torch.stack([cal.fisher["fc2.weight"].mean(0), col]))[0, 1] > 0.95
    assert all(p.requires_grad for p in model.parameters()) and all(p.grad is None for p in model.parameters())


def test_calibration_data_that_does_not_fit_names_its_shape():
    with pytest.raises(ConfigError, match=r"\(4, 7\) does not fit the model"):
        collect(MLP(), [torch.randn(4, 7)])
    with pytest.raises(ConfigError, match="empty"):
        collect(MLP(), [])
    with pytest.raises(ConfigError, match="iterable"):
        collect(MLP(), 3)


def test_non_finite_sensitivities_are_refused():
    model = MLP()
    with torch.no_grad():
        model.fc2.weight[0, 0] = float("inf")
    with pytest.raises(ConfigError, match="not finite"):
        collect(model, _batches(1))


# ---------------------------------------------------------------- allocation
def test_allocation_fits_the_budget_and_is_optimal_on_small_problems():
    import itertools
    rng = np.random.default_rng(0)
    for _ in range(20):
        options = {}
        for layer in range(4):
            sizes = np.sort(rng.integers(10, 100, 4))
            errs = np.sort(rng.exponential(size=4))[::-1]
            options[f"l{layer}"] = [Candidate(b, int(s), float(e)) for b, s, e in zip(range(4), sizes, errs)]
        budget = int(rng.integers(sum(min(c.bytes for c in v) for v in options.values()), 300))
        pick = allocate(options, budget)
        used = sum(c.bytes for c in pick.values())
        assert used <= budget
        total = sum(c.error for c in pick.values())
        best = min(sum(c.error for c in combo) for combo in itertools.product(*options.values())
                   if sum(c.bytes for c in combo) <= budget)
        # a Lagrangian point: optimal for the bytes it uses, never worse than the best at that size
        at_size = min(sum(c.error for c in combo) for combo in itertools.product(*options.values())
                      if sum(c.bytes for c in combo) <= used)
        assert total == pytest.approx(at_size) and total >= best - 1e-12


def test_allocation_that_cannot_fit_says_the_closest():
    options = {"a": [Candidate(2, 50, 1.0), Candidate(4, 90, 0.1)], "b": [Candidate(2, 30, 1.0)]}
    with pytest.raises(BudgetError, match="80 bytes") as exc:
        allocate(options, 70)
    assert exc.value.closest == 80


# ---------------------------------------------------------------- one tensor and the driver
def test_outliers_are_kept_exactly_and_lower_the_error():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 128)).astype(np.float32)
    w[rng.random(w.shape) < 0.01] *= 20  # heavy outliers
    plain, e0 = compress_weight(w, LayerSetting(3))
    dense, e1 = compress_weight(w, LayerSetting(3, outliers=0.01))
    assert plain.outlier_mask is None and int(dense.outlier_mask.sum()) == round(0.01 * w.size)
    out = dense.to_dense()
    np.testing.assert_array_equal(out[dense.outlier_mask], w[dense.outlier_mask].astype(np.float16))
    assert e1 < 0.5 * e0


def test_layer_setting_validation():
    for bad, words in ((dict(bits=9), "bits"), (dict(bits=3, outliers=0.6), "outlier"),
                       (dict(bits=3, sparsity=1.0), "sparsity")):
        with pytest.raises(ConfigError, match=words):
            LayerSetting(**bad)


def _out_error(model, tensors, batches):
    ref = torch.cat([model(b) for b in batches])
    state = {k: torch.from_numpy(t.to_dense()) for k, t in tensors.items()}
    copy = MLP()
    copy.load_state_dict(state)
    return float(((torch.cat([copy(b) for b in batches]) - ref) ** 2).mean())


@torch.no_grad()
def test_calibrated_beats_data_free_on_held_out_inputs():
    torch.manual_seed(0)
    model = MLP()
    calib, held_out = _batches(16, 1), _batches(4, 2)
    with torch.enable_grad():
        cal = compress_model(model, calib, bits=3, min_numel=64)
    free = compress_model(model, None, bits=3, min_numel=64)
    assert cal.calibrated and not free.calibrated
    assert cal.metadata["info"]["post_training"]["method"].startswith("calibrated")
    assert "data-free" in free.metadata["info"]["post_training"]["method"]
    assert _out_error(model, cal.tensors, held_out) < 0.7 * _out_error(model, free.tensors, held_out)


def test_target_bpw_is_met_from_the_file_and_unreachable_budgets_say_so(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 64))
    numel = sum(p.numel() for p in model.state_dict().values())
    res = compress_model(model, None, target_bpw=3.0, min_numel=64)
    size = len(res.to_bytes())
    assert 8 * size / numel <= 3.0
    assert len({r["bits"] for r in res.rows}) >= 1
    with pytest.raises(BudgetError, match="cannot be met"):
        compress_model(model, None, target_bpw=0.5, min_numel=64)
    forced = compress_model(model, None, target_bpw=0.5, min_numel=64, force=True)
    assert forced.warnings and "cannot be met" in forced.warnings[0]
    parse_archive(forced.to_bytes())
    assert res.save(tmp_path / "m.nsk") == (tmp_path / "m.nsk").stat().st_size == size


def test_max_error_gives_fewer_bytes_for_a_looser_bound_and_keeps_it():
    torch.manual_seed(0)
    model = MLP()
    calib = _batches(8, 1)
    cal = collect(model, calib)
    tight = compress_model(model, calibration=cal, max_error=1e-3, min_numel=64, candidate_bits=(2, 3, 4, 6, 8))
    loose = compress_model(model, calibration=cal, max_error=5e-2, min_numel=64, candidate_bits=(2, 3, 4, 6, 8))
    for res, bound in ((tight, 1e-3), (loose, 5e-2)):
        assert res.metadata["info"]["post_training"]["estimated_relative_error"] <= bound
    assert len(loose.to_bytes()) < len(tight.to_bytes())
    with pytest.raises(BudgetError, match="cannot be met"):
        compress_model(model, calibration=cal, max_error=1e-12, min_numel=64, candidate_bits=(2, 3))
    with pytest.raises(ConfigError, match="needs calibration"):
        compress_model(model, None, max_error=0.1)
