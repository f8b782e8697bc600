"""Dense-and-sparse outliers in `shared` records: golden bytes pin SPEC.md, attacks get typed errors."""

import json
import struct
import zlib

import numpy as np
import pytest

from nnshrink.compressed import SharedTensor
from nnshrink.errors import ConfigError
from nnshrink.format import RecordError, StreamError, parse_archive, serialize

META = {"model": None, "config": {}, "nnshrink_version": "test", "report": {}}


def tiny():
    outl = np.zeros((2, 4), bool)
    outl[1, 1] = True  # flat position 5
    return SharedTensor((2, 4), np.array([0.5, -1.0], np.float32), np.array([0, 1, 1, 0, 0, 0, 0, 1]), 1, None,
                        outl, np.array([2.0], np.float16))


# The header edits below need a plain JSON header, so these archives are written in format 1
# (the outlier record is the same in both versions; format 2 only packs the header).
def _split(data: bytes):
    hlen = struct.unpack_from("<I", data, 8)[0]
    return json.loads(data[16:16 + hlen]), data[16 + hlen:]


def test_golden_bytes_of_an_outlier_record():
    data = serialize({"w": tiny()}, META, huffman=False, version=1)
    header, body = _split(data)
    rec = header["records"][0]
    assert rec["outliers"] == 1 and rec["outlier_gap_bits"] == 8 and rec["outlier_gap_count"] == 1
    assert rec["outlier_gap_coding"] == "packed"
    assert rec["parts"] == [["codebook", 8], ["index", 1], ["outlier_values", 2], ["outlier_gap", 1]]
    assert body == (b"\x00\x00\x00?\x00\x00\x80\xbf"  # codebook 0.5, -1.0 float32 LE
                    b"a"  # indices 0,1,1,0,0,0,0,1 as 1-bit MSB-first: 0110 0001
                    b"\x00@"  # outlier value 2.0 as float16 LE
                    b"\x05"  # outlier gap 5 (8-bit): flat position 5
                    b"\x00\x00\x00\x00")  # pad to 8
    t = parse_archive(data).tensors["w"]
    np.testing.assert_array_equal(t.to_dense(), [[0.5, -1, -1, 0.5], [0.5, 2.0, 0.5, -1]])


def test_round_trip_sparse_shared_with_outliers():
    rng = np.random.default_rng(0)
    shape = (30, 70)
    mask = rng.random(shape) < 0.5
    outl = rng.random(shape) < 0.03
    t = SharedTensor(shape, np.array([-1, 0.25, 2], np.float32), rng.integers(0, 3, int(mask.sum())), 2, mask,
                     outl, rng.standard_normal(int(outl.sum())).astype(np.float16))
    for huffman in (False, True):
        for version in (1, 2):
            arch = parse_archive(serialize({"w": t}, META, huffman=huffman, version=version))
            np.testing.assert_array_equal(arch.dense_arrays()["w"], t.to_dense())
        np.testing.assert_array_equal(arch.dense_arrays()["w"], t.to_dense())
        np.testing.assert_array_equal(arch.tensors["w"].outlier_mask, outl)


def _edit(data: bytes, **kw) -> bytes:
    header, body = _split(data)
    header["records"][0].update(kw)
    hb = json.dumps(header).encode()
    return data[:8] + struct.pack("<II", len(hb), zlib.crc32(hb)) + hb + body


def _patch_body(data: bytes, offset: int, byte: int) -> bytes:
    header, body = _split(data)
    body = bytearray(body)
    body[offset] = byte
    rec = header["records"][0]
    return _edit(data[:len(data) - len(body)] + bytes(body),
                 crc32=zlib.crc32(bytes(body[rec["offset"]: rec["offset"] + rec["length"]])))


@pytest.mark.parametrize("edit, error, words", [
    (dict(outliers=0), RecordError, "outliers"),
    (dict(outliers=9), RecordError, "outliers"),
    (dict(outliers=True), RecordError, "outliers"),
    (dict(outlier_gap_bits=2), RecordError, "outlier_gap_bits"),
    (dict(outlier_gap_coding="zip"), RecordError, "outlier_gap_coding"),
    (dict(outlier_gap_count=0), RecordError, "outlier_gap"),
    (dict(parts=[["codebook", 8], ["index", 1], ["outlier_values", 4], ["outlier_gap", 1]]), RecordError,
     "outlier_values"),
    (dict(parts=[["codebook", 8], ["index", 1], ["outlier_gap", 1], ["outlier_values", 2]]), RecordError, "part"),
])
def test_outlier_header_attacks(edit, error, words):
    with pytest.raises(error, match=words):
        parse_archive(_edit(serialize({"w": tiny()}, META, huffman=False, version=1), **edit))


def test_outlier_keys_without_outliers_are_refused():
    header, body = _split(serialize({"w": tiny()}, META, huffman=False, version=1))
    del header["records"][0]["outliers"]
    hb = json.dumps(header).encode()
    with pytest.raises(RecordError, match="unknown keys"):
        parse_archive(b"NSK\n\x01\x00\x00\x00" + struct.pack("<II", len(hb), zlib.crc32(hb)) + hb + body)


def test_outlier_stream_attacks():
    data = serialize({"w": tiny()}, META, huffman=False, version=1)
    with pytest.raises(StreamError, match="outlier_gap stream"):
        parse_archive(_patch_body(data, 11, 9))  # gap 9 runs past the end of an 8-element tensor
    with pytest.raises(StreamError, match="outlier_gap stream"):
        parse_archive(_patch_body(data, 11, 255))  # a filler only: 0 entries, record says 1


def test_writer_refuses_inconsistent_outliers():
    t = tiny()
    bad = SharedTensor(t.shape, t.codebook, t.indices, t.bits, None, t.outlier_mask, np.zeros(2, np.float16))
    with pytest.raises(ConfigError, match="outlier values"):
        serialize({"w": bad}, META)
