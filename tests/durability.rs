//! Durability: runs survive the daemon, triggers survive crashes, the database
//! may be locked, idempotency keys (SPEC §3, §4.2, §4.3, §11.2, §11.3).
//!
//! The daemon is killed with SIGKILL (by the test, or by itself at a
//! `DSARI_FAULT` point of a debug build) and started again on the same data
//! dir; what it records afterwards is checked in the real SQLite file.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use nix::errno::Errno;
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use serde_json::{Value, json};

/// Job `job` prints "started", waits for `$DATA_DIR/go`, then exits 7; job
/// `quick` prints `$MARK`. `quick` is the probe that tells a test that a
/// (re)started daemon has finished its start-up (recovery included).
fn config(concurrent: bool, extra: Value) -> Value {
    let mut c = json!({
        "jobs": {
            "job": {
                "command": sh(&format!("echo started; {}; echo released; exit 7", wait_for_release("go"))),
                "concurrent_runs": concurrent,
            },
            "quick": { "command": sh("echo \"MARK=${MARK:-}\"; exit 5"), "concurrent_runs": true },
        }
    });
    if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            c.insert(k.clone(), v.clone());
        }
    }
    c
}

/// SIGKILL the daemon and wait until it is gone.
fn kill9(env: &TestEnv, daemon: &mut Daemon) {
    daemon.signal(Signal::SIGKILL);
    let status = daemon.wait_exit(env);
    if status.signal() != Some(Signal::SIGKILL as i32) {
        env.fail(&format!(
            "the daemon was SIGKILLed but exited with {status:?}"
        ));
    }
}

/// Start the daemon and wait until it has finished its start-up: a run of
/// `quick` with a fresh marker has been recorded. (Recovery of `runs_running`
/// and of claimed files happens before the first event is handled.)
fn start_and_probe(env: &TestEnv, probe: &str) -> Daemon {
    let daemon = env.start_daemon();
    quick_run(env, probe);
    daemon
}

/// Trigger `quick` with marker (and `MARK`) `marker`; wait for its run.
fn quick_run(env: &TestEnv, marker: &str) -> Run {
    env.trigger_json(
        "quick",
        &format!("{marker}.json"),
        &json!({ "marker": marker, "environment": { "MARK": marker } }),
    );
    env.wait_for(&format!("the run of quick with marker {marker}"), || {
        env.try_runs()
            .ok()?
            .into_iter()
            .find(|r| r.marker() == Some(marker))
    })
}

/// Trigger `job` and wait until its run has printed "started".
fn start_blocking_run(env: &TestEnv, marker: &str) -> Running {
    env.trigger_json(
        "job",
        &format!("{marker}.json"),
        &json!({ "marker": marker }),
    );
    let running = env.wait_for(&format!("run {marker} of job to be running"), || {
        env.try_running()
            .ok()?
            .into_iter()
            .find(|r| r.trigger_data.get("marker").and_then(Value::as_str) == Some(marker))
    });
    env.wait_output_contains("job", &running.run_id, "started");
    running
}

/// Entries of `trigger/JOB/.claimed/`.
fn claimed_entries(env: &TestEnv, job: &str) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(env.trigger_dir(job).join(".claimed"))
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Rows of `dsari_pending` as (run_id, job_name, schedule_time).
fn try_pending(env: &TestEnv) -> Result<Vec<(String, String, f64)>, String> {
    let conn = env.open_db().map_err(|e| e.to_string())?;
    let mut stmt = conn
        .prepare("SELECT run_id, job_name, schedule_time FROM dsari_pending ORDER BY schedule_time")
        .map_err(|e| e.to_string())?;
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .map_err(|e| e.to_string())?;
    rows.collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())
}

fn pending(env: &TestEnv) -> Vec<(String, String, f64)> {
    try_pending(env).unwrap_or_else(|e| env.fail(&format!("cannot read dsari_pending: {e}")))
}

/// Nothing left in flight for `job`: no trigger file, no claimed file, no
/// pending and no running run (of any job).
fn settled(env: &TestEnv, job: &str) -> bool {
    env.trigger_files(job).is_empty()
        && claimed_entries(env, job).is_empty()
        && env.try_running().is_ok_and(|r| r.is_empty())
        && try_pending(env).is_ok_and(|p| p.is_empty())
}

/// The supervisor's pid, as it wrote it into `.dsari-lock` (`{"pid": N}`).
fn supervisor_pid(env: &TestEnv, job: &str, run_id: &str) -> i32 {
    let lock = env.run_dir(job, run_id).join(".dsari-lock");
    let text = fs::read_to_string(&lock)
        .unwrap_or_else(|e| env.fail(&format!("cannot read {}: {e}", lock.display())));
    serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| v.get("pid")?.as_i64())
        .and_then(|p| i32::try_from(p).ok())
        .unwrap_or_else(|| {
            env.fail(&format!(
                "{} does not hold {{\"pid\": N}}: {text:?}",
                lock.display()
            ))
        })
}

/// The supervisor's status file, once it is there and parses.
fn read_status_file(run_dir: &Path) -> Option<Value> {
    let bytes = fs::read(run_dir.join(".dsari-status.json")).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// SIGKILL a process group (or, if `pgid` leads none, the process).
fn kill_group(pgid: i32) {
    if signal::killpg(Pid::from_raw(pgid), Signal::SIGKILL) == Err(Errno::ESRCH) {
        let _ = signal::kill(Pid::from_raw(pgid), Signal::SIGKILL);
    }
}

/// Exactly the runs with this marker.
fn runs_with_marker(env: &TestEnv, marker: &str) -> Vec<Run> {
    env.runs()
        .into_iter()
        .filter(|r| r.marker() == Some(marker))
        .collect()
}

// ----- runs survive the daemon ---------------------------------------------

#[test]
fn run_going_when_the_daemon_is_killed_is_adopted_and_recorded_once() {
    let env = TestEnv::new(config(false, json!({})));
    let mut daemon = env.start_daemon();
    let running = start_blocking_run(&env, "a");
    kill9(&env, &mut daemon);

    let supervisor = supervisor_pid(&env, "job", &running.run_id);
    if process_gone(supervisor) {
        env.fail(&format!(
            "the run's supervisor (pid {supervisor}) died with the daemon"
        ));
    }
    let _daemon = start_and_probe(&env, "probe");
    if !env.runs_of("job").is_empty() {
        env.fail("the run was recorded as finished while it was still going");
    }
    let still = env.running();
    if still.len() != 1 || still[0].run_id != running.run_id {
        env.fail(&format!(
            "runs_running must still hold exactly run {}, got {still:?}",
            running.run_id
        ));
    }

    let released = now_epoch();
    env.release("go");
    let runs = env.wait_runs("job", 1);
    let seen = now_epoch();
    if runs.len() != 1 {
        env.fail(&format!("want exactly one run of job, got {runs:#?}"));
    }
    let run = &runs[0];
    assert_eq!(run.run_id, running.run_id, "the adopted run has another id");
    assert_eq!(run.exit_code, 7, "the adopted run's true exit code");
    assert!(
        run.stop_time >= released && run.stop_time <= seen,
        "stop_time {:.3} must be the run's real end, between the release {released:.3} and \
         the moment it was seen recorded {seen:.3}",
        run.stop_time
    );
    assert!(
        seen - released < 3.0,
        "the end of an adopted run must be noticed at once, it took {:.2} s",
        seen - released
    );
    assert_time_eq(&env, "start_time", run.start_time, running.start_time, 1e-6);
    assert!(
        run.run_data.get("lost").is_none(),
        "an adopted run is not lost: {}",
        run.run_data
    );
    assert_eq!(
        env.output(run),
        "started\nreleased\n",
        "the run must have run once, through"
    );
    env.wait_until("runs_running to be empty", || {
        env.try_running().is_ok_and(|r| r.is_empty())
    });
    assert_eq!(
        env.runs()
            .iter()
            .filter(|r| r.run_id == running.run_id)
            .count(),
        1
    );
}

#[test]
fn run_that_ends_while_the_daemon_is_down_gets_its_true_exit_and_stop_time() {
    let env = TestEnv::new(config(false, json!({})));
    let mut daemon = env.start_daemon();
    let running = start_blocking_run(&env, "a");
    kill9(&env, &mut daemon);

    let run_dir = env.run_dir("job", &running.run_id);
    let released = now_epoch();
    env.release("go");
    let status = env.wait_for("the supervisor's .dsari-status.json", || {
        read_status_file(&run_dir)
    });
    let status_exit = status.get("exit_code").and_then(Value::as_i64);
    let status_stop = status.get("stop_time").and_then(Value::as_f64);
    let (Some(status_exit), Some(status_stop)) = (status_exit, status_stop) else {
        env.fail(&format!(
            "the status file lacks exit_code or stop_time: {status}"
        ));
    };
    assert_eq!(status_exit, 7);
    assert!(
        status_stop >= released,
        "status stop_time before the release"
    );

    let _daemon = start_and_probe(&env, "probe");
    let runs = env.wait_runs("job", 1);
    if runs.len() != 1 {
        env.fail(&format!("want exactly one run of job, got {runs:#?}"));
    }
    let run = &runs[0];
    assert_eq!(run.run_id, running.run_id);
    assert_eq!(run.exit_code, 7, "the true exit code");
    assert_time_eq(
        &env,
        "stop_time (from the status file)",
        run.stop_time,
        status_stop,
        1e-6,
    );
    assert!(
        run.run_data.get("lost").is_none(),
        "a run that left its status is not lost: {}",
        run.run_data
    );
    assert!(
        run.run_data.get("rusage").is_some_and(Value::is_object),
        "run_data.rusage from the status file is missing: {}",
        run.run_data
    );
    env.wait_until("runs_running to be empty", || {
        env.try_running().is_ok_and(|r| r.is_empty())
    });
}

#[test]
fn adopted_run_holds_its_concurrency_group_slot() {
    // `job` and `other` share group g (max 1). A restarted daemon adopts the
    // run of `job` and must count it in g, so `other` waits for it. The group
    // is read from the supervisor's lock file: the spec is removed before the
    // restart to show that the lock alone carries it.
    let mut c = config(true, json!({ "concurrency_groups": { "g": { "max": 1 } } }));
    c["jobs"]["job"]["concurrency_groups"] = json!(["g"]);
    c["jobs"]["other"] = json!({ "command": sh("echo other"), "concurrency_groups": ["g"] });
    let env = TestEnv::new(c);
    let mut daemon = env.start_daemon();
    let a = start_blocking_run(&env, "a");
    let spec = env.run_dir("job", &a.run_id).join(".dsari-run.json");
    env.wait_until("the supervisor to write the run's spec", || spec.exists());
    kill9(&env, &mut daemon);
    fs::remove_file(&spec).unwrap_or_else(|e| env.fail(&format!("{}: {e}", spec.display())));
    let _daemon = start_and_probe(&env, "probe");

    let b_path = env.trigger_json("other", "b.json", &json!({ "marker": "b" }));
    env.wait_consumed(&b_path);
    env.wait_until("trigger b to be recorded (claim gone)", || {
        claimed_entries(&env, "other").is_empty()
    });
    let running = env.running();
    if running.len() != 1 || running[0].run_id != a.run_id {
        env.fail(&format!(
            "while adopted run A ({}) holds group g, other must wait; runs_running: {running:?}",
            a.run_id
        ));
    }
    env.release("go");
    let b = env.wait_runs("other", 1);
    let run_a = env.wait_for("run A to be recorded", || {
        env.try_runs()
            .ok()?
            .into_iter()
            .find(|r| r.run_id == a.run_id)
    });
    assert!(
        b[0].start_time >= run_a.stop_time,
        "other started at {:.3}, before adopted run A ended at {:.3} (group g has max 1)",
        b[0].start_time,
        run_a.stop_time
    );
}

#[test]
fn adopted_run_counts_against_concurrency() {
    let env = TestEnv::new(config(false, json!({})));
    let mut daemon = env.start_daemon();
    let a = start_blocking_run(&env, "a");
    kill9(&env, &mut daemon);
    let _daemon = start_and_probe(&env, "probe");

    let b_path = env.trigger_json("job", "b.json", &json!({ "marker": "b" }));
    env.wait_consumed(&b_path);
    env.wait_until("trigger b to be recorded (claim gone)", || {
        claimed_entries(&env, "job").is_empty()
    });
    let running = env.running();
    if running.len() != 1 || running[0].run_id != a.run_id {
        env.fail(&format!(
            "while adopted run A ({}) goes, trigger b must wait; runs_running: {running:?}",
            a.run_id
        ));
    }
    let waiting = pending(&env);
    if waiting.len() != 1 || waiting[0].1 != "job" {
        env.fail(&format!(
            "trigger b must wait as a pending run in dsari_pending, got {waiting:?}"
        ));
    }

    env.release("go");
    let runs = env.wait_runs("job", 2);
    let run_a = runs.iter().find(|r| r.run_id == a.run_id);
    let run_b = runs.iter().find(|r| r.marker() == Some("b"));
    let (Some(run_a), Some(run_b)) = (run_a, run_b) else {
        env.fail(&format!("want runs A and b, got {runs:#?}"));
    };
    assert_eq!(runs.len(), 2, "{runs:#?}");
    assert!(
        run_b.start_time >= run_a.stop_time,
        "b started at {:.3}, before adopted run A ended at {:.3}",
        run_b.start_time,
        run_a.stop_time
    );
    assert_eq!(run_a.exit_code, 7);
    assert_eq!(run_b.exit_code, 7);
}

#[test]
fn run_whose_supervisor_is_gone_without_status_is_recorded_as_lost() {
    let env = TestEnv::new(json!({
        "jobs": {
            "job": { "command": sh(&format!("echo $$ > pgid; echo started; {}; exit 7", wait_for_release("go"))) },
            "quick": { "command": sh("echo \"MARK=${MARK:-}\""), "concurrent_runs": true },
        }
    }));
    let mut daemon = env.start_daemon();
    let running = start_blocking_run(&env, "a");
    kill9(&env, &mut daemon);

    let run_dir = env.run_dir("job", &running.run_id);
    let supervisor = supervisor_pid(&env, "job", &running.run_id);
    let pgid: i32 = fs::read_to_string(run_dir.join("pgid"))
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or_else(|| env.fail("the run did not write its pgid"));
    // The supervisor first, so that it cannot write a status for its run.
    kill_group(supervisor);
    env.wait_until("the supervisor to be gone", || process_gone(supervisor));
    kill_group(pgid);
    env.wait_until("the run to be gone", || process_gone(pgid));
    assert!(
        !run_dir.join(".dsari-status.json").exists(),
        "the killed supervisor left a status file"
    );

    let _daemon = start_and_probe(&env, "probe");
    let runs = env.wait_runs("job", 1);
    if runs.len() != 1 {
        env.fail(&format!("want exactly one run of job, got {runs:#?}"));
    }
    let run = &runs[0];
    assert_eq!(run.run_id, running.run_id);
    assert_eq!(
        run.exit_code, -1,
        "a lost run is recorded with exit code -1"
    );
    match run.run_data.get("lost") {
        Some(Value::String(why)) if !why.trim().is_empty() => {}
        other => env.fail(&format!(
            "run_data.lost must say why the run is lost, got {other:?}"
        )),
    }
    assert!(
        run.stop_time >= run.start_time,
        "stop_time {} before start_time {}",
        run.stop_time,
        run.start_time
    );
    env.wait_until("runs_running to be empty", || {
        env.try_running().is_ok_and(|r| r.is_empty())
    });
}

#[test]
fn future_trigger_survives_a_kill_and_runs_at_its_time_once() {
    let env = TestEnv::new(config(false, json!({})));
    let mut daemon = env.start_daemon();
    let due = now_epoch() + 3.0;
    let path = env.trigger_json(
        "quick",
        "later.json",
        &json!({ "marker": "later", "schedule_time": due, "environment": { "MARK": "later" } }),
    );
    env.wait_consumed(&path);
    env.wait_until(
        "the pending run in dsari_pending, its claim removed",
        || {
            claimed_entries(&env, "quick").is_empty()
                && try_pending(&env).is_ok_and(|p| {
                    p.iter()
                        .any(|(_, job, t)| job == "quick" && (t - due).abs() < 1e-3)
                })
        },
    );
    if now_epoch() >= due {
        env.fail("too slow: the pending run was saved only after its due time");
    }
    kill9(&env, &mut daemon);
    assert!(env.runs().is_empty(), "a run was recorded before its time");

    let _daemon = env.start_daemon();
    let run = env.wait_for("the run of the future trigger", || {
        env.try_runs()
            .ok()?
            .into_iter()
            .find(|r| r.marker() == Some("later"))
    });
    assert!(
        run.start_time >= due,
        "the run started at {:.3}, before its schedule_time {due:.3}",
        run.start_time
    );
    assert!(
        run.start_time - due < 2.0,
        "the run started {:.2} s after its schedule_time",
        run.start_time - due
    );
    assert_time_eq(&env, "schedule_time", run.schedule_time, due, 1e-3);
    assert_eq!(env.output(&run), "MARK=later\n");
    env.wait_until("nothing pending or running", || settled(&env, "quick"));
    assert_eq!(
        runs_with_marker(&env, "later").len(),
        1,
        "ran more than once"
    );
    assert_eq!(env.runs().len(), 1);
}

/// The parent of a process, from `/proc/PID/stat`.
fn parent_of(pid: i32) -> Option<i32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn runs_survive_the_launcher_being_killed() {
    let env = TestEnv::new(config(true, json!({})));
    let mut daemon = env.start_daemon();
    let running = start_blocking_run(&env, "a");
    let supervisor = supervisor_pid(&env, "job", &running.run_id);
    let launcher = parent_of(supervisor)
        .unwrap_or_else(|| env.fail(&format!("no parent for supervisor {supervisor}")));
    let cmdline = fs::read(format!("/proc/{launcher}/cmdline")).unwrap_or_default();
    assert!(
        String::from_utf8_lossy(&cmdline).contains("--launcher"),
        "the supervisor's parent (pid {launcher}) is not the launcher: {:?}",
        String::from_utf8_lossy(&cmdline)
    );
    assert_eq!(
        parent_of(launcher),
        Some(daemon.pid()),
        "the launcher is the daemon's child"
    );
    let _ = signal::kill(Pid::from_raw(launcher), Signal::SIGKILL);
    env.wait_until("the launcher to be gone", || process_gone(launcher));
    assert!(
        !process_gone(supervisor),
        "the run's supervisor died with the launcher"
    );
    // New runs still start (a new launcher), and still get their own exit code.
    let after = quick_run(&env, "after");
    assert_eq!(after.exit_code, 5);
    env.wait_until("the log to tell of the launcher's end", || {
        env.log().contains("the launcher has ended")
    });
    assert!(
        env.log()
            .contains("following them through their run dirs' locks"),
        "the log must say how the launcher's runs are followed:\n{}",
        env.log()
    );
    // The run the dead launcher had started is still followed to its end.
    env.release("go");
    let runs = env.wait_runs("job", 1);
    assert_eq!(runs.len(), 1, "{runs:#?}");
    assert_eq!(runs[0].run_id, running.run_id);
    assert_eq!(runs[0].exit_code, 7, "the run's true exit code");
    assert!(
        runs[0].run_data.get("lost").is_none(),
        "{}",
        runs[0].run_data
    );
    assert_eq!(env.output(&runs[0]), "started\nreleased\n");
    daemon.assert_alive(&env);
}

#[test]
fn run_the_launcher_took_but_never_started_runs_once_anyway() {
    let env = TestEnv::new(config(true, json!({})));
    // Debug builds only: every launcher dies on its first request, before it
    // forks a supervisor. The daemon must start each such run itself, once.
    let mut daemon = env.start_daemon_with(&[], &[("DSARI_FAULT", "launcher")]);
    for marker in ["first", "second"] {
        let run = quick_run(&env, marker);
        assert_eq!(run.exit_code, 5, "{marker}: the run's own exit code");
        assert!(run.run_data.get("lost").is_none(), "{}", run.run_data);
        assert_eq!(env.output(&run), format!("MARK={marker}\n"));
    }
    assert!(
        env.log().contains("starting its supervisor directly"),
        "the log must say the run was started without the launcher:\n{}",
        env.log()
    );
    // Each run exactly once, and nothing left running.
    for marker in ["first", "second"] {
        assert_eq!(runs_with_marker(&env, marker).len(), 1, "{marker}");
    }
    env.wait_until("runs_running to be empty", || {
        env.try_running().is_ok_and(|r| r.is_empty())
    });
    daemon.assert_alive(&env);
}

#[test]
fn runs_a_launcher_refuses_to_take_are_started_directly_once() {
    let env = TestEnv::new(config(true, json!({})));
    // Debug builds only: every launcher closes its request pipe at once and
    // ends 2 s later, so the daemon's write of a turn's runs fails (EPIPE).
    let mut daemon = env.start_daemon_with(&[], &[("DSARI_FAULT", "launcher-deaf")]);
    let run = quick_run(&env, "refused");
    assert_eq!(run.exit_code, 5, "the run's own exit code");
    assert!(run.run_data.get("lost").is_none(), "{}", run.run_data);
    assert_eq!(env.output(&run), "MARK=refused\n");
    assert!(
        env.log().contains("Broken pipe") && env.log().contains("starting its supervisor directly"),
        "the log must say the write failed and the run was started without the launcher:\n{}",
        env.log()
    );
    assert_eq!(runs_with_marker(&env, "refused").len(), 1);
    env.wait_until("runs_running to be empty", || {
        env.try_running().is_ok_and(|r| r.is_empty())
    });
    daemon.assert_alive(&env);
}

// ----- crash at every fault point ------------------------------------------

/// Start the daemon with `DSARI_FAULT=point`, drop one trigger (due in
/// `due_in` seconds), check that the daemon killed itself there, then start
/// it again without the fault: exactly one run for the trigger.
fn crash_at(point: &str, due_in: Option<f64>) -> Run {
    let env = TestEnv::new(config(false, json!({})));
    let mut daemon = env.start_daemon_with(&[], &[("DSARI_FAULT", point)]);
    let marker = format!("fault-{point}");
    let mut trigger = json!({ "marker": marker, "environment": { "MARK": marker } });
    if let Some(d) = due_in {
        trigger["schedule_time"] = json!(now_epoch() + d);
    }
    env.trigger_json("quick", "trigger.json", &trigger);
    let status = daemon.wait_exit(&env);
    if status.signal() != Some(Signal::SIGKILL as i32) {
        env.fail(&format!(
            "DSARI_FAULT={point}: want the daemon SIGKILLed, it exited with {status:?}"
        ));
    }
    if !env
        .log()
        .contains(&format!("DSARI_FAULT: killing the daemon at {point}"))
    {
        env.fail(&format!("the daemon did not die at fault point {point}"));
    }

    // What the crash left behind.
    let claimed = claimed_entries(&env, "quick");
    let claimed_id = claimed
        .first()
        .and_then(|c| c.split_once("--"))
        .map(|(id, _)| id.to_string());
    let (runs, running, waiting) = (env.runs(), env.running(), pending(&env));
    let left = format!(
        "claimed {claimed:?}, runs {}, runs_running {running:?}, pending {waiting:?}",
        runs.len()
    );
    let expected_id = match point {
        "claimed" => {
            if claimed.len() != 1 || !runs.is_empty() || !running.is_empty() || !waiting.is_empty()
            {
                env.fail(&format!("after a crash at claimed: {left}"));
            }
            claimed_id
        }
        "started" => {
            if claimed.len() != 1 || running.len() != 1 || !runs.is_empty() {
                env.fail(&format!("after a crash at started: {left}"));
            }
            assert_eq!(claimed_id.as_deref(), Some(running[0].run_id.as_str()));
            claimed_id
        }
        "saved" => {
            if claimed.len() != 1 || waiting.len() != 1 || !runs.is_empty() || !running.is_empty() {
                env.fail(&format!("after a crash at saved: {left}"));
            }
            assert_eq!(claimed_id.as_deref(), Some(waiting[0].0.as_str()));
            claimed_id
        }
        "finishing" => {
            if !claimed.is_empty() || running.len() != 1 || !runs.is_empty() {
                env.fail(&format!("after a crash at finishing: {left}"));
            }
            let dir = env.run_dir("quick", &running[0].run_id);
            if read_status_file(&dir).is_none() {
                env.fail("after a crash at finishing the run's status file is missing");
            }
            Some(running[0].run_id.clone())
        }
        other => panic!("unknown fault point {other}"),
    };

    let mut daemon = env.start_daemon();
    let run = env.wait_for(&format!("the run of {marker}"), || {
        env.try_runs()
            .ok()?
            .into_iter()
            .find(|r| r.marker() == Some(marker.as_str()))
    });
    env.wait_until(
        "no trigger file, claim, pending or running run left",
        || settled(&env, "quick"),
    );
    let mine = runs_with_marker(&env, &marker);
    if mine.len() != 1 || env.runs().len() != 1 {
        env.fail(&format!(
            "DSARI_FAULT={point}: want exactly one run for the trigger, got {mine:#?}"
        ));
    }
    assert_eq!(
        Some(run.run_id.as_str()),
        expected_id.as_deref(),
        "the run must keep the id it was given before the crash"
    );
    assert_eq!(
        run.trigger_data
            .pointer("/environment/MARK")
            .and_then(Value::as_str),
        Some(marker.as_str())
    );
    match run.exit_code {
        5 => assert_eq!(env.output(&run), format!("MARK={marker}\n")),
        -1 => assert!(
            run.run_data.get("lost").is_some_and(Value::is_string),
            "exit code -1 without run_data.lost: {}",
            run.run_data
        ),
        other => env.fail(&format!("unexpected exit code {other}")),
    }
    assert!(env.rejected_entries("quick").is_empty());
    daemon.assert_alive(&env);
    run
}

#[test]
fn crash_after_claiming_a_trigger() {
    let run = crash_at("claimed", None);
    assert_eq!(run.exit_code, 5, "a claimed trigger must simply run");
}

#[test]
fn crash_after_recording_the_start() {
    let run = crash_at("started", None);
    // The daemon died after recording the start and before handing the run to
    // a supervisor: the command never started (there is not even a run dir),
    // so the restarted daemon has to start it;
    // recording it as lost loses the trigger (SPEC §4.3, §11.2).
    assert_eq!(
        run.exit_code, 5,
        "a run whose start was recorded but whose command never started must run after \
         the restart, not be recorded as lost; run_data: {}",
        run.run_data
    );
}

#[test]
fn crash_after_saving_a_pending_run() {
    let run = crash_at("saved", Some(2.0));
    assert_eq!(run.exit_code, 5, "a saved pending run must run at its time");
    assert!(
        run.start_time >= run.schedule_time,
        "started at {:.3} before its time {:.3}",
        run.start_time,
        run.schedule_time
    );
}

#[test]
fn crash_while_recording_a_finished_run() {
    let run = crash_at("finishing", None);
    assert_eq!(run.exit_code, 5, "the finished run's true exit code");
}

// ----- many triggers, many crashes -----------------------------------------

/// xorshift64: a tiny seeded generator, so that a failure can be replayed.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform-ish in `lo..hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }
}

/// Write `content` to `dir/.NAME.tmp`, then rename it to `dir/NAME` (no fsync:
/// 500 of them would cost seconds and prove nothing here).
fn drop_trigger(dir: &Path, name: &str, content: &[u8]) {
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = fs::File::create(&tmp).expect("create temp trigger");
    f.write_all(content).expect("write temp trigger");
    drop(f);
    fs::rename(&tmp, dir.join(name)).expect("rename trigger into place");
}

#[test]
fn five_hundred_triggers_through_three_kills() {
    const N: usize = 500;
    const KILLS: usize = 3;
    let seed = std::env::var("DSARI_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .expect("clock")
                .as_nanos() as u64
                | 1
        });
    eprintln!("chaos seed {seed} (DSARI_CHAOS_SEED={seed} replays it)");
    let mut rng = XorShift(seed);
    let writer_seed = rng.next() | 1;

    let env = TestEnv::new(json!({
        "jobs": { "job": { "command": sh("echo \"$MARK\""), "concurrent_runs": true } }
    }));
    let mut daemon = env.start_daemon();
    let dir: PathBuf = env.trigger_dir("job");
    let writer = std::thread::spawn(move || {
        let mut rng = XorShift(writer_seed);
        let mut i = 0;
        while i < N {
            let burst = rng.range(1, 60) as usize;
            for _ in 0..burst.min(N - i) {
                let content = json!({ "environment": { "MARK": i.to_string() } }).to_string();
                drop_trigger(&dir, &format!("trigger-{i}.json"), content.as_bytes());
                i += 1;
            }
            std::thread::sleep(Duration::from_millis(rng.range(0, 40)));
        }
    });

    let started = Instant::now();
    let mut kills = Vec::new();
    for _ in 0..KILLS {
        // A random moment, not a wait for anything.
        let delay = rng.range(30, 800);
        std::thread::sleep(Duration::from_millis(delay));
        kill9(&env, &mut daemon);
        kills.push(format!(
            "{:.0} ms (runs recorded: {})",
            started.elapsed().as_secs_f64() * 1000.0,
            env.try_runs().map(|r| r.len()).unwrap_or(0)
        ));
        daemon = env.start_daemon();
    }
    eprintln!("killed the daemon at {}", kills.join(", "));
    if writer.join().is_err() {
        env.fail("the trigger writer failed");
    }

    let mut have = 0;
    let ok = wait_until(Instant::now() + Duration::from_secs(40), || {
        have = env.try_runs().map(|r| r.len()).unwrap_or(have);
        have >= N && settled(&env, "job")
    });
    if !ok {
        env.fail(&format!(
            "seed {seed}: want {N} runs and nothing in flight, have {have} runs, \
             {} trigger files, {} claimed, {} running",
            env.trigger_files("job").len(),
            claimed_entries(&env, "job").len(),
            env.try_running().map(|r| r.len()).unwrap_or(usize::MAX)
        ));
    }
    eprintln!(
        "{N} triggers through {KILLS} kills: {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let runs = env.runs();
    let mut count: BTreeMap<usize, usize> = BTreeMap::new();
    let mut no_mark = Vec::new();
    // Runs recorded as lost (exit -1): whether their supervisor ever got
    // the run (it locked the run dir and created output.txt) or not.
    let mut lost_started = Vec::new();
    let mut lost_never_started = Vec::new();
    for run in &runs {
        let mark = run
            .trigger_data
            .pointer("/environment/MARK")
            .and_then(Value::as_str)
            .and_then(|m| m.parse::<usize>().ok());
        let Some(mark) = mark else {
            no_mark.push(run.run_id.clone());
            continue;
        };
        *count.entry(mark).or_default() += 1;
        match run.exit_code {
            0 => {
                let out = env.output(run);
                if out != format!("{mark}\n") {
                    env.fail(&format!(
                        "seed {seed}: run {} of MARK={mark} printed {out:?}",
                        run.run_id
                    ));
                }
            }
            -1 if run.run_data.get("lost").is_some() => {
                let dir = env.run_dir("job", &run.run_id);
                if dir.join("output.txt").exists() {
                    // What its supervisor left by now: a status file and the
                    // output mean the command ran after all.
                    lost_started.push(format!(
                        "MARK={mark} run {}: output {:?}, status file {}, lock file {:?}",
                        run.run_id,
                        env.output(run),
                        dir.join(".dsari-status.json").exists(),
                        fs::read_to_string(dir.join(".dsari-lock")).ok()
                    ));
                } else {
                    lost_never_started.push(mark);
                }
            }
            other => env.fail(&format!(
                "seed {seed}: run {} of MARK={mark} exited {other}: {}",
                run.run_id, run.run_data
            )),
        }
    }
    let missing: Vec<usize> = (0..N).filter(|i| !count.contains_key(i)).collect();
    let twice: Vec<(usize, usize)> = count
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(m, n)| (*m, *n))
        .collect();
    if runs.len() != N || !missing.is_empty() || !twice.is_empty() || !no_mark.is_empty() {
        env.fail(&format!(
            "seed {seed}: want each of {N} markers exactly once; {} runs, missing {missing:?}, \
             more than once (marker, times) {twice:?}, without a marker {no_mark:?}",
            runs.len()
        ));
    }
    assert!(env.rejected_entries("job").is_empty());
    daemon.assert_alive(&env);

    // Every trigger must have run, not just been recorded. A run whose
    // supervisor never got it (no output.txt in its run dir) was never
    // started, so recording it as lost loses its trigger (SPEC §4.3: "a crash
    // at any moment neither loses the trigger nor runs it twice"; §11.2). No
    // supervisor dies here, so a run handed to one cannot be lost either: if
    // it is, the restarted daemon judged a live supervisor gone (its output
    // and status file, listed, show that the command ran regardless).
    lost_never_started.sort_unstable();
    if !lost_never_started.is_empty() || !lost_started.is_empty() {
        env.fail(&format!(
            "seed {seed}: {} of {N} runs were recorded as lost (exit -1) without their \
             command ever starting (no output.txt in the run dir): markers {:?}…; \
             {} more recorded as lost after a supervisor got them:\n{}",
            lost_never_started.len(),
            &lost_never_started[..lost_never_started.len().min(20)],
            lost_started.len(),
            lost_started.join("\n")
        ));
    }
}

// ----- a locked database ---------------------------------------------------

#[test]
fn locked_database_delays_runs_but_loses_none() {
    let env = TestEnv::new(config(false, json!({})));
    let mut daemon = env.start_daemon();
    quick_run(&env, "before");

    let conn = rusqlite::Connection::open(env.db_path()).expect("open the database");
    conn.busy_timeout(Duration::from_secs(10))
        .expect("busy timeout");
    conn.execute_batch("BEGIN EXCLUSIVE")
        .expect("take the write lock");
    let since = env.log_len();
    let locked_at = Instant::now();
    let markers = ["held-0", "held-1", "held-2"];
    for m in markers {
        env.trigger_json(
            "quick",
            &format!("{m}.json"),
            &json!({ "marker": m, "environment": { "MARK": m } }),
        );
    }
    // Hold the lock longer than the daemon's 5 s busy timeout, so that its
    // writes fail and are retried; the daemon must live through it.
    let hold = Duration::from_secs(7);
    let died = wait_until(locked_at + hold, || !daemon.is_alive());
    if died {
        env.fail("the daemon exited while the database was locked");
    }
    // Nothing is recorded yet, and no trigger is gone: each is still in the
    // trigger dir or claimed.
    let kept = env.trigger_files("quick").len() + claimed_entries(&env, "quick").len();
    if kept != markers.len() {
        env.fail(&format!(
            "while the database is locked the {} trigger files must stay (in the trigger dir \
             or .claimed/), found {kept}",
            markers.len()
        ));
    }
    conn.execute_batch("COMMIT").expect("release the lock");
    let unlocked = now_epoch();
    drop(conn);

    let runs = env.wait_runs("quick", 1 + markers.len());
    env.wait_until("nothing left in flight", || settled(&env, "quick"));
    for m in markers {
        let mine: Vec<&Run> = runs.iter().filter(|r| r.marker() == Some(m)).collect();
        if mine.len() != 1 {
            env.fail(&format!("want one run of {m}, got {mine:#?}"));
        }
        assert_eq!(mine[0].exit_code, 5);
        assert_eq!(env.output(mine[0]), format!("MARK={m}\n"));
        assert!(
            mine[0].stop_time >= unlocked,
            "run {m} recorded as stopped at {:.3}, before the lock went at {unlocked:.3}",
            mine[0].stop_time
        );
    }
    assert_eq!(env.runs().len(), 1 + markers.len());
    daemon.assert_alive(&env);

    let log = env.log_since(since);
    let complaints: Vec<&str> = log
        .lines()
        .filter(|l| {
            let l = l.to_lowercase();
            l.contains("database") || l.contains("locked") || l.contains("busy")
        })
        .collect();
    if complaints.is_empty() || complaints.len() > 3 {
        env.fail(&format!(
            "the database failure must be logged, but not once per retry: {} lines:\n{}",
            complaints.len(),
            complaints.join("\n")
        ));
    }

    // start_time is when the process started (SPEC §3): after the lock went,
    // not when the daemon began the write that had to wait for it.
    for m in markers {
        let run = runs
            .iter()
            .find(|r| r.marker() == Some(m))
            .expect("checked above");
        if run.start_time < unlocked - 0.1 {
            env.fail(&format!(
                "run {m} has start_time {:.3}, {:.3} s before the database lock went at \
                 {unlocked:.3}; its process cannot have started before its start was recorded",
                run.start_time,
                unlocked - run.start_time
            ));
        }
    }
}

// ----- idempotency keys ----------------------------------------------------

/// Write a trigger of `quick` with an idempotency key and marker.
fn keyed(env: &TestEnv, key: &str, marker: &str) -> PathBuf {
    env.trigger_json(
        "quick",
        &format!("{marker}.json"),
        &json!({ "marker": marker, "idempotency_key": key, "environment": { "MARK": marker } }),
    )
}

/// Wait until `path` is gone and nothing is in flight; the markers of all runs.
fn markers_after(env: &TestEnv, path: &Path) -> Vec<String> {
    env.wait_consumed(path);
    env.wait_until("nothing left in flight", || settled(env, "quick"));
    let mut m: Vec<String> = env
        .runs()
        .iter()
        .map(|r| r.marker().unwrap_or("?").to_string())
        .collect();
    m.sort();
    m
}

#[test]
fn idempotency_key_makes_one_run_and_survives_a_restart() {
    let env = TestEnv::new(config(false, json!({})));
    let mut daemon = env.start_daemon();

    // Two at once (one scan, one loop turn) and one later: one run.
    let since = env.log_len();
    keyed(&env, "k1", "a");
    keyed(&env, "k1", "b");
    env.wait_runs("quick", 1);
    let later = keyed(&env, "k1", "c");
    let markers = markers_after(&env, &later);
    if markers.len() != 1 || !(markers[0] == "a" || markers[0] == "b") {
        env.fail(&format!(
            "three triggers with idempotency_key k1 must make one run (of a or b), got runs {markers:?}"
        ));
    }
    let first = markers[0].clone();
    assert!(
        env.trigger_files("quick").is_empty() && env.rejected_entries("quick").is_empty(),
        "the duplicates must be removed, not kept or rejected"
    );
    let dup_lines = env
        .log_since(since)
        .lines()
        .filter(|l| l.contains("idempotency_key"))
        .count();
    assert!(
        dup_lines >= 2,
        "each duplicate must be logged (with \"idempotency_key\"), found {dup_lines} lines:\n{}",
        env.log_since(since)
    );

    // Another key: another run.
    let other = keyed(&env, "k2", "d");
    let markers = markers_after(&env, &other);
    if markers.len() != 2 || !markers.contains(&"d".to_string()) {
        env.fail(&format!("a new key must make a run, got runs {markers:?}"));
    }

    // The keys survive a crash of the daemon.
    kill9(&env, &mut daemon);
    let mut daemon = start_and_probe(&env, "probe");
    let since = env.log_len();
    let again = keyed(&env, "k1", "e");
    let again2 = keyed(&env, "k2", "f");
    env.wait_consumed(&again2);
    let markers = markers_after(&env, &again);
    assert_eq!(
        markers,
        vec![first, "d".to_string(), "probe".to_string()],
        "after a restart the keys must still hold\n{}",
        env.diagnostics()
    );
    assert!(
        env.log_since(since).contains("idempotency_key"),
        "the duplicate after the restart is not logged"
    );
    daemon.assert_alive(&env);
}

#[test]
fn idempotency_window_zero_turns_keys_off() {
    let env = TestEnv::new(config(false, json!({ "idempotency_window": 0 })));
    let _daemon = env.start_daemon();
    keyed(&env, "k1", "a");
    env.wait_runs("quick", 1);
    let second = keyed(&env, "k1", "b");
    let markers = markers_after(&env, &second);
    assert_eq!(
        markers,
        vec!["a".to_string(), "b".to_string()],
        "with idempotency_window: 0 the same key must make two runs\n{}",
        env.diagnostics()
    );
}
