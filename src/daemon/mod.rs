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
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::time::Duration;

use inotify::{EventMask, WatchDescriptor};
use log::{debug, error, info, warn};
use serde_json::{Value, json};

use crate::config::{self, Config, Job};
use crate::exec::{self, RunContext, RunSpec};
use crate::store::{PendingRecord, PreviousRuns, RunRecord, Store};
use crate::trigger::{self, Outcome};
use crate::watch::{FsEvent, Watcher};
use scheduler::{Scheduler, Start};

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
}

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
    let mut daemon = Daemon::new(loaded.config, opts)?;
    daemon.start()?;
    Ok(daemon.event_loop())
}

/// A run in progress.
struct ActiveRun {
    record: RunRecord,
    run_dir: PathBuf,
    /// The supervisor's pid (our child, so it cannot be reused before we reap it).
    pid: u32,
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
    job_watches: HashMap<String, WatchDescriptor>,
    root_watched: bool,
    running: HashMap<String, ActiveRun>,
    /// Young trigger files that did not parse yet: retry at the time given.
    retries: HashMap<PathBuf, (String, f64)>,
    /// Finished runs whose database write failed; retried.
    unrecorded: Vec<RunRecord>,
    /// When to try again to start runs / record runs after a database failure.
    db_retry_at: Option<f64>,
    warned_dirs: HashSet<String>,
    next_rescan: f64,
    shutdown: Option<Shutdown>,
    exe: PathBuf,
    daemon_path: Option<String>,
    user: Option<(String, String)>,
    /// Runs recorded by this process (for `--once`).
    recorded: Vec<RunRecord>,
}

impl Daemon {
    fn new(config: Config, opts: Options) -> anyhow::Result<Daemon> {
        std::fs::create_dir_all(trigger_root(&config)).map_err(|e| {
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
            running: HashMap::new(),
            retries: HashMap::new(),
            unrecorded: Vec::new(),
            db_retry_at: None,
            warned_dirs: HashSet::new(),
            next_rescan: 0.0,
            shutdown: None,
            exe,
            daemon_path: std::env::var("PATH").ok(),
            user,
            recorded: Vec::new(),
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
        self.recover_running();
        self.rescan_all();
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
        for mut record in rows {
            let run_dir = run_dir(&self.config, &record.job_name, &record.run_id);
            if let exec::SupervisorState::Alive(pid) = exec::probe_supervisor(&run_dir) {
                info!(
                    "[{} {}] still running under supervisor pid {}: adopted",
                    record.job_name,
                    record.run_id,
                    pid.map(|p| p.to_string()).unwrap_or_else(|| "?".into())
                );
                self.scheduler.adopt(&record.run_id, &record.job_name, None);
                self.wait_for_adopted(record.run_id.clone(), run_dir.clone());
                let active = ActiveRun {
                    record,
                    run_dir,
                    pid: pid.unwrap_or(0),
                };
                self.running.insert(active.record.run_id.clone(), active);
                continue;
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
            self.record_finished(record);
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
            if self.shutdown.is_none() {
                self.start_due(now);
            }
            if self.shutdown.is_some() && self.running.is_empty() {
                self.flush_unrecorded();
                info!("shut down");
                return 0;
            }
            if self.opts.once && self.once_done(now) {
                self.flush_unrecorded();
                print_runs(&self.recorded);
                return 0;
            }
            let wait = (self.next_wakeup(now) - crate::time::now()).clamp(0.0, RESCAN_INTERVAL);
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
        self.running.is_empty() && self.retries.is_empty() && !self.scheduler.has_due(now)
    }

    fn next_wakeup(&self, now: f64) -> f64 {
        let mut t = self.next_rescan;
        let mut consider = |x: Option<f64>| {
            if let Some(x) = x {
                t = t.min(x);
            }
        };
        if self.shutdown.is_none() {
            consider(self.scheduler.next_due(now));
        }
        consider(
            self.retries
                .values()
                .map(|(_, at)| *at)
                .min_by(f64::total_cmp),
        );
        consider(self.db_retry_at);
        consider(self.shutdown.as_ref().and_then(|s| s.kill_at));
        t
    }

    fn fire_timers(&mut self, now: f64) {
        if now >= self.next_rescan {
            self.rescan_all();
        }
        let due: Vec<(PathBuf, String)> = self
            .retries
            .iter()
            .filter(|(_, (_, at))| *at <= now)
            .map(|(p, (job, _))| (p.clone(), job.clone()))
            .collect();
        for (path, job) in due {
            self.retries.remove(&path);
            self.process_file(&job, &path);
        }
        if self.db_retry_at.is_some_and(|t| t <= now) {
            self.db_retry_at = None;
            self.flush_unrecorded();
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
                signal_supervisor(run.pid, nix::sys::signal::Signal::SIGUSR2);
            }
        }
    }

    fn handle(&mut self, ev: Event) {
        match ev {
            Event::Exited(run_id) => self.finish(&run_id),
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
                let Some(name) = name.and_then(|n| n.into_string().ok()) else {
                    return;
                };
                match target {
                    WatchTarget::Root => {
                        if mask.contains(EventMask::ISDIR) {
                            self.job_dir_appeared(&name);
                        }
                    }
                    WatchTarget::Job(job) => self.file_event(&job, &name, mask),
                }
            }
        }
    }

    fn file_event(&mut self, job: &str, name: &str, mask: EventMask) {
        if !trigger::is_trigger_name(name) {
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
                    self.job_watches.drain().map(|(_, wd)| wd).collect();
                for wd in stale {
                    self.watch_targets.remove(&wd);
                    if let Some(w) = self.watcher.as_mut() {
                        w.unwatch(wd);
                    }
                }
                self.rescan_all();
            }
            WatchTarget::Job(job) => {
                if self.job_watches.get(job) == Some(&wd) {
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

    /// Rescan every trigger directory (start, SIGUSR1, overflow, every 60 s).
    fn rescan_all(&mut self) {
        self.next_rescan = crate::time::now() + RESCAN_INTERVAL;
        let root = trigger_root(&self.config);
        if let Err(e) = std::fs::create_dir_all(&root) {
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
        let jobs: Vec<String> = self.config.jobs.keys().cloned().collect();
        for job in &jobs {
            self.scan_job(job);
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

    /// Make sure a job's trigger directory exists and is watched, then scan it
    /// (watch first, so that a file written in between is not missed).
    fn scan_job(&mut self, job: &str) {
        let dir = job_trigger_dir(&self.config, job);
        match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.file_type().is_symlink() || !m.is_dir() => {
                if self.warned_dirs.insert(format!("\0{job}")) {
                    error!(
                        "[{job}] {} is not a directory (a symlink or a file); it is not followed. Remove it so that dsari can create the directory",
                        dir.display()
                    );
                }
                return;
            }
            Ok(m) => {
                use std::os::unix::fs::PermissionsExt;
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
                if let Err(e) = std::fs::create_dir_all(&dir) {
                    error!("[{job}] cannot create {}: {e}", dir.display());
                    return;
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
                    self.job_watches.insert(job.to_string(), wd);
                }
                Err(e) => {
                    if self.warned_dirs.insert(format!("\0i{job}")) {
                        warn!(
                            "[{job}] cannot watch {}: {e}; relying on rescans",
                            dir.display()
                        );
                    }
                }
            }
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
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
        // Arrival order, as far as a scan can tell it.
        files.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
        for (_, path) in files {
            self.process_file(job, &path);
        }
    }

    /// Read one trigger file and turn it into a pending run, a retry or a rejection.
    fn process_file(&mut self, job_name: &str, path: &Path) {
        if !self.config.jobs.contains_key(job_name) {
            return;
        }
        let now = crate::time::now();
        match trigger::read(path, self.config.trigger_max_bytes, now) {
            Outcome::Gone => {
                self.retries.remove(path);
            }
            Outcome::RetryAt(at) => {
                debug!(
                    "[{job_name}] {} does not parse yet; it is young, trying again later",
                    path.display()
                );
                self.retries
                    .insert(path.to_path_buf(), (job_name.to_string(), at));
            }
            Outcome::Reject(reason) => {
                self.retries.remove(path);
                self.reject(job_name, path, &reason);
            }
            Outcome::Trigger(t) => {
                self.retries.remove(path);
                self.accept(job_name, path, t);
            }
        }
    }

    fn accept(&mut self, job_name: &str, path: &Path, t: trigger::Trigger) {
        let Some(job) = self.config.jobs.get(job_name) else {
            return;
        };
        let (_, dropped) =
            trigger::filter_environment(&t.environment, job.trigger_environment_allow.as_deref());
        let mut run_data = json!({});
        if !dropped.is_empty() {
            warn!(
                "[{job_name}] {}: environment names dropped (not allowed from a trigger file): {}",
                path.display(),
                dropped.join(", ")
            );
            run_data["dropped_environment"] = json!(dropped);
        }
        let mut pending = PendingRecord {
            run_id: uuid::Uuid::new_v4().to_string(),
            job_name: job_name.to_string(),
            schedule_time: t.schedule_time,
            trigger_type: "file".into(),
            trigger_data: Value::Object(t.data),
            run_data,
        };
        let replaces = self.scheduler.coalesce(&mut pending);
        let saved = match &replaces {
            Some(old) => self.store.replace_pending(old, &pending),
            None => self.store.put_pending(&pending),
        };
        if let Err(e) = saved {
            // Keep the file: it is picked up again once the database answers.
            error!(
                "[{job_name}] {}: cannot record the pending run, the file stays for a retry: {e}",
                path.display()
            );
            self.retries.insert(
                path.to_path_buf(),
                (job_name.to_string(), crate::time::now() + DB_RETRY),
            );
            return;
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match &replaces {
            Some(old) => info!(
                "[{job_name} {}] trigger {name} seen, run due {}, replacing pending run {old}",
                pending.run_id,
                due_text(pending.schedule_time)
            ),
            None => info!(
                "[{job_name} {}] trigger {name} seen, run due {}",
                pending.run_id,
                due_text(pending.schedule_time)
            ),
        }
        self.scheduler.insert(pending, replaces.as_deref());
        if let Err(e) = std::fs::remove_file(path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            error!(
                "[{job_name}] cannot remove {} after recording it: {e}",
                path.display()
            );
        }
    }

    fn reject(&mut self, job_name: &str, path: &Path, reason: &str) {
        let dir = job_trigger_dir(&self.config, job_name).join(".rejected");
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if let Err(e) = std::fs::create_dir_all(&dir) {
            error!(
                "[{job_name}] trigger {name} rejected ({reason}) but cannot create {}: {e}",
                dir.display()
            );
            return;
        }
        let target = unique_name(&dir, &name);
        if let Err(e) = std::fs::rename(path, &target) {
            error!(
                "[{job_name}] trigger {name} rejected ({reason}) but cannot move it to {}: {e}",
                dir.display()
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

    fn start_due(&mut self, now: f64) {
        if self.db_retry_at.is_some() {
            return;
        }
        let starts = self.scheduler.due(now, &mut |n| random_below(n));
        let mut failed = false;
        for start in starts {
            if failed {
                self.scheduler.unstart(start);
            } else if let Err(start) = self.start_run(start) {
                failed = true;
                self.scheduler.unstart(*start);
            }
        }
        if failed {
            self.db_retry_at = Some(crate::time::now() + DB_RETRY);
        }
    }

    /// Start one run. Gives the run back when the database refused it (try again later).
    fn start_run(&mut self, start: Start) -> Result<(), Box<Start>> {
        let Some(job) = self.config.jobs.get(&start.run.job_name).cloned() else {
            return Err(Box::new(start));
        };
        let p = &start.run;
        let dir = run_dir(&self.config, &job.name, &p.run_id);
        let previous = self.store.previous_runs(&job.name).unwrap_or_else(|e| {
            warn!(
                "[{} {}] cannot look up previous runs: {e}",
                job.name, p.run_id
            );
            PreviousRuns::default()
        });
        let mut record = RunRecord {
            job_name: job.name.clone(),
            run_id: p.run_id.clone(),
            schedule_time: p.schedule_time,
            start_time: crate::time::now(),
            stop_time: None,
            exit_code: None,
            trigger_type: p.trigger_type.clone(),
            trigger_data: p.trigger_data.clone(),
            run_data: p.run_data.clone(),
        };
        if let Err(e) = self.store.start_run(&record) {
            error!(
                "[{} {}] cannot record the start of the run, will retry: {e}",
                job.name, p.run_id
            );
            return Err(Box::new(start));
        }
        let spec = self.run_spec(&job, &record, &dir, start.group.as_deref(), &previous);
        let spawned = std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create the run directory {}: {e}", dir.display()))
            .and_then(|()| {
                exec::spawn_supervisor(&self.exe, &dir, &spec)
                    .map_err(|e| format!("cannot start the run's supervisor: {e}"))
            });
        match spawned {
            Ok(child) => {
                let pid = child.id();
                info!(
                    "[{} {}] started, pid {pid}{}: {}",
                    job.name,
                    record.run_id,
                    start
                        .group
                        .as_deref()
                        .map(|g| format!(", group {g}"))
                        .unwrap_or_default(),
                    shell_words::join(&spec.argv)
                );
                self.wait_in_thread(record.run_id.clone(), child);
                self.running.insert(
                    record.run_id.clone(),
                    ActiveRun {
                        record,
                        run_dir: dir,
                        pid,
                    },
                );
            }
            Err(msg) => {
                error!("[{} {}] {msg}", job.name, record.run_id);
                record.stop_time = Some(crate::time::now());
                record.exit_code = Some(-1);
                record.run_data["error"] = json!(msg);
                self.scheduler.finished(&record.run_id);
                self.record_finished(record);
            }
        }
        Ok(())
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
        if status.is_none() {
            record.run_data["lost"] =
                json!("the run's supervisor ended without leaving an exit status");
        }
        apply_status(&mut record, &active.run_dir, status);
        info!(
            "[{} {}] finished with exit code {} in {:.3} s",
            record.job_name,
            record.run_id,
            record.exit_code.unwrap_or(-1),
            record.stop_time.unwrap_or(record.start_time) - record.start_time
        );
        self.record_finished(record);
    }

    /// Move a finished run to `runs`; keep it for a retry when the database fails.
    fn record_finished(&mut self, record: RunRecord) {
        match self.store.finish_run(&record) {
            Ok(()) => {
                if self.opts.once {
                    self.recorded.push(record);
                }
            }
            Err(e) => {
                if self.unrecorded.is_empty() {
                    error!(
                        "[{} {}] cannot record the finished run, keeping it to retry: {e}",
                        record.job_name, record.run_id
                    );
                }
                self.unrecorded.push(record);
                self.db_retry_at
                    .get_or_insert(crate::time::now() + DB_RETRY);
            }
        }
    }

    fn flush_unrecorded(&mut self) {
        let pending = std::mem::take(&mut self.unrecorded);
        let n = pending.len();
        for record in pending {
            self.record_finished(record);
        }
        if n > 0 && self.unrecorded.is_empty() {
            info!("the database answers again: {n} finished runs recorded");
        }
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
        self.rescan_all();
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
        let kill_at = self
            .config
            .shutdown_kill_grace
            .map(|g| crate::time::now() + g);
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
            self.scheduler.pending().len()
        );
        for (id, run) in &self.running {
            info!(
                "status: [{} {id}] running, pid {}, for {:.1} s{}",
                run.record.job_name,
                run.pid,
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

fn signal_supervisor(pid: u32, sig: nix::sys::signal::Signal) {
    if pid == 0 {
        return;
    }
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
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
