//! `geoloc`: run a pipeline, inspect it, or call one stage.

use anyhow::{bail, Context as _, Result};
use clap::{Args, Parser, Subcommand};
use geoloc_cli::runner::{Runner, Selection, State};
use geoloc_core::config::StageDecl;
use geoloc_core::shard::Shard;
use geoloc_core::stage::{build_id, Context, Input};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

// Stages allocate and free many small strings from several threads at once; glibc's malloc
// spent a third of ingest's time in its own bookkeeping there (perf), mimalloc a fraction.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `geoloc --version`: the version and the build (CPU, or CUDA for which GPUs), so that a
/// job log and a person can tell the two binaries of a cluster apart.
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("GEOLOC_BUILD"), ")");

#[derive(Parser)]
#[command(
    name = "geoloc",
    version = VERSION,
    about = "Learn where photos were taken, and say where new ones were taken."
)]
struct Cli {
    /// Only warnings and errors on stderr.
    #[arg(short, long, global = true)]
    quiet: bool,
    /// Debug logging (or set RUST_LOG).
    #[arg(short, long, global = true)]
    verbose: bool,
    /// No progress bars.
    #[arg(long, global = true)]
    no_progress: bool,
    /// Log lines as text (colours only on a terminal, never with NO_COLOR set) or as JSON
    /// objects, one per line, for a log collector.
    #[arg(
        long,
        global = true,
        value_enum,
        env = "GEOLOC_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: LogFormat,
    /// When another run is writing the same instance (or shard): refuse, naming it, or wait
    /// for it to end.
    #[arg(
        long,
        global = true,
        value_enum,
        env = "GEOLOC_IF_LOCKED",
        default_value = "refuse"
    )]
    if_locked: IfLocked,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum IfLocked {
    Refuse,
    Wait,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run what is stale in a pipeline, in dependency order.
    Run {
        /// The pipeline file (pipelines/NAME.toml).
        pipeline: PathBuf,
        /// Run only these instances (their inputs must be committed already). Repeatable.
        #[arg(long)]
        only: Vec<String>,
        /// Run this instance and everything downstream of it.
        #[arg(long)]
        downstream: Option<String>,
        /// Rerun the selected instances even when fresh, computing everything again (without
        /// it, featurize keeps the parts and train the checkpoint a killed run left).
        #[arg(long)]
        force: bool,
        /// Write instance outputs here instead of the pipeline's runs_dir.
        #[arg(long)]
        runs_dir: Option<PathBuf>,
    },
    /// Show each instance of a pipeline as fresh, stale or missing, and why.
    Status {
        pipeline: PathBuf,
        #[arg(long)]
        runs_dir: Option<PathBuf>,
    },
    /// Run the ingest stage: photo metadata to a samples dataset.
    #[command(after_long_help = geoloc_cli::config_help::text("ingest"))]
    Ingest(StageArgs),
    /// Run the preprocess stage: the photos of a samples dataset to pixel tensors.
    #[command(after_long_help = geoloc_cli::config_help::text("preprocess"))]
    Preprocess(StageArgs),
    /// Run the featurize stage: pixel tensors to feature vectors (CNN backbone or HOG).
    #[command(after_long_help = geoloc_cli::config_help::text("featurize"))]
    Featurize(FeaturizeArgs),
    /// Run the train stage: features (or pixels) and samples to a trained head (a model
    /// directory). Resumes from the checkpoint a killed run of the same fingerprint left.
    #[command(after_long_help = geoloc_cli::config_help::text("train"))]
    Train(TrainArgs),
    /// Run the evaluate stage: trained heads scored on the test split (metrics.json,
    /// predictions.parquet, MediaEval run files) and the report (report.md, report.html).
    #[command(after_long_help = geoloc_cli::config_help::text("evaluate"))]
    Evaluate(StageArgs),
    /// Predict where photos were taken with a model directory: decodes them, runs the
    /// backbone the model names and the head, and writes top-k countries with
    /// probabilities and a location per photo.
    Predict(PredictArgs),
    /// Write a Slurm submission for a pipeline: one sbatch script per job (job arrays for
    /// sharded stages, a finalize job each, afterok chains), submit.sh; optionally submit
    /// it and follow the jobs.
    Slurm(SlurmArgs),
    /// Write Kubernetes Indexed Job manifests for a pipeline (and apply.sh).
    K8s(K8sArgs),
    /// List a stage's config keys: what each takes, its default, what it does (the same
    /// list as `geoloc STAGE --help`, read from the stage's config type).
    Config {
        /// ingest, preprocess, featurize, train or evaluate.
        #[arg(value_parser = clap::builder::PossibleValuesParser::new(geoloc_cli::config_help::STAGES))]
        stage: String,
    },
    /// Commit a sharded instance once all its shards have run (writes _manifest.json).
    Finalize {
        pipeline: PathBuf,
        /// The instance to commit.
        #[arg(long)]
        instance: String,
        /// How many shards ran.
        #[arg(long)]
        shards: u32,
        #[arg(long)]
        runs_dir: Option<PathBuf>,
    },
    /// The device check of a CUDA build (`cargo xtask gpu-bundle` prepares it; README,
    /// "The CUDA build"): parity with the CPU's features, images/s, the MLP's steps.
    #[command(hide = true)]
    GpuCheck {
        #[command(subcommand)]
        what: GpuCheckCmd,
    },
    /// Write synthetic inputs for the demo pipeline.
    Synth {
        #[command(subcommand)]
        what: SynthCmd,
    },
    /// Benchmark mode: a MediaEval locale TSV to one Parquet file with the peers' 7 raw
    /// columns (no validation or enrichment).
    IngestRaw {
        input: PathBuf,
        output: PathBuf,
        /// Timed repetitions after one untimed warm-up (the peers' method); prints the median.
        /// Default: one run, no warm-up.
        #[arg(long)]
        reps: Option<usize>,
    },
    /// Benchmark mode: the 224 centre crop of every JPEG in a folder into one preallocated
    /// buffer (read, decode, resize, crop: the peers' timed work, without their float
    /// conversion). Prints the median of the timed repetitions after one warm-up.
    PreprocessRaw {
        dir: PathBuf,
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// Decode at full size even when the target is small.
        #[arg(long)]
        no_dct_scaling: bool,
    },
}

#[derive(Subcommand)]
enum GpuCheckCmd {
    /// Cut the photos' 224 centre crops into BUNDLE/crops and compute the CPU's reference
    /// features (Lite0 with the real checkpoint; VGG16 and GoogLeNet on seeded weights).
    Reference {
        #[arg(long)]
        bundle: PathBuf,
        /// The EfficientNet-Lite0 checkpoint.
        #[arg(long)]
        lite0: PathBuf,
        /// At most this many photos.
        #[arg(long, default_value_t = 96)]
        max_photos: usize,
        /// Crops VGG16 and GoogLeNet run on (slow on a CPU).
        #[arg(long, default_value_t = 16)]
        cnn_rows: usize,
        /// Photo files, or folders to walk.
        #[arg(required = true)]
        photos: Vec<PathBuf>,
    },
    /// Run the checks on a device against a bundle; writes gpu-check.json and .md to --out.
    /// Exits 1 when a parity goal is missed.
    Run {
        #[arg(long)]
        bundle: PathBuf,
        #[arg(long, default_value = "cuda")]
        device: String,
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// Lite0 only, f32 and f16, batch 2, one pass: the tests' CPU run.
        #[arg(long)]
        quick: bool,
    },
}

#[derive(Subcommand)]
enum SynthCmd {
    /// MediaEval 2015 locale files (train.tsv, test.tsv, truth.csv) for the demo.
    Mediaeval {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 5_000)]
        rows: usize,
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Write the metadata files only, no photos.
        #[arg(long)]
        no_photos: bool,
    },
}

/// How a single stage call finds its config: an instance of a pipeline, or a config file.
#[derive(Args)]
struct StageArgs {
    /// The pipeline that declares the instance.
    #[arg(long, requires = "instance", conflicts_with = "config")]
    pipeline: Option<PathBuf>,
    /// The instance to run.
    #[arg(long)]
    instance: Option<String>,
    /// Or: a TOML file holding the stage's config table.
    #[arg(long, requires = "out")]
    config: Option<PathBuf>,
    /// With --config: the output dataset directory.
    #[arg(long)]
    out: Option<PathBuf>,
    /// With --config: an input dataset directory (preprocess reads a samples dataset).
    /// Repeatable.
    #[arg(long)]
    input: Vec<PathBuf>,
    /// With --config: the directory relative paths in the config resolve against
    /// (default: the config file's directory).
    #[arg(long)]
    root: Option<PathBuf>,
    /// With --pipeline: write outputs here instead of the pipeline's runs_dir.
    #[arg(long)]
    runs_dir: Option<PathBuf>,
    /// Which shard to write, i/N (default: from SLURM_ARRAY_TASK_ID/COUNT or
    /// JOB_COMPLETION_INDEX with GEOLOC_SHARD_COUNT, else 0/1).
    #[arg(long)]
    shard: Option<Shard>,
    /// Do not commit after the run even when this is the only shard.
    #[arg(long)]
    no_finalize: bool,
    /// Compute everything again: keep nothing a killed earlier run left (featurize's closed
    /// parts, train's checkpoint). `geoloc slurm --force` gives it to its jobs.
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
struct FeaturizeArgs {
    #[command(flatten)]
    stage: StageArgs,
    /// Run on this device: cpu, cuda, cuda:N (CUDA needs a build with `--features cuda`).
    #[arg(long)]
    device: Option<String>,
    /// Images per forward pass.
    #[arg(long)]
    batch: Option<usize>,
    /// f32, f16 or bf16.
    #[arg(long)]
    dtype: Option<String>,
    /// Seeded random weights instead of a weights file (recorded in the manifest).
    #[arg(long)]
    random_init: bool,
    /// Seed of --random-init.
    #[arg(long, requires = "random_init")]
    seed: Option<u64>,
}

#[derive(Args)]
struct TrainArgs {
    #[command(flatten)]
    stage: StageArgs,
    /// Run on this device: cpu, cuda, cuda:N (CUDA needs a build with `--features cuda`).
    #[arg(long)]
    device: Option<String>,
    /// Require a checkpoint to continue from (an error when there is none); without it a
    /// usable checkpoint is still taken up.
    #[arg(long)]
    resume: bool,
    /// Write a checkpoint every N epochs.
    #[arg(long)]
    checkpoint_every: Option<usize>,
    /// Stop after the first epoch past this many seconds, with a checkpoint, exit status 75
    /// (a job under a time limit requeues itself; the rerun continues).
    #[arg(long)]
    max_seconds: Option<f64>,
}

/// What `slurm` and `k8s` share.
#[derive(Args)]
struct ClusterArgs {
    /// The pipeline file.
    pipeline: PathBuf,
    /// Tasks per sharded instance (preprocess, featurize).
    #[arg(long, default_value_t = 4)]
    shards: u32,
    /// At most this many tasks of one instance at a time (Slurm `%K`, Kubernetes
    /// parallelism).
    #[arg(long)]
    max_parallel: Option<u32>,
    /// GPUs per task for featurize and train (then run with --device cuda: a CUDA build).
    #[arg(long, default_value_t = 0)]
    gpus_per_task: u32,
    /// The CUDA build the GPU jobs run (`cargo xtask build-cuda`); the other jobs run
    /// --binary, which starts on nodes without the NVIDIA driver. Needs --gpus-per-task.
    #[arg(long)]
    gpu_binary: Option<PathBuf>,
    #[arg(long)]
    cpus_per_task: Option<u32>,
    /// Memory per job (e.g. 16G).
    #[arg(long)]
    mem: Option<String>,
    /// Include fresh instances too.
    #[arg(long)]
    force: bool,
    /// The instances' outputs go here instead of the pipeline's runs_dir.
    #[arg(long)]
    runs_dir: Option<PathBuf>,
    /// Where to write the submission (default: <runs_dir>/_slurm or _k8s).
    #[arg(long)]
    out: Option<PathBuf>,
    /// The geoloc binary the jobs run (default: this one).
    #[arg(long)]
    binary: Option<PathBuf>,
}

#[derive(Args)]
struct SlurmArgs {
    #[command(flatten)]
    c: ClusterArgs,
    /// The partition of every job (of the CPU jobs when --gpu-partition is given).
    #[arg(long)]
    partition: Option<String>,
    /// The partition of the GPU jobs (featurize and train with --gpus-per-task).
    #[arg(long)]
    gpu_partition: Option<String>,
    #[arg(long)]
    account: Option<String>,
    /// Time limit per job (Slurm formats). Train jobs stop before it with a checkpoint and
    /// requeue themselves until done.
    #[arg(long)]
    time: Option<String>,
    /// Another #SBATCH option for every job (e.g. --sbatch-arg=--qos=long). Repeatable.
    #[arg(long = "sbatch-arg", allow_hyphen_values = true)]
    sbatch_arg: Vec<String>,
    /// Submit it (runs submit.sh) and print the job ids.
    #[arg(long)]
    submit: bool,
    /// With --submit: follow the jobs until they end; fail naming each failed shard and
    /// its log.
    #[arg(long, requires = "submit")]
    wait: bool,
    /// With --wait: give up after this many seconds.
    #[arg(long, default_value_t = 86_400)]
    wait_timeout: u64,
}

#[derive(Args)]
struct K8sArgs {
    #[command(flatten)]
    c: ClusterArgs,
    /// The container image holding the geoloc binary (as `geoloc` on its PATH).
    #[arg(long)]
    image: String,
    /// The image of the GPU jobs, holding the CUDA build as `geoloc` (default: --image).
    /// Needs --gpus-per-task.
    #[arg(long)]
    gpu_image: Option<String>,
    #[arg(long)]
    namespace: Option<String>,
    /// A PersistentVolumeClaim holding the project, mounted at --mount.
    #[arg(long)]
    pvc: Option<String>,
    #[arg(long, default_value = "/work")]
    mount: String,
    /// The project's directory inside the container (default: --mount).
    #[arg(long)]
    workdir: Option<PathBuf>,
}

#[derive(Args)]
struct PredictArgs {
    /// Photo files, or folders to walk.
    #[arg(required = true)]
    photos: Vec<PathBuf>,
    /// The model directory (a train instance's output).
    #[arg(long)]
    model: PathBuf,
    /// The output file (.parquet, .csv or .geojson).
    #[arg(long, short)]
    out: PathBuf,
    /// Output format (default: from the output's extension).
    #[arg(long, value_enum)]
    format: Option<geoloc_cli::predict::Format>,
    /// The backbone's weights file (default: the path the model card records, against
    /// --root). Refused unless its blake3 is the one the card records.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// The directory the card's relative weights path resolves against.
    #[arg(long, default_value = ".")]
    root: PathBuf,
    /// Classes kept per photo.
    #[arg(long, default_value_t = 5)]
    top_k: usize,
    /// cpu, cuda, cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Photos decoded and run per batch.
    #[arg(long, default_value_t = 32)]
    batch: usize,
}

impl TrainArgs {
    fn overrides(&self) -> toml::Table {
        let mut t = toml::Table::new();
        if let Some(d) = &self.device {
            t.insert("device".into(), d.clone().into());
        }
        if self.resume {
            t.insert("resume".into(), true.into());
        }
        if let Some(n) = self.checkpoint_every {
            t.insert("checkpoint_every".into(), (n as i64).into());
        }
        if let Some(s) = self.max_seconds {
            t.insert("max_seconds".into(), s.into());
        }
        t
    }
}

impl FeaturizeArgs {
    /// The config values the flags set.
    fn overrides(&self) -> toml::Table {
        let mut t = toml::Table::new();
        if let Some(d) = &self.device {
            t.insert("device".into(), d.clone().into());
        }
        if let Some(b) = self.batch {
            t.insert("batch".into(), (b as i64).into());
        }
        if let Some(d) = &self.dtype {
            t.insert("dtype".into(), d.clone().into());
        }
        if self.random_init {
            t.insert("random_init".into(), true.into());
            if let Some(s) = self.seed {
                t.insert("seed".into(), (s as i64).into());
            }
        }
        t
    }
}

fn init_logging(cli: &Cli) {
    let default = if cli.quiet {
        "warn"
    } else if cli.verbose {
        "debug"
    } else {
        "info"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match cli.log_format {
        LogFormat::Json => fmt.json().with_current_span(false).init(),
        LogFormat::Text => fmt.with_ansi(colour(&std::env::var_os("NO_COLOR"))).init(),
    }
}

/// Colour codes only where a person reads a terminal: not in files (job logs), and never
/// with `NO_COLOR` set to anything but the empty string (no-color.org).
fn colour(no_color: &Option<std::ffi::OsString>) -> bool {
    use std::io::IsTerminal as _;
    no_color.as_ref().is_none_or(|v| v.is_empty()) && std::io::stderr().is_terminal()
}

/// An error and its causes on one line, `a: b: c`, leaving out a cause whose text the line
/// already holds (an error that prints its source would otherwise show it twice).
fn error_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// mimalloc hands freed memory back to the OS after 10 ms by default. The stages free and
/// reallocate tens of MB per chunk, and paid that back in page faults (130k faults and 0.8 s
/// of system time on the 4.7M-row raw ingest at 2 threads; 7k and 0.3 s with a 1 s delay).
/// `MIMALLOC_PURGE_DELAY` in the environment still wins.
fn tune_allocator() {
    // The position of `mi_option_purge_delay` in `mi_option_e` (mimalloc.h, v2; the version
    // is pinned by Cargo.lock). libmimalloc-sys names no constant for it.
    const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets a plain integer option; mimalloc reads options atomically.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 1000) };
    }
}

fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::parse();

    init_logging(&cli);
    geoloc_core::lock::set_mode(match cli.if_locked {
        IfLocked::Refuse => geoloc_core::lock::IfLocked::Refuse,
        IfLocked::Wait => geoloc_core::lock::IfLocked::Wait,
    });
    match real_main(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_line(&e));
            if matches!(
                e.downcast_ref::<geoloc_train::Error>(),
                Some(geoloc_train::Error::OutOfTime { .. })
            ) {
                return ExitCode::from(geoloc_cli::cluster::EXIT_OUT_OF_TIME);
            }
            ExitCode::FAILURE
        }
    }
}

fn real_main(cli: Cli) -> Result<()> {
    let progress = !cli.no_progress && !cli.quiet;
    match cli.cmd {
        Cmd::Run {
            pipeline,
            only,
            downstream,
            force,
            runs_dir,
        } => {
            let mut r = Runner::load(&pipeline, runs_dir)?;
            r.progress = progress;
            let report = r.run(&Selection {
                only,
                downstream,
                force,
            })?;
            for (name, what) in report {
                println!("{name}: {what}");
            }
        }
        Cmd::Status { pipeline, runs_dir } => {
            let r = Runner::load(&pipeline, runs_dir)?;
            let st = r.status()?;
            let w = st.iter().map(|s| s.name.len()).max().unwrap_or(4);
            for s in &st {
                println!("{:w$}  {:10}  {}", s.name, s.kind, s.state);
            }
            let stale = st.iter().filter(|s| s.state != State::Fresh).count();
            println!("{} of {} instances fresh", st.len() - stale, st.len());
        }
        Cmd::Ingest(a) => stage_cmd(geoloc_ingest::KIND, a, toml::Table::new(), progress)?,
        Cmd::Preprocess(a) => stage_cmd(geoloc_preprocess::KIND, a, toml::Table::new(), progress)?,
        Cmd::Featurize(a) => {
            let overrides = a.overrides();
            stage_cmd(geoloc_featurize::KIND, a.stage, overrides, progress)?
        }
        Cmd::Train(a) => {
            let overrides = a.overrides();
            stage_cmd(geoloc_train::KIND, a.stage, overrides, progress)?
        }
        Cmd::Evaluate(a) => stage_cmd(geoloc_evaluate::KIND, a, toml::Table::new(), progress)?,
        Cmd::Predict(a) => predict_cmd(a)?,
        Cmd::Config { stage } => print!("{}", geoloc_cli::config_help::text(&stage)),
        Cmd::Slurm(a) => slurm_cmd(a)?,
        Cmd::K8s(a) => k8s_cmd(a)?,
        Cmd::Finalize {
            pipeline,
            instance,
            shards,
            runs_dir,
        } => {
            let r = Runner::load(&pipeline, runs_dir)?;
            let m = r.finalize_instance(&instance, shards)?;
            println!(
                "{instance}: committed {} rows in {} parts ({} rejects)",
                m.rows,
                m.parts.len(),
                m.rejects
            );
        }
        Cmd::Synth {
            what:
                SynthCmd::Mediaeval {
                    out,
                    rows,
                    seed,
                    no_photos,
                },
        } => {
            let f = geoloc_ingest::synth::write_mediaeval_demo(&out, rows, seed)
                .with_context(|| format!("writing demo files to {}", out.display()))?;
            println!(
                "wrote {} ({} lines), {} ({} lines), {}",
                f.train.display(),
                f.train_lines,
                f.test.display(),
                f.test_lines,
                f.truth.display()
            );
            if no_photos {
                return Ok(());
            }
            let images = out.join("images");
            let w = geoloc_cli::demo::write_photos(&images, &f.photos, seed)?;
            println!(
                "wrote {} photos under {} ({} unchanged)",
                w.written,
                images.display(),
                w.unchanged
            );
        }
        Cmd::IngestRaw {
            input,
            output,
            reps,
        } => {
            if reps.is_some() {
                geoloc_ingest::raw::mediaeval_to_parquet(&input, &output)?;
            }
            let mut times = Vec::new();
            let mut rows = 0;
            for _ in 0..reps.unwrap_or(1).max(1) {
                let t0 = Instant::now();
                rows = geoloc_ingest::raw::mediaeval_to_parquet(&input, &output)?;
                times.push(t0.elapsed().as_secs_f64());
            }
            times.sort_by(f64::total_cmp);
            let s = times[times.len() / 2];
            println!(
                "rows={rows} seconds={s:.4} min_s={:.4} reps={} threads={}",
                times[0],
                times.len(),
                rayon_threads()
            );
        }
        Cmd::GpuCheck { what } => gpu_check_cmd(what)?,
        Cmd::PreprocessRaw {
            dir,
            reps,
            no_dct_scaling,
        } => preprocess_raw(&dir, reps, !no_dct_scaling)?,
    }
    Ok(())
}

fn gpu_check_cmd(what: GpuCheckCmd) -> Result<()> {
    use geoloc_cli::gpu_check;
    match what {
        GpuCheckCmd::Reference {
            bundle,
            lite0,
            max_photos,
            cnn_rows,
            photos,
        } => {
            let files = geoloc_cli::predict::collect(&photos)?;
            let info = gpu_check::make_reference(&files, &lite0, &bundle, max_photos, cnn_rows)?;
            println!(
                "{} crops ({} with VGG16/GoogLeNet rows), {} photos skipped, in {}",
                info.crops,
                info.cnn_rows,
                info.skipped.len(),
                bundle.display()
            );
        }
        GpuCheckCmd::Run {
            bundle,
            device,
            out,
            quick,
        } => {
            let mut opts = gpu_check::RunOptions::full(&device);
            if quick {
                opts.batches = vec![2];
                // candle's CPU matmul has f16 (gemm) but no bf16.
                opts.parity_dtypes = vec!["f32".into(), "f16".into()];
                opts.throughput_dtypes = vec!["f32".into()];
                opts.models = vec![geoloc_models::backbone::BackboneKind::Lite0];
                opts.seconds = 0.0;
            }
            let report = gpu_check::run(&bundle, &opts)?;
            std::fs::create_dir_all(&out)?;
            std::fs::write(
                out.join("gpu-check.json"),
                serde_json::to_vec_pretty(&report)?,
            )?;
            let md = report.markdown();
            std::fs::write(out.join("gpu-check.md"), &md)?;
            print!("{md}");
            if !report.pass() {
                bail!("a parity check missed its goal (see the table above)");
            }
        }
    }
    Ok(())
}

fn job_options(c: &ClusterArgs) -> Result<geoloc_cli::cluster::JobOptions> {
    let binary = match &c.binary {
        Some(b) => std::path::absolute(b)?,
        None => std::env::current_exe().context("locating the geoloc binary")?,
    };
    if c.gpu_binary.is_some() && c.gpus_per_task == 0 {
        bail!("--gpu-binary is the binary of the GPU jobs: give --gpus-per-task N too");
    }
    let gpu_binary = c
        .gpu_binary
        .as_deref()
        .map(std::path::absolute)
        .transpose()?;
    if let Some(g) = &gpu_binary {
        if !g.is_file() {
            bail!(
                "--gpu-binary {}: no such file (build it with `cargo xtask build-cuda`)",
                g.display()
            );
        }
    }
    Ok(geoloc_cli::cluster::JobOptions {
        shards: c.shards,
        max_parallel: c.max_parallel,
        gpus_per_task: c.gpus_per_task,
        cpus_per_task: c.cpus_per_task,
        mem: c.mem.clone(),
        binary,
        gpu_binary,
    })
}

fn submission_dir(c: &ClusterArgs, sub: &str) -> Result<PathBuf> {
    Ok(match &c.out {
        Some(o) => o.clone(),
        None => Runner::load(&c.pipeline, c.runs_dir.clone())?
            .pipeline
            .runs_dir
            .join(sub),
    })
}

fn slurm_cmd(a: SlurmArgs) -> Result<()> {
    use geoloc_cli::cluster;
    let plan = cluster::plan(&a.c.pipeline, a.c.runs_dir.clone(), a.c.force)?;
    let dir = submission_dir(&a.c, "_slurm")?;
    if plan.instances.is_empty() {
        println!("every instance is fresh: nothing to submit (--force submits all)");
        return Ok(());
    }
    let opts = job_options(&a.c)?;
    if a.c.gpus_per_task > 0
        && a.c.gpu_binary.is_none()
        && a.c.binary.is_none()
        && !geoloc_models::backbone::CUDA_BUILD
    {
        bail!(
            "--gpus-per-task: the GPU jobs would run this geoloc, the CPU build, which refuses \
             --device cuda; give the CUDA build as --gpu-binary (cargo xtask build-cuda)"
        );
    }
    if a.gpu_partition.is_some() && a.c.gpus_per_task == 0 {
        bail!("--gpu-partition is the partition of the GPU jobs: give --gpus-per-task N too");
    }
    let s = cluster::SlurmOptions {
        partition: a.partition,
        gpu_partition: a.gpu_partition,
        account: a.account,
        time: a.time,
        extra: a.sbatch_arg,
    };
    let n = cluster::write_slurm(&plan, &opts, &s, &dir)?;
    println!(
        "wrote {n} job scripts for {} instances to {} (submit with {})",
        plan.instances.len(),
        dir.display(),
        dir.join("submit.sh").display()
    );
    if !a.submit {
        return Ok(());
    }
    let jobs = cluster::submit(&dir)?;
    for j in &jobs {
        println!("submitted {} {}: job {}", j.instance, j.role, j.id);
    }
    if a.wait {
        let outcomes = cluster::wait(&jobs, std::time::Duration::from_secs(a.wait_timeout))?;
        println!("all {} jobs completed", outcomes.len());
    }
    Ok(())
}

fn k8s_cmd(a: K8sArgs) -> Result<()> {
    use geoloc_cli::cluster;
    let mut plan = cluster::plan(&a.c.pipeline, a.c.runs_dir.clone(), a.c.force)?;
    // Inside the container the project is at the mount (or --workdir), not here.
    plan.workdir = a.workdir.clone().unwrap_or_else(|| PathBuf::from(&a.mount));
    let here = std::env::current_dir()?;
    plan.pipeline_file = rebase(&plan.pipeline_file, &here, &plan.workdir);
    plan.runs_dir = plan
        .runs_dir
        .as_deref()
        .map(|r| rebase(r, &here, &plan.workdir));
    let dir = submission_dir(&a.c, "_k8s")?;
    if plan.instances.is_empty() {
        println!("every instance is fresh: nothing to write (--force writes all)");
        return Ok(());
    }
    let opts = job_options(&a.c)?;
    if a.gpu_image.is_some() && a.c.gpus_per_task == 0 {
        bail!("--gpu-image is the image of the GPU jobs: give --gpus-per-task N too");
    }
    let k = cluster::K8sOptions {
        image: a.image,
        gpu_image: a.gpu_image,
        namespace: a.namespace,
        pvc: a.pvc,
        mount: a.mount,
    };
    let n = cluster::write_k8s(&plan, &opts, &k, &dir)?;
    println!(
        "wrote {n} Job manifests for {} instances to {} (apply with {})",
        plan.instances.len(),
        dir.display(),
        dir.join("apply.sh").display()
    );
    Ok(())
}

/// `p` under `from` moved under `to` (a path here, as the container sees it).
fn rebase(p: &std::path::Path, from: &std::path::Path, to: &std::path::Path) -> PathBuf {
    match p.strip_prefix(from) {
        Ok(rel) => to.join(rel),
        Err(_) => p.to_owned(),
    }
}

fn predict_cmd(a: PredictArgs) -> Result<()> {
    use geoloc_cli::predict;
    let format = match a.format.or_else(|| predict::Format::of(&a.out)) {
        Some(f) => f,
        None => bail!(
            "cannot tell the format of {} from its extension; give --format parquet|csv|geojson",
            a.out.display()
        ),
    };
    let req = predict::Request {
        photos: a.photos,
        model: a.model,
        weights: a.weights,
        root: a.root,
        out: a.out.clone(),
        format,
        top_k: a.top_k,
        device: a.device,
        batch: a.batch,
    };
    let (preds, skipped) = predict::predict(&req)?;
    predict::write(&preds, &a.out, format)?;
    for s in &skipped {
        eprintln!("skipped {}: {}", s.path, s.reason);
    }
    println!(
        "predicted {} photos ({} skipped) to {}",
        preds.len(),
        skipped.len(),
        a.out.display()
    );
    Ok(())
}

fn preprocess_raw(dir: &std::path::Path, reps: usize, dct_scaling: bool) -> Result<()> {
    use rayon::prelude::*;
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .is_some_and(|x| x.eq_ignore_ascii_case("jpg") || x.eq_ignore_ascii_case("jpeg"))
        })
        .collect();
    paths.sort();
    let opts = geoloc_imaging::PrepareOptions {
        decode: Default::default(),
        geometry: geoloc_imaging::Geometry::ResizeCrop {
            resize: 224,
            crop: 224,
        },
        views: geoloc_imaging::Views::Centre,
        dct_scaling,
    };
    let t = opts.geometry.tensor_bytes();
    let mut out = vec![0u8; paths.len() * t];
    let once = |paths: &[PathBuf], out: &mut [u8]| -> Result<()> {
        out.par_chunks_mut(t)
            .zip(paths.par_iter())
            .try_for_each(|(slot, p)| {
                let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
                let prep = geoloc_imaging::prepare(&bytes, &opts, 0)
                    .with_context(|| format!("{}", p.display()))?;
                slot.copy_from_slice(&prep.views[0].pixels);
                Ok(())
            })
    };
    let warm = paths.len().min(16);
    once(&paths[..warm], &mut out[..warm * t])?;
    let mut times = Vec::new();
    for _ in 0..reps.max(1) {
        let t0 = Instant::now();
        once(&paths, &mut out)?;
        times.push(t0.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let s = times[times.len() / 2];
    let checksum: u64 = out.iter().step_by(7).map(|&v| v as u64).sum();
    println!(
        "items={} seconds={s:.4} items_per_s={:.1} min_s={:.4} reps={} threads={} checksum={checksum}",
        paths.len(),
        paths.len() as f64 / s,
        times[0],
        times.len(),
        rayon_threads()
    );
    Ok(())
}

fn rayon_threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
}

/// `geoloc <kind> ...`: one stage, as an instance of a pipeline or from a config file.
/// Runs one stage instance (from a pipeline, or from a config file), its config amended by
/// `overrides` (a flag's value replaces the config's; `random_init` drops `weights`).
fn stage_cmd(kind: &str, a: StageArgs, overrides: toml::Table, progress: bool) -> Result<()> {
    let shard = Shard::resolve(a.shard)?;
    let amend = |config: &mut toml::Table| {
        if overrides.get("random_init").is_some() {
            config.remove("weights");
        }
        config.extend(overrides.clone());
    };
    if let (Some(p), Some(inst)) = (&a.pipeline, &a.instance) {
        let mut r = Runner::load(p, a.runs_dir.clone())?;
        r.progress = progress;
        let unknown = r.pipeline.unknown(inst);
        let decl = r.pipeline.stages.get_mut(inst).ok_or(unknown)?;
        if decl.kind != kind {
            bail!(
                "instance `{inst}` is a `{}` instance, not {kind}",
                decl.kind
            );
        }
        amend(&mut decl.config);
        let summary = r.run_shard(inst, shard, a.force)?;
        println!("{inst} shard {shard}: {summary}");
        if shard.is_all() && !a.no_finalize {
            let m = r.finalize_instance(inst, 1)?;
            println!(
                "{inst}: committed {} rows ({} rejects) to {}",
                m.rows,
                m.rejects,
                r.pipeline.instance_dir(inst).display()
            );
        }
        return Ok(());
    }
    let (Some(cfg_path), Some(out)) = (a.config, a.out) else {
        bail!("give --pipeline FILE --instance NAME, or --config FILE --out DIR");
    };
    let text = std::fs::read_to_string(&cfg_path)
        .with_context(|| format!("reading {}", cfg_path.display()))?;
    let mut config: toml::Table =
        toml::from_str(&text).with_context(|| format!("parsing {}", cfg_path.display()))?;
    amend(&mut config);
    let mut inputs = Vec::new();
    for dir in &a.input {
        let manifest = geoloc_core::dataset::Manifest::load(dir)
            .with_context(|| format!("input {} has no committed dataset", dir.display()))?;
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| dir.display().to_string());
        inputs.push(Input {
            name,
            dir: dir.clone(),
            manifest,
        });
    }
    let decl = StageDecl {
        kind: kind.to_string(),
        inputs: inputs.iter().map(|i| i.name.clone()).collect(),
        config,
    };
    let root = a
        .root
        .unwrap_or_else(|| cfg_path.parent().map(PathBuf::from).unwrap_or_default());
    let ctx = Context {
        root,
        out_dir: out.clone(),
        shard,
        build: build_id(),
        progress,
        recompute: a.force,
    };
    let stage = geoloc_cli::stages::lookup(kind)?;
    stage
        .config_json(&decl, &ctx)
        .with_context(|| format!("parsing {}", cfg_path.display()))?;
    // One writer per output (and shard), held through the run and the commit.
    let _held = geoloc_core::lock::for_shard(&out, shard)?;
    let summary = stage.run(&decl, &ctx, &inputs)?;
    println!("shard {shard}: {summary}");
    if shard.is_all() && !a.no_finalize {
        let m = stage.finalize(&decl, &ctx, &inputs, 1)?;
        println!(
            "committed {} rows ({} rejects) to {}",
            m.rows,
            m.rejects,
            out.display()
        );
    }
    Ok(())
}
