//! Scheduled runs with the real daemon (SPEC §5, §7): cron every second,
//! concurrency groups holding scheduled runs, `dsari schedule next`.

mod common;

use common::*;
use serde_json::{Value, json};

#[test]
fn an_every_second_schedule_runs_repeatedly() {
    let env = TestEnv::new(json!({
        "jobs": { "tick": { "command": sh("echo tick"), "schedule": "* * * * * *" } }
    }));
    let _daemon = env.start_daemon();
    let runs = env.wait_runs("tick", 3);
    for r in &runs {
        assert_eq!(r.trigger_type, "schedule", "{r:?}");
        assert_eq!(r.trigger_data, json!({}), "{r:?}");
        assert_eq!(r.exit_code, 0);
        assert!(r.start_time >= r.schedule_time - 1e-3, "{r:?}");
    }
    // Every time carries the job's fixed sub-second offset (crc / 0xFFFFFFFF).
    let fraction = |t: f64| t - t.floor();
    let first = fraction(runs[0].schedule_time);
    for r in &runs {
        assert!(
            (fraction(r.schedule_time) - first).abs() < 1e-5,
            "schedule times {:?}",
            runs.iter().map(|r| r.schedule_time).collect::<Vec<_>>()
        );
    }
    let mut times: Vec<f64> = runs.iter().map(|r| r.schedule_time).collect();
    times.sort_by(f64::total_cmp);
    for w in times.windows(2) {
        assert!(
            w[1] - w[0] >= 0.999,
            "one run per second at most: {times:?}"
        );
    }
}

/// Two every-second jobs whose sub-second offsets (crc / 0xFFFFFFFF) are 0.6 s
/// apart: `soon` is due at .325 of each second, `later` at .922.
fn two_jobs_0_6_s_apart(accuracy: Option<f64>, soon_command: Value) -> TestEnv {
    let job = json!({ "command": ["true"], "schedule": "* * * * * *" });
    let mut config = json!({ "jobs": { "soon": job.clone(), "later": job } });
    config["jobs"]["soon"]["command"] = soon_command;
    if let Some(a) = accuracy {
        config["schedule_accuracy"] = json!(a);
    }
    TestEnv::new(config)
}

/// How long after its time each run of `job` started.
fn delays(runs: &[Run], job: &str) -> Vec<f64> {
    runs.iter()
        .filter(|r| r.job_name == job)
        .map(|r| r.start_time - r.schedule_time)
        .collect()
}

#[test]
fn scheduled_runs_due_within_a_second_start_together() {
    let env = two_jobs_0_6_s_apart(None, json!(["true"]));
    let _daemon = env.start_daemon();
    env.wait_runs("soon", 4);
    env.wait_runs("later", 4);
    let runs = env.runs();
    for r in &runs {
        let late = r.start_time - r.schedule_time;
        assert!(
            (-1e-3..1.1).contains(&late),
            "a run starts at its time or within schedule_accuracy (1 s) of it, {late} s: {r:?}"
        );
    }
    // Whichever of the two is due first waits for the other (0.6 or 0.4 s).
    let waited = [delays(&runs, "soon"), delays(&runs, "later")].concat();
    assert!(
        waited.iter().filter(|&&d| d > 0.3).count() >= 3,
        "runs due 0.4-0.6 s apart share one start: delays {waited:?}"
    );
    // Each run that has its partner recorded started with it.
    let last_both = ["soon", "later"]
        .map(|j| {
            runs.iter()
                .filter(|r| r.job_name == j)
                .map(|r| r.start_time)
                .fold(f64::MIN, f64::max)
        })
        .into_iter()
        .fold(f64::MAX, f64::min);
    for r in runs.iter().filter(|r| r.start_time < last_both - 0.1) {
        assert!(
            runs.iter()
                .any(|o| o.job_name != r.job_name && (o.start_time - r.start_time).abs() < 0.1),
            "no run of the other job started with {r:?}: {runs:#?}"
        );
    }
}

#[test]
fn a_run_whose_previous_end_waits_to_be_recorded_still_sees_it_as_previous() {
    // Ends of scheduled runs may wait up to schedule_accuracy to be written with
    // the next ones; `soon` is due again 1 s after it starts, within that wait.
    let env = two_jobs_0_6_s_apart(None, sh("echo \"$PREVIOUS_RUN_ID\""));
    let _daemon = env.start_daemon();
    let mut runs = env.wait_runs("soon", 4);
    runs.sort_by(|a, b| a.start_time.total_cmp(&b.start_time));
    for pair in runs.windows(2) {
        assert_eq!(
            env.output(&pair[1]).trim(),
            pair[0].run_id,
            "PREVIOUS_RUN_ID of the run started at {}",
            pair[1].start_time
        );
    }
}

#[test]
fn an_end_waiting_to_be_written_is_written_at_shutdown() {
    // Due every 10 s; with schedule_accuracy 30, an ended run may wait to be
    // written until the next start (10 s later): SIGTERM must not leave it behind.
    let env = TestEnv::new(json!({
        "schedule_accuracy": 30,
        "jobs": { "five": { "command": ["true"], "schedule": "* * * * * */10" } }
    }));
    let mut daemon = env.start_daemon();
    let running = env.wait_running("five");
    let status = env
        .run_dir("five", &running.run_id)
        .join(".dsari-status.json");
    env.wait_until("the run's supervisor has left its status", || {
        status.exists()
    });
    assert!(
        env.running().iter().any(|r| r.run_id == running.run_id),
        "the ended run waits in runs_running to be written with the next ones"
    );
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(daemon.wait_exit(&env).code(), Some(0));
    assert!(env.running().is_empty(), "{:?}", env.running());
    let runs = env.runs();
    assert!(
        runs.iter()
            .any(|r| r.run_id == running.run_id && r.exit_code == 0),
        "{runs:?}"
    );
}

#[test]
fn schedule_accuracy_0_starts_each_run_at_its_time() {
    let env = two_jobs_0_6_s_apart(Some(0.0), json!(["true"]));
    let _daemon = env.start_daemon();
    env.wait_runs("soon", 3);
    env.wait_runs("later", 3);
    let runs = env.runs();
    let late = [delays(&runs, "soon"), delays(&runs, "later")].concat();
    assert!(
        late.iter().all(|d| (-1e-3..0.3).contains(d)),
        "with schedule_accuracy 0 no run waits for another: delays {late:?}"
    );
}

#[test]
fn a_group_of_two_never_runs_three_scheduled_jobs_at_once() {
    let job = json!({
        "command": sh("env; sleep 0.7"),
        "schedule": "* * * * * *",
        "concurrency_groups": ["pair"],
    });
    let env = TestEnv::new(json!({
        "concurrency_groups": { "pair": { "max": 2 } },
        "jobs": { "a": job.clone(), "b": job.clone(), "c": job },
    }));
    let _daemon = env.start_daemon();
    env.wait_until("eight runs over the three jobs", || {
        env.try_runs().is_ok_and(|r| r.len() >= 8)
    });
    let runs = env.runs();
    for r in &runs {
        let overlapping = runs
            .iter()
            .filter(|o| o.start_time <= r.start_time && r.start_time < o.stop_time)
            .count();
        assert!(
            overlapping <= 2,
            "{overlapping} runs going at {} (group max 2): {runs:#?}",
            r.start_time
        );
    }
    let env_of = env.env_of(&runs[0]);
    assert_eq!(
        env_of.get("CONCURRENCY_GROUP").map(String::as_str),
        Some("pair")
    );
}

#[test]
fn a_trigger_replaces_the_pending_scheduled_run() {
    let env = TestEnv::new(json!({
        // Due once a year: only the trigger can make it run now.
        "jobs": { "yearly": { "command": sh("echo $TRIGGER_TYPE"), "schedule": "0 0 1 1 *" } }
    }));
    let _daemon = env.start_daemon();
    env.trigger_json("yearly", "t.json", &json!({"marker": "now"}));
    let runs = env.wait_runs("yearly", 1);
    assert_eq!(runs[0].trigger_type, "file");
    assert!(
        runs[0].run_data.get("coalesced_triggers").is_none(),
        "a replaced scheduled run is not a coalesced trigger: {:?}",
        runs[0].run_data
    );
    assert_eq!(env.output(&runs[0]), "file\n");
}

#[test]
fn schedule_next_previews_the_daemons_times() {
    let env = TestEnv::new(json!({}));
    // Job "backup", RRULE DAILY from 2026-01-15T10:20:30Z: DTSTART is hashed to
    // 01:15:24Z and the sub-second offset is crc32("backup") / 0xFFFFFFFF. These
    // times are python-dateutil 4.0.0's through the Python dsari (shared/CRATES.md).
    let out = env.run_cli(&[
        "schedule",
        "next",
        "--job",
        "backup",
        "--from",
        "2026-01-15T10:20:30Z",
        "--count",
        "2",
        "--format",
        "json",
        "RRULE:FREQ=DAILY",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    let times: Vec<f64> = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(times.len(), 2);
    assert!((times[0] - 1768526124.249768).abs() < 1e-6, "{times:?}");
    assert!((times[1] - times[0] - 86400.0).abs() < 1e-6, "{times:?}");

    // Human format: RFC 3339 in the zone; the spring-forward gap runs at 03:00.
    let out = env.run_cli(&[
        "schedule",
        "next",
        "--job",
        "backup",
        "--timezone",
        "America/New_York",
        "--from",
        "2026-03-07T12:00:00Z",
        "--count",
        "1",
        "30 2 * * *",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    assert!(
        out.stdout.starts_with("2026-03-08T03:00:"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.trim_end().ends_with("-04:00"), "{}", out.stdout);

    let out = env.run_cli(&["schedule", "next", "--job", "x", "0 25 * * *"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stderr.contains("field 2 (hour)"), "{}", out.stderr);
}

#[test]
fn config_check_names_a_bad_schedule() {
    let env = TestEnv::new(json!({
        "jobs": { "nightly": { "command": "true", "schedule": "RRULE:FREQ=DAILY;COUNT=3" } }
    }));
    let out = env.run_cli(&["config", "check", "-c", env.config_dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stderr.contains("dsari.json")
            && out.stderr.contains("nightly")
            && out.stderr.contains("schedule")
            && out.stderr.contains("COUNT"),
        "{}",
        out.stderr
    );
}
