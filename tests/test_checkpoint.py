import json

import pytest
import torch
from safetensors.torch import save_file

from nnshrink.checkpoint import load_checkpoint, load_tensors, save_checkpoint
from nnshrink.errors import CheckpointError
from nnshrink.models import build_model


def test_roundtrip_rebuilds_model(tmp_path):
    m = build_model("lenet5")
    p = save_checkpoint(m, tmp_path / "m.safetensors", "lenet5", {"num_classes": 10, "conv_relu": True,
                                                                  "dropout": 0.0}, info={"top1": 0.5})
    m2, meta = load_checkpoint(p)
    assert meta["model"] == "lenet5" and meta["info"]["top1"] == 0.5
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(m.eval()(x), m2.eval()(x))
    assert not list(tmp_path.glob(".*tmp"))


def test_unknown_model_in_metadata(tmp_path):
    p = tmp_path / "x.safetensors"
    save_file({"w": torch.zeros(2)}, str(p), metadata={"nnshrink.model": "alexnet-9", "nnshrink.config": "{}"})
    with pytest.raises(CheckpointError, match="alexnet-9"):
        load_checkpoint(p)


def test_tensors_that_do_not_fit(tmp_path):
    state = build_model("lenet300").state_dict()
    state["ip1.weight"] = torch.zeros(300, 100)
    p = tmp_path / "x.safetensors"
    save_file(state, str(p), metadata={"nnshrink.model": "lenet300", "nnshrink.config": json.dumps({})})
    with pytest.raises(CheckpointError, match="ip1.weight"):
        load_checkpoint(p)


def test_plain_file_and_garbage(tmp_path):
    p = tmp_path / "plain.safetensors"
    save_file({"a": torch.ones(3)}, str(p))
    assert torch.equal(load_tensors(p)["a"], torch.ones(3))
    with pytest.raises(CheckpointError, match="plain tensor file"):
        load_checkpoint(p)
    g = tmp_path / "garbage.safetensors"
    g.write_bytes(b"\xff" * 64)
    with pytest.raises(CheckpointError, match="safetensors"):
        load_checkpoint(g)
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "missing.safetensors")


def test_lazy_tensors_read_what_load_tensors_reads(tmp_path):
    """LazyTensors (post-training's one-tensor-at-a-time reader) agrees with load_tensors:
    same keys in the same order, same values, a fresh tensor per lookup; bad files refused."""
    from nnshrink.checkpoint import LazyTensors

    p = tmp_path / "t.safetensors"
    torch.manual_seed(0)
    save_file({"b": torch.randn(4, 3), "a": torch.arange(5), "c.w": torch.randn(2, 2).half()}, str(p))
    eager, lazy = load_tensors(p), LazyTensors(p)
    assert list(lazy) == list(eager) and len(lazy) == 3 and "a" in lazy and "zz" not in lazy
    for k, v in eager.items():
        assert lazy[k].dtype == v.dtype and torch.equal(lazy[k], v)
    first = lazy["b"]
    first.zero_()
    assert not torch.equal(lazy["b"], first)  # nothing cached: each lookup reads the file
    with pytest.raises(KeyError):
        lazy["zz"]
    g = tmp_path / "garbage.safetensors"
    g.write_bytes(b"\xff" * 64)
    with pytest.raises(CheckpointError, match="safetensors"):
        LazyTensors(g)
