//! `geoloc predict PHOTOS... --model DIR`: the whole chain for new photos from a model
//! directory alone. The card says which pixels the head reads (geometry and views), which
//! backbone made its features (kind, layer, normalisation, the weights' blake3) and how
//! scores map to classes and locations; this module decodes with `geoloc_imaging`, runs the
//! backbone and head of `geoloc_models`, averages views, and writes top-k classes with
//! probabilities and a location per photo as Parquet, CSV or GeoJSON.
//!
//! A weights file whose blake3 is not the one the card records is refused: the head would
//! be reading features from another network.

use anyhow::{anyhow, bail, Context as _, Result};
use arrow::array::{
    ArrayRef, Float32Builder, Float64Array, Float64Builder, ListBuilder, RecordBatch, StringArray,
    StringBuilder, UInt32Array,
};
use arrow::datatypes::{DataType, Field, Schema};
use geoloc_imaging::{Geometry, Greyscale, PrepareOptions, Views};
use geoloc_models::backbone::{Backbone, BackboneSpec, HogParams, WeightsSource};
use geoloc_models::card::Task;
use geoloc_models::predict::{top_k, Predictor};
use geoloc_models::retrieval::{self, Index};
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Output formats of `predict`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Parquet,
    Csv,
    Geojson,
}

impl Format {
    /// The format of an output path by its extension.
    pub fn of(path: &Path) -> Option<Format> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "parquet" => Some(Format::Parquet),
            "csv" => Some(Format::Csv),
            "geojson" | "json" => Some(Format::Geojson),
            _ => None,
        }
    }
}

/// What `predict` is asked to do.
pub struct Request {
    pub photos: Vec<PathBuf>,
    pub model: PathBuf,
    /// The backbone's weights (default: the path the card records, against `root`).
    pub weights: Option<PathBuf>,
    pub root: PathBuf,
    pub out: PathBuf,
    pub format: Format,
    pub top_k: usize,
    pub device: String,
    pub batch: usize,
}

/// One photo's prediction.
#[derive(Debug, Clone)]
pub struct Prediction {
    pub path: String,
    pub views: u32,
    /// The top classes, most probable first (none for a latlon head).
    pub top: Vec<TopClass>,
    pub location: Option<[f64; 2]>,
    pub country: Option<String>,
    /// Where the predicted location is, in words (`Texas, United States of America`).
    pub place: Option<String>,
}

/// One of a prediction's top classes, with where it is: a country head's class is a
/// country; a geocell head's is an S2 cell, placed at the mean location of its train photos
/// (where the head puts a photo of that cell), with that location's country and region.
#[derive(Debug, Clone)]
pub struct TopClass {
    /// The class as the model names it (`FR`, an S2 cell token).
    pub class: String,
    pub prob: f32,
    pub location: Option<[f64; 2]>,
    pub place: Option<geoloc_core::country::Place>,
}

impl TopClass {
    /// The place as one readable string (`British Columbia, Canada`), else its coordinates
    /// (a cell far out at sea), else the class itself.
    pub fn label(&self) -> String {
        match (&self.place, self.location) {
            (Some(p), _) => p.label(),
            (None, Some(l)) => format!("{:.2}, {:.2}", l[0], l[1]),
            (None, None) => self.class.clone(),
        }
    }
}

/// The place of a location, or the nearest within 100 km of one at sea.
fn place_at(l: [f64; 2]) -> Option<geoloc_core::country::Place> {
    geoloc_core::country::place_near(
        geoloc_core::geo::LatLon {
            lat: l[0],
            lon: l[1],
        },
        100.0,
    )
}

/// A photo that got no prediction, and why.
#[derive(Debug, Clone)]
pub struct Skipped {
    pub path: String,
    pub reason: String,
}

/// The files under the given paths (directories walked, sorted; files as given).
pub fn collect(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut files: Vec<PathBuf> = walkdir::WalkDir::new(p)
                .follow_links(true)
                .into_iter()
                .filter_map(|e| e.ok())
                .filter(|e| e.file_type().is_file())
                .map(|e| e.into_path())
                .filter(|f| !is_sidecar(f))
                .collect();
            files.sort();
            out.extend(files);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

/// Files a photo folder holds beside its photos (licences, manifests, notes).
fn is_sidecar(p: &Path) -> bool {
    matches!(
        p.extension()
            .and_then(|e| e.to_str())
            .map(|e| e.to_ascii_lowercase())
            .as_deref(),
        Some("json" | "txt" | "md" | "csv" | "tsv" | "toml" | "xmp")
    )
}

/// The network (or HOG) that turns pixels into the head's inputs, from what the card records
/// of them (`input_kind`, `input`); `None` for a head on pixels (the small CNN).
fn backbone(
    req: &Request,
    (input_kind, input): (&str, &serde_json::Value),
    device: &candle_core::Device,
) -> Result<Option<Backbone>> {
    if input_kind == "images" {
        return Ok(None);
    }
    let get = |k: &str| -> Result<serde_json::Value> {
        input
            .get(k)
            .cloned()
            .ok_or_else(|| anyhow!("the model card's input records no `{k}`"))
    };
    let spec = BackboneSpec {
        kind: serde_json::from_value(get("backbone")?).context("the card's backbone")?,
        layer: serde_json::from_value(input.get("layer").cloned().unwrap_or_default())
            .context("the card's layer")?,
        normalisation: serde_json::from_value(
            input.get("normalisation").cloned().unwrap_or_default(),
        )
        .context("the card's normalisation")?,
        hog: serde_json::from_value::<Option<HogParams>>(
            input.get("hog").cloned().unwrap_or_default(),
        )
        .context("the card's HOG parameters")?
        .unwrap_or_default(),
    };
    let source = if spec.kind == geoloc_models::backbone::BackboneKind::Hog {
        None
    } else if input.get("random_init").and_then(|v| v.as_bool()) == Some(true) {
        let seed = input.get("seed").and_then(|v| v.as_u64()).unwrap_or(0);
        Some(WeightsSource::Random { seed })
    } else {
        let path = match &req.weights {
            Some(w) => w.clone(),
            None => {
                let w = input
                    .get("weights")
                    .and_then(|v| v.as_str())
                    .ok_or_else(|| {
                        anyhow!("the model card names no weights file; give --weights")
                    })?;
                geoloc_core::config::resolve(&req.root, Path::new(w))
            }
        };
        let want = input
            .get("weights_blake3")
            .and_then(|v| v.as_str())
            .unwrap_or("");
        let got = geoloc_models::backbone::weights_checksum(&path).with_context(|| {
            format!(
                "reading the backbone's weights {} (give --weights FILE or --root DIR)",
                path.display()
            )
        })?;
        if got != want {
            bail!(
                "{} is not the backbone this model was trained on: its blake3 is {got}, the \
                 model's features came from weights with blake3 {want}",
                path.display()
            );
        }
        Some(WeightsSource::File { path, key: None })
    };
    let b = Backbone::load(
        spec.clone(),
        source.as_ref(),
        device,
        candle_core::DType::F32,
    )?;
    Ok(Some(b))
}

/// How the head's pixels are made, from the card's `input`.
fn prepare_options(input: &serde_json::Value) -> Result<PrepareOptions> {
    let geometry: Geometry = serde_json::from_value(
        input
            .get("geometry")
            .cloned()
            .ok_or_else(|| anyhow!("the model card's input records no geometry"))?,
    )
    .context("the card's geometry")?;
    let views: Views = serde_json::from_value(
        input
            .get("views")
            .cloned()
            .unwrap_or(serde_json::json!({"kind": "centre"})),
    )
    .context("the card's views")?;
    Ok(PrepareOptions {
        decode: geoloc_imaging::DecodeOptions {
            limits: Default::default(),
            // A user's black-and-white photo still gets a prediction.
            greyscale: Greyscale::Convert,
        },
        geometry,
        views,
        dct_scaling: true,
    })
}

/// A photo's views' pixels, or why it has none.
type ViewsOrReason = Result<Vec<Vec<u8>>, String>;

/// Runs the chain on every photo.
pub fn predict(req: &Request) -> Result<(Vec<Prediction>, Vec<Skipped>)> {
    let device = geoloc_models::backbone::parse_device(&req.device)?;
    if req.model.join(retrieval::INDEX_CARD_FILE).is_file() {
        return predict_by_index(req, &device);
    }
    geoloc_core::artifact::open(&req.model, "model", 1, true)
        .with_context(|| format!("model directory {}", req.model.display()))?;
    let p = Predictor::load(&req.model, &device)
        .with_context(|| format!("loading {}", req.model.display()))?;
    let opts = prepare_options(&p.card.input)?;
    let net = backbone(req, (&p.card.input_kind, &p.card.input), &device)?;
    let (w, h) = opts.geometry.output_size();
    if let Some(b) = &net {
        let dim = b.spec.output_dim(w, h)?;
        if dim != p.input_dim() {
            bail!(
                "the backbone gives {dim} values per image at {w}x{h}, the head reads {}",
                p.input_dim()
            );
        }
    } else if (w * h * 3) as usize != p.input_dim() {
        bail!(
            "the head reads {} values, {w}x{h} RGB pixels are {}",
            p.input_dim(),
            w * h * 3
        );
    }
    let files = collect(&req.photos)?;
    let mut preds = Vec::new();
    let mut skipped = Vec::new();
    // Each class's place, once: a country head's class is a country; a geocell is placed
    // at its train photos' mean location.
    let class_places: Vec<Option<geoloc_core::country::Place>> = match p.card.task {
        Task::Latlon => Vec::new(),
        Task::Country => p
            .card
            .classes
            .iter()
            .map(|c| Some(geoloc_core::country::place_of_code(c)))
            .collect(),
        Task::Geocell => p
            .card
            .class_locations
            .iter()
            .map(|l| l.and_then(place_at))
            .collect(),
    };
    for chunk in files.chunks(req.batch.max(1)) {
        let prepared = prepare_chunk(chunk, &opts);
        let (rows, owner, ok) = view_rows(&prepared, &mut skipped);
        if rows.is_empty() {
            continue;
        }
        let x: Vec<f32> = match &net {
            Some(b) => b.features(&rows, w, h)?,
            None => rows
                .iter()
                .flat_map(|r| r.iter().map(|&v| v as f32))
                .collect(),
        };
        let scores = p.scores(&x)?;
        let d = p.output_dim();
        let mut acc = geoloc_models::predict::PhotoScores::new(ok.len(), d);
        for (j, &o) in owner.iter().enumerate() {
            acc.add(o, &scores[j * d..(j + 1) * d]);
        }
        for (i, (name, views)) in ok.into_iter().enumerate() {
            let s = acc.mean(i);
            let top: Vec<TopClass> = if p.card.task == Task::Latlon {
                Vec::new()
            } else {
                top_k(&s, req.top_k.max(1))
                    .into_iter()
                    .map(|(c, prob)| TopClass {
                        class: p.card.classes.get(c).cloned().unwrap_or_default(),
                        prob,
                        location: p.card.class_locations.get(c).copied().flatten(),
                        place: class_places.get(c).cloned().flatten(),
                    })
                    .collect()
            };
            let location = p.locate(&s);
            let (country, place) = match p.card.task {
                Task::Country => {
                    let t = top.first();
                    (t.map(|t| t.class.clone()), t.map(TopClass::label))
                }
                _ => {
                    let here = location.and_then(place_at);
                    (
                        here.as_ref().filter(|h| !h.near).map(|h| h.country.clone()),
                        here.as_ref().map(|h| h.label()),
                    )
                }
            };
            preds.push(Prediction {
                path: name,
                views,
                top,
                location,
                country,
                place,
            });
        }
    }
    Ok((preds, skipped))
}

/// Decodes and cuts the views of `chunk`'s photos in parallel.
fn prepare_chunk(chunk: &[PathBuf], opts: &PrepareOptions) -> Vec<(String, ViewsOrReason)> {
    chunk
        .par_iter()
        .map(|f| {
            let name = f.display().to_string();
            let r = std::fs::read(f)
                .map_err(|e| format!("unreadable: {e}"))
                .and_then(|bytes| {
                    let seed = xxhash_rust::xxh64::xxh64(name.as_bytes(), 0);
                    geoloc_imaging::prepare(&bytes, opts, seed)
                        .map(|pr| pr.views.into_iter().map(|v| v.pixels).collect())
                        .map_err(|e| format!("{}: {e}", e.reason()))
                });
            (name, r)
        })
        .collect()
}

/// The prepared photos' view rows, each row's photo (an index into the third list), and the
/// photos with their view counts; photos without views go to `skipped`.
type ViewRows<'a> = (Vec<&'a [u8]>, Vec<usize>, Vec<(String, u32)>);

fn view_rows<'a>(
    prepared: &'a [(String, ViewsOrReason)],
    skipped: &mut Vec<Skipped>,
) -> ViewRows<'a> {
    let mut rows: Vec<&[u8]> = Vec::new();
    let mut owner: Vec<usize> = Vec::new();
    let mut ok: Vec<(String, u32)> = Vec::new();
    for (name, r) in prepared {
        match r {
            Ok(views) => {
                for v in views {
                    rows.push(v);
                    owner.push(ok.len());
                }
                ok.push((name.clone(), views.len() as u32));
            }
            Err(reason) => skipped.push(Skipped {
                path: name.clone(),
                reason: reason.clone(),
            }),
        }
    }
    (rows, owner, ok)
}

/// `predict` with a retrieval index (train's `head = "knn"`): each photo's views' features,
/// normalised and averaged, are searched in the index; the location is the neighbours'
/// vote, the top classes are the nearest train photos (their ids, cosine similarity,
/// location and place).
fn predict_by_index(
    req: &Request,
    device: &candle_core::Device,
) -> Result<(Vec<Prediction>, Vec<Skipped>)> {
    geoloc_core::artifact::open(&req.model, "index", 1, true)
        .with_context(|| format!("index directory {}", req.model.display()))?;
    let index =
        Index::load(&req.model).with_context(|| format!("loading {}", req.model.display()))?;
    let card = &index.card;
    let opts = prepare_options(&card.input)?;
    let net = backbone(req, (&card.input_kind, &card.input), device)?
        .ok_or_else(|| anyhow!("a retrieval index is built from features, not pixels"))?;
    let (w, h) = opts.geometry.output_size();
    let dim = net.spec.output_dim(w, h)?;
    if dim != index.dim() {
        bail!(
            "the backbone gives {dim} values per image at {w}x{h}, the index holds {}",
            index.dim()
        );
    }
    let k = card.vote.k.max(req.top_k);
    let files = collect(&req.photos)?;
    let mut preds = Vec::new();
    let mut skipped = Vec::new();
    for chunk in files.chunks(req.batch.max(1)) {
        let prepared = prepare_chunk(chunk, &opts);
        let (rows, owner, ok) = view_rows(&prepared, &mut skipped);
        if rows.is_empty() {
            continue;
        }
        let x = net.features(&rows, w, h)?;
        let mut means: Vec<retrieval::QueryMean> =
            ok.iter().map(|_| retrieval::QueryMean::new(dim)).collect();
        for (j, &o) in owner.iter().enumerate() {
            means[o].add(&x[j * dim..(j + 1) * dim]);
        }
        let mut queries = Vec::with_capacity(ok.len() * dim);
        let mut asked = Vec::with_capacity(ok.len());
        for ((name, views), m) in ok.into_iter().zip(&means) {
            match m.finish() {
                Some(q) => {
                    queries.extend_from_slice(&q);
                    asked.push((name, views));
                }
                None => skipped.push(Skipped {
                    path: name,
                    reason: "zero-features: every view's feature vector is zero".into(),
                }),
            }
        }
        for ((name, views), hits) in asked.into_iter().zip(index.search(&queries, k)) {
            let location = index.place(&hits);
            let here = location.and_then(place_at);
            let top = hits
                .iter()
                .take(req.top_k.max(1))
                .map(|h| {
                    let l = index.location(h.row);
                    TopClass {
                        class: index.id(h.row).to_owned(),
                        prob: h.sim,
                        location: Some(l),
                        place: place_at(l),
                    }
                })
                .collect();
            preds.push(Prediction {
                path: name,
                views,
                top,
                location,
                country: here.as_ref().filter(|h| !h.near).map(|h| h.country.clone()),
                place: here.as_ref().map(|h| h.label()),
            });
        }
    }
    Ok((preds, skipped))
}

/// Writes the predictions in `format` to `out` (under a temporary name, then renamed).
pub fn write(preds: &[Prediction], out: &Path, format: Format) -> Result<()> {
    let dir = out
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "predictions".into());
    let tmp = dir.join(format!(".{name}.tmp"));
    match format {
        Format::Parquet => {
            let f = std::fs::File::create(&tmp).with_context(|| format!("{}", tmp.display()))?;
            let batch = batch(preds)?;
            let mut w = parquet::arrow::ArrowWriter::try_new(f, batch.schema(), None)?;
            w.write(&batch)?;
            w.close()?;
        }
        Format::Csv => {
            let mut w =
                csv::Writer::from_path(&tmp).with_context(|| format!("{}", tmp.display()))?;
            w.write_record([
                "path",
                "views",
                "lat",
                "lon",
                "country",
                "place",
                "top_classes",
                "top_probs",
                "top_places",
                "top_locations",
            ])?;
            for p in preds {
                let (lat, lon) = p.location.map_or((String::new(), String::new()), |l| {
                    (format!("{:.6}", l[0]), format!("{:.6}", l[1]))
                });
                w.write_record([
                    p.path.clone(),
                    p.views.to_string(),
                    lat,
                    lon,
                    p.country.clone().unwrap_or_default(),
                    p.place.clone().unwrap_or_default(),
                    join(&p.top, |t| t.class.clone()),
                    join(&p.top, |t| format!("{:.4}", t.prob)),
                    join(&p.top, TopClass::label),
                    join(&p.top, |t| {
                        t.location
                            .map(|l| format!("{:.4},{:.4}", l[0], l[1]))
                            .unwrap_or_default()
                    }),
                ])?;
            }
            w.flush()?;
        }
        Format::Geojson => {
            let features: Vec<serde_json::Value> = preds
                .iter()
                .map(|p| {
                    serde_json::json!({
                        "type": "Feature",
                        "geometry": p.location.map(|l| serde_json::json!({
                            "type": "Point", "coordinates": [l[1], l[0]]
                        })),
                        "properties": {
                            "path": p.path,
                            "views": p.views,
                            "country": p.country,
                            "place": p.place,
                            "top": p.top.iter().map(|t| serde_json::json!({
                                "class": t.class,
                                "p": t.prob,
                                "place": t.label(),
                                "lat": t.location.map(|l| l[0]),
                                "lon": t.location.map(|l| l[1]),
                                "country": t.place.as_ref().map(|x| &x.country),
                                "country_name": t.place.as_ref().map(|x| &x.country_name),
                                "region": t.place.as_ref().and_then(|x| x.region.as_ref()),
                                "region_name": t.place.as_ref().and_then(|x| x.region_name.as_ref()),
                            })).collect::<Vec<_>>(),
                        }
                    })
                })
                .collect();
            let doc = serde_json::json!({"type": "FeatureCollection", "features": features});
            std::fs::write(&tmp, serde_json::to_vec_pretty(&doc)?)
                .with_context(|| format!("{}", tmp.display()))?;
        }
    }
    std::fs::rename(&tmp, out).with_context(|| format!("writing {}", out.display()))
}

/// `f` of each top class, joined by `|` (a CSV cell).
fn join(top: &[TopClass], f: impl Fn(&TopClass) -> String) -> String {
    top.iter().map(f).collect::<Vec<_>>().join("|")
}

/// The Parquet columns: path, views, lat, lon, country, place, then per top class (lists, in
/// rank order) its class, probability, place, latitude and longitude.
fn batch(preds: &[Prediction]) -> Result<RecordBatch> {
    let list = |t: DataType| DataType::List(Arc::new(Field::new("item", t, true)));
    let schema = Arc::new(Schema::new(vec![
        Field::new("path", DataType::Utf8, false),
        Field::new("views", DataType::UInt32, false),
        Field::new("lat", DataType::Float64, true),
        Field::new("lon", DataType::Float64, true),
        Field::new("country", DataType::Utf8, true),
        Field::new("place", DataType::Utf8, true),
        Field::new("top_classes", list(DataType::Utf8), false),
        Field::new("top_probs", list(DataType::Float32), false),
        Field::new("top_places", list(DataType::Utf8), false),
        Field::new("top_lats", list(DataType::Float64), false),
        Field::new("top_lons", list(DataType::Float64), false),
    ]));
    let mut tc = ListBuilder::new(StringBuilder::new());
    let mut tp = ListBuilder::new(Float32Builder::new());
    let mut tpl = ListBuilder::new(StringBuilder::new());
    let mut tla = ListBuilder::new(Float64Builder::new());
    let mut tlo = ListBuilder::new(Float64Builder::new());
    for p in preds {
        for t in &p.top {
            tc.values().append_value(&t.class);
            tp.values().append_value(t.prob);
            tpl.values().append_value(t.label());
            tla.values().append_option(t.location.map(|l| l[0]));
            tlo.values().append_option(t.location.map(|l| l[1]));
        }
        tc.append(true);
        tp.append(true);
        tpl.append(true);
        tla.append(true);
        tlo.append(true);
    }
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(
            preds.iter().map(|p| p.path.as_str()).collect::<Vec<_>>(),
        )),
        Arc::new(UInt32Array::from(
            preds.iter().map(|p| p.views).collect::<Vec<_>>(),
        )),
        Arc::new(Float64Array::from(
            preds
                .iter()
                .map(|p| p.location.map(|l| l[0]))
                .collect::<Vec<_>>(),
        )),
        Arc::new(Float64Array::from(
            preds
                .iter()
                .map(|p| p.location.map(|l| l[1]))
                .collect::<Vec<_>>(),
        )),
        Arc::new(StringArray::from(
            preds
                .iter()
                .map(|p| p.country.as_deref())
                .collect::<Vec<_>>(),
        )),
        Arc::new(StringArray::from(
            preds.iter().map(|p| p.place.as_deref()).collect::<Vec<_>>(),
        )),
        Arc::new(tc.finish()),
        Arc::new(tp.finish()),
        Arc::new(tpl.finish()),
        Arc::new(tla.finish()),
        Arc::new(tlo.finish()),
    ];
    Ok(RecordBatch::try_new(schema, cols)?)
}
