"""Post-training compression of the user's own model: ``nnshrink.compress(model,
"post-training" | PostTraining(...), calibrate=...)`` and ``nnshrink compress STATE
--model-factory ... --target-bpw B``; bad input is one clear line."""

import json
import textwrap

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

import nnshrink
from nnshrink import PostTraining
from nnshrink.errors import ConfigError
from nnshrink.ptq.calibrate import Calibration
from nnshrink.ptq.module import check_finite
from nnshrink.recipes import recipe_from_dict


class Net(nn.Module):
    """conv-BN-conv-BN and a classifier (the convs and the classifier are shared at min_numel=256)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32)
        self.conv2, self.bn2 = nn.Conv2d(32, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.fc = nn.Linear(16 * 16, 4)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        return self.fc(x.flatten(1))


def net(seed=0):
    torch.manual_seed(seed)
    m = Net()
    with torch.no_grad():  # BN statistics that are not the defaults, so their storage matters
        for bn in (m.bn1, m.bn2):
            bn.running_mean.uniform_(-0.1, 0.1)
            bn.running_var.uniform_(0.5, 1.5)
    return m.eval()


def inputs(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g)
    x[:, :, :4] *= 3  # a structure the calibration can learn: the top half is louder
    return x


def batches(n=64, seed=1):
    x = inputs(n, seed)
    return [x[i:i + 16] for i in range(0, n, 16)]


def rel_error(model, reference, x):
    with torch.no_grad():
        return float((model(x) - reference).pow(2).sum() / reference.pow(2).sum())


def test_round_trip_loads_into_a_fresh_model_and_reports(tmp_path):
    x = inputs(32, 9)
    model = net()
    scores = []

    def evaluate(m):
        scores.append(m)
        return 0.5

    res = nnshrink.compress(model, PostTraining(bits=3, outliers=0.01, min_numel=256), calibrate=batches(),
                            evaluate=evaluate, progress=False)
    written = res.save(tmp_path / "m.nsk")
    rep = res.report
    assert written == len(res.blob) == rep["compressed_bytes"] == (tmp_path / "m.nsk").stat().st_size
    assert rep["original_bytes"] == sum(t.numel() * t.element_size() for t in net().state_dict().values())
    assert rep["ratio"] == pytest.approx(rep["original_bytes"] / written)
    assert rep["post_training"]["calibrated"] and rep["post_training"]["calibration_batches"] == 4
    assert rep["top1_before"] == rep["top1_after"] == 0.5 and len(scores) == 2 and not rep["warnings"]
    shared = {r["name"]: r for r in rep["layers"] if "bits" in r}
    assert set(shared) == {"conv1.weight", "conv2.weight", "fc.weight"}
    assert all(r["bits"] == 3 and r["outliers"] > 0 and r["compensated"] for r in shared.values())
    loaded = nnshrink.load(tmp_path / "m.nsk", model=Net()).eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), res.model.eval()(x))  # result.model is what load gives back
    assert not torch.equal(loaded.conv2.weight, net().conv2.weight)  # it was really shared
    assert torch.equal(loaded.bn1.running_var, net().bn1.running_var)  # buffers exact
    assert rel_error(loaded, net()(x).detach(), x) < 0.05


def test_calibrated_beats_the_labelled_data_free_fallback():
    x = inputs(64, 7)  # held out: not the calibration batches
    ref = net()(x).detach()
    cal = nnshrink.compress(net(), PostTraining(bits=2, min_numel=256), calibrate=batches(), progress=False)
    free = nnshrink.compress(net(), PostTraining(bits=2, min_numel=256), progress=False)
    assert not free.report["post_training"]["calibrated"]
    assert any("no calibrate=: data-free fallback" in w for w in free.report["warnings"])
    assert free.report["post_training"]["method"].startswith("data-free")
    assert rel_error(cal.model, ref, x) < 0.7 * rel_error(free.model, ref, x)


def test_the_recipe_name_and_the_budgets():
    gen = (b for b in batches())  # read once: a generator will do for post-training
    res = nnshrink.compress(net(), "post-training", calibrate=gen, progress=False)
    assert res.report["recipe"]["bits"] is None and res.report["setting"] == "4 bits"
    assert {r["name"]: r["bits"] for r in res.report["layers"] if "bits" in r} == {"conv2.weight": 4, "fc.weight": 4}
    res = nnshrink.compress(net(), PostTraining(target_bpw=14.0), calibrate=batches(), progress=False)
    assert res.report["bits_per_weight"] <= 14.0  # measured from the bytes, overhead included
    assert len({r["bits"] for r in res.report["layers"] if "bits" in r}) >= 1
    bound = nnshrink.compress(net(), PostTraining(max_error=0.002), calibrate=batches(), progress=False)
    assert bound.report["post_training"]["estimated_relative_error"] <= 0.002
    pruned = nnshrink.compress(net(), PostTraining(bits=4, sparsity=0.5), calibrate=batches(), progress=False)
    assert all(r["sparsity"] == pytest.approx(0.5, abs=0.01) for r in pruned.report["layers"] if "bits" in r)


def test_recalibrated_batchnorm_statistics_are_stored(tmp_path):
    from nnshrink.batchnorm import recalibrate_bn

    def float_net():  # statistics of the data it runs on, as a trained net has
        m = net()
        recalibrate_bn(m, batches())
        return m.eval()

    x = inputs(64, 7)
    ref = float_net()(x).detach()
    plain = nnshrink.compress(float_net(), PostTraining(bits=2, min_numel=256), calibrate=batches(), progress=False)
    res = nnshrink.compress(float_net(), PostTraining(bits=2, min_numel=256, recalibrate_bn=True),
                            calibrate=batches(), progress=False)
    assert res.report["post_training"]["bn_recalibrated"] == 4
    res.save(tmp_path / "bn.nsk")
    loaded = nnshrink.load(tmp_path / "bn.nsk", model=Net()).eval()
    for key in ("bn2.running_mean", "bn2.running_var"):
        stored, original = loaded.state_dict()[key], float_net().state_dict()[key]
        assert torch.equal(stored, res.model.state_dict()[key]) and not torch.allclose(stored, original)
    with torch.no_grad():
        assert torch.equal(loaded(x), res.model.eval()(x))
    recalibrate_bn(plain.model, batches())  # the same weights: the stored statistics are those of the shared net
    for key in ("bn1.running_mean", "bn2.running_mean", "bn2.running_var"):
        torch.testing.assert_close(loaded.state_dict()[key], plain.model.state_dict()[key])
    assert rel_error(loaded, ref, x) < 0.5
    with pytest.raises(ConfigError, match="recalibrate_bn needs calibration data"):
        nnshrink.compress(net(), PostTraining(recalibrate_bn=True), progress=False)
    with pytest.raises(ConfigError, match="one-shot iterator"):
        nnshrink.compress(net(), PostTraining(recalibrate_bn=True), calibrate=iter(batches()), progress=False)


@pytest.mark.parametrize("make, words", [
    (lambda: PostTraining(bits=3, target_bpw=3), "give one of bits, target_bpw and max_error; got bits and target_bpw"),
    (lambda: PostTraining(target_bpw=0), "target_bpw must be a number in (0, 32]; got 0"),
    (lambda: PostTraining(max_error=float("nan")), "max_error must be a number"),
    (lambda: PostTraining(outliers=0.7), "outlier"),
    (lambda: PostTraining(sparsity=1.0), "sparsity"),
    (lambda: PostTraining(bits=9), "bits must be an integer in 1..8; got 9"),
    (lambda: PostTraining(min_numel=0), "min_numel must be an int >= 1; got 0"),
])
def test_settings_are_validated_when_built(make, words):
    with pytest.raises(ConfigError, match=None) as exc:
        make()
    assert words in str(exc.value)


def test_post_training_refuses_what_it_would_ignore():
    def fine_tune(m, e):
        pass

    for kw, words in [({"fine_tune": fine_tune}, "fine_tune given, but post-training compression does not retrain"),
                      ({"epochs_scale": 2.0}, "epochs_scale given"),
                      ({"device": "cuda"}, "runs on the CPU; got device='cuda'"),
                      ({"recipe": PostTraining(max_error=0.1)}, "max_error needs calibration data")]:
        kw = {"recipe": "post-training", **kw}
        with pytest.raises(ConfigError) as exc:
            nnshrink.compress(net(), progress=False, **kw)
        assert words in str(exc.value)
    with pytest.raises(ConfigError, match="forward= applies to post-training compression only"):
        nnshrink.compress(net(), "prune", forward=lambda m, b: m(b), progress=False)
    with pytest.raises(ConfigError, match="calibrate= must be an iterable of batches"):
        nnshrink.compress(net(), "post-training", calibrate=torch.zeros(4, 1, 8, 8), progress=False)
    with pytest.raises(ConfigError, match="calibrate= function must return an iterable of batches; got Tensor"):
        nnshrink.compress(net(), "post-training", calibrate=lambda: torch.zeros(4, 1, 8, 8), progress=False)


def test_calibration_data_that_does_not_fit_names_the_shapes():
    with pytest.raises(ConfigError) as exc:
        nnshrink.compress(net(), "post-training", calibrate=[torch.zeros(8, 3, 8, 8)], progress=False)
    msg = str(exc.value)
    assert "calibration batch (8, 3, 8, 8) does not fit the model" in msg and "[32, 1, 3, 3]" in msg
    assert len(msg.splitlines()) == 1


def test_a_budget_that_cannot_be_met_says_the_closest_and_force_writes_it():
    with pytest.raises(ConfigError) as exc:
        nnshrink.compress(net(), PostTraining(target_bpw=0.5), calibrate=batches(), progress=False)
    assert "target-bpw 0.5 cannot be met: the smallest reachable is about" in str(exc.value)
    res = nnshrink.compress(net(), PostTraining(target_bpw=0.5, force=True), calibrate=batches(), progress=False)
    assert any("cannot be met; wrote the smallest reachable" in w for w in res.report["warnings"])
    assert {r["bits"] for r in res.report["layers"] if "bits" in r} == {2}
    with pytest.raises(ConfigError, match="max-error 1e-09 cannot be met: the least reachable"):
        nnshrink.compress(net(), PostTraining(max_error=1e-9), calibrate=batches(), progress=False)


def test_non_finite_sensitivities_name_the_layer():
    bad = [torch.full((4, 1, 8, 8), float("inf"))]
    with pytest.raises(ConfigError, match=r"sensitivities of 'conv[12].weight' are not finite"):
        nnshrink.compress(net(), "post-training", calibrate=bad, progress=False)
    cal = Calibration(fisher={"fc.weight": torch.ones(4, 256, dtype=torch.float64)},
                      hessian={"fc.weight": torch.full((256, 256), float("nan"), dtype=torch.float64)})
    with pytest.raises(ConfigError, match=r"input statistics \(Hessian\) of 'fc.weight' are not finite"):
        check_finite(cal)


def test_epochs_scale_scales_every_retraining():
    recipe = recipe_from_dict({"stages": ["prune", "share", "encode"],
                               "prune": {"sparsity": 0.5, "rounds": 1, "retrain_epochs": 1, "final_epochs": 2},
                               "share": {"finetune_epochs": 1}})
    runs = {}
    for scale in (None, 2.0):
        calls = []
        nnshrink.compress(net(), recipe, fine_tune=lambda m, e, calls=calls: calls.append(e), epochs_scale=scale,
                          progress=False)
        runs[scale] = calls
    assert runs[None] == [2, 1] and runs[2.0] == [4, 2]
    with pytest.raises(ConfigError, match="epochs_scale=2 given, but recipe 'custom' retrains nothing"):
        nnshrink.compress(net(), recipe_from_dict({"stages": ["share", "encode"], "share": {"finetune_epochs": 0}}),
                          epochs_scale=2.0, progress=False)
    with pytest.raises(ConfigError, match="epochs_scale"):
        nnshrink.compress(net(), recipe, epochs_scale=-1.0, progress=False)


FACTORY = '''
import torch
import torch.nn as nn


def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 4))


def loaders():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (96,), generator=g)
    x = torch.rand(96, 1, 8, 8, generator=g)
    x[torch.arange(96), 0, 0, y] += 2
    ds = torch.utils.data.TensorDataset(x, y)
    return torch.utils.data.DataLoader(ds, batch_size=32), torch.utils.data.DataLoader(ds, batch_size=64)


def calib():
    g = torch.Generator().manual_seed(1)
    return [torch.rand(16, 1, 8, 8, generator=g) for _ in range(4)]


def wrong():
    return [torch.rand(16, 3, 5, 5)]
'''


@pytest.fixture
def cli(tmp_path, monkeypatch, capsys):
    """``nnshrink`` in this process, in a folder holding the user's factories and weights."""
    from nnshrink.cli import main

    (tmp_path / "mynets_ptq.py").write_text(textwrap.dedent(FACTORY))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    import mynets_ptq

    save_file(mynets_ptq.build().state_dict(), str(tmp_path / "w.safetensors"))

    def call(*args):
        capsys.readouterr()
        rc = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return rc, out, err
    call.build = mynets_ptq.build
    return call


OWN = ("compress", "w.safetensors", "--model-factory", "mynets_ptq:build")


def test_cli_own_model_post_training(cli, tmp_path):
    rc, out, err = cli(*OWN, "--data-factory", "mynets_ptq:loaders", "--target-bpw", 4, "--outliers", 0.01,
                       "-o", "a.nsk", "--json", "a.json", "--quiet")
    assert rc == 0, err
    rep = json.loads((tmp_path / "a.json").read_text())
    assert rep["compressed_bytes"] == (tmp_path / "a.nsk").stat().st_size and rep["bits_per_weight"] <= 4
    assert rep["post_training"]["calibrated"] and rep["calibration"] == "training batches of the data"
    assert rep["top1_before"] is not None and rep["top1_after"] is not None and not rep["warnings"]
    assert rep["recipe"]["outliers"] == 0.01 and "bits per weight" in out
    model = nnshrink.load(tmp_path / "a.nsk", model=cli.build())
    assert not torch.equal(model[1].weight, cli.build()[1].weight)
    rc, out, err = cli(*OWN, "--calibration-factory", "mynets_ptq:calib", "--bits", 3, "--sparsity", 0.5,
                       "-o", "b.nsk", "--json", "-", "--quiet")
    assert rc == 0, err
    rep = json.loads(out)
    assert rep["calibration"] == "mynets_ptq:calib" and rep["top1_after"] is None
    assert [r["sparsity"] for r in rep["layers"] if "bits" in r] == [pytest.approx(0.5, abs=0.01)] * 2
    rc, out, err = cli(*OWN, "--calibration-factory", "mynets_ptq:calib", "--recalibrate-bn", "-o", "d.nsk",
                       "--json", "-", "--quiet")
    assert rc == 0, err
    assert json.loads(out)["post_training"]["bn_recalibrated"] == 0  # the flag arrives; this model has no BatchNorm
    rc, out, err = cli(*OWN, "--calibration-factory", "mynets_ptq:calib", "--tune-steps", 7, "-o", "e.nsk",
                       "--json", "-", "--quiet")
    assert rc == 0, err
    assert json.loads(out)["post_training"]["tuned"]["steps"] == 7 and json.loads(out)["recipe"]["tune_steps"] == 7
    rc, out, err = cli(*OWN, "--calibration-factory", "mynets_ptq:calib", "--sparsity", 0.5, "--sparsity-by-layer",
                       "-o", "f.nsk", "--json", "-", "--quiet")
    assert rc == 0, err
    assert json.loads(out)["post_training"]["sparsity_by_layer"] is True
    rc, out, err = cli(*OWN, "--calibration-factory", "mynets_ptq:calib", "--sparsity", 0.5, "--sequential",
                       "--sparsity-over", "all", "-o", "g.nsk", "--json", "-", "--quiet")
    assert rc == 0, err
    assert json.loads(out)["post_training"]["sequential"] is True and json.loads(out)["recipe"]["sequential"] is True
    assert json.loads(out)["post_training"]["sparsity_over"] == "all"
    rc, out, err = cli(*OWN, "--calibration-factory", "mynets_ptq:calib", "--sparsity", 0.5, "--prune-rounds", 3,
                       "-o", "r.nsk", "--json", "-", "--quiet")
    assert rc == 0, err
    assert json.loads(out)["post_training"]["prune_rounds"] == 3
    rc, out, err = cli(*OWN, "--calibration-factory", "mynets_ptq:calib", "--sparsity", 0.5, "--prune-rounds", 0,
                       "-o", "r0.nsk", "--quiet")
    assert rc != 0 and "pruning rounds must be an integer >= 1; got 0" in err and "Traceback" not in err
    rc, out, err = cli(*OWN, "--calibration-factory", "mynets_ptq:calib", "--target-bpw", 6, "--probe",
                       "-o", "h.nsk", "--json", "-", "--quiet")
    assert rc == 0, err
    rep = json.loads(out)
    assert rep["post_training"]["probed"] is True and rep["recipe"]["probe"] is True
    assert all(r["probe_factor"] is not None for r in rep["layers"] if "bits" in r)
    rc, out, err = cli(*OWN, "--recipe", "post-training", "-o", "c.nsk", "--json", "-", "--quiet")
    assert rc == 0, err
    assert "no --calibration-factory or --data-factory: data-free fallback" in err
    assert not json.loads(out)["post_training"]["calibrated"]


@pytest.mark.parametrize("args, words", [
    (("--calibration-factory", "mynets_ptq:wrong"), "calibration batch (16, 3, 5, 5) does not fit the model: mat1 and "
                                                    "mat2 shapes cannot be multiplied (16x75 and 64x256)"),
    (("--calibration-factory", "mynets_ptq:calib", "--target-bpw", 0.5),
     "--target-bpw 0.5 cannot be met: the smallest reachable is about"),
    (("--calibration-factory", "mynets_ptq:calib", "--bits", 3, "--max-error", 0.1), "give one of --bits"),
    (("--max-error", 0.1), "--max-error needs calibration data"),
    (("--recalibrate-bn",), "--recalibrate-bn needs calibration data"),
    (("--tune-steps", 5), "--tune-steps needs calibration data"),
    (("--sparsity-by-layer", "--sparsity", 0.5), "--sparsity-by-layer needs calibration data"),
    (("--calibration-factory", "mynets_ptq:calib", "--sparsity-by-layer"), "sparsity_by_layer needs sparsity > 0"),
    (("--target-bpw", 6, "--probe"), "--probe needs calibration data"),
    (("--calibration-factory", "mynets_ptq:calib", "--bits", 4, "--probe"), "probe rescales the error estimates of a "
                                                                            "per-layer choice"),
    (("--calibration-factory", "mynets_ptq:calib", "--tune-steps", -1), "--tune-steps must be an integer >= 0 (0: no tuning); got -1"),
    (("--sequential",), "--sequential needs calibration data"),
    (("--calibration-factory", "mynets_ptq:calib", "--sequential", "--target-bpw", 4), "sequential needs bits"),
    (("--recipe", "prune", "--target-bpw", 3), "given with --recipe prune"),
    (("--outliers", 0.01, "--epochs-scale", 2), "--epochs-scale given, but post-training"),
    (("--calibration-factory", "nomod:fn"), "cannot import 'nomod'"),
])
def test_cli_bad_input_is_one_line_and_writes_nothing(cli, tmp_path, args, words):
    rc, _, err = cli(*OWN, *args, "-o", "x.nsk", "--quiet")
    assert rc == 2 and words in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x.nsk").exists()


def test_cli_force_writes_an_unreachable_budget_with_a_warning(cli, tmp_path):
    rc, out, err = cli(*OWN, "--calibration-factory", "mynets_ptq:calib", "--target-bpw", 0.5, "--force",
                       "-o", "x.nsk", "--json", "-", "--quiet")
    assert rc == 0, err
    assert "warning: target 0.5 bits per weight cannot be met; wrote the smallest reachable" in err
    assert json.loads(out)["compressed_bytes"] == (tmp_path / "x.nsk").stat().st_size


@pytest.mark.parametrize("args, words", [
    (("compress", "w.safetensors", "--no-retrain", "--target-bpw", 3, "-o", "x.nsk"),
     "--target-bpw given without --model-factory"),
    (("compress", "w.safetensors", "--no-retrain", "--recipe", "post-training", "-o", "x.nsk"),
     "--recipe post-training given without --model-factory"),
    (("compress", "w.safetensors", "--calibration-factory", "mynets_ptq:calib", "-o", "x.nsk"),
     "--calibration-factory needs --model-factory"),
    (("compress", "w.safetensors", "--model-factory", "mynets_ptq:build", "--calibration", "t.txt", "-o", "x.nsk"),
     "--calibration FILE given without --hf-model"),
])
def test_cli_post_training_flags_need_a_model(cli, args, words):
    rc, _, err = cli(*args)
    assert rc == 2 and words in err and len(err.strip().splitlines()) == 1, err


def test_cli_post_training_of_an_nnshrink_checkpoint(tmp_path, tiny_idx_dir, monkeypatch, capsys):
    from nnshrink.checkpoint import save_checkpoint
    from nnshrink.cli import main
    from nnshrink.models import build_model, resolve_config

    torch.manual_seed(0)
    save_checkpoint(build_model("lenet300"), tmp_path / "base.safetensors", "lenet300", resolve_config("lenet300"))
    monkeypatch.chdir(tmp_path)
    data = ("--dataset", "idx", "--data-dir", str(tiny_idx_dir))
    assert main(["compress", "base.safetensors", "--recipe", "post-training", *data, "--bits", "3", "-o", "z.nsk",
                 "--json", "-", "--quiet"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["model"] == "lenet300" and rep["post_training"]["calibrated"] and rep["top1_after"] is not None
    assert rep["compressed_bytes"] == (tmp_path / "z.nsk").stat().st_size
    model = nnshrink.load(tmp_path / "z.nsk")  # the zoo model, rebuilt from the archive's metadata
    assert type(model).__name__ == type(build_model("lenet300")).__name__
    assert main(["eval", "z.nsk", *data, "--runtime", "dense", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["top1"] == pytest.approx(rep["top1_after"])
    assert main(["compress", "base.safetensors", "--recipe", "post-training", "--max-error", "0.1", "-o", "y.nsk",
                 "--quiet"]) == 2
    assert "--max-error needs calibration data: give --dataset" in capsys.readouterr().err
