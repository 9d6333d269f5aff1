//! The registry of stage kinds the runner knows, behind one small trait. Adding a stage
//! crate means adding one impl here.

use anyhow::{anyhow, Context as _, Result};
use geoloc_core::config::StageDecl;
use geoloc_core::dataset::{Dataset, Manifest};
use geoloc_core::stage::{Context, Input};
use std::path::Path;

/// What the runner needs of a stage kind.
pub trait Stage {
    /// The kind's output-format version.
    fn format_version(&self) -> u32;
    /// The instance's resolved config as JSON (what manifests record).
    fn config_json(&self, decl: &StageDecl, ctx: &Context) -> Result<serde_json::Value>;
    /// The fingerprint of the instance given its inputs' manifests.
    fn fingerprint(&self, decl: &StageDecl, ctx: &Context, inputs: &[Input]) -> Result<String>;
    /// Runs one shard; returns a one-line summary.
    fn run(&self, decl: &StageDecl, ctx: &Context, inputs: &[Input]) -> Result<String>;
    /// Commits the output once every shard has run.
    fn finalize(
        &self,
        decl: &StageDecl,
        ctx: &Context,
        inputs: &[Input],
        shards: u32,
    ) -> Result<Manifest>;
    /// Checks a committed output opens (parts present, sizes right).
    fn check_output(&self, dir: &Path) -> Result<()>;
    /// Whether the kind splits its work across `--shard i/N` processes (then a finalize
    /// commits it); otherwise one process does it all.
    fn sharded(&self) -> bool {
        false
    }
    /// Whether the kind can use a GPU (`--device cuda`).
    fn uses_gpu(&self) -> bool {
        false
    }
}

/// The stage for a kind name.
pub fn lookup(kind: &str) -> Result<Box<dyn Stage>> {
    match kind {
        geoloc_ingest::KIND => Ok(Box::new(Ingest)),
        geoloc_preprocess::KIND => Ok(Box::new(Preprocess)),
        geoloc_featurize::KIND => Ok(Box::new(Featurize)),
        geoloc_train::KIND => Ok(Box::new(Train)),
        geoloc_evaluate::KIND => Ok(Box::new(Evaluate)),
        other => Err(anyhow!(
            "unknown stage kind `{other}` (known: {}, {}, {}, {}, {})",
            geoloc_ingest::KIND,
            geoloc_preprocess::KIND,
            geoloc_featurize::KIND,
            geoloc_train::KIND,
            geoloc_evaluate::KIND
        )),
    }
}

/// Parses a stage config table into its typed config, naming the instance on error.
pub fn parse_config<T: serde::de::DeserializeOwned>(decl: &StageDecl) -> Result<T> {
    toml::Value::Table(decl.config.clone())
        .try_into()
        .map_err(|e| anyhow!("invalid `{}` config: {e}", decl.kind))
}

struct Ingest;

impl Stage for Ingest {
    fn format_version(&self) -> u32 {
        geoloc_ingest::FORMAT_VERSION
    }
    fn config_json(&self, decl: &StageDecl, _ctx: &Context) -> Result<serde_json::Value> {
        let cfg: geoloc_ingest::Config = parse_config(decl)?;
        Ok(serde_json::to_value(cfg)?)
    }
    fn fingerprint(&self, decl: &StageDecl, ctx: &Context, _inputs: &[Input]) -> Result<String> {
        let cfg: geoloc_ingest::Config = parse_config(decl)?;
        Ok(geoloc_ingest::fingerprint(&cfg, ctx)?)
    }
    fn run(&self, decl: &StageDecl, ctx: &Context, _inputs: &[Input]) -> Result<String> {
        let cfg: geoloc_ingest::Config = parse_config(decl)?;
        let s = geoloc_ingest::run(&cfg, ctx)?;
        Ok(s.line())
    }
    fn finalize(
        &self,
        decl: &StageDecl,
        ctx: &Context,
        _inputs: &[Input],
        shards: u32,
    ) -> Result<Manifest> {
        let cfg: geoloc_ingest::Config = parse_config(decl)?;
        Ok(geoloc_ingest::finalize(&cfg, ctx, shards)?)
    }
    fn check_output(&self, dir: &Path) -> Result<()> {
        Dataset::open(dir, &geoloc_core::schema::samples()).context("samples dataset")?;
        Ok(())
    }
}

/// The one input of a stage that reads exactly one, named in the error otherwise.
fn single_input<'a>(decl: &StageDecl, inputs: &'a [Input]) -> Result<&'a Input> {
    let what = if decl.kind == geoloc_featurize::KIND {
        "an images dataset"
    } else {
        "a samples dataset"
    };
    match inputs {
        [one] => Ok(one),
        _ => Err(anyhow!(
            "a `{}` instance reads exactly one input ({what}), it declares {}",
            decl.kind,
            inputs.len()
        )),
    }
}

/// The `Stage` impl of a stage crate that reads exactly one input and has the usual face
/// (`Config`, `FORMAT_VERSION`, `fingerprint`, `run`, `finalize`, `open`).
macro_rules! single_input_stage {
    ($name:ident, $krate:ident, $what:literal, gpu = $gpu:literal) => {
        struct $name;

        impl Stage for $name {
            fn format_version(&self) -> u32 {
                $krate::FORMAT_VERSION
            }
            fn config_json(&self, decl: &StageDecl, _ctx: &Context) -> Result<serde_json::Value> {
                let cfg: $krate::Config = parse_config(decl)?;
                Ok(serde_json::to_value(cfg)?)
            }
            fn fingerprint(
                &self,
                decl: &StageDecl,
                ctx: &Context,
                inputs: &[Input],
            ) -> Result<String> {
                let cfg: $krate::Config = parse_config(decl)?;
                Ok($krate::fingerprint(&cfg, ctx, single_input(decl, inputs)?)?)
            }
            fn run(&self, decl: &StageDecl, ctx: &Context, inputs: &[Input]) -> Result<String> {
                let cfg: $krate::Config = parse_config(decl)?;
                let s = $krate::run(&cfg, ctx, single_input(decl, inputs)?)?;
                Ok(s.line())
            }
            fn finalize(
                &self,
                decl: &StageDecl,
                ctx: &Context,
                inputs: &[Input],
                shards: u32,
            ) -> Result<Manifest> {
                let cfg: $krate::Config = parse_config(decl)?;
                Ok($krate::finalize(
                    &cfg,
                    ctx,
                    single_input(decl, inputs)?,
                    shards,
                )?)
            }
            fn check_output(&self, dir: &Path) -> Result<()> {
                $krate::open(dir).context($what)?;
                Ok(())
            }
            fn sharded(&self) -> bool {
                true
            }
            fn uses_gpu(&self) -> bool {
                $gpu
            }
        }
    };
}

single_input_stage!(Preprocess, geoloc_preprocess, "images dataset", gpu = false);
single_input_stage!(Featurize, geoloc_featurize, "features dataset", gpu = true);

/// The `Stage` impl of a stage crate that reads several inputs (train: features or images
/// and samples; evaluate: samples, models and what they read) with the usual face.
macro_rules! multi_input_stage {
    ($name:ident, $krate:ident, $what:literal, gpu = $gpu:literal) => {
        struct $name;

        impl Stage for $name {
            fn format_version(&self) -> u32 {
                $krate::FORMAT_VERSION
            }
            fn config_json(&self, decl: &StageDecl, _ctx: &Context) -> Result<serde_json::Value> {
                let cfg: $krate::Config = parse_config(decl)?;
                Ok(serde_json::to_value(cfg)?)
            }
            fn fingerprint(
                &self,
                decl: &StageDecl,
                ctx: &Context,
                inputs: &[Input],
            ) -> Result<String> {
                let cfg: $krate::Config = parse_config(decl)?;
                Ok($krate::fingerprint(&cfg, ctx, inputs)?)
            }
            fn run(&self, decl: &StageDecl, ctx: &Context, inputs: &[Input]) -> Result<String> {
                let cfg: $krate::Config = parse_config(decl)?;
                Ok($krate::run(&cfg, ctx, inputs)?.line())
            }
            fn finalize(
                &self,
                decl: &StageDecl,
                ctx: &Context,
                inputs: &[Input],
                shards: u32,
            ) -> Result<Manifest> {
                let cfg: $krate::Config = parse_config(decl)?;
                Ok($krate::finalize(&cfg, ctx, inputs, shards)?)
            }
            fn check_output(&self, dir: &Path) -> Result<()> {
                $krate::open(dir).context($what)?;
                Ok(())
            }
            fn uses_gpu(&self) -> bool {
                $gpu
            }
        }
    };
}

multi_input_stage!(Train, geoloc_train, "model directory", gpu = true);
multi_input_stage!(
    Evaluate,
    geoloc_evaluate,
    "evaluation directory",
    gpu = false
);
