//! The metadata readers take untrusted text: every line parser, the CSV column detection,
//! layout templates and the path check must return a row or a reject, never panic, on any
//! bytes: random edits (proptest) of the real lines in `../shared/data/formats` (and of
//! built-in lines where it is absent), and random bytes.
//!
//! `GEOLOC_FUZZ_SCALE` (default 1) multiplies the case counts; `cargo xtask fuzz` runs them
//! at scale 20.

use geoloc_ingest::formats;
use geoloc_ingest::layout::{check_inside_root, Layout};
use proptest::prelude::*;

fn real_lines() -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = vec![
        b"4ccb23d8746b8d9d76ffd603fc7988\t0\t2011\t5\tFinland@Uusimaa@Helsinki\t24.94\t60.17"
            .to_vec(),
        b"aaa111,48.85,2.35".to_vec(),
        b"aaa111\t2.35\t48.85".to_vec(),
    ];
    if let Some(shared) = geoloc_core::fixtures::shared_dir(env!("CARGO_MANIFEST_DIR")) {
        let text = std::fs::read(shared.join("data/formats/real-sample-lines.txt")).unwrap();
        out.extend(
            text.split(|&b| b == b'\n')
                .filter(|l| !l.is_empty() && !l.starts_with(b"#") && !l.starts_with(b"==="))
                .map(<[u8]>::to_vec),
        );
    }
    out
}

fn scale() -> u32 {
    std::env::var("GEOLOC_FUZZ_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

/// Every parser on one line; none may panic. Returns how many accepted it.
fn parse_all(line: &[u8]) -> usize {
    let mut ok = 0;
    ok += usize::from(formats::mediaeval::parse_line(line).is_ok());
    ok += usize::from(formats::yfcc::parse_line(line).is_ok());
    ok += usize::from(formats::truth::parse_line(line).is_ok());
    // As the body of a CSV under each header the readers know.
    for header in [
        "IMG_ID,AUTHOR,LAT,LON",
        "id,latitude,longitude,country",
        "image,country",
        "IMG_FILE,LAT,LON",
    ] {
        let mut text = header.as_bytes().to_vec();
        text.push(b'\n');
        text.extend_from_slice(line);
        let mut r = csv::ReaderBuilder::new()
            .flexible(true)
            .from_reader(text.as_slice());
        let headers = r.headers().cloned().unwrap_or_default();
        let recs: Vec<csv::StringRecord> = r.records().filter_map(|x| x.ok()).collect();
        if let Ok(cols) = formats::csv::Columns::detect(&headers, recs.iter(), None) {
            for rec in &recs {
                ok += usize::from(formats::csv::parse_record(&cols, rec).is_ok());
            }
        }
    }
    let s = String::from_utf8_lossy(line);
    if let Ok(l) = Layout::parse(&s) {
        let _ = l.render(&s);
    }
    if let Ok(p) = check_inside_root(&s) {
        let path = std::path::Path::new(&p);
        assert!(
            !path.is_absolute()
                && path
                    .components()
                    .all(|c| matches!(c, std::path::Component::Normal(_))),
            "{s:?} passed as {p:?}"
        );
    }
    let _ = geoloc_ingest::url_decode(&s);
    ok
}

#[test]
fn every_real_line_and_every_prefix() {
    let lines = real_lines();
    let mut tried = 0;
    for l in &lines {
        for n in 0..=l.len() {
            parse_all(&l[..n]);
            tried += 1;
        }
    }
    println!(
        "{} real lines, {tried} prefixes: none panicked",
        lines.len()
    );
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512 * scale(),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_edits_of_real_lines(
        which in any::<usize>(),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>(), 0u8..4), 1..12),
    ) {
        let lines = real_lines();
        let mut l = lines[which % lines.len()].clone();
        for (at, b, kind) in edits {
            if l.is_empty() {
                l.push(b);
                continue;
            }
            let i = at % l.len();
            match kind {
                0 => l[i] = b,
                1 => l.insert(i, b),
                2 => { l.remove(i); }
                // The bytes that separate and quote fields.
                _ => l[i] = [b'\t', b',', b'"', b'\r', b'@', b'%', b'.', b'-'][b as usize % 8],
            }
        }
        parse_all(&l);
    }

    #[test]
    fn random_bytes(l in proptest::collection::vec(any::<u8>(), 0..600)) {
        parse_all(&l);
    }

    #[test]
    fn random_layout_templates(t in "[{}a-z0-9\\[\\]:/.\\-]{0,40}", id in "[a-z0-9/.]{0,20}") {
        if let Ok(l) = Layout::parse(&t) {
            let _ = check_inside_root(&l.render(&id));
        }
    }
}
