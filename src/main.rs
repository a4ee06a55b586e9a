//! The `dsari` command line: argument parsing and dispatch only.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use dsari::config;

#[derive(Parser)]
#[command(
    name = "dsari",
    version,
    about = "Do Something And Record It: run jobs from trigger files, record every run"
)]
struct Cli {
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
            .unwrap_or_else(config::default_config_dir)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: watch trigger directories, run jobs, record runs
    Daemon {
        #[command(flatten)]
        dir: ConfigDir,
        /// Fork into the background (detach from the terminal)
        #[arg(long)]
        fork: bool,
        /// Log debug detail (RUST_LOG overrides)
        #[arg(short, long)]
        debug: bool,
        /// Run what is due now, wait for those runs, print them and exit
        #[arg(long)]
        once: bool,
    },
    /// Check or print the configuration
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Inspect recorded runs
    Run {
        #[command(subcommand)]
        action: RunAction,
    },
    /// Supervise one run (started by the daemon; not for people)
    #[command(name = "__supervise", hide = true)]
    Supervise { run_dir: PathBuf },
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Validate the configuration: exit 0 when valid, 1 with every error otherwise
    Check {
        #[command(flatten)]
        dir: ConfigDir,
    },
    /// Print the normalised configuration (or, with --raw, the merged files as read)
    Dump {
        #[command(flatten)]
        dir: ConfigDir,
        /// Print the merged files as read, before validation
        #[arg(long)]
        raw: bool,
        #[arg(long, value_enum, default_value = "yaml")]
        format: DumpFormat,
    },
}

#[derive(Subcommand)]
enum RunAction {
    /// List finished runs, newest first
    List {
        #[command(flatten)]
        dir: ConfigDir,
        /// Only runs of this job (repeatable)
        #[arg(long = "job", value_name = "JOB")]
        jobs: Vec<String>,
        /// At most this many runs
        #[arg(long)]
        limit: Option<u64>,
        #[arg(long, value_enum, default_value = "tabular")]
        format: ListFormat,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum ListFormat {
    Tabular,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum DumpFormat {
    Json,
    Yaml,
}

fn main() -> ExitCode {
    let args = compat_args(std::env::args_os().collect());
    // The supervisor starts for every run: skip building the whole command line.
    if args.len() == 3 && args[1] == dsari::exec::SUPERVISE_ARG {
        return ExitCode::from(supervise(PathBuf::from(&args[2])));
    }
    let cli = Cli::parse_from(args);
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("dsari: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Invoked as `dsari-daemon` (a symlink, as the Python tool was called), act as `dsari daemon`.
fn compat_args(mut args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let invoked = args
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if invoked == "dsari-daemon" {
        args.insert(1, "daemon".into());
    }
    args
}

fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Supervise { run_dir } => Ok(supervise(run_dir)),
        Command::Daemon {
            dir,
            fork,
            debug,
            once,
        } => {
            init_logging(debug);
            if fork {
                // Before any thread exists: forking a threaded process is unsafe.
                nix::unistd::daemon(true, true)
                    .map_err(|e| anyhow::anyhow!("cannot fork into the background: {e}"))?;
            }
            let code = dsari::daemon::run(dsari::daemon::Options {
                config_dir: dir.resolve(),
                once,
            })?;
            Ok(code.clamp(0, 255) as u8)
        }
        Command::Run {
            action:
                RunAction::List {
                    dir,
                    jobs,
                    limit,
                    format,
                },
        } => run_list(&dir.resolve(), &jobs, limit, format),
        Command::Config { action } => match action {
            ConfigAction::Check { dir } => config_check(&dir.resolve()),
            ConfigAction::Dump { dir, raw, format } => config_dump(&dir.resolve(), raw, format),
        },
    }
}

/// `dsari __supervise RUN_DIR`, or `-` for a spare that reads its run dir from stdin.
fn supervise(run_dir: PathBuf) -> u8 {
    let run_dir = if run_dir.as_os_str() == dsari::exec::SPARE_ARG {
        match dsari::exec::read_spare_run_dir() {
            Some(d) => d,
            None => return 0,
        }
    } else {
        run_dir
    };
    dsari::exec::supervise(&run_dir).clamp(0, 255) as u8
}

fn config_check(dir: &std::path::Path) -> anyhow::Result<u8> {
    match config::load(dir) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                eprintln!("warning: {w}");
            }
            println!(
                "{}: configuration is valid ({} jobs)",
                dir.display(),
                loaded.config.jobs.len()
            );
            Ok(0)
        }
        Err(e) => {
            print_config_error(&e);
            Ok(1)
        }
    }
}

fn print_config_error(e: &config::ConfigError) {
    for w in &e.warnings {
        eprintln!("warning: {w}");
    }
    for line in &e.errors {
        eprintln!("error: {line}");
    }
}

fn config_dump(dir: &std::path::Path, raw: bool, format: DumpFormat) -> anyhow::Result<u8> {
    let loaded = match config::load(dir) {
        Ok(l) => l,
        Err(e) => {
            print_config_error(&e);
            return Ok(1);
        }
    };
    let value = if raw {
        loaded.config.raw.clone()
    } else {
        loaded.config.to_json()
    };
    let text = match format {
        DumpFormat::Json => serde_json::to_string_pretty(&value)? + "\n",
        DumpFormat::Yaml => serde_saphyr::to_string(&value)?,
    };
    std::io::stdout().write_all(text.as_bytes())?;
    Ok(0)
}

fn run_list(
    dir: &std::path::Path,
    jobs: &[String],
    limit: Option<u64>,
    format: ListFormat,
) -> anyhow::Result<u8> {
    let loaded = config::load(dir).map_err(|e| anyhow::anyhow!("{e}"))?;
    let db = &loaded.config.database_file;
    if !db.exists() {
        anyhow::bail!(
            "no database at {} yet: start `dsari daemon` first",
            db.display()
        );
    }
    let store = dsari::store::Store::open_read_only(db)?;
    let runs = store.list_runs(jobs, limit)?;
    let mut out = std::io::stdout().lock();
    match format {
        ListFormat::Json => {
            let rows: Vec<serde_json::Value> = runs
                .iter()
                .map(|r| {
                    serde_json::json!({
                        "job_name": r.job_name,
                        "run_id": r.run_id,
                        "schedule_time": r.schedule_time,
                        "start_time": r.start_time,
                        "stop_time": r.stop_time,
                        "exit_code": r.exit_code,
                        "trigger_type": r.trigger_type,
                        "trigger_data": r.trigger_data,
                        "run_data": r.run_data,
                    })
                })
                .collect();
            writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
        }
        ListFormat::Tabular => {
            writeln!(
                out,
                "{:<20} {:<36} {:<8} {:>4} {:>9}",
                "JOB", "RUN", "TRIGGER", "EXIT", "SECONDS"
            )?;
            for r in &runs {
                writeln!(
                    out,
                    "{:<20} {:<36} {:<8} {:>4} {:>9.3}",
                    r.job_name,
                    r.run_id,
                    r.trigger_type,
                    r.exit_code.unwrap_or(-1),
                    r.stop_time.unwrap_or(r.start_time) - r.start_time
                )?;
            }
        }
    }
    Ok(0)
}

fn init_logging(debug: bool) {
    let default = if debug { "debug" } else { "info" };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default))
        .format_timestamp_millis()
        .format_target(false)
        .init();
}
