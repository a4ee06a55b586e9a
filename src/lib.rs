//! dsari — Do Something And Record It.
//!
//! A file-trigger-driven batch runner and drop-in replacement for the Python
//! dsari: a job is a command; a run is one execution of it, started because a
//! trigger file appeared in the job's trigger directory; every run is recorded
//! in SQLite (the Python dsari's `runs` / `runs_running` tables) and its output
//! kept on disk.
//!
//! The binary (`src/main.rs`) only parses arguments; everything lives here:
//! [`config`] loads and validates, [`trigger`] reads trigger files, [`watch`]
//! turns inotify into hints, [`daemon`] is the event loop around the pure
//! [`daemon::scheduler`], [`exec`] builds run environments and supervises runs,
//! and [`store`] is the database.

pub mod cli;
pub mod config;
pub mod daemon;
pub mod document;
pub mod exec;
pub mod report;
pub mod schedule;
pub mod store;
pub mod time;
pub mod trigger;
pub mod watch;
