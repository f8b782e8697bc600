"""Shared fixtures: tiny datasets that tests make themselves (no real data needed)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from nnshrink.data import Dataset


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> Path:
    """Write ``array`` (uint8) as an IDX file, optionally gzip-compressed."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    raw = header + array.tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def make_images(n: int, seed: int = 0, num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Learnable 28x28 uint8 images: class c is a bright 6x6 square at a class-specific place."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, n).astype(np.uint8)
    images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
    for i, c in enumerate(labels):
        r, col = 2 + 8 * (c // 3), 2 + 8 * (c % 3)
        images[i, r : r + 6, col : col + 6] = 230
    return images, labels


@pytest.fixture
def tiny_idx_dir(tmp_path) -> Path:
    """A folder with the four (gzipped) IDX files of a small learnable dataset."""
    folder = tmp_path / "tinyset"
    folder.mkdir()
    tr_x, tr_y = make_images(600, seed=1)
    te_x, te_y = make_images(200, seed=2)
    write_idx(folder / "train-images-idx3-ubyte.gz", tr_x, gz=True)
    write_idx(folder / "train-labels-idx1-ubyte.gz", tr_y, gz=True)
    write_idx(folder / "t10k-images-idx3-ubyte.gz", te_x, gz=True)
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", te_y, gz=True)
    return folder


@pytest.fixture
def tiny_dataset() -> Dataset:
    tr_x, tr_y = make_images(600, seed=1)
    te_x, te_y = make_images(200, seed=2)

    def t(x):
        return torch.from_numpy(x[:, None].astype(np.float32) / 255)

    return Dataset("tiny", t(tr_x), torch.from_numpy(tr_y.astype(np.int64)), t(te_x),
                   torch.from_numpy(te_y.astype(np.int64)))
