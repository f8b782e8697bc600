"""Archive codec at VGG-16 scale: encode / decode time, peak memory, Huffman speed vs zstd.

A synthetic model with VGG-16's layer shapes (138M float32 weights) pruned to 10% and
shared at 5 bits is written with ``write_archive`` and read back with ``read_archive`` +
``to_dense`` (the full decode to float32). Huffman kernels are timed alone on the largest
layer's index and gap streams, beside zstd level 1 on the same symbol streams.

    python benchmarks/codec_scale.py --json OUT.json [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time

os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from nnshrink.compressed import SharedTensor  # noqa: E402
from nnshrink.encode.huffman import (HuffmanCode, code_lengths, entropy_bits, histogram,  # noqa: E402
                                     huffman_decode, huffman_encode, pair_symbols)
from nnshrink.encode.sparse import gaps_from_mask  # noqa: E402
from nnshrink.format import read_archive, serialize, write_archive  # noqa: E402

VGG16 = [(64, 3, 3, 3), (64, 64, 3, 3), (128, 64, 3, 3), (128, 128, 3, 3), (256, 128, 3, 3), (256, 256, 3, 3),
         (256, 256, 3, 3), (512, 256, 3, 3), (512, 512, 3, 3), (512, 512, 3, 3), (512, 512, 3, 3),
         (512, 512, 3, 3), (512, 512, 3, 3), (4096, 25088), (4096, 4096), (1000, 4096)]


def synthetic_layer(shape, keep: float, bits: int, rng) -> SharedTensor:
    """Bernoulli(keep) mask; kept weights have |w| = t + Exp(0.5) (the tail left by magnitude
    pruning), shared by a linear codebook of 2**bits centroids -> a realistic skewed index stream."""
    n = int(np.prod(shape))
    gaps = rng.geometric(keep, size=int(n * keep * 1.1) + 16)
    pos = np.cumsum(gaps, dtype=np.int64) - 1
    pos = pos[pos < n]
    mask = np.zeros(n, bool)
    mask[pos] = True
    mag = 1.645 + rng.exponential(0.5, pos.size).astype(np.float32)
    w = np.where(rng.random(pos.size) < 0.5, -mag, mag)
    lo, hi = float(w.min()), float(w.max())
    codebook = np.linspace(lo, hi, 1 << bits).astype(np.float32)
    idx = np.clip(np.rint((w - lo) / (hi - lo) * ((1 << bits) - 1)), 0, (1 << bits) - 1).astype(np.uint8)
    return SharedTensor(tuple(shape), codebook, idx, bits, mask.reshape(shape))


def median_time(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), out


CODING_OF = {"single": "huffman", "pairs": "huffman_pairs"}


def huffman_bench(symbols: np.ndarray, alphabet: int, pairs: bool, repeats: int) -> dict:
    """Time one Huffman variant on a stream (pairs: codes over symbol pairs, as the archive
    writes when that is smaller); rates count source symbols, tables not included."""
    stream = pair_symbols(symbols, alphabet) if pairs else symbols
    size = alphabet * alphabet if pairs else alphabet
    base = alphabet if pairs else 0
    hist = histogram(stream, size)
    code = HuffmanCode.from_lengths(code_lengths(hist))
    huffman_decode(huffman_encode(stream[:64], code), min(64 * (1 + pairs), symbols.size), code, base)  # warm
    enc_s, data = median_time(lambda: huffman_encode(pair_symbols(symbols, alphabet) if pairs else symbols,
                                                     code, hist), repeats)
    dec_s, back = median_time(lambda: huffman_decode(data, symbols.size, code, base), repeats)
    assert np.array_equal(back, symbols)
    n, table = symbols.size, code.table_size()
    return {"bits_per_symbol": 8 * len(data) / n, "table_bytes": table, "bytes": len(data) + table,
            "encode_msym_s": n / enc_s / 1e6, "decode_msym_s": n / dec_s / 1e6, "_bits": 8 * len(data)}


def stream_bench(name: str, symbols: np.ndarray, alphabet: int, repeats: int) -> dict:
    import zstandard

    ent = entropy_bits(histogram(symbols, alphabet))
    single = huffman_bench(symbols, alphabet, False, repeats)
    pairs = huffman_bench(symbols, alphabet, True, repeats)
    chosen, coding = (pairs, "huffman_pairs") if pairs["bytes"] < single["bytes"] else (single, "huffman")
    for v in (single, pairs):
        v["over_entropy"] = v.pop("_bits") / ent - 1
    raw = symbols.tobytes()
    cctx, dctx = zstandard.ZstdCompressor(level=1), zstandard.ZstdDecompressor()
    zenc_s, z = median_time(lambda: cctx.compress(raw), repeats)
    zdec_s, _ = median_time(lambda: dctx.decompress(z), repeats)
    n = symbols.size
    return {"stream": name, "symbols": n, "alphabet": alphabet, "entropy_bits_per_symbol": ent / n,
            "coding": coding, "huffman_bits_per_symbol": chosen["bits_per_symbol"],
            "huffman_over_entropy": chosen["over_entropy"], "huffman_encode_msym_s": chosen["encode_msym_s"],
            "huffman_decode_msym_s": chosen["decode_msym_s"], "single": single, "pairs": pairs,
            "zstd1_bits_per_symbol": 8 * len(z) / n, "zstd1_encode_msym_s": n / zenc_s / 1e6,
            "zstd1_decode_msym_s": n / zdec_s / 1e6}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", default=None, help="write results here")
    ap.add_argument("--quick", action="store_true", help="1/64 of the size (smoke test)")
    ap.add_argument("--keep", type=float, default=0.10)
    ap.add_argument("--bits", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    shapes = [tuple(max(1, d // 8) if i < 2 else d for i, d in enumerate(s)) for s in VGG16] if args.quick else VGG16
    tensors = {f"layer{i:02d}.weight": synthetic_layer(s, args.keep, args.bits, rng) for i, s in enumerate(shapes)}
    params = sum(int(np.prod(s)) for s in shapes)
    dense_bytes = 4 * params
    with tempfile.TemporaryDirectory() as d:
        # warm numba (load its cache) outside the timings
        write_archive(os.path.join(d, "warm.nsk"), {"w": synthetic_layer((64, 64), 0.1, 5, rng)}, {})
        read_archive(os.path.join(d, "warm.nsk"))
        path = os.path.join(d, "vgg.nsk")
        t0 = time.perf_counter()
        size = write_archive(path, tensors, {"model": None, "report": {"synthetic": "vgg16"}})
        encode_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        arch = read_archive(path)
        dense = arch.dense_arrays()  # == to_dense() of every tensor, tested
        decode_s = time.perf_counter() - t0
        exact = all(np.array_equal(arch.tensors[k].mask, t.mask) and np.array_equal(arch.tensors[k].indices, t.indices)
                    for k, t in tensors.items())
        codings = [f"{r['index_coding']}/{r['gap_coding']}" for r in arch.records]
        layers = [{"name": r["name"], "params": r["params"], "bytes": r["bytes"], "index_coding": r["index_coding"],
                   "position_coding": r["gap_coding"]} for r in arch.records]
        del dense, arch
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        # the previous format (1: no adaptive codings, JSON header) for the same tensors, after the peak is
        # read: its size, and its decode time in the same run (a ratio that survives a loaded machine)
        t0 = time.perf_counter()
        v1 = serialize(tensors, {"model": None, "report": {"synthetic": "vgg16"}}, version=1)
        encode_v1_s = time.perf_counter() - t0  # without the file write
        size_v1 = len(v1)
        with open(path, "wb") as f:
            f.write(v1)
        del v1
        t0 = time.perf_counter()
        dense = read_archive(path).dense_arrays()
        decode_v1_s = time.perf_counter() - t0
        del dense

    big = max(tensors.values(), key=lambda t: int(np.prod(t.shape)))
    streams = [stream_bench("index", np.asarray(big.indices, np.uint8), 1 << args.bits, args.repeats),
               stream_bench("gap", gaps_from_mask(big.mask, 5), 32, args.repeats)]
    result = {"machine": "2-core shared CPU VM, no GPU, torch 2.13 CPU", "quick": args.quick, "params": params,
              "keep": args.keep, "bits": args.bits, "dense_bytes": dense_bytes, "file_bytes": size,
              "ratio": dense_bytes / size, "file_bytes_format1": size_v1, "decode_s_format1": decode_v1_s,
              "encode_s_format1_no_write": encode_v1_s,
              "layers": layers,
              "codings_index_positions": {c: codings.count(c) for c in sorted(set(codings))},
              "encode_s": encode_s, "decode_s": decode_s, "peak_rss_bytes": peak,
              "peak_rss_over_dense": peak / dense_bytes, "bit_exact": exact, "streams": streams,
              "targets": {"encode_s": 15, "decode_s": 5, "peak_rss_over_dense": 3,
                          "huffman_encode_msym_s": 100, "huffman_decode_msym_s": 50, "huffman_over_entropy": 0.015}}
    print(f"{params / 1e6:.1f}M weights, keep {args.keep}, {args.bits}-bit: file {size / 1e6:.2f} MB "
          f"({dense_bytes / size:.1f}x), encode {encode_s:.2f} s, decode {decode_s:.2f} s, "
          f"peak RSS {peak / 1e6:.0f} MB = {peak / dense_bytes:.2f}x dense, bit-exact {exact}; format 1: "
          f"{size_v1 / 1e6:.4f} MB vs {size / 1e6:.4f} MB, encode {encode_v1_s:.2f} s (no write), decode "
          f"{decode_v1_s:.2f} s; codings "
          f"{result['codings_index_positions']}")
    for s in streams:
        print(f"  {s['stream']:<5} {s['symbols']} sym: entropy {s['entropy_bits_per_symbol']:.3f} b | zstd-1 "
              f"{s['zstd1_bits_per_symbol']:.3f} b, enc {s['zstd1_encode_msym_s']:.0f} / dec "
              f"{s['zstd1_decode_msym_s']:.0f} Msym/s")
        for v in ("single", "pairs"):
            r = s[v]
            print(f"        huffman {v:<6} {r['bits_per_symbol']:.3f} b (+{100 * r['over_entropy']:.2f}%), "
                  f"enc {r['encode_msym_s']:.0f} / dec {r['decode_msym_s']:.0f} Msym/s"
                  + ("   <- archive's choice" if s["coding"] == CODING_OF[v] else ""))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0 if exact else 1


if __name__ == "__main__":
    sys.exit(main())
