"""Nothing a file claims makes nnshrink allocate far beyond the file's own bytes and the
user's limits (issue 13, items 8-11 and 20). The hostile files are built here, from
nnshrink.format.fuzz's bomb family, not committed as binaries."""

import gzip
import json
import tracemalloc

import numpy as np
import pytest

from nnshrink.compressed import DenseTensor, SharedTensor
from nnshrink.errors import CheckpointError, ConfigError, DataError
from nnshrink.format import (FormatError, LimitError, RecordError, open_archive, parse_archive, read_archive,
                             serialize)
from nnshrink.format.fuzz import _raw_claim, assemble, filler_bomb, run_bombs


def _main(capsys, *args):
    from nnshrink.cli import main

    capsys.readouterr()
    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _small_archive(tmp_path, meta=None):
    path = tmp_path / "a.nsk"
    path.write_bytes(serialize({"w": DenseTensor(np.arange(12, dtype=np.float32).reshape(3, 4))},
                               meta or {"model": None}))
    return path


# ---------------------------------------------------------------- 8: decoded-size limits
def test_filler_bomb_is_refused_before_decoding():
    bomb = filler_bomb(50_000)  # 50 KB claiming 102 million elements (408 MB as float32)
    with pytest.raises(LimitError, match="density cap"):
        parse_archive(bomb, "bomb")


def test_max_elements_budget_is_checked_before_decoding(tmp_path, capsys):
    path = _small_archive(tmp_path)
    assert read_archive(path).tensors["w"].shape == (3, 4)
    with pytest.raises(LimitError, match="12 elements, over the limit of 11.*--max-elements"):
        read_archive(path, max_elements=11)
    with pytest.raises(ConfigError, match="max_elements"):
        read_archive(path, max_elements=-1)
    with open_archive(path, max_elements=11) as a:  # the header still opens; get() refuses
        assert a.shapes() == {"w": (3, 4)}
        with pytest.raises(LimitError):
            a.get("w")
    rc, _, err = _main(capsys, "decompress", path, "-o", tmp_path / "d.safetensors", "--max-elements", "11")
    assert rc == 2 and "--max-elements" in err and len(err.strip().splitlines()) == 1
    assert _main(capsys, "decompress", path, "-o", tmp_path / "d.safetensors", "--max-elements", "12")[0] == 0


def test_writer_refuses_archives_over_the_density_cap():
    empty = SharedTensor((4096, 1024), np.zeros(1, np.float32), np.zeros(0, np.int64), 1,
                         np.zeros((4096, 1024), bool))
    with pytest.raises(ConfigError, match="density cap"):
        serialize({"w": empty}, {})


def test_inspect_reads_only_the_header(tmp_path, capsys, monkeypatch):
    import nnshrink.format.reader as reader

    path = tmp_path / "p.nsk"
    mask = np.random.default_rng(0).random((64, 64)) < 0.1
    path.write_bytes(serialize({"w": SharedTensor((64, 64), np.ones(4, np.float32),
                                                  np.zeros(int(mask.sum()), np.int64), 2, mask),
                                "b": DenseTensor(np.array([0, 1, 2], np.float32))}, {"model": None}))

    def no_decoding(*a, **k):
        raise AssertionError("inspect decoded a record")

    monkeypatch.setattr(reader, "_decode", no_decoding)
    rc, out, _ = _main(capsys, "inspect", path, "--json")
    rep = json.loads(out)
    assert rc == 0 and [l["nonzero"] for l in rep["layers"]] == [int(mask.sum()), 2]


# ---------------------------------------------------------------- 9: configs read from files
def test_archive_config_is_checked_before_the_model_is_built(tmp_path, monkeypatch):
    import nnshrink.checkpoint as checkpoint
    from nnshrink.runtime.decode import load_archive_model

    path = _small_archive(tmp_path, {"model": "mobilenet_v1", "config": {"width": 40}})  # 1.86 GB if built
    monkeypatch.setattr(checkpoint, "build_model", lambda *a, **k: pytest.fail("built the model for real"))
    with pytest.raises(CheckpointError, match="do not fit model 'mobilenet_v1'"):
        load_archive_model(path)


def test_checkpoint_config_is_checked_before_the_model_is_built(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    import nnshrink.checkpoint as checkpoint
    from nnshrink.models import build_model

    state = {k: v.contiguous() for k, v in build_model("lenet300").state_dict().items()}
    path = tmp_path / "c.safetensors"
    save_file(state, str(path), metadata={checkpoint.META_MODEL: "lenet300",
                                           checkpoint.META_CONFIG: json.dumps({"num_classes": 250000})})
    monkeypatch.setattr(checkpoint, "build_model", lambda *a, **k: pytest.fail("built the model for real"))
    with pytest.raises(CheckpointError, match="shape mismatch.*250000"):
        checkpoint.load_checkpoint(path)


# ---------------------------------------------------------------- 10: IDX gzip bombs
def _idx_gz(path, dims, body: bytes):
    head = b"\x00\x00\x08" + bytes([len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)
    path.write_bytes(gzip.compress(head + body, compresslevel=9))
    return path


def test_idx_gzip_claim_beyond_deflate_is_refused(tmp_path):
    from nnshrink.data import read_idx

    p = _idx_gz(tmp_path / "claim.gz", (1000, 1000, 1000), bytes(1 << 20))
    with pytest.raises(DataError, match="implausibly large"):
        read_idx(p)


def test_idx_gzip_body_is_inflated_only_up_to_the_declared_size(tmp_path):
    from nnshrink.data import read_idx

    p = _idx_gz(tmp_path / "bomb.gz", (10, 10), bytes(64 << 20))  # 64 MB of zeros after 100 declared bytes
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match="trailing bytes"):
            read_idx(p)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, f"read_idx allocated {peak} bytes for a 100-byte body"


# ---------------------------------------------------------------- 11: absurd shapes
@pytest.mark.parametrize("shape", [[2**31, 2**31, 0], [0] + [2**31] * 7])
def test_absurd_zero_size_shapes_are_typed_errors(shape):
    with pytest.raises(RecordError, match="spans"):
        parse_archive(assemble([_raw_claim(shape)], {"model": None, "config": {}}), "absurd")


# ---------------------------------------------------------------- 20: names from files
def test_names_are_escaped_and_cut(tmp_path, capsys):
    evil = "\x1b[2J\x07evil\u202e" + "A" * 1000
    path = tmp_path / "e.nsk"
    path.write_bytes(serialize({evil: DenseTensor(np.ones(3, np.float32))}, {"model": "m\x1b]0;x\x07"}))
    rc, out, _ = _main(capsys, "inspect", path)
    assert rc == 0 and "\\x1b[2J\\x07evil\\u202e" in out
    assert not any(c in out for c in "\x1b\x07\u202e")
    bad = bytearray(path.read_bytes())
    bad[-6] ^= 1  # payload damage (the last 4 bytes are padding): the checksum error names the record
    path.write_bytes(bytes(bad))
    with pytest.raises(FormatError) as info:
        read_archive(path)
    msg = str(info.value)
    assert "\\x1b[2J" in msg and len(msg) < 300 and "\x1b" not in msg


# ---------------------------------------------------------------- the bomb family, as the fuzz benchmark runs it
def test_bomb_family_is_refused_or_bounded():
    res = run_bombs(max_case_s=10.0)
    assert res["failures"] == []
    outcomes = {b["case"]: b["outcome"] for b in res["bombs"]}
    assert outcomes["filler bomb, 1048576 stream bytes"] == "LimitError"
    assert outcomes["filler bomb at the density cap"] == "decoded"
    assert outcomes["two records under the cap alone, over it together"] == "LimitError"
