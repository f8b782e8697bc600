import gzip

import numpy as np
import pytest
import torch

from conftest import write_idx
from nnshrink.data import iterate_batches, load_dataset, read_idx
from nnshrink.errors import ConfigError, DataError


def test_read_idx_roundtrip_raw_and_gz(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    for gz in (False, True):
        p = write_idx(tmp_path / f"a{'.gz' if gz else ''}", arr, gz=gz)
        np.testing.assert_array_equal(read_idx(p), arr)


def test_read_idx_rejects_truncated(tmp_path):
    p = write_idx(tmp_path / "a", np.zeros((5, 4, 4), np.uint8))
    p.write_bytes(p.read_bytes()[:-3])
    with pytest.raises(DataError, match="truncated"):
        read_idx(p)


def test_read_idx_rejects_trailing_bytes(tmp_path):
    p = write_idx(tmp_path / "a", np.zeros((5,), np.uint8))
    p.write_bytes(p.read_bytes() + b"xx")
    with pytest.raises(DataError, match="trailing"):
        read_idx(p)


@pytest.mark.parametrize("header", [b"\x01\x00\x08\x01", b"\x00\x00\x42\x01", b"\x00\x00\x08\x09", b"\x00\x00"])
def test_read_idx_rejects_bad_header(tmp_path, header):
    p = tmp_path / "bad"
    p.write_bytes(header + b"\x00\x00\x00\x01\x07")
    with pytest.raises(DataError):
        read_idx(p)


def test_read_idx_rejects_corrupt_gzip(tmp_path):
    p = tmp_path / "bad.gz"
    p.write_bytes(gzip.compress(b"\x00" * 100)[:20])
    with pytest.raises(DataError):
        read_idx(p)


def test_read_idx_huge_dimensions_do_not_allocate(tmp_path):
    p = tmp_path / "huge"
    p.write_bytes(b"\x00\x00\x08\x03" + b"\xff\xff\xff\xff" * 3)
    with pytest.raises(DataError, match="implausibly large"):
        read_idx(p)


def test_load_dataset_from_dir(tiny_idx_dir):
    ds = load_dataset("idx", tiny_idx_dir)
    assert ds.train_x.shape == (600, 1, 28, 28) and ds.test_x.shape == (200, 1, 28, 28)
    assert ds.train_x.dtype == torch.float32 and 0 <= float(ds.train_x.min()) and float(ds.train_x.max()) <= 1
    assert ds.train_y.dtype == torch.int64 and ds.num_classes == 10


def test_load_dataset_env_var(tiny_idx_dir, monkeypatch):
    monkeypatch.setenv("NNSHRINK_DATA", str(tiny_idx_dir))
    assert len(load_dataset("mnist").train_y) == 600


def test_unknown_dataset_lists_names():
    with pytest.raises(ConfigError, match="fashion-mnist"):
        load_dataset("cifar-100")


def test_missing_dataset_says_where_and_how(tmp_path, monkeypatch):
    monkeypatch.delenv("NNSHRINK_DATA", raising=False)
    with pytest.raises(DataError) as err:
        load_dataset("mnist", tmp_path / "nothing")
    assert "nothing" in str(err.value) and "--data-dir" in str(err.value)


def test_label_image_count_mismatch(tiny_idx_dir):
    write_idx(tiny_idx_dir / "t10k-labels-idx1-ubyte.gz", np.zeros(7, np.uint8), gz=True)
    with pytest.raises(DataError, match="200 images but 7 labels"):
        load_dataset("idx", tiny_idx_dir)


def test_batches_deterministic_and_sharded():
    x, y = torch.arange(100).float()[:, None], torch.arange(100)
    a = [b[1].tolist() for b in iterate_batches(x, y, 16, shuffle=True, seed=3, epoch=1)]
    b = [b[1].tolist() for b in iterate_batches(x, y, 16, shuffle=True, seed=3, epoch=1)]
    c = [b[1].tolist() for b in iterate_batches(x, y, 16, shuffle=True, seed=3, epoch=2)]
    assert a == b and a != c
    flat = sorted(v for batch in a for v in batch)
    assert flat == list(range(100))
    r0 = [v for _, yb in iterate_batches(x, y, 8, shuffle=True, seed=1, rank=0, world_size=2) for v in yb.tolist()]
    r1 = [v for _, yb in iterate_batches(x, y, 8, shuffle=True, seed=1, rank=1, world_size=2) for v in yb.tolist()]
    assert len(r0) == len(r1) == 50 and not set(r0) & set(r1)


def test_bad_batch_size():
    with pytest.raises(ConfigError, match="batch size"):
        next(iterate_batches(torch.zeros(3), torch.zeros(3), 0))
