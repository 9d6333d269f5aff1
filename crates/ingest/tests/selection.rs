//! Splits (golden, stable, user-disjoint), class lists, top-K, balancing, shards and
//! fingerprints of the ingest stage.

mod common;

use geoloc_core::fingerprint::Fingerprint;
use geoloc_ingest::synth;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::path::Path;

fn golden() -> Vec<(String, String)> {
    include_str!("golden/splits.tsv")
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let (a, b) = l.split_once('\t').unwrap();
            (a.to_owned(), b.to_owned())
        })
        .collect()
}

fn locale_lines(ids: &[String]) -> String {
    ids.iter()
        .enumerate()
        .map(|(i, id)| {
            format!(
                "{id}\t0\t2010\t{i}\tFrance@Paris\t{:.4}\t48.85\n",
                2.0 + i as f64 * 1e-4
            )
        })
        .collect()
}

#[test]
fn splits_match_the_golden_list_and_adding_rows_moves_none() {
    let t = tempfile::tempdir().unwrap();
    let gold = golden();
    assert_eq!(gold.len(), 300);
    let ids: Vec<String> = gold.iter().map(|g| g.0.clone()).collect();
    fs::write(t.path().join("a.tsv"), locale_lines(&ids[..200])).unwrap();
    let cfg = common::config("[[sources]]\nformat = 'mediaeval-locale'\npath = 'a.tsv'\n");
    let (_, rows, _) = common::ingest(&cfg, t.path(), &t.path().join("a"), 1);
    let got: HashMap<_, _> = rows
        .iter()
        .map(|r| (r.id.clone(), r.split.clone()))
        .collect();
    for (id, split) in &gold[..200] {
        assert_eq!(got.get(id), Some(split), "{id}");
    }
    // Add 100 rows, in front: no existing row moves.
    let mut more = ids[200..].to_vec();
    more.extend_from_slice(&ids[..200]);
    fs::write(t.path().join("b.tsv"), locale_lines(&more)).unwrap();
    let cfg = common::config("[[sources]]\nformat = 'mediaeval-locale'\npath = 'b.tsv'\n");
    let (_, rows, _) = common::ingest(&cfg, t.path(), &t.path().join("b"), 1);
    assert_eq!(rows.len(), 300);
    for r in &rows {
        let want = &gold.iter().find(|g| g.0 == r.id).unwrap().1;
        assert_eq!(&r.split, want, "{}", r.id);
    }
}

#[test]
fn user_disjoint_splits() {
    let t = tempfile::tempdir().unwrap();
    let mut csv = String::from("IMG_ID,AUTHOR,LAT,LON\n");
    for i in 0..600 {
        csv.push_str(&format!(
            "p{i}.jpg,user{},45.0,{:.3}\n",
            i % 37,
            7.0 + i as f64 * 1e-3
        ));
    }
    fs::write(t.path().join("p.csv"), csv).unwrap();
    let cfg =
        common::config("split = { by = 'user' }\n[[sources]]\nformat = 'csv'\npath = 'p.csv'\n");
    let (_, rows, _) = common::ingest(&cfg, t.path(), &t.path().join("o"), 1);
    assert_eq!(rows.len(), 600);
    let mut by_user: HashMap<String, HashSet<String>> = HashMap::new();
    for r in &rows {
        by_user
            .entry(r.user.clone().unwrap())
            .or_default()
            .insert(r.split.clone());
    }
    assert_eq!(by_user.len(), 37);
    assert!(by_user.values().all(|s| s.len() == 1), "{by_user:?}");
    let splits: HashSet<_> = by_user.values().flatten().collect();
    assert_eq!(splits.len(), 3, "37 users land in all three splits");
}

fn demo(dir: &Path, rows: usize) {
    synth::write_mediaeval_demo(dir, rows, 7).unwrap();
}

fn class_counts(rows: &[common::Sample]) -> BTreeMap<i32, usize> {
    let mut m = BTreeMap::new();
    for r in rows {
        *m.entry(r.label.unwrap()).or_default() += 1;
    }
    m
}

#[test]
fn paper_classes_balance_and_top_k() {
    let t = tempfile::tempdir().unwrap();
    demo(t.path(), 3000);
    let base = "[[sources]]\nformat = 'mediaeval-locale'\npath = 'train.tsv'\n";
    // The paper's five countries, matched on the computed country code.
    let cfg = common::config(&format!(
        "classes = {{ list = ['DE', 'CA', 'IT', 'ES', 'FR'] }}\n{base}"
    ));
    let (m, rows, _) = common::ingest(&cfg, t.path(), &t.path().join("five"), 1);
    assert_eq!(
        m.info.metadata["classes"],
        serde_json::json!(["DE", "CA", "IT", "ES", "FR"])
    );
    let names = ["DE", "CA", "IT", "ES", "FR"];
    for r in &rows {
        assert_eq!(
            r.country_code.as_deref(),
            Some(names[r.label.unwrap() as usize]),
            "{r:?}"
        );
    }
    let counts = class_counts(&rows);
    assert_eq!(counts.len(), 5);
    // Balanced: every class cut to the smallest class's count, by a seeded hash.
    let cfg_b = common::config(&format!(
        "classes = {{ list = ['DE', 'CA', 'IT', 'ES', 'FR'] }}\nbalance = {{ seed = 3 }}\n{base}"
    ));
    let (_, bal, _) = common::ingest(&cfg_b, t.path(), &t.path().join("bal"), 1);
    let smallest = *counts.values().min().unwrap();
    let bc = class_counts(&bal);
    assert!(
        bc.values().all(|&n| n == smallest),
        "{bc:?} vs smallest {smallest}"
    );
    let (_, bal2, _) = common::ingest(&cfg_b, t.path(), &t.path().join("bal2"), 1);
    assert_eq!(bal, bal2, "same seed, same rows");
    let cfg_c = common::config(&format!(
        "classes = {{ list = ['DE', 'CA', 'IT', 'ES', 'FR'] }}\nbalance = {{ seed = 4 }}\n{base}"
    ));
    let (_, bal3, _) = common::ingest(&cfg_c, t.path(), &t.path().join("bal3"), 1);
    assert_ne!(bal, bal3, "another seed picks other rows");
    // A quota of 0 keeps no row at all (not the rows whose hash happens to be 0).
    let cfg_0 = common::config(&format!(
        "classes = {{ list = ['DE', 'CA', 'IT', 'ES', 'FR'] }}\nbalance = {{ seed = 3, per_class = 0 }}\n{base}"
    ));
    let (_, none, _) = common::ingest(&cfg_0, t.path(), &t.path().join("zero"), 1);
    assert!(none.is_empty(), "{} rows kept", none.len());

    // Top-3 by the source's country name.
    let cfg_k = common::config(&format!(
        "classes = {{ top_k = 3, field = 'country' }}\n{base}"
    ));
    let (m, top, _) = common::ingest(&cfg_k, t.path(), &t.path().join("top"), 1);
    let list: Vec<String> = serde_json::from_value(m.info.metadata["classes"].clone()).unwrap();
    assert_eq!(list.len(), 3);
    let mut by_name: HashMap<&str, usize> = HashMap::new();
    let (_, all, _) = common::ingest(&common::config(base), t.path(), &t.path().join("all"), 1);
    for r in &all {
        *by_name.entry(r.country.as_deref().unwrap()).or_default() += 1;
    }
    let mut ranked: Vec<_> = by_name.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let want: Vec<String> = ranked[..3].iter().map(|r| r.0.to_owned()).collect();
    assert_eq!(list, want);
    assert_eq!(top.len(), ranked[..3].iter().map(|r| r.1).sum::<usize>());
}

#[test]
fn shards_write_the_same_rows_as_one_process() {
    let t = tempfile::tempdir().unwrap();
    demo(t.path(), 2000);
    let cfg = common::config(
        "classes = { list = ['DE', 'CA', 'IT', 'ES', 'FR'] }\nbalance = { seed = 1 }\n\
         [[sources]]\nformat = 'mediaeval-locale'\npath = 'train.tsv'\n\
         [[sources]]\nformat = 'mediaeval-locale'\npath = 'test.tsv'\nsplit = 'test'\ntruth = 'truth.csv'\n",
    );
    let (m1, mut one, mut rj1) = common::ingest(&cfg, t.path(), &t.path().join("one"), 1);
    let (m3, mut three, mut rj3) = common::ingest(&cfg, t.path(), &t.path().join("three"), 3);
    assert_eq!(m3.shards, 3);
    one.sort_by(|a, b| a.id.cmp(&b.id));
    three.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(one, three);
    rj1.sort_by_key(|r| r.line);
    rj3.sort_by_key(|r| r.line);
    assert_eq!(rj1, rj3);
    assert_eq!(
        m1.columns, m3.columns,
        "column checksums do not depend on sharding"
    );
    assert_eq!(
        rj1.len(),
        5,
        "the five broken lines the demo generator plants: {rj1:?}"
    );
}

#[test]
fn class_list_changes_do_not_stale_readers_of_id_and_image() {
    let t = tempfile::tempdir().unwrap();
    demo(t.path(), 800);
    let base = "[[sources]]\nformat = 'mediaeval-locale'\npath = 'train.tsv'\n";
    let a = common::config(&format!(
        "classes = {{ list = ['DE', 'FR', 'IT'], drop_unlisted = false }}\n{base}"
    ));
    let b = common::config(&format!(
        "classes = {{ list = ['FR', 'IT', 'ES'], drop_unlisted = false }}\n{base}"
    ));
    let (ma, ..) = common::ingest(&a, t.path(), &t.path().join("a"), 1);
    let (mb, ..) = common::ingest(&b, t.path(), &t.path().join("b"), 1);
    assert_ne!(
        ma.info.fingerprint, mb.info.fingerprint,
        "the ingest instance itself is stale"
    );
    // A preprocess-like reader: id and image only.
    let pixels = |m| {
        Fingerprint::new("preprocess", 1)
            .dataset("samples", m, &["id", "image"], &[])
            .unwrap()
            .finish()
    };
    assert_eq!(pixels(&ma), pixels(&mb));
    // A train-like reader: labels and the class list.
    let train = |m| {
        Fingerprint::new("train", 1)
            .dataset("samples", m, &["id", "label", "split"], &["classes"])
            .unwrap()
            .finish()
    };
    assert_ne!(train(&ma), train(&mb));
}
