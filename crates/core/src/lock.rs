//! One writer per instance and per shard: advisory locks (`flock`, through std's
//! `File::lock`) on files beside the output directory, in `<parent>/.locks/`.
//!
//! - A whole run (one shard of one) and a finalize hold the instance's lock
//!   (`.locks/NAME.lock`) exclusively: nothing else writes the instance meanwhile.
//! - A shard of a sharded run (`i` of `N > 1`) holds the instance's lock shared, so the
//!   shards of one job array do not block each other, and its own lock
//!   (`.locks/NAME.SSSSS-of-NNNNN.lock`) exclusively, so no two processes write one shard.
//!
//! A second writer refuses by default, with one line naming the holder (host, pid, how long
//! it has held the lock), or waits for it ([`IfLocked::Wait`], `--if-locked wait`). The
//! kernel releases a lock when its holder's process ends, however it ends: a lock whose
//! holder was killed is simply taken by the next run. On a network filesystem the locks
//! are as good as its `flock`: NFSv4 and Lustre (mounted with `flock`) honour them across
//! nodes; where the filesystem does not support them, taking one fails and the run stops
//! with that error rather than run unprotected.
//!
//! The files live beside the output, not in it, so that stages which empty their output
//! directory never delete a lock another process holds.

use crate::error::{Error, Result};
use crate::shard::Shard;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// What a run does when another holds the lock it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IfLocked {
    /// Stop with an error naming the holder (the default).
    Refuse,
    /// Wait until the holder ends.
    Wait,
}

static WAIT: AtomicBool = AtomicBool::new(false);

/// Sets what this process does when a lock is held (`--if-locked`, set once at start).
pub fn set_mode(mode: IfLocked) {
    WAIT.store(mode == IfLocked::Wait, Ordering::Relaxed);
}

fn mode() -> IfLocked {
    if WAIT.load(Ordering::Relaxed) {
        IfLocked::Wait
    } else {
        IfLocked::Refuse
    }
}

/// Locks held; released when dropped (or when the process ends).
#[derive(Debug)]
pub struct Held {
    _files: Vec<File>,
}

/// The lock file of the instance writing `out_dir` (`shard: None`), or of one of its shards.
pub fn path(out_dir: &Path, shard: Option<Shard>) -> PathBuf {
    let name = out_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "output".into());
    let dir = out_dir
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
        .join(".locks");
    match shard {
        Some(s) => dir.join(format!("{name}.{:05}-of-{:05}.lock", s.index, s.count)),
        None => dir.join(format!("{name}.lock")),
    }
}

/// The locks of a run of `shard` writing `out_dir`: the instance's lock, exclusive for a
/// whole run and shared for a shard of several, and the shard's own, exclusive.
pub fn for_shard(out_dir: &Path, shard: Shard) -> Result<Held> {
    if shard.count <= 1 {
        return for_instance(out_dir);
    }
    let instance = take(out_dir, &path(out_dir, None), false)?;
    let own = take(out_dir, &path(out_dir, Some(shard)), true)?;
    Ok(Held {
        _files: vec![instance, own],
    })
}

/// The instance's lock, exclusive: a whole run, or a finalize (which must not commit while
/// a shard still writes).
pub fn for_instance(out_dir: &Path) -> Result<Held> {
    let f = take(out_dir, &path(out_dir, None), true)?;
    Ok(Held { _files: vec![f] })
}

fn take(out_dir: &Path, path: &Path, exclusive: bool) -> Result<File> {
    let parent = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    let got = if exclusive {
        f.try_lock()
    } else {
        f.try_lock_shared()
    };
    match got {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = holders(out_dir, path);
            match mode() {
                IfLocked::Refuse => {
                    return Err(Error::Locked {
                        dir: out_dir.to_path_buf(),
                        holder,
                    })
                }
                IfLocked::Wait => {
                    tracing::info!(
                        "{} is being written by {holder}: waiting",
                        out_dir.display()
                    );
                    let r = if exclusive { f.lock() } else { f.lock_shared() };
                    r.map_err(|e| Error::io(path, e))?;
                }
            }
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(path, e)),
    }
    if exclusive {
        // Who holds it, for the message a second writer prints.
        let line = format!("{} {} {}\n", host(), std::process::id(), unix_now());
        f.set_len(0).map_err(|e| Error::io(path, e))?;
        f.rewind().map_err(|e| Error::io(path, e))?;
        f.write_all(line.as_bytes())
            .map_err(|e| Error::io(path, e))?;
    }
    Ok(f)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty() && !h.contains(char::is_whitespace))
        .unwrap_or_else(|| "unknown-host".into())
}

/// "host H, pid P, for N s" of a lock file's recorded holder.
fn describe(path: &Path) -> Option<String> {
    let mut text = String::new();
    File::open(path).ok()?.read_to_string(&mut text).ok()?;
    let mut w = text.split_whitespace();
    let (h, p, t) = (w.next()?, w.next()?, w.next()?.parse::<u64>().ok()?);
    Some(format!(
        "host {h}, pid {p}, for {} s",
        unix_now().saturating_sub(t)
    ))
}

/// Who holds the locks of the instance writing `out_dir` (the lock `wanted` was refused):
/// the instance lock's exclusive holder, or the shards that hold theirs.
fn holders(out_dir: &Path, wanted: &Path) -> String {
    let instance = path(out_dir, None);
    let mut found = Vec::new();
    // Shard locks held now are the shards running now.
    let prefix = format!(
        "{}.",
        instance
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    );
    if let Some(Ok(rd)) = instance.parent().map(std::fs::read_dir) {
        let mut shards: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                *p != instance
                    && p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".lock"))
            })
            .collect();
        shards.sort();
        for p in shards {
            let busy = File::open(&p).is_ok_and(|f| {
                matches!(f.try_lock_shared(), Err(std::fs::TryLockError::WouldBlock))
            });
            if busy {
                let shard = p
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_prefix(&prefix))
                    .and_then(|n| n.strip_suffix(".lock"))
                    .unwrap_or("?")
                    .to_owned();
                found.push(format!(
                    "shard {shard} ({})",
                    describe(&p).unwrap_or_else(|| "holder unknown".into())
                ));
            }
        }
    }
    if found.is_empty() || wanted != instance {
        let main = describe(wanted).unwrap_or_else(|| "holder unknown".into());
        if wanted == instance {
            return format!("another run ({main})");
        }
        return format!("another run of this shard ({main})");
    }
    format!("running shards: {}", found.join(", "))
}
