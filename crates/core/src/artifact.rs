//! Artifacts: directories of a few named files that are not row datasets (a trained model:
//! `model.safetensors`, `model.json`, `history.parquet`; later a report), committed the same
//! way as datasets: every file written under a temporary name and renamed, then
//! `_manifest.json` last, listing each file with its size and blake3. The runner reads the
//! manifest's fingerprint like any dataset's; [`open`] refuses a directory without a
//! manifest, or whose files are missing or differ from it.

use crate::dataset::{file_blake3, Manifest, ManifestInfo, LAYOUT_VERSION, MANIFEST};
use crate::error::{Error, Result};
use serde_json::json;
use std::path::Path;

/// Commits the artifact in `dir`: the listed files must exist; records their sizes and
/// checksums under `metadata.files` and writes the manifest.
pub fn commit(
    dir: &Path,
    schema: &str,
    version: u32,
    files: &[&str],
    mut info: ManifestInfo,
) -> Result<Manifest> {
    let mut listed = serde_json::Map::new();
    for f in files {
        let p = dir.join(f);
        let bytes = std::fs::metadata(&p).map_err(|e| Error::io(&p, e))?.len();
        listed.insert(
            (*f).to_string(),
            json!({"bytes": bytes, "blake3": file_blake3(&p)?}),
        );
    }
    if !info.metadata.is_object() {
        info.metadata = json!({});
    }
    info.metadata["files"] = serde_json::Value::Object(listed);
    let m = Manifest {
        layout_version: LAYOUT_VERSION,
        schema: schema.into(),
        schema_version: version,
        shards: 1,
        rows: 0,
        rejects: 0,
        parts: Vec::new(),
        columns: Default::default(),
        info,
        created_unix_s: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0),
    };
    let bytes = serde_json::to_vec_pretty(&m).map_err(|e| Error::Json {
        path: dir.join(MANIFEST),
        source: e,
    })?;
    crate::dataset::write_atomic(dir, MANIFEST, &bytes)?;
    Ok(m)
}

/// Removes the manifest (the artifact is being rewritten): readers refuse it from now on.
pub fn uncommit(dir: &Path) -> Result<()> {
    let p = dir.join(MANIFEST);
    match std::fs::remove_file(&p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(&p, e)),
        _ => Ok(()),
    }
}

/// Opens a committed artifact of `schema` v`version`: checks the manifest and every file it
/// lists (size always, blake3 with `verify`), naming each problem.
pub fn open(dir: &Path, schema: &str, version: u32, verify: bool) -> Result<Manifest> {
    if !dir.join(MANIFEST).exists() {
        return Err(Error::Dataset {
            dir: dir.to_owned(),
            reason: format!(
                "no {MANIFEST}: the stage that writes it did not finish (or never ran); rerun it"
            ),
        });
    }
    let m = Manifest::load(dir)?;
    let bad = |reason: String| Error::Dataset {
        dir: dir.to_owned(),
        reason,
    };
    if m.schema != schema || m.schema_version != version {
        return Err(bad(format!(
            "holds {} v{}, expected {schema} v{version}",
            m.schema, m.schema_version
        )));
    }
    let files = m
        .info
        .metadata
        .get("files")
        .and_then(|f| f.as_object())
        .ok_or_else(|| bad("manifest lists no files".into()))?;
    let mut problems = Vec::new();
    for (name, rec) in files {
        let p = dir.join(name);
        let want = rec.get("bytes").and_then(|b| b.as_u64());
        match std::fs::metadata(&p) {
            Err(_) => problems.push(format!("{name} is missing")),
            Ok(md) if Some(md.len()) != want => problems.push(format!(
                "{name} has {} bytes, the manifest records {}",
                md.len(),
                want.map_or("none".into(), |w| w.to_string())
            )),
            Ok(_) if verify => {
                let got = file_blake3(&p)?;
                if Some(got.as_str()) != rec.get("blake3").and_then(|b| b.as_str()) {
                    problems.push(format!("{name} has another checksum than the manifest's"));
                }
            }
            Ok(_) => {}
        }
    }
    if problems.is_empty() {
        Ok(m)
    } else {
        Err(bad(problems.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_then_open_and_refusals() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        assert!(open(d, "model", 1, true)
            .unwrap_err()
            .to_string()
            .contains("no _manifest.json"));
        std::fs::write(d.join("a.bin"), b"hello").unwrap();
        std::fs::write(d.join("b.json"), b"{}").unwrap();
        commit(d, "model", 1, &["a.bin", "b.json"], ManifestInfo::default()).unwrap();
        open(d, "model", 1, true).unwrap();
        let e = open(d, "model", 2, true).unwrap_err().to_string();
        assert!(e.contains("expected model v2"), "{e}");
        std::fs::write(d.join("a.bin"), b"jello").unwrap();
        open(d, "model", 1, false).unwrap();
        let e = open(d, "model", 1, true).unwrap_err().to_string();
        assert!(e.contains("a.bin has another checksum"), "{e}");
        std::fs::remove_file(d.join("b.json")).unwrap();
        let e = open(d, "model", 1, false).unwrap_err().to_string();
        assert!(e.contains("b.json is missing"), "{e}");
        uncommit(d).unwrap();
        assert!(open(d, "model", 1, false).is_err());
    }
}
