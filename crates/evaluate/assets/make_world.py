#!/usr/bin/env python3
"""Writes crates/evaluate/assets/world-50m.bin, the map under geoloc's plots, from Natural Earth's
1:50m countries (public domain) as the npm package world-atlas 2.0.2 ships them (TopoJSON,
ISC-licensed packaging; sha256 of its tarball checked below).

TopoJSON stores each shared boundary once, as an "arc": an arc that two countries use is a
border, one that a single country uses is a coastline. The file keeps the arcs (quantized and
delta-encoded, as TopoJSON has them, in zigzag varints), each arc's kind, and the land polygons
(the package's `land` object) as lists of arc references, for filling.

Layout (little-endian):
  b"GEOW1", then f64 x 4: scale_x, scale_y, translate_x, translate_y (lon = x * scale_x + translate_x)
  u32 arcs; per arc: u8 kind (0 coastline, 1 border, 2 neither), varint points, then per
      point zigzag-varint dx, dy (deltas from the previous point; the first from 0)
  u32 polygons; per polygon: varint rings; per ring: varint refs, then zigzag-varint arc
      references (i, or ~i for arc i reversed)

Run:  python3 make_world.py   (needs npm on PATH; writes next to this script)
"""
import hashlib
import json
import os
import struct
import subprocess
import tarfile
import tempfile

PACKAGE = "world-atlas@2.0.2"
SHA256 = "032e7765f2ce00edaeafec23ff22bc3b77e42987c257da944cc585b452c05b97"
here = os.path.dirname(os.path.abspath(__file__))


def varint(n, out):
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return


def zigzag(n, out):
    varint((n << 1) ^ (n >> 63) if n < 0 else n << 1, out)


def main():
    with tempfile.TemporaryDirectory() as d:
        subprocess.run(["npm", "pack", PACKAGE, "--silent"], cwd=d, check=True,
                       stdout=subprocess.DEVNULL)
        tgz = os.path.join(d, "world-atlas-2.0.2.tgz")
        digest = hashlib.sha256(open(tgz, "rb").read()).hexdigest()
        assert digest == SHA256, f"{PACKAGE}: sha256 {digest}, expected {SHA256}"
        with tarfile.open(tgz) as t:
            topo = json.load(t.extractfile("package/countries-50m.json"))

    arcs = topo["arcs"]
    uses = [0] * len(arcs)

    def refs_of(geom):
        if geom["type"] == "Polygon":
            return [geom["arcs"]]
        if geom["type"] == "MultiPolygon":
            return geom["arcs"]
        return []

    for g in topo["objects"]["countries"]["geometries"]:
        for poly in refs_of(g):
            for ring in poly:
                for r in ring:
                    uses[r if r >= 0 else ~r] += 1
    out = bytearray(b"GEOW1")
    tr = topo["transform"]
    out += struct.pack("<4d", tr["scale"][0], tr["scale"][1], tr["translate"][0], tr["translate"][1])
    out += struct.pack("<I", len(arcs))
    for i, a in enumerate(arcs):
        out.append({1: 0, 2: 1}.get(uses[i], 2))
        varint(len(a), out)
        for dx, dy in a:
            zigzag(dx, out)
            zigzag(dy, out)
    polys = [p for g in topo["objects"]["land"]["geometries"] for p in refs_of(g)]
    out += struct.pack("<I", len(polys))
    for poly in polys:
        varint(len(poly), out)
        for ring in poly:
            varint(len(ring), out)
            for r in ring:
                zigzag(r, out)
    path = os.path.join(here, "world-50m.bin")
    with open(path, "wb") as f:
        f.write(out)
    kinds = [sum(1 for u in uses if u == k) for k in (1, 2)]
    print(f"{path}: {len(out)} bytes, {len(arcs)} arcs ({kinds[0]} coastline, {kinds[1]} border), "
          f"{sum(len(a) for a in arcs)} points, {len(polys)} land polygons")


if __name__ == "__main__":
    main()
