//! Reports: static HTML pages (`dsari render`, SPEC §10.1) and Prometheus
//! metrics (`dsari metrics`, SPEC §10.2).
//!
//! Both only read: the database is opened read-only (a reader in WAL mode never
//! blocks the daemon) and run directories are only read. Nothing here is used
//! by the daemon, and nothing here may ever write to the database or to a run
//! directory. [`html`] owns `DATA_DIR/html/` and nothing else.
//!
//! The command line wires [`render`] to `dsari render [--regenerate]` and
//! [`metrics_text`] / [`serve_metrics`] to `dsari metrics`.

pub mod html;
pub mod metrics;
mod output;

use std::path::PathBuf;

use chrono::{Local, TimeZone};

pub use html::{RenderOptions, RenderSummary, render};
pub use metrics::{
    DEFAULT_LISTEN, MetricsCache, MetricsOptions, MetricsServer, MetricsStopper, metrics_text,
    parse_quantiles, serve_metrics,
};

/// Errors of `dsari render` and `dsari metrics`, each naming the file,
/// template or address it is about.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("database {path}: {source}")]
    Sqlite {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    /// A template that does not parse or fails to render. `path` is the user's
    /// file when the template came from `template_dir`.
    #[error("template {name}{}: {message}", .path.as_ref().map(|p| format!(" ({})", p.display())).unwrap_or_default())]
    Template {
        name: String,
        path: Option<PathBuf>,
        message: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on {listen}: {message} (give another address with --listen)")]
    Listen { listen: String, message: String },
    #[error("cannot encode metrics: {0}")]
    Encode(String),
}

impl ReportError {
    fn io(path: impl Into<PathBuf>, source: std::io::Error) -> ReportError {
        ReportError::Io {
            path: path.into(),
            source,
        }
    }
}

/// Epoch seconds as a local time without fractions: `2026-11-29 14:03:12`.
/// A time the calendar cannot hold is shown as the number.
pub(crate) fn local_time(t: f64) -> String {
    match local_datetime(t) {
        Some(dt) => dt.format("%Y-%m-%d %H:%M:%S").to_string(),
        None => format!("{t}"),
    }
}

/// Epoch seconds as RFC 3339 with the local offset and without fractions, for
/// `<time datetime=…>`.
pub(crate) fn iso_time(t: f64) -> String {
    match local_datetime(t) {
        Some(dt) => dt.format("%Y-%m-%dT%H:%M:%S%:z").to_string(),
        None => String::new(),
    }
}

fn local_datetime(t: f64) -> Option<chrono::DateTime<Local>> {
    if !t.is_finite() || t.abs() > 1e13 {
        return None;
    }
    Local.timestamp_opt(t.floor() as i64, 0).earliest()
}

/// A span of seconds for people: `850 ms`, `12 s`, `3 min 04 s`, `2 h 05 min`,
/// `3 d 04 h`. Negative spans (a clock that went back) keep their sign.
pub(crate) fn human_duration(seconds: f64) -> String {
    if !seconds.is_finite() {
        return format!("{seconds}");
    }
    let sign = if seconds < 0.0 { "−" } else { "" };
    let s = seconds.abs();
    if s < 1.0 {
        return format!("{sign}{} ms", (s * 1000.0).floor() as u64);
    }
    let whole = s.floor() as u64;
    let (d, h, m, sec) = (
        whole / 86400,
        whole / 3600 % 24,
        whole / 60 % 60,
        whole % 60,
    );
    let text = if d > 0 {
        format!("{d} d {h:02} h")
    } else if h > 0 {
        format!("{h} h {m:02} min")
    } else if m > 0 {
        format!("{m} min {sec:02} s")
    } else {
        format!("{sec} s")
    };
    format!("{sign}{text}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well() {
        assert_eq!(human_duration(0.25), "250 ms");
        assert_eq!(human_duration(12.9), "12 s");
        assert_eq!(human_duration(184.0), "3 min 04 s");
        assert_eq!(human_duration(7500.0), "2 h 05 min");
        assert_eq!(human_duration(3.0 * 86400.0 + 4.0 * 3600.0), "3 d 04 h");
        assert_eq!(human_duration(-2.0), "−2 s");
        assert_eq!(human_duration(f64::NAN), "NaN");
    }

    #[test]
    fn times_have_no_fractions() {
        let text = local_time(1_700_000_000.75);
        assert!(!text.contains('.'), "{text}");
        assert_eq!(text.len(), "2023-11-14 22:13:20".len());
        assert_eq!(local_time(f64::INFINITY), "inf");
        assert!(iso_time(1_700_000_000.5).starts_with("2023-11-1"));
    }
}
