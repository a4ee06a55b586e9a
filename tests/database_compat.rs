//! The database is shared with the Python dsari in both directions (SPEC §3):
//! a file it made opens without losing a row, and a file we made reads the
//! way the Python dsari reads it (dsari/database.py, SQLite3Database).

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use nix::sys::signal::Signal;
use rusqlite::Connection;
use serde_json::json;

/// The CREATE TABLE statements of the Python dsari's SQLite3Database,
/// verbatim (it makes no indexes and keeps the default journal mode).
const PY_CREATE_RUNS: &str = "
                CREATE TABLE runs (
                    job_name text,
                    run_id text,
                    schedule_time real,
                    start_time real,
                    stop_time real,
                    exit_code integer,
                    trigger_type text,
                    trigger_data text,
                    run_data text
                )
            ";
const PY_CREATE_RUNS_RUNNING: &str = "
                CREATE TABLE runs_running (
                    job_name text,
                    run_id text,
                    schedule_time real,
                    start_time real,
                    trigger_type text,
                    trigger_data text,
                    run_data text
                )
            ";

/// Its INSERT (BaseSQLDatabase.insert_run with placeholder "?").
const PY_INSERT_RUN: &str = "
            INSERT INTO runs (
                job_name,
                run_id,
                schedule_time,
                start_time,
                stop_time,
                exit_code,
                trigger_type,
                trigger_data,
                run_data
            ) VALUES (
                ?, ?, ?, ?, ?, ?, ?, ?, ?
            )
        ";

/// Its three SELECTs of get_previous_runs (latest, latest good, latest bad).
const PY_PREVIOUS: [&str; 3] = [
    "SELECT run_id, schedule_time, start_time, stop_time, exit_code, trigger_type, \
     trigger_data, run_data FROM runs WHERE job_name = ? ORDER BY stop_time DESC",
    "SELECT run_id, schedule_time, start_time, stop_time, exit_code, trigger_type, \
     trigger_data, run_data FROM runs WHERE job_name = ? AND exit_code = 0 ORDER BY stop_time DESC",
    "SELECT run_id, schedule_time, start_time, stop_time, exit_code, trigger_type, \
     trigger_data, run_data FROM runs WHERE job_name = ? AND exit_code != 0 ORDER BY stop_time DESC",
];

/// A row as the Python dsari writes it: times are floats from
/// `datetime.timestamp()`, trigger_data/run_data are `json.dumps` text.
struct PyRow {
    job_name: &'static str,
    run_id: &'static str,
    schedule_time: f64,
    start_time: f64,
    stop_time: f64,
    exit_code: i64,
    trigger_type: &'static str,
    trigger_data: &'static str,
    run_data: &'static str,
}

const OLD_ROWS: [PyRow; 4] = [
    PyRow {
        job_name: "job",
        run_id: "0b6f3a4e-2a1c-4d2e-9f3b-5c1d2e3f4a5b",
        schedule_time: 1_600_000_000.123_456,
        start_time: 1_600_000_000.234_567,
        stop_time: 1_600_000_010.345_678,
        exit_code: 0,
        trigger_type: "schedule",
        trigger_data: "{}",
        run_data: "{}",
    },
    PyRow {
        job_name: "job",
        run_id: "1c7e4b5f-3b2d-4e3f-8a4c-6d2e3f4a5b6c",
        schedule_time: 1_600_000_100.5,
        start_time: 1_600_000_100.75,
        stop_time: 1_600_000_160.0,
        exit_code: 2,
        trigger_type: "file",
        trigger_data: "{\"environment\": {\"FOO\": \"bar\"}}",
        run_data: "{\"return_data\": {\"x\": 1}}",
    },
    PyRow {
        job_name: "job",
        run_id: "2d8f5c6a-4c3e-4f4a-9b5d-7e3f4a5b6c7d",
        schedule_time: 1_600_000_200.0,
        start_time: 1_600_000_200.25,
        stop_time: 1_600_000_230.5,
        exit_code: 0,
        trigger_type: "file",
        trigger_data: "{}",
        run_data: "{}",
    },
    PyRow {
        job_name: "gone-job",
        run_id: "3e9a6d7b-5d4f-4a5b-8c6e-8f4a5b6c7d8e",
        schedule_time: 1_500_000_000.0,
        start_time: 1_500_000_001.0,
        stop_time: 1_500_000_002.0,
        exit_code: 1,
        trigger_type: "schedule",
        trigger_data: "{}",
        run_data: "{}",
    },
];

/// Create a database exactly as the Python dsari does and fill in OLD_ROWS.
fn make_python_database(path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let conn = Connection::open(path).unwrap();
    conn.execute_batch(PY_CREATE_RUNS).unwrap();
    conn.execute_batch(PY_CREATE_RUNS_RUNNING).unwrap();
    for r in &OLD_ROWS {
        conn.execute(
            PY_INSERT_RUN,
            rusqlite::params![
                r.job_name,
                r.run_id,
                r.schedule_time,
                r.start_time,
                r.stop_time,
                r.exit_code,
                r.trigger_type,
                r.trigger_data,
                r.run_data
            ],
        )
        .unwrap();
    }
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        mode, "delete",
        "the Python dsari leaves the default journal mode"
    );
}

/// Every column of a `runs` row (exact value, shown with `{:?}`) with its
/// storage class.
fn raw_row(conn: &Connection, run_id: &str) -> Option<Vec<(String, String)>> {
    conn.query_row(
        "SELECT job_name, typeof(job_name), run_id, typeof(run_id), \
         schedule_time, typeof(schedule_time), start_time, typeof(start_time), \
         stop_time, typeof(stop_time), exit_code, typeof(exit_code), \
         trigger_type, typeof(trigger_type), trigger_data, typeof(trigger_data), \
         run_data, typeof(run_data) FROM runs WHERE run_id = ?",
        [run_id],
        |row| {
            (0..9)
                .map(|i| {
                    let value: rusqlite::types::Value = row.get(2 * i)?;
                    Ok((format!("{value:?}"), row.get::<_, String>(2 * i + 1)?))
                })
                .collect()
        },
    )
    .ok()
}

fn table_sql(conn: &Connection, table: &str) -> String {
    conn.query_row(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?",
        [table],
        |r| r.get(0),
    )
    .unwrap_or_else(|e| panic!("no table {table}: {e}"))
}

/// A database made by the Python dsari keeps every row unchanged, and the new
/// run is added (and sees the old runs as its previous runs).
fn python_database_is_adopted(env: &TestEnv, db: &Path) {
    let before_conn = open_db_read_only(db).unwrap();
    let before: Vec<_> = OLD_ROWS
        .iter()
        .map(|r| raw_row(&before_conn, r.run_id).expect("old row"))
        .collect();
    drop(before_conn);

    let mut daemon = env.start_daemon();
    env.trigger_json("job", "trigger.json", &json!({ "marker": "new" }));
    let new = env.wait_for("the new run in the Python-made database", || {
        let conn = open_db_read_only(db).ok()?;
        read_runs(&conn)
            .ok()?
            .into_iter()
            .find(|r| r.marker() == Some("new"))
    });
    daemon.signal(Signal::SIGTERM);
    assert_eq!(daemon.wait_exit(env).code(), Some(0));

    let conn = open_db_read_only(db).unwrap();
    for (r, want) in OLD_ROWS.iter().zip(&before) {
        match raw_row(&conn, r.run_id) {
            Some(got) if &got == want => {}
            got => env.fail(&format!(
                "old row {} changed or lost:\nbefore {want:?}\nafter  {got:?}",
                r.run_id
            )),
        }
    }
    let total: i64 = conn
        .query_row("SELECT count(*) FROM runs", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        total,
        OLD_ROWS.len() as i64 + 1,
        "want the old rows plus the new run"
    );
    assert_eq!(
        table_sql(&conn, "runs").trim(),
        PY_CREATE_RUNS.trim(),
        "table runs was altered"
    );
    assert_eq!(
        table_sql(&conn, "runs_running").trim(),
        PY_CREATE_RUNS_RUNNING.trim(),
        "table runs_running was altered"
    );

    // The new run saw the old rows: latest by stop_time, latest good, latest bad.
    let vars = env.env_of(&new);
    let get = |k: &str| vars.get(k).map(String::as_str);
    assert_eq!(
        get("PREVIOUS_RUN_ID"),
        Some(OLD_ROWS[2].run_id),
        "env: {vars:?}"
    );
    assert_eq!(
        get("PREVIOUS_GOOD_RUN_ID"),
        Some(OLD_ROWS[2].run_id),
        "env: {vars:?}"
    );
    assert_eq!(
        get("PREVIOUS_BAD_RUN_ID"),
        Some(OLD_ROWS[1].run_id),
        "env: {vars:?}"
    );
    assert_eq!(get("PREVIOUS_BAD_EXIT_CODE"), Some("2"), "env: {vars:?}");
    assert_time_eq(
        env,
        "PREVIOUS_STOP_TIME",
        env_time(env, &vars, "PREVIOUS_STOP_TIME"),
        OLD_ROWS[2].stop_time,
        1e-3,
    );
}

#[test]
fn python_made_database_in_data_dir_keeps_its_rows() {
    let env = TestEnv::new(json!({ "jobs": { "job": { "command": sh("env") } } }));
    make_python_database(&env.db_path());
    python_database_is_adopted(&env, &env.db_path());
}

#[test]
fn database_file_setting_points_at_a_python_made_database() {
    let env = TestEnv::new(json!({}));
    let db = env.root.join("elsewhere").join("old-dsari.sqlite3");
    make_python_database(&db);
    env.write_config(json!({
        "database": { "type": "sqlite3", "file": db.display().to_string() },
        "jobs": { "job": { "command": sh("env") } },
    }));
    python_database_is_adopted(&env, &db);
    assert!(
        !env.db_path().exists(),
        "with database.file set, {} must not be created",
        env.db_path().display()
    );
}

#[test]
fn our_database_reads_like_the_python_dsari_reads_it() {
    let env = TestEnv::new(json!({ "jobs": { "job": {
        "command": sh("echo '{\"r\": 1}' > return_data.json; exit \"${CODE:-0}\""),
    } } }));
    let mut daemon = env.start_daemon();
    env.trigger_json(
        "job",
        "good.json",
        &json!({ "marker": "good", "environment": { "CODE": "0" } }),
    );
    let good = env.wait_runs("job", 1).remove(0);
    env.trigger_json(
        "job",
        "bad.json",
        &json!({ "marker": "bad", "environment": { "CODE": "2" } }),
    );
    let bad = env.wait_runs("job", 2).remove(1);
    assert_eq!((good.exit_code, bad.exit_code), (0, 2));

    let conn = open_db_read_only(&env.db_path()).unwrap();

    // The tables exist the way populate_schema looks for them, with the
    // columns and declared types of the Python schema.
    let want_runs = [
        ("job_name", "text"),
        ("run_id", "text"),
        ("schedule_time", "real"),
        ("start_time", "real"),
        ("stop_time", "real"),
        ("exit_code", "integer"),
        ("trigger_type", "text"),
        ("trigger_data", "text"),
        ("run_data", "text"),
    ];
    let want_running: Vec<_> = want_runs
        .iter()
        .filter(|(c, _)| *c != "stop_time" && *c != "exit_code")
        .copied()
        .collect();
    for (table, want) in [("runs", want_runs.to_vec()), ("runs_running", want_running)] {
        let found: Option<String> = conn
            .query_row(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name = ?",
                [table],
                |r| r.get(0),
            )
            .ok();
        assert_eq!(found.as_deref(), Some(table), "table {table} missing");
        let mut stmt = conn
            .prepare(&format!("PRAGMA table_info({table})"))
            .unwrap();
        let cols: Vec<(String, String)> = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?.to_lowercase(),
                ))
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(c, t)| (c.to_string(), t.to_string()))
            .collect();
        assert_eq!(cols, want, "columns of {table}");
    }

    // Storage classes as the Python dsari writes them.
    for run in [&good, &bad] {
        let row = raw_row(&conn, &run.run_id).expect("row");
        let types: Vec<&str> = row.iter().map(|(_, t)| t.as_str()).collect();
        assert_eq!(
            types,
            [
                "text", "text", "real", "real", "real", "integer", "text", "text", "text"
            ],
            "storage classes of run {}: {row:?}",
            run.run_id
        );
    }

    // get_previous_runs: latest, latest good, latest bad (first row of each).
    let first_id = |sql: &str| -> Option<String> {
        conn.query_row(sql, ["job"], |r| r.get::<_, String>(0)).ok()
    };
    assert_eq!(
        first_id(PY_PREVIOUS[0]),
        Some(bad.run_id.clone()),
        "previous run"
    );
    assert_eq!(
        first_id(PY_PREVIOUS[1]),
        Some(good.run_id.clone()),
        "previous good run"
    );
    assert_eq!(
        first_id(PY_PREVIOUS[2]),
        Some(bad.run_id.clone()),
        "previous bad run"
    );

    // get_runs: SELECT * ... WHERE job_name in (?) / run_id in (?); the JSON
    // columns load as objects.
    let stmt = conn
        .prepare("SELECT * FROM runs WHERE job_name in (?)")
        .unwrap();
    let names: Vec<String> = stmt.column_names().map(String::from).collect();
    for col in [
        "job_name",
        "run_id",
        "schedule_time",
        "start_time",
        "stop_time",
        "exit_code",
        "trigger_type",
        "trigger_data",
        "run_data",
    ] {
        assert!(
            names.iter().any(|n| n == col),
            "SELECT * has no column {col}: {names:?}"
        );
    }
    let by_job = read_runs(&conn).unwrap();
    assert_eq!(by_job.len(), 2);
    let n: i64 = conn
        .query_row(
            "SELECT count(*) FROM runs WHERE run_id in (?, ?)",
            [&good.run_id, &bad.run_id],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 2, "lookup by run_id");
    assert_eq!(good.run_data["return_data"], json!({ "r": 1 }));
    drop(stmt);
    drop(conn);

    python_reads(&env, &good, &bad);

    daemon.signal(Signal::SIGTERM);
    assert_eq!(daemon.wait_exit(&env).code(), Some(0));
}

/// The same reads done by python3's sqlite3 module, the way dsari/database.py
/// does them; skipped (with a note) when python3 is not available.
fn python_reads(env: &TestEnv, good: &Run, bad: &Run) {
    let available = Command::new("python3")
        .args(["-c", "import sqlite3, json"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !available {
        eprintln!("python3 with sqlite3 not available: skipping the Python read-back");
        return;
    }
    const SCRIPT: &str = r#"
import datetime, json, sqlite3, sys

db = sqlite3.connect(sys.argv[1])
db.row_factory = sqlite3.Row
for table in ("runs", "runs_running"):
    cur = db.cursor()
    cur.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name = ?", (table,))
    assert cur.fetchone(), "no table " + table

def build(f):
    # dsari.database.BaseSQLDatabase._build_run_from_result
    run = {"run_id": f["run_id"]}
    for k in ("schedule_time", "start_time", "stop_time"):
        if k not in f.keys():
            continue
        if type(f[k]) in (int, float):
            run[k] = datetime.datetime.fromtimestamp(f[k]).astimezone().timestamp()
        else:
            raise SystemExit("%s is %r, not a number" % (k, f[k]))
    if "exit_code" in f.keys():
        if type(f["exit_code"]) is not int:
            raise SystemExit("exit_code is %r, not an int" % (f["exit_code"],))
        run["exit_code"] = f["exit_code"]
    run["trigger_type"] = f["trigger_type"]
    for k in ("trigger_data", "run_data"):
        v = json.loads(f[k])
        if type(v) is not dict:
            raise SystemExit("%s is not a JSON object: %r" % (k, f[k]))
        run[k] = v
    return run

previous = []
for extra in ("", "AND exit_code = 0", "AND exit_code != 0"):
    cur = db.cursor()
    cur.execute(
        "SELECT run_id, schedule_time, start_time, stop_time, exit_code, trigger_type, "
        "trigger_data, run_data FROM runs WHERE job_name = ? " + extra + " ORDER BY stop_time DESC",
        (sys.argv[2],),
    )
    f = cur.fetchone()
    previous.append(build(f)["run_id"] if f else None)

cur = db.cursor()
cur.execute("SELECT * FROM runs WHERE job_name in (?)", (sys.argv[2],))
runs = [build(f) for f in cur]
print(json.dumps({"previous": previous, "runs": runs}))
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(SCRIPT)
        .arg(env.db_path())
        .arg("job")
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        env.fail(&format!(
            "the Python-style read failed:\nstdout:\n{stdout}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("python output is JSON");
    assert_eq!(
        v["previous"],
        json!([bad.run_id, good.run_id, bad.run_id]),
        "get_previous_runs as Python does it"
    );
    let runs = v["runs"].as_array().expect("runs list");
    assert_eq!(runs.len(), 2, "get_runs as Python does it: {v}");
    for run in [good, bad] {
        let py = runs
            .iter()
            .find(|r| r["run_id"] == run.run_id.as_str())
            .unwrap_or_else(|| env.fail(&format!("Python did not read run {}", run.run_id)));
        assert_eq!(py["exit_code"], run.exit_code);
        assert_eq!(py["trigger_type"], "file");
        assert_eq!(py["trigger_data"], run.trigger_data);
        assert_eq!(py["run_data"], run.run_data);
        for (k, want) in [
            ("schedule_time", run.schedule_time),
            ("start_time", run.start_time),
            ("stop_time", run.stop_time),
        ] {
            let got = py[k].as_f64().unwrap_or(f64::NAN);
            assert_time_eq(env, &format!("Python's {k}"), got, want, 1e-3);
        }
    }
}
