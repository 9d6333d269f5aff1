//! The ingest pipeline inside the stage: read sources in chunks, parse and enrich chunks in
//! parallel, select rows in input order, write the samples dataset.
//!
//! Memory is bounded by the chunks in flight (a few times `threads x CHUNK_BYTES`), the
//! dedup set (one 128-bit hash per kept id: 16 bytes plus hash-table overhead, 19-37 bytes
//! per row), and, only with `top_k` or `balance`, one u64 per row for the counting pass.

use crate::config::{ClassField, Config, Format, Source, Split, SplitBy};
use crate::formats::{self, Media};
use crate::layout::{check_inside_root, Layout};
use crate::split::split_of;
use crate::text::{Chunk, LineChunks};
use crate::{Error, Summary};
use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float64Builder, Int32Builder, RecordBatch,
    StringBuilder,
};
use arrow::compute::filter_record_batch;
use arrow::datatypes::Int32Type;
use geoloc_core::dataset::{DatasetWriter, Reject};
use geoloc_core::geo::{CoordError, LatLon};
use geoloc_core::stage::Context;
use hashbrown::{HashMap, HashSet};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

const CHUNK_BYTES: usize = 2 << 20;
const BATCH_ROWS: usize = 64 * 1024;

/// A parsed row before enrichment.
struct Raw {
    id: String,
    user: Option<String>,
    coords: Option<(f64, f64)>,
    country: Option<String>,
    /// The ISO 3166-1 alpha-2 code the source states (a CSV country column). It labels rows
    /// without coordinates for the country task, and rows whose coordinates fall where the
    /// boundaries know no country.
    stated_code: Option<String>,
    place: Option<String>,
    image: Option<String>,
    media: Media,
    line: Option<u64>,
    /// Why the row has no coordinates, when a reader knows (EXIF errors).
    no_coords_why: Option<String>,
}

/// A row ready for selection.
pub(crate) struct Row {
    pub id: String,
    pub user: Option<String>,
    pub lat: Option<f64>,
    pub lon: Option<f64>,
    pub country: Option<String>,
    pub country_code: Option<String>,
    pub place: Option<String>,
    pub image: String,
    pub split: Split,
    pub media: Media,
    pub line: Option<u64>,
    pub input: Arc<str>,
}

pub(crate) enum Item {
    Row(Row),
    Reject(Reject),
}

/// What enrichment of one source needs.
struct Enricher<'a> {
    input: Arc<str>,
    layout: Layout,
    fixed_split: Option<Split>,
    truth: Option<HashMap<String, (f64, f64)>>,
    users: Option<&'a HashMap<u128, String>>,
    cfg: &'a Config,
}

fn reject(
    input: &str,
    line: Option<u64>,
    id: Option<String>,
    reason: &'static str,
    detail: String,
) -> Item {
    Item::Reject(Reject {
        id,
        input: input.to_owned(),
        line,
        reason,
        detail,
    })
}

impl Enricher<'_> {
    fn line_error(&self, line: u64, e: formats::LineError) -> Item {
        reject(&self.input, Some(line), e.id, e.reason, e.detail)
    }

    fn enrich(&self, mut r: Raw) -> Item {
        if r.coords.is_none() {
            if let Some(t) = &self.truth {
                r.coords = t.get(&r.id).copied();
            }
        }
        let stated = r.stated_code.take();
        let (lat, lon, country_code) = match r.coords {
            Some((lat, lon)) => match LatLon::new(lat, lon) {
                Ok(p) => (
                    Some(lat),
                    Some(lon),
                    geoloc_core::country::country_code(p).or(stated),
                ),
                Err(e @ CoordError::NullIsland) => {
                    return reject(
                        &self.input,
                        r.line,
                        Some(r.id),
                        "null-island",
                        e.to_string(),
                    )
                }
                Err(e) => {
                    return reject(
                        &self.input,
                        r.line,
                        Some(r.id),
                        "coordinate-out-of-range",
                        e.to_string(),
                    )
                }
            },
            // A stated country and no coordinates: a row for the country task (location tasks
            // skip it, saying so).
            None if stated.is_some() => (None, None, stated),
            None => {
                if !self.cfg.keep_unlocated && self.fixed_split != Some(Split::Test) {
                    let why = r
                        .no_coords_why
                        .take()
                        .unwrap_or_else(|| "the row has no coordinates".into());
                    return reject(&self.input, r.line, Some(r.id), "no-coordinates", why);
                }
                (None, None, None)
            }
        };
        let image = match r.image.take() {
            Some(i) => i,
            None => self.layout.render(&r.id),
        };
        let image = match check_inside_root(&image) {
            Ok(i) => i,
            Err(e) => return reject(&self.input, r.line, Some(r.id), "path-escapes-root", e),
        };
        if r.user.is_none() {
            if let Some(u) = self.users {
                r.user = u.get(&id_key(&r.id)).cloned();
            }
        }
        let split = match self.fixed_split {
            Some(s) => s,
            None => {
                let key = match (self.cfg.split.by, &r.user) {
                    (SplitBy::User, Some(u)) => u.as_str(),
                    _ => r.id.as_str(),
                };
                split_of(key, &self.cfg.split)
            }
        };
        Item::Row(Row {
            id: r.id,
            user: r.user,
            lat,
            lon,
            country: r.country,
            country_code,
            place: r.place,
            image,
            split,
            media: r.media,
            line: r.line,
            input: self.input.clone(),
        })
    }

    fn parse_line(&self, format: Format, line_no: u64, line: &[u8]) -> Item {
        let raw = match format {
            Format::MediaevalLocale => match formats::mediaeval::parse_line(line) {
                Ok(r) => {
                    let country = r.country().map(str::to_owned);
                    Raw {
                        id: r.hash,
                        user: None,
                        coords: r.coords,
                        country,
                        place: Some(r.node_name).filter(|s| !s.is_empty()),
                        image: None,
                        media: r.media,
                        line: Some(line_no),
                        no_coords_why: None,
                        stated_code: None,
                    }
                }
                Err(e) => return self.line_error(line_no, e),
            },
            Format::Yfcc => match formats::yfcc::parse_line(line) {
                Ok(r) => Raw {
                    id: r.photo_id,
                    user: Some(r.user_nsid).filter(|s| !s.is_empty()),
                    coords: r.coords,
                    country: None,
                    place: None,
                    image: None,
                    media: r.media,
                    line: Some(line_no),
                    no_coords_why: None,
                    stated_code: None,
                },
                Err(e) => return self.line_error(line_no, e),
            },
            Format::Truth => match formats::truth::parse_line(line) {
                Ok(r) => Raw {
                    id: r.id,
                    user: None,
                    coords: Some((r.lat, r.lon)),
                    country: None,
                    place: None,
                    image: None,
                    media: Media::Photo,
                    line: Some(line_no),
                    no_coords_why: None,
                    stated_code: None,
                },
                Err(e) => return self.line_error(line_no, e),
            },
            Format::Csv | Format::ExifFolder => unreachable!("not a line format"),
        };
        self.enrich(raw)
    }
}

/// 128-bit key of an id for the dedup set and joins (xxh3-128: collisions at 4.7M ids have
/// probability ~1e-26).
pub(crate) fn id_key(id: &str) -> u128 {
    xxhash_rust::xxh3::xxh3_128(id.as_bytes())
}

fn open(path: &Path) -> Result<std::fs::File, Error> {
    std::fs::File::open(path).map_err(|e| Error::Io {
        path: path.to_owned(),
        source: e,
    })
}

/// Reads a line-oriented file in chunks and maps each chunk in parallel, `f` consuming the
/// results in input order.
fn for_each_chunk<T: Send>(
    path: &Path,
    progress: &ProgressBar,
    map: impl Fn(&Chunk) -> T + Sync,
    mut f: impl FnMut(T) -> Result<(), Error>,
) -> Result<(), Error> {
    let mut chunks = LineChunks::new(open(path)?, CHUNK_BYTES);
    let in_flight = 2 * rayon::current_num_threads().max(1);
    let mut read_group = || -> Result<Vec<Chunk>, Error> {
        let mut group = Vec::with_capacity(in_flight);
        while group.len() < in_flight {
            match chunks.next_chunk().map_err(|e| Error::Io {
                path: path.to_owned(),
                source: e,
            })? {
                Some(c) => group.push(c),
                None => break,
            }
        }
        Ok(group)
    };
    let parse = |group: Vec<Chunk>| -> (Vec<T>, usize) {
        let bytes = group.iter().map(|c| c.data.len()).sum();
        (group.par_iter().map(&map).collect(), bytes)
    };
    // Double buffering: the next group is read and parsed (on a helper thread that feeds
    // rayon's pool) while this thread hands the current one to `f` in order.
    std::thread::scope(|scope| -> Result<(), Error> {
        let mut current = parse(read_group()?);
        loop {
            let next = read_group()?;
            let pending = (!next.is_empty()).then(|| scope.spawn(|| parse(next)));
            let (items, bytes) = current;
            for o in items {
                f(o)?;
            }
            progress.inc(bytes as u64);
            match pending {
                Some(h) => {
                    current = h
                        .join()
                        .map_err(|_| Error::Config("a parser thread panicked".into()))?
                }
                None => return Ok(()),
            }
        }
    })
}

/// Loads a truth file into a map; bad lines become rejects.
fn load_truth(
    path: &Path,
    label: &str,
    rejects: &mut Vec<Reject>,
) -> Result<HashMap<String, (f64, f64)>, Error> {
    let mut map = HashMap::new();
    let hidden = ProgressBar::hidden();
    for_each_chunk(
        path,
        &hidden,
        |c| {
            c.lines()
                .map(|(n, l)| (n, formats::truth::parse_line(l)))
                .collect::<Vec<_>>()
        },
        |rows| {
            for (n, r) in rows {
                match r {
                    Ok(t) => {
                        map.insert(t.id, (t.lat, t.lon));
                    }
                    Err(e) => rejects.push(Reject {
                        id: e.id,
                        input: label.to_owned(),
                        line: Some(n),
                        reason: e.reason,
                        detail: e.detail,
                    }),
                }
            }
            Ok(())
        },
    )?;
    Ok(map)
}

/// Streams every source, calling `f` on each chunk of items in input order.
pub(crate) struct Sources<'a> {
    pub cfg: &'a Config,
    pub ctx: &'a Context,
    pub users: Option<HashMap<u128, String>>,
    pub progress: ProgressBar,
}

impl<'a> Sources<'a> {
    pub fn for_each(
        &self,
        pre_rejects: &mut Vec<Reject>,
        f: impl FnMut(Vec<Item>) -> Result<(), Error>,
    ) -> Result<(), Error> {
        self.for_each_post(pre_rejects, &|items| items, f)
    }

    /// Like [`Sources::for_each`], with `post` applied to each chunk's items first, in the
    /// parallel stage where the format allows (line formats), so `f` gets less to do.
    pub fn for_each_post<U: Send>(
        &self,
        pre_rejects: &mut Vec<Reject>,
        post: &(dyn Fn(Vec<Item>) -> U + Sync),
        mut f: impl FnMut(U) -> Result<(), Error>,
    ) -> Result<(), Error> {
        for src in &self.cfg.sources {
            self.source(src, pre_rejects, post, &mut f)?;
        }
        Ok(())
    }

    fn source<U: Send>(
        &self,
        src: &Source,
        pre_rejects: &mut Vec<Reject>,
        post: &(dyn Fn(Vec<Item>) -> U + Sync),
        f: &mut impl FnMut(U) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let path = self.ctx.resolve(&src.path);
        let label: Arc<str> = Arc::from(src.path.display().to_string());
        let layout = Layout::parse(src.layout.as_deref().unwrap_or(src.format.default_layout()))
            .map_err(Error::Config)?;
        let truth = match &src.truth {
            Some(t) => Some(load_truth(
                &self.ctx.resolve(t),
                &t.display().to_string(),
                pre_rejects,
            )?),
            None => None,
        };
        let en = Enricher {
            input: label.clone(),
            layout,
            fixed_split: src.split,
            truth,
            users: self.users.as_ref(),
            cfg: self.cfg,
        };
        match src.format {
            Format::MediaevalLocale | Format::Yfcc | Format::Truth => for_each_chunk(
                &path,
                &self.progress,
                |c| {
                    post(
                        c.lines()
                            .map(|(n, l)| en.parse_line(src.format, n, l))
                            .collect::<Vec<_>>(),
                    )
                },
                &mut *f,
            ),
            Format::Csv => self.csv(&path, src.swap_lat_lon, &en, &mut |items| f(post(items))),
            Format::ExifFolder => self.exif(&path, &en, &mut |items| f(post(items))),
        }
    }

    fn csv(
        &self,
        path: &Path,
        swap: Option<bool>,
        en: &Enricher,
        f: &mut dyn FnMut(Vec<Item>) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let bad = |e: csv::Error| Error::Input {
            path: path.to_owned(),
            msg: e.to_string(),
        };
        let reader = || -> Result<_, Error> {
            Ok(csv::ReaderBuilder::new()
                .flexible(true)
                .has_headers(true)
                .from_reader(std::io::BufReader::with_capacity(1 << 20, open(path)?)))
        };
        // Detect columns (and swapped lat/lon headers) on the first 100k rows.
        let mut r = reader()?;
        let headers = r.headers().map_err(bad)?.clone();
        let sample: Vec<csv::StringRecord> =
            r.records().take(100_000).filter_map(|x| x.ok()).collect();
        let cols = formats::csv::Columns::detect(&headers, sample.iter(), swap).map_err(|msg| {
            Error::Input {
                path: path.to_owned(),
                msg,
            }
        })?;
        if cols.swapped {
            tracing::warn!(file = %path.display(), "latitude/longitude headers are swapped (values out of range): reading them swapped");
        }
        drop(sample);
        let mut r = reader()?;
        type Pending = Vec<(Option<u64>, Result<csv::StringRecord, String>)>;
        let flush = |pending: &mut Pending,
                     f: &mut dyn FnMut(Vec<Item>) -> Result<(), Error>|
         -> Result<(), Error> {
            let items: Vec<Item> = pending
                .par_iter()
                .map(|(line, rec)| match rec {
                    Err(e) => reject(&en.input, *line, None, "bad-csv", e.clone()),
                    Ok(rec) => match formats::csv::parse_record(&cols, rec) {
                        Ok(row) => {
                            let stated = row.country.as_deref().and_then(formats::csv::alpha2);
                            if let (None, None, Some(c)) = (row.coords, &stated, &row.country) {
                                return reject(
                                    &en.input,
                                    *line,
                                    Some(row.id),
                                    "bad-country",
                                    format!(
                                        "country {c:?} is not an ISO 3166-1 alpha-2 code, and the row has no coordinates"
                                    ),
                                );
                            }
                            en.enrich(Raw {
                                image: None,
                                id: row.id,
                                user: row.user,
                                coords: row.coords,
                                country: row.country,
                                stated_code: stated,
                                place: None,
                                media: Media::Photo,
                                line: *line,
                                no_coords_why: None,
                            })
                        }
                        Err(e) => en.line_error(line.unwrap_or(0), e),
                    },
                })
                .collect();
            pending.clear();
            f(items)
        };
        let mut pending: Pending = Vec::with_capacity(BATCH_ROWS);
        for rec in r.records() {
            match rec {
                Ok(rec) => pending.push((rec.position().map(|p| p.line()), Ok(rec))),
                Err(e) => pending.push((e.position().map(|p| p.line()), Err(e.to_string()))),
            }
            if pending.len() >= BATCH_ROWS {
                flush(&mut pending, f)?;
            }
        }
        flush(&mut pending, f)
    }

    fn exif(
        &self,
        root: &Path,
        en: &Enricher,
        f: &mut dyn FnMut(Vec<Item>) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let files = formats::exif::list_photos(root).map_err(|e| Error::Io {
            path: root.to_owned(),
            source: e,
        })?;
        for group in files.chunks(256) {
            let items: Vec<Item> = group
                .par_iter()
                .map(|rel| {
                    let id = rel
                        .components()
                        .map(|c| c.as_os_str().to_string_lossy())
                        .collect::<Vec<_>>()
                        .join("/");
                    let (coords, why) = match formats::exif::read_gps(&root.join(rel)) {
                        Ok(Some(c)) => (Some(c), None),
                        Ok(None) => (None, Some("EXIF has no GPS position".to_string())),
                        Err(e) => (None, Some(e)),
                    };
                    en.enrich(Raw {
                        image: Some(id.clone()),
                        id,
                        user: None,
                        coords,
                        country: None,
                        place: None,
                        media: Media::Photo,
                        line: None,
                        no_coords_why: why,
                        stated_code: None,
                    })
                })
                .collect();
            f(items)?;
        }
        Ok(())
    }
}

/// Builds the user map: every id of the sources -> its YFCC100M `user_nsid`, joined on the
/// 25-column file's `photo_hash`.
pub(crate) fn load_users(
    cfg: &Config,
    ctx: &Context,
    yfcc: &Path,
) -> Result<HashMap<u128, String>, Error> {
    let mut ids: HashSet<u128> = HashSet::new();
    let probe = Sources {
        cfg,
        ctx,
        users: None,
        progress: ProgressBar::hidden(),
    };
    let mut ignored = Vec::new();
    probe.for_each(&mut ignored, |items| {
        for it in items {
            if let Item::Row(r) = it {
                ids.insert(id_key(&r.id));
            }
        }
        Ok(())
    })?;
    let mut users = HashMap::new();
    let mut without_hash = 0u64;
    for_each_chunk(
        yfcc,
        &ProgressBar::hidden(),
        |c| {
            c.lines()
                .filter_map(|(_, l)| formats::yfcc::parse_line(l).ok())
                .map(|r| (r.photo_hash.map(|h| id_key(&h)), r.user_nsid))
                .collect::<Vec<_>>()
        },
        |rows| {
            for (h, u) in rows {
                match h {
                    Some(h) if ids.contains(&h) => {
                        users.insert(h, u);
                    }
                    Some(_) => {}
                    None => without_hash += 1,
                }
            }
            Ok(())
        },
    )?;
    if without_hash > 0 && users.is_empty() {
        return Err(Error::Config(format!(
            "{}: yfcc_users needs the 25-column YFCC100M file (with photo_hash); this one has 23 columns",
            yfcc.display()
        )));
    }
    tracing::info!(
        matched = users.len(),
        ids = ids.len(),
        "joined users from YFCC100M"
    );
    Ok(users)
}

/// Accumulates rows into samples batches.
pub(crate) struct SamplesBuilder {
    id: StringBuilder,
    user: StringBuilder,
    lat: Float64Builder,
    lon: Float64Builder,
    country: StringBuilder,
    country_code: StringBuilder,
    place: StringBuilder,
    image: StringBuilder,
    split: StringBuilder,
    label: Int32Builder,
    len: usize,
}

impl SamplesBuilder {
    pub fn new() -> Self {
        SamplesBuilder {
            id: StringBuilder::new(),
            user: StringBuilder::new(),
            lat: Float64Builder::new(),
            lon: Float64Builder::new(),
            country: StringBuilder::new(),
            country_code: StringBuilder::new(),
            place: StringBuilder::new(),
            image: StringBuilder::new(),
            split: StringBuilder::new(),
            label: Int32Builder::new(),
            len: 0,
        }
    }

    pub fn push(&mut self, r: &Row, label: Option<i32>) {
        self.id.append_value(&r.id);
        self.user.append_option(r.user.as_deref());
        self.lat.append_option(r.lat);
        self.lon.append_option(r.lon);
        self.country.append_option(r.country.as_deref());
        self.country_code.append_option(r.country_code.as_deref());
        self.place.append_option(r.place.as_deref());
        self.image.append_value(&r.image);
        self.split.append_value(r.split.as_str());
        self.label.append_option(label);
        self.len += 1;
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn finish(&mut self) -> Result<RecordBatch, Error> {
        let cols: Vec<ArrayRef> = vec![
            Arc::new(self.id.finish()),
            Arc::new(self.user.finish()),
            Arc::new(self.lat.finish()),
            Arc::new(self.lon.finish()),
            Arc::new(self.country.finish()),
            Arc::new(self.country_code.finish()),
            Arc::new(self.place.finish()),
            Arc::new(self.image.finish()),
            Arc::new(self.split.finish()),
            Arc::new(self.label.finish()),
        ];
        self.len = 0;
        Ok(
            RecordBatch::try_new(geoloc_core::schema::samples().arrow, cols)
                .map_err(geoloc_core::Error::from)?,
        )
    }
}

/// The class key of a row under `field`.
pub(crate) fn class_key(r: &Row, field: ClassField) -> Option<&str> {
    match field {
        ClassField::CountryCode => r.country_code.as_deref(),
        ClassField::Country => r.country.as_deref(),
    }
}

/// Hash that orders a class's photos for balancing.
pub(crate) fn balance_hash(id: &str, seed: u64) -> u64 {
    xxhash_rust::xxh64::xxh64(id.as_bytes(), seed)
}

/// Hash that assigns an id to a shard.
pub(crate) fn shard_of(id: &str, count: u32) -> u32 {
    (xxhash_rust::xxh64::xxh64(id.as_bytes(), 0x0053_4841_5244) % u64::from(count)) as u32
}

/// What happened to a valid row of this shard in the parallel stage.
#[derive(Clone, Copy)]
enum Fate {
    /// Kept, at this index of the chunk's batch.
    Kept(u32),
    /// Left out on purpose, for this reason.
    Filtered(&'static str),
}

/// One chunk after the parallel stage: the rows kept by the order-free filters, as a batch,
/// and what the sequential dedup needs about every valid row.
struct ChunkOut {
    batch: Option<RecordBatch>,
    keys: Vec<u128>,
    fates: Vec<Fate>,
    lines: Vec<Option<u64>>,
    ids: Vec<String>,
    input: Option<Arc<str>>,
    rejects: Vec<Reject>,
    rows_read: u64,
    filtered: BTreeMap<&'static str, u64>,
    splits: BTreeMap<&'static str, u64>,
    classes: Vec<u64>,
}

/// Writes the rows of this shard; fills the summary.
///
/// The order-free work (shard, photos only, class list, balancing, building Arrow arrays)
/// runs in the parallel stage; this thread only checks ids for duplicates in input order and
/// writes.
pub(crate) fn write(
    cfg: &Config,
    ctx: &Context,
    sources: &Sources,
    classes: Option<&[String]>,
    thresholds: &HashMap<String, Option<u64>>,
    writer: &mut DatasetWriter,
    summary: &mut Summary,
) -> Result<(), Error> {
    let shard = ctx.shard;
    let mine_id = |id: &str| shard.count == 1 || shard_of(id, shard.count) == shard.index;
    let mine_reject = |r: &Reject| match (&r.id, r.line) {
        (Some(id), _) => mine_id(id),
        (None, Some(l)) => shard.count == 1 || (l % u64::from(shard.count)) as u32 == shard.index,
        (None, None) => shard.index == 0,
    };
    let class_list = classes.unwrap_or(&[]);
    let index: HashMap<&str, i32> = class_list
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i as i32))
        .collect();
    let post = |items: Vec<Item>| -> Result<ChunkOut, Error> {
        let mut out = ChunkOut {
            batch: None,
            keys: Vec::with_capacity(items.len()),
            fates: Vec::with_capacity(items.len()),
            lines: Vec::with_capacity(items.len()),
            ids: Vec::new(),
            input: None,
            rejects: Vec::new(),
            rows_read: items.len() as u64,
            filtered: BTreeMap::new(),
            splits: BTreeMap::new(),
            classes: vec![0; class_list.len()],
        };
        let mut b = SamplesBuilder::new();
        for it in items {
            let r = match it {
                Item::Reject(r) => {
                    if mine_reject(&r) {
                        out.rejects.push(r);
                    }
                    continue;
                }
                Item::Row(r) => r,
            };
            if !mine_id(&r.id) {
                continue;
            }
            out.keys.push(id_key(&r.id));
            out.lines.push(r.line);
            if out.input.is_none() {
                out.input = Some(r.input.clone());
            }
            let fate = 'fate: {
                if cfg.photos_only && r.media == Media::Video {
                    break 'fate Fate::Filtered("video");
                }
                let label = match classes {
                    None => None,
                    Some(_) => match class_key(&r, cfg.classes.field).and_then(|k| index.get(k)) {
                        Some(&l) => Some(l),
                        None if cfg.classes.drop_unlisted => {
                            break 'fate Fate::Filtered("unlisted-class")
                        }
                        None => None,
                    },
                };
                if let (Some(bal), Some(l)) = (&cfg.balance, label) {
                    let keep_upto = thresholds
                        .get(class_list[l as usize].as_str())
                        .copied()
                        .unwrap_or(Some(u64::MAX));
                    if keep_upto.is_none_or(|t| balance_hash(&r.id, bal.seed) > t) {
                        break 'fate Fate::Filtered("balanced-out");
                    }
                }
                *out.splits.entry(r.split.as_str()).or_default() += 1;
                if let Some(l) = label {
                    out.classes[l as usize] += 1;
                }
                let k = b.len() as u32;
                b.push(&r, label);
                Fate::Kept(k)
            };
            if let Fate::Filtered(why) = fate {
                *out.filtered.entry(why).or_default() += 1;
            }
            out.fates.push(fate);
            out.ids.push(r.id);
        }
        if b.len() > 0 {
            out.batch = Some(b.finish()?);
        }
        Ok(out)
    };
    // Sized once from the input size (about 100 bytes a line), so the set never doubles
    // (and briefly holds both tables) on large inputs.
    let expected_rows = (total_bytes(cfg, ctx) / 100 / u64::from(shard.count)) as usize;
    let mut seen: HashSet<u128> = HashSet::with_capacity(expected_rows);
    let mut class_counts = vec![0u64; class_list.len()];
    // Bad lines of truth files, collected while the sources load them.
    let mut truth_rejects = Vec::new();
    sources.for_each_post(&mut truth_rejects, &post, |out| {
        let mut out = out?;
        summary.rows_read += out.rows_read;
        let mut mask: Option<Vec<bool>> = None;
        for (i, key) in out.keys.iter().enumerate() {
            if seen.insert(*key) {
                continue;
            }
            // A duplicate id: rejected, whatever the filters decided for it.
            match out.fates[i] {
                Fate::Kept(j) => {
                    let batch = out.batch.as_ref().expect("a kept row has a batch");
                    mask.get_or_insert_with(|| vec![true; batch.num_rows()])[j as usize] = false;
                    let split = batch.column(8).as_string::<i32>().value(j as usize);
                    if let Some(n) = out
                        .splits
                        .iter_mut()
                        .find(|(k, _)| **k == split)
                        .map(|(_, v)| v)
                    {
                        *n -= 1;
                    }
                    let labels = batch.column(9).as_primitive::<Int32Type>();
                    if labels.is_valid(j as usize) {
                        out.classes[labels.value(j as usize) as usize] -= 1;
                    }
                }
                Fate::Filtered(why) => *out.filtered.entry(why).or_default() -= 1,
            }
            out.rejects.push(Reject {
                detail: format!("id {} appeared earlier in the input", out.ids[i]),
                id: Some(std::mem::take(&mut out.ids[i])),
                input: out.input.as_deref().unwrap_or_default().to_owned(),
                line: out.lines[i],
                reason: "duplicate-id",
            });
        }
        for (k, v) in out.filtered {
            *summary.filtered.entry(k.to_owned()).or_default() += v;
        }
        for (k, v) in out.splits {
            *summary.splits.entry(k.to_owned()).or_default() += v;
        }
        for (c, v) in class_counts.iter_mut().zip(&out.classes) {
            *c += v;
        }
        // Rejects in input order.
        out.rejects.sort_by_key(|r| r.line);
        for r in out.rejects {
            *summary.rejects.entry(r.reason.to_string()).or_default() += 1;
            writer.reject(r)?;
        }
        if let Some(batch) = out.batch {
            let batch = match mask {
                Some(m) => filter_record_batch(&batch, &BooleanArray::from(m))
                    .map_err(geoloc_core::Error::from)?,
                None => batch,
            };
            summary.rows_written += batch.num_rows() as u64;
            writer.write(&batch)?;
        }
        Ok(())
    })?;
    for (c, n) in class_list.iter().zip(class_counts) {
        if n > 0 {
            summary.class_counts.insert(c.clone(), n);
        }
    }
    for r in truth_rejects {
        if mine_reject(&r) {
            *summary.rejects.entry(r.reason.to_string()).or_default() += 1;
            writer.reject(r)?;
        }
    }
    Ok(())
}

/// Per class key: its row count, and the balancing hashes of its rows.
pub(crate) type ClassTally = (HashMap<String, u64>, HashMap<String, Vec<u64>>);

/// The counting pass for `top_k` and `balance`: class counts and, per class, the balancing
/// hashes of its rows.
pub(crate) fn count(cfg: &Config, sources: &Sources) -> Result<ClassTally, Error> {
    let mut seen: HashSet<u128> = HashSet::new();
    let mut counts: HashMap<String, u64> = HashMap::new();
    let mut hashes: HashMap<String, Vec<u64>> = HashMap::new();
    let mut ignored = Vec::new();
    sources.for_each(&mut ignored, |items| {
        for it in items {
            let Item::Row(r) = it else { continue };
            if !seen.insert(id_key(&r.id)) || (cfg.photos_only && r.media == Media::Video) {
                continue;
            }
            let Some(k) = class_key(&r, cfg.classes.field) else {
                continue;
            };
            *counts.entry_ref(k).or_default() += 1;
            if let Some(b) = &cfg.balance {
                hashes
                    .entry_ref(k)
                    .or_default()
                    .push(balance_hash(&r.id, b.seed));
            }
        }
        Ok(())
    })?;
    Ok((counts, hashes))
}

/// A progress bar over `total` bytes (hidden off a terminal or when disabled).
pub(crate) fn progress(ctx: &Context, total: u64, msg: &str) -> ProgressBar {
    if !ctx.progress {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template(
            "{msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb.set_message(msg.to_owned());
    pb
}

/// Total bytes of the file sources (for the progress bar).
pub(crate) fn total_bytes(cfg: &Config, ctx: &Context) -> u64 {
    cfg.sources
        .iter()
        .filter(|s| s.format != Format::ExifFolder && s.format != Format::Csv)
        .filter_map(|s| std::fs::metadata(ctx.resolve(&s.path)).ok())
        .map(|m| m.len())
        .sum()
}
