"""The .nsk archive (see SPEC.md beside this file): writer, validating reader, errors."""

from .errors import (BadMagicError, ChecksumError, FormatError, HeaderError, HuffmanTableError, RecordError,
                     StreamError)
from .reader import Archive, parse_archive, read_archive
from .writer import write_archive

__all__ = ["write_archive", "read_archive", "parse_archive", "Archive", "FormatError", "BadMagicError", "HeaderError",
           "RecordError", "ChecksumError", "HuffmanTableError", "StreamError"]
