//! The database: the Python dsari's two tables plus this project's own queue.
//!
//! Owns every SQL statement. `runs` and `runs_running` keep exactly the Python
//! dsari's column names and types (SPEC §3); everything this project adds is
//! additive: indexes, WAL, and the `dsari_pending` table of pending runs. A run
//! moves from `runs_running` to `runs` in one transaction, so no reader ever
//! sees it in both tables or in neither.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, config::DbConfig, params};
use serde_json::Value;

/// How long a statement waits for another writer before failing with "busy".
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors from the database, with the file they are about.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {path}: {source}")]
    Sqlite {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("database {path}: cannot create its directory: {source}")]
    Dir {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// A run as recorded in `runs` (finished) or `runs_running` (no stop time or exit code).
#[derive(Debug, Clone, PartialEq)]
pub struct RunRecord {
    pub job_name: String,
    pub run_id: String,
    pub schedule_time: f64,
    pub start_time: f64,
    pub stop_time: Option<f64>,
    pub exit_code: Option<i64>,
    pub trigger_type: String,
    pub trigger_data: Value,
    pub run_data: Value,
}

/// A run that is due or waiting to start, kept across restarts.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingRecord {
    pub run_id: String,
    pub job_name: String,
    pub schedule_time: f64,
    pub trigger_type: String,
    pub trigger_data: Value,
    pub run_data: Value,
}

/// The latest finished run, the latest with exit 0 and the latest with a non-zero exit.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PreviousRuns {
    pub any: Option<PreviousRun>,
    pub good: Option<PreviousRun>,
    pub bad: Option<PreviousRun>,
}

/// What a run's PREVIOUS_* variables tell of an earlier run (not its JSON
/// columns, which would be parsed and kept for nothing).
#[derive(Debug, Clone, PartialEq)]
pub struct PreviousRun {
    pub run_id: String,
    pub schedule_time: f64,
    pub start_time: f64,
    pub stop_time: Option<f64>,
    pub exit_code: Option<i64>,
}

impl From<&RunRecord> for PreviousRun {
    fn from(r: &RunRecord) -> PreviousRun {
        PreviousRun {
            run_id: r.run_id.clone(),
            schedule_time: r.schedule_time,
            start_time: r.start_time,
            stop_time: r.stop_time,
            exit_code: r.exit_code,
        }
    }
}

/// The three PREVIOUS_* lookups in one statement (one read transaction), each
/// an index seek on `dsari_runs_job_stop` or `dsari_runs_job_ok_stop`.
const PREVIOUS_RUNS: &str = "\
SELECT 0, run_id, schedule_time, start_time, stop_time, exit_code FROM (SELECT * FROM runs \
  WHERE job_name = ?1 ORDER BY stop_time DESC LIMIT 1) \
UNION ALL SELECT 1, run_id, schedule_time, start_time, stop_time, exit_code FROM (SELECT * FROM runs \
  WHERE job_name = ?1 AND (exit_code = 0) = 1 ORDER BY stop_time DESC LIMIT 1) \
UNION ALL SELECT 2, run_id, schedule_time, start_time, stop_time, exit_code FROM (SELECT * FROM runs \
  WHERE job_name = ?1 AND (exit_code = 0) = 0 ORDER BY stop_time DESC LIMIT 1)";

/// One open database.
pub struct Store {
    conn: Connection,
    path: String,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS runs (
    job_name text,
    run_id text,
    schedule_time real,
    start_time real,
    stop_time real,
    exit_code integer,
    trigger_type text,
    trigger_data text,
    run_data text
);
CREATE TABLE IF NOT EXISTS runs_running (
    job_name text,
    run_id text,
    schedule_time real,
    start_time real,
    trigger_type text,
    trigger_data text,
    run_data text
);
-- 'previous run of job X' (any, good, bad) is an index lookup, at any size (SPEC §11.5).
CREATE INDEX IF NOT EXISTS dsari_runs_job_stop ON runs (job_name, stop_time);
CREATE INDEX IF NOT EXISTS dsari_runs_job_ok_stop ON runs (job_name, (exit_code = 0), stop_time);
CREATE INDEX IF NOT EXISTS dsari_runs_run_id ON runs (run_id);
CREATE INDEX IF NOT EXISTS dsari_runs_running_run_id ON runs_running (run_id);
CREATE TABLE IF NOT EXISTS dsari_pending (
    run_id text PRIMARY KEY,
    job_name text NOT NULL,
    schedule_time real NOT NULL,
    trigger_type text NOT NULL,
    trigger_data text NOT NULL,
    run_data text NOT NULL
);
-- idempotency_key of triggers (SPEC §4.2), written with the run they made.
CREATE TABLE IF NOT EXISTS dsari_idempotency (
    job_name text NOT NULL,
    key text NOT NULL,
    run_id text NOT NULL,
    seen_time real NOT NULL,
    PRIMARY KEY (job_name, key)
);
";

/// Insert or replace a pending run (parameters: [`pending_params`]).
const SAVE_PENDING: &str = "INSERT OR REPLACE INTO dsari_pending (run_id, job_name, schedule_time, \
    trigger_type, trigger_data, run_data) VALUES (?1, ?2, ?3, ?4, ?5, ?6)";

fn pending_params(p: &PendingRecord) -> (&str, &str, f64, &str, String, String) {
    (
        &p.run_id,
        &p.job_name,
        p.schedule_time,
        &p.trigger_type,
        p.trigger_data.to_string(),
        p.run_data.to_string(),
    )
}

/// Remember a trigger's `idempotency_key` with the run it made (no-op without one).
const REMEMBER_KEY: &str = "INSERT INTO dsari_idempotency (job_name, key, run_id, seen_time) \
    SELECT ?1, json_extract(?2, '$.idempotency_key'), ?3, ?4 \
    WHERE json_type(?2, '$.idempotency_key') = 'text' \
    ON CONFLICT (job_name, key) DO UPDATE SET run_id = excluded.run_id, seen_time = excluded.seen_time \
    WHERE run_id != excluded.run_id";

/// REMEMBER_KEY's own condition, checked before it runs: most runs (every
/// scheduled one) have no key, and parsing JSON in SQL was a tenth of a
/// start's database time.
fn has_idempotency_key(trigger_data: &serde_json::Value) -> bool {
    trigger_data
        .get("idempotency_key")
        .is_some_and(serde_json::Value::is_string)
}

const RUN_COLUMNS: &str = "job_name, run_id, schedule_time, start_time, stop_time, exit_code, trigger_type, trigger_data, run_data";

impl Store {
    /// Open (creating if needed) the database for the daemon: schema, WAL, busy timeout.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let display = path.display().to_string();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::os::unix::fs::DirBuilderExt::mode(
                std::fs::DirBuilder::new().recursive(true),
                0o750,
            )
            .create(dir)
            .map_err(|source| StoreError::Dir {
                path: display.clone(),
                source,
            })?;
        }
        // A new database file is created readable by the owner and group only;
        // SQLite gives its -wal and -shm files the same mode.
        if !path.exists() {
            use std::os::unix::fs::OpenOptionsExt;
            let _ = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o640)
                .open(path);
        }
        let conn = Connection::open(path).map_err(sqlite_error(&display))?;
        let store = Store {
            conn,
            path: display,
        };
        store.setup()?;
        Ok(store)
    }

    /// Open an existing database read-only (for reading commands: they never write).
    pub fn open_read_only(path: &Path) -> Result<Store, StoreError> {
        let display = path.display().to_string();
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sqlite_error(&display))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(sqlite_error(&display))?;
        Ok(Store {
            conn,
            path: display,
        })
    }

    fn setup(&self) -> Result<(), StoreError> {
        self.conn
            .busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| self.err(e))?;
        // One plan per statement, whatever is bound: without this, SQLite
        // 3.54 compiles `WHERE job_name = ?1 ORDER BY ...` again at every new
        // job name, which was an eighth of the daemon's CPU per run.
        self.conn
            .set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)
            .map_err(|e| self.err(e))?;
        // Every statement the daemon runs stays prepared (rusqlite keeps 16).
        self.conn.set_prepared_statement_cache_capacity(64);
        // WAL: readers (other dsari commands, sqlite3, the Python tools) never block the daemon.
        let _mode: String = self
            .conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        // NORMAL is durable across a process crash in WAL mode; a power loss may
        // lose the last transactions but never corrupts the file.
        self.conn
            .execute_batch("PRAGMA synchronous = NORMAL;")
            .map_err(|e| self.err(e))?;
        self.conn.execute_batch(SCHEMA).map_err(|e| self.err(e))?;
        Ok(())
    }

    fn err(&self, source: rusqlite::Error) -> StoreError {
        sqlite_error(&self.path)(source)
    }

    /// Run `f` in one write transaction (`BEGIN IMMEDIATE`: the write lock is
    /// taken first), committed if it succeeds, else rolled back. The daemon
    /// writes twice per run; the `BEGIN` and `COMMIT` statements are prepared
    /// once, not parsed at each transaction as `Connection::transaction` does.
    fn write<T>(
        &mut self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let conn = &self.conn;
        let run = || -> rusqlite::Result<T> {
            conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
            let done = f(conn).and_then(|v| {
                conn.prepare_cached("COMMIT")?.execute([])?;
                Ok(v)
            });
            if done.is_err() && !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
            done
        };
        run().map_err(|e| self.err(e))
    }

    /// The database file, for messages.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The latest, latest good and latest bad finished run of a job.
    pub fn previous_runs(&self, job_name: &str) -> Result<PreviousRuns, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(PREVIOUS_RUNS)
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([job_name], |r| {
                let run = PreviousRun {
                    run_id: r.get(1)?,
                    schedule_time: real_column(r, 2)?,
                    start_time: real_column(r, 3)?,
                    stop_time: r.get(4)?,
                    exit_code: r.get(5)?,
                };
                Ok((r.get::<_, i64>(0)?, run))
            })
            .map_err(|e| self.err(e))?;
        let mut previous = PreviousRuns::default();
        for row in rows {
            let (which, run) = row.map_err(|e| self.err(e))?;
            let slot = match which {
                0 => &mut previous.any,
                1 => &mut previous.good,
                _ => &mut previous.bad,
            };
            *slot = Some(run);
        }
        Ok(previous)
    }

    /// [`Store::previous_runs`] of several jobs, in one read transaction.
    pub fn previous_runs_many(&self, jobs: &[&str]) -> Vec<Result<PreviousRuns, StoreError>> {
        let run = |sql: &str| {
            self.conn
                .prepare_cached(sql)
                .and_then(|mut s| s.execute([]))
                .is_ok()
        };
        let batch = jobs.len() > 1 && self.conn.is_autocommit() && run("BEGIN");
        let found = jobs.iter().map(|job| self.previous_runs(job)).collect();
        if batch && !run("COMMIT") {
            run("ROLLBACK");
        }
        found
    }

    /// Record started runs in `runs_running` and drop their pending rows (plus the
    /// rows of pending runs they replaced), all in one transaction. Sets each
    /// run's `start_time` to the moment the transaction got the write lock.
    pub fn start_runs(
        &mut self,
        runs: &mut [RunRecord],
        obsolete: &[String],
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            // The start time is taken once the write lock is held: a run whose start
            // waited for a busy database starts (and says it started) now, not then.
            let start_time = crate::time::now();
            for run in runs.iter_mut() {
                run.start_time = start_time;
            }
            let mut delete = tx.prepare_cached("DELETE FROM dsari_pending WHERE run_id = ?1")?;
            for id in obsolete {
                delete.execute([id])?;
            }
            let mut insert = tx.prepare_cached(
                "INSERT INTO runs_running (job_name, run_id, schedule_time, start_time, \
                 trigger_type, trigger_data, run_data) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            let mut remember = tx.prepare_cached(REMEMBER_KEY)?;
            for run in runs.iter() {
                delete.execute([&run.run_id])?;
                let trigger_data = run.trigger_data.to_string();
                if has_idempotency_key(&run.trigger_data) {
                    remember.execute(params![
                        run.job_name,
                        trigger_data,
                        run.run_id,
                        run.start_time
                    ])?;
                }
                insert.execute(params![
                    run.job_name,
                    run.run_id,
                    run.schedule_time,
                    run.start_time,
                    run.trigger_type,
                    trigger_data,
                    run.run_data.to_string(),
                ])?;
            }
            Ok(())
        })
    }

    /// Record one started run (see [`Store::start_runs`]).
    pub fn start_run(&mut self, run: &mut RunRecord) -> Result<(), StoreError> {
        self.start_runs(std::slice::from_mut(run), &[])
    }

    /// Put a run whose start was recorded but whose command never started back
    /// to pending (after a crash between the two), in one transaction.
    pub fn unstart_run(&mut self, run: &PendingRecord) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.execute("DELETE FROM runs_running WHERE run_id = ?1", [&run.run_id])?;
            tx.prepare_cached(SAVE_PENDING)?
                .execute(pending_params(run))?;
            Ok(())
        })
    }

    /// Move finished runs from `runs_running` to `runs`, in one transaction.
    pub fn finish_runs(&mut self, runs: &[RunRecord]) -> Result<(), StoreError> {
        self.write(|tx| {
            let mut insert = tx.prepare_cached(&format!(
                "INSERT INTO runs ({RUN_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
            ))?;
            let mut delete = tx.prepare_cached("DELETE FROM runs_running WHERE run_id = ?1")?;
            for run in runs {
                insert.execute(params![
                    run.job_name,
                    run.run_id,
                    run.schedule_time,
                    run.start_time,
                    run.stop_time,
                    run.exit_code,
                    run.trigger_type,
                    run.trigger_data.to_string(),
                    run.run_data.to_string(),
                ])?;
                delete.execute([&run.run_id])?;
            }
            Ok(())
        })
    }

    /// Move one finished run to `runs` (see [`Store::finish_runs`]).
    pub fn finish_run(&mut self, run: &RunRecord) -> Result<(), StoreError> {
        self.finish_runs(std::slice::from_ref(run))
    }

    /// Is this run id known anywhere (pending, running or finished)?
    pub fn run_known(&self, run_id: &str) -> Result<bool, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM dsari_pending WHERE run_id = ?1) \
                 OR EXISTS (SELECT 1 FROM runs_running WHERE run_id = ?1) \
                 OR EXISTS (SELECT 1 FROM runs WHERE run_id = ?1)",
            )
            .map_err(|e| self.err(e))?;
        stmt.query_row([run_id], |r| r.get(0))
            .map_err(|e| self.err(e))
    }

    /// The run a trigger with this `idempotency_key` made at or after `since`, if any.
    pub fn idempotency_run(
        &self,
        job_name: &str,
        key: &str,
        since: f64,
    ) -> Result<Option<String>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT run_id FROM dsari_idempotency WHERE job_name = ?1 AND key = ?2 AND seen_time >= ?3",
            )
            .map_err(|e| self.err(e))?;
        stmt.query_row(params![job_name, key, since], |r| r.get(0))
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Forget idempotency keys seen before `before`.
    pub fn prune_idempotency(&mut self, before: f64) -> Result<usize, StoreError> {
        self.conn
            .execute(
                "DELETE FROM dsari_idempotency WHERE seen_time < ?1",
                [before],
            )
            .map_err(|e| self.err(e))
    }

    /// Every row of `runs_running` (runs a previous daemon left behind).
    pub fn running_runs(&self) -> Result<Vec<RunRecord>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT job_name, run_id, schedule_time, start_time, NULL, NULL, \
                 trigger_type, trigger_data, run_data FROM runs_running",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt.query_map([], row_to_run).map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }

    /// Insert or replace pending runs and delete the rows of replaced ones, in one transaction.
    pub fn save_pending(
        &mut self,
        runs: &[PendingRecord],
        obsolete: &[String],
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            let mut delete = tx.prepare_cached("DELETE FROM dsari_pending WHERE run_id = ?1")?;
            for id in obsolete {
                delete.execute([id])?;
            }
            let mut insert = tx.prepare_cached(SAVE_PENDING)?;
            let mut remember = tx.prepare_cached(REMEMBER_KEY)?;
            let now = crate::time::now();
            for p in runs {
                if has_idempotency_key(&p.trigger_data) {
                    remember.execute(params![
                        p.job_name,
                        p.trigger_data.to_string(),
                        p.run_id,
                        now
                    ])?;
                }
                insert.execute(pending_params(p))?;
            }
            Ok(())
        })
    }

    /// Every pending run, oldest due first.
    pub fn pending_runs(&self) -> Result<Vec<PendingRecord>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT run_id, job_name, schedule_time, trigger_type, trigger_data, run_data \
                 FROM dsari_pending ORDER BY schedule_time",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(PendingRecord {
                    run_id: r.get(0)?,
                    job_name: r.get(1)?,
                    schedule_time: r.get(2)?,
                    trigger_type: r.get(3)?,
                    trigger_data: json_column(r, 4)?,
                    run_data: json_column(r, 5)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }

    /// Finished runs, newest first, optionally limited to some jobs.
    pub fn list_runs(
        &self,
        jobs: &[String],
        limit: Option<u64>,
    ) -> Result<Vec<RunRecord>, StoreError> {
        let mut sql = format!("SELECT {RUN_COLUMNS} FROM runs");
        if !jobs.is_empty() {
            let marks = vec!["?"; jobs.len()].join(", ");
            sql.push_str(&format!(" WHERE job_name IN ({marks})"));
        }
        sql.push_str(" ORDER BY stop_time DESC");
        if let Some(n) = limit {
            sql.push_str(&format!(" LIMIT {n}"));
        }
        let mut stmt = self.conn.prepare(&sql).map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(rusqlite::params_from_iter(jobs.iter()), row_to_run)
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }

    // ----- read-only queries for the command line (`dsari run …`, `job …`, `trigger --wait`)

    /// Whether the database has a table of this name (a database the Python
    /// dsari made has no `dsari_pending` until this daemon first opens it).
    pub fn has_table(&self, name: &str) -> Result<bool, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1)",
            )
            .map_err(|e| self.err(e))?;
        stmt.query_row([name], |r| r.get(0))
            .map_err(|e| self.err(e))
    }

    /// Finished runs, newest stop first: of the given jobs (all when empty) and
    /// with a run id starting with one of `run_prefixes` (all when empty).
    /// With one job and a limit this walks the `(job_name, stop_time)` index
    /// backwards and reads only the rows it returns.
    pub fn finished_runs(
        &self,
        jobs: &[String],
        run_prefixes: &[String],
        limit: Option<u64>,
    ) -> Result<Vec<RunRecord>, StoreError> {
        if let (true, true, Some(n)) = (jobs.is_empty(), run_prefixes.is_empty(), limit)
            && n <= NEWEST_BY_JOB_MAX
            && self.has_index("dsari_runs_job_stop")?
        {
            return self.newest_by_job(n);
        }
        let (filter, args) = run_filter(jobs, run_prefixes);
        let mut sql =
            format!("SELECT {RUN_COLUMNS} FROM runs{filter} ORDER BY stop_time DESC, rowid DESC");
        if let Some(n) = limit {
            sql.push_str(&format!(" LIMIT {n}"));
        }
        self.query_runs(&sql, &args)
    }

    /// Running runs (no stop time or exit code), newest start first, filtered
    /// like [`Store::finished_runs`].
    pub fn running_runs_matching(
        &self,
        jobs: &[String],
        run_prefixes: &[String],
    ) -> Result<Vec<RunRecord>, StoreError> {
        let (filter, args) = run_filter(jobs, run_prefixes);
        let sql = format!(
            "SELECT job_name, run_id, schedule_time, start_time, NULL, NULL, trigger_type, \
             trigger_data, run_data FROM runs_running{filter} ORDER BY start_time DESC, rowid DESC"
        );
        self.query_runs(&sql, &args)
    }

    /// Up to `limit` runs (finished, running, or pending when that table exists)
    /// whose id starts with `prefix`: to resolve a run id the user shortened.
    pub fn runs_with_prefix(
        &self,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<(RunState, RunRecord)>, StoreError> {
        let prefix = [prefix.to_string()];
        let mut found: Vec<(RunState, RunRecord)> = self
            .running_runs_matching(&[], &prefix)?
            .into_iter()
            .map(|r| (RunState::Running, r))
            .collect();
        let rest = limit.saturating_sub(found.len()) as u64;
        found.extend(
            self.finished_runs(&[], &prefix, Some(rest))?
                .into_iter()
                .map(|r| (RunState::Finished, r)),
        );
        if found.len() < limit && self.has_table("dsari_pending")? {
            let (filter, args) = run_filter(&[], &prefix);
            let sql = format!(
                "SELECT job_name, run_id, schedule_time, NULL, NULL, NULL, trigger_type, \
                 trigger_data, run_data FROM dsari_pending{filter} ORDER BY schedule_time"
            );
            found.extend(
                self.query_runs(&sql, &args)?
                    .into_iter()
                    .map(|r| (RunState::Pending, r)),
            );
        }
        found.truncate(limit);
        Ok(found)
    }

    /// The latest finished run of a job (by stop time), if any.
    pub fn last_run(&self, job_name: &str) -> Result<Option<RunRecord>, StoreError> {
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE job_name = ?1 ORDER BY stop_time DESC LIMIT 1"
        );
        let mut stmt = self.conn.prepare_cached(&sql).map_err(|e| self.err(e))?;
        stmt.query_row([job_name], row_to_run)
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Everything about one job that `dsari trigger --wait` and `dsari job why`
    /// look at, read in one transaction (so a run moving from `runs_running` to
    /// `runs` is seen in exactly one of them): its finished runs that stopped at
    /// or after `finished_since`, its running runs and its pending runs.
    pub fn job_activity(
        &self,
        job_name: &str,
        finished_since: f64,
    ) -> Result<JobActivity, StoreError> {
        let tx = self.conn.unchecked_transaction().map_err(|e| self.err(e))?;
        let finished = {
            let mut stmt = tx
                .prepare_cached(&format!(
                    "SELECT {RUN_COLUMNS} FROM runs WHERE job_name = ?1 AND stop_time >= ?2 \
                     ORDER BY stop_time DESC"
                ))
                .map_err(|e| self.err(e))?;
            let rows = stmt
                .query_map(params![job_name, finished_since], row_to_run)
                .map_err(|e| self.err(e))?;
            rows.collect::<Result<Vec<_>, _>>()
                .map_err(|e| self.err(e))?
        };
        let running = self.running_runs_matching(&[job_name.to_string()], &[])?;
        let pending = if self.has_table("dsari_pending")? {
            self.pending_runs()?
                .into_iter()
                .filter(|p| p.job_name == job_name)
                .collect()
        } else {
            Vec::new()
        };
        tx.commit().map_err(|e| self.err(e))?;
        Ok(JobActivity {
            finished,
            running,
            pending,
        })
    }

    /// The newest `limit` finished runs of all jobs without sorting the table:
    /// `runs` has no index on `stop_time` alone (and this project adds none to
    /// a table other tools share), but `(job_name, stop_time)` gives each job's
    /// newest runs at once. So: walk the distinct job names through the index
    /// (one seek each), take each job's newest `limit` (stop time, rowid) from
    /// the index only, keep the overall newest `limit`, and read just those rows.
    fn newest_by_job(&self, limit: u64) -> Result<Vec<RunRecord>, StoreError> {
        let jobs: Vec<String> = {
            let mut stmt = self
                .conn
                .prepare_cached(
                    "WITH RECURSIVE j(name) AS ( \
                       SELECT (SELECT min(job_name) FROM runs) \
                       UNION ALL \
                       SELECT (SELECT min(job_name) FROM runs WHERE job_name > j.name) \
                       FROM j WHERE j.name IS NOT NULL) \
                     SELECT name FROM j WHERE name IS NOT NULL",
                )
                .map_err(|e| self.err(e))?;
            let rows = stmt.query_map([], |r| r.get(0)).map_err(|e| self.err(e))?;
            rows.collect::<Result<_, _>>().map_err(|e| self.err(e))?
        };
        let mut newest: Vec<(f64, i64)> = Vec::new();
        {
            let mut stmt = self
                .conn
                .prepare_cached(
                    "SELECT stop_time, rowid FROM runs WHERE job_name = ?1 \
                     ORDER BY stop_time DESC, rowid DESC LIMIT ?2",
                )
                .map_err(|e| self.err(e))?;
            for job in &jobs {
                let rows = stmt
                    .query_map(params![job, limit as i64], |r| {
                        Ok((
                            r.get::<_, Option<f64>>(0)?.unwrap_or(f64::NEG_INFINITY),
                            r.get(1)?,
                        ))
                    })
                    .map_err(|e| self.err(e))?;
                for row in rows {
                    newest.push(row.map_err(|e| self.err(e))?);
                }
            }
        }
        newest.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)));
        newest.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        let mut stmt = self
            .conn
            .prepare_cached(&format!("SELECT {RUN_COLUMNS} FROM runs WHERE rowid = ?1"))
            .map_err(|e| self.err(e))?;
        let mut out = Vec::with_capacity(newest.len());
        for (_, rowid) in newest {
            if let Some(run) = stmt
                .query_row([rowid], row_to_run)
                .optional()
                .map_err(|e| self.err(e))?
            {
                out.push(run);
            }
        }
        Ok(out)
    }

    /// Whether the database has an index of this name.
    fn has_index(&self, name: &str) -> Result<bool, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = ?1)",
            )
            .map_err(|e| self.err(e))?;
        stmt.query_row([name], |r| r.get(0))
            .map_err(|e| self.err(e))
    }

    fn query_runs(&self, sql: &str, args: &[String]) -> Result<Vec<RunRecord>, StoreError> {
        let mut stmt = self.conn.prepare_cached(sql).map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(rusqlite::params_from_iter(args.iter()), row_to_run)
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }
}

/// Above this `--limit`, "newest runs of all jobs" sorts the table instead of
/// merging every job's newest (which reads up to jobs × limit index entries).
const NEWEST_BY_JOB_MAX: u64 = 1000;

/// Where a run is: the table it was found in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// In `dsari_pending`: due or waiting, not started.
    Pending,
    /// In `runs_running`.
    Running,
    /// In `runs`.
    Finished,
}

/// One job's rows, read together (see [`Store::job_activity`]).
#[derive(Debug, Clone, Default)]
pub struct JobActivity {
    /// Finished runs since the time asked for, newest first.
    pub finished: Vec<RunRecord>,
    /// Running runs, newest first.
    pub running: Vec<RunRecord>,
    /// Pending runs, oldest due first.
    pub pending: Vec<PendingRecord>,
}

/// ` WHERE …` for a job list and run id prefixes, with its parameters. A prefix
/// is a range on `run_id` (index-friendly) plus an exact `substr` check; run ids
/// are lower-case hexadecimal and hyphens, all sorting below `~`.
fn run_filter(jobs: &[String], run_prefixes: &[String]) -> (String, Vec<String>) {
    let mut clauses = Vec::new();
    let mut args: Vec<String> = Vec::new();
    match jobs {
        [] => {}
        [job] => {
            clauses.push("job_name = ?".to_string());
            args.push(job.clone());
        }
        _ => {
            clauses.push(format!(
                "job_name IN ({})",
                vec!["?"; jobs.len()].join(", ")
            ));
            args.extend(jobs.iter().cloned());
        }
    }
    if !run_prefixes.is_empty() {
        let one = "(run_id >= ? AND run_id < ? AND substr(run_id, 1, length(?)) = ?)";
        clauses.push(format!("({})", vec![one; run_prefixes.len()].join(" OR ")));
        for p in run_prefixes {
            args.extend([p.clone(), format!("{p}~"), p.clone(), p.clone()]);
        }
    }
    if clauses.is_empty() {
        (String::new(), args)
    } else {
        (format!(" WHERE {}", clauses.join(" AND ")), args)
    }
}

/// Maps a SQLite error to a [`StoreError`] naming the database file.
fn sqlite_error(path: &str) -> impl Fn(rusqlite::Error) -> StoreError + use<> {
    let path = path.to_string();
    move |source| StoreError::Sqlite {
        path: path.clone(),
        source,
    }
}

fn row_to_run(r: &rusqlite::Row<'_>) -> rusqlite::Result<RunRecord> {
    Ok(RunRecord {
        job_name: r.get(0)?,
        run_id: r.get(1)?,
        schedule_time: real_column(r, 2)?,
        start_time: real_column(r, 3)?,
        stop_time: r.get::<_, Option<f64>>(4)?,
        exit_code: r.get(5)?,
        trigger_type: r.get::<_, Option<String>>(6)?.unwrap_or_default(),
        trigger_data: json_column(r, 7)?,
        run_data: json_column(r, 8)?,
    })
}

/// A time column; NULL (which old tools could leave) reads as 0.
fn real_column(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<f64> {
    Ok(r.get::<_, Option<f64>>(i)?.unwrap_or(0.0))
}

/// A JSON text column; NULL or text that is not JSON reads as `{}` rather than
/// failing the whole query (another tool may have written it).
fn json_column(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Value> {
    let text: Option<String> = r.get(i)?;
    Ok(text
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_else(|| Value::Object(Default::default())))
}
