import pytest
import torch

from nnshrink.errors import ConfigError
from nnshrink.models import build_model
from nnshrink.train import TrainConfig, evaluate, fit, regularization, resolve_device


def test_training_beats_chance_clearly(tiny_dataset):
    model = build_model("lenet300")
    before = evaluate(model, tiny_dataset)
    result = fit(model, tiny_dataset, TrainConfig(epochs=4, lr=0.05, batch_size=32), progress=False)
    after = evaluate(model, tiny_dataset)
    assert after > 0.8 > before + 0.3
    assert result.epochs[-1]["test_top1"] == pytest.approx(after)
    assert len(result.epochs) == 4 and result.steps == 4 * 19


def test_seeded_training_is_deterministic(tiny_dataset):
    def run():
        torch.manual_seed(0)
        m = build_model("lenet300")
        fit(m, tiny_dataset, TrainConfig(epochs=1, batch_size=64, seed=5), progress=False, eval_each_epoch=False)
        return m.ip1.weight.detach().clone()

    assert torch.equal(run(), run())


def test_after_step_hook_and_param_filter(tiny_dataset):
    model = build_model("lenet300")
    calls = []
    frozen = model.ip1.weight.detach().clone()
    fit(model, tiny_dataset, TrainConfig(max_steps=3, batch_size=32), progress=False, eval_each_epoch=False,
        param_filter=lambda n, p: not n.startswith("ip1."), after_step=[lambda m: calls.append(1)])
    assert len(calls) == 3
    assert torch.equal(model.ip1.weight, frozen)


def test_regularization_penalises_weights_not_biases():
    m = torch.nn.Linear(3, 2)
    with torch.no_grad():
        m.weight.fill_(2.0)
        m.bias.fill_(100.0)
    assert float(regularization(m, l1=1.0, l2=0.0).detach()) == pytest.approx(12.0)
    assert float(regularization(m, l1=0.0, l2=0.5).detach()) == pytest.approx(12.0)
    assert regularization(m, 0, 0) is None


@pytest.mark.parametrize("kw, word", [(dict(epochs=0), "epochs"), (dict(lr=-1), "learning rate"),
                                      (dict(schedule="warp"), "schedule"), (dict(l2=-0.1), "l2"),
                                      (dict(optimizer="lion"), "optimizer"), (dict(momentum=1.5), "momentum")])
def test_bad_config_is_named(kw, word):
    with pytest.raises(ConfigError, match=word):
        TrainConfig(**kw)


def test_cuda_absent_is_clear_error():
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(ConfigError, match="no CUDA"):
        resolve_device("cuda")
    with pytest.raises(ConfigError, match="unknown device"):
        resolve_device("gpu7")


def test_evaluate_moves_the_model_to_the_device(tiny_dataset):
    """A checkpoint loads on CPU; ``evaluate(..., device=D)`` (the first thing a compress
    run does) must run it on D, as ``fit`` does, not feed D's inputs to a CPU model."""
    import torch.nn as nn

    from nnshrink.train import evaluate

    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    moved = []
    real_to = model.to
    model.to = lambda *a, **k: moved.append(a or tuple(k.values())) or real_to(*a, **k)
    evaluate(model, tiny_dataset, device="cpu")
    assert moved and str(moved[0][0]) == "cpu"
