//! Property tests ("fuzzing") of the two parsers that read what users and CI
//! pipelines write: trigger files and configuration files. No input may panic
//! (or overflow the stack); each must give a value or a message. Failures that
//! proptest finds are kept in `proptest-regressions/` and re-run first, and the
//! hand-made hostile inputs in `tests/corpus/` run on every `cargo test`.

use std::path::Path;

use dsari::document::Format;
use dsari::trigger;
use proptest::prelude::*;

/// Pieces that make near-valid JSON and YAML, so that generated inputs reach
/// deep into the parsers instead of failing on the first byte.
const FRAGMENTS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ":",
    ",",
    "\"",
    "'",
    "\n",
    "  ",
    "- ",
    "? ",
    "&a ",
    "*a",
    "<<: *a",
    "!!str ",
    "!!binary ",
    "!custom ",
    "---\n",
    "...\n",
    "%YAML 1.1\n",
    "\"environment\"",
    "environment",
    "\"schedule_time\"",
    "schedule_time",
    "schedule_timezone",
    "\"Europe/Berlin\"",
    "Mars/Base",
    "idempotency_key",
    "LD_PRELOAD",
    "FOO",
    "1e400",
    "-0",
    "0x1F",
    "0o17",
    "0755",
    "1_000",
    "yes",
    "no",
    "on",
    "null",
    "~",
    "true",
    "12:30",
    "2024-05-01T12:00:00Z",
    "2024-13-45 99:99",
    "\\u0000",
    "\\ud800",
    "é",
    "\u{0}",
    "|\n",
    ">-\n",
    "#",
    "%",
    "@",
    "`",
];

fn fragment_text() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(FRAGMENTS), 0..60).prop_map(|v| v.concat())
}

fn any_format() -> impl Strategy<Value = Format> {
    prop_oneof![Just(Format::Json), Just(Format::Yaml)]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    #[test]
    fn trigger_parser_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512), format in any_format()) {
        let _ = trigger::parse_bytes(&bytes, format, 1.0);
    }

    #[test]
    fn trigger_parser_never_panics_on_fragments(text in fragment_text(), format in any_format()) {
        if let Ok(t) = trigger::parse_bytes(text.as_bytes(), format, 1.0) {
            // Whatever is accepted is a mapping with a usable time.
            prop_assert!(t.schedule_time.is_finite());
        }
    }

    #[test]
    fn config_loader_never_panics(text in fragment_text(), json in any::<bool>()) {
        let dir = tempfile::tempdir().unwrap();
        let name = if json { "dsari.json" } else { "dsari.yaml" };
        std::fs::write(dir.path().join(name), &text).unwrap();
        match dsari::config::load(dir.path()) {
            Ok(_) => {}
            Err(e) => prop_assert!(e.errors.iter().all(|m| !m.is_empty())),
        }
    }

    #[test]
    fn config_jobs_never_panic(job in "[ -~]{0,70}", command in fragment_text(), key in prop::sample::select(&["command", "max_execution", "environment", "concurrency_groups", "schedule_timezone", "trigger_environment_allow", "job_names"][..])) {
        let dir = tempfile::tempdir().unwrap();
        let doc = serde_json::json!({"jobs": {job: {"command": command.clone(), key: command}}});
        std::fs::write(dir.path().join("dsari.json"), doc.to_string()).unwrap();
        let _ = dsari::config::load(dir.path());
    }
}

/// Deeply nested documents must be refused, not overflow the daemon's stack.
#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    for depth in [1_000, 100_000] {
        let json = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let yaml = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let block = (0..depth.min(5_000))
            .map(|i| format!("{}a:\n", " ".repeat(i)))
            .collect::<String>();
        for (text, format) in [
            (&json, Format::Json),
            (&yaml, Format::Yaml),
            (&block, Format::Yaml),
        ] {
            let handle = std::thread::Builder::new()
                // Half the daemon's main thread (8 MiB), where triggers and the
                // configuration are parsed: a parser that recurses without a
                // limit overflows here first. (The YAML parser stops at depth 64,
                // which takes about 3 MiB in a debug build, under 1 MiB in release.)
                .stack_size(4 << 20)
                .spawn({
                    let text = text.clone();
                    move || trigger::parse_bytes(text.as_bytes(), format, 1.0).is_ok()
                })
                .unwrap();
            assert!(
                !handle.join().unwrap(),
                "depth {depth} {format:?} was accepted as a trigger"
            );
        }
    }
}

/// Hand-made hostile inputs, kept as files (add one for every bug found).
#[test]
fn corpus_triggers() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/triggers");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let format = Format::from_path(&path).unwrap_or(Format::Json);
        let bytes = std::fs::read(&path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let result = trigger::parse_bytes(&bytes, format, 1.0);
        // Files named ok-* must parse; bad-* must be refused with a message.
        if name.starts_with("ok-") {
            assert!(result.is_ok(), "{name}: {result:?}");
        } else if name.starts_with("bad-") {
            let err = result.expect_err(&name);
            assert!(!err.is_empty(), "{name}: empty message");
        }
        n += 1;
    }
    assert!(
        n >= 10,
        "the corpus in {} has only {n} files",
        dir.display()
    );
}
