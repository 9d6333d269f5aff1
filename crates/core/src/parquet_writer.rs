//! A Parquet writer that encodes the columns of each row group in parallel (rayon).
//!
//! parquet's `ArrowWriter` encodes and compresses one column after another on the calling
//! thread; on wide row groups that is the bottleneck of a TSV-to-Parquet conversion. This
//! writer buffers batches up to a row-group size, then encodes the row group on rayon's pool,
//! each column in its own task (`ArrowColumnWriter`, the parquet crate's own API for this),
//! while the caller goes on producing the next batches; finished row groups are appended in
//! order, at most four under way at once. The file is the same as `ArrowWriter`'s (the Arrow schema is embedded, so
//! readers get the same types back). Columns must have one Parquet leaf each (flat columns
//! and lists of primitives); nested structs are refused.

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use parquet::arrow::arrow_writer::{compute_leaves, ArrowColumnChunk, ArrowRowGroupWriterFactory};
use parquet::arrow::ArrowWriter;
use parquet::errors::{ParquetError, Result};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use rayon::prelude::*;
use std::collections::VecDeque;
use std::io::Write;
use std::sync::mpsc::{sync_channel, Receiver};

type Encoded = Result<Vec<ArrowColumnChunk>>;

/// See the module docs.
pub struct ParallelWriter<W: Write + Send> {
    writer: SerializedFileWriter<W>,
    factory: ArrowRowGroupWriterFactory,
    schema: SchemaRef,
    pending: Vec<RecordBatch>,
    pending_rows: usize,
    pending_bytes: usize,
    row_group_rows: usize,
    row_group_bytes: usize,
    row_groups: usize,
    /// Row groups being encoded on the pool, oldest first, with their Arrow sizes.
    in_flight: VecDeque<(Receiver<Encoded>, usize)>,
}

/// Row groups encoded concurrently while the caller produces the next ones.
const MAX_IN_FLIGHT: usize = 4;

impl<W: Write + Send> ParallelWriter<W> {
    /// A writer over `sink`. A row group is encoded once it holds `row_group_rows` rows or
    /// `row_group_bytes` bytes of Arrow data, whichever comes first.
    pub fn try_new(
        sink: W,
        schema: SchemaRef,
        props: WriterProperties,
        row_group_rows: usize,
        row_group_bytes: usize,
    ) -> Result<Self> {
        let (writer, factory) =
            ArrowWriter::try_new(sink, schema.clone(), Some(props))?.into_serialized_writer()?;
        Ok(ParallelWriter {
            writer,
            factory,
            schema,
            pending: Vec::new(),
            pending_rows: 0,
            pending_bytes: 0,
            row_group_rows: row_group_rows.max(1),
            row_group_bytes: row_group_bytes.max(1),
            row_groups: 0,
            in_flight: VecDeque::new(),
        })
    }

    /// Buffers a batch; starts encoding a row group when the buffer is full.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        self.pending_rows += batch.num_rows();
        self.pending_bytes += batch.get_array_memory_size();
        self.pending.push(batch.clone());
        if self.pending_rows >= self.row_group_rows || self.pending_bytes >= self.row_group_bytes {
            self.flush()?;
        }
        Ok(())
    }

    /// Bytes written to the sink so far plus an estimate of the buffered and in-flight rows.
    pub fn size_estimate(&self) -> u64 {
        let buffered: usize =
            self.pending_bytes + self.in_flight.iter().map(|(_, b)| b).sum::<usize>();
        self.writer.bytes_written() as u64 + (buffered / 4) as u64
    }

    /// Starts encoding the buffered rows as one row group on rayon's pool; appends finished
    /// row groups in order, keeping at most [`MAX_IN_FLIGHT`] under way.
    pub fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let writers = self.factory.create_column_writers(self.row_groups)?;
        if writers.len() != self.schema.fields().len() {
            return Err(ParquetError::General(format!(
                "the parallel writer needs one Parquet leaf per column: {} leaves for {} columns",
                writers.len(),
                self.schema.fields().len()
            )));
        }
        let pending = std::mem::take(&mut self.pending);
        let fields = self.schema.fields().clone();
        let (tx, rx) = sync_channel(1);
        rayon::spawn(move || {
            let encoded: Encoded = writers
                .into_par_iter()
                .enumerate()
                .map(|(i, mut w)| {
                    for b in &pending {
                        for leaf in compute_leaves(&fields[i], b.column(i))? {
                            w.write(&leaf)?;
                        }
                    }
                    w.close()
                })
                .collect();
            // The receiver only goes away when the writer is dropped mid-way.
            let _ = tx.send(encoded);
        });
        self.in_flight.push_back((rx, self.pending_bytes));
        self.row_groups += 1;
        self.pending_rows = 0;
        self.pending_bytes = 0;
        while self.in_flight.len() > MAX_IN_FLIGHT {
            self.append_oldest()?;
        }
        Ok(())
    }

    fn append_oldest(&mut self) -> Result<()> {
        let Some((rx, _)) = self.in_flight.pop_front() else {
            return Ok(());
        };
        let chunks = rx.recv().map_err(|_| {
            ParquetError::General("a row-group encoder stopped without a result".into())
        })??;
        let mut rg = self.writer.next_row_group()?;
        for c in chunks {
            c.append_to_row_group(&mut rg)?;
        }
        rg.close()?;
        Ok(())
    }

    /// Flushes, waits for every row group, and writes the footer; returns the sink.
    pub fn into_inner(mut self) -> Result<W> {
        self.flush()?;
        while !self.in_flight.is_empty() {
            self.append_oldest()?;
        }
        self.writer.into_inner()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float64Array, Int8Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use std::sync::Arc;

    #[test]
    fn round_trips_like_arrow_writer() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("s", DataType::Utf8, true),
            Field::new("i", DataType::Int8, true),
            Field::new("f", DataType::Float64, true),
        ]));
        let batch = |k: i32| {
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(StringArray::from(vec![
                        Some(format!("a{k}")),
                        None,
                        Some("c".into()),
                    ])),
                    Arc::new(Int8Array::from(vec![Some(1), Some(k as i8), None])),
                    Arc::new(Float64Array::from(vec![Some(0.5), None, Some(k as f64)])),
                ],
            )
            .unwrap()
        };
        let file = tempfile::tempfile().unwrap();
        let mut w = ParallelWriter::try_new(
            file,
            schema.clone(),
            WriterProperties::default(),
            4,
            1 << 20,
        )
        .unwrap();
        for k in 0..5 {
            w.write(&batch(k)).unwrap();
        }
        let file = w.into_inner().unwrap();
        let r = ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
        assert_eq!(
            r.metadata().num_row_groups(),
            3,
            "flushes at 6 and 12 rows, then the last 3"
        );
        assert_eq!(
            r.schema().fields(),
            schema.fields(),
            "types come back as written"
        );
        let got: Vec<RecordBatch> = r.build().unwrap().map(|b| b.unwrap()).collect();
        let all = arrow::compute::concat_batches(&schema, &got).unwrap();
        let want = arrow::compute::concat_batches(&schema, &(0..5).map(batch).collect::<Vec<_>>())
            .unwrap();
        assert_eq!(all, want);
    }
}
