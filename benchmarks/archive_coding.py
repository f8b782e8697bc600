"""Where an archive's bytes go, format 1 against format 2, beside the entropy bounds.

Each archive given is decoded and serialised again both ways from the same tensors:
version 1 (JSON header, gap / Huffman codings) and version 2 (deflated header, adaptive
masks and indices where smaller). Per record: bytes of positions and of values (codebook
+ index, or float values, or raw data); per archive: header, padding, total and ratio.
Bounds, all in bytes: `gap_h0` the order-0 entropy of the gap stream (what gap Huffman
approaches, tables excluded), `mask_h0` numel x H(density) (any coder that sees the mask
bits as independent), `mask_hctx` the empirical entropy of the mask under the adaptive
coder's 64 contexts (that model with its probabilities known in advance; the adaptive
coder pays for learning them), `index_h0` the indices' order-0 entropy. Also per shared
layer: the adaptive index stream with the codebook as stored and sorted by frequency.

    python benchmarks/archive_coding.py runs/lenet300.nsk runs/lenet5.nsk --json OUT.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _util import machine, write_json  # noqa: E402

from nnshrink.compressed import SharedTensor, SparseTensor  # noqa: E402
from nnshrink.encode import adaptive  # noqa: E402
from nnshrink.encode.huffman import entropy_bits, histogram  # noqa: E402
from nnshrink.encode.sparse import gaps_from_mask  # noqa: E402
from nnshrink.format import parse_archive, read_archive, serialize  # noqa: E402
from nnshrink.format.header import split  # noqa: E402
from nnshrink.format.layout import PREAMBLE, default_gap_bits  # noqa: E402

POSITION_PARTS = ("gap_lengths", "gap", "mask")


def _h(p: np.ndarray) -> np.ndarray:
    """Binary entropy in bits, 0 at p in {0, 1}."""
    p = np.clip(p, 1e-300, 1.0)
    q = np.clip(1.0 - p, 1e-300, 1.0)
    return np.where((p > 0) & (p < 1), -(p * np.log2(p) + q * np.log2(q)), 0.0)


def mask_bounds(mask: np.ndarray, gap_bits: int) -> dict:
    flat = np.ascontiguousarray(mask, np.bool_).reshape(-1)
    n, kept = flat.size, int(flat.sum())
    ctx = np.empty(n, np.uint8)
    adaptive._mask_contexts(flat.view(np.uint8), adaptive.mask_view(mask.shape)[1], ctx)
    seen = np.bincount(ctx, minlength=adaptive.MASK_CONTEXTS)
    ones = np.bincount(ctx, weights=flat, minlength=adaptive.MASK_CONTEXTS)
    with np.errstate(invalid="ignore", divide="ignore"):
        hctx = float(np.sum(seen * _h(np.where(seen > 0, ones / np.maximum(seen, 1), 0.0))))
    gaps = gaps_from_mask(mask, gap_bits)
    return {"mask_h0": float(n * _h(np.array(kept / n))) / 8, "mask_hctx": hctx / 8,
            "gap_h0": entropy_bits(histogram(gaps, 1 << gap_bits)) / 8, "gap_bits": gap_bits}


def split_records(data: bytes) -> tuple[int, dict]:
    """(header bytes, name -> {positions, values, bytes, codings}) of a serialised archive."""
    _, header, _ = split(data)
    hlen = int.from_bytes(data[8:12], "little")
    rows = {}
    for r in header["records"]:
        parts = dict((p, n) for p, n in r["parts"])
        pos = sum(parts.get(p, 0) for p in POSITION_PARTS)
        rows[r["name"]] = {"encoding": r["encoding"], "bytes": r["length"], "positions": pos,
                           "values": r["length"] - pos, "index_coding": r.get("index_coding"),
                           "position_coding": r.get("mask_coding") or r.get("gap_coding")}
    return hlen, rows


def median_s(fn, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def measure(path: str) -> dict:
    arch = read_archive(path)
    gap_bits = {r["name"]: r["index_bits"]["before"] or default_gap_bits(r["shape"]) for r in arch.records}
    blobs = {v: serialize(arch.tensors, arch.metadata, index_bits=gap_bits, version=v) for v in (1, 2)}
    for v, blob in blobs.items():  # both decode to the archive's tensors
        back = parse_archive(blob).dense_arrays()
        assert all(np.array_equal(back[k], a) for k, a in arch.dense_arrays().items()), f"version {v} not exact"
    params = sum(int(np.prod(r["shape"])) for r in arch.records)
    out = {"archive": str(path), "file_bytes_in": arch.file_bytes, "float32_bytes": 4 * params, "versions": {}}
    layers = {}
    for v, blob in blobs.items():
        hlen, rows = split_records(blob)
        out["versions"][v] = {
            "file_bytes": len(blob), "ratio": 4 * params / len(blob), "header_bytes": PREAMBLE + hlen,
            "positions_bytes": sum(r["positions"] for r in rows.values()),
            "values_bytes": sum(r["values"] for r in rows.values()),
            "padding_bytes": len(blob) - PREAMBLE - hlen - sum(r["bytes"] for r in rows.values()),
            "decode_s_median5": median_s(lambda b=blob: parse_archive(b).dense_arrays())}
        for name, r in rows.items():
            layers.setdefault(name, {"name": name})[f"v{v}"] = r
    bounds = {"positions": 0.0, "positions_ctx": 0.0, "gaps": 0.0, "indices": 0.0}
    for name, t in arch.tensors.items():
        row = layers[name]
        row["shape"] = list(t.shape)
        mask = t.mask if isinstance(t, (SharedTensor, SparseTensor)) else None
        if mask is not None:
            b = mask_bounds(mask, gap_bits[name])
            row.update(kept=int(mask.sum()), **b)
            bounds["positions"] += b["mask_h0"]
            bounds["positions_ctx"] += b["mask_hctx"]
            bounds["gaps"] += b["gap_h0"]
        if isinstance(t, SharedTensor):
            idx = np.asarray(t.indices, np.uint8)
            hist = histogram(idx, 1 << t.bits)
            row["index_h0"] = entropy_bits(hist) / 8
            row["codebook_bytes"] = 4 * len(t.codebook)
            # codebook ordering: relabel by descending frequency (the tree coder's learning cost can change)
            rank = np.empty(hist.size, np.uint8)
            rank[np.argsort(-hist, kind="stable")] = np.arange(hist.size)
            row["index_adaptive_bytes"] = len(adaptive.encode_symbols(idx, t.bits))
            row["index_adaptive_freq_sorted_bytes"] = len(adaptive.encode_symbols(rank[idx], t.bits))
            bounds["indices"] += row["index_h0"]
    out["bounds_bytes"] = {"mask_h0": bounds["positions"], "mask_hctx": bounds["positions_ctx"],
                           "gap_h0": bounds["gaps"], "index_h0": bounds["indices"]}
    out["layers"] = list(layers.values())
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("archives", nargs="+", help=".nsk files (any readable version)")
    ap.add_argument("--json", default=None, help="write results here")
    args = ap.parse_args(argv)
    results = {"machine": machine(), "command": "python benchmarks/archive_coding.py " + " ".join(args.archives),
               "archives": [measure(p) for p in args.archives]}
    for a in results["archives"]:
        v1, v2 = a["versions"][1], a["versions"][2]
        print(f"{a['archive']}: {v1['file_bytes']} -> {v2['file_bytes']} bytes ({v1['ratio']:.1f}x -> "
              f"{v2['ratio']:.1f}x); header {v1['header_bytes']} -> {v2['header_bytes']}, positions "
              f"{v1['positions_bytes']} -> {v2['positions_bytes']} (gap H0 {a['bounds_bytes']['gap_h0']:.0f}, mask H0 "
              f"{a['bounds_bytes']['mask_h0']:.0f}, ctx {a['bounds_bytes']['mask_hctx']:.0f}), values "
              f"{v1['values_bytes']} -> {v2['values_bytes']} (index H0 {a['bounds_bytes']['index_h0']:.0f})",
              file=sys.stderr)
    write_json(results, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
