#!/usr/bin/env python3
"""Writes splits.tsv: the golden split of 300 ids under the default split config.

The reference is the `xxhash` package from PyPI (the C implementation of xxh64), not the
code under test: ingest must put each id in the split written here, on every machine and in
every version. Run once; commit the output. Needs `pip install xxhash`.

    python3 crates/ingest/tests/golden/make_splits.py > crates/ingest/tests/golden/splits.tsv
"""
import hashlib

import xxhash

KEY = 0x0067656F6C6F63  # "geoloc"
TRAIN, VAL = 0.8, 0.1

print("# id\tsplit  (xxh64(id, seed=0x67656f6c6f63) >> 11) / 2**53 cut at 0.8 and 0.9")
for i in range(300):
    # MediaEval-style ids: MD5 hex without zero padding, and a few other shapes.
    ident = format(int(hashlib.md5(str(i).encode()).hexdigest(), 16), "x")
    if i % 50 == 7:
        ident = f"{i}_photo.jpg"
    u = (xxhash.xxh64_intdigest(ident.encode(), seed=KEY) >> 11) / 2**53
    split = "train" if u < TRAIN else ("val" if u < TRAIN + VAL else "test")
    print(f"{ident}\t{split}")
