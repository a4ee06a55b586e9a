//! From a trigger file to a recorded run (SPEC §3, §4.1–4.3, §6.2, §6.4).

mod common;

use std::fs::{self, File};

use common::*;
use serde_json::{Value, json};

fn one_job(command: Value) -> Value {
    json!({ "jobs": { "job": { "command": command } } })
}

#[test]
fn json_trigger_becomes_one_run_with_every_column() {
    let env = TestEnv::new(one_job(sh("echo one; echo two >&2; echo three; exit 5")));
    let test_start = now_epoch();
    let mut daemon = env.start_daemon();

    let data = json!({
        "type": "test",
        "description": "a trigger with every kind of value",
        "environment": { "FOO": "bar" },
        "nested": { "list": [1, 2.5, "x", null, true], "empty": {} },
    });
    // A sub-second mtime a few seconds in the past: schedule_time must be
    // the file's mtime, not the moment the daemon noticed the file.
    let mtime = (now_epoch() - 3.0).floor() + 0.123_456;
    let path = env.trigger_bytes(
        "job",
        "trigger.json",
        data.to_string().as_bytes(),
        Some(filetime_of(mtime)),
    );
    // (Not stat'ed here: the daemon may already have claimed the file.)

    let runs = env.wait_runs("job", 1);
    if runs.len() != 1 {
        env.fail(&format!("want exactly one run, got {runs:#?}"));
    }
    let run = &runs[0];
    let now = now_epoch();

    assert_eq!(run.job_name, "job");
    let uuid = uuid::Uuid::parse_str(&run.run_id)
        .unwrap_or_else(|e| env.fail(&format!("run_id {:?} is not a UUID: {e}", run.run_id)));
    assert_eq!(
        uuid.get_version_num(),
        4,
        "run_id {} is not a v4 UUID",
        run.run_id
    );
    assert_eq!(
        uuid.hyphenated().to_string(),
        run.run_id,
        "run_id must be the lower-case hyphenated form"
    );
    assert_time_eq(
        &env,
        "schedule_time vs file mtime",
        run.schedule_time,
        mtime,
        1e-3,
    );
    assert!(
        run.start_time >= run.schedule_time,
        "start_time {} before schedule_time {}",
        run.start_time,
        run.schedule_time
    );
    assert!(
        run.start_time >= test_start - 1.0 && run.start_time <= now + 1.0,
        "start_time {} not between the test's start {test_start} and now {now}",
        run.start_time
    );
    assert!(
        run.stop_time >= run.start_time && run.stop_time <= now + 1.0,
        "stop_time {} not between start_time {} and now {now}",
        run.stop_time,
        run.start_time
    );
    assert_eq!(run.exit_code, 5, "exit_code");
    assert_eq!(run.trigger_type, "file", "trigger_type");
    assert_eq!(
        run.trigger_data, data,
        "trigger_data must be the file's whole mapping"
    );
    if !run.run_data.is_object() {
        env.fail(&format!("run_data is not an object: {}", run.run_data));
    }
    if !run.run_data.get("rusage").is_some_and(Value::is_object) {
        env.fail(&format!(
            "run_data.rusage is not an object: {}",
            run.run_data
        ));
    }

    assert!(
        env.running().is_empty(),
        "runs_running not empty after the run: {:?}",
        env.running()
    );
    assert!(!path.exists(), "the trigger file is still there");
    assert!(
        env.trigger_files("job").is_empty(),
        "trigger files left: {:?}",
        env.trigger_files("job")
    );
    assert_eq!(
        env.output(run),
        "one\ntwo\nthree\n",
        "output.txt must hold stdout and stderr in arrival order"
    );
    daemon.assert_alive(&env);
}

#[test]
fn touch_to_run_with_an_empty_trigger_json() {
    let env = TestEnv::new(one_job(sh("echo touched")));
    let _daemon = env.start_daemon();
    // Created directly in the dir, not renamed: like `touch`.
    let path = env.trigger_dir("job").join("trigger.json");
    File::create(&path).expect("touch trigger.json");

    let runs = env.wait_runs("job", 1);
    assert_eq!(
        runs[0].trigger_data,
        json!({}),
        "an empty file is the trigger {{}}"
    );
    assert_eq!(runs[0].trigger_type, "file");
    assert_eq!(runs[0].exit_code, 0);
    assert_eq!(env.output(&runs[0]), "touched\n");
    env.wait_consumed(&path);
}

#[test]
fn yaml_trigger_with_environment() {
    let env = TestEnv::new(one_job(sh("echo \"FOO=$FOO\"")));
    let _daemon = env.start_daemon();
    let path = env.trigger("job", "trigger.yaml", "environment:\n  FOO: bar\n");

    let runs = env.wait_runs("job", 1);
    assert_eq!(
        runs[0].trigger_data,
        json!({ "environment": { "FOO": "bar" } })
    );
    assert_eq!(env.output(&runs[0]), "FOO=bar\n");
    assert!(!path.exists(), "trigger.yaml is still there");
}

#[test]
fn any_matching_name_is_a_trigger_but_dot_files_and_other_names_are_not() {
    let env = TestEnv::new(one_job(sh("true")));
    let _daemon = env.start_daemon();
    let dir = env.trigger_dir("job");
    // A writer's temporary file (never renamed) and a file of another type.
    fs::write(dir.join(".half-written.json"), "{\"marker\": \"hidden\"}").unwrap();
    fs::write(dir.join("notes.txt"), "{\"marker\": \"txt\"}").unwrap();

    env.trigger_json("job", "trigger-custom.yml", &json!({"marker": "yml"}));
    env.wait_runs("job", 1);
    env.trigger_json("job", "second.json", &json!({"marker": "json"}));
    let runs = env.wait_runs("job", 2);

    let markers: Vec<_> = runs.iter().map(|r| r.marker().unwrap_or("?")).collect();
    assert_eq!(markers, ["yml", "json"], "runs: {runs:#?}");
    assert!(
        dir.join(".half-written.json").exists(),
        "a dot-file was taken"
    );
    assert!(dir.join("notes.txt").exists(), "notes.txt was taken");
    assert!(
        env.rejected_entries("job").is_empty(),
        "rejected: {:?}",
        env.rejected_entries("job")
    );
}

#[test]
fn trigger_schedule_time_as_epoch_number() {
    let env = TestEnv::new(one_job(sh("true")));
    let _daemon = env.start_daemon();
    env.trigger_json(
        "job",
        "trigger.json",
        &json!({ "schedule_time": 1_500_000_000.25 }),
    );

    let runs = env.wait_runs("job", 1);
    assert_time_eq(
        &env,
        "schedule_time",
        runs[0].schedule_time,
        1_500_000_000.25,
        1e-3,
    );
    assert!(
        runs[0].start_time > 1_600_000_000.0,
        "a past schedule_time runs now"
    );
}

#[test]
fn trigger_schedule_time_as_iso_string() {
    let env = TestEnv::new(json!({
        "jobs": { "job": { "command": sh("true"), "concurrent_runs": true } }
    }));
    let _daemon = env.start_daemon();
    env.trigger_json(
        "job",
        "utc.json",
        &json!({ "marker": "utc", "schedule_time": "2020-01-02T03:04:05Z" }),
    );
    env.trigger_json(
        "job",
        "offset.json",
        &json!({ "marker": "offset", "schedule_time": "2021-03-04T05:06:07.5+02:00" }),
    );

    let runs = env.wait_runs("job", 2);
    let by_marker = |m: &str| {
        runs.iter()
            .find(|r| r.marker() == Some(m))
            .unwrap_or_else(|| env.fail(&format!("no run with marker {m}")))
    };
    // date -d 2020-01-02T03:04:05Z +%s
    assert_time_eq(
        &env,
        "Z schedule_time",
        by_marker("utc").schedule_time,
        1_577_934_245.0,
        1e-3,
    );
    // date -d 2021-03-04T03:06:07Z +%s, plus half a second
    assert_time_eq(
        &env,
        "+02:00 schedule_time",
        by_marker("offset").schedule_time,
        1_614_827_167.5,
        1e-3,
    );
}

#[test]
fn trigger_environment_overrides_job_and_global_environment() {
    let env = TestEnv::new(json!({
        "environment": { "A": "global", "B": "global", "C": "global", "N": 7 },
        "jobs": { "job": {
            "command": sh("env"),
            "environment": { "B": "job", "C": "job" },
        } },
    }));
    let _daemon = env.start_daemon();
    env.trigger_json(
        "job",
        "trigger.json",
        &json!({ "environment": { "C": "trigger", "D": "only-trigger", "NUM": 42 } }),
    );

    let runs = env.wait_runs("job", 1);
    let vars = env.env_of(&runs[0]);
    let get = |k: &str| vars.get(k).map(String::as_str);
    assert_eq!(
        get("A"),
        Some("global"),
        "global environment; env: {vars:?}"
    );
    assert_eq!(
        get("B"),
        Some("job"),
        "job environment beats global; env: {vars:?}"
    );
    assert_eq!(
        get("C"),
        Some("trigger"),
        "trigger environment beats job; env: {vars:?}"
    );
    assert_eq!(get("D"), Some("only-trigger"), "env: {vars:?}");
    assert_eq!(get("N"), Some("7"), "numbers become strings; env: {vars:?}");
    assert_eq!(
        get("NUM"),
        Some("42"),
        "numbers become strings; env: {vars:?}"
    );
}

#[test]
fn run_environment_is_built_from_nothing() {
    let env = TestEnv::new(one_job(sh("echo \"CWD_P=$(pwd -P)\"; env")));
    let _daemon = env.start_daemon_with(&[], &[("DSARI_TEST_LEAK", "1"), ("LANG", "C.UTF-8")]);
    env.trigger_json("job", "trigger.json", &json!({}));

    let runs = env.wait_runs("job", 1);
    let run = &runs[0];
    let vars = env.env_of(run);
    let data_dir = env.data_dir.display().to_string();
    let run_dir = env.run_dir("job", &run.run_id).display().to_string();
    let job_dir = env.data_dir.join("runs").join("job").display().to_string();
    let trigger_dir = env.data_dir.join("trigger").display().to_string();
    let expect = [
        ("CI", "true"),
        ("DSARI", "true"),
        ("JOB_NAME", "job"),
        ("RUN_ID", run.run_id.as_str()),
        ("RUN_DIR", run_dir.as_str()),
        ("DATA_DIR", data_dir.as_str()),
        ("JOB_DIR", job_dir.as_str()),
        ("TRIGGER_DIR", trigger_dir.as_str()),
        ("TRIGGER_TYPE", "file"),
        ("PWD", run_dir.as_str()),
        ("CWD_P", run_dir.as_str()),
    ];
    for (k, v) in expect {
        if vars.get(k).map(String::as_str) != Some(v) {
            env.fail(&format!(
                "want {k}={v} in the run environment, got {:?}\nenv: {vars:?}",
                vars.get(k)
            ));
        }
    }
    let path = daemon_path();
    assert_eq!(vars.get("PATH"), Some(&path), "PATH is the daemon's");
    assert_time_eq(
        &env,
        "SCHEDULE_TIME",
        env_time(&env, &vars, "SCHEDULE_TIME"),
        run.schedule_time,
        1e-3,
    );
    assert_time_eq(
        &env,
        "START_TIME",
        env_time(&env, &vars, "START_TIME"),
        run.start_time,
        0.5,
    );

    for leaked in ["DSARI_TEST_LEAK", "LANG"] {
        if vars.contains_key(leaked) {
            env.fail(&format!(
                "{leaked} leaked from the daemon's environment into the run: {vars:?}"
            ));
        }
    }
    // LOGNAME and HOME are the running user's, not the daemon's HOME.
    if let Ok(Some(user)) = nix::unistd::User::from_uid(nix::unistd::getuid()) {
        assert_eq!(
            vars.get("LOGNAME"),
            Some(&user.name),
            "LOGNAME; env: {vars:?}"
        );
        let home = user.dir.display().to_string();
        assert_eq!(
            vars.get("HOME"),
            Some(&home),
            "HOME must be the user's home; env: {vars:?}"
        );
    } else {
        eprintln!("no passwd entry for this uid: LOGNAME/HOME not checked");
    }
}

#[test]
fn previous_run_variables_describe_earlier_runs() {
    let env = TestEnv::new(one_job(sh("env; exit \"${CODE:-0}\"")));
    let _daemon = env.start_daemon();

    env.trigger_json("job", "t1.json", &json!({ "environment": { "CODE": "0" } }));
    let first = env.wait_runs("job", 1)[0].clone();
    env.trigger_json("job", "t2.json", &json!({ "environment": { "CODE": "1" } }));
    let second = env.wait_runs("job", 2)[1].clone();
    env.trigger_json("job", "t3.json", &json!({ "environment": { "CODE": "0" } }));
    let third = env.wait_runs("job", 3)[2].clone();
    assert_eq!(
        (first.exit_code, second.exit_code, third.exit_code),
        (0, 1, 0)
    );

    let vars1 = env.env_of(&first);
    if let Some(k) = vars1.keys().find(|k| k.starts_with("PREVIOUS_")) {
        env.fail(&format!("the first run has {k} set: {vars1:?}"));
    }
    let vars2 = env.env_of(&second);
    assert_eq!(vars2.get("PREVIOUS_RUN_ID"), Some(&first.run_id));
    assert_eq!(vars2.get("PREVIOUS_GOOD_RUN_ID"), Some(&first.run_id));
    assert!(
        !vars2.contains_key("PREVIOUS_BAD_RUN_ID"),
        "no bad run yet: {vars2:?}"
    );

    let vars = env.env_of(&third);
    for (prefix, run) in [
        ("PREVIOUS_", &second),
        ("PREVIOUS_GOOD_", &first),
        ("PREVIOUS_BAD_", &second),
    ] {
        let id = format!("{prefix}RUN_ID");
        if vars.get(&id) != Some(&run.run_id) {
            env.fail(&format!(
                "{id}: got {:?}, want {}\nenv: {vars:?}",
                vars.get(&id),
                run.run_id
            ));
        }
        let code = format!("{prefix}EXIT_CODE");
        assert_eq!(
            vars.get(&code),
            Some(&run.exit_code.to_string()),
            "{code}; env: {vars:?}"
        );
        for (suffix, want) in [
            ("SCHEDULE_TIME", run.schedule_time),
            ("START_TIME", run.start_time),
            ("STOP_TIME", run.stop_time),
        ] {
            let name = format!("{prefix}{suffix}");
            assert_time_eq(&env, &name, env_time(&env, &vars, &name), want, 1e-3);
        }
    }
}

#[test]
fn jenkins_environment_variables() {
    let env = TestEnv::new(json!({
        "jobs": { "job": { "command": sh("env"), "jenkins_environment": true } }
    }));
    let _daemon = env.start_daemon();
    env.trigger_json("job", "trigger.json", &json!({}));

    let runs = env.wait_runs("job", 1);
    let run = &runs[0];
    let vars = env.env_of(run);
    let run_dir = env.run_dir("job", &run.run_id).display().to_string();
    let get = |k: &str| vars.get(k).map(String::as_str);
    assert_eq!(
        get("BUILD_TAG"),
        Some(format!("dsari-job-{}", run.run_id).as_str()),
        "env: {vars:?}"
    );
    assert_eq!(
        get("BUILD_NUMBER"),
        Some(run.run_id.as_str()),
        "env: {vars:?}"
    );
    assert_eq!(get("BUILD_ID"), Some(run.run_id.as_str()), "env: {vars:?}");
    assert_eq!(get("WORKSPACE"), Some(run_dir.as_str()), "env: {vars:?}");
    assert_eq!(get("NODE_NAME"), Some("master"), "env: {vars:?}");
    assert_eq!(get("EXECUTOR_NUMBER"), Some("0"), "env: {vars:?}");
    assert_eq!(
        get("BUILD_URL"),
        Some(format!("file://{run_dir}/").as_str()),
        "env: {vars:?}"
    );
    assert_eq!(
        get("JENKINS_URL"),
        Some(format!("file://{}/", env.data_dir.display()).as_str()),
        "env: {vars:?}"
    );
}

#[test]
fn jenkins_variables_absent_by_default() {
    let env = TestEnv::new(one_job(sh("env")));
    let _daemon = env.start_daemon();
    env.trigger_json("job", "trigger.json", &json!({}));
    let runs = env.wait_runs("job", 1);
    let vars = env.env_of(&runs[0]);
    for k in [
        "BUILD_TAG",
        "WORKSPACE",
        "BUILD_URL",
        "JENKINS_URL",
        "JOB_GROUP",
        "CONCURRENCY_GROUP",
    ] {
        assert!(
            !vars.contains_key(k),
            "{k} set without being asked for: {vars:?}"
        );
    }
}

#[test]
fn job_groups_expand_into_jobs_with_job_group() {
    let env = TestEnv::new(json!({
        "job_groups": { "grp": {
            "job_names": ["g1", "g2"],
            "command": sh("echo \"JOB_GROUP=$JOB_GROUP\"; echo \"JOB_NAME=$JOB_NAME\""),
        } }
    }));
    let _daemon = env.start_daemon(); // waits for trigger/g1 and trigger/g2
    env.trigger_json("g1", "trigger.json", &json!({}));
    env.trigger_json("g2", "trigger.json", &json!({}));

    for job in ["g1", "g2"] {
        let runs = env.wait_runs(job, 1);
        assert_eq!(
            env.output(&runs[0]),
            format!("JOB_GROUP=grp\nJOB_NAME={job}\n")
        );
    }
}

#[test]
fn command_append_run_appends_job_name_and_run_id() {
    let env = TestEnv::new(json!({
        "jobs": { "job": {
            "command": ["/bin/sh", "-c", "echo \"[$0] [$1] [$2] [$#]\"", "zero"],
            "command_append_run": true,
        } }
    }));
    let _daemon = env.start_daemon();
    env.trigger_json("job", "trigger.json", &json!({}));
    let runs = env.wait_runs("job", 1);
    assert_eq!(
        env.output(&runs[0]),
        format!("[zero] [job] [{}] [2]\n", runs[0].run_id)
    );
}

#[test]
fn string_command_is_split_with_shell_word_rules() {
    let env = TestEnv::new(one_job(json!("/bin/sh -c 'echo \"$0|$1\"' 'a b' \"c d\"")));
    let _daemon = env.start_daemon();
    env.trigger_json("job", "trigger.json", &json!({}));
    let runs = env.wait_runs("job", 1);
    assert_eq!(runs[0].exit_code, 0, "output: {}", env.output(&runs[0]));
    assert_eq!(env.output(&runs[0]), "a b|c d\n");
}

#[test]
fn once_processes_present_triggers_and_exits() {
    let env = TestEnv::new(json!({
        "jobs": {
            "a": { "command": sh("echo from-a") },
            "b": { "command": sh("echo from-b; exit 4") },
        }
    }));
    let ta = env.trigger_json("a", "trigger.json", &json!({"marker": "a"}));
    let tb = env.trigger_json("b", "trigger-1.json", &json!({"marker": "b"}));

    let out = env.run_once();
    if out.status.code() != Some(0) {
        env.fail(&format!(
            "--once exited {:?}\nstdout:\n{}\nstderr:\n{}",
            out.status, out.stdout, out.stderr
        ));
    }
    let runs = env.runs();
    assert_eq!(runs.len(), 2, "runs: {runs:#?}\nstderr:\n{}", out.stderr);
    for run in &runs {
        assert!(
            out.stdout.contains(&run.run_id),
            "--once stdout does not show run {}:\n{}",
            run.run_id,
            out.stdout
        );
    }
    let a = runs.iter().find(|r| r.job_name == "a").expect("run of a");
    let b = runs.iter().find(|r| r.job_name == "b").expect("run of b");
    assert_eq!((a.exit_code, b.exit_code), (0, 4));
    assert_eq!(env.output(a), "from-a\n");
    assert!(
        !ta.exists() && !tb.exists(),
        "--once left trigger files behind"
    );
    assert!(
        env.running().is_empty(),
        "runs_running not empty after --once"
    );
}

#[test]
fn return_data_lands_in_run_data() {
    let env = TestEnv::new(json!({
        "jobs": {
            "j": { "command": sh(r#"echo '{"answer": 42, "list": [1, "two"], "ok": true}' > return_data.json"#) },
            "y": { "command": sh(r#"printf 'answer: 43\nwords:\n  - a\n  - b\n' > return_data.yaml"#) },
        }
    }));
    let _daemon = env.start_daemon();
    env.trigger_json("j", "trigger.json", &json!({}));
    env.trigger_json("y", "trigger.json", &json!({}));

    let j = env.wait_runs("j", 1).remove(0);
    assert_eq!(
        j.run_data.get("return_data"),
        Some(&json!({"answer": 42, "list": [1, "two"], "ok": true})),
        "run_data: {}",
        j.run_data
    );
    assert!(
        j.run_data.get("rusage").is_some_and(Value::is_object),
        "run_data: {}",
        j.run_data
    );
    let y = env.wait_runs("y", 1).remove(0);
    assert_eq!(
        y.run_data.get("return_data"),
        Some(&json!({"answer": 43, "words": ["a", "b"]})),
        "run_data: {}",
        y.run_data
    );
}

#[test]
fn fifty_triggers_at_once_make_fifty_runs() {
    const N: usize = 50;
    let env = TestEnv::new(json!({
        "jobs": { "job": { "command": sh("echo \"$M\""), "concurrent_runs": true } }
    }));
    let _daemon = env.start_daemon();
    for i in 0..N {
        env.trigger_json(
            "job",
            &format!("trigger-{i}.json"),
            &json!({ "marker": i.to_string(), "environment": { "M": i.to_string() } }),
        );
    }
    env.wait_runs("job", N);
    env.wait_until("the trigger dir to be empty", || {
        env.trigger_files("job").is_empty()
    });

    // A later marker: once it has run, a duplicate run of any earlier trigger
    // would have been recorded too.
    env.trigger_json("job", "last.json", &json!({ "marker": "last" }));
    env.wait_until("the run of last.json", || {
        env.try_runs()
            .is_ok_and(|runs| runs.iter().any(|r| r.marker() == Some("last")))
    });
    env.wait_until("runs_running to be empty", || {
        env.try_running().is_ok_and(|r| r.is_empty())
    });
    let runs: Vec<Run> = env
        .runs_of("job")
        .into_iter()
        .filter(|r| r.marker() != Some("last"))
        .collect();
    let mut markers: Vec<usize> = runs
        .iter()
        .map(|r| {
            r.marker()
                .and_then(|m| m.parse().ok())
                .unwrap_or(usize::MAX)
        })
        .collect();
    markers.sort_unstable();
    let want: Vec<usize> = (0..N).collect();
    if markers != want {
        env.fail(&format!(
            "want one run per trigger 0..{N}, got markers {markers:?}"
        ));
    }
    for run in &runs {
        assert_eq!(run.exit_code, 0);
        assert!(
            run.coalesced().is_empty(),
            "concurrent runs never coalesce: {}",
            run.run_data
        );
        assert_eq!(env.output(run), format!("{}\n", run.marker().unwrap()));
    }
    assert!(env.rejected_entries("job").is_empty());
}

#[test]
fn yaml_and_config_d_files_are_merged() {
    let env = TestEnv::new(json!({
        "environment": { "G": "json" },
        "jobs": { "a": { "command": sh("echo \"$G $A $B\""), "environment": { "A": "json" } } },
    }));
    env.write_config_file(
        "config.d/10-more.yaml",
        "environment:\n  G: yaml\njobs:\n  a:\n    environment:\n      B: yaml\n  b:\n    command: [/bin/echo, from-b]\n",
    );
    env.write_config_file(
        "config.d/20-last.json",
        r#"{"jobs": {"a": {"environment": {"A": "last"}}}}"#,
    );
    let _daemon = env.start_daemon();
    let b_dir = env.trigger_dir("b");
    env.wait_until("trigger/b from config.d", || b_dir.is_dir());
    env.trigger_json("a", "trigger.json", &json!({}));
    env.trigger_json("b", "trigger.json", &json!({}));
    let a = env.wait_runs("a", 1).remove(0);
    assert_eq!(
        env.output(&a),
        "yaml last yaml\n",
        "deep merge: yaml after dsari.json, then json of config.d"
    );
    let b = env.wait_runs("b", 1).remove(0);
    assert_eq!(env.output(&b), "from-b\n");
}
