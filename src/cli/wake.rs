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

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use inotify::{Inotify, WatchDescriptor, WatchMask, Watches};

/// The slow re-check that makes a lost hint cost at most this much latency.
pub const FALLBACK: Duration = Duration::from_secs(1);

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
}

impl Wake {
    /// Start the watching thread. Without inotify (limits reached, not
    /// supported) this still works, waking every [`FALLBACK`].
    pub fn new() -> Wake {
        let (tx, rx) = channel();
        let watches = Inotify::init().ok().and_then(|mut inotify| {
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

    /// Block until a hint arrives, `limit` passes or [`FALLBACK`] passes,
    /// whichever is first; then swallow the hints that came meanwhile (one
    /// re-read covers them all).
    pub fn wait(&self, limit: Option<Instant>) {
        let mut timeout = FALLBACK;
        if let Some(at) = limit {
            timeout = timeout.min(at.saturating_duration_since(Instant::now()));
        }
        match self.rx.recv_timeout(timeout) {
            Ok(()) | Err(RecvTimeoutError::Timeout) => {}
            // No watcher thread: the timeout is all there is.
            Err(RecvTimeoutError::Disconnected) => std::thread::sleep(timeout),
        }
        while self.rx.try_recv().is_ok() {}
    }
}

impl Default for Wake {
    fn default() -> Wake {
        Wake::new()
    }
}
