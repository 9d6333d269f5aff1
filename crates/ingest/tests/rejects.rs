//! Every reject reason, with its line number; the commit protocol at the stage level.

mod common;

use std::fs;

fn write(dir: &std::path::Path, name: &str, text: &str) {
    fs::write(dir.join(name), text).unwrap();
}

#[test]
fn bad_rows_go_to_rejects_with_line_and_reason() {
    let t = tempfile::tempdir().unwrap();
    write(
        t.path(),
        "locale.tsv",
        "aaa111\t0\t2010\t1\tFrance@Paris\t2.35\t48.85\n\
         bbb222\t0\t2010\t1\tFrance@Paris\t2.35\n\
         ccc333\t0\t2010\t1\tFrance@Paris\teast\t48.85\n\
         ddd444\t0\t2010\t1\tFrance@Paris\t2.35\t95.5\n\
         eee555\t0\t2010\t1\tFrance@Paris\t181.0\t45.0\n\
         fff666\t0\t2010\t1\tNowhere\t0\t0\n\
         aaa111\t0\t2011\t1\tFrance@Paris\t2.36\t48.86\n\
         ggg777\t1\t2010\t1\tFrance@Paris\t2.35\t48.85\n\
         hhh888\t0\t2010\t1\tFrance@Paris\t\t\n\
         ggg777\t0\t2010\t1\tFrance@Paris\t2.35\t48.85\n",
    );
    write(
        t.path(),
        "photos.csv",
        "IMG_ID,LAT,LON\n../../etc/passwd,48.85,2.35\n/abs/x.jpg,48.85,2.35\nok.jpg,48.85,2.35\nshort,1\n",
    );
    let cfg = common::config(
        "[[sources]]\nformat = 'mediaeval-locale'\npath = 'locale.tsv'\n\
         [[sources]]\nformat = 'csv'\npath = 'photos.csv'\n",
    );
    let (m, rows, rejects) = common::ingest(&cfg, t.path(), &t.path().join("out"), 1);
    let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(
        ids,
        ["aaa111", "ok.jpg"],
        "the video is filtered, the rest rejected"
    );
    assert_eq!(
        rows[0].lat,
        Some(48.85),
        "the first of two duplicate ids wins"
    );
    assert_eq!(rows[0].image, "aaa/111/aaa111.jpg");
    assert_eq!(rows[0].country.as_deref(), Some("France"));
    assert_eq!(rows[0].country_code.as_deref(), Some("FR"));
    let got: Vec<(String, Option<u64>, &str)> = rejects
        .iter()
        .map(|r| (r.input.clone(), r.line, r.reason.as_str()))
        .collect();
    let want = vec![
        ("locale.tsv".to_string(), Some(2), "wrong-column-count"),
        ("locale.tsv".into(), Some(3), "bad-coordinate"),
        ("locale.tsv".into(), Some(4), "coordinate-out-of-range"),
        ("locale.tsv".into(), Some(5), "coordinate-out-of-range"),
        ("locale.tsv".into(), Some(6), "null-island"),
        ("locale.tsv".into(), Some(7), "duplicate-id"),
        ("locale.tsv".into(), Some(9), "no-coordinates"),
        // The id of a filtered video is taken all the same.
        ("locale.tsv".into(), Some(10), "duplicate-id"),
        ("photos.csv".into(), Some(2), "path-escapes-root"),
        ("photos.csv".into(), Some(3), "path-escapes-root"),
        ("photos.csv".into(), Some(5), "wrong-column-count"),
    ];
    assert_eq!(got, want);
    assert_eq!(m.rejects, 11);
    assert_eq!(rejects[1].id.as_deref(), Some("ccc333"));
    assert!(
        rejects[1].detail.contains("\"east\""),
        "{}",
        rejects[1].detail
    );
}

#[test]
fn test_file_rows_take_truth_coordinates_and_keep_null_without() {
    let t = tempfile::tempdir().unwrap();
    write(
        t.path(),
        "test.tsv",
        "aaa111\t0\t2010\t1\tFrance@Paris\nbbb222\t0\t2010\t1\tItaly@Rome\t\t\n",
    );
    write(t.path(), "truth.txt", "aaa111\t2.35\t48.85\n");
    let cfg = common::config(
        "[[sources]]\nformat = 'mediaeval-locale'\npath = 'test.tsv'\nsplit = 'test'\ntruth = 'truth.txt'\n",
    );
    let (_, rows, rejects) = common::ingest(&cfg, t.path(), &t.path().join("out"), 1);
    assert!(rejects.is_empty(), "{rejects:?}");
    assert_eq!(rows.len(), 2);
    assert_eq!(
        (rows[0].lat, rows[0].lon),
        (Some(48.85), Some(2.35)),
        "leaderboard truth is lon, lat"
    );
    assert_eq!(rows[0].split, "test");
    assert_eq!(
        (rows[1].lat, rows[1].lon, rows[1].country_code.as_deref()),
        (None, None, None)
    );
    assert_eq!(rows[1].country.as_deref(), Some("Italy"));
}

#[test]
fn yfcc_join_fills_users_and_yfcc_source_reads() {
    let t = tempfile::tempdir().unwrap();
    write(
        t.path(),
        "locale.tsv",
        "4ccb23d8746b8d9d76ffd603fc7988\t0\t2011\t5\tFinland@Uusimaa@Helsinki\t24.94\t60.17\n",
    );
    let yfcc = "6639\t6162540254\t4ccb23d8746b8d9d76ffd603fc7988\t15087210@N00\thenribergius\t2011-09-10 21:13:32.0\t1316432672\tNokia+N950\tAround+the+waterpipe\t\thelsinki,party,waterpipe\t\t\t\t\thttp://www.flickr.com/photos/15087210@N00/6162540254/\thttp://farm7.staticflickr.com/6167/6162540254_5d22abd711.jpg\tAttribution-ShareAlike License\thttp://creativecommons.org/licenses/by-sa/2.0/\t6167\t7\t5d22abd711\t44e5acb0f2\tjpg\t0\n";
    write(t.path(), "yfcc.tsv", yfcc);
    let cfg = common::config(
        "yfcc_users = 'yfcc.tsv'\n[[sources]]\nformat = 'mediaeval-locale'\npath = 'locale.tsv'\n",
    );
    let (_, rows, _) = common::ingest(&cfg, t.path(), &t.path().join("out"), 1);
    assert_eq!(rows[0].user.as_deref(), Some("15087210@N00"));
    assert_eq!(rows[0].country_code.as_deref(), Some("FI"));
    // As a source on its own, the non-geotagged YFCC row is rejected for lack of coordinates.
    let cfg = common::config("[[sources]]\nformat = 'yfcc'\npath = 'yfcc.tsv'\n");
    let (_, rows, rejects) = common::ingest(&cfg, t.path(), &t.path().join("out2"), 1);
    assert!(rows.is_empty());
    assert_eq!(rejects[0].reason, "no-coordinates");
    assert_eq!(rejects[0].id.as_deref(), Some("6162540254"));
}

#[test]
fn country_column_without_coordinates_labels_rows_for_the_country_task() {
    // OSV-5M's header (`../shared/data/formats`, block 10) with its `country` column; rows with
    // coordinates take the code of where they are, rows without take the column's code; a
    // country-only file (classification collections) ingests the same way.
    let t = tempfile::tempdir().unwrap();
    let header = "id,latitude,longitude,thumb_original_url,country,sequence,captured_at,lon_bin,\
                  lat_bin,cell,region,sub-region,city,land_cover,road_index,drive_side,climate,soil,\
                  dist_sea,quadtree_10_5000,quadtree_10_25000,quadtree_10_1000,quadtree_10_50000,\
                  quadtree_10_12500,quadtree_10_500,quadtree_10_2500,unique_region,\
                  unique_sub-region,unique_city,unique_country,creator_username,creator_id";
    let width = header.split(',').count();
    let row = |id: &str, lat: &str, lon: &str, cc: &str| {
        let mut f = vec![String::new(); width];
        f[0] = id.into();
        f[1] = lat.into();
        f[2] = lon.into();
        f[4] = cc.into();
        f[29] = "XX".into(); // unique_country: not the column read
        f.join(",")
    };
    let body = [
        row("1001", "48.8566", "2.3522", "FR"),
        // Coordinates win over the column (the code of where the photo is).
        row("1002", "45.4642", "9.19", "fr"),
        row("1003", "", "", "nz"),
        row("1004", "", "", "France"),
        row("1005", "", "", ""),
    ]
    .join("\n");
    write(t.path(), "osv.csv", &format!("{header}\n{body}\n"));
    write(
        t.path(),
        "labels.csv",
        "image,country\na.jpg,DE\nb.jpg, it \n",
    );
    let cfg = common::config(
        "[[sources]]\nformat = 'csv'\npath = 'osv.csv'\n\
         [[sources]]\nformat = 'csv'\npath = 'labels.csv'\n",
    );
    let (_, rows, rejects) = common::ingest(&cfg, t.path(), &t.path().join("out"), 1);
    type Got<'a> = (&'a str, Option<f64>, Option<&'a str>, Option<&'a str>);
    let got: Vec<Got> = rows
        .iter()
        .map(|r| {
            (
                r.id.as_str(),
                r.lat,
                r.country_code.as_deref(),
                r.country.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("1001", Some(48.8566), Some("FR"), Some("FR")),
            ("1002", Some(45.4642), Some("IT"), Some("fr")),
            ("1003", None, Some("NZ"), Some("nz")),
            ("a.jpg", None, Some("DE"), Some("DE")),
            ("b.jpg", None, Some("IT"), Some("it")),
        ]
    );
    let why: Vec<(Option<u64>, &str)> = rejects
        .iter()
        .map(|r| (r.line, r.reason.as_str()))
        .collect();
    assert_eq!(why, [(Some(5), "bad-country"), (Some(6), "no-coordinates")]);
    assert!(
        rejects[0].detail.contains("\"France\""),
        "{}",
        rejects[0].detail
    );

    // Neither coordinates nor a country column: refused with the header named.
    write(t.path(), "bare.csv", "image,caption\na.jpg,x\n");
    let cfg = common::config("[[sources]]\nformat = 'csv'\npath = 'bare.csv'\n");
    let ctx = common::context(
        t.path(),
        &t.path().join("o3"),
        geoloc_core::shard::Shard::ALL,
    );
    let e = geoloc_ingest::run(&cfg, &ctx).unwrap_err().to_string();
    assert!(
        e.contains("no latitude column") && e.contains("no country column"),
        "{e}"
    );
}
