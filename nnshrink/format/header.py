"""The header envelope (SPEC.md): version 1 plain JSON, version 2 deflated JSON.

Why deflate: a LeNet archive's JSON header was 1.6 KB, 9% of a 17 KB file; zlib with a
preset dictionary of the keys every header repeats brings it to a few hundred bytes and
stays stdlib-only. The inflated size is declared up front and capped before inflating,
so a small header can never inflate into a large allocation.
"""

from __future__ import annotations

import json
import struct
import zlib

from ..errors import ConfigError
from .errors import HeaderError
from .layout import ALIGN, HEADER_DICT, MAGIC, MAX_HEADER, MAX_JSON, PREAMBLE


def _json_bytes(header: dict) -> bytes:
    try:
        return json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"archive metadata is not JSON-serialisable: {exc}") from None


def pack_header(header: dict, version: int) -> bytes:
    """The header bytes (after the preamble) for ``header``, padded so the data section
    starts at a multiple of 8: version 1 with spaces, version 2 with zero bytes."""
    text = _json_bytes(header)
    if version == 1:
        out, pad = text, b" "
    else:
        if len(text) > MAX_JSON:
            raise ConfigError(f"archive header is {len(text)} bytes of JSON, over the {MAX_JSON}-byte limit")
        z = zlib.compressobj(9, zlib.DEFLATED, 15, 9, zlib.Z_DEFAULT_STRATEGY, HEADER_DICT)
        out, pad = struct.pack("<I", len(text)) + z.compress(text) + z.flush(), b"\0"
    out += pad * (-(PREAMBLE + len(out)) % ALIGN)
    if len(out) > MAX_HEADER:
        raise ConfigError(f"archive header is {len(out)} bytes, over the {MAX_HEADER}-byte limit")
    return out


def header_text(hbytes: bytes, version: int, source: str) -> bytes:
    """The JSON text of a header's bytes (CRC already checked); HeaderError if the envelope is bad."""
    if version == 1:
        return hbytes
    if len(hbytes) < 4:
        raise HeaderError(f"{source}: version 2 header of {len(hbytes)} bytes has no JSON length")
    size = struct.unpack_from("<I", hbytes, 0)[0]
    if not 2 <= size <= MAX_JSON:
        raise HeaderError(f"{source}: inflated header length {size} is outside [2, {MAX_JSON}]")
    z = zlib.decompressobj(15, HEADER_DICT)
    try:
        text = z.decompress(hbytes[4:], size)  # never more than the declared size
    except zlib.error as exc:
        raise HeaderError(f"{source}: header does not inflate ({str(exc)[:60]})") from None
    if len(text) != size or not z.eof or z.unconsumed_tail:
        raise HeaderError(f"{source}: header inflates to other than its declared {size} bytes")
    if len(z.unused_data) >= ALIGN or z.unused_data.strip(b"\0"):
        raise HeaderError(f"{source}: header padding must be at most 7 zero bytes")
    return text


def split(data: bytes) -> tuple[int, dict, bytes]:
    """(version, header dict, data section) of a well-formed archive: for tests and the fuzzer,
    which rewrite headers; readers use ``reader.parse_archive``."""
    version, hlen = struct.unpack_from("<HxxI", data, 4)
    text = header_text(bytes(data[PREAMBLE: PREAMBLE + hlen]), version, "<archive>")
    return version, json.loads(text), bytes(data[PREAMBLE + hlen:])


def join(version: int, header: dict, body: bytes) -> bytes:
    """An archive from a (possibly edited) header and data section, preamble and CRC recomputed."""
    hb = pack_header(header, version)
    return MAGIC + struct.pack("<HHII", version, 0, len(hb), zlib.crc32(hb)) + hb + body
