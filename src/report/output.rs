//! Reading a run's output for its report page: `output.txt`, or the
//! `output.txt.gz` / `output.txt.xz` an operator compressed it to (SPEC §1.2),
//! trimmed to its first and last bytes as `report_run_output_start` / `_end`
//! ask, without holding more than those bytes in memory.
//!
//! Only reads; never touches anything in the run directory.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use crate::exec::OUTPUT_FILE;

/// What of a run's output a report shows.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct RunOutput {
    /// The file it came from (`output.txt`, `output.txt.gz` or `output.txt.xz`).
    pub file_name: String,
    /// The first bytes shown (all of the output when nothing is omitted).
    pub head: Vec<u8>,
    /// The last bytes shown, after the omitted part (empty when nothing is).
    pub tail: Vec<u8>,
    /// Bytes left out between `head` and `tail`.
    pub omitted: u64,
    /// Size of the whole (uncompressed) output.
    pub total: u64,
}

/// Read the output in `run_dir`, keeping the first `start` and the last `end`
/// bytes when it is longer than both together (0 and 0: keep everything).
/// `Ok(None)` when the run has no output file.
pub(crate) fn read_output(
    run_dir: &Path,
    start: u64,
    end: u64,
) -> Result<Option<RunOutput>, (PathBuf, io::Error)> {
    for (suffix, kind) in [("", Kind::Plain), (".gz", Kind::Gzip), (".xz", Kind::Xz)] {
        let name = format!("{OUTPUT_FILE}{suffix}");
        let path = run_dir.join(&name);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err((path, e)),
        };
        let reader: Box<dyn Read> = match kind {
            Kind::Plain => Box::new(file),
            // Multi-member / multi-stream decoders: operators' `gzip`/`xz` of
            // appended files, which Python's modules read whole (shared/CRATES.md).
            Kind::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(BufReader::new(file))),
            Kind::Xz => Box::new(liblzma::bufread::XzDecoder::new_multi_decoder(
                BufReader::new(file),
            )),
        };
        let mut output = trimmed(reader, start, end).map_err(|e| (path.clone(), e))?;
        output.file_name = name;
        return Ok(Some(output));
    }
    Ok(None)
}

enum Kind {
    Plain,
    Gzip,
    Xz,
}

/// Stream `reader`, keeping its first `start` and last `end` bytes.
fn trimmed(mut reader: impl Read, start: u64, end: u64) -> io::Result<RunOutput> {
    let mut out = RunOutput::default();
    if start == 0 && end == 0 {
        reader.read_to_end(&mut out.head)?;
        out.total = out.head.len() as u64;
        return Ok(out);
    }
    (&mut reader).take(start).read_to_end(&mut out.head)?;
    let end = usize::try_from(end).unwrap_or(usize::MAX);
    let mut rest: Vec<u8> = Vec::new();
    let mut rest_len: u64 = 0;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = match reader.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        rest_len += n as u64;
        rest.extend_from_slice(&chunk[..n]);
        // Keep at most twice the tail, so that dropping the front stays cheap.
        if rest.len() > end.saturating_mul(2).max(chunk.len()) {
            let drop = rest.len() - end;
            rest.drain(..drop);
        }
    }
    let keep = rest.len().min(end);
    out.tail = rest.split_off(rest.len() - keep);
    out.omitted = rest_len - keep as u64;
    out.total = out.head.len() as u64 + rest_len;
    if out.omitted == 0 {
        // Nothing left out: one piece, like an untrimmed output.
        out.head.append(&mut out.tail);
    }
    Ok(out)
}

/// Output bytes as text for a page: invalid UTF-8 replaced, terminal colour
/// and cursor sequences (ESC `[` … final byte) removed, other control
/// characters but tab, newline and carriage return shown as `�`.
pub(crate) fn display_text(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' if chars.peek() == Some(&'[') => {
                chars.next();
                // Parameter and intermediate bytes, then one final byte.
                for c in chars.by_ref() {
                    if ('\u{40}'..='\u{7e}').contains(&c) {
                        break;
                    }
                }
            }
            '\t' | '\n' | '\r' => out.push(c),
            c if c.is_control() => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn trim(text: &str, start: u64, end: u64) -> (String, String, u64) {
        let out = trimmed(text.as_bytes(), start, end).unwrap();
        assert_eq!(out.total, text.len() as u64);
        (
            String::from_utf8(out.head).unwrap(),
            String::from_utf8(out.tail).unwrap(),
            out.omitted,
        )
    }

    #[test]
    fn trims_head_and_tail() {
        assert_eq!(
            trim("abcdefghij", 0, 0),
            ("abcdefghij".into(), "".into(), 0)
        );
        assert_eq!(trim("abcdefghij", 3, 2), ("abc".into(), "ij".into(), 5));
        assert_eq!(trim("abcdefghij", 3, 0), ("abc".into(), "".into(), 7));
        assert_eq!(trim("abcdefghij", 0, 4), ("".into(), "ghij".into(), 6));
        assert_eq!(
            trim("abcdefghij", 6, 6),
            ("abcdefghij".into(), "".into(), 0)
        );
        assert_eq!(trim("abc", 5, 0), ("abc".into(), "".into(), 0));
    }

    #[test]
    fn trims_long_streams() {
        let text: String = (0..300_000)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        let (head, tail, omitted) = trim(&text, 10, 100_000);
        assert_eq!(head, text[..10]);
        assert_eq!(tail, text[text.len() - 100_000..]);
        assert_eq!(omitted, 300_000 - 100_010);
    }

    #[test]
    fn reads_concatenated_gzip_members() {
        let dir = tempfile::tempdir().unwrap();
        let mut all = Vec::new();
        for part in ["first\n", "second\n"] {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(part.as_bytes()).unwrap();
            all.extend(enc.finish().unwrap());
        }
        std::fs::write(dir.path().join("output.txt.gz"), all).unwrap();
        let out = read_output(dir.path(), 0, 0).unwrap().unwrap();
        assert_eq!(out.file_name, "output.txt.gz");
        assert_eq!(out.head, b"first\nsecond\n");
        assert!(
            read_output(&dir.path().join("none"), 0, 0)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn display_text_strips_terminal_codes() {
        assert_eq!(display_text(b"\x1b[31mred\x1b[0m ok\n"), "red ok\n");
        assert_eq!(display_text(b"a\x07b\xffc"), "a\u{fffd}b\u{fffd}c");
        assert_eq!(display_text(b"<script>"), "<script>");
    }
}
