"""Low-rank factorisation of trained layers: exact at full rank, SVD-optimal truncation,
plans that rebuild from checkpoints, and clear errors."""

import copy
import json
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

from nnshrink.arch.factorize import (Factorized, apply_plan, factorize, factorized_weights, max_rank,
                                     merge_plans, plan_dict, plan_factorization)
from nnshrink.checkpoint import load_checkpoint, save_checkpoint
from nnshrink.errors import ConfigError
from nnshrink.models import build_model

LAYERS = [
    ("spatial", lambda: nn.Conv2d(3, 5, 3, padding=1)),
    ("spatial", lambda: nn.Conv2d(3, 5, (3, 5), stride=(2, 1), padding=(1, 2), dilation=(1, 2))),
    ("spatial", lambda: nn.Conv2d(4, 6, 5, stride=2, bias=False)),
    ("channel", lambda: nn.Conv2d(3, 5, 3, stride=2, padding=1)),
    ("channel", lambda: nn.Conv2d(2, 7, (3, 1), padding=(2, 0), dilation=2)),
    ("linear", lambda: nn.Linear(9, 6)),
]


def _input(module):
    return torch.randn(2, module.in_features) if isinstance(module, nn.Linear) else torch.randn(2, module.in_channels, 11, 13)


@pytest.mark.parametrize("kind, make", LAYERS)
def test_full_rank_is_exact(kind, make):
    torch.manual_seed(0)
    ref = nn.Sequential(make())
    model = copy.deepcopy(ref)
    apply_plan(model, {"0": {"kind": kind, "rank": max_rank(ref[0], kind)}})
    assert isinstance(model[0], Factorized)
    x = _input(ref[0])
    torch.testing.assert_close(model(x), ref(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind, make", LAYERS)
def test_truncation_error_matches_svd_and_shrinks(kind, make):
    torch.manual_seed(1)
    ref = make()
    errors = []
    for rank in range(1, max_rank(ref, kind) + 1):
        model = nn.Sequential(copy.deepcopy(ref))
        apply_plan(model, {"0": {"kind": kind, "rank": rank}})
        pair = model[0]
        # Reconstruct the kernel the pair computes (linear map: probe with the identity).
        if kind == "linear":
            w = pair.second.weight @ pair.first.weight
        elif kind == "channel":
            w = torch.einsum("or,rcij->ocij", pair.second.weight[:, :, 0, 0], pair.first.weight)
        else:
            w = torch.einsum("rci,orj->ocij", pair.first.weight[..., 0], pair.second.weight[:, :, 0, :])
        errors.append(float((w - ref.weight).detach().norm()))
        assert sum(p.numel() for n, p in pair.named_parameters() if n.endswith("weight")) == \
            factorized_weights(ref, kind, rank)
    assert all(a >= b - 1e-5 for a, b in zip(errors, errors[1:]))
    assert errors[-1] < 1e-4 and (len(errors) == 1 or errors[0] > 1e-3)


def test_spatial_rank1_of_separable_kernel_is_exact():
    conv = nn.Conv2d(1, 1, 5, padding=2, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.outer(torch.arange(1.0, 6.0), torch.tensor([1.0, -2.0, 0.5, 3.0, 1.0]))[None, None])
    model = nn.Sequential(copy.deepcopy(conv))
    apply_plan(model, {"0": {"kind": "spatial", "rank": 1}})
    x = torch.randn(1, 1, 9, 9)
    torch.testing.assert_close(model(x), conv(x), atol=1e-5, rtol=1e-5)


def test_plan_on_lenet5_defaults_halve_the_large_layers():
    model = build_model("lenet5")
    choices = plan_factorization(model)
    assert [c.name for c in choices] == ["conv2", "ip1"]  # conv1 / ip2 below min_weights
    for c in choices:
        assert c.params_after <= c.params_before / 2
    conv2 = {c.name: c for c in choices}["conv2"]
    assert conv2.rank == 35 and conv2.params_after == 35 * (20 * 5 + 50 * 5) and conv2.max_rank == 100


def test_energy_and_rank_choices():
    torch.manual_seed(0)
    model = build_model("lenet5")
    low = {c.name: c for c in plan_factorization(model, energy=0.3, layers=["conv2", "ip1"])}
    high = {c.name: c for c in plan_factorization(model, energy=0.9, layers=["conv2", "ip1"])}
    for name in low:
        assert low[name].energy >= 0.3 and high[name].energy >= 0.9
        assert low[name].rank < high[name].rank
    fixed = plan_factorization(model, rank=10)
    assert {c.rank for c in fixed} == {10}


@pytest.mark.parametrize("kw, word", [
    (dict(rank=101, layers=["conv2"]), "rank 101 is larger than layer 'conv2' allows \\(at most 100\\)"),
    (dict(rank=600), "rank 600"),
    (dict(rank=0), "rank must be a positive integer; got 0"),
    (dict(energy=1.5), "energy must be in \\(0, 1\\]; got 1.5"),
    (dict(ratio=1.0), "ratio"),
    (dict(rank=3, energy=0.5), "at most one"),
    (dict(layers=["nope"]), "no layer named 'nope'"),
    (dict(conv_mode="diagonal"), "diagonal"),
])
def test_bad_options(kw, word):
    with pytest.raises(ConfigError, match=word):
        plan_factorization(build_model("lenet5"), **kw)


def test_bad_plan_entries():
    with pytest.raises(ConfigError, match="rank 999"):
        apply_plan(build_model("lenet5"), {"conv2": {"kind": "spatial", "rank": 999}})
    with pytest.raises(ConfigError, match="is linear, but it is Conv2d"):
        apply_plan(build_model("lenet5"), {"conv2": {"kind": "linear", "rank": 2}})
    with pytest.raises(ConfigError, match="'ip9'"):
        apply_plan(build_model("lenet5"), {"ip9": {"kind": "linear", "rank": 2}})


def test_checkpoint_roundtrip_rebuilds_structure(tmp_path):
    torch.manual_seed(0)
    model = build_model("lenet5")
    model, choices = factorize(model, ratio=0.3)
    base, config = merge_plans("lenet5", {"num_classes": 10, "conv_relu": True, "dropout": 0.0}, plan_dict(choices))
    path = save_checkpoint(model, tmp_path / "f.safetensors", "factorized", config)
    loaded, meta = load_checkpoint(path)
    assert meta["model"] == "factorized" and meta["config"]["plan"]["ip1"]["kind"] == "linear"
    assert set(loaded.state_dict()) == set(model.state_dict())
    assert "ip1.first.weight" in loaded.state_dict() and "ip1.weight" not in loaded.state_dict()
    x = torch.randn(3, 1, 28, 28)
    model.eval(), loaded.eval()
    torch.testing.assert_close(loaded(x), model(x))


def test_refactorising_merges_plans():
    model = build_model("lenet5")
    model, first = factorize(model, layers=["ip1"], rank=50)
    model, second = factorize(model, layers=["ip1.first"], rank=10)
    base, config = merge_plans("factorized", {"base": "lenet5", "base_config": {}, "plan": plan_dict(first)},
                               plan_dict(second))
    rebuilt = build_model("factorized", **config)
    assert set(rebuilt.state_dict()) == set(model.state_dict())


def test_cli_factorize_then_eval(tiny_idx_dir, tmp_path, capsys):
    # In-process through nnshrink.cli.main (the same parser and error handling as the
    # command line, without three interpreter start-ups).
    from nnshrink.cli import main

    base, out = tmp_path / "base.safetensors", tmp_path / "f.safetensors"
    data = ["--dataset", "idx", "--data-dir", str(tiny_idx_dir)]
    assert main(["train", "--model", "lenet5", *data, "--epochs", "1", "--quiet", "-o", str(base)]) == 0
    capsys.readouterr()
    assert main(["factorize", str(base), *data, "--energy", "0.9", "--epochs", "0.5", "--quiet", "--json",
                 "-o", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["params_after"] < report["params_before"]
    assert {"top1_before", "top1_after", "factorized_ratio", "layers"} <= set(report)
    assert main(["eval", str(out), *data, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["top1"] == pytest.approx(report["top1_after"])
    assert main(["factorize", str(base), *data, "--rank", "5000", "--layers", "ip1",
                 "-o", str(tmp_path / "x.safetensors")]) == 2
    assert "rank 5000 is larger than layer 'ip1' allows (at most 500)" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_subprocess_factorize(tiny_idx_dir, tmp_path):
    base, out = tmp_path / "base.safetensors", tmp_path / "f.safetensors"
    cmd = [sys.executable, "-m", "nnshrink"]
    data = ["--dataset", "idx", "--data-dir", str(tiny_idx_dir)]
    subprocess.run([*cmd, "train", "--model", "lenet5", *data, "--epochs", "1", "--quiet", "-o", str(base)],
                   check=True, capture_output=True, timeout=300)
    proc = subprocess.run([*cmd, "factorize", str(base), *data, "--rank", "10", "--epochs", "0", "-o", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "factorised layers" in proc.stdout and out.is_file()
