"""Tuning the exactly-stored norms and biases after post-training sharing (nnshrink/ptq/tune.py):
it must lower the output error on the calibration batches, leave the shared weights and the
given model alone, and refuse bad step counts with one line."""

import numpy as np
import pytest
import torch
import torch.nn as nn

import nnshrink
from nnshrink import PostTraining
from nnshrink.errors import ConfigError
from nnshrink.format import parse_archive
from nnshrink.ptq.compress import compress_model
from nnshrink.ptq.tune import tune_exact_parameters


def model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 64), nn.LayerNorm(64), nn.GELU(), nn.Linear(64, 8)).eval()


def batches(n=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(32, 16, generator=g) + 0.5 for _ in range(n)]


def rel_error(m, state, xs):
    """Mean relative output error of ``m`` holding ``state`` against ``m`` itself."""
    ref = m.state_dict()
    with torch.no_grad():
        want = [m(x) for x in xs]
        m.load_state_dict({k: torch.as_tensor(np.asarray(state[k])) for k in ref})
        got = [m(x) for x in xs]
        m.load_state_dict(ref)
    return float(np.mean([float(((g - w) ** 2).sum() / (w ** 2).sum()) for g, w in zip(got, want)]))


def dense(res):
    return {n: t.to_dense() for n, t in res.tensors.items()}


def test_tuning_lowers_the_output_error_and_keeps_the_shared_weights():
    m, xs = model(), batches()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    plain = compress_model(m, xs, bits=2, min_numel=256)
    tuned = compress_model(m, xs, bits=2, min_numel=256, tune_steps=150)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())  # the given model is not changed
    a, b = dense(plain), dense(tuned)
    shared = [r["name"] for r in tuned.rows]
    assert shared == ["0.weight", "3.weight"]
    assert all(np.array_equal(a[n], b[n]) for n in shared)  # the shared weights stay as they were
    moved = [n for n in a if n not in shared and not np.array_equal(a[n], b[n])]
    assert set(moved) == {"0.bias", "1.weight", "1.bias", "3.bias"}
    e_plain, e_tuned = rel_error(m, a, xs), rel_error(m, b, xs)
    assert e_tuned < 0.8 * e_plain, (e_plain, e_tuned)
    info = tuned.metadata["info"]["post_training"]["tuned"]
    assert info["steps"] == 150 and info["parameters"] == 64 + 128 + 8
    assert info["calibration_error_after"] < info["calibration_error_before"]
    assert "shared weights unchanged" in tuned.metadata["info"]["post_training"]["method"]
    assert plain.metadata["info"]["post_training"]["tuned"] is None
    stored = parse_archive(tuned.to_bytes()).dense_arrays()  # what is loaded back is the tuned model
    assert all(np.array_equal(stored[n], b[n]) for n in b)


def test_tuning_is_deterministic_and_zero_steps_change_nothing():
    m, xs = model(), batches()
    decoded = {n: t.to_dense() for n, t in compress_model(m, xs, bits=2, min_numel=256).tensors.items()}
    tunable = ["0.bias", "1.weight", "1.bias", "3.bias"]
    one, s1 = tune_exact_parameters(m, decoded, tunable, xs, nnshrink.ptq.calibrate.default_forward, steps=20)
    two, _ = tune_exact_parameters(m, decoded, tunable, xs, nnshrink.ptq.calibrate.default_forward, steps=20)
    assert all(np.array_equal(one[n], two[n]) for n in tunable)
    none, s0 = tune_exact_parameters(m, decoded, tunable, xs, nnshrink.ptq.calibrate.default_forward, steps=0)
    assert all(np.array_equal(none[n], decoded[n]) for n in tunable)
    assert s0["calibration_error_after"] == s0["calibration_error_before"] == s1["calibration_error_before"]


def test_the_api_takes_tune_steps_and_reports_it():
    m, xs = model(), batches()
    res = nnshrink.compress(m, PostTraining(bits=2, min_numel=256, tune_steps=40), calibrate=xs)
    assert res.report["recipe"]["tune_steps"] == 40
    assert res.report["post_training"]["tuned"]["steps"] == 40


@pytest.mark.parametrize("steps", [-1, 1.5, True, "10", None])
def test_bad_step_counts_are_one_line_config_errors(steps):
    with pytest.raises(ConfigError, match="tune_steps must be an integer >= 0") as exc:
        PostTraining(tune_steps=steps)
    assert repr(steps) in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(ConfigError, match="tune_steps must be an integer >= 0"):
        compress_model(model(), batches(), bits=2, min_numel=256, tune_steps=steps)


def test_tuning_needs_calibration_batches():
    with pytest.raises(ConfigError, match="tune_steps needs calibration"):
        compress_model(model(), None, bits=2, min_numel=256, tune_steps=5)
    with pytest.raises(ConfigError, match="tune_steps needs calibration data"):
        nnshrink.compress(model(), PostTraining(bits=2, min_numel=256, tune_steps=5))
    with pytest.raises(ConfigError, match="one-shot iterator"):
        nnshrink.compress(model(), PostTraining(bits=2, min_numel=256, tune_steps=5), calibrate=iter(batches()))
