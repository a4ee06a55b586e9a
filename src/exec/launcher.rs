//! The launcher: one small single-threaded process that forks run supervisors.
//!
//! Starting a supervisor by executing this binary costs a whole program start
//! (dynamic loading, relocations, runtime set-up: ~1.2 ms of CPU on the
//! development machine) for every run, on top of the command's own exec. The
//! daemon instead starts one launcher (`dsari __supervise --launcher`) and hands
//! it runs over a pipe; the launcher `fork`s, and the child becomes the run's
//! supervisor ([`super::supervise`]) at the cost of a fork (~0.2 ms). The
//! daemon itself never forks without exec: it has threads; the launcher has one.
//!
//! The run's spec travels over the pipe, so the daemon touches no file to start
//! a run: the supervisor creates the run dir, takes its lock, starts the
//! command and only then writes the spec down. Otherwise nothing about a run
//! changes: the supervisor is the same code, takes the same lock, leads its own
//! process group and leaves the same status in the run dir, so a restarted
//! daemon adopts it like any other. The launcher reports each supervisor's end
//! back to the daemon, and its pid only once asked (at shutdown, when the
//! daemon signals supervisors): a start that nobody needs to hear of costs no
//! write and wakes no thread. When the launcher dies, the daemon waits for the
//! runs it had started on their locks (as for adopted runs), starts directly
//! the ones that never got a supervisor, and starts a new launcher.
//!
//! The protocol: daemon → launcher: the line `TOKEN <tab> RUN_DIR <tab> LENGTH`,
//! then LENGTH bytes of spec (JSON), or the line `report` (from now on, report
//! pids); launcher → daemon, one line each: `S TOKEN PID` (started, after
//! `report`), `E TOKEN` (supervisor ended), `F TOKEN REASON` (could not fork).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};

use super::supervisor::{SUPERVISE_ARG, never_started, supervise, wait_for_supervisor};

/// `dsari __supervise --launcher` starts a launcher.
pub const LAUNCHER_ARG: &str = "--launcher";

/// What the daemon hears about the runs it gave the launcher.
#[derive(Debug)]
pub enum LaunchEvent {
    /// The run's supervisor runs with this pid (reported only after
    /// [`Launcher::report_starts`]; until then, the pid is in the run's lock).
    Started { token: String, pid: u32 },
    /// The run's supervisor has ended.
    Exited { token: String },
    /// No supervisor took the run: start one another way, with this spec.
    NotStarted {
        token: String,
        reason: String,
        spec: Vec<u8>,
    },
    /// The launcher of this generation is gone; its runs are still reported.
    Gone { generation: u64 },
}

/// The request that makes the launcher report pids (`S` lines) from now on.
const REPORT_REQUEST: &[u8] = b"report\n";

/// A run the launcher could not take: its token and its spec.
pub type Untaken = (String, Vec<u8>);

/// Where the launcher's events go (the daemon's event channel).
pub type LaunchSink = Arc<dyn Fn(LaunchEvent) + Send + Sync>;

/// A run handed to the launcher: its dir, its spec until a supervisor is known
/// to have it, then the supervisor's pid (known once starts are reported).
struct Handed {
    dir: PathBuf,
    spec: Option<Vec<u8>>,
    pid: Option<u32>,
}

/// Runs handed to the launcher whose end has not been reported yet.
#[derive(Default)]
struct Outstanding {
    runs: HashMap<String, Handed>,
    /// The launcher is gone: its runs were taken over by the fallback.
    closed: bool,
    /// Send [`LaunchEvent::Started`]: the daemon wants to signal each new
    /// supervisor (it is shutting down).
    report_starts: bool,
}

fn lock(o: &Mutex<Outstanding>) -> MutexGuard<'_, Outstanding> {
    o.lock().unwrap_or_else(|p| p.into_inner())
}

/// The daemon's handle on its launcher. Dropping it closes the pipe, which ends
/// the launcher (supervisors it started run on).
pub struct Launcher {
    stdin: ChildStdin,
    pid: u32,
    outstanding: Arc<Mutex<Outstanding>>,
    /// Requests not written yet ([`Launcher::send`]), and their tokens.
    queued: Vec<u8>,
    queued_tokens: Vec<String>,
}

impl Launcher {
    /// Start a launcher; its events go to `sink`, tagged `generation` when it ends.
    pub fn start(exe: &Path, generation: u64, sink: LaunchSink) -> std::io::Result<Launcher> {
        let mut child = Command::new(exe)
            .arg(SUPERVISE_ARG)
            .arg(LAUNCHER_ARG)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .process_group(0)
            .spawn()?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(std::io::Error::other("no pipes to the launcher"));
        };
        let pid = child.id();
        let outstanding = Arc::new(Mutex::new(Outstanding::default()));
        let shared = outstanding.clone();
        std::thread::Builder::new()
            .name("launcher".into())
            .stack_size(128 * 1024)
            .spawn(move || read_events(child, stdout, &shared, generation, &sink))?;
        Ok(Launcher {
            stdin,
            pid,
            outstanding,
            queued: Vec::new(),
            queued_tokens: Vec::new(),
        })
    }

    /// The launcher's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The pid of a run's supervisor, once the launcher has reported it.
    pub fn pid_of(&self, token: &str) -> Option<u32> {
        lock(&self.outstanding).runs.get(token).and_then(|h| h.pid)
    }

    /// From now on, report every supervisor going or started with
    /// [`LaunchEvent::Started`] (the launcher is asked to name them).
    pub fn report_starts(&mut self) {
        lock(&self.outstanding).report_starts = true;
        if let Err(e) = self.stdin.write_all(REPORT_REQUEST) {
            log::warn!("cannot ask the launcher for its supervisors' pids: {e}");
        }
    }

    /// Hand a run to the launcher: the supervisor it forks creates `run_dir`
    /// and runs `spec`. The request is queued; [`Launcher::send`] writes the
    /// queue, so that the runs of one loop turn wake the launcher once. An
    /// error means no supervisor will take it from here: start one another way.
    pub fn launch(&mut self, token: &str, run_dir: &Path, spec: &[u8]) -> std::io::Result<()> {
        let dir = run_dir.as_os_str().as_bytes();
        if token.is_empty()
            || token.contains(char::is_whitespace)
            || dir.contains(&b'\n')
            || dir.contains(&b'\t')
        {
            return Err(std::io::Error::other(
                "run id or run dir cannot be passed on a line",
            ));
        }
        {
            let mut o = lock(&self.outstanding);
            if o.closed {
                return Err(std::io::Error::other("the launcher has ended"));
            }
            o.runs.insert(
                token.to_string(),
                Handed {
                    dir: run_dir.to_path_buf(),
                    spec: Some(spec.to_vec()),
                    pid: None,
                },
            );
        }
        let m = &mut self.queued;
        m.extend_from_slice(token.as_bytes());
        m.push(b'\t');
        m.extend_from_slice(dir);
        m.push(b'\t');
        m.extend_from_slice(spec.len().to_string().as_bytes());
        m.push(b'\n');
        m.extend_from_slice(spec);
        self.queued_tokens.push(token.to_string());
        Ok(())
    }

    /// Write the queued requests (one `write` for a whole loop turn's runs).
    /// When the launcher cannot take them, the runs no supervisor has taken
    /// are returned with their specs, to be started another way.
    pub fn send(&mut self) -> Result<(), (std::io::Error, Vec<Untaken>)> {
        if self.queued.is_empty() {
            return Ok(());
        }
        let written = self.stdin.write_all(&self.queued);
        self.queued.clear();
        let tokens = std::mem::take(&mut self.queued_tokens);
        let Err(e) = written else {
            return Ok(());
        };
        // Unless the fallback already took a run over, it is ours to start.
        let mut o = lock(&self.outstanding);
        let left = tokens
            .into_iter()
            .filter_map(|t| {
                let spec = o.runs.remove(&t)?.spec?;
                Some((t, spec))
            })
            .collect();
        Err((e, left))
    }
}

/// The daemon's side: turn the launcher's lines into events until it ends, then
/// look after what it left.
fn read_events(
    mut child: Child,
    stdout: ChildStdout,
    outstanding: &Mutex<Outstanding>,
    generation: u64,
    sink: &LaunchSink,
) {
    for line in BufReader::new(stdout).split(b'\n') {
        let Ok(line) = line else { break };
        let line = String::from_utf8_lossy(&line);
        let mut parts = line.splitn(3, ' ');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("S"), Some(token), Some(pid)) => {
                if let Ok(pid) = pid.parse::<u32>() {
                    let report = {
                        let mut o = lock(outstanding);
                        if let Some(h) = o.runs.get_mut(token) {
                            // The supervisor has the spec now.
                            h.spec = None;
                            h.pid = Some(pid);
                        }
                        o.report_starts
                    };
                    if report {
                        sink(LaunchEvent::Started {
                            token: token.to_string(),
                            pid,
                        });
                    }
                }
            }
            (Some("E"), Some(token), None) => {
                if lock(outstanding).runs.remove(token).is_some() {
                    sink(LaunchEvent::Exited {
                        token: token.to_string(),
                    });
                }
            }
            (Some("F"), Some(token), reason) => {
                let handed = lock(outstanding).runs.remove(token);
                if let Some(spec) = handed.and_then(|h| h.spec) {
                    sink(LaunchEvent::NotStarted {
                        token: token.to_string(),
                        reason: reason.unwrap_or("cannot fork").to_string(),
                        spec,
                    });
                }
            }
            _ => log::warn!("the launcher said something unexpected: {line:?}"),
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let left = {
        let mut o = lock(outstanding);
        o.closed = true;
        std::mem::take(&mut o.runs)
    };
    if !left.is_empty() {
        log::warn!(
            "the launcher (pid {}) ended while runs it had started were going ({}); following them through their run dirs' locks",
            child.id(),
            left.len()
        );
    }
    for (token, Handed { dir, spec, .. }) in left {
        let sink = sink.clone();
        // A supervisor the launcher forked takes the run dir's lock at once;
        // without one, no supervisor has the run.
        let spawned = std::thread::Builder::new()
            .name("run-waiter".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                if let (true, Some(spec)) = (never_started(&dir), spec) {
                    sink(LaunchEvent::NotStarted {
                        token,
                        reason: "the launcher ended before a supervisor took the run".into(),
                        spec,
                    });
                } else {
                    wait_for_supervisor(&dir);
                    sink(LaunchEvent::Exited { token });
                }
            });
        if let Err(e) = spawned {
            log::error!("cannot start a thread to wait for a run: {e}");
        }
    }
    sink(LaunchEvent::Gone { generation });
}

/// The launcher process's main: serve the daemon until it closes the pipe.
/// Single-threaded on purpose: it forks, and the child goes on to supervise.
pub fn serve() -> i32 {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use nix::sys::signal::{SigSet, Signal};
    use nix::sys::signalfd::{SfdFlags, SignalFd};

    let mut chld = SigSet::empty();
    chld.add(Signal::SIGCHLD);
    if let Err(e) = chld.thread_block() {
        eprintln!("dsari launcher: cannot block SIGCHLD: {e}");
        return 2;
    }
    let sfd = match SignalFd::with_flags(&chld, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("dsari launcher: cannot watch its children: {e}");
            return 2;
        }
    };
    if launcher_fault_deaf() {
        // Debug builds only: the daemon's writes fail (EPIPE) while this
        // launcher still lives, so its reader thread does not take the runs over.
        let _ = nix::unistd::close(0);
        eprintln!("DSARI_FAULT: the launcher stops reading its requests");
        std::thread::sleep(std::time::Duration::from_secs(2));
        return 9;
    }
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    let mut pending: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let mut children = Children::default();
    loop {
        let (input, ended) = {
            let mut fds = [
                PollFd::new(stdin.as_fd(), PollFlags::POLLIN),
                PollFd::new(sfd.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    eprintln!("dsari launcher: poll: {e}");
                    return 2;
                }
            }
            let ready = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
            (ready(&fds[0]), ready(&fds[1]))
        };
        if ended {
            while let Ok(Some(_)) = sfd.read_signal() {}
            // The daemon may be gone; supervisors still get reaped.
            let _ = children.reap(&mut out);
        }
        if input {
            match nix::unistd::read(stdin.as_fd(), &mut chunk) {
                Ok(0) => return 0,
                Ok(n) => pending.extend_from_slice(&chunk[..n]),
                Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => {}
                Err(_) => return 0,
            }
            while let Some((header, spec)) = next_request(&mut pending) {
                if header == REPORT_REQUEST.trim_ascii_end() {
                    let _ = children.report_all(&mut out);
                    continue;
                }
                if launcher_fault() {
                    // Debug builds only: die with a run taken but not started.
                    eprintln!("DSARI_FAULT: the launcher dies before forking");
                    return 9;
                }
                // Every run taken is started, even when the daemon is gone and
                // the reply has nobody to read it: its start is recorded, and
                // a restarted daemon adopts it.
                let reply = match start_supervisor(&header, &spec) {
                    Ok((token, pid)) => children.started(token, pid),
                    Err(failed) => Some(failed),
                };
                if let Some(reply) = reply {
                    let _ = writeln!(out, "{reply}").and_then(|()| out.flush());
                }
            }
        }
    }
}

/// Debug builds only: `DSARI_FAULT=launcher` makes the launcher die on its
/// first request, before it forks (how the daemon copes is tested).
fn launcher_fault() -> bool {
    #[cfg(debug_assertions)]
    if std::env::var("DSARI_FAULT").is_ok_and(|f| f == "launcher") {
        return true;
    }
    false
}

/// Debug builds only: `DSARI_FAULT=launcher-deaf` makes the launcher close its
/// request pipe at once and end 2 s later (how the daemon copes with a write
/// that fails is tested).
fn launcher_fault_deaf() -> bool {
    #[cfg(debug_assertions)]
    if std::env::var("DSARI_FAULT").is_ok_and(|f| f == "launcher-deaf") {
        return true;
    }
    false
}

/// The launcher's supervisors that have not ended, by pid, with their tokens.
#[derive(Default)]
struct Children {
    tokens: HashMap<i32, String>,
    /// The daemon asked for pids: report each start.
    report: bool,
}

impl Children {
    /// A supervisor was forked; the line to send, if the daemon wants starts.
    fn started(&mut self, token: String, pid: i32) -> Option<String> {
        let line = self.report.then(|| format!("S {token} {pid}"));
        self.tokens.insert(pid, token);
        line
    }

    /// From now on report each start; report those going now.
    fn report_all(&mut self, out: &mut impl Write) -> std::io::Result<()> {
        self.report = true;
        for (pid, token) in &self.tokens {
            writeln!(out, "S {token} {pid}")?;
        }
        out.flush()
    }

    /// Report every supervisor that has ended (reaping it).
    fn reap(&mut self, out: &mut impl Write) -> std::io::Result<()> {
        use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => return Ok(()),
                Ok(status) => {
                    let token = status
                        .pid()
                        .and_then(|pid| self.tokens.remove(&pid.as_raw()));
                    if let Some(token) = token {
                        writeln!(out, "E {token}")?;
                        out.flush()?;
                    }
                }
            }
        }
    }
}

/// Take the next whole request (its header line without the newline, and its
/// spec) off the front of `pending`, once all of it has arrived.
fn next_request(pending: &mut Vec<u8>) -> Option<(Vec<u8>, Vec<u8>)> {
    let end = pending.iter().position(|&b| b == b'\n')?;
    let length = pending[..end]
        .rsplit(|&b| b == b'\t')
        .next()
        .and_then(|l| std::str::from_utf8(l).ok())
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(0);
    if pending.len() < end + 1 + length {
        return None;
    }
    let mut rest = pending.split_off(end + 1);
    let tail = rest.split_off(length);
    let mut header = std::mem::replace(pending, tail);
    header.pop();
    Some((header, rest))
}

/// Fork the supervisor of one `TOKEN <tab> RUN_DIR <tab> LENGTH` request: its
/// token and pid, or the `F` line to send.
fn start_supervisor(header: &[u8], spec: &[u8]) -> Result<(String, i32), String> {
    use nix::unistd::{ForkResult, fork};
    let mut fields = header.splitn(3, |&b| b == b'\t');
    let (Some(token), Some(dir), Some(_)) = (fields.next(), fields.next(), fields.next()) else {
        return Err(format!(
            "F ? malformed request {:?}",
            String::from_utf8_lossy(header)
        ));
    };
    let token = String::from_utf8_lossy(token).into_owned();
    let run_dir = PathBuf::from(std::ffi::OsStr::from_bytes(dir));
    // SAFETY: this process has a single thread (see `serve`), so the child may
    // run any code, allocation included.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => std::process::exit(become_supervisor(&run_dir, spec)),
        Ok(ForkResult::Parent { child }) => Ok((token, child.as_raw())),
        Err(e) => Err(format!("F {token} cannot fork: {e}")),
    }
}

/// In the forked child: drop the launcher's pipes and signal mask, lead a
/// process group of its own (as an executed supervisor would), supervise.
fn become_supervisor(run_dir: &Path, spec: &[u8]) -> i32 {
    let _ = nix::sys::signal::SigSet::empty().thread_set_mask();
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        // The daemon must see the launcher's stdout close when the launcher
        // ends, so no supervisor may keep a copy of either pipe.
        let _ = nix::unistd::dup2_stdin(&null);
        let _ = nix::unistd::dup2_stdout(&null);
    }
    let _ = nix::unistd::setpgid(nix::unistd::Pid::from_raw(0), nix::unistd::Pid::from_raw(0));
    // Its command line stays the launcher's; its name (top, pgrep) says what it is.
    let _ = nix::sys::prctl::set_name(c"dsari-supervise");
    supervise(run_dir, Some(spec))
}

#[cfg(test)]
mod tests {
    use super::{Children, next_request};

    #[test]
    fn starts_are_reported_only_once_asked_for_then_all_of_them() {
        let mut children = Children::default();
        assert_eq!(children.started("t1".into(), 101), None);
        assert_eq!(children.started("t2".into(), 102), None);
        let mut out = Vec::new();
        children.report_all(&mut out).unwrap();
        let mut lines: Vec<String> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect();
        lines.sort();
        assert_eq!(lines, ["S t1 101", "S t2 102"]);
        assert_eq!(
            children.started("t3".into(), 103).as_deref(),
            Some("S t3 103")
        );
    }

    fn request(token: &str, dir: &str, spec: &[u8]) -> Vec<u8> {
        let mut m = format!("{token}\t{dir}\t{}\n", spec.len()).into_bytes();
        m.extend_from_slice(spec);
        m
    }

    #[test]
    fn requests_are_taken_whole_however_they_arrive() {
        let spec_a = br#"{"argv":["a"],"note":"a\nnewline inside"}"#.to_vec();
        let spec_b = b"{}".to_vec();
        let mut stream = request("t1", "/runs/a/t1", &spec_a);
        stream.extend(request("t2", "/runs/b/t2", &spec_b));
        // Fed one byte at a time: nothing comes out before a request is whole,
        // and a newline inside a spec does not end it.
        let mut pending = Vec::new();
        let mut got = Vec::new();
        for &b in &stream {
            pending.push(b);
            while let Some(r) = next_request(&mut pending) {
                got.push(r);
            }
        }
        assert!(pending.is_empty(), "left over: {pending:?}");
        let got: Vec<(String, Vec<u8>)> = got
            .into_iter()
            .map(|(h, s)| (String::from_utf8_lossy(&h).into_owned(), s))
            .collect();
        assert_eq!(
            got,
            vec![
                (format!("t1\t/runs/a/t1\t{}", spec_a.len()), spec_a),
                ("t2\t/runs/b/t2\t2".to_string(), spec_b),
            ]
        );
    }

    #[test]
    fn two_requests_in_one_read_both_come_out() {
        let mut pending = request("t1", "/d1", b"[1]");
        pending.extend(request("t2", "/d2", b"[22]"));
        let first = next_request(&mut pending).map(|(_, s)| s);
        let second = next_request(&mut pending).map(|(_, s)| s);
        assert_eq!(first.as_deref(), Some(&b"[1]"[..]));
        assert_eq!(second.as_deref(), Some(&b"[22]"[..]));
        assert_eq!(next_request(&mut pending), None);
    }
}
