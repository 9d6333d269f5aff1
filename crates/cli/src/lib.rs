//! `geoloc-cli`: the `geoloc` binary's library half: the pipeline [`runner`], the
//! registry of [`stages`] it drives, and [`predict`] (new photos through a model directory). The binary (`main.rs`) only parses arguments.
//!
//! Architecture invariant: this is the only crate that depends on stage crates.

pub mod cluster;
pub mod config_help;
pub mod demo;
pub mod gpu_check;
pub mod predict;
pub mod runner;
pub mod stages;

/// Which build this is: `CPU build`, or `CUDA build, compute capability N` (the `cuda`
/// feature; `cargo xtask build-cuda`).
pub const BUILD: &str = env!("GEOLOC_BUILD");
