//! One writer per instance and per shard (`geoloc_core::lock`): a second run of the same
//! instance refuses naming the holder, or waits with `--if-locked wait`; the shards of one
//! instance run side by side while a second writer of one shard, or a finalize, is refused;
//! a holder killed with SIGKILL leaves a lock the next run takes; and the first run's output
//! is intact and equal to a lone run's.

mod support;

use geoloc_core::dataset::Manifest;
use geoloc_core::lock;
use geoloc_core::shard::Shard;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::{demo_project, geoloc, stderr};

const PIPE: &str = "pipelines/demo.toml";

fn spawn(root: &Path, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_geoloc"))
        .arg("--no-progress")
        .args(args)
        .current_dir(root)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits until some process holds the instance lock of `dir` (a run has started writing).
fn wait_until_locked(dir: &Path, child: &mut Child) {
    let t0 = Instant::now();
    loop {
        let f = std::fs::File::open(lock::path(dir, None));
        if f.is_ok_and(|f| matches!(f.try_lock_shared(), Err(std::fs::TryLockError::WouldBlock))) {
            return;
        }
        if let Ok(Some(st)) = child.try_wait() {
            panic!("the first run ended ({st}) before it was seen holding the lock");
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no lock taken in 60 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn checksum(dir: &Path) -> String {
    Manifest::load(dir)
        .unwrap()
        .column_checksum("feature")
        .unwrap()
        .to_owned()
}

#[test]
fn a_second_run_is_refused_naming_the_holder_or_waits_for_it() {
    let p = support::metadata_project(100);
    let root = p.path();
    let dir = root.join("runs/demo/ingest");
    let held = lock::for_instance(&dir).unwrap();
    let err = stderr(&geoloc(
        &["run", PIPE, "--only", "ingest"],
        root,
        &[],
        false,
    ));
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(lines.len(), 1, "one error line: {err}");
    assert!(
        !err.contains("running"),
        "a refused run does not say it runs: {err}"
    );
    let pid = format!("pid {}", std::process::id());
    assert!(
        lines[0].contains("is being written by another run (host ")
            && lines[0].contains(&pid)
            && lines[0].contains("--if-locked wait"),
        "{err}"
    );
    assert!(
        !dir.join("_manifest.json").exists(),
        "the refused run wrote nothing"
    );
    // Waiting: the run starts when the holder lets go.
    let mut waiting = spawn(
        root,
        &["--if-locked", "wait", "run", PIPE, "--only", "ingest"],
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        waiting.try_wait().unwrap().is_none(),
        "it must wait for the lock"
    );
    drop(held);
    let out = waiting.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(Manifest::load(&dir).is_ok());
}

#[test]
fn shards_run_side_by_side_but_one_shard_and_the_finalize_have_one_writer() {
    let p = demo_project(150);
    let root = p.path();
    geoloc(&["run", PIPE, "--only", "ingest"], root, &[], true);
    let dir = root.join("runs/demo/hog");
    let shard0 = Shard::new(0, 2).unwrap();
    let held = lock::for_shard(&dir, shard0).unwrap();
    // Another shard of the same instance runs while shard 0 is held.
    let args = |s: &'static str| {
        vec![
            "featurize",
            "--pipeline",
            PIPE,
            "--instance",
            "hog",
            "--no-finalize",
            "--shard",
            s,
        ]
    };
    geoloc(&args("1/2"), root, &[], true);
    // A second writer of shard 0 is refused.
    let err = stderr(&geoloc(&args("0/2"), root, &[], false));
    assert!(
        err.contains("being written by another run of this shard"),
        "{err}"
    );
    // So is the commit while a shard still writes, naming it.
    let fin = ["finalize", PIPE, "--instance", "hog", "--shards", "2"];
    let err = stderr(&geoloc(&fin, root, &[], false));
    assert!(
        err.contains("running shards: shard 00000-of-00002 (host ")
            && err.contains(&format!("pid {}", std::process::id())),
        "{err}"
    );
    // And so is a whole run of the instance.
    let err = stderr(&geoloc(&["run", PIPE, "--only", "hog"], root, &[], false));
    assert!(
        err.contains("running shards: shard 00000-of-00002"),
        "{err}"
    );
    drop(held);
    geoloc(&args("0/2"), root, &[], true);
    geoloc(&fin, root, &[], true);
    assert!(Manifest::load(&dir).is_ok());
}

/// Two real runs of the Lite0 instance: the second, started while the first writes, is
/// refused; the first's output equals a lone run's. Then a run killed with SIGKILL while it
/// holds the lock: the next run takes the lock and ends with the same features.
#[test]
fn concurrent_runs_leave_one_intact_output_and_a_killed_holder_frees_its_lock() {
    if support::lite0().is_none() {
        return;
    }
    let p = demo_project(260);
    let root = p.path();
    support::link_weights(root);
    geoloc(&["run", PIPE, "--only", "ingest"], root, &[], true);
    let dir = root.join("runs/demo/lite0");
    let mut first = spawn(root, &["run", PIPE, "--only", "lite0"]);
    wait_until_locked(&dir, &mut first);
    let second = geoloc(&["run", PIPE, "--only", "lite0"], root, &[], false);
    let err = stderr(&second);
    assert!(
        err.contains(&format!("pid {}", first.id()))
            && err.contains("being written by another run"),
        "{err}"
    );
    let out = first.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ds = Manifest::load(&dir).unwrap();
    assert!(ds.rows > 100);
    let first_sum = checksum(&dir);
    // A lone run (everything recomputed) gives the same features.
    geoloc(
        &["run", PIPE, "--only", "lite0", "--force"],
        root,
        &[],
        true,
    );
    assert_eq!(checksum(&dir), first_sum);

    // SIGKILL while holding the lock: the kernel releases it, the next run takes it.
    let mut killed = spawn(root, &["run", PIPE, "--only", "lite0", "--force"]);
    wait_until_locked(&dir, &mut killed);
    killed.kill().unwrap();
    killed.wait().unwrap();
    geoloc(&["run", PIPE, "--only", "lite0"], root, &[], true);
    assert_eq!(checksum(&dir), first_sum);
}
