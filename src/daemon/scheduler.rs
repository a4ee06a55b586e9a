//! The scheduler: which pending run starts when. A pure state machine.
//!
//! It holds pending runs, running runs and concurrency-group slots, and nothing
//! else: no clock (callers pass `now`), no threads, no files, no database, no
//! randomness of its own (callers pass `pick`). Every rule of SPEC §4.3 and §7
//! lives here and is unit-tested without I/O; the daemon's event loop persists
//! and carries out what it decides.

use std::collections::HashMap;

use serde_json::{Value, json};

use crate::config::Config;
use crate::store::PendingRecord;

/// What the scheduler needs to know of a job.
#[derive(Debug, Clone, PartialEq)]
struct JobRules {
    concurrent_runs: bool,
    groups: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
struct Running {
    job_name: String,
    group: Option<String>,
}

/// A run the scheduler has decided to start now.
#[derive(Debug, Clone, PartialEq)]
pub struct Start {
    pub run: PendingRecord,
    /// The concurrency group whose slot it takes.
    pub group: Option<String>,
}

/// Pending runs, running runs and group slots.
#[derive(Debug, Default)]
pub struct Scheduler {
    jobs: HashMap<String, JobRules>,
    group_max: HashMap<String, u32>,
    pending: Vec<PendingRecord>,
    running: HashMap<String, Running>,
}

impl Scheduler {
    /// A scheduler for the jobs and groups of `config`.
    pub fn new(config: &Config) -> Scheduler {
        let mut s = Scheduler::default();
        s.configure(config);
        s
    }

    /// Take a new configuration (SIGHUP). Running runs keep their group slot until
    /// they end; pending runs of jobs that disappeared stay pending but never start.
    pub fn configure(&mut self, config: &Config) {
        self.jobs = config
            .jobs
            .values()
            .map(|j| {
                let rules = JobRules {
                    concurrent_runs: j.concurrent_runs,
                    groups: j.concurrency_groups.clone(),
                };
                (j.name.clone(), rules)
            })
            .collect();
        self.group_max = config
            .concurrency_groups
            .values()
            .map(|g| (g.name.clone(), g.max.max(1)))
            .collect();
    }

    /// Prepare a new pending run for insertion: for a job without
    /// `concurrent_runs` that already has a pending run, the new one replaces it
    /// and inherits its triggers in `run_data.coalesced_triggers` (SPEC §4.3).
    /// Returns the run id it replaces. Changes nothing until [`Scheduler::insert`].
    pub fn coalesce(&self, run: &mut PendingRecord) -> Option<String> {
        if self
            .jobs
            .get(&run.job_name)
            .is_some_and(|j| j.concurrent_runs)
        {
            return None;
        }
        let old = self.pending.iter().find(|p| p.job_name == run.job_name)?;
        let mut coalesced: Vec<Value> = old
            .run_data
            .get("coalesced_triggers")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if old.trigger_type == "file" {
            coalesced.push(old.trigger_data.clone());
        }
        if !coalesced.is_empty() {
            if !run.run_data.is_object() {
                run.run_data = json!({});
            }
            run.run_data["coalesced_triggers"] = Value::Array(coalesced);
        }
        Some(old.run_id.clone())
    }

    /// Add a pending run, removing the one it replaces (from [`Scheduler::coalesce`]).
    pub fn insert(&mut self, run: PendingRecord, replaces: Option<&str>) {
        if let Some(old) = replaces {
            self.pending.retain(|p| p.run_id != old);
        }
        self.pending.push(run);
    }

    /// Runs that start now: due (`schedule_time <= now`), job configured, job not
    /// busy (unless `concurrent_runs`), and a free slot in one of its groups
    /// (picked with `pick(n)` among the `n` free ones). Oldest `schedule_time` first.
    pub fn due(&mut self, now: f64, pick: &mut dyn FnMut(usize) -> usize) -> Vec<Start> {
        let mut order: Vec<usize> = (0..self.pending.len())
            .filter(|&i| self.pending[i].schedule_time <= now)
            .collect();
        order.sort_by(|&a, &b| {
            self.pending[a]
                .schedule_time
                .total_cmp(&self.pending[b].schedule_time)
        });
        let mut started = Vec::new();
        for i in order {
            let run = &self.pending[i];
            let Some(rules) = self.jobs.get(&run.job_name) else {
                continue;
            };
            if !rules.concurrent_runs && self.job_running(&run.job_name) {
                continue;
            }
            let group = if rules.groups.is_empty() {
                None
            } else {
                let free: Vec<&String> =
                    rules.groups.iter().filter(|g| self.group_free(g)).collect();
                if free.is_empty() {
                    continue;
                }
                Some(free[pick(free.len()).min(free.len() - 1)].clone())
            };
            self.running.insert(
                run.run_id.clone(),
                Running {
                    job_name: run.job_name.clone(),
                    group: group.clone(),
                },
            );
            started.push(i);
        }
        let mut starts = Vec::new();
        started.sort_unstable();
        for i in started.into_iter().rev() {
            let run = self.pending.remove(i);
            let group = self.running.get(&run.run_id).and_then(|r| r.group.clone());
            starts.push(Start { run, group });
        }
        starts.sort_by(|a, b| a.run.schedule_time.total_cmp(&b.run.schedule_time));
        starts
    }

    /// Put a run that could not be started back (e.g. the database was busy).
    pub fn unstart(&mut self, start: Start) {
        self.running.remove(&start.run.run_id);
        self.pending.push(start.run);
    }

    /// Count a run that is already going (adopted after a restart).
    pub fn adopt(&mut self, run_id: &str, job_name: &str, group: Option<String>) {
        self.running.insert(
            run_id.to_string(),
            Running {
                job_name: job_name.to_string(),
                group,
            },
        );
    }

    /// A run ended: free its job and its group slot.
    pub fn finished(&mut self, run_id: &str) {
        self.running.remove(run_id);
    }

    /// The earliest future due time of a pending run (runs that are due but held
    /// by a busy job or a full group need no wake-up: a run's end releases them).
    pub fn next_due(&self, now: f64) -> Option<f64> {
        self.pending
            .iter()
            .map(|p| p.schedule_time)
            .filter(|&t| t > now)
            .min_by(f64::total_cmp)
    }

    /// Is any configured job's pending run due now and startable?
    pub fn has_due(&self, now: f64) -> bool {
        self.pending
            .iter()
            .any(|p| p.schedule_time <= now && self.jobs.contains_key(&p.job_name))
    }

    /// Pending runs, in no particular order.
    pub fn pending(&self) -> &[PendingRecord] {
        &self.pending
    }

    /// Number of running runs.
    pub fn running_count(&self) -> usize {
        self.running.len()
    }

    /// The group a running run occupies.
    pub fn group_of(&self, run_id: &str) -> Option<&str> {
        self.running.get(run_id).and_then(|r| r.group.as_deref())
    }

    fn job_running(&self, job: &str) -> bool {
        self.running.values().any(|r| r.job_name == job)
    }

    fn group_free(&self, group: &str) -> bool {
        let max = self.group_max.get(group).copied().unwrap_or(1);
        let used = self
            .running
            .values()
            .filter(|r| r.group.as_deref() == Some(group))
            .count();
        used < max as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ConcurrencyGroup, Job};
    use std::collections::BTreeMap;

    fn job(name: &str, concurrent: bool, groups: &[&str]) -> Job {
        Job {
            name: name.into(),
            command: vec!["true".into()],
            command_append_run: false,
            schedule: None,
            schedule_timezone: None,
            environment: BTreeMap::new(),
            max_execution: None,
            max_execution_grace: 60.0,
            concurrency_groups: groups.iter().map(|g| g.to_string()).collect(),
            concurrent_runs: concurrent,
            render_reports: true,
            jenkins_environment: false,
            job_group: None,
            trigger_environment_allow: None,
        }
    }

    fn config(jobs: Vec<Job>, groups: &[(&str, u32)]) -> Config {
        Config {
            config_dir: "/c".into(),
            data_dir: "/d".into(),
            database_file: "/d/dsari.sqlite3".into(),
            environment: BTreeMap::new(),
            shutdown_kill_runs: false,
            shutdown_kill_grace: None,
            template_dir: None,
            report_html_gz: false,
            report_run_output_start: 0,
            report_run_output_end: 0,
            trigger_max_bytes: 1 << 20,
            idempotency_window: 86400.0,
            concurrency_groups: groups
                .iter()
                .map(|(n, m)| {
                    (
                        n.to_string(),
                        ConcurrencyGroup {
                            name: n.to_string(),
                            max: *m,
                        },
                    )
                })
                .collect(),
            jobs: jobs.into_iter().map(|j| (j.name.clone(), j)).collect(),
            raw: json!({}),
        }
    }

    fn pending(id: &str, job: &str, t: f64, marker: i64) -> PendingRecord {
        PendingRecord {
            run_id: id.into(),
            job_name: job.into(),
            schedule_time: t,
            trigger_type: "file".into(),
            trigger_data: json!({ "m": marker }),
            run_data: json!({}),
        }
    }

    fn add(s: &mut Scheduler, mut p: PendingRecord) {
        let old = s.coalesce(&mut p);
        s.insert(p, old.as_deref());
    }

    fn ids(starts: &[Start]) -> Vec<&str> {
        starts.iter().map(|s| s.run.run_id.as_str()).collect()
    }

    #[test]
    fn triggers_coalesce_in_arrival_order() {
        let mut s = Scheduler::new(&config(vec![job("a", false, &[])], &[]));
        add(&mut s, pending("1", "a", 1.0, 1));
        add(&mut s, pending("2", "a", 2.0, 2));
        add(&mut s, pending("3", "a", 3.0, 3));
        assert_eq!(s.pending().len(), 1);
        let starts = s.due(10.0, &mut |_| 0);
        assert_eq!(ids(&starts), ["3"]);
        assert_eq!(
            starts[0].run.run_data["coalesced_triggers"],
            json!([{ "m": 1 }, { "m": 2 }])
        );
    }

    #[test]
    fn concurrent_jobs_get_one_run_per_trigger() {
        let mut s = Scheduler::new(&config(vec![job("a", true, &[])], &[]));
        for i in 0..3 {
            add(&mut s, pending(&i.to_string(), "a", 1.0 + i as f64, i));
        }
        assert_eq!(ids(&s.due(10.0, &mut |_| 0)), ["0", "1", "2"]);
    }

    #[test]
    fn a_busy_job_waits_and_starts_on_finish() {
        let mut s = Scheduler::new(&config(vec![job("a", false, &[])], &[]));
        add(&mut s, pending("1", "a", 1.0, 1));
        assert_eq!(ids(&s.due(1.0, &mut |_| 0)), ["1"]);
        add(&mut s, pending("2", "a", 2.0, 2));
        assert!(
            s.due(5.0, &mut |_| 0).is_empty(),
            "no two runs of a job at once"
        );
        assert_eq!(s.next_due(5.0), None, "a held run needs no timer");
        s.finished("1");
        assert_eq!(ids(&s.due(5.0, &mut |_| 0)), ["2"]);
    }

    #[test]
    fn future_runs_wait_for_their_time() {
        let mut s = Scheduler::new(&config(vec![job("a", true, &[])], &[]));
        add(&mut s, pending("1", "a", 100.0, 1));
        assert!(s.due(50.0, &mut |_| 0).is_empty());
        assert_eq!(s.next_due(50.0), Some(100.0));
        assert_eq!(ids(&s.due(100.0, &mut |_| 0)), ["1"]);
    }

    #[test]
    fn groups_hold_runs_and_release_oldest_first() {
        let jobs = vec![
            job("a", false, &["g"]),
            job("b", false, &["g"]),
            job("c", false, &["g"]),
        ];
        let mut s = Scheduler::new(&config(jobs, &[("g", 2)]));
        add(&mut s, pending("a1", "a", 1.0, 1));
        add(&mut s, pending("b1", "b", 2.0, 2));
        add(&mut s, pending("c1", "c", 3.0, 3));
        let first = s.due(10.0, &mut |_| 0);
        assert_eq!(ids(&first), ["a1", "b1"]);
        assert!(first.iter().all(|st| st.group.as_deref() == Some("g")));
        assert!(s.due(10.0, &mut |_| 0).is_empty());
        s.finished("b1");
        assert_eq!(ids(&s.due(10.0, &mut |_| 0)), ["c1"]);
    }

    #[test]
    fn undefined_group_has_one_slot_and_pick_chooses_among_free() {
        let jobs = vec![job("a", true, &["x", "y"])];
        let mut s = Scheduler::new(&config(jobs, &[]));
        for i in 0..3 {
            add(&mut s, pending(&i.to_string(), "a", i as f64, i));
        }
        let starts = s.due(10.0, &mut |n| n - 1);
        assert_eq!(ids(&starts), ["0", "1"]);
        assert_eq!(starts[0].group.as_deref(), Some("y"));
        assert_eq!(starts[1].group.as_deref(), Some("x"));
    }

    #[test]
    fn removed_jobs_get_no_new_runs() {
        let mut s = Scheduler::new(&config(vec![job("a", false, &[])], &[]));
        add(&mut s, pending("1", "a", 1.0, 1));
        s.configure(&config(vec![], &[]));
        assert!(s.due(10.0, &mut |_| 0).is_empty());
        assert_eq!(s.pending().len(), 1, "its pending run is kept, not dropped");
    }
}
