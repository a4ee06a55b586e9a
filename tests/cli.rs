//! The command line (SPEC §9): `dsari trigger [--wait]`, `run list/output/tail`,
//! `job list/why`, the Python tool names, completions and man pages, and the
//! one-line errors. Real binary, real daemon, real database.

mod common;

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use common::*;
use serde_json::{Value, json};

/// Jobs most tests use.
fn jobs() -> Value {
    json!({
        "jobs": {
            "code": { "command": sh("echo running; exit ${CODE:-0}"), "concurrent_runs": true },
            "killed": { "command": sh("kill -TERM $$") },
            "hold": { "command": sh(&format!("echo first; {}; echo second", wait_for_release("go"))) },
        }
    })
}

/// Assert a command failed the way a user error must: exit 1, one line on
/// stderr that contains `needle`, no panic.
#[track_caller]
fn assert_user_error(out: &CliOutput, needle: &str) {
    assert_eq!(out.status.code(), Some(1), "want exit 1: {out:?}");
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "want exactly one line on stderr: {out:?}");
    assert!(
        out.stderr.contains(needle),
        "stderr should mention {needle:?}: {out:?}"
    );
    assert!(
        !out.stderr.contains("panicked") && !out.stderr.contains("RUST_BACKTRACE"),
        "{out:?}"
    );
}

/// `KEY: value` lines of `trigger --wait` output.
fn field<'a>(out: &'a CliOutput, key: &str) -> &'a str {
    out.stdout
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}: ")))
        .unwrap_or_else(|| panic!("no {key}: line in {out:?}"))
}

/// Start `dsari ARGS…` (or a symlink to it) with its stdout and stderr going to files.
fn spawn(env: &TestEnv, program: Option<&Path>, args: &[&str], name: &str) -> (Child, PathBuf) {
    let mut cmd = env.command(args);
    if let Some(p) = program {
        let mut other = Command::new(p);
        other
            .args(args)
            .env_clear()
            .env("PATH", daemon_path())
            .env("HOME", &env.daemon_home)
            .current_dir(&env.root);
        cmd = other;
    }
    let out = env.root.join(format!("{name}.stdout"));
    cmd.stdin(Stdio::null())
        .stdout(File::create(&out).unwrap())
        .stderr(File::create(env.root.join(format!("{name}.stderr"))).unwrap());
    (cmd.spawn().expect("spawn dsari"), out)
}

fn text(path: &Path) -> String {
    String::from_utf8_lossy(&fs::read(path).unwrap_or_default()).into_owned()
}

/// A symlink named `name` to the binary, in the test's temp dir.
fn applet(env: &TestEnv, name: &str) -> PathBuf {
    let dir = env.root.join("bin");
    fs::create_dir_all(&dir).unwrap();
    let link = dir.join(name);
    std::os::unix::fs::symlink(DSARI, &link).unwrap();
    link
}

fn run_applet(env: &TestEnv, link: &Path, args: &[&str]) -> CliOutput {
    let (mut child, out) = spawn(env, Some(link), args, "applet");
    let mut status = None;
    env.wait_until("the applet to exit", || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    CliOutput {
        status: status.unwrap(),
        stdout: text(&out),
        stderr: text(&env.root.join("applet.stderr")),
    }
}

fn cfg(env: &TestEnv) -> String {
    env.config_dir.display().to_string()
}

#[test]
fn trigger_wait_exits_with_the_runs_exit_code() {
    let env = TestEnv::new(jobs());
    let _daemon = env.start_daemon();
    let c = cfg(&env);
    for (args, want) in [
        (vec!["trigger", "code", "-c", &c, "--wait"], 0),
        (
            vec!["trigger", "code", "-c", &c, "--wait", "--env", "CODE=3"],
            3,
        ),
        (vec!["trigger", "killed", "-c", &c, "--wait"], 143),
    ] {
        let out = env.run_cli(&args);
        assert_eq!(out.status.code(), Some(want), "{args:?}: {out:?}");
        let trigger_path = out.stdout.lines().next().unwrap_or_default();
        assert!(
            trigger_path.contains("/trigger/") && trigger_path.ends_with(".json"),
            "first line is the trigger's path: {out:?}"
        );
        let run_id = field(&out, "run_id");
        let run = env
            .runs()
            .into_iter()
            .find(|r| r.run_id == run_id)
            .unwrap_or_else(|| env.fail(&format!("run {run_id} is not in the database")));
        assert_eq!(run.exit_code, want as i64);
        assert_eq!(field(&out, "exit_code"), want.to_string());
        let output = field(&out, "output");
        assert_eq!(Path::new(output), env.output_path(&run.job_name, run_id));
        assert!(Path::new(output).exists(), "{output} exists");
        assert!(
            !Path::new(trigger_path).exists(),
            "the trigger was consumed"
        );
        let id = trigger_path
            .rsplit_once("trigger-")
            .and_then(|(_, r)| r.strip_suffix(".json"))
            .unwrap();
        assert_eq!(run.trigger_data["dsari_trigger_id"], json!(id));
    }
}

#[test]
fn trigger_wait_timeout_is_124_and_leaves_the_run_alone() {
    let env = TestEnv::new(jobs());
    let _daemon = env.start_daemon();
    let started = Instant::now();
    let out = env.run_cli(&[
        "trigger",
        "hold",
        "-c",
        &cfg(&env),
        "--wait",
        "--timeout",
        "1",
    ]);
    assert_eq!(out.status.code(), Some(124), "{out:?}");
    assert!(
        started.elapsed().as_secs_f64() < 5.0,
        "timeout took {:?}",
        started.elapsed()
    );
    assert!(out.stderr.contains("timed out"), "{out:?}");
    let running = env.wait_running("hold");
    assert!(
        env.runs_of("hold").is_empty(),
        "the run must still be running"
    );
    env.release("go");
    let runs = env.wait_runs("hold", 1);
    assert_eq!(runs[0].run_id, running.run_id);
    assert_eq!(runs[0].exit_code, 0, "the run ended by itself");
}

#[test]
fn trigger_wait_without_a_daemon_says_so() {
    let env = TestEnv::new(jobs());
    let out = env.run_cli(&[
        "trigger",
        "code",
        "-c",
        &cfg(&env),
        "--wait",
        "--timeout",
        "6",
    ]);
    assert_eq!(out.status.code(), Some(124), "{out:?}");
    assert!(
        out.stderr
            .contains("no daemon seems to be picking up triggers"),
        "{out:?}"
    );
    let path = out.stdout.lines().next().unwrap();
    assert!(
        Path::new(path).is_file(),
        "the trigger stays for a later daemon: {out:?}"
    );
}

#[test]
fn trigger_rejects_unknown_jobs_and_bad_input() {
    let env = TestEnv::new(jobs());
    fs::create_dir_all(&env.data_dir).unwrap();
    let c = cfg(&env);
    assert_user_error(
        &env.run_cli(&["trigger", "nope", "-c", &c]),
        "unknown job \"nope\"",
    );
    assert_user_error(
        &env.run_cli(&["trigger", "code", "-c", &c, "--data", "[1]"]),
        "--data",
    );
    assert_user_error(
        &env.run_cli(&["trigger", "code", "-c", &c, "--env", "X"]),
        "NAME=value",
    );
    assert_user_error(
        &env.run_cli(&["trigger", "code", "-c", &c, "--at", "soon"]),
        "--at",
    );
    assert!(env.trigger_files("code").is_empty(), "nothing was written");
    // A valid one without --wait: the path, exit 0, the file in place with our data.
    let out = env.run_cli(&[
        "trigger",
        "code",
        "-c",
        &c,
        "--env",
        "A=1",
        "--data",
        r#"{"description": "d"}"#,
        "--at",
        "2030-01-01T00:00:00Z",
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let written: Value = serde_json::from_slice(&fs::read(out.stdout.trim()).unwrap()).unwrap();
    assert_eq!(written["environment"], json!({ "A": "1" }));
    assert_eq!(written["description"], json!("d"));
    assert_eq!(written["schedule_time"], json!(1893456000.0));
}

/// Finished runs of every kind plus one running run, for the listing tests.
fn some_runs(env: &TestEnv) -> (Vec<Run>, Running) {
    let c = cfg(env);
    for code in ["0", "3", "5"] {
        let out = env.run_cli(&[
            "trigger",
            "code",
            "-c",
            &c,
            "--wait",
            "--env",
            &format!("CODE={code}"),
        ]);
        assert_eq!(
            out.status.code().map(|c| c.to_string()),
            Some(code.to_string())
        );
    }
    let out = env.run_cli(&["trigger", "killed", "-c", &c, "--wait"]);
    assert_eq!(out.status.code(), Some(143), "{out:?}");
    env.run_cli(&["trigger", "hold", "-c", &c]);
    let running = env.wait_running("hold");
    env.wait_output_contains("hold", &running.run_id, "first");
    (env.runs(), running)
}

#[test]
fn run_list_json_matches_the_database_row_by_row() {
    let env = TestEnv::new(jobs());
    let _daemon = env.start_daemon();
    let (mut finished, running) = some_runs(&env);
    let out = env.run_cli(&["run", "list", "-c", &cfg(&env), "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let listed: Vec<Value> = serde_json::from_str(&out.stdout).expect("one JSON document");
    // Running runs first, then finished ones, newest stop first.
    finished.sort_by(|a, b| b.stop_time.total_cmp(&a.stop_time));
    let mut want = vec![json!({
        "job_name": running.job_name, "run_id": running.run_id,
        "schedule_time": running.schedule_time, "start_time": running.start_time,
        "stop_time": null, "exit_code": null, "trigger_type": running.trigger_type,
        "trigger_data": running.trigger_data, "run_data": running.run_data,
    })];
    want.extend(finished.iter().map(|r| {
        json!({
            "job_name": r.job_name, "run_id": r.run_id, "schedule_time": r.schedule_time,
            "start_time": r.start_time, "stop_time": r.stop_time, "exit_code": r.exit_code,
            "trigger_type": r.trigger_type, "trigger_data": r.trigger_data, "run_data": r.run_data,
        })
    }));
    assert_eq!(listed.len(), want.len(), "{}", out.stdout);
    for (got, want) in listed.iter().zip(&want) {
        // serde_json's default float parser may be one ULP off (no `float_roundtrip`):
        // times are compared by their exact text in the output, the rest by value.
        let times = ["schedule_time", "start_time", "stop_time"];
        let strip = |v: &Value| {
            let mut v = v.clone();
            for k in times {
                v.as_object_mut().unwrap().remove(k);
            }
            v
        };
        assert_eq!(strip(got), strip(want));
        for k in times {
            if let Some(t) = want[k].as_f64() {
                assert!(
                    out.stdout.contains(&format!("\"{k}\": {t}")),
                    "{k} {t} exactly"
                );
            } else {
                assert_eq!(got[k], Value::Null);
            }
        }
    }

    // --running, --limit, --job, tabular, yaml, pretty.
    let c = cfg(&env);
    let only: Vec<Value> = serde_json::from_str(
        &env.run_cli(&["run", "list", "-c", &c, "--running", "--format", "json"])
            .stdout,
    )
    .unwrap();
    assert_eq!(only.len(), 1);
    assert_eq!(only[0]["run_id"], json!(running.run_id));
    let limited: Vec<Value> = serde_json::from_str(
        &env.run_cli(&[
            "run", "list", "-c", &c, "--job", "code", "--limit", "2", "--format", "json",
        ])
        .stdout,
    )
    .unwrap();
    let ids = |v: &[Value]| v.iter().map(|r| r["run_id"].clone()).collect::<Vec<_>>();
    let code: Vec<Value> = want
        .iter()
        .filter(|r| r["job_name"] == json!("code"))
        .take(2)
        .cloned()
        .collect();
    assert_eq!(ids(&limited), ids(&code));
    // Without --job, a limit merges every job's newest runs (no table sort).
    let newest: Vec<Value> = serde_json::from_str(
        &env.run_cli(&["run", "list", "-c", &c, "--limit", "4", "--format", "json"])
            .stdout,
    )
    .unwrap();
    assert_eq!(ids(&newest), ids(&want[..4]));
    let tab = env
        .run_cli(&["run", "list", "-c", &c, "--format", "tabular"])
        .stdout;
    let lines: Vec<&str> = tab.lines().collect();
    assert!(lines[0].starts_with("job_name\trun_id\t"), "{tab}");
    assert_eq!(lines.len(), 1 + want.len());
    assert!(
        lines[1].starts_with(&format!("hold\t{}\t", running.run_id)),
        "{tab}"
    );
    let yaml = env.run_cli(&["run", "list", "-c", &c, "--format", "yaml"]);
    assert!(
        yaml.status.success() && yaml.stdout.contains(&running.run_id),
        "{yaml:?}"
    );
    let pretty = env.run_cli(&["run", "list", "-c", &c]);
    assert!(
        pretty.stdout.contains("running") && !pretty.stdout.contains('\x1b'),
        "{pretty:?}"
    );

    // --run takes a prefix.
    let target = &finished[1];
    let short = &target.run_id[..8];
    let one: Vec<Value> = serde_json::from_str(
        &env.run_cli(&["run", "list", "-c", &c, "--run", short, "--format", "json"])
            .stdout,
    )
    .unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0]["run_id"], json!(target.run_id));
    assert_user_error(
        &env.run_cli(&["run", "list", "-c", &c, "--run", "zzzz"]),
        "zzzz",
    );
    assert_user_error(
        &env.run_cli(&["run", "list", "-c", &c, "--job", "nope"]),
        "nope",
    );
    env.release("go");
}

#[test]
fn run_output_reads_plain_gzip_and_xz_and_running_output() {
    let env = TestEnv::new(jobs());
    let _daemon = env.start_daemon();
    let (finished, running) = some_runs(&env);
    let c = cfg(&env);

    // Still running: what it wrote so far.
    let out = env.run_cli(&["run", "output", "-c", &c, &running.run_id[..8]]);
    assert_eq!(
        (out.status.code(), out.stdout.as_str()),
        (Some(0), "first\n"),
        "{out:?}"
    );

    let [plain, gz, xz] = [&finished[0], &finished[1], &finished[2]];
    let out = env.run_cli(&["run", "output", "-c", &c, &plain.run_id]);
    assert_eq!(out.stdout, "running\n", "{out:?}");

    // Two concatenated gzip members, as `gzip a; gzip b >> output.txt.gz` makes.
    let dir = env.run_dir(&gz.job_name, &gz.run_id);
    fs::remove_file(dir.join("output.txt")).unwrap();
    let mut bytes = Vec::new();
    for part in [&b"part one\n"[..], b"part two\n"] {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(part).unwrap();
        bytes.extend(e.finish().unwrap());
    }
    fs::write(dir.join("output.txt.gz"), bytes).unwrap();
    let out = env.run_cli(&["run", "output", "-c", &c, &gz.run_id]);
    assert_eq!(out.stdout, "part one\npart two\n", "{out:?}");

    // Two concatenated xz streams.
    let dir = env.run_dir(&xz.job_name, &xz.run_id);
    fs::remove_file(dir.join("output.txt")).unwrap();
    let mut bytes = Vec::new();
    for part in [&b"xz one\n"[..], b"xz two\n"] {
        let mut e = liblzma::write::XzEncoder::new(Vec::new(), 6);
        e.write_all(part).unwrap();
        bytes.extend(e.finish().unwrap());
    }
    fs::write(dir.join("output.txt.xz"), bytes).unwrap();
    let out = env.run_cli(&["run", "output", "-c", &c, &xz.run_id[..12]]);
    assert_eq!(out.stdout, "xz one\nxz two\n", "{out:?}");

    assert_user_error(&env.run_cli(&["run", "output", "-c", &c, "nope"]), "no run");
    env.release("go");
}

#[test]
fn run_tail_follows_a_named_run_to_its_end() {
    let env = TestEnv::new(jobs());
    let _daemon = env.start_daemon();
    env.run_cli(&["trigger", "hold", "-c", &cfg(&env)]);
    let running = env.wait_running("hold");
    env.wait_output_contains("hold", &running.run_id, "first");
    let (mut tail, out) = spawn(
        &env,
        None,
        &["run", "tail", "-c", &cfg(&env), &running.run_id[..8]],
        "tail",
    );
    env.wait_until("tail to show the earlier line", || {
        text(&out).contains("first")
    });
    env.release("go");
    env.wait_until("tail to show the line written after it started", || {
        text(&out).contains("second")
    });
    let mut status = None;
    env.wait_until("tail to end with the run", || {
        status = tail.try_wait().unwrap();
        status.is_some()
    });
    assert_eq!(status.unwrap().code(), Some(0));
    assert_eq!(text(&out), "first\nsecond\n", "one run: no prefix");
}

#[test]
fn run_tail_without_names_picks_up_runs_that_start() {
    let env = TestEnv::new(jobs());
    let _daemon = env.start_daemon();
    let (mut tail, out) = spawn(&env, None, &["run", "tail", "-c", &cfg(&env)], "tail-all");
    env.wait_until("tail to start", || {
        text(&env.root.join("tail-all.stderr")).contains("Ctrl-C")
    });
    env.run_cli(&["trigger", "hold", "-c", &cfg(&env)]);
    let running = env.wait_running("hold");
    let prefix = format!("hold {} | ", &running.run_id[..8]);
    env.wait_until("tail to show the new run's first line", || {
        text(&out).contains(&format!("{prefix}first"))
    });
    env.release("go");
    env.wait_until("tail to show its second line", || {
        text(&out).contains(&format!("{prefix}second"))
    });
    tail.kill().unwrap();
    tail.wait().unwrap();
}

#[test]
fn python_tool_names_work_through_symlinks() {
    let env = TestEnv::new(jobs());
    let c = cfg(&env);
    // dsari-daemon: the daemon, with the Python tool's flags.
    let (mut daemon, _) = spawn(
        &env,
        Some(&applet(&env, "dsari-daemon")),
        &["-c", &c, "--debug"],
        "compat-daemon",
    );
    env.wait_until("dsari-daemon to create the trigger dirs", || {
        env.trigger_dir("code").is_dir()
    });
    let out = env.run_cli(&["trigger", "code", "-c", &c, "--wait"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let run_id = field(&out, "run_id").to_string();

    // dsari-info: the Python tool's subcommands and output shapes.
    let info = applet(&env, "dsari-info");
    let out = run_applet(&env, &info, &["-c", &c, "run", "list", "--format", "json"]);
    let doc: Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"));
    assert_eq!(
        doc[&run_id]["job_name"],
        json!("code"),
        "keyed by run id: {doc}"
    );
    assert!(
        doc[&run_id]["start_time"]
            .as_str()
            .is_some_and(|t| t.contains('T')),
        "ISO times"
    );
    let out = run_applet(&env, &info, &["-c", &c, "config", "check"]);
    assert_eq!(
        (out.status.code(), out.stdout.trim()),
        (Some(0), "Config OK")
    );
    let out = run_applet(&env, &info, &["-c", &c, "job", "list", "--format", "json"]);
    let jobs: Value = serde_json::from_str(&out.stdout).unwrap();
    assert!(jobs["code"]["command"].is_array(), "{jobs}");
    let out = run_applet(&env, &info, &["-c", &c, "run", "output", &run_id]);
    assert_eq!(out.stdout, "running\n");
    assert_user_error(
        &run_applet(&env, &info, &["-c", &c, "shell"]),
        "not available",
    );

    // dsari-render and dsari-prometheus-exporter: the Python tools' flags.
    let out = run_applet(&env, &applet(&env, "dsari-render"), &["-c", &c, "-r"]);
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    assert!(out.stdout.starts_with("wrote "), "{}", out.stdout);
    assert!(env.data_dir.join("html/index.html").is_file());
    let exporter = applet(&env, "dsari-prometheus-exporter");
    let out = run_applet(
        &env,
        &exporter,
        &["-c", &c, "--dump", "--listen-port", "1234"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with("dsari_run_count{") && l.contains("job_name=\"code\"")),
        "{}",
        out.stdout
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let mut status = None;
    env.wait_until("dsari-daemon to stop", || {
        status = daemon.try_wait().unwrap();
        status.is_some()
    });
    assert_eq!(status.unwrap().code(), Some(0));
}

#[test]
fn job_list_and_job_why() {
    let env = TestEnv::new(jobs());
    let _daemon = env.start_daemon();
    let c = cfg(&env);
    env.run_cli(&["trigger", "hold", "-c", &c]);
    let running = env.wait_running("hold");
    // A second trigger waits for the first run: pending, held by it.
    env.run_cli(&["trigger", "hold", "-c", &c]);
    let pending_id: String = env.wait_for("a pending run of hold", || {
        let conn = env.open_db().ok()?;
        conn.query_row(
            "SELECT run_id FROM dsari_pending WHERE job_name = 'hold'",
            [],
            |r| r.get(0),
        )
        .ok()
    });
    let out = env.run_cli(&["job", "why", "hold", "-c", &c]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        out.stdout.contains(&format!("run {pending_id}")),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains(&format!(
            "held by: the job's running run {}",
            running.run_id
        )),
        "{}",
        out.stdout
    );
    let out = env.run_cli(&["job", "why", "code", "-c", &c]);
    assert!(
        out.stdout.contains("no schedule and no trigger waiting"),
        "{}",
        out.stdout
    );
    assert_user_error(
        &env.run_cli(&["job", "why", "nope", "-c", &c]),
        "unknown job",
    );

    let out = env.run_cli(&["job", "list", "-c", &c, "--format", "json"]);
    let list: Vec<Value> =
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"));
    let names: Vec<&str> = list.iter().filter_map(|j| j["job_name"].as_str()).collect();
    assert_eq!(names, ["code", "hold", "killed"]);
    assert_eq!(list[1]["running"], json!([running.run_id]));
    assert_eq!(list[1]["next_due"], Value::Null);
    let pretty = env.run_cli(&["job", "list", "-c", &c]);
    assert!(pretty.stdout.starts_with("JOB"), "{pretty:?}");
    env.release("go");
}

#[test]
fn completions_and_man_pages() {
    let env = TestEnv::new(jobs());
    let out = env.run_cli(&["completions", "bash"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stdout.contains("dsari") && !out.stdout.contains("__supervise"));
    // A reader that is gone (`| head` that stopped) ends it quietly, no panic:
    // the read end is closed before the first write.
    let mut child = env
        .command(&["completions", "bash"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let done = child.wait_with_output().unwrap();
    assert!(done.status.code() == Some(0), "{done:?}");
    assert!(
        done.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let dir = env.root.join("man");
    let out = env.run_cli(&["manpages", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    for page in [
        "dsari.1",
        "dsari-trigger.1",
        "dsari-run-list.1",
        "dsari-job-why.1",
    ] {
        let text = fs::read_to_string(dir.join(page)).unwrap_or_default();
        assert!(text.contains(".TH"), "{page}: {text}");
    }
}

#[test]
fn user_errors_are_one_line_and_exit_1() {
    let env = TestEnv::new(json!({ "jobs": { "a": { "command": ["true"] } } }));
    let c = cfg(&env);
    // No database yet.
    assert_user_error(&env.run_cli(&["run", "list", "-c", &c]), "no database");
    // Not a dsari database, then not a database at all.
    {
        let conn = rusqlite::Connection::open(env.db_path()).unwrap();
        conn.execute_batch("CREATE TABLE x (a)").unwrap();
    }
    assert_user_error(
        &env.run_cli(&["run", "output", "-c", &c, "abc"]),
        "not a dsari database",
    );
    fs::write(
        env.db_path(),
        "this is not SQLite, just text long enough to look like a file header\n",
    )
    .unwrap();
    assert_user_error(
        &env.run_cli(&["job", "why", "a", "-c", &c]),
        "not a dsari database",
    );
    // A data dir that does not exist.
    fs::remove_dir_all(&env.data_dir).unwrap();
    assert_user_error(&env.run_cli(&["run", "list", "-c", &c]), "does not exist");
    assert_user_error(&env.run_cli(&["trigger", "a", "-c", &c]), "does not exist");
    // A bad command line is a user error too (clap's message with usage), not 2.
    let out = env.run_cli(&["run", "list", "--bogus"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("--bogus") && !out.stderr.contains("panicked"));
    assert_eq!(env.run_cli(&["--version"]).status.code(), Some(0));
    // A config dir that does not exist.
    assert_user_error(
        &env.run_cli(&["run", "list", "-c", "/nonexistent/dsari"]),
        "does not exist",
    );
}

#[test]
fn ambiguous_and_unknown_run_ids() {
    let env = TestEnv::new(json!({ "jobs": { "a": { "command": ["true"] } } }));
    fs::create_dir_all(&env.data_dir).unwrap();
    let mut store = dsari::store::Store::open(&env.db_path()).unwrap();
    for id in [
        "abcd0001-0000-4000-8000-000000000000",
        "abcd0002-0000-4000-8000-000000000000",
    ] {
        let run = dsari::store::RunRecord {
            job_name: "a".into(),
            run_id: id.into(),
            schedule_time: 1.0,
            start_time: 2.0,
            stop_time: Some(3.0),
            exit_code: Some(0),
            trigger_type: "file".into(),
            trigger_data: json!({}),
            run_data: json!({}),
        };
        store.finish_run(&run).unwrap();
    }
    drop(store);
    let c = cfg(&env);
    let out = env.run_cli(&["run", "output", "-c", &c, "ABCD"]);
    assert_user_error(&out, "ambiguous");
    assert!(
        out.stderr.contains("abcd0001") && out.stderr.contains("abcd0002"),
        "{out:?}"
    );
    assert_user_error(&env.run_cli(&["run", "output", "-c", &c, "abce"]), "no run");
    // A unique prefix of a run with no output file.
    assert_user_error(
        &env.run_cli(&["run", "output", "-c", &c, "abcd0001"]),
        "no output file",
    );
    let out = env.run_cli(&["run", "list", "-c", &c, "--run", "abcd", "--format", "json"]);
    let list: Vec<Value> = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(list.len(), 2);
}

#[test]
fn trigger_wait_follows_a_coalesced_trigger_to_the_run_that_carries_it() {
    let env = TestEnv::new(jobs());
    let _daemon = env.start_daemon();
    let c = cfg(&env);
    env.run_cli(&["trigger", "hold", "-c", &c]);
    let first = env.wait_running("hold");
    // The second trigger waits behind the first run, pending …
    let (mut waiter, out) = spawn(
        &env,
        None,
        &["trigger", "hold", "-c", &c, "--wait"],
        "waiter",
    );
    let pending = || -> Option<String> {
        let conn = env.open_db().ok()?;
        conn.query_row(
            "SELECT run_id FROM dsari_pending WHERE job_name = 'hold'",
            [],
            |r| r.get(0),
        )
        .ok()
    };
    let second = env.wait_for("the second trigger's pending run", pending);
    // … and a third one replaces that pending run, carrying the second trigger.
    env.run_cli(&[
        "trigger",
        "hold",
        "-c",
        &c,
        "--data",
        r#"{"marker": "third"}"#,
    ]);
    let carrier = env.wait_for("the replacing pending run", || {
        pending().filter(|id| *id != second)
    });
    env.release("go");
    let mut status = None;
    env.wait_until("the waiter to finish", || {
        status = waiter.try_wait().unwrap();
        status.is_some()
    });
    let stdout = text(&out);
    let stderr = text(&env.root.join("waiter.stderr"));
    assert_eq!(status.unwrap().code(), Some(0), "{stdout}{stderr}");
    assert!(stdout.contains(&format!("run_id: {carrier}")), "{stdout}");
    assert!(stderr.contains("coalesced"), "{stderr}");
    let runs = env.wait_runs("hold", 2);
    assert!(runs.iter().any(|r| r.run_id == first.run_id));
    let run = runs.iter().find(|r| r.run_id == carrier).unwrap();
    assert_eq!(run.marker(), Some("third"));
    assert_eq!(run.coalesced().len(), 1);
}
