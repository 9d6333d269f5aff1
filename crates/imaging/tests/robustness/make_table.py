#!/usr/bin/env python3
"""Writes expected.tsv: the outcome geoloc-imaging must give for each of the 360 files of
../shared/data/robustness/, under the default options (greyscale refused) and with
greyscale=convert.

The expectation is derived from Pillow's verdict in manifest.csv by MAP below; every file
where geoloc's outcome differs from that derivation is listed in OVERRIDES with the reason.
Rerun after changing either:  python3 make_table.py ../../../../../shared/data/robustness/manifest.csv
"""
import csv
import sys

# Pillow modes without colour channels: the greyscale policy applies.
GREY_MODES = {"L", "LA", "1", "I;16", "I"}


def mapped(row, convert):
    """The outcome Pillow's verdict implies, in geoloc's reason codes."""
    r = row["pillow_result"]
    if r.startswith("ok"):
        return "ok" if convert or row["mode"] not in GREY_MODES else "greyscale"
    if r.startswith("DecompressionBombError"):
        return "too-large"
    if row["category"] == "empty-file":
        return "empty-file"
    if "truncated" in r.lower():
        return "truncated-image"
    if r.startswith("UnidentifiedImageError"):
        return "unsupported-format"
    return "corrupt-image"


# Why geoloc differs from the derivation. Groups share a reason.
PILLOW_CALLS_IT_TRUNCATED = (
    "fuzzed JPEG that Pillow reports as truncated when libjpeg runs out of data inside a "
    "damaged scan; the file itself goes on, and our decoders stop at the damage: corrupt-image")
PILLOW_CANNOT_IDENTIFY = (
    "Pillow's plugin refuses the damaged header and reports 'cannot identify'; we recognise the "
    "JPEG/PNG signature and the decoder names the damage (bad marker, bit depth, colour type, "
    "CRC, huffman table): refused either way, as corrupt-image")
HEADER_CUT_SHORT = (
    "Pillow cannot identify it; the decoder finds the headers cut off mid-segment "
    "('not enough bytes'): refused either way, as truncated-image")
DAMAGED_SCAN_PILLOW_FILLS = (
    "damaged entropy-coded data that libjpeg-turbo decodes with a warning, filling the damage "
    "with whatever the broken stream gives; zune-jpeg (strict) and jpeg-decoder both refuse it. "
    "A photo with a garbage region is worse than no photo for training: we refuse it")
GREY16_ALPHA = (
    "PNG colour type 4 at 16 bits (grey + alpha); Pillow opens it as RGBA, but it has no "
    "colour channels, so the greyscale policy applies")

OVERRIDES = {}
for f in ["194531363df5b73f59c4c0517422f917",
          "46f5d9c1b0fe352353688f736e5617b6", "59d3b529c78ac722127c41ba75b3355b",
          "5c67195f6993c9f8d0d32d4ffe0d8e62", "786b67badc535fc95a4a76c29a0e0146",
          "7dbf474f80e466e9e25ee46b84166420", "9efd60f04cd971daa83d3131e6d6f389",
          "de5884cec093257d239f3b8be3e2f2e5", "eecb78b937a7c5f04aae2f5b0f5b5acc",
          "f8e19feecd246156b5d7e79efc455e99", "fd44dc63fa7bdd12ee34fc602231ef02"]:
    OVERRIDES[f"metadata-extractor-images/{f}.jpg"] = ("corrupt-image", "corrupt-image", PILLOW_CALLS_IT_TRUNCATED)
for f in ["metadata-extractor-images/2183d39878e734cf79b62428b02fafb5.jpg",
          "metadata-extractor-images/5633ed9d0eb700d0093bf85d86a95ebf.jpg",
          "metadata-extractor-images/627c0779eb46b98f751187c5c9f43aa3.jpg",
          "metadata-extractor-images/90e46387f562ca8fa106b51dfcda1dc6.jpg",
          "metadata-extractor-images/a7326ba8f3f4559991126474dd30083d.jpg",
          "metadata-extractor-images/c8bc97335529d069a753c67475b8c82c.jpg",
          "metadata-extractor-images/de4ae285a275bcfe2ac87c0126742552.jpg",
          "metadata-extractor-images/eddea4ef9629be031f750a8ff0b7497c.jpg",
          "metadata-extractor-images/xc1n0g08.png", "metadata-extractor-images/xc9n2c08.png",
          "metadata-extractor-images/xd0n2c08.png", "metadata-extractor-images/xd3n2c08.png",
          "metadata-extractor-images/xd9n2c08.png", "metadata-extractor-images/xhdn0g08.png",
          "pillow-tests/broken.png"]:
    OVERRIDES[f] = ("corrupt-image", "corrupt-image", PILLOW_CANNOT_IDENTIFY)
for f in ["6de166ee2a3a60df9017650e2a808408", "7e7cdf7f4ee50b308531313bbf43e0c3",
          "8e330afbd99ba01b66570ed62fcdc6ab", "acce3629083f0e348e94fb58f952d3de",
          "cc23dd79637b606cf5ba234a037e17ba", "e18bb52107598f65b81b02be2c6c5124"]:
    OVERRIDES[f"metadata-extractor-images/{f}.jpg"] = ("truncated-image", "truncated-image", HEADER_CUT_SHORT)
for f in ["ianare-exif-samples/corrupted.jpg",
          "metadata-extractor-images/7997b6b229f25315d33f5c7085e37500.jpg",
          "metadata-extractor-images/8e5e74dbf9b68a322fbb9512db837329.jpg"]:
    OVERRIDES[f] = ("corrupt-image", "corrupt-image", DAMAGED_SCAN_PILLOW_FILLS)
OVERRIDES["pillow-tests/hopper_bad_exif.jpg"] = (
    "greyscale", "corrupt-image",
    "greyscale JPEG (refused by the policy on its header); with greyscale=convert its damaged "
    "scan is refused: " + DAMAGED_SCAN_PILLOW_FILLS)
OVERRIDES["metadata-extractor-images/c3018ebe53d0046eecb58858ca869a99.jpg"] = (
    "greyscale", "corrupt-image",
    "fuzzed single-component JPEG: the greyscale policy refuses it on its header, before the "
    "damaged data is read; with greyscale=convert the damage is found: corrupt-image")
for f in ["metadata-extractor-images/b55977028a3a574336966b6536640fc9.jpg",
          "metadata-extractor-images/f6b4389c3cf0f5997b2e5a4b905aea8d.jpg"]:
    OVERRIDES[f] = ("corrupt-image", "corrupt-image",
                    "fuzzed JPEG whose scan uses a quantisation table that was never defined; "
                    "libjpeg-turbo decodes on regardless, both our decoders refuse it")
OVERRIDES["metadata-extractor-images/5482a54657765056f1a94116a8dbffe7.jpg"] = (
    "corrupt-image", "corrupt-image",
    "fuzzed CMYK JPEG whose Adobe APP14 segment names colour transform 199 (valid: 0, 1, 2); "
    "libjpeg-turbo ignores it, both our decoders refuse it")
OVERRIDES["metadata-extractor-images/b0b8914cc5f7a6eff409f16d8cc236c5.jpg"] = (
    "ok", "ok",
    "the one file we accept that Pillow refuses: zune-jpeg decodes it in strict mode without "
    "error (160x60); libjpeg-turbo stops at 'broken data stream'")
OVERRIDES["metadata-extractor-images/xcsn0g01.png"] = (
    "greyscale", "corrupt-image",
    "PngSuite's 'incorrect IDAT checksum' file: Pillow does not verify zlib's Adler-32, the "
    "png crate does and refuses it (with greyscale=convert; by default the grey policy refuses "
    "it on its header first)")
for f in ["basi4a16", "basn4a16", "bgai4a16", "bggn4a16"]:
    OVERRIDES[f"metadata-extractor-images/{f}.png"] = ("greyscale", "ok", GREY16_ALPHA)
OVERRIDES["pillow-tests/zero_width.gif"] = (
    "too-large", "too-large",
    "its first frame is declared to reach row 66601, past the 65500 side limit: refused on the "
    "header before any allocation (Pillow cannot identify it)")


def main():
    manifest = sys.argv[1]
    rows = list(csv.DictReader(open(manifest, newline="")))
    unused = set(OVERRIDES) - {r["file"] for r in rows}
    assert not unused, f"overrides for files not in the manifest: {unused}"
    with open("expected.tsv", "w", newline="") as out:
        out.write("# Generated by make_table.py from manifest.csv: do not edit by hand.\n")
        out.write("file\tdefault\tconvert\tpillow\twhy\n")
        for r in rows:
            f = r["file"]
            d, c = mapped(r, False), mapped(r, True)
            why = "as Pillow"
            if f in OVERRIDES:
                d, c, why = OVERRIDES[f]
            pillow = r["pillow_result"].split(":")[0].split(" (")[0]
            out.write(f"{f}\t{d}\t{c}\t{pillow}\t{why}\n")
    print(f"wrote expected.tsv: {len(rows)} files, {len(OVERRIDES)} overrides")


if __name__ == "__main__":
    main()
