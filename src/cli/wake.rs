//! Waking a waiting command when something it watches may have changed.
//!
//! `dsari trigger --wait` and `dsari run tail` wait for the database and for run
//! output to change. They do not poll quickly: an inotify thread watches
//! directories (never single files: SQLite and operators replace files) and
//! sends a hint on a channel; the command re-reads what it cares about on each
//! hint, and also every [`FALLBACK`] in case a hint was lost (inotify limits
//! reached, a watch on a directory that did not exist yet, or a database on a
//! file system without inotify). Hints are only hints: what the command reads
//! is the truth.
//!
//! A committed SQLite transaction in WAL mode writes to `NAME-wal`, which shows
//! up as a modification in the database's directory; in rollback-journal mode
//! the database file itself is written. Both are caught by watching the
//! database's directory for modifications.
//!
//! Closing an inotify instance that has watches waits for the kernel to retire
//! them (an SRCU grace period: 5–25 ms here, measured), and a process's exit
//! closes its files before its parent learns of the exit. That wait alone was
//! most of what `dsari trigger --wait` added to a short run. So the instance is
//! shared with a tiny child process made right after it ([`hold_in_child`]):
//! our exit only drops a reference, and the child, which ends when we do,
//! pays for the retirement where nobody waits for it.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use inotify::{Inotify, WatchDescriptor, WatchMask, Watches};

/// The slow re-check that makes a lost hint cost at most this much latency.
pub const FALLBACK: Duration = Duration::from_secs(1);

/// After a hint, the next re-read comes at most this much later even without
/// another hint: SQLite writes a transaction to the `-wal` file (the event)
/// before it publishes the commit in shared memory (no event), so a read right
/// at the hint can still miss it.
pub const SETTLE: Duration = Duration::from_millis(10);

/// What a directory is watched for.
pub const DIR_CHANGES: WatchMask = WatchMask::MODIFY
    .union(WatchMask::CLOSE_WRITE)
    .union(WatchMask::CREATE)
    .union(WatchMask::DELETE)
    .union(WatchMask::MOVED_FROM)
    .union(WatchMask::MOVED_TO)
    .union(WatchMask::ONLYDIR)
    .union(WatchMask::DONT_FOLLOW);

/// Hints from the kernel that a watched directory changed.
pub struct Wake {
    /// `None` when inotify is unavailable: then only the fallback wakes.
    watches: Option<Watches>,
    rx: Receiver<()>,
    watched: Vec<(PathBuf, WatchDescriptor)>,
    /// The last wait ended with a hint: the next one is at most [`SETTLE`].
    settle: std::cell::Cell<bool>,
}

impl Wake {
    /// Start the watching thread. Without inotify (limits reached, not
    /// supported) this still works, waking every [`FALLBACK`].
    pub fn new() -> Wake {
        let (tx, rx) = channel();
        let watches = Inotify::init().ok().and_then(|mut inotify| {
            hold_in_child(&inotify);
            let watches = inotify.watches();
            std::thread::Builder::new()
                .name("inotify".into())
                .stack_size(128 * 1024)
                .spawn(move || {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        match inotify.read_events_blocking(&mut buf) {
                            Ok(_) => {
                                if tx.send(()).is_err() {
                                    return;
                                }
                            }
                            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                            Err(_) => return,
                        }
                    }
                })
                .ok()
                .map(|_| watches)
        });
        Wake {
            watches,
            rx,
            watched: Vec::new(),
            settle: std::cell::Cell::new(false),
        }
    }

    /// Watch a directory (again) for changes; false when it cannot be watched
    /// (it may not exist yet: call again later, the fallback covers the gap).
    pub fn watch(&mut self, dir: &Path) -> bool {
        if self.watched.iter().any(|(d, _)| d == dir) {
            return true;
        }
        let Some(watches) = self.watches.as_mut() else {
            return false;
        };
        match watches.add(dir, DIR_CHANGES) {
            Ok(wd) => {
                self.watched.push((dir.to_path_buf(), wd));
                true
            }
            Err(_) => false,
        }
    }

    /// Stop watching a directory (it may be gone already).
    pub fn unwatch(&mut self, dir: &Path) {
        if let Some(i) = self.watched.iter().position(|(d, _)| d == dir) {
            let (_, wd) = self.watched.remove(i);
            if let Some(w) = self.watches.as_mut() {
                let _ = w.remove(wd);
            }
        }
    }

    /// Block until a hint arrives, `limit` passes or [`FALLBACK`] passes
    /// ([`SETTLE`] right after a hint), whichever is first; then swallow the
    /// hints that came meanwhile (one re-read covers them all).
    pub fn wait(&self, limit: Option<Instant>) {
        let mut timeout = if self.settle.get() { SETTLE } else { FALLBACK };
        if let Some(at) = limit {
            timeout = timeout.min(at.saturating_duration_since(Instant::now()));
        }
        match self.rx.recv_timeout(timeout) {
            Ok(()) => self.settle.set(true),
            Err(RecvTimeoutError::Timeout) => self.settle.set(false),
            // No watcher thread: the timeout is all there is.
            Err(RecvTimeoutError::Disconnected) => {
                self.settle.set(false);
                std::thread::sleep(timeout)
            }
        }
        while self.rx.try_recv().is_ok() {}
    }
}

/// Fork a child that keeps a copy of the inotify descriptor until this process
/// ends (it blocks reading a pipe whose write end only we hold). It keeps no
/// other descriptor, so it never holds our stdout open for a reader such as
/// `$(dsari trigger --wait ...)`. The child calls only async-signal-safe
/// functions, which makes the fork safe even with other threads about.
/// On any failure nothing is lost but the speed-up.
fn hold_in_child(inotify: &Inotify) {
    use nix::libc;
    use nix::unistd::{ForkResult, fork, pipe};
    use std::os::fd::AsRawFd;
    let Ok((read_end, write_end)) = pipe() else {
        return;
    };
    let keep_fd = inotify.as_raw_fd();
    let read_fd = read_end.as_raw_fd();
    // SAFETY: the child only calls close, read and _exit (async-signal-safe).
    match unsafe { fork() } {
        Ok(ForkResult::Child) => unsafe {
            let mut fd = 0;
            while fd < 1024 {
                if fd != keep_fd && fd != read_fd {
                    libc::close(fd);
                }
                fd += 1;
            }
            let mut byte = 0u8;
            while libc::read(read_fd, (&raw mut byte).cast(), 1) < 0 {}
            libc::_exit(0);
        },
        Ok(ForkResult::Parent { .. }) => {
            drop(read_end);
            // Held (close-on-exec) until this process ends; the child sees EOF then.
            let _ = nix::fcntl::fcntl(
                &write_end,
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
            );
            std::mem::forget(write_end);
        }
        Err(_) => {}
    }
}

impl Default for Wake {
    fn default() -> Wake {
        Wake::new()
    }
}
