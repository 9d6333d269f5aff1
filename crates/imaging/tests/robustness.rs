//! The imaging chain on real odd and broken files (`../shared/data/robustness/`, 360 files
//! with Pillow's verdict) and real photos (`../shared/data/photos/`).
//!
//! The expected outcome of every file is in `tests/robustness/expected.tsv`, derived from
//! Pillow's verdict by `tests/robustness/make_table.py`, which justifies every difference.

use geoloc_core::fixtures::shared_dir;
use geoloc_imaging::{
    decode, prepare, DecodeOptions, Geometry, Greyscale, Limits, PrepareOptions, Views,
};
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn shared() -> Option<PathBuf> {
    shared_dir(env!("CARGO_MANIFEST_DIR")).map(|s| s.join("data"))
}

fn opts(greyscale: Greyscale) -> PrepareOptions {
    PrepareOptions {
        decode: DecodeOptions {
            greyscale,
            ..Default::default()
        },
        geometry: Geometry::ResizeCrop {
            resize: 224,
            crop: 224,
        },
        views: Views::Centre,
        dct_scaling: true,
    }
}

/// The outcome code of one file: `ok` or the reject reason. A panic is an outcome too.
fn outcome(bytes: &[u8], o: &PrepareOptions) -> String {
    match std::panic::catch_unwind(|| prepare(bytes, o, 0)) {
        Ok(Ok(p)) => {
            assert_eq!(p.views.len(), 1);
            assert_eq!(p.views[0].pixels.len(), 224 * 224 * 3);
            "ok".into()
        }
        Ok(Err(e)) => e.reason().into(),
        Err(_) => "PANIC".into(),
    }
}

#[test]
fn every_robustness_file_gives_its_expected_outcome_in_bounded_time() {
    let Some(data) = shared() else { return };
    let table = include_str!("robustness/expected.tsv");
    let mut wrong = Vec::new();
    let mut n = 0;
    for line in table.lines().filter(|l| !l.starts_with('#')).skip(1) {
        let f: Vec<&str> = line.split('\t').collect();
        let (file, default, convert) = (f[0], f[1], f[2]);
        let bytes = std::fs::read(data.join("robustness").join(file)).unwrap();
        for (policy, want) in [(Greyscale::Reject, default), (Greyscale::Convert, convert)] {
            let t = Instant::now();
            let got = outcome(&bytes, &opts(policy));
            let took = t.elapsed();
            // Generous for an unoptimised test build on a busy 2-core machine; the slowest
            // file takes about 60 ms there. A hang or a quadratic path would blow it.
            if took > Duration::from_secs(5) {
                wrong.push(format!("{file} ({policy:?}): took {took:?}"));
            }
            if got != want {
                wrong.push(format!("{file} ({policy:?}): expected {want}, got {got}"));
            }
        }
        n += 1;
    }
    assert_eq!(n, 360, "the table lists every file of the manifest");
    assert!(
        wrong.is_empty(),
        "{} mismatches:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

/// Decodes a file at full size, upright.
fn upright(path: &std::path::Path) -> image::RgbImage {
    let bytes = std::fs::read(path).unwrap();
    decode::decode(&bytes, &DecodeOptions::default(), None)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .image
}

fn mean_abs_diff(a: &image::RgbImage, b: &image::RgbImage) -> f64 {
    assert_eq!(a.dimensions(), b.dimensions());
    let s: u64 = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| x.abs_diff(*y) as u64)
        .sum();
    s as f64 / a.as_raw().len() as f64
}

#[test]
fn exif_orientation_makes_all_eight_files_one_upright_image() {
    let Some(data) = shared() else { return };
    let dir = data.join("robustness/ianare-exif-samples");
    let land = upright(&dir.join("landscape_1.jpg"));
    let port = upright(&dir.join("portrait_1.jpg"));
    assert_eq!(land.dimensions(), (600, 450));
    assert_eq!(port.dimensions(), (450, 600));
    for i in 2..=8 {
        for (name, reference) in [("landscape", &land), ("portrait", &port)] {
            let path = dir.join(format!("{name}_{i}.jpg"));
            let img = upright(&path);
            let d = mean_abs_diff(&img, reference);
            // Each file shows the same picture with its own number painted on, encoded
            // separately: 13-16 levels from file 1 when upright (Pillow's exif_transpose
            // gives the same). A wrong rotation or mirror gives 32-70.
            assert!(d < 20.0, "{name}_{i}: mean difference {d:.2} from {name}_1");
            // The check can fail: the stored pixels of the files whose shape is unchanged
            // (mirrors, 180 degrees) are far off.
            if i <= 4 {
                let raw = image::load_from_memory(&std::fs::read(&path).unwrap())
                    .unwrap()
                    .into_rgb8();
                let r = mean_abs_diff(&raw, reference);
                assert!(
                    r > 30.0,
                    "{name}_{i}: stored pixels only {r:.2} from {name}_1"
                );
            }
        }
    }
}

#[test]
fn real_photos_decode_heif_included() {
    let Some(data) = shared() else { return };
    // HEIF decodes through libheif where it is found (`cargo xtask fetch-heif`; CI has it),
    // else it is refused by name, saying how to get it.
    let libheif = match geoloc_imaging::heif::available() {
        Ok(l) => {
            eprintln!("HEIF through {l}");
            true
        }
        Err(e) => {
            if std::env::var("GEOLOC_REQUIRE_SHARED").is_ok_and(|v| v == "1") {
                panic!("{e}, and GEOLOC_REQUIRE_SHARED=1 requires libheif");
            }
            eprintln!("SKIP (HEIF decoding): {e}");
            false
        }
    };
    let dir = data.join("photos");
    let mut rdr = csv::Reader::from_path(dir.join("manifest.csv")).unwrap();
    let (mut ok, mut heif) = (0, 0);
    for rec in rdr.records() {
        let rec = rec.unwrap();
        let (file, format) = (&rec[0], &rec[7]);
        let bytes = std::fs::read(dir.join(file)).unwrap();
        match prepare(&bytes, &opts(Greyscale::Reject), 0) {
            Ok(p) => {
                assert!(libheif || format != "HEIF", "{file}");
                assert_eq!(p.views[0].pixels.len(), 224 * 224 * 3);
                ok += 1;
                heif += usize::from(format == "HEIF");
            }
            Err(e) => {
                assert!(!libheif, "{file}: {e}");
                assert_eq!(format, "HEIF", "{file}: {e}");
                assert_eq!(e.reason(), "unsupported-format");
                assert!(e.to_string().contains("fetch-heif"), "{e}");
                heif += 1;
            }
        }
    }
    assert_eq!(heif, 2);
    assert_eq!(ok, if libheif { 70 } else { 68 });
}

#[test]
fn limits_refuse_large_images_on_the_header() {
    let Some(data) = shared() else { return };
    let bytes = std::fs::read(data.join("photos/ianare-exif-samples/DSCN0010.jpg")).unwrap();
    let mut o = opts(Greyscale::Reject);
    o.decode.limits = Limits {
        max_pixels: 640 * 480 - 1,
        ..Default::default()
    };
    let e = prepare(&bytes, &o, 0).unwrap_err();
    assert_eq!(e.reason(), "too-large");
    o.decode.limits.max_pixels = 640 * 480;
    assert!(prepare(&bytes, &o, 0).is_ok());
}

/// Pillow's 224 centre crop (bilinear) of the peers' generated JPEGs, written by
/// `tests/parity/make_reference.py`, against ours on the same files.
#[test]
fn centre_crop_matches_pillow_bilinear() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/parity");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| {
            let n = e.unwrap().file_name().into_string().unwrap();
            n.strip_suffix(".jpg").map(str::to_owned)
        })
        .collect();
    names.sort();
    assert_eq!(names.len(), 6);
    let mut report = Vec::new();
    for n in &names {
        let bytes = std::fs::read(dir.join(format!("{n}.jpg"))).unwrap();
        let ours = prepare(&bytes, &opts(Greyscale::Reject), 0).unwrap();
        let reference = image::open(dir.join(format!("{n}.pillow.png")))
            .unwrap()
            .into_rgb8();
        let ours = image::RgbImage::from_raw(224, 224, ours.views[0].pixels.clone()).unwrap();
        let mad = mean_abs_diff(&ours, &reference);
        let max = ours
            .as_raw()
            .iter()
            .zip(reference.as_raw())
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap();
        // The tolerance tells crop boxes apart: the same comparison one pixel to the left.
        let shifted = image::imageops::crop_imm(&reference, 1, 0, 223, 224).to_image();
        let ours_cut = image::imageops::crop_imm(&ours, 0, 0, 223, 224).to_image();
        let off_by_one = mean_abs_diff(&ours_cut, &shifted);
        report.push(format!(
            "{n}: mean {mad:.3}, max {max}; one pixel off: {off_by_one:.3}"
        ));
        assert!(
            off_by_one > 2.0 * mad,
            "{n}: a shifted box is as close ({off_by_one:.3})"
        );
        // Two JPEG decoders (zune-jpeg vs libjpeg-turbo: IDCT and chroma upsampling round
        // differently) and two resamplers (fast_image_resize vs Pillow: same kernel, other
        // fixed-point rounding): a fraction of a level on average. A wrong crop box, kernel
        // or channel order gives tens of levels.
        assert!(mad < 0.75, "{n}: mean absolute difference {mad:.3}");
        assert!(max <= 8, "{n}: largest difference {max}");
    }
    eprintln!("{}", report.join("\n"));
}

/// Every prefix-truncation and many single-byte corruptions of a JPEG and a PNG give an
/// image or a reason, never a panic, each within a time bound.
#[test]
fn damaged_copies_of_valid_files_never_panic() {
    let img = geoloc_imaging::synth::photo(5, 42.0, 12.5, 96, 64);
    let jpeg = geoloc_imaging::synth::jpeg(&img);
    let mut png = std::io::Cursor::new(Vec::new());
    img.write_to(&mut png, image::ImageFormat::Png).unwrap();
    let png = png.into_inner();
    let o = opts(Greyscale::Convert);
    for (name, file) in [("jpeg", &jpeg), ("png", &png)] {
        let mut cases: Vec<Vec<u8>> = (0..file.len())
            .step_by(37)
            .map(|n| file[..n].to_vec())
            .collect();
        let mut s = 1u64;
        for _ in 0..300 {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let mut f = file.clone();
            let at = (s >> 33) as usize % f.len();
            f[at] ^= 1 << ((s >> 20) % 8);
            cases.push(f);
        }
        let mut rejected = 0;
        for c in &cases {
            let t = Instant::now();
            let got = outcome(c, &o);
            assert_ne!(got, "PANIC", "{name}: a damaged copy panicked");
            assert!(
                t.elapsed() < Duration::from_secs(2),
                "{name}: took {:?}",
                t.elapsed()
            );
            rejected += (got != "ok") as usize;
        }
        // Truncations are refused: the check is not vacuous.
        assert!(
            rejected >= file.len() / 37 / 2,
            "{name}: only {rejected} of {} refused",
            cases.len()
        );
    }
}
