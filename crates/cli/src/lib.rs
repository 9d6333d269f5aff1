//! `geoloc-cli`: the `geoloc` binary's library half: the pipeline [`runner`] and the
//! registry of [`stages`] it drives. The binary (`main.rs`) only parses arguments.
//!
//! Architecture invariant: this is the only crate that depends on stage crates.

pub mod demo;
pub mod runner;
pub mod stages;
