//! `geoloc-core`: the contracts every geoloc stage shares.
//!
//! - [`schema`]: the Arrow schemas of the datasets between stages, versioned;
//! - [`dataset`]: the dataset directory (parts, sidecars, rejects, manifest) and its commit
//!   protocol, writer and reader;
//! - [`shard`]: `--shard i/N` and the scheduler environment;
//! - [`fingerprint`]: what makes a stage instance stale;
//! - [`geo`] and [`country`]: distances and country codes;
//! - [`config`]: pipeline files;
//! - [`stage`]: the context a stage run receives;
//! - [`photos`]: the photos a samples dataset lists (preprocess and featurize read them);
//! - [`ahead`]: work ahead of a consumer through a bounded queue (decode-ahead);
//! - [`parquet_writer`]: a Parquet writer that encodes columns in parallel;
//! - [`fixtures`]: finding the shared test data from tests.
//!
//! Architecture invariant: this crate knows no stage. Stages depend on it, never the reverse.

pub mod ahead;
pub mod artifact;
pub mod config;
pub mod country;
pub mod dataset;
pub mod error;
pub mod fingerprint;
pub mod fixtures;
pub mod geo;
pub mod lock;
pub mod parquet_writer;
pub mod photos;
pub mod rng;
pub mod schema;
pub mod shard;
pub mod stage;

pub use error::{Error, Result};
