"""`nnshrink compress --hf-model DIR --calibration FILE` on a tiny BERT folder made here (no download)."""

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

WORDS = ["the", "a", "cat", "dog", "sat", "on", "mat", "ran", "to", "park", "big", "small", "red", "blue", "is"]


class Proc:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def run(capsys, monkeypatch):
    """The CLI in this process (transformers imports once): returncode, stdout, stderr."""
    from nnshrink.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")

    def call(*args, ok=True):
        capsys.readouterr()
        rc = main([str(a) for a in args])
        out, err = capsys.readouterr()
        if ok:
            assert rc == 0, err
        return Proc(rc, out, err)
    return call


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-bert")
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    transformers.BertTokenizer(vocab_file=str(vocab)).save_pretrained(folder)
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=len(WORDS) + 5, hidden_size=64, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=128, max_position_embeddings=64)
    transformers.BertModel(config).save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    import random
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("cal") / "texts.txt"
    path.write_text("\n".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))) for _ in range(40)))
    return path


def test_hf_round_trip_loads_into_the_same_model(run, bert_dir, texts, tmp_path):
    from safetensors import safe_open

    out = tmp_path / "m.nsk"
    report = json.loads(run("compress", "--hf-model", bert_dir, "--calibration", texts, "--bits", 4,
                            "--outliers", 0.01, "-o", out, "--json", "-", "--quiet").stdout)
    assert report["post_training"]["calibrated"] and report["compressed_bytes"] == out.stat().st_size
    assert any(r.get("outliers") for r in report["layers"])
    dense = tmp_path / "copy"
    dense.mkdir()
    for f in bert_dir.iterdir():
        if f.name != "model.safetensors":
            (dense / f.name).write_bytes(f.read_bytes())
    run("decompress", out, "-o", dense / "model.safetensors")
    with safe_open(str(bert_dir / "model.safetensors"), "pt") as a, safe_open(str(dense / "model.safetensors"), "pt") as b:
        assert set(a.keys()) == set(b.keys())
        for k in a.keys():
            assert a.get_tensor(k).shape == b.get_tensor(k).shape
    model = transformers.BertModel.from_pretrained(dense, local_files_only=True)
    ref = transformers.BertModel.from_pretrained(bert_dir, local_files_only=True)
    ids = torch.tensor([[2, 5, 7, 8, 3]])
    with torch.no_grad():
        cos = torch.nn.functional.cosine_similarity(model(ids).last_hidden_state.mean(1),
                                                    ref(ids).last_hidden_state.mean(1))
    assert float(cos) > 0.9


def test_hf_sequential_restores_the_post_norm_sums(run, bert_dir, texts, tmp_path):
    from nnshrink.ptq import hf

    model, _ = hf.load_model(bert_dir)
    sums = hf.post_norm_sums(model)
    assert sums == {f"encoder.layer.{i}.{part}.dense": f"encoder.layer.{i}.{part}.LayerNorm"
                    for i in range(2) for part in ("attention.output", "output")}
    proc = run("compress", "--hf-model", bert_dir, "--calibration", texts, "--bits", 8, "--sparsity", 0.5,
               "--sparsity-over", "all", "--sequential", "--prune-rounds", 2, "-o", tmp_path / "s.nsk", "--json", "-",
               "--quiet")
    report = json.loads(proc.stdout)["post_training"]
    assert report["sequential"] and report["skip_sums_restored"] == 4 and report["sparsity_over"] == "all"
    assert report["prune_rounds"] == 2


def test_hf_without_calibration_is_labelled_data_free(run, bert_dir, tmp_path):
    proc = run("compress", "--hf-model", bert_dir, "--target-bpw", 4, "-o", tmp_path / "m.nsk", "--json", "-")
    report = json.loads(proc.stdout)
    assert not report["post_training"]["calibrated"] and "data-free" in proc.stderr
    assert report["bits_per_weight"] <= 4.0


@pytest.mark.parametrize("args, words", [
    (["--calibration", "FILE"], "without --hf-model"),
    (["--hf-model", "NOWEIGHTS"], "has no model.safetensors"),
    (["--hf-model", "BINONLY"], "found pytorch_model.bin; only a single safetensors file is read"),
    (["--hf-model", "BERT", "--target-bpw", "0.3"], "cannot be met"),
    (["--hf-model", "BERT", "--bits", "3", "--target-bpw", "3"], "one of --bits"),
    (["--hf-model", "BERT", "--max-error", "0.01"], "needs calibration"),
    (["--hf-model", "BERT", "--calibration", "EMPTY"], "holds no text"),
    (["--hf-model", "BERT", "--outliers", "0.7"], "outlier fraction"),
    (["--hf-model", "BERT", "--data-factory", "x:y"], "--data-factory given with --hf-model"),
    (["--hf-model", "BERT", "--sequential", "--sparsity", "0.5"], "--sequential needs --calibration"),
    (["--hf-model", "BERT", "--calibration", "FILE", "--sequential", "--target-bpw", "4"], "not a budget"),
])
def test_hf_bad_input_is_one_line(run, bert_dir, texts, tmp_path, args, words):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    (tmp_path / "noweights").mkdir()
    (tmp_path / "binonly").mkdir()
    (tmp_path / "binonly" / "pytorch_model.bin").write_bytes(b"not read")
    subst = {"FILE": texts, "NOWEIGHTS": tmp_path / "noweights", "BINONLY": tmp_path / "binonly", "BERT": bert_dir,
             "EMPTY": empty}
    proc = run("compress", *[subst.get(a, a) for a in args], "-o", tmp_path / "x.nsk", ok=False)
    assert proc.returncode == 2 and words in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "x.nsk").exists()
