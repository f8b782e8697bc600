"""The public API on the user's own models: a residual CNN with BatchNorm and a small
transformer, compressed with the user's own fine_tune / evaluate, saved, loaded back."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

import nnshrink
from nnshrink.compressed import SharedTensor, SparseTensor
from nnshrink.errors import CheckpointError, ConfigError, StageError
from nnshrink.recipes import recipe_from_dict

ROOT = Path(__file__).resolve().parents[1]


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        return F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class TinyResNet(nn.Module):
    def __init__(self, width=16, classes=4):
        super().__init__()
        self.stem, self.bn = nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)
        self.blocks = nn.Sequential(Block(width), Block(width))
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        x = self.blocks(F.relu(self.bn(self.stem(x))))
        return self.head(x.mean((2, 3)))


class TinyTransformer(nn.Module):
    def __init__(self, dim=32, classes=4, vocab=20):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        layer = nn.TransformerEncoderLayer(dim, 4, 64, dropout=0.0, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, classes)

    def forward(self, x):
        return self.head(self.norm(self.enc(self.embed(x))).mean(1))


def images(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    x = torch.rand(n, 1, 8, 8, generator=g) * 0.3
    for i, c in enumerate(y):  # a bright quadrant per class: learnable in a few steps
        x[i, 0, 4 * (c // 2):4 * (c // 2) + 4, 4 * (c % 2):4 * (c % 2) + 4] += 1
    return x, y


def tokens(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    x = torch.randint(4, 20, (n, 6), generator=g)
    x[:, 0] = y  # the class is the first token
    return x, y


def loop(data, calls=None, lr=1e-2):
    """The user's own training loop (Adam, weight decay, clipping) and metric."""
    x, y = data

    def fine_tune(model, epochs):
        assert isinstance(epochs, int) and epochs >= 1
        torch.manual_seed(len(calls) if calls is not None else 0)
        if calls is not None:
            calls.append(epochs)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=1e-2)
        model.train()
        for _ in range(epochs):
            for i in range(0, len(x), 16):
                loss = F.cross_entropy(model(x[i:i + 16]), y[i:i + 16])
                opt.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()

    @torch.no_grad()
    def evaluate(model):
        model.eval()
        return float((model(x).argmax(1) == y).float().mean())

    return fine_tune, evaluate


def trained(model, data):
    torch.manual_seed(0)
    loop(data)[0](model, 3)
    return model.eval()


def same_outputs(a, b, x):
    a.eval(), b.eval()
    with torch.no_grad():
        return torch.equal(a(x), b(x))


def test_resnet_with_batchnorm_round_trip(tmp_path):
    data = images()
    torch.manual_seed(0)
    model = trained(TinyResNet(), data)
    calls = []
    ft, ev = loop(data, calls)
    res = nnshrink.compress(model, fine_tune=ft, evaluate=ev, progress=False)
    rep = res.report
    assert calls == [2, 2, 2, 1]  # three prune rounds, then centroid fine-tuning
    assert rep["defaults"].startswith("generic") and not rep["warnings"]
    assert [r["rung"] for r in rep["ladder"]] == ["dense", "pruned", "pruned+shared", "+Huffman"]
    assert {"original_bytes", "compressed_bytes", "ratio", "top1_before", "top1_after", "stages"} <= set(rep)
    assert rep["top1_before"] is not None and rep["top1_after"] is not None
    assert {r["name"] for r in rep["layers"]} == set(model.state_dict())
    for row in rep["layers"]:
        assert {"name", "shape", "params", "nonzero", "weight_bits", "index_bits", "bytes"} <= set(row)
    path = tmp_path / "r.nsk"
    assert res.save(path) == path.stat().st_size == rep["compressed_bytes"]
    conv = res.tensors["blocks.0.conv1.weight"]
    assert isinstance(conv, SharedTensor) and conv.mask is not None and 0.25 < conv.mask.mean() < 0.35
    assert list(res.model.state_dict()) == list(TinyResNet().state_dict())  # the user's own keys
    fresh = nnshrink.load(path, model=TinyResNet())
    assert same_outputs(fresh, res.model, data[0])
    assert ev(fresh) == pytest.approx(rep["top1_after"])
    json.dumps(rep)


def test_transformer_attention_pruned_and_shared(tmp_path):
    data = tokens()
    torch.manual_seed(0)
    model = trained(TinyTransformer(), data)
    ft, ev = loop(data, lr=3e-3)
    res = nnshrink.compress(model, fine_tune=ft, evaluate=ev, progress=False)
    for name in ("enc.layers.0.self_attn.in_proj_weight", "enc.layers.1.self_attn.out_proj.weight",
                 "embed.weight", "enc.layers.0.linear1.weight"):
        t = res.tensors[name]
        assert isinstance(t, SharedTensor) and t.mask is not None, name
    assert not isinstance(res.tensors["enc.layers.0.norm1.weight"], (SharedTensor, SparseTensor))
    path = tmp_path / "t.nsk"
    res.save(path)
    fresh = nnshrink.load(path, model=TinyTransformer())
    assert same_outputs(fresh, res.model, data[0])
    assert res.report["ratio"] > 4


def test_without_fine_tune_the_report_says_retraining_was_skipped():
    model = TinyResNet()
    res = nnshrink.compress(model, "prune", progress=False)
    assert any("retraining skipped" in w for w in res.report["warnings"])
    assert res.report["top1_after"] is None and res.report["ratio"] > 2


def test_fine_tune_that_raises_names_the_stage_and_work_dir_resumes(tmp_path):
    data = images()
    torch.manual_seed(0)
    base = trained(TinyResNet(), data).state_dict()
    recipe = recipe_from_dict({"stages": ["prune", "share", "encode"],
                               "prune": {"rounds": 2, "retrain_epochs": 1}, "share": {"finetune_epochs": 1}})

    def fresh():
        m = TinyResNet()
        m.load_state_dict(base)
        return m

    ref = nnshrink.compress(fresh(), recipe, fine_tune=loop(data, [])[0], progress=False)
    calls = []
    ft = loop(data, calls)[0]

    def flaky(model, epochs):
        if len(calls) == 2:  # the share stage's fine-tuning
            raise RuntimeError("out of memory")
        ft(model, epochs)

    work = tmp_path / "work"

    def broken(model, epochs):
        raise ValueError("bad batch")

    with pytest.raises(StageError, match="stage 'prune': fine_tune raised ValueError: bad batch"):
        nnshrink.compress(fresh(), recipe, fine_tune=broken, progress=False, work_dir=work)
    assert not work.exists()  # nothing finished: nothing to resume
    with pytest.raises(StageError, match="stage 'share'.*out of memory"):
        nnshrink.compress(fresh(), recipe, fine_tune=flaky, progress=False, work_dir=work)
    assert (work / "1-prune.nsk").is_file() and not (work / "2-share.nsk").exists()
    res = nnshrink.compress(fresh(), recipe, fine_tune=ft, progress=False, work_dir=work)
    assert res.report["stages"][0].get("resumed") is True and calls == [1, 1, 1]
    assert res.blob == ref.blob
    assert not work.exists()


def test_bad_inputs_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="Sequential has no compressible tensor"):
        nnshrink.compress(nn.Sequential(nn.BatchNorm1d(4), nn.ReLU()), progress=False)
    recipe = recipe_from_dict({"stages": ["prune", "encode"], "prune": {"layers": {"nope*": 0.5}}})
    with pytest.raises(ConfigError, match="'nope\\*' matches no compressible tensor"):
        nnshrink.compress(TinyResNet(), recipe, progress=False)
    with pytest.raises(ConfigError, match="fine_tune must be a function; got int"):
        nnshrink.compress(TinyResNet(), fine_tune=3)
    with pytest.raises(ConfigError, match="unknown recipe 'nope'"):
        nnshrink.compress(TinyResNet(), "nope")
    path = tmp_path / "m.nsk"
    nnshrink.compress(TinyResNet(), "prune", progress=False).save(path)
    with pytest.raises(CheckpointError, match=r"'stem.weight' has shape \(16, 1, 3, 3\) there but \(8, 1, 3, 3\)"):
        nnshrink.load(path, model=TinyResNet(width=8))
    with pytest.raises(CheckpointError, match="TinyResNet.*pass model="):
        nnshrink.load(path)
    with pytest.raises(CheckpointError, match="do not fit Sequential: missing '0.weight'.*unexpected 'stem.weight'"):
        nnshrink.load(path, model=nn.Sequential(nn.Linear(2, 2)))


def test_export_and_archive_api_at_the_top():
    from nnshrink.prune import prune_model

    model = TinyResNet()
    prune_model(model, 0.5)
    tensors = nnshrink.export(model)
    assert isinstance(tensors["head.weight"], SparseTensor)
    blob = nnshrink.serialize(tensors, {"model": None})
    assert blob[:3] == b"NSK"
    for name in ("compress", "load", "export", "serialize", "write_archive", "open_archive"):
        assert callable(getattr(nnshrink, name))


FACTORY = '''
import torch
import torch.nn as nn


def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 4))


def loaders():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (96,), generator=g)
    x = torch.rand(96, 1, 8, 8, generator=g)
    x[torch.arange(96), 0, 0, y] += 2
    ds = torch.utils.data.TensorDataset(x, y)
    return torch.utils.data.DataLoader(ds, batch_size=32), torch.utils.data.DataLoader(ds, batch_size=64)
'''


def run_cli(*args, cwd):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "nnshrink", *map(str, args)], capture_output=True, text=True,
                          timeout=600, cwd=cwd, env=env)


def test_cli_model_factory(tmp_path, monkeypatch, capsys):
    (tmp_path / "mynets.py").write_text(textwrap.dedent(FACTORY))
    sys.path.insert(0, str(tmp_path))
    try:
        import mynets
    finally:
        sys.path.remove(str(tmp_path))
    save_file(mynets.build().state_dict(), str(tmp_path / "w.safetensors"))
    rec = tmp_path / "fast.toml"
    rec.write_text('stages = ["prune", "share", "encode"]\n[prune]\nrounds = 1\nretrain_epochs = 1\n'
                   '[share]\nfinetune_epochs = 1\n')
    p = run_cli("compress", "w.safetensors", "-o", "w.nsk", "--model-factory", "mynets:build", "--data-factory",
                "mynets:loaders", "--recipe", rec, "--json", "r.json", "--quiet", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["compressed_bytes"] == (tmp_path / "w.nsk").stat().st_size and rep["top1_after"] is not None
    assert not rep["warnings"]
    model = nnshrink.load(tmp_path / "w.nsk", model=mynets.build())
    assert (model[1].weight == 0).float().mean() > 0.85

    from nnshrink.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["compress", "w.safetensors", "-o", "n.nsk", "--model-factory", "mynets:build", "--json", "-"]) == 0
    assert any("--no-retrain" in w for w in json.loads(capsys.readouterr().out)["warnings"])
    for bad, words in [("nomodule:build", "cannot import 'nomodule'"), ("mynets:nothing", "no function 'nothing'"),
                       ("mynets", "PKG.MOD:FN")]:
        assert main(["compress", "w.safetensors", "-o", "x.nsk", "--model-factory", bad]) == 2
        err = capsys.readouterr().err
        assert words in err and len(err.strip().splitlines()) == 1
    assert main(["compress", "w.safetensors", "-o", "x.nsk", "--data-factory", "mynets:loaders"]) == 2
    assert "needs --model-factory" in capsys.readouterr().err
    save_file({"1.weight": torch.zeros(3, 64), "1.bias": torch.zeros(3)}, str(tmp_path / "other.safetensors"))
    assert main(["compress", "other.safetensors", "-o", "x.nsk", "--model-factory", "mynets:build"]) == 2
    assert "'1.weight' has shape (3, 64) there but (32, 64) in Sequential" in capsys.readouterr().err


def readme_blocks():
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### Python API"):text.index("### Several processes")]  # the DDP block is a fragment
    return [b.split("\n", 1)[1] for b in section.split("```")[1::2] if b.startswith("python")]


def test_readme_python_api_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first, lower = readme_blocks()
    scope = {"__name__": "readme"}
    exec(compile(first, "README.md", "exec"), scope)
    assert (tmp_path / "net.nsk").stat().st_size == scope["written"]
    assert scope["result"].report["ratio"] > 5
    model = scope["Net"]()
    exec(compile(lower, "README.md", "exec"), {"model": model, "nnshrink": nnshrink})


def test_load_with_the_compressed_runtime(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 4))
    res = nnshrink.compress(model, progress=False)
    res.save(tmp_path / "m.nsk")
    fast = nnshrink.load(tmp_path / "m.nsk", model=nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 4)),
                         runtime="compressed")
    assert type(fast[0]).__name__ in ("SparseLinear", "CodebookLinear")
    x = torch.rand(5, 32)
    with torch.no_grad():
        assert torch.allclose(fast(x), res.model.eval()(x), atol=1e-5)
    with pytest.raises(ConfigError, match="runtime must be one of dense, compressed, auto; got 'gpu'"):
        nnshrink.load(tmp_path / "m.nsk", model=model, runtime="gpu")
