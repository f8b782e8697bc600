"""Bit-level codecs for the archive: fixed-width packing, relative-gap sparse positions,
canonical Huffman, context-adaptive range coding of masks and indices. Each numba kernel
sits beside a plain reference it is tested against."""

from .adaptive import decode_mask, decode_symbols, encode_mask, encode_symbols
from .bitpack import pack_bits, unpack_bits
from .huffman import HuffmanCode, huffman_decode, huffman_encode, code_lengths
from .sparse import gaps_from_mask, mask_from_gaps

__all__ = ["pack_bits", "unpack_bits", "HuffmanCode", "huffman_encode", "huffman_decode", "code_lengths",
           "gaps_from_mask", "mask_from_gaps", "encode_mask", "decode_mask", "encode_symbols", "decode_symbols"]
