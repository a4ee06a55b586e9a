//! Executing a run: exit codes, timeouts, process groups, stdin, coalescing
//! (SPEC §4.3, §6.1, §6.3, §7).

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

fn one_job(job: Value) -> Value {
    json!({ "jobs": { "job": job } })
}

/// Trigger job `job` once and return its finished run.
fn run_once(env: &TestEnv) -> Run {
    env.trigger_json("job", "trigger.json", &json!({}));
    env.wait_runs("job", 1).remove(0)
}

#[test]
fn exit_status_is_recorded() {
    let env = TestEnv::new(one_job(json!({ "command": sh("echo failing; exit 3") })));
    let _daemon = env.start_daemon();
    let run = run_once(&env);
    assert_eq!(run.exit_code, 3, "output: {}", env.output(&run));
    assert_eq!(env.output(&run), "failing\n");
}

#[test]
fn killed_by_signal_records_128_plus_signal() {
    let env = TestEnv::new(one_job(json!({ "command": sh("kill -TERM $$; sleep 5") })));
    let _daemon = env.start_daemon();
    let run = run_once(&env);
    assert_eq!(run.exit_code, 143, "SIGTERM must be recorded as 143");
}

#[test]
fn missing_command_records_127_with_reason() {
    let env = TestEnv::new(one_job(json!({ "command": ["/nonexistent/prog", "arg"] })));
    let mut daemon = env.start_daemon();
    let run = run_once(&env);
    assert_eq!(run.exit_code, 127);
    let out = env.output(&run);
    let lower = out.to_lowercase();
    assert!(
        out.contains("/nonexistent/prog")
            || lower.contains("not found")
            || lower.contains("no such file"),
        "output.txt must say why the command did not start, got {out:?}"
    );
    daemon.assert_alive(&env);
}

#[test]
fn command_not_on_path_records_127() {
    let env = TestEnv::new(one_job(json!({ "command": ["dsari-no-such-program-xyz"] })));
    let _daemon = env.start_daemon();
    let run = run_once(&env);
    assert_eq!(run.exit_code, 127);
    assert!(
        !env.output(&run).trim().is_empty(),
        "output.txt must say why"
    );
}

#[test]
fn non_executable_command_records_126() {
    let env = TestEnv::new(json!({}));
    let script = env.root.join("not-executable.sh");
    fs::write(&script, "#!/bin/sh\necho should-not-run\n").unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o644)).unwrap();
    env.write_config(one_job(
        json!({ "command": [script.display().to_string()] }),
    ));
    let _daemon = env.start_daemon();
    let run = run_once(&env);
    assert_eq!(run.exit_code, 126);
    let out = env.output(&run);
    assert!(!out.trim().is_empty(), "output.txt must say why");
    assert!(
        !out.contains("should-not-run"),
        "the file ran anyway: {out:?}"
    );
}

/// Run a command that leaves a grandchild (pid in `grandchild.pid` in the
/// run dir) under `max_execution: 1, max_execution_grace: 1`; check that the
/// run is cut short and the grandchild is gone.
fn max_execution_kills_tree(script: &str) {
    let env = TestEnv::new(one_job(json!({
        "command": sh(script),
        "max_execution": 1,
        "max_execution_grace": 1,
    })));
    let _daemon = env.start_daemon();
    let run = run_once(&env);
    let took = run.stop_time - run.start_time;
    assert!(
        run.exit_code == 143 || run.exit_code == 137,
        "want 143 or 137 after max_execution, got {}",
        run.exit_code
    );
    assert!(
        took < 10.0,
        "the run took {took:.1} s despite max_execution: 1"
    );
    assert!(
        took >= 0.9,
        "the run was stopped after {took:.2} s, before max_execution"
    );

    let pid_file = env.run_dir("job", &run.run_id).join("grandchild.pid");
    let pid: i32 = fs::read_to_string(&pid_file)
        .unwrap_or_else(|e| env.fail(&format!("cannot read {}: {e}", pid_file.display())))
        .trim()
        .parse()
        .expect("grandchild pid");
    let ok = wait_until(Instant::now() + Duration::from_secs(10), || {
        process_gone(pid)
    });
    if !ok {
        // Do not leave it behind for 60 s.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        env.fail(&format!(
            "grandchild {pid} still alive after the run was stopped"
        ));
    }
}

#[test]
fn max_execution_terminates_the_whole_process_tree() {
    max_execution_kills_tree("sleep 60 & echo $! > grandchild.pid; wait");
}

#[test]
fn max_execution_grace_kills_what_ignores_sigterm() {
    max_execution_kills_tree("(trap '' TERM; exec sleep 60) & echo $! > grandchild.pid; wait");
}

#[test]
fn run_is_leader_of_its_own_process_group() {
    let env = TestEnv::new(one_job(json!({
        "command": sh("echo \"pid=$$ pgid=$(cut -d' ' -f5 /proc/$$/stat)\""),
    })));
    let daemon = env.start_daemon();
    let run = run_once(&env);
    let out = env.output(&run);
    let vars = parse_env(&out.replace(' ', "\n"));
    let (pid, pgid) = (vars.get("pid"), vars.get("pgid"));
    assert!(
        pid.is_some() && pid == pgid,
        "the run must lead its own process group: {out:?}"
    );
    let daemon_pgid = nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(daemon.pid())))
        .expect("daemon pgid")
        .to_string();
    assert_ne!(
        pgid,
        Some(&daemon_pgid),
        "the run shares the daemon's process group"
    );
}

#[test]
fn stdin_is_dev_null() {
    // The daemon's own stdin is an open, silent pipe (see common): a run that
    // inherited it would block in `cat` until max_execution.
    let env = TestEnv::new(one_job(json!({
        "command": sh("cat; echo \"cat-rc=$?\"; readlink /proc/$$/fd/0"),
        "max_execution": 5,
    })));
    let _daemon = env.start_daemon();
    let run = run_once(&env);
    assert_eq!(env.output(&run), "cat-rc=0\n/dev/null\n");
    assert_eq!(run.exit_code, 0);
}

#[test]
fn pwd_in_environment_selects_the_working_directory() {
    let env = TestEnv::new(json!({}));
    let work = env.root.join("workdir");
    fs::create_dir_all(&work).unwrap();
    env.write_config(one_job(json!({
        "command": sh("pwd -P; echo here > marker.txt"),
        "environment": { "PWD": work.display().to_string() },
    })));
    let _daemon = env.start_daemon();
    let run = run_once(&env);
    assert_eq!(env.output(&run), format!("{}\n", work.display()));
    assert!(work.join("marker.txt").exists());
    assert!(
        env.output_path("job", &run.run_id).exists(),
        "output.txt stays in the run dir"
    );
}

/// A job whose runs wait for `$DATA_DIR/go` when their trigger sets WAIT=1.
fn blocking_job(concurrent: bool) -> Value {
    one_job(json!({
        "command": sh(&format!(
            "echo \"started $MARK\"; if [ \"$WAIT\" = 1 ]; then {}; fi; echo \"done $MARK\"",
            wait_for_release("go")
        )),
        "concurrent_runs": concurrent,
    }))
}

fn marked(marker: &str) -> Value {
    json!({ "marker": marker, "environment": { "MARK": marker } })
}

/// Start a blocking run, then drop three triggers (m1, m2, m3) one after the
/// other while it runs; returns the first run's `runs_running` row.
fn block_then_three_triggers(env: &TestEnv) -> Running {
    env.trigger_json(
        "job",
        "first.json",
        &json!({ "marker": "m0", "environment": { "MARK": "m0", "WAIT": "1" } }),
    );
    let first = env.wait_running("job");
    assert_eq!(first.trigger_type, "file");
    assert_eq!(
        first.trigger_data["marker"], "m0",
        "runs_running row: {first:?}"
    );
    env.wait_output_contains("job", &first.run_id, "started m0");
    for m in ["m1", "m2", "m3"] {
        // One at a time, so the arrival order is certain.
        let path = env.trigger_json("job", &format!("{m}.json"), &marked(m));
        env.wait_consumed(&path);
    }
    first
}

#[test]
fn triggers_during_a_run_coalesce_into_one_pending_run() {
    let env = TestEnv::new(blocking_job(false));
    let _daemon = env.start_daemon();
    let first = block_then_three_triggers(&env);
    assert!(
        env.try_runs().unwrap_or_default().is_empty(),
        "nothing may finish before the release"
    );
    let running = env.running();
    assert_eq!(
        running.len(),
        1,
        "a job without concurrent_runs runs once at a time: {running:?}"
    );
    env.release("go");

    let runs = env.wait_runs("job", 2);
    // A later marker: once it has run, any extra run would have shown up.
    env.trigger_json("job", "m4.json", &marked("m4"));
    env.wait_until("the run of m4", || {
        env.try_runs()
            .is_ok_and(|runs| runs.iter().any(|r| r.marker() == Some("m4")))
    });
    let all = env.runs_of("job");
    let markers: Vec<_> = all.iter().map(|r| r.marker().unwrap_or("?")).collect();
    if markers != ["m0", "m3", "m4"] {
        env.fail(&format!(
            "want runs m0, m3 (coalesced m1, m2), m4; got {markers:?}"
        ));
    }
    assert_eq!(
        runs[0].run_id, first.run_id,
        "the recorded run keeps the id it ran with"
    );
    assert_time_eq(
        &env,
        "start_time in runs vs runs_running",
        runs[0].start_time,
        first.start_time,
        1e-3,
    );
    assert_eq!(env.output(&runs[0]), "started m0\ndone m0\n");
    let second = &all[1];
    assert_eq!(second.trigger_data, marked("m3"), "the newest trigger wins");
    assert_eq!(
        second.coalesced(),
        vec![marked("m1"), marked("m2")],
        "coalesced_triggers must hold the replaced triggers in arrival order; run_data: {}",
        second.run_data
    );
    assert_eq!(env.output(second), "started m3\ndone m3\n");
    assert!(
        all[2].coalesced().is_empty(),
        "m4 replaced nothing: {}",
        all[2].run_data
    );
    assert!(env.running().is_empty());
}

#[test]
fn concurrent_runs_get_one_run_per_trigger() {
    let env = TestEnv::new(blocking_job(true));
    let _daemon = env.start_daemon();
    block_then_three_triggers(&env);
    // m1..m3 do not wait: they finish while m0 still runs.
    let early = env.wait_runs("job", 3);
    let mut markers: Vec<_> = early.iter().map(|r| r.marker().unwrap_or("?")).collect();
    markers.sort_unstable();
    assert_eq!(markers, ["m1", "m2", "m3"], "runs: {early:#?}");
    env.release("go");

    let runs = env.wait_runs("job", 4);
    env.wait_until("runs_running to be empty", || {
        env.try_running().is_ok_and(|r| r.is_empty())
    });
    assert!(env.trigger_files("job").is_empty());
    let runs = if runs.len() == 4 {
        runs
    } else {
        env.runs_of("job")
    };
    let mut markers: Vec<_> = runs.iter().map(|r| r.marker().unwrap_or("?")).collect();
    markers.sort_unstable();
    assert_eq!(markers, ["m0", "m1", "m2", "m3"], "runs: {runs:#?}");
    for run in &runs {
        assert!(
            run.coalesced().is_empty(),
            "concurrent runs never coalesce: {}",
            run.run_data
        );
        assert_eq!(run.exit_code, 0);
    }
}
