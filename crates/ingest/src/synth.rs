//! Synthetic MediaEval 2015 locale files for the demo pipeline and the tests: seeded,
//! byte-identical for a given `(rows, seed)` on every machine.
//!
//! The generator is the project's splitmix64 (`geoloc_core::rng`) rather than a `rand`
//! distribution: the demo's data must not change when a dependency's sampling algorithm does.
//!
//! It writes `train.tsv` (7 columns, with coordinates), `test.tsv` (coordinates left empty,
//! as in the real test file) and `truth.csv` (`hash,lat,lon` for the test rows), and salts the
//! train file with a few broken lines of each kind ingest must reject.

use std::fmt::Write as _;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

pub use geoloc_core::rng::SplitMix64;

/// (country, region, city, lat, lon, weight): the paper's five countries and a few others.
pub const GAZETTEER: &[(&str, &str, &str, f64, f64, u32)] = &[
    ("Germany", "Bavaria", "Munich", 48.1351, 11.5820, 3),
    ("Germany", "Berlin", "Berlin", 52.5200, 13.4050, 4),
    ("Germany", "Hamburg", "Hamburg", 53.5511, 9.9937, 2),
    ("Canada", "Ontario", "Toronto", 43.6532, -79.3832, 4),
    (
        "Canada",
        "British Columbia",
        "Vancouver",
        49.2827,
        -123.1207,
        3,
    ),
    ("Canada", "Quebec", "Montreal", 45.5019, -73.5674, 2),
    ("Italy", "Lazio", "Rome", 41.9028, 12.4964, 4),
    ("Italy", "Tuscany", "Florence", 43.7696, 11.2558, 3),
    ("Italy", "Veneto", "Venice", 45.4408, 12.3155, 2),
    ("Spain", "Madrid", "Madrid", 40.4168, -3.7038, 4),
    ("Spain", "Catalonia", "Barcelona", 41.3851, 2.1734, 4),
    ("Spain", "Andalusia", "Seville", 37.3891, -5.9845, 1),
    ("France", "Ile-de-France", "Paris", 48.8566, 2.3522, 5),
    ("France", "Rhone-Alpes", "Lyon", 45.7640, 4.8357, 2),
    (
        "France",
        "Provence-Alpes-Cote d'Azur",
        "Marseille",
        43.2965,
        5.3698,
        2,
    ),
    (
        "United States",
        "New York",
        "New York",
        40.7128,
        -74.0060,
        4,
    ),
    ("United Kingdom", "England", "London", 51.5074, -0.1278, 4),
    ("Japan", "Tokyo", "Tokyo", 35.6895, 139.6917, 2),
];

/// The files [`write_mediaeval_demo`] wrote.
#[derive(Debug, Clone)]
pub struct DemoFiles {
    pub train: PathBuf,
    pub test: PathBuf,
    pub truth: PathBuf,
    /// Lines written to train.tsv and test.tsv, broken lines included.
    pub train_lines: usize,
    pub test_lines: usize,
    /// Every well-formed row (train and test), for writing its photo.
    pub photos: Vec<DemoPhoto>,
}

/// A well-formed demo row: what its synthetic photo is drawn from.
#[derive(Debug, Clone, PartialEq)]
pub struct DemoPhoto {
    pub hash: String,
    pub country: &'static str,
    pub lat: f64,
    pub lon: f64,
}

fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            ' ' => out.push('+'),
            '\'' => out.push_str("%27"),
            c => out.push(c),
        }
    }
    out
}

/// Writes the demo's locale files into `dir`: about `rows` photos, 90% in train.tsv and 10% in
/// test.tsv (+ truth.csv).
pub fn write_mediaeval_demo(dir: &Path, rows: usize, seed: u64) -> io::Result<DemoFiles> {
    std::fs::create_dir_all(dir)?;
    let mut rng = SplitMix64::new(seed);
    let total_w: u32 = GAZETTEER.iter().map(|g| g.5).sum();
    let (mut train, mut test, mut truth) = (String::new(), String::new(), String::new());
    let (mut train_lines, mut test_lines) = (0, 0);
    let mut first_hash = String::new();
    let mut photos = Vec::with_capacity(rows);
    for i in 0..rows {
        let mut pick = rng.below(u64::from(total_w)) as u32;
        let city = GAZETTEER
            .iter()
            .enumerate()
            .find(|(_, g)| {
                if pick < g.5 {
                    true
                } else {
                    pick -= g.5;
                    false
                }
            })
            .map(|(k, _)| k)
            .unwrap_or(0);
        let (country, region, name, clat, clon, _) = GAZETTEER[city];
        let lat = (clat + 0.25 * rng.normal()).clamp(-89.0, 89.0);
        let lon = clon + 0.35 * rng.normal();
        // An MD5 printed without zero padding: 32 hex characters, fewer when it starts with 0s.
        let hash = format!(
            "{:x}{:016x}",
            rng.next_u64() >> (4 * rng.below(3)),
            rng.next_u64()
        );
        if i == 0 {
            first_hash = hash.clone();
        }
        let media = u8::from(rng.uniform() < 0.05);
        let year = 2004 + rng.below(11);
        let node_id = 1000 + city as u64 * 7;
        let node = encode(&format!("{country}@{region}@{name}"));
        photos.push(DemoPhoto {
            hash: hash.clone(),
            country,
            lat,
            lon,
        });
        if rng.uniform() < 0.1 {
            if rng.uniform() < 0.5 {
                writeln!(test, "{hash}\t{media}\t{year}\t{node_id}\t{node}\t\t").ok();
            } else {
                writeln!(test, "{hash}\t{media}\t{year}\t{node_id}\t{node}").ok();
            }
            writeln!(truth, "{hash},{lat:.6},{lon:.6}").ok();
            test_lines += 1;
        } else {
            writeln!(
                train,
                "{hash}\t{media}\t{year}\t{node_id}\t{node}\t{lon:.6}\t{lat:.6}"
            )
            .ok();
            train_lines += 1;
        }
        // Salt the train file with one broken line of each kind, early on.
        let bad = match i {
            10 => Some(format!("{hash}0\t0\t2010\t1\tFrance@Paris\t2.35")),
            20 => Some(format!("{hash}1\t0\t2010\t1\tFrance@Paris\teast\t48.85")),
            30 => Some(format!("{hash}2\t0\t2010\t1\tFrance@Paris\t2.35\t95.0")),
            40 => Some(format!("{hash}3\t0\t2010\t1\tNowhere@Null+Island\t0\t0")),
            50 => Some(format!(
                "{first_hash}\t0\t2010\t1\tGermany@Bavaria@Munich\t11.58\t48.13"
            )),
            _ => None,
        };
        if let Some(b) = bad {
            writeln!(train, "{b}").ok();
            train_lines += 1;
        }
    }
    let files = DemoFiles {
        train: dir.join("train.tsv"),
        test: dir.join("test.tsv"),
        truth: dir.join("truth.csv"),
        train_lines,
        test_lines,
        photos,
    };
    for (p, text) in [
        (&files.train, &train),
        (&files.test, &test),
        (&files.truth, &truth),
    ] {
        // Leave identical files untouched: their modification time is part of the ingest
        // fingerprint, and regenerating the same data must not make the pipeline stale.
        if std::fs::read(p).is_ok_and(|old| old == text.as_bytes()) {
            continue;
        }
        let tmp = p.with_extension("tmp");

        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, p)?;
    }
    Ok(files)
}
