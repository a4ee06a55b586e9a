//! Executing a run: its environment (SPEC §6.2) and its supervisor process (§6.1).
//!
//! The daemon never runs a job's command itself. It has a supervisor started
//! for each run with a [`RunSpec`] (forked by the [`Launcher`], which hands it
//! the spec in memory, or this same binary re-executed with the hidden
//! `__supervise` subcommand, which reads the spec the daemon wrote into the run
//! dir) that starts the command, enforces `max_execution`, waits, and leaves a
//! [`RunStatus`] in the run dir. Because everything the
//! supervisor needs and produces lives in the run dir, a run outlives the daemon.

pub mod environment;
pub mod launcher;
pub mod supervisor;

pub use environment::{RunContext, build_environment};
pub use launcher::{LAUNCHER_ARG, LaunchEvent, LaunchSink, Launcher};
pub use supervisor::{
    RunSpec, RunStatus, Rusage, START_GRACE, SUPERVISE_ARG, SupervisorState, await_supervisors,
    make_run_dir, never_started, probe_supervisor, read_spec, read_status, spawn_supervisor,
    spec_group, supervise, supervisor_seen, wait_for_supervisor, write_spec,
};

/// Name of the run spec in the run dir (a dot-file: the job's own files stay visible).
pub const SPEC_FILE: &str = ".dsari-run.json";
/// Name of the status the supervisor leaves in the run dir.
pub const STATUS_FILE: &str = ".dsari-status.json";
/// Held locked (flock) by the supervisor for as long as it lives, with its pid
/// inside (`{"pid": N}`): a restarted daemon tells a live supervisor from a dead
/// one by trying the lock, which also guards against pid reuse, and learns of
/// its end by waiting on it. At the end the supervisor writes the status into
/// this same file (its blocks were reserved at the start) and renames it to
/// [`STATUS_FILE`], still locked until it exits.
pub const LOCK_FILE: &str = ".dsari-lock";
/// The run's output, stdout and stderr interleaved.
pub const OUTPUT_FILE: &str = "output.txt";
