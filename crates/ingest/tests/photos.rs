//! All photos of `../shared/data/photos/` ingest from the folder with lat/lon within 1e-5
//! degrees of `manifest.csv` and the country code equal to its `country` column (the two
//! HEIF files included: EXIF is readable even where pixels are not).

mod common;

use std::collections::HashMap;

#[derive(Debug)]
struct Expected {
    lat: f64,
    lon: f64,
    country: String,
}

#[test]
fn shared_photos_ingest_with_their_gps_and_country() {
    let Some(shared) = geoloc_core::fixtures::shared_dir(env!("CARGO_MANIFEST_DIR")) else {
        return;
    };
    let photos = shared.join("data/photos");
    let mut r = csv::Reader::from_path(photos.join("manifest.csv")).unwrap();
    let h = r.headers().unwrap().clone();
    let col = |n: &str| h.iter().position(|x| x == n).unwrap();
    let (cf, clat, clon, cc) = (col("file"), col("lat"), col("lon"), col("country"));
    // file -> every manifest row naming it.
    let mut expected: HashMap<String, Vec<Expected>> = HashMap::new();
    let mut manifest_rows = 0;
    for rec in r.records() {
        let rec = rec.unwrap();
        manifest_rows += 1;
        expected
            .entry(rec[cf].to_owned())
            .or_default()
            .push(Expected {
                lat: rec[clat].parse().unwrap(),
                lon: rec[clon].parse().unwrap(),
                country: rec[cc].to_owned(),
            });
    }
    assert_eq!(manifest_rows, 70);

    let tmp = tempfile::tempdir().unwrap();
    let cfg = common::config(&format!(
        "images_root = '{0}'\n[[sources]]\nformat = 'exif-folder'\npath = '{0}'\n",
        photos.display()
    ));
    let (manifest, rows, rejects) = common::ingest(&cfg, tmp.path(), &tmp.path().join("out"), 1);
    assert!(rejects.is_empty(), "{rejects:?}");
    assert_eq!(manifest.rows as usize, rows.len());

    // Three manifest rows (opensfm/01-03.jpg of the "berlin" sequence) name files that the
    // "lund" sequence's files of the same names replaced: 70 rows, 67 files.
    assert_eq!(rows.len(), 67);
    assert_eq!(expected.len(), 67);
    let mut heif = 0;
    for s in &rows {
        let cands = expected
            .get(&s.id)
            .unwrap_or_else(|| panic!("{} is not in the manifest", s.id));
        let (lat, lon) = (s.lat.unwrap(), s.lon.unwrap());
        let m = cands
            .iter()
            .find(|e| (e.lat - lat).abs() < 1e-5 && (e.lon - lon).abs() < 1e-5)
            .unwrap_or_else(|| {
                panic!(
                    "{}: EXIF ({lat}, {lon}) matches no manifest row {cands:?}",
                    s.id
                )
            });
        assert_eq!(
            s.country_code.as_deref(),
            Some(m.country.as_str()),
            "{}",
            s.id
        );
        assert_eq!(s.image, s.id);
        if s.id.ends_with(".heif") {
            heif += 1;
        }
    }
    assert_eq!(heif, 2);
}
