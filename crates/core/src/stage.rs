//! What every stage's `run` receives besides its own configuration.

use crate::dataset::Manifest;
use crate::shard::Shard;
use std::path::{Path, PathBuf};

/// The context of one stage run.
#[derive(Debug, Clone)]
pub struct Context {
    /// Project root: relative paths in the stage's config resolve against it.
    pub root: PathBuf,
    /// The instance's output dataset directory.
    pub out_dir: PathBuf,
    /// Which shard this process writes.
    pub shard: Shard,
    /// Build id recorded in manifests (never fingerprinted).
    pub build: String,
    /// Draw progress bars (on a terminal).
    pub progress: bool,
    /// Compute everything again: keep nothing an earlier run of the same fingerprint left
    /// (featurize's closed parts, train's checkpoints). `geoloc run --force` sets it; without
    /// it a stage resumes where a killed run stopped.
    pub recompute: bool,
}

impl Context {
    /// Resolves a config path against the project root.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        crate::config::resolve(&self.root, p)
    }

    /// A progress bar `STAGE [bar] pos/len UNIT (rate, eta)`, hidden unless `progress`.
    pub fn progress_bar(&self, stage: &str, n: u64, unit: &str) -> indicatif::ProgressBar {
        if !self.progress {
            return indicatif::ProgressBar::hidden();
        }
        let bar = indicatif::ProgressBar::new(n);
        let template =
            format!("{stage} {{bar:40}} {{pos}}/{{len}} {unit} ({{per_sec}}, {{eta}} left)");
        bar.set_style(
            indicatif::ProgressStyle::with_template(&template)
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    }
}

/// The build id: crate version, plus the commit when the build recorded one.
pub fn build_id() -> String {
    match option_env!("GEOLOC_GIT_COMMIT") {
        Some(c) => format!("geoloc {} ({c})", env!("CARGO_PKG_VERSION")),
        None => format!("geoloc {}", env!("CARGO_PKG_VERSION")),
    }
}

/// An upstream dataset a stage reads: the instance's name, its directory and its manifest.
#[derive(Debug, Clone)]
pub struct Input {
    pub name: String,
    pub dir: PathBuf,
    pub manifest: Manifest,
}
