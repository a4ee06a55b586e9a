//! Schedules: when a job's next scheduled run is due (SPEC §5).
//!
//! This module owns the meaning of a job's `schedule` string: cron expressions
//! in the Python dsari's dialect, with its `H`/`R` hashing and `@` aliases
//! ([`cron`]), and RFC 5545 `RRULE:` rules ([`rrule`]), both read in the job's
//! `schedule_timezone`. [`Schedule::next_after`] turns a start instant into the
//! next due instant, in epoch seconds, identical to the Python dsari's
//! (croniter + python-dateutil) to the microsecond, except where SPEC.md
//! decides otherwise (see `docs/schedules.md`).
//!
//! It never reads the clock, the file system or the configuration: callers
//! pass "now" in, so every rule here is a plain, deterministic unit test. It
//! never panics on any schedule string or instant.

mod cron;
mod rrule;

use chrono::{DateTime, LocalResult, NaiveDateTime, Offset, TimeZone};
use chrono_tz::Tz;

/// A parsed schedule for one job: a cron expression or an RRULE, the zone it
/// is read in and the job's fixed sub-second offset.
#[derive(Debug, Clone)]
pub struct Schedule {
    kind: Kind,
    zone: Zone,
    crc: u32,
    /// `crc / 0xFFFFFFFF` seconds, in microseconds, rounded as Python's
    /// `timedelta` rounds it.
    offset_us: i64,
}

#[derive(Debug, Clone)]
enum Kind {
    Cron(cron::CronSchedule),
    /// Boxed: a parsed rule is large, and most jobs use cron (10,000 of them
    /// are kept in memory).
    Rrule(Box<rrule::RruleSchedule>),
}

/// Why a schedule string was rejected. Each message points at the bad part
/// and says what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// The schedule string is empty or only white space.
    #[error(
        "the schedule is empty: write a cron expression such as \"H H * * *\" or an \"RRULE:\" rule, or remove the schedule key"
    )]
    Empty,
    /// A cron expression without 5 or 6 fields.
    #[error(
        "the cron expression has {found} fields: write 5 (minute hour day-of-month month day-of-week) or 6 (the same, then second)"
    )]
    FieldCount {
        /// How many white-space separated fields there were.
        found: usize,
    },
    /// An `@` word that is not one of the aliases.
    #[error(
        "unknown alias \"{alias}\": use @hourly, @daily, @midnight, @weekly, @monthly, @yearly or @annually"
    )]
    UnknownAlias {
        /// The alias as written.
        alias: String,
    },
    /// One cron field is malformed or out of range.
    #[error("field {position} ({name}) \"{text}\": {reason}")]
    Field {
        /// 1-based position as written: 1 = minute … 5 = day-of-week, 6 = second.
        position: usize,
        /// The field's name, e.g. "hour".
        name: &'static str,
        /// The field as written (after `H`/`R` expansion when it was a hash form).
        text: String,
        /// What is wrong and what to do.
        reason: String,
    },
    /// A cron expression that no date satisfies.
    #[error(
        "the cron expression \"{expr}\" never matches (for example the 31st of February): check the day-of-month and month fields"
    )]
    NeverMatches {
        /// The expression as written.
        expr: String,
    },
    /// A cron expression croner cannot evaluate after dsari's expansion (a
    /// defect here, never the user's fault).
    #[error(
        "the cron expression \"{expr}\" cannot be evaluated ({reason}): please report it, and write the schedule another way meanwhile"
    )]
    Unsupported {
        /// The expression as written.
        expr: String,
        /// croner's message.
        reason: String,
    },
    /// An RRULE with COUNT.
    #[error(
        "RRULE COUNT is not supported: use UNTIL (dsari moves DTSTART with every run, so a count would never run out)"
    )]
    RruleCount,
    /// An RRULE whose UNTIL cannot be read.
    #[error("RRULE UNTIL \"{value}\": {reason}")]
    RruleUntil {
        /// The UNTIL value as written.
        value: String,
        /// What is wrong and what to do.
        reason: String,
    },
    /// An RRULE the rrule crate rejects.
    #[error("invalid RRULE \"{rule}\": {reason}")]
    Rrule {
        /// The rule as written.
        rule: String,
        /// What is wrong.
        reason: String,
    },
}

impl Schedule {
    /// Parses a job's schedule.
    ///
    /// `expr` is a cron expression (5 or 6 fields, seconds last; `H`/`R` forms;
    /// `@` aliases) or an `RRULE:` rule (the prefix in any case). `job_name`
    /// seeds the `H` hash and the sub-second offset. `tz` is the zone the
    /// schedule is read in; `None` means the system's local zone: its IANA
    /// name (`TZ`, else `/etc/localtime`) looked up once per process, or
    /// `chrono::Local` when it has none.
    ///
    /// `R` forms draw their random values here, once. A cron expression that
    /// no date satisfies (`0 0 31 2 *`) is rejected, as the Python dsari
    /// rejects it when loading the configuration.
    pub fn parse(expr: &str, job_name: &str, tz: Option<Tz>) -> Result<Schedule, ScheduleError> {
        Self::parse_checked(expr, job_name, tz, true)
    }

    /// [`Schedule::parse`] for an expression that parsed before (the daemon's
    /// configuration is validated when loaded): it skips the search that
    /// proves a cron pattern matches some date, most of a parse's cost.
    pub fn parse_again(
        expr: &str,
        job_name: &str,
        tz: Option<Tz>,
    ) -> Result<Schedule, ScheduleError> {
        Self::parse_checked(expr, job_name, tz, false)
    }

    fn parse_checked(
        expr: &str,
        job_name: &str,
        tz: Option<Tz>,
        check: bool,
    ) -> Result<Schedule, ScheduleError> {
        let zone = tz.or_else(system_zone).map_or(Zone::Local, Zone::Named);
        let crc = job_hash(job_name);
        let trimmed = expr.trim();
        if trimmed.is_empty() {
            return Err(ScheduleError::Empty);
        }
        let kind = match rrule_body(trimmed) {
            Some(body) => Kind::Rrule(Box::new(rrule::RruleSchedule::parse(trimmed, body, zone)?)),
            None => Kind::Cron(cron::CronSchedule::parse(
                trimmed,
                crc,
                &mut random_u32,
                check,
            )?),
        };
        Ok(Schedule {
            kind,
            zone,
            crc,
            offset_us: subsecond_offset_us(crc),
        })
    }

    /// Whether parsing the expression again could give another schedule (it
    /// drew random values for `R` forms) or costs more than a few µs (an
    /// RRULE): such a schedule is worth keeping; any other can be parsed again
    /// from the configuration whenever it is needed.
    pub fn worth_keeping(&self) -> bool {
        match &self.kind {
            Kind::Cron(cron) => cron.drew_random,
            Kind::Rrule(_) => true,
        }
    }

    /// The first due time strictly after `after` (epoch seconds), including
    /// the job's sub-second offset `crc / 0xFFFFFFFF`; `None` when the
    /// schedule has no future occurrence (an RRULE past its UNTIL) or `after`
    /// is not a finite time between the years 1 and 9999.
    pub fn next_after(&self, after: f64) -> Option<f64> {
        let now_us = epoch_to_micros(after)?;
        let due = match &self.kind {
            Kind::Cron(cron) => cron.next_after(self.zone, now_us)?,
            Kind::Rrule(rule) => rule.next_after(self.zone, now_us, self.crc)?,
        };
        Some(micros_to_epoch(
            due.checked_mul(MICROS)?.checked_add(self.offset_us)?,
        ))
    }
}

/// CRC-32 (zlib/IEEE) of the job name's UTF-8 bytes: the `H` hash seed.
pub fn job_hash(job_name: &str) -> u32 {
    crc32fast::hash(job_name.as_bytes())
}

/// The rule text after an `RRULE:` prefix written in any case, or `None` for
/// a cron expression.
fn rrule_body(expr: &str) -> Option<&str> {
    const PREFIX: &str = "RRULE:";
    let head = expr.get(..PREFIX.len())?;
    head.eq_ignore_ascii_case(PREFIX)
        .then(|| &expr[PREFIX.len()..])
}

const MICROS: i64 = 1_000_000;
/// 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z, the range of Python's datetime.
const MIN_EPOCH: f64 = -62_135_596_800.0;
const MAX_EPOCH: f64 = 253_402_300_799.0;

/// `crc / 0xFFFFFFFF` seconds in whole microseconds, rounded half to even as
/// Python's `timedelta(seconds=...)` rounds it.
fn subsecond_offset_us(crc: u32) -> i64 {
    let seconds = f64::from(crc) / f64::from(u32::MAX);
    // 0.0 ..= 1e6: always fits.
    (seconds * 1e6).round_ties_even() as i64
}

/// Epoch seconds to whole microseconds, rounded as Python's
/// `datetime.fromtimestamp` rounds them (half to even).
fn epoch_to_micros(epoch: f64) -> Option<i64> {
    if !(MIN_EPOCH..=MAX_EPOCH).contains(&epoch) {
        return None;
    }
    let seconds = epoch.floor();
    let micros = ((epoch - seconds) * 1e6).round_ties_even();
    // Inside the checked range both parts fit an i64 with room to spare.
    Some(seconds as i64 * MICROS + micros as i64)
}

/// Whole microseconds to epoch seconds, the same float Python's
/// `datetime.timestamp()` gives (one correctly rounded division).
fn micros_to_epoch(micros: i64) -> f64 {
    micros as f64 / 1e6
}

/// One random value for an `R` form. No crate needed: std's `RandomState`
/// is seeded from the operating system's random source.
fn random_u32() -> u32 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(0u8) as u32
}

/// The zone a schedule is read in: a named IANA zone, or the system's local
/// zone (`chrono::Local`) when the job sets no `schedule_timezone`.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Zone {
    Named(Tz),
    Local,
}

/// A wall-clock time resolved to instants (epoch seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resolved {
    /// The wall-clock time happens once.
    Single(i64),
    /// The clock went back: (first, second) instant.
    Ambiguous(i64, i64),
    /// The clock jumped over this wall-clock time.
    Gap,
}

impl Zone {
    /// The zone's offset from UTC at an instant, in seconds east.
    pub(crate) fn offset_at(self, epoch: i64) -> Option<i64> {
        let utc = DateTime::from_timestamp(epoch, 0)?.naive_utc();
        Some(match self {
            Zone::Named(tz) => offset_of(&tz, &utc),
            Zone::Local => offset_of(&chrono::Local, &utc),
        })
    }

    /// The wall-clock time at an instant.
    pub(crate) fn wall(self, epoch: i64) -> Option<NaiveDateTime> {
        let offset = self.offset_at(epoch)?;
        DateTime::from_timestamp(epoch.checked_add(offset)?, 0).map(|dt| dt.naive_utc())
    }

    /// The instants a wall-clock time stands for.
    pub(crate) fn resolve(self, wall: NaiveDateTime) -> Resolved {
        match self {
            Zone::Named(tz) => resolve_in(&tz, wall),
            Zone::Local => resolve_in(&chrono::Local, wall),
        }
    }

    /// One instant for a wall-clock time, as python-dateutil reads a time
    /// with `fold=0`: the first of two, and inside a gap the offset from
    /// before the gap (so 02:30 in New York's gap is 03:30 EDT).
    pub(crate) fn resolve_first(self, wall: NaiveDateTime) -> Option<i64> {
        match self.resolve(wall) {
            Resolved::Single(t) | Resolved::Ambiguous(t, _) => Some(t),
            Resolved::Gap => {
                let as_utc = wall.and_utc().timestamp();
                // A day back is before the gap and after any earlier change:
                // no zone changes its offset twice within a day.
                let before = self.offset_at(as_utc.checked_sub(86_400)?)?;
                as_utc.checked_sub(before)
            }
        }
    }
}

fn offset_of<T: TimeZone>(tz: &T, utc: &NaiveDateTime) -> i64 {
    i64::from(tz.offset_from_utc_datetime(utc).fix().local_minus_utc())
}

fn resolve_in<T: TimeZone>(tz: &T, wall: NaiveDateTime) -> Resolved {
    match tz.from_local_datetime(&wall) {
        LocalResult::Single(t) => Resolved::Single(t.timestamp()),
        // chrono's `Local` lists the two instants latest first, chrono-tz
        // earliest first: order them here.
        LocalResult::Ambiguous(one, other) => {
            let (one, other) = (one.timestamp(), other.timestamp());
            Resolved::Ambiguous(one.min(other), one.max(other))
        }
        LocalResult::None => Resolved::Gap,
    }
}

/// The system's zone by IANA name, found once: `chrono::Local` re-reads
/// `/etc/localtime` on every conversion (about 100 µs), which 10,000
/// schedules computed at start-up would pay many times over.
fn system_zone() -> Option<Tz> {
    static ZONE: std::sync::OnceLock<Option<Tz>> = std::sync::OnceLock::new();
    *ZONE.get_or_init(|| {
        let name = match std::env::var("TZ") {
            Ok(tz) => tz.trim_start_matches(':').to_string(),
            Err(_) => iana_time_zone::get_timezone().ok()?,
        };
        name.parse().ok()
    })
}

/// A configured job's next scheduled time after `now`: None without a
/// `schedule`, or when it has no future time (for `job list`, reports, `job why`).
pub fn next_for_job(job: &crate::config::Job, now: f64) -> Option<f64> {
    let expr = job.schedule.as_deref()?;
    let zone = job
        .schedule_timezone
        .as_deref()
        .and_then(|z| z.parse().ok());
    Schedule::parse(expr, &job.name, zone).ok()?.next_after(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    const UTC: Tz = Tz::UTC;
    const NEW_YORK: Tz = Tz::America__New_York;
    const BERLIN: Tz = Tz::Europe__Berlin;

    /// Times from the Python dsari itself (rfinnie/dsari 1fd5955,
    /// `utils.get_next_schedule_time`, start = `datetime.fromtimestamp(t, tz)`
    /// with `dateutil.tz.gettz(tz)`) on Python 3.11.7 with croniter 7.0.0 and
    /// python-dateutil 4.0.0, computed 2026-11-29. Each row: job name,
    /// schedule, start, zone, then successive next times, each computed from
    /// the one before (none: no future run). The start 1768472430.25 is
    /// 2026-01-15T10:20:30.25Z; the DST rows start at local midnight of
    /// 2026-03-08 / 2026-11-01 (New York) and 2026-03-29 / 2026-10-25 (Berlin).
    #[rustfmt::skip]
    const FROM_PYTHON: &[(&str, &str, f64, Tz, &[f64])] = &[
    ("hello", "H * * * *", 1768472430.25, UTC, &[1768475432.211192, 1768479032.211192, 1768482632.211192]),
    ("hello", "H(10-20) * * * *", 1768472430.25, UTC, &[1768475492.211192, 1768479092.211192, 1768482692.211192]),
    ("hello", "H/15 * * * *", 1768472430.25, UTC, &[1768472492.211192, 1768473392.211192, 1768474292.211192]),
    ("hello", "H(30-59)/10 * * * *", 1768472430.25, UTC, &[1768473092.211192, 1768473692.211192, 1768474292.211192]),
    ("hello", "0 H * * *", 1768472430.25, UTC, &[1768474832.211192, 1768561232.211192, 1768647632.211192]),
    ("hello", "0 H(0-7) * * *", 1768472430.25, UTC, &[1768532432.211192, 1768618832.211192, 1768705232.211192]),
    ("hello", "0 H/6 * * *", 1768472430.25, UTC, &[1768482032.211192, 1768503632.211192, 1768525232.211192]),
    ("hello", "0 H(8-17)/3 * * *", 1768472430.25, UTC, &[1768474832.211192, 1768485632.211192, 1768496432.211192]),
    ("hello", "0 0 H * *", 1768472430.25, UTC, &[1769904032.211192, 1772323232.211192, 1775001632.211192]),
    ("hello", "0 0 H(1-28) * *", 1768472430.25, UTC, &[1769040032.211192, 1771718432.211192, 1774137632.211192]),
    ("hello", "0 0 H/10 * *", 1768472430.25, UTC, &[1768694432.211192, 1769558432.211192, 1770508832.211192]),
    ("hello", "0 0 H(5-25)/7 * *", 1768472430.25, UTC, &[1768867232.211192, 1770336032.211192, 1770940832.211192]),
    ("hello", "0 0 1 H *", 1768472430.25, UTC, &[1788220832.211192, 1819756832.211192, 1851379232.211192]),
    ("hello", "0 0 1 H(3-9) *", 1768472430.25, UTC, &[1780272032.211192, 1811808032.211192, 1843430432.211192]),
    ("hello", "0 0 1 H/4 *", 1768472430.25, UTC, &[1777593632.211192, 1788220832.211192, 1798761632.211192]),
    ("hello", "0 0 1 H(2-11)/5 *", 1768472430.25, UTC, &[1780272032.211192, 1793491232.211192, 1811808032.211192]),
    ("hello", "0 0 * * H", 1768472430.25, UTC, &[1768521632.211192, 1769126432.211192, 1769731232.211192]),
    ("hello", "0 0 * * H(1-5)", 1768472430.25, UTC, &[1768521632.211192, 1769126432.211192, 1769731232.211192]),
    ("hello", "0 0 * * H/2", 1768472430.25, UTC, &[1768521632.211192, 1768780832.211192, 1768953632.211192]),
    ("hello", "0 0 * * H(1-5)/2", 1768472430.25, UTC, &[1768867232.211192, 1769040032.211192, 1769472032.211192]),
    ("hello", "0 0 * * * H", 1768472430.25, UTC, &[1768521632.211192, 1768608032.211192, 1768694432.211192]),
    ("hello", "0 0 * * * H(10-20)", 1768472430.25, UTC, &[1768521615.211192, 1768608015.211192, 1768694415.211192]),
    ("hello", "0 0 * * * H/20", 1768472430.25, UTC, &[1768521620.211192, 1768521640.211192, 1768608020.211192]),
    ("hello", "0 0 * * * H(30-59)/10", 1768472430.25, UTC, &[1768521635.211192, 1768521645.211192, 1768521655.211192]),
    ("hello", "H(30-35)/10 * * * *", 1768472430.25, UTC, &[1768473092.211192, 1768476692.211192, 1768480292.211192]),
    ("hello", "H(50-55)/10 * * * *", 1768472430.25, UTC, &[1768474292.211192, 1768477892.211192, 1768481492.211192]),
    ("backup", "H * * * *", 1768472430.25, UTC, &[1768472661.249768, 1768476261.249768, 1768479861.249768]),
    ("backup", "H(10-20) * * * *", 1768472430.25, UTC, &[1768475841.249768, 1768479441.249768, 1768483041.249768]),
    ("backup", "H/15 * * * *", 1768472430.25, UTC, &[1768472841.249768, 1768473741.249768, 1768474641.249768]),
    ("backup", "H(30-59)/10 * * * *", 1768472430.25, UTC, &[1768473441.249768, 1768474041.249768, 1768474641.249768]),
    ("backup", "0 H * * *", 1768472430.25, UTC, &[1768543221.249768, 1768629621.249768, 1768716021.249768]),
    ("backup", "0 H(0-7) * * *", 1768472430.25, UTC, &[1768543221.249768, 1768629621.249768, 1768716021.249768]),
    ("backup", "0 H/6 * * *", 1768472430.25, UTC, &[1768485621.249768, 1768507221.249768, 1768528821.249768]),
    ("backup", "0 H(8-17)/3 * * *", 1768472430.25, UTC, &[1768482021.249768, 1768492821.249768, 1768557621.249768]),
    ("backup", "0 0 H * *", 1768472430.25, UTC, &[1769558421.249768, 1772236821.249768, 1774656021.249768]),
    ("backup", "0 0 H(1-28) * *", 1768472430.25, UTC, &[1768521621.249768, 1771200021.249768, 1773619221.249768]),
    ("backup", "0 0 H/10 * *", 1768472430.25, UTC, &[1769040021.249768, 1769990421.249768, 1770854421.249768]),
    ("backup", "0 0 H(5-25)/7 * *", 1768472430.25, UTC, &[1768953621.249768, 1770422421.249768, 1771027221.249768]),
    ("backup", "0 0 1 H *", 1768472430.25, UTC, &[1769904021.249768, 1801440021.249768, 1832976021.249768]),
    ("backup", "0 0 1 H(3-9) *", 1768472430.25, UTC, &[1772323221.249768, 1803859221.249768, 1835481621.249768]),
    ("backup", "0 0 1 H/4 *", 1768472430.25, UTC, &[1769904021.249768, 1780272021.249768, 1790812821.249768]),
    ("backup", "0 0 1 H(2-11)/5 *", 1768472430.25, UTC, &[1772323221.249768, 1785542421.249768, 1803859221.249768]),
    ("backup", "0 0 * * H", 1768472430.25, UTC, &[1768953621.249768, 1769558421.249768, 1770163221.249768]),
    ("backup", "0 0 * * H(1-5)", 1768472430.25, UTC, &[1768953621.249768, 1769558421.249768, 1770163221.249768]),
    ("backup", "0 0 * * H/2", 1768472430.25, UTC, &[1768608021.249768, 1768694421.249768, 1768867221.249768]),
    ("backup", "0 0 * * H(1-5)/2", 1768472430.25, UTC, &[1768521621.249768, 1768780821.249768, 1768953621.249768]),
    ("backup", "0 0 * * * H", 1768472430.25, UTC, &[1768521621.249768, 1768608021.249768, 1768694421.249768]),
    ("backup", "0 0 * * * H(10-20)", 1768472430.25, UTC, &[1768521615.249768, 1768608015.249768, 1768694415.249768]),
    ("backup", "0 0 * * * H/20", 1768472430.25, UTC, &[1768521612.249768, 1768521632.249768, 1768521652.249768]),
    ("backup", "0 0 * * * H(30-59)/10", 1768472430.25, UTC, &[1768521635.249768, 1768521645.249768, 1768521655.249768]),
    ("backup", "H(30-35)/10 * * * *", 1768472430.25, UTC, &[1768472901.249768, 1768473441.249768, 1768474041.249768]),
    ("backup", "H(50-55)/10 * * * *", 1768472430.25, UTC, &[1768472901.249768, 1768473501.249768, 1768474101.249768]),
    ("nightly-report", "H * * * *", 1768472430.25, UTC, &[1768473385.516294, 1768476985.516294, 1768480585.516294]),
    ("nightly-report", "H(10-20) * * * *", 1768472430.25, UTC, &[1768475725.516294, 1768479325.516294, 1768482925.516294]),
    ("nightly-report", "H/15 * * * *", 1768472430.25, UTC, &[1768473025.516294, 1768473925.516294, 1768474825.516294]),
    ("nightly-report", "H(30-59)/10 * * * *", 1768472430.25, UTC, &[1768473325.516294, 1768473925.516294, 1768474525.516294]),
    ("nightly-report", "0 H * * *", 1768472430.25, UTC, &[1768521625.516294, 1768608025.516294, 1768694425.516294]),
    ("nightly-report", "0 H(0-7) * * *", 1768472430.25, UTC, &[1768521625.516294, 1768608025.516294, 1768694425.516294]),
    ("nightly-report", "0 H/6 * * *", 1768472430.25, UTC, &[1768482025.516294, 1768503625.516294, 1768525225.516294]),
    ("nightly-report", "0 H(8-17)/3 * * *", 1768472430.25, UTC, &[1768474825.516294, 1768485625.516294, 1768496425.516294]),
    ("nightly-report", "0 0 H * *", 1768472430.25, UTC, &[1770422425.516294, 1772841625.516294, 1775520025.516294]),
    ("nightly-report", "0 0 H(1-28) * *", 1768472430.25, UTC, &[1770249625.516294, 1772668825.516294, 1775347225.516294]),
    ("nightly-report", "0 0 H/10 * *", 1768472430.25, UTC, &[1769299225.516294, 1770249625.516294, 1771113625.516294]),
    ("nightly-report", "0 0 H(5-25)/7 * *", 1768472430.25, UTC, &[1768608025.516294, 1769212825.516294, 1770681625.516294]),
    ("nightly-report", "0 0 1 H *", 1768472430.25, UTC, &[1782864025.516294, 1814400025.516294, 1846022425.516294]),
    ("nightly-report", "0 0 1 H(3-9) *", 1768472430.25, UTC, &[1777593625.516294, 1809129625.516294, 1840752025.516294]),
    ("nightly-report", "0 0 1 H/4 *", 1768472430.25, UTC, &[1772323225.516294, 1782864025.516294, 1793491225.516294]),
    ("nightly-report", "0 0 1 H(2-11)/5 *", 1768472430.25, UTC, &[1777593625.516294, 1790812825.516294, 1809129625.516294]),
    ("nightly-report", "0 0 * * H", 1768472430.25, UTC, &[1768780825.516294, 1769385625.516294, 1769990425.516294]),
    ("nightly-report", "0 0 * * H(1-5)", 1768472430.25, UTC, &[1768867225.516294, 1769472025.516294, 1770076825.516294]),
    ("nightly-report", "0 0 * * H/2", 1768472430.25, UTC, &[1768608025.516294, 1768694425.516294, 1768867225.516294]),
    ("nightly-report", "0 0 * * H(1-5)/2", 1768472430.25, UTC, &[1768521625.516294, 1768780825.516294, 1768953625.516294]),
    ("nightly-report", "0 0 * * * H", 1768472430.25, UTC, &[1768521625.516294, 1768608025.516294, 1768694425.516294]),
    ("nightly-report", "0 0 * * * H(10-20)", 1768472430.25, UTC, &[1768521610.516294, 1768608010.516294, 1768694410.516294]),
    ("nightly-report", "0 0 * * * H/20", 1768472430.25, UTC, &[1768521607.516294, 1768521627.516294, 1768521647.516294]),
    ("nightly-report", "0 0 * * * H(30-59)/10", 1768472430.25, UTC, &[1768521630.516294, 1768521640.516294, 1768521650.516294]),
    ("nightly-report", "H(30-35)/10 * * * *", 1768472430.25, UTC, &[1768473025.516294, 1768473625.516294, 1768474225.516294]),
    ("nightly-report", "H(50-55)/10 * * * *", 1768472430.25, UTC, &[1768473025.516294, 1768473625.516294, 1768474225.516294]),
    ("hello", "@hourly", 1768472430.25, NEW_YORK, &[1768475432.211192, 1768479032.211192]),
    ("hello", "@daily", 1768472430.25, NEW_YORK, &[1768493432.211192, 1768579832.211192]),
    ("hello", "@midnight", 1768472430.25, NEW_YORK, &[1768547432.211192, 1768633832.211192]),
    ("hello", "@weekly", 1768472430.25, NEW_YORK, &[1768579832.211192, 1769184632.211192]),
    ("hello", "@monthly", 1768472430.25, NEW_YORK, &[1769962232.211192, 1772381432.211192]),
    ("hello", "@yearly", 1768472430.25, NEW_YORK, &[1788275432.211192, 1819811432.211192]),
    ("hello", "@annually", 1768472430.25, NEW_YORK, &[1788275432.211192, 1819811432.211192]),
    ("hello", "@Daily", 1768472430.25, NEW_YORK, &[1768539600.211192, 1768626000.211192]),
    ("backup", "@hourly", 1768472430.25, NEW_YORK, &[1768472661.249768, 1768476261.249768]),
    ("backup", "@daily", 1768472430.25, NEW_YORK, &[1768476261.249768, 1768562661.249768]),
    ("backup", "@midnight", 1768472430.25, NEW_YORK, &[1768541061.249768, 1768627461.249768]),
    ("backup", "@weekly", 1768472430.25, NEW_YORK, &[1768994661.249768, 1769599461.249768]),
    ("backup", "@monthly", 1768472430.25, NEW_YORK, &[1769599461.249768, 1772277861.249768]),
    ("backup", "@yearly", 1768472430.25, NEW_YORK, &[1772277861.249768, 1803813861.249768]),
    ("backup", "@annually", 1768472430.25, NEW_YORK, &[1772277861.249768, 1803813861.249768]),
    ("backup", "@Daily", 1768472430.25, NEW_YORK, &[1768539600.249768, 1768626000.249768]),
    ("backup", "0 12 * * 7", 1768472430.25, BERLIN, &[1768734021.249768, 1769338821.249768, 1769943621.249768]),
    ("backup", "0 0 1-7 * 1", 1768472430.25, BERLIN, &[1768777221.249768, 1769382021.249768, 1769900421.249768]),
    ("backup", "0 0 */10 * 1", 1768472430.25, BERLIN, &[1768777221.249768, 1768950021.249768, 1769382021.249768]),
    ("backup", "0 0 29 2 *", 1768472430.25, BERLIN, &[1835391621.249768, 1961622021.249768, 2087852421.249768]),
    ("backup", "*/15 * * * * 30", 1768472430.25, BERLIN, &[1768473030.249768, 1768473930.249768, 1768474830.249768]),
    ("backup", "H H * * * 45", 1768472430.25, BERLIN, &[1768541085.249768, 1768627485.249768, 1768713885.249768]),
    ("backup", "0 9 * jan-mar mon-fri", 1768472430.25, BERLIN, &[1768550421.249768, 1768809621.249768, 1768896021.249768]),
    ("backup", "50-10/10 * * * *", 1768472430.25, BERLIN, &[1768474221.249768, 1768474821.249768, 1768475421.249768]),
    ("backup", "0 0 L * *", 1768472430.25, BERLIN, &[1769814021.249768, 1772233221.249768, 1774908021.249768]),
    ("backup", "0 0 * * fri#3", 1768472430.25, BERLIN, &[1768518021.249768, 1771542021.249768, 1773961221.249768]),
    ("backup", "0 0 15W * *", 1768472430.25, BERLIN, &[1771196421.249768, 1773615621.249768, 1776204021.249768]),
    ("hello", "RRULE:FREQ=MINUTELY;INTERVAL=5", 1768472430.25, NEW_YORK, &[1768472470.211192, 1768472770.211192, 1768473070.211192]),
    ("hello", "RRULE:FREQ=DAILY;BYDAY=MO,TH;BYHOUR=14;BYMINUTE=30", 1768472430.25, NEW_YORK, &[1768505410.211192, 1768851010.211192, 1769110210.211192]),
    ("hello", "RRULE:FREQ=MONTHLY;BYDAY=MO,TU,WE,TH,FR;BYSETPOS=-1", 1768472430.25, NEW_YORK, &[1769764870.211192, 1772184070.211192, 1774945270.211192]),
    ("hello", "RRULE:FREQ=HOURLY;UNTIL=20181225T080000Z", 1768472430.25, NEW_YORK, &[]),
    ("hello", "rrule:freq=daily", 1768472430.25, NEW_YORK, &[1768555270.211192, 1768641670.211192, 1768728070.211192]),
    ("hello", "RRULE:FREQ=MINUTELY;INTERVAL=7;BYHOUR=1,2,3", 1768472430.25, NEW_YORK, &[1768543210.211192, 1768543630.211192, 1768544050.211192]),
    ("hello", "RRULE:FREQ=WEEKLY;BYDAY=MO,WE,FR;BYHOUR=9;BYMINUTE=30", 1768472430.25, NEW_YORK, &[1768573810.211192, 1768833010.211192, 1769005810.211192]),
    ("hello", "RRULE:FREQ=HOURLY;UNTIL=20300101T000000Z", 1768472430.25, NEW_YORK, &[1768472470.211192, 1768476070.211192, 1768479670.211192]),
    ("backup", "RRULE:FREQ=MINUTELY;INTERVAL=5", 1768472430.25, NEW_YORK, &[1768472724.249768, 1768473024.249768, 1768473324.249768]),
    ("backup", "RRULE:FREQ=DAILY;BYDAY=MO,TH;BYHOUR=14;BYMINUTE=30", 1768472430.25, NEW_YORK, &[1768505424.249768, 1768851024.249768, 1769110224.249768]),
    ("backup", "RRULE:FREQ=MONTHLY;BYDAY=MO,TU,WE,TH,FR;BYSETPOS=-1", 1768472430.25, NEW_YORK, &[1769822124.249768, 1772241324.249768, 1775002524.249768]),
    ("backup", "RRULE:FREQ=HOURLY;UNTIL=20181225T080000Z", 1768472430.25, NEW_YORK, &[]),
    ("backup", "rrule:freq=daily", 1768472430.25, NEW_YORK, &[1768526124.249768, 1768612524.249768, 1768698924.249768]),
    ("backup", "RRULE:FREQ=MINUTELY;INTERVAL=7;BYHOUR=1,2,3", 1768472430.25, NEW_YORK, &[1768543464.249768, 1768543764.249768, 1768544184.249768]),
    ("backup", "RRULE:FREQ=WEEKLY;BYDAY=MO,WE,FR;BYHOUR=9;BYMINUTE=30", 1768472430.25, NEW_YORK, &[1768573824.249768, 1768833024.249768, 1769005824.249768]),
    ("backup", "RRULE:FREQ=HOURLY;UNTIL=20300101T000000Z", 1768472430.25, NEW_YORK, &[1768475724.249768, 1768479324.249768, 1768482924.249768]),
    ("job", "30 2 * * *", 1772946000.0, NEW_YORK, &[1772953215.983778, 1773037815.983778, 1773124215.983778]),
    ("job", "H * * * *", 1772946000.0, NEW_YORK, &[1772947455.983778, 1772951055.983778, 1772954655.983778]),
    ("job", "*/15 2 * * *", 1772946000.0, NEW_YORK, &[1772953215.983778, 1773036015.983778, 1773036915.983778]),
    ("job", "*/30 * * * *", 1772946000.0, NEW_YORK, &[1772946015.983778, 1772947815.983778, 1772949615.983778]),
    ("job", "RRULE:FREQ=DAILY;BYHOUR=2;BYMINUTE=30", 1772946000.0, NEW_YORK, &[1772955024.983778, 1773037824.983778, 1773124224.983778]),
    ("job", "30 2 * * *", 1774738800.0, BERLIN, &[1774746015.983778, 1774830615.983778, 1774917015.983778]),
    ("job", "H * * * *", 1774738800.0, BERLIN, &[1774740255.983778, 1774743855.983778, 1774747455.983778]),
    ("job", "*/15 2 * * *", 1774738800.0, BERLIN, &[1774746015.983778, 1774828815.983778, 1774829715.983778]),
    ("job", "*/30 * * * *", 1774738800.0, BERLIN, &[1774738815.983778, 1774740615.983778, 1774742415.983778]),
    ("job", "RRULE:FREQ=DAILY;BYHOUR=2;BYMINUTE=30", 1774738800.0, BERLIN, &[1774747824.983778, 1774830624.983778, 1774917024.983778]),
    ("job", "30 1 * * *", 1793505600.0, NEW_YORK, &[1793511015.983778]),
    ("job", "30 2 * * *", 1793505600.0, NEW_YORK, &[1793518215.983778]),
    ("job", "RRULE:FREQ=DAILY;BYHOUR=1;BYMINUTE=30", 1793505600.0, NEW_YORK, &[1793511024.983778]),
    ("job", "30 1 * * *", 1792879200.0, BERLIN, &[1792884615.983778]),
    ("job", "30 2 * * *", 1792879200.0, BERLIN, &[1792888215.983778]),
    ("job", "RRULE:FREQ=DAILY;BYHOUR=1;BYMINUTE=30", 1792879200.0, BERLIN, &[1792884624.983778]),
    ];

    fn parse(expr: &str, name: &str, tz: Tz) -> Schedule {
        match Schedule::parse(expr, name, Some(tz)) {
            Ok(schedule) => schedule,
            Err(err) => panic!("{expr}: {err}"),
        }
    }

    fn successive(schedule: &Schedule, start: f64, count: usize) -> Vec<f64> {
        let mut times = Vec::new();
        let mut after = start;
        while times.len() < count {
            let Some(next) = schedule.next_after(after) else {
                break;
            };
            times.push(next);
            after = next;
        }
        times
    }

    #[test]
    fn same_times_as_the_python_dsari() {
        for &(name, expr, start, tz, expected) in FROM_PYTHON {
            let got = successive(&parse(expr, name, tz), start, expected.len().max(1));
            let expected: Vec<f64> = expected.to_vec();
            assert_eq!(got, expected, "{name:?} {expr:?} from {start} in {tz}");
        }
    }

    #[test]
    fn a_fixed_time_runs_once_when_the_clock_goes_back() {
        // SPEC 5.3. croniter would run these a second time an hour later.
        // New York 2026-11-01 01:30:15 EDT, then 2026-11-02 01:30:15 EST.
        let schedule = parse("30 1 * * *", "job", NEW_YORK);
        let first = 1_793_511_015.983_778;
        assert_eq!(schedule.next_after(1_793_505_600.0), Some(first));
        assert_eq!(schedule.next_after(first), Some(1_793_601_015.983_778));
        // Started during the second 01:xx (EST): the time already ran.
        assert_eq!(
            schedule.next_after(1_793_513_400.0),
            Some(1_793_601_015.983_778)
        );
        // Berlin repeats 02:00-03:00 on 2026-10-25.
        let schedule = parse("30 2 * * *", "job", BERLIN);
        let first = 1_792_888_215.983_778;
        assert_eq!(schedule.next_after(1_792_879_200.0), Some(first));
        assert_eq!(schedule.next_after(first), Some(1_792_978_215.983_778));
    }

    #[test]
    fn an_interval_job_runs_on_both_instants_of_a_repeated_hour() {
        // From 2026-11-01 00:50 EDT: 01:00 and 01:30 EDT, then EST, then 02:00 EST.
        let schedule = parse("*/30 * * * *", "job", NEW_YORK);
        assert_eq!(
            successive(&schedule, 1_793_508_600.0, 5),
            [
                1_793_509_215.983_778,
                1_793_511_015.983_778,
                1_793_512_815.983_778,
                1_793_514_615.983_778,
                1_793_516_415.983_778
            ]
        );
    }

    #[test]
    fn an_rrule_never_returns_a_time_already_past_in_a_repeated_hour() {
        // dateutil compares wall clocks, so at 01:10 EST it would return
        // 01:30 EDT, an hour ago. Here the next day's 01:30 EST comes next.
        let now = 1_793_513_400.0; // 2026-11-01T01:10:00-05:00
        let daily = parse("RRULE:FREQ=DAILY;BYHOUR=1;BYMINUTE=30", "job", NEW_YORK);
        assert_eq!(daily.next_after(now), Some(1_793_601_024.983_778));
        // A sub-hourly rule resumes once the wall clock passes the repeat.
        let minutely = parse("RRULE:FREQ=MINUTELY;INTERVAL=15", "job", NEW_YORK);
        let next = minutely.next_after(now).unwrap_or_default();
        assert!((1_793_516_400.0..1_793_517_301.0).contains(&next), "{next}");
    }

    #[test]
    fn the_subsecond_offset_is_the_python_one() {
        assert_eq!(subsecond_offset_us(0), 0);
        assert_eq!(subsecond_offset_us(u32::MAX), 1_000_000);
        // "hello": 907060870 / 0xFFFFFFFF = 0.2111919…
        assert_eq!(subsecond_offset_us(job_hash("hello")), 211_192);
        // As Python's datetime.fromtimestamp rounds the float it is given.
        assert_eq!(epoch_to_micros(1.000_000_5), Some(1_000_001));
        assert_eq!(epoch_to_micros(1.000_001_5), Some(1_000_001));
        assert_eq!(epoch_to_micros(2.5e-7), Some(0));
        assert_eq!(epoch_to_micros(-0.25), Some(-250_000));
        assert_eq!(epoch_to_micros(f64::NAN), None);
        assert_eq!(epoch_to_micros(1e13), None);
    }

    #[test]
    fn random_forms_are_drawn_once() {
        let schedule = parse("R R * * *", "job", UTC);
        let start = 1_768_472_430.25;
        let first = schedule.next_after(start).unwrap_or_default();
        assert!(first > start && first <= start + 86_401.0, "{first}");
        // The same schedule keeps its draw: exactly a day later next time.
        assert_eq!(schedule.next_after(first), Some(first + 86_400.0));
    }

    #[test]
    fn the_local_zone_is_used_when_none_is_given() {
        let schedule = match Schedule::parse("H H * * *", "hello", None) {
            Ok(schedule) => schedule,
            Err(err) => panic!("{err}"),
        };
        let start = 1_768_472_430.25;
        let next = schedule.next_after(start).unwrap_or_default();
        assert!(next > start && next <= start + 86_400.0 + 3_600.0, "{next}");
        assert_eq!((next * 1e6).round() as i64 % 1_000_000, 211_192);
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let err = |expr: &str| match Schedule::parse(expr, "job", Some(UTC)) {
            Ok(_) => panic!("{expr} should be refused"),
            Err(err) => err,
        };
        assert_eq!(err("  "), ScheduleError::Empty);
        assert_eq!(
            err("0 25 * * *").to_string(),
            "field 2 (hour) \"25\": value out of range 0-23"
        );
        assert_eq!(
            err("rrule:FREQ=DAILY;COUNT=3").to_string(),
            "RRULE COUNT is not supported: use UNTIL (dsari moves DTSTART with every run, so a count would never run out)"
        );
        assert!(matches!(
            err("0 0 31 2 *"),
            ScheduleError::NeverMatches { .. }
        ));
        assert!(matches!(err("@reboot"), ScheduleError::UnknownAlias { .. }));
        assert!(matches!(
            err("* * *"),
            ScheduleError::FieldCount { found: 3 }
        ));
        // crc32("job") % 60 = 24, so H(50-55)/0 expands to 74-55/0.
        assert_eq!(
            err("H(50-55)/0 * * * *").to_string(),
            "field 1 (minute) \"H(50-55)/0\": a step of 0 is not allowed (after H/R expansion: \"74-55/0\")"
        );
        assert_eq!(
            err("0 0 * FOO *").to_string(),
            "field 4 (month) \"FOO\": \"foo\" is not a number or a known name"
        );
    }

    #[test]
    fn a_zoneless_until_is_read_in_the_schedule_zone() {
        // The Python dsari raises here (dateutil wants a UTC UNTIL).
        // Hourly until 2026-01-15 12:00 New York time (17:00Z).
        let schedule = parse(
            "RRULE:FREQ=HOURLY;UNTIL=20260115T120000",
            "backup",
            NEW_YORK,
        );
        let times = successive(&schedule, 1_768_472_430.25, 10);
        assert!(!times.is_empty());
        assert!(
            times.iter().all(|&t| t <= 1_768_496_400.0 + 1.0),
            "{times:?}"
        );
        assert!(times.len() < 10);
    }

    /// New York time, but listing the two instants of a repeated time latest
    /// first, as chrono's `Local` does.
    #[derive(Clone)]
    struct LatestFirst;

    impl TimeZone for LatestFirst {
        type Offset = chrono::FixedOffset;

        fn from_offset(_: &chrono::FixedOffset) -> Self {
            LatestFirst
        }

        fn offset_from_local_date(
            &self,
            local: &chrono::NaiveDate,
        ) -> LocalResult<chrono::FixedOffset> {
            NEW_YORK.offset_from_local_date(local).map(|o| o.fix())
        }

        fn offset_from_local_datetime(
            &self,
            local: &NaiveDateTime,
        ) -> LocalResult<chrono::FixedOffset> {
            match NEW_YORK.offset_from_local_datetime(local) {
                LocalResult::Ambiguous(first, second) => {
                    LocalResult::Ambiguous(second.fix(), first.fix())
                }
                other => other.map(|o| o.fix()),
            }
        }

        fn offset_from_utc_date(&self, utc: &chrono::NaiveDate) -> chrono::FixedOffset {
            NEW_YORK.offset_from_utc_date(utc).fix()
        }

        fn offset_from_utc_datetime(&self, utc: &NaiveDateTime) -> chrono::FixedOffset {
            NEW_YORK.offset_from_utc_datetime(utc).fix()
        }
    }

    #[test]
    fn repeated_times_resolve_earliest_first_whatever_the_zone_type() {
        let wall = chrono::NaiveDate::from_ymd_opt(2026, 11, 1)
            .and_then(|d| d.and_hms_opt(1, 30, 0))
            .unwrap_or_default();
        let expected = Resolved::Ambiguous(1_793_511_000, 1_793_514_600);
        assert_eq!(resolve_in(&NEW_YORK, wall), expected);
        assert_eq!(resolve_in(&LatestFirst, wall), expected);
    }

    /// A small deterministic generator for the garbage test.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[(self.next() % items.len() as u64) as usize]
        }
    }

    #[test]
    fn garbage_never_panics() {
        const ATOMS: &[&str] = &[
            "*",
            "H",
            "R",
            "H(0-0)",
            "H(5-3)",
            "H(1-99)/7",
            "H/0",
            "H/99",
            "0",
            "7",
            "31",
            "59",
            "60",
            "99999999999999999999",
            "-",
            "/",
            ",",
            "*/",
            "/5",
            "5/",
            "1-",
            "-1",
            "l",
            "L",
            "w",
            "15w",
            "w32",
            "#",
            "5#",
            "#3",
            "fri#9",
            "mon-fri#2",
            "l7",
            "?",
            "jan",
            "sun-sat",
            "dec-jan/5",
            "1-5/0",
            "é",
            "@",
            "@hourly",
            "RRULE:",
            "FREQ=",
            "FREQ=DAILY",
            ";",
            "BYHOUR=99",
            "UNTIL=2",
            "UNTIL=20200101T000000",
            "COUNT=1",
            "INTERVAL=0",
            "\t",
            "BYSETPOS=-1",
            "BYDAY=MO",
            "BYMONTHDAY=31",
            "BYMONTH=2",
        ];
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let starts = [
            0.0,
            -1.0,
            1_768_472_430.25,
            1_793_511_000.5,
            253_402_300_000.0,
            -62_135_596_000.0,
            f64::NAN,
            f64::INFINITY,
            1e300,
        ];
        let zones = [
            Some(UTC),
            Some(NEW_YORK),
            Some(Tz::Australia__Lord_Howe),
            None,
        ];
        for case in 0..600 {
            let count = 1 + rng.next() % 8;
            let sep = if case % 3 == 0 { ";" } else { " " };
            let mut expr = if case % 4 == 0 {
                "RRULE:".to_string()
            } else {
                String::new()
            };
            for _ in 0..count {
                expr.push_str(rng.pick(ATOMS));
                if !rng.next().is_multiple_of(3) {
                    expr.push_str(sep);
                }
            }
            let tz = zones[(rng.next() % zones.len() as u64) as usize];
            if let Ok(schedule) = Schedule::parse(&expr, "fuzz", tz) {
                for start in starts {
                    if let Some(next) = schedule.next_after(start) {
                        assert!(next > start, "{expr:?} from {start}: {next}");
                    }
                }
            }
        }
    }
}
