//! Fingerprints: what a stage instance's output depends on, as one hash.
//!
//! A fingerprint covers only what the stage reads and what changes its output: its kind,
//! its output-format version (a constant the stage bumps when its semantics change), its
//! configuration, and the identity of its inputs: for an upstream dataset, the manifest's
//! checksums of the columns it reads; for a source file, its path, size and modification
//! time. The build id (version, commit) is recorded in manifests but never fingerprinted, so
//! rebuilding or editing docs reruns nothing.
//!
//! The hash is blake3 over canonical JSON (object keys sorted).

use crate::dataset::Manifest;
use crate::error::{Error, Result};
use serde::Serialize;
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};

/// Builds a fingerprint; [`Fingerprint::finish`] returns the hex digest.
#[derive(Debug, Clone)]
pub struct Fingerprint {
    doc: Map<String, Value>,
    inputs: Map<String, Value>,
    files: Vec<Value>,
}

impl Fingerprint {
    /// Starts a fingerprint for a stage kind and its output-format version.
    pub fn new(stage: &str, format_version: u32) -> Self {
        let mut doc = Map::new();
        doc.insert("stage".into(), json!(stage));
        doc.insert("format_version".into(), json!(format_version));
        Fingerprint {
            doc,
            inputs: Map::new(),
            files: Vec::new(),
        }
    }

    /// Adds the stage's configuration (everything in it changes the output).
    pub fn config<T: Serialize>(mut self, config: &T) -> Result<Self> {
        let v = serde_json::to_value(config)
            .map_err(|e| Error::Config(format!("cannot fingerprint config: {e}")))?;
        self.doc.insert("config".into(), v);
        Ok(self)
    }

    /// Adds an upstream dataset through the checksums of the columns this stage reads,
    /// plus any manifest metadata keys it reads (the class list, a geometry).
    pub fn dataset(
        mut self,
        name: &str,
        manifest: &Manifest,
        columns: &[&str],
        metadata_keys: &[&str],
    ) -> Result<Self> {
        let mut cols = Map::new();
        for c in columns {
            cols.insert((*c).into(), json!(manifest.column_checksum(c)?));
        }
        let mut meta = Map::new();
        for k in metadata_keys {
            meta.insert(
                (*k).into(),
                manifest
                    .info
                    .metadata
                    .get(*k)
                    .cloned()
                    .unwrap_or(Value::Null),
            );
        }
        self.inputs.insert(
            name.into(),
            json!({"schema": manifest.schema, "schema_version": manifest.schema_version, "columns": cols, "metadata": meta}),
        );
        Ok(self)
    }

    /// Adds a source file through its size and modification time, under `label` (the path
    /// as the config writes it, so the fingerprint does not depend on the working directory).
    pub fn file(mut self, label: &str, path: &Path) -> Result<Self> {
        let m = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        let mtime = m
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_nanos().to_string());
        self.files
            .push(json!({"path": label, "size": m.len(), "mtime_ns": mtime}));
        Ok(self)
    }

    /// Adds a directory tree of source files (every regular file below it, sorted), each
    /// labelled `label/relative-path`.
    pub fn tree(mut self, label: &str, root: &Path) -> Result<Self> {
        let mut stack = vec![root.to_owned()];
        let mut files = Vec::new();
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).map_err(|e| Error::io(&d, e))? {
                let e = e.map_err(|e| Error::io(&d, e))?;
                let ft = e.file_type().map_err(|er| Error::io(e.path(), er))?;
                if ft.is_dir() {
                    stack.push(e.path());
                } else if ft.is_file() {
                    files.push(e.path());
                }
            }
        }
        files.sort();
        for f in files {
            let rel = f.strip_prefix(root).unwrap_or(&f).display().to_string();
            self = self.file(&format!("{label}/{rel}"), &f)?;
        }
        Ok(self)
    }

    /// Adds many source files (the images a samples dataset lists) as one digest of their
    /// labels, sizes and modification times; a missing file counts as missing, not as an
    /// error (the stage will reject it, and the file appearing later changes the digest).
    pub fn file_set<'a>(
        self,
        label: &str,
        files: impl IntoIterator<Item = (&'a str, PathBuf)>,
    ) -> Self {
        let mut set = FileSet::default();
        for (name, path) in files {
            set.add(name, path);
        }
        self.files_of(label, set)
    }

    /// Adds a [`FileSet`] built file by file (see [`Fingerprint::file_set`]).
    pub fn files_of(mut self, label: &str, mut set: FileSet) -> Self {
        set.flush();
        self.files.push(
            json!({"set": label, "files": set.n, "digest": set.h.finalize().to_hex().to_string()}),
        );
        self
    }

    /// The hex digest.
    pub fn finish(mut self) -> String {
        self.doc.insert("inputs".into(), Value::Object(self.inputs));
        self.doc.insert("files".into(), Value::Array(self.files));
        // serde_json's Map is a BTreeMap (no preserve_order feature): keys come out sorted.
        let bytes = serde_json::to_vec(&Value::Object(self.doc)).expect("a JSON value serialises");
        blake3::hash(&bytes).to_hex().to_string()
    }
}

/// A digest of many files' names, sizes and modification times, fed one file at a time
/// and stat'ed a block at a time on rayon's pool (see [`Fingerprint::files_of`]). Holds
/// one block, not the whole list. The digest does not depend on the block size.
pub struct FileSet {
    h: blake3::Hasher,
    n: u64,
    block: Vec<(String, PathBuf)>,
}

impl Default for FileSet {
    fn default() -> Self {
        FileSet {
            h: blake3::Hasher::new(),
            n: 0,
            block: Vec::with_capacity(FileSet::BLOCK),
        }
    }
}

impl FileSet {
    /// Files stat'ed together.
    const BLOCK: usize = 4096;

    /// Adds one file under the name that labels it (its path relative to a root).
    pub fn add(&mut self, name: &str, path: PathBuf) {
        self.block.push((name.to_owned(), path));
        if self.block.len() >= Self::BLOCK {
            self.flush();
        }
    }

    fn flush(&mut self) {
        use rayon::prelude::*;
        let stats: Vec<Option<(u64, u128)>> = self
            .block
            .par_iter()
            .map(|(_, path)| {
                std::fs::metadata(path).ok().map(|m| {
                    let mtime = m
                        .modified()
                        .ok()
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        .map(|d| d.as_nanos())
                        .unwrap_or(0);
                    (m.len(), mtime)
                })
            })
            .collect();
        for ((name, _), stat) in self.block.drain(..).zip(stats) {
            self.h.update(name.as_bytes());
            self.h.update(&[0]);
            match stat {
                Some((len, mtime)) => {
                    self.h.update(&len.to_le_bytes());
                    self.h.update(&mtime.to_le_bytes());
                }
                None => {
                    self.h.update(b"missing");
                }
            }
            self.n += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_and_version_change_the_fingerprint() {
        let a = Fingerprint::new("ingest", 1)
            .config(&json!({"x": 1, "y": 2}))
            .unwrap()
            .finish();
        let b = Fingerprint::new("ingest", 1)
            .config(&json!({"y": 2, "x": 1}))
            .unwrap()
            .finish();
        let c = Fingerprint::new("ingest", 2)
            .config(&json!({"x": 1, "y": 2}))
            .unwrap()
            .finish();
        let d = Fingerprint::new("ingest", 1)
            .config(&json!({"x": 1, "y": 3}))
            .unwrap()
            .finish();
        assert_eq!(a, b, "key order must not matter");
        assert_ne!(a, c);
        assert_ne!(a, d);
    }
}
