//! The report: `report.md` (tables, pictures linked from `plots/`) and `report.html`, the same
//! content in one self-contained page (pictures inlined as data URLs, no scripts, no
//! external resources), plus the PNGs under `plots/`.

use crate::metrics::CountryMetrics;
use crate::{plots, Error, History, Metrics, Scored};
use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::Float64Type;
use base64::Engine as _;
use std::fmt::Write as _;
use std::path::Path;

/// A photo's true and predicted location, `[lat, lon]` each.
pub type Pair = ([f64; 2], [f64; 2]);

/// A table: header cells, rows of cells.
type Table = (Vec<String>, Vec<Vec<String>>);

/// Per model: (name, (truth, prediction) pairs, errors in km).
pub struct Points {
    pub models: Vec<(String, Vec<Pair>, Vec<f64>)>,
}

/// Reads the plotted columns back from the prediction batches.
pub fn points(batches: &[RecordBatch]) -> Points {
    let mut models = Vec::new();
    for b in batches {
        let name = b
            .column(0)
            .as_string::<i32>()
            .iter()
            .next()
            .flatten()
            .unwrap_or_default()
            .to_string();
        let f = |i: usize| b.column(i).as_primitive::<Float64Type>().clone();
        let (tlat, tlon, plat, plon, err) = (f(4), f(5), f(9), f(10), f(12));
        let mut pairs = Vec::new();
        let mut errors = Vec::new();
        for r in 0..b.num_rows() {
            let ok = |a: &arrow::array::Float64Array| !a.is_null(r);
            if ok(&tlat) && ok(&tlon) && ok(&plat) && ok(&plon) {
                pairs.push((
                    [tlat.value(r), tlon.value(r)],
                    [plat.value(r), plon.value(r)],
                ));
            }
            if ok(&err) {
                errors.push(err.value(r));
            }
        }
        models.push((name, pairs, errors));
    }
    Points { models }
}

/// A plot in the report: file name under `plots/`, caption.
struct Figure {
    file: String,
    caption: String,
}

/// File-name-safe form of an instance name.
fn slug(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

fn pct(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{:.1}%", 100.0 * v))
}

fn km(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{v:.0}"))
}

fn acc_cell(c: &Option<CountryMetrics>) -> String {
    match c {
        Some(c) => format!(
            "{:.1}% [{:.1}, {:.1}]",
            100.0 * c.accuracy,
            100.0 * c.ci95[0],
            100.0 * c.ci95[1]
        ),
        None => "–".into(),
    }
}

/// The rows of the results table: every model, its 0-epoch self, then the baselines.
fn table_rows(m: &Metrics) -> Vec<(&Scored, bool)> {
    let mut rows = Vec::new();
    for r in &m.models {
        rows.push((&r.trained, true));
        if let Some(e) = &r.epoch0 {
            rows.push((e, false));
        }
    }
    rows.extend(m.baselines.iter().map(|b| (b, false)));
    rows
}

/// The results table as (header, rows of cells).
fn results_table(m: &Metrics) -> Table {
    let mut head = vec![
        "predictor".to_string(),
        "country from".into(),
        "country accuracy [95% CI]".into(),
    ];
    head.extend(m.radii_km.iter().map(|r| format!("≤{r} km")));
    head.extend([
        "median km".into(),
        "mean km".into(),
        "score".into(),
        "photos".into(),
    ]);
    let rows = table_rows(m)
        .into_iter()
        .map(|(s, _)| {
            let mut row = vec![s.name.clone(), s.country_from.clone(), acc_cell(&s.country)];
            let l = s.location.as_ref();
            row.extend(
                m.radii_km
                    .iter()
                    .map(|&r| pct(l.and_then(|l| l.share_within(r)))),
            );
            row.push(km(l.map(|l| l.median_km)));
            row.push(km(l.map(|l| l.mean_km)));
            row.push(l.map_or("–".into(), |l| format!("{:.0}", l.geoscore)));
            row.push(s.photos.to_string());
            row
        })
        .collect();
    (head, rows)
}

fn per_class_table(c: &CountryMetrics) -> Table {
    let head = ["class", "support", "predicted", "precision", "recall"]
        .map(String::from)
        .to_vec();
    let rows = c
        .per_class
        .iter()
        .map(|p| {
            vec![
                p.class.clone(),
                p.support.to_string(),
                p.predicted.to_string(),
                pct(p.precision),
                pct(p.recall),
            ]
        })
        .collect();
    (head, rows)
}

/// Draws every plot; returns them in report order.
fn draw(
    dir: &Path,
    m: &Metrics,
    histories: &[(String, History)],
    pts: &Points,
) -> Result<Vec<Figure>, Error> {
    let pdir = dir.join("plots");
    std::fs::create_dir_all(&pdir).map_err(|e| Error::io(&pdir, e))?;
    let mut figs = Vec::new();
    let mut fig = |file: String, caption: String| {
        figs.push(Figure { file, caption });
    };

    // Accuracy by predictor: colour by model (its 0-epoch self shares it), baselines grey.
    let mut acc_rows = Vec::new();
    let mut km_rows = Vec::new();
    let radius = if m.radii_km.contains(&1000.0) {
        1000.0
    } else {
        m.radii_km[m.radii_km.len() / 2]
    };
    for (i, r) in m.models.iter().enumerate() {
        for s in std::iter::once(&r.trained).chain(&r.epoch0) {
            if let Some(c) = &s.country {
                acc_rows.push((s.name.clone(), c.accuracy, i));
            }
            if let Some(w) = s.location.as_ref().and_then(|l| l.share_within(radius)) {
                km_rows.push((s.name.clone(), w, i));
            }
        }
    }
    for b in &m.baselines {
        if let Some(c) = &b.country {
            acc_rows.push((b.name.clone(), c.accuracy, 7));
        }
        if let Some(w) = b.location.as_ref().and_then(|l| l.share_within(radius)) {
            km_rows.push((b.name.clone(), w, 7));
        }
    }
    if !acc_rows.is_empty() {
        plots::bars(
            &pdir.join("accuracy-by-model.png"),
            "Country accuracy on the test split",
            "accuracy",
            &acc_rows,
        )?;
        fig(
            "accuracy-by-model.png".into(),
            "Country accuracy of each predictor (0 epochs: the same head untrained; grey: trivial predictors).".into(),
        );
    }
    if !km_rows.is_empty() {
        let file = format!("within-{radius}km-by-model.png");
        plots::bars(
            &pdir.join(&file),
            &format!("Photos located within {radius} km"),
            "share of test photos",
            &km_rows,
        )?;
        fig(
            file,
            format!(
                "Share of test photos whose predicted location is within {radius} km of the truth."
            ),
        );
    }
    let cdf: Vec<(String, Vec<f64>)> = pts
        .models
        .iter()
        .filter(|(_, _, e)| !e.is_empty())
        .map(|(n, _, e)| (n.clone(), e.clone()))
        .collect();
    if !cdf.is_empty() {
        plots::error_cdf(&pdir.join("error-cdf.png"), &cdf, &m.radii_km)?;
        fig(
            "error-cdf.png".into(),
            format!(
                "Cumulative distribution of the location error ({}); the grey lines are the radii.",
                m.distance
            ),
        );
    }
    for (name, history) in histories {
        if history.is_empty() {
            continue;
        }
        let file = format!("curves-{}.png", slug(name));
        plots::curves(&pdir.join(&file), name, history)?;
        fig(
            file,
            format!("{name}: training curves per epoch (epoch 0: untrained)."),
        );
    }
    for (name, pairs, _) in &pts.models {
        if pairs.is_empty() {
            continue;
        }
        let file = format!("map-{}.png", slug(name));
        plots::world_map(
            &pdir.join(&file),
            &format!("{name}: predicted vs true"),
            pairs,
        )?;
        fig(
            file,
            format!(
                "{name}: each test photo's true location (black) joined to its prediction (red); the map covers the photos' region when they span less than a hemisphere."
            ),
        );
    }
    for r in &m.models {
        if let Some(c) = &r.trained.country {
            let file = format!("confusion-{}.png", slug(&r.name));
            plots::confusion(
                &pdir.join(&file),
                &format!(
                    "{}: confusion (country from {})",
                    r.name, r.trained.country_from
                ),
                &c.labels,
                &c.confusion,
            )?;
            fig(
                file,
                format!(
                    "{}: confusion matrix, rows the true country, columns the decided one.",
                    r.name
                ),
            );
        }
    }
    Ok(figs)
}

fn md_table(out: &mut String, (head, rows): &Table) {
    let _ = writeln!(out, "| {} |", head.join(" | "));
    let _ = writeln!(out, "|{}", "---|".repeat(head.len()));
    for r in rows {
        let _ = writeln!(out, "| {} |", r.join(" | "));
    }
    out.push('\n');
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn html_table(out: &mut String, (head, rows): &Table) {
    out.push_str("<table>\n<thead><tr>");
    for h in head {
        let _ = write!(out, "<th>{}</th>", esc(h));
    }
    out.push_str("</tr></thead>\n<tbody>\n");
    for r in rows {
        out.push_str("<tr>");
        for c in r {
            let _ = write!(out, "<td>{}</td>", esc(c));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody>\n</table>\n");
}

fn summary_lines(m: &Metrics) -> Vec<String> {
    let mut v = vec![
        format!("Test photos: {}.", m.test_photos),
        format!("Classes: {}.", m.classes.join(", ")),
        format!("Distances: {} (km).", m.distance),
    ];
    for r in &m.models {
        let task = &r.task;
        let mut s = format!(
            "`{}`: {} head, task {task}, on `{}`",
            r.name, r.head, r.input
        );
        match r.missing_photos {
            0 => {}
            1 => s += " (1 test photo had no input row: rejected upstream)",
            n => s += &format!(" ({n} test photos had no input row: rejected upstream)"),
        }
        v.push(s + ".");
    }
    v
}

/// Writes the plots, `report.md` and `report.html` into `dir`.
pub fn write(
    dir: &Path,
    title: &str,
    m: &Metrics,
    histories: &[(String, History)],
    pts: &Points,
) -> Result<(), Error> {
    let figs = draw(dir, m, histories, pts)?;
    let results = results_table(m);
    let classes: Vec<(String, Table)> = m
        .models
        .iter()
        .filter_map(|r| Some((r.name.clone(), per_class_table(r.trained.country.as_ref()?))))
        .collect();

    // Markdown.
    let mut md = format!("# {title}\n\n");
    for l in summary_lines(m) {
        let _ = writeln!(md, "- {l}");
    }
    md.push_str("\n## Results\n\n");
    md_table(&mut md, &results);
    md.push_str("Country accuracy: share of test photos whose decided country is right, with the Wilson 95% interval. ");
    md.push_str("Score: mean GeoGuessr-style score 5000·exp(−d/1492.7 km).\n\n## Figures\n\n");
    for f in &figs {
        let _ = writeln!(
            md,
            "![{}](plots/{})\n\n{}\n",
            esc(&f.caption),
            f.file,
            f.caption
        );
    }
    md.push_str("## Per class\n\n");
    for (name, t) in &classes {
        let _ = writeln!(md, "### {name}\n");
        md_table(&mut md, t);
    }
    geoloc_core::dataset::write_atomic(dir, crate::REPORT_MD, md.as_bytes())?;

    // HTML, self-contained.
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{}</title>\n<style>\n\
         body {{ font-family: sans-serif; margin: 2em auto; max-width: 1250px; color: #222; }}\n\
         table {{ border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }}\n\
         th, td {{ border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }}\n\
         th:first-child, td:first-child {{ text-align: left; }}\n\
         thead {{ background: #f2f2f2; }}\n\
         figure {{ margin: 1.5em 0; }} img {{ max-width: 100%; border: 1px solid #ddd; }}\n\
         figcaption {{ color: #555; font-size: 0.9em; }}\n</style>\n</head>\n<body>\n<h1>{}</h1>\n<ul>\n",
        esc(title),
        esc(title)
    );
    for l in summary_lines(m) {
        let _ = writeln!(h, "<li>{}</li>", esc(&l.replace('`', "")));
    }
    h.push_str("</ul>\n<h2>Results</h2>\n");
    html_table(&mut h, &results);
    h.push_str("<p>Country accuracy: share of test photos whose decided country is right, with the Wilson 95% interval. Score: mean GeoGuessr-style score 5000·exp(−d/1492.7 km).</p>\n<h2>Figures</h2>\n");
    for f in &figs {
        let p = dir.join("plots").join(&f.file);
        let bytes = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
        let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
        let _ = writeln!(
            h,
            "<figure><img alt=\"{}\" src=\"data:image/png;base64,{b64}\"><figcaption>{}</figcaption></figure>",
            esc(&f.caption),
            esc(&f.caption)
        );
    }
    h.push_str("<h2>Per class</h2>\n");
    for (name, t) in &classes {
        let _ = writeln!(h, "<h3>{}</h3>", esc(name));
        html_table(&mut h, t);
    }
    h.push_str("</body>\n</html>\n");
    geoloc_core::dataset::write_atomic(dir, crate::REPORT_HTML, h.as_bytes())?;
    Ok(())
}
