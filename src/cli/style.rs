//! How values look in the `pretty` format: local times without fractions,
//! short durations, short run ids, aligned columns, and a few ANSI colours.
//!
//! Colour is used only when stdout is a terminal and `NO_COLOR` is unset or
//! empty (<https://no-color.org>). The escape codes are written here by hand:
//! four colours do not need a crate.

use std::io::IsTerminal;

use chrono::{Local, TimeZone};

/// Characters of a run id shown in tables (`dsari` commands accept any unique prefix).
pub const SHORT_ID: usize = 8;

/// A colour for a table cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Colour {
    None,
    Red,
    Green,
    Yellow,
    Dim,
}

impl Colour {
    fn code(self) -> &'static str {
        match self {
            Colour::None => "",
            Colour::Red => "\x1b[31m",
            Colour::Green => "\x1b[32m",
            Colour::Yellow => "\x1b[33m",
            Colour::Dim => "\x1b[2m",
        }
    }
}

/// Whether to colour what goes to stdout.
pub fn colour_stdout() -> bool {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    !no_color && std::io::stdout().is_terminal()
}

/// Epoch seconds as a local time without fractions: `2026-11-29 14:03:12`.
pub fn local_time(t: f64) -> String {
    match Local.timestamp_opt(t.floor() as i64, 0).earliest() {
        Some(dt) => dt.format("%Y-%m-%d %H:%M:%S").to_string(),
        None => "-".to_string(),
    }
}

/// Epoch seconds as a local ISO 8601 time with its offset and microseconds, as
/// Python's `datetime.fromtimestamp(t).astimezone().isoformat()` writes it.
pub fn python_iso(t: f64) -> String {
    let secs = t.floor();
    let micros = ((t - secs) * 1e6).round().min(999_999.0) as u32;
    match Local.timestamp_opt(secs as i64, micros * 1000).earliest() {
        Some(dt) if micros == 0 => dt.format("%Y-%m-%dT%H:%M:%S%:z").to_string(),
        Some(dt) => dt.format("%Y-%m-%dT%H:%M:%S%.6f%:z").to_string(),
        None => String::new(),
    }
}

/// A duration for people: `0.04s`, `12.3s`, `3m12s`, `1h02m`, `2d03h`.
pub fn duration(seconds: f64) -> String {
    if !seconds.is_finite() {
        return "-".into();
    }
    let s = seconds.max(0.0);
    if s < 10.0 {
        return format!("{s:.2}s");
    }
    if s < 60.0 {
        return format!("{s:.1}s");
    }
    let whole = s.round() as u64;
    let (d, h, m, sec) = (
        whole / 86400,
        whole / 3600 % 24,
        whole / 60 % 60,
        whole % 60,
    );
    if d > 0 {
        format!("{d}d{h:02}h")
    } else if h > 0 {
        format!("{h}h{m:02}m")
    } else {
        format!("{m}m{sec:02}s")
    }
}

/// How long ago / from now: `5m12s ago`, `in 3.00s`.
pub fn relative(t: f64, now: f64) -> String {
    if t <= now {
        format!("{} ago", duration(now - t))
    } else {
        format!("in {}", duration(t - now))
    }
}

/// The first [`SHORT_ID`] characters of a run id.
pub fn short_id(run_id: &str) -> &str {
    run_id.get(..SHORT_ID).unwrap_or(run_id)
}

/// A table of text cells printed with aligned columns; the last column is not
/// padded. Cells may carry a colour, applied after padding so widths stay right.
pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<(String, Colour)>>,
}

impl Table {
    pub fn new(headers: Vec<&'static str>) -> Table {
        Table {
            headers,
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<(String, Colour)>) {
        self.rows.push(cells);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Write the header and every row.
    pub fn write(&self, out: &mut dyn std::io::Write, colour: bool) -> std::io::Result<()> {
        let n = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, (text, _)) in row.iter().enumerate().take(n) {
                widths[i] = widths[i].max(text.chars().count());
            }
        }
        let header: Vec<(String, Colour)> = self
            .headers
            .iter()
            .map(|h| (h.to_string(), Colour::None))
            .collect();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, (text, c)) in row.iter().enumerate().take(n) {
                let last = i + 1 == row.len().min(n);
                let pad = if last {
                    0
                } else {
                    widths[i] - text.chars().count()
                };
                if colour && *c != Colour::None {
                    line.push_str(c.code());
                    line.push_str(text);
                    line.push_str("\x1b[0m");
                } else {
                    line.push_str(text);
                }
                if !last {
                    line.push_str(&" ".repeat(pad + 2));
                }
            }
            writeln!(out, "{}", line.trim_end())?;
        }
        Ok(())
    }
}

/// A command line as a shell would need it typed: words quoted only when needed.
pub fn shell_join(words: &[String]) -> String {
    words
        .iter()
        .map(|w| {
            let plain = !w.is_empty()
                && w.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
            if plain {
                w.clone()
            } else {
                format!("'{}'", w.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Text of an exit code and its colour: green 0, red otherwise.
pub fn exit_cell(exit_code: Option<i64>) -> (String, Colour) {
    match exit_code {
        Some(0) => ("0".into(), Colour::Green),
        Some(c) => (c.to_string(), Colour::Red),
        None => ("running".into(), Colour::Yellow),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_at_a_glance() {
        assert_eq!(duration(0.0412), "0.04s");
        assert_eq!(duration(12.34), "12.3s");
        assert_eq!(duration(192.0), "3m12s");
        assert_eq!(duration(3720.0), "1h02m");
        assert_eq!(duration(183600.0), "2d03h");
    }

    #[test]
    fn shell_words_are_quoted_only_when_needed() {
        let words = ["/bin/sh", "-c", "echo 'hi' there"].map(String::from);
        assert_eq!(shell_join(&words), r"/bin/sh -c 'echo '\''hi'\'' there'");
    }

    #[test]
    fn table_pads_all_but_the_last_column() {
        let mut t = Table::new(vec!["A", "LONGER", "C"]);
        t.row(vec![
            ("xx".into(), Colour::Red),
            ("y".into(), Colour::None),
            ("z".into(), Colour::None),
        ]);
        let mut out = Vec::new();
        t.write(&mut out, false).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "A   LONGER  C\nxx  y       z\n"
        );
    }
}
