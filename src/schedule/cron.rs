//! Cron schedules in the Python dsari's dialect, evaluated as croniter does.
//!
//! This module owns three steps. (1) The dsari syntax: `@` aliases, the
//! default sixth field `H` (seconds, written last) and the `H`/`R` forms,
//! expanded exactly as the Python dsari's `croniter_hash` does (SPEC §5.1).
//! (2) Each field's meaning as croniter gives it — lists, ranges, steps,
//! names, Sunday as 7, reversed ranges, `L`, `W`, `#`, and when day-of-month
//! and day-of-week are OR-ed — reduced to explicit value lists that croner
//! reads without any interpretation of its own. (3) The search for the next
//! time: croner finds the next matching wall-clock time, and this module turns
//! wall-clock times into instants across daylight-saving changes the way
//! croniter does, except that a fixed time repeated by the clock going back
//! runs once (SPEC §5.3).
//!
//! It never panics on input: every field is checked before croner sees it,
//! and croner's own errors become [`ScheduleError`]s.

use chrono::{Datelike, NaiveDate, NaiveDateTime, TimeDelta};
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

use super::{MICROS, Resolved, ScheduleError, Zone};

/// Field indexes, in dsari's (and croniter's) order: seconds last.
const MINUTE: usize = 0;
const HOUR: usize = 1;
const DOM: usize = 2;
const MONTH: usize = 3;
const DOW: usize = 4;
const SECOND: usize = 5;

const FIELD_NAMES: [&str; 6] = [
    "minute",
    "hour",
    "day-of-month",
    "month",
    "day-of-week",
    "second",
];
/// Each field's range, as croniter ≥ 4 defines it (day-of-week 0–6).
const RANGES: [(u64, u64); 6] = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 6), (0, 59)];
/// How many distinct values make croniter read a field as `*`.
const LEN_MEANS_ALL: [usize; 6] = [60, 24, 31, 12, 7, 60];

const MONTH_NAMES: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const DAY_NAMES: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

/// Bit in [`DaySpecials::nth`] for "last such weekday of the month".
const NTH_LAST: u8 = 1 << 6;

/// How far the daylight-saving steps below may walk before giving up: far
/// more than any real gap or any run of matches inside one.
const DST_STEP_LIMIT: usize = 2 * 24 * 60;

/// A parsed cron schedule.
#[derive(Debug, Clone)]
pub(crate) struct CronSchedule {
    /// The croner pattern that matches wall-clock times (explicit lists only),
    /// without its year field. Kept as text and parsed, with a window of years
    /// ([`parse_window`]), when a time is computed: that parse costs ~2 µs and
    /// a parsed `Cron` would keep memory per job for nothing between runs.
    pattern: String,
    /// croniter's `"*" in expanded[HOUR]`: decides what a time in a
    /// daylight-saving gap does.
    hour_is_star: bool,
    /// Second, minute and hour are explicit values (no `*`, no step): such a
    /// time runs once when the clock goes back (SPEC §5.3).
    fixed_time: bool,
    /// An `R` form drew a random value: parsing again would draw another.
    pub(crate) drew_random: bool,
}

impl CronSchedule {
    /// Parses a cron expression (already trimmed) for a job whose name hashes
    /// to `crc`; `random` supplies the values of `R` forms. `check` also makes
    /// sure that the pattern matches some date (a search over decades, most of
    /// a parse's cost): needless when the expression parsed before.
    pub(crate) fn parse(
        expr: &str,
        crc: u32,
        random: &mut dyn FnMut() -> u32,
        check: bool,
    ) -> Result<CronSchedule, ScheduleError> {
        let fields = dsari_fields(expr)?;
        let mut texts = Vec::with_capacity(fields.len());
        let mut drew_random = false;
        let mut draw = || {
            drew_random = true;
            random()
        };
        for (index, field) in fields.iter().enumerate() {
            let text = expand_hash(field, index, crc, &mut draw)
                .map_err(|reason| field_error(index, field, reason))?;
            // croniter lower-cases the whole expression before reading it.
            texts.push(text.to_ascii_lowercase());
        }
        let expanded = Expanded::from_texts(&texts, &fields)?;
        let pattern = expanded.croner_pattern();
        if check {
            let cron =
                parse_window(&pattern, EVER_FROM).map_err(|reason| ScheduleError::Unsupported {
                    expr: expr.to_string(),
                    reason,
                })?;
            if !ever_matches(&cron) {
                return Err(ScheduleError::NeverMatches {
                    expr: expr.to_string(),
                });
            }
        }
        Ok(CronSchedule {
            pattern,
            hour_is_star: expanded.fields[HOUR].star,
            fixed_time: expanded.fixed_time(&texts),
            drew_random,
        })
    }

    /// The first instant (epoch seconds, whole) strictly after `now_us`
    /// (epoch microseconds), or `None` past the end of time.
    pub(crate) fn next_after(&self, zone: Zone, now_us: i64) -> Option<i64> {
        // The pattern parsed at `parse`, so this cannot fail.
        let year = zone.wall(now_us.div_euclid(MICROS))?.year();
        let cron = parse_window(&self.pattern, year.checked_sub(1)?).ok()?;
        let cron = &cron;
        let mut due = self.croniter_next(cron, zone, now_us)?;
        if self.fixed_time {
            // croniter also runs a fixed time on its second instant when the
            // clock goes back; SPEC §5.3 runs it once, at the first.
            let mut steps = 0;
            while is_second_instant(zone, due)? {
                steps += 1;
                if steps > DST_STEP_LIMIT {
                    return None;
                }
                due = self.croniter_next(cron, zone, due.checked_mul(MICROS)?)?;
            }
        }
        Some(due)
    }

    /// The next matching wall-clock time strictly after `wall` (seconds).
    fn naive_after(cron: &Cron, wall: NaiveDateTime) -> Option<NaiveDateTime> {
        cron.find_next_occurrence(&wall, false).ok()
    }

    /// croniter's `_calc` for a time-zone-aware start: the next matching
    /// wall-clock time after now's, turned into an instant, with croniter's
    /// handling of daylight-saving gaps and repeated hours.
    fn croniter_next(&self, cron: &Cron, zone: Zone, now_us: i64) -> Option<i64> {
        let now_secs = now_us.div_euclid(MICROS);
        let now_offset = zone.offset_at(now_secs)?;
        let now_wall = zone.wall(now_secs)?;
        let mut wall = Self::naive_after(cron, now_wall)?;
        let (mut due, mut exists) = localize(zone, wall, now_us)?;
        if !exists && (!is_after(due, now_us) || self.hour_is_star) {
            // The gap swallowed the time and moving it forward is not the
            // answer: take the next matching time that exists.
            let mut steps = 0;
            while !exists {
                steps += 1;
                if steps > DST_STEP_LIMIT {
                    return None;
                }
                wall = Self::naive_after(cron, wall)?;
                (due, exists) = localize(zone, wall, now_us)?;
            }
        }
        let delta = zone.offset_at(due)? - now_offset;
        if delta == 0 {
            return Some(due);
        }
        // The offset changed between now and the answer: a time on the other
        // side of the change may come first (the repeated hour, for one).
        let other_wall = Self::naive_after(
            cron,
            now_wall.checked_add_signed(TimeDelta::seconds(delta))?,
        )?;
        let (other, other_exists) = localize(zone, other_wall, now_us)?;
        if !other_exists || !is_after(other, now_us) || other >= due {
            return Some(due);
        }
        Some(other)
    }
}

/// croniter's `_add_tzinfo`: the instant for a matching wall-clock time, and
/// whether that time exists. A repeated time gives its first instant unless
/// that is not after now; a time in a gap moves forward a minute at a time
/// until the clock shows it.
fn localize(zone: Zone, wall: NaiveDateTime, now_us: i64) -> Option<(i64, bool)> {
    match zone.resolve(wall) {
        Resolved::Single(t) => Some((t, true)),
        Resolved::Ambiguous(first, second) => Some((
            if is_after(first, now_us) {
                first
            } else {
                second
            },
            true,
        )),
        Resolved::Gap => {
            let mut moved = wall;
            for _ in 0..DST_STEP_LIMIT {
                moved = moved.checked_add_signed(TimeDelta::minutes(1))?;
                match zone.resolve(moved) {
                    Resolved::Single(t) | Resolved::Ambiguous(t, _) => return Some((t, false)),
                    Resolved::Gap => {}
                }
            }
            None
        }
    }
}

/// Whether the instant `t` (seconds) is strictly after `now_us` (microseconds).
fn is_after(t: i64, now_us: i64) -> bool {
    i128::from(t) * i128::from(MICROS) > i128::from(now_us)
}

/// Whether `t` is the second instant of a wall-clock time the clock repeats.
fn is_second_instant(zone: Zone, t: i64) -> Option<bool> {
    let wall = zone.wall(t)?;
    Some(matches!(zone.resolve(wall), Resolved::Ambiguous(_, second) if second == t))
}

/// Whether any date matches: the search runs from [`EVER_FROM`] through the
/// window, longer than any pattern's period (at most 28 years: 29 February on
/// a given weekday).
fn ever_matches(cron: &Cron) -> bool {
    NaiveDate::from_ymd_opt(EVER_FROM, 1, 1)
        .and_then(|date| date.and_hms_opt(0, 0, 0))
        .is_some_and(|start| cron.find_next_occurrence(&start, false).is_ok())
}

/// Where [`ever_matches`] starts looking.
const EVER_FROM: i32 = 2000;

/// Years in a parsed pattern's window: more than a pattern's longest period
/// (28 years), with room for the daylight-saving steps of one computation.
const WINDOW_YEARS: i32 = 40;

/// The last year croner handles.
const LAST_YEAR: i32 = 9999;

/// Parse a pattern for the years `first..first + WINDOW_YEARS`. croner's own
/// "every year" sets 10,000 bits one at a time (90% of a parse, 10 KB per
/// parsed pattern); a window holds every answer a computation from `first + 1`
/// can give, and costs a fortieth of that.
fn parse_window(pattern: &str, first: i32) -> Result<Cron, String> {
    let first = first.max(1);
    if first > LAST_YEAR {
        return Err("past the last year a schedule can reach".into());
    }
    let last = first.saturating_add(WINDOW_YEARS).min(LAST_YEAR);
    croner_parser()
        .parse(&format!("{pattern} {first}-{last}"))
        .map_err(|e| e.to_string())
}

fn croner_parser() -> CronParser {
    CronParser::builder()
        .seconds(Seconds::Required)
        .year(Year::Required)
        .sloppy_ranges(true)
        .build()
}

fn field_error(index: usize, text: &str, reason: String) -> ScheduleError {
    // Errors name fields as the user counts them, seconds last.
    ScheduleError::Field {
        position: index + 1,
        name: FIELD_NAMES[index],
        text: text.to_string(),
        reason,
    }
}

/// The six fields of an expression, seconds last, after the aliases and the
/// default sixth field `H`.
fn dsari_fields(expr: &str) -> Result<Vec<&str>, ScheduleError> {
    let expr = alias(expr)?.unwrap_or(expr);
    let mut fields: Vec<&str> = expr.split_ascii_whitespace().collect();
    if fields.len() == 5 {
        fields.push("H");
    }
    if fields.len() != 6 {
        return Err(ScheduleError::FieldCount {
            found: fields.len(),
        });
    }
    Ok(fields)
}

/// The expansion of an `@` alias. Written exactly in lower case, an alias is
/// dsari's hashed one (SPEC §5.1); written any other way (`@Daily`), the
/// Python dsari passes it on to croniter, whose alias is unhashed with second
/// 0, so it is that here too.
fn alias(expr: &str) -> Result<Option<&'static str>, ScheduleError> {
    if !expr.starts_with('@') {
        return Ok(None);
    }
    let hashed = match expr {
        "@midnight" => Some("H H(0-2) * * * H"),
        "@hourly" => Some("H * * * * H"),
        "@daily" => Some("H H * * * H"),
        "@weekly" => Some("H H * * H H"),
        "@monthly" => Some("H H H * * H"),
        "@yearly" | "@annually" => Some("H H H H * H"),
        _ => None,
    };
    if hashed.is_some() {
        return Ok(hashed);
    }
    match expr.to_ascii_lowercase().as_str() {
        "@midnight" | "@daily" => Ok(Some("0 0 * * * 0")),
        "@hourly" => Ok(Some("0 * * * * 0")),
        "@weekly" => Ok(Some("0 0 * * 0 0")),
        "@monthly" => Ok(Some("0 0 1 * * 0")),
        "@yearly" | "@annually" => Ok(Some("0 0 1 1 * 0")),
        _ => Err(ScheduleError::UnknownAlias {
            alias: expr.to_string(),
        }),
    }
}

/// Expands one field's `H`/`R` form (SPEC §5.1); other fields pass through.
fn expand_hash(
    field: &str,
    index: usize,
    crc: u32,
    random: &mut dyn FnMut() -> u32,
) -> Result<String, String> {
    let Some(form) = HashForm::parse(field) else {
        if field.starts_with(['h', 'r']) && HashForm::parse(&field.to_ascii_uppercase()).is_some() {
            return Err("write H and R in upper case".to_string());
        }
        return Ok(field.to_string());
    };
    let seed = if form.random { random() } else { crc };
    let hi = RANGES[index].1;
    let hash = |end: Option<u64>, begin: Option<u64>| hash_value(seed, index, end, begin);
    Ok(match (form.range, form.step) {
        (None, None) => hash(None, None)?.to_string(),
        (Some((a, b)), None) => hash(Some(b), Some(a))?.to_string(),
        (None, Some(n)) => format!("{}-{hi}/{n}", hash(Some(n), None)?),
        (Some((a, b)), Some(n)) => {
            let start = hash(Some(n), None)? + i128::from(a);
            format!("{start}-{b}/{n}")
        }
    })
}

/// `hash(i, a, b) = ((crc >> i) mod (b − a + 1)) + a`, as the Python dsari's
/// `_hash_do` computes it: a bound of 0 (or none) falls back to the field's
/// own, and `mod` is Python's (a negative modulus gives a result ≤ 0).
fn hash_value(
    seed: u32,
    index: usize,
    end: Option<u64>,
    begin: Option<u64>,
) -> Result<i128, String> {
    let (lo, hi) = RANGES[index];
    let end = i128::from(end.filter(|&v| v != 0).unwrap_or(hi));
    let begin = i128::from(begin.filter(|&v| v != 0).unwrap_or(lo));
    let modulus = end - begin + 1;
    if modulus == 0 {
        return Err(format!(
            "the hash range {begin}-{end} is empty: write H(a-b) with a ≤ b"
        ));
    }
    let shifted = i128::from(seed >> index);
    Ok(python_mod(shifted, modulus) + begin)
}

/// Python's `%`: the result has the sign of the modulus.
fn python_mod(value: i128, modulus: i128) -> i128 {
    let rem = value % modulus;
    if rem != 0 && (rem < 0) != (modulus < 0) {
        rem + modulus
    } else {
        rem
    }
}

/// One `H`/`R` form: `H`, `H(a-b)`, `H/n` or `H(a-b)/n`.
struct HashForm {
    random: bool,
    range: Option<(u64, u64)>,
    step: Option<u64>,
}

impl HashForm {
    fn parse(field: &str) -> Option<HashForm> {
        let random = match field.as_bytes().first()? {
            b'H' => false,
            b'R' => true,
            _ => return None,
        };
        let mut rest = &field[1..];
        let mut range = None;
        if let Some(inner) = rest.strip_prefix('(') {
            let (inside, after) = inner.split_once(')')?;
            let (a, b) = inside.split_once('-')?;
            range = Some((parse_digits(a)?, parse_digits(b)?));
            rest = after;
        }
        let step = match rest {
            "" => None,
            _ => Some(parse_digits(rest.strip_prefix('/')?)?),
        };
        Some(HashForm {
            random,
            range,
            step,
        })
    }
}

/// A run of ASCII digits as a number (saturating: a huge number is out of
/// every range anyway).
fn parse_digits(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(text.parse().unwrap_or(u64::MAX))
}

/// One field's values as croniter expands them.
#[derive(Debug, Clone, Copy, Default)]
struct FieldSet {
    /// croniter reads the field as `*` (every value).
    star: bool,
    /// Bit `v` set: value `v` matches.
    values: u64,
    /// Day-of-month `L`: the last day of the month.
    last: bool,
    /// A literal `*` among the field's elements.
    has_star: bool,
}

impl FieldSet {
    /// Distinct elements, as croniter counts them for "means all".
    fn distinct(&self) -> usize {
        self.values.count_ones() as usize + usize::from(self.last) + usize::from(self.has_star)
    }
}

/// The day fields' special forms.
#[derive(Debug, Clone, Copy, Default)]
struct DaySpecials {
    /// `15W`: the weekday nearest the 15th.
    nearest_weekday: Option<u64>,
    /// Per weekday (0 = Sunday): bit `n` for `#n` (1–5), [`NTH_LAST`] for `L`.
    nth: [u8; 7],
}

impl DaySpecials {
    fn has_nth(&self) -> bool {
        self.nth.iter().any(|&bits| bits != 0)
    }
}

/// All six fields expanded.
#[derive(Debug, Clone, Default)]
struct Expanded {
    fields: [FieldSet; 6],
    days: DaySpecials,
}

impl Expanded {
    /// croniter's `_expand` on the six (hash-expanded, lower-case) fields;
    /// `written` holds the fields as the user wrote them, for messages.
    fn from_texts(texts: &[String], written: &[&str]) -> Result<Expanded, ScheduleError> {
        let mut expanded = Expanded::default();
        let error = |index: usize, reason: String| {
            let as_written = written.get(index).copied().unwrap_or_default();
            let reason = if as_written.eq_ignore_ascii_case(&texts[index]) {
                reason
            } else {
                format!("{reason} (after H/R expansion: \"{}\")", texts[index])
            };
            field_error(index, as_written, reason)
        };
        for (index, text) in texts.iter().enumerate() {
            let set = expand_field(index, text, &mut expanded.days)
                .map_err(|reason| error(index, reason))?;
            expanded.fields[index] = set;
        }
        let dow_means_all = expanded.fields[DOW].distinct() == LEN_MEANS_ALL[DOW];
        if !(dow_means_all && texts[DOM].contains('*')) {
            expanded
                .check_nth_mix()
                .map_err(|reason| error(DOW, reason))?;
        }
        // croniter reads a day field that lists every value as `*` only when
        // the other day field has a `*` in it; otherwise it stays a list, so
        // that the two are OR-ed.
        for (index, other) in [(DOM, DOW), (DOW, DOM)] {
            let set = &mut expanded.fields[index];
            if set.distinct() == LEN_MEANS_ALL[index] && texts[other].contains('*') {
                set.star = true;
            }
        }
        for index in [MINUTE, HOUR, MONTH, SECOND] {
            let set = &mut expanded.fields[index];
            if set.distinct() == LEN_MEANS_ALL[index] {
                set.star = true;
            }
        }
        Ok(expanded)
    }

    /// croniter refuses plain weekdays next to `#`/`L` ones unless the field
    /// lists all seven days.
    fn check_nth_mix(&self) -> Result<(), String> {
        if !self.days.has_nth() {
            return Ok(());
        }
        let nth_days = (0..7)
            .filter(|&day| self.days.nth[day] != 0)
            .fold(0u64, |bits, day| bits | 1 << day);
        let plain = self.fields[DOW].values & !nth_days;
        if plain != 0 && self.fields[DOW].distinct() != LEN_MEANS_ALL[DOW] {
            return Err(
                "plain weekdays cannot be mixed with nth weekdays (# or L): use one kind"
                    .to_string(),
            );
        }
        Ok(())
    }

    /// A fixed time of day: second, minute and hour are explicit values.
    fn fixed_time(&self, texts: &[String]) -> bool {
        [SECOND, MINUTE, HOUR]
            .iter()
            .all(|&index| !self.fields[index].star && !texts[index].contains(['*', '/']))
    }

    /// The croner pattern (seconds first) that matches what croniter matches.
    ///
    /// croniter ORs the day fields when neither reads as `*`, which croner
    /// does for explicit lists too. With a `W` day, croniter ignores the
    /// day-of-week (unless it is `#`/`L`); with `#`/`L` weekdays it ignores
    /// the day-of-month when OR-ing; what remains is AND-ed (croner's `+`).
    fn croner_pattern(&self) -> String {
        let [minute, hour, dom, month, dow, second] = &self.fields;
        let days = &self.days;
        let or_case = !dom.star && !dow.star;
        let (dom_text, dow_text) = match (days.nearest_weekday, days.has_nth()) {
            (None, false) => (day_list(dom), day_list(dow)),
            (None, true) if or_case || dom.star => ("*".to_string(), nth_list(days)),
            (None, true) => (day_list(dom), format!("+{}", nth_list(days))),
            (Some(day), false) => (nearest_text(day), "*".to_string()),
            (Some(day), true) => (nearest_text(day), format!("+{}", nth_list(days))),
        };
        format!(
            "{} {} {} {} {} {}",
            value_list(second),
            value_list(minute),
            value_list(hour),
            dom_text,
            value_list(month),
            dow_text
        )
    }
}

fn value_list(set: &FieldSet) -> String {
    if set.star {
        return "*".to_string();
    }
    let values: Vec<String> = (0..64u64)
        .filter(|v| set.values & (1 << v) != 0)
        .map(|v| v.to_string())
        .collect();
    values.join(",")
}

fn day_list(set: &FieldSet) -> String {
    if set.star {
        return "*".to_string();
    }
    match (set.values != 0, set.last) {
        (true, true) => format!("{},L", value_list(set)),
        (false, true) => "L".to_string(),
        _ => value_list(set),
    }
}

/// croniter moves `31W` to the last day of a shorter month, which is what
/// croner's `LW` means; smaller days are croner's `dW` unchanged.
fn nearest_text(day: u64) -> String {
    if day >= 31 {
        "LW".to_string()
    } else {
        format!("{day}W")
    }
}

fn nth_list(days: &DaySpecials) -> String {
    let mut items = Vec::new();
    for (weekday, &bits) in days.nth.iter().enumerate() {
        for n in 1..=5u8 {
            if bits & (1 << n) != 0 {
                items.push(format!("{weekday}#{n}"));
            }
        }
        if bits & NTH_LAST != 0 {
            items.push(format!("{weekday}L"));
        }
    }
    items.join(",")
}

/// One field as croniter's `_expand` reads it.
fn expand_field(index: usize, text: &str, days: &mut DaySpecials) -> Result<FieldSet, String> {
    let text = if text.contains('?') {
        if text != "?" {
            return Err("? must stand alone".to_string());
        }
        if index != DOM && index != DOW {
            return Err("? is only allowed in day-of-month and day-of-week".to_string());
        }
        "*"
    } else {
        text
    };
    let elements: Vec<&str> = text.split(',').collect();
    let mut set = FieldSet::default();
    for element in &elements {
        expand_element(index, element, elements.len(), &mut set, days)?;
    }
    if set.values == 0 && !set.last && !set.has_star && days.nearest_weekday.is_none() {
        return Err("matches no value".to_string());
    }
    set.star = set.has_star;
    Ok(set)
}

/// One comma-separated element: a special day form, a range or a value.
fn expand_element(
    index: usize,
    element: &str,
    element_count: usize,
    set: &mut FieldSet,
    days: &mut DaySpecials,
) -> Result<(), String> {
    let mut element = element;
    let mut nth = None;
    if index == DOW
        && let Some((base, n)) = special_weekday(element)?
    {
        element = base;
        nth = Some(n);
    }
    if index == DOM
        && let Some(day) = nearest_weekday(element)
    {
        if !(1..=31).contains(&day) {
            return Err(format!("W day {day} out of range 1-31"));
        }
        if element_count > 1 {
            return Err("W takes a single day, not a list or range".to_string());
        }
        days.nearest_weekday = Some(day);
        set.values |= 1 << day;
        return Ok(());
    }
    match StepForm::of(index, element) {
        Some(form) => expand_range(index, &form, nth, set, days),
        None => expand_value(index, element, nth, set, days),
    }
}

/// A weekday with `#n` (`fri#3`, `mon-fri#2`) or croniter's `l5` (the last
/// Friday): the weekday part and the nth bit.
fn special_weekday(element: &str) -> Result<Option<(&str, u8)>, String> {
    if let Some((base, n)) = element.split_once('#')
        && let Some(n) = parse_digits(n)
        && is_weekday_base(base)
    {
        if !(1..=5).contains(&n) {
            return Err(format!("nth weekday #{n} out of range 1-5"));
        }
        // 1..=5 fits a u8 shift.
        return Ok(Some((base, 1 << n)));
    }
    if let Some(day) = element.strip_prefix('l')
        && parse_digits(day).is_some()
    {
        return Ok(Some((day, NTH_LAST)));
    }
    Ok(None)
}

/// croniter's `\w+` or `name-name` before `#`.
fn is_weekday_base(base: &str) -> bool {
    let word = |w: &str| !w.is_empty() && w.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    let both_in = |names: &[&str], a: &str, b: &str| names.contains(&a) && names.contains(&b);
    match base.split_once('-') {
        Some((a, b)) => both_in(&DAY_NAMES, a, b) || both_in(&MONTH_NAMES, a, b),
        None => word(base),
    }
}

/// croniter's `15w` or `w15`.
fn nearest_weekday(element: &str) -> Option<u64> {
    element
        .strip_suffix('w')
        .and_then(parse_digits)
        .or_else(|| element.strip_prefix('w').and_then(parse_digits))
}

/// A `low-high[/step]` element after croniter's rewrites of `*/n` to
/// `lo-hi/n` and of `a/n` to `a-hi/n`: croniter's `step_search_re`,
/// `^([^-]+)-([^-/]+)(/(\d+))?$`, over the rewritten text.
struct StepForm {
    text: String,
    dash: usize,
    slash: Option<usize>,
    /// Written as `a/n`, which croniter tells apart from `a-a`.
    start_with_step: bool,
}

impl StepForm {
    /// The element as a range, or `None` for a single value.
    fn of(index: usize, element: &str) -> Option<StepForm> {
        let hi = RANGES[index].1;
        let first = match element.strip_prefix("*/") {
            Some(step) if !step.is_empty() => format!("{}-{hi}/{step}", RANGES[index].0),
            _ => element.to_string(),
        };
        if let Some(form) = StepForm::search(first, false) {
            return Some(form);
        }
        // croniter's `^(.+)/(.+)$`: the last `/`, with text on both sides.
        let (start, step) = element.rsplit_once('/')?;
        if start.is_empty() || step.is_empty() {
            return None;
        }
        StepForm::search(format!("{start}-{hi}/{step}"), true)
    }

    fn search(text: String, start_with_step: bool) -> Option<StepForm> {
        let dash = text.find('-')?;
        let slash = text[dash + 1..].find('/').map(|at| dash + 1 + at);
        let form = StepForm {
            text,
            dash,
            slash,
            start_with_step,
        };
        let valid = dash > 0
            && !form.high().is_empty()
            && !form.high().contains('-')
            && form.step().is_none_or(|step| parse_digits(step).is_some());
        valid.then_some(form)
    }

    fn low(&self) -> &str {
        &self.text[..self.dash]
    }

    fn high(&self) -> &str {
        &self.text[self.dash + 1..self.slash.unwrap_or(self.text.len())]
    }

    fn step(&self) -> Option<&str> {
        self.slash.map(|at| &self.text[at + 1..])
    }
}

/// A parsed value: a number, or day-of-month `l`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Value {
    Number(u64),
    Last,
}

/// croniter's `_alphaconv`: month and weekday names, day-of-month `l`.
fn alpha(index: usize, text: &str) -> Result<Value, String> {
    let position = |names: &[&str]| names.iter().position(|&name| name == text);
    let found = match index {
        DOM if text == "l" => Some(Value::Last),
        MONTH => position(&MONTH_NAMES).map(|at| Value::Number(at as u64 + 1)),
        DOW => position(&DAY_NAMES).map(|at| Value::Number(at as u64)),
        _ => None,
    };
    found.ok_or_else(|| format!("\"{text}\" is not a number or a known name"))
}

/// A number or a name; day-of-week 7 is Sunday.
fn read_value(index: usize, text: &str) -> Result<Value, String> {
    let value = match parse_digits(text) {
        Some(number) => Value::Number(number),
        None => alpha(index, text)?,
    };
    Ok(match value {
        Value::Number(7) if index == DOW => Value::Number(0),
        other => other,
    })
}

/// A range element, expanded to its values as croniter does, including its
/// two oddities: a range written with equal ends (`5-5`, `jan-jan`) means the
/// whole field, and a reversed range (`50-10/10`) wraps around the field's end.
fn expand_range(
    index: usize,
    form: &StepForm,
    nth: Option<u8>,
    set: &mut FieldSet,
    days: &mut DaySpecials,
) -> Result<(), String> {
    let (lo, hi) = RANGES[index];
    let high_text = if index == DOM && form.high() == "l" {
        "31"
    } else {
        form.high()
    };
    let step = match form.step() {
        Some(text) => parse_digits(text).unwrap_or(0),
        None => 1,
    };
    if step == 0 {
        return Err("a step of 0 is not allowed".to_string());
    }
    let (Value::Number(mut low), Value::Number(mut high)) = (
        read_value(index, form.low())?,
        read_value(index, high_text)?,
    ) else {
        return Err(format!(
            "the range {}-{} is not a range of numbers",
            form.low(),
            form.high()
        ));
    };
    if low.max(high) > hi {
        return Err(format!("value out of range {lo}-{hi}"));
    }
    let start_at_field_max = form.start_with_step && low == high;
    if low == high && !form.start_with_step {
        (low, high) = (lo, hi);
    }
    let values = if start_at_field_max {
        vec![low]
    } else if low > high {
        wrapped_range(lo, hi, low, high, step)
    } else {
        stepped(low, high, step)
    };
    for value in values {
        match nth {
            Some(bits) if bits != NTH_LAST => mark_nth(value, bits, set, days, index)?,
            _ => mark_value(index, Value::Number(value), set)?,
        }
    }
    Ok(())
}

/// `range(low, high + 1, step)`.
fn stepped(low: u64, high: u64, step: u64) -> Vec<u64> {
    let step = usize::try_from(step).unwrap_or(usize::MAX);
    (low..=high).step_by(step).collect()
}

/// croniter's reversed range: `low..=hi`, then `lo..=high`, keeping the step
/// across the wrap.
fn wrapped_range(lo: u64, hi: u64, low: u64, high: u64, step: u64) -> Vec<u64> {
    let mut values = stepped(low, hi, step);
    let mut skip = 0;
    if let Some(&last) = values.last() {
        let already_skipped = hi - last;
        let position = last - lo;
        if position.saturating_add(step) > hi - lo + 1 && already_skipped < step {
            skip = step - already_skipped;
        }
    }
    if let Some(start) = lo.checked_add(skip)
        && start <= high
    {
        values.extend(stepped(start, high, step));
    }
    values
}

/// A single value element (`5`, `fri`, `l`, `*`).
fn expand_value(
    index: usize,
    text: &str,
    nth: Option<u8>,
    set: &mut FieldSet,
    days: &mut DaySpecials,
) -> Result<(), String> {
    if text.starts_with('-') {
        return Err("negative numbers are not allowed".to_string());
    }
    if text == "*" {
        set.has_star = true;
        return Ok(());
    }
    let value = read_value(index, text)?;
    match (nth, value) {
        (Some(bits), Value::Number(day)) => mark_nth(day, bits, set, days, index),
        _ => mark_value(index, value, set),
    }
}

fn mark_value(index: usize, value: Value, set: &mut FieldSet) -> Result<(), String> {
    let (lo, hi) = RANGES[index];
    match value {
        Value::Last => set.last = true,
        Value::Number(v) if (lo..=hi).contains(&v) => set.values |= 1 << v,
        Value::Number(_) => return Err(format!("value out of range {lo}-{hi}")),
    }
    Ok(())
}

fn mark_nth(
    day: u64,
    bits: u8,
    set: &mut FieldSet,
    days: &mut DaySpecials,
    index: usize,
) -> Result<(), String> {
    let day = if day == 7 { 0 } else { day };
    mark_value(index, Value::Number(day), set)?;
    // mark_value accepted it, so day ≤ 6.
    if let Some(slot) = days.nth.get_mut(day as usize) {
        *slot |= bits;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(expr: &str, name: &str) -> Result<Vec<String>, ScheduleError> {
        let crc = super::super::job_hash(name);
        let mut random = || 0u32;
        dsari_fields(expr)?
            .iter()
            .enumerate()
            .map(|(i, f)| expand_hash(f, i, crc, &mut random).map_err(|r| field_error(i, f, r)))
            .collect()
    }

    fn pattern(expr: &str) -> String {
        let written = dsari_fields(expr).unwrap();
        let texts: Vec<String> = written.iter().map(|f| f.to_ascii_lowercase()).collect();
        Expanded::from_texts(&texts, &written)
            .unwrap()
            .croner_pattern()
    }

    #[test]
    fn hash_forms_follow_the_spec_table() {
        // crc32("hello") = 0x3610a686 = 907060870
        let crc: u32 = 907_060_870;
        assert_eq!(super::super::job_hash("hello"), crc);
        let h = |i: usize, a: i128, b: i128| (i128::from(crc >> i) % (b - a + 1)) + a;
        let got = fields("H H(0-2) H/15 H(3-9)/2 H", "hello").unwrap();
        assert_eq!(got[0], h(0, 0, 59).to_string());
        assert_eq!(got[1], h(1, 0, 2).to_string());
        assert_eq!(got[2], format!("{}-31/15", h(2, 1, 15)));
        assert_eq!(got[3], format!("{}-9/2", h(3, 1, 2) + 3));
        assert_eq!(got[4], h(4, 0, 6).to_string());
        assert_eq!(got[5], h(5, 0, 59).to_string());
    }

    #[test]
    fn zero_bounds_fall_back_to_the_field_range() {
        let crc = super::super::job_hash("hello");
        let got = fields("* * H(0-5) * * *", "hello").unwrap();
        assert_eq!(got[2], ((crc >> 2) % 5 + 1).to_string());
        let got = fields("* * * H(0-0) * *", "hello").unwrap();
        assert_eq!(got[3], ((crc >> 3) % 12 + 1).to_string());
    }

    #[test]
    fn reversed_hash_bounds_use_pythons_modulo() {
        // modulus 3 - 10 + 1 = -6: Python's % gives -5..=0, plus 10.
        let crc = super::super::job_hash("hello");
        let got = fields("H(10-3) * * * *", "hello").unwrap();
        assert_eq!(got[0], (python_mod(i128::from(crc), -6) + 10).to_string());
        assert!(fields("H(5-4) * * * *", "hello").is_err());
    }

    #[test]
    fn aliases_expand_before_anything_else() {
        assert_eq!(
            dsari_fields("@midnight").unwrap(),
            ["H", "H(0-2)", "*", "*", "*", "H"]
        );
        assert_eq!(
            dsari_fields("@weekly").unwrap(),
            ["H", "H", "*", "*", "H", "H"]
        );
        assert_eq!(
            dsari_fields("@Daily").unwrap(),
            ["0", "0", "*", "*", "*", "0"]
        );
        assert!(matches!(
            dsari_fields("@reboot"),
            Err(ScheduleError::UnknownAlias { .. })
        ));
        assert_eq!(dsari_fields("1 2 3 4 5").unwrap()[5], "H");
        assert!(matches!(
            dsari_fields("1 2 3 4"),
            Err(ScheduleError::FieldCount { found: 4 })
        ));
        assert!(matches!(
            dsari_fields("0 0 * * * 0 2030"),
            Err(ScheduleError::FieldCount { found: 7 })
        ));
    }

    #[test]
    fn croniter_field_oddities() {
        // Reversed ranges wrap as croniter wraps them: 38-35/10 is
        // 38,48,58 then 9,19,29 (croniter's own skip count, not 8,18,28).
        assert_eq!(pattern("38-35/10 * * * * 0"), "0 9,19,29,38,48,58 * * * *");
        assert_eq!(pattern("50-10/10 * * * * 0"), "0 0,10,50 * * * *");
        // Equal ends mean the whole field, unless written as a/n.
        assert_eq!(pattern("35-35/10 * * * * 0"), "0 0,10,20,30,40,50 * * * *");
        assert_eq!(pattern("59/15 * * * * 0"), "0 59 * * * *");
        // Sunday is 0 or 7; 5-7 wraps to Fri, Sat, Sun.
        assert_eq!(pattern("0 0 * * 7 0"), "0 0 0 * * 0");
        assert_eq!(pattern("0 0 * * 5-7 0"), "0 0 0 * * 0,5,6");
        assert_eq!(pattern("0 0 * * 1-7 0"), "0 0 0 * * *");
        // Names, any case.
        assert_eq!(pattern("0 0 * FEB-Mar sat,SUN 0"), "0 0 0 * 2,3 0,6");
    }

    #[test]
    fn day_fields_or_only_when_both_are_restricted() {
        assert_eq!(pattern("0 0 1-7 * 1 0"), "0 0 0 1,2,3,4,5,6,7 * 1");
        // A full day-of-month reads as `*` only if day-of-week has a `*`.
        assert_eq!(pattern("0 0 1-31 * */2 0"), "0 0 0 * * 0,2,4,6");
        assert!(pattern("0 0 1-31 * 1 0").contains(" 1,2,3,"));
        // `#` ignores the day-of-month when OR-ing; `W` ignores the weekday.
        assert_eq!(pattern("0 0 15 * fri#3 0"), "0 0 0 * * 5#3");
        assert_eq!(pattern("0 0 15w * 1 0"), "0 0 0 15W * *");
        assert_eq!(pattern("0 0 * * l5 0"), "0 0 0 * * 5L");
        assert_eq!(pattern("0 0 l * * 0"), "0 0 0 L * *");
    }

    #[test]
    fn bad_fields_name_the_field() {
        let err = CronSchedule::parse("0 25 * * *", 0, &mut || 0, true).unwrap_err();
        assert_eq!(
            err.to_string(),
            "field 2 (hour) \"25\": value out of range 0-23"
        );
        for bad in [
            "61 * * * *",
            "* * 0 * *",
            "* * * 13 *",
            "* * * * 8",
            "*/0 * * * *",
            "x * * * *",
            "-5 * * * *",
            "* * * * mon#6",
            "* * * * 1,fri#2",
            "* * 1,15w * *",
            "h * * * *",
            "H(1-2 * * * *",
            "1,,2 * * * *",
            "* * ? * ?x",
            "? * * * *",
        ] {
            assert!(
                matches!(
                    CronSchedule::parse(bad, 0, &mut || 0, true),
                    Err(ScheduleError::Field { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn impossible_dates_are_rejected() {
        let err = CronSchedule::parse("0 0 31 2 *", 0, &mut || 0, true).unwrap_err();
        assert!(matches!(err, ScheduleError::NeverMatches { .. }), "{err}");
        assert!(CronSchedule::parse("0 0 29 2 *", 0, &mut || 0, true).is_ok());
    }

    #[test]
    fn fixed_time_means_explicit_values() {
        let fixed = |e: &str| {
            CronSchedule::parse(e, 0, &mut || 0, true)
                .unwrap()
                .fixed_time
        };
        assert!(fixed("30 1 * * *"));
        assert!(fixed("0,30 1,13 * * *"));
        assert!(!fixed("*/30 * * * *"));
        assert!(!fixed("30 * * * *"));
        assert!(!fixed("H/15 1 * * *"));
        assert!(!fixed("30 1 * * * */10"));
    }
}
