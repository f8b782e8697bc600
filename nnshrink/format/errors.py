"""Typed errors for malformed archives; each message names the file and the record."""

from ..errors import NNShrinkError


class FormatError(NNShrinkError):
    """An .nsk file is malformed, truncated, tampered with, or of an unknown version."""


class BadMagicError(FormatError):
    """The file does not start with the .nsk magic bytes."""


class HeaderError(FormatError):
    """The preamble or the JSON header is malformed or out of limits."""


class RecordError(FormatError):
    """A record's description is inconsistent (shape vs counts, ranges, bit widths...)."""


class ChecksumError(FormatError):
    """A CRC-32 does not match: the bytes were corrupted."""


class HuffmanTableError(FormatError):
    """A stored code-length table is not a complete prefix-free code."""


class StreamError(FormatError):
    """A packed or Huffman stream does not decode to what its record says."""


class LimitError(FormatError):
    """A valid-looking file asks for more work than the reader's limits allow."""


SHOW_LIMIT = 80


def printable(text: str) -> str:
    """``text`` with control and other non-printable characters escaped: safe on a terminal."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def show(text, limit: int = SHOW_LIMIT) -> str:
    """A name read from a file, quoted, escaped and cut to ``limit`` characters, for messages."""
    body = printable(text)
    if len(body) > limit:
        body = body[:limit] + f"... ({len(str(text))} characters)"
    return f"'{body}'"
