//! `dsari schedule next`: preview a schedule's next times for a job name, the
//! way the daemon computes them (H hashing by the job name, the zone, the
//! sub-second offset), each computed from the previous one.

use std::io::Write;

use chrono::{TimeZone, Utc};

use crate::schedule::Schedule;

/// What `dsari schedule next` was asked for.
#[derive(Debug, Clone)]
pub struct NextOptions {
    pub job: String,
    pub timezone: Option<String>,
    /// RFC 3339 or epoch seconds; default now.
    pub from: Option<String>,
    pub count: usize,
    pub json: bool,
    pub expr: String,
}

/// Print the next `count` times; exit status 0, or an error (exit 1) that names
/// the bad field, zone or time.
pub fn next(opts: &NextOptions) -> anyhow::Result<u8> {
    let zone: Option<chrono_tz::Tz> = match &opts.timezone {
        None => None,
        Some(z) => Some(z.parse().map_err(|_| {
            anyhow::anyhow!(
                "--timezone: unknown time zone {z:?}; use an IANA name such as Europe/Berlin"
            )
        })?),
    };
    let schedule = Schedule::parse(&opts.expr, &opts.job, zone)
        .map_err(|e| anyhow::anyhow!("schedule {:?}: {e}", opts.expr))?;
    let mut t = match &opts.from {
        Some(s) => crate::time::parse_cli_time(s).map_err(|e| anyhow::anyhow!("--from: {e}"))?,
        None => crate::time::now(),
    };
    let mut times = Vec::with_capacity(opts.count);
    for _ in 0..opts.count {
        match schedule.next_after(t) {
            Some(next) => {
                times.push(next);
                t = next;
            }
            None => break,
        }
    }
    let mut out = std::io::stdout().lock();
    if opts.json {
        writeln!(out, "{}", serde_json::to_string(&times)?)?;
    } else {
        if times.is_empty() {
            eprintln!("dsari: this schedule has no time after the start");
        }
        for t in &times {
            writeln!(out, "{}", rfc3339(*t, zone))?;
        }
    }
    Ok(0)
}

/// Epoch seconds as RFC 3339 with microseconds, in the zone (local without one).
fn rfc3339(t: f64, zone: Option<chrono_tz::Tz>) -> String {
    let secs = t.floor();
    let micros = ((t - secs) * 1e6).round().min(999_999.0) as u32;
    let Some(utc) = Utc.timestamp_opt(secs as i64, micros * 1000).single() else {
        return format!("{t}");
    };
    const FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.6f%:z";
    match zone {
        Some(z) => utc.with_timezone(&z).format(FORMAT).to_string(),
        None => utc.with_timezone(&chrono::Local).format(FORMAT).to_string(),
    }
}
