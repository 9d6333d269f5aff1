//! Locating the shared test data (`../shared` beside the workspace) from tests.
//!
//! Tests that need real inputs call [`shared_dir`]. It looks in `$GEOLOC_SHARED`, then in
//! `<workspace root>/../shared`. When neither exists the test should skip with the returned
//! message, unless `GEOLOC_REQUIRE_SHARED=1` (CI sets it), in which case this panics so the
//! skip becomes a failure.

use std::path::{Path, PathBuf};

/// The environment variable that turns skips into failures.
pub const REQUIRE_VAR: &str = "GEOLOC_REQUIRE_SHARED";

/// The workspace root, from a crate's `CARGO_MANIFEST_DIR` (walks up to the directory whose
/// `Cargo.toml` declares `[workspace]`).
pub fn workspace_root(manifest_dir: &Path) -> PathBuf {
    let mut d = manifest_dir.to_path_buf();
    loop {
        let toml = d.join("Cargo.toml");
        if std::fs::read_to_string(&toml).is_ok_and(|t| t.contains("[workspace]")) {
            return d;
        }
        if !d.pop() {
            return manifest_dir.to_path_buf();
        }
    }
}

/// The shared data directory, or `None` (after printing why) when it is absent and not
/// required. Panics when absent and `GEOLOC_REQUIRE_SHARED=1`.
pub fn shared_dir(manifest_dir: &str) -> Option<PathBuf> {
    let candidates: Vec<PathBuf> = std::env::var_os("GEOLOC_SHARED")
        .map(PathBuf::from)
        .into_iter()
        .chain(std::iter::once(
            workspace_root(Path::new(manifest_dir)).join("../shared"),
        ))
        .collect();
    for c in &candidates {
        if c.join("data").is_dir() {
            return Some(c.clone());
        }
    }
    let msg = format!(
        "shared test data not found (looked in {}); set GEOLOC_SHARED",
        candidates
            .iter()
            .map(|c| c.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    if std::env::var(REQUIRE_VAR).is_ok_and(|v| v == "1") {
        panic!("{msg}, and {REQUIRE_VAR}=1 requires it");
    }
    eprintln!("SKIP: {msg}");
    None
}

/// Where `cargo xtask fetch-lite0` puts the EfficientNet-Lite0 checkpoint, relative to the
/// workspace root.
pub const LITE0_PATH: &str = LITE_PATHS[0];

/// Where `cargo xtask fetch-liteN` puts the EfficientNet-LiteN checkpoint (N = 0, 1, 2),
/// relative to the workspace root.
pub const LITE_PATHS: [&str; 3] = [
    "data/weights/efficientnet-lite0.pth",
    "data/weights/efficientnet-lite1.pth",
    "data/weights/efficientnet-lite2.pth",
];

/// The real EfficientNet-Lite0 checkpoint: [`lite_checkpoint`] of 0.
pub fn lite0_checkpoint(manifest_dir: &str) -> Option<PathBuf> {
    lite_checkpoint(manifest_dir, 0)
}

/// The real EfficientNet-LiteN checkpoint (`$GEOLOC_LITEN`, else [`LITE_PATHS`]`[N]` under
/// the workspace root), or `None` (after printing why and how to get it) when it is absent
/// and not required. Panics when absent and `GEOLOC_REQUIRE_SHARED=1`, or when N > 2.
pub fn lite_checkpoint(manifest_dir: &str, n: usize) -> Option<PathBuf> {
    let var = format!("GEOLOC_LITE{n}");
    let path = std::env::var_os(&var)
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root(Path::new(manifest_dir)).join(LITE_PATHS[n]));
    if path.is_file() {
        return Some(path);
    }
    let msg = format!(
        "EfficientNet-Lite{n} checkpoint not found at {} (run `cargo xtask fetch-lite{n}`, or \
         set {var})",
        path.display()
    );
    if std::env::var(REQUIRE_VAR).is_ok_and(|v| v == "1") {
        panic!("{msg}, and {REQUIRE_VAR}=1 requires it");
    }
    eprintln!("SKIP: {msg}");
    None
}

/// An external program a test needs (`chromium` for the report check), found on `PATH`, or
/// `None` (after printing why and how to get it) when it is absent and not required. Panics
/// when absent and `GEOLOC_REQUIRE_SHARED=1`.
pub fn program(name: &str, how_to_get: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    });
    if found.is_some() {
        return found;
    }
    let msg = format!("`{name}` not found on PATH ({how_to_get})");
    if std::env::var(REQUIRE_VAR).is_ok_and(|v| v == "1") {
        panic!("{msg}, and {REQUIRE_VAR}=1 requires it");
    }
    eprintln!("SKIP: {msg}");
    None
}
