//! Configuration: find the config dir, load and deep-merge its files, validate.
//!
//! Owns the meaning of every configuration key (SPEC.md §1, §2). It reads files
//! and nothing else: it never creates directories, never opens the database and
//! never logs (warnings are returned in [`Loaded::warnings`] for the caller to
//! print), so `dsari config check` and the daemon report the same thing.
//!
//! Loading collects every problem instead of stopping at the first, and every
//! message names the file the offending value last came from (files are
//! deep-merged, so different keys of one job may come from different files),
//! the job or group, and the key.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Display;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde_json::{Map, Number, Value, json};

use crate::document::{self, Format};

/// Default `max_execution_grace`, seconds (SPEC §2.1).
pub const DEFAULT_MAX_EXECUTION_GRACE: f64 = 60.0;
/// Default `idempotency_window`, seconds (SPEC §4.2: 24 hours).
pub const DEFAULT_IDEMPOTENCY_WINDOW: f64 = 86400.0;
/// Default `trigger_max_bytes` (SPEC §4.4).
pub const DEFAULT_TRIGGER_MAX_BYTES: u64 = 1024 * 1024;

/// Default `schedule_accuracy`, seconds: a scheduled run may wait this long
/// after its time to start with others due by then (one wake-up for them all).
pub const DEFAULT_SCHEDULE_ACCURACY: f64 = 1.0;

/// A validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The config dir it was loaded from.
    pub config_dir: PathBuf,
    /// `data_dir`, absolute or as written; defaulted per SPEC §1.2.
    pub data_dir: PathBuf,
    /// The SQLite file: `database.file`, default `DATA_DIR/dsari.sqlite3`.
    pub database_file: PathBuf,
    /// Global `environment`, values already turned into strings.
    pub environment: BTreeMap<String, String>,
    pub shutdown_kill_runs: bool,
    /// Seconds.
    pub shutdown_kill_grace: Option<f64>,
    pub template_dir: Option<PathBuf>,
    pub report_html_gz: bool,
    pub report_run_output_start: u64,
    pub report_run_output_end: u64,
    /// Trigger files larger than this are rejected unread (SPEC §4.4).
    pub trigger_max_bytes: u64,
    /// Seconds during which a second trigger with the same `idempotency_key`
    /// makes no new run (SPEC §4.2); 0 turns the check off.
    pub idempotency_window: f64,
    /// Seconds a scheduled run may start after its time, so that runs due
    /// close together start in one loop turn; 0 starts each at its time.
    pub schedule_accuracy: f64,
    pub concurrency_groups: BTreeMap<String, ConcurrencyGroup>,
    pub jobs: BTreeMap<String, Job>,
    /// The merged configuration as read, before validation (`config dump --raw`).
    pub raw: serde_json::Value,
}

/// A concurrency group (SPEC §7).
#[derive(Debug, Clone, PartialEq)]
pub struct ConcurrencyGroup {
    pub name: String,
    /// At least 1; default 1.
    pub max: u32,
}

/// One job (SPEC §2.1).
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub name: String,
    /// Never empty.
    pub command: Vec<String>,
    pub command_append_run: bool,
    pub schedule: Option<String>,
    pub schedule_timezone: Option<String>,
    pub environment: BTreeMap<String, String>,
    /// Seconds.
    pub max_execution: Option<f64>,
    /// Seconds.
    pub max_execution_grace: f64,
    pub concurrency_groups: Vec<String>,
    pub concurrent_runs: bool,
    pub render_reports: bool,
    pub jenkins_environment: bool,
    pub job_group: Option<String>,
    pub trigger_environment_allow: Option<Vec<String>>,
}

/// A configuration that loaded without errors, and what looked suspicious in it.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    /// Things worth telling the operator that do not stop dsari, such as an
    /// unknown (probably misspelt) key. One line each, naming the file.
    pub warnings: Vec<String>,
}

/// Everything wrong with a configuration: one line per problem, each naming
/// the file, the job or group and the key, and saying what to do.
#[derive(Debug, thiserror::Error)]
#[error("{}", .errors.join("\n"))]
pub struct ConfigError {
    pub errors: Vec<String>,
    /// Warnings found on the way; an unknown key here often explains an
    /// error (a misspelt `command` makes the job lack one).
    pub warnings: Vec<String>,
}

/// The config dir to use when none is given (SPEC §1.1): `$DSARI_HOME/etc`
/// when `DSARI_HOME` is set; else the first of `~/.dsari/etc`,
/// `/usr/local/etc/dsari`, `/etc/dsari` that holds `dsari.yaml`, `dsari.json`
/// or `config.d`; else `~/.dsari/etc`.
pub fn default_config_dir() -> PathBuf {
    StandardDirs::from_env().default_pair().config.clone()
}

/// The data dir that goes with `config_dir` when `data_dir` is not set
/// (SPEC §1.2).
///
/// Each standard config dir has its partner: `$DSARI_HOME/etc` →
/// `$DSARI_HOME/var`, `~/.dsari/etc` → `~/.dsari/var`, `/usr/local/etc/dsari`
/// → `/usr/local/lib/dsari`, `/etc/dsari` → `/var/lib/dsari` (paths are
/// compared as written, component by component, without resolving links).
/// Any other config dir (one given with `-c`) gets the data dir that goes with
/// [`default_config_dir`] — the Python dsari's rule, whose default data dir
/// never depends on `-c` — so that `-c ./my-etc` next to an existing
/// installation keeps using that installation's runs and database.
pub fn default_data_dir_for(config_dir: &Path) -> PathBuf {
    StandardDirs::from_env().data_dir_for(config_dir)
}

/// Load, merge and validate the configuration in `config_dir` (SPEC §2).
///
/// A relative `config_dir` is made absolute first (without resolving links),
/// and relative paths in `data_dir`, `database.file`, `template_dir` and
/// `config_d` are resolved against it: the Python dsari used the working
/// directory, which changes with how it was started, and runs see `DATA_DIR`
/// from inside their own run directory.
pub fn load(config_dir: &Path) -> Result<Loaded, ConfigError> {
    let absolute = std::path::absolute(config_dir);
    let config_dir = absolute.as_deref().unwrap_or(config_dir);
    let mut report = Report::default();
    if let Err(message) = check_config_dir(config_dir) {
        report.errors.push(message);
        return report.finish(None);
    }
    let merged = read_files(config_dir, &mut report);
    let config = Checker::new(config_dir, &merged.origins, &mut report).config(merged.value);
    report.finish(Some(config))
}

/// Whether `name` may name a job, a job group or a concurrency group:
/// 1–64 characters of `A-Z a-z 0-9 - _ + . : @` and space, and not `.` or
/// `..` (a job name becomes a directory name).
pub fn is_valid_name(name: &str) -> bool {
    let allowed = |c: char| c.is_ascii_alphanumeric() || " -_+.:@".contains(c);
    !name.is_empty() && name.len() <= 64 && name != "." && name != ".." && name.chars().all(allowed)
}

impl Config {
    /// The normalised configuration, for `dsari config dump`: every key with
    /// its effective value, defaults filled in, seconds as numbers, objects'
    /// keys in alphabetical order. Jobs carry no `next_scheduled_run`; the
    /// caller adds it if it wants it.
    pub fn to_json(&self) -> Value {
        let jobs: Map<String, Value> = self
            .jobs
            .iter()
            .map(|(name, job)| (name.clone(), job.to_json()))
            .collect();
        let groups: Map<String, Value> = self
            .concurrency_groups
            .iter()
            .map(|(name, group)| (name.clone(), json!({ "max": group.max })))
            .collect();
        let config_d = match config_d_location(&self.config_dir, self.raw.get("config_d")) {
            Ok(Some(path)) => Value::from(path_text(&path)),
            _ => Value::Null,
        };
        json!({
            "concurrency_groups": groups,
            "config_d": config_d,
            "data_dir": path_text(&self.data_dir),
            "database": { "file": path_text(&self.database_file), "type": "sqlite3" },
            "environment": self.environment,
            "jobs": jobs,
            "report_html_gz": self.report_html_gz,
            "report_run_output_end": self.report_run_output_end,
            "report_run_output_start": self.report_run_output_start,
            "shutdown_kill_grace": self.shutdown_kill_grace,
            "shutdown_kill_runs": self.shutdown_kill_runs,
            "template_dir": self.template_dir.as_deref().map(path_text),
            "trigger_max_bytes": self.trigger_max_bytes,
            "idempotency_window": self.idempotency_window,
            "schedule_accuracy": self.schedule_accuracy,
        })
    }
}

impl Job {
    /// One job for [`Config::to_json`].
    fn to_json(&self) -> Value {
        let mut groups = self.concurrency_groups.clone();
        groups.sort();
        json!({
            "command": self.command,
            "command_append_run": self.command_append_run,
            "concurrency_groups": groups,
            "concurrent_runs": self.concurrent_runs,
            "environment": self.environment,
            "jenkins_environment": self.jenkins_environment,
            "job_group": self.job_group,
            "max_execution": self.max_execution,
            "max_execution_grace": self.max_execution_grace,
            "render_reports": self.render_reports,
            "schedule": self.schedule,
            "schedule_timezone": self.schedule_timezone,
            "trigger_environment_allow": self.trigger_environment_allow,
        })
    }
}

fn path_text(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

// ---------------------------------------------------------------------------
// Standard directories (SPEC §1)

/// A config dir and the data dir that goes with it.
#[derive(Debug, Clone, PartialEq)]
struct DirPair {
    config: PathBuf,
    data: PathBuf,
}

impl DirPair {
    fn new(config: impl Into<PathBuf>, data: impl Into<PathBuf>) -> DirPair {
        DirPair {
            config: config.into(),
            data: data.into(),
        }
    }
}

/// The standard directories, from the environment; separate from it so that
/// tests need not change the process environment.
struct StandardDirs {
    /// `$DSARI_HOME/etc` and `$DSARI_HOME/var`, when `DSARI_HOME` is set.
    dsari_home: Option<DirPair>,
    /// Searched in order for one that holds configuration.
    searched: Vec<DirPair>,
    /// Used when none of `searched` holds configuration.
    fallback: DirPair,
}

impl StandardDirs {
    fn from_env() -> StandardDirs {
        // Like Python's expanduser: an unknown home leaves "~" as it is.
        let home = std::env::home_dir().unwrap_or_else(|| PathBuf::from("~"));
        let user = DirPair::new(home.join(".dsari/etc"), home.join(".dsari/var"));
        StandardDirs {
            dsari_home: std::env::var_os("DSARI_HOME")
                .map(PathBuf::from)
                .map(|h| DirPair::new(h.join("etc"), h.join("var"))),
            searched: vec![
                user.clone(),
                DirPair::new("/usr/local/etc/dsari", "/usr/local/lib/dsari"),
                DirPair::new("/etc/dsari", "/var/lib/dsari"),
            ],
            fallback: user,
        }
    }

    /// The pair used when no config dir is given.
    fn default_pair(&self) -> &DirPair {
        if let Some(pair) = &self.dsari_home {
            return pair;
        }
        self.searched
            .iter()
            .find(|pair| holds_config(&pair.config))
            .unwrap_or(&self.fallback)
    }

    fn data_dir_for(&self, config_dir: &Path) -> PathBuf {
        self.dsari_home
            .iter()
            .chain(&self.searched)
            .find(|pair| pair.config == config_dir)
            .unwrap_or_else(|| self.default_pair())
            .data
            .clone()
    }
}

/// Whether `dir` holds `dsari.yaml`, `dsari.json` or `config.d`.
fn holds_config(dir: &Path) -> bool {
    ["dsari.yaml", "dsari.json", "config.d"]
        .iter()
        .any(|name| dir.join(name).exists())
}

// ---------------------------------------------------------------------------
// Reading and merging the files

/// Errors and warnings collected while loading.
#[derive(Default)]
struct Report {
    errors: Vec<String>,
    warnings: Vec<String>,
}

impl Report {
    fn finish(self, config: Option<Config>) -> Result<Loaded, ConfigError> {
        match config {
            Some(config) if self.errors.is_empty() => Ok(Loaded {
                config,
                warnings: self.warnings,
            }),
            _ => Err(ConfigError {
                errors: self.errors,
                warnings: self.warnings,
            }),
        }
    }
}

fn check_config_dir(config_dir: &Path) -> Result<(), String> {
    let shown = config_dir.display();
    match fs::metadata(config_dir) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(format!(
            "{shown}: the config dir is not a directory; pass the config dir with -c DIR"
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(format!(
            "{shown}: the config dir does not exist; create it (an empty one is a valid \
             config with no jobs) or pass another one with -c DIR"
        )),
        Err(e) => Err(format!("{shown}: cannot use the config dir: {e}")),
    }
}

/// The merged configuration and where each part of it came from.
#[derive(Default)]
struct Merged {
    value: Map<String, Value>,
    origins: Origins,
}

/// For every key path present in a file's mappings, the last file that set it.
#[derive(Default)]
struct Origins(HashMap<Vec<String>, PathBuf>);

impl Origins {
    fn record(&mut self, file: &Path, prefix: &mut Vec<String>, map: &Map<String, Value>) {
        for (key, value) in map {
            prefix.push(key.clone());
            self.0.insert(prefix.clone(), file.to_path_buf());
            if let Value::Object(inner) = value {
                self.record(file, prefix, inner);
            }
            prefix.pop();
        }
    }

    /// The file that set top-level `key`, if any.
    fn clone_top(&self, key: &str) -> Option<PathBuf> {
        self.0.get(&vec![key.to_string()]).cloned()
    }

    /// The file that set `path`, or failing that its nearest recorded parent.
    fn file_of(&self, path: &[&str]) -> Option<&Path> {
        (1..=path.len()).rev().find_map(|len| {
            let key: Vec<String> = path[..len].iter().map(|s| s.to_string()).collect();
            self.0.get(&key).map(PathBuf::as_path)
        })
    }
}

/// Read `dsari.yaml`, `dsari.json`, then config.d's `*.yaml` and `*.json`.
fn read_files(config_dir: &Path, report: &mut Report) -> Merged {
    let mut merged = Merged::default();
    for name in ["dsari.yaml", "dsari.json"] {
        let path = config_dir.join(name);
        match fs::metadata(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => report
                .errors
                .push(format!("{}: cannot read: {e}", path.display())),
            Ok(meta) if !meta.is_file() => report.errors.push(format!(
                "{}: not a regular file; remove it or make it a file",
                path.display()
            )),
            Ok(_) => merged.add_file(&path, report),
        }
    }
    let Some(dir) = config_d_dir(config_dir, &merged, report) else {
        return merged;
    };
    let top_level_files = merged.origins.clone_top("config_d");
    for path in config_d_files(&dir, report) {
        merged.add_file(&path, report);
    }
    warn_late_config_d(&merged, top_level_files.as_deref(), report);
    merged
}

/// `config_d` set in a config.d file cannot move config.d any more; say so.
fn warn_late_config_d(merged: &Merged, before: Option<&Path>, report: &mut Report) {
    let after = merged.origins.file_of(&["config_d"]);
    if let Some(file) = after.filter(|file| Some(*file) != before) {
        report.warnings.push(format!(
            "{}: config_d has no effect in a config.d file; set it in dsari.yaml or dsari.json",
            file.display()
        ));
    }
}

/// Where config.d is (SPEC §2): `config_d` from dsari.yaml/dsari.json, or
/// `config.d` in the config dir. `None` when there is nothing to read.
fn config_d_dir(config_dir: &Path, merged: &Merged, report: &mut Report) -> Option<PathBuf> {
    let setting = merged.value.get("config_d");
    let dir = match config_d_location(config_dir, setting) {
        Ok(dir) => dir?,
        Err(message) => {
            let file = merged.origins.file_of(&["config_d"]).unwrap_or(config_dir);
            report
                .errors
                .push(format!("{}: config_d: {message}", file.display()));
            return None;
        }
    };
    match fs::metadata(&dir) {
        Ok(meta) if meta.is_dir() => Some(dir),
        Err(e) if e.kind() == io::ErrorKind::NotFound && setting.is_none() => None,
        Ok(_) => {
            report.warnings.push(format!(
                "{}: config.d is not a directory; no files are read from it",
                dir.display()
            ));
            None
        }
        Err(e) => {
            report.warnings.push(format!(
                "{}: config_d: no files are read from it: {e}",
                dir.display()
            ));
            None
        }
    }
}

/// The config.d location for a `config_d` setting; `Ok(None)` when it is
/// null, which turns config.d off (as in the Python dsari).
fn config_d_location(
    config_dir: &Path,
    setting: Option<&Value>,
) -> Result<Option<PathBuf>, String> {
    match setting {
        None => Ok(Some(config_dir.join("config.d"))),
        Some(Value::Null) => Ok(None),
        Some(Value::String(dir)) if !dir.is_empty() => Ok(Some(config_dir.join(dir))),
        Some(other) => Err(expected("a directory path", other)),
    }
}

/// The `*.yaml` files of `dir` sorted by name, then the `*.json` files.
/// Entries that are not files (directories, broken links) are skipped, like
/// the Python dsari does.
fn config_d_files(dir: &Path, report: &mut Report) -> Vec<PathBuf> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            report
                .errors
                .push(format!("{}: cannot list config.d: {e}", dir.display()));
            return Vec::new();
        }
    };
    let mut yaml = Vec::new();
    let mut json = Vec::new();
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                report
                    .errors
                    .push(format!("{}: cannot list config.d: {e}", dir.display()));
                continue;
            }
        };
        let name = entry.file_name();
        let path = entry.path();
        if !fs::metadata(&path).is_ok_and(|meta| meta.is_file()) {
            continue;
        }
        let bytes = name.as_encoded_bytes();
        if bytes.ends_with(b".yaml") {
            yaml.push((name, path));
        } else if bytes.ends_with(b".json") {
            json.push((name, path));
        }
    }
    yaml.sort();
    json.sort();
    yaml.into_iter().chain(json).map(|(_, path)| path).collect()
}

impl Merged {
    /// Parse one file and deep-merge it in; problems go to `report`.
    fn add_file(&mut self, path: &Path, report: &mut Report) {
        match read_document(path) {
            Ok(Value::Null) => {}
            Ok(Value::Object(map)) => {
                self.origins.record(path, &mut Vec::new(), &map);
                deep_merge(&mut self.value, map);
            }
            Ok(other) => report.errors.push(format!(
                "{}: the top level must be a mapping of keys (such as jobs) to values, got {}",
                path.display(),
                describe(&other)
            )),
            Err(message) => report.errors.push(format!("{}: {message}", path.display())),
        }
    }
}

/// Read and parse one configuration file; the error lacks the file name.
fn read_document(path: &Path) -> Result<Value, String> {
    let bytes = fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    let text = String::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_string())?;
    let format = Format::from_path(path).unwrap_or(Format::Yaml);
    if format == Format::Json && text.trim().is_empty() {
        return Err("the file is empty: write {} in it or remove it".to_string());
    }
    document::parse(&text, format).map_err(|message| match unquoted_schedule(&text) {
        Some(hint) if format == Format::Yaml => format!("{message}; {hint}"),
        _ => message,
    })
}

/// A hint for the usual cause of a YAML error in a dsari config: a cron
/// schedule starting with `*` (read as an alias) or `@` (a reserved
/// character) that is not quoted.
fn unquoted_schedule(text: &str) -> Option<String> {
    text.lines().enumerate().find_map(|(index, line)| {
        let rest = line.trim_start().strip_prefix("schedule:")?;
        let value = rest.trim();
        let unquoted = rest.starts_with([' ', '\t']) && value.starts_with(['*', '@']);
        unquoted.then(|| {
            format!(
                "line {}: quote the schedule, since YAML reads a leading {} as markup: \
                 schedule: \"{}\"",
                index + 1,
                &value[..1],
                value
            )
        })
    })
}

/// Merge `from` into `into`: mappings key by key, recursively; any other
/// value replaces what was there.
fn deep_merge(into: &mut Map<String, Value>, from: Map<String, Value>) {
    for (key, value) in from {
        match (into.get_mut(&key), value) {
            (Some(Value::Object(old)), Value::Object(new)) => deep_merge(old, new),
            (_, value) => {
                into.insert(key, value);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Validation

const TOP_KEYS: &[&str] = &[
    "jobs",
    "job_groups",
    "concurrency_groups",
    "config_d",
    "data_dir",
    "database",
    "environment",
    "shutdown_kill_runs",
    "shutdown_kill_grace",
    "template_dir",
    "report_html_gz",
    "report_run_output_start",
    "report_run_output_end",
    "trigger_max_bytes",
    "idempotency_window",
    "schedule_accuracy",
];

const JOB_KEYS: &[&str] = &[
    "command",
    "command_append_run",
    "schedule",
    "schedule_timezone",
    "environment",
    "max_execution",
    "max_execution_grace",
    "concurrency_groups",
    "concurrent_runs",
    "render_reports",
    "jenkins_environment",
    "job_group",
    "trigger_environment_allow",
];

const GROUP_KEYS: &[&str] = &[
    "command",
    "command_append_run",
    "schedule",
    "schedule_timezone",
    "environment",
    "max_execution",
    "max_execution_grace",
    "concurrency_groups",
    "concurrent_runs",
    "render_reports",
    "jenkins_environment",
    "job_group",
    "trigger_environment_allow",
    "job_names",
];

const DATABASE_KEYS: &[&str] = &["type", "file"];
const CONCURRENCY_GROUP_KEYS: &[&str] = &["max"];
const NAME_RULE: &str =
    "a name is 1-64 characters of A-Z a-z 0-9 - _ + . : @ and space, and not \".\" or \"..\"";

/// The mapping being checked: its key path (to find the file) and how
/// messages name it (`job "web"`), empty at the top level.
#[derive(Clone)]
struct Scope {
    path: Vec<String>,
    label: String,
}

impl Scope {
    fn top() -> Scope {
        Scope {
            path: Vec::new(),
            label: String::new(),
        }
    }

    fn child(&self, keys: &[&str], label: String) -> Scope {
        let mut path = self.path.clone();
        path.extend(keys.iter().map(|k| k.to_string()));
        Scope { path, label }
    }
}

/// Turns the merged mapping into a [`Config`], reporting into a [`Report`].
struct Checker<'a> {
    config_dir: &'a Path,
    origins: &'a Origins,
    report: &'a mut Report,
}

impl<'a> Checker<'a> {
    fn new(config_dir: &'a Path, origins: &'a Origins, report: &'a mut Report) -> Self {
        Checker {
            config_dir,
            origins,
            report,
        }
    }

    /// The whole configuration; invalid parts are left at their defaults
    /// (the caller discards the result when there are errors).
    fn config(&mut self, raw: Map<String, Value>) -> Config {
        let top = Scope::top();
        self.warn_unknown(&top, &raw, TOP_KEYS);
        let data_dir = self
            .get(&top, &raw, "data_dir", path_string)
            .map(|dir| self.config_dir.join(dir))
            .unwrap_or_else(|| default_data_dir_for(self.config_dir));
        let mut config = Config {
            config_dir: self.config_dir.to_path_buf(),
            database_file: self.database_file(&raw, &data_dir),
            data_dir,
            environment: self.environment(&top, &raw),
            shutdown_kill_runs: self
                .get(&top, &raw, "shutdown_kill_runs", boolean)
                .unwrap_or(false),
            shutdown_kill_grace: self
                .get(&top, &raw, "shutdown_kill_grace", nullable(seconds))
                .flatten(),
            template_dir: self
                .get(&top, &raw, "template_dir", nullable(path_string))
                .flatten()
                .map(|dir| self.config_dir.join(dir)),
            report_html_gz: self
                .get(&top, &raw, "report_html_gz", boolean)
                .unwrap_or(false),
            report_run_output_start: self
                .get(&top, &raw, "report_run_output_start", count)
                .unwrap_or(0),
            report_run_output_end: self
                .get(&top, &raw, "report_run_output_end", count)
                .unwrap_or(0),
            trigger_max_bytes: self
                .get(&top, &raw, "trigger_max_bytes", positive_count)
                .unwrap_or(DEFAULT_TRIGGER_MAX_BYTES),
            idempotency_window: self
                .get(&top, &raw, "idempotency_window", seconds)
                .unwrap_or(DEFAULT_IDEMPOTENCY_WINDOW),
            schedule_accuracy: self
                .get(&top, &raw, "schedule_accuracy", seconds)
                .unwrap_or(DEFAULT_SCHEDULE_ACCURACY),
            concurrency_groups: self.concurrency_groups(&raw),
            jobs: BTreeMap::new(),
            raw: Value::Null,
        };
        config.jobs = self.jobs(&raw);
        add_implied_groups(&mut config);
        config.raw = Value::Object(raw);
        config
    }

    // --- reporting -------------------------------------------------------

    /// The file that set `key` in `scope` (or `scope` itself), for messages.
    fn file(&self, scope: &Scope, keys: &[&str]) -> String {
        let mut path: Vec<&str> = scope.path.iter().map(String::as_str).collect();
        path.extend_from_slice(keys);
        self.origins
            .file_of(&path)
            .unwrap_or(self.config_dir)
            .display()
            .to_string()
    }

    /// "FILE" or "FILE: LABEL", the file being the one that set `keys` in `scope`.
    fn place(&self, scope: &Scope, keys: &[&str]) -> String {
        let file = self.file(scope, keys);
        match scope.label.is_empty() {
            true => file,
            false => format!("{file}: {}", scope.label),
        }
    }

    /// An error about `keys[0]` of `scope` (`keys[1..]` only locate the file).
    fn error(&mut self, scope: &Scope, keys: &[&str], message: impl Display) {
        let line = self.line(scope, keys, message);
        self.report.errors.push(line);
    }

    fn warn(&mut self, scope: &Scope, keys: &[&str], message: impl Display) {
        let line = self.line(scope, keys, message);
        self.report.warnings.push(line);
    }

    fn line(&self, scope: &Scope, keys: &[&str], message: impl Display) -> String {
        let place = self.place(scope, keys);
        match keys.first() {
            Some(key) => format!("{place}: {key}: {message}"),
            None => format!("{place}: {message}"),
        }
    }

    /// `map[key]` read by `parse`; `None` when absent or invalid (reported).
    fn get<'v, T>(
        &mut self,
        scope: &Scope,
        map: &'v Map<String, Value>,
        key: &str,
        parse: impl FnOnce(&'v Value) -> Result<T, String>,
    ) -> Option<T> {
        let value = map.get(key)?;
        parse(value)
            .map_err(|message| self.error(scope, &[key], message))
            .ok()
    }

    /// Warn about each key of `map` not in `known`, suggesting a near one.
    fn warn_unknown(&mut self, scope: &Scope, map: &Map<String, Value>, known: &[&str]) {
        for key in map.keys().filter(|key| !known.contains(&key.as_str())) {
            let hint = closest(key, known.iter().copied())
                .map(|near| format!(" (did you mean {near:?}?)"))
                .unwrap_or_default();
            let place = self.place(scope, &[key]);
            let line = format!("{place}: unknown key {key:?} ignored{hint}");
            self.report.warnings.push(line);
        }
    }

    /// A name check for a job, job group or concurrency group.
    fn check_name(&mut self, scope: &Scope, what: &str, name: &str) -> bool {
        if is_valid_name(name) {
            return true;
        }
        self.error(
            scope,
            &[],
            format!("invalid {what} name {name:?}: {NAME_RULE}"),
        );
        false
    }

    /// The mapping that `scope` (a job, a group) must be, or an error.
    fn mapping<'v>(
        &mut self,
        scope: &Scope,
        value: &'v Value,
        example: &str,
    ) -> Option<&'v Map<String, Value>> {
        match value {
            Value::Object(map) => Some(map),
            other => {
                let message = format!(
                    "expected a mapping of keys to values ({example}), got {}",
                    describe(other)
                );
                self.error(scope, &[], message);
                None
            }
        }
    }

    // --- top-level parts ---------------------------------------------------

    /// `database`: only SQLite; `file` relative to the config dir.
    fn database_file(&mut self, raw: &Map<String, Value>, data_dir: &Path) -> PathBuf {
        let default = data_dir.join("dsari.sqlite3");
        let top = Scope::top();
        let Some(map) = self.get(&top, raw, "database", nullable(object)).flatten() else {
            return default;
        };
        let scope = top.child(&["database"], "database".to_string());
        self.warn_unknown(&scope, map, DATABASE_KEYS);
        let kind = self.get(&scope, map, "type", nullable(string)).flatten();
        if let Some(kind) = kind.filter(|kind| *kind != "sqlite3") {
            let message = format!(
                "{kind:?} is not supported by this version of dsari, only \"sqlite3\" is; \
                 set type: sqlite3 or remove the database setting"
            );
            self.error(&scope, &["type"], message);
        }
        self.get(&scope, map, "file", nullable(path_string))
            .flatten()
            .map(|file| self.config_dir.join(file))
            .unwrap_or(default)
    }

    /// `environment` of `scope` (the top level or a job): names to strings.
    fn environment(&mut self, scope: &Scope, map: &Map<String, Value>) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let Some(Some(env)) = self.get(scope, map, "environment", nullable(object)) else {
            return out;
        };
        for (name, value) in env {
            match environment_entry(name, value) {
                Ok(text) => {
                    out.insert(name.clone(), text);
                }
                Err(message) => self.error(
                    scope,
                    &["environment", name],
                    format!("{name:?}: {message}"),
                ),
            }
        }
        out
    }

    /// `concurrency_groups`: name → `{max: N}`.
    fn concurrency_groups(
        &mut self,
        raw: &Map<String, Value>,
    ) -> BTreeMap<String, ConcurrencyGroup> {
        let mut out = BTreeMap::new();
        let top = Scope::top();
        let Some(Some(groups)) = self.get(&top, raw, "concurrency_groups", nullable(object)) else {
            return out;
        };
        for (name, value) in groups {
            let scope = top.child(
                &["concurrency_groups", name],
                format!("concurrency group {name:?}"),
            );
            if !self.check_name(&scope, "concurrency group", name) {
                continue;
            }
            let max = match value {
                Value::Null => 1,
                value => match self.mapping(&scope, value, "such as max: 2") {
                    Some(map) => {
                        self.warn_unknown(&scope, map, CONCURRENCY_GROUP_KEYS);
                        self.get(&scope, map, "max", positive_u32).unwrap_or(1)
                    }
                    None => continue,
                },
            };
            out.insert(
                name.clone(),
                ConcurrencyGroup {
                    name: name.clone(),
                    max,
                },
            );
        }
        out
    }

    /// `jobs` and `job_groups`, expanded into jobs.
    fn jobs(&mut self, raw: &Map<String, Value>) -> BTreeMap<String, Job> {
        let mut jobs = BTreeMap::new();
        let top = Scope::top();
        if let Some(Some(defined)) = self.get(&top, raw, "jobs", nullable(object)) {
            for (name, value) in defined {
                let scope = top.child(&["jobs", name], format!("job {name:?}"));
                if !self.check_name(&scope, "job", name) {
                    continue;
                }
                if let Some(job) = self.job(&scope, value, JOB_KEYS) {
                    let job = Job {
                        name: name.clone(),
                        ..job
                    };
                    self.check_schedule(&scope, &job);
                    jobs.insert(name.clone(), job);
                }
            }
        }
        if let Some(Some(groups)) = self.get(&top, raw, "job_groups", nullable(object)) {
            let mut made_by: BTreeMap<String, String> = BTreeMap::new();
            for (group, value) in groups {
                self.job_group(group, value, &mut jobs, &mut made_by);
            }
        }
        jobs
    }

    /// A job's `schedule` must parse (with its name: H forms hash it) in its zone.
    fn check_schedule(&mut self, scope: &Scope, job: &Job) {
        let Some(expr) = &job.schedule else {
            return;
        };
        let zone = job
            .schedule_timezone
            .as_deref()
            .and_then(|z| z.parse::<chrono_tz::Tz>().ok());
        if let Err(e) = crate::schedule::Schedule::parse(expr, &job.name, zone) {
            let message = format!("invalid schedule {expr:?} for job {:?}: {e}", job.name);
            self.error(scope, &["schedule"], message);
        }
    }

    /// One job group: check it once, then add one job per name in `job_names`.
    /// A group replaces a job of the same name (as in the Python dsari).
    fn job_group(
        &mut self,
        group: &str,
        value: &Value,
        jobs: &mut BTreeMap<String, Job>,
        made_by: &mut BTreeMap<String, String>,
    ) {
        let scope = Scope::top().child(&["job_groups", group], format!("job group {group:?}"));
        if !self.check_name(&scope, "job group", group) {
            return;
        }
        let names = match value {
            Value::Object(map) => self.job_names(&scope, map),
            _ => Vec::new(),
        };
        let Some(template) = self.job(&scope, value, GROUP_KEYS) else {
            return;
        };
        if value.get("job_group").is_some() {
            let message = "ignored: the jobs of a group get the group's name as job_group";
            self.warn(&scope, &["job_group"], message);
        }
        for name in names {
            let previous = made_by.insert(name.clone(), group.to_string());
            let replaced = match previous {
                Some(other) => Some(format!("by job group {other:?}")),
                None if jobs.contains_key(&name) => Some("in jobs".to_string()),
                None => None,
            };
            if let Some(replaced) = replaced {
                self.warn(
                    &scope,
                    &["job_names"],
                    format!(
                        "job {name:?} is also defined {replaced}; this group's definition is used"
                    ),
                );
            }
            let job = Job {
                name: name.clone(),
                job_group: Some(group.to_string()),
                ..template.clone()
            };
            self.check_schedule(&scope, &job);
            jobs.insert(name, job);
        }
    }

    /// `job_names` of a job group: required, a list of valid names.
    fn job_names(&mut self, scope: &Scope, map: &Map<String, Value>) -> Vec<String> {
        let Some(value) = map.get("job_names") else {
            let hint = typo_hint(map, "job_names", GROUP_KEYS);
            self.error(
                scope,
                &[],
                format!("job_names is required: the list of jobs this group defines{hint}"),
            );
            return Vec::new();
        };
        let Value::Array(items) = value else {
            self.error(
                scope,
                &["job_names"],
                expected("a list of job names", value),
            );
            return Vec::new();
        };
        let mut names = Vec::new();
        for item in items {
            match item {
                Value::String(name) if is_valid_name(name) => names.push(name.clone()),
                Value::String(name) => self.error(
                    scope,
                    &["job_names"],
                    format!("invalid job name {name:?}: {NAME_RULE}"),
                ),
                other => self.error(scope, &["job_names"], expected("a job name", other)),
            }
        }
        names
    }

    /// One job definition (of `jobs` or a job group); `None` if it has errors.
    /// The name is left empty for the caller to fill in.
    fn job(&mut self, scope: &Scope, value: &Value, known: &[&str]) -> Option<Job> {
        let map = self.mapping(scope, value, "at least command: ...")?;
        let errors_before = self.report.errors.len();
        self.warn_unknown(scope, map, known);
        let command = match map.contains_key("command") {
            true => self.get(scope, map, "command", command),
            false => {
                let hint = typo_hint(map, "command", known);
                self.error(
                    scope,
                    &[],
                    format!("command is required: the program to run and its arguments{hint}"),
                );
                None
            }
        };
        let job = Job {
            name: String::new(),
            command: command.unwrap_or_default(),
            command_append_run: self
                .get(scope, map, "command_append_run", boolean)
                .unwrap_or(false),
            schedule: self
                .get(scope, map, "schedule", nullable(string))
                .flatten()
                .map(str::to_string),
            schedule_timezone: self
                .get(scope, map, "schedule_timezone", nullable(time_zone))
                .flatten(),
            environment: self.environment(scope, map),
            max_execution: self
                .get(scope, map, "max_execution", nullable(positive_seconds))
                .flatten(),
            max_execution_grace: self
                .get(scope, map, "max_execution_grace", seconds)
                .unwrap_or(DEFAULT_MAX_EXECUTION_GRACE),
            concurrency_groups: self
                .get(scope, map, "concurrency_groups", nullable(group_names))
                .flatten()
                .unwrap_or_default(),
            concurrent_runs: self
                .get(scope, map, "concurrent_runs", boolean)
                .unwrap_or(false),
            render_reports: self
                .get(scope, map, "render_reports", boolean)
                .unwrap_or(true),
            jenkins_environment: self
                .get(scope, map, "jenkins_environment", boolean)
                .unwrap_or(false),
            job_group: self
                .get(scope, map, "job_group", nullable(string))
                .flatten()
                .map(str::to_string),
            trigger_environment_allow: self
                .get(
                    scope,
                    map,
                    "trigger_environment_allow",
                    nullable(allow_list),
                )
                .flatten(),
        };
        (self.report.errors.len() == errors_before).then_some(job)
    }
}

/// A concurrency group named by a job but not defined has `max: 1` (SPEC §7).
fn add_implied_groups(config: &mut Config) {
    for job in config.jobs.values() {
        for name in &job.concurrency_groups {
            config
                .concurrency_groups
                .entry(name.clone())
                .or_insert_with(|| ConcurrencyGroup {
                    name: name.clone(),
                    max: 1,
                });
        }
    }
}

/// " (is \"comand\" a misspelling?)" when `map` has an unknown key near `wanted`.
fn typo_hint(map: &Map<String, Value>, wanted: &str, known: &[&str]) -> String {
    map.keys()
        .filter(|key| !known.contains(&key.as_str()))
        .find(|key| edit_distance(key, wanted) <= 2)
        .map(|key| format!(" (is {key:?} a misspelling of it?)"))
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------
// Value parsers: each reads one value or says, in words, what is wrong.

/// "expected WHAT, got a string ("ten")".
fn expected(what: &str, value: &Value) -> String {
    format!("expected {what}, got {}", describe(value))
}

/// A short description of a value's type and, for scalars, the value.
fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".to_string(),
        Value::Bool(b) => format!("a boolean ({b})"),
        Value::Number(n) => format!("a number ({n})"),
        Value::String(s) if s.chars().count() > 40 => {
            let head: String = s.chars().take(40).collect();
            format!("a string ({head:?}...)")
        }
        Value::String(s) => format!("a string ({s:?})"),
        Value::Array(_) => "a list".to_string(),
        Value::Object(_) => "a mapping".to_string(),
    }
}

/// Null is `None`, anything else goes to `parse`.
fn nullable<'v, T>(
    parse: impl FnOnce(&'v Value) -> Result<T, String>,
) -> impl FnOnce(&'v Value) -> Result<Option<T>, String> {
    move |value| match value {
        Value::Null => Ok(None),
        value => parse(value).map(Some),
    }
}

fn boolean(value: &Value) -> Result<bool, String> {
    value
        .as_bool()
        .ok_or_else(|| expected("true or false", value))
}

fn string(value: &Value) -> Result<&str, String> {
    value.as_str().ok_or_else(|| expected("a string", value))
}

fn object(value: &Value) -> Result<&Map<String, Value>, String> {
    value
        .as_object()
        .ok_or_else(|| expected("a mapping", value))
}

fn path_string(value: &Value) -> Result<&str, String> {
    match value {
        Value::String(s) if !s.is_empty() => Ok(s),
        other => Err(expected("a path", other)),
    }
}

/// Seconds: an integer or a float, at least 0.
fn seconds(value: &Value) -> Result<f64, String> {
    match value.as_f64() {
        Some(n) if n >= 0.0 => Ok(n),
        Some(n) => Err(format!("must not be negative, got {n}")),
        None => Err(expected("a number of seconds", value)),
    }
}

/// Seconds, more than 0.
fn positive_seconds(value: &Value) -> Result<f64, String> {
    match seconds(value)? {
        n if n > 0.0 => Ok(n),
        _ => Err("must be more than 0 seconds; leave it out for no limit".to_string()),
    }
}

/// A whole number, at least 0.
fn count(value: &Value) -> Result<u64, String> {
    value
        .as_u64()
        .ok_or_else(|| expected("a whole number, 0 or more", value))
}

/// A whole number, at least 1.
fn positive_count(value: &Value) -> Result<u64, String> {
    match value.as_u64() {
        Some(n) if n >= 1 => Ok(n),
        _ => Err(expected("a whole number, 1 or more", value)),
    }
}

fn positive_u32(value: &Value) -> Result<u32, String> {
    positive_count(value).and_then(|n| u32::try_from(n).map_err(|_| format!("{n} is too large")))
}

/// `command`: a list of strings, or one string split like a shell would.
fn command(value: &Value) -> Result<Vec<String>, String> {
    let argv = match value {
        Value::String(line) => split_command(line)?,
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(command_item)
            .collect::<Result<_, _>>()?,
        other => return Err(expected("a list of strings, or a string", other)),
    };
    match argv.first() {
        None => Err("is empty: give the program to run and its arguments".to_string()),
        Some(program) if program.is_empty() => {
            Err("the program name (the first word) is empty".to_string())
        }
        Some(_) if argv.iter().any(|arg| arg.contains('\0')) => {
            Err("contains a NUL character, which no program can receive".to_string())
        }
        Some(_) => Ok(argv),
    }
}

fn command_item((index, item): (usize, &Value)) -> Result<String, String> {
    match item {
        Value::String(arg) => Ok(arg.clone()),
        // `[chmod, 0755, f]` would pass 493: make the user quote it.
        Value::Number(n) => Err(format!(
            "item {} is a number ({n}): quote it, as in \"{n}\"",
            index + 1
        )),
        other => Err(format!(
            "item {}: {}",
            index + 1,
            expected("a string", other)
        )),
    }
}

/// Split a command line with shell-word rules, like Python's `shlex.split`.
///
/// shell-words treats a word that starts with `#` as a comment, while
/// `shlex.split` (which the Python dsari uses) keeps it as a word; hiding
/// each `#` behind a private-use character the text does not contain keeps
/// the Python meaning.
fn split_command(line: &str) -> Result<Vec<String>, String> {
    let unused = ('\u{E000}'..='\u{F8FF}').find(|c| !line.contains(*c));
    let masked = match unused {
        Some(mask) => line.replace('#', &mask.to_string()),
        None => line.to_string(),
    };
    let words = shell_words::split(&masked).map_err(|e| {
        format!("cannot split into words ({e}); close the quote, or write command as a list")
    })?;
    Ok(match unused {
        Some(mask) => words.into_iter().map(|w| w.replace(mask, "#")).collect(),
        None => words,
    })
}

/// `schedule_timezone`: an IANA zone name, kept as written.
fn time_zone(value: &Value) -> Result<String, String> {
    let name = value
        .as_str()
        .ok_or_else(|| expected("an IANA time zone name such as \"Europe/Berlin\"", value))?;
    if name.parse::<chrono_tz::Tz>().is_ok() {
        return Ok(name.to_string());
    }
    let lower = name.to_lowercase();
    let names = chrono_tz::TZ_VARIANTS.iter().map(|tz| tz.name());
    let near = names
        .clone()
        .find(|known| known.to_lowercase() == lower)
        .or_else(|| closest(name, names));
    let hint = near
        .map(|n| format!(" (did you mean {n:?}?)"))
        .unwrap_or_default();
    Err(format!(
        "unknown time zone {name:?}{hint}; use an IANA name such as \"America/New_York\" or \
         \"UTC\", or leave the key out for the daemon's local zone"
    ))
}

/// A job's `concurrency_groups`: valid names, each once.
fn group_names(value: &Value) -> Result<Vec<String>, String> {
    let items = value
        .as_array()
        .ok_or_else(|| expected("a list of concurrency group names", value))?;
    let mut names: Vec<String> = Vec::new();
    for item in items {
        let name = item
            .as_str()
            .ok_or_else(|| expected("a list of concurrency group names", item))?;
        if !is_valid_name(name) {
            return Err(format!(
                "invalid concurrency group name {name:?}: {NAME_RULE}"
            ));
        }
        if !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
    }
    Ok(names)
}

/// `trigger_environment_allow`: names, or prefixes ending in `*`.
fn allow_list(value: &Value) -> Result<Vec<String>, String> {
    let items = value
        .as_array()
        .ok_or_else(|| expected("a list of variable names or PREFIX* patterns", value))?;
    items
        .iter()
        .map(|item| {
            let pattern = item
                .as_str()
                .ok_or_else(|| expected("a variable name or a PREFIX* pattern", item))?;
            let body = pattern.strip_suffix('*').unwrap_or(pattern);
            if pattern.is_empty() || body.contains(['*', '=', '\0']) {
                return Err(format!(
                    "{pattern:?} is not a variable name or a PREFIX* pattern \
                     (only a final * is allowed)"
                ));
            }
            Ok(pattern.to_string())
        })
        .collect()
}

/// One `environment` entry: the value as text, numbers as Python prints them.
fn environment_entry(name: &str, value: &Value) -> Result<String, String> {
    if name.is_empty() || name.contains(['=', '\0']) {
        return Err("not a usable variable name (it is empty or holds = or NUL)".to_string());
    }
    let text = match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => python_number_text(n),
        Value::Bool(b) => {
            return Err(format!(
                "expected a string or a number, got a boolean ({b}); YAML reads unquoted \
                 yes/no/on/off/true/false as booleans, so quote the value (\"yes\")"
            ));
        }
        other => return Err(expected("a string or a number", other)),
    };
    match text.contains('\0') {
        true => Err("the value contains a NUL character".to_string()),
        false => Ok(text),
    }
}

/// A number as Python's `str()` prints it: `1`, `1.5`, `2.0`, `1e+16`.
fn python_number_text(n: &Number) -> String {
    if let Some(i) = n.as_i64() {
        return i.to_string();
    }
    if let Some(u) = n.as_u64() {
        return u.to_string();
    }
    n.as_f64()
        .map(python_float_repr)
        .unwrap_or_else(|| n.to_string())
}

/// Python's `repr(float)`: the shortest digits that read back to the same
/// value, positional for exponents -4..16, else scientific with a signed,
/// two-digit-or-more exponent.
fn python_float_repr(x: f64) -> String {
    if x.is_nan() {
        return "nan".to_string();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf" } else { "-inf" }.to_string();
    }
    // `{:e}` gives the shortest round-trip digits: "-1.25e-7", "2e0".
    let scientific = format!("{x:e}");
    let (mantissa, exponent) = scientific.split_once('e').unwrap_or((&scientific, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if !(-4..16).contains(&exponent) {
        let sign_e = if exponent < 0 { '-' } else { '+' };
        return format!("{sign}{mantissa}e{sign_e}{:02}", exponent.unsigned_abs());
    }
    if exponent < 0 {
        let zeros = "0".repeat(exponent.unsigned_abs() as usize - 1);
        return format!("{sign}0.{zeros}{digits}");
    }
    let int_len = exponent as usize + 1;
    if digits.len() <= int_len {
        let zeros = "0".repeat(int_len - digits.len());
        format!("{sign}{digits}{zeros}.0")
    } else {
        format!("{sign}{}.{}", &digits[..int_len], &digits[int_len..])
    }
}

/// The candidate nearest to `word` within edit distance 2, if any.
fn closest<'k>(word: &str, candidates: impl Iterator<Item = &'k str>) -> Option<&'k str> {
    candidates
        .map(|candidate| (edit_distance(word, candidate), candidate))
        .filter(|(distance, _)| *distance <= 2)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

/// Levenshtein distance, in characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tempfile::TempDir;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        fs::write(&path, text).unwrap();
        path
    }

    fn load_ok(dir: &Path) -> Loaded {
        match load(dir) {
            Ok(loaded) => loaded,
            Err(e) => panic!("config failed:\n{e}"),
        }
    }

    fn load_err(dir: &Path) -> Vec<String> {
        match load(dir) {
            Ok(loaded) => panic!("config loaded: {:?}", loaded.config.jobs),
            Err(e) => e.errors,
        }
    }

    /// A config dir holding `dsari.yaml` with `text`.
    fn yaml_dir(text: &str) -> TempDir {
        let dir = TempDir::new().unwrap();
        write(dir.path(), "dsari.yaml", text);
        dir
    }

    fn job<'c>(config: &'c Config, name: &str) -> &'c Job {
        match config.jobs.get(name) {
            Some(job) => job,
            None => panic!("no job {name:?} in {:?}", config.jobs.keys()),
        }
    }

    #[test]
    fn merge_order() {
        let dir = TempDir::new().unwrap();
        let d = dir.path();
        write(
            d,
            "dsari.yaml",
            "environment: {A: yaml, B: yaml, C: yaml, D: yaml, E: yaml}\n",
        );
        write(
            d,
            "dsari.json",
            r#"{"environment": {"B": "json", "C": "json", "D": "json", "E": "json"}}"#,
        );
        write(
            d,
            "config.d/20-b.yaml",
            "environment: {D: b-yaml, E: b-yaml}\n",
        );
        write(
            d,
            "config.d/10-a.yaml",
            "environment: {C: a-yaml, D: a-yaml, E: a-yaml}\n",
        );
        write(
            d,
            "config.d/20-b.json",
            r#"{"environment": {"E": "b-json"}}"#,
        );
        write(
            d,
            "config.d/99-z.json",
            r#"{"environment": {"E": "z-json"}}"#,
        );
        write(
            d,
            "config.d/00-first.json",
            r#"{"environment": {"E": "first-json"}}"#,
        );
        write(d, "config.d/ignored.yml", "environment: {E: yml}\n");
        write(d, "config.d/ignored.txt", "environment: {E: txt}\n");
        let env = load_ok(d).config.environment;
        let expected: BTreeMap<String, String> = [
            ("A", "yaml"),
            ("B", "json"),
            ("C", "a-yaml"),
            ("D", "b-yaml"),
            ("E", "z-json"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(env, expected);
    }

    #[test]
    fn deep_merge_of_nested_maps() {
        let dir = TempDir::new().unwrap();
        let d = dir.path();
        write(
            d,
            "dsari.yaml",
            "jobs:\n  web:\n    command: [make]\n    environment: {A: '1', B: '2'}\n    render_reports: false\n",
        );
        write(
            d,
            "config.d/web.yaml",
            "jobs:\n  web:\n    environment: {B: two, C: three}\n    command: [make, all]\n  db:\n    command: true-cmd\n",
        );
        let config = load_ok(d).config;
        let web = job(&config, "web");
        assert_eq!(web.command, ["make", "all"]);
        assert!(!web.render_reports);
        assert_eq!(web.environment.get("A").map(String::as_str), Some("1"));
        assert_eq!(web.environment.get("B").map(String::as_str), Some("two"));
        assert_eq!(web.environment.get("C").map(String::as_str), Some("three"));
        assert_eq!(job(&config, "db").command, ["true-cmd"]);
        assert_eq!(
            config.raw["jobs"]["web"]["environment"],
            json!({"A": "1", "B": "two", "C": "three"})
        );
    }

    #[test]
    fn a_non_mapping_replaces_a_mapping() {
        let dir = TempDir::new().unwrap();
        let d = dir.path();
        write(
            d,
            "dsari.yaml",
            "environment: {A: x}\njobs: {a: {command: x}}\n",
        );
        write(d, "dsari.json", r#"{"environment": null}"#);
        let config = load_ok(d).config;
        assert!(config.environment.is_empty());
        assert_eq!(config.jobs.len(), 1);
    }

    #[test]
    fn job_groups_expand_with_job_group_set() {
        let dir = yaml_dir(
            "job_groups:\n  builders:\n    job_names: [build-a, build-b]\n    command: make\n    max_execution: 30\n",
        );
        let config = load_ok(dir.path()).config;
        assert_eq!(config.jobs.len(), 2);
        for name in ["build-a", "build-b"] {
            let job = job(&config, name);
            assert_eq!(job.name, name);
            assert_eq!(job.job_group.as_deref(), Some("builders"));
            assert_eq!(job.max_execution, Some(30.0));
            assert_eq!(job.command, ["make"]);
        }
    }

    #[test]
    fn job_group_wins_over_job_with_warning() {
        let dir = yaml_dir(
            "jobs:\n  a: {command: from-jobs}\njob_groups:\n  g: {job_names: [a], command: from-group}\n",
        );
        let loaded = load_ok(dir.path());
        assert_eq!(job(&loaded.config, "a").command, ["from-group"]);
        assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
        assert!(
            loaded.warnings[0].contains("job group \"g\""),
            "{:?}",
            loaded.warnings
        );
        assert!(
            loaded.warnings[0].contains("\"a\" is also defined in jobs"),
            "{:?}",
            loaded.warnings
        );
    }

    #[test]
    fn job_group_requires_job_names() {
        let dir = yaml_dir("job_groups:\n  g:\n    command: x\n    job_name: [a]\n");
        let errors = load_err(dir.path());
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].contains("job group \"g\": job_names is required"),
            "{errors:?}"
        );
        assert!(
            errors[0].contains("\"job_name\" a misspelling"),
            "{errors:?}"
        );
    }

    #[test]
    fn command_strings_are_split_like_shlex() {
        let cases = [
            ("make -C /srv/app", vec!["make", "-C", "/srv/app"]),
            (
                r#"sh -c 'echo "hi there"'"#,
                vec!["sh", "-c", r#"echo "hi there""#],
            ),
            (r#"echo "a b" c\ d"#, vec!["echo", "a b", "c d"]),
            (
                "echo # not a comment",
                vec!["echo", "#", "not", "a", "comment"],
            ),
            ("curl http://x/#frag", vec!["curl", "http://x/#frag"]),
        ];
        for (line, words) in cases {
            assert_eq!(
                split_command(line),
                Ok(words.iter().map(|w| w.to_string()).collect()),
                "{line}"
            );
        }
    }

    #[test]
    fn command_errors() {
        let dir = yaml_dir(concat!(
            "jobs:\n",
            "  quote: {command: \"echo 'oops\"}\n",
            "  empty: {command: \"  \"}\n",
            "  empty-list: {command: []}\n",
            "  number: {command: [chmod, 0755, f]}\n",
            "  map: {command: {a: b}}\n",
            "  none: {schedule: null}\n",
        ));
        let errors = load_err(dir.path());
        let path = dir.path().join("dsari.yaml");
        let p = path.display();
        let expected = [
            format!(
                "{p}: job \"quote\": command: cannot split into words (missing closing quote); close the quote, or write command as a list"
            ),
            format!(
                "{p}: job \"empty\": command: is empty: give the program to run and its arguments"
            ),
            format!(
                "{p}: job \"empty-list\": command: is empty: give the program to run and its arguments"
            ),
            format!(
                "{p}: job \"number\": command: item 2 is a number (493): quote it, as in \"493\""
            ),
            format!(
                "{p}: job \"map\": command: expected a list of strings, or a string, got a mapping"
            ),
            format!("{p}: job \"none\": command is required: the program to run and its arguments"),
        ];
        assert_eq!(errors, expected);
    }

    #[test]
    fn errors_name_file_job_and_key() {
        let dir = TempDir::new().unwrap();
        write(
            dir.path(),
            "dsari.yaml",
            "jobs:\n  web build:\n    command: make\n",
        );
        let file = write(
            dir.path(),
            "config.d/10-web.yaml",
            "jobs:\n  web build:\n    max_execution: ten\n",
        );
        let errors = load_err(dir.path());
        assert_eq!(
            errors,
            [format!(
                "{}: job \"web build\": max_execution: expected a number of seconds, got a string (\"ten\")",
                file.display()
            )]
        );
    }

    #[test]
    fn all_errors_are_collected() {
        let dir = TempDir::new().unwrap();
        let main = write(
            dir.path(),
            "dsari.yaml",
            "report_html_gz: 1\njobs:\n  a:\n    command: x\n    concurrent_runs: 'yes'\n    max_execution: 0\n",
        );
        let extra = write(
            dir.path(),
            "config.d/b.json",
            r#"{"jobs": {"b": {"command": "y", "max_execution_grace": -1}}, "trigger_max_bytes": 0}"#,
        );
        let errors = load_err(dir.path());
        let (m, e) = (main.display(), extra.display());
        let expected = [
            format!("{m}: report_html_gz: expected true or false, got a number (1)"),
            format!("{e}: trigger_max_bytes: expected a whole number, 1 or more, got a number (0)"),
            format!(
                "{m}: job \"a\": max_execution: must be more than 0 seconds; leave it out for no limit"
            ),
            format!(
                "{m}: job \"a\": concurrent_runs: expected true or false, got a string (\"yes\")"
            ),
            format!("{e}: job \"b\": max_execution_grace: must not be negative, got -1"),
        ];
        assert_eq!(errors, expected);
    }

    #[test]
    fn unknown_keys_warn_with_suggestion() {
        let dir = yaml_dir(
            "jbos: {}\njobs:\n  a:\n    command: x\n    max_executoin: 5\n    frobnicate: 1\n",
        );
        let loaded = load_ok(dir.path());
        let p = dir.path().join("dsari.yaml");
        let p = p.display();
        assert_eq!(
            loaded.warnings,
            [
                format!("{p}: unknown key \"jbos\" ignored (did you mean \"jobs\"?)"),
                format!(
                    "{p}: job \"a\": unknown key \"max_executoin\" ignored (did you mean \"max_execution\"?)"
                ),
                format!("{p}: job \"a\": unknown key \"frobnicate\" ignored"),
            ]
        );
    }

    #[test]
    fn missing_command_points_at_typo() {
        let dir = yaml_dir("jobs:\n  a:\n    comand: x\n");
        let errors = load_err(dir.path());
        assert_eq!(errors.len(), 1);
        assert!(errors[0].ends_with("job \"a\": command is required: the program to run and its arguments (is \"comand\" a misspelling of it?)"), "{errors:?}");
    }

    #[test]
    fn environment_numbers_print_like_python() {
        let dir = yaml_dir(concat!(
            "environment: {INT: 1, FLOAT: 1.5, WHOLE: 2.0, NEG: -3, OCT: 0755, BIG: 1.0e+16, SMALL: 0.00001, S: text}\n",
            "jobs:\n  a:\n    command: x\n    environment: {N: 42}\n",
        ));
        let config = load_ok(dir.path()).config;
        let env: Vec<(&str, &str)> = config
            .environment
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            env,
            [
                ("BIG", "1e+16"),
                ("FLOAT", "1.5"),
                ("INT", "1"),
                ("NEG", "-3"),
                ("OCT", "493"),
                ("S", "text"),
                ("SMALL", "1e-05"),
                ("WHOLE", "2.0"),
            ]
        );
        assert_eq!(
            job(&config, "a").environment.get("N").map(String::as_str),
            Some("42")
        );
    }

    #[test]
    fn python_float_repr_matches_python() {
        let cases = [
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (2.0, "2.0"),
            (1.5, "1.5"),
            (0.1, "0.1"),
            (100.0, "100.0"),
            (123.456, "123.456"),
            (0.0001, "0.0001"),
            (0.00012, "0.00012"),
            (1e-5, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (1.2345678901234567e17, "1.2345678901234566e+17"),
            (1e22, "1e+22"),
            (1.5e300, "1.5e+300"),
            (-2.5, "-2.5"),
            (1.0 / 3.0, "0.3333333333333333"),
        ];
        for (x, text) in cases {
            assert_eq!(python_float_repr(x), text, "{x:e}");
        }
    }

    #[test]
    fn environment_rejects_booleans_null_and_nesting() {
        let dir = yaml_dir("environment: {DEBUG: yes, EMPTY: null, NESTED: {a: 1}, OK: fine}\n");
        let errors = load_err(dir.path());
        let p = dir.path().join("dsari.yaml");
        let p = p.display();
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(
            errors[0].starts_with(&format!(
                "{p}: environment: \"DEBUG\": expected a string or a number, got a boolean (true); "
            )),
            "{errors:?}"
        );
        assert!(errors[0].contains("quote the value"), "{errors:?}");
        assert_eq!(
            errors[1],
            format!("{p}: environment: \"EMPTY\": expected a string or a number, got null")
        );
        assert_eq!(
            errors[2],
            format!("{p}: environment: \"NESTED\": expected a string or a number, got a mapping")
        );
    }

    #[test]
    fn time_zones() {
        let dir = yaml_dir(concat!(
            "jobs:\n",
            "  ok: {command: x, schedule_timezone: America/New_York}\n",
            "  typo: {command: x, schedule_timezone: Europe/Berln}\n",
            "  case: {command: x, schedule_timezone: europe/paris}\n",
            "  junk: {command: x, schedule_timezone: Not/AZone}\n",
        ));
        let errors = load_err(dir.path());
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors[0].contains("job \"typo\": schedule_timezone: unknown time zone \"Europe/Berln\" (did you mean \"Europe/Berlin\"?)"), "{errors:?}");
        assert!(
            errors[1].contains("(did you mean \"Europe/Paris\"?)"),
            "{errors:?}"
        );
        assert!(
            errors[2].contains("unknown time zone \"Not/AZone\"; use an IANA name"),
            "{errors:?}"
        );
        let dir = yaml_dir("jobs:\n  ok: {command: x, schedule_timezone: America/New_York}\n");
        let config = load_ok(dir.path()).config;
        assert_eq!(
            job(&config, "ok").schedule_timezone.as_deref(),
            Some("America/New_York")
        );
    }

    #[test]
    fn valid_names() {
        for name in ["a", "web build", "A-Z_a.z+0:9@host", "...", &"x".repeat(64)] {
            assert!(is_valid_name(name), "{name:?}");
        }
        for name in [
            "",
            ".",
            "..",
            "a/b",
            "../x",
            "tab\there",
            "é",
            &"x".repeat(65),
            "a\0",
        ] {
            assert!(!is_valid_name(name), "{name:?}");
        }
    }

    #[test]
    fn bad_names_are_errors() {
        let dir = yaml_dir(concat!(
            "jobs:\n  ../x: {command: x}\n  a/b: {command: x}\n  '': {command: x}\n  good: {command: x, concurrency_groups: [ok, 'bad/group']}\n",
            "job_groups:\n  'g/1': {job_names: [a], command: x}\n  g2: {job_names: [fine, '..'], command: x}\n",
            "concurrency_groups:\n  '.': {max: 2}\n",
        ));
        let errors = load_err(dir.path());
        let p = dir.path().join("dsari.yaml");
        let p = p.display();
        let rule = NAME_RULE;
        let expected = [
            format!("{p}: concurrency group \".\": invalid concurrency group name \".\": {rule}"),
            format!("{p}: job \"../x\": invalid job name \"../x\": {rule}"),
            format!("{p}: job \"a/b\": invalid job name \"a/b\": {rule}"),
            format!("{p}: job \"\": invalid job name \"\": {rule}"),
            format!(
                "{p}: job \"good\": concurrency_groups: invalid concurrency group name \"bad/group\": {rule}"
            ),
            format!("{p}: job group \"g/1\": invalid job group name \"g/1\": {rule}"),
            format!("{p}: job group \"g2\": job_names: invalid job name \"..\": {rule}"),
        ];
        assert_eq!(errors, expected);
    }

    #[test]
    fn config_d_is_relocated_relative_to_the_config_dir() {
        let dir = TempDir::new().unwrap();
        let d = dir.path();
        write(d, "dsari.yaml", "config_d: elsewhere\n");
        write(d, "config.d/a.yaml", "jobs: {ignored: {command: x}}\n");
        write(d, "elsewhere/a.yaml", "jobs: {used: {command: x}}\n");
        let config = load_ok(d).config;
        assert_eq!(config.jobs.keys().collect::<Vec<_>>(), ["used"]);
        assert_eq!(
            config.to_json()["config_d"],
            json!(path_text(&d.join("elsewhere")))
        );

        write(d, "dsari.yaml", "config_d: null\n");
        assert!(load_ok(d).config.jobs.is_empty());

        write(d, "dsari.yaml", "config_d: 5\n");
        let errors = load_err(d);
        assert!(
            errors[0]
                .ends_with("dsari.yaml: config_d: expected a directory path, got a number (5)"),
            "{errors:?}"
        );
    }

    #[test]
    fn config_d_in_config_d_warns() {
        let dir = TempDir::new().unwrap();
        write(dir.path(), "config.d/a.yaml", "config_d: /nowhere\n");
        let loaded = load_ok(dir.path());
        assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
        assert!(loaded.warnings[0].contains("config_d has no effect in a config.d file"));
    }

    #[test]
    fn empty_dir_is_valid() {
        let dir = TempDir::new().unwrap();
        let loaded = load_ok(dir.path());
        assert!(loaded.warnings.is_empty());
        let config = loaded.config;
        assert!(config.jobs.is_empty());
        assert!(config.concurrency_groups.is_empty());
        assert_eq!(config.raw, json!({}));
        assert_eq!(config.config_dir, dir.path());
        assert_eq!(config.trigger_max_bytes, DEFAULT_TRIGGER_MAX_BYTES);
        assert_eq!(config.database_file, config.data_dir.join("dsari.sqlite3"));
    }

    #[test]
    fn empty_files_contribute_nothing() {
        let dir = TempDir::new().unwrap();
        write(dir.path(), "dsari.yaml", "# nothing yet\n");
        write(dir.path(), "config.d/a.yaml", "");
        write(dir.path(), "config.d/b.yaml", "jobs:\n");
        assert!(load_ok(dir.path()).config.jobs.is_empty());
        write(dir.path(), "dsari.json", " \n");
        let errors = load_err(dir.path());
        assert!(
            errors[0].ends_with("dsari.json: the file is empty: write {} in it or remove it"),
            "{errors:?}"
        );
    }

    #[test]
    fn missing_dir_is_an_error() {
        let dir = TempDir::new().unwrap();
        let missing = dir.path().join("nope");
        let errors = load_err(&missing);
        assert_eq!(errors.len(), 1);
        assert!(errors[0].starts_with(&format!(
            "{}: the config dir does not exist; create it",
            missing.display()
        )));
        assert!(errors[0].contains("-c DIR"));
    }

    #[test]
    fn non_mapping_file_is_an_error() {
        let dir = TempDir::new().unwrap();
        write(dir.path(), "dsari.yaml", "- a\n- b\n");
        let json_file = write(dir.path(), "config.d/x.json", "\"text\"");
        let errors = load_err(dir.path());
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].ends_with("dsari.yaml: the top level must be a mapping of keys (such as jobs) to values, got a list"));
        assert!(errors[1].starts_with(&json_file.display().to_string()));
    }

    #[test]
    fn yaml_anchors_and_merge_keys() {
        let dir = yaml_dir(concat!(
            "defaults: &defaults\n",
            "  command: [make]\n",
            "  max_execution: 60\n",
            "  render_reports: no\n",
            "jobs:\n",
            "  a:\n",
            "    <<: *defaults\n",
            "  b:\n",
            "    <<: *defaults\n",
            "    max_execution: 120\n",
            "    environment: {PERM: 0755}\n",
        ));
        let loaded = load_ok(dir.path());
        let config = &loaded.config;
        assert_eq!(job(config, "a").max_execution, Some(60.0));
        assert!(!job(config, "a").render_reports);
        assert_eq!(job(config, "b").max_execution, Some(120.0));
        assert_eq!(job(config, "b").command, ["make"]);
        assert_eq!(
            job(config, "b").environment.get("PERM").map(String::as_str),
            Some("493")
        );
        // `defaults` is only a place for the anchor, and is reported as unknown.
        assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
    }

    #[test]
    fn yaml_syntax_errors_say_where_and_hint_at_schedules() {
        let dir = yaml_dir("jobs:\n  a:\n    command: x\n    schedule: */5 * * * *\n");
        let errors = load_err(dir.path());
        assert_eq!(errors.len(), 1, "{errors:?}");
        let e = &errors[0];
        assert!(
            e.starts_with(&dir.path().join("dsari.yaml").display().to_string()),
            "{e}"
        );
        assert!(e.contains("line 4"), "{e}");
        assert!(e.contains("quote the schedule"), "{e}");
        assert!(e.contains("schedule: \"*/5 * * * *\""), "{e}");
        assert!(!e.contains('\n'), "{e}");

        let dir = yaml_dir("jobs:\n  a:\n    command: x\n    schedule: @daily\n");
        assert!(load_err(dir.path())[0].contains("quote the schedule"));

        let dir = yaml_dir("jobs: [a\n");
        assert!(!load_err(dir.path())[0].contains("quote the schedule"));
    }

    #[test]
    fn schedules_are_kept_as_written() {
        let dir = yaml_dir(
            "jobs:\n  a: {command: x, schedule: 'H/5 * * * *'}\n  b: {command: x, schedule: null}\n  c: {command: x, schedule: 5}\n",
        );
        let errors = load_err(dir.path());
        assert_eq!(errors.len(), 1);
        assert!(errors[0].ends_with("job \"c\": schedule: expected a string, got a number (5)"));
        let dir = yaml_dir(
            "jobs:\n  a: {command: x, schedule: 'H/5 * * * *'}\n  b: {command: x, schedule: null}\n",
        );
        let config = load_ok(dir.path()).config;
        assert_eq!(job(&config, "a").schedule.as_deref(), Some("H/5 * * * *"));
        assert_eq!(job(&config, "b").schedule, None);
    }

    #[test]
    fn job_defaults() {
        let dir = yaml_dir("jobs:\n  a:\n    command: x\n");
        let config = load_ok(dir.path()).config;
        let a = job(&config, "a");
        let expected = Job {
            name: "a".to_string(),
            command: vec!["x".to_string()],
            command_append_run: false,
            schedule: None,
            schedule_timezone: None,
            environment: BTreeMap::new(),
            max_execution: None,
            max_execution_grace: DEFAULT_MAX_EXECUTION_GRACE,
            concurrency_groups: Vec::new(),
            concurrent_runs: false,
            render_reports: true,
            jenkins_environment: false,
            job_group: None,
            trigger_environment_allow: None,
        };
        assert_eq!(a, &expected);
    }

    #[test]
    fn concurrency_groups_defined_and_implied() {
        let dir = yaml_dir(concat!(
            "concurrency_groups:\n  big: {max: 3}\n  plain:\n",
            "jobs:\n  a: {command: x, concurrency_groups: [big, implied, implied]}\n",
        ));
        let config = load_ok(dir.path()).config;
        let maxes: Vec<(&str, u32)> = config
            .concurrency_groups
            .values()
            .map(|g| (g.name.as_str(), g.max))
            .collect();
        assert_eq!(maxes, [("big", 3), ("implied", 1), ("plain", 1)]);
        assert_eq!(job(&config, "a").concurrency_groups, ["big", "implied"]);

        let dir = yaml_dir("concurrency_groups:\n  g: {max: 0}\n  h: 2\n");
        let errors = load_err(dir.path());
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].ends_with(
            "concurrency group \"g\": max: expected a whole number, 1 or more, got a number (0)"
        ));
        assert!(errors[1].contains("concurrency group \"h\": expected a mapping"));
    }

    #[test]
    fn trigger_environment_allow_patterns() {
        let dir =
            yaml_dir("jobs:\n  a: {command: x, trigger_environment_allow: [BUILD_ID, 'GIT_*']}\n");
        let config = load_ok(dir.path()).config;
        assert_eq!(
            job(&config, "a").trigger_environment_allow,
            Some(vec!["BUILD_ID".to_string(), "GIT_*".to_string()])
        );
        let dir = yaml_dir("jobs:\n  a: {command: x, trigger_environment_allow: ['*_ID']}\n");
        assert!(load_err(dir.path())[0].contains("only a final * is allowed"));
    }

    #[test]
    fn database_and_paths() {
        let dir = yaml_dir(
            "data_dir: var\ndatabase: {type: sqlite3, file: db/x.sqlite3}\ntemplate_dir: /srv/templates\n",
        );
        let config = load_ok(dir.path()).config;
        assert_eq!(config.data_dir, dir.path().join("var"));
        assert_eq!(config.database_file, dir.path().join("db/x.sqlite3"));
        assert_eq!(
            config.template_dir.as_deref(),
            Some(Path::new("/srv/templates"))
        );

        let dir = yaml_dir("data_dir: /srv/dsari\n");
        let config = load_ok(dir.path()).config;
        assert_eq!(config.database_file, Path::new("/srv/dsari/dsari.sqlite3"));

        let dir = yaml_dir("database: {type: postgresql, dsn: 'dbname=dsari'}\n");
        let loaded = load(dir.path());
        let Err(e) = loaded else {
            panic!("postgresql accepted")
        };
        assert_eq!(e.errors.len(), 1);
        assert!(e.errors[0].contains("database: type: \"postgresql\" is not supported by this version of dsari, only \"sqlite3\" is"), "{:?}", e.errors);
        assert!(
            e.warnings[0].contains("unknown key \"dsn\""),
            "{:?}",
            e.warnings
        );
    }

    #[test]
    fn top_level_values() {
        let dir = yaml_dir(concat!(
            "shutdown_kill_runs: true\nshutdown_kill_grace: 2.5\nreport_html_gz: yes\n",
            "report_run_output_start: 100\nreport_run_output_end: 200\ntrigger_max_bytes: 4096\n",
            "schedule_accuracy: 0.25\n",
        ));
        let config = load_ok(dir.path()).config;
        assert_eq!(config.schedule_accuracy, 0.25);
        assert!(config.shutdown_kill_runs);
        assert_eq!(config.shutdown_kill_grace, Some(2.5));
        assert!(config.report_html_gz);
        assert_eq!(
            (config.report_run_output_start, config.report_run_output_end),
            (100, 200)
        );
        assert_eq!(config.trigger_max_bytes, 4096);

        let defaults = load_ok(yaml_dir("{}\n").path()).config;
        assert_eq!(defaults.schedule_accuracy, 1.0);
        let Err(e) = load(yaml_dir("schedule_accuracy: -1\n").path()) else {
            panic!("a negative schedule_accuracy accepted")
        };
        assert!(
            e.errors[0].contains("schedule_accuracy") && e.errors[0].contains("negative"),
            "{:?}",
            e.errors
        );
    }

    #[test]
    fn to_json_is_normalised() {
        let dir = yaml_dir("jobs:\n  a: {command: 'make all', concurrency_groups: [z, b]}\n");
        let config = load_ok(dir.path()).config;
        let dumped = config.to_json();
        assert_eq!(
            dumped["jobs"]["a"],
            json!({
                "command": ["make", "all"],
                "command_append_run": false,
                "concurrency_groups": ["b", "z"],
                "concurrent_runs": false,
                "environment": {},
                "jenkins_environment": false,
                "job_group": null,
                "max_execution": null,
                "max_execution_grace": 60.0,
                "render_reports": true,
                "schedule": null,
                "schedule_timezone": null,
                "trigger_environment_allow": null,
            })
        );
        assert_eq!(
            dumped["concurrency_groups"],
            json!({"b": {"max": 1}, "z": {"max": 1}})
        );
        assert_eq!(dumped["database"]["type"], json!("sqlite3"));
        assert_eq!(
            dumped["config_d"],
            json!(path_text(&dir.path().join("config.d")))
        );
        assert_eq!(
            dumped["trigger_max_bytes"],
            json!(DEFAULT_TRIGGER_MAX_BYTES)
        );
    }

    #[test]
    fn standard_dirs_pair_config_and_data() {
        let root = TempDir::new().unwrap();
        let r = root.path();
        let pair = |name: &str| DirPair::new(r.join(name).join("etc"), r.join(name).join("var"));
        let mut dirs = StandardDirs {
            dsari_home: None,
            searched: vec![pair("user"), pair("local"), pair("system")],
            fallback: pair("user"),
        };
        // Nothing holds config: the user pair.
        assert_eq!(dirs.default_pair(), &pair("user"));
        // The first that holds config wins; config.d alone counts.
        fs::create_dir_all(r.join("system/etc/config.d")).unwrap();
        assert_eq!(dirs.default_pair(), &pair("system"));
        write(r, "local/etc/dsari.json", "{}");
        assert_eq!(dirs.default_pair(), &pair("local"));
        // Each standard config dir keeps its own data dir.
        assert_eq!(
            dirs.data_dir_for(&r.join("system/etc")),
            r.join("system/var")
        );
        assert_eq!(dirs.data_dir_for(&r.join("user/etc/")), r.join("user/var"));
        // Any other dir gets the default pair's data dir, as in the Python dsari.
        assert_eq!(dirs.data_dir_for(&r.join("custom")), r.join("local/var"));
        // DSARI_HOME overrides the search.
        dirs.dsari_home = Some(pair("home"));
        assert_eq!(dirs.default_pair(), &pair("home"));
        assert_eq!(dirs.data_dir_for(&r.join("custom")), r.join("home/var"));
        assert_eq!(
            dirs.data_dir_for(&r.join("system/etc")),
            r.join("system/var")
        );
    }

    #[test]
    fn errors_do_not_panic_on_odd_input() {
        let texts = [
            "jobs: 5\n",
            "jobs: [a]\n",
            "jobs: {a: null}\n",
            "jobs: {a: [x]}\n",
            "job_groups: {g: null}\n",
            "job_groups: {g: {job_names: a, command: x}}\n",
            "job_groups: {g: {job_names: [1, null], command: x}}\n",
            "concurrency_groups: [a]\n",
            "database: 5\n",
            "environment: [a]\n",
            "data_dir: ''\n",
            "jobs: {a: {command: [x], environment: {'A=B': x, '': y}}}\n",
            "jobs: {a: {command: [x, null], max_execution: .nan}}\n",
        ];
        for text in texts {
            let dir = yaml_dir(text);
            let errors = load_err(dir.path());
            assert!(!errors.is_empty(), "{text}");
            assert!(errors.iter().all(|e| !e.contains('\n')), "{errors:?}");
        }
    }

    #[test]
    fn edit_distances() {
        assert_eq!(edit_distance("", ""), 0);
        assert_eq!(edit_distance("jobs", "jbos"), 2);
        assert_eq!(edit_distance("command", "comand"), 1);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(
            closest("scheduel", JOB_KEYS.iter().copied()),
            Some("schedule")
        );
        assert_eq!(closest("zzz", JOB_KEYS.iter().copied()), None);
    }
}
