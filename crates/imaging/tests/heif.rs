//! HEIF/HEIC photos (the two phone photos of ../shared/data/photos) decoded through libheif
//! against pillow-heif's decode of the same files (`tests/heif/make_reference.py`): the
//! upright size, and the image averaged over 32x32 blocks within one level.
//!
//! Needs libheif (`cargo xtask fetch-heif`): skipped with a message where it is absent,
//! required under `GEOLOC_REQUIRE_SHARED=1` (CI fetches it).

use geoloc_imaging::decode::{decode, DecodeOptions, Format};
use std::path::Path;

fn require(what: &str) -> bool {
    if std::env::var("GEOLOC_REQUIRE_SHARED").is_ok_and(|v| v == "1") {
        panic!("{what}, and GEOLOC_REQUIRE_SHARED=1 requires it");
    }
    eprintln!("SKIP: {what}");
    false
}

#[test]
fn shared_heif_photos_match_the_reference_decoder() {
    let Some(shared) = geoloc_core::fixtures::shared_dir(env!("CARGO_MANIFEST_DIR")) else {
        return;
    };
    match geoloc_imaging::heif::available() {
        Ok(lib) => eprintln!("using {lib}"),
        Err(e) => {
            require(&e);
            return;
        }
    }
    let refs = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/heif");
    let mut n = 0;
    for e in std::fs::read_dir(&refs).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        let file = shared
            .join("data/photos")
            .join(meta["file"].as_str().unwrap());
        let bytes = std::fs::read(&file).unwrap();
        let d = match decode(&bytes, &DecodeOptions::default(), None) {
            Ok(d) => d,
            Err(e) => panic!("{}: {e}", file.display()),
        };
        assert_eq!(d.info.format, Format::Heif);
        let (w, h) = (
            meta["width"].as_u64().unwrap() as u32,
            meta["height"].as_u64().unwrap() as u32,
        );
        assert_eq!(
            d.image.dimensions(),
            (w, h),
            "{}: upright size",
            file.display()
        );
        // Block means, as the reference computed them.
        let b = meta["block"].as_u64().unwrap() as u32;
        let thumb = image::open(p.with_extension("thumb.png"))
            .unwrap()
            .to_rgb8();
        assert_eq!(thumb.dimensions(), (w / b, h / b));
        let (mut worst, mut sum, mut count) = (0f64, 0f64, 0usize);
        for ty in 0..h / b {
            for tx in 0..w / b {
                let mut acc = [0f64; 3];
                for y in ty * b..(ty + 1) * b {
                    for x in tx * b..(tx + 1) * b {
                        let px = d.image.get_pixel(x, y);
                        for c in 0..3 {
                            acc[c] += px[c] as f64;
                        }
                    }
                }
                let want = thumb.get_pixel(tx, ty);
                for c in 0..3 {
                    let got = acc[c] / (b * b) as f64;
                    let diff = (got - want[c] as f64).abs();
                    worst = worst.max(diff);
                    sum += diff;
                    count += 1;
                }
            }
        }
        let mean = sum / count as f64;
        eprintln!(
            "{}: {w}x{h}, block means within {worst:.2} (mean {mean:.3})",
            file.display()
        );
        // The reference's means are rounded to integers: 0.5 of rounding, plus decoding.
        assert!(
            worst <= 1.5 && mean <= 0.6,
            "{}: worst {worst}, mean {mean}",
            file.display()
        );
        n += 1;
    }
    assert_eq!(n, 2, "two reference decodes");
}

#[test]
fn broken_heif_files_are_named_errors() {
    if let Err(e) = geoloc_imaging::heif::available() {
        require(&e);
        return;
    }
    // A HEIF brand and nothing after it, then a real file cut short.
    let mut head = vec![0, 0, 0, 24];
    head.extend_from_slice(b"ftypheic\0\0\0\0mif1heic");
    let Err(e) = decode(&head, &DecodeOptions::default(), None) else {
        panic!("a bare ftyp box decoded");
    };
    assert!(
        matches!(e.reason(), "corrupt-image" | "truncated-image"),
        "{e}"
    );
    let Some(shared) = geoloc_core::fixtures::shared_dir(env!("CARGO_MANIFEST_DIR")) else {
        return;
    };
    let f = shared.join("data/photos/ianare-exif-samples/HMD_Nokia_8.3_5G_hdr.heif");
    let bytes = std::fs::read(f).unwrap();
    for cut in [100, bytes.len() / 3, bytes.len() - 10] {
        let Err(e) = decode(&bytes[..cut], &DecodeOptions::default(), None) else {
            panic!("cut at {cut} of {}: decoded", bytes.len());
        };
        assert!(
            matches!(e.reason(), "corrupt-image" | "truncated-image"),
            "cut at {cut}: {e}"
        );
    }
    // The size limits hold before a pixel is decoded.
    let mut opts = DecodeOptions::default();
    opts.limits.max_side = 1000;
    let Err(e) = decode(&bytes, &opts, None) else {
        panic!("decoded past max_side 1000");
    };
    assert_eq!(e.reason(), "too-large", "{e}");
}

/// AVIF (`tests/heif/gradient.avif`, 64x48, written by Pillow's AVIF plugin) goes to
/// libheif too: decoded where the loaded libheif has an AV1 decoder, else refused as
/// unsupported with libheif's reason (the fetched pillow-heif build has no AV1 decoder).
#[test]
fn avif_is_decoded_or_refused_by_what_libheif_can() {
    let lib = match geoloc_imaging::heif::available() {
        Ok(l) => l,
        Err(e) => {
            require(&e);
            return;
        }
    };
    let bytes =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/heif/gradient.avif"))
            .unwrap();
    match decode(&bytes, &DecodeOptions::default(), None) {
        Ok(d) => {
            assert_eq!(d.info.format, Format::Avif);
            assert_eq!(d.image.dimensions(), (64, 48));
            // The gradient: red grows to the right, green downwards.
            let (a, b) = (d.image.get_pixel(2, 40), d.image.get_pixel(60, 4));
            assert!(b[0] > a[0] + 150 && a[1] > b[1] + 150, "{a:?} {b:?}");
            eprintln!("{lib}: AVIF decoded");
        }
        Err(e) => {
            assert_eq!(e.reason(), "unsupported-format", "{e}");
            assert!(
                e.to_string()
                    .starts_with("unsupported format: avif: libheif"),
                "{e}"
            );
            eprintln!("{lib}: AVIF refused: {e}");
        }
    }
}
