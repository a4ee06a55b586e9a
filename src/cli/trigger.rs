//! `dsari trigger JOB`: ask for a run by writing a trigger file, and with
//! `--wait` follow that request to the end of the run it produced.
//!
//! The file is written the way SPEC §4.1 asks writers to: to a temporary
//! dot-name in the job's trigger dir, synced, then renamed to
//! `trigger-<uuid>.json`, so the daemon never sees half a file and any number
//! of triggers can be dropped at once. Its content is checked with the
//! daemon's own parser first, so a trigger the daemon would reject is refused
//! here with the same reason.
//!
//! # How `--wait` finds its run
//! The trigger carries a unique `dsari_trigger_id` (the uuid of its name). The
//! daemon stores the whole trigger as the run's `trigger_data`; when it folds
//! several triggers into one run (SPEC §4.3) the others land in that run's
//! `run_data.coalesced_triggers`. So the run is the one of this job, pending,
//! running or finished after the file was written, whose trigger data — or
//! one of whose coalesced triggers — has that id. A trigger with an
//! `idempotency_key` that the daemon dropped as a duplicate is followed to the
//! run the key points to; a rejected one ends the wait with the daemon's reason.
//!
//! The wait is event driven (see [`super::wake`]): inotify on the database's
//! directory (every commit writes the `-wal` file) and on the job's trigger
//! dir wakes it, with a re-check every second as the safety net. It never
//! touches the run: `--timeout` ends only the waiting (exit status 124).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::{Map, Value};

use crate::config::Config;
use crate::document::Format;
use crate::store::{PendingRecord, RunRecord, RunState, Store};

use super::style;
use super::wake::Wake;

/// Exit status when `--timeout` ends the wait (as timeout(1) uses).
pub const TIMEOUT_EXIT: u8 = 124;

/// Exit status for a run whose exit code does not fit in one (the −1 of a lost run).
pub const UNREPRESENTABLE_EXIT: u8 = 255;

/// A trigger file still in place this long after it was written means that no
/// daemon is picking triggers up: say so instead of waiting in silence.
pub const PICKUP_GRACE: Duration = Duration::from_secs(5);

/// The key in the trigger data that lets `--wait` find the run.
pub const TRIGGER_ID_KEY: &str = "dsari_trigger_id";

/// Trigger files: the daemon may run as another user of the same group.
const TRIGGER_FILE_MODE: u32 = 0o660;

/// What `dsari trigger` was asked for.
#[derive(Debug, Clone, Default)]
pub struct TriggerOptions {
    pub job: String,
    /// `K=V` pairs for the trigger's `environment`.
    pub env: Vec<String>,
    /// `schedule_time`: RFC 3339 or epoch seconds.
    pub at: Option<String>,
    /// A JSON object merged into the trigger.
    pub data: Option<String>,
    pub wait: bool,
    /// Seconds to wait at most.
    pub timeout: Option<f64>,
}

/// Write the trigger, print its path, and with `--wait` wait for its run.
pub fn trigger(config_dir: &Path, opts: &TriggerOptions) -> anyhow::Result<u8> {
    let config = super::load_config(config_dir)?;
    let Some(job) = config.jobs.get(&opts.job) else {
        bail!(
            "{}; add it to the configuration or check the name",
            super::unknown_job(&config, &opts.job)
        );
    };
    if !config.data_dir.is_dir() {
        bail!(
            "data dir {} does not exist: start `dsari daemon -c {}` once (it creates it), or fix `data_dir` in the configuration",
            config.data_dir.display(),
            config.config_dir.display()
        );
    }
    if let Some(t) = opts.timeout
        && !(t.is_finite() && t >= 0.0)
    {
        bail!("--timeout {t}: give a number of seconds, 0 or more");
    }
    let trigger_id = uuid::Uuid::new_v4().to_string();
    let data = build_data(opts, &trigger_id)?;
    let bytes = serde_json::to_vec_pretty(&Value::Object(data))?;
    let parsed = crate::trigger::parse_bytes(&bytes, Format::Json, crate::time::now())
        .map_err(|reason| anyhow::anyhow!("the daemon would reject this trigger: {reason}"))?;
    let (_, dropped) = crate::trigger::filter_environment(
        &parsed.environment,
        job.trigger_environment_allow.as_deref(),
    );
    if !dropped.is_empty() {
        eprintln!(
            "warning: the daemon will not pass these names from a trigger to job {}: {} (see trigger_environment_allow)",
            job.name,
            dropped.join(", ")
        );
    }
    let dir = crate::daemon::job_trigger_dir(&config, &job.name);
    let written_at = crate::time::now();
    let path = write_trigger(&dir, &format!("trigger-{trigger_id}.json"), &bytes)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", path.display())?;
    out.flush()?;
    if !opts.wait {
        return Ok(0);
    }
    let waiter = Waiter {
        config: &config,
        job: job.name.clone(),
        trigger_id,
        path,
        written_at,
        idempotency_key: parsed.idempotency_key,
        timeout: opts.timeout,
    };
    waiter.wait(&mut out)
}

/// The trigger's content: `--data`, then `--env`, `--at` and the trigger id.
fn build_data(opts: &TriggerOptions, trigger_id: &str) -> anyhow::Result<Map<String, Value>> {
    let mut data = match &opts.data {
        None => Map::new(),
        Some(text) => match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(m)) => m,
            Ok(other) => bail!(
                "--data must be a JSON object, not {}: e.g. --data '{{\"description\": \"nightly\"}}'",
                crate::trigger::kind_of(&other)
            ),
            Err(e) => bail!("--data is not valid JSON ({e}): give a JSON object"),
        },
    };
    if !opts.env.is_empty() {
        let env = data
            .entry("environment")
            .or_insert_with(|| Value::Object(Map::new()));
        let Value::Object(env) = env else {
            bail!("--data has an `environment` that is not an object, so --env cannot add to it");
        };
        for pair in &opts.env {
            match pair.split_once('=') {
                Some((k, v)) if !k.is_empty() => {
                    env.insert(k.to_string(), Value::String(v.to_string()));
                }
                _ => bail!("--env {pair:?}: write it as NAME=value"),
            }
        }
    }
    if let Some(at) = &opts.at {
        let t = crate::time::parse_cli_time(at).map_err(|e| anyhow::anyhow!("--at: {e}"))?;
        data.insert("schedule_time".into(), Value::from(t));
    }
    data.insert(TRIGGER_ID_KEY.into(), Value::String(trigger_id.to_string()));
    Ok(data)
}

/// Write `bytes` as `dir/name` atomically: temporary dot-name, sync, rename,
/// sync the directory. Creates the job's trigger dir when the daemon has not yet.
fn write_trigger(dir: &Path, name: &str, bytes: &[u8]) -> anyhow::Result<PathBuf> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(crate::daemon::TRIGGER_DIR_MODE)
        .create(dir)
        .with_context(|| format!("cannot create the trigger dir {}", dir.display()))?;
    let tmp = dir.join(format!(".{name}.tmp"));
    let path = dir.join(name);
    let result = (|| -> std::io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(TRIGGER_FILE_MODE)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, &path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(e).with_context(|| {
            format!(
                "cannot write a trigger file in {} (you need write access to it: the daemon's group may write there)",
                dir.display()
            )
        });
    }
    // The rename is durable once the directory is synced; a failure here loses nothing now.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(path)
}

/// Which run `--wait` is waiting for.
#[derive(Debug, Clone, PartialEq)]
enum Target {
    /// The run that carries this trigger id.
    Trigger(String),
    /// A known run (the one an earlier trigger with the same idempotency key made).
    Run(String),
}

/// What the database says about the target.
#[derive(Debug)]
enum Seen {
    Nothing,
    Pending(PendingRecord, bool),
    Running(RunRecord, bool),
    Finished(RunRecord, bool),
}

/// The state of one `--wait`.
struct Waiter<'a> {
    config: &'a Config,
    job: String,
    trigger_id: String,
    path: PathBuf,
    written_at: f64,
    idempotency_key: Option<String>,
    timeout: Option<f64>,
}

impl Waiter<'_> {
    /// Wait for the run; print it; its exit code (or 124 on timeout).
    fn wait(&self, out: &mut dyn Write) -> anyhow::Result<u8> {
        let start = Instant::now();
        let deadline = self
            .timeout
            .map(|s| start + Duration::from_secs_f64(s.min(1e9)));
        let db = &self.config.database_file;
        let db_dir = db.parent().unwrap_or(Path::new(".")).to_path_buf();
        let trigger_dir = crate::daemon::job_trigger_dir(self.config, &self.job);
        let mut wake = Wake::new();
        wake.watch(&trigger_dir);
        let mut store: Option<Store> = None;
        let mut target = Target::Trigger(self.trigger_id.clone());
        let mut told = String::new();
        let mut warned = false;
        // Consecutive looks that found the trigger nowhere: not in its dir, not
        // claimed, not rejected, not in the database.
        let mut vanished = 0;
        loop {
            wake.watch(&db_dir);
            // Files first, then the database: a file gone before the query
            // means its run (if any) is in what the query reads.
            let in_place = self.path.exists();
            let claimed = self.claimed_exists(&trigger_dir);
            if store.is_none() && db.is_file() {
                // A daemon starting for the first time may be creating the
                // tables right now: a database that stays unusable is an error.
                match super::open_store(self.config) {
                    Ok(s) => store = Some(s),
                    Err(e) if start.elapsed() >= PICKUP_GRACE => return Err(e),
                    Err(_) => {}
                }
            }
            let seen = match &store {
                Some(s) => self.look(s, &target)?,
                None => Seen::Nothing,
            };
            match seen {
                Seen::Finished(run, coalesced) => {
                    return self.report(out, &run, coalesced);
                }
                Seen::Running(run, coalesced) => {
                    vanished = 0;
                    self.tell(&mut told, &run.run_id, coalesced, || {
                        format!(
                            "run {} of job {} started; output: {}",
                            run.run_id,
                            run.job_name,
                            self.output_path(&run).display()
                        )
                    });
                }
                Seen::Pending(p, coalesced) => {
                    vanished = 0;
                    self.tell(&mut told, &p.run_id, coalesced, || {
                        format!(
                            "run {} of job {} is pending, due {} ({}); `dsari job why {}` says what it waits for",
                            p.run_id,
                            p.job_name,
                            style::local_time(p.schedule_time),
                            style::relative(p.schedule_time, crate::time::now()),
                            p.job_name
                        )
                    });
                }
                Seen::Nothing if !in_place && !claimed => {
                    if let Some(reason) = self.rejection(&trigger_dir) {
                        bail!(
                            "the daemon rejected trigger {}: {reason}",
                            self.path.display()
                        );
                    }
                    if let (Target::Trigger(_), Some(s)) = (&target, &store)
                        && let Some(run_id) = self.duplicate_of(s)?
                    {
                        eprintln!(
                            "dsari: trigger {} repeats idempotency_key {:?}: following run {run_id}, which that key already started",
                            self.path.display(),
                            self.idempotency_key.as_deref().unwrap_or_default()
                        );
                        target = Target::Run(run_id);
                        continue;
                    }
                    if store.is_some() {
                        vanished += 1;
                    }
                    // Twice, a wake apart: a rejection writes its .error just after the move.
                    if vanished >= 2 {
                        bail!(
                            "trigger {} is gone, but no run carries it and it was not rejected: something other than the daemon removed it",
                            self.path.display()
                        );
                    }
                }
                Seen::Nothing => vanished = 0,
            }
            if !warned && in_place && start.elapsed() >= PICKUP_GRACE {
                warned = true;
                eprintln!(
                    "dsari: warning: trigger {} is still unclaimed after {} s: no daemon seems to be picking up triggers (is `dsari daemon -c {}` running?); still waiting{}",
                    self.path.display(),
                    PICKUP_GRACE.as_secs(),
                    self.config.config_dir.display(),
                    if deadline.is_some() {
                        " until --timeout"
                    } else {
                        " (Ctrl-C to stop)"
                    }
                );
            }
            if let Some(d) = deadline
                && Instant::now() >= d
            {
                let what = match (&target, told.is_empty()) {
                    (Target::Run(id), _) => format!("run {id}"),
                    (_, false) => format!("run {told}"),
                    (_, true) if in_place => format!(
                        "the daemon to pick up {} (it stays there)",
                        self.path.display()
                    ),
                    (_, true) => "its run to be recorded".to_string(),
                };
                eprintln!(
                    "dsari: timed out after {} s waiting for {what}; nothing was stopped",
                    self.timeout.unwrap_or_default()
                );
                return Ok(TIMEOUT_EXIT);
            }
            wake.wait(deadline);
        }
    }

    /// Print a progress line once per run (to stderr: stdout is for the result).
    fn tell(
        &self,
        told: &mut String,
        run_id: &str,
        coalesced: bool,
        line: impl FnOnce() -> String,
    ) {
        if told != run_id {
            *told = run_id.to_string();
            if coalesced {
                eprintln!(
                    "dsari: this trigger was coalesced into run {run_id}, which carries it in run_data.coalesced_triggers"
                );
            }
            eprintln!("dsari: {}", line());
        }
    }

    /// Where the target is now, read in one transaction.
    fn look(&self, store: &Store, target: &Target) -> anyhow::Result<Seen> {
        match target {
            Target::Trigger(id) => {
                // A run finishing after the file was written stopped after it too;
                // the margin covers clocks read a little apart.
                let act = store.job_activity(&self.job, self.written_at - 60.0)?;
                if let Some((r, c)) = find(act.finished, id, |r| (&r.trigger_data, &r.run_data)) {
                    return Ok(Seen::Finished(r, c));
                }
                if let Some((r, c)) = find(act.running, id, |r| (&r.trigger_data, &r.run_data)) {
                    return Ok(Seen::Running(r, c));
                }
                if let Some((p, c)) = find(act.pending, id, |p| (&p.trigger_data, &p.run_data)) {
                    return Ok(Seen::Pending(p, c));
                }
                Ok(Seen::Nothing)
            }
            Target::Run(run_id) => {
                let found = store.runs_with_prefix(run_id, 2)?;
                let Some((state, r)) = found.into_iter().find(|(_, r)| &r.run_id == run_id) else {
                    return Ok(Seen::Nothing);
                };
                Ok(match state {
                    RunState::Finished => Seen::Finished(r, false),
                    RunState::Running => Seen::Running(r, false),
                    RunState::Pending => Seen::Pending(
                        PendingRecord {
                            run_id: r.run_id,
                            job_name: r.job_name,
                            schedule_time: r.schedule_time,
                            trigger_type: r.trigger_type,
                            trigger_data: r.trigger_data,
                            run_data: r.run_data,
                        },
                        false,
                    ),
                })
            }
        }
    }

    /// Is the trigger in the job's `.claimed/` (taken, its run not yet recorded)?
    fn claimed_exists(&self, trigger_dir: &Path) -> bool {
        let Some(name) = self.path.file_name().and_then(|n| n.to_str()) else {
            return false;
        };
        let suffix = format!("{}{name}", crate::daemon::CLAIM_SEPARATOR);
        fs::read_dir(trigger_dir.join(crate::daemon::CLAIM_DIR)).is_ok_and(|rd| {
            rd.filter_map(Result::ok)
                .any(|e| e.file_name().to_string_lossy().ends_with(&suffix))
        })
    }

    /// The reason in `.rejected/NAME.error`, when the daemon rejected the trigger.
    fn rejection(&self, trigger_dir: &Path) -> Option<String> {
        let name = self.path.file_name()?.to_str()?;
        let error = trigger_dir
            .join(crate::daemon::REJECTED_DIR)
            .join(format!("{name}.error"));
        let text = fs::read_to_string(error).ok()?;
        Some(text.trim().to_string())
    }

    /// The run an earlier trigger with the same `idempotency_key` made.
    fn duplicate_of(&self, store: &Store) -> anyhow::Result<Option<String>> {
        let Some(key) = &self.idempotency_key else {
            return Ok(None);
        };
        if !store.has_table("dsari_idempotency")? {
            return Ok(None);
        }
        Ok(store.idempotency_run(&self.job, key, 0.0)?)
    }

    fn output_path(&self, run: &RunRecord) -> PathBuf {
        crate::daemon::run_dir(self.config, &run.job_name, &run.run_id)
            .join(crate::exec::OUTPUT_FILE)
    }

    /// Print the finished run; its exit code as this command's exit status.
    fn report(&self, out: &mut dyn Write, run: &RunRecord, coalesced: bool) -> anyhow::Result<u8> {
        if coalesced {
            eprintln!(
                "dsari: this trigger was coalesced into run {}, which carries it in run_data.coalesced_triggers",
                run.run_id
            );
        }
        let code = run.exit_code.unwrap_or(-1);
        writeln!(out, "run_id: {}", run.run_id)?;
        writeln!(out, "exit_code: {code}")?;
        writeln!(out, "output: {}", self.output_path(run).display())?;
        out.flush()?;
        Ok(u8::try_from(code).unwrap_or(UNREPRESENTABLE_EXIT))
    }
}

/// The row that carries trigger `id`, and whether it carries it as a coalesced trigger.
fn find<T>(rows: Vec<T>, id: &str, data: impl Fn(&T) -> (&Value, &Value)) -> Option<(T, bool)> {
    rows.into_iter().find_map(|row| {
        let (trigger_data, run_data) = data(&row);
        carries(trigger_data, run_data, id).map(|coalesced| (row, coalesced))
    })
}

/// `Some(false)` when the run's own trigger is `id`, `Some(true)` when `id` is
/// among its coalesced triggers, `None` otherwise.
fn carries(trigger_data: &Value, run_data: &Value, id: &str) -> Option<bool> {
    let has = |v: &Value| v.get(TRIGGER_ID_KEY).and_then(Value::as_str) == Some(id);
    if has(trigger_data) {
        return Some(false);
    }
    let coalesced = run_data.get("coalesced_triggers")?.as_array()?;
    coalesced.iter().any(has).then_some(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn finds_own_and_coalesced_triggers() {
        let own = json!({ TRIGGER_ID_KEY: "a" });
        let data = json!({ "coalesced_triggers": [{ TRIGGER_ID_KEY: "b" }, {}] });
        assert_eq!(carries(&own, &data, "a"), Some(false));
        assert_eq!(carries(&own, &data, "b"), Some(true));
        assert_eq!(carries(&own, &data, "c"), None);
        assert_eq!(carries(&json!({}), &json!("not an object"), "a"), None);
    }

    #[test]
    fn data_merges_env_at_and_id() {
        let opts = TriggerOptions {
            job: "j".into(),
            env: vec!["A=1".into(), "B=x=y".into()],
            at: Some("1700000000".into()),
            data: Some(r#"{"description": "d", "environment": {"C": "3"}}"#.into()),
            ..Default::default()
        };
        let d = build_data(&opts, "id").unwrap();
        assert_eq!(
            Value::Object(d),
            json!({
                "description": "d",
                "environment": { "C": "3", "A": "1", "B": "x=y" },
                "schedule_time": 1700000000.0,
                "dsari_trigger_id": "id",
            })
        );
        let bad = TriggerOptions {
            env: vec!["NOEQUALS".into()],
            ..Default::default()
        };
        assert!(build_data(&bad, "id").is_err());
        let list = TriggerOptions {
            data: Some("[1]".into()),
            ..Default::default()
        };
        assert!(build_data(&list, "id").is_err());
    }
}
