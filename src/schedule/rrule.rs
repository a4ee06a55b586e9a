//! RRULE schedules (SPEC §5.2), evaluated as the Python dsari's
//! python-dateutil does.
//!
//! This module owns the reading of an `RRULE:` schedule — COUNT refused,
//! UNTIL read here so that a zone-less UNTIL means the schedule's zone — and
//! the search for the next time: the rule's DTSTART is now minus
//! `(now − crc) mod 86400` seconds on the wall clock, the rrule crate expands
//! the rule on the wall clock (as dateutil does), and each wall-clock time
//! becomes an instant as dateutil reads it (the first of a repeated time; in
//! a gap, shifted forward by the gap, as both the rrule crate and dateutil
//! place it). The next time is the first occurrence, in the rule's order,
//! that is after now both on the wall clock (dateutil's test) and in real
//! time (so a repeated hour never yields a time already past).
//!
//! It never panics on input and never loops without bound: the rrule crate's
//! iteration limit is on, and this module stops after a fixed number of
//! occurrences.

use std::str::FromStr;

use ::rrule::{Frequency, RRule, Tz as RruleTz, Unvalidated};
use chrono::{NaiveDate, NaiveDateTime, TimeZone};

use super::{MICROS, ScheduleError, Zone};

/// Seconds in a day: the DTSTART hash period.
const DAY: i64 = 86_400;
/// Occurrences examined per search, at most.
const MAX_OCCURRENCES: usize = 200_000;

/// A parsed RRULE schedule.
#[derive(Debug, Clone)]
pub(crate) struct RruleSchedule {
    /// The rule handed to the rrule crate: without UNTIL (applied here, as an
    /// instant) and without the BYHOUR/BYMINUTE/BYSECOND limits of a
    /// sub-daily rule (applied here by [`WallFilter`]).
    rule: RRule<Unvalidated>,
    /// The limits taken out of a sub-daily rule.
    filter: WallFilter,
    /// UNTIL as epoch seconds.
    until: Option<i64>,
    /// For SECONDLY, MINUTELY and HOURLY rules, the seconds between interval
    /// starts: DTSTART may move forward by whole periods without changing the
    /// rule's times, which keeps a search short.
    period: Option<i64>,
}

impl RruleSchedule {
    /// Parses the rule text after the `RRULE:` prefix (`schedule` is the
    /// whole string, for messages); a zone-less UNTIL is read in `zone`.
    pub(crate) fn parse(
        schedule: &str,
        body: &str,
        zone: Zone,
    ) -> Result<RruleSchedule, ScheduleError> {
        let invalid = |reason: String| ScheduleError::Rrule {
            rule: schedule.to_string(),
            reason,
        };
        if body.contains(char::is_whitespace) {
            return Err(invalid(
                "only one RRULE line is supported (no EXDATE, RDATE or DTSTART)".to_string(),
            ));
        }
        // dateutil reads the rule upper-cased; every part is case-insensitive.
        let upper = body.to_ascii_uppercase();
        let mut until = None;
        let mut kept = Vec::new();
        for part in upper.split(';') {
            match part.split_once('=') {
                Some(("COUNT", _)) => return Err(ScheduleError::RruleCount),
                Some(("UNTIL", value)) => until = Some(parse_until(value, zone)?),
                Some((name, _)) => kept.push((name, part)),
                None => {
                    return Err(invalid(format!(
                        "\"{part}\" is not NAME=VALUE (remove empty or trailing ';')"
                    )));
                }
            }
        }
        let text = |keep: &dyn Fn(&str) -> bool| {
            let parts: Vec<&str> = kept
                .iter()
                .filter(|(name, _)| keep(name))
                .map(|(_, part)| *part)
                .collect();
            parts.join(";")
        };
        let rule = RRule::from_str(&text(&|_| true)).map_err(|err| invalid(err.to_string()))?;
        if rule.get_count().is_some() {
            return Err(ScheduleError::RruleCount);
        }
        if rule.get_interval() == 0 {
            return Err(invalid("INTERVAL must be at least 1".to_string()));
        }
        // Build once from a fixed start, so that a bad rule (BYHOUR=25) is
        // refused when the configuration is loaded rather than ignored later.
        rule.clone()
            .build(carrier(reference_start()))
            .map_err(|err| invalid(err.to_string()))?;
        let period = sub_daily_period(&rule);
        let filter = WallFilter::of(&rule);
        let rule = if filter.is_empty() {
            rule
        } else {
            RRule::from_str(&text(&|name| !filter.takes(name)))
                .map_err(|err| invalid(err.to_string()))?
        };
        Ok(RruleSchedule {
            rule,
            filter,
            until,
            period,
        })
    }

    /// The next occurrence (epoch seconds, whole) after `now_us` (epoch
    /// microseconds) for a job whose name hashes to `crc`: as dateutil's
    /// `after()`, the first in the rule's order whose wall-clock time is
    /// after now's; unlike it, also after now in real time, so that in a
    /// repeated hour an occurrence that already passed is not returned.
    pub(crate) fn next_after(&self, zone: Zone, now_us: i64, crc: u32) -> Option<i64> {
        if self.until.is_some_and(|until| !after_now(until, now_us)) {
            return None;
        }
        let now_secs = now_us.div_euclid(MICROS);
        let now_wall_us = now_us.checked_add(zone.offset_at(now_secs)?.checked_mul(MICROS)?)?;
        let start = self.shifted_start(dtstart_wall(now_us, now_wall_us, crc)?, now_wall_us)?;
        let set = self.rule.clone().build(carrier(start)).ok()?.limit();
        for occurrence in set.into_iter().take(MAX_OCCURRENCES) {
            let wall = occurrence.naive_utc();
            if !self.filter.accepts(wall) {
                continue;
            }
            let instant = zone.resolve_first(wall)?;
            // dateutil stops at the first occurrence past UNTIL.
            if self.until.is_some_and(|until| instant > until) {
                return None;
            }
            if after_now(wall.and_utc().timestamp(), now_wall_us) && after_now(instant, now_us) {
                return Some(instant);
            }
        }
        None
    }

    /// DTSTART moved forward by whole periods to a little before now, for
    /// sub-daily rules.
    fn shifted_start(&self, start: NaiveDateTime, now_wall_us: i64) -> Option<NaiveDateTime> {
        let Some(period) = self.period.filter(|&p| p > 0) else {
            return Some(start);
        };
        let lag = now_wall_us.div_euclid(MICROS) - start.and_utc().timestamp();
        if lag <= period {
            return Some(start);
        }
        // Still at or before now on the wall clock, where the search begins.
        start.checked_add_signed(chrono::TimeDelta::seconds(lag / period * period))
    }
}

/// The Python dsari's DTSTART on the wall clock: now minus
/// `(now − crc) mod 86400` seconds, subtracted from now's wall-clock time
/// (Python's aware-datetime arithmetic). Always a whole second.
fn dtstart_wall(now_us: i64, now_wall_us: i64, crc: u32) -> Option<NaiveDateTime> {
    let back = (now_us - i64::from(crc) * MICROS).rem_euclid(DAY * MICROS);
    let start_us = now_wall_us.checked_sub(back)?;
    chrono::DateTime::from_timestamp(start_us.div_euclid(MICROS), 0).map(|dt| dt.naive_utc())
}

/// Whether `t` (seconds) is strictly after `now_us` (microseconds).
fn after_now(t: i64, now_us: i64) -> bool {
    i128::from(t) * i128::from(MICROS) > i128::from(now_us)
}

/// Wall-clock times travel through the rrule crate as UTC times: the crate
/// then expands the rule purely on the wall clock, as dateutil does, and
/// this module resolves each time in the schedule's zone.
fn carrier(wall: NaiveDateTime) -> chrono::DateTime<RruleTz> {
    RruleTz::UTC.from_utc_datetime(&wall)
}

/// A fixed start for checking a rule when it is parsed.
fn reference_start() -> NaiveDateTime {
    NaiveDate::from_ymd_opt(2000, 1, 1)
        .and_then(|date| date.and_hms_opt(0, 0, 0))
        .unwrap_or_default()
}

fn sub_daily_period(rule: &RRule<Unvalidated>) -> Option<i64> {
    let unit = match rule.get_freq() {
        Frequency::Secondly => 1,
        Frequency::Minutely => 60,
        Frequency::Hourly => 3600,
        _ => return None,
    };
    Some(unit * i64::from(rule.get_interval()))
}

/// The BYHOUR, BYMINUTE and BYSECOND parts that limit (rather than expand) a
/// sub-daily rule. The rrule crate mis-steps when it skips to the next
/// allowed hour of a MINUTELY or SECONDLY rule (it advances by the interval
/// counted in hours), so these limits are applied here to each wall-clock
/// time instead; a limit holds for a whole interval, so BYSETPOS is not
/// affected.
#[derive(Debug, Clone, Copy, Default)]
struct WallFilter {
    hours: Option<u64>,
    minutes: Option<u64>,
    seconds: Option<u64>,
}

impl WallFilter {
    fn of(rule: &RRule<Unvalidated>) -> WallFilter {
        let bits = |values: &[u8]| {
            (!values.is_empty()).then(|| values.iter().fold(0u64, |b, &v| b | 1u64 << (v % 64)))
        };
        let (hours, minutes, seconds) = match rule.get_freq() {
            Frequency::Hourly => (true, false, false),
            Frequency::Minutely => (true, true, false),
            Frequency::Secondly => (true, true, true),
            _ => (false, false, false),
        };
        WallFilter {
            hours: bits(rule.get_by_hour()).filter(|_| hours),
            minutes: bits(rule.get_by_minute()).filter(|_| minutes),
            seconds: bits(rule.get_by_second()).filter(|_| seconds),
        }
    }

    fn is_empty(&self) -> bool {
        self.hours.is_none() && self.minutes.is_none() && self.seconds.is_none()
    }

    /// Whether this filter applies the rule part `name` (so the rrule crate
    /// must not see it).
    fn takes(&self, name: &str) -> bool {
        match name {
            "BYHOUR" => self.hours.is_some(),
            "BYMINUTE" => self.minutes.is_some(),
            "BYSECOND" => self.seconds.is_some(),
            _ => false,
        }
    }

    fn accepts(&self, wall: NaiveDateTime) -> bool {
        use chrono::Timelike;
        let allows = |set: Option<u64>, value: u32| set.is_none_or(|bits| bits & (1 << value) != 0);
        allows(self.hours, wall.hour())
            && allows(self.minutes, wall.minute())
            && allows(self.seconds, wall.second().min(59))
    }
}

/// UNTIL as RFC 5545 writes it — `YYYYMMDD` or `YYYYMMDDTHHMMSS`, `Z` for
/// UTC — as epoch seconds. A zone-less UNTIL is a wall-clock time in the
/// schedule's zone (the Python dsari refuses it: dateutil wants UTC when
/// DTSTART has a zone).
fn parse_until(value: &str, zone: Zone) -> Result<i64, ScheduleError> {
    let bad = |reason: &str| ScheduleError::RruleUntil {
        value: value.to_string(),
        reason: reason.to_string(),
    };
    let (text, utc) = match value.strip_suffix('Z') {
        Some(text) => (text, true),
        None => (value, false),
    };
    let wall = if text.len() == 8 {
        NaiveDate::parse_from_str(text, "%Y%m%d")
            .ok()
            .and_then(|date| date.and_hms_opt(0, 0, 0))
    } else {
        NaiveDateTime::parse_from_str(text, "%Y%m%dT%H%M%S").ok()
    }
    .ok_or_else(|| {
        bad("write it as YYYYMMDDTHHMMSSZ (UTC) or YYYYMMDDTHHMMSS (schedule_timezone)")
    })?;
    if utc {
        return Ok(wall.and_utc().timestamp());
    }
    zone.resolve_first(wall)
        .ok_or_else(|| bad("not a time in the schedule's zone"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono_tz::Tz;

    const NY: Zone = Zone::Named(Tz::America__New_York);

    #[test]
    fn count_is_refused_with_advice() {
        let err =
            RruleSchedule::parse("RRULE:FREQ=DAILY;COUNT=3", "FREQ=DAILY;COUNT=3", NY).unwrap_err();
        assert_eq!(err, ScheduleError::RruleCount);
        assert!(err.to_string().contains("use UNTIL"));
    }

    #[test]
    fn bad_rules_are_refused_at_parse() {
        for body in [
            "FREQ=DAILY;BYHOUR=25",
            "FREQ=SOMETIMES",
            "BYHOUR=3",
            "",
            "FREQ=DAILY;;",
            "FREQ=DAILY;",
            "FREQ=DAILY;INTERVAL=0",
        ] {
            assert!(
                RruleSchedule::parse(body, body, NY).is_err(),
                "{body} should be refused"
            );
        }
        assert!(matches!(
            RruleSchedule::parse("x", "FREQ=DAILY;UNTIL=tomorrow", NY),
            Err(ScheduleError::RruleUntil { .. })
        ));
        assert!(RruleSchedule::parse("x", "FREQ=DAILY EXDATE:20260101", NY).is_err());
    }

    #[test]
    fn until_forms() {
        let utc = parse_until("20181225T080000Z", NY).unwrap();
        assert_eq!(utc, 1_545_724_800);
        // Zone-less: 08:00 in New York is 13:00 UTC.
        assert_eq!(parse_until("20181225T080000", NY).unwrap(), utc + 5 * 3600);
        assert_eq!(parse_until("20181225", NY).unwrap(), utc - 3 * 3600);
    }

    #[test]
    fn dtstart_is_hashed_back_from_now() {
        // crc 1072746924 ("backup"); now 2026-01-15T10:20:30Z in UTC.
        let now_us = 1_768_472_430 * MICROS + 250_000;
        let start = dtstart_wall(now_us, now_us, 1_072_746_924).unwrap();
        assert_eq!(start.to_string(), "2026-01-15 01:15:24");
    }

    #[test]
    fn impossible_rule_ends_quickly() {
        let body = "FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=30";
        let rule = RruleSchedule::parse(body, body, NY).unwrap();
        let begin = std::time::Instant::now();
        assert_eq!(rule.next_after(NY, 1_768_472_430 * MICROS, 7), None);
        assert!(begin.elapsed().as_secs() < 5);
    }
}
