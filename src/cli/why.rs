//! `dsari job why JOB`: what a job waits for, or why it did not run.
//!
//! Everything comes from what the daemon leaves behind — the database and the
//! data dir — so it answers while the daemon runs, after it stopped, and about
//! a daemon that is not running at all:
//!
//! - pending runs (`dsari_pending`) with their due time and what holds each:
//!   a future due time, the job's own running run (without `concurrent_runs`),
//!   or full concurrency groups and the runs occupying them. Which group a
//!   running run holds is not in the database; it is read from the run's spec
//!   in its run dir (`CONCURRENCY_GROUP`), and when that cannot be read, every
//!   running run of a job in the group is named as a possible occupant;
//! - trigger files waiting in `trigger/JOB/` or claimed in `.claimed/`, with
//!   their times (a file left unclaimed for long means no daemon is watching);
//! - the newest rejected trigger in `.rejected/` and its reason;
//! - a job with no schedule and nothing waiting: it runs only when triggered;
//! - the last run and its result.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::config::{Config, Job};
use crate::store::{PendingRecord, RunRecord, Store};

use super::style;

/// A trigger file unclaimed for longer than this is worth a warning.
const UNCLAIMED_WARNING: f64 = 5.0;

/// Explain one job; exit status 0, or an error for an unknown job or a missing database.
pub fn why(config_dir: &Path, job_name: &str) -> anyhow::Result<u8> {
    let config = super::load_config(config_dir)?;
    super::check_jobs(&config, &[job_name.to_string()])?;
    let Some(job) = config.jobs.get(job_name) else {
        return Ok(1);
    };
    let store = super::open_store(&config)?;
    let report = Explainer {
        config: &config,
        job,
        store: &store,
        now: crate::time::now(),
    }
    .explain()?;
    let mut out = std::io::stdout().lock();
    for line in report {
        writeln!(out, "{line}")?;
    }
    Ok(0)
}

/// Builds the lines of the explanation.
struct Explainer<'a> {
    config: &'a Config,
    job: &'a Job,
    store: &'a Store,
    now: f64,
}

/// A file in the trigger dir, with its modification time.
struct SeenFile {
    path: PathBuf,
    mtime: f64,
}

impl Explainer<'_> {
    fn explain(&self) -> anyhow::Result<Vec<String>> {
        let mut lines = Vec::new();
        let activity = self.store.job_activity(&self.job.name, f64::INFINITY)?;
        let all_running = self.store.running_runs_matching(&[], &[])?;
        lines.push(format!("job {}", self.job.name));
        lines.extend(self.setup());
        lines.push(String::new());
        lines.extend(self.running(&activity.running));
        lines.extend(self.pending(&activity.pending, &activity.running, &all_running));
        lines.push(String::new());
        let (files, any_file) = self.trigger_files();
        let nothing_waiting = !any_file && activity.pending.is_empty();
        lines.extend(files);
        lines.extend(self.rejected());
        if self.job.schedule.is_none() && nothing_waiting && activity.running.is_empty() {
            lines.push(format!(
                "no schedule and no trigger waiting: the job runs only when a trigger file appears in {} (`dsari trigger {}` writes one)",
                crate::daemon::job_trigger_dir(self.config, &self.job.name).display(),
                self.job.name
            ));
        }
        lines.extend(self.last_run()?);
        Ok(lines)
    }

    /// Schedule and concurrency settings.
    fn setup(&self) -> Vec<String> {
        let mut lines = Vec::new();
        match &self.job.schedule {
            None => lines.push("  schedule: none (trigger files only)".into()),
            Some(s) => {
                let zone = self
                    .job
                    .schedule_timezone
                    .as_deref()
                    .unwrap_or("local time");
                let next = crate::schedule::next_for_job(self.job, self.now)
                    .map(|t| {
                        format!(
                            "{} ({})",
                            style::local_time(t),
                            style::relative(t, self.now)
                        )
                    })
                    .unwrap_or_else(|| "not known to this command yet".into());
                lines.push(format!("  schedule: {s} ({zone}); next due: {next}"));
            }
        }
        let groups: Vec<String> = self
            .job
            .concurrency_groups
            .iter()
            .map(|g| format!("{g} (max {})", self.group_max(g)))
            .collect();
        lines.push(format!(
            "  concurrency groups: {}; concurrent runs: {}",
            if groups.is_empty() {
                "none".to_string()
            } else {
                groups.join(", ")
            },
            if self.job.concurrent_runs {
                "allowed"
            } else {
                "not allowed"
            }
        ));
        lines
    }

    fn running(&self, running: &[RunRecord]) -> Vec<String> {
        if running.is_empty() {
            return vec!["running: none".into()];
        }
        let mut lines = vec![format!("running: {}", running.len())];
        for r in running {
            let group = self
                .run_group(r)
                .map(|g| format!(", in group {g}"))
                .unwrap_or_default();
            lines.push(format!(
                "  run {} started {} ({}){group}",
                r.run_id,
                style::local_time(r.start_time),
                style::relative(r.start_time, self.now)
            ));
        }
        lines
    }

    fn pending(
        &self,
        pending: &[PendingRecord],
        own_running: &[RunRecord],
        all_running: &[RunRecord],
    ) -> Vec<String> {
        if pending.is_empty() {
            return vec!["pending: none".into()];
        }
        let mut lines = vec![format!("pending: {}", pending.len())];
        for p in pending {
            let coalesced = p
                .run_data
                .get("coalesced_triggers")
                .and_then(|v| v.as_array())
                .map(|a| format!(", carrying {} coalesced trigger(s)", a.len()))
                .unwrap_or_default();
            lines.push(format!(
                "  run {} ({}{coalesced}), due {} ({})",
                p.run_id,
                p.trigger_type,
                style::local_time(p.schedule_time),
                style::relative(p.schedule_time, self.now)
            ));
            let holds = self.holds(p, own_running, all_running);
            if holds.is_empty() {
                lines.push(
                    "    held by nothing: it should start at once; if it stays pending, the daemon is not running or cannot start runs (see its log)"
                        .into(),
                );
            }
            for h in holds {
                lines.push(format!("    held by: {h}"));
            }
        }
        lines
    }

    /// What keeps a pending run from starting now.
    fn holds(
        &self,
        p: &PendingRecord,
        own_running: &[RunRecord],
        all_running: &[RunRecord],
    ) -> Vec<String> {
        let mut holds = Vec::new();
        if p.schedule_time > self.now {
            holds.push(format!(
                "its due time, {} ({})",
                style::local_time(p.schedule_time),
                style::relative(p.schedule_time, self.now)
            ));
        }
        if !self.job.concurrent_runs
            && let Some(r) = own_running.first()
        {
            holds.push(format!(
                "the job's running run {} (started {}); the job does not allow concurrent runs",
                r.run_id,
                style::relative(r.start_time, self.now)
            ));
        }
        if self.job.concurrency_groups.is_empty() {
            return holds;
        }
        let full: Vec<String> = self
            .job
            .concurrency_groups
            .iter()
            .filter_map(|g| self.full_group(g, all_running))
            .collect();
        if full.len() == self.job.concurrency_groups.len() {
            holds.extend(full);
        }
        holds
    }

    /// "concurrency group G is full (max N): …" when it is.
    fn full_group(&self, group: &str, all_running: &[RunRecord]) -> Option<String> {
        let max = self.group_max(group) as usize;
        let mut sure = Vec::new();
        let mut maybe = Vec::new();
        for r in all_running {
            match self.run_group(r) {
                Some(g) if g == group => sure.push(r),
                Some(_) => {}
                None if self.job_in_group(&r.job_name, group) => maybe.push(r),
                None => {}
            }
        }
        if sure.len() + maybe.len() < max {
            return None;
        }
        let name = |r: &RunRecord| format!("run {} of job {}", r.run_id, r.job_name);
        let mut text = format!("concurrency group {group} is full (max {max})");
        if !sure.is_empty() {
            let list: Vec<String> = sure.iter().map(|r| name(r)).collect();
            text.push_str(&format!(": held by {}", list.join(", ")));
        }
        if !maybe.is_empty() {
            let list: Vec<String> = maybe.iter().map(|r| name(r)).collect();
            text.push_str(&format!(
                "{} running runs of jobs in that group (their group is not recorded): {}",
                if sure.is_empty() { ":" } else { ";" },
                list.join(", ")
            ));
        }
        Some(text)
    }

    fn group_max(&self, group: &str) -> u32 {
        self.config
            .concurrency_groups
            .get(group)
            .map(|g| g.max)
            .unwrap_or(1)
    }

    fn job_in_group(&self, job: &str, group: &str) -> bool {
        self.config
            .jobs
            .get(job)
            .is_some_and(|j| j.concurrency_groups.iter().any(|g| g == group))
    }

    /// The group a running run holds, as its supervisor wrote it down.
    fn run_group(&self, r: &RunRecord) -> Option<String> {
        let dir = crate::daemon::run_dir(self.config, &r.job_name, &r.run_id);
        match crate::exec::probe_supervisor(&dir) {
            crate::exec::SupervisorState::Alive { group, .. } => group,
            crate::exec::SupervisorState::Gone => crate::exec::spec_group(&dir),
        }
    }

    /// Trigger files waiting or claimed: the lines, and whether there is any.
    fn trigger_files(&self) -> (Vec<String>, bool) {
        let dir = crate::daemon::job_trigger_dir(self.config, &self.job.name);
        let waiting = files_in(&dir, crate::trigger::is_trigger_name);
        let claimed = files_in(&dir.join(crate::daemon::CLAIM_DIR), |n| !n.starts_with('.'));
        let mut lines = Vec::new();
        if let Some(newest) = waiting.last() {
            let oldest = &waiting[0];
            let mut line = format!(
                "trigger files waiting to be picked up: {} (newest {}, written {})",
                waiting.len(),
                newest.path.display(),
                style::relative(newest.mtime, self.now)
            );
            if self.now - oldest.mtime > UNCLAIMED_WARNING {
                line.push_str(&format!(
                    "; {} has waited {}: no daemon seems to be picking up triggers (is `dsari daemon -c {}` running?)",
                    oldest.path.display(),
                    style::duration(self.now - oldest.mtime),
                    self.config.config_dir.display()
                ));
            }
            lines.push(line);
        }
        if let Some(newest) = claimed.last() {
            lines.push(format!(
                "claimed trigger files whose run is being recorded: {} (newest {}, {})",
                claimed.len(),
                newest.path.display(),
                style::relative(newest.mtime, self.now)
            ));
        }
        let any = !lines.is_empty();
        if !any {
            lines.push(
                "trigger files waiting: none (a trigger file is removed once its run is recorded)"
                    .into(),
            );
        }
        (lines, any)
    }

    /// The newest rejection and its reason.
    fn rejected(&self) -> Vec<String> {
        let dir = crate::daemon::job_trigger_dir(self.config, &self.job.name)
            .join(crate::daemon::REJECTED_DIR);
        let errors = files_in(&dir, |n| n.ends_with(".error"));
        let Some(newest) = errors.last() else {
            return vec!["rejected triggers: none".into()];
        };
        let reason = fs::read_to_string(&newest.path)
            .map(|t| t.trim().replace('\n', " "))
            .unwrap_or_else(|e| format!("(cannot read {}: {e})", newest.path.display()));
        let file = newest.path.with_extension("");
        vec![format!(
            "last rejected trigger: {} ({}; {} in all): {reason}",
            file.display(),
            style::relative(newest.mtime, self.now),
            errors.len()
        )]
    }

    fn last_run(&self) -> anyhow::Result<Vec<String>> {
        let Some(r) = self.store.last_run(&self.job.name)? else {
            return Ok(vec!["last run: never".into()]);
        };
        let stop = r.stop_time.unwrap_or(r.start_time);
        let (exit, _) = style::exit_cell(r.exit_code);
        let mut line = format!(
            "last run: {} ({}), exit {exit}, finished {} ({}), took {}",
            r.run_id,
            r.trigger_type,
            style::local_time(stop),
            style::relative(stop, self.now),
            style::duration(stop - r.start_time)
        );
        if let Some(lost) = r.run_data.get("lost") {
            line.push_str(&format!("; lost: {lost}"));
        }
        Ok(vec![line])
    }
}

/// Regular files of a directory whose names pass `keep`, oldest first.
fn files_in(dir: &Path, keep: impl Fn(&str) -> bool) -> Vec<SeenFile> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<SeenFile> = rd
        .filter_map(Result::ok)
        .filter(|e| keep(&e.file_name().to_string_lossy()))
        .filter_map(|e| {
            let meta = fs::symlink_metadata(e.path()).ok()?;
            meta.is_file().then(|| SeenFile {
                path: e.path(),
                mtime: meta.modified().map(crate::time::to_epoch).unwrap_or(0.0),
            })
        })
        .collect();
    files.sort_by(|a, b| a.mtime.total_cmp(&b.mtime));
    files
}
