//! The commands people type: what each one reads, and how it prints it.
//!
//! One file per subcommand's work and output (`runs.rs` for `dsari run list`,
//! `why.rs` for `dsari job why`, …); `src/main.rs` only parses arguments and
//! calls in here. This module owns the shared pieces: loading the
//! configuration and opening the database for a reading command, the output
//! formats, and the one-line user errors.
//!
//! Reading commands never write: the database is opened read-only (so they
//! work while the daemon runs, and on a database the Python dsari still uses),
//! and nothing under the data dir is created or changed. The only commands
//! that write are `dsari trigger` (one trigger file, written atomically) and
//! `dsari manpages DIR` (into DIR).

pub mod config;
pub mod generate;
pub mod jobs;
pub mod output;
pub mod runs;
pub mod schedule;
pub mod style;
pub mod tail;
pub mod trigger;
pub mod wake;
pub mod why;

use std::path::Path;

use anyhow::{Context as _, bail};

use crate::config::Config;
use crate::store::Store;

/// How a listing is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListFormat {
    /// For people: aligned columns, local times, colour on a terminal.
    Pretty,
    /// For scripts: tab-separated, one header line.
    Tabular,
    /// One JSON document, times as epoch seconds.
    Json,
    /// The same document as YAML.
    Yaml,
}

/// Whose conventions an output follows: this `dsari`'s, or the Python
/// `dsari-info`'s (invoked through a `dsari-info` symlink), whose JSON is keyed
/// by id with ISO 8601 times and whose tabular output has no header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Dsari,
    PythonInfo,
}

/// Load the configuration for a command that only reads it. Its errors come out
/// as one line that names the first problem and says how to see them all.
pub fn load_config(config_dir: &Path) -> anyhow::Result<Config> {
    match crate::config::load(config_dir) {
        Ok(loaded) => Ok(loaded.config),
        Err(e) => {
            let first = e.errors.first().map(String::as_str).unwrap_or("invalid");
            let (what, more) = match e.errors.len() {
                0 | 1 => ("an error", "check it"),
                _ => ("errors", "see them all"),
            };
            bail!(
                "the configuration in {} has {what}: {first}; {more} with `dsari config check -c {}`",
                config_dir.display(),
                config_dir.display()
            )
        }
    }
}

/// Open the database read-only, after checking that the data dir and the
/// database exist and that the database is a dsari one (has `runs` and
/// `runs_running`). Every failure is one line that says what to do.
pub fn open_store(config: &Config) -> anyhow::Result<Store> {
    let data_dir = &config.data_dir;
    if !data_dir.is_dir() {
        bail!(
            "data dir {} does not exist: start `dsari daemon -c {}` once (it creates it), or fix `data_dir` in the configuration",
            data_dir.display(),
            config.config_dir.display()
        );
    }
    let db = &config.database_file;
    if !db.is_file() {
        bail!(
            "no database at {}: the daemon has not run with this configuration yet (start `dsari daemon -c {}`), or `database.file` points to the wrong place",
            db.display(),
            config.config_dir.display()
        );
    }
    let store = Store::open_read_only(db)
        .with_context(|| format!("cannot open the database {}", db.display()))?;
    let missing: Vec<&str> = ["runs", "runs_running"]
        .into_iter()
        .filter(|t| !matches!(store.has_table(t), Ok(true)))
        .collect();
    if !missing.is_empty() {
        // A file that is not SQLite at all fails the same check.
        let why = match store.has_table("runs") {
            Err(e) => format!("cannot read it ({})", root_cause(&e)),
            Ok(_) => format!("it has no table {}", missing.join(" or ")),
        };
        bail!(
            "{} is not a dsari database: {why}; check `database.file` in the configuration in {}",
            db.display(),
            config.config_dir.display()
        );
    }
    Ok(store)
}

/// Fail with a one-line message unless every name is a configured job.
pub fn check_jobs(config: &Config, jobs: &[String]) -> anyhow::Result<()> {
    for job in jobs {
        if !config.jobs.contains_key(job) {
            bail!("{}", unknown_job(config, job));
        }
    }
    Ok(())
}

/// "unknown job X: …" with the known names (a few) and what to do.
pub fn unknown_job(config: &Config, job: &str) -> String {
    let names: Vec<&str> = config.jobs.keys().map(String::as_str).collect();
    let known = match names.len() {
        0 => "the configuration defines no jobs".to_string(),
        n if n <= 8 => format!("configured jobs: {}", names.join(", ")),
        n => format!(
            "configured jobs: {}, … ({n} in all; `dsari job list` shows them)",
            names[..8].join(", ")
        ),
    };
    format!(
        "unknown job {job:?} in the configuration in {}: {known}",
        config.config_dir.display()
    )
}

/// The innermost error's text (SQLite's own words are the useful part).
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// Print a JSON value as one pretty document.
pub fn write_json(out: &mut dyn std::io::Write, value: &serde_json::Value) -> anyhow::Result<()> {
    serde_json::to_writer_pretty(&mut *out, value)?;
    writeln!(out)?;
    Ok(())
}

/// Print a JSON value as YAML.
pub fn write_yaml(out: &mut dyn std::io::Write, value: &serde_json::Value) -> anyhow::Result<()> {
    let text = serde_saphyr::to_string(value)?;
    out.write_all(text.as_bytes())?;
    Ok(())
}

/// Whether an error is only a closed stdout (`dsari run list | head`): not worth a message.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    let pipe = Some(std::io::ErrorKind::BrokenPipe);
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>().map(std::io::Error::kind) == pipe
            || c.downcast_ref::<serde_json::Error>()
                .and_then(serde_json::Error::io_error_kind)
                == pipe
    })
}
