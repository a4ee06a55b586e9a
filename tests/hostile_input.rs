//! Hostile input: symlinked and vanishing trigger directories, odd file names,
//! huge and special files, path-like job names, file modes (SPEC §1.2, §2.1,
//! §4.1, §4.4). Each test checks that a clear message is given, that nothing
//! outside the data dir is touched, and that the daemon lives on and still
//! runs a good trigger.

mod common;

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;
use serde_json::{Value, json};

fn jobs(names: &[&str]) -> Value {
    let mut jobs = serde_json::Map::new();
    for name in names {
        jobs.insert(
            name.to_string(),
            json!({ "command": sh("echo \"MARK=${MARK:-}\""), "concurrent_runs": true }),
        );
    }
    json!({ "jobs": jobs })
}

fn old_mtime() -> filetime::FileTime {
    filetime_of(now_epoch() - 60.0)
}

/// Trigger `job` with `marker` and wait for that run; it must print the marker.
fn good_run(env: &TestEnv, job: &str, marker: &str) -> Run {
    env.trigger_json(
        job,
        &format!("{marker}.json"),
        &json!({ "marker": marker, "environment": { "MARK": marker } }),
    );
    let run = env.wait_for(&format!("the run of {job} with marker {marker}"), || {
        env.try_runs()
            .ok()?
            .into_iter()
            .find(|r| r.marker() == Some(marker))
    });
    assert_eq!(run.job_name, job);
    assert_eq!(run.exit_code, 0);
    assert_eq!(env.output(&run), format!("MARK={marker}\n"));
    run
}

/// Every path under `root` (relative, symlinks not followed).
fn tree(root: &Path) -> BTreeSet<PathBuf> {
    fn walk(dir: &Path, root: &Path, out: &mut BTreeSet<PathBuf>) {
        let Ok(rd) = fs::read_dir(dir) else { return };
        for e in rd.filter_map(Result::ok) {
            let p = e.path();
            out.insert(p.strip_prefix(root).unwrap_or(&p).to_path_buf());
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&p, root, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(root, root, &mut out);
    out
}

/// Paths that appeared under the test root since `before`, outside the data
/// dir and other than the harness's own files (daemon log, CLI captures).
fn new_outside_data_dir(env: &TestEnv, before: &BTreeSet<PathBuf>) -> Vec<PathBuf> {
    let data = env
        .data_dir
        .strip_prefix(&env.root)
        .expect("data dir under root");
    tree(&env.root)
        .into_iter()
        .filter(|p| !before.contains(p))
        .filter(|p| !p.starts_with(data))
        .filter(|p| {
            let s = p.to_string_lossy();
            !(s == "daemon.log" || s == "daemon.stdout" || s.starts_with("cli-"))
        })
        .collect()
}

// ----- symlinked trigger directory ------------------------------------------

/// `trigger/job` is a symlink to `ROOT/outside`, which holds `files`
/// (relative path, content). Returns the outside dir.
fn symlinked_job_dir(env: &TestEnv, files: &[(&str, Value)]) -> PathBuf {
    let outside = env.root.join("outside");
    for (rel, content) in files {
        let p = outside.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, content.to_string()).unwrap();
        filetime::set_file_mtime(&p, old_mtime()).unwrap();
    }
    fs::create_dir_all(&outside).unwrap();
    fs::create_dir_all(env.data_dir.join("trigger")).unwrap();
    std::os::unix::fs::symlink(&outside, env.trigger_dir("job")).unwrap();
    outside
}

/// Snapshot of a directory: relative path → (content, mtime).
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>, f64)> {
    tree(dir)
        .into_iter()
        .map(|rel| {
            let p = dir.join(&rel);
            let content = if p.is_file() {
                fs::read(&p).unwrap_or_default()
            } else {
                Vec::new()
            };
            (rel, content, mtime_of(&p))
        })
        .collect()
}

fn assert_symlink_left_alone(env: &TestEnv, outside: &Path, before: &[(PathBuf, Vec<u8>, f64)]) {
    let after = snapshot(outside);
    if after != before {
        env.fail(&format!(
            "the daemon changed the directory behind the symlinked trigger dir:\nbefore {:?}\nafter {:?}",
            before.iter().map(|e| &e.0).collect::<Vec<_>>(),
            after.iter().map(|e| &e.0).collect::<Vec<_>>()
        ));
    }
    let link = fs::symlink_metadata(env.trigger_dir("job")).unwrap();
    assert!(link.file_type().is_symlink(), "the symlink was replaced");
    let job_runs: Vec<Run> = env.runs_of("job");
    if !job_runs.is_empty() {
        env.fail(&format!(
            "a trigger behind the symlink made a run: {job_runs:#?}"
        ));
    }
    if env.data_dir.join("runs").join("job").exists() {
        env.fail("a run dir was made for the job whose trigger dir is a symlink");
    }
}

#[test]
fn symlinked_trigger_dir_is_not_followed() {
    let env = TestEnv::new(jobs(&["job", "good"]));
    let outside = symlinked_job_dir(
        &env,
        &[(
            "trigger.json",
            json!({ "marker": "outside", "environment": { "MARK": "outside" } }),
        )],
    );
    let before = snapshot(&outside);
    let mut daemon = env.start_daemon();

    let dir = env.trigger_dir("job").display().to_string();
    env.wait_until(&format!("an error naming {dir}"), || {
        env.log()
            .lines()
            .any(|l| l.contains(&dir) && (l.contains("ERROR") || l.contains("WARN")))
    });
    good_run(&env, "good", "good-1");

    // A rescan must not follow it either.
    let since = env.log_len();
    daemon.signal(Signal::SIGUSR1);
    env.wait_until("the SIGUSR1 rescan", || {
        env.log_since(since).contains("SIGUSR1")
    });
    good_run(&env, "good", "good-2");
    assert_symlink_left_alone(&env, &outside, &before);
    daemon.assert_alive(&env);
}

#[test]
fn symlinked_trigger_dir_is_not_followed_for_leftover_claims() {
    let env = TestEnv::new(jobs(&["job", "good"]));
    // What a crashed daemon leaves: a claimed trigger, here behind the link.
    let outside = symlinked_job_dir(
        &env,
        &[(
            ".claimed/0b0e6d55-2f0c-4f51-9d3e-3c1c5f6f2a11--trigger.json",
            json!({ "marker": "outside-claimed", "environment": { "MARK": "outside" } }),
        )],
    );
    let before = snapshot(&outside);
    let mut daemon = env.start_daemon();
    let dir = env.trigger_dir("job").display().to_string();
    env.wait_until(&format!("an error naming {dir}"), || {
        env.log().contains(&dir)
    });
    good_run(&env, "good", "good");
    assert_symlink_left_alone(&env, &outside, &before);
    daemon.assert_alive(&env);
}

// ----- odd file names -------------------------------------------------------

#[test]
fn odd_trigger_file_names_stay_in_the_job_dir() {
    let env = TestEnv::new(jobs(&["job"]));
    let mut daemon = env.start_daemon();
    let before = tree(&env.root);
    let names: [&[u8]; 4] = [
        b"new\nline.json",
        b"forge\n[2026-01-01T00:00:00.000Z ERROR] FORGED-LOG-LINE.json",
        b"bad-\xff\xfe-utf8.json",
        b"a..b.json",
    ];
    let dir = env.trigger_dir("job");
    let mut paths = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let tmp = dir.join(format!(".tmp-{i}"));
        let content =
            json!({ "marker": format!("odd-{i}"), "environment": { "MARK": format!("odd-{i}") } });
        fs::write(&tmp, content.to_string()).unwrap();
        let path = dir.join(OsStr::from_bytes(name));
        fs::rename(&tmp, &path).unwrap();
        paths.push(path);
    }
    for (i, path) in paths.iter().enumerate() {
        env.wait_until(
            &format!(
                "odd name {:?} to be taken (run or rejected)",
                names[i].escape_ascii().to_string()
            ),
            || fs::symlink_metadata(path).is_err(),
        );
    }
    env.wait_until("nothing claimed or running", || {
        env.try_running().is_ok_and(|r| r.is_empty())
            && fs::read_dir(dir.join(".claimed")).map_or(true, |mut rd| rd.next().is_none())
    });

    // Each became a run or a rejection, and none escaped the job dir.
    let runs = env.runs();
    let rejected: Vec<String> = env
        .rejected_entries("job")
        .into_iter()
        .filter(|e| !e.ends_with(".error"))
        .collect();
    let mut ran = 0;
    for i in 0..names.len() {
        let marker = format!("odd-{i}");
        let mine: Vec<&Run> = runs
            .iter()
            .filter(|r| r.marker() == Some(&marker))
            .collect();
        if mine.len() > 1 {
            env.fail(&format!("{marker} ran {} times", mine.len()));
        }
        if let Some(run) = mine.first() {
            ran += 1;
            assert_eq!(run.job_name, "job");
            assert_eq!(env.output(run), format!("MARK={marker}\n"));
        }
    }
    if ran + rejected.len() != names.len() {
        env.fail(&format!(
            "each odd name must become a run or a rejection: {ran} runs, rejected {rejected:?}"
        ));
    }
    for r in &rejected {
        let error = env.rejected_dir("job").join(format!("{r}.error"));
        if !error.exists() {
            env.fail(&format!("rejected {r:?} has no .error file"));
        }
    }
    eprintln!("odd names: {ran} ran, rejected {rejected:?}");
    let outside = new_outside_data_dir(&env, &before);
    if !outside.is_empty() {
        env.fail(&format!("files appeared outside the data dir: {outside:?}"));
    }
    let data_entries: Vec<String> = fs::read_dir(&env.data_dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    for e in &data_entries {
        let known =
            ["trigger", "runs", "html"].contains(&e.as_str()) || e.starts_with("dsari.sqlite3");
        if !known {
            env.fail(&format!("unexpected entry {e:?} in the data dir"));
        }
    }
    let trigger_root: Vec<String> = fs::read_dir(env.data_dir.join("trigger"))
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(trigger_root, vec!["job".to_string()], "entries of trigger/");

    // A newline in a file name must not forge a line of the log (SPEC §8: one
    // line per event).
    let forged = env
        .log()
        .lines()
        .find(|l| l.starts_with("[2026-01-01T00:00:00.000Z ERROR] FORGED"))
        .map(str::to_string);
    if let Some(line) = forged {
        env.fail(&format!("a trigger file name forged a log line: {line:?}"));
    }
    good_run(&env, "job", "good");
    daemon.assert_alive(&env);
}

// ----- huge and special files -----------------------------------------------

#[test]
fn sparse_one_gib_trigger_is_rejected_without_being_read() {
    let env = TestEnv::new(jobs(&["job"]));
    let mut daemon = env.start_daemon();
    let dir = env.trigger_dir("job");
    let tmp = dir.join(".tmp-big");
    let f = fs::File::create(&tmp).unwrap();
    f.set_len(1 << 30).unwrap();
    drop(f);
    let t0 = Instant::now();
    fs::rename(&tmp, dir.join("big.json")).unwrap();

    let mut found = None;
    let quick = wait_until(Instant::now() + Duration::from_secs(5), || {
        found = env.rejected("job", "big.json");
        found.is_some()
    });
    if !quick {
        env.fail("a 1 GiB trigger was not rejected within 5 s");
    }
    let (moved, error) = found.unwrap();
    eprintln!(
        "1 GiB trigger rejected in {:.3} s: {}",
        t0.elapsed().as_secs_f64(),
        error.trim()
    );
    let lower = error.to_lowercase();
    assert!(
        lower.contains("byte") || lower.contains("size") || lower.contains("1073741824"),
        "the .error must mention the size: {error:?}"
    );
    let meta = fs::metadata(&moved).unwrap();
    assert_eq!(
        meta.len(),
        1 << 30,
        "the rejected file must be moved as it is"
    );
    assert!(
        meta.blocks() * 512 < 1 << 20,
        "the rejected file takes {} bytes of disk: it was copied, not moved",
        meta.blocks() * 512
    );
    good_run(&env, "job", "good");
    daemon.assert_alive(&env);
}

#[test]
fn fifo_created_in_place_does_not_hang_the_daemon() {
    let env = TestEnv::new(jobs(&["job"]));
    let mut daemon = env.start_daemon();
    let fifo = env.trigger_dir("job").join("trigger.json");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();

    good_run(&env, "job", "good");
    let (moved, error) = env.wait_rejected("job", "trigger.json");
    assert!(
        fs::symlink_metadata(&moved).unwrap().file_type().is_fifo(),
        "the FIFO itself must be moved to .rejected/"
    );
    assert!(
        error.to_lowercase().contains("fifo"),
        "the .error should say it is a FIFO: {error:?}"
    );
    assert_eq!(env.runs().len(), 1, "the FIFO made a run");
    good_run(&env, "job", "good-2");
    daemon.assert_alive(&env);
}

// ----- vanishing trigger directories ----------------------------------------

#[test]
fn removed_job_trigger_dir_is_recreated_and_watched() {
    let env = TestEnv::new(jobs(&["job"]));
    let mut daemon = env.start_daemon();
    good_run(&env, "job", "before");
    let dir = env.trigger_dir("job");
    fs::remove_dir_all(&dir).unwrap();
    env.wait_until("the job's trigger dir to be recreated", || {
        fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir())
    });
    // Well within the 60 s safety rescan: the new dir must be watched.
    good_run(&env, "job", "after");
    daemon.assert_alive(&env);
}

#[test]
fn removed_trigger_root_is_recreated_and_watched() {
    let env = TestEnv::new(jobs(&["job", "other"]));
    let mut daemon = env.start_daemon();
    good_run(&env, "job", "before");
    let root = env.data_dir.join("trigger");
    // `rm -rf`; the daemon may recreate a job dir while the root is still
    // there (then the root's rmdir fails): try again until it is gone once.
    let removed = wait_until(Instant::now() + DEADLINE, || {
        match fs::remove_dir_all(&root) {
            Ok(()) => true,
            Err(e) => e.kind() == std::io::ErrorKind::NotFound,
        }
    });
    if !removed {
        env.fail("could not remove trigger/ (the daemon kept recreating it faster)");
    }
    for job in ["job", "other"] {
        let dir = env.trigger_dir(job);
        env.wait_until(&format!("trigger/{job} to be recreated"), || {
            fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir())
        });
    }
    good_run(&env, "job", "after");
    good_run(&env, "other", "other-after");
    daemon.assert_alive(&env);
}

// ----- path-like job names --------------------------------------------------

#[test]
fn job_named_dot_dot_slash_is_refused() {
    let env = TestEnv::new(json!({
        "jobs": {
            "../x": { "command": sh("echo escaped > \"$RUN_DIR/escaped\"") },
            "ok": { "command": sh("echo ok") },
        }
    }));
    let before = tree(&env.root);
    let config_dir = env.config_dir.display().to_string();

    let check = env.run_cli(&["config", "check", "-c", &config_dir]);
    assert_eq!(
        check.status.code(),
        Some(1),
        "config check must exit 1\nstdout:\n{}\nstderr:\n{}",
        check.stdout,
        check.stderr
    );
    assert!(
        check.stderr.contains("../x"),
        "config check must name the job \"../x\":\n{}",
        check.stderr
    );

    let daemon = env.run_cli(&["daemon", "-c", &config_dir]);
    assert_eq!(
        daemon.status.code(),
        Some(1),
        "the daemon must refuse to start\nstdout:\n{}\nstderr:\n{}",
        daemon.stdout,
        daemon.stderr
    );
    assert!(
        daemon.stderr.contains("../x"),
        "the daemon must say which job is wrong:\n{}",
        daemon.stderr
    );
    for out in [&check, &daemon] {
        for bad in ["panicked", "stack backtrace"] {
            assert!(!out.stderr.contains(bad), "panic:\n{}", out.stderr);
        }
    }
    let outside = new_outside_data_dir(&env, &before);
    assert!(
        outside.is_empty(),
        "files appeared outside the data dir: {outside:?}"
    );
    for p in [env.root.join("x"), env.data_dir.join("x")] {
        assert!(
            fs::symlink_metadata(&p).is_err(),
            "{} was created",
            p.display()
        );
    }
}

// ----- file modes -----------------------------------------------------------

#[test]
fn run_files_and_database_keep_other_users_out_even_with_umask_000() {
    let env = TestEnv::new(jobs(&["job"]));
    let mut daemon = env.start_daemon_with_umask(0o000);
    let run = env.trigger_json(
        "job",
        "t.json",
        &json!({ "marker": "m", "environment": { "SECRET": "hunter2" } }),
    );
    env.wait_consumed(&run);
    let run = env.wait_runs("job", 1).remove(0);
    let mode = |p: &Path| -> u32 {
        fs::symlink_metadata(p)
            .unwrap_or_else(|e| env.fail(&format!("cannot stat {}: {e}", p.display())))
            .permissions()
            .mode()
            & 0o7777
    };
    let run_dir = env.run_dir("job", &run.run_id);
    let mut bad = Vec::new();
    for p in [
        env.data_dir.join("runs"),
        env.data_dir.join("runs").join("job"),
        run_dir.clone(),
        run_dir.join("output.txt"),
    ] {
        if mode(&p) & 0o002 != 0 {
            bad.push(format!(
                "{} is world-writable ({:o})",
                p.display(),
                mode(&p)
            ));
        }
    }
    let spec = run_dir.join(".dsari-run.json");
    let spec_text = fs::read_to_string(&spec).unwrap_or_default();
    assert!(
        spec_text.contains("hunter2"),
        "{} should hold the run's environment",
        spec.display()
    );
    if mode(&spec) != 0o600 {
        bad.push(format!(
            "{} (holds the environment) has mode {:o}, want 600",
            spec.display(),
            mode(&spec)
        ));
    }
    for suffix in ["", "-wal", "-shm"] {
        let p = PathBuf::from(format!("{}{suffix}", env.db_path().display()));
        if p.exists() && mode(&p) & 0o002 != 0 {
            bad.push(format!(
                "{} is world-writable ({:o})",
                p.display(),
                mode(&p)
            ));
        }
    }
    if !bad.is_empty() {
        env.fail(&format!("under umask 000:\n{}", bad.join("\n")));
    }
    // The daemon still works.
    let mut f = fs::File::create(env.trigger_dir("job").join("touch.json")).unwrap();
    f.flush().unwrap();
    drop(f);
    env.wait_runs("job", 2);
    daemon.assert_alive(&env);
}

/// Out of inotify watches (fs.inotify.max_user_watches, simulated in debug
/// builds so no global kernel setting changes): said once, and the jobs that
/// could not be watched still get their triggers through rescans.
#[test]
fn out_of_inotify_watches_falls_back_to_rescans() {
    let env = TestEnv::new(json!({
        "jobs": {
            "a": { "command": sh("echo a") },
            "b": { "command": sh("echo b") },
            "c": { "command": sh("echo c") },
        }
    }));
    let daemon = env.start_daemon_with(&[], &[("DSARI_TEST_MAX_WATCHES", "1")]);
    // "a" (first by name) is watched: its trigger runs on the event alone.
    env.trigger_json("a", "t.json", &json!({}));
    env.wait_runs("a", 1);
    // "b" and "c" are not: a rescan (SIGUSR1 here, every 60 s otherwise) finds them.
    env.trigger_json("b", "t.json", &json!({}));
    env.trigger_json("c", "t.json", &json!({}));
    daemon.signal(nix::sys::signal::Signal::SIGUSR1);
    env.wait_runs("b", 1);
    env.wait_runs("c", 1);
    let complaints = env
        .log()
        .lines()
        .filter(|l| l.contains("cannot watch"))
        .count();
    assert_eq!(complaints, 1, "the limit is logged once:\n{}", env.log());
    // Later rescans do not repeat it.
    daemon.signal(nix::sys::signal::Signal::SIGUSR1);
    env.trigger_json("c", "t2.json", &json!({}));
    daemon.signal(nix::sys::signal::Signal::SIGUSR1);
    env.wait_runs("c", 2);
    let complaints = env
        .log()
        .lines()
        .filter(|l| l.contains("cannot watch"))
        .count();
    assert_eq!(complaints, 1, "{}", env.log());
}

#[test]
fn run_dir_that_cannot_be_created_fails_the_run_not_the_daemon() {
    // The supervisor creates the run dir; here `runs/job` is a regular file,
    // so it cannot. The run is recorded as failed with an error naming the
    // directory, the daemon lives on, and once the file is gone runs work.
    let env = TestEnv::new(jobs(&["job"]));
    fs::create_dir_all(env.data_dir.join("runs")).unwrap_or_else(|e| env.fail(&e.to_string()));
    let blocker = env.data_dir.join("runs").join("job");
    fs::write(&blocker, "not a directory").unwrap_or_else(|e| env.fail(&e.to_string()));
    let mut daemon = env.start_daemon();
    env.trigger_json("job", "bad.json", &json!({ "marker": "bad" }));
    let run = env.wait_for("the failed run", || {
        env.try_runs()
            .ok()?
            .into_iter()
            .find(|r| r.marker() == Some("bad"))
    });
    assert_eq!(run.exit_code, -1, "{:?}", run.run_data);
    let error = run
        .run_data
        .get("error")
        .and_then(Value::as_str)
        .unwrap_or("");
    let dir = env.run_dir("job", &run.run_id);
    assert!(
        error.contains("cannot create the run directory")
            && error.contains(&*dir.to_string_lossy()),
        "run_data.error should name the run directory {}: {:?}",
        dir.display(),
        run.run_data
    );
    assert!(
        run.run_data.get("lost").is_none(),
        "a run that could not start is not lost: {:?}",
        run.run_data
    );
    daemon.assert_alive(&env);
    fs::remove_file(&blocker).unwrap_or_else(|e| env.fail(&e.to_string()));
    good_run(&env, "job", "good");
    daemon.assert_alive(&env);
}
