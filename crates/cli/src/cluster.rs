//! Batch submissions of a pipeline for a cluster: Slurm job arrays chained by dependencies
//! (`geoloc slurm`), and Kubernetes Indexed Jobs (`geoloc k8s`). geoloc builds no scheduler:
//! it writes what the scheduler runs, and every job calls the same binary with the same
//! `--pipeline FILE --instance NAME` a user would type; shards find their index in the
//! scheduler's environment (`SLURM_ARRAY_TASK_ID`/`_COUNT`, `JOB_COMPLETION_INDEX` with
//! `GEOLOC_SHARD_COUNT`).
//!
//! A plan holds the instances that are not fresh (all with `force`), in run order. A sharded
//! kind (preprocess, featurize) becomes an array of `shards` tasks, each writing only its own
//! parts, then one finalize job that commits the manifest; other kinds are one job. A job
//! waits for the jobs of the inputs it reads (`afterok`), and dies with them
//! (`--kill-on-invalid-dep=yes`), so a failed shard cancels everything downstream and
//! nothing downstream reads a half-made dataset. Resubmitting after a failure plans only
//! what is still not fresh, and featurize and train pick up what a killed run left.

use crate::runner::{Runner, State};
use crate::stages;
use anyhow::{anyhow, bail, Context as _, Result};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Exit status of `geoloc train` when its time budget ran out with a checkpoint written
/// (BSD's `EX_TEMPFAIL`): the job script requeues itself on it.
pub const EXIT_OUT_OF_TIME: u8 = 75;

/// One instance of a plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    pub name: String,
    pub kind: String,
    /// Inputs that are in the plan too (the others are committed already).
    pub after: Vec<String>,
    pub sharded: bool,
    pub gpu: bool,
    /// Why it is in the plan (its state).
    pub why: String,
}

/// What to submit: the pipeline's files and the planned instances.
#[derive(Debug, Clone)]
pub struct Plan {
    pub pipeline_name: String,
    /// Absolute paths the jobs use.
    pub pipeline_file: PathBuf,
    pub workdir: PathBuf,
    pub runs_dir: Option<PathBuf>,
    pub instances: Vec<Planned>,
    /// `--force`: every job recomputes (`--force` on its command line), keeping nothing an
    /// earlier run left.
    pub force: bool,
}

fn absolute(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("resolving {}", p.display()))
}

/// Instances of a GPU kind whose work runs on CPU threads whatever the device: HOG
/// features, and train's retrieval index (head `knn`, no training). They get CPU jobs,
/// not a GPU node each.
fn cpu_only(decl: &geoloc_core::config::StageDecl) -> bool {
    let key = |k: &str| decl.config.get(k).and_then(|b| b.as_str());
    (decl.kind == geoloc_featurize::KIND && key("backbone") == Some("hog"))
        || (decl.kind == geoloc_train::KIND && key("head") == Some("knn"))
}

/// The plan of a pipeline: its instances that are not fresh (every instance with `force`).
pub fn plan(pipeline: &Path, runs_dir: Option<PathBuf>, force: bool) -> Result<Plan> {
    let r = Runner::load(pipeline, runs_dir.clone())?;
    let mut instances: Vec<Planned> = Vec::new();
    for st in r.status()? {
        if st.state == State::Fresh && !force {
            continue;
        }
        let decl = &r.pipeline.stages[&st.name];
        let stage = stages::lookup(&decl.kind)?;
        let after = decl
            .inputs
            .iter()
            .filter(|i| instances.iter().any(|p| &p.name == *i))
            .cloned()
            .collect();
        instances.push(Planned {
            name: st.name.clone(),
            kind: decl.kind.clone(),
            after,
            sharded: stage.sharded(),
            gpu: stage.uses_gpu() && !cpu_only(decl),
            why: st.state.to_string(),
        });
    }
    Ok(Plan {
        pipeline_name: r.pipeline.name.clone(),
        pipeline_file: absolute(pipeline)?,
        workdir: std::env::current_dir().context("the current directory")?,
        runs_dir: runs_dir.map(|d| absolute(&d)).transpose()?,
        instances,
        force,
    })
}

/// Scheduler settings shared by Slurm and Kubernetes.
#[derive(Debug, Clone, Default)]
pub struct JobOptions {
    /// Tasks of a sharded instance.
    pub shards: u32,
    /// At most this many tasks of one array at a time (`%K`; Kubernetes' parallelism).
    pub max_parallel: Option<u32>,
    /// GPUs per task of the kinds that use one (featurize, train); 0: CPU jobs.
    pub gpus_per_task: u32,
    pub cpus_per_task: Option<u32>,
    /// Memory per job (`--mem`, e.g. `16G`).
    pub mem: Option<String>,
    /// The `geoloc` binary the jobs run (absolute).
    pub binary: PathBuf,
    /// The binary of the GPU jobs (featurize and train with `gpus_per_task > 0`): the CUDA
    /// build (`cargo xtask build-cuda`), which needs the NVIDIA driver to start, while
    /// `binary` (the CPU build) runs everywhere. `None`: `binary` for every job.
    pub gpu_binary: Option<PathBuf>,
}

impl JobOptions {
    /// Whether `p`'s job (not its finalize) runs on a GPU.
    pub fn on_gpu(&self, p: &Planned, finalize: bool) -> bool {
        p.gpu && self.gpus_per_task > 0 && !finalize
    }

    /// The binary of `p`'s job.
    pub fn binary_for(&self, p: &Planned, finalize: bool) -> &Path {
        match &self.gpu_binary {
            Some(b) if self.on_gpu(p, finalize) => b,
            _ => &self.binary,
        }
    }
}

/// Slurm-only settings.
#[derive(Debug, Clone, Default)]
pub struct SlurmOptions {
    /// The partition of every job, or of the CPU jobs when `gpu_partition` is set.
    pub partition: Option<String>,
    /// The partition of the GPU jobs.
    pub gpu_partition: Option<String>,
    pub account: Option<String>,
    /// The time limit of each job (`--time`, Slurm's formats).
    pub time: Option<String>,
    /// More `#SBATCH` lines, each `--flag=value` as sbatch takes it.
    pub extra: Vec<String>,
}

/// Seconds in a Slurm time limit: `M`, `M:S`, `H:M:S`, `D-H`, `D-H:M`, `D-H:M:S`.
pub fn slurm_seconds(t: &str) -> Result<u64> {
    let bad = || anyhow!("`{t}` is not a Slurm time limit (M, M:S, H:M:S, D-H, D-H:M, D-H:M:S)");
    let num = |s: &str| s.parse::<u64>().map_err(|_| bad());
    let (days, rest) = match t.split_once('-') {
        Some((d, r)) => (num(d)?, r),
        None => (0, t),
    };
    let parts: Vec<u64> = rest.split(':').map(num).collect::<Result<_>>()?;
    let secs = match (t.contains('-'), parts.as_slice()) {
        (false, [m]) => m * 60,
        (false, [m, s]) => m * 60 + s,
        (false, [h, m, s]) | (true, [h, m, s]) => h * 3600 + m * 60 + s,
        (true, [h]) => h * 3600,
        (true, [h, m]) => h * 3600 + m * 60,
        _ => return Err(bad()),
    };
    Ok(days * 86400 + secs)
}

/// A job's training budget under a time limit: the limit less a margin for the last epoch
/// and the checkpoint (a tenth, between one and ten minutes).
pub fn train_budget(limit_s: u64) -> u64 {
    let margin = (limit_s / 10).clamp(60, 600);
    limit_s.saturating_sub(margin).max(limit_s / 2)
}

fn sh_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:@%+,".contains(&b))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// The command line of one job (a shard, a whole instance, or a finalize).
fn command(plan: &Plan, p: &Planned, finalize: bool, o: &JobOptions) -> Vec<String> {
    let mut c = vec![
        o.binary_for(p, finalize).display().to_string(),
        "--no-progress".into(),
    ];
    let pipe = plan.pipeline_file.display().to_string();
    if finalize {
        c.extend(["finalize".into(), pipe, "--instance".into(), p.name.clone()]);
        c.extend(["--shards".into(), o.shards.to_string()]);
    } else {
        c.extend([p.kind.clone(), "--pipeline".into(), pipe]);
        c.extend(["--instance".into(), p.name.clone()]);
        if p.sharded {
            c.push("--no-finalize".into());
        }
        if plan.force {
            c.push("--force".into());
        }
        if o.on_gpu(p, false) {
            c.extend(["--device".into(), "cuda".into()]);
        }
    }
    if let Some(r) = &plan.runs_dir {
        c.extend(["--runs-dir".into(), r.display().to_string()]);
    }
    c
}

/// One `#SBATCH` script.
fn sbatch_script(
    plan: &Plan,
    p: &Planned,
    finalize: bool,
    o: &JobOptions,
    s: &SlurmOptions,
    logs: &Path,
) -> Result<String> {
    let array = p.sharded && !finalize;
    let role = if finalize { "-finalize" } else { "" };
    let mut t = String::from("#!/usr/bin/env bash\n");
    let _ = writeln!(
        t,
        "# geoloc: {} `{}` of pipeline `{}` ({}){}",
        p.kind,
        p.name,
        plan.pipeline_name,
        p.why,
        if finalize {
            ": commits the shards' parts"
        } else if array {
            ": one array task per shard"
        } else {
            ""
        }
    );
    let mut h = |line: String| {
        let _ = writeln!(t, "#SBATCH {line}");
    };
    h(format!(
        "--job-name=geoloc-{}-{}{role}",
        plan.pipeline_name, p.name
    ));
    let log = if array {
        logs.join(format!("{}-%A_%a.out", p.name))
    } else {
        logs.join(format!("{}{role}-%j.out", p.name))
    };
    h(format!("--output={}", log.display()));
    if array {
        let k = o.max_parallel.map(|k| format!("%{k}")).unwrap_or_default();
        h(format!("--array=0-{}{k}", o.shards - 1));
    }
    h("--kill-on-invalid-dep=yes".into());
    h("--ntasks=1".into());
    if let Some(c) = o.cpus_per_task {
        h(format!("--cpus-per-task={c}"));
    }
    if let Some(m) = &o.mem {
        h(format!("--mem={m}"));
    }
    let gpu = o.on_gpu(p, finalize);
    if gpu {
        h(format!("--gres=gpu:{}", o.gpus_per_task));
    }
    match (gpu, &s.gpu_partition, &s.partition) {
        (true, Some(v), _) | (_, _, Some(v)) => h(format!("--partition={v}")),
        _ => {}
    }
    if let Some(v) = &s.account {
        h(format!("--account={v}"));
    }
    if let Some(v) = &s.time {
        h(format!("--time={v}"));
    }
    let train_requeue = p.kind == geoloc_train::KIND && s.time.is_some();
    if train_requeue {
        // Requeued runs append to the same log.
        h("--requeue".into());
        h("--open-mode=append".into());
    }
    for e in &s.extra {
        h(e.clone());
    }
    t.push_str("set -euo pipefail\n");
    let _ = writeln!(t, "cd {}", sh_quote(&plan.workdir.display().to_string()));
    if gpu {
        t.push_str(&gpu_preflight(o.binary_for(p, finalize)));
    }
    let cmd: Vec<String> = command(plan, p, finalize, o)
        .iter()
        .map(|a| sh_quote(a))
        .collect();
    if train_requeue {
        let limit = slurm_seconds(s.time.as_deref().unwrap_or_default())?;
        let budget = train_budget(limit);
        // A forced training recomputes on its first start only: its requeued runs continue
        // from the checkpoint the first wrote (Slurm counts restarts).
        let cmd: Vec<String> = cmd
            .into_iter()
            .map(|a| {
                if a == "--force" {
                    "$([ \"${SLURM_RESTART_COUNT:-0}\" = 0 ] && echo --force)".to_owned()
                } else {
                    a
                }
            })
            .collect();
        let _ = writeln!(
            t,
            "# Under the time limit ({limit} s): train for {budget} s, checkpoint, and requeue\n\
             # this job (same id: what depends on it keeps waiting) until training is done.\n\
             rc=0\n{} --max-seconds {budget} || rc=$?\n\
             if [ \"$rc\" = {EXIT_OUT_OF_TIME} ]; then\n  \
             echo \"geoloc: time budget spent, checkpoint written; requeueing job $SLURM_JOB_ID\"\n  \
             scontrol requeue \"$SLURM_JOB_ID\" && sleep 600\nfi\nexit \"$rc\"",
            cmd.join(" ")
        );
    } else {
        let _ = writeln!(t, "exec {}", cmd.join(" "));
    }
    Ok(t)
}

/// Shell lines that stop a GPU job with one line when its binary cannot start on the node
/// it landed on: the CUDA build links the NVIDIA driver's `libcuda.so.1` and the CUDA
/// libraries, and where they are missing the dynamic loader would fail before geoloc could
/// say anything.
fn gpu_preflight(binary: &Path) -> String {
    let b = sh_quote(&binary.display().to_string());
    format!(
        "# The CUDA build needs the NVIDIA driver and CUDA libraries on this node.\n\
         missing=$(ldd {b} 2>/dev/null | awk '/not found/ {{print $1}}' | tr '\\n' ' ')\n\
         if [ -n \"$missing\" ]; then\n  \
         echo \"geoloc: this GPU job cannot start {b} on $(hostname): ${{missing}}not found (the CUDA \
         build needs the NVIDIA driver and CUDA libraries; send GPU jobs to a GPU partition: \
         --gpu-partition)\" >&2\n  exit 1\nfi\n"
    )
}

/// The script names of a planned instance: `NN-name.sbatch` and, if sharded,
/// `NN-name.finalize.sbatch`.
fn script_names(i: usize, p: &Planned) -> (String, Option<String>) {
    (
        format!("{i:02}-{}.sbatch", p.name),
        p.sharded
            .then(|| format!("{i:02}-{}.finalize.sbatch", p.name)),
    )
}

/// Writes a Slurm submission into `dir`: one script per job, `submit.sh` (submits them in
/// order with their dependencies and writes `jobs.tsv`), `logs/`. Returns the script count.
pub fn write_slurm(plan: &Plan, o: &JobOptions, s: &SlurmOptions, dir: &Path) -> Result<usize> {
    if o.shards == 0 {
        bail!("--shards must be at least 1");
    }
    std::fs::create_dir_all(dir.join("logs")).with_context(|| format!("{}", dir.display()))?;
    // A previous submission's scripts would confuse a reader of the directory.
    for e in std::fs::read_dir(dir)?.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.ends_with(".sbatch") || n == "submit.sh" || n == "jobs.tsv" {
            std::fs::remove_file(e.path())?;
        }
    }
    let logs = absolute(&dir.join("logs"))?;
    let mut submit = String::from(
        "#!/usr/bin/env bash\n\
         # Submits this directory's jobs in dependency order (written by `geoloc slurm`).\n\
         # Prints and appends to jobs.tsv one line per job: instance, role, job id.\n\
         set -euo pipefail\ncd \"$(dirname \"$0\")\"\n: > jobs.tsv\ndeclare -A J\n\
         submit() { # instance role script [job ids to wait for...]\n  \
         local name=$1 role=$2 script=$3; shift 3\n  local dep=()\n  \
         if [ $# -gt 0 ]; then dep=(\"--dependency=afterok:$(IFS=:; echo \"$*\")\"); fi\n  \
         local id\n  id=$(sbatch --parsable \"${dep[@]}\" \"$script\")\n  id=${id%%;*}\n  \
         printf '%s\\t%s\\t%s\\n' \"$name\" \"$role\" \"$id\" | tee -a jobs.tsv\n  \
         LAST=$id\n}\n",
    );
    let mut n = 0;
    for (i, p) in plan.instances.iter().enumerate() {
        let (run, fin) = script_names(i, p);
        std::fs::write(dir.join(&run), sbatch_script(plan, p, false, o, s, &logs)?)?;
        n += 1;
        let deps: Vec<String> = p.after.iter().map(|a| format!("\"${{J[{a}]}}\"")).collect();
        let role = if p.sharded { "shards" } else { "run" };
        let _ = writeln!(
            submit,
            "submit {} {role} {run} {}",
            sh_quote(&p.name),
            deps.join(" ")
        );
        if let Some(fin) = fin {
            std::fs::write(dir.join(&fin), sbatch_script(plan, p, true, o, s, &logs)?)?;
            n += 1;
            let _ = writeln!(
                submit,
                "submit {} finalize {fin} \"$LAST\"",
                sh_quote(&p.name)
            );
        }
        let _ = writeln!(submit, "J[{}]=$LAST", sh_quote(&p.name));
    }
    let path = dir.join("submit.sh");
    std::fs::write(&path, submit)?;
    set_executable(&path)?;
    Ok(n)
}

fn set_executable(p: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut perm = std::fs::metadata(p)?.permissions();
    perm.set_mode(0o755);
    std::fs::set_permissions(p, perm)?;
    Ok(())
}

/// A submitted job: instance, role (`run`, `shards`, `finalize`), job id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub instance: String,
    pub role: String,
    pub id: String,
}

/// Runs `submit.sh` of a submission directory; returns the jobs it submitted.
pub fn submit(dir: &Path) -> Result<Vec<Job>> {
    let out = Command::new("bash")
        .arg(dir.join("submit.sh"))
        .output()
        .context("running submit.sh (bash)")?;
    let jobs = read_jobs(dir)?;
    if !out.status.success() {
        bail!(
            "submitting failed after {} jobs: {}",
            jobs.len(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(jobs)
}

/// The jobs a submission recorded in `jobs.tsv`.
pub fn read_jobs(dir: &Path) -> Result<Vec<Job>> {
    let text = std::fs::read_to_string(dir.join("jobs.tsv")).unwrap_or_default();
    Ok(text
        .lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            Some(Job {
                instance: f.next()?.to_owned(),
                role: f.next()?.to_owned(),
                id: f.next()?.trim().to_owned(),
            })
        })
        .collect())
}

/// How one job (or array task) ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub job: Job,
    /// The array task, for an array job.
    pub task: Option<u32>,
    pub state: String,
    pub exit_code: String,
    pub reason: String,
    pub log: Option<PathBuf>,
}

impl Outcome {
    pub fn ok(&self) -> bool {
        self.state == "COMPLETED" && self.exit_code == "0:0"
    }
}

/// `KEY=value` of `scontrol -o show job` output.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

/// Parses `scontrol -o show job ID` (one line per job or array task).
pub fn parse_scontrol(job: &Job, text: &str) -> Vec<Outcome> {
    text.lines()
        .filter(|l| l.contains("JobId="))
        .map(|l| {
            let task = field(l, "ArrayTaskId").and_then(|t| t.parse().ok());
            let log = field(l, "StdOut").map(|p| {
                let id = field(l, "JobId").unwrap_or_default();
                let array = field(l, "ArrayJobId").unwrap_or(id);
                PathBuf::from(
                    p.replace("%A", array)
                        .replace("%a", &task.map(|t: u32| t.to_string()).unwrap_or_default())
                        .replace("%j", id),
                )
            });
            Outcome {
                job: job.clone(),
                task,
                state: field(l, "JobState").unwrap_or("UNKNOWN").to_owned(),
                exit_code: field(l, "ExitCode").unwrap_or("?").to_owned(),
                reason: field(l, "Reason").unwrap_or("None").to_owned(),
                log,
            }
        })
        .collect()
}

/// Follows submitted jobs until none is pending or running (polling `squeue` every
/// second; `sacct` needs a database many small clusters lack), then reads each job's end
/// from `scontrol`. Returns every outcome; `Err` names each failed shard with its log.
pub fn wait(jobs: &[Job], timeout: std::time::Duration) -> Result<Vec<Outcome>> {
    let ids: Vec<&str> = jobs.iter().map(|j| j.id.as_str()).collect();
    let t0 = std::time::Instant::now();
    loop {
        let out = Command::new("squeue")
            .args(["-h", "-o", "%i %T %r", "-j", &ids.join(",")])
            .args([
                "-t",
                "PENDING,RUNNING,CONFIGURING,COMPLETING,SUSPENDED,REQUEUED,RESIZING",
            ])
            .output()
            .context("running squeue")?;
        let text = String::from_utf8_lossy(&out.stdout);
        if text.trim().is_empty() {
            break;
        }
        if t0.elapsed() > timeout {
            bail!("timed out after {:?} waiting for: {}", timeout, text.trim());
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
    let mut outcomes = Vec::new();
    for j in jobs {
        let out = Command::new("scontrol")
            .args(["-o", "show", "job", &j.id])
            .output()
            .context("running scontrol")?;
        let parsed = parse_scontrol(j, &String::from_utf8_lossy(&out.stdout));
        if parsed.is_empty() {
            outcomes.push(Outcome {
                job: j.clone(),
                task: None,
                state: "UNKNOWN".into(),
                exit_code: "?".into(),
                reason: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
                log: None,
            });
        }
        outcomes.extend(parsed);
    }
    let failed: Vec<String> = outcomes
        .iter()
        .filter(|o| !o.ok())
        .map(describe_failure)
        .collect();
    if failed.is_empty() {
        Ok(outcomes)
    } else {
        bail!(
            "{} of {} jobs did not complete:\n{}",
            failed.len(),
            outcomes.len(),
            failed.join("\n")
        )
    }
}

/// One line for a failed job or shard, with its log's last lines.
pub fn describe_failure(o: &Outcome) -> String {
    let what = match (o.task, o.job.role.as_str()) {
        (Some(t), _) => format!("`{}` shard {t}", o.job.instance),
        (None, "finalize") => format!("`{}` finalize", o.job.instance),
        _ => format!("`{}`", o.job.instance),
    };
    let mut s = format!(
        "  {what} (job {}): {} exit {} ({})",
        o.job.id, o.state, o.exit_code, o.reason
    );
    if o.reason.contains("Dependency") {
        s += ": cancelled because a job it waits for failed";
    }
    if let Some(l) = &o.log {
        let _ = write!(s, "\n    log: {}", l.display());
        if let Ok(text) = std::fs::read_to_string(l) {
            for line in text
                .lines()
                .rev()
                .take(3)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
            {
                let _ = write!(s, "\n    | {line}");
            }
        }
    }
    s
}

/// Kubernetes-only settings.
#[derive(Debug, Clone, Default)]
pub struct K8sOptions {
    /// The container image holding the `geoloc` binary (as `geoloc` on its PATH).
    pub image: String,
    /// The image of the GPU jobs, holding the CUDA build as `geoloc` (default: `image`).
    pub gpu_image: Option<String>,
    pub namespace: Option<String>,
    /// A PersistentVolumeClaim mounted at `mount` (the project: pipeline, data, runs).
    pub pvc: Option<String>,
    pub mount: String,
}

/// A DNS-1123 label from a name (lowercase alphanumerics and `-`, at most 63).
pub fn dns_label(s: &str) -> String {
    let mut out: String = s
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    out.truncate(63);
    out.trim_matches('-').to_owned()
}

/// One Job manifest.
fn k8s_job(
    plan: &Plan,
    p: &Planned,
    finalize: bool,
    o: &JobOptions,
    k: &K8sOptions,
) -> serde_json::Value {
    use serde_json::json;
    let indexed = p.sharded && !finalize;
    let name = dns_label(&format!(
        "geoloc-{}-{}{}",
        plan.pipeline_name,
        p.name,
        if finalize { "-finalize" } else { "" }
    ));
    // Each image has its build on the PATH as `geoloc`: the GPU jobs' image the CUDA one.
    let mut binary = o.clone();
    binary.binary = PathBuf::from("geoloc");
    binary.gpu_binary = None;
    let command = command(plan, p, finalize, &binary);
    let image = match &k.gpu_image {
        Some(g) if o.on_gpu(p, finalize) => g,
        _ => &k.image,
    };
    let mut resources = json!({});
    if let Some(c) = o.cpus_per_task {
        resources["requests"]["cpu"] = json!(c.to_string());
    }
    if let Some(m) = &o.mem {
        resources["requests"]["memory"] = json!(m
            .trim_end_matches('B')
            .replace('G', "Gi")
            .replace('M', "Mi"));
    }
    if o.on_gpu(p, finalize) {
        resources["limits"]["nvidia.com/gpu"] = json!(o.gpus_per_task);
    }
    let mut container = json!({
        "name": "geoloc",
        "image": image,
        "command": command,
        "workingDir": plan.workdir.display().to_string(),
        "env": [],
        "resources": resources,
    });
    if indexed {
        container["env"] = json!([{ "name": "GEOLOC_SHARD_COUNT", "value": o.shards.to_string() }]);
    }
    let mut pod = json!({ "restartPolicy": "Never", "containers": [container] });
    if let Some(claim) = &k.pvc {
        pod["volumes"] =
            json!([{ "name": "project", "persistentVolumeClaim": { "claimName": claim } }]);
        pod["containers"][0]["volumeMounts"] = json!([{ "name": "project", "mountPath": k.mount }]);
    }
    let mut spec = json!({
        "backoffLimit": if indexed { o.shards * 2 } else { 2 },
        "template": {
            "metadata": { "labels": { "app.kubernetes.io/name": "geoloc", "geoloc/instance": dns_label(&p.name) } },
            "spec": pod,
        },
    });
    if indexed {
        spec["completionMode"] = json!("Indexed");
        spec["completions"] = json!(o.shards);
        spec["parallelism"] = json!(o.max_parallel.unwrap_or(o.shards).min(o.shards));
    }
    let mut meta = json!({ "name": name, "labels": { "app.kubernetes.io/name": "geoloc" } });
    if let Some(ns) = &k.namespace {
        meta["namespace"] = json!(ns);
    }
    json!({ "apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": spec })
}

/// Writes Kubernetes Job manifests (JSON, which `kubectl apply -f` reads) into `dir`, one
/// per job, and `apply.sh`, which applies them in order and waits for each to complete
/// before the next (Jobs have no dependencies of their own). Returns the manifest count.
pub fn write_k8s(plan: &Plan, o: &JobOptions, k: &K8sOptions, dir: &Path) -> Result<usize> {
    if o.shards == 0 {
        bail!("--shards must be at least 1");
    }
    if k.image.is_empty() {
        bail!("--image is required: the container image that holds the geoloc binary");
    }
    std::fs::create_dir_all(dir)?;
    for e in std::fs::read_dir(dir)?.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.ends_with(".job.json") || n == "apply.sh" {
            std::fs::remove_file(e.path())?;
        }
    }
    let ns = k
        .namespace
        .as_ref()
        .map(|n| format!(" -n {}", sh_quote(n)))
        .unwrap_or_default();
    let mut apply = String::from(
        "#!/usr/bin/env bash\n# Applies this directory's Jobs in dependency order (written by `geoloc k8s`),\n\
         # each after the one before has completed.\nset -euo pipefail\ncd \"$(dirname \"$0\")\"\n",
    );
    let mut n = 0;
    for (i, p) in plan.instances.iter().enumerate() {
        for finalize in [false, true] {
            if finalize && !p.sharded {
                continue;
            }
            let job = k8s_job(plan, p, finalize, o, k);
            let file = format!(
                "{i:02}-{}{}.job.json",
                p.name,
                if finalize { ".finalize" } else { "" }
            );
            std::fs::write(dir.join(&file), serde_json::to_vec_pretty(&job)?)?;
            let name = job["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let _ = writeln!(
                apply,
                "kubectl{ns} apply -f {file}\nkubectl{ns} wait --for=condition=complete --timeout=-1s job/{name}"
            );
            n += 1;
        }
    }
    let path = dir.join("apply.sh");
    std::fs::write(&path, apply)?;
    set_executable(&path)?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slurm_time_limits() {
        assert_eq!(slurm_seconds("30").unwrap(), 1800);
        assert_eq!(slurm_seconds("30:15").unwrap(), 1815);
        assert_eq!(slurm_seconds("2:00:00").unwrap(), 7200);
        assert_eq!(slurm_seconds("1-0").unwrap(), 86400);
        assert_eq!(slurm_seconds("1-2:30").unwrap(), 86400 + 9000);
        assert_eq!(slurm_seconds("1-2:30:05").unwrap(), 86400 + 9005);
        assert!(slurm_seconds("soon").is_err());
        assert!(slurm_seconds("1:2:3:4").is_err());
        assert_eq!(train_budget(3600), 3240);
        assert_eq!(train_budget(120), 60);
        assert_eq!(train_budget(86400), 85800);
    }

    #[test]
    fn scontrol_lines_give_states_and_logs() {
        let job = Job {
            instance: "crop224".into(),
            role: "shards".into(),
            id: "41".into(),
        };
        let text = "JobId=43 ArrayJobId=41 ArrayTaskId=2 JobName=x JobState=FAILED Reason=NonZeroExitCode Dependency=(null) ExitCode=1:0 StdOut=/tmp/logs/crop224-%A_%a.out\n\
                    JobId=41 ArrayJobId=41 ArrayTaskId=0 JobState=COMPLETED Reason=None ExitCode=0:0 StdOut=/tmp/logs/crop224-41_0.out\n";
        let o = parse_scontrol(&job, text);
        assert_eq!(o.len(), 2);
        assert_eq!(o[0].task, Some(2));
        assert!(!o[0].ok() && o[1].ok());
        assert_eq!(
            o[0].log.as_deref(),
            Some(Path::new("/tmp/logs/crop224-41_2.out"))
        );
        let d = describe_failure(&o[0]);
        assert!(
            d.contains("`crop224` shard 2 (job 41): FAILED exit 1:0"),
            "{d}"
        );
        assert!(d.contains("log: /tmp/logs/crop224-41_2.out"), "{d}");
    }

    #[test]
    fn dns_labels() {
        assert_eq!(dns_label("geoloc-demo-Crop_224"), "geoloc-demo-crop-224");
        assert_eq!(dns_label(&"x".repeat(80)).len(), 63);
        assert_eq!(dns_label("-a-"), "a");
    }
}
