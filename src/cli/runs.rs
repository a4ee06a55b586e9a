//! `dsari run list`: recorded runs, newest first.
//!
//! Running runs come first (newest start first), then finished runs (newest
//! stop first); `--limit` counts both. With one `--job` and a `--limit` the
//! finished part is a backwards walk of the `(job_name, stop_time)` index, so
//! it costs the same at a thousand rows or a million.

use std::io::Write;
use std::path::Path;

use anyhow::bail;
use serde_json::{Map, Value, json};

use crate::store::{RunRecord, Store};
use crate::time::epoch_text;

use super::style::{self, Colour, Table};
use super::{Flavor, ListFormat};

/// What `dsari run list` was asked for.
#[derive(Debug, Clone)]
pub struct ListOptions {
    /// Only these jobs (all when empty).
    pub jobs: Vec<String>,
    /// Only run ids starting with one of these (all when empty).
    pub runs: Vec<String>,
    /// Only running runs.
    pub running_only: bool,
    /// At most this many runs.
    pub limit: Option<u64>,
    pub format: ListFormat,
    pub flavor: Flavor,
}

/// Print the runs that match; exit status 0, or an error for an unknown job or
/// a run id prefix that matches nothing.
pub fn list(config_dir: &Path, opts: &ListOptions) -> anyhow::Result<u8> {
    let config = super::load_config(config_dir)?;
    let store = super::open_store(&config)?;
    for job in &opts.jobs {
        // A job removed from the configuration still has its runs listed.
        if !config.jobs.contains_key(job) && store.last_run(job)?.is_none() {
            bail!(
                "{}, and no runs of it are recorded",
                super::unknown_job(&config, job)
            );
        }
    }
    let prefixes: Vec<String> = opts.runs.iter().map(|r| r.trim().to_lowercase()).collect();
    let runs = select(&store, &opts.jobs, &prefixes, opts.running_only, opts.limit)?;
    if runs.is_empty() && !prefixes.is_empty() {
        bail!(
            "no {}run has an id starting with {} (pending runs: `dsari job why JOB`)",
            if opts.running_only { "running " } else { "" },
            prefixes.join(" or ")
        );
    }
    let mut out = std::io::stdout().lock();
    match (opts.format, opts.flavor) {
        (ListFormat::Json | ListFormat::Yaml, Flavor::PythonInfo) => {
            let doc = python_document(&runs);
            write_document(&mut out, opts.format, &doc)?
        }
        (ListFormat::Json | ListFormat::Yaml, Flavor::Dsari) => {
            let doc = Value::Array(runs.iter().map(run_json).collect());
            write_document(&mut out, opts.format, &doc)?
        }
        (ListFormat::Tabular, Flavor::PythonInfo) => write_python_tabular(&mut out, &runs)?,
        (ListFormat::Tabular, Flavor::Dsari) => write_tabular(&mut out, &runs)?,
        (ListFormat::Pretty, _) => write_pretty(&mut out, &runs, style::colour_stdout())?,
    }
    Ok(0)
}

/// Running runs first, then finished ones, `limit` in all.
fn select(
    store: &Store,
    jobs: &[String],
    prefixes: &[String],
    running_only: bool,
    limit: Option<u64>,
) -> anyhow::Result<Vec<RunRecord>> {
    let mut runs = store.running_runs_matching(jobs, prefixes)?;
    if let Some(n) = limit {
        runs.truncate(usize::try_from(n).unwrap_or(usize::MAX));
    }
    if !running_only {
        let left = limit.map(|n| n.saturating_sub(runs.len() as u64));
        if left != Some(0) {
            runs.extend(store.finished_runs(jobs, prefixes, left)?);
        }
    }
    Ok(runs)
}

/// One run with every column of SPEC §3; times as epoch seconds; `stop_time`
/// and `exit_code` are null while it runs.
pub fn run_json(r: &RunRecord) -> Value {
    json!({
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
}

/// The Python `dsari-info run list --format json` document: an object keyed by
/// run id, ISO 8601 local times, keys sorted.
fn python_document(runs: &[RunRecord]) -> Value {
    let mut by_id: Vec<(&str, Value)> = runs
        .iter()
        .map(|r| {
            let v = json!({
                "exit_code": r.exit_code,
                "job_name": r.job_name,
                "run_data": sorted(&r.run_data),
                "schedule_time": style::python_iso(r.schedule_time),
                "start_time": style::python_iso(r.start_time),
                "stop_time": r.stop_time.map(style::python_iso),
                "trigger_data": sorted(&r.trigger_data),
                "trigger_type": r.trigger_type,
            });
            (r.run_id.as_str(), v)
        })
        .collect();
    by_id.sort_by(|a, b| a.0.cmp(b.0));
    Value::Object(by_id.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

/// A JSON value with every object's keys sorted (Python's `sort_keys=True`).
pub fn sorted(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let out: Map<String, Value> = keys
                .into_iter()
                .map(|k| (k.clone(), sorted(&m[k])))
                .collect();
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

/// A listing's document as pretty JSON or as YAML.
pub fn write_document(out: &mut dyn Write, format: ListFormat, doc: &Value) -> anyhow::Result<()> {
    match format {
        ListFormat::Yaml => super::write_yaml(out, doc),
        _ => super::write_json(out, doc),
    }
}

/// Tab-separated with a header; times as epoch seconds; empty while running.
fn write_tabular(out: &mut dyn Write, runs: &[RunRecord]) -> std::io::Result<()> {
    writeln!(
        out,
        "job_name\trun_id\tschedule_time\tstart_time\tstop_time\texit_code\ttrigger_type"
    )?;
    for r in runs {
        writeln!(
            out,
            "{}\t{}\t{}\t{}\t{}\t{}\t{}",
            r.job_name,
            r.run_id,
            epoch_text(r.schedule_time),
            epoch_text(r.start_time),
            r.stop_time.map(epoch_text).unwrap_or_default(),
            r.exit_code.map(|c| c.to_string()).unwrap_or_default(),
            r.trigger_type
        )?;
    }
    Ok(())
}

/// The Python tool's tabular lines: no header, oldest start first, ISO times.
fn write_python_tabular(out: &mut dyn Write, runs: &[RunRecord]) -> std::io::Result<()> {
    let mut by_start: Vec<&RunRecord> = runs.iter().collect();
    by_start.sort_by(|a, b| a.start_time.total_cmp(&b.start_time));
    for r in by_start {
        writeln!(
            out,
            "{}\t{}\t{}\t{}\t{}\t{}\t{}",
            r.run_id,
            r.job_name,
            r.exit_code.map(|c| c.to_string()).unwrap_or_default(),
            r.trigger_type,
            style::python_iso(r.schedule_time),
            style::python_iso(r.start_time),
            r.stop_time.map(style::python_iso).unwrap_or_default(),
        )?;
    }
    Ok(())
}

/// Aligned columns for people.
fn write_pretty(out: &mut dyn Write, runs: &[RunRecord], colour: bool) -> std::io::Result<()> {
    if runs.is_empty() {
        return writeln!(out, "no runs recorded");
    }
    let now = crate::time::now();
    let mut table = Table::new(vec![
        "RUN", "JOB", "EXIT", "STARTED", "DURATION", "TRIGGER", "DELAY",
    ]);
    for r in runs {
        let (duration, dcol) = match r.stop_time {
            Some(stop) => (style::duration(stop - r.start_time), Colour::None),
            None => (style::duration(now - r.start_time), Colour::Yellow),
        };
        table.row(vec![
            (style::short_id(&r.run_id).to_string(), Colour::Dim),
            (r.job_name.clone(), Colour::None),
            style::exit_cell(r.exit_code),
            (style::local_time(r.start_time), Colour::None),
            (duration, dcol),
            (r.trigger_type.clone(), Colour::None),
            (
                style::duration(r.start_time - r.schedule_time),
                Colour::None,
            ),
        ]);
    }
    table.write(out, colour)
}
