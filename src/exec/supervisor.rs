//! The per-run supervisor: one small process per run, outside the daemon.
//!
//! It starts the command as the leader of its own process group with stdin from
//! /dev/null and stdout+stderr to `output.txt`, enforces `max_execution` on the
//! whole group, forwards the daemon's stop requests, and on the end writes
//! [`RunStatus`] into the run dir (over its reserved lock file, then renamed).
//! Forked by the launcher, it also creates the run dir. It never touches
//! the database: that is the daemon's job, so a supervisor works while the
//! daemon is down.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix::sys::resource::{UsageWho, getrusage};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use super::{LOCK_FILE, OUTPUT_FILE, SPEC_FILE, STATUS_FILE};

/// Exit code for a command that was not found (as a shell reports it).
pub const EXIT_NOT_FOUND: i64 = 127;
/// Exit code for a command that was found but could not be executed.
pub const EXIT_CANNOT_EXECUTE: i64 = 126;

/// Everything a supervisor needs: handed over in memory by the launcher (or
/// written into the run dir by the daemon), kept in the run dir as `.dsari-run.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunSpec {
    pub job_name: String,
    pub run_id: String,
    /// The command and its arguments; `argv[0]` is looked up on `search_path`.
    pub argv: Vec<String>,
    /// The complete environment of the command.
    pub environment: BTreeMap<String, String>,
    /// The daemon's `PATH`: the command is looked up here, never on the run's own `PATH`.
    pub search_path: String,
    pub working_dir: PathBuf,
    /// Seconds; SIGTERM to the group when exceeded.
    pub max_execution: Option<f64>,
    /// Seconds after the SIGTERM until SIGKILL.
    pub max_execution_grace: f64,
}

/// Resource usage of a run (of the command and every descendant it waited for).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Rusage {
    /// User CPU seconds.
    pub utime: f64,
    /// System CPU seconds.
    pub stime: f64,
    /// Peak resident set size, KiB.
    pub maxrss_kb: i64,
}

/// How a run ended, as the supervisor saw it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunStatus {
    pub exit_code: i64,
    /// Epoch seconds when the command ended.
    pub stop_time: f64,
    pub rusage: Option<Rusage>,
    /// Set when the command could not be started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Set when `max_execution` stopped the run.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub timed_out: bool,
    /// The supervisor's pid (the status is written over its lock file, whose
    /// readers look for it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
}

/// What the lock file holds while the supervisor runs.
#[derive(Serialize, Deserialize)]
struct LockContent {
    pid: u32,
    /// The concurrency group slot the run holds (a restarted daemon counts it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    group: Option<String>,
}

/// Write a run's spec (as JSON) into its run dir.
pub fn write_spec(run_dir: &Path, spec: &[u8]) -> std::io::Result<()> {
    write_private(&run_dir.join(SPEC_FILE), spec)
}

/// Start a supervisor for a run dir whose spec is written, as a new process of
/// this binary (the [`super::Launcher`] forks them more cheaply, with the spec
/// in memory). It leads its own process group, so the daemon's terminal
/// signals (Ctrl-C) do not reach it.
pub fn spawn_supervisor(exe: &Path, run_dir: &Path) -> std::io::Result<Child> {
    Command::new(exe)
        .arg(SUPERVISE_ARG)
        .arg(run_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .process_group(0)
        .spawn()
}

/// The hidden subcommand that runs a supervisor (or, with `--launcher`, a launcher).
pub const SUPERVISE_ARG: &str = "__supervise";

/// Read the spec the daemon left for a run's supervisor, if any.
pub fn read_spec(run_dir: &Path) -> Option<RunSpec> {
    let text = std::fs::read(run_dir.join(SPEC_FILE)).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Read the status a supervisor left, if any.
pub fn read_status(run_dir: &Path) -> Option<RunStatus> {
    let text = std::fs::read(run_dir.join(STATUS_FILE)).ok()?;
    serde_json::from_slice(&text).ok()
}

/// What a restarted daemon finds of a run's supervisor.
#[derive(Debug)]
pub enum SupervisorState {
    /// Alive, holding its lock; the pid and the concurrency group it wrote there.
    Alive {
        pid: Option<u32>,
        group: Option<String>,
    },
    /// Not running (never started, finished, or killed).
    Gone,
}

/// Is the supervisor of this run dir still alive?
pub fn probe_supervisor(run_dir: &Path) -> SupervisorState {
    let Ok(file) = File::open(run_dir.join(LOCK_FILE)) else {
        return SupervisorState::Gone;
    };
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockSharedNonblock) {
        Ok(_) => SupervisorState::Gone,
        Err((file, _)) => {
            let text = std::io::read_to_string(&file).unwrap_or_default();
            match serde_json::from_str::<LockContent>(&text) {
                Ok(c) => SupervisorState::Alive {
                    pid: Some(c.pid),
                    // Earlier supervisors wrote the group only in the spec.
                    group: c.group.or_else(|| spec_group(run_dir)),
                },
                Err(_) => SupervisorState::Alive {
                    pid: text.trim().parse().ok(),
                    group: spec_group(run_dir),
                },
            }
        }
    }
}

/// The concurrency group a run was started in, from its spec.
pub fn spec_group(run_dir: &Path) -> Option<String> {
    read_spec(run_dir)?.environment.get(GROUP_VARIABLE).cloned()
}

/// The run's environment variable naming its concurrency group (SPEC §6.2).
const GROUP_VARIABLE: &str = "CONCURRENCY_GROUP";

/// How long a supervisor handed a run just before a crash may take to lock
/// its run dir (it does within milliseconds).
pub const START_GRACE: Duration = Duration::from_secs(1);

/// Has a supervisor taken this run (a lock file, or the status it left)?
pub fn supervisor_seen(run_dir: &Path) -> bool {
    run_dir.join(LOCK_FILE).exists() || run_dir.join(STATUS_FILE).exists()
}

/// Wait until every one of these run dirs shows a supervisor, or `limit`
/// passes: one wait for all of them, however many.
pub fn await_supervisors(run_dirs: &[&Path], limit: Duration) {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline && !run_dirs.iter().all(|d| supervisor_seen(d)) {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Did this run's supervisor never start? True when it has neither a lock
/// file nor a status [`START_GRACE`] after it was handed over. Then the
/// command never ran and may run again.
pub fn never_started(run_dir: &Path) -> bool {
    await_supervisors(&[run_dir], START_GRACE);
    !supervisor_seen(run_dir)
}

/// Block until the supervisor of this run dir has exited (its lock is released).
pub fn wait_for_supervisor(run_dir: &Path) {
    if let Ok(file) = File::open(run_dir.join(LOCK_FILE)) {
        let _ = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockShared);
    }
}

/// The supervisor's lock on its run dir, held for its lifetime (the fd is
/// close-on-exec, so the command does not inherit it).
struct Lock {
    file: nix::fcntl::Flock<File>,
    /// The file's blocks hold [`STATUS_RESERVE`] bytes, for the status.
    reserved: bool,
}

/// Take the run dir's lock, reserving room for the status in the same file.
///
/// The lock file appears under its name only once it is locked (it is locked
/// under a temporary name, then renamed): a daemon that finds `.dsari-lock`
/// unlocked knows the supervisor has ended, never that it is about to lock.
/// Its blocks are written before the command starts, so that when the run
/// fills the disk its exit status can still be written (JSON allows the
/// trailing spaces).
fn hold_lock(run_dir: &Path, group: Option<&str>) -> Option<Lock> {
    let tmp = run_dir.join(format!("{LOCK_FILE}.{}", std::process::id()));
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .ok()?;
    let mut content = serde_json::to_vec(&LockContent {
        pid: std::process::id(),
        group: group.map(str::to_string),
    })
    .ok()?;
    let short = content.len();
    content.resize(STATUS_RESERVE.max(short), b' ');
    let reserved = match file.write_all(&content) {
        Ok(()) => true,
        // A full disk: the pid alone, if it fits; the status will need room later.
        Err(_) => {
            use std::io::{Seek, SeekFrom};
            let _ = file.set_len(0);
            let _ = file.seek(SeekFrom::Start(0));
            let _ = file.write_all(&content[..short]);
            false
        }
    };
    let file = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive).ok()?;
    std::fs::rename(&tmp, run_dir.join(LOCK_FILE)).ok()?;
    Some(Lock { file, reserved })
}

/// The supervisor's main: returns the supervisor's own exit code (0 once a
/// status is written).
///
/// `given` is the spec handed over in memory (by the [`super::Launcher`]):
/// then this supervisor creates the run dir, and writes the spec there only
/// once the command is started, off the start's path. Without it, the spec
/// is read from the run dir, where the daemon wrote it.
pub fn supervise(run_dir: &Path, given: Option<&[u8]>) -> i32 {
    let bytes = match given {
        Some(b) => Ok(std::borrow::Cow::Borrowed(b)),
        None => std::fs::read(run_dir.join(SPEC_FILE)).map(std::borrow::Cow::Owned),
    };
    let spec: RunSpec = match bytes
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "dsari supervisor: {}: cannot read the run spec: {e}",
                run_dir.display()
            );
            return 2;
        }
    };
    if given.is_some()
        && let Err(e) = make_run_dir(run_dir)
    {
        eprintln!(
            "dsari supervisor: [{} {}] cannot create the run directory {}: {e}",
            spec.job_name,
            spec.run_id,
            run_dir.display()
        );
        return 2;
    }
    let group = spec.environment.get(GROUP_VARIABLE).map(String::as_str);
    let mut lock = hold_lock(run_dir, group);
    let keep_spec = || {
        if let Some(bytes) = given
            && let Err(e) = write_spec(run_dir, bytes)
        {
            eprintln!(
                "dsari supervisor: [{} {}] cannot keep the run spec: {e}",
                spec.job_name, spec.run_id
            );
        }
    };
    let mut status = run(&spec, run_dir, keep_spec);
    status.pid = Some(std::process::id());
    match write_status(run_dir, lock.as_mut(), &status) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!(
                "dsari supervisor: [{} {}] cannot write the run status: {e}",
                spec.job_name, spec.run_id
            );
            3
        }
    }
}

/// Create a run dir (and its job's dir), private to the daemon's user and group.
pub fn make_run_dir(run_dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(RUN_DIR_MODE)
        .create(run_dir)
}

/// Run directories (and `runs/`, `runs/JOB/`): output may hold secrets, so no
/// access for other users; the group may read. The umask can only take more away.
const RUN_DIR_MODE: u32 = 0o750;

/// Start the command and wait for it; `started` runs once it is started (or
/// failed to start), while the command runs.
fn run(spec: &RunSpec, run_dir: &Path, started: impl FnOnce()) -> RunStatus {
    let output = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(run_dir.join(OUTPUT_FILE));
    let output = match output {
        Ok(f) => Some(f),
        Err(e) => {
            eprintln!(
                "dsari supervisor: [{} {}] cannot open {OUTPUT_FILE}: {e}; output is discarded",
                spec.job_name, spec.run_id
            );
            None
        }
    };
    let program = match resolve_program(spec) {
        Ok(p) => p,
        Err((code, msg)) => {
            started();
            return failed_to_start(output, code, msg);
        }
    };
    let mut cmd = Command::new(&program);
    cmd.arg0(&spec.argv[0])
        .args(&spec.argv[1..])
        .env_clear()
        .envs(&spec.environment)
        .current_dir(&spec.working_dir)
        .stdin(Stdio::null())
        .process_group(0);
    match output.as_ref().map(|f| (f.try_clone(), f.try_clone())) {
        Some((Ok(out), Ok(err))) => {
            cmd.stdout(out).stderr(err);
        }
        _ => {
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
        }
    }
    let spawned = cmd.spawn();
    started();
    let child = match spawned {
        Ok(c) => c,
        Err(e) => {
            let code = match e.kind() {
                std::io::ErrorKind::NotFound => EXIT_NOT_FOUND,
                _ => EXIT_CANNOT_EXECUTE,
            };
            return failed_to_start(
                output,
                code,
                format!("cannot execute {}: {e}", program.display()),
            );
        }
    };
    drop(output);
    wait_for(child, spec)
}

/// Find the program on the daemon's PATH, as a shell would (126/127 on failure).
fn resolve_program(spec: &RunSpec) -> Result<PathBuf, (i64, String)> {
    let Some(name) = spec.argv.first() else {
        return Err((EXIT_NOT_FOUND, "the command is empty".into()));
    };
    let check = |p: &Path| -> Result<PathBuf, (i64, String)> {
        match std::fs::metadata(p) {
            Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => Ok(p.to_path_buf()),
            Ok(_) => Err((
                EXIT_CANNOT_EXECUTE,
                format!("{}: not an executable file", p.display()),
            )),
            Err(e) => Err((EXIT_NOT_FOUND, format!("{}: {e}", p.display()))),
        }
    };
    if name.contains('/') {
        let p = Path::new(name);
        let p = if p.is_relative() {
            spec.working_dir.join(p)
        } else {
            p.to_path_buf()
        };
        return check(&p);
    }
    let mut first_error = None;
    for dir in spec.search_path.split(':').filter(|d| !d.is_empty()) {
        match check(&Path::new(dir).join(name)) {
            Ok(p) => return Ok(p),
            Err(e @ (EXIT_CANNOT_EXECUTE, _)) => {
                first_error.get_or_insert(e);
            }
            Err(_) => {}
        }
    }
    Err(first_error.unwrap_or((
        EXIT_NOT_FOUND,
        format!("{name}: command not found in PATH {}", spec.search_path),
    )))
}

fn failed_to_start(output: Option<File>, code: i64, msg: String) -> RunStatus {
    if let Some(mut f) = output {
        let _ = writeln!(f, "dsari: {msg}");
    }
    RunStatus {
        exit_code: code,
        stop_time: crate::time::now(),
        rusage: None,
        error: Some(msg),
        timed_out: false,
        pid: None,
    }
}

/// Wait for the command, enforcing `max_execution` and forwarding stop requests.
fn wait_for(mut child: Child, spec: &RunSpec) -> RunStatus {
    let pgid = Pid::from_raw(child.id() as i32);
    let timed_out = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    forward_signals(pgid, done.clone());
    if let Some(limit) = spec.max_execution {
        let (timed_out, done) = (timed_out.clone(), done.clone());
        let grace = spec.max_execution_grace;
        std::thread::spawn(move || enforce_limit(pgid, limit, grace, &timed_out, &done));
    }
    let status = loop {
        match child.wait() {
            Ok(s) => break Some(s),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break None,
        }
    };
    let stop_time = crate::time::now();
    done.store(true, Ordering::SeqCst);
    let timed_out = timed_out.load(Ordering::SeqCst);
    if timed_out {
        // The leader is gone; stop whatever is left of its tree at once.
        let _ = killpg(pgid, Signal::SIGKILL);
    }
    let exit_code = match status {
        Some(s) => s
            .code()
            .map(i64::from)
            .or_else(|| s.signal().map(|n| 128 + i64::from(n)))
            .unwrap_or(-1),
        None => -1,
    };
    RunStatus {
        exit_code,
        stop_time,
        rusage: children_rusage(),
        error: None,
        timed_out,
        pid: None,
    }
}

/// SIGTERM/SIGINT to the supervisor → SIGTERM to the run's group; SIGUSR2 → SIGKILL.
/// SIGHUP is ignored: a supervisor outlives the terminal and the daemon.
fn forward_signals(pgid: Pid, done: Arc<AtomicBool>) {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR2};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP, SIGUSR2])
    else {
        return;
    };
    std::thread::spawn(move || {
        for sig in signals.forever() {
            if done.load(Ordering::SeqCst) {
                continue;
            }
            let forward = match sig {
                SIGUSR2 => Signal::SIGKILL,
                SIGHUP => continue,
                _ => Signal::SIGTERM,
            };
            let _ = killpg(pgid, forward);
        }
    });
}

fn enforce_limit(pgid: Pid, limit: f64, grace: f64, timed_out: &AtomicBool, done: &AtomicBool) {
    std::thread::sleep(Duration::from_secs_f64(limit.max(0.0)));
    if done.load(Ordering::SeqCst) {
        return;
    }
    timed_out.store(true, Ordering::SeqCst);
    let _ = killpg(pgid, Signal::SIGTERM);
    std::thread::sleep(Duration::from_secs_f64(grace.max(0.0)));
    if !done.load(Ordering::SeqCst) {
        let _ = killpg(pgid, Signal::SIGKILL);
    }
}

fn children_rusage() -> Option<Rusage> {
    let u = getrusage(UsageWho::RUSAGE_CHILDREN).ok()?;
    let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    Some(Rusage {
        utime: secs(u.user_time()),
        stime: secs(u.system_time()),
        maxrss_kb: u.max_rss(),
    })
}

/// Room reserved (in the lock file) for the status before the command starts.
const STATUS_RESERVE: usize = 4096;

/// Write the status: over the reserved lock file (never growing it unless the
/// status is larger than the reserve), which is then renamed to the status
/// file; without a reserve, through a temporary file.
fn write_status(
    run_dir: &Path,
    lock: Option<&mut Lock>,
    status: &RunStatus,
) -> std::io::Result<()> {
    use std::io::{Seek, SeekFrom};
    let mut text = serde_json::to_vec(status).map_err(std::io::Error::other)?;
    if let Some(lock) = lock.filter(|l| l.reserved && text.len() <= STATUS_RESERVE) {
        text.resize(STATUS_RESERVE, b' ');
        let file: &mut File = &mut lock.file;
        file.seek(SeekFrom::Start(0))?;
        file.write_all(&text)?;
        return std::fs::rename(run_dir.join(LOCK_FILE), run_dir.join(STATUS_FILE));
    }
    let tmp = run_dir.join(format!("{STATUS_FILE}.tmp"));
    write_private(&tmp, &text)?;
    std::fs::rename(&tmp, run_dir.join(STATUS_FILE))
}

/// Write a file readable by its owner only (the spec holds the run's environment).
/// No fsync: these files must survive a crash of the daemon or the supervisor,
/// which the page cache guarantees; after a power loss the run is lost anyway,
/// and an fsync here would cost milliseconds of every run's start.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)
}
