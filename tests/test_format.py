"""The .nsk format: golden bytes pin SPEC.md, attacks get typed errors, round trips are exact."""

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from nnshrink.compressed import BinaryTensor, DenseTensor, SharedTensor, SparseTensor
from nnshrink.errors import ConfigError
from nnshrink.format import (BadMagicError, ChecksumError, FormatError, HeaderError, HuffmanTableError, RecordError,
                             StreamError, parse_archive, read_archive, serialize, write_archive)
from nnshrink.format import repack
from nnshrink.format.fuzz import run_fuzz, sample_archives
from nnshrink.format.header import join, split
from nnshrink.format.layout import HEADER_DICT

GOLDEN_DIR = Path(__file__).parent / "golden"

GOLDEN_META = {"model": "tiny", "config": {}, "nnshrink_version": "test", "report": {}}
GOLDEN_V1 = (  # the same archive in format version 1 (plain JSON header): still read
    b'NSK\n\x01\x00\x00\x00\x10\x02\x00\x00\xee\'\xa5I'
    b'{"format":"nsk","version":1,"data_length":24,"metadata":{"model":"tiny","config":{},"nnshrink_version":"test",'
    b'"report":{}},"records":[{"name":"w","shape":[2,4],"encoding":"shared","bits":1,"k":2,"nonzero":3,"sparse":true,'
    b'"index_coding":"packed","gap_bits":5,"gap_count":3,"gap_coding":"packed","offset":0,"length":11,'
    b'"crc32":2408706902,"parts":[["codebook",8],["index",1],["gap",2]]},{"name":"b","shape":[1],"encoding":"raw",'
    b'"dtype":"float32","half":false,"offset":16,"length":4,"crc32":1557669231,"parts":[["data",4]]}]}       '
    b'\x00\x00\x00?\x00\x00\x80\xbf'  # codebook 0.5, -1.0 (float32 LE)
    b'`'  # indices 0,1,1 as 1-bit MSB-first: 011 00000
    b'\x00\x86'  # gaps 0,2,3 as 5-bit: 00000 00010 00011 0
    b'\x00\x00\x00\x00\x00'  # pad record to 8
    b'\x00\x00\xc0?\x00\x00\x00\x00'  # 1.5 float32 LE + pad
)
# Version 2: preamble, then u32 JSON length + the JSON deflated with SPEC.md's preset
# dictionary (the stored bytes are in tests/golden/v2_small.nsk), then the same data section.
GOLDEN = (GOLDEN_DIR / "v2_small.nsk").read_bytes()
GOLDEN_V2_PREAMBLE = b'NSK\n\x02\x00\x00\x00\xa0\x00\x00\x00CM\xdf$'
GOLDEN_V2_JSON = (
    b'{"format":"nsk","version":2,"data_length":24,"metadata":{"model":"tiny","config":{},"nnshrink_version":"test",'
    b'"report":{}},"records":[{"name":"w","shape":[2,4],"encoding":"shared","bits":1,"k":2,"nonzero":3,"sparse":true,'
    b'"index_coding":"packed","gap_bits":5,"gap_count":3,"gap_coding":"packed","offset":0,"length":11,'
    b'"crc32":2408706902,"parts":[["codebook",8],["index",1],["gap",2]]},{"name":"b","shape":[1],"encoding":"raw",'
    b'"dtype":"float32","half":false,"offset":16,"length":4,"crc32":1557669231,"parts":[["data",4]]}]}')


def golden_tensors():
    mask = np.array([[1, 0, 0, 1], [0, 0, 0, 1]], bool)
    return {"w": SharedTensor((2, 4), np.array([0.5, -1.0], np.float32), np.array([0, 1, 1]), 1, mask),
            "b": DenseTensor(np.array([1.5], np.float32))}


def test_golden_bytes(tmp_path):
    path = tmp_path / "g.nsk"
    n = write_archive(path, golden_tensors(), GOLDEN_META)
    assert path.read_bytes() == GOLDEN
    assert n == len(GOLDEN)
    assert GOLDEN[:16] == GOLDEN_V2_PREAMBLE and GOLDEN[16:20] == struct.pack("<I", len(GOLDEN_V2_JSON))
    hlen = struct.unpack_from("<I", GOLDEN, 8)[0]
    assert GOLDEN[16 + hlen:] == GOLDEN_V1[-24:]  # the data section did not change
    assert zlib.decompressobj(zdict=HEADER_DICT).decompress(GOLDEN[20:16 + hlen]) == GOLDEN_V2_JSON
    arch = read_archive(path)
    assert arch.metadata == GOLDEN_META
    np.testing.assert_array_equal(arch.tensors["w"].to_dense(), [[0.5, 0, 0, -1], [0, 0, 0, -1]])
    assert arch.records[0]["nonzero"] == 3 and arch.records[0]["bytes"] == 11


def test_version_1_golden_file_still_reads_and_repacks(tmp_path):
    old = GOLDEN_DIR / "v1_small.nsk"
    assert old.read_bytes() == GOLDEN_V1
    arch = read_archive(old)
    assert arch.metadata == GOLDEN_META
    np.testing.assert_array_equal(arch.tensors["w"].to_dense(), [[0.5, 0, 0, -1], [0, 0, 0, -1]])
    assert repack(old, tmp_path / "new.nsk") == len(GOLDEN)
    assert (tmp_path / "new.nsk").read_bytes() == GOLDEN
    assert serialize(golden_tensors(), GOLDEN_META, version=1) == GOLDEN_V1  # the old writer, for old readers
    with pytest.raises(ConfigError, match="version"):
        serialize(golden_tensors(), GOLDEN_META, version=3)


def adaptive_tensors():
    """Deterministic tensors whose positions and indices the writer codes `adaptive`."""
    r, c = np.mgrid[0:32, 0:48]
    mask = ((c % 8 < 2) & (r % 3 != 0)) | (r == c)
    i = np.arange(int(mask.sum()))
    x = (i * 2654435761) % 1000  # a fixed, irregular sequence of indices 0 (80%), 1 (15%), 2 (5%)
    w = SharedTensor((32, 48), np.array([0.25, -0.5, 1.0], np.float32), np.where(x < 800, 0, np.where(x < 950, 1, 2)),
                     2, mask)
    m2 = (r[:, :20] % 4 == 1) & (c[:, :20] < 12)
    return {"w": w, "s": SparseTensor((32, 20), m2, (np.arange(int(m2.sum())) / 8).astype(np.float32))}


def test_golden_bytes_of_adaptive_codings(tmp_path):
    data = serialize(adaptive_tensors(), GOLDEN_META)
    assert data == (GOLDEN_DIR / "v2_adaptive.nsk").read_bytes()
    arch = parse_archive(data)
    assert [(r["index_coding"], r["gap_coding"]) for r in arch.records] == [("adaptive", "adaptive"),
                                                                              (None, "adaptive")]
    assert [p for p, _ in split(data)[1]["records"][0]["parts"]] == ["codebook", "index", "mask"]
    for name, t in adaptive_tensors().items():
        np.testing.assert_array_equal(arch.tensors[name].to_dense(), t.to_dense())
        np.testing.assert_array_equal(arch.tensors[name].mask, t.mask)


def _edit_header(data: bytes, edit) -> bytes:
    version, header, body = split(data)
    edit(header)
    return join(version, header, body)


def _with_header(data: bytes, hb: bytes) -> bytes:
    hlen = struct.unpack_from("<I", data, 8)[0]
    return data[:8] + struct.pack("<II", len(hb), zlib.crc32(hb)) + hb + data[16 + hlen:]


def _rec(i, **kw):
    def edit(h):
        h["records"][i].update(kw)
    return edit


def _fix_crc(data: bytes, i: int, patch) -> bytes:
    """Change record i's bytes with ``patch(bytearray)`` and fix its CRC (reaches the decoders)."""
    version, h, body = split(data)
    r = h["records"][i]
    body = bytearray(body)
    chunk = bytearray(body[r["offset"]: r["offset"] + r["length"]])
    patch(chunk)
    body[r["offset"]: r["offset"] + r["length"]] = chunk
    r["crc32"] = zlib.crc32(bytes(chunk))
    return join(version, h, bytes(body))


ATTACKS = [
    ("bad magic", lambda d: b"PK\x03\x04" + d[4:], BadMagicError, "magic"),
    ("empty", lambda d: b"", HeaderError, "too short"),
    ("truncated", lambda d: d[:-3], HeaderError, "data_length"),
    ("trailing junk", lambda d: d + b"\0", HeaderError, "data_length"),
    ("huge header length", lambda d: d[:8] + struct.pack("<I", 2**32 - 1) + d[12:], HeaderError, "header length"),
    ("header past end", lambda d: d[:8] + struct.pack("<I", 10**6) + d[12:], HeaderError, "past the end"),
    ("version 3", lambda d: d[:4] + b"\x03" + d[5:], HeaderError, "version"),
    ("header crc", lambda d: d[:20] + b"X" + d[21:], ChecksumError, "header checksum"),
    ("record crc", lambda d: d[:-8] + b"\x01" + d[-7:], ChecksumError, "'b'"),
    ("overlap", lambda d: _edit_header(d, _rec(1, offset=8)), RecordError, "overlaps"),
    ("offset past end", lambda d: _edit_header(d, _rec(1, offset=10**9)), RecordError, "'b'"),
    ("shape vs count", lambda d: _edit_header(d, _rec(1, shape=[2])), RecordError, "'b'"),
    ("huge shape", lambda d: _edit_header(d, _rec(1, shape=[2**31, 2**31])), RecordError, "limit"),
    ("bits 9", lambda d: _edit_header(d, _rec(0, bits=9)), RecordError, "'bits'"),
    ("gap bits 2", lambda d: _edit_header(d, _rec(0, gap_bits=2)), RecordError, "'gap_bits'"),
    ("k > 2^bits", lambda d: _edit_header(d, _rec(0, k=3)), RecordError, "'k'"),
    ("bool as int", lambda d: _edit_header(d, _rec(0, nonzero=True)), RecordError, "'nonzero'"),
    ("unknown key", lambda d: _edit_header(d, _rec(0, pickle="cos\nsystem")), RecordError, "unknown keys"),
    ("wrong part order", lambda d: _edit_header(d, _rec(0, parts=[["index", 1], ["codebook", 8], ["gap", 2]])),
     RecordError, "'w'"),
    ("numel beyond gaps", lambda d: _edit_header(d, _rec(0, shape=[2**20, 4])), RecordError, "cannot cover"),
    ("index >= k", lambda d: _edit_header(_fix_crc(d, 0, lambda c: c.__setitem__(slice(0, 8), c[:4] * 2)),
                                          lambda h: None), None, None),
    ("gap past end", lambda d: _fix_crc(d, 0, lambda c: c.__setitem__(10, 0xFE)), StreamError, "'w'"),
    ("non-zero padding", lambda d: _fix_crc(d, 0, lambda c: c.__setitem__(8, 0x61)), StreamError, "padding"),
    ("duplicate name", lambda d: _edit_header(d, _rec(1, name="w")), RecordError, "duplicate"),
    ("metadata model int", lambda d: _edit_header(d, lambda h: h["metadata"].update(model=3)), HeaderError, "metadata"),
    ("header says other version", lambda d: _edit_header(d, lambda h: h.update(version=3 - h["version"])),
     HeaderError, "format/version"),
]
V1_ONLY = [  # a version 1 header is the JSON text itself
    ("not json", lambda d: _with_header(d, b"{" * 5000), HeaderError, "not valid JSON"),
    ("not utf-8", lambda d: _with_header(d, b'{"\xff": 1}'), HeaderError, "not valid JSON"),
    ("header not object", lambda d: _with_header(d, b"[]"), HeaderError, "must be an object"),
    ("adaptive mask in v1", lambda d: _edit_header(d, _rec(0, mask_coding="adaptive")), RecordError, "'w'"),
    ("adaptive index in v1", lambda d: _edit_header(d, _rec(0, index_coding="adaptive")), RecordError, "index_coding"),
]


def _deflated(text: bytes, size: int | None = None, pad: bytes = b"") -> bytes:
    z = zlib.compressobj(9, zlib.DEFLATED, 15, 9, zlib.Z_DEFAULT_STRATEGY, HEADER_DICT)
    return struct.pack("<I", len(text) if size is None else size) + z.compress(text) + z.flush() + pad


V2_ONLY = [  # the deflated envelope and the adaptive codings
    ("not json", lambda d: _with_header(d, _deflated(b"{" * 5000)), HeaderError, "not valid JSON"),
    ("header not object", lambda d: _with_header(d, _deflated(b"[]")), HeaderError, "must be an object"),
    ("inflated size over the cap", lambda d: _with_header(d, _deflated(b"[]", 2**24 + 1)), HeaderError, "inflated"),
    ("inflates to more than declared", lambda d: _with_header(d, _deflated(GOLDEN_V2_JSON, 100)), HeaderError,
     "declared"),
    ("inflates to less than declared", lambda d: _with_header(d, _deflated(b"{}", 3)), HeaderError, "declared"),
    ("zip bomb header", lambda d: _with_header(d, _deflated(b" " * 10**7, 50)), HeaderError, "declared"),
    ("not deflate", lambda d: _with_header(d, b"\x10\x00\x00\x00garbage!garbage!"), HeaderError, "inflate"),
    ("no length", lambda d: _with_header(d, b"xy"), HeaderError, "no JSON length"),
    ("junk after stream", lambda d: _with_header(d, _deflated(GOLDEN_V2_JSON, pad=b"\0\1")), HeaderError, "padding"),
    ("mask coding unknown", lambda d: _edit_header(d, _rec(0, mask_coding="rle")), RecordError, "mask_coding"),
    ("mask and gap keys", lambda d: _edit_header(d, _rec(0, mask_coding="adaptive")), RecordError, "'w'"),
]


@pytest.mark.parametrize("golden", ["v1", "v2"])
@pytest.mark.parametrize("name,attack,error,needle", ATTACKS, ids=[a[0] for a in ATTACKS])
def test_attacks_get_typed_errors(name, attack, error, needle, golden):
    _check_attack(attack(GOLDEN_V1 if golden == "v1" else GOLDEN), error, needle)


@pytest.mark.parametrize("name,attack,error,needle", V1_ONLY, ids=[a[0] for a in V1_ONLY])
def test_version_1_attacks(name, attack, error, needle):
    _check_attack(attack(GOLDEN_V1), error, needle)


@pytest.mark.parametrize("name,attack,error,needle", V2_ONLY, ids=[a[0] for a in V2_ONLY])
def test_version_2_attacks(name, attack, error, needle):
    _check_attack(attack(GOLDEN), error, needle)


ADAPTIVE_ATTACKS = [  # on tests/golden/v2_adaptive.nsk: record 0 = adaptive index + mask, record 1 = adaptive mask
    ("mask stream cut", lambda d: _cut_part(d, 1, "mask", 1), StreamError, "ends early"),
    ("mask stream extended", lambda d: _cut_part(d, 1, "mask", -1), StreamError, "bytes after"),
    ("index stream cut", lambda d: _cut_part(d, 0, "index", 1), StreamError, "index stream"),
    ("mask under 4 bytes", lambda d: _cut_part(d, 1, "mask", None), RecordError, "at least 4"),
    ("nonzero off by one", lambda d: _edit_header(d, _rec(0, nonzero=_nonzero(d, 0) - 1)), StreamError, "'w'"),
    ("mask with gap parts", lambda d: _edit_header(d, _rec(1, gap_bits=5)), RecordError, "unknown keys"),
    ("flipped mask byte", lambda d: _fix_crc(d, 1, lambda c: c.__setitem__(len(c) - 9, c[-9] ^ 0x40)), StreamError,
     "'s'"),
]


def _nonzero(data, i):
    return split(data)[1]["records"][i]["nonzero"]


def _cut_part(data: bytes, i: int, part: str, cut: int | None) -> bytes:
    """Shorten (cut > 0), lengthen (cut < 0) or shrink to 3 bytes (None) one part of record i, CRC fixed."""
    version, h, body = split(data)
    r = h["records"][i]
    names = [p for p, _ in r["parts"]]
    start = r["offset"] + sum(n for _, n in r["parts"][: names.index(part)])
    plen = dict(r["parts"])[part]
    old = body[start: start + plen]
    new = old[:3] if cut is None else (old[:-cut] if cut > 0 else old + b"\0" * -cut)
    body = body[:start] + new + body[start + plen:]
    r["parts"] = [[p, len(new) if p == part else n] for p, n in r["parts"]]
    r["length"] += len(new) - plen
    r["crc32"] = zlib.crc32(body[r["offset"]: r["offset"] + r["length"]])
    for other in h["records"][i + 1:]:
        other["offset"] += len(new) - plen
    h["data_length"] = len(body)
    return join(version, h, body)


@pytest.mark.parametrize("name,attack,error,needle", ADAPTIVE_ATTACKS, ids=[a[0] for a in ADAPTIVE_ATTACKS])
def test_adaptive_attacks(name, attack, error, needle):
    _check_attack(attack((GOLDEN_DIR / "v2_adaptive.nsk").read_bytes()), error, needle)


def _check_attack(data, error, needle):
    if error is None:  # a consistent edit: must still decode (codebook duplicated) -> not an error
        parse_archive(data)
        return
    with pytest.raises(error) as info:
        parse_archive(data, "g.nsk")
    if needle:
        assert needle in str(info.value)
    assert isinstance(info.value, FormatError)


def write_archive_bytes(tensors, **kw) -> bytes:
    return serialize(tensors, {"model": None}, **kw)


def test_index_not_below_k_is_refused():
    t = SharedTensor((16,), np.arange(3, dtype=np.float32), np.zeros(16, int), 2)
    data = write_archive_bytes({"w": t}, huffman=False)
    bad = _fix_crc(data, 0, lambda c: c.__setitem__(12, 0xFF))  # first index byte: indices 3,3,3,3
    with pytest.raises(StreamError, match=r"'w'.*index 3 >= codebook size 3"):
        parse_archive(bad)


def test_incomplete_huffman_table_is_refused():
    rng = np.random.default_rng(0)
    t = SharedTensor((4000,), np.arange(16, dtype=np.float32), rng.choice(16, 4000, p=[0.5] + [0.5 / 15] * 15), 4)
    data = write_archive_bytes({"w": t})
    rec = split(data)[1]["records"][0]
    assert rec["index_coding"] == "huffman"
    bad = _fix_crc(data, 0, lambda c: c.__setitem__(64, c[64] + 1))  # first code length + 1
    with pytest.raises(HuffmanTableError, match="'w'"):
        parse_archive(bad)


def test_failed_write_keeps_old_file(tmp_path):
    path = tmp_path / "a.nsk"
    write_archive(path, golden_tensors(), GOLDEN_META)
    with pytest.raises(ConfigError):
        write_archive(path, {"x": DenseTensor(np.zeros(3, np.float32)), "y": object()}, {})
    assert path.read_bytes() == GOLDEN
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.nsk"]


def test_writer_validates_input():
    with pytest.raises(ConfigError, match="indices"):
        write_archive_bytes({"w": SharedTensor((3,), np.zeros(2, np.float32), np.array([0, 1, 2]), 1)})
    with pytest.raises(ConfigError, match=r"\[3, 8\]"):
        write_archive_bytes({"w": DenseTensor(np.zeros(3, np.float32))}, index_bits=9)


def test_tiny_tensor_stays_raw_and_returned_size_is_file_size(tmp_path):
    t = SharedTensor((4,), np.arange(32, dtype=np.float32), np.array([0, 5, 9, 31]), 5)
    n = write_archive(tmp_path / "a.nsk", {"w": t}, {})
    arch = read_archive(tmp_path / "a.nsk")
    assert arch.records[0]["encoding"] == "raw"
    np.testing.assert_array_equal(arch.tensors["w"].to_dense(), t.to_dense())
    assert n == (tmp_path / "a.nsk").stat().st_size == arch.file_bytes


def test_dtypes_survive_and_dense_state():
    import torch
    ts = {"i": DenseTensor(np.array([3, -4], np.int64)), "b": DenseTensor(np.array([True, False])),
          "h": DenseTensor(np.array([0.1, 2.0], np.float32), half=True)}
    arch = parse_archive(write_archive_bytes(ts))
    state = arch.dense_state()
    assert state["i"].dtype == torch.int64 and state["b"].dtype == torch.bool
    assert state["h"].dtype == torch.float32
    np.testing.assert_array_equal(state["h"].numpy(), np.array([0.1, 2.0], np.float16).astype(np.float32))


shapes = st.lists(st.integers(0, 9), min_size=1, max_size=4).map(tuple)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shape=shapes, kind=st.sampled_from(["shared", "shared_dense", "sparse", "binary", "raw", "half"]),
       sparsity=st.sampled_from([0.0, 0.5, 0.99, 1.0]), bits=st.integers(1, 8), gap=st.integers(3, 8),
       huffman=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_round_trip_is_bit_exact(shape, kind, sparsity, bits, gap, huffman, seed):
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape))
    mask = rng.random(shape) >= sparsity
    big = 40 * n  # scale up sometimes so the compressed forms are used, not the raw fallback
    if rng.random() < 0.5 and n:
        shape, mask = (big,), rng.random(big) >= sparsity
        n = big
    k = int(rng.integers(1, (1 << bits) + 1))
    codebook = rng.standard_normal(k).astype(np.float32)
    if kind == "shared":
        t = SharedTensor(shape, codebook, rng.integers(0, k, int(mask.sum())), bits, mask)
    elif kind == "shared_dense":
        t = SharedTensor(shape, codebook, rng.integers(0, k, n), bits)
    elif kind == "sparse":
        t = SparseTensor(shape, mask, rng.standard_normal(int(mask.sum())).astype(np.float32))
    elif kind == "binary":
        t = BinaryTensor(shape, rng.random(shape) < 0.5, rng.random(shape[0]).astype(np.float32))
    else:
        t = DenseTensor(rng.standard_normal(shape).astype(np.float32), half=kind == "half")
    arch = parse_archive(write_archive_bytes({"t": t}, index_bits=gap, huffman=huffman))
    back = arch.tensors["t"]
    np.testing.assert_array_equal(back.to_dense(), t.to_dense())
    np.testing.assert_array_equal(arch.dense_arrays()["t"], t.to_dense())  # the fast dense path
    assert back.to_dense().shape == tuple(shape)
    if arch.records[0]["encoding"] != "raw":
        assert type(back) is type(t)
        for fld in ("mask", "indices", "codebook", "values", "signs", "scales"):
            if getattr(t, fld, None) is not None:
                np.testing.assert_array_equal(np.asarray(getattr(back, fld)).reshape(-1),
                                              np.asarray(getattr(t, fld)).reshape(-1))
        if kind in ("shared", "shared_dense"):
            assert back.bits == bits


def test_pair_coded_record_reads_back_and_attacks_are_typed(tmp_path):
    x = np.array(([0] * 16 + [1, 2, 3, 3]) * 20)
    t = {"w": SharedTensor((400,), np.array([0.0, 0.5, -0.5, 1.0], np.float32), x, 2)}
    data = write_archive_bytes(t)
    rec = parse_archive(data).records[0]
    assert rec["index_coding"] == "huffman_pairs"
    np.testing.assert_array_equal(parse_archive(data).tensors["w"].indices, x)
    for edit, error, needle in [(_rec(0, bits=7, k=65), RecordError, "pair-coded"),
                                (_rec(0, shape=[401], nonzero=401), StreamError, "index stream")]:
        with pytest.raises(error, match=needle):
            parse_archive(_edit_header(data, edit), "p.nsk")


def test_sample_archives_cover_every_coding(tmp_path):
    codings, versions = set(), set()
    for data in sample_archives(tmp_path):
        versions.add(split(data)[0])
        for r in parse_archive(data).records:
            codings |= {r.get("index_coding"), r.get("gap_coding")}
    assert {"packed", "huffman", "huffman_pairs", "adaptive"} <= codings and versions == {1, 2}


def test_quick_fuzz_slice(tmp_path):
    """A 2,000-case slice of benchmarks/fuzz_archive.py (which runs >= 100,000)."""
    result = run_fuzz(2000, seed=7, archives=sample_archives(tmp_path))
    assert result["failures"] == []
    assert result["max_case_s"] < 2.0


def test_codec_scale_benchmark_quick(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "codec_scale.py"
    out = tmp_path / "cs.json"
    proc = subprocess.run([sys.executable, str(script), "--quick", "--repeats", "1", "--json", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(out.read_text())
    assert {"encode_s", "decode_s", "peak_rss_bytes", "dense_bytes"} <= set(res) and res["bit_exact"]


def test_binary_half_scales_roundtrip_and_size(tmp_path):
    from nnshrink.compressed import BinaryTensor
    from nnshrink.format import read_archive, write_archive

    rng = np.random.default_rng(3)
    signs = rng.random((50, 500)) > 0.5
    scales = rng.random(50).astype(np.float32) + 0.1
    sizes = {}
    for half in (False, True):
        p = tmp_path / f"b{half}.nsk"
        write_archive(p, {"w": BinaryTensor((50, 500), signs, scales, half_scales=half)}, {})
        arch = read_archive(p)
        sizes[half] = arch.records[0]["bytes"]
        back = arch.tensors["w"]
        assert back.half_scales is half and np.array_equal(back.signs, signs)
        want = scales.astype(np.float16).astype(np.float32) if half else scales
        np.testing.assert_array_equal(back.scales, want)
        np.testing.assert_array_equal(back.to_dense(), BinaryTensor((50, 500), signs, scales, half).to_dense())
    assert sizes[False] - sizes[True] == 2 * 50


def test_serialize_is_the_written_file(tmp_path):
    assert serialize(golden_tensors(), GOLDEN_META) == GOLDEN
    assert write_archive(tmp_path / "g.nsk", golden_tensors(), GOLDEN_META, huffman=False) == len(GOLDEN)


def test_open_archive_reads_the_header_and_decodes_on_get(tmp_path):
    from nnshrink.format import open_archive

    path = tmp_path / "g.nsk"
    path.write_bytes(GOLDEN)
    full = read_archive(path)
    with open_archive(path) as a:
        assert a.metadata == GOLDEN_META and a.keys() == ["w", "b"] and "w" in a and len(a) == 2
        assert a.records == full.records and a.file_bytes == len(GOLDEN)
        np.testing.assert_array_equal(a.get("w").to_dense(), full.tensors["w"].to_dense())
        with pytest.raises(KeyError):
            a.get("nope")
    # a damaged payload is found on get(), by that record's CRC; the header still opens
    bad = bytearray(GOLDEN)
    bad[-8] ^= 1
    path.write_bytes(bytes(bad))
    with open_archive(path) as a:
        assert a.records[1]["name"] == "b"
        with pytest.raises(ChecksumError, match="'b'"):
            a.get("b")
    with pytest.raises(BadMagicError):
        path.write_bytes(b"XXXX" + GOLDEN[4:])
        open_archive(path)


def test_inspect_prints_the_header_json_of_both_versions(tmp_path, capsys):
    from nnshrink.cli import main

    for name, data in (("v2.nsk", GOLDEN), ("v1.nsk", GOLDEN_V1)):
        path = tmp_path / name
        path.write_bytes(data)
        capsys.readouterr()
        assert main(["inspect", str(path), "--header"]) == 0
        header = json.loads(capsys.readouterr().out)
        assert header["version"] == data[4] and header["records"][0]["name"] == "w"
        assert main(["inspect", str(path), "--json", "-"]) == 0
        rep = json.loads(capsys.readouterr().out)
        assert rep["format_version"] == data[4] and rep["header_bytes"] == 16 + struct.unpack_from("<I", data, 8)[0]
    assert header == json.loads(GOLDEN_V1[16:16 + 528])


def test_repack_is_idempotent_on_format_2_and_refuses_bad_input(tmp_path):
    src = GOLDEN_DIR / "v2_adaptive.nsk"
    assert repack(src, tmp_path / "again.nsk") == src.stat().st_size
    assert (tmp_path / "again.nsk").read_bytes() == src.read_bytes()
    (tmp_path / "bad.nsk").write_bytes(GOLDEN[:-3])
    with pytest.raises(HeaderError):
        repack(tmp_path / "bad.nsk", tmp_path / "out.nsk")
    assert not (tmp_path / "out.nsk").exists()
