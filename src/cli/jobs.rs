//! `dsari job list`: the configured jobs with their schedule, next due time,
//! groups and last result.
//!
//! It works before the daemon ever ran: without a data dir or a database the
//! jobs are listed with no last result (and a note on stderr). A database that
//! is not a dsari one is still an error.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde_json::{Value, json};

use crate::config::{Config, Job};
use crate::store::RunRecord;
use crate::time::epoch_text;

use super::style::{self, Colour, Table};
use super::{Flavor, ListFormat};

/// What `dsari job list` was asked for.
#[derive(Debug, Clone)]
pub struct ListOptions {
    /// Only these jobs (all when empty); each must be configured.
    pub jobs: Vec<String>,
    pub format: ListFormat,
    pub flavor: Flavor,
}

/// One job as listed.
struct Row<'a> {
    job: &'a Job,
    next_due: Option<f64>,
    last: Option<RunRecord>,
    running: Vec<RunRecord>,
}

/// Print the jobs; exit status 0, or an error for an unknown `--job`.
pub fn list(config_dir: &Path, opts: &ListOptions) -> anyhow::Result<u8> {
    let config = super::load_config(config_dir)?;
    super::check_jobs(&config, &opts.jobs)?;
    let rows = collect(&config, &opts.jobs)?;
    let mut out = std::io::stdout().lock();
    match (opts.format, opts.flavor) {
        (ListFormat::Json | ListFormat::Yaml, Flavor::Dsari) => {
            let doc = Value::Array(rows.iter().map(row_json).collect());
            super::runs::write_document(&mut out, opts.format, &doc)?;
        }
        (ListFormat::Json | ListFormat::Yaml, Flavor::PythonInfo) => {
            let doc: serde_json::Map<String, Value> = rows
                .iter()
                .map(|r| (r.job.name.clone(), python_job(r)))
                .collect();
            super::runs::write_document(&mut out, opts.format, &Value::Object(doc))?;
        }
        (ListFormat::Tabular, Flavor::Dsari) => write_tabular(&mut out, &rows)?,
        (ListFormat::Tabular, Flavor::PythonInfo) => write_python_tabular(&mut out, &rows)?,
        (ListFormat::Pretty, _) => write_pretty(&mut out, &rows, style::colour_stdout())?,
    }
    Ok(0)
}

/// The rows, with last and running runs when there is a database to ask.
fn collect<'a>(config: &'a Config, only: &[String]) -> anyhow::Result<Vec<Row<'a>>> {
    let store = if config.database_file.is_file() {
        Some(super::open_store(config)?)
    } else {
        eprintln!(
            "note: no database at {} yet, so no last results (the daemon has not run with this configuration)",
            config.database_file.display()
        );
        None
    };
    let mut running: BTreeMap<String, Vec<RunRecord>> = BTreeMap::new();
    if let Some(s) = &store {
        for r in s.running_runs_matching(only, &[])? {
            running.entry(r.job_name.clone()).or_default().push(r);
        }
    }
    let now = crate::time::now();
    let mut rows = Vec::new();
    for job in config.jobs.values() {
        if !only.is_empty() && !only.contains(&job.name) {
            continue;
        }
        let last = match &store {
            Some(s) => s.last_run(&job.name)?,
            None => None,
        };
        rows.push(Row {
            job,
            next_due: crate::schedule::next_for_job(job, now),
            last,
            running: running.remove(&job.name).unwrap_or_default(),
        });
    }
    Ok(rows)
}

fn row_json(r: &Row<'_>) -> Value {
    let last = r.last.as_ref().map(|l| {
        json!({
            "run_id": l.run_id,
            "start_time": l.start_time,
            "stop_time": l.stop_time,
            "exit_code": l.exit_code,
        })
    });
    json!({
        "job_name": r.job.name,
        "command": r.job.command,
        "schedule": r.job.schedule,
        "schedule_timezone": r.job.schedule_timezone,
        "next_due": r.next_due,
        "concurrency_groups": r.job.concurrency_groups,
        "job_group": r.job.job_group,
        "concurrent_runs": r.job.concurrent_runs,
        "last_run": last,
        "running": r.running.iter().map(|x| x.run_id.clone()).collect::<Vec<_>>(),
    })
}

/// The Python `dsari-info job list --format json` entry of one job.
fn python_job(r: &Row<'_>) -> Value {
    let mut groups = r.job.concurrency_groups.clone();
    groups.sort();
    super::runs::sorted(&json!({
        "command": r.job.command,
        "command_append_run": r.job.command_append_run,
        "concurrency_groups": groups,
        "concurrent_runs": r.job.concurrent_runs,
        "environment": r.job.environment,
        "jenkins_environment": r.job.jenkins_environment,
        "job_group": r.job.job_group,
        "max_execution": r.job.max_execution,
        "max_execution_grace": r.job.max_execution_grace,
        "next_scheduled_run": r.next_due.map(style::python_iso),
        "render_reports": r.job.render_reports,
        "schedule": r.job.schedule,
    }))
}

/// Tab-separated with a header: times as epoch seconds, empty when unknown.
fn write_tabular(out: &mut dyn Write, rows: &[Row<'_>]) -> std::io::Result<()> {
    writeln!(
        out,
        "job_name\tschedule\tnext_due\tlast_run_id\tlast_exit_code\tlast_stop_time\trunning\tcommand"
    )?;
    for r in rows {
        let last = r.last.as_ref();
        writeln!(
            out,
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            r.job.name,
            r.job.schedule.as_deref().unwrap_or(""),
            r.next_due.map(epoch_text).unwrap_or_default(),
            last.map(|l| l.run_id.as_str()).unwrap_or(""),
            last.and_then(|l| l.exit_code)
                .map(|c| c.to_string())
                .unwrap_or_default(),
            last.and_then(|l| l.stop_time)
                .map(epoch_text)
                .unwrap_or_default(),
            r.running.len(),
            style::shell_join(&r.job.command).replace('\t', " "),
        )?;
    }
    Ok(())
}

/// The Python tool's lines: name, schedule, command, next run (ISO); no header.
fn write_python_tabular(out: &mut dyn Write, rows: &[Row<'_>]) -> std::io::Result<()> {
    for r in rows {
        writeln!(
            out,
            "{}\t{}\t{}\t{}",
            r.job.name,
            r.job.schedule.as_deref().unwrap_or(""),
            style::shell_join(&r.job.command),
            r.next_due.map(style::python_iso).unwrap_or_default(),
        )?;
    }
    Ok(())
}

fn write_pretty(out: &mut dyn Write, rows: &[Row<'_>], colour: bool) -> std::io::Result<()> {
    if rows.is_empty() {
        return writeln!(out, "no jobs configured");
    }
    let now = crate::time::now();
    let mut table = Table::new(vec![
        "JOB", "SCHEDULE", "NEXT DUE", "LAST RUN", "GROUPS", "COMMAND",
    ]);
    for r in rows {
        let last = match (&r.last, r.running.len()) {
            (_, n) if n > 0 => (format!("running ({n})"), Colour::Yellow),
            (Some(l), _) => {
                let (exit, c) = style::exit_cell(l.exit_code);
                let when = style::relative(l.stop_time.unwrap_or(l.start_time), now);
                (format!("exit {exit}, {when}"), c)
            }
            (None, _) => ("never".into(), Colour::Dim),
        };
        let mut groups = r.job.concurrency_groups.clone();
        if let Some(g) = &r.job.job_group {
            groups.push(format!("job_group:{g}"));
        }
        table.row(vec![
            (r.job.name.clone(), Colour::None),
            (
                r.job.schedule.clone().unwrap_or_else(|| "-".into()),
                Colour::None,
            ),
            (
                r.next_due
                    .map(style::local_time)
                    .unwrap_or_else(|| "-".into()),
                Colour::None,
            ),
            last,
            (
                if groups.is_empty() {
                    "-".into()
                } else {
                    groups.join(",")
                },
                Colour::None,
            ),
            (style::shell_join(&r.job.command), Colour::None),
        ]);
    }
    table.write(out, colour)
}
