//! Raw mode: a MediaEval locale TSV to one Parquet file with the peers' 7 typed columns, no
//! validation, no decoding, no enrichment. It exists to compare the parsing and writing
//! engine with polars and DuckDB on the same work (`../shared/bench/peers/peers/schemas.py`:
//! `hash` str, `media_type` i8, `year` i16, `place_node_id` i64, `node_name` str,
//! `longitude` f64, `latitude` f64; empty fields are null; zstd level 3).

use crate::text::LineChunks;
use crate::Error;
use arrow::array::{
    ArrayRef, Float64Builder, Int16Builder, Int64Builder, Int8Builder, RecordBatch, StringBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use geoloc_core::parquet_writer::ParallelWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use rayon::prelude::*;
use std::path::Path;
use std::sync::Arc;

/// The peers' MediaEval schema.
pub fn mediaeval_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("hash", DataType::Utf8, true),
        Field::new("media_type", DataType::Int8, true),
        Field::new("year", DataType::Int16, true),
        Field::new("place_node_id", DataType::Int64, true),
        Field::new("node_name", DataType::Utf8, true),
        Field::new("longitude", DataType::Float64, true),
        Field::new("latitude", DataType::Float64, true),
    ]))
}

fn utf8(b: &[u8], line: u64) -> Result<&str, String> {
    std::str::from_utf8(b).map_err(|_| format!("line {line}: not UTF-8"))
}

fn num<T: std::str::FromStr>(f: &[u8], line: u64, col: &str) -> Result<Option<T>, String> {
    if f.is_empty() {
        return Ok(None);
    }
    let s = std::str::from_utf8(f).map_err(|_| format!("line {line}: {col} is not UTF-8"))?;
    s.parse::<T>()
        .map(Some)
        .map_err(|_| format!("line {line}: {col} {s:?} does not parse"))
}

fn parse_chunk(chunk: &crate::text::Chunk, schema: &SchemaRef) -> Result<RecordBatch, String> {
    let n = memchr::memchr_iter(b'\n', &chunk.data).count() + 1;
    let mut hash = StringBuilder::with_capacity(n, n * 32);
    let mut media = Int8Builder::with_capacity(n);
    let mut year = Int16Builder::with_capacity(n);
    let mut node = Int64Builder::with_capacity(n);
    let mut name = StringBuilder::with_capacity(n, n * 32);
    let mut lon = Float64Builder::with_capacity(n);
    let mut lat = Float64Builder::with_capacity(n);
    let mut f: Vec<&[u8]> = Vec::with_capacity(8);
    for (ln, line) in chunk.lines() {
        crate::text::split_fields(line, b'\t', &mut f);
        if f.len() != 7 {
            return Err(format!("line {ln}: {} fields, expected 7", f.len()));
        }
        if f[0].is_empty() {
            hash.append_null()
        } else {
            hash.append_value(utf8(f[0], ln)?)
        }
        media.append_option(num(f[1], ln, "media_type")?);
        year.append_option(num(f[2], ln, "year")?);
        node.append_option(num(f[3], ln, "place_node_id")?);
        if f[4].is_empty() {
            name.append_null()
        } else {
            name.append_value(utf8(f[4], ln)?)
        }
        lon.append_option(num(f[5], ln, "longitude")?);
        lat.append_option(num(f[6], ln, "latitude")?);
    }
    let cols: Vec<ArrayRef> = vec![
        Arc::new(hash.finish()),
        Arc::new(media.finish()),
        Arc::new(year.finish()),
        Arc::new(node.finish()),
        Arc::new(name.finish()),
        Arc::new(lon.finish()),
        Arc::new(lat.finish()),
    ];
    RecordBatch::try_new(schema.clone(), cols).map_err(|e| e.to_string())
}

/// Converts `input` to `output` (Parquet, zstd 3); returns the row count. Parsing runs on
/// rayon's pool (`RAYON_NUM_THREADS`), writing on the calling thread.
pub fn mediaeval_to_parquet(input: &Path, output: &Path) -> Result<u64, Error> {
    let io = |p: &Path| {
        let p = p.to_owned();
        move |e| Error::Io { path: p, source: e }
    };
    let schema = mediaeval_schema();
    let file = std::fs::File::open(input).map_err(io(input))?;
    let mut chunks = LineChunks::new(file, 8 << 20);
    let out = std::fs::File::create(output).map_err(io(output))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(3).expect("3 is a valid zstd level"),
        ))
        .build();
    let pq = |e: parquet::errors::ParquetError| Error::Input {
        path: output.to_owned(),
        msg: e.to_string(),
    };
    let mut w = ParallelWriter::try_new(
        std::io::BufWriter::with_capacity(4 << 20, out),
        schema.clone(),
        props,
        512 * 1024,
        64 << 20,
    )
    .map_err(pq)?;
    let in_flight = 2 * rayon::current_num_threads().max(1);
    let mut rows = 0u64;
    loop {
        let mut batch = Vec::new();
        while batch.len() < in_flight {
            match chunks.next_chunk().map_err(io(input))? {
                Some(c) => batch.push(c),
                None => break,
            }
        }
        if batch.is_empty() {
            break;
        }
        let parsed: Vec<Result<RecordBatch, String>> =
            batch.par_iter().map(|c| parse_chunk(c, &schema)).collect();
        for b in parsed {
            let b = b.map_err(|msg| Error::Input {
                path: input.to_owned(),
                msg,
            })?;
            rows += b.num_rows() as u64;
            w.write(&b).map_err(pq)?;
        }
    }
    w.into_inner().map_err(pq)?;
    Ok(rows)
}
