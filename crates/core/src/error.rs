//! The error type of `geoloc-core`.

use std::path::PathBuf;

/// Everything that can go wrong while reading or writing the shared contracts.
///
/// Variants name the file or field at fault so the CLI can print them as they are.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O error on a named path.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Writing a file failed (a full disk, a quota, an I/O error): what was being written,
    /// where, and why. The writer has removed its temporary file.
    #[error("writing {what} {path}: {source}")]
    Write {
        what: String,
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A dataset directory that a reader must refuse: no manifest, missing or extra parts,
    /// a checksum or size that disagrees with the manifest.
    #[error("dataset {dir} is not usable: {reason}")]
    Dataset { dir: PathBuf, reason: String },
    /// The finalize step found shards or parts that have not been written yet.
    #[error("dataset {dir} is incomplete: {missing}")]
    Incomplete { dir: PathBuf, missing: String },
    /// The schema found differs from the one expected; `diff` lists each difference.
    #[error("schema mismatch in {what}: {diff}")]
    Schema { what: String, diff: String },
    /// Arrow failed on a batch.
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// Parquet failed on a named file.
    #[error("{path}: parquet: {source}")]
    Parquet {
        path: PathBuf,
        #[source]
        source: parquet::errors::ParquetError,
    },
    /// A JSON sidecar or manifest could not be read or written.
    #[error("{path}: json: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// A pipeline or stage configuration is invalid.
    #[error("config: {0}")]
    Config(String),
    /// Another run holds the lock of what this run would write (see [`crate::lock`]).
    #[error(
        "{dir} is being written by {holder}; let it finish (or stop it), or rerun with \
         --if-locked wait"
    )]
    Locked { dir: PathBuf, holder: String },
    /// A `--shard i/N` value (or the scheduler's environment) is invalid.
    #[error("shard: {0}")]
    Shard(String),
}

impl Error {
    /// A failed write of `what` to `path`.
    pub fn write(
        what: impl Into<String>,
        path: impl Into<PathBuf>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Error::Write {
            what: what.into(),
            path: path.into(),
            source: source.into(),
        }
    }

    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
