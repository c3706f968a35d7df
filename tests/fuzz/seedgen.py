"""What the seed generators share (gen-qcow2-seeds.py, gen-qed-seeds.py):
a patch in the text form the image fuzzers read (offset: 2 bytes, length:
1 byte, data), and writing the seeds as corpus/<fuzzer>/<name>.txt."""
import os
import sys


def patch(off, data):
    return '%04x %02x %s' % (off, len(data), data.hex())


def write_corpus(fuzzer, seeds):
    """Write seeds ({name: [patch, ...]}) into the directory given as the
    first argument, by default tests/fuzz/corpus/<fuzzer>."""
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), 'corpus', fuzzer)
    os.makedirs(out, exist_ok=True)
    for name, patches in seeds.items():
        with open(os.path.join(out, name + '.txt'), 'w') as f:
            f.write('hex:' + '\n'.join(patches) + '\n')
