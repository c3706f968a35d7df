#!/usr/bin/env python3
"""Write the text seed corpus (kept small: the fuzz-smoke suite mutates each
seed 2000 times) of fuzz-qcow2 (tests/fuzz/corpus/qcow2/*.txt).
Each seed is "hex:" followed by patches (offset: 2 bytes, length: 1 byte,
data) applied to the fuzzer's built-in template image (512-byte clusters;
see fuzz-qcow2.c for its layout)."""
from seedgen import patch
import seedgen

SEEDS = {
    'valid': [],
    'snapshot-extra-huge': [patch(5 * 1024 + 36, bytes.fromhex('7fffffff'))],
    'dirty-lazy': [patch(72, bytes.fromhex('0000000000000001')),
                   patch(80, bytes.fromhex('0000000000000001'))],
    'l2-entry-past-eof': [patch(4 * 512, bytes.fromhex('8000000010000000'))],
    'compressed-bad': [patch(8 * 512, bytes.fromhex('ffffffffffffffff'))],
    'v2': [patch(4, bytes.fromhex('00000002'))],
}


def main():
    seedgen.write_corpus('qcow2', SEEDS)


if __name__ == '__main__':
    main()
