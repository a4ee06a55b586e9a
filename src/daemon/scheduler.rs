//! The scheduler: which pending run starts when. A pure state machine.
//!
//! It holds pending runs, running runs and concurrency-group slots, and nothing
//! else: no clock (callers pass `now`), no threads, no files, no database, no
//! randomness of its own (callers pass `pick`). Every rule of SPEC §4.3, §5.4
//! and §7 lives here and is unit-tested without I/O; the daemon's event loop
//! persists and carries out what it decides.
//!
//! Pending runs are kept in a queue ordered by due time, so a wake-up looks only
//! at what is due (not at every job), and the counts of running runs per job and
//! per group are kept, so a start is decided in constant time.

use std::cmp::Ordering;
use std::collections::{BTreeSet, HashMap, HashSet};

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

/// A due time with a total order (for the queue).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Due(f64);

impl Eq for Due {}

impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Due {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// A run the scheduler has decided to start now.
#[derive(Debug, Clone, PartialEq)]
pub struct Start {
    pub run: PendingRecord,
    /// The concurrency group whose slot it takes.
    pub group: Option<String>,
    /// The job's schedule continues from this run's start (SPEC §5.4): the run
    /// was the scheduled one, or a trigger that replaced it.
    pub respawn: bool,
}

/// Pending runs, running runs and group slots.
#[derive(Debug, Default)]
pub struct Scheduler {
    jobs: HashMap<String, JobRules>,
    group_max: HashMap<String, u32>,
    /// Boxed: a record is ~250 bytes, and a table of 10,000 jobs' scheduled
    /// runs with its spare capacity would hold twice as many slots.
    pending: HashMap<String, Box<PendingRecord>>,
    /// Pending run ids by due time, then arrival (run ids are unique).
    queue: BTreeSet<(Due, u64, String)>,
    /// Arrival number of each pending run (its key in `queue`).
    arrival: HashMap<String, u64>,
    next_arrival: u64,
    /// Pending run ids per job, in arrival order.
    by_job: HashMap<String, Vec<String>>,
    /// Pending runs after whose start the job's schedule continues.
    respawn: HashSet<String>,
    running: HashMap<String, Running>,
    running_per_job: HashMap<String, usize>,
    running_per_group: HashMap<String, usize>,
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
        let old_id = self.by_job.get(&run.job_name)?.first()?;
        let old = self.pending.get(old_id)?;
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

    /// Add a pending run, removing the one it replaces (from [`Scheduler::coalesce`]);
    /// a run that replaces the scheduled run takes over its place in the schedule.
    pub fn insert(&mut self, run: PendingRecord, replaces: Option<&str>) {
        if let Some(old) = replaces
            && self.remove(old).is_some_and(|(_, respawn)| respawn)
        {
            self.respawn.insert(run.run_id.clone());
        }
        self.add(run);
    }

    /// Set a job's next scheduled run (or none), replacing its current one.
    /// Returns the run id it replaced, if any. When a trigger has taken over the
    /// scheduled run's place, that run stays and no other is added: the schedule
    /// resumes when it starts.
    pub fn schedule(&mut self, job_name: &str, next: Option<PendingRecord>) -> Option<String> {
        let carriers: Vec<String> = self
            .by_job
            .get(job_name)
            .into_iter()
            .flatten()
            .filter(|id| self.respawn.contains(*id))
            .cloned()
            .collect();
        let is_scheduled_run = |s: &Self, id: &String| {
            s.pending
                .get(id)
                .is_some_and(|p| p.trigger_type == "schedule")
        };
        let current = carriers
            .iter()
            .find(|id| is_scheduled_run(self, id))
            .cloned();
        if let Some(id) = &current {
            self.remove(id);
        }
        let taken_over = carriers
            .iter()
            .any(|id| !is_scheduled_run(self, id) && self.pending.contains_key(id));
        if let Some(run) = next
            && !taken_over
        {
            self.respawn.insert(run.run_id.clone());
            self.add(run);
        }
        current
    }

    fn add(&mut self, run: PendingRecord) {
        let n = self.next_arrival;
        self.next_arrival += 1;
        self.queue
            .insert((Due(run.schedule_time), n, run.run_id.clone()));
        self.arrival.insert(run.run_id.clone(), n);
        self.by_job
            .entry(run.job_name.clone())
            .or_default()
            .push(run.run_id.clone());
        self.pending.insert(run.run_id.clone(), Box::new(run));
    }

    /// Take a pending run out; returns it and whether it carried the schedule.
    fn remove(&mut self, run_id: &str) -> Option<(PendingRecord, bool)> {
        let run = *self.pending.remove(run_id)?;
        if let Some(n) = self.arrival.remove(run_id) {
            self.queue
                .remove(&(Due(run.schedule_time), n, run_id.to_string()));
        }
        if let Some(ids) = self.by_job.get_mut(&run.job_name) {
            ids.retain(|id| id != run_id);
            if ids.is_empty() {
                self.by_job.remove(&run.job_name);
            }
        }
        let respawn = self.respawn.remove(run_id);
        Some((run, respawn))
    }

    /// Runs that start now: due (`schedule_time <= now`), job configured, job not
    /// busy (unless `concurrent_runs`), and a free slot in one of its groups
    /// (picked with `pick(n)` among the `n` free ones). Oldest `schedule_time` first.
    pub fn due(&mut self, now: f64, pick: &mut dyn FnMut(usize) -> usize) -> Vec<Start> {
        let candidates: Vec<String> = self
            .queue
            .iter()
            .take_while(|(t, _, _)| t.0 <= now)
            .map(|(_, _, id)| id.clone())
            .collect();
        let mut starts = Vec::new();
        for id in candidates {
            let Some(run) = self.pending.get(&id) else {
                continue;
            };
            let Some(rules) = self.jobs.get(&run.job_name) else {
                continue;
            };
            if !rules.concurrent_runs
                && self
                    .running_per_job
                    .get(&run.job_name)
                    .copied()
                    .unwrap_or(0)
                    > 0
            {
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
            let Some((run, respawn)) = self.remove(&id) else {
                continue;
            };
            self.add_running(&run.run_id, &run.job_name, group.clone());
            starts.push(Start {
                run,
                group,
                respawn,
            });
        }
        starts
    }

    /// Put a run that could not be started back (e.g. the database was busy).
    pub fn unstart(&mut self, start: Start) {
        self.finished(&start.run.run_id);
        if start.respawn {
            self.respawn.insert(start.run.run_id.clone());
        }
        self.add(start.run);
    }

    /// Count a run that is already going (adopted after a restart).
    pub fn adopt(&mut self, run_id: &str, job_name: &str, group: Option<String>) {
        self.add_running(run_id, job_name, group);
    }

    fn add_running(&mut self, run_id: &str, job_name: &str, group: Option<String>) {
        *self
            .running_per_job
            .entry(job_name.to_string())
            .or_default() += 1;
        if let Some(g) = &group {
            *self.running_per_group.entry(g.clone()).or_default() += 1;
        }
        let running = Running {
            job_name: job_name.to_string(),
            group,
        };
        self.running.insert(run_id.to_string(), running);
    }

    /// A run ended: free its job and its group slot.
    pub fn finished(&mut self, run_id: &str) {
        let Some(r) = self.running.remove(run_id) else {
            return;
        };
        decrement(&mut self.running_per_job, &r.job_name);
        if let Some(g) = &r.group {
            decrement(&mut self.running_per_group, g);
        }
    }

    /// The earliest future due time of a pending run (runs that are due but held
    /// by a busy job or a full group need no wake-up: a run's end releases them).
    pub fn next_due(&self, now: f64) -> Option<f64> {
        self.queue
            .range((Due(now), u64::MAX, String::new())..)
            .map(|(t, _, _)| t.0)
            .find(|&t| t > now)
    }

    /// When to wake for the runs due after `now`: runs due within `accuracy`
    /// seconds of the first one share its wake-up, at the due time of the last
    /// of them. None starts before its time, none more than `accuracy` after
    /// it, and a run with no other due close after it starts at its time.
    pub fn next_wake(&self, now: f64, accuracy: f64) -> Option<f64> {
        let first = self.next_due(now)?;
        let last = self
            .queue
            .range((Due(first), 0, String::new())..)
            .map(|(t, _, _)| t.0)
            .take_while(|&t| t <= first + accuracy)
            .last();
        Some(last.unwrap_or(first))
    }

    /// Is any configured job's pending run due now?
    pub fn has_due(&self, now: f64) -> bool {
        self.queue
            .iter()
            .take_while(|(t, _, _)| t.0 <= now)
            .any(|(_, _, id)| {
                self.pending
                    .get(id)
                    .is_some_and(|p| self.jobs.contains_key(&p.job_name))
            })
    }

    /// A pending run by id.
    pub fn get(&self, run_id: &str) -> Option<&PendingRecord> {
        self.pending.get(run_id).map(|b| &**b)
    }

    /// Every pending run, oldest due first.
    pub fn pending(&self) -> impl Iterator<Item = &PendingRecord> {
        self.queue.iter().filter_map(|(_, _, id)| self.get(id))
    }

    /// A job's pending runs, in arrival order.
    pub fn pending_of(&self, job_name: &str) -> impl Iterator<Item = &PendingRecord> {
        self.by_job
            .get(job_name)
            .into_iter()
            .flatten()
            .filter_map(|id| self.get(id))
    }

    /// Number of pending runs.
    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// Does this pending run carry the job's schedule?
    pub fn is_scheduled(&self, run_id: &str) -> bool {
        self.respawn.contains(run_id)
    }

    /// Number of running runs.
    pub fn running_count(&self) -> usize {
        self.running.len()
    }

    /// The group a running run occupies.
    pub fn group_of(&self, run_id: &str) -> Option<&str> {
        self.running.get(run_id).and_then(|r| r.group.as_deref())
    }

    fn group_free(&self, group: &str) -> bool {
        let max = self.group_max.get(group).copied().unwrap_or(1);
        self.running_per_group.get(group).copied().unwrap_or(0) < max as usize
    }
}

fn decrement(counts: &mut HashMap<String, usize>, key: &str) {
    if let Some(n) = counts.get_mut(key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            counts.remove(key);
        }
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
            schedule_accuracy: 1.0,
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
        assert_eq!(s.pending_count(), 1);
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
        assert_eq!(s.pending_count(), 1, "its pending run is kept, not dropped");
    }

    fn scheduled(id: &str, job: &str, t: f64) -> PendingRecord {
        PendingRecord {
            run_id: id.into(),
            job_name: job.into(),
            schedule_time: t,
            trigger_type: "schedule".into(),
            trigger_data: json!({}),
            run_data: json!({}),
        }
    }

    #[test]
    fn a_trigger_replaces_the_scheduled_run_and_carries_the_schedule_on() {
        let mut s = Scheduler::new(&config(vec![job("a", false, &[])], &[]));
        s.schedule("a", Some(scheduled("s1", "a", 100.0)));
        add(&mut s, pending("t1", "a", 5.0, 1));
        assert_eq!(
            s.pending_count(),
            1,
            "the trigger replaced the scheduled run"
        );
        let starts = s.due(10.0, &mut |_| 0);
        assert_eq!(ids(&starts), ["t1"]);
        assert!(
            starts[0].respawn,
            "the schedule resumes after the triggered run"
        );
        assert!(
            starts[0].run.run_data.get("coalesced_triggers").is_none(),
            "a replaced scheduled run is not a trigger to remember"
        );
    }

    #[test]
    fn concurrent_jobs_keep_their_scheduled_run_beside_triggers() {
        let mut s = Scheduler::new(&config(vec![job("a", true, &[])], &[]));
        s.schedule("a", Some(scheduled("s1", "a", 8.0)));
        add(&mut s, pending("t1", "a", 5.0, 1));
        let starts = s.due(10.0, &mut |_| 0);
        assert_eq!(ids(&starts), ["t1", "s1"]);
        assert_eq!(
            starts.iter().map(|st| st.respawn).collect::<Vec<_>>(),
            [false, true]
        );
    }

    #[test]
    fn setting_the_schedule_replaces_only_the_scheduled_run() {
        let mut s = Scheduler::new(&config(vec![job("a", true, &[])], &[]));
        add(&mut s, pending("t1", "a", 50.0, 1));
        assert_eq!(s.schedule("a", Some(scheduled("s1", "a", 100.0))), None);
        assert_eq!(
            s.schedule("a", Some(scheduled("s2", "a", 200.0)))
                .as_deref(),
            Some("s1")
        );
        assert_eq!(s.next_due(0.0), Some(50.0));
        assert_eq!(
            s.pending().map(|p| p.run_id.as_str()).collect::<Vec<_>>(),
            ["t1", "s2"]
        );
        assert!(s.is_scheduled("s2") && !s.is_scheduled("t1"));
    }

    #[test]
    fn next_due_skips_due_but_held_runs() {
        let mut s = Scheduler::new(&config(
            vec![job("a", false, &[]), job("b", false, &[])],
            &[],
        ));
        add(&mut s, pending("a1", "a", 1.0, 1));
        assert_eq!(ids(&s.due(1.0, &mut |_| 0)), ["a1"]);
        add(&mut s, pending("a2", "a", 2.0, 2));
        add(&mut s, pending("b1", "b", 30.0, 3));
        assert_eq!(s.next_due(10.0), Some(30.0));
        assert!(s.has_due(10.0));
    }

    #[test]
    fn runs_due_within_the_accuracy_share_a_wake_up_and_none_waits_longer() {
        let jobs = ["a", "b", "c", "d"].map(|n| job(n, false, &[])).to_vec();
        let mut s = Scheduler::new(&config(jobs, &[]));
        s.schedule("a", Some(scheduled("a1", "a", 10.0)));
        assert_eq!(s.next_wake(0.0, 1.0), Some(10.0), "alone, on time");
        s.schedule("b", Some(scheduled("b1", "b", 10.6)));
        s.schedule("c", Some(scheduled("c1", "c", 11.2)));
        s.schedule("d", Some(scheduled("d1", "d", 13.0)));
        assert_eq!(
            s.next_wake(0.0, 0.0),
            Some(10.0),
            "accuracy 0: each at its time"
        );
        // c1 is 1.2 s after a1: waiting for it would make a1 late by more than 1 s.
        assert_eq!(s.next_wake(0.0, 1.0), Some(10.6));
        assert_eq!(ids(&s.due(10.6, &mut |_| 0)), ["a1", "b1"]);
        assert_eq!(s.next_wake(10.6, 1.0), Some(11.2));
        assert_eq!(s.next_wake(10.6, 2.0), Some(13.0));
        assert_eq!(ids(&s.due(11.2, &mut |_| 0)), ["c1"]);
        assert_eq!(s.next_wake(11.2, 1.0), Some(13.0));
        assert_eq!(s.next_wake(13.0, 1.0), None);
    }

    #[test]
    fn unstart_puts_the_run_back_with_its_schedule() {
        let mut s = Scheduler::new(&config(vec![job("a", false, &["g"])], &[("g", 1)]));
        s.schedule("a", Some(scheduled("s1", "a", 1.0)));
        let starts = s.due(1.0, &mut |_| 0);
        assert_eq!(s.running_count(), 1);
        s.unstart(starts.into_iter().next().unwrap());
        assert_eq!(
            s.running_count(),
            0,
            "its job and group slot are free again"
        );
        let again = s.due(1.0, &mut |_| 0);
        assert_eq!(ids(&again), ["s1"]);
        assert!(again[0].respawn);
    }

    #[test]
    fn rescheduling_never_drops_a_trigger_that_took_the_schedule_over() {
        let mut s = Scheduler::new(&config(vec![job("a", false, &[])], &[]));
        s.schedule("a", Some(scheduled("s1", "a", 100.0)));
        add(&mut s, pending("t1", "a", 50.0, 1));
        // A reload sets the schedule again: the trigger's run stays and carries it.
        s.schedule("a", Some(scheduled("s2", "a", 120.0)));
        assert_eq!(
            s.pending().map(|p| p.run_id.as_str()).collect::<Vec<_>>(),
            ["t1"]
        );
        let starts = s.due(60.0, &mut |_| 0);
        assert!(starts[0].respawn);
        // After it starts, the next scheduled run is set as usual.
        s.schedule("a", Some(scheduled("s3", "a", 200.0)));
        assert_eq!(s.next_due(60.0), Some(200.0));
    }
}
