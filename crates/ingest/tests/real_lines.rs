//! Every real YFCC100M, truth-file and CSV line in `../shared/data/formats/real-sample-lines.txt`
//! parses to the values written there.

use geoloc_ingest::formats::{self, Media};

fn sample_file() -> Option<String> {
    let shared = geoloc_core::fixtures::shared_dir(env!("CARGO_MANIFEST_DIR"))?;
    Some(
        std::fs::read_to_string(shared.join("data/formats/real-sample-lines.txt"))
            .expect("readable sample lines"),
    )
}

/// The data lines of block `n` (lines after `=== [n]` that are not comments).
fn block(text: &str, n: u32) -> Vec<String> {
    let head = format!("=== [{n}]");
    let mut out = Vec::new();
    let mut inside = false;
    for l in text.lines() {
        if l.starts_with("=== [") {
            inside = l.starts_with(&head);
            continue;
        }
        if inside && !l.starts_with('#') && !l.trim().is_empty() {
            out.push(l.to_owned());
        }
    }
    out
}

#[test]
fn yfcc_2014_lines() {
    let Some(t) = sample_file() else { return };
    let lines = block(&t, 1);
    assert_eq!(lines.len(), 4);
    let rows: Vec<_> = lines
        .iter()
        .map(|l| formats::yfcc::parse_line(l.as_bytes()).unwrap())
        .collect();
    assert_eq!(rows[0].photo_id, "7088065");
    assert_eq!(rows[0].user_nsid, "30302697@N00");
    assert_eq!(rows[0].title, "Gnome");
    assert_eq!(
        rows[0].description,
        "This gnome just appeared three stories up at school one day."
    );
    assert_eq!(rows[0].capture_device, "SONY CLIE");
    assert_eq!(rows[0].coords, Some((47.622562, -122.288368)));
    assert_eq!(rows[0].accuracy, Some(15));
    assert_eq!(rows[0].media, Media::Photo);
    assert_eq!(rows[0].photo_hash, None);
    assert_eq!(rows[1].photo_id, "343224206");
    assert_eq!(rows[1].title, "Team Muppet Show");
    assert_eq!(rows[1].coords, Some((41.394066, -73.458709)));
    assert_eq!(rows[2].photo_id, "6325727670");
    assert_eq!(rows[2].title, "Sunlight through the morning fog");
    assert!(rows[2]
        .description
        .starts_with("This scene greeted me on the way to work yesterday morning.\n\nI hope"));
    assert!(rows[2].description.contains("converted to B&W."));
    assert!(rows[2].user_tags.contains("b&w,beautiful,black and white"));
    assert_eq!(rows[2].coords, Some((-37.155665, 144.87957)));
    assert_eq!(rows[3].photo_id, "10642543105");
    assert_eq!(rows[3].title, "0601 Young man");
    assert_eq!(rows[3].capture_device, "Couragent, Inc. Flip-Pal 100C");
    assert!(rows[3]
        .description
        .starts_with("Photographer: Johnstone O'Shannessy, 3 Bourke St, Melbourne"));
    assert_eq!(rows[3].coords, Some((-37.811378, 144.972976)));
    assert_eq!(
        rows[3].download_url,
        "http://farm3.staticflickr.com/2823/10642543105_129f2fbe19.jpg"
    );
}

#[test]
fn yfcc_2016_line() {
    let Some(t) = sample_file() else { return };
    let lines = block(&t, 2);
    assert_eq!(lines.len(), 1);
    let r = formats::yfcc::parse_line(lines[0].as_bytes()).unwrap();
    assert_eq!(r.line_no, Some(6639));
    assert_eq!(r.photo_id, "6162540254");
    assert_eq!(
        r.photo_hash.as_deref(),
        Some("4ccb23d8746b8d9d76ffd603fc7988")
    );
    assert_eq!(r.user_nsid, "15087210@N00");
    assert_eq!(r.user_nickname, "henribergius");
    assert_eq!(r.title, "Around the waterpipe");
    assert_eq!(r.user_tags, "helsinki,party,waterpipe");
    assert_eq!(r.coords, None, "not geotagged: empty longitude/latitude");
    assert_eq!(r.media, Media::Photo);
}

#[test]
fn truth_files_both_styles() {
    let Some(t) = sample_file() else { return };
    let organisers = block(&t, 4);
    assert_eq!(organisers.len(), 5);
    let want = [
        ("a98a756c7036c8b8daf22dcbca9c2f5", 43.259709, -2.937104),
        ("342a782565d8f0d7a668d8d739acfb8", 37.674573, 26.348135),
        ("662b72abceb779e34b565156810b24a", 48.197532, 16.347473),
        ("8240a4f53684b110341c72351735ff78", 45.470298, 9.178571),
        ("43dca44fc6b9a227bb9ada94c6d389", 41.651833, -4.729),
    ];
    for (l, (id, lat, lon)) in organisers.iter().zip(want) {
        let r = formats::truth::parse_line(l.as_bytes()).unwrap();
        assert_eq!((r.id.as_str(), r.lat, r.lon), (id, lat, lon));
    }
    let board = block(&t, 5);
    assert_eq!(board.len(), 5);
    let want = [
        ("e25f7dbbb0e9f639d68f488c57617f6b", 34.966788, 135.774391),
        ("d8c4e37ebaeb9bbb497b346ec974285", 42.966974, -85.674262),
        ("834c2131c45a5b2ebc2d9e17fbe61e", 37.22638, -95.706556),
        ("66d55ca48254e6248b30f4c175e924", 49.284603, -123.11276),
        ("7a4e18e4fe1dbc31597ed8e955ac5ddf", 47.567508, 24.806072),
    ];
    for (l, (id, lat, lon)) in board.iter().zip(want) {
        let r = formats::truth::parse_line(l.as_bytes()).unwrap();
        assert_eq!((r.id.as_str(), r.lat, r.lon), (id, lat, lon));
    }
    // MediaEval 2016 estimation truth has the same photoid<TAB>lon<TAB>lat shape.
    let r = formats::truth::parse_line(block(&t, 6)[0].as_bytes()).unwrap();
    assert_eq!(
        (r.id.as_str(), r.lat, r.lon),
        ("4695330957", 30.547782, -91.013981)
    );
}

fn csv_rows(text: &str) -> (formats::csv::Columns, Vec<formats::csv::CsvRow>) {
    let mut r = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(text.as_bytes());
    let headers = r.headers().unwrap().clone();
    let recs: Vec<csv::StringRecord> = r.records().map(|x| x.unwrap()).collect();
    let cols = formats::csv::Columns::detect(&headers, recs.iter(), None).unwrap();
    let rows = recs
        .iter()
        .map(|rec| formats::csv::parse_record(&cols, rec).unwrap())
        .collect();
    (cols, rows)
}

#[test]
fn im2gps_csv_and_swapped_header() {
    let Some(t) = sample_file() else { return };
    let lines = block(&t, 7);
    // Header, four rows, then the old (swapped) header on its own.
    assert_eq!(lines.len(), 6);
    let body = lines[1..5].join("\n");
    let (cols, rows) = csv_rows(&format!("{}\n{body}\n", lines[0]));
    assert!(!cols.swapped);
    assert_eq!(cols.id_name, "IMG_ID");
    assert_eq!(rows[0].id, "104123223_7410c654ba_19_19355699@N00.jpg");
    assert_eq!(rows[0].user.as_deref(), Some("19355699@N00"));
    assert_eq!(rows[0].coords, Some((-16.663606, 145.563537)));
    assert_eq!(rows[3].coords, Some((32.325436, -64.764404)));
    // The pre-5e091c0 header LON,LAT over lat,lon values: detected by range and swapped back.
    let (cols, swapped) = csv_rows(&format!("{}\n{body}\n", lines[5]));
    assert!(cols.swapped);
    for (a, b) in rows.iter().zip(&swapped) {
        assert_eq!(a.coords, b.coords);
    }
}

#[test]
fn geoclip_and_results_csv_headers() {
    // GeoCLIP style `IMG_FILE,LAT,LON`, and the GeoEstimation result header `img_id,...`.
    let (cols, rows) = csv_rows("IMG_FILE,LAT,LON\nimages/a.jpg,48.85,2.35\n");
    assert_eq!(cols.id_name, "IMG_FILE");
    assert_eq!(rows[0].id, "images/a.jpg");
    assert_eq!(rows[0].coords, Some((48.85, 2.35)));
    let Some(t) = sample_file() else { return };
    let lines = block(&t, 8);
    let joined = lines.join("\n");
    let mut r = csv::ReaderBuilder::new().from_reader(joined.as_bytes());
    let headers = r.headers().unwrap().clone();
    let recs: Vec<_> = r.records().map(|x| x.unwrap()).collect();
    // A results file reads as its ground truth (gt_lat, gt_long).
    let cols = formats::csv::Columns::detect(&headers, recs.iter(), None).unwrap();
    let r = formats::csv::parse_record(&cols, &recs[0]).unwrap();
    assert_eq!(r.id, "1095548455_f636d22cbb_1277_8576809@N08.jpg");
    assert_eq!(r.coords, Some((31.893581, -85.141124)));
    let e = formats::csv::Columns::detect(
        &csv::StringRecord::from(vec!["IMG_ID", "X", "Y"]),
        std::iter::empty(),
        None,
    )
    .unwrap_err();
    assert!(e.contains("no latitude column"), "{e}");
}
