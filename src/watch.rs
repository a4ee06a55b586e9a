//! inotify watching of the trigger directories: hints for the daemon, never the truth.
//!
//! One watch on `trigger/` (job directories appearing or the root going away) and
//! one per job directory (files closed after writing, moved in, or created as
//! something that is not a regular file). Nothing recursive, never single files,
//! and no open/read events, so the daemon's own reads cause no events (SPEC §4.1).
//! A queue overflow is passed on as [`FsEvent::Overflow`]: the daemon rescans.

use std::ffi::OsString;
use std::path::Path;
use std::sync::mpsc::Sender;

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask, Watches};

/// A hint from the kernel about a watched directory.
#[derive(Debug)]
pub enum FsEvent {
    /// Something happened in (or to) the directory of watch `wd`.
    Changed {
        wd: WatchDescriptor,
        mask: EventMask,
        name: Option<OsString>,
    },
    /// The kernel dropped events: rescan everything.
    Overflow,
    /// The watcher stopped working; only rescans are left.
    Failed(String),
}

/// Adds and removes watches; the events arrive on the channel given to [`Watcher::start`].
pub struct Watcher {
    watches: Watches,
    /// Job directories watched so far (for the test limit below).
    job_watches: usize,
}

impl Watcher {
    /// Start the watching thread; each event is sent as `wrap(event)`.
    pub fn start<E: Send + 'static>(
        tx: Sender<E>,
        wrap: fn(FsEvent) -> E,
    ) -> std::io::Result<Watcher> {
        let mut inotify = Inotify::init()?;
        let watches = inotify.watches();
        std::thread::Builder::new()
            .name("inotify".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let events = match inotify.read_events_blocking(&mut buf) {
                        Ok(events) => events,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            let _ = tx.send(wrap(FsEvent::Failed(e.to_string())));
                            return;
                        }
                    };
                    for ev in events {
                        let msg = if ev.mask.contains(EventMask::Q_OVERFLOW) {
                            FsEvent::Overflow
                        } else {
                            FsEvent::Changed {
                                wd: ev.wd,
                                mask: ev.mask,
                                name: ev.name.map(|n| n.to_os_string()),
                            }
                        };
                        if tx.send(wrap(msg)).is_err() {
                            return;
                        }
                    }
                }
            })?;
        Ok(Watcher {
            watches,
            job_watches: 0,
        })
    }

    /// Watch `trigger/` for job directories appearing and for its own removal.
    pub fn watch_root(&mut self, dir: &Path) -> std::io::Result<WatchDescriptor> {
        self.watches.add(
            dir,
            WatchMask::CREATE
                | WatchMask::MOVED_TO
                | WatchMask::DELETE_SELF
                | WatchMask::MOVE_SELF
                | WatchMask::ONLYDIR
                | WatchMask::DONT_FOLLOW,
        )
    }

    /// Watch a job's trigger directory for finished files.
    pub fn watch_job_dir(&mut self, dir: &Path) -> std::io::Result<WatchDescriptor> {
        if self.job_watches >= test_watch_limit() {
            // What the kernel answers past fs.inotify.max_user_watches.
            return Err(std::io::Error::from_raw_os_error(nix::libc::ENOSPC));
        }
        self.job_watches += 1;
        self.watches.add(
            dir,
            WatchMask::CLOSE_WRITE
                | WatchMask::MOVED_TO
                | WatchMask::CREATE
                | WatchMask::DELETE_SELF
                | WatchMask::MOVE_SELF
                | WatchMask::ONLYDIR
                | WatchMask::DONT_FOLLOW,
        )
    }

    /// Stop watching (the directory may already be gone; that is fine).
    pub fn unwatch(&mut self, wd: WatchDescriptor) {
        let _ = self.watches.remove(wd);
    }
}

/// Debug builds only: `DSARI_TEST_MAX_WATCHES=N` makes the N+1-th job
/// directory fail as the kernel does when fs.inotify.max_user_watches is
/// reached, so that tests can show the fallback without changing a global
/// kernel setting. Release builds have no limit of their own.
fn test_watch_limit() -> usize {
    #[cfg(debug_assertions)]
    if let Some(n) = std::env::var("DSARI_TEST_MAX_WATCHES")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return n;
    }
    usize::MAX
}
