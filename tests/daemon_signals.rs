//! The daemon's signals (SPEC §8): SIGHUP reload, SIGTERM/SIGINT shutdown,
//! SIGUSR1 rescan, SIGQUIT status.

mod common;

use std::fs;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;
use serde_json::{Value, json};

/// Job `job` waits for `$DATA_DIR/go` then exits 7; job `quick` echoes.
fn config(extra: Value) -> Value {
    let mut c = json!({
        "jobs": {
            "job": { "command": sh(&format!("echo started; {}; echo released; exit 7", wait_for_release("go"))) },
            "quick": { "command": sh("echo \"quick ${MARK:-}\"") },
        }
    });
    if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            c.insert(k.clone(), v.clone());
        }
    }
    c
}

/// Trigger `job` and wait until its run has started; returns the run id.
fn start_blocking_run(env: &TestEnv) -> String {
    env.trigger_json("job", "trigger.json", &json!({}));
    let running = env.wait_running("job");
    env.wait_output_contains("job", &running.run_id, "started");
    running.run_id
}

/// Wait a little for the daemon to log that it is shutting down (so that a
/// test knows the signal has been handled); go on without it after 2 s.
fn soft_wait_for_shutdown_log(env: &TestEnv, since: usize) {
    wait_until(Instant::now() + Duration::from_secs(2), || {
        let log = env.log_since(since).to_lowercase();
        log.contains("shut") || log.contains("terminat") || log.contains("stopping")
    });
}

/// Trigger `quick` with a marker and wait for that run.
fn quick_run(env: &TestEnv, marker: &str) -> Run {
    env.trigger_json(
        "quick",
        &format!("{marker}.json"),
        &json!({
            "marker": marker, "environment": { "MARK": marker },
        }),
    );
    env.wait_for(&format!("the run of quick with marker {marker}"), || {
        env.try_runs()
            .ok()?
            .into_iter()
            .find(|r| r.marker() == Some(marker))
    })
}

#[test]
fn sighup_with_broken_config_keeps_the_old_one() {
    let env = TestEnv::new(config(json!({})));
    let mut daemon = env.start_daemon();
    quick_run(&env, "before");

    // Not JSON at all.
    let before = env.log_len();
    env.write_config_file("dsari.json", "{ \"jobs\": { broken");
    daemon.signal(Signal::SIGHUP);
    env.wait_until("the reload error (naming dsari.json) in the log", || {
        env.log_since(before).contains("dsari.json")
    });
    daemon.assert_alive(&env);
    let run = quick_run(&env, "after-syntax-error");
    assert_eq!(
        env.output(&run),
        "quick after-syntax-error\n",
        "the old config must be kept"
    );

    // Valid JSON, invalid config: a new job without a command.
    let before = env.log_len();
    let mut bad = config(json!({}));
    bad["jobs"]["newjob"] = json!({ "max_execution": 5 });
    env.write_config(bad);
    daemon.signal(Signal::SIGHUP);
    env.wait_until("the reload error naming newjob in the log", || {
        env.log_since(before).contains("newjob")
    });
    daemon.assert_alive(&env);
    quick_run(&env, "after-invalid-config");
}

#[test]
fn sighup_with_a_new_job_adds_it() {
    let env = TestEnv::new(config(json!({})));
    let mut daemon = env.start_daemon();
    quick_run(&env, "v1");

    let mut new = config(json!({}));
    new["jobs"]["added"] = json!({ "command": sh("echo added-job") });
    new["jobs"]["quick"] = json!({ "command": sh("echo \"quick-v2 ${MARK:-}\"") });
    let before = env.log_len();
    env.write_config(new);
    daemon.signal(Signal::SIGHUP);
    let dir = env.trigger_dir("added");
    env.wait_until("trigger/added to be created on reload", || dir.is_dir());
    env.trigger_json("added", "trigger.json", &json!({}));
    let runs = env.wait_runs("added", 1);
    assert_eq!(env.output(&runs[0]), "added-job\n");
    let run = quick_run(&env, "v2");
    assert_eq!(
        env.output(&run),
        "quick-v2 v2\n",
        "a changed job must use its new command"
    );
    assert!(
        env.log_since(before).to_lowercase().contains("reload"),
        "the reload should be logged:\n{}",
        env.log_since(before)
    );
    daemon.assert_alive(&env);
}

#[test]
fn sigterm_waits_for_running_runs() {
    let env = TestEnv::new(config(json!({})));
    let mut daemon = env.start_daemon();
    let run_id = start_blocking_run(&env);

    let before = env.log_len();
    daemon.signal(Signal::SIGTERM);
    soft_wait_for_shutdown_log(&env, before);
    // New triggers are not started during shutdown; they stay for the next start.
    env.trigger_json(
        "quick",
        "during-shutdown.json",
        &json!({ "marker": "during" }),
    );
    if let Some(status) = daemon.exits_within(Duration::from_millis(500)) {
        env.fail(&format!(
            "the daemon exited ({status}) while a run was still going"
        ));
    }
    assert_eq!(env.running().len(), 1, "the run must still be going");

    env.release("go");
    let status = daemon.wait_exit(&env);
    assert_eq!(status.code(), Some(0), "exit status after SIGTERM");
    let runs = env.runs();
    if runs.len() != 1 || runs[0].run_id != run_id || runs[0].exit_code != 7 {
        env.fail(&format!(
            "want the one run {run_id} with exit 7 (not killed), got {runs:#?}"
        ));
    }
    assert_eq!(env.output(&runs[0]), "started\nreleased\n");
    assert!(
        env.running().is_empty(),
        "runs_running not empty after shutdown"
    );

    // The trigger that came during shutdown runs after a restart.
    let _daemon = env.start_daemon();
    env.wait_runs("quick", 1);
}

/// SIGTERM or SIGINT with `shutdown_kill_runs: true`: the run is terminated
/// and recorded with 143, the daemon exits 0.
fn shutdown_kills_runs(sig: Signal) {
    let env = TestEnv::new(config(json!({ "shutdown_kill_runs": true })));
    let mut daemon = env.start_daemon();
    let run_id = start_blocking_run(&env);
    daemon.signal(sig);
    let status = daemon.wait_exit(&env);
    assert_eq!(status.code(), Some(0), "exit status after {sig}");
    let runs = env.runs();
    if runs.len() != 1 || runs[0].run_id != run_id || runs[0].exit_code != 143 {
        env.fail(&format!(
            "want run {run_id} recorded with 143, got {runs:#?}"
        ));
    }
    assert!(
        env.running().is_empty(),
        "runs_running not empty after shutdown"
    );
}

#[test]
fn sigterm_with_shutdown_kill_runs_terminates_them() {
    shutdown_kills_runs(Signal::SIGTERM);
}

#[test]
fn sigint_behaves_like_sigterm() {
    shutdown_kills_runs(Signal::SIGINT);
}

#[test]
fn sigint_waits_for_running_runs_like_sigterm() {
    let env = TestEnv::new(config(json!({})));
    let mut daemon = env.start_daemon();
    start_blocking_run(&env);
    let before = env.log_len();
    daemon.signal(Signal::SIGINT);
    soft_wait_for_shutdown_log(&env, before);
    if let Some(status) = daemon.exits_within(Duration::from_millis(300)) {
        env.fail(&format!(
            "the daemon exited ({status}) on SIGINT while a run was still going"
        ));
    }
    env.release("go");
    assert_eq!(daemon.wait_exit(&env).code(), Some(0));
    assert_eq!(env.runs_of("job")[0].exit_code, 7);
}

#[test]
fn shutdown_kill_grace_sigkills_runs_that_ignore_sigterm() {
    let env = TestEnv::new(json!({
        "shutdown_kill_runs": true,
        "shutdown_kill_grace": 1,
        "jobs": { "job": {
            "command": sh(&format!("trap '' TERM; echo started; {}", wait_for_release("go"))),
        } },
    }));
    let mut daemon = env.start_daemon();
    let run_id = start_blocking_run(&env);
    let t0 = Instant::now();
    daemon.signal(Signal::SIGTERM);
    let status = daemon.wait_exit(&env);
    assert_eq!(status.code(), Some(0));
    assert!(
        t0.elapsed() >= Duration::from_millis(900),
        "SIGKILL came before the grace time"
    );
    let runs = env.runs();
    if runs.len() != 1 || runs[0].run_id != run_id || runs[0].exit_code != 137 {
        env.fail(&format!(
            "want run {run_id} recorded with 137 (SIGKILL), got {runs:#?}"
        ));
    }
}

#[test]
fn idle_daemon_exits_zero_on_sigterm() {
    let env = TestEnv::new(config(json!({})));
    let mut daemon = env.start_daemon();
    daemon.signal(Signal::SIGTERM);
    assert_eq!(daemon.wait_exit(&env).code(), Some(0));
}

#[test]
fn periodic_safety_rescan_finds_what_inotify_did_not_report() {
    let env = TestEnv::new(config(json!({})));
    // Debug builds only: a safety rescan every 0.2 s instead of every minute.
    let mut daemon = env.start_daemon_with(&["--debug"], &[("DSARI_TEST_RESCAN_INTERVAL", "0.2")]);
    quick_run(&env, "warmup");
    let dir = env.trigger_dir("quick");
    for marker in ["linked1", "linked2"] {
        // An old mtime: rescans read the directory once, then skip it while
        // its mtime stays the same.
        filetime::set_file_mtime(&dir, filetime_of(now_epoch() - 60.0)).unwrap();
        let before = env.log_len();
        env.wait_until("a safety rescan that finds the directory unchanged", || {
            env.log_since(before).lines().any(|l| {
                l.split("safety rescan: ")
                    .nth(1)
                    .and_then(|rest| rest.split(' ').next())
                    .and_then(|n| n.parse::<usize>().ok())
                    .is_some_and(|n| n > 0)
            })
        });
        // A hard link makes no close-after-write and no moved-in event; only
        // a rescan finds it. It changes the directory's mtime.
        let staging = env.data_dir.join(format!("{marker}.json"));
        fs::write(
            &staging,
            format!(r#"{{"marker": "{marker}", "environment": {{"MARK": "{marker}"}}}}"#),
        )
        .unwrap();
        fs::hard_link(&staging, dir.join(format!("{marker}.json"))).unwrap();
        let run = env.wait_for(
            &format!("the run of the hard-linked trigger {marker}"),
            || {
                env.try_runs()
                    .ok()?
                    .into_iter()
                    .find(|r| r.marker() == Some(marker))
            },
        );
        assert_eq!(env.output(&run), format!("quick {marker}\n"));
    }
    daemon.assert_alive(&env);
}

/// `warning` is logged (once the daemon has seen what it is about), and is
/// still logged once after three more safety rescans.
fn assert_warned_once_across_rescans(env: &TestEnv, what: &str, warning: &str) {
    env.wait_until(what, || env.log().contains(warning));
    let after = env.log_len();
    env.wait_until("three more safety rescans", || {
        env.log_since(after)
            .lines()
            .filter(|l| l.contains("safety rescan: "))
            .count()
            >= 3
    });
    assert_eq!(env.log().matches(warning).count(), 1, "{}", env.log());
}

#[test]
fn a_dir_of_no_job_is_warned_about_once_not_at_every_rescan() {
    let env = TestEnv::new(config(json!({})));
    // Debug builds only: a safety rescan every 0.2 s instead of every minute.
    let mut daemon = env.start_daemon_with(&["--debug"], &[("DSARI_TEST_RESCAN_INTERVAL", "0.2")]);
    quick_run(&env, "warmup");
    let stray = env.data_dir.join("trigger").join("no-such-job");
    fs::create_dir(&stray).unwrap();
    fs::write(stray.join("t.json"), "{}").unwrap();
    let warning = format!(
        "{}: this directory names no configured job",
        stray.display()
    );
    // Rescans later (the root changed, then stayed the same), still one.
    assert_warned_once_across_rescans(&env, "the warning about the directory of no job", &warning);
    assert!(stray.join("t.json").exists(), "the file was left alone");
    daemon.assert_alive(&env);
}

#[test]
fn a_trigger_dir_writable_by_every_user_is_named_in_a_warning_at_start() {
    use std::os::unix::fs::PermissionsExt;
    let env = TestEnv::new(config(json!({})));
    let dir = env.trigger_dir("quick");
    fs::create_dir_all(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
    let mut daemon = env.start_daemon_with(&["--debug"], &[("DSARI_TEST_RESCAN_INTERVAL", "0.2")]);
    let warning = format!("[quick] {} is writable by every user", dir.display());
    assert_warned_once_across_rescans(&env, "the warning about the world-writable dir", &warning);
    daemon.assert_alive(&env);
}

#[test]
fn sigusr1_rescans_trigger_directories() {
    let env = TestEnv::new(config(json!({})));
    let mut daemon = env.start_daemon();
    quick_run(&env, "warmup");

    // A hard link makes no close-after-write and no moved-in event: only a
    // scan is sure to find it.
    let staging = env.data_dir.join("staging.json");
    fs::write(
        &staging,
        r#"{"marker": "linked", "environment": {"MARK": "linked"}}"#,
    )
    .unwrap();
    fs::hard_link(&staging, env.trigger_dir("quick").join("linked.json")).unwrap();

    let before = env.log_len();
    daemon.signal(Signal::SIGUSR1);
    env.wait_until("a rescan to be logged after SIGUSR1", || {
        env.log_since(before).to_lowercase().contains("rescan")
    });
    let run = env.wait_for("the run of the hard-linked trigger", || {
        env.try_runs()
            .ok()?
            .into_iter()
            .find(|r| r.marker() == Some("linked"))
    });
    assert_eq!(env.output(&run), "quick linked\n");
    daemon.assert_alive(&env);
    quick_run(&env, "after");
}

#[test]
fn sigquit_logs_status_naming_the_running_run() {
    let env = TestEnv::new(config(json!({})));
    let mut daemon = env.start_daemon();
    let run_id = start_blocking_run(&env);
    // The start of the run is logged with its id; count what is there now.
    env.wait_until("the run's start to be logged", || {
        env.log().contains(&run_id)
    });
    let count = |log: &str| log.lines().filter(|l| l.contains(&run_id)).count();
    let before = count(&env.log());

    daemon.signal(Signal::SIGQUIT);
    env.wait_until("a status line naming the running run", || {
        count(&env.log()) > before
    });
    // It names the supervisor's pid, as the supervisor wrote it into its lock.
    let lock = env.run_dir("job", &run_id).join(".dsari-lock");
    let pid = fs::read_to_string(&lock)
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .and_then(|v| v.get("pid")?.as_u64())
        .unwrap_or_else(|| env.fail(&format!("no pid in {}", lock.display())));
    let log = env.log();
    let status = log
        .lines()
        .rev()
        .find(|l| l.contains(&run_id) && l.contains("status:"))
        .unwrap_or_default();
    assert!(
        status.contains(&format!("pid {pid},")),
        "the status line should name supervisor pid {pid}: {status:?}"
    );
    daemon.assert_alive(&env);

    env.release("go");
    let runs = env.wait_runs("job", 1);
    assert_eq!(runs[0].exit_code, 7);
    daemon.assert_alive(&env);
}

/// systemd `Type=notify`: READY=1 once watching, RELOADING=1 then READY=1 on
/// SIGHUP, STOPPING=1 on SIGTERM — sent to the datagram socket in NOTIFY_SOCKET.
#[test]
fn systemd_notify_protocol() {
    use std::os::unix::net::UnixDatagram;
    let env = TestEnv::new(config(json!({})));
    let socket_path = env.data_dir.join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let recv = || {
        let mut buf = [0u8; 512];
        let n = socket
            .recv(&mut buf)
            .unwrap_or_else(|e| env.fail(&format!("no notification from the daemon: {e}")));
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let mut daemon =
        env.start_daemon_with(&[], &[("NOTIFY_SOCKET", socket_path.to_str().unwrap())]);
    assert_eq!(recv().trim(), "READY=1");
    // Ready means watching: a trigger written now runs.
    quick_run(&env, "after-ready");

    daemon.signal(Signal::SIGHUP);
    let reloading = recv();
    assert!(
        reloading.contains("RELOADING=1") && reloading.contains("MONOTONIC_USEC="),
        "{reloading:?}"
    );
    assert_eq!(recv().trim(), "READY=1");

    daemon.signal(Signal::SIGTERM);
    assert_eq!(recv().trim(), "STOPPING=1");
    assert_eq!(daemon.wait_exit(&env).code(), Some(0));
}
