//! Pipeline files: named stage instances with explicit inputs (a DAG), in TOML.
//!
//! ```toml
//! [pipeline]
//! name = "demo"
//! root = ".."             # project root, relative to this file (default: the file's folder)
//! runs_dir = "runs/demo"  # relative to root (default: runs/<name>)
//!
//! [stages.ingest]
//! kind = "ingest"
//! inputs = []             # names of upstream instances
//! [stages.ingest.config]  # the stage kind's own configuration
//! ...
//! ```
//!
//! Relative paths inside a stage's config resolve against `root`, so a pipeline runs the same
//! from any working directory (a cluster node's, a developer's).

use crate::error::{Error, Result};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PipelineFile {
    pipeline: Header,
    #[serde(default)]
    stages: BTreeMap<String, StageDecl>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    root: Option<PathBuf>,
    #[serde(default)]
    runs_dir: Option<PathBuf>,
}

/// One stage instance of a pipeline.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageDecl {
    /// The stage kind (`ingest`, `preprocess`, ...).
    pub kind: String,
    /// Upstream instances whose outputs this one reads.
    #[serde(default)]
    pub inputs: Vec<String>,
    /// The kind's configuration, deserialised by the stage crate.
    #[serde(default)]
    pub config: toml::Table,
}

/// A loaded, checked pipeline.
#[derive(Debug, Clone)]
pub struct Pipeline {
    pub name: String,
    pub description: Option<String>,
    /// The file it was loaded from.
    pub file: PathBuf,
    /// Project root: relative paths in stage configs resolve against it.
    pub root: PathBuf,
    /// Where instance outputs go: `<runs_dir>/<instance>/`.
    pub runs_dir: PathBuf,
    /// Instances by name.
    pub stages: BTreeMap<String, StageDecl>,
    /// Instance names in a topological order (inputs first; ties by name).
    pub order: Vec<String>,
}

impl Pipeline {
    /// Loads and checks a pipeline file: unknown inputs and cycles are errors.
    pub fn load(path: &Path) -> Result<Pipeline> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&text, path)
    }

    /// Parses pipeline text as if loaded from `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Pipeline> {
        let f: PipelineFile =
            toml::from_str(text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let base = if base.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            base
        };
        let root = match &f.pipeline.root {
            Some(r) => base.join(r),
            None => base,
        };
        let runs_dir = root.join(
            f.pipeline
                .runs_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from("runs").join(&f.pipeline.name)),
        );
        for (name, s) in &f.stages {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(Error::Config(format!(
                    "{}: instance name {name:?} must be letters, digits, - or _",
                    path.display()
                )));
            }
            for i in &s.inputs {
                if !f.stages.contains_key(i) {
                    return Err(Error::Config(format!(
                        "{}: instance `{name}` names input `{i}`, which the pipeline does not declare",
                        path.display()
                    )));
                }
            }
        }
        let order = topo_order(&f.stages).map_err(|cycle| {
            Error::Config(format!(
                "{}: the inputs form a cycle through {cycle}",
                path.display()
            ))
        })?;
        Ok(Pipeline {
            name: f.pipeline.name,
            description: f.pipeline.description,
            file: path.to_owned(),
            root,
            runs_dir,
            stages: f.stages,
            order,
        })
    }

    /// The output directory of an instance.
    pub fn instance_dir(&self, name: &str) -> PathBuf {
        self.runs_dir.join(name)
    }

    /// Every instance downstream of `name`, `name` included, in run order.
    pub fn downstream(&self, name: &str) -> Result<Vec<String>> {
        if !self.stages.contains_key(name) {
            return Err(self.unknown(name));
        }
        let mut set = BTreeSet::from([name.to_owned()]);
        for n in &self.order {
            if self.stages[n].inputs.iter().any(|i| set.contains(i)) {
                set.insert(n.clone());
            }
        }
        Ok(self
            .order
            .iter()
            .filter(|n| set.contains(*n))
            .cloned()
            .collect())
    }

    /// The error for an instance name the pipeline does not declare.
    pub fn unknown(&self, name: &str) -> Error {
        Error::Config(format!(
            "pipeline `{}` has no instance `{name}` (instances: {})",
            self.name,
            self.order.join(", ")
        ))
    }
}

fn topo_order(stages: &BTreeMap<String, StageDecl>) -> std::result::Result<Vec<String>, String> {
    let mut done: BTreeSet<String> = BTreeSet::new();
    let mut order = Vec::new();
    while order.len() < stages.len() {
        let ready: Vec<String> = stages
            .iter()
            .filter(|(n, s)| !done.contains(*n) && s.inputs.iter().all(|i| done.contains(i)))
            .map(|(n, _)| n.clone())
            .collect();
        if ready.is_empty() {
            let rest: Vec<_> = stages
                .keys()
                .filter(|n| !done.contains(*n))
                .cloned()
                .collect();
            return Err(rest.join(", "));
        }
        for n in ready {
            done.insert(n.clone());
            order.push(n);
        }
    }
    Ok(order)
}

/// Resolves `p` against `root` unless it is absolute.
pub fn resolve(root: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_owned()
    } else {
        root.join(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = r#"
[pipeline]
name = "t"
root = ".."
[stages.b]
kind = "x"
inputs = ["a"]
[stages.a]
kind = "ingest"
[stages.a.config]
k = 1
[stages.c]
kind = "y"
inputs = ["b", "a"]
[stages.d]
kind = "z"
inputs = ["a"]
"#;

    #[test]
    fn orders_and_selects() {
        let p = Pipeline::parse(P, Path::new("/proj/pipelines/t.toml")).unwrap();
        assert_eq!(p.order, ["a", "b", "d", "c"]);
        assert_eq!(p.root, Path::new("/proj/pipelines/.."));
        assert_eq!(
            p.instance_dir("a"),
            Path::new("/proj/pipelines/../runs/t/a")
        );
        assert_eq!(p.downstream("b").unwrap(), ["b", "c"]);
        assert!(p.downstream("zz").is_err());
    }

    #[test]
    fn rejects_cycles_and_unknown_inputs() {
        let cyc = "[pipeline]\nname='t'\n[stages.a]\nkind='x'\ninputs=['b']\n[stages.b]\nkind='x'\ninputs=['a']\n";
        let e = Pipeline::parse(cyc, Path::new("t.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cycle through a, b"), "{e}");
        let unk = "[pipeline]\nname='t'\n[stages.a]\nkind='x'\ninputs=['q']\n";
        let e = Pipeline::parse(unk, Path::new("t.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("names input `q`"), "{e}");
        let typo = "[pipeline]\nname='t'\n[stages.a]\nkind='x'\ninput=['q']\n";
        assert!(Pipeline::parse(typo, Path::new("t.toml")).is_err());
    }
}
