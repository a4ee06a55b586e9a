//! The daemon: one event loop that turns trigger files into runs and records them.
//!
//! Threads that each block on one thing (inotify, signals, one waiter per
//! supervisor) send [`Event`]s into one channel; the loop owns all state and
//! blocks in `recv_timeout` until the next due time. It never polls: when idle,
//! the only timer is the 60-second safety rescan (SPEC §8, §11.6).

pub mod scheduler;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::time::Duration;

use inotify::{EventMask, WatchDescriptor};
use log::{debug, error, info, warn};
use serde_json::{Value, json};

use crate::config::{self, Config, Job};
use crate::exec::{self, RunContext, RunSpec};
use crate::store::{PendingRecord, PreviousRun, PreviousRuns, RunRecord, Store};
use crate::trigger::{self, Outcome};
use crate::watch::{FsEvent, Watcher};
use scheduler::Scheduler;

/// Seconds between safety rescans of every trigger directory.
pub const RESCAN_INTERVAL: f64 = 60.0;
/// Seconds before retrying a database write that failed.
const DB_RETRY: f64 = 1.0;

/// How the daemon was asked to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub config_dir: PathBuf,
    /// Run what is due now, wait for it, print the runs, exit.
    pub once: bool,
}

/// Something that happened, sent to the event loop.
#[derive(Debug)]
pub enum Event {
    Fs(FsEvent),
    Signal(i32),
    /// The supervisor of this run has exited.
    Exited(String),
    /// News from the launcher about the runs it started.
    Launch(exec::LaunchEvent),
}

/// A job's schedule, parsed: `None` when it has none. The configuration was
/// validated when loaded (every schedule parsed and checked), so this is
/// [`crate::schedule::Schedule::parse_again`].
fn job_schedule(
    job: &Job,
) -> Option<Result<crate::schedule::Schedule, crate::schedule::ScheduleError>> {
    let expr = job.schedule.as_deref()?;
    let zone = job
        .schedule_timezone
        .as_deref()
        .and_then(|z| z.parse().ok());
    Some(crate::schedule::Schedule::parse_again(
        expr, &job.name, zone,
    ))
}

/// How old a trigger directory's mtime must be, when it is read, for the
/// safety rescan to trust it (see [`Daemon::scan_job_dir`]).
const SETTLE_NS: i128 = 100_000_000;

/// A file's mtime in epoch nanoseconds.
fn mtime_ns(m: &std::fs::Metadata) -> i128 {
    use std::os::unix::fs::MetadataExt;
    epoch_ns(m.mtime(), m.mtime_nsec())
}

/// A file time given as seconds and nanoseconds, in epoch nanoseconds.
fn epoch_ns(secs: i64, nsecs: i64) -> i128 {
    i128::from(secs) * 1_000_000_000 + i128::from(nsecs)
}

/// Directory mtimes (epoch ns) before this are settled when read at `now`
/// (epoch seconds).
fn settled_before(now: f64) -> i128 {
    (now * 1e9) as i128 - SETTLE_NS
}

/// Seconds between safety rescans: [`RESCAN_INTERVAL`]; debug builds take
/// `DSARI_TEST_RESCAN_INTERVAL` (tests cannot wait a minute).
fn rescan_interval() -> f64 {
    #[cfg(debug_assertions)]
    if let Some(s) = std::env::var("DSARI_TEST_RESCAN_INTERVAL")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|s| *s > 0.0)
    {
        return s;
    }
    RESCAN_INTERVAL
}

/// Jobs whose PREVIOUS_* runs are kept in memory at most.
const PREVIOUS_CACHE: usize = 512;

/// Run the daemon until it is told to stop; returns the process exit code.
pub fn run(opts: Options) -> anyhow::Result<i32> {
    let loaded = config::load(&opts.config_dir).map_err(|e| {
        anyhow::anyhow!(
            "{e}\nfix the configuration in {} and start again",
            opts.config_dir.display()
        )
    })?;
    for w in &loaded.warnings {
        warn!("{w}");
    }
    let mut config = loaded.config;
    // The merged files as read are only for `config dump --raw`.
    config.raw = Value::Null;
    let mut daemon = Daemon::new(config, opts)?;
    daemon.start()?;
    Ok(daemon.event_loop())
}

/// A run in progress.
struct ActiveRun {
    record: RunRecord,
    run_dir: PathBuf,
    /// The supervisor's pid; 0 until the launcher has reported it.
    pid: u32,
}

/// A watched job trigger dir, and what the periodic rescan last found there.
struct JobWatch {
    wd: WatchDescriptor,
    /// The dir's mtime (ns) when it was last read, if it was then old enough
    /// to trust: an unchanged mtime means unchanged entries.
    settled_mtime: Option<i128>,
}

#[derive(Debug, Clone, PartialEq)]
enum WatchTarget {
    Root,
    Job(String),
}

struct Shutdown {
    /// When to SIGKILL what is left (`shutdown_kill_grace`).
    kill_at: Option<f64>,
}

struct Daemon {
    opts: Options,
    config: Config,
    store: Store,
    scheduler: Scheduler,
    tx: Sender<Event>,
    rx: Receiver<Event>,
    watcher: Option<Watcher>,
    watch_targets: HashMap<WatchDescriptor, WatchTarget>,
    job_watches: HashMap<String, JobWatch>,
    root_watched: bool,
    /// The trigger root's mtime when the rescan last listed it, if settled then:
    /// unchanged, it holds no new directory to warn about.
    root_settled_mtime: Option<i128>,
    running: HashMap<String, ActiveRun>,
    /// Young trigger files that did not parse yet: retry at the time given.
    retries: HashMap<PathBuf, (String, f64)>,
    /// Finished runs not yet in `runs`: recorded together at the end of the loop turn
    /// (and kept, and retried, while the database fails).
    unrecorded: Vec<RunRecord>,
    /// Pending runs not yet in the database, with the claimed trigger files that
    /// hold them meanwhile (removed once the run is durably recorded).
    unsaved: HashMap<String, Vec<PathBuf>>,
    /// Pending rows in the database that replaced pending runs made obsolete.
    obsolete: Vec<String>,
    /// Latest / good / bad finished run per job, for the PREVIOUS_* variables.
    previous: HashMap<String, PreviousRuns>,
    /// When to try again to start runs / record runs after a database failure.
    db_retry_at: Option<f64>,
    /// The database failed and this was logged (log once, not in a loop).
    db_failing: bool,
    warned_dirs: HashSet<String>,
    next_rescan: f64,
    shutdown: Option<Shutdown>,
    exe: PathBuf,
    daemon_path: Option<String>,
    user: Option<(String, String)>,
    /// Runs recorded by this process (for `--once`).
    recorded: Vec<RunRecord>,
    /// The process that forks run supervisors (see [`exec::Launcher`]).
    launcher: Option<exec::Launcher>,
    /// Counts launchers started, to tell the current one's end from an old one's.
    launcher_generation: u64,
    /// No new launcher before this time (one could not be started).
    launcher_retry_at: f64,
    /// Parsed schedules worth keeping (random `R` values, RRULEs); others are
    /// parsed from the configuration when their next time is computed.
    kept_schedules: HashMap<String, crate::schedule::Schedule>,
}

impl Daemon {
    fn new(config: Config, opts: Options) -> anyhow::Result<Daemon> {
        make_dirs(&trigger_root(&config), TRIGGER_DIR_MODE).map_err(|e| {
            anyhow::anyhow!(
                "cannot create the trigger directory {}: {e}; check data_dir in the configuration",
                trigger_root(&config).display()
            )
        })?;
        let store = Store::open(&config.database_file).map_err(|e| {
            anyhow::anyhow!("{e}; check database.file and data_dir in the configuration")
        })?;
        let (tx, rx) = channel();
        let exe = std::env::current_exe()
            .map_err(|e| anyhow::anyhow!("cannot find the dsari binary itself: {e}"))?;
        let user = nix::unistd::User::from_uid(nix::unistd::getuid())
            .ok()
            .flatten()
            .map(|u| (u.name, u.dir.display().to_string()));
        Ok(Daemon {
            scheduler: Scheduler::new(&config),
            config,
            store,
            tx,
            rx,
            watcher: None,
            watch_targets: HashMap::new(),
            job_watches: HashMap::new(),
            root_watched: false,
            root_settled_mtime: None,
            running: HashMap::new(),
            retries: HashMap::new(),
            unrecorded: Vec::new(),
            unsaved: HashMap::new(),
            obsolete: Vec::new(),
            previous: HashMap::new(),
            db_retry_at: None,
            db_failing: false,
            warned_dirs: HashSet::new(),
            next_rescan: 0.0,
            shutdown: None,
            exe,
            daemon_path: std::env::var("PATH").ok(),
            user,
            recorded: Vec::new(),
            launcher: None,
            launcher_generation: 0,
            launcher_retry_at: 0.0,
            kept_schedules: HashMap::new(),
            opts,
        })
    }

    /// Signals, watches, pending runs from the database, the first scan.
    fn start(&mut self) -> anyhow::Result<()> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1};
        let mut signals =
            signal_hook::iterator::Signals::new([SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1])?;
        let tx = self.tx.clone();
        std::thread::Builder::new()
            .name("signals".into())
            .stack_size(128 * 1024)
            .spawn(move || {
                for sig in signals.forever() {
                    if tx.send(Event::Signal(sig)).is_err() {
                        return;
                    }
                }
            })?;
        match Watcher::start(self.tx.clone(), Event::Fs) {
            Ok(w) => self.watcher = Some(w),
            Err(e) => warn!(
                "inotify is not available ({e}); trigger files are found by the rescan every {RESCAN_INTERVAL} s"
            ),
        }
        info!(
            "dsari {} starting: {} jobs, data dir {}, database {}",
            env!("CARGO_PKG_VERSION"),
            self.config.jobs.len(),
            self.config.data_dir.display(),
            self.store.path()
        );
        self.restore_pending();
        self.reschedule_all();
        self.recover_running();
        self.recover_claimed();
        self.rescan_all();
        self.flush();
        release_freed_memory();
        systemd_notify(&[sd_notify::NotifyState::Ready]);
        Ok(())
    }

    fn restore_pending(&mut self) {
        match self.store.pending_runs() {
            Ok(rows) => {
                for p in rows {
                    debug!(
                        "[{} {}] pending run restored, due {}",
                        p.job_name, p.run_id, p.schedule_time
                    );
                    self.scheduler.insert(p, None);
                }
            }
            Err(e) => error!("cannot read pending runs: {e}"),
        }
    }

    /// Rows left in `runs_running` by a previous daemon: a run whose supervisor is
    /// still alive is adopted (and counts against its job's concurrency); one whose
    /// supervisor finished is recorded with its true exit code; one with neither
    /// is recorded as lost (exit code -1, `run_data.lost`).
    fn recover_running(&mut self) {
        let rows = match self.store.running_runs() {
            Ok(rows) => rows,
            Err(e) => {
                error!("cannot read runs_running: {e}");
                return;
            }
        };
        // Runs handed to a supervisor just before the crash may not show it
        // yet: they are looked at again after one wait for all of them.
        let mut uncertain = Vec::new();
        for record in rows {
            if let Some(record) = self.recover_one(record, false) {
                uncertain.push(record);
            }
        }
        if !uncertain.is_empty() {
            let dirs: Vec<PathBuf> = uncertain
                .iter()
                .map(|r| run_dir(&self.config, &r.job_name, &r.run_id))
                .collect();
            let refs: Vec<&Path> = dirs.iter().map(PathBuf::as_path).collect();
            exec::await_supervisors(&refs, exec::START_GRACE);
            for record in uncertain {
                let _ = self.recover_one(record, true);
            }
        }
    }

    /// Adopt, record or requeue one row of `runs_running`. A run handed over
    /// whose supervisor does not show yet is given back when `settled` is
    /// false (to be decided after the start grace).
    fn recover_one(&mut self, mut record: RunRecord, settled: bool) -> Option<RunRecord> {
        let run_dir = run_dir(&self.config, &record.job_name, &record.run_id);
        if let exec::SupervisorState::Alive { pid, group } = exec::probe_supervisor(&run_dir) {
            info!(
                "[{} {}] still running under supervisor pid {}: adopted",
                record.job_name,
                record.run_id,
                pid.map(|p| p.to_string()).unwrap_or_else(|| "?".into())
            );
            self.scheduler
                .adopt(&record.run_id, &record.job_name, group);
            self.wait_for_adopted(record.run_id.clone(), run_dir.clone());
            let active = ActiveRun {
                record,
                run_dir,
                pid: pid.unwrap_or(0),
            };
            self.running.insert(active.record.run_id.clone(), active);
            return None;
        }
        if !exec::supervisor_seen(&run_dir) {
            // Perhaps handed to a supervisor that has not locked its run dir yet.
            if !settled {
                return Some(record);
            }
            self.requeue(record);
            return None;
        }
        match exec::read_status(&run_dir) {
            Some(status) => {
                apply_status(&mut record, &run_dir, Some(status));
                info!(
                    "[{} {}] finished while the daemon was down, exit code {}",
                    record.job_name,
                    record.run_id,
                    record.exit_code.unwrap_or(-1)
                );
            }
            None => {
                apply_status(&mut record, &run_dir, None);
                record.run_data["lost"] = json!(
                    "the run's supervisor is gone and left no exit status (was the machine restarted?)"
                );
                warn!(
                    "[{} {}] lost: no supervisor and no exit status in {}",
                    record.job_name,
                    record.run_id,
                    run_dir.display()
                );
            }
        }
        self.unrecorded.push(record);
        None
    }

    /// Parse every job's schedule and set its next scheduled run after now,
    /// replacing the scheduled runs of the previous configuration (start, SIGHUP).
    /// A missed time is not replayed: the next one counts from now (SPEC §5.4).
    fn reschedule_all(&mut self) {
        let now = crate::time::now();
        let had: Vec<String> = self
            .scheduler
            .pending()
            .filter(|p| self.scheduler.is_scheduled(&p.run_id))
            .map(|p| p.job_name.clone())
            .collect();
        self.kept_schedules.clear();
        let mut scheduled = Vec::new();
        for job in self.config.jobs.values() {
            match job_schedule(job) {
                Some(Ok(s)) => {
                    scheduled.push((job.name.clone(), s.next_after(now)));
                    if s.worth_keeping() {
                        self.kept_schedules.insert(job.name.clone(), s);
                    }
                }
                // The configuration was validated; this is only a safety net.
                Some(Err(e)) => error!("[{}] schedule: {e}", job.name),
                None => {}
            }
        }
        for job in had {
            if self
                .config
                .jobs
                .get(&job)
                .is_none_or(|j| j.schedule.is_none())
            {
                self.scheduler.schedule(&job, None);
            }
        }
        for (job, next) in scheduled {
            self.set_scheduled(&job, Ok(next));
        }
    }

    /// A job's schedule's first time after `after`; `Err(())` when it has none.
    /// A schedule is parsed again from the configuration (a few µs) unless it
    /// was kept ([`crate::schedule::Schedule::worth_keeping`]): 10,000 parsed
    /// schedules would hold memory between their runs for nothing.
    fn next_scheduled(&self, job: &str, after: f64) -> Result<Option<f64>, ()> {
        if let Some(s) = self.kept_schedules.get(job) {
            return Ok(s.next_after(after));
        }
        match self.config.jobs.get(job).and_then(job_schedule) {
            Some(Ok(s)) => Ok(s.next_after(after)),
            _ => Err(()),
        }
    }

    /// Set a job's next scheduled run: its schedule's first time after `after`.
    fn schedule_next(&mut self, job: &str, after: f64) {
        let next = self.next_scheduled(job, after);
        self.set_scheduled(job, next);
    }

    /// Make `next` (from [`Self::next_scheduled`]) the job's scheduled run.
    fn set_scheduled(&mut self, job: &str, next: Result<Option<f64>, ()>) {
        let run = next.ok().flatten().map(|t| PendingRecord {
            run_id: uuid::Uuid::new_v4().to_string(),
            job_name: job.to_string(),
            schedule_time: t,
            trigger_type: "schedule".into(),
            trigger_data: json!({}),
            run_data: json!({}),
        });
        match &run {
            Some(r) => debug!(
                "[{job} {}] next scheduled run due {}",
                r.run_id,
                due_text(r.schedule_time)
            ),
            None if next.is_ok() => {
                debug!("[{job}] the schedule has no time after now: nothing scheduled")
            }
            None => {}
        }
        self.scheduler.schedule(job, run);
    }

    /// A run recorded as started whose command never started (the daemon stopped
    /// in between): it goes back to pending and runs now, once.
    fn requeue(&mut self, record: RunRecord) {
        let pending = PendingRecord {
            run_id: record.run_id,
            job_name: record.job_name,
            schedule_time: record.schedule_time,
            trigger_type: record.trigger_type,
            trigger_data: record.trigger_data,
            run_data: record.run_data,
        };
        match self.store.unstart_run(&pending) {
            Ok(()) => {
                info!(
                    "[{} {}] its start was recorded but it never started: starting it again",
                    pending.job_name, pending.run_id
                );
                self.scheduler.insert(pending, None);
            }
            Err(e) => error!(
                "[{} {}] never started, and cannot be put back to pending: {e}",
                pending.job_name, pending.run_id
            ),
        }
    }

    fn wait_for_adopted(&self, run_id: String, run_dir: PathBuf) {
        let tx = self.tx.clone();
        let spawned = std::thread::Builder::new()
            .name("run-waiter".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                exec::wait_for_supervisor(&run_dir);
                let _ = tx.send(Event::Exited(run_id));
            });
        if let Err(e) = spawned {
            error!("cannot start a thread to wait for a run: {e}");
        }
    }

    fn event_loop(&mut self) -> i32 {
        loop {
            let now = crate::time::now();
            self.fire_timers(now);
            self.flush();
            if self.shutdown.is_some() && self.running.is_empty() {
                info!("shut down");
                return 0;
            }
            if self.opts.once && self.once_done(now) {
                print_runs(&self.recorded);
                return 0;
            }
            let wait = (self.next_wakeup(now) - crate::time::now()).clamp(0.0, rescan_interval());
            match self.rx.recv_timeout(Duration::from_secs_f64(wait)) {
                Ok(ev) => {
                    self.handle(ev);
                    while let Ok(ev) = self.rx.try_recv() {
                        self.handle(ev);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return 1,
            }
        }
    }

    fn once_done(&self, now: f64) -> bool {
        self.running.is_empty()
            && self.retries.is_empty()
            && self.unrecorded.is_empty()
            && !self.scheduler.has_due(now)
    }

    fn next_wakeup(&self, now: f64) -> f64 {
        let mut t = self.next_rescan;
        let mut consider = |x: Option<f64>| {
            if let Some(x) = x {
                t = t.min(x);
            }
        };
        if self.shutdown.is_none() {
            // Runs due close together share one wake-up, one transaction and
            // one write to the launcher (`schedule_accuracy`).
            consider(self.scheduler.next_wake(now, self.config.schedule_accuracy));
        }
        consider(
            self.retries
                .values()
                .map(|(_, at)| *at)
                .min_by(f64::total_cmp),
        );
        consider(self.db_retry_at);
        if self.db_retry_at.is_none() {
            consider(self.record_by());
        }
        consider(self.shutdown.as_ref().and_then(|s| s.kill_at));
        t
    }

    fn fire_timers(&mut self, now: f64) {
        if now >= self.next_rescan {
            self.rescan(false);
        }
        let due: Vec<(PathBuf, String)> = self
            .retries
            .iter()
            .filter(|(_, (_, at))| *at <= now)
            .map(|(p, (job, _))| (p.clone(), job.clone()))
            .collect();
        for (path, job) in due {
            self.retries.remove(&path);
            let file = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let claimed = path
                .parent()
                .and_then(Path::file_name)
                .is_some_and(|d| d == CLAIM_DIR);
            match file.split_once(CLAIM_SEPARATOR) {
                Some((run_id, name)) if claimed => self.process_claimed(&job, &path, run_id, name),
                _ => self.process_file(&job, &path),
            }
        }
        if self.db_retry_at.is_some_and(|t| t <= now) {
            self.db_retry_at = None;
        }
        let kill_now = self
            .shutdown
            .as_ref()
            .and_then(|s| s.kill_at)
            .is_some_and(|t| t <= now);
        if kill_now {
            if let Some(s) = self.shutdown.as_mut() {
                s.kill_at = None;
            }
            for (id, run) in &self.running {
                warn!(
                    "[{} {}] shutdown_kill_grace is over: killing the run",
                    run.record.job_name, id
                );
                signal_supervisor(self.supervisor_pid(id), nix::sys::signal::Signal::SIGUSR2);
            }
        }
    }

    fn handle(&mut self, ev: Event) {
        match ev {
            Event::Exited(run_id) => self.finish(&run_id),
            Event::Launch(ev) => self.launch_event(ev),
            Event::Signal(sig) => self.signal(sig),
            Event::Fs(fs) => self.fs_event(fs),
        }
    }

    // ----- triggers -------------------------------------------------------

    fn fs_event(&mut self, ev: FsEvent) {
        match ev {
            FsEvent::Overflow => {
                warn!("the inotify queue overflowed; rescanning every trigger directory");
                self.rescan_all();
            }
            FsEvent::Failed(e) => {
                error!(
                    "inotify stopped working ({e}); trigger files are found by the rescan every {RESCAN_INTERVAL} s"
                );
                self.watcher = None;
                self.watch_targets.clear();
                self.job_watches.clear();
                self.root_watched = false;
            }
            FsEvent::Changed { wd, mask, name } => {
                let Some(target) = self.watch_targets.get(&wd).cloned() else {
                    return;
                };
                if mask
                    .intersects(EventMask::DELETE_SELF | EventMask::MOVE_SELF | EventMask::IGNORED)
                {
                    self.directory_gone(wd, &target);
                    return;
                }
                let Some(name) = name else {
                    return;
                };
                match target {
                    WatchTarget::Root => {
                        // Job names are UTF-8: a directory whose name is not names no job.
                        if mask.contains(EventMask::ISDIR) {
                            self.job_dir_appeared(&name.to_string_lossy());
                        }
                    }
                    WatchTarget::Job(job) => self.file_event(&job, &name, mask),
                }
            }
        }
    }

    /// A file event in a job's trigger dir. The name may not be UTF-8: it is
    /// judged by its lossy text but the file is opened by its real name.
    fn file_event(&mut self, job: &str, name: &std::ffi::OsStr, mask: EventMask) {
        if !trigger::is_trigger_name(&name.to_string_lossy()) {
            return;
        }
        let path = job_trigger_dir(&self.config, job).join(name);
        if mask.contains(EventMask::CREATE) && !mask.contains(EventMask::ISDIR) {
            // A regular file is read when closed after writing, not while half written;
            // anything else (symlink, FIFO, …) is dealt with now.
            let regular = std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_file());
            if regular {
                return;
            }
        }
        if mask.contains(EventMask::ISDIR) {
            return;
        }
        self.process_file(job, &path);
    }

    fn directory_gone(&mut self, wd: WatchDescriptor, target: &WatchTarget) {
        self.watch_targets.remove(&wd);
        match target {
            WatchTarget::Root => {
                warn!(
                    "the trigger directory {} went away; recreating it",
                    trigger_root(&self.config).display()
                );
                self.root_watched = false;
                let stale: Vec<WatchDescriptor> =
                    self.job_watches.drain().map(|(_, w)| w.wd).collect();
                for wd in stale {
                    self.watch_targets.remove(&wd);
                    if let Some(w) = self.watcher.as_mut() {
                        w.unwatch(wd);
                    }
                }
                self.rescan_all();
            }
            WatchTarget::Job(job) => {
                if self.job_watches.get(job).is_some_and(|w| w.wd == wd) {
                    self.job_watches.remove(job);
                }
                if self.config.jobs.contains_key(job) {
                    warn!("[{job}] the trigger directory went away; recreating it");
                    let job = job.clone();
                    self.scan_job(&job);
                }
            }
        }
    }

    fn job_dir_appeared(&mut self, name: &str) {
        if self.config.jobs.contains_key(name) {
            if !self.job_watches.contains_key(name) {
                self.scan_job(name);
            }
        } else {
            self.warn_unknown_dir(name);
        }
    }

    fn warn_unknown_dir(&mut self, name: &str) {
        if !name.starts_with('.') && self.warned_dirs.insert(name.to_string()) {
            warn!(
                "{}: this directory names no configured job; its files are left alone",
                trigger_root(&self.config).join(name).display()
            );
        }
    }

    /// Rescan every trigger directory (start, SIGUSR1, overflow): read them all.
    fn rescan_all(&mut self) {
        self.rescan(true);
    }

    /// Rescan every trigger directory. The periodic safety rescan (`full`
    /// false) skips reading a watched directory whose mtime has not changed
    /// since it was read while already old: one `stat` instead of an open and
    /// a read, which is what 10,000 directories a minute cost otherwise.
    fn rescan(&mut self, full: bool) {
        self.next_rescan = crate::time::now() + rescan_interval();
        if self.config.idempotency_window > 0.0
            && let Err(e) = self
                .store
                .prune_idempotency(crate::time::now() - self.config.idempotency_window)
        {
            debug!("cannot prune old idempotency keys: {e}");
        }
        let root = trigger_root(&self.config);
        if let Err(e) = make_dirs(&root, TRIGGER_DIR_MODE) {
            error!("cannot create {}: {e}", root.display());
        }
        if !self.root_watched
            && let Some(w) = self.watcher.as_mut()
        {
            match w.watch_root(&root) {
                Ok(wd) => {
                    self.watch_targets.insert(wd, WatchTarget::Root);
                    self.root_watched = true;
                }
                Err(e) => warn!("cannot watch {}: {e}; relying on rescans", root.display()),
            }
        }
        let began = std::time::Instant::now();
        let jobs: Vec<String> = self.config.jobs.keys().cloned().collect();
        // Only the periodic rescan takes the fast path (a full one reads every dir).
        let root_fd = if full {
            None
        } else {
            nix::fcntl::open(
                &root,
                nix::fcntl::OFlag::O_PATH
                    | nix::fcntl::OFlag::O_DIRECTORY
                    | nix::fcntl::OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )
            .ok()
        };
        let mut unchanged = 0;
        for job in &jobs {
            let skip = root_fd
                .as_ref()
                .is_some_and(|root| self.unchanged_since_read(root, job));
            if skip || !self.scan_job_dir(job, full) {
                unchanged += 1;
            }
        }
        // Listing the root only finds directories of no job, to warn about:
        // skipped, like a job's, while its mtime stays the same.
        let root_mtime = std::fs::symlink_metadata(&root).ok().map(|m| mtime_ns(&m));
        let list_root = full || root_mtime.is_none() || root_mtime != self.root_settled_mtime;
        self.root_settled_mtime = root_mtime.filter(|m| *m < settled_before(crate::time::now()));
        if !full {
            debug!(
                "safety rescan: {unchanged} of {} trigger directories unchanged since they were read{} ({:.1} ms)",
                jobs.len(),
                if list_root {
                    ""
                } else {
                    ", nor the trigger root"
                },
                began.elapsed().as_secs_f64() * 1e3
            );
        }
        if !list_root {
            return;
        }
        if let Ok(entries) = std::fs::read_dir(&root) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if !self.config.jobs.contains_key(&name)
                    && entry.file_type().is_ok_and(|t| t.is_dir())
                {
                    self.warn_unknown_dir(&name);
                }
            }
        }
    }

    /// The periodic rescan's fast path: the job's trigger dir is a plain
    /// directory, not writable by every user, with the settled mtime it had
    /// when last read. One `stat` relative to the trigger root: 10,000 of them
    /// a minute with 10,000 jobs.
    fn unchanged_since_read(&self, root: &std::os::fd::OwnedFd, job: &str) -> bool {
        use nix::libc::{S_IFDIR, S_IFMT};
        let Some(settled) = self.job_watches.get(job).and_then(|w| w.settled_mtime) else {
            return false;
        };
        let Ok(st) = nix::sys::stat::fstatat(root, job, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
        else {
            return false;
        };
        st.st_mode & S_IFMT == S_IFDIR
            && st.st_mode & 0o002 == 0
            && epoch_ns(st.st_mtime, st.st_mtime_nsec) == settled
    }

    /// Make sure a job's trigger directory exists and is watched, then scan it
    /// (watch first, so that a file written in between is not missed).
    fn scan_job(&mut self, job: &str) {
        self.scan_job_dir(job, true);
    }

    /// [`Self::scan_job`]; with `full` false, a settled directory whose mtime
    /// has not changed is not read (then false).
    fn scan_job_dir(&mut self, job: &str, full: bool) -> bool {
        let dir = job_trigger_dir(&self.config, job);
        let mut mtime = None;
        match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.file_type().is_symlink() || !m.is_dir() => {
                if self.warned_dirs.insert(format!("\0{job}")) {
                    error!(
                        "[{job}] {} is not a directory (a symlink or a file); it is not followed. Remove it so that dsari can create the directory",
                        dir.display()
                    );
                }
                return true;
            }
            Ok(m) => {
                use std::os::unix::fs::PermissionsExt;
                mtime = Some(mtime_ns(&m));
                if m.permissions().mode() & 0o002 != 0
                    && self.warned_dirs.insert(format!("\0w{job}"))
                {
                    warn!(
                        "[{job}] {} is writable by every user: anyone can start this job",
                        dir.display()
                    );
                }
            }
            Err(_) => {
                if let Err(e) = make_dirs(&dir, TRIGGER_DIR_MODE) {
                    error!("[{job}] cannot create {}: {e}", dir.display());
                    return true;
                }
            }
        }
        if !self.job_watches.contains_key(job)
            && let Some(w) = self.watcher.as_mut()
        {
            match w.watch_job_dir(&dir) {
                Ok(wd) => {
                    self.watch_targets
                        .insert(wd.clone(), WatchTarget::Job(job.to_string()));
                    self.job_watches.insert(
                        job.to_string(),
                        JobWatch {
                            wd,
                            settled_mtime: None,
                        },
                    );
                }
                Err(e) => {
                    // Out of watches (fs.inotify.max_user_watches) fails for every
                    // directory alike: say so once, not once per job and rescan.
                    let once = if e.raw_os_error() == Some(nix::libc::ENOSPC) {
                        "\0watch-limit".to_string()
                    } else {
                        format!("\0i{job}")
                    };
                    if self.warned_dirs.insert(once) {
                        warn!(
                            "[{job}] cannot watch {}: {e}; relying on the rescan every {RESCAN_INTERVAL} s \
                             (raise fs.inotify.max_user_watches if this says no space)",
                            dir.display()
                        );
                    }
                }
            }
        }
        if let Some(watch) = self.job_watches.get_mut(job) {
            if !full && mtime.is_some() && watch.settled_mtime == mtime {
                return false;
            }
            // An mtime from just before now may still change within the same
            // clock tick without looking different: trust only older ones. File
            // times are at worst a jiffy (10 ms at HZ=100) behind the clock;
            // 100 ms leaves room, and lets a daemon restarted soon after the
            // directories were created skip them at its first rescan.
            let settled = settled_before(crate::time::now());
            watch.settled_mtime = mtime.filter(|m| *m < settled);
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return true;
        };
        let mut files: Vec<(f64, PathBuf)> = entries
            .flatten()
            .filter(|e| trigger::is_trigger_name(&e.file_name().to_string_lossy()))
            .filter(|e| !e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| {
                let mtime = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .map(crate::time::to_epoch)
                    .unwrap_or(0.0);
                (mtime, e.path())
            })
            .collect();
        if !files.is_empty()
            && let Some(watch) = self.job_watches.get_mut(job)
        {
            // Files that stay (a claim that failed) are looked at again next time.
            watch.settled_mtime = None;
        }
        // Arrival order, as far as a scan can tell it.
        files.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
        for (_, path) in files {
            self.process_file(job, &path);
        }
        true
    }

    /// Claim one trigger file and turn it into a pending run, a retry or a rejection.
    ///
    /// A file that does not parse yet and is young stays where it is (its writer
    /// may not be done). Anything else is claimed: renamed into
    /// `.claimed/RUN_ID--NAME` and read again from there, so what runs is exactly
    /// what was claimed. From then on no event or rescan sees it, a writer may
    /// reuse the name at once, and a crash before the run is recorded leaves the
    /// file there, to be processed (or, when its run id is already recorded,
    /// removed) at the next start.
    fn process_file(&mut self, job_name: &str, path: &Path) {
        if !self.config.jobs.contains_key(job_name) {
            return;
        }
        match trigger::read(path, self.config.trigger_max_bytes, crate::time::now()) {
            Outcome::Gone => {
                self.retries.remove(path);
                return;
            }
            Outcome::RetryAt(at) => {
                debug!(
                    "[{job_name}] {} does not parse yet; it is young, trying again later",
                    path.display()
                );
                self.retries
                    .insert(path.to_path_buf(), (job_name.to_string(), at));
                return;
            }
            Outcome::Trigger(_) | Outcome::Reject(_) => {
                self.retries.remove(path);
            }
        }
        let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
            return;
        };
        let claim_dir = job_trigger_dir(&self.config, job_name).join(CLAIM_DIR);
        if let Err(e) = ensure_private_dir(&claim_dir) {
            error!(
                "[{job_name}] cannot use {}: {e}; trigger {name} stays where it is",
                claim_dir.display()
            );
            return;
        }
        let run_id = uuid::Uuid::new_v4().to_string();
        let claimed = claim_dir.join(format!("{run_id}{CLAIM_SEPARATOR}{name}"));
        match std::fs::rename(path, &claimed) {
            Ok(()) => {
                fault_point("claimed");
                self.process_claimed(job_name, &claimed, &run_id, &name)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => error!("[{job_name}] cannot claim trigger {name}: {e}"),
        }
    }

    /// Read a claimed trigger file (see [`Daemon::process_file`]).
    fn process_claimed(&mut self, job_name: &str, claimed: &Path, run_id: &str, name: &str) {
        let now = crate::time::now();
        match trigger::read(claimed, self.config.trigger_max_bytes, now) {
            Outcome::Gone => {
                self.retries.remove(claimed);
            }
            Outcome::RetryAt(at) => {
                debug!("[{job_name}] {name} does not parse yet; it is young, trying again later");
                self.retries
                    .insert(claimed.to_path_buf(), (job_name.to_string(), at));
            }
            Outcome::Reject(reason) => {
                self.retries.remove(claimed);
                self.reject(job_name, claimed, name, &reason);
            }
            Outcome::Trigger(t) => {
                self.retries.remove(claimed);
                self.accept(job_name, claimed, run_id, name, t);
            }
        }
    }

    /// The run an earlier trigger with this key made within the window, if any.
    fn idempotent_duplicate(&self, job_name: &str, key: &str) -> Option<String> {
        if self.config.idempotency_window <= 0.0 {
            return None;
        }
        let in_memory = self.scheduler.pending_of(job_name).find(|p| {
            p.trigger_data
                .get("idempotency_key")
                .and_then(Value::as_str)
                == Some(key)
        });
        if let Some(p) = in_memory {
            return Some(p.run_id.clone());
        }
        let since = crate::time::now() - self.config.idempotency_window;
        match self.store.idempotency_run(job_name, key, since) {
            Ok(found) => found,
            Err(e) => {
                // Better one run too many than a trigger dropped on a database hiccup.
                warn!("[{job_name}] cannot check idempotency_key {key:?}: {e}");
                None
            }
        }
    }

    /// Claimed files left by a daemon that stopped before recording their runs.
    fn recover_claimed(&mut self) {
        let jobs: Vec<String> = self.config.jobs.keys().cloned().collect();
        for job in jobs {
            // Never through a symlink: a trigger dir or claim dir that is one is not ours.
            let job_dir = job_trigger_dir(&self.config, &job);
            let dir = job_dir.join(CLAIM_DIR);
            let real_dir = |d: &Path| std::fs::symlink_metadata(d).is_ok_and(|m| m.is_dir());
            if !real_dir(&job_dir) || !real_dir(&dir) {
                continue;
            }
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let file = entry.file_name().to_string_lossy().into_owned();
                let Some((run_id, name)) = file.split_once(CLAIM_SEPARATOR) else {
                    continue;
                };
                let path = entry.path();
                match self.store.run_known(run_id) {
                    Ok(true) => {
                        debug!(
                            "[{job} {run_id}] claimed trigger {name} was already recorded; removing it"
                        );
                        let _ = std::fs::remove_file(&path);
                    }
                    Ok(false) => {
                        info!(
                            "[{job} {run_id}] picking up trigger {name} claimed before a restart"
                        );
                        self.process_claimed(&job, &path, run_id, name);
                    }
                    Err(e) => error!("[{job}] cannot check claimed trigger {name}: {e}"),
                }
            }
        }
    }

    /// A valid trigger becomes a pending run, in memory until the end of this loop
    /// turn, when it is started or saved and its file removed (see [`Daemon::flush`]).
    fn accept(
        &mut self,
        job_name: &str,
        claimed: &Path,
        run_id: &str,
        name: &str,
        t: trigger::Trigger,
    ) {
        if let Some(key) = &t.idempotency_key
            && let Some(earlier) = self.idempotent_duplicate(job_name, key)
        {
            info!(
                "[{job_name}] trigger {name} has idempotency_key {key:?} already seen within {} s (run {earlier}): no new run; file removed",
                self.config.idempotency_window
            );
            remove_files(&[claimed.to_path_buf()]);
            return;
        }
        let Some(job) = self.config.jobs.get(job_name) else {
            return;
        };
        let (_, dropped) =
            trigger::filter_environment(&t.environment, job.trigger_environment_allow.as_deref());
        let mut run_data = json!({});
        if !dropped.is_empty() {
            warn!(
                "[{job_name} {run_id}] trigger {name}: environment names dropped (not allowed from a trigger file): {}",
                dropped.join(", ")
            );
            run_data["dropped_environment"] = json!(dropped);
        }
        let mut pending = PendingRecord {
            run_id: run_id.to_string(),
            job_name: job_name.to_string(),
            schedule_time: t.schedule_time,
            trigger_type: "file".into(),
            trigger_data: Value::Object(t.data),
            run_data,
        };
        let replaces = self.scheduler.coalesce(&mut pending);
        let mut files = vec![claimed.to_path_buf()];
        if let Some(old) = &replaces {
            match self.unsaved.remove(old) {
                // Its files go once the run that carries its trigger data is recorded.
                Some(old_files) => files.extend(old_files),
                None => self.obsolete.push(old.clone()),
            }
        }
        match &replaces {
            Some(old) => info!(
                "[{job_name} {run_id}] trigger {name} seen, run due {}, replacing pending run {old}",
                due_text(pending.schedule_time)
            ),
            None => info!(
                "[{job_name} {run_id}] trigger {name} seen, run due {}",
                due_text(pending.schedule_time)
            ),
        }
        self.unsaved.insert(run_id.to_string(), files);
        self.scheduler.insert(pending, replaces.as_deref());
    }

    fn reject(&mut self, job_name: &str, claimed: &Path, name: &str, reason: &str) {
        let dir = job_trigger_dir(&self.config, job_name).join(REJECTED_DIR);
        if let Err(e) = ensure_private_dir(&dir) {
            error!(
                "[{job_name}] trigger {name} rejected ({reason}) but cannot create {}: {e}; it stays in {}",
                dir.display(),
                claimed.display()
            );
            return;
        }
        let target = unique_name(&dir, name);
        if let Err(e) = std::fs::rename(claimed, &target) {
            error!(
                "[{job_name}] trigger {name} rejected ({reason}) but cannot move it to {}: {e}; it stays in {}",
                dir.display(),
                claimed.display()
            );
            return;
        }
        let mut error_file = target.clone().into_os_string();
        error_file.push(".error");
        if let Err(e) = std::fs::write(&error_file, format!("{reason}\n")) {
            error!(
                "[{job_name}] cannot write {}: {e}",
                Path::new(&error_file).display()
            );
        }
        error!(
            "[{job_name}] trigger {name} rejected: {reason} (moved to {})",
            target.display()
        );
    }

    // ----- runs -----------------------------------------------------------

    /// The end of a loop turn: record finished runs, start what is due, save what
    /// stays pending — one database transaction each, however many runs — and only
    /// then remove the trigger files those runs came from.
    fn flush(&mut self) {
        if self.db_retry_at.is_some() {
            return;
        }
        let now = crate::time::now();
        if !(self.ends_can_wait(now) || self.record_unrecorded())
            || (self.shutdown.is_none() && !self.start_due(now))
            || !self.save_pending()
        {
            self.db_retry_at = Some(crate::time::now() + DB_RETRY);
        }
        self.keep_launcher();
    }

    /// Keep a launcher while the daemon takes new runs (`--once` starts its few
    /// supervisors directly).
    fn keep_launcher(&mut self) {
        if self.launcher.is_some()
            || self.shutdown.is_some()
            || self.opts.once
            || crate::time::now() < self.launcher_retry_at
        {
            return;
        }
        self.launcher_generation += 1;
        let tx = self.tx.clone();
        let sink: exec::LaunchSink = Arc::new(move |ev| {
            let _ = tx.send(Event::Launch(ev));
        });
        match exec::Launcher::start(&self.exe, self.launcher_generation, sink) {
            Ok(l) => {
                debug!("launcher started, pid {}", l.pid());
                self.launcher = Some(l);
            }
            Err(e) => {
                // Supervisors are started directly meanwhile; try again in a minute.
                self.launcher_retry_at = crate::time::now() + RESCAN_INTERVAL;
                warn!(
                    "cannot start the launcher ({e}); starting supervisors directly, trying again in {RESCAN_INTERVAL} s"
                );
            }
        }
    }

    fn launch_event(&mut self, ev: exec::LaunchEvent) {
        match ev {
            exec::LaunchEvent::Started { token, pid } => {
                let Some(run) = self.running.get_mut(&token) else {
                    return;
                };
                // Shutdown began before this run's pid was known: not yet signalled.
                let unsignalled = run.pid == 0;
                run.pid = pid;
                debug!("[{} {token}] supervisor pid {pid}", run.record.job_name);
                if unsignalled && self.shutdown.is_some() && self.config.shutdown_kill_runs {
                    signal_supervisor(pid, nix::sys::signal::Signal::SIGTERM);
                }
            }
            exec::LaunchEvent::Exited { token } => self.finish(&token),
            exec::LaunchEvent::NotStarted {
                token,
                reason,
                spec,
            } => {
                let Some(run) = self.running.get(&token) else {
                    return;
                };
                warn!(
                    "[{} {token}] {reason}; starting its supervisor directly",
                    run.record.job_name
                );
                let dir = run.run_dir.clone();
                match prepare_run_dir(&dir, &spec)
                    .and_then(|()| exec::spawn_supervisor(&self.exe, &dir))
                {
                    Ok(child) => {
                        if let Some(run) = self.running.get_mut(&token) {
                            run.pid = child.id();
                        }
                        self.wait_in_thread(token, child);
                    }
                    Err(e) => {
                        if let Some(active) = self.running.remove(&token) {
                            let msg = format!("cannot start the run's supervisor: {e}");
                            self.not_started(active.record, &msg);
                        }
                    }
                }
            }
            exec::LaunchEvent::Gone { generation } => {
                if generation == self.launcher_generation && self.launcher.is_some() {
                    warn!("the launcher has ended; starting a new one");
                    self.launcher = None;
                }
            }
        }
    }

    /// May the finished runs wait to be written with the next ones? Only the
    /// ends of scheduled runs, each for `schedule_accuracy` after it, and never
    /// when a run is due: a run starts after its job's previous run is recorded
    /// (its PREVIOUS_* variables). Runs started together end close together,
    /// and their ends then make one transaction, not one each.
    fn ends_can_wait(&self, now: f64) -> bool {
        let accuracy = self.config.schedule_accuracy;
        !self.unrecorded.is_empty()
            && accuracy > 0.0
            && self.shutdown.is_none()
            && !self.opts.once
            && !self.scheduler.has_due(now)
            && self.unrecorded.iter().all(|r| {
                r.trigger_type == "schedule" && r.stop_time.is_some_and(|t| now < t + accuracy)
            })
    }

    /// When the first finished run that waits must be written (see
    /// [`Self::ends_can_wait`]).
    fn record_by(&self) -> Option<f64> {
        self.unrecorded
            .iter()
            .filter_map(|r| r.stop_time)
            .min_by(f64::total_cmp)
            .map(|t| t + self.config.schedule_accuracy)
    }

    /// Write finished runs to `runs`; false when the database refused (they are kept).
    fn record_unrecorded(&mut self) -> bool {
        if self.unrecorded.is_empty() {
            return true;
        }
        fault_point("finishing");
        match self.store.finish_runs(&self.unrecorded) {
            Ok(()) => {
                if self.db_failing {
                    self.db_failing = false;
                    info!(
                        "the database answers again: {} finished runs recorded",
                        self.unrecorded.len()
                    );
                }
                for record in std::mem::take(&mut self.unrecorded) {
                    self.remember_previous(&record);
                    if self.opts.once {
                        self.recorded.push(record);
                    }
                }
                true
            }
            Err(e) => {
                self.database_failed(&format!(
                    "cannot record {} finished runs, keeping them to retry: {e}",
                    self.unrecorded.len()
                ));
                false
            }
        }
    }

    fn database_failed(&mut self, msg: &str) {
        if !self.db_failing {
            self.db_failing = true;
            error!("{msg} (retrying every {DB_RETRY} s; this is logged once)");
        }
    }

    /// Start every run that is due and allowed; false when the database refused.
    fn start_due(&mut self, now: f64) -> bool {
        let starts = self.scheduler.due(now, &mut |n| random_below(n));
        if starts.is_empty() {
            return true;
        }
        let mut records: Vec<RunRecord> = starts
            .iter()
            .map(|st| RunRecord {
                job_name: st.run.job_name.clone(),
                run_id: st.run.run_id.clone(),
                schedule_time: st.run.schedule_time,
                start_time: 0.0, // set when the start is recorded
                stop_time: None,
                exit_code: None,
                trigger_type: st.run.trigger_type.clone(),
                trigger_data: st.run.trigger_data.clone(),
                run_data: st.run.run_data.clone(),
            })
            .collect();
        if let Err(e) = self.store.start_runs(&mut records, &self.obsolete) {
            self.database_failed(&format!(
                "cannot record the start of {} runs, will retry: {e}",
                records.len()
            ));
            for st in starts {
                self.scheduler.unstart(st);
            }
            return false;
        }
        self.obsolete.clear();
        let previous = self.previous_runs_of(&records);
        for ((st, record), previous) in starts.into_iter().zip(records).zip(previous) {
            fault_point("started");
            let (run_id, job_name, start_time) = (
                record.run_id.clone(),
                record.job_name.clone(),
                record.start_time,
            );
            self.spawn(record, st.group, previous);
            // Only now: the run's start is recorded, and its command is not kept waiting.
            self.remove_claimed(&run_id);
            if st.respawn {
                // SPEC §5.4: the next time counts from this start, not from when it was due.
                self.schedule_next(&job_name, start_time);
            }
        }
        self.send_launches();
        true
    }

    /// Write this turn's runs to the launcher; those it cannot take are started
    /// directly (as when it ends before forking them).
    fn send_launches(&mut self) {
        let Some(launcher) = self.launcher.as_mut() else {
            return;
        };
        if let Err((e, left)) = launcher.send() {
            warn!("the launcher cannot take runs ({e}); starting supervisors directly");
            self.launcher = None;
            for (token, spec) in left {
                self.launch_event(exec::LaunchEvent::NotStarted {
                    token,
                    reason: format!("the launcher cannot take runs ({e})"),
                    spec,
                });
            }
        }
    }

    /// Save pending runs that are not in the database yet; false when it refused.
    fn save_pending(&mut self) -> bool {
        if self.unsaved.is_empty() && self.obsolete.is_empty() {
            return true;
        }
        let rows: Vec<PendingRecord> = self
            .unsaved
            .keys()
            .filter_map(|id| self.scheduler.get(id))
            .cloned()
            .collect();
        if let Err(e) = self.store.save_pending(&rows, &self.obsolete) {
            self.database_failed(&format!(
                "cannot save {} pending runs, their trigger files stay claimed: {e}",
                rows.len()
            ));
            return false;
        }
        self.obsolete.clear();
        for p in rows {
            fault_point("saved");
            self.remove_claimed(&p.run_id);
        }
        // Whatever is left belonged to runs no longer pending (none expected).
        for (_, files) in std::mem::take(&mut self.unsaved) {
            remove_files(&files);
        }
        true
    }

    /// The run is durably recorded: its claimed trigger files can go.
    fn remove_claimed(&mut self, run_id: &str) {
        if let Some(files) = self.unsaved.remove(run_id) {
            remove_files(&files);
        }
    }

    /// Start a run's supervisor; a run that cannot start is recorded as failed.
    fn spawn(&mut self, record: RunRecord, group: Option<String>, previous: PreviousRuns) {
        let Some(job) = self.config.jobs.get(&record.job_name).cloned() else {
            return;
        };
        let dir = run_dir(&self.config, &job.name, &record.run_id);
        let spec = self.run_spec(&job, &record, &dir, group.as_deref(), &previous);
        let started = serde_json::to_vec(&spec)
            .map_err(|e| format!("cannot write the run's spec: {e}"))
            .and_then(|bytes| self.start_supervisor(&record.run_id, &dir, &bytes));
        match started {
            Ok(pid) => {
                info!(
                    "[{} {}] started{}: {}",
                    job.name,
                    record.run_id,
                    group
                        .as_deref()
                        .map(|g| format!(", group {g}"))
                        .unwrap_or_default(),
                    shell_words::join(&spec.argv)
                );
                self.running.insert(
                    record.run_id.clone(),
                    ActiveRun {
                        record,
                        run_dir: dir,
                        pid,
                    },
                );
            }
            Err(msg) => self.not_started(record, &msg),
        }
    }

    /// A run whose command could not be started: recorded as failed (exit
    /// code −1, `run_data.error`), with its slot freed.
    fn not_started(&mut self, mut record: RunRecord, msg: &str) {
        error!("[{} {}] {msg}", record.job_name, record.run_id);
        record.stop_time = Some(crate::time::now());
        record.exit_code = Some(-1);
        record.run_data["error"] = json!(msg);
        self.scheduler.finished(&record.run_id);
        self.unrecorded.push(record);
    }

    /// The PREVIOUS_* runs of each record's job: from memory once looked up
    /// (this daemon writes every finished run, so it keeps them current), else
    /// three index lookups, those of a whole turn in one read transaction.
    fn previous_runs_of(&mut self, records: &[RunRecord]) -> Vec<PreviousRuns> {
        let mut missing: Vec<&str> = records
            .iter()
            .map(|r| r.job_name.as_str())
            .filter(|job| !self.previous.contains_key(*job))
            .collect();
        missing.sort_unstable();
        missing.dedup();
        let mut found: HashMap<&str, PreviousRuns> = HashMap::new();
        for (job, looked_up) in missing.iter().zip(self.store.previous_runs_many(&missing)) {
            let p = match looked_up {
                Ok(p) => {
                    if self.previous.len() >= PREVIOUS_CACHE {
                        // Bounded: 10,000 hourly jobs would otherwise keep three
                        // whole runs each. A miss costs three index lookups.
                        self.previous.clear();
                    }
                    self.previous.insert(job.to_string(), p.clone());
                    p
                }
                Err(e) => {
                    warn!("[{job}] cannot look up previous runs: {e}");
                    PreviousRuns::default()
                }
            };
            found.insert(job, p);
        }
        records
            .iter()
            .map(|r| {
                found
                    .get(r.job_name.as_str())
                    .or_else(|| self.previous.get(&r.job_name))
                    .cloned()
                    .unwrap_or_default()
            })
            .collect()
    }

    fn remember_previous(&mut self, record: &RunRecord) {
        let Some(p) = self.previous.get_mut(&record.job_name) else {
            return;
        };
        let newer = |old: &Option<PreviousRun>| {
            old.as_ref()
                .is_none_or(|o| o.stop_time.unwrap_or(0.0) <= record.stop_time.unwrap_or(0.0))
        };
        if newer(&p.any) {
            p.any = Some(record.into());
        }
        match record.exit_code {
            Some(0) if newer(&p.good) => p.good = Some(record.into()),
            Some(c) if c != 0 && newer(&p.bad) => p.bad = Some(record.into()),
            _ => {}
        }
    }

    fn run_spec(
        &self,
        job: &Job,
        record: &RunRecord,
        dir: &Path,
        group: Option<&str>,
        previous: &PreviousRuns,
    ) -> RunSpec {
        let trigger_env = record
            .trigger_data
            .get("environment")
            .and_then(|v| trigger::environment_map(v).ok())
            .unwrap_or_default();
        let (trigger_env, _) =
            trigger::filter_environment(&trigger_env, job.trigger_environment_allow.as_deref());
        let ctx = RunContext {
            config: &self.config,
            job,
            run_id: &record.run_id,
            run_dir: dir,
            schedule_time: record.schedule_time,
            start_time: record.start_time,
            trigger_type: &record.trigger_type,
            concurrency_group: group,
            previous,
            trigger_environment: &trigger_env,
            daemon_path: self.daemon_path.as_deref(),
            user: self.user.as_ref().map(|(a, b)| (a.as_str(), b.as_str())),
        };
        let environment = exec::build_environment(&ctx);
        let mut argv = job.command.clone();
        if job.command_append_run {
            argv.push(job.name.clone());
            argv.push(record.run_id.clone());
        }
        RunSpec {
            job_name: job.name.clone(),
            run_id: record.run_id.clone(),
            argv,
            working_dir: environment
                .get("PWD")
                .map(PathBuf::from)
                .unwrap_or_else(|| dir.to_path_buf()),
            environment,
            search_path: self
                .daemon_path
                .clone()
                .unwrap_or_else(|| "/usr/bin:/bin".into()),
            max_execution: job.max_execution,
            max_execution_grace: job.max_execution_grace,
        }
    }

    /// Have a supervisor take the run: forked by the launcher, which hands it
    /// the spec (its pid comes later, 0 meanwhile), or started directly when
    /// there is none, after writing the spec into the run dir.
    fn start_supervisor(&mut self, run_id: &str, dir: &Path, spec: &[u8]) -> Result<u32, String> {
        if let Some(launcher) = self.launcher.as_mut() {
            match launcher.launch(run_id, dir, spec) {
                Ok(()) => return Ok(0),
                Err(e) => {
                    warn!("the launcher cannot take runs ({e}); starting supervisors directly");
                    // Runs queued to it this turn are not lost: dropping it
                    // closes its pipe, and its reader thread hands back each
                    // run no supervisor took (`LaunchEvent::NotStarted`).
                    self.launcher = None;
                }
            }
        }
        let child = prepare_run_dir(dir, spec)
            .and_then(|()| exec::spawn_supervisor(&self.exe, dir))
            .map_err(|e| format!("cannot start the run's supervisor: {e}"))?;
        let pid = child.id();
        self.wait_in_thread(run_id.to_string(), child);
        Ok(pid)
    }

    /// The pid of a run's supervisor, 0 when not known (yet): as reported, else
    /// from the launcher, else from the lock the supervisor holds.
    fn supervisor_pid(&self, run_id: &str) -> u32 {
        let Some(run) = self.running.get(run_id) else {
            return 0;
        };
        if run.pid != 0 {
            return run.pid;
        }
        if let Some(pid) = self.launcher.as_ref().and_then(|l| l.pid_of(run_id)) {
            return pid;
        }
        match exec::probe_supervisor(&run.run_dir) {
            exec::SupervisorState::Alive { pid, .. } => pid.unwrap_or(0),
            exec::SupervisorState::Gone => 0,
        }
    }

    fn wait_in_thread(&self, run_id: String, mut child: Child) {
        let tx = self.tx.clone();
        let spawned = std::thread::Builder::new()
            .name("run-waiter".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                let _ = child.wait();
                let _ = tx.send(Event::Exited(run_id));
            });
        if let Err(e) = spawned {
            error!("cannot start a thread to wait for a run: {e}");
        }
    }

    fn finish(&mut self, run_id: &str) {
        let Some(active) = self.running.remove(run_id) else {
            return;
        };
        self.scheduler.finished(run_id);
        let mut record = active.record;
        let status = exec::read_status(&active.run_dir);
        let no_status = status.is_none();
        apply_status(&mut record, &active.run_dir, status);
        if no_status {
            if active.run_dir.is_dir() {
                record.run_data["lost"] =
                    json!("the run's supervisor ended without leaving an exit status");
            } else {
                // The supervisor logged why (on the daemon's stderr).
                let msg = format!(
                    "cannot create the run directory {}; the command did not start",
                    active.run_dir.display()
                );
                error!("[{} {}] {msg}", record.job_name, record.run_id);
                record.run_data["error"] = json!(msg);
            }
        }
        info!(
            "[{} {}] finished with exit code {} in {:.3} s",
            record.job_name,
            record.run_id,
            record.exit_code.unwrap_or(-1),
            record.stop_time.unwrap_or(record.start_time) - record.start_time
        );
        self.unrecorded.push(record);
    }

    // ----- signals --------------------------------------------------------

    fn signal(&mut self, sig: i32) {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1};
        match sig {
            SIGHUP => self.reload(),
            SIGTERM | SIGINT => self.begin_shutdown(sig),
            SIGQUIT => self.log_status(),
            SIGUSR1 => {
                info!("SIGUSR1: rescanning every trigger directory");
                self.rescan_all();
            }
            _ => {}
        }
    }

    fn reload(&mut self) {
        let mut states = vec![sd_notify::NotifyState::Reloading];
        if let Ok(t) = sd_notify::NotifyState::monotonic_usec_now() {
            states.push(t);
        }
        systemd_notify(&states);
        self.reload_config();
        systemd_notify(&[sd_notify::NotifyState::Ready]);
    }

    fn reload_config(&mut self) {
        let loaded = match config::load(&self.opts.config_dir) {
            Ok(l) => l,
            Err(e) => {
                error!("SIGHUP: the new configuration is broken, keeping the old one:\n{e}");
                return;
            }
        };
        for w in &loaded.warnings {
            warn!("{w}");
        }
        let mut new = loaded.config;
        new.raw = Value::Null;
        if new.data_dir != self.config.data_dir || new.database_file != self.config.database_file {
            warn!(
                "SIGHUP: data_dir and database changes take effect at the next start; keeping the current ones"
            );
            new.data_dir = self.config.data_dir.clone();
            new.database_file = self.config.database_file.clone();
        }
        self.scheduler.configure(&new);
        info!("SIGHUP: configuration reloaded: {} jobs", new.jobs.len());
        self.config = new;
        self.reschedule_all();
        self.rescan_all();
        release_freed_memory();
    }

    fn begin_shutdown(&mut self, sig: i32) {
        if self.shutdown.is_some() {
            info!(
                "already shutting down; waiting for {} running runs",
                self.running.len()
            );
            return;
        }
        let name = if sig == signal_hook::consts::SIGINT {
            "SIGINT"
        } else {
            "SIGTERM"
        };
        systemd_notify(&[sd_notify::NotifyState::Stopping]);
        let kill_at = self
            .config
            .shutdown_kill_grace
            .map(|g| crate::time::now() + g);
        // Supervisors the launcher starts from now on are reported as they
        // start (to be terminated, or killed after the grace); every pid known
        // by now is kept, so that none is signalled twice.
        if let Some(l) = self.launcher.as_mut() {
            l.report_starts();
        }
        let ids: Vec<String> = self.running.keys().cloned().collect();
        for id in ids {
            let pid = self.supervisor_pid(&id);
            if let Some(run) = self.running.get_mut(&id) {
                run.pid = pid;
            }
        }
        if self.config.shutdown_kill_runs {
            info!(
                "{name}: shutting down, terminating {} running runs",
                self.running.len()
            );
            for (id, run) in &self.running {
                info!("[{} {id}] terminating", run.record.job_name);
                signal_supervisor(run.pid, nix::sys::signal::Signal::SIGTERM);
            }
        } else {
            info!(
                "{name}: shutting down, waiting for {} running runs; pending runs stay pending",
                self.running.len()
            );
        }
        self.shutdown = Some(Shutdown { kill_at });
    }

    fn log_status(&self) {
        let now = crate::time::now();
        info!(
            "status: {} running, {} pending",
            self.running.len(),
            self.scheduler.pending_count()
        );
        for (id, run) in &self.running {
            info!(
                "status: [{} {id}] running, pid {}, for {:.1} s{}",
                run.record.job_name,
                self.supervisor_pid(id),
                now - run.record.start_time,
                self.scheduler
                    .group_of(id)
                    .map(|g| format!(", group {g}"))
                    .unwrap_or_default()
            );
        }
        for p in self.scheduler.pending() {
            info!(
                "status: [{} {}] pending, due {}",
                p.job_name,
                p.run_id,
                due_text(p.schedule_time)
            );
        }
    }
}

/// Fill in stop time, exit code, resource usage and return data from the supervisor's status.
fn apply_status(record: &mut RunRecord, run_dir: &Path, status: Option<exec::RunStatus>) {
    if !record.run_data.is_object() {
        record.run_data = json!({});
    }
    match status {
        Some(s) => {
            record.stop_time = Some(s.stop_time);
            record.exit_code = Some(s.exit_code);
            if let Some(r) = s.rusage {
                record.run_data["rusage"] = json!(r);
            }
            if let Some(e) = s.error {
                record.run_data["error"] = json!(e);
            }
            if s.timed_out {
                record.run_data["max_execution_exceeded"] = json!(true);
            }
        }
        None => {
            record.stop_time = Some(crate::time::now());
            record.exit_code = Some(-1);
        }
    }
    match read_return_data(run_dir) {
        Some(Ok(v)) => record.run_data["return_data"] = v,
        Some(Err(e)) => {
            warn!("[{} {}] {e}", record.job_name, record.run_id);
            record.run_data["return_data_error"] = json!(e);
        }
        None => {}
    }
}

/// `return_data.json` or `return_data.yaml` in the run dir (SPEC §6.4).
fn read_return_data(run_dir: &Path) -> Option<Result<Value, String>> {
    use crate::document::{self, Format};
    for (name, format) in [
        ("return_data.json", Format::Json),
        ("return_data.yaml", Format::Yaml),
    ] {
        let path = run_dir.join(name);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Some(Err(format!("{}: {e}", path.display()))),
        };
        return Some(
            document::parse(&text, format).map_err(|e| format!("{}: {e}", path.display())),
        );
    }
    None
}

/// Signal a supervisor; pid 0 (not known) signals nobody.
fn signal_supervisor(pid: u32, sig: nix::sys::signal::Signal) {
    if pid == 0 {
        return;
    }
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
}

/// Give the memory freed after loading and scheduling (config parsing and
/// schedule evaluation allocate a lot, briefly) back to the system, so the idle
/// daemon's RSS is what it keeps, not what it once used.
fn release_freed_memory() {
    // SAFETY: malloc_trim only walks glibc's own free lists.
    #[cfg(target_env = "gnu")]
    unsafe {
        nix::libc::malloc_trim(0);
    }
}

/// Tell systemd (Type=notify) how the daemon is doing; nothing outside systemd.
fn systemd_notify(states: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        debug!("cannot notify systemd: {e}");
    }
}

/// Crash tests (debug builds only): `DSARI_FAULT=NAME` makes the daemon kill
/// itself with SIGKILL when it reaches the point NAME, `DSARI_FAULT=NAME:N` the
/// N-th time. Points: `claimed` (a trigger file renamed into `.claimed/`, nothing
/// recorded), `started` (runs in `runs_running`, supervisors not started, claims
/// not removed), `saved` (pending runs saved, claims not removed), `finishing`
/// (finished runs about to be moved to `runs`). Release builds ignore it.
fn fault_point(name: &str) {
    #[cfg(debug_assertions)]
    {
        use std::sync::atomic::{AtomicU64, Ordering};
        static HITS: AtomicU64 = AtomicU64::new(0);
        let Ok(spec) = std::env::var("DSARI_FAULT") else {
            return;
        };
        let (point, nth) = match spec.split_once(':') {
            Some((p, n)) => (p.to_string(), n.parse().unwrap_or(1)),
            None => (spec.clone(), 1),
        };
        if point == name && HITS.fetch_add(1, Ordering::SeqCst) + 1 >= nth {
            eprintln!("DSARI_FAULT: killing the daemon at {name}");
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        }
    }
    #[cfg(not(debug_assertions))]
    let _ = name;
}

/// A random number below `n` (for picking among free concurrency groups).
fn random_below(n: usize) -> usize {
    if n <= 1 {
        return 0;
    }
    (uuid::Uuid::new_v4().as_u128() % n as u128) as usize
}

/// `data_dir/trigger`.
pub fn trigger_root(config: &Config) -> PathBuf {
    config.data_dir.join("trigger")
}

/// `data_dir/trigger/JOB`.
pub fn job_trigger_dir(config: &Config, job: &str) -> PathBuf {
    trigger_root(config).join(job)
}

/// `data_dir/runs/JOB/RUN_ID`.
pub fn run_dir(config: &Config, job: &str, run_id: &str) -> PathBuf {
    config.data_dir.join("runs").join(job).join(run_id)
}

/// Where rejected trigger files go, each with a sibling `NAME.error`.
pub const REJECTED_DIR: &str = ".rejected";
/// Where claimed trigger files wait until their run is recorded (per job dir).
pub const CLAIM_DIR: &str = ".claimed";
/// Between the run id and the original name in a claimed file's name.
pub const CLAIM_SEPARATOR: &str = "--";

/// Trigger directories: the daemon's user and group may write (CI users join the
/// group); others may not. The umask can only take more away.
pub const TRIGGER_DIR_MODE: u32 = 0o770;

/// Create a run dir with its spec, for a supervisor started directly.
fn prepare_run_dir(dir: &Path, spec: &[u8]) -> std::io::Result<()> {
    exec::make_run_dir(dir)
        .and_then(|()| exec::write_spec(dir, spec))
        .map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot prepare the run directory {}: {e}", dir.display()),
            )
        })
}

/// `create_dir_all` with a mode for every directory it creates.
fn make_dirs(dir: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
}

/// Create a directory of the daemon's own, private (not followed if it is a symlink).
fn ensure_private_dir(dir: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(std::io::Error::other("exists and is not a directory")),
        Err(_) => {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new().mode(0o700).create(dir)
        }
    }
}

fn remove_files(files: &[PathBuf]) {
    for f in files {
        if let Err(e) = std::fs::remove_file(f)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            error!("cannot remove {} after recording its run: {e}", f.display());
        }
    }
}

/// `dir/name`, or `dir/name.1`, `.2`, … when taken.
fn unique_name(dir: &Path, name: &str) -> PathBuf {
    let first = dir.join(name);
    if std::fs::symlink_metadata(&first).is_err() {
        return first;
    }
    (1..)
        .map(|i| dir.join(format!("{name}.{i}")))
        .find(|p| std::fs::symlink_metadata(p).is_err())
        .unwrap_or(first)
}

fn due_text(t: f64) -> String {
    let now = crate::time::now();
    if t <= now {
        "now".into()
    } else {
        format!("in {:.1} s", t - now)
    }
}

/// The table `--once` prints.
fn print_runs(runs: &[RunRecord]) {
    if runs.is_empty() {
        println!("no runs were due");
        return;
    }
    println!("{:<20} {:<36} {:>4} {:>9}", "JOB", "RUN", "EXIT", "SECONDS");
    for r in runs {
        println!(
            "{:<20} {:<36} {:>4} {:>9.3}",
            r.job_name,
            r.run_id,
            r.exit_code.unwrap_or(-1),
            r.stop_time.unwrap_or(r.start_time) - r.start_time
        );
    }
}

#[cfg(test)]
mod tests {
    use super::settled_before;

    #[test]
    fn a_directory_is_settled_100_ms_after_its_mtime_not_at_the_next_whole_second() {
        // Read at 1000.75 s: an mtime of 1000.6 s is settled, 1000.7 s is not.
        let at = settled_before(1000.75);
        assert!(1_000_600_000_000 < at, "{at}");
        assert!(1_000_700_000_000 > at, "{at}");
    }
}
