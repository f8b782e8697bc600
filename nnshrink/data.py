"""Datasets in MNIST's IDX format, read without any download.

Fashion-MNIST comes from Debian's ``dataset-fashion-mnist`` package; MNIST or any other
IDX set is read from ``--data-dir`` or ``$NNSHRINK_DATA``. Whole sets are small (47 MB as
uint8), so they live in memory as tensors and batches are sliced from a seeded
permutation: deterministic and much faster than a DataLoader on a 2-core machine.
"""

from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from .errors import ConfigError, DataError
from .io_utils import check_input_file

DATASETS = ("fashion-mnist", "mnist", "idx")
DEBIAN_DIRS = {
    "fashion-mnist": [Path("/usr/share/datasets/fashion-mnist")],
    "mnist": [Path("/usr/share/datasets/mnist")],
}
INSTALL_HINT = {
    "fashion-mnist": "install it with `apt-get install dataset-fashion-mnist`, or pass --data-dir FOLDER",
    "mnist": "put the four MNIST IDX files in a folder and pass --data-dir FOLDER (or set NNSHRINK_DATA)",
    "idx": "pass --data-dir FOLDER (or set NNSHRINK_DATA) holding the four IDX files",
}
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# IDX type codes -> numpy dtype (big-endian on disk).
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_MAX_IDX_ELEMENTS = 1 << 31
_MAX_DEFLATE_RATIO = 1032  # deflate's most expansion per compressed byte


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (raw or .gz) into a numpy array, validating every header field.

    The header's dimensions are checked before the body is read, and a .gz body is
    decompressed incrementally up to the declared size only: a small gzip bomb cannot
    make it allocate more than its header declares (and the header must be plausible for
    the file's size)."""
    path = check_input_file(path, DataError)
    try:
        size = path.stat().st_size
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
            return _read_idx_stream(f, path, size, path.suffix == ".gz")
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None


def _read_exactly(f, n: int) -> bytes:
    """Up to ``n`` bytes (fewer only at the end of the stream); never more."""
    chunks, left = [], n
    while left:
        chunk = f.read(min(left, 1 << 24))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _read_idx_stream(f, path: Path, file_size: int, gz: bool) -> np.ndarray:
    head = _read_exactly(f, 4)
    if len(head) < 4:
        raise DataError(f"{path}: truncated IDX file ({len(head)} bytes, header needs 4)")
    zero, type_code, ndim = int.from_bytes(head[:2], "big"), head[2], head[3]
    if zero != 0 or type_code not in _IDX_TYPES:
        raise DataError(f"{path}: not an IDX file (magic {head.hex()})")
    if not 1 <= ndim <= 4:
        raise DataError(f"{path}: IDX header gives {ndim} dimensions (1..4 allowed)")
    header = 4 + 4 * ndim
    raw_dims = _read_exactly(f, 4 * ndim)
    if len(raw_dims) < 4 * ndim:
        raise DataError(f"{path}: truncated IDX header ({4 + len(raw_dims)} bytes, needs {header})")
    dims = tuple(int.from_bytes(raw_dims[4 * i: 4 * i + 4], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_TYPES[type_code])
    count = int(np.prod(dims, dtype=object))
    body = count * dtype.itemsize
    # deflate cannot expand more than ~1032x, so a larger claim is a lie before any inflating
    # (a plain file's body is read in chunks and so is bounded by the file's size anyway)
    if count > _MAX_IDX_ELEMENTS or (gz and body > _MAX_DEFLATE_RATIO * file_size):
        raise DataError(f"{path}: IDX dimensions {dims} ({body} bytes) are implausibly large for a "
                        f"{file_size}-byte {'gzip ' if gz else ''}file")
    data = _read_exactly(f, body + 1)  # one byte more tells trailing bytes apart
    if len(data) != body:
        kind = "truncated" if len(data) < body else "has trailing bytes"
        raise DataError(f"{path}: IDX file {kind}: dimensions {dims} need {header + body} bytes")
    return np.frombuffer(data, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="))


def _find_file(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


@dataclass(frozen=True)
class Dataset:
    """A dataset in memory: float images in [0, 1] of shape (N, 1, H, W) and int64 labels."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor

    @property
    def num_classes(self) -> int:
        return int(max(self.train_y.max(), self.test_y.max())) + 1

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])


def candidate_dirs(name: str, data_dir: str | os.PathLike | None) -> list[Path]:
    if data_dir is not None:
        return [Path(data_dir)]
    dirs = []
    env = os.environ.get("NNSHRINK_DATA")
    if env:
        dirs += [Path(env) / name, Path(env)]
    return dirs + DEBIAN_DIRS.get(name, [])


def _images_to_tensor(images: np.ndarray, path: str) -> torch.Tensor:
    if images.ndim == 3:
        images = images[:, None]
    if images.ndim != 4:
        raise DataError(f"{path}: images must have 3 or 4 dimensions, got shape {images.shape}")
    scale = 255.0 if images.dtype == np.uint8 else 1.0
    return torch.from_numpy(images.astype(np.float32) / scale)


def load_split(folder: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    img_stem, lbl_stem = SPLIT_FILES[split]
    img_path, lbl_path = _find_file(folder, img_stem), _find_file(folder, lbl_stem)
    if img_path is None or lbl_path is None:
        raise DataError(f"{folder}: missing {img_stem if img_path is None else lbl_stem}[.gz]")
    images, labels = read_idx(img_path), read_idx(lbl_path)
    if labels.ndim != 1:
        raise DataError(f"{lbl_path}: labels must be 1-D, got shape {labels.shape}")
    if len(images) != len(labels):
        raise DataError(f"{folder}: {split} split has {len(images)} images but {len(labels)} labels")
    if len(labels) and (labels.min() < 0 or labels.max() > 255):
        raise DataError(f"{lbl_path}: labels outside 0..255")
    return _images_to_tensor(images, str(img_path)), torch.from_numpy(labels.astype(np.int64))


def load_dataset(name: str = "fashion-mnist", data_dir: str | os.PathLike | None = None) -> Dataset:
    """Load a dataset by name; a missing one is a :class:`DataError` saying where we looked."""
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    dirs = candidate_dirs(name, data_dir)
    if name == "idx" and data_dir is None and not os.environ.get("NNSHRINK_DATA"):
        raise DataError(f"dataset 'idx' needs a folder: {INSTALL_HINT['idx']}")
    for folder in dirs:
        if folder.is_dir() and _find_file(folder, SPLIT_FILES["train"][0]) is not None:
            train_x, train_y = load_split(folder, "train")
            test_x, test_y = load_split(folder, "test")
            if train_x.shape[1:] != test_x.shape[1:]:
                raise DataError(f"{folder}: train images {tuple(train_x.shape[1:])} and test images "
                                f"{tuple(test_x.shape[1:])} differ in shape")
            return Dataset(name, train_x, train_y, test_x, test_y)
    looked = ", ".join(str(d) for d in dirs) or "(nowhere)"
    raise DataError(f"dataset {name!r} not found; looked in {looked}. To get it: {INSTALL_HINT[name]}")


def iterate_batches(
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
    epoch: int = 0,
    rank: int = 0,
    world_size: int = 1,
    drop_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (x, y) batches. With ``world_size > 1`` each rank gets a disjoint, equal shard.

    The order depends only on (seed, epoch), so every rank agrees on the permutation.
    """
    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1; got {batch_size}")
    n = len(x)
    if shuffle:
        gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
        order = torch.randperm(n, generator=gen)
    else:
        order = torch.arange(n)
    if world_size > 1:
        per_rank = n // world_size
        order = order[: per_rank * world_size][rank::world_size]
    stop = len(order) - (len(order) % batch_size if drop_last else 0)
    for start in range(0, stop, batch_size):
        idx = order[start : start + batch_size]
        yield x[idx], y[idx]


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Each image of the batch ``x`` (N, C, H, W) moved by its own random (dy, dx) in
    [-max_shift, max_shift] pixels, the uncovered border filled with 0 (the background of
    the IDX sets): light augmentation that keeps a retrained sparse net from memorising
    the exact pixel positions of the training images. Deterministic given ``generator``."""
    if isinstance(max_shift, bool) or not isinstance(max_shift, int) or max_shift < 0:
        raise ConfigError(f"shift must be an integer number of pixels >= 0; got {max_shift!r}")
    if max_shift == 0 or len(x) == 0:
        return x
    if x.dim() != 4:
        raise DataError(f"shift augmentation needs images of shape (N, C, H, W); got {tuple(x.shape)}")
    s = max_shift
    h, w = x.shape[-2:]
    padded = torch.nn.functional.pad(x, (s, s, s, s))
    offsets = torch.randint(0, 2 * s + 1, (len(x), 2), generator=generator)
    out = torch.empty_like(x)
    for dy in range(2 * s + 1):  # one slice per distinct shift, not one per image
        for dx in range(2 * s + 1):
            idx = ((offsets[:, 0] == dy) & (offsets[:, 1] == dx)).nonzero().flatten()
            if len(idx):
                out[idx] = padded[idx, :, dy:dy + h, dx:dx + w]
    return out
