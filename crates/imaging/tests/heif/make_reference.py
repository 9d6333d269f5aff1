#!/usr/bin/env python3
"""Writes the reference decodes of the shared HEIF photos (../shared/data/photos/*/*.heif):
for each, NAME.json (upright size, libheif version) and NAME.thumb.png: the upright RGB
image averaged over 32x32 blocks (partial blocks at the right and bottom edges dropped),
which geoloc's test computes the same way from its own decode.

The reference decoder is pillow-heif (libheif with libde265), which applies the HEIF
transformations (irot, imir) as libheif does by default; EXIF orientation is not applied a
second time (pillow-heif removes it after decoding, as the HEIF specification asks).

Run:  python3 -m venv /tmp/heifref && /tmp/heifref/bin/pip install pillow-heif==1.8.1 numpy
      /tmp/heifref/bin/python make_reference.py ../../../../../shared/data/photos
"""
import glob
import json
import os
import sys

import numpy as np
import pillow_heif
from PIL import Image

B = 32
here = os.path.dirname(os.path.abspath(__file__))
photos = sys.argv[1]
for path in sorted(glob.glob(os.path.join(photos, "*", "*.heif"))):
    heif = pillow_heif.open_heif(path, convert_hdr_to_8bit=True)
    im = heif.to_pillow().convert("RGB")
    a = np.asarray(im, dtype=np.float64)
    h, w = a.shape[0] // B * B, a.shape[1] // B * B
    t = a[:h, :w].reshape(h // B, B, w // B, B, 3).mean(axis=(1, 3))
    name = os.path.basename(path)[:-5]
    Image.fromarray(np.round(t).astype(np.uint8)).save(os.path.join(here, name + ".thumb.png"))
    meta = {
        "file": os.path.relpath(path, photos),
        "width": im.size[0],
        "height": im.size[1],
        "block": B,
        "libheif": pillow_heif.libheif_version(),
        "pillow_heif": pillow_heif.__version__,
    }
    with open(os.path.join(here, name + ".json"), "w") as f:
        json.dump(meta, f, indent=1)
    print(name, meta)
