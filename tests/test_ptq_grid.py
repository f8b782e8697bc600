"""Post-training with uniform grids (ECSQ) and probe-rescaled error estimates."""

import numpy as np
import pytest
import torch
from torch import nn

from nnshrink.errors import ConfigError
from nnshrink.format import parse_archive
from nnshrink.format.writer import serialize
from nnshrink.ptq.compress import compress_model
from nnshrink.ptq.layer import LayerSetting, compress_weight
from nnshrink.ptq.probe import output_errors
from nnshrink.quantize.uniform import compact, uniform_grid


# ---------------------------------------------------------------- the grid
def test_uniform_grid_is_symmetric_with_zero_and_marks_what_lies_beyond():
    x = np.array([-0.26, -0.1, 0.0, 0.04, 0.31])
    grid, beyond = uniform_grid(x, 0.1)
    np.testing.assert_allclose(grid, 0.1 * np.arange(-4, 5))
    assert not beyond.any()
    wide = np.concatenate([np.linspace(-1, 1, 101), [50.0, -60.0]])
    grid, beyond = uniform_grid(wide, 0.01, max_levels=255)
    assert len(grid) == 255 and grid[127] == 0.0
    np.testing.assert_array_equal(np.flatnonzero(beyond), [101, 102])  # |x| > 127.5 steps
    grid, beyond = uniform_grid(wide, 0.005)
    np.testing.assert_array_equal(beyond, np.abs(wide) > 127.5 * 0.005)


def test_uniform_grid_bad_input():
    for bad in (0.0, -1.0, float("nan"), float("inf"), "1"):
        with pytest.raises(ConfigError, match="grid step"):
            uniform_grid(np.ones(3), bad)
    with pytest.raises(ConfigError, match="grid levels"):
        uniform_grid(np.ones(3), 0.1, max_levels=300)
    with pytest.raises(ConfigError, match="grid step"):
        LayerSetting(8, step=0.0)


def test_compact_keeps_only_used_levels_and_the_values():
    grid = 0.5 * np.arange(-8, 9)
    idx = np.array([[3, 3, 9], [12, 0, 9]])
    ignore = np.array([[False, False, False], [False, True, False]])  # index 0 is an outlier's: not kept
    cb, new, bits = compact(idx, grid, ignore)
    np.testing.assert_array_equal(cb, grid[[3, 9, 12]].astype(np.float32))
    assert bits == 2 and new[1, 1] == 0
    np.testing.assert_array_equal(cb[new][~ignore], grid[idx][~ignore])


# ---------------------------------------------------------------- one tensor
def _gaussian(seed=0, shape=(64, 256)):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_grid_values_lie_on_the_grid_and_survive_the_archive():
    w = _gaussian()
    w[0, 0] = 400.0  # past 127 steps: kept exactly as an outlier
    t, err = compress_weight(w, LayerSetting(8, step=0.25))
    rms = float(np.sqrt(np.mean(w.astype(np.float64) ** 2)))
    dense = t.to_dense()
    assert t.outlier_mask[0, 0] and dense[0, 0] == 400.0 and int(t.outlier_mask.sum()) == 1
    j = dense[~t.outlier_mask] / (0.25 * rms)
    np.testing.assert_allclose(j, np.round(j), atol=1e-3)
    assert np.abs(dense - w)[~t.outlier_mask].max() <= 0.125 * rms * (1 + 1e-5)  # nearest level
    assert len(t.codebook) <= 1 << t.bits < 2 * len(t.codebook) + 1
    back = parse_archive(serialize({"w": t}, {"model": None})).dense_arrays()["w"]
    np.testing.assert_array_equal(back, dense)
    assert err > 0


def test_a_finer_grid_costs_bytes_and_buys_accuracy():
    w = _gaussian(1)
    sizes, errors = [], []
    for step in (1.0, 0.5, 0.25):
        t, _ = compress_weight(w, LayerSetting(8, step=step))
        sizes.append(len(serialize({"w": t}, {"model": None})))
        errors.append(float(((t.to_dense() - w) ** 2).mean()))
    assert sizes[0] < sizes[1] < sizes[2]
    assert errors[0] > 3 * errors[1] > 9 * errors[2]  # ~ step^2 / 12


def test_grid_with_hessian_compensates():
    """GPTQ on the grid beats plain rounding on the layer's output error."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3000, 64, generator=g, dtype=torch.float64) @ torch.randn(64, 64, generator=g,
                                                                                dtype=torch.float64)
    h = x.T @ x
    w = _gaussian(2, (32, 64))
    plain, _ = compress_weight(w, LayerSetting(8, step=0.8))
    comp, _ = compress_weight(w, LayerSetting(8, step=0.8), np.ones(w.shape), h)

    def out_err(t):
        d = torch.as_tensor(t.to_dense() - w, dtype=torch.float64)
        return float(torch.einsum("oi,ij,oj->", d, h, d))

    assert out_err(comp) < 0.7 * out_err(plain)


# ---------------------------------------------------------------- probe and driver
class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(32, 128), nn.Linear(128, 16)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def _batches(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(32, 32, generator=torch.Generator().manual_seed(99))
    return [torch.randn(16, 32, generator=g) @ mix for _ in range(n)]


def test_probe_measures_one_replacement_at_a_time_and_restores_the_model():
    torch.manual_seed(0)
    model, batches = MLP(), _batches(4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    noisy = model.fc1.weight.detach().numpy() + 0.05
    errs = output_errors(model, batches, lambda m, b: m(b), {"fc1.weight": noisy, "absent": np.zeros(3)})
    assert set(errs) == {"fc1.weight"}
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    copy = MLP()
    copy.load_state_dict({**before, "fc1.weight": torch.from_numpy(noisy)})
    with torch.no_grad():
        want = np.mean([float(((copy(b) - model(b)).double() ** 2).sum()) for b in batches])
    assert errs["fc1.weight"] == pytest.approx(want, rel=1e-6)


def test_target_bpw_with_grid_candidates_fits_and_reports_probe_factors():
    torch.manual_seed(0)
    model = MLP()
    numel = sum(p.numel() for p in model.state_dict().values())
    with torch.enable_grad():
        res = compress_model(model, _batches(8), target_bpw=7.0, candidate_steps=(1.0, 0.5, 0.25, 0.125),
                             min_numel=64, probe=True)
    blob = res.to_bytes()
    assert 8 * len(blob) / numel <= 7.0
    parse_archive(blob)
    rows = {r["name"]: r for r in res.rows}
    assert all(r["step"] in (1.0, 0.5, 0.25, 0.125) for r in rows.values())
    assert all(r["probe_factor"] is not None and r["probe_factor"] > 0 for r in rows.values())
    info = res.metadata["info"]["post_training"]
    assert info["probed"] and info["candidates"][0] == "step 1 x RMS"
    with torch.enable_grad():
        blind = compress_model(model, _batches(8), target_bpw=7.0, candidate_steps=(1.0, 0.5), min_numel=64)
    assert all(r["probe_factor"] is None for r in blind.rows)


def test_fixed_step_and_bad_candidates():
    model = MLP()
    res = compress_model(model, None, step=0.5, min_numel=64)
    assert {r["step"] for r in res.rows} == {0.5}
    with pytest.raises(ConfigError, match="grid step"):
        compress_model(model, None, target_bpw=4.0, candidate_steps=(0.5, -1.0), min_numel=64)
    with pytest.raises(ConfigError, match="at least one candidate"):
        compress_model(model, None, target_bpw=4.0, candidate_steps=(), min_numel=64)


def test_budgets_default_to_grids_and_take_codebooks_when_asked():
    model = MLP()
    grid = compress_model(model, None, target_bpw=6.0, min_numel=64)
    assert all(r["step"] is not None for r in grid.rows)
    kmeans = compress_model(model, None, target_bpw=6.0, min_numel=64, candidate_bits=(2, 4, 6))
    assert all(r["step"] is None and r["bits"] in (2, 4, 6) for r in kmeans.rows)
    with pytest.raises(ConfigError, match="not both"):
        compress_model(model, None, target_bpw=6.0, min_numel=64, candidate_bits=(4,), candidate_steps=(0.5,))


def test_probe_is_for_a_per_layer_choice_with_calibration():
    model = MLP()
    with pytest.raises(ConfigError, match="probe must be true or false; got 'yes'"):
        compress_model(model, _batches(2), target_bpw=6.0, min_numel=64, probe="yes")
    with pytest.raises(ConfigError, match="probe rescales the error estimates of a per-layer choice"):
        compress_model(model, _batches(2), step=0.5, min_numel=64, probe=True)
    with pytest.raises(ConfigError, match="probe rescales the error estimates of a per-layer choice"):
        compress_model(model, None, target_bpw=6.0, min_numel=64, probe=True)


def test_post_training_settings_take_probe():
    import nnshrink
    from nnshrink import PostTraining

    with pytest.raises(ConfigError, match="probe must be true or false"):
        PostTraining(target_bpw=6.0, probe=1)
    with pytest.raises(ConfigError, match="give target_bpw, max_error or sparsity_by_layer with it"):
        PostTraining(bits=4, probe=True)
    with pytest.raises(ConfigError, match="probe needs calibration data"):
        nnshrink.compress(MLP(), PostTraining(target_bpw=6.0, probe=True, min_numel=64))
    with torch.enable_grad():
        res = nnshrink.compress(MLP(), PostTraining(target_bpw=7.0, probe=True, min_numel=64), calibrate=_batches(8))
    assert res.report["post_training"]["probed"] is True
    assert all(r["probe_factor"] is not None and r["probe_factor"] > 0 for r in res.report["layers"] if "bits" in r)
