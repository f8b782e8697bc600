"""The .nsk archive (see SPEC.md beside this file): writer, validating reader, errors."""

from .errors import (BadMagicError, ChecksumError, FormatError, HeaderError, HuffmanTableError, LimitError, RecordError,
                     StreamError)
from .layout import DEFAULT_MAX_ELEMENTS
from .reader import Archive, ArchiveFile, open_archive, parse_archive, read_archive
from .repack import repack
from .writer import serialize, write_archive

__all__ = ["serialize", "write_archive", "repack", "open_archive", "read_archive", "parse_archive", "Archive",
           "ArchiveFile",
           "DEFAULT_MAX_ELEMENTS", "FormatError", "BadMagicError", "HeaderError", "RecordError", "ChecksumError",
           "HuffmanTableError", "StreamError", "LimitError"]
