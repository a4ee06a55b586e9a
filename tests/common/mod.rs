//! Test harness for the integration tests: runs the real `dsari` binary in a
//! temporary config dir and data dir, with real files, processes, signals and
//! the real SQLite file.
//!
//! Every wait is a poll of a condition with a deadline, never a fixed sleep.
//! Every panic message carries the daemon's log (and a short dump of the
//! database and the trigger directories), so a failing test explains itself.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use filetime::FileTime;
use nix::errno::Errno;
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use rusqlite::{Connection, OpenFlags};
use serde_json::{Value, json};
use tempfile::TempDir;

/// How long a test waits for anything before it fails. Generous on purpose:
/// tests run in parallel on a small machine; a real hang is still caught.
pub const DEADLINE: Duration = Duration::from_secs(15);

/// How often conditions are polled.
pub const POLL: Duration = Duration::from_millis(20);

/// The binary under test.
pub const DSARI: &str = env!("CARGO_BIN_EXE_dsari");

/// Shell snippet for a run that waits until the test creates `$DATA_DIR/NAME`.
/// Bounded (about 30 s) so that a failed test never leaves a process behind
/// forever.
pub fn wait_for_release(name: &str) -> String {
    format!(
        r#"i=0; while [ ! -e "$DATA_DIR/{name}" ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done"#
    )
}

/// A job command: `/bin/sh -c SCRIPT`.
pub fn sh(script: &str) -> Value {
    json!(["/bin/sh", "-c", script])
}

/// Seconds since the epoch, as a float.
pub fn now_epoch() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock before 1970")
        .as_secs_f64()
}

/// A `FileTime` for an epoch time in (possibly fractional) seconds.
pub fn filetime_of(epoch: f64) -> FileTime {
    let secs = epoch.floor();
    let nanos = ((epoch - secs) * 1e9).round().min(999_999_999.0);
    FileTime::from_unix_time(secs as i64, nanos as u32)
}

/// A file's mtime as epoch seconds with sub-second precision.
pub fn mtime_of(path: &Path) -> f64 {
    let meta = fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("cannot stat {}: {e}", path.display()));
    meta.mtime() as f64 + meta.mtime_nsec() as f64 / 1e9
}

/// Poll `cond` every [`POLL`] until it holds or `deadline` passes; says which.
pub fn wait_until(deadline: Instant, mut cond: impl FnMut() -> bool) -> bool {
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
}

/// Is the process gone (no such pid, or only a zombie left)? Zombies count as
/// gone: the test machine's pid 1 may not reap orphans.
pub fn process_gone(pid: i32) -> bool {
    match signal::kill(Pid::from_raw(pid), None) {
        Err(Errno::ESRCH) => true,
        _ => match fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) => {
                let state = stat
                    .rsplit_once(')')
                    .map(|(_, rest)| rest.trim_start().chars().next().unwrap_or('?'))
                    .unwrap_or('?');
                state == 'Z' || state == 'X'
            }
            Err(_) => true,
        },
    }
}

/// One row of `runs`.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub job_name: String,
    pub run_id: String,
    pub schedule_time: f64,
    pub start_time: f64,
    pub stop_time: f64,
    pub exit_code: i64,
    pub trigger_type: String,
    pub trigger_data: Value,
    pub run_data: Value,
}

/// One row of `runs_running`.
#[derive(Debug, Clone, PartialEq)]
pub struct Running {
    pub job_name: String,
    pub run_id: String,
    pub schedule_time: f64,
    pub start_time: f64,
    pub trigger_type: String,
    pub trigger_data: Value,
    pub run_data: Value,
}

impl Run {
    /// `trigger_data.marker`, the tests' way to tell triggers apart.
    pub fn marker(&self) -> Option<&str> {
        self.trigger_data.get("marker").and_then(Value::as_str)
    }

    /// `run_data.coalesced_triggers`, or an empty list when absent.
    pub fn coalesced(&self) -> Vec<Value> {
        match self.run_data.get("coalesced_triggers") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a.clone(),
            Some(other) => panic!(
                "run_data.coalesced_triggers of run {} is not a list: {other}",
                self.run_id
            ),
        }
    }
}

/// A temporary config dir and data dir, plus the daemon log.
pub struct TestEnv {
    _tmp: TempDir,
    /// Canonical root of the temporary tree (so paths compare equal to what
    /// the daemon and `pwd -P` report).
    pub root: PathBuf,
    pub config_dir: PathBuf,
    pub data_dir: PathBuf,
    /// The daemon's stderr (appended to by every daemon start in this env).
    pub log_path: PathBuf,
    /// Where the daemon's HOME points (not the running user's home).
    pub daemon_home: PathBuf,
    config: RefCell<Value>,
    daemon_pid: Cell<Option<i32>>,
}

impl TestEnv {
    /// Temporary dirs plus `CONFIG_DIR/dsari.json` holding `config` with
    /// `data_dir` filled in.
    pub fn new(config: Value) -> TestEnv {
        let tmp = tempfile::Builder::new()
            .prefix("dsari-test-")
            .tempdir()
            .expect("create temp dir");
        let root = tmp.path().canonicalize().expect("canonicalize temp dir");
        let config_dir = root.join("etc");
        let data_dir = root.join("var");
        let daemon_home = root.join("daemon-home");
        for d in [&config_dir, &data_dir, &daemon_home] {
            fs::create_dir_all(d).expect("create test dir");
        }
        let env = TestEnv {
            _tmp: tmp,
            log_path: root.join("daemon.log"),
            root,
            config_dir,
            data_dir,
            daemon_home,
            config: RefCell::new(Value::Null),
            daemon_pid: Cell::new(None),
        };
        env.write_config(config);
        env
    }

    /// Replace `CONFIG_DIR/dsari.json` with `config` (plus `data_dir`).
    pub fn write_config(&self, mut config: Value) {
        let obj = config
            .as_object_mut()
            .expect("test config must be a JSON object");
        obj.insert(
            "data_dir".into(),
            Value::String(self.data_dir.display().to_string()),
        );
        let text = serde_json::to_string_pretty(&config).expect("serialize config");
        self.write_config_file("dsari.json", &text);
        *self.config.borrow_mut() = config;
    }

    /// Write a file under the config dir (atomically), e.g. `config.d/x.yaml`
    /// or a deliberately broken `dsari.json`.
    pub fn write_config_file(&self, rel: &str, text: &str) {
        let path = self.config_dir.join(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).expect("create config subdir");
        }
        write_atomic(&path, text.as_bytes(), None);
    }

    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("dsari.sqlite3")
    }

    pub fn trigger_dir(&self, job: &str) -> PathBuf {
        self.data_dir.join("trigger").join(job)
    }

    pub fn rejected_dir(&self, job: &str) -> PathBuf {
        self.trigger_dir(job).join(".rejected")
    }

    pub fn run_dir(&self, job: &str, run_id: &str) -> PathBuf {
        self.data_dir.join("runs").join(job).join(run_id)
    }

    /// Job names of the current config (`jobs` plus expanded `job_groups`).
    pub fn job_names(&self) -> Vec<String> {
        let config = self.config.borrow();
        let mut names: Vec<String> = config
            .get("jobs")
            .and_then(Value::as_object)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        if let Some(groups) = config.get("job_groups").and_then(Value::as_object) {
            for group in groups.values() {
                if let Some(list) = group.get("job_names").and_then(Value::as_array) {
                    names.extend(list.iter().filter_map(Value::as_str).map(String::from));
                }
            }
        }
        names
    }

    // ----- the daemon ----------------------------------------------------

    /// Start `dsari daemon -c CONFIG_DIR` and wait until it has created the
    /// trigger directory of every configured job.
    pub fn start_daemon(&self) -> Daemon {
        self.start_daemon_with(&[], &[])
    }

    /// Like [`start_daemon`](Self::start_daemon), with extra arguments and
    /// extra environment variables for the daemon process.
    pub fn start_daemon_with(&self, args: &[&str], envs: &[(&str, &str)]) -> Daemon {
        let daemon = self.spawn_daemon(args, envs);
        self.wait_trigger_dirs(daemon)
    }

    /// Like [`start_daemon`](Self::start_daemon), with the daemon's umask set
    /// to `umask` (the test process's own umask is left alone).
    pub fn start_daemon_with_umask(&self, umask: u32) -> Daemon {
        let daemon = self.spawn_daemon_inner(&[], &[], Some(umask));
        self.wait_trigger_dirs(daemon)
    }

    /// Wait until the daemon has created the trigger dir of every job.
    fn wait_trigger_dirs(&self, mut daemon: Daemon) -> Daemon {
        for job in self.job_names() {
            let dir = self.trigger_dir(&job);
            let ok = wait_until(Instant::now() + DEADLINE, || {
                dir.is_dir() || !daemon.is_alive()
            });
            if !ok || !dir.is_dir() {
                self.fail(&format!(
                    "the daemon did not create trigger dir {} (daemon alive: {})",
                    dir.display(),
                    daemon.is_alive()
                ));
            }
        }
        daemon
    }

    /// Start the daemon without waiting for anything.
    pub fn spawn_daemon(&self, args: &[&str], envs: &[(&str, &str)]) -> Daemon {
        self.spawn_daemon_inner(args, envs, None)
    }

    fn spawn_daemon_inner(
        &self,
        args: &[&str],
        envs: &[(&str, &str)],
        umask: Option<u32>,
    ) -> Daemon {
        let mut cmd = self.command(&["daemon", "-c"]);
        if let Some(mask) = umask {
            use std::os::unix::process::CommandExt;
            let mode = nix::sys::stat::Mode::from_bits_truncate(mask);
            // SAFETY: umask(2) is async-signal-safe and touches no memory.
            unsafe {
                cmd.pre_exec(move || {
                    nix::sys::stat::umask(mode);
                    Ok(())
                });
            }
        }
        cmd.arg(&self.config_dir)
            .args(args)
            .env("RUST_BACKTRACE", "1");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open daemon log");
        let stdout = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.join("daemon.stdout"))
            .expect("open daemon stdout");
        // stdin is a pipe that stays open and silent: a run that wrongly
        // inherits it would block on reading it.
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(log));
        let mut child = cmd.spawn().expect("spawn dsari daemon");
        let stdin = child.stdin.take();
        self.daemon_pid.set(Some(child.id() as i32));
        Daemon {
            child,
            _stdin: stdin,
            log_path: self.log_path.clone(),
            exited: None,
        }
    }

    /// A `dsari` command with a clean environment: PATH and HOME only.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(DSARI);
        cmd.args(args)
            .env_clear()
            .env("PATH", daemon_path())
            .env("HOME", &self.daemon_home)
            .current_dir(&self.root);
        cmd
    }

    /// Run `dsari ARGS…` to completion (with the deadline), capturing output.
    pub fn run_cli(&self, args: &[&str]) -> CliOutput {
        let mut cmd = self.command(args);
        self.run_captured(&mut cmd, &format!("dsari {}", args.join(" ")))
    }

    /// `dsari daemon -c CONFIG_DIR --once`, to completion.
    pub fn run_once(&self) -> CliOutput {
        let mut cmd = self.command(&["daemon", "-c"]);
        cmd.arg(&self.config_dir).arg("--once");
        self.run_captured(&mut cmd, "dsari daemon --once")
    }

    fn run_captured(&self, cmd: &mut Command, what: &str) -> CliOutput {
        let n = NEXT_CLI.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let out_path = self.root.join(format!("cli-{n}.stdout"));
        let err_path = self.root.join(format!("cli-{n}.stderr"));
        cmd.stdin(Stdio::null())
            .stdout(File::create(&out_path).expect("create stdout file"))
            .stderr(File::create(&err_path).expect("create stderr file"));
        let mut child = cmd.spawn().expect("spawn dsari");
        let mut status = None;
        wait_until(Instant::now() + DEADLINE * 2, || {
            status = child.try_wait().expect("try_wait");
            status.is_some()
        });
        let read =
            |p: &Path| String::from_utf8_lossy(&fs::read(p).unwrap_or_default()).into_owned();
        match status {
            Some(status) => CliOutput {
                status,
                stdout: read(&out_path),
                stderr: read(&err_path),
            },
            None => {
                let _ = child.kill();
                let _ = child.wait();
                self.fail(&format!(
                    "`{what}` did not finish within {:?}\n--- its stdout ---\n{}\n--- its stderr ---\n{}",
                    DEADLINE * 2,
                    read(&out_path),
                    read(&err_path)
                ))
            }
        }
    }

    /// Send `sig` to the most recently started daemon.
    pub fn signal(&self, sig: Signal) {
        let pid = self.daemon_pid.get().expect("no daemon started");
        signal::kill(Pid::from_raw(pid), sig)
            .unwrap_or_else(|e| self.fail(&format!("cannot send {sig} to the daemon: {e}")));
    }

    // ----- the log -------------------------------------------------------

    /// Everything the daemon(s) of this env wrote to stderr so far.
    pub fn log(&self) -> String {
        read_log(&self.log_path)
    }

    /// Current length of the log, to look only at what comes after.
    pub fn log_len(&self) -> usize {
        self.log().len()
    }

    /// The log from byte `offset` on.
    pub fn log_since(&self, offset: usize) -> String {
        let log = self.log();
        log.get(offset..).unwrap_or("").to_string()
    }

    // ----- waiting and failing -------------------------------------------

    /// Wait (up to [`DEADLINE`]) until `cond` holds; panic with the log if not.
    pub fn wait_until(&self, what: &str, cond: impl FnMut() -> bool) {
        self.wait_until_for(DEADLINE, what, cond)
    }

    pub fn wait_until_for(&self, timeout: Duration, what: &str, cond: impl FnMut() -> bool) {
        if !wait_until(Instant::now() + timeout, cond) {
            self.fail(&format!("timed out after {timeout:?} waiting for {what}"));
        }
    }

    /// Wait until `f` returns `Some`, and return that.
    pub fn wait_for<T>(&self, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
        let mut found = None;
        self.wait_until(what, || {
            found = f();
            found.is_some()
        });
        found.expect("condition held")
    }

    /// Panic with `msg` plus everything useful for diagnosing it.
    #[track_caller]
    pub fn fail(&self, msg: &str) -> ! {
        panic!("{msg}\n{}", self.diagnostics())
    }

    /// The daemon log, the `runs` table and the trigger tree, as text.
    pub fn diagnostics(&self) -> String {
        let runs = match self.try_runs() {
            Ok(runs) => runs
                .iter()
                .map(|r| {
                    format!(
                        "  {} {} exit={} trigger_data={} run_data={}",
                        r.job_name, r.run_id, r.exit_code, r.trigger_data, r.run_data
                    )
                })
                .collect::<Vec<_>>()
                .join("\n"),
            Err(e) => format!("  (cannot read runs: {e})"),
        };
        let running = match self.try_running() {
            Ok(rows) => rows
                .iter()
                .map(|r| format!("  {} {}", r.job_name, r.run_id))
                .collect::<Vec<_>>()
                .join("\n"),
            Err(e) => format!("  (cannot read runs_running: {e})"),
        };
        let mut tree = String::new();
        list_tree(&self.data_dir.join("trigger"), &self.data_dir, &mut tree);
        format!(
            "--- daemon log ({}) ---\n{}\n--- runs ---\n{runs}\n--- runs_running ---\n{running}\n--- trigger tree ---\n{tree}--- end ---",
            self.log_path.display(),
            self.log(),
        )
    }

    // ----- triggers ------------------------------------------------------

    /// Write trigger `name` for `job` atomically (temporary dot-name, then
    /// rename), creating the trigger dir if needed. Returns its path.
    pub fn trigger(&self, job: &str, name: &str, content: &str) -> PathBuf {
        self.trigger_bytes(job, name, content.as_bytes(), None)
    }

    /// A JSON trigger.
    pub fn trigger_json(&self, job: &str, name: &str, value: &Value) -> PathBuf {
        self.trigger(job, name, &value.to_string())
    }

    /// A trigger with raw content and, optionally, a given mtime (set before
    /// the rename, so the daemon never sees another one).
    pub fn trigger_bytes(
        &self,
        job: &str,
        name: &str,
        content: &[u8],
        mtime: Option<FileTime>,
    ) -> PathBuf {
        let dir = self.trigger_dir(job);
        fs::create_dir_all(&dir).expect("create trigger dir");
        let path = dir.join(name);
        write_atomic(&path, content, mtime);
        path
    }

    /// Wait until the daemon has taken the trigger file away.
    pub fn wait_consumed(&self, path: &Path) {
        self.wait_until(
            &format!("trigger {} to be taken by the daemon", path.display()),
            || fs::symlink_metadata(path).is_err(),
        );
    }

    /// Names of the trigger files (not dot-files) still in a job's dir.
    pub fn trigger_files(&self, job: &str) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.trigger_dir(job))
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// Entries of `trigger/JOB/.rejected/` (empty when it does not exist).
    pub fn rejected_entries(&self, job: &str) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.rejected_dir(job))
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// The rejected copy of trigger `name` and the text of its `.error` file,
    /// once both exist.
    pub fn rejected(&self, job: &str, name: &str) -> Option<(PathBuf, String)> {
        let entries = self.rejected_entries(job);
        let moved = entries
            .iter()
            .find(|e| e.starts_with(name) && !e.ends_with(".error"))?;
        let error = entries
            .iter()
            .find(|e| e.starts_with(name) && e.ends_with(".error"))?;
        let error = fs::read_to_string(self.rejected_dir(job).join(error)).ok()?;
        Some((self.rejected_dir(job).join(moved), error))
    }

    pub fn wait_rejected(&self, job: &str, name: &str) -> (PathBuf, String) {
        self.wait_for(
            &format!("trigger {name} of job {job} to be moved to .rejected/ with a .error file"),
            || self.rejected(job, name),
        )
    }

    /// Create `DATA_DIR/NAME`, releasing runs that wait for it
    /// ([`wait_for_release`]).
    pub fn release(&self, name: &str) {
        File::create(self.data_dir.join(name)).expect("create release file");
    }

    // ----- the database --------------------------------------------------

    /// A fresh read-only connection to the database.
    pub fn open_db(&self) -> rusqlite::Result<Connection> {
        open_db_read_only(&self.db_path())
    }

    /// All rows of `runs`, oldest start first.
    pub fn try_runs(&self) -> Result<Vec<Run>, String> {
        let conn = self.open_db().map_err(|e| e.to_string())?;
        read_runs(&conn)
    }

    pub fn runs(&self) -> Vec<Run> {
        self.try_runs()
            .unwrap_or_else(|e| self.fail(&format!("cannot read table runs: {e}")))
    }

    pub fn runs_of(&self, job: &str) -> Vec<Run> {
        self.runs()
            .into_iter()
            .filter(|r| r.job_name == job)
            .collect()
    }

    pub fn try_running(&self) -> Result<Vec<Running>, String> {
        let conn = self.open_db().map_err(|e| e.to_string())?;
        read_running(&conn)
    }

    pub fn running(&self) -> Vec<Running> {
        self.try_running()
            .unwrap_or_else(|e| self.fail(&format!("cannot read table runs_running: {e}")))
    }

    /// Wait until `job` has at least `n` finished runs; return them all.
    pub fn wait_runs(&self, job: &str, n: usize) -> Vec<Run> {
        let mut last_err = String::new();
        let mut found = Vec::new();
        let ok = wait_until(Instant::now() + DEADLINE, || match self.try_runs() {
            Ok(runs) => {
                found = runs.into_iter().filter(|r| r.job_name == job).collect();
                found.len() >= n
            }
            Err(e) => {
                last_err = e;
                false
            }
        });
        if !ok {
            self.fail(&format!(
                "timed out after {DEADLINE:?} waiting for {n} finished run(s) of job {job} \
                 (have {}; last database error: {last_err:?})",
                found.len()
            ));
        }
        found
    }

    /// Wait until exactly one run of `job` is in `runs_running`; return it.
    pub fn wait_running(&self, job: &str) -> Running {
        self.wait_for(&format!("a running run of job {job}"), || {
            let rows = self.try_running().ok()?;
            let mut mine: Vec<Running> = rows.into_iter().filter(|r| r.job_name == job).collect();
            (mine.len() == 1).then(|| mine.remove(0))
        })
    }

    // ----- run output ----------------------------------------------------

    pub fn output_path(&self, job: &str, run_id: &str) -> PathBuf {
        self.run_dir(job, run_id).join("output.txt")
    }

    /// A run's `output.txt` ("" when missing).
    pub fn output(&self, run: &Run) -> String {
        self.output_of(&run.job_name, &run.run_id)
    }

    pub fn output_of(&self, job: &str, run_id: &str) -> String {
        String::from_utf8_lossy(&fs::read(self.output_path(job, run_id)).unwrap_or_default())
            .into_owned()
    }

    /// Wait until a (running) run's output contains `needle`.
    pub fn wait_output_contains(&self, job: &str, run_id: &str, needle: &str) {
        self.wait_until(
            &format!("output of run {run_id} to contain {needle:?}"),
            || self.output_of(job, run_id).contains(needle),
        );
    }

    /// The `NAME=value` lines of a run's output (an `env` dump), as a map.
    pub fn env_of(&self, run: &Run) -> BTreeMap<String, String> {
        parse_env(&self.output(run))
    }
}

impl Drop for TestEnv {
    /// Kill what runs of this env are still going (a failed test may leave a
    /// run waiting for a release file); found by their `DATA_DIR`.
    fn drop(&mut self) {
        kill_runs_of(&self.data_dir);
    }
}

static NEXT_CLI: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Result of a finished `dsari` command.
#[derive(Debug)]
pub struct CliOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// A running daemon. Dropping it SIGKILLs the daemon.
pub struct Daemon {
    child: Child,
    _stdin: Option<ChildStdin>,
    log_path: PathBuf,
    exited: Option<ExitStatus>,
}

impl Daemon {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: Signal) {
        signal::kill(Pid::from_raw(self.pid()), sig)
            .unwrap_or_else(|e| panic!("cannot send {sig} to the daemon: {e}"));
    }

    pub fn is_alive(&mut self) -> bool {
        if self.exited.is_some() {
            return false;
        }
        self.exited = self.child.try_wait().expect("try_wait on daemon");
        self.exited.is_none()
    }

    /// Panic (with the log) unless the daemon is still running.
    #[track_caller]
    pub fn assert_alive(&mut self, env: &TestEnv) {
        if !self.is_alive() {
            env.fail(&format!("the daemon died: {:?}", self.exited));
        }
    }

    /// Wait (up to [`DEADLINE`]) for the daemon to exit; its status.
    pub fn wait_exit(&mut self, env: &TestEnv) -> ExitStatus {
        self.wait_exit_for(env, DEADLINE)
    }

    pub fn wait_exit_for(&mut self, env: &TestEnv, timeout: Duration) -> ExitStatus {
        if !wait_until(Instant::now() + timeout, || !self.is_alive()) {
            env.fail(&format!("the daemon did not exit within {timeout:?}"));
        }
        self.exited.expect("exited")
    }

    /// Wait up to `timeout` for the daemon to exit; `None` if it is still up.
    pub fn exits_within(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait_until(Instant::now() + timeout, || !self.is_alive());
        self.exited
    }

    pub fn log(&self) -> String {
        read_log(&self.log_path)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.is_alive() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ----- free helpers ------------------------------------------------------

/// PATH for the daemon: the test's own, or the spec's fallback.
pub fn daemon_path() -> String {
    std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".to_string())
}

pub fn read_log(path: &Path) -> String {
    String::from_utf8_lossy(&fs::read(path).unwrap_or_default()).into_owned()
}

/// Write `content` to a dot-named temporary file beside `path`, set its mtime
/// if asked, then rename it to `path`.
pub fn write_atomic(path: &Path, content: &[u8], mtime: Option<FileTime>) {
    let dir = path.parent().expect("path has a parent");
    let tmp = dir.join(format!(".tmp-{}", uuid::Uuid::new_v4()));
    {
        let mut f = File::create(&tmp).expect("create temp file");
        f.write_all(content).expect("write temp file");
        f.sync_all().ok();
    }
    if let Some(t) = mtime {
        filetime::set_file_mtime(&tmp, t).expect("set mtime");
    }
    fs::rename(&tmp, path).expect("rename temp file into place");
}

/// Open a SQLite file read-only, with a busy timeout (the database may be in
/// rollback-journal mode while the daemon migrates it).
pub fn open_db_read_only(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(5))?;
    Ok(conn)
}

fn json_column(text: Option<String>, column: &str, run_id: &str) -> Result<Value, String> {
    let text = text.ok_or_else(|| format!("{column} of run {run_id} is NULL"))?;
    serde_json::from_str(&text)
        .map_err(|e| format!("{column} of run {run_id} is not JSON ({e}): {text:?}"))
}

/// All rows of `runs`, oldest start first.
pub fn read_runs(conn: &Connection) -> Result<Vec<Run>, String> {
    let mut stmt = conn
        .prepare(
            "SELECT job_name, run_id, schedule_time, start_time, stop_time, exit_code, \
             trigger_type, trigger_data, run_data FROM runs ORDER BY start_time, rowid",
        )
        .map_err(|e| e.to_string())?;
    let rows = stmt
        .query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, f64>(2)?,
                row.get::<_, f64>(3)?,
                row.get::<_, f64>(4)?,
                row.get::<_, i64>(5)?,
                row.get::<_, String>(6)?,
                row.get::<_, Option<String>>(7)?,
                row.get::<_, Option<String>>(8)?,
            ))
        })
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for row in rows {
        let (
            job_name,
            run_id,
            schedule_time,
            start_time,
            stop_time,
            exit_code,
            trigger_type,
            td,
            rd,
        ) = row.map_err(|e| e.to_string())?;
        let trigger_data = json_column(td, "trigger_data", &run_id)?;
        let run_data = json_column(rd, "run_data", &run_id)?;
        out.push(Run {
            job_name,
            run_id,
            schedule_time,
            start_time,
            stop_time,
            exit_code,
            trigger_type,
            trigger_data,
            run_data,
        });
    }
    Ok(out)
}

/// All rows of `runs_running`.
pub fn read_running(conn: &Connection) -> Result<Vec<Running>, String> {
    let mut stmt = conn
        .prepare(
            "SELECT job_name, run_id, schedule_time, start_time, trigger_type, trigger_data, \
             run_data FROM runs_running ORDER BY start_time, rowid",
        )
        .map_err(|e| e.to_string())?;
    let rows = stmt
        .query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, f64>(2)?,
                row.get::<_, f64>(3)?,
                row.get::<_, String>(4)?,
                row.get::<_, Option<String>>(5)?,
                row.get::<_, Option<String>>(6)?,
            ))
        })
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for row in rows {
        let (job_name, run_id, schedule_time, start_time, trigger_type, td, rd) =
            row.map_err(|e| e.to_string())?;
        let trigger_data = json_column(td, "trigger_data", &run_id)?;
        let run_data = json_column(rd, "run_data", &run_id)?;
        out.push(Running {
            job_name,
            run_id,
            schedule_time,
            start_time,
            trigger_type,
            trigger_data,
            run_data,
        });
    }
    Ok(out)
}

/// `NAME=value` lines as a map (other lines are ignored).
pub fn parse_env(output: &str) -> BTreeMap<String, String> {
    output
        .lines()
        .filter_map(|line| {
            let (k, v) = line.split_once('=')?;
            let valid = !k.is_empty()
                && !k.starts_with(|c: char| c.is_ascii_digit())
                && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            valid.then(|| (k.to_string(), v.to_string()))
        })
        .collect()
}

/// Assert two epoch times agree within `tol` seconds.
#[track_caller]
pub fn assert_time_eq(env: &TestEnv, what: &str, got: f64, want: f64, tol: f64) {
    if (got - want).abs() > tol {
        env.fail(&format!(
            "{what}: got {got:.6}, want {want:.6} (difference {:.6} s, tolerance {tol} s)",
            got - want
        ));
    }
}

/// Parse an environment value as epoch seconds.
#[track_caller]
pub fn env_time(env: &TestEnv, vars: &BTreeMap<String, String>, name: &str) -> f64 {
    let v = vars.get(name).unwrap_or_else(|| {
        env.fail(&format!(
            "{name} missing from the run environment: {vars:?}"
        ))
    });
    v.parse::<f64>()
        .unwrap_or_else(|e| env.fail(&format!("{name}={v:?} is not epoch seconds: {e}")))
}

fn list_tree(dir: &Path, base: &Path, out: &mut String) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    let mut entries: Vec<_> = rd.filter_map(Result::ok).collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let rel = path.strip_prefix(base).unwrap_or(&path);
        let ft = fs::symlink_metadata(&path).map(|m| m.file_type());
        let kind = match ft {
            Ok(t) if t.is_symlink() => "symlink",
            Ok(t) if t.is_dir() => "dir",
            Ok(t) if t.is_file() => "file",
            Ok(_) => "special",
            Err(_) => "gone",
        };
        out.push_str(&format!("  {} ({kind})\n", rel.display()));
        if kind == "dir" {
            list_tree(&path, base, out);
        }
    }
}

/// SIGKILL every process whose environment says `DATA_DIR=<data_dir>`: the
/// runs of one test env, and nothing else.
fn kill_runs_of(data_dir: &Path) {
    let needle = format!("DATA_DIR={}", data_dir.display());
    let me = std::process::id() as i32;
    let Ok(proc_dir) = fs::read_dir("/proc") else {
        return;
    };
    for entry in proc_dir.filter_map(Result::ok) {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(environ) = fs::read(entry.path().join("environ")) else {
            continue;
        };
        if environ
            .split(|b| *b == 0)
            .any(|var| var == needle.as_bytes())
        {
            let _ = signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}
