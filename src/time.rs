//! Wall-clock helpers: epoch seconds as `f64` (the database's unit) and parsing of
//! the date-time strings that triggers and the command line accept.

use std::time::{SystemTime, UNIX_EPOCH};

use chrono::{DateTime, LocalResult, NaiveDate, NaiveDateTime, TimeZone};

/// Now, in epoch seconds with sub-second precision.
pub fn now() -> f64 {
    to_epoch(SystemTime::now())
}

/// A `SystemTime` in epoch seconds (negative before 1970).
pub fn to_epoch(t: SystemTime) -> f64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

/// Epoch seconds as the Python dsari writes them into the environment (`str(float)`):
/// the shortest text that reads back as the same number, always with a decimal point.
pub fn epoch_text(t: f64) -> String {
    let s = format!("{t}");
    if s.contains('.') || s.contains('e') || !t.is_finite() {
        s
    } else {
        format!("{s}.0")
    }
}

/// Parse an ISO 8601 / RFC 3339 date-time. Without an offset it is read in `zone`
/// (the local zone when `None`); a time that falls in a daylight-saving gap moves
/// to the first instant after the gap, and an ambiguous time takes its first occurrence.
pub fn parse_time(s: &str, zone: Option<chrono_tz::Tz>) -> Result<f64, String> {
    let s = s.trim();
    if let Ok(dt) = DateTime::parse_from_rfc3339(s) {
        return Ok(datetime_epoch(&dt));
    }
    for fmt in [
        "%Y-%m-%dT%H:%M:%S%.f%:z",
        "%Y-%m-%d %H:%M:%S%.f%:z",
        "%Y-%m-%dT%H:%M:%S%.f%z",
    ] {
        if let Ok(dt) = DateTime::parse_from_str(s, fmt) {
            return Ok(datetime_epoch(&dt));
        }
    }
    let naive = ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M"]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
        .or_else(|| {
            NaiveDate::parse_from_str(s, "%Y-%m-%d")
                .ok()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
        })
        .ok_or_else(|| {
            format!("cannot read {s:?} as a date-time (use ISO 8601, e.g. 2024-05-01T12:00:00Z, or epoch seconds)")
        })?;
    match zone {
        Some(tz) => resolve(&tz, naive),
        None => resolve(&chrono::Local, naive),
    }
}

/// A naive wall-clock time in a zone, to epoch seconds (gap: first instant after; fold: first).
pub fn resolve<Z: TimeZone>(zone: &Z, naive: NaiveDateTime) -> Result<f64, String> {
    match zone.from_local_datetime(&naive) {
        LocalResult::Single(dt) => Ok(datetime_epoch(&dt)),
        LocalResult::Ambiguous(first, _) => Ok(datetime_epoch(&first)),
        LocalResult::None => {
            // In a gap: walk forward minute by minute to the first existing time.
            let mut t = naive;
            for _ in 0..(24 * 60) {
                t += chrono::Duration::minutes(1);
                let t0 = t.with_second(0).unwrap_or(t);
                if let Some(dt) = zone.from_local_datetime(&t0).earliest() {
                    return Ok(datetime_epoch(&dt));
                }
            }
            Err(format!("{naive} does not exist in that time zone"))
        }
    }
}

use chrono::Timelike;

fn datetime_epoch<Z: TimeZone>(dt: &DateTime<Z>) -> f64 {
    dt.timestamp() as f64 + f64::from(dt.timestamp_subsec_nanos()) / 1e9
}

/// Parse a time given on the command line: epoch seconds or RFC 3339.
pub fn parse_cli_time(s: &str) -> Result<f64, String> {
    if let Ok(f) = s.trim().parse::<f64>()
        && f.is_finite()
    {
        return Ok(f);
    }
    parse_time(s, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_text_like_python() {
        assert_eq!(epoch_text(1700000000.0), "1700000000.0");
        assert_eq!(epoch_text(1700000000.25), "1700000000.25");
    }

    #[test]
    fn parses_offsets_and_zones() {
        assert_eq!(
            parse_time("2024-05-01T12:00:00Z", None).unwrap(),
            1714564800.0
        );
        assert_eq!(
            parse_time("2024-05-01T14:00:00+02:00", None).unwrap(),
            1714564800.0
        );
        let ny: chrono_tz::Tz = "America/New_York".parse().unwrap();
        // 02:30 does not exist on 2026-03-08 in New York: first instant after the gap is 03:00 EDT.
        assert_eq!(
            parse_time("2026-03-08T02:30:00", Some(ny)).unwrap(),
            parse_time("2026-03-08T07:00:00Z", None).unwrap()
        );
        // 01:30 happens twice on 2026-11-01: the first (EDT) wins.
        assert_eq!(
            parse_time("2026-11-01T01:30:00", Some(ny)).unwrap(),
            parse_time("2026-11-01T05:30:00Z", None).unwrap()
        );
        assert!(parse_time("yesterday", None).is_err());
    }
}
