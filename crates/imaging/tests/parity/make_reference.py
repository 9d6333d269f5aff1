#!/usr/bin/env python3
"""Writes Pillow's 224 centre crop of each JPEG here as NAME.pillow.png (lossless u8 RGB).

The same steps as the peers' `preprocess_pillow.py` variant `pillow.bilinear` (shorter side
to 224 with Python's round, Image.BILINEAR, crop box ((w-224)//2, (h-224)//2)), stopped
before its float conversion. The inputs are files of the peers' gen_jpegs.py (seed 42).
Run with any Python that has Pillow:  python3 make_reference.py
"""
import glob
import os

from PIL import Image

S = 224


def target_size(w, h):
    if w <= h:
        return S, max(S, round(h * S / w))
    return max(S, round(w * S / h)), S


here = os.path.dirname(os.path.abspath(__file__))
for path in sorted(glob.glob(os.path.join(here, "*.jpg"))):
    im = Image.open(path).convert("RGB")
    tw, th = target_size(*im.size)
    im = im.resize((tw, th), Image.BILINEAR)
    left, top = (tw - S) // 2, (th - S) // 2
    im = im.crop((left, top, left + S, top + S))
    out = path[:-4] + ".pillow.png"
    im.save(out)
    print(f"{os.path.basename(path)} -> {os.path.basename(out)} (resized {tw}x{th}, crop at {left},{top})")
import PIL
print("Pillow", PIL.__version__)
