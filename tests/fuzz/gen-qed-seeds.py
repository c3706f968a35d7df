#!/usr/bin/env python3
"""Write the text seed corpus of fuzz-qed (tests/fuzz/corpus/qed/*.txt).
Each seed is "hex:" followed by patches (offset: 2 bytes, length: 1 byte,
data) applied to the fuzzer's built-in template image (4 KiB clusters,
table_size 1; see fuzz-qed.c for its layout)."""
import struct

from seedgen import patch
import seedgen

CS = 4096


def le64(v):
    return struct.pack('<Q', v)


def le32(v):
    return struct.pack('<I', v)


SEEDS = {
    'valid': [],
    'need-check': [patch(16, le64(2))],
    'backing-name': [patch(16, le64(1)), patch(56, le32(64) + le32(5)), patch(64, b'b.raw')],
    'l2-entry-past-eof': [patch(2 * CS + 8, le64(0x100000))],
    'l2-entry-unaligned': [patch(2 * CS, le64(3 * CS + 512))],
    'l1-entry-in-header': [patch(CS, le64(0))],
    'l1-entry-past-eof': [patch(CS, le64(1 << 40))],
    'table-size-4': [patch(8, le32(4))],
    'image-size-huge': [patch(48, le64(1 << 40))],
    'double-reference': [patch(2 * CS + 24, le64(3 * CS))],
}


def main():
    seedgen.write_corpus('qed', SEEDS)


if __name__ == '__main__':
    main()
