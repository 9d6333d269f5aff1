//! The dataset directory: how a stage writes its output and how the next one reads it.
//!
//! ```text
//! <dir>/part-00003-of-00016-0000.parquet    data (.arrow for pixel tensors)
//! <dir>/part-00003-of-00016-0000.json       sidecar: rows, bytes, blake3, column checksums
//! <dir>/rejects-00003-of-00016-0000.parquet what this part skipped and why
//! <dir>/_shard-00003-of-00016.json          shard 3's marker: written after all its parts
//! <dir>/_manifest.json                      written last by finalize: commits the dataset
//! ```
//!
//! The commit protocol:
//! - every file is written under a temporary name (`.NAME.tmp`) and renamed into place, so a
//!   file with its final name is always complete;
//! - a shard ([`crate::shard::Shard`]) touches only files carrying its own index and count,
//!   so N writers on a shared filesystem never race; opening a writer with a count N discards
//!   every file written for another count, and the manifest;
//! - [`finalize`] writes `_manifest.json` only once all N shard markers exist and every part
//!   they list is present with its sidecar and the size the sidecar records;
//! - [`Dataset::open`] refuses a directory without a manifest, with parts missing, with a
//!   size or checksum that disagrees with the manifest, or with stray parts (from another N),
//!   and names each problem.
//!
//! Column checksums make fingerprints precise: each column's checksum is the wrapping sum,
//! over rows, of `xxh3_128(key ‖ value)` where `key` is the row's key columns. It does not
//! depend on row order or on how rows were split into parts or shards, so a downstream stage
//! that reads only `id` and `image` is not stale when `label` changes.

use crate::error::{Error, Result};
use crate::parquet_writer::ParallelWriter;
use crate::schema::{self, DatasetSchema};
use crate::shard::Shard;
use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringBuilder, UInt64Builder};
use arrow::datatypes::{
    DataType, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type, UInt16Type,
    UInt32Type, UInt64Type, UInt8Type,
};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// File name of the manifest that commits a dataset.
pub const MANIFEST: &str = "_manifest.json";
/// Version of the directory layout and manifest format.
pub const LAYOUT_VERSION: u32 = 1;

/// How parts are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PartFormat {
    /// Parquet, zstd-compressed: tables of scalars and features.
    Parquet,
    /// Arrow IPC file: pixel tensors (memory-mappable, no decode cost).
    ArrowIpc,
}

impl PartFormat {
    fn ext(self) -> &'static str {
        match self {
            PartFormat::Parquet => "parquet",
            PartFormat::ArrowIpc => "arrow",
        }
    }
}

/// Options of a [`DatasetWriter`].
#[derive(Debug, Clone)]
pub struct WriterOptions {
    pub format: PartFormat,
    /// A part is closed and a new one opened once it holds about this many bytes.
    pub part_cap_bytes: u64,
    /// A Parquet row group is closed at this many rows...
    pub row_group_rows: usize,
    /// ...or at this many bytes of buffered Arrow data (bounds memory).
    pub row_group_bytes: usize,
    /// Zstd level for Parquet parts.
    pub zstd_level: i32,
    /// How the stage computes its rows, where that can differ between runs of the same
    /// fingerprint (featurize: `cpu f32 avx2+fma`, `cuda:0 bf16`): recorded in each part's
    /// sidecar, so the manifest says which path made which part even when shards ran on
    /// different machines. Never compared, never part of the fingerprint.
    pub compute: Option<String>,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            format: PartFormat::Parquet,
            part_cap_bytes: 1 << 30,
            row_group_rows: 256 * 1024,
            row_group_bytes: 16 << 20,
            zstd_level: 3,
            compute: None,
        }
    }
}

/// Counts by reason as one log phrase: `empty-file=1 missing-file=2`, or `none`.
pub fn reasons_line(counts: &BTreeMap<String, u64>) -> String {
    if counts.is_empty() {
        return "none".into();
    }
    counts
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A row a stage skipped, and why. Written to the rejects file of the current part.
#[derive(Debug, Clone, PartialEq)]
pub struct Reject {
    /// The row's id, where it could be read.
    pub id: Option<String>,
    /// The input it came from (a file path).
    pub input: String,
    /// 1-based line number for line-oriented inputs.
    pub line: Option<u64>,
    /// Stable kebab-case code, see [`crate::schema::rejects`].
    pub reason: &'static str,
    /// Human-readable detail with the offending value.
    pub detail: String,
}

/// The sidecar of one part: written after the part, under a temporary name, then renamed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartSidecar {
    pub file: String,
    pub rows: u64,
    pub bytes: u64,
    pub blake3: String,
    pub rejects_file: String,
    pub rejects: u64,
    /// Column name -> checksum (hex of the wrapping sum of per-row xxh3-128).
    pub columns: BTreeMap<String, String>,
    pub seconds: f64,
    /// Set by writers opened with [`DatasetWriter::resume`]: the key under which the part may
    /// be kept by a later run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_key: Option<String>,
    /// Set by a stage through [`DatasetWriter::set_cursor`]: where in its input the part
    /// ends, for a stage whose rows do not map one to one onto its input's (featurize from
    /// photos: a photo gives several views or a reject).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<serde_json::Value>,
    /// How the part's rows were computed ([`WriterOptions::compute`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute: Option<String>,
}

/// The marker a shard writes once all of its parts are in place.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardMarker {
    pub shard: Shard,
    /// Stage-specific facts the shard computed (the class list, ...); every shard of a
    /// dataset must agree on them, and finalize copies them into the manifest.
    #[serde(default)]
    pub metadata: serde_json::Value,
    pub parts: Vec<String>,
    pub rows: u64,
    pub rejects: u64,
    pub seconds: f64,
}

/// What the finalize step records besides the parts.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ManifestInfo {
    /// Stage kind that wrote the dataset (`ingest`, ...).
    pub stage: String,
    /// The stage's output-format version (bumped when its semantics change).
    pub stage_format_version: u32,
    /// Fingerprint of everything the output depends on ([`crate::fingerprint`]).
    pub fingerprint: String,
    /// The stage's resolved configuration.
    pub config: serde_json::Value,
    /// The build that wrote it: recorded, never part of the fingerprint.
    pub build: String,
    /// Stage-specific facts for readers (the class list, geometry, ...).
    pub metadata: serde_json::Value,
}

/// `_manifest.json`: the commit record of a dataset.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub layout_version: u32,
    pub schema: String,
    pub schema_version: u32,
    pub shards: u32,
    pub rows: u64,
    pub rejects: u64,
    pub parts: Vec<PartSidecar>,
    /// Column name -> checksum over the whole dataset (independent of row order and parts).
    pub columns: BTreeMap<String, String>,
    #[serde(flatten)]
    pub info: ManifestInfo,
    pub created_unix_s: f64,
}

impl Manifest {
    /// Reads `<dir>/_manifest.json`.
    pub fn load(dir: &Path) -> Result<Manifest> {
        let p = dir.join(MANIFEST);
        let text = fs::read(&p).map_err(|e| Error::io(&p, e))?;
        serde_json::from_slice(&text).map_err(|e| Error::Json { path: p, source: e })
    }

    /// The class list a samples manifest records (`metadata.classes`; empty without one).
    pub fn classes(&self) -> Vec<String> {
        self.info
            .metadata
            .get("classes")
            .and_then(|c| serde_json::from_value(c.clone()).ok())
            .unwrap_or_default()
    }

    /// The checksum of a column, or an error naming the columns that exist.
    pub fn column_checksum(&self, column: &str) -> Result<&str> {
        self.columns.get(column).map(String::as_str).ok_or_else(|| {
            Error::Config(format!(
                "dataset has no column `{column}` (columns: {})",
                self.columns.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })
    }
}

/// The parsed name of a part-family file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileName {
    kind: FileKind,
    shard: u32,
    count: u32,
    temp: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileKind {
    Part,
    Rejects,
    Marker,
}

fn parse_name(name: &str) -> Option<FileName> {
    let (temp, name) = match name.strip_prefix('.').and_then(|n| n.strip_suffix(".tmp")) {
        Some(inner) => (true, inner),
        None => (false, name),
    };
    let (kind, rest) = if let Some(r) = name.strip_prefix("part-") {
        (FileKind::Part, r)
    } else if let Some(r) = name.strip_prefix("rejects-") {
        (FileKind::Rejects, r)
    } else if let Some(r) = name.strip_prefix("_shard-") {
        (FileKind::Marker, r)
    } else {
        return None;
    };
    // SSSSS-of-NNNNN...
    let shard: u32 = rest.get(0..5)?.parse().ok()?;
    if rest.get(5..9)? != "-of-" {
        return None;
    }
    let count: u32 = rest.get(9..14)?.parse().ok()?;
    Some(FileName {
        kind,
        shard,
        count,
        temp,
    })
}

fn stem(shard: Shard, seq: u32) -> String {
    format!("{:05}-of-{:05}-{:04}", shard.index, shard.count, seq)
}

fn marker_name(shard: Shard) -> String {
    format!("_shard-{:05}-of-{:05}.json", shard.index, shard.count)
}

fn tmp_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!(".{name}.tmp"))
}

/// The error a write step may give (I/O, Parquet, Arrow, ...): [`commit_file`] names it.
pub type WriteError = Box<dyn std::error::Error + Send + Sync>;

/// Writes a file the way every committed file of geoloc is written: `fill` writes the
/// temporary file `tmp` (creating it), which is then renamed to `dst`. On any failure the
/// temporary file is removed (a failed write's bytes would only fill the disk further) and
/// the error is [`Error::Write`], naming `what` was being written and where.
pub fn commit_file(
    tmp: &Path,
    dst: &Path,
    what: &str,
    fill: impl FnOnce(&Path) -> std::result::Result<(), WriteError>,
) -> Result<()> {
    let r = fill(tmp)
        .map_err(|e| Error::write(what, tmp, e))
        .and_then(|()| fs::rename(tmp, dst).map_err(|e| Error::write(what, dst, e)));
    if r.is_err() {
        let _ = fs::remove_file(tmp);
    }
    r
}

/// Writes `bytes` to `dir/name` through a temporary file and a rename ([`commit_file`]).
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    commit_file(
        &tmp_path(dir, name),
        &dir.join(name),
        &describe(name),
        |tmp| {
            let mut f = File::create(tmp)?;
            f.write_all(bytes)?;
            Ok(f.sync_all()?)
        },
    )
}

/// What a dataset file holds, for error messages.
fn describe(name: &str) -> String {
    if name == MANIFEST {
        "the manifest".into()
    } else if name.starts_with("_shard-") {
        "the shard marker".into()
    } else if name.starts_with("part-") && name.ends_with(".json") {
        "the part sidecar".into()
    } else if name.starts_with("rejects-") {
        "the rejects file".into()
    } else if name.starts_with("part-") {
        "the part".into()
    } else {
        name.to_owned()
    }
}

fn write_json_atomic<T: Serialize>(dir: &Path, name: &str, v: &T) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(v).map_err(|e| Error::Json {
        path: dir.join(name),
        source: e,
    })?;
    write_atomic(dir, name, &bytes)
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let b = fs::read(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_slice(&b).map_err(|e| Error::Json {
        path: path.to_owned(),
        source: e,
    })
}

/// blake3 of a file's bytes, hex.
pub fn file_blake3(path: &Path) -> Result<String> {
    // Read through a buffer, not mapped: a mapped 300 MB part stays resident in the
    // process while it is hashed, and a job's memory limit counts it.
    let f = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = blake3::Hasher::new();
    h.update_reader(std::io::BufReader::with_capacity(1 << 20, f))
        .map_err(|e| Error::io(path, e))?;
    Ok(h.finalize().to_hex().to_string())
}

enum Sink {
    Parquet(ParallelWriter<BufWriter<File>>),
    Ipc(arrow::ipc::writer::FileWriter<BufWriter<File>>, u64),
}

struct OpenPart {
    seq: u32,
    tmp: PathBuf,
    sink: Sink,
    rows: u64,
    sums: Vec<u128>,
    started: Instant,
}

/// Writes one shard's parts of a dataset. See the module docs for the protocol.
pub struct DatasetWriter {
    dir: PathBuf,
    shard: Shard,
    schema: DatasetSchema,
    opts: WriterOptions,
    next_seq: u32,
    current: Option<OpenPart>,
    rejects: Vec<Reject>,
    done: Vec<PartSidecar>,
    started: Instant,
    key_idx: Vec<usize>,
    resume_key: Option<String>,
    cursor: Option<serde_json::Value>,
}

impl DatasetWriter {
    /// Prepares `dir` for shard `shard`: removes the manifest (the dataset is being
    /// rewritten), every file of another shard count, and this shard's own earlier files.
    pub fn create(
        dir: &Path,
        schema: DatasetSchema,
        shard: Shard,
        opts: WriterOptions,
    ) -> Result<Self> {
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        remove_if_exists(&dir.join(MANIFEST))?;
        remove_if_exists(&tmp_path(dir, MANIFEST))?;

        for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
            let entry = entry.map_err(|e| Error::io(dir, e))?;
            let name = entry.file_name();
            let Some(parsed) = name.to_str().and_then(parse_name) else {
                continue;
            };
            let other_count = parsed.count != shard.count;
            let mine = parsed.count == shard.count && parsed.shard == shard.index;
            if other_count || mine {
                remove_if_exists(&entry.path())?;
            }
            let _ = parsed.temp;
        }
        Self::create_in_place(dir, schema, shard, opts)
    }

    /// The writer over a directory already cleaned for this shard.
    fn create_in_place(
        dir: &Path,
        schema: DatasetSchema,
        shard: Shard,
        opts: WriterOptions,
    ) -> Result<Self> {
        let key_idx = schema
            .key
            .iter()
            .map(|k| {
                schema.arrow.index_of(k).map_err(|_| {
                    Error::Config(format!("schema {} has no key column {k}", schema.name))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(DatasetWriter {
            dir: dir.to_owned(),
            shard,
            schema,
            opts,
            next_seq: 0,
            current: None,
            rejects: Vec::new(),
            done: Vec::new(),
            started: Instant::now(),
            key_idx,
            resume_key: None,
            cursor: None,
        })
    }

    /// Like [`DatasetWriter::create`], but keeps the parts this shard already wrote under the
    /// same `resume_key` (a stage passes its fingerprint): the longest run of parts from
    /// sequence 0 whose sidecar, part file (of the recorded size) and rejects file are all in
    /// place. Everything else of this shard (later parts, temporaries, the marker) is removed.
    /// Returns the writer, which continues after the kept parts, and the rows they hold, so
    /// a stage whose output rows follow a fixed input order can skip that many inputs.
    pub fn resume(
        dir: &Path,
        schema: DatasetSchema,
        shard: Shard,
        opts: WriterOptions,
        resume_key: &str,
    ) -> Result<(Self, u64)> {
        Self::open_resumable(dir, schema, shard, opts, resume_key, true)
    }

    /// Like [`DatasetWriter::resume`], keeping nothing: every file of this shard is removed
    /// (a recompute), and the parts written now carry `resume_key` for a later resume.
    pub fn restart(
        dir: &Path,
        schema: DatasetSchema,
        shard: Shard,
        opts: WriterOptions,
        resume_key: &str,
    ) -> Result<Self> {
        Self::open_resumable(dir, schema, shard, opts, resume_key, false).map(|(w, _)| w)
    }

    fn open_resumable(
        dir: &Path,
        schema: DatasetSchema,
        shard: Shard,
        opts: WriterOptions,
        resume_key: &str,
        keep_parts: bool,
    ) -> Result<(Self, u64)> {
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let mut kept = Vec::new();
        for seq in 0.. {
            if !keep_parts {
                break;
            }
            let st = stem(shard, seq);
            let sidecar: PartSidecar = match fs::read(dir.join(format!("part-{st}.json")))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
            {
                Some(s) => s,
                None => break,
            };
            let size = fs::metadata(dir.join(&sidecar.file)).map(|m| m.len()).ok();
            if sidecar.resume_key.as_deref() != Some(resume_key)
                || size != Some(sidecar.bytes)
                || !dir.join(&sidecar.rejects_file).is_file()
            {
                break;
            }
            kept.push(sidecar);
        }
        let keep: std::collections::HashSet<String> = kept
            .iter()
            .flat_map(|p| {
                let json = format!("{}.json", p.file.rsplit_once('.').map_or(&*p.file, |x| x.0));
                [p.file.clone(), p.rejects_file.clone(), json]
            })
            .collect();
        remove_if_exists(&dir.join(MANIFEST))?;
        remove_if_exists(&tmp_path(dir, MANIFEST))?;
        for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
            let entry = entry.map_err(|e| Error::io(dir, e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some(parsed) = parse_name(name) else {
                continue;
            };
            let other_count = parsed.count != shard.count;
            let mine = parsed.count == shard.count && parsed.shard == shard.index;
            if other_count || (mine && !keep.contains(name)) {
                remove_if_exists(&entry.path())?;
            }
        }
        let rows = kept.iter().map(|p| p.rows).sum();
        let mut w = Self::create_in_place(dir, schema, shard, opts)?;
        w.next_seq = kept.len() as u32;
        w.cursor = kept.last().and_then(|p| p.cursor.clone());
        w.done = kept;
        w.resume_key = Some(resume_key.to_owned());
        Ok((w, rows))
    }

    /// Records where in the stage's input the rows written so far end; a part closed from
    /// now on carries it (until the next call). Set it before the [`DatasetWriter::write`]
    /// and [`DatasetWriter::reject`] calls it describes: a write may close the part.
    pub fn set_cursor(&mut self, cursor: serde_json::Value) {
        self.cursor = Some(cursor);
    }

    /// After [`DatasetWriter::resume`]: the cursor of the last part kept (`None` when no
    /// part was kept or the stage sets none); the stage continues its input from there.
    pub fn cursor(&self) -> Option<&serde_json::Value> {
        self.cursor.as_ref()
    }

    /// The directory being written.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn open_part(&mut self) -> Result<()> {
        let seq = self.next_seq;
        self.next_seq += 1;
        let name = format!("part-{}.{}", stem(self.shard, seq), self.opts.format.ext());
        let tmp = tmp_path(&self.dir, &name);
        let f = File::create(&tmp).map_err(|e| Error::write("a new part", &tmp, e))?;
        let w = BufWriter::with_capacity(1 << 20, f);
        let sink = match self.opts.format {
            PartFormat::Parquet => {
                let props = WriterProperties::builder()
                    .set_compression(Compression::ZSTD(
                        ZstdLevel::try_new(self.opts.zstd_level).map_err(|e| Error::Parquet {
                            path: tmp.clone(),
                            source: e,
                        })?,
                    ))
                    .set_max_row_group_row_count(Some(self.opts.row_group_rows));
                let props = self
                    .schema
                    .plain_leaves()
                    .into_iter()
                    .fold(props, |p, c| {
                        p.set_column_dictionary_enabled(ColumnPath::new(c), false)
                    })
                    .build();
                Sink::Parquet(
                    ParallelWriter::try_new(
                        w,
                        self.schema.arrow.clone(),
                        props,
                        self.opts.row_group_rows,
                        self.opts.row_group_bytes,
                    )
                    .map_err(|e| Error::Parquet {
                        path: tmp.clone(),
                        source: e,
                    })?,
                )
            }
            PartFormat::ArrowIpc => Sink::Ipc(
                arrow::ipc::writer::FileWriter::try_new(w, &self.schema.arrow)
                    .map_err(|e| Error::write("a new part", &tmp, e))?,
                0,
            ),
        };
        self.current = Some(OpenPart {
            seq,
            tmp,
            sink,
            rows: 0,
            sums: vec![0; self.schema.arrow.fields().len()],
            started: Instant::now(),
        });
        Ok(())
    }

    /// Appends a batch; it must have exactly the dataset's schema.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        if batch.schema().fields() != self.schema.arrow.fields() {
            self.schema.check("batch to write", &batch.schema())?;
        }
        if self.current.is_none() {
            self.open_part()?;
        }
        let sums = column_sums(batch, &self.key_idx)?;
        let part = self.current.as_mut().expect("opened above");
        for (s, add) in part.sums.iter_mut().zip(sums) {
            *s = s.wrapping_add(add);
        }
        part.rows += batch.num_rows() as u64;
        let rows = batch.num_rows();
        let written = match &mut part.sink {
            Sink::Parquet(w) => w
                .write(batch)
                .map(|()| w.size_estimate())
                .map_err(|e| Error::write(format!("{rows} rows to a part"), &part.tmp, e)),
            Sink::Ipc(w, n) => w
                .write(batch)
                .map(|()| {
                    *n += batch.get_array_memory_size() as u64;
                    *n
                })
                .map_err(|e| Error::write(format!("{rows} rows to a part"), &part.tmp, e)),
        };
        let size = match written {
            Ok(s) => s,
            Err(e) => {
                self.abandon_part();
                return Err(e);
            }
        };
        if size >= self.opts.part_cap_bytes {
            self.close_part()?;
        }
        Ok(())
    }

    /// Records a rejected row in the current part's rejects file.
    pub fn reject(&mut self, r: Reject) -> Result<()> {
        self.rejects.push(r);
        if self.rejects.len() >= 4 << 20 {
            // Bound memory on pathological inputs: close the part to flush its rejects.
            if self.current.is_none() {
                self.open_part()?;
            }
            self.close_part()?;
        }
        Ok(())
    }

    /// Drops the open part and removes its temporary file (after a failed write: the part
    /// is incomplete, and its bytes would only fill the disk further).
    fn abandon_part(&mut self) {
        if let Some(part) = self.current.take() {
            drop(part.sink);
            let _ = fs::remove_file(&part.tmp);
        }
    }

    fn close_part(&mut self) -> Result<()> {
        let Some(part) = self.current.take() else {
            return Ok(());
        };
        let st = stem(self.shard, part.seq);
        let name = format!("part-{st}.{}", self.opts.format.ext());
        let dst = self.dir.join(&name);
        let what = format!("the end of part {} ({} rows)", part.seq, part.rows);
        commit_file(&part.tmp, &dst, &what, |_| {
            let file = match part.sink {
                Sink::Parquet(w) => w.into_inner()?,
                Sink::Ipc(mut w, _) => {
                    w.finish()?;
                    w.into_inner()?
                }
            };
            Ok(file.into_inner().map_err(|e| e.into_error())?.sync_all()?)
        })?;
        let bytes = fs::metadata(&dst).map_err(|e| Error::io(&dst, e))?.len();
        let blake3 = file_blake3(&dst)?;

        let rejects_file = format!("rejects-{st}.parquet");
        let rejects = std::mem::take(&mut self.rejects);
        write_rejects(&self.dir, &rejects_file, &rejects)?;

        let columns = self
            .schema
            .arrow
            .fields()
            .iter()
            .zip(&part.sums)
            .map(|(f, s)| (f.name().clone(), format!("{s:032x}")))
            .collect();
        let sidecar = PartSidecar {
            file: name,
            rows: part.rows,
            bytes,
            blake3,
            rejects_file,
            rejects: rejects.len() as u64,
            columns,
            seconds: part.started.elapsed().as_secs_f64(),
            resume_key: self.resume_key.clone(),
            cursor: self.cursor.clone(),
            compute: self.opts.compute.clone(),
        };
        write_json_atomic(&self.dir, &format!("part-{st}.json"), &sidecar)?;
        self.done.push(sidecar);
        Ok(())
    }

    /// Closes the last part and writes this shard's marker. A shard always writes at least
    /// one part (possibly empty), so its rejects have a home.
    pub fn finish(mut self, metadata: serde_json::Value) -> Result<ShardMarker> {
        if self.current.is_none() && (self.done.is_empty() || !self.rejects.is_empty()) {
            self.open_part()?;
        }
        self.close_part()?;
        let marker = ShardMarker {
            shard: self.shard,
            metadata,
            parts: self.done.iter().map(|p| p.file.clone()).collect(),
            rows: self.done.iter().map(|p| p.rows).sum(),
            rejects: self.done.iter().map(|p| p.rejects).sum(),
            seconds: self.started.elapsed().as_secs_f64(),
        };
        write_json_atomic(&self.dir, &marker_name(self.shard), &marker)?;
        Ok(marker)
    }
}

impl Drop for DatasetWriter {
    /// A writer dropped before [`DatasetWriter::finish`] (its stage failed) removes the
    /// temporary file of its open part; closed parts stay for a resume.
    fn drop(&mut self) {
        self.abandon_part();
    }
}

fn remove_if_exists(p: &Path) -> Result<()> {
    match fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(p, e)),
    }
}

fn write_rejects(dir: &Path, name: &str, rejects: &[Reject]) -> Result<()> {
    let schema = schema::rejects().arrow;
    let mut id = StringBuilder::new();
    let mut input = StringBuilder::new();
    let mut line = UInt64Builder::new();
    let mut reason = StringBuilder::new();
    let mut detail = StringBuilder::new();
    for r in rejects {
        id.append_option(r.id.as_deref());
        input.append_value(&r.input);
        line.append_option(r.line);
        reason.append_value(r.reason);
        detail.append_value(&r.detail);
    }
    let cols: Vec<ArrayRef> = vec![
        Arc::new(id.finish()),
        Arc::new(input.finish()),
        Arc::new(line.finish()),
        Arc::new(reason.finish()),
        Arc::new(detail.finish()),
    ];
    let batch = RecordBatch::try_new(schema.clone(), cols)?;
    commit_file(
        &tmp_path(dir, name),
        &dir.join(name),
        &format!("the rejects file ({} rows)", rejects.len()),
        |tmp| {
            let props = WriterProperties::builder()
                .set_compression(Compression::ZSTD(ZstdLevel::default()))
                .build();
            let mut w = ArrowWriter::try_new(File::create(tmp)?, schema, Some(props))?;
            w.write(&batch)?;
            Ok(w.into_inner()?.sync_all()?)
        },
    )
}

/// Appends the canonical bytes of `a[i]` to `buf`: a 0 byte for null, else 1 and the value
/// (little-endian numbers; length-prefixed strings and binaries).
fn encode_value(a: &dyn Array, i: usize, buf: &mut Vec<u8>) -> Result<()> {
    if a.is_null(i) {
        buf.push(0);
        return Ok(());
    }
    buf.push(1);
    macro_rules! prim {
        ($t:ty) => {
            buf.extend_from_slice(&a.as_primitive::<$t>().value(i).to_le_bytes())
        };
    }
    match a.data_type() {
        DataType::Utf8 => {
            let s = a.as_string::<i32>().value(i);
            buf.extend_from_slice(&(s.len() as u64).to_le_bytes());
            buf.extend_from_slice(s.as_bytes());
        }
        DataType::LargeUtf8 => {
            let s = a.as_string::<i64>().value(i);
            buf.extend_from_slice(&(s.len() as u64).to_le_bytes());
            buf.extend_from_slice(s.as_bytes());
        }
        DataType::Binary => {
            let s = a.as_binary::<i32>().value(i);
            buf.extend_from_slice(&(s.len() as u64).to_le_bytes());
            buf.extend_from_slice(s);
        }
        DataType::FixedSizeBinary(_) => buf.extend_from_slice(a.as_fixed_size_binary().value(i)),
        DataType::Boolean => buf.push(a.as_boolean().value(i) as u8),
        DataType::Int8 => prim!(Int8Type),
        DataType::Int16 => prim!(Int16Type),
        DataType::Int32 => prim!(Int32Type),
        DataType::Int64 => prim!(Int64Type),
        DataType::UInt8 => prim!(UInt8Type),
        DataType::UInt16 => prim!(UInt16Type),
        DataType::UInt32 => prim!(UInt32Type),
        DataType::UInt64 => prim!(UInt64Type),
        DataType::Float32 => prim!(Float32Type),
        DataType::Float64 => prim!(Float64Type),
        DataType::FixedSizeList(f, _) if f.data_type() == &DataType::Float32 => {
            let l = a.as_fixed_size_list();
            let v = l.value(i);
            for x in v.as_primitive::<Float32Type>().values() {
                buf.extend_from_slice(&x.to_le_bytes());
            }
        }
        other => {
            return Err(Error::Schema {
                what: "column checksum".into(),
                diff: format!("unsupported column type {other}"),
            })
        }
    }
    Ok(())
}

/// Per-column sums of `xxh3_128(key ‖ value)` over the rows of `batch`.
fn column_sums(batch: &RecordBatch, key_idx: &[usize]) -> Result<Vec<u128>> {
    use xxhash_rust::xxh3::xxh3_128;
    let n = batch.num_rows();
    let mut keys: Vec<Vec<u8>> = Vec::with_capacity(n);
    for i in 0..n {
        let mut k = Vec::with_capacity(40);
        for &c in key_idx {
            encode_value(batch.column(c).as_ref(), i, &mut k)?;
        }
        k.push(0xff);
        keys.push(k);
    }
    let cols: Vec<&ArrayRef> = batch.columns().iter().collect();
    let compute = |col: &ArrayRef| -> Result<u128> {
        let mut sum = 0u128;
        let mut buf = Vec::with_capacity(256);
        for (i, k) in keys.iter().enumerate() {
            buf.clear();
            buf.extend_from_slice(k);
            encode_value(col.as_ref(), i, &mut buf)?;
            sum = sum.wrapping_add(xxh3_128(&buf));
        }
        Ok(sum)
    };
    use rayon::prelude::*;
    cols.par_iter().map(|c| compute(c)).collect()
}

/// Commits a dataset: checks that all `count` shards have finished and every part they
/// list is in place, then writes `_manifest.json`. Names every missing shard or part.
///
/// When `info.metadata` is null, the shards' metadata is used; shards that disagree on it
/// are an error.
pub fn finalize(
    dir: &Path,
    schema: &DatasetSchema,
    count: u32,
    mut info: ManifestInfo,
) -> Result<Manifest> {
    let mut shard_meta: Option<serde_json::Value> = None;
    let mut missing = Vec::new();
    let mut parts = Vec::new();
    let mut listed = std::collections::HashSet::new();
    for i in 0..count {
        let shard = Shard::new(i, count)?;
        let mpath = dir.join(marker_name(shard));
        if !mpath.exists() {
            missing.push(format!(
                "shard {i} of {count} has not finished (no {})",
                marker_name(shard)
            ));
            continue;
        }
        let marker: ShardMarker = read_json(&mpath)?;
        match &shard_meta {
            None => shard_meta = Some(marker.metadata.clone()),
            Some(m) if *m != marker.metadata => {
                return Err(Error::Dataset {
                    dir: dir.to_owned(),
                    reason: format!(
                        "shard {i} computed other metadata than shard 0: {} vs {m}",
                        marker.metadata
                    ),
                })
            }
            Some(_) => {}
        }
        for file in marker.parts {
            let side_name = sidecar_name(&file);
            let side = dir.join(&side_name);
            if !side.exists() {
                missing.push(format!("{side_name} (sidecar of {file})"));
                continue;
            }
            let sc: PartSidecar = read_json(&side)?;
            check_part_file(dir, &sc).map_err(|reason| Error::Dataset {
                dir: dir.to_owned(),
                reason,
            })?;
            if !dir.join(&sc.rejects_file).exists() {
                missing.push(sc.rejects_file.clone());
            }
            listed.insert(sc.file.clone());
            parts.push(sc);
        }
    }
    if !missing.is_empty() {
        return Err(Error::Incomplete {
            dir: dir.to_owned(),
            missing: missing.join("; "),
        });
    }
    let stray = stray_parts(dir, count, &listed)?;
    if !stray.is_empty() {
        return Err(Error::Dataset {
            dir: dir.to_owned(),
            reason: format!("parts no shard marker lists: {}", stray.join(", ")),
        });
    }
    let mut sums: BTreeMap<String, u128> = BTreeMap::new();
    for p in &parts {
        for (c, v) in &p.columns {
            let v = u128::from_str_radix(v, 16).map_err(|_| Error::Dataset {
                dir: dir.to_owned(),
                reason: format!("{}: bad column checksum {v:?}", p.file),
            })?;
            let e = sums.entry(c.clone()).or_insert(0);
            *e = e.wrapping_add(v);
        }
    }
    for f in schema.arrow.fields() {
        sums.entry(f.name().clone()).or_insert(0);
    }
    if info.metadata.is_null() {
        info.metadata = shard_meta.unwrap_or(serde_json::Value::Null);
    }
    let manifest = Manifest {
        layout_version: LAYOUT_VERSION,
        schema: schema.name.to_owned(),
        schema_version: schema.version,
        shards: count,
        rows: parts.iter().map(|p| p.rows).sum(),
        rejects: parts.iter().map(|p| p.rejects).sum(),
        parts,
        columns: sums
            .into_iter()
            .map(|(k, v)| (k, format!("{v:032x}")))
            .collect(),
        info,
        created_unix_s: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0),
    };
    write_json_atomic(dir, MANIFEST, &manifest)?;
    Ok(manifest)
}

fn sidecar_name(part_file: &str) -> String {
    match part_file.rsplit_once('.') {
        Some((stem, _)) => format!("{stem}.json"),
        None => format!("{part_file}.json"),
    }
}

fn check_part_file(dir: &Path, sc: &PartSidecar) -> std::result::Result<(), String> {
    let p = dir.join(&sc.file);
    match fs::metadata(&p) {
        Err(_) => Err(format!("part {} is missing", sc.file)),
        Ok(m) if m.len() != sc.bytes => Err(format!(
            "part {} has {} bytes, its sidecar records {}",
            sc.file,
            m.len(),
            sc.bytes
        )),
        Ok(_) => Ok(()),
    }
}

/// Part and rejects files (not temporaries) that are not in `listed` or belong to another
/// shard count.
fn stray_parts(
    dir: &Path,
    count: u32,
    listed: &std::collections::HashSet<String>,
) -> Result<Vec<String>> {
    let mut stray = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let Some(parsed) = parse_name(&name) else {
            continue;
        };
        if parsed.temp {
            continue;
        }
        let is_data = parsed.kind == FileKind::Part && !name.ends_with(".json");
        if parsed.count != count {
            stray.push(format!(
                "{name} (written for {} shards, the dataset has {count})",
                parsed.count
            ));
        } else if is_data && !listed.contains(&name) {
            stray.push(name);
        }
    }
    stray.sort();
    Ok(stray)
}

/// One row of a samples dataset as [`Dataset::for_each_sample`] gives it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleRow<'a> {
    pub id: &'a str,
    /// `(lat, lon)` when the row has both.
    pub coords: Option<(f64, f64)>,
    /// `train`, `val` or `test`.
    pub split: &'a str,
    /// Index in the manifest's class list.
    pub label: Option<i32>,
}

/// A committed dataset, opened for reading.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub dir: PathBuf,
    pub manifest: Manifest,
    schema: DatasetSchema,
}

/// Bytes of decoded values a batch read from a part aims at.
const BATCH_BYTES: u64 = 16 << 20;

/// Rows per batch when reading a Parquet part: as many as fill [`BATCH_BYTES`] at the
/// larger of the schema's decoded fixed width and the part's own uncompressed bytes per row
/// (its row groups' metadata, for the variable-width columns), between 1 and 65,536. A fixed
/// row count would make a batch of 65,536 HOG rows (44 KB each) 2.9 GB: the whole part in
/// memory at once, in every stage that streams features.
fn batch_rows(schema: &DatasetSchema, meta: &parquet::file::metadata::ParquetMetaData) -> usize {
    let (bytes, rows) = meta.row_groups().iter().fold((0u64, 0u64), |(b, r), g| {
        (
            b + g.total_byte_size().max(0) as u64,
            r + g.num_rows().max(0) as u64,
        )
    });
    let per_row = bytes
        .div_ceil(rows.max(1))
        .max(schema.fixed_row_bytes() as u64)
        .max(1);
    (BATCH_BYTES / per_row).clamp(1, 64 * 1024) as usize
}

impl Dataset {
    /// Opens `dir` as a dataset of `schema`. Refuses (naming the problem) a directory
    /// without a manifest, with another schema or version, with parts missing or of the
    /// wrong size, or with stray parts.
    pub fn open(dir: &Path, schema: &DatasetSchema) -> Result<Dataset> {
        let mpath = dir.join(MANIFEST);
        if !mpath.exists() {
            let mut markers = 0;
            let mut parts = 0;
            if let Ok(rd) = fs::read_dir(dir) {
                for e in rd.flatten() {
                    match e.file_name().to_str().and_then(parse_name) {
                        Some(FileName {
                            kind: FileKind::Marker,
                            temp: false,
                            ..
                        }) => markers += 1,
                        Some(FileName {
                            kind: FileKind::Part,
                            temp: false,
                            ..
                        }) => parts += 1,
                        _ => {}
                    }
                }
            } else {
                return Err(Error::Dataset {
                    dir: dir.to_owned(),
                    reason: "the directory does not exist: run the stage that writes it".into(),
                });
            }
            return Err(Error::Dataset {
                dir: dir.to_owned(),
                reason: format!(
                    "no {MANIFEST}: the stage that writes it did not finish ({markers} shard markers and {parts} part files present); rerun it"
                ),
            });
        }
        let manifest = Manifest::load(dir)?;
        let bad = |reason: String| Error::Dataset {
            dir: dir.to_owned(),
            reason,
        };
        if manifest.layout_version != LAYOUT_VERSION {
            return Err(bad(format!(
                "layout version {} (this build reads {LAYOUT_VERSION})",
                manifest.layout_version
            )));
        }
        if manifest.schema != schema.name || manifest.schema_version != schema.version {
            return Err(bad(format!(
                "holds {} v{}, expected {} v{}",
                manifest.schema, manifest.schema_version, schema.name, schema.version
            )));
        }
        let mut problems = Vec::new();
        let mut listed = std::collections::HashSet::new();
        for p in &manifest.parts {
            if let Err(e) = check_part_file(dir, p) {
                problems.push(e);
            }
            if !dir.join(&p.rejects_file).exists() {
                problems.push(format!("rejects file {} is missing", p.rejects_file));
            }
            listed.insert(p.file.clone());
        }
        problems.extend(
            stray_parts(dir, manifest.shards, &listed)?
                .into_iter()
                .map(|s| format!("stray part {s}")),
        );
        if !problems.is_empty() {
            return Err(bad(problems.join("; ")));
        }
        Ok(Dataset {
            dir: dir.to_owned(),
            manifest,
            schema: schema.clone(),
        })
    }

    /// Recomputes every part's blake3 and compares it with the manifest.
    pub fn verify(&self) -> Result<()> {
        for p in &self.manifest.parts {
            self.verify_part(p)?;
        }
        Ok(())
    }

    fn verify_part(&self, p: &PartSidecar) -> Result<()> {
        let got = file_blake3(&self.dir.join(&p.file))?;
        if got != p.blake3 {
            return Err(Error::Dataset {
                dir: self.dir.clone(),
                reason: format!(
                    "part {} has checksum {got}, the manifest records {}",
                    p.file, p.blake3
                ),
            });
        }
        Ok(())
    }

    /// Reads every part in manifest order (checking each part's checksum and schema first)
    /// and calls `f` on each batch.
    pub fn for_each_batch(&self, mut f: impl FnMut(RecordBatch) -> Result<()>) -> Result<()> {
        for p in &self.manifest.parts {
            self.verify_part(p)?;
            let path = self.dir.join(&p.file);
            if p.file.ends_with(".arrow") {
                let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
                let r = arrow::ipc::reader::FileReader::try_new(file, None)?;
                self.schema
                    .check(&path.display().to_string(), &r.schema())?;
                for b in r {
                    f(b?)?;
                }
            } else {
                let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
                let pq = |e| Error::Parquet {
                    path: path.clone(),
                    source: e,
                };
                let b = ParquetRecordBatchReaderBuilder::try_new(file).map_err(pq)?;
                self.schema.check(&path.display().to_string(), b.schema())?;
                let rows = batch_rows(&self.schema, b.metadata());
                for batch in b.with_batch_size(rows).build().map_err(pq)? {
                    f(batch?)?;
                }
            }
        }
        Ok(())
    }

    /// The rows of a samples dataset ([`schema::samples`]) one by one, as the columns the
    /// stages downstream of ingest read (train, evaluate): id, coordinates, split, label.
    pub fn for_each_sample(&self, mut f: impl FnMut(SampleRow<'_>)) -> Result<()> {
        if self.manifest.schema != "samples" {
            return Err(Error::Config(format!(
                "{} holds a {} dataset, not samples",
                self.dir.display(),
                self.manifest.schema
            )));
        }
        self.for_each_batch(|b| {
            let id = b.column(0).as_string::<i32>();
            let lat = b.column(2).as_primitive::<Float64Type>();
            let lon = b.column(3).as_primitive::<Float64Type>();
            let split = b.column(8).as_string::<i32>();
            let label = b.column(9).as_primitive::<Int32Type>();
            for i in 0..b.num_rows() {
                f(SampleRow {
                    id: id.value(i),
                    coords: (!lat.is_null(i) && !lon.is_null(i))
                        .then(|| (lat.value(i), lon.value(i))),
                    split: split.value(i),
                    label: (!label.is_null(i)).then(|| label.value(i)),
                });
            }
            Ok(())
        })
    }

    /// The rows `range` (in dataset order: parts in manifest order), as batches; parts
    /// wholly outside the range are not read.
    pub fn for_each_batch_in(
        &self,
        range: std::ops::Range<u64>,
        mut f: impl FnMut(RecordBatch) -> Result<()>,
    ) -> Result<()> {
        let mut start = 0u64;
        for p in &self.manifest.parts {
            let (lo, hi) = (start, start + p.rows);
            start = hi;
            if hi <= range.start || lo >= range.end {
                continue;
            }
            let one = Dataset {
                dir: self.dir.clone(),
                schema: self.schema.clone(),
                manifest: Manifest {
                    parts: vec![p.clone()],
                    ..self.manifest.clone()
                },
            };
            let mut row = lo;
            one.for_each_batch(|b| {
                let (blo, bhi) = (row, row + b.num_rows() as u64);
                row = bhi;
                let from = range.start.max(blo);
                let to = range.end.min(bhi);
                if from < to {
                    f(b.slice((from - blo) as usize, (to - from) as usize))?;
                }
                Ok(())
            })?;
        }
        Ok(())
    }

    /// All batches, concatenated per part (small datasets and tests).
    pub fn read_all(&self) -> Result<Vec<RecordBatch>> {
        let mut out = Vec::new();
        self.for_each_batch(|b| {
            out.push(b);
            Ok(())
        })?;
        Ok(out)
    }

    /// All reject rows of all parts.
    pub fn read_rejects(&self) -> Result<Vec<RecordBatch>> {
        let mut out = Vec::new();
        for p in &self.manifest.parts {
            let path = self.dir.join(&p.rejects_file);
            let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
            let pq = |e| Error::Parquet {
                path: path.clone(),
                source: e,
            };
            for b in ParquetRecordBatchReaderBuilder::try_new(file)
                .map_err(pq)?
                .build()
                .map_err(pq)?
            {
                out.push(b?);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float64Array, Int32Array, StringArray};

    fn batch(ids: &[&str], labels: &[Option<i32>]) -> RecordBatch {
        let n = ids.len();
        let s = schema::samples();
        let cols: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(ids.to_vec())),
            Arc::new(StringArray::from(vec![None::<&str>; n])),
            Arc::new(Float64Array::from(vec![Some(45.0); n])),
            Arc::new(Float64Array::from(vec![Some(7.0); n])),
            Arc::new(StringArray::from(vec![Some("Italy"); n])),
            Arc::new(StringArray::from(vec![Some("IT"); n])),
            Arc::new(StringArray::from(vec![None::<&str>; n])),
            Arc::new(StringArray::from(
                ids.iter().map(|i| format!("{i}.jpg")).collect::<Vec<_>>(),
            )),
            Arc::new(StringArray::from(vec!["train"; n])),
            Arc::new(Int32Array::from(labels.to_vec())),
        ];
        RecordBatch::try_new(s.arrow, cols).unwrap()
    }

    /// A shard killed after two closed parts (and a third half written) resumes with those
    /// two kept and their rows counted; the committed result equals an uninterrupted run.
    /// Another key keeps nothing.
    #[test]
    fn resume_keeps_closed_parts_under_the_same_key() {
        let ids: Vec<String> = (0..30).map(|i| format!("r{i:02}")).collect();
        let rows = |r: std::ops::Range<usize>| {
            let v: Vec<&str> = ids[r].iter().map(String::as_str).collect();
            batch(&v, &vec![Some(1); v.len()])
        };
        // Tiny cap: every batch of 10 rows closes its part.
        let opts = WriterOptions {
            part_cap_bytes: 1,
            ..Default::default()
        };
        let shard = Shard::new(0, 1).unwrap();
        let whole = tempfile::tempdir().unwrap();
        let (mut w, done) =
            DatasetWriter::resume(whole.path(), schema::samples(), shard, opts.clone(), "k")
                .unwrap();
        assert_eq!(done, 0);
        for r in [0..10, 10..20, 20..30] {
            w.write(&rows(r)).unwrap();
        }
        w.finish(serde_json::Value::Null).unwrap();
        let want = finalize(whole.path(), &schema::samples(), 1, ManifestInfo::default()).unwrap();

        let dir = tempfile::tempdir().unwrap();
        let (mut w, _) =
            DatasetWriter::resume(dir.path(), schema::samples(), shard, opts.clone(), "k").unwrap();
        w.write(&rows(0..10)).unwrap();
        w.write(&rows(10..20)).unwrap();
        // The "kill": a third part half written (its temporary only), no marker.
        std::fs::write(
            dir.path().join(".part-00000-of-00001-0002.parquet.tmp"),
            b"half",
        )
        .unwrap();
        std::mem::forget(w);
        let (w2, done) =
            DatasetWriter::resume(dir.path(), schema::samples(), shard, opts.clone(), "other")
                .unwrap();
        assert_eq!(done, 0, "another key keeps nothing");
        drop(w2);
        // Start over under "k", kill again after two parts, then resume under "k".
        let (mut w, _) =
            DatasetWriter::resume(dir.path(), schema::samples(), shard, opts.clone(), "k").unwrap();
        w.write(&rows(0..10)).unwrap();
        w.write(&rows(10..20)).unwrap();
        std::mem::forget(w);
        let (mut w, done) =
            DatasetWriter::resume(dir.path(), schema::samples(), shard, opts, "k").unwrap();
        assert_eq!(done, 20);
        assert!(!dir
            .path()
            .join(".part-00000-of-00001-0002.parquet.tmp")
            .exists());
        w.write(&rows(20..30)).unwrap();
        w.finish(serde_json::Value::Null).unwrap();
        let got = finalize(dir.path(), &schema::samples(), 1, ManifestInfo::default()).unwrap();
        assert_eq!(got.rows, 30);
        assert_eq!(got.columns, want.columns);
        assert_eq!(got.parts.len(), 3);
        Dataset::open(dir.path(), &schema::samples())
            .unwrap()
            .verify()
            .unwrap();
    }

    #[test]
    fn wide_rows_are_read_in_batches_of_bounded_bytes() {
        // 200 rows of 40,000 f32 (160 KB each, 32 MB in all): a batch of a fixed 65,536
        // rows would be the whole part; bounded by bytes it is at most about 16 MB.
        let dim = 40_000;
        let dir = tempfile::tempdir().unwrap();
        let s = schema::features(dim);
        let mut w = DatasetWriter::create(
            dir.path(),
            s.clone(),
            Shard::new(0, 1).unwrap(),
            WriterOptions::default(),
        )
        .unwrap();
        let n = 200usize;
        let ids: Vec<String> = (0..n).map(|i| format!("p{i:03}")).collect();
        let values: Vec<f32> = (0..n * dim).map(|i| (i % 1000) as f32).collect();
        let list = arrow::array::FixedSizeListArray::new(
            Arc::new(arrow::datatypes::Field::new(
                "item",
                arrow::datatypes::DataType::Float32,
                false,
            )),
            dim as i32,
            Arc::new(arrow::array::Float32Array::from(values)),
            None,
        );
        let b = RecordBatch::try_new(
            s.arrow.clone(),
            vec![
                Arc::new(arrow::array::StringArray::from(ids.clone())),
                Arc::new(arrow::array::UInt8Array::from(vec![0u8; n])),
                Arc::new(list),
            ],
        )
        .unwrap();
        w.write(&b).unwrap();
        w.finish(serde_json::Value::Null).unwrap();
        finalize(dir.path(), &s, 1, ManifestInfo::default()).unwrap();
        let ds = Dataset::open(dir.path(), &s).unwrap();
        let mut sizes = Vec::new();
        let mut seen = Vec::new();
        ds.for_each_batch(|b| {
            sizes.push(b.num_rows());
            let id = b.column(0).as_string::<i32>();
            seen.extend((0..b.num_rows()).map(|i| id.value(i).to_owned()));
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, ids, "every row, in order");
        let most = *sizes.iter().max().unwrap();
        assert!(
            most * dim * 4 <= (BATCH_BYTES as usize) + dim * 4,
            "batches of {sizes:?} rows exceed {BATCH_BYTES} bytes"
        );
        assert!(sizes.len() >= 2, "{sizes:?}");
        // The feature values are written without a dictionary (the `plain` setting reaches
        // the list's leaf column).
        let part = dir.path().join(&ds.manifest.parts[0].file);
        let meta = ParquetRecordBatchReaderBuilder::try_new(File::open(part).unwrap())
            .unwrap()
            .metadata()
            .clone();
        let leaf = &meta.row_group(0).columns()[2];
        assert_eq!(leaf.column_path().string(), "feature.list.item");
        assert!(
            leaf.encodings()
                .all(|e| e != parquet::basic::Encoding::RLE_DICTIONARY),
            "{:?}",
            leaf.encodings().collect::<Vec<_>>()
        );
    }

    fn write_shards(dir: &Path, shards: u32, rows: &[(&str, Option<i32>)]) -> Manifest {
        for i in 0..shards {
            let mut w = DatasetWriter::create(
                dir,
                schema::samples(),
                Shard::new(i, shards).unwrap(),
                WriterOptions::default(),
            )
            .unwrap();
            let mine: Vec<_> = rows
                .iter()
                .enumerate()
                .filter(|(k, _)| *k as u32 % shards == i)
                .map(|(_, r)| *r)
                .collect();
            let ids: Vec<&str> = mine.iter().map(|r| r.0).collect();
            let labels: Vec<Option<i32>> = mine.iter().map(|r| r.1).collect();
            w.write(&batch(&ids, &labels)).unwrap();
            w.reject(Reject {
                id: Some("bad".into()),
                input: "x.tsv".into(),
                line: Some(3),
                reason: "duplicate-id",
                detail: "d".into(),
            })
            .unwrap();
            w.finish(serde_json::Value::Null).unwrap();
        }
        finalize(dir, &schema::samples(), shards, ManifestInfo::default()).unwrap()
    }

    const ROWS: &[(&str, Option<i32>)] = &[
        ("a", Some(0)),
        ("b", Some(1)),
        ("c", None),
        ("d", Some(2)),
        ("e", Some(0)),
    ];

    #[test]
    fn roundtrip_and_checksums_independent_of_sharding() {
        let t1 = tempfile::tempdir().unwrap();
        let t2 = tempfile::tempdir().unwrap();
        let m1 = write_shards(t1.path(), 1, ROWS);
        let m3 = write_shards(t2.path(), 3, ROWS);
        assert_eq!(m1.rows, 5);
        assert_eq!(m3.rows, 5);
        assert_eq!(m3.rejects, 3);
        assert_eq!(m1.columns, m3.columns);
        let ds = Dataset::open(t2.path(), &schema::samples()).unwrap();
        ds.verify().unwrap();
        let n: usize = ds.read_all().unwrap().iter().map(|b| b.num_rows()).sum();
        assert_eq!(n, 5);
        let rj: usize = ds
            .read_rejects()
            .unwrap()
            .iter()
            .map(|b| b.num_rows())
            .sum();
        assert_eq!(rj, 3);
    }

    #[test]
    fn label_change_touches_only_label_checksum() {
        let t1 = tempfile::tempdir().unwrap();
        let t2 = tempfile::tempdir().unwrap();
        let m1 = write_shards(t1.path(), 1, ROWS);
        let relabelled: Vec<_> = ROWS.iter().map(|(i, l)| (*i, l.map(|x| 2 - x))).collect();
        let m2 = write_shards(t2.path(), 1, &relabelled);
        for (c, v) in &m1.columns {
            assert_eq!(v == &m2.columns[c], c != "label", "column {c}");
        }
    }

    #[test]
    fn refuses_missing_manifest_and_names_missing_shards() {
        let t = tempfile::tempdir().unwrap();
        let mut w = DatasetWriter::create(
            t.path(),
            schema::samples(),
            Shard::new(0, 2).unwrap(),
            WriterOptions::default(),
        )
        .unwrap();
        w.write(&batch(&["a"], &[Some(0)])).unwrap();
        w.finish(serde_json::Value::Null).unwrap();
        let err = finalize(t.path(), &schema::samples(), 2, ManifestInfo::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("shard 1 of 2 has not finished"), "{err}");
        let err = Dataset::open(t.path(), &schema::samples())
            .unwrap_err()
            .to_string();
        assert!(err.contains("no _manifest.json"), "{err}");
    }

    #[test]
    fn refuses_missing_sidecar() {
        let t = tempfile::tempdir().unwrap();
        let mut w = DatasetWriter::create(
            t.path(),
            schema::samples(),
            Shard::ALL,
            WriterOptions::default(),
        )
        .unwrap();
        w.write(&batch(&["a"], &[Some(0)])).unwrap();
        w.finish(serde_json::Value::Null).unwrap();
        fs::remove_file(t.path().join("part-00000-of-00001-0000.json")).unwrap();
        let err = finalize(t.path(), &schema::samples(), 1, ManifestInfo::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(
                "part-00000-of-00001-0000.json (sidecar of part-00000-of-00001-0000.parquet)"
            ),
            "{err}"
        );
    }

    #[test]
    fn refuses_checksum_mismatch_and_missing_part() {
        let t = tempfile::tempdir().unwrap();
        write_shards(t.path(), 1, ROWS);
        let part = t.path().join("part-00000-of-00001-0000.parquet");
        let mut bytes = fs::read(&part).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x55;
        fs::write(&part, &bytes).unwrap();
        let ds = Dataset::open(t.path(), &schema::samples()).unwrap();
        let err = ds.read_all().unwrap_err().to_string();
        assert!(
            err.contains("has checksum") && err.contains("part-00000-of-00001-0000.parquet"),
            "{err}"
        );
        fs::remove_file(&part).unwrap();
        let err = Dataset::open(t.path(), &schema::samples())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("part part-00000-of-00001-0000.parquet is missing"),
            "{err}"
        );
    }

    #[test]
    fn stale_parts_from_another_count_are_refused_and_discarded() {
        let t = tempfile::tempdir().unwrap();
        write_shards(t.path(), 3, ROWS);
        // A committed dataset with a stray file from another N is refused.
        let ghost = t.path().join("part-00001-of-00002-0000.parquet");
        fs::copy(t.path().join("part-00000-of-00003-0000.parquet"), &ghost).unwrap();
        let err = Dataset::open(t.path(), &schema::samples())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("written for 2 shards, the dataset has 3"),
            "{err}"
        );
        fs::remove_file(&ghost).unwrap();
        // A rerun with N=2 discards the N=3 parts and the old manifest.
        write_shards(t.path(), 2, ROWS);
        let names: Vec<String> = fs::read_dir(t.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(names.iter().all(|n| !n.contains("-of-00003")), "{names:?}");
        let ds = Dataset::open(t.path(), &schema::samples()).unwrap();
        assert_eq!(ds.manifest.shards, 2);
        assert_eq!(ds.manifest.rows, 5);
    }

    #[test]
    fn part_cap_rotates_parts() {
        let t = tempfile::tempdir().unwrap();
        let opts = WriterOptions {
            part_cap_bytes: 1,
            ..Default::default()
        };
        let mut w = DatasetWriter::create(t.path(), schema::samples(), Shard::ALL, opts).unwrap();
        w.write(&batch(&["a", "b"], &[Some(0), Some(1)])).unwrap();
        w.write(&batch(&["c"], &[None])).unwrap();
        let m = w.finish(serde_json::Value::Null).unwrap();
        assert_eq!(m.parts.len(), 2, "{:?}", m.parts);
        let man = finalize(t.path(), &schema::samples(), 1, ManifestInfo::default()).unwrap();
        assert_eq!(man.rows, 3);
    }

    #[test]
    fn parses_names() {
        assert_eq!(
            parse_name("part-00003-of-00016-0001.parquet"),
            Some(FileName {
                kind: FileKind::Part,
                shard: 3,
                count: 16,
                temp: false
            })
        );
        assert_eq!(
            parse_name(".rejects-00000-of-00001-0000.parquet.tmp"),
            Some(FileName {
                kind: FileKind::Rejects,
                shard: 0,
                count: 1,
                temp: true
            })
        );
        assert_eq!(parse_name("_manifest.json"), None);
    }
}
