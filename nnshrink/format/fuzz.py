"""Mutation fuzzing of archives: bit flips, truncation, splices, huge lengths, and
mutations re-checksummed so they reach the deep checks; plus a family of hand-built
decompression bombs (used by tests and benchmarks/fuzz_archive.py). The property:
``parse_archive`` returns a consistent Archive or raises a FormatError -- nothing else,
never a hang or a giant allocation."""

from __future__ import annotations

import struct
import zlib

import numpy as np

from ..compressed import BinaryTensor, DenseTensor, SharedTensor, SparseTensor
from ..encode.adaptive import encode_mask
from .errors import FormatError
from .header import join, split
from .layout import DENSITY, DENSITY_SLACK, PREAMBLE
from .reader import parse_archive
from .writer import assemble, encode_tensor, write_archive

_SPECIAL_INTS = [0, 1, -1, 2, 3, 7, 8, 9, 255, 256, 2**16, 2**31 - 1, 2**31, 2**32, 2**34 + 1, 2**53, 2**63, -2**63]


def sample_archives(tmpdir) -> list[bytes]:
    """A few small archives covering every encoding, every stream coding and both format versions."""
    rng = np.random.default_rng(0)
    out = []
    for variant in range(4):
        m = rng.random((24, 20)) < (0.1, 0.5, 0.02, 0.9)[variant]
        idx = rng.choice(16, int(m.sum()), p=np.r_[[0.5, 0.2, 0.1], np.full(13, 0.2 / 13)])
        r2 = np.random.default_rng(100 + variant)  # its own stream: the other tensors stay as they were
        dead = (r2.random((40, 60)) < 0.3) & (r2.random(60) < 0.3)[None, :]
        tensors = {
            "fc.weight": SharedTensor((24, 20), rng.standard_normal(16).astype(np.float32), idx, 4, m),
            "fc.bias": DenseTensor(rng.standard_normal(24).astype(np.float32)),
            "conv.weight": SharedTensor((6, 2, 3, 3), rng.standard_normal(8).astype(np.float32),
                                        rng.integers(0, 8, 108), 3),
            "sp.weight": SparseTensor((30, 10), m.reshape(-1)[:300].reshape(30, 10),
                                      rng.standard_normal(int(m.reshape(-1)[:300].sum())).astype(np.float32)),
            "bin.weight": BinaryTensor((5, 7), rng.random((5, 7)) < 0.5, rng.random(5).astype(np.float32)),
            "half": DenseTensor(rng.standard_normal((2, 3)).astype(np.float32), half=True),
            "steps": DenseTensor(np.array([7], np.int64)),
            # two frequent indices of four: the writer pair-codes this stream
            "pairs.weight": SharedTensor((20, 20), rng.standard_normal(4).astype(np.float32),
                                         rng.choice(4, 400, p=[0.45, 0.45, 0.05, 0.05]), 2),
            # dead input columns, as pruning leaves them: the writer codes this mask `adaptive`
            "dead.weight": SparseTensor((40, 60), dead, r2.standard_normal(int(dead.sum())).astype(np.float32)),
        }
        if variant == 0:  # the same tensors in format version 1 (gap and Huffman codings only)
            entries = [({"name": n, "shape": list(t.shape), **encode_tensor(n, t, 5, adaptive_ok=False)[0]},
                        encode_tensor(n, t, 5, adaptive_ok=False)[1]) for n, t in tensors.items()]
            out.append(assemble(entries, {"model": None, "config": {}}, version=1))
        path = f"{tmpdir}/fuzz{variant}.nsk"
        write_archive(path, tensors, {"model": None, "config": {"v": variant}},
                      index_bits=(3, 4, 5, 8)[variant], huffman=variant != 3)
        with open(path, "rb") as f:
            out.append(f.read())
    return out


def filler_bomb(stream_bytes: int, name: str = "bomb") -> bytes:
    """One all-zero tensor whose gap stream is one-bit fillers (single-symbol Huffman, 8-bit
    gaps): 2,040 declared elements per stream byte, the densest claim the stream rules allow."""
    count = 8 * stream_bytes
    rec = {"name": name, "shape": [255 * count], "encoding": "sparse_f32", "nonzero": 0, "gap_bits": 8,
           "gap_count": count, "gap_coding": "huffman"}
    return assemble([(rec, [("values", b""), ("gap_lengths", bytes(255) + b"\x01"), ("gap", bytes(stream_bytes))])],
                    {"model": None, "config": {}})


def adaptive_bomb(numel: int, junk: bool = False) -> bytes:
    """One all-zero tensor whose positions are an adaptive mask (format 2): ~2,900 zeros per
    stream byte once the coder has learned them, more than the density cap allows. ``junk``:
    the same claim over a stream of 0xFF bytes (decodes to some mask, or an error)."""
    stream = encode_mask(np.zeros(numel, bool))
    if junk:
        stream = b"\xff" * len(stream)
    rec = {"name": "abomb", "shape": [numel], "encoding": "sparse_f32", "nonzero": 0, "mask_coding": "adaptive"}
    return assemble([(rec, [("values", b""), ("mask", stream)])], {"model": None, "config": {}})


def _raw_claim(shape: list[int], name: str = "t") -> tuple[dict, list]:
    return ({"name": name, "shape": shape, "encoding": "raw", "dtype": "uint8", "half": False},
            [("data", b"")])


def bomb_archives() -> list[tuple[str, bytes]]:
    """The decompression-bomb family, as (label, bytes): files of a few bytes to 1 MB whose
    headers claim up to billions of elements, absurd shapes, or many records. Each must be
    refused with a FormatError or decode within its density cap (SPEC.md)."""
    out = [(f"filler bomb, {n} stream bytes", filler_bomb(n)) for n in (1, 1024, 50_000, 1 << 20)]
    # the largest filler bomb the density cap admits: it decodes, bounded by the cap
    n = (DENSITY_SLACK + DENSITY * 600) // (255 * 8 - DENSITY)
    while 255 * 8 * n > DENSITY * len(filler_bomb(n)) + DENSITY_SLACK:
        n -= 8
    out.append(("filler bomb at the density cap", filler_bomb(n)))
    half = [filler_bomb(n, f"b{i}") for i in range(2)]
    out.append(("two records under the cap alone, over it together",
                assemble([(split(h)[1]["records"][0],
                           [("values", b""), ("gap_lengths", bytes(255) + b"\x01"), ("gap", bytes(n))])
                          for h in half], {"model": None, "config": {}})))
    for numel in (10**6, 10**7):
        out.append((f"adaptive mask bomb, {numel} zeros", adaptive_bomb(numel)))
    out.append(("adaptive mask bomb over a junk stream", adaptive_bomb(10**6, junk=True)))
    for shape in ([2**31, 2**31, 0], [0] + [2**31] * 7, [2**31] * 8, [2**17, 2**17, 0, 1]):
        out.append((f"shape {shape}", assemble([_raw_claim(shape)], {"model": None, "config": {}})))
    out.append(("100,000 empty records (the SPEC's most)",
                assemble([_raw_claim([0, 2**31], f"t{i}") for i in range(100_000)], {"model": None, "config": {}})))
    return out


def _rewrite_header(data: bytes, edit, rng) -> bytes:
    version, header, body = split(data)
    edit(header, rng)
    return join(version, header, body)


def _edit_field(header, rng):
    recs = header["records"]
    rec = recs[rng.integers(len(recs))]
    key = list(rec)[rng.integers(len(rec))]
    r = rng.integers(6)
    if r == 0:
        del rec[key]
    elif r == 1 and key == "shape":
        rec["shape"] = [int(x) for x in rng.choice(_SPECIAL_INTS[:12], rng.integers(0, 4))]
    elif r == 2 and key == "parts" and rec["parts"]:
        p = rec["parts"][rng.integers(len(rec["parts"]))]
        p[1] = int(rng.choice(_SPECIAL_INTS)) if rng.random() < 0.5 else p[1] + int(rng.integers(-3, 4))
    elif r == 3:
        values = [None, "x", 1.5, True, {}, [], "huffman", "packed", "huffman_pairs", "adaptive", "raw", "shared"]
        rec[key] = values[rng.integers(len(values))]
    else:
        v = rec[key]
        rec[key] = (v + int(rng.integers(-3, 4))) if isinstance(v, int) and not isinstance(v, bool) \
            else int(rng.choice(_SPECIAL_INTS))


def _recrc_record_mutation(data: bytes, rng) -> bytes:
    """Flip bits inside one record's bytes, then fix its CRC so the decoders see the damage."""
    version, header, body = split(data)
    rec = header["records"][rng.integers(len(header["records"]))]
    if rec["length"] == 0:
        return data
    base = rec["offset"]
    buf = bytearray(body)
    for _ in range(rng.integers(1, 4)):
        pos = base + int(rng.integers(rec["length"]))
        buf[pos] ^= 1 << int(rng.integers(8)) if rng.random() < 0.7 else int(rng.integers(1, 256))
    rec["crc32"] = zlib.crc32(bytes(buf[base: base + rec["length"]]))
    return join(version, header, bytes(buf))


def _recrc_header_mutation(data: bytes, rng) -> bytes:
    """Flip bits inside the stored header (a deflate stream in format 2), then fix its CRC so
    the envelope checks and the inflater see the damage."""
    hlen = struct.unpack_from("<I", data, 8)[0]
    if hlen == 0 or len(data) < PREAMBLE + hlen:
        return data
    buf = bytearray(data)
    for _ in range(rng.integers(1, 4)):
        buf[PREAMBLE + int(rng.integers(hlen))] ^= 1 << int(rng.integers(8))
    struct.pack_into("<I", buf, 12, zlib.crc32(bytes(buf[PREAMBLE: PREAMBLE + hlen])))
    return bytes(buf)


def mutate(data: bytes, others: list[bytes], rng) -> bytes:
    kind = rng.integers(10)
    n = len(data)
    if kind == 0:  # bit flips
        buf = bytearray(data)
        for _ in range(rng.integers(1, 9)):
            buf[rng.integers(n)] ^= 1 << int(rng.integers(8))
        return bytes(buf)
    if kind == 1:  # byte overwrites with special values
        buf = bytearray(data)
        for _ in range(rng.integers(1, 5)):
            buf[rng.integers(n)] = int(rng.choice([0, 1, 0x7F, 0x80, 0xFF, rng.integers(256)]))
        return bytes(buf)
    if kind == 2:  # truncation / extension
        return data[: rng.integers(n)] if rng.random() < 0.7 else data + bytes(rng.integers(0, 256, rng.integers(1, 64), dtype=np.uint8))
    if kind == 3:  # splice from this or another archive
        src = others[rng.integers(len(others))]
        a, ln = int(rng.integers(len(src))), int(rng.integers(1, 64))
        at = int(rng.integers(n))
        return data[:at] + src[a: a + ln] + data[at + ln:] if rng.random() < 0.5 else data[:at] + src[a: a + ln] + data[at:]
    if kind == 4:  # huge header length
        return data[:8] + struct.pack("<I", int(rng.choice([0, 1, 2**24, 2**24 + 1, 2**32 - 1, n, n - 15]))) + data[12:]
    if kind in (5, 6):
        return _rewrite_header(data, _edit_field, rng)
    if kind == 9:
        return _recrc_header_mutation(data, rng)
    return _recrc_record_mutation(data, rng)


def check_one(data: bytes) -> str | None:
    """None if the reader behaved (valid archive or FormatError); else a description of the failure."""
    try:
        archive = parse_archive(data, "fuzz")
    except FormatError:
        return None
    except Exception as exc:  # noqa: BLE001 - this is exactly what the fuzzer hunts
        return f"{type(exc).__name__}: {exc}"
    with np.errstate(all="ignore"):  # mutated floats may be NaN/inf: legal values
        dense = archive.dense_arrays()
    for rec in archive.records:
        if tuple(dense[rec["name"]].shape) != tuple(rec["shape"]):
            return f"record {rec['name']!r} decoded to shape {dense[rec['name']].shape}, header says {rec['shape']}"
    return None


def run_bombs(max_case_s: float = 10.0) -> dict:
    """Every bomb of ``bomb_archives``: a FormatError or a consistent archive, each within ``max_case_s``."""
    import time

    failures, rows = [], []
    for label, data in bomb_archives():
        t0 = time.perf_counter()
        try:
            archive = parse_archive(data, "bomb")
            dense = archive.dense_arrays()
            bad = [r["name"] for r in archive.records if tuple(dense[r["name"]].shape) != tuple(r["shape"])]
            outcome, problem = "decoded", f"records {bad[:3]} decoded to the wrong shape" if bad else None
        except FormatError as exc:
            outcome, problem = type(exc).__name__, None
        except Exception as exc:  # noqa: BLE001 - exactly what the fuzzer hunts
            outcome, problem = type(exc).__name__, f"{type(exc).__name__}: {exc}"
        dt = time.perf_counter() - t0
        if dt > max_case_s:
            problem = f"took {dt:.1f} s (limit {max_case_s} s)"
        rows.append({"case": label, "file_bytes": len(data), "outcome": outcome, "s": round(dt, 4)})
        if problem:
            failures.append({"case": label, "problem": problem})
    return {"bombs": rows, "failures": failures}


def run_fuzz(cases: int, seed: int, archives: list[bytes]) -> dict:
    import time

    rng = np.random.default_rng(seed)
    failures, accepted, worst = [], 0, 0.0
    for i in range(cases):
        base = archives[i % len(archives)]
        data = mutate(base, archives, rng)
        t0 = time.perf_counter()
        problem = check_one(data)
        worst = max(worst, time.perf_counter() - t0)
        if problem:
            failures.append({"case": i, "problem": problem, "hex": data.hex()[:400]})
        else:
            try:
                parse_archive(data, "fuzz")
                accepted += 1
            except FormatError:
                pass
    return {"cases": cases, "seed": seed, "failures": failures, "accepted_valid": accepted, "max_case_s": worst}
