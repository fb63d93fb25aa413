#!/usr/bin/env python3
"""An independent reader of Megatron-LM indexed datasets (the MMIDIDX .bin/.idx pair), standard
library only, for checking what ampipe writes.

Usage: read_indexed_dataset.py PREFIX [--dump]

Prints one line of JSON:
  {"dtype": "uint16", "sequences": S, "documents": D - 1, "tokens": N,
   "sha256_of_tokens": sha256 over every token, in order, as int64 little-endian,
   "document_lengths_head": [tokens of the first 10 documents]}
With --dump, then one line per document: its tokens as decimal numbers separated by single spaces
(an empty line for an empty document).

Exits 1 with a message on stderr when the files are malformed (the same checks as ampipe's reader:
counts against the .idx size, contiguous pointers, lengths covering the .bin exactly, document
indices from 0 to S, non-decreasing).
"""

import array
import hashlib
import json
import os
import struct
import sys

MAGIC = b"MMIDIDX\x00\x00"
# code -> (name, array typecode, itemsize, integer)
DTYPES = {
    1: ("uint8", "B", 1, True),
    2: ("int8", "b", 1, True),
    3: ("int16", "h", 2, True),
    4: ("int32", "i", 4, True),
    5: ("int64", "q", 8, True),
    6: ("float64", "d", 8, False),
    7: ("float32", "f", 4, False),
    8: ("uint16", "H", 2, True),
}
HEADER = struct.Struct("<9sQBQQ")  # magic, version, dtype code, sequence count, document count


class Malformed(Exception):
    pass


def typed_array(typecode, itemsize, data):
    """An array of little-endian values of `itemsize` bytes from `data`."""
    a = array.array(typecode)
    if a.itemsize != itemsize:
        raise RuntimeError(f"array type {typecode!r} has {a.itemsize} bytes here, not {itemsize}")
    a.frombytes(data)
    if sys.byteorder != "little":
        a.byteswap()
    return a


def documents(bin_path, typecode, itemsize, lengths, doc_idx):
    """Yields each document's tokens (an array) in order, reading the .bin sequentially."""
    with open(bin_path, "rb") as f:
        for d in range(len(doc_idx) - 1):
            tokens = array.array(typecode)
            for s in range(doc_idx[d], doc_idx[d + 1]):
                n = lengths[s]
                tokens.extend(typed_array(typecode, itemsize, f.read(n * itemsize)))
            yield tokens


def read_index(idx_path):
    with open(idx_path, "rb") as f:
        idx = f.read()
    if len(idx) < HEADER.size:
        raise Malformed(f"{idx_path}: {len(idx)} bytes, fewer than the {HEADER.size}-byte header")
    magic, version, code, seq_count, doc_count = HEADER.unpack_from(idx, 0)
    if magic != MAGIC:
        raise Malformed(f"{idx_path}: bad magic {magic!r}")
    if version != 1:
        raise Malformed(f"{idx_path}: version {version} is not 1")
    if code not in DTYPES:
        raise Malformed(f"{idx_path}: unknown dtype code {code}")
    need = HEADER.size + 12 * seq_count + 8 * doc_count
    if need != len(idx):
        raise Malformed(
            f"{idx_path}: sequence count {seq_count} and document index count {doc_count} need "
            f"{need} bytes, the file has {len(idx)}"
        )
    if doc_count < 1:
        raise Malformed(f"{idx_path}: document index count 0")
    off = HEADER.size
    lengths = typed_array("i", 4, idx[off : off + 4 * seq_count])
    off += 4 * seq_count
    pointers = typed_array("q", 8, idx[off : off + 8 * seq_count])
    off += 8 * seq_count
    doc_idx = typed_array("q", 8, idx[off : off + 8 * doc_count])
    return code, lengths, pointers, doc_idx


def main(argv):
    args = [a for a in argv[1:] if a != "--dump"]
    dump = "--dump" in argv[1:]
    if len(args) != 1:
        print("usage: read_indexed_dataset.py PREFIX [--dump]", file=sys.stderr)
        return 2
    prefix = args[0]
    idx_path, bin_path = prefix + ".idx", prefix + ".bin"
    try:
        code, lengths, pointers, doc_idx = read_index(idx_path)
        name, typecode, itemsize, integer = DTYPES[code]
        if not integer:
            raise Malformed(f"{idx_path}: dtype {name} does not hold token ids")
        bin_size = os.path.getsize(bin_path)
        end = 0
        for i, (length, pointer) in enumerate(zip(lengths, pointers)):
            if length < 0:
                raise Malformed(f"{idx_path}: sequence {i} has negative length {length}")
            if pointer != end:
                raise Malformed(f"{idx_path}: sequence {i} pointer {pointer} is not contiguous (expected {end})")
            end += length * itemsize
        if end != bin_size:
            raise Malformed(f"{bin_path}: {bin_size} bytes, but the lengths cover {end}")
        seq_count = len(lengths)
        if doc_idx[0] != 0 or doc_idx[-1] != seq_count:
            raise Malformed(f"{idx_path}: document indices run from {doc_idx[0]} to {doc_idx[-1]}, not 0 to {seq_count}")
        for d in range(1, len(doc_idx)):
            if doc_idx[d] < doc_idx[d - 1]:
                raise Malformed(f"{idx_path}: document index {d} decreases")
    except (Malformed, OSError) as e:
        print(f"read_indexed_dataset.py: {e}", file=sys.stderr)
        return 1

    sha = hashlib.sha256()
    total = 0
    head = []
    for tokens in documents(bin_path, typecode, itemsize, lengths, doc_idx):
        as_int64 = array.array("q", tokens)
        if sys.byteorder != "little":
            as_int64.byteswap()
        sha.update(as_int64.tobytes())
        total += len(tokens)
        if len(head) < 10:
            head.append(len(tokens))
    summary = {
        "dtype": name,
        "sequences": len(lengths),
        "documents": len(doc_idx) - 1,
        "tokens": total,
        "sha256_of_tokens": sha.hexdigest(),
        "document_lengths_head": head,
    }
    out = sys.stdout
    out.write(json.dumps(summary) + "\n")
    if dump:
        for tokens in documents(bin_path, typecode, itemsize, lengths, doc_idx):
            out.write(" ".join(map(str, tokens)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
