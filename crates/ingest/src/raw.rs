//! Raw mode: a MediaEval locale TSV to one Parquet file with the peers' 7 typed columns, no
//! validation, no decoding, no enrichment. It exists to compare the parsing and writing
//! engine with polars and DuckDB on the same work (`../shared/bench/peers/peers/schemas.py`:
//! `hash` str, `media_type` i8, `year` i16, `place_node_id` i64, `node_name` str,
//! `longitude` f64, `latitude` f64; empty fields are null; zstd level 3).

use crate::Error;
use arrow::array::{
    ArrayRef, Float64Builder, Int16Builder, Int64Builder, Int8Builder, RecordBatch, StringBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use geoloc_core::parquet_writer::ParallelWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;
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

fn num<T: std::str::FromStr>(f: &str, line: u64, col: &str) -> Result<Option<T>, (u64, String)> {
    if f.is_empty() {
        return Ok(None);
    }
    f.parse::<T>()
        .map(Some)
        .map_err(|_| (line, format!("{col} {f:?} does not parse")))
}

/// Parses whole lines into one batch; returns it with the number of lines seen. Errors carry
/// the 0-based line index within `text` and a message.
fn parse_chunk(text: &[u8], schema: &SchemaRef) -> Result<(RecordBatch, u64), (u64, String)> {
    // Validate once per chunk; fields split at ASCII tabs and newlines stay valid UTF-8.
    let text = std::str::from_utf8(text).map_err(|e| {
        let line = memchr::memchr_iter(b'\n', &text[..e.valid_up_to()]).count() as u64;
        (line, "not UTF-8".to_string())
    })?;
    // About 100 bytes a line: a capacity hint, not a count.
    let n = text.len() / 64 + 1;

    let mut hash = StringBuilder::with_capacity(n, n * 32);
    let mut media = Int8Builder::with_capacity(n);
    let mut year = Int16Builder::with_capacity(n);
    let mut node = Int64Builder::with_capacity(n);
    let mut name = StringBuilder::with_capacity(n, n * 32);
    let mut lon = Float64Builder::with_capacity(n);
    let mut lat = Float64Builder::with_capacity(n);
    let mut f: [&str; 7] = [""; 7];
    let bytes = text.as_bytes();
    let mut pos = 0usize;
    let mut ln = 0u64;
    while pos < bytes.len() {
        let end = memchr::memchr(b'\n', &bytes[pos..]).map_or(bytes.len(), |i| pos + i);
        let mut line_end = end;
        if line_end > pos && bytes[line_end - 1] == b'\r' {
            line_end -= 1;
        }
        let (start, this_line) = (pos, ln);
        pos = end + 1;
        ln += 1;
        if line_end == start {
            continue;
        }
        // Fields by byte positions of the tabs (ASCII, so every cut is a char boundary).
        let mut count = 0;
        let mut a = start;
        for t in memchr::memchr_iter(b'\t', &bytes[start..line_end]) {
            if count < 6 {
                f[count] = &text[a..start + t];
            }
            count += 1;
            a = start + t + 1;
        }
        if count != 6 {
            return Err((this_line, format!("{} fields, expected 7", count + 1)));
        }
        f[6] = &text[a..line_end];
        let ln = this_line;

        if f[0].is_empty() {
            hash.append_null()
        } else {
            hash.append_value(f[0])
        }
        media.append_option(num(f[1], ln, "media_type")?);
        year.append_option(num(f[2], ln, "year")?);
        node.append_option(num(f[3], ln, "place_node_id")?);
        if f[4].is_empty() {
            name.append_null()
        } else {
            name.append_value(f[4])
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
    let batch = RecordBatch::try_new(schema.clone(), cols).map_err(|e| (0, e.to_string()))?;
    Ok((batch, ln))
}

const PIECE: usize = 4 << 20;

/// Converts `input` to `output` (Parquet, zstd 3); returns the row count. The input is
/// memory-mapped and cut into line-aligned pieces (pages are released once parsed); parsing
/// and column encoding run on rayon's pool (`RAYON_NUM_THREADS`). Columns of mostly unique values (`hash`, coordinates) are
/// written without dictionary encoding, as polars and DuckDB decide for them too.
pub fn mediaeval_to_parquet(input: &Path, output: &Path) -> Result<u64, Error> {
    let io = |p: &Path| {
        let p = p.to_owned();
        move |e| Error::Io { path: p, source: e }
    };
    let schema = mediaeval_schema();
    let file = std::fs::File::open(input).map_err(io(input))?;
    // SAFETY: a read-only private map of a file this process does not write; a concurrent
    // writer to the input could change the bytes we read (as with read()), which at worst
    // makes a line unparsable. Slices into the map do not outlive the parsing of their piece.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io(input))?;
    #[cfg(unix)]
    let _ = map.advise(memmap2::Advice::Sequential);
    let data: &[u8] = &map;
    let out = std::fs::File::create(output).map_err(io(output))?;
    let mut props = WriterProperties::builder().set_compression(Compression::ZSTD(
        ZstdLevel::try_new(3).expect("3 is a valid zstd level"),
    ));
    for c in ["hash", "longitude", "latitude"] {
        props = props.set_column_dictionary_enabled(ColumnPath::from(c), false);
    }
    let pq = |e: parquet::errors::ParquetError| Error::Input {
        path: output.to_owned(),
        msg: e.to_string(),
    };
    let mut w = ParallelWriter::try_new(out, schema.clone(), props.build(), 128 * 1024, 16 << 20)
        .map_err(pq)?;
    // Line-aligned pieces of about 4 MB, parsed in parallel in groups; once a group is parsed
    // its pages are dropped from this process (MADV_DONTNEED), so the resident set stays at
    // a few groups rather than the whole file.
    let mut pieces: Vec<(usize, usize)> = Vec::new();
    let mut start = 0usize;
    while start < data.len() {
        let mut end = (start + PIECE).min(data.len());
        if end < data.len() {
            end = memchr::memchr(b'\n', &data[end..]).map_or(data.len(), |i| end + i + 1);
        }
        pieces.push((start, end));
        start = end;
    }
    let in_flight = 2 * rayon::current_num_threads().max(1);
    let (mut rows, mut lines_before, mut released) = (0u64, 0u64, 0usize);
    for group in pieces.chunks(in_flight) {
        let parsed: Vec<_> = group
            .par_iter()
            .map(|&(a, b)| parse_chunk(&data[a..b], &schema))
            .collect();
        for p in parsed {
            let (b, lines) = p.map_err(|(line, msg)| Error::Input {
                path: input.to_owned(),
                msg: format!("line {}: {msg}", lines_before + line + 1),
            })?;
            lines_before += lines;
            rows += b.num_rows() as u64;
            w.write(&b).map_err(pq)?;
        }
        #[cfg(unix)]
        {
            let upto = group.last().map_or(0, |g| g.1) / 4096 * 4096;
            if upto > released {
                // SAFETY: nothing borrows these pages any more (the batches own their data);
                // on a private read-only file map DONTNEED only drops them from this process.
                let _ = unsafe {
                    map.unchecked_advise_range(
                        memmap2::UncheckedAdvice::DontNeed,
                        released,
                        upto - released,
                    )
                };
                released = upto;
            }
        }
    }
    w.into_inner().map_err(pq)?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::AsArray;
    use arrow::datatypes::{Float64Type, Int16Type, Int8Type};

    #[test]
    fn converts_and_names_the_bad_line() {
        let t = tempfile::tempdir().unwrap();
        let input = t.path().join("in.tsv");
        std::fs::write(&input, "aa\t0\t2011\t5\tGermany@Berlin\t13.4\t52.5\r\nbb\t1\t\t6\tFrance\t\t\n\ncc\t0\t2012\t7\tItaly@Rome\t12.5\t41.9").unwrap();
        let out = t.path().join("out.parquet");
        assert_eq!(mediaeval_to_parquet(&input, &out).unwrap(), 3);
        let f = std::fs::File::open(&out).unwrap();
        let r = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
            .unwrap()
            .build()
            .unwrap();
        let b = r.map(|b| b.unwrap()).next().unwrap();
        assert_eq!(b.schema(), mediaeval_schema());
        assert_eq!(b.column(0).as_string::<i32>().value(2), "cc");
        assert_eq!(b.column(1).as_primitive::<Int8Type>().value(1), 1);
        assert!(b.column(2).is_null(1));
        assert_eq!(b.column(2).as_primitive::<Int16Type>().value(2), 2012);
        assert_eq!(
            b.column(4).as_string::<i32>().value(0),
            "Germany@Berlin",
            "raw: not URL-decoded"
        );
        assert_eq!(b.column(6).as_primitive::<Float64Type>().value(0), 52.5);
        assert!(b.column(6).is_null(1));

        std::fs::write(
            &input,
            "aa\t0\t2011\t5\tX\t1\t2\nbb\t0\t2011\t5\tX\t1\t2\ncc\t0\t2011\t5\tX\t1\n",
        )
        .unwrap();
        let e = mediaeval_to_parquet(&input, &out).unwrap_err().to_string();
        assert!(e.contains("line 3: 6 fields, expected 7"), "{e}");
        std::fs::write(&input, "aa\t0\t2011\t5\tX\t1\t2\nbb\t0\tyear\t5\tX\t1\t2\n").unwrap();
        let e = mediaeval_to_parquet(&input, &out).unwrap_err().to_string();
        assert!(e.contains("line 2: year \"year\" does not parse"), "{e}");
    }
}
