//! The report's pictures, drawn with `plotters` into pixel buffers and written as PNG:
//! training curves (the paper's figures 2-5 and 7), accuracy by predictor (figures 6 and 8),
//! the error CDF, predictions on a world map, the confusion matrix.
//!
//! Text is drawn through `ab_glyph` with the DejaVu Sans file shipped in `assets/`, so
//! nothing depends on the machine's fonts.

use crate::worldmap;
use crate::Error;
use image::RgbImage;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;
use std::sync::Once;

const FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
const SANS: &str = "sans-serif";

/// Series colours (the Tableau 10 palette).
pub const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The font file is part of the source tree; a failure here is a build defect and
        // shows as text-less plots, never a crash.
        let _ = plotters::style::register_font(SANS, FontStyle::Normal, FONT);
    });
}

fn perr(name: &str) -> impl Fn(&dyn std::fmt::Display) -> Error + '_ {
    move |e| Error::Plot {
        name: name.into(),
        reason: e.to_string(),
    }
}

macro_rules! tryp {
    ($name:expr, $e:expr) => {
        $e.map_err(|e| perr($name)(&e))?
    };
}

/// Draws into a `w x h` white canvas with `f`, then writes `path` as PNG.
fn canvas(
    path: &Path,
    (w, h): (u32, u32),
    background: Option<&RgbImage>,
    f: impl FnOnce(&DrawingArea<BitMapBackend<'_>, Shift>) -> Result<(), Error>,
) -> Result<(), Error> {
    register_font();
    let name = path.display().to_string();
    let mut buf = match background {
        Some(img) => img.as_raw().clone(),
        None => vec![255u8; (w * h * 3) as usize],
    };
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        f(&root)?;
        tryp!(&name, root.present());
    }
    let img = RgbImage::from_raw(w, h, buf).ok_or_else(|| perr(&name)(&"buffer size"))?;
    let tmp = path.with_extension("png.tmp");
    Ok(geoloc_core::dataset::commit_file(
        &tmp,
        path,
        "a plot",
        |tmp| Ok(img.save_with_format(tmp, image::ImageFormat::Png)?),
    )?)
}

/// One series of a line chart: name and (x, y) points.
pub type Series = (String, Vec<(f64, f64)>);

fn range(series: &[Series], axis: usize, log: bool) -> (f64, f64) {
    let vals = series
        .iter()
        .flat_map(|s| s.1.iter())
        .map(|p| if axis == 0 { p.0 } else { p.1 });
    let (lo, hi) = vals
        .filter(|v| v.is_finite() && (!log || *v > 0.0))
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    if !lo.is_finite() {
        return if log { (1.0, 10.0) } else { (0.0, 1.0) };
    }
    if hi <= lo {
        return (lo - 0.5 * lo.abs().max(1.0), hi + 0.5 * hi.abs().max(1.0));
    }
    let pad = (hi - lo) * 0.05;
    (
        if log { lo } else { lo - pad },
        if log { hi } else { hi + pad },
    )
}

/// A panel of line series on linear axes.
fn lines(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    name: &str,
    title: &str,
    xdesc: &str,
    ydesc: &str,
    series: &[Series],
) -> Result<(), Error> {
    let (x0, x1) = range(series, 0, false);
    let (y0, y1) = range(series, 1, false);
    let mut chart = tryp!(
        name,
        ChartBuilder::on(area)
            .caption(title, (SANS, 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(x0..x1, y0..y1)
    );
    tryp!(
        name,
        chart
            .configure_mesh()
            .x_desc(xdesc)
            .y_desc(ydesc)
            .label_style((SANS, 13))
            .draw()
    );
    for (i, (label, pts)) in series.iter().enumerate() {
        let c = PALETTE[i % PALETTE.len()];
        tryp!(
            name,
            chart.draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))
        )
        .label(label.clone())
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
    }
    tryp!(
        name,
        chart
            .configure_series_labels()
            .label_font((SANS, 13))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
    );
    Ok(())
}

/// Training curves of one model: loss (train, validation) and accuracy or median error.
pub fn curves(path: &Path, model: &str, history: &crate::History) -> Result<(), Error> {
    let name = path.display().to_string();
    let col = |k: usize| -> Vec<(f64, f64)> {
        history
            .iter()
            .filter_map(|r| Some((r[0]?, r[k]?)))
            .collect()
    };
    let loss = vec![
        ("train loss".to_string(), col(1)),
        ("validation loss".to_string(), col(3)),
    ];
    let acc = vec![
        ("train accuracy".to_string(), col(2)),
        ("validation accuracy".to_string(), col(4)),
    ];
    let has_acc = acc.iter().any(|s| !s.1.is_empty());
    canvas(path, (1000, 420), None, |root| {
        tryp!(&name, root.fill(&WHITE));
        let (l, r) = root.split_horizontally(500);
        lines(&l, &name, &format!("{model}: loss"), "epoch", "loss", &loss)?;
        if has_acc {
            lines(
                &r,
                &name,
                &format!("{model}: accuracy"),
                "epoch",
                "accuracy",
                &acc,
            )?;
        } else {
            let km = vec![("validation median error".to_string(), col(5))];
            lines(
                &r,
                &name,
                &format!("{model}: median error"),
                "epoch",
                "km",
                &km,
            )?;
        }
        Ok(())
    })
}

/// Horizontal bars: one per (label, value in [0, 1]), with the value written beside it.
pub fn bars(
    path: &Path,
    title: &str,
    xdesc: &str,
    rows: &[(String, f64, usize)],
) -> Result<(), Error> {
    let name = path.display().to_string();
    let n = rows.len().max(1);
    let h = (90 + 34 * n as u32).max(300);
    canvas(path, (900, h), None, |root| {
        tryp!(&name, root.fill(&WHITE));
        let mut chart = tryp!(
            &name,
            ChartBuilder::on(root)
                .caption(title, (SANS, 20))
                .margin(14)
                .x_label_area_size(40)
                .y_label_area_size(230)
                .build_cartesian_2d(0f64..1.08f64, (0..n).into_segmented())
        );
        let labels: Vec<String> = rows.iter().map(|r| r.0.clone()).collect();
        tryp!(
            &name,
            chart
                .configure_mesh()
                .disable_y_mesh()
                .x_desc(xdesc)
                .y_labels(n)
                .y_label_formatter(&|v| match v {
                    SegmentValue::CenterOf(i) => labels.get(*i).cloned().unwrap_or_default(),
                    _ => String::new(),
                })
                .label_style((SANS, 13))
                .draw()
        );
        tryp!(
            &name,
            chart.draw_series(rows.iter().enumerate().map(|(i, (_, v, c))| {
                let col = PALETTE[*c % PALETTE.len()];
                let mut r = Rectangle::new(
                    [
                        (0.0, SegmentValue::Exact(i)),
                        (*v, SegmentValue::Exact(i + 1)),
                    ],
                    col.filled(),
                );
                r.set_margin(4, 4, 0, 0);
                r
            }))
        );
        tryp!(
            &name,
            chart.draw_series(rows.iter().enumerate().map(|(i, (_, v, _))| {
                Text::new(
                    format!("{v:.3}"),
                    (v + 0.01, SegmentValue::CenterOf(i)),
                    (SANS, 13).into_font(),
                )
            }))
        );
        Ok(())
    })
}

/// The CDF of location errors per predictor, on a log distance axis, with the radii marked.
pub fn error_cdf(path: &Path, series: &[(String, Vec<f64>)], radii: &[f64]) -> Result<(), Error> {
    let name = path.display().to_string();
    canvas(path, (900, 520), None, |root| {
        tryp!(&name, root.fill(&WHITE));
        let mut chart = tryp!(
            &name,
            ChartBuilder::on(root)
                .caption("Location error (CDF)", (SANS, 20))
                .margin(14)
                .x_label_area_size(40)
                .y_label_area_size(60)
                .build_cartesian_2d((0.5f64..25000f64).log_scale(), 0f64..1f64)
        );
        tryp!(
            &name,
            chart
                .configure_mesh()
                .x_desc("error, km (log)")
                .y_desc("share of photos within")
                .label_style((SANS, 13))
                .draw()
        );
        for &r in radii {
            tryp!(
                &name,
                chart.draw_series(LineSeries::new(
                    [(r, 0.0), (r, 1.0)],
                    RGBColor(200, 200, 200).stroke_width(1)
                ))
            );
        }
        for (i, (label, errors)) in series.iter().enumerate() {
            let mut e: Vec<f64> = errors.iter().map(|v| v.max(0.5)).collect();
            e.sort_by(f64::total_cmp);
            let n = e.len().max(1) as f64;
            let pts: Vec<(f64, f64)> = std::iter::once((0.5, 0.0))
                .chain(e.iter().enumerate().map(|(k, &v)| (v, (k + 1) as f64 / n)))
                .chain(std::iter::once((25000.0, 1.0)))
                .collect();
            let c = PALETTE[i % PALETTE.len()];
            tryp!(
                &name,
                chart.draw_series(LineSeries::new(pts, c.stroke_width(2)))
            )
            .label(label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
        }
        tryp!(
            &name,
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .label_font((SANS, 13))
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()
        );
        Ok(())
    })
}

/// Predicted against true locations on the map (the world, or the region the photos cover:
/// see [`worldmap::Extent::around`]), a line joining each pair.
pub fn world_map(path: &Path, title: &str, pairs: &[([f64; 2], [f64; 2])]) -> Result<(), Error> {
    let name = path.display().to_string();
    // Zoomed to the photos when they cover less than a hemisphere.
    let extent = worldmap::Extent::around(pairs.iter().flat_map(|(t, p)| [*t, *p]));
    let map = worldmap::render(&extent);
    canvas(path, (extent.width, extent.height), Some(&map), |root| {
        let px = |p: [f64; 2]| {
            let (x, y) = extent.pixel(p[0], p[1]);
            (x.round() as i32, y.round() as i32)
        };
        let link = RGBColor(120, 120, 120).mix(0.35);
        for (truth, pred) in pairs {
            tryp!(
                &name,
                root.draw(&PathElement::new(vec![px(*truth), px(*pred)], link))
            );
        }
        for (truth, _) in pairs {
            tryp!(
                &name,
                root.draw(&Circle::new(px(*truth), 2, BLACK.filled()))
            );
        }
        for (_, pred) in pairs {
            tryp!(
                &name,
                root.draw(&Circle::new(px(*pred), 3, PALETTE[3].filled()))
            );
        }
        // Title and legend in a box at the top left.
        tryp!(
            &name,
            root.draw(&Rectangle::new(
                [(8, 8), (430, 82)],
                WHITE.mix(0.85).filled()
            ))
        );
        tryp!(
            &name,
            root.draw(&Text::new(title.to_string(), (16, 14), (SANS, 18)))
        );
        tryp!(&name, root.draw(&Circle::new((22, 50), 3, BLACK.filled())));
        tryp!(
            &name,
            root.draw(&Text::new("true location", (32, 42), (SANS, 14)))
        );
        tryp!(
            &name,
            root.draw(&Circle::new((22, 70), 4, PALETTE[3].filled()))
        );
        tryp!(
            &name,
            root.draw(&Text::new("predicted", (32, 62), (SANS, 14)))
        );
        Ok(())
    })
}

/// The confusion matrix as a heat map: rows true, columns predicted, each cell shaded by
/// its share of the row, with its count.
pub fn confusion(path: &Path, title: &str, labels: &[String], m: &[Vec<u64>]) -> Result<(), Error> {
    let name = path.display().to_string();
    let k = labels.len().max(1) as i32;
    let cell = (440 / k).clamp(28, 90);
    let (left, top) = (110, 70);
    let w = (left + cell * k + 40) as u32;
    let h = (top + cell * k + 70) as u32;
    let (w, h) = (w.max(400), h.max(300));
    canvas(path, (w, h), None, |root| {
        tryp!(&name, root.fill(&WHITE));
        tryp!(
            &name,
            root.draw(&Text::new(title.to_string(), (12, 12), (SANS, 18)))
        );
        tryp!(
            &name,
            root.draw(&Text::new("predicted →", (left, top - 40), (SANS, 13)))
        );
        for (i, row) in m.iter().enumerate() {
            let total: u64 = row.iter().sum::<u64>().max(1);
            for (j, &c) in row.iter().enumerate() {
                let share = c as f64 / total as f64;
                // White to the palette's blue.
                let shade = |hi: u8| (255.0 - share * (255.0 - hi as f64)) as u8;
                let colour = RGBColor(shade(31), shade(119), shade(180));
                let (x, y) = (left + j as i32 * cell, top + i as i32 * cell);
                tryp!(
                    &name,
                    root.draw(&Rectangle::new(
                        [(x, y), (x + cell, y + cell)],
                        colour.filled()
                    ))
                );
                tryp!(
                    &name,
                    root.draw(&Rectangle::new(
                        [(x, y), (x + cell, y + cell)],
                        RGBColor(210, 210, 210)
                    ))
                );
                let ink = if share > 0.55 { WHITE } else { BLACK };
                tryp!(
                    &name,
                    root.draw(&Text::new(
                        c.to_string(),
                        (x + cell / 2 - 8, y + cell / 2 - 7),
                        (SANS, 13).into_font().color(&ink)
                    ))
                );
            }
        }
        for (i, l) in labels.iter().enumerate() {
            let i = i as i32;
            tryp!(
                &name,
                root.draw(&Text::new(
                    l.clone(),
                    (12, top + i * cell + cell / 2 - 7),
                    (SANS, 13)
                ))
            );
            tryp!(
                &name,
                root.draw(&Text::new(
                    l.clone(),
                    (left + i * cell + 4, top - 20),
                    (SANS, 13)
                ))
            );
        }
        tryp!(
            &name,
            root.draw(&Text::new(
                "rows: true class",
                (12, top + k * cell + 14),
                (SANS, 13)
            ))
        );
        Ok(())
    })
}
