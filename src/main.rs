//! The `dsari` command line: argument parsing and dispatch only.
//!
//! The binary is also the Python dsari's tools: invoked through a symlink named
//! `dsari-daemon`, `dsari-info`, `dsari-render` or `dsari-prometheus-exporter`
//! it takes that tool's arguments (clap's multicall mode picks the applet by
//! the name it was invoked as). Everything a command does is in `dsari::cli`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};

use dsari::cli::{self, Flavor, ListFormat, config::DumpFormat};

/// The names the binary answers to; any other name (a renamed or versioned
/// binary) is treated as `dsari`.
const APPLETS: &[&str] = &[
    "dsari",
    "dsari-daemon",
    "dsari-info",
    "dsari-render",
    "dsari-prometheus-exporter",
];

#[derive(Parser)]
#[command(multicall = true)]
enum Applet {
    Dsari(Dsari),
    /// The Python dsari-daemon's command line: `dsari-daemon [-c DIR] [--fork] [--debug]`
    #[command(name = "dsari-daemon", version)]
    DsariDaemon {
        #[command(flatten)]
        dir: ConfigDir,
        #[command(flatten)]
        daemon: DaemonArgs,
    },
    /// The Python dsari-info's command line: job/run information
    #[command(name = "dsari-info", version)]
    DsariInfo {
        #[command(flatten)]
        dir: ConfigDir,
        #[command(subcommand)]
        command: InfoCommand,
    },
    /// The Python dsari-render's command line (HTML reports)
    #[command(name = "dsari-render", version)]
    DsariRender {
        #[command(flatten)]
        dir: ConfigDir,
        #[command(flatten)]
        render: RenderArgs,
        /// Log debug detail
        #[arg(long)]
        debug: bool,
    },
    /// The Python dsari-prometheus-exporter's command line (metrics)
    #[command(name = "dsari-prometheus-exporter", version)]
    DsariPrometheusExporter {
        #[command(flatten)]
        dir: ConfigDir,
        #[command(flatten)]
        exporter: ExporterArgs,
    },
}

/// Do Something And Record It: run jobs from trigger files and schedules, record every run
#[derive(Parser)]
#[command(name = "dsari", version)]
struct Dsari {
    #[command(flatten)]
    dir: ConfigDir,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct ConfigDir {
    /// Configuration directory (default: $DSARI_HOME/etc, ~/.dsari/etc, /usr/local/etc/dsari, /etc/dsari)
    #[arg(short = 'c', long = "config-dir", value_name = "DIR", global = true)]
    config_dir: Option<PathBuf>,
}

impl ConfigDir {
    fn resolve(&self) -> PathBuf {
        self.config_dir
            .clone()
            .unwrap_or_else(dsari::config::default_config_dir)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: watch trigger directories, run jobs, record runs
    Daemon(DaemonArgs),
    /// Ask for a run of JOB by writing a trigger file (and with --wait, wait for it)
    Trigger(TriggerArgs),
    /// Check or print the configuration
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// List jobs, or explain what one waits for
    Job {
        #[command(subcommand)]
        action: JobAction,
    },
    /// List recorded runs, print or follow their output
    Run {
        #[command(subcommand)]
        action: RunAction,
    },
    /// Write the HTML reports into DATA_DIR/html (only pages whose data changed)
    Render(RenderArgs),
    /// Serve Prometheus metrics on /metrics (127.0.0.1:50575), or print them once
    Metrics {
        /// Address to listen on (not every interface unless you say so)
        #[arg(long, value_name = "ADDR", default_value = dsari::report::DEFAULT_LISTEN)]
        listen: String,
        #[command(flatten)]
        metrics: MetricsArgs,
    },
    /// Preview schedules
    Schedule {
        #[command(subcommand)]
        action: ScheduleAction,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write man pages for every command into DIR (dsari.1, dsari-run-list.1, …)
    Manpages {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

#[derive(Args)]
struct DaemonArgs {
    /// Fork into the background (detach from the terminal)
    #[arg(long)]
    fork: bool,
    /// Log debug detail (RUST_LOG overrides)
    #[arg(short, long)]
    debug: bool,
    /// Run what is due now, wait for those runs, print them and exit
    #[arg(long)]
    once: bool,
}

#[derive(Args)]
struct TriggerArgs {
    /// The job to run
    job: String,
    /// Add NAME=value to the run's environment (repeatable)
    #[arg(long = "env", value_name = "NAME=VALUE")]
    env: Vec<String>,
    /// Run at this time instead of now: RFC 3339 (2024-05-01T12:00:00Z) or epoch seconds
    #[arg(long, value_name = "TIME")]
    at: Option<String>,
    /// A JSON object merged into the trigger (e.g. '{"description": "nightly"}')
    #[arg(long, value_name = "JSON")]
    data: Option<String>,
    /// Wait for the run to finish; print its id, exit code and output file; exit with its exit code
    #[arg(long)]
    wait: bool,
    /// With --wait: give up after SECS seconds, exit status 124 (the run is left alone)
    #[arg(long, value_name = "SECS", requires = "wait")]
    timeout: Option<f64>,
}

#[derive(Subcommand)]
enum ScheduleAction {
    /// The next times of EXPR for a job name (H forms hash the name), each after the previous
    Next {
        /// The job name the schedule is for
        #[arg(long, value_name = "NAME")]
        job: String,
        /// IANA zone the schedule is read in (default: local)
        #[arg(long, value_name = "TZ")]
        timezone: Option<String>,
        /// Start after this time: RFC 3339 or epoch seconds (default: now)
        #[arg(long, value_name = "TIME")]
        from: Option<String>,
        /// How many times
        #[arg(long, default_value_t = 5)]
        count: usize,
        /// json: one array of epoch seconds
        #[arg(long, value_enum)]
        format: Option<NextFormat>,
        /// A cron expression (5 or 6 fields, seconds last; H, R, @aliases) or RRULE:…
        expr: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum NextFormat {
    Pretty,
    Json,
}

#[derive(Args)]
struct RenderArgs {
    /// Rewrite every page, changed or not
    #[arg(short = 'r', long)]
    regenerate: bool,
}

#[derive(Args)]
struct ExporterArgs {
    /// Log debug detail
    #[arg(long)]
    debug: bool,
    /// Address to listen on (127.0.0.1 by default, not every interface)
    #[arg(long, default_value = "127.0.0.1")]
    listen_address: String,
    /// Port to listen on
    #[arg(long, default_value_t = 50575)]
    listen_port: u16,
    #[command(flatten)]
    metrics: MetricsArgs,
}

#[derive(Args)]
struct MetricsArgs {
    /// Path to serve metrics from
    #[arg(long, default_value = "/metrics")]
    metrics_path: String,
    /// Seconds to cache metrics of finished runs
    #[arg(long, default_value_t = 120.0)]
    job_cache_time: f64,
    /// Comma-separated quantiles of the summaries
    #[arg(long, default_value = "0.01,0.1,0.5,0.9,0.99")]
    quantiles: String,
    /// Do not gather metrics of running runs
    #[arg(long)]
    no_running: bool,
    /// Print the metrics once and exit
    #[arg(long)]
    dump: bool,
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Validate the configuration: exit 0 when valid, 1 with every error otherwise
    Check,
    /// Print the normalised configuration (or, with --raw, the merged files as read)
    Dump {
        /// Print the merged files as read, before validation
        #[arg(long)]
        raw: bool,
        /// Output format [default: yaml; dsari-info: json]
        #[arg(long, value_enum)]
        format: Option<DumpFormatArg>,
    },
}

#[derive(Subcommand)]
enum JobAction {
    /// List jobs: schedule, next due time, groups, last result
    List {
        /// Only this job (repeatable)
        #[arg(long = "job", value_name = "JOB")]
        jobs: Vec<String>,
        #[arg(long, value_enum, default_value = "pretty")]
        format: ListFormatArg,
    },
    /// Explain what JOB waits for, or why it did not run
    Why {
        /// The job
        job: String,
    },
}

#[derive(Subcommand)]
enum RunAction {
    /// List runs, newest first (running ones first)
    List {
        /// Only runs of this job (repeatable)
        #[arg(long = "job", value_name = "JOB")]
        jobs: Vec<String>,
        /// Only the run with this id or id prefix (repeatable)
        #[arg(long = "run", value_name = "RUN_ID")]
        runs: Vec<String>,
        /// Only running runs
        #[arg(long)]
        running: bool,
        /// At most this many runs
        #[arg(long, value_name = "N")]
        limit: Option<u64>,
        #[arg(long, value_enum, default_value = "pretty")]
        format: ListFormatArg,
    },
    /// Print a run's output, finished or still running
    Output {
        /// Run id, or a unique start of one
        run: String,
    },
    /// Follow the output of running runs (all, and those that start, when none is named)
    Tail {
        /// Run ids, or unique starts of them
        runs: Vec<String>,
        /// Lines of earlier output to show of runs already running
        #[arg(short = 'n', long, default_value_t = 10)]
        lines: usize,
    },
}

/// `dsari-info`'s commands: the same as `dsari`'s, plus the Python tool's `shell`.
#[derive(Subcommand)]
enum InfoCommand {
    /// Job commands
    Job {
        #[command(subcommand)]
        action: JobAction,
    },
    /// Run commands
    Run {
        #[command(subcommand)]
        action: RunAction,
    },
    /// Config commands
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Interactive Python shell (not available in this implementation)
    Shell,
}

#[derive(Clone, Copy, ValueEnum)]
enum ListFormatArg {
    Pretty,
    Tabular,
    Json,
    Yaml,
}

#[derive(Clone, Copy, ValueEnum)]
enum DumpFormatArg {
    Json,
    Yaml,
}

fn main() -> ExitCode {
    let args = applet_args(std::env::args_os().collect());
    // The supervisor starts for every run: skip building the whole command line.
    // (`__supervise RUN_DIR` is not in the clap tree at all, so completions and
    // man pages never offer it.)
    if args.len() == 3 && args[1] == dsari::exec::SUPERVISE_ARG {
        return ExitCode::from(supervise(PathBuf::from(&args[2])));
    }
    let applet = match Applet::try_parse_from(args) {
        Ok(a) => a,
        Err(e) => {
            // --help and --version go to stdout with 0; a bad command line is a
            // user error: clap's message (with usage) and exit status 1, not 2.
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match run(applet) {
        Ok(code) => ExitCode::from(code),
        Err(e) if cli::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, always: the message says what and what to do.
            let text = format!("{e:#}").replace('\n', "; ");
            eprintln!("dsari: {text}");
            ExitCode::from(1)
        }
    }
}

/// argv with argv[0] reduced to the applet name it was invoked as (`dsari` for
/// any name that is not one of [`APPLETS`]).
fn applet_args(mut args: Vec<OsString>) -> Vec<OsString> {
    let invoked = args
        .first()
        .and_then(|a| Path::new(a).file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = APPLETS
        .iter()
        .find(|a| **a == invoked)
        .copied()
        .unwrap_or("dsari");
    match args.first_mut() {
        Some(first) => *first = name.into(),
        None => args.push(name.into()),
    }
    args
}

fn run(applet: Applet) -> anyhow::Result<u8> {
    match applet {
        Applet::Dsari(d) => run_dsari(d),
        Applet::DsariDaemon { dir, daemon } => daemon_cmd(&dir, &daemon),
        Applet::DsariInfo { dir, command } => match command {
            InfoCommand::Job { action } => job_cmd(&dir, action, Flavor::PythonInfo),
            InfoCommand::Run { action } => run_cmd(&dir, action, Flavor::PythonInfo),
            InfoCommand::Config { action } => config_cmd(&dir, action, Flavor::PythonInfo),
            InfoCommand::Shell => anyhow::bail!(
                "dsari-info shell (the Python dsari's interactive Python shell) is not available here: use `dsari run list --format json` or sqlite3 on the database"
            ),
        },
        Applet::DsariRender { dir, render, debug } => {
            if debug {
                init_logging(true);
            }
            render_cmd(&dir, &render)
        }
        Applet::DsariPrometheusExporter { dir, exporter } => {
            if exporter.debug {
                init_logging(true);
            }
            let host = &exporter.listen_address;
            let listen = if host.contains(':') {
                format!("[{host}]:{}", exporter.listen_port)
            } else {
                format!("{host}:{}", exporter.listen_port)
            };
            metrics_cmd(&dir, &listen, &exporter.metrics)
        }
    }
}

fn run_dsari(d: Dsari) -> anyhow::Result<u8> {
    let dir = d.dir;
    match d.command {
        Command::Daemon(args) => daemon_cmd(&dir, &args),
        Command::Trigger(t) => cli::trigger::trigger(
            &dir.resolve(),
            &cli::trigger::TriggerOptions {
                job: t.job,
                env: t.env,
                at: t.at,
                data: t.data,
                wait: t.wait,
                timeout: t.timeout,
            },
        ),
        Command::Config { action } => config_cmd(&dir, action, Flavor::Dsari),
        Command::Job { action } => job_cmd(&dir, action, Flavor::Dsari),
        Command::Run { action } => run_cmd(&dir, action, Flavor::Dsari),
        Command::Render(args) => render_cmd(&dir, &args),
        Command::Metrics { listen, metrics } => metrics_cmd(&dir, &listen, &metrics),
        Command::Schedule {
            action:
                ScheduleAction::Next {
                    job,
                    timezone,
                    from,
                    count,
                    format,
                    expr,
                },
        } => cli::schedule::next(&cli::schedule::NextOptions {
            job,
            timezone,
            from,
            count,
            json: matches!(format, Some(NextFormat::Json)),
            expr,
        }),
        Command::Completions { shell } => cli::generate::completions(Dsari::command(), shell),
        Command::Manpages { dir: out } => cli::generate::manpages(Dsari::command(), &out),
    }
}

fn daemon_cmd(dir: &ConfigDir, args: &DaemonArgs) -> anyhow::Result<u8> {
    init_logging(args.debug);
    if args.fork {
        // Before any thread exists: forking a threaded process is unsafe.
        nix::unistd::daemon(true, true)
            .map_err(|e| anyhow::anyhow!("cannot fork into the background: {e}"))?;
    }
    let code = dsari::daemon::run(dsari::daemon::Options {
        config_dir: dir.resolve(),
        once: args.once,
    })?;
    Ok(code.clamp(0, 255) as u8)
}

fn config_cmd(dir: &ConfigDir, action: ConfigAction, flavor: Flavor) -> anyhow::Result<u8> {
    match action {
        ConfigAction::Check => cli::config::check(&dir.resolve(), flavor),
        ConfigAction::Dump { raw, format } => {
            let format = match (format, flavor) {
                (Some(DumpFormatArg::Json), _) | (None, Flavor::PythonInfo) => DumpFormat::Json,
                (Some(DumpFormatArg::Yaml), _) | (None, Flavor::Dsari) => DumpFormat::Yaml,
            };
            cli::config::dump(&dir.resolve(), raw, format)
        }
    }
}

fn job_cmd(dir: &ConfigDir, action: JobAction, flavor: Flavor) -> anyhow::Result<u8> {
    match action {
        JobAction::List { jobs, format } => cli::jobs::list(
            &dir.resolve(),
            &cli::jobs::ListOptions {
                jobs,
                format: format.into(),
                flavor,
            },
        ),
        JobAction::Why { job } => cli::why::why(&dir.resolve(), &job),
    }
}

fn run_cmd(dir: &ConfigDir, action: RunAction, flavor: Flavor) -> anyhow::Result<u8> {
    match action {
        RunAction::List {
            jobs,
            runs,
            running,
            limit,
            format,
        } => cli::runs::list(
            &dir.resolve(),
            &cli::runs::ListOptions {
                jobs,
                runs,
                running_only: running,
                limit,
                format: format.into(),
                flavor,
            },
        ),
        RunAction::Output { run } => cli::output::print(&dir.resolve(), &run),
        RunAction::Tail { runs, lines } => {
            cli::tail::tail(&dir.resolve(), &cli::tail::TailOptions { runs, lines })
        }
    }
}

impl From<ListFormatArg> for ListFormat {
    fn from(f: ListFormatArg) -> ListFormat {
        match f {
            ListFormatArg::Pretty => ListFormat::Pretty,
            ListFormatArg::Tabular => ListFormat::Tabular,
            ListFormatArg::Json => ListFormat::Json,
            ListFormatArg::Yaml => ListFormat::Yaml,
        }
    }
}

/// `dsari render`: write the HTML reports.
fn render_cmd(dir: &ConfigDir, args: &RenderArgs) -> anyhow::Result<u8> {
    let config = load_config(dir)?;
    let opts = dsari::report::RenderOptions {
        regenerate: args.regenerate,
    };
    let s = dsari::report::render(&config, &opts).map_err(|e| anyhow::anyhow!("{e}"))?;
    println!(
        "wrote {} pages, {} unchanged, {} removed in {}",
        s.written,
        s.unchanged,
        s.removed,
        s.out_dir.display()
    );
    Ok(0)
}

/// `dsari metrics`: serve (blocks) or, with --dump, print once.
fn metrics_cmd(dir: &ConfigDir, listen: &str, args: &MetricsArgs) -> anyhow::Result<u8> {
    let config = load_config(dir)?;
    let opts = dsari::report::MetricsOptions {
        job_cache_time: args.job_cache_time,
        quantiles: dsari::report::parse_quantiles(&args.quantiles)
            .map_err(|e| anyhow::anyhow!("--quantiles: {e}"))?,
        include_running: !args.no_running,
        metrics_path: args.metrics_path.clone(),
    };
    if args.dump {
        let mut cache = dsari::report::MetricsCache::new();
        let text = dsari::report::metrics_text(&config, &opts, &mut cache)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        print!("{text}");
        return Ok(0);
    }
    eprintln!(
        "dsari: serving metrics on http://{listen}{}",
        opts.metrics_path
    );
    dsari::report::serve_metrics(config, listen, opts).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(0)
}

/// The validated configuration, or the errors as one message.
fn load_config(dir: &ConfigDir) -> anyhow::Result<dsari::config::Config> {
    let path = dir.resolve();
    dsari::config::load(&path)
        .map(|l| l.config)
        .map_err(|e| anyhow::anyhow!("{e}\nfix the configuration in {} first", path.display()))
}

/// `dsari __supervise RUN_DIR`, or `--launcher` for the daemon's launcher.
fn supervise(run_dir: PathBuf) -> u8 {
    let code = if run_dir.as_os_str() == dsari::exec::LAUNCHER_ARG {
        dsari::exec::launcher::serve()
    } else {
        dsari::exec::supervise(&run_dir, None)
    };
    code.clamp(0, 255) as u8
}

fn init_logging(debug: bool) {
    let default = if debug { "debug" } else { "info" };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default))
        .format_timestamp_millis()
        .format_target(false)
        .init();
}
