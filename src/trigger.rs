//! Reading one trigger file: safely, completely, and with a reason when it is bad.
//!
//! Owns SPEC §4.1 (what is a trigger file), §4.2 (its content) and the file side of
//! §4.4 (never follow links, never block on FIFOs, never read huge files). It reads
//! and never moves, deletes or logs: the daemon decides what to do with the outcome.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use serde_json::{Map, Value};

use crate::document::{self, Format};

/// A file that does not parse and is younger than this may still be being written.
pub const YOUNG_FILE_SECONDS: f64 = 2.0;

/// A parsed, valid trigger.
#[derive(Debug, Clone, PartialEq)]
pub struct Trigger {
    /// The whole mapping, with `environment` values normalised to strings.
    pub data: Map<String, Value>,
    /// When the run is due, epoch seconds.
    pub schedule_time: f64,
    /// The trigger's `environment`, before any filtering.
    pub environment: BTreeMap<String, String>,
    /// `idempotency_key`, when given.
    pub idempotency_key: Option<String>,
}

/// What reading a trigger file came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// A valid trigger.
    Trigger(Trigger),
    /// The file is not there (any more): nothing to do.
    Gone,
    /// It does not parse yet but is young: try again at this time (epoch seconds) or when it changes.
    RetryAt(f64),
    /// It is bad: move it aside with this reason.
    Reject(String),
}

/// Is this file name a trigger file's name? (SPEC §4.1)
pub fn is_trigger_name(name: &str) -> bool {
    !name.starts_with('.')
        && (name.ends_with(".json") || name.ends_with(".yaml") || name.ends_with(".yml"))
}

/// Read and validate one trigger file. `now` is epoch seconds.
pub fn read(path: &Path, max_bytes: u64, now: f64) -> Outcome {
    // lstat first: a symlink, FIFO or device is judged by its name, never opened.
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Outcome::Gone,
        Err(e) => return Outcome::Reject(format!("cannot examine the file: {e}")),
    };
    if let Some(kind) = not_regular(&meta) {
        return Outcome::Reject(format!("{kind}, not a regular file; it was not opened"));
    }
    let mut file = match open_no_follow(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Outcome::Gone,
        Err(e) => return Outcome::Reject(format!("cannot open the file: {e}")),
    };
    // fstat the opened file: it may have been swapped since the lstat.
    let meta = match file.metadata() {
        Ok(m) => m,
        Err(e) => return Outcome::Reject(format!("cannot examine the file: {e}")),
    };
    if let Some(kind) = not_regular(&meta) {
        return Outcome::Reject(format!("{kind}, not a regular file"));
    }
    if meta.len() > max_bytes {
        return Outcome::Reject(format!(
            "the file has {} bytes, more than the limit of {max_bytes} (trigger_max_bytes); it was not read",
            meta.len()
        ));
    }
    let mtime = meta.mtime() as f64 + meta.mtime_nsec() as f64 / 1e9;
    let mut bytes = Vec::new();
    if let Err(e) = file.by_ref().take(max_bytes + 1).read_to_end(&mut bytes) {
        return Outcome::Reject(format!("cannot read the file: {e}"));
    }
    if bytes.len() as u64 > max_bytes {
        return Outcome::Reject(format!(
            "the file grew past the limit of {max_bytes} bytes (trigger_max_bytes)"
        ));
    }
    let format = Format::from_path(path).unwrap_or(Format::Json);
    match parse(&bytes, format, mtime) {
        Ok(t) => Outcome::Trigger(t),
        Err(Bad::Unparsable(msg)) if now - mtime < YOUNG_FILE_SECONDS => {
            let _ = msg;
            Outcome::RetryAt(mtime + YOUNG_FILE_SECONDS)
        }
        Err(Bad::Unparsable(msg)) | Err(Bad::Invalid(msg)) => Outcome::Reject(msg),
    }
}

enum Bad {
    /// Might be a partly written file.
    Unparsable(String),
    /// Complete but wrong.
    Invalid(String),
}

fn not_regular(meta: &std::fs::Metadata) -> Option<&'static str> {
    let ft = meta.file_type();
    if ft.is_file() {
        None
    } else if ft.is_symlink() {
        Some("a symbolic link")
    } else if ft.is_dir() {
        Some("a directory")
    } else if ft.is_fifo() {
        Some("a FIFO")
    } else if ft.is_socket() {
        Some("a socket")
    } else if ft.is_block_device() || ft.is_char_device() {
        Some("a device")
    } else {
        Some("an unknown kind of file")
    }
}

fn open_no_follow(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY)
        .open(path)
}

/// Parse a trigger's bytes without a file (for tests and fuzzing); `mtime` is
/// the default `schedule_time`. The error is the reason a file would be rejected.
pub fn parse_bytes(bytes: &[u8], format: Format, mtime: f64) -> Result<Trigger, String> {
    parse(bytes, format, mtime).map_err(|e| match e {
        Bad::Unparsable(m) | Bad::Invalid(m) => m,
    })
}

/// Parse trigger bytes; `mtime` is the default `schedule_time`.
fn parse(bytes: &[u8], format: Format, mtime: f64) -> Result<Trigger, Bad> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| Bad::Unparsable(format!("the file is not UTF-8 text: {e}")))?;
    let value = if text.trim().is_empty() {
        Value::Object(Map::new())
    } else {
        document::parse(text, format).map_err(Bad::Unparsable)?
    };
    let mut data = match value {
        Value::Object(m) => m,
        Value::Null => Map::new(),
        other => {
            return Err(Bad::Invalid(format!(
                "the trigger must be a mapping (a JSON object), not {}",
                kind_of(&other)
            )));
        }
    };
    let environment = match data.get("environment") {
        None => BTreeMap::new(),
        Some(v) => environment_map(v).map_err(Bad::Invalid)?,
    };
    if data.contains_key("environment") {
        let normalised = environment
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        data.insert("environment".into(), Value::Object(normalised));
    }
    let zone = match data.get("schedule_timezone") {
        None | Some(Value::Null) => None,
        Some(Value::String(z)) => Some(z.parse::<chrono_tz::Tz>().map_err(|_| {
            Bad::Invalid(format!(
                "schedule_timezone: unknown time zone {z:?} (use an IANA name such as \"Europe/Berlin\")"
            ))
        })?),
        Some(other) => {
            return Err(Bad::Invalid(format!(
                "schedule_timezone: expected an IANA zone name, got {}",
                kind_of(other)
            )));
        }
    };
    let schedule_time = match data.get("schedule_time") {
        None | Some(Value::Null) => mtime,
        Some(v) => schedule_time(v, zone).map_err(Bad::Invalid)?,
    };
    let idempotency_key = match data.get("idempotency_key") {
        None | Some(Value::Null) => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(other) => {
            return Err(Bad::Invalid(format!(
                "idempotency_key: expected a string, got {}",
                kind_of(other)
            )));
        }
    };
    Ok(Trigger {
        data,
        schedule_time,
        environment,
        idempotency_key,
    })
}

/// An `environment` mapping: names to strings or numbers (SPEC §4.2).
pub fn environment_map(v: &Value) -> Result<BTreeMap<String, String>, String> {
    let Value::Object(m) = v else {
        return Err(format!(
            "environment: expected a mapping of names to strings or numbers, got {}",
            kind_of(v)
        ));
    };
    let mut out = BTreeMap::new();
    for (k, v) in m {
        let s = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            other => {
                return Err(format!(
                    "environment: {k}: expected a string or a number, got {}",
                    kind_of(other)
                ));
            }
        };
        if k.is_empty() || k.contains('=') || k.contains('\0') || s.contains('\0') {
            return Err(format!(
                "environment: {k:?}: not a usable variable name or value"
            ));
        }
        out.insert(k.clone(), s);
    }
    Ok(out)
}

fn schedule_time(v: &Value, zone: Option<chrono_tz::Tz>) -> Result<f64, String> {
    match v {
        Value::Number(n) => n
            .as_f64()
            .filter(|f| f.is_finite())
            .ok_or_else(|| format!("schedule_time: {n} is not a usable epoch time")),
        Value::String(s) => {
            crate::time::parse_time(s, zone).map_err(|e| format!("schedule_time: {e}"))
        }
        other => Err(format!(
            "schedule_time: expected epoch seconds or an ISO 8601 date-time, got {}",
            kind_of(other)
        )),
    }
}

/// "a list", "a string", … for messages.
pub fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// Names a trigger may never set unless `trigger_environment_allow` names them:
/// they make programs load or run code the trigger's writer chooses (SPEC §4.4).
const DENIED_EXACT: &[&str] = &[
    "BASH_ENV",
    "ENV",
    "SHELLOPTS",
    "PS4",
    "IFS",
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONSTARTUP",
    "PERL5LIB",
    "PERL5OPT",
    "RUBYLIB",
    "RUBYOPT",
    "NODE_OPTIONS",
    "GCONV_PATH",
];
const DENIED_PREFIXES: &[&str] = &["LD_", "DYLD_", "BASH_FUNC_"];

/// Split a trigger's environment into what the run gets and the names dropped.
pub fn filter_environment(
    env: &BTreeMap<String, String>,
    allow: Option<&[String]>,
) -> (BTreeMap<String, String>, Vec<String>) {
    let mut kept = BTreeMap::new();
    let mut dropped = Vec::new();
    for (k, v) in env {
        let ok = match allow {
            Some(patterns) => patterns.iter().any(|p| name_matches(p, k)),
            None => !is_denied(k),
        };
        if ok {
            kept.insert(k.clone(), v.clone());
        } else {
            dropped.push(k.clone());
        }
    }
    (kept, dropped)
}

fn is_denied(name: &str) -> bool {
    DENIED_EXACT.contains(&name) || DENIED_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// `NAME` matches exactly; `PREFIX*` matches names starting with PREFIX.
fn name_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_json(text: &str) -> Result<Trigger, String> {
        parse(text.as_bytes(), Format::Json, 100.5).map_err(|e| match e {
            Bad::Unparsable(m) | Bad::Invalid(m) => m,
        })
    }

    #[test]
    fn empty_file_is_empty_trigger_due_at_mtime() {
        let t = parse_json("").unwrap();
        assert!(t.data.is_empty());
        assert_eq!(t.schedule_time, 100.5);
    }

    #[test]
    fn environment_numbers_become_strings() {
        let t = parse_json(r#"{"environment": {"A": "x", "B": 2, "C": 1.5}}"#).unwrap();
        assert_eq!(t.environment["B"], "2");
        assert_eq!(t.environment["C"], "1.5");
        assert_eq!(t.data["environment"]["B"], "2");
    }

    #[test]
    fn bad_shapes_are_invalid() {
        for bad in [
            "[1, 2]",
            r#"{"environment": [1]}"#,
            r#"{"environment": {"A": {"b": 1}}}"#,
            r#"{"environment": {"A": true}}"#,
            r#"{"schedule_time": "not a date"}"#,
            r#"{"schedule_time": [1]}"#,
            r#"{"schedule_timezone": "Mars/Base"}"#,
        ] {
            assert!(parse_json(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn schedule_time_forms() {
        assert_eq!(
            parse_json(r#"{"schedule_time": 1700000000.25}"#)
                .unwrap()
                .schedule_time,
            1700000000.25
        );
        assert_eq!(
            parse_json(r#"{"schedule_time": "2024-05-01T12:00:00Z"}"#)
                .unwrap()
                .schedule_time,
            1714564800.0
        );
        assert_eq!(
            parse_json(
                r#"{"schedule_time": "2024-05-01T12:00:00", "schedule_timezone": "Europe/Berlin"}"#
            )
            .unwrap()
            .schedule_time,
            1714557600.0
        );
    }

    #[test]
    fn yaml_trigger() {
        let t = parse(b"environment:\n  FOO: bar\n", Format::Yaml, 1.0)
            .ok()
            .unwrap();
        assert_eq!(t.environment["FOO"], "bar");
    }

    #[test]
    fn denied_names_are_dropped_unless_allowed() {
        let env: BTreeMap<String, String> = [
            ("LD_PRELOAD", "x"),
            ("BASH_ENV", "y"),
            ("FOO", "z"),
            ("BAR_1", "w"),
        ]
        .into_iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        let (kept, dropped) = filter_environment(&env, None);
        assert_eq!(kept.keys().collect::<Vec<_>>(), ["BAR_1", "FOO"]);
        assert_eq!(dropped, ["BASH_ENV", "LD_PRELOAD"]);
        let allow = vec![
            "FOO".to_string(),
            "BAR_*".to_string(),
            "LD_PRELOAD".to_string(),
        ];
        let (kept, dropped) = filter_environment(&env, Some(&allow));
        assert_eq!(
            kept.keys().collect::<Vec<_>>(),
            ["BAR_1", "FOO", "LD_PRELOAD"]
        );
        assert_eq!(dropped, ["BASH_ENV"]);
    }

    #[test]
    fn trigger_names() {
        assert!(is_trigger_name("trigger.json"));
        assert!(is_trigger_name("a.yml"));
        assert!(!is_trigger_name(".tmp.json"));
        assert!(!is_trigger_name("trigger.txt"));
    }
}
