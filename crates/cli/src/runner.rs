//! The pipeline runner: decides which stage instances are fresh, stale or missing, and runs
//! what is stale in dependency order. The same code runs behind `geoloc run` (on cluster
//! nodes, without cargo) and `cargo xtask run` (developers).

use crate::stages::{self, Stage};
use anyhow::{bail, Context as _, Result};
use geoloc_core::config::Pipeline;
use geoloc_core::dataset::Manifest;
use geoloc_core::shard::Shard;
use geoloc_core::stage::{Context, Input};
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Instant;

/// The state of one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Its committed output matches its current fingerprint.
    Fresh,
    /// It has committed output, but something it reads changed (the reason says what).
    Stale(String),
    /// It has no committed output (the reason says why).
    Missing(String),
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            State::Fresh => write!(f, "fresh"),
            State::Stale(r) => write!(f, "stale: {r}"),
            State::Missing(r) => write!(f, "missing: {r}"),
        }
    }
}

/// Which instances a run considers.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Only these instances (their inputs must already be committed).
    pub only: Vec<String>,
    /// This instance and everything downstream of it.
    pub downstream: Option<String>,
    /// Rerun selected instances even when fresh.
    pub force: bool,
}

/// Runs and inspects one pipeline.
pub struct Runner {
    pub pipeline: Pipeline,
    pub build: String,
    pub progress: bool,
}

/// One line of `status`.
#[derive(Debug, Clone)]
pub struct InstanceStatus {
    pub name: String,
    pub kind: String,
    pub dir: PathBuf,
    pub state: State,
}

impl Runner {
    /// Loads a pipeline; `runs_dir` overrides the file's.
    pub fn load(file: &std::path::Path, runs_dir: Option<PathBuf>) -> Result<Runner> {
        let mut pipeline = Pipeline::load(file)?;
        if let Some(r) = runs_dir {
            pipeline.runs_dir = r;
        }
        for (name, decl) in &pipeline.stages {
            stages::lookup(&decl.kind).with_context(|| format!("instance `{name}`"))?;
        }
        Ok(Runner {
            pipeline,
            build: geoloc_core::stage::build_id(),
            progress: true,
        })
    }

    /// The context of an instance for `shard`.
    pub fn context(&self, name: &str, shard: Shard) -> Context {
        Context {
            root: self.pipeline.root.clone(),
            out_dir: self.pipeline.instance_dir(name),
            shard,
            build: self.build.clone(),
            progress: self.progress,
            recompute: false,
        }
    }

    fn stage(&self, name: &str) -> Result<(&geoloc_core::config::StageDecl, Box<dyn Stage>)> {
        let decl = self
            .pipeline
            .stages
            .get(name)
            .ok_or_else(|| self.pipeline.unknown(name))?;
        Ok((decl, stages::lookup(&decl.kind)?))
    }

    /// The committed manifests of an instance's inputs, or the first missing one's name.
    fn input_manifests(&self, name: &str) -> Result<std::result::Result<Vec<Input>, String>> {
        let (decl, _) = self.stage(name)?;
        let mut out = Vec::new();
        for i in &decl.inputs {
            let dir = self.pipeline.instance_dir(i);
            match Manifest::load(&dir) {
                Ok(manifest) => out.push(Input {
                    name: i.clone(),
                    dir,
                    manifest,
                }),
                Err(_) => return Ok(Err(i.clone())),
            }
        }
        Ok(Ok(out))
    }

    /// The state of one instance, given the states of those before it.
    fn state_of(&self, name: &str, before: &BTreeMap<String, State>) -> Result<State> {
        let (decl, stage) = self.stage(name)?;
        for i in &decl.inputs {
            match before.get(i) {
                Some(State::Fresh) | None => {}
                Some(State::Stale(_)) => return Ok(State::Stale(format!("input `{i}` is stale"))),
                Some(State::Missing(_)) => {
                    return Ok(State::Missing(format!("input `{i}` is missing")))
                }
            }
        }
        let dir = self.pipeline.instance_dir(name);
        let manifest = match Manifest::load(&dir) {
            Ok(m) => m,
            Err(_) => {
                let why = if dir.exists() {
                    "no committed output (interrupted or never finalized)"
                } else {
                    "never run"
                };
                return Ok(State::Missing(why.into()));
            }
        };
        let inputs = match self.input_manifests(name)? {
            Ok(m) => m,
            Err(i) => return Ok(State::Missing(format!("input `{i}` is missing"))),
        };
        let ctx = self.context(name, Shard::ALL);
        let fp = match stage.fingerprint(decl, &ctx, &inputs) {
            Ok(fp) => fp,
            Err(e) => {
                return Ok(State::Stale(format!(
                    "cannot fingerprint its inputs: {e:#}"
                )))
            }
        };
        if fp == manifest.info.fingerprint {
            // Fingerprints match: check the parts are all there too.
            return Ok(match stage.check_output(&dir) {
                Ok(()) => State::Fresh,
                Err(e) => State::Missing(format!("committed output is damaged: {e:#}")),
            });
        }
        let cfg = stage.config_json(decl, &ctx)?;
        Ok(State::Stale(if cfg != manifest.info.config {
            "its config changed".into()
        } else if manifest.info.stage_format_version != stage.format_version() {
            format!(
                "its output format changed (v{} -> v{})",
                manifest.info.stage_format_version,
                stage.format_version()
            )
        } else {
            "its inputs changed".into()
        }))
    }

    /// Every instance's state, in run order.
    pub fn status(&self) -> Result<Vec<InstanceStatus>> {
        let mut states = BTreeMap::new();
        let mut out = Vec::new();
        for name in &self.pipeline.order {
            let st = self.state_of(name, &states)?;
            states.insert(name.clone(), st.clone());
            out.push(InstanceStatus {
                name: name.clone(),
                kind: self.pipeline.stages[name].kind.clone(),
                dir: self.pipeline.instance_dir(name),
                state: st,
            });
        }
        Ok(out)
    }

    fn selected(&self, sel: &Selection) -> Result<Vec<String>> {
        if !sel.only.is_empty() && sel.downstream.is_some() {
            bail!("give --only or --downstream, not both");
        }
        if let Some(d) = &sel.downstream {
            return Ok(self.pipeline.downstream(d)?);
        }
        if !sel.only.is_empty() {
            for o in &sel.only {
                if !self.pipeline.stages.contains_key(o) {
                    return Err(self.pipeline.unknown(o).into());
                }
            }
            return Ok(self
                .pipeline
                .order
                .iter()
                .filter(|n| sel.only.contains(n))
                .cloned()
                .collect());
        }
        Ok(self.pipeline.order.clone())
    }

    /// Runs the selected instances that are stale or missing (all of them with `force`), in
    /// dependency order. Returns each considered instance with what happened.
    pub fn run(&self, sel: &Selection) -> Result<Vec<(String, String)>> {
        let chosen = self.selected(sel)?;
        let mut report = Vec::new();
        let mut states: BTreeMap<String, State> = BTreeMap::new();
        for name in self.pipeline.order.clone() {
            let st = self.state_of(&name, &states)?;
            if !chosen.contains(&name) {
                states.insert(name, st);
                continue;
            }
            if st == State::Fresh && !sel.force {
                tracing::info!(instance = %name, "fresh, skipped");
                report.push((name.clone(), "fresh".into()));
                states.insert(name, State::Fresh);
                continue;
            }
            if let Err(i) = self.input_manifests(&name)? {
                bail!("instance `{name}` reads `{i}`, which has no committed output: run it first (drop --only, or use --downstream {i})");
            }
            // One writer: the instance's lock, held through the run and the commit (taken
            // first, so that a refused run does not say it is running).
            let _held = geoloc_core::lock::for_instance(&self.pipeline.instance_dir(&name))
                .with_context(|| format!("instance `{name}`"))?;
            tracing::info!(instance = %name, state = %st, "running");
            let t0 = Instant::now();
            // --force recomputes: nothing a killed earlier run left is kept.
            let summary = self.run_shard_unlocked(&name, Shard::ALL, sel.force)?;
            self.finalize_unlocked(&name, 1)?;
            let secs = t0.elapsed().as_secs_f64();
            tracing::info!(instance = %name, seconds = format!("{secs:.2}"), "{summary}");
            report.push((name.clone(), format!("ran in {secs:.2}s: {summary}")));
            states.insert(name, State::Fresh);
        }
        Ok(report)
    }

    /// Runs one shard of one instance (no finalize), resuming what a killed run of the same
    /// fingerprint left. Returns the stage's summary line.
    pub fn run_instance(&self, name: &str, shard: Shard) -> Result<String> {
        self.run_shard(name, shard, false)
    }

    /// Runs one shard of one instance (no finalize), holding its locks
    /// ([`geoloc_core::lock::for_shard`]); `recompute`: keep nothing an earlier run left
    /// ([`Context::recompute`]).
    pub fn run_shard(&self, name: &str, shard: Shard, recompute: bool) -> Result<String> {
        let _held = geoloc_core::lock::for_shard(&self.pipeline.instance_dir(name), shard)
            .with_context(|| format!("instance `{name}` shard {shard}"))?;
        self.run_shard_unlocked(name, shard, recompute)
    }

    fn run_shard_unlocked(&self, name: &str, shard: Shard, recompute: bool) -> Result<String> {
        let (decl, stage) = self.stage(name)?;
        fault_drill(name, shard)?;
        let inputs = match self.input_manifests(name)? {
            Ok(m) => m,
            Err(i) => bail!("instance `{name}` reads `{i}`, which has no committed output"),
        };
        let ctx = Context {
            recompute,
            ..self.context(name, shard)
        };
        stage
            .run(decl, &ctx, &inputs)
            .with_context(|| format!("instance `{name}` ({}) shard {shard}", decl.kind))
    }

    /// Commits an instance whose `shards` shards have all run, holding the instance's lock
    /// (refused while a shard still writes).
    pub fn finalize_instance(&self, name: &str, shards: u32) -> Result<Manifest> {
        let _held = geoloc_core::lock::for_instance(&self.pipeline.instance_dir(name))
            .with_context(|| format!("finalizing `{name}`"))?;
        self.finalize_unlocked(name, shards)
    }

    fn finalize_unlocked(&self, name: &str, shards: u32) -> Result<Manifest> {
        let (decl, stage) = self.stage(name)?;
        let inputs = match self.input_manifests(name)? {
            Ok(m) => m,
            Err(i) => bail!("instance `{name}` reads `{i}`, which has no committed output"),
        };
        let ctx = self.context(name, Shard::ALL);
        stage
            .finalize(decl, &ctx, &inputs, shards)
            .with_context(|| format!("finalizing `{name}`"))
    }
}

/// Failure drills: `GEOLOC_FAULT=INSTANCE` (every shard) or `GEOLOC_FAULT=INSTANCE:INDEX`
/// makes that shard fail before it does any work, so operators (and the cluster tests) can
/// see what a failed shard does to a submission: its dependants cancelled, the failure named
/// with its log, a resubmission finishing the rest.
fn fault_drill(name: &str, shard: Shard) -> Result<()> {
    let Ok(v) = std::env::var("GEOLOC_FAULT") else {
        return Ok(());
    };
    let (inst, index) = match v.split_once(':') {
        Some((i, n)) => (i, n.parse::<u32>().ok()),
        None => (v.as_str(), None),
    };
    if inst == name && index.is_none_or(|i| i == shard.index) {
        bail!("GEOLOC_FAULT={v}: shard {shard} of `{name}` fails on purpose (a failure drill)");
    }
    Ok(())
}
