//! The Arrow schemas of the datasets that pass between stages, defined once, versioned.
//!
//! A [`DatasetSchema`] names a schema, gives its version (bumped on any change a reader could
//! notice) and its key columns (the columns that identify a row, used by the column
//! checksums of [`crate::dataset`]). Readers call [`DatasetSchema::check`] on what they find and
//! get every difference named.

use crate::error::{Error, Result};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use std::sync::Arc;

/// A named, versioned Arrow schema.
#[derive(Debug, Clone)]
pub struct DatasetSchema {
    /// Name recorded in manifests (`samples`, `rejects`, ...).
    pub name: &'static str,
    /// Version recorded in manifests; a reader refuses another.
    pub version: u32,
    /// The Arrow schema itself.
    pub arrow: SchemaRef,
    /// Columns that identify a row (`id`, and `view` for per-view datasets).
    pub key: &'static [&'static str],
    /// Columns of mostly unique values, written without dictionary encoding (a dictionary
    /// would only be built to be thrown away).
    pub plain: &'static [&'static str],
}

impl DatasetSchema {
    /// The Parquet leaf paths of the [`plain`](Self::plain) columns: the column itself, or
    /// for a list of values its values (`feature.list.item`), where the writer's
    /// dictionary setting applies.
    pub fn plain_leaves(&self) -> Vec<Vec<String>> {
        self.plain
            .iter()
            .filter_map(|c| self.arrow.field_with_name(c).ok())
            .map(|f| match f.data_type() {
                DataType::List(item)
                | DataType::LargeList(item)
                | DataType::FixedSizeList(item, _) => {
                    vec![f.name().clone(), "list".into(), item.name().clone()]
                }
                _ => vec![f.name().clone()],
            })
            .collect()
    }

    /// Bytes per row of the fixed-width columns once decoded (a feature vector's `dim` × 4,
    /// a pixel row's bytes); variable-width columns count 0.
    pub fn fixed_row_bytes(&self) -> usize {
        fn width(t: &DataType) -> usize {
            match t {
                DataType::FixedSizeBinary(n) => (*n).max(0) as usize,
                DataType::FixedSizeList(item, n) => (*n).max(0) as usize * width(item.data_type()),
                t => t.primitive_width().unwrap_or(0),
            }
        }
        self.arrow
            .fields()
            .iter()
            .map(|f| width(f.data_type()))
            .sum()
    }

    /// Compares `found` with this schema: same field names in the same order, same types,
    /// and no nullable field where this schema requires values. Returns every difference.
    pub fn check(&self, what: &str, found: &Schema) -> Result<()> {
        let mut diffs = Vec::new();
        let exp = self.arrow.fields();
        for (i, e) in exp.iter().enumerate() {
            match found.fields().iter().position(|f| f.name() == e.name()) {
                None => diffs.push(format!("missing column `{}` ({})", e.name(), e.data_type())),
                Some(j) => {
                    let f = &found.fields()[j];
                    if f.data_type() != e.data_type() {
                        diffs.push(format!(
                            "column `{}`: expected {}, found {}",
                            e.name(),
                            e.data_type(),
                            f.data_type()
                        ));
                    }
                    if f.is_nullable() && !e.is_nullable() {
                        diffs.push(format!(
                            "column `{}`: expected non-nullable, found nullable",
                            e.name()
                        ));
                    }
                    if i != j {
                        diffs.push(format!(
                            "column `{}`: expected at position {i}, found at {j}",
                            e.name()
                        ));
                    }
                }
            }
        }
        for f in found.fields() {
            if exp.iter().all(|e| e.name() != f.name()) {
                diffs.push(format!(
                    "unexpected column `{}` ({})",
                    f.name(),
                    f.data_type()
                ));
            }
        }
        if diffs.is_empty() {
            Ok(())
        } else {
            Err(Error::Schema {
                what: format!("{what} (expected {} v{})", self.name, self.version),
                diff: diffs.join("; "),
            })
        }
    }
}

/// Where each photo is, what it shows and which split it belongs to: the output of `ingest`.
///
/// Version 1. One row per photo, unique `id`.
/// - `id` (utf8): the source's identifier, kept as an opaque string (MediaEval hashes are
///   16-32 hex characters without zero padding; YFCC100M photo ids; CSV file names; paths
///   relative to a photo folder).
/// - `user` (utf8, nullable): the uploader (YFCC100M `user_nsid`, a CSV `AUTHOR`), used for
///   user-disjoint splits. Null where the source has none.
/// - `lat`, `lon` (f64, nullable): WGS84 degrees. Null where the source has no location
///   (test files, photos to predict).
/// - `country` (utf8, nullable): the country name as the source writes it (MediaEval's first
///   node-name component, URL-decoded).
/// - `country_code` (utf8, nullable): ISO 3166-1 alpha-2 computed from `lat`/`lon`
///   ([`crate::country::country_code`]); null at sea or without coordinates.
/// - `place` (utf8, nullable): the source's place path `Country@Region@City`.
/// - `image` (utf8): the image file, relative to the images root of the stage config.
/// - `split` (utf8): `train`, `val` or `test`.
/// - `label` (i32, nullable): index into the class list recorded in the manifest's metadata
///   (`classes`); null where the photo is outside the class list or no list is configured.
pub fn samples() -> DatasetSchema {
    DatasetSchema {
        name: "samples",
        version: 1,
        arrow: Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("user", DataType::Utf8, true),
            Field::new("lat", DataType::Float64, true),
            Field::new("lon", DataType::Float64, true),
            Field::new("country", DataType::Utf8, true),
            Field::new("country_code", DataType::Utf8, true),
            Field::new("place", DataType::Utf8, true),
            Field::new("image", DataType::Utf8, false),
            Field::new("split", DataType::Utf8, false),
            Field::new("label", DataType::Int32, true),
        ])),
        key: &["id"],
        plain: &["id", "user", "lat", "lon", "image"],
    }
}

/// Pixel tensors, one row per (photo, view): the output of `preprocess`.
///
/// Version 1. Unique (`id`, `view`).
/// - `id` (utf8): the samples row's id.
/// - `view` (u8): 0 = the centre crop (or the squashed image); 1.. = extra views (corners,
///   mirror images, random windows), described by the manifest's `views`.
/// - `pixels` (fixed-size binary, `height * width * 3` bytes): 8-bit RGB, row-major, HWC,
///   not normalised (the consumer owns normalisation).
///
/// The manifest's metadata holds `width`, `height` and how the pixels were made
/// (`geometry`, `views`, `filter`, ...): [`images_size`] reads the size back.
pub fn images(width: u32, height: u32) -> DatasetSchema {
    DatasetSchema {
        name: "images",
        version: 1,
        arrow: Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("view", DataType::UInt8, false),
            Field::new(
                "pixels",
                DataType::FixedSizeBinary((width as usize * height as usize * 3) as i32),
                false,
            ),
        ])),
        key: &["id", "view"],
        plain: &["id", "pixels"],
    }
}

/// The `(width, height)` an images dataset's manifest records.
pub fn images_size(m: &crate::dataset::Manifest) -> Result<(u32, u32)> {
    let get = |k: &str| {
        m.info
            .metadata
            .get(k)
            .and_then(|v| v.as_u64())
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| {
                Error::Config(format!(
                    "images manifest has no integer `{k}` in its metadata"
                ))
            })
    };
    Ok((get("width")?, get("height")?))
}

/// Feature vectors, one row per (photo, view): the output of `featurize`.
///
/// Version 1. Unique (`id`, `view`).
/// - `id` (utf8), `view` (u8): as in the images dataset they were computed from.
/// - `feature` (fixed-size list of `dim` f32).
///
/// The manifest's metadata holds `dim`, the backbone, layer, normalisation, the weights
/// file and its blake3 (or `random_init` and the seed) and the pixels' geometry:
/// [`features_dim`] reads the width back.
pub fn features(dim: usize) -> DatasetSchema {
    DatasetSchema {
        name: "features",
        version: 1,
        arrow: Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("view", DataType::UInt8, false),
            Field::new(
                "feature",
                DataType::FixedSizeList(
                    Arc::new(Field::new("item", DataType::Float32, false)),
                    dim as i32,
                ),
                false,
            ),
        ])),
        key: &["id", "view"],
        plain: &["id", "feature"],
    }
}

/// The feature width a features dataset's manifest records (`dim`).
pub fn features_dim(m: &crate::dataset::Manifest) -> Result<usize> {
    m.info
        .metadata
        .get("dim")
        .and_then(|v| v.as_u64())
        .map(|v| v as usize)
        .ok_or_else(|| {
            Error::Config("features manifest has no integer `dim` in its metadata".into())
        })
}

/// What a part skipped and why: one file per part, beside it.
///
/// Version 1.
/// - `id` (utf8, nullable): the row's id where it could be read.
/// - `input` (utf8): the input it came from (a file path).
/// - `line` (u64, nullable): 1-based line number in `input`, for line-oriented inputs.
/// - `reason` (utf8): a stable kebab-case code (`wrong-column-count`, `bad-coordinate`,
///   `null-island`, `duplicate-id`, `path-escapes-root`, ...), for filtering.
/// - `detail` (utf8): a human sentence with the offending value.
pub fn rejects() -> DatasetSchema {
    DatasetSchema {
        name: "rejects",
        version: 1,
        arrow: Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, true),
            Field::new("input", DataType::Utf8, false),
            Field::new("line", DataType::UInt64, true),
            Field::new("reason", DataType::Utf8, false),
            Field::new("detail", DataType::Utf8, false),
        ])),
        key: &[],
        plain: &["id", "detail"],
    }
}

/// The split names, in the order of [`crate::schema::samples`]' `split` values.
pub const SPLITS: [&str; 3] = ["train", "val", "test"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_names_every_difference() {
        let s = samples();
        assert!(s.check("x", &s.arrow).is_ok());
        let found = Schema::new(vec![
            Field::new("id", DataType::Utf8, true),
            Field::new("lat", DataType::Float32, true),
            Field::new("extra", DataType::Int8, true),
        ]);
        let err = s.check("part-0", &found).unwrap_err().to_string();
        assert!(err.contains("column `id`: expected non-nullable"), "{err}");
        assert!(
            err.contains("column `lat`: expected Float64, found Float32"),
            "{err}"
        );
        assert!(err.contains("missing column `image`"), "{err}");
        assert!(err.contains("unexpected column `extra`"), "{err}");
    }
}
