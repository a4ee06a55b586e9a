//! A full disk (SPEC §11.2, issue "Nothing lost"): the data dir on a small
//! tmpfs that the test fills. A run whose output cannot be written is still
//! recorded; a database that cannot be written keeps finished and pending runs
//! waiting (logged once) and records them when space comes back.
//!
//! Mounting needs root (as in CI and on the development machines); without it
//! the tests say so on stderr and check nothing.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use serde_json::json;

/// A tmpfs mounted on a directory for the life of the value.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(dir: &Path, size: &str) -> Option<SmallDisk> {
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(dir)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("cannot mount a tmpfs (not root?): full-disk behaviour not checked here");
        }
        ok.then(|| SmallDisk(dir.to_path_buf()))
    }

    /// Fill what is left with one file; returns its path.
    fn fill(&self) -> PathBuf {
        let filler = self.0.join("filler");
        let _ = Command::new("/bin/sh")
            .arg("-c")
            .arg(format!(
                "head -c 100000000 /dev/zero > '{}' 2>/dev/null",
                filler.display()
            ))
            .status();
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_run_whose_output_cannot_be_written_is_still_recorded() {
    let env = TestEnv::new(json!({
        "jobs": {
            "big": { "command": sh("head -c 8000000 /dev/zero") },
            "small": { "command": sh("echo fine") },
        }
    }));
    // Only the run dirs are on the small disk; the database is not.
    let runs_dir = env.data_dir.join("runs");
    std::fs::create_dir_all(&runs_dir).unwrap();
    let Some(_disk) = SmallDisk::mount(&runs_dir, "2m") else {
        return;
    };
    let mut daemon = env.start_daemon();
    env.trigger_json("big", "t.json", &json!({}));
    let runs = env.wait_runs("big", 1);
    assert_eq!(
        runs[0].exit_code, 1,
        "head fails writing to the full disk and exits 1; that exit code is recorded \
         (the supervisor reserved room for the status)"
    );
    assert!(
        runs[0].run_data.get("lost").is_none(),
        "{:?}",
        runs[0].run_data
    );
    daemon.assert_alive(&env);

    // Space comes back: the next run works as usual.
    std::fs::remove_file(env.output_path("big", &runs[0].run_id)).unwrap();
    env.trigger_json("small", "t.json", &json!({}));
    let small = env.wait_runs("small", 1);
    assert_eq!(small[0].exit_code, 0);
    assert_eq!(env.output(&small[0]), "fine\n");
}

#[test]
fn a_full_database_disk_delays_runs_but_loses_none() {
    let env = TestEnv::new(json!({}));
    let db_dir = env.data_dir.join("db");
    std::fs::create_dir_all(&db_dir).unwrap();
    let db_file = db_dir.join("dsari.sqlite3");
    env.write_config(json!({
        "database": { "file": db_file },
        "jobs": { "job": { "command": sh("echo \"ran $MARK\""), "concurrent_runs": true } }
    }));
    let Some(disk) = SmallDisk::mount(&db_dir, "2m") else {
        return;
    };
    let finished = || -> Vec<(String, i64)> {
        let Ok(conn) = rusqlite::Connection::open_with_flags(
            &db_file,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        ) else {
            return vec![];
        };
        let Ok(mut stmt) = conn.prepare(
            "SELECT json_extract(trigger_data, '$.environment.MARK'), exit_code FROM runs",
        ) else {
            return vec![];
        };
        stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
            .map(|rows| rows.flatten().collect())
            .unwrap_or_default()
    };
    let mut daemon = env.start_daemon();
    // One run first, so that the database has its tables and pages.
    env.trigger_json(
        "job",
        "first.json",
        &json!({"environment": {"MARK": "first"}}),
    );
    env.wait_until("the first run", || finished().len() == 1);

    let filler = disk.fill();
    let before = env.log_len();
    for i in 0..3 {
        env.trigger_json(
            "job",
            &format!("t{i}.json"),
            &json!({"environment": {"MARK": format!("m{i}")}}),
        );
    }
    // The daemon notices it cannot write and says so.
    env.wait_until("the database failure to be logged", || {
        env.log_since(before).contains("ERROR")
    });
    daemon.assert_alive(&env);

    std::fs::remove_file(&filler).unwrap();
    env.wait_until("all four runs recorded", || finished().len() == 4);
    let mut marks: Vec<(String, i64)> = finished();
    marks.sort();
    assert_eq!(
        marks,
        [
            ("first".to_string(), 0),
            ("m0".to_string(), 0),
            ("m1".to_string(), 0),
            ("m2".to_string(), 0)
        ],
        "each trigger ran exactly once"
    );
    let complaints = env
        .log_since(before)
        .lines()
        .filter(|l| l.contains("ERROR"))
        .count();
    assert!(
        complaints <= 3,
        "the failure is logged once, not once per retry:\n{}",
        env.log_since(before)
    );
    daemon.assert_alive(&env);
}
