//! Reports and metrics (SPEC §10): the real daemon makes the runs, then the
//! library's `render`, `metrics_text` and the metrics HTTP server are checked
//! against what the database holds.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use dsari::config::Config;
use dsari::report::{self, MetricsCache, MetricsOptions, MetricsServer, RenderOptions};
use serde_json::{Value, json};

/// The job whose output tries to run a script in the reader's browser.
const HOSTILE: &str = "echo '<script>alert(1)</script>'; echo \"code=${CODE:-0}\"; exit ${CODE:-0}";

/// Trigger `job` with `CODE=code` in its environment and wait for its `n`-th run.
fn run_with_code(env: &TestEnv, job: &str, code: i64, n: usize, extra: Value) -> Run {
    let mut trigger = json!({ "environment": { "CODE": code.to_string() } });
    if let (Some(t), Some(e)) = (trigger.as_object_mut(), extra.as_object()) {
        t.extend(e.clone());
    }
    env.trigger_json(job, &format!("trigger-{n}.json"), &trigger);
    let mut runs = env.wait_runs(job, n);
    runs.sort_by(|a, b| a.stop_time.total_cmp(&b.stop_time));
    runs.pop().expect("a run")
}

fn load_config(env: &TestEnv) -> Config {
    match dsari::config::load(&env.config_dir) {
        Ok(loaded) => loaded.config,
        Err(e) => env.fail(&format!("config does not load: {e}")),
    }
}

fn render(config: &Config, regenerate: bool) -> report::RenderSummary {
    report::render(config, &RenderOptions { regenerate })
        .unwrap_or_else(|e| panic!("render failed: {e}"))
}

/// Every file under `dir`, relative, with its mtime.
fn files_under(dir: &Path) -> BTreeMap<PathBuf, f64> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(dir).expect("under dir").to_path_buf();
                out.insert(rel, mtime_of(&path));
            }
        }
    }
    out
}

/// The text of a page, `.html` or `.html.gz`.
fn page_text(path: &Path) -> String {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    if path.extension().is_some_and(|e| e == "gz") {
        let mut text = String::new();
        flate2::read::MultiGzDecoder::new(&bytes[..])
            .read_to_string(&mut text)
            .unwrap_or_else(|e| panic!("{}: not gzip: {e}", path.display()));
        text
    } else {
        String::from_utf8(bytes).unwrap_or_else(|e| panic!("{}: not UTF-8: {e}", path.display()))
    }
}

/// All pages (`*.html`, `*.html.gz`) under `html/`, with their text.
fn pages(html: &Path) -> BTreeMap<PathBuf, String> {
    files_under(html)
        .into_keys()
        .filter(|p| {
            let name = p.to_string_lossy();
            name.ends_with(".html") || name.ends_with(".html.gz")
        })
        .map(|p| {
            let text = page_text(&html.join(&p));
            (p, text)
        })
        .collect()
}

/// The values of every `href="…"` and `src="…"` in a page, HTML-unescaped.
fn links(page: &str) -> Vec<String> {
    let mut out = Vec::new();
    for attr in ["href=\"", "src=\""] {
        let mut rest = page;
        while let Some(at) = rest.find(attr) {
            rest = &rest[at + attr.len()..];
            let end = rest.find('"').expect("closing quote of an attribute");
            out.push(html_unescape(&rest[..end]));
            rest = &rest[end..];
        }
    }
    out
}

fn html_unescape(s: &str) -> String {
    s.replace("&#x2f;", "/")
        .replace("&#x27;", "'")
        .replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).expect("ascii");
            out.push(u8::from_str_radix(hex, 16).expect("percent escape"));
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).expect("UTF-8 after percent-decoding")
}

/// Check that every link of every page is relative and names a file that
/// exists (as is, or with `.gz` when pages are compressed).
fn assert_links_resolve(html: &Path) {
    let all = pages(html);
    assert!(!all.is_empty(), "no pages under {}", html.display());
    for (page, text) in &all {
        for link in links(text) {
            assert!(
                !link.contains("//") && !link.starts_with('/'),
                "{}: link {link:?} is not relative (pages must need nothing from the network)",
                page.display()
            );
            let target = html
                .join(page)
                .parent()
                .expect("page dir")
                .join(percent_decode(&link));
            let gz = PathBuf::from(format!("{}.gz", target.display()));
            assert!(
                target.is_file() || gz.is_file(),
                "{}: link {link:?} leads to {}, which does not exist",
                page.display(),
                target.display()
            );
        }
    }
}

#[test]
fn render_after_real_runs() {
    let env = TestEnv::new(json!({
        "jobs": {
            "build": { "command": sh(HOSTILE) },
            "odd name:x@y": { "command": sh("echo odd") },
            "secret-job": { "command": sh("echo secret-output"), "render_reports": false },
        }
    }));
    let _daemon = env.start_daemon();
    let mut runs = Vec::new();
    for (n, code) in [0, 0, 1].into_iter().enumerate() {
        let extra = json!({ "description": "<b>nightly</b>", "type": "ci" });
        runs.push(run_with_code(&env, "build", code, n + 1, extra));
    }
    let odd = run_with_code(&env, "odd name:x@y", 0, 1, json!({}));
    let secret = run_with_code(&env, "secret-job", 0, 1, json!({}));
    let config = load_config(&env);
    let html = env.data_dir.join("html");

    let first = render(&config, false);
    assert_eq!(first.out_dir, html);
    assert!(first.written >= 8, "first render wrote {first:?}");
    assert!(html.join("index.html").is_file());
    assert!(html.join("dsari.css").is_file());
    assert!(html.join("build/index.html").is_file());
    assert!(html.join("odd name:x@y/index.html").is_file());
    assert_links_resolve(&html);

    // The right runs with the right exit codes, escaped, and nothing hidden.
    let all = pages(&html);
    for run in runs.iter().chain([&odd]) {
        let page = html
            .join(&run.job_name)
            .join(&run.run_id)
            .join("index.html");
        let text = page_text(&page);
        assert!(
            text.contains(&run.run_id),
            "{} lacks its run id",
            page.display()
        );
        let output = if run.job_name == "build" {
            format!("code={}", run.exit_code)
        } else {
            "odd".to_string()
        };
        assert!(
            text.contains(&output),
            "{} lacks the run's output",
            page.display()
        );
    }
    let failed = &runs[2];
    let failed_page = page_text(&html.join("build").join(&failed.run_id).join("index.html"));
    assert!(
        failed_page.contains("exit 1"),
        "the failed run's status: {failed_page}"
    );
    assert!(failed_page.contains("<dd>1</dd>"), "the exit code is shown");
    assert!(
        failed_page.contains("&lt;script&gt;alert(1)"),
        "output shown as text"
    );
    assert!(
        failed_page.contains("&lt;b&gt;nightly&lt;&#x2f;b&gt;"),
        "description as text"
    );
    let job_page = page_text(&html.join("build/index.html"));
    for run in &runs {
        assert!(
            job_page.contains(&run.run_id),
            "job page links run {}",
            run.run_id
        );
    }
    let newest = job_page
        .find(&runs[2].run_id)
        .expect("newest run on job page");
    let oldest = job_page
        .find(&runs[0].run_id)
        .expect("oldest run on job page");
    assert!(newest < oldest, "job page lists runs newest first");
    let index = html_unescape(&page_text(&html.join("index.html")));
    assert!(index.contains("build") && index.contains("odd name:x@y"));
    assert!(
        index.contains("odd%20name%3Ax%40y/index.html"),
        "job link is percent-encoded"
    );
    for (page, text) in &all {
        assert!(
            !text.contains("<script"),
            "{}: a raw <script> tag",
            page.display()
        );
        assert!(
            !text.contains("secret"),
            "{}: mentions the hidden job",
            page.display()
        );
    }
    assert!(!html.join("secret-job").exists());
    assert!(!html.join("secret-job").join(&secret.run_id).exists());

    // Nothing changed: nothing is written, no mtime moves.
    let before = files_under(&html);
    std::thread::sleep(Duration::from_millis(20));
    let second = render(&config, false);
    assert_eq!(
        second.written, 0,
        "second render without changes: {second:?}"
    );
    assert_eq!(files_under(&html), before, "a second render touched files");

    // --regenerate writes every page again.
    let third = render(&config, true);
    let page_count = all.len() + 1; // and the stylesheet
    assert_eq!(third.written, page_count, "--regenerate: {third:?}");

    // A new run rewrites the index and its job's page, not the other pages.
    let new_run = run_with_code(&env, "build", 0, 4, json!({}));
    let before = files_under(&html);
    std::thread::sleep(Duration::from_millis(20));
    let fourth = render(&config, false);
    let after = files_under(&html);
    let changed: BTreeSet<String> = after
        .iter()
        .filter(|(p, t)| before.get(*p) != Some(*t))
        .map(|(p, _)| p.display().to_string())
        .filter(|p| !p.starts_with('.')) // the state file
        .collect();
    let expected: BTreeSet<String> = [
        "index.html".to_string(),
        "build/index.html".to_string(),
        format!("build/{}/index.html", new_run.run_id),
    ]
    .into();
    assert_eq!(changed, expected, "after one new run: {fourth:?}");
    assert_links_resolve(&html);

    // A job hidden later loses its pages.
    let mut raw = config.raw.clone();
    raw["jobs"]["odd name:x@y"]["render_reports"] = json!(false);
    env.write_config(raw);
    let config = load_config(&env);
    let fifth = render(&config, false);
    assert!(
        !html.join("odd name:x@y").exists(),
        "hidden job's pages remain: {fifth:?}"
    );
    assert!(!page_text(&html.join("index.html")).contains("odd name"));
    assert_links_resolve(&html);
}

#[test]
fn template_override_and_compressed_trimmed_pages() {
    let env = TestEnv::new(json!({}));
    let templates = env.root.join("templates");
    fs::create_dir_all(&templates).expect("template dir");
    fs::write(
        templates.join("run.html"),
        "{% extends \"base.html\" %}{% block main %}<p id=\"mine\">MY RUN {{ run.id }} \
         {{ run.exit_code }} {{ strip_ms(run.stop_time - run.start_time) }}</p>\
         <pre>{{ run.output }}</pre>{% endblock %}",
    )
    .expect("write template");
    let long = "for i in $(seq 1 2000); do echo \"line $i\"; done";
    env.write_config(json!({
        "template_dir": templates.display().to_string(),
        "report_html_gz": true,
        "report_run_output_start": 100,
        "report_run_output_end": 50,
        "jobs": { "long": { "command": sh(long) } },
    }));
    let _daemon = env.start_daemon();
    let run = run_with_code(&env, "long", 0, 1, json!({}));
    let config = load_config(&env);
    let html = env.data_dir.join("html");
    render(&config, false);

    assert!(html.join("index.html.gz").is_file() && !html.join("index.html").exists());
    assert_links_resolve(&html);
    let page = page_text(&html.join("long").join(&run.run_id).join("index.html.gz"));
    assert!(
        page.contains(&format!("MY RUN {} 0 0:00:0", run.run_id)),
        "override used: {page}"
    );
    assert!(
        page.contains("line 1\n") && page.contains("line 2000\n"),
        "head and tail: {page}"
    );
    assert!(
        page.contains("[...]") && !page.contains("line 1000\n"),
        "middle left out"
    );
    let index = html_unescape(&page_text(&html.join("index.html.gz")));
    assert!(
        index.contains("long/index.html"),
        "built-in index still used"
    );

    // A changed template changes the run pages; the same one changes nothing.
    assert_eq!(render(&config, false).written, 0);
    fs::write(templates.join("run.html"), "{{ run.id }} v2").expect("write template");
    let summary = render(&config, false);
    assert!(summary.written >= 1, "{summary:?}");
    let page = page_text(&html.join("long").join(&run.run_id).join("index.html.gz"));
    assert_eq!(page, format!("{} v2", run.run_id));

    // Switching compression off leaves no stale compressed pages behind.
    let mut raw = config.raw.clone();
    raw["report_html_gz"] = json!(false);
    env.write_config(raw);
    let config = load_config(&env);
    render(&config, false);
    assert!(html.join("index.html").is_file() && !html.join("index.html.gz").exists());
    assert!(
        !html
            .join("long")
            .join(&run.run_id)
            .join("index.html.gz")
            .exists()
    );
    assert_links_resolve(&html);

    // A broken template is an error that names the file; nothing is written.
    fs::write(templates.join("index.html"), "{{ oops").expect("write template");
    let err = report::render(&config, &RenderOptions::default()).expect_err("broken template");
    let message = err.to_string();
    assert!(
        message.contains("index.html") && message.contains(&templates.display().to_string()),
        "{message}"
    );
}

/// Record finished runs of `job` straight into the database (no daemon):
/// run `i` stops at `base + i` seconds.
fn record_runs(db: &Path, job: &str, ids: impl IntoIterator<Item = (String, f64)>) {
    let mut store = dsari::store::Store::open(db).expect("open database");
    let runs: Vec<dsari::store::RunRecord> = ids
        .into_iter()
        .map(|(run_id, t)| dsari::store::RunRecord {
            job_name: job.to_string(),
            run_id,
            schedule_time: t - 2.0,
            start_time: t - 1.0,
            stop_time: Some(t),
            exit_code: Some(0),
            trigger_type: "file".to_string(),
            trigger_data: json!({}),
            run_data: json!({}),
        })
        .collect();
    store.finish_runs(&runs).expect("record runs");
}

fn run_id(i: usize) -> String {
    format!("{i:08x}-0000-4000-8000-000000000000")
}

#[test]
fn long_histories_are_paginated_stably() {
    let env = TestEnv::new(json!({ "jobs": { "many": { "command": sh("true") } } }));
    let config = load_config(&env);
    let html = env.data_dir.join("html");
    let t0 = 1_700_000_000.0;
    record_runs(
        &config.database_file,
        "many",
        (0..450).map(|i| (run_id(i), t0 + i as f64)),
    );
    // A run id another tool wrote, which must not become a path.
    record_runs(
        &config.database_file,
        "many",
        [("../../escape".to_string(), t0 + 10_000.0)],
    );
    render(&config, false);
    assert_links_resolve(&html);
    assert!(!env.data_dir.join("escape").exists() && !env.root.join("escape").exists());

    let job = page_text(&html.join("many/index.html"));
    assert!(
        job.contains(&run_id(449)) && job.contains(&run_id(251)),
        "newest 200 on the job page"
    );
    assert!(!job.contains(&run_id(250)), "only 200 runs on the job page");
    let page1 = page_text(&html.join("many/page-1.html"));
    assert!(
        page1.contains(&run_id(0)) && page1.contains(&run_id(199)) && !page1.contains(&run_id(200))
    );
    let page2 = page_text(&html.join("many/page-2.html"));
    assert!(page2.contains(&run_id(200)) && page2.contains(&run_id(399)));
    assert!(!html.join("many/page-3.html").exists());

    // One more run: the full pages stay as they are.
    let before = files_under(&html);
    std::thread::sleep(Duration::from_millis(20));
    record_runs(&config.database_file, "many", [(run_id(450), t0 + 450.0)]);
    render(&config, false);
    let after = files_under(&html);
    for page in ["many/page-1.html", "many/page-2.html"] {
        assert_eq!(
            before.get(Path::new(page)),
            after.get(Path::new(page)),
            "{page} was rewritten"
        );
    }
    assert_ne!(
        before.get(Path::new("many/index.html")),
        after.get(Path::new("many/index.html"))
    );

    // Enough runs for a third page.
    record_runs(
        &config.database_file,
        "many",
        (451..620).map(|i| (run_id(i), t0 + i as f64)),
    );
    render(&config, false);
    assert!(html.join("many/page-3.html").is_file());
    assert_links_resolve(&html);
}

#[test]
fn render_without_a_database_shows_the_jobs() {
    let env = TestEnv::new(json!({ "jobs": { "never": { "command": sh("true") } } }));
    let config = load_config(&env);
    let summary = render(&config, false);
    assert!(summary.written >= 3, "{summary:?}");
    let index = page_text(&env.data_dir.join("html/index.html"));
    assert!(index.contains("never run"), "{index}");
    assert!(
        !config.database_file.exists(),
        "render must not create the database"
    );
    assert_links_resolve(&env.data_dir.join("html"));
}

// ----- metrics ---------------------------------------------------------------

/// One sample line of the text format.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parse the text exposition format strictly: `# HELP`/`# TYPE` comments and
/// `name{label="value",…} value` lines, nothing else. Returns the samples and
/// the declared types.
fn parse_exposition(text: &str) -> (Vec<Sample>, BTreeMap<String, String>) {
    let mut samples = Vec::new();
    let mut types = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            types.insert(name.to_string(), kind.to_string());
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        assert!(
            !line.starts_with('#') && !line.is_empty(),
            "unexpected line {line:?}"
        );
        samples.push(parse_sample(line));
    }
    assert!(text.ends_with('\n'), "exposition must end with a newline");
    (samples, types)
}

fn parse_sample(line: &str) -> Sample {
    let name_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or_else(|| panic!("no value in {line:?}"));
    let name = &line[..name_end];
    assert!(
        name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_'),
        "bad metric name in {line:?}"
    );
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices().peekable();
        let mut end = None;
        loop {
            let (start, c) = chars
                .next()
                .unwrap_or_else(|| panic!("unclosed labels: {line:?}"));
            if c == '}' {
                end = end.or(Some(start));
                break;
            }
            let key_start = start;
            let mut key_end = start;
            for (i, c) in chars.by_ref() {
                if c == '=' {
                    key_end = i;
                    break;
                }
            }
            let key = inner[key_start..key_end].to_string();
            assert!(
                key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') && !key.is_empty(),
                "bad label name {key:?} in {line:?}"
            );
            assert_eq!(
                chars.next().map(|(_, c)| c),
                Some('"'),
                "label value quote in {line:?}"
            );
            let mut value = String::new();
            loop {
                match chars.next().map(|(_, c)| c) {
                    Some('\\') => match chars.next().map(|(_, c)| c) {
                        Some('n') => value.push('\n'),
                        Some('\\') => value.push('\\'),
                        Some('"') => value.push('"'),
                        other => panic!("bad escape {other:?} in {line:?}"),
                    },
                    Some('"') => break,
                    Some(c) => value.push(c),
                    None => panic!("unterminated label value in {line:?}"),
                }
            }
            labels.insert(key, value);
            if chars.peek().map(|(_, c)| *c) == Some(',') {
                chars.next();
            }
        }
        let close = end.expect("closing brace");
        rest = &inner[close + 1..];
    }
    let value_text = rest
        .strip_prefix(' ')
        .unwrap_or_else(|| panic!("no space before the value in {line:?}"));
    let value = match value_text {
        "NaN" => f64::NAN,
        "+Inf" | "inf" => f64::INFINITY,
        "-Inf" | "-inf" => f64::NEG_INFINITY,
        v => v
            .parse::<f64>()
            .unwrap_or_else(|e| panic!("bad value {v:?} in {line:?}: {e}")),
    };
    Sample {
        name: name.to_string(),
        labels,
        value,
    }
}

/// The value of `name` with exactly these labels.
fn value_of(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let want: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    samples
        .iter()
        .find(|s| s.name == name && s.labels == want)
        .map(|s| s.value)
}

/// The Python exporter's percentile of sorted values.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    let k = (sorted.len() - 1) as f64 * q;
    let (f, c) = (k.floor(), k.ceil());
    if f == c {
        sorted[k as usize]
    } else {
        sorted[f as usize] * (c - k) + sorted[c as usize] * (k - f)
    }
}

fn assert_close(what: &str, got: Option<f64>, want: f64) {
    let got = got.unwrap_or_else(|| panic!("{what}: missing"));
    assert!((got - want).abs() < 1e-6, "{what}: got {got}, want {want}");
}

#[test]
fn metrics_counts_quantiles_and_running_runs() {
    let env = TestEnv::new(json!({
        "jobs": {
            "m": { "command": sh("sleep 0.0$CODE; exit $CODE") },
            "idle": { "command": sh("true") },
            "slow": { "command": sh(&wait_for_release("go")) },
        }
    }));
    let _daemon = env.start_daemon();
    for (n, code) in [0, 0, 1].into_iter().enumerate() {
        run_with_code(&env, "m", code, n + 1, json!({}));
    }
    env.trigger_json("slow", "trigger.json", &json!({}));
    let running = env.wait_running("slow");
    let config = load_config(&env);
    let opts = MetricsOptions::default();
    let mut cache = MetricsCache::new();
    let text = report::metrics_text(&config, &opts, &mut cache).expect("metrics");
    let (samples, types) = parse_exposition(&text);

    let job = [("job_name", "m")];
    assert_eq!(
        value_of(&samples, "dsari_run_count", &job),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        value_of(&samples, "dsari_run_success_count", &job),
        Some(2.0)
    );
    assert_eq!(
        value_of(&samples, "dsari_run_failure_count", &job),
        Some(1.0)
    );
    assert_eq!(
        value_of(&samples, "dsari_run_count", &[("job_name", "idle")]),
        Some(0.0)
    );
    assert_eq!(
        value_of(
            &samples,
            "dsari_last_run_exit_code",
            &[("job_name", "idle")]
        ),
        None
    );

    let runs = env.runs_of("m");
    let last = runs
        .iter()
        .max_by(|a, b| a.stop_time.total_cmp(&b.stop_time))
        .expect("runs");
    assert_eq!(
        value_of(&samples, "dsari_last_run_exit_code", &job),
        Some(1.0)
    );
    assert_close(
        "last schedule",
        value_of(&samples, "dsari_last_run_schedule_time", &job),
        last.schedule_time,
    );
    assert_close(
        "last start",
        value_of(&samples, "dsari_last_run_start_time", &job),
        last.start_time,
    );
    assert_close(
        "last stop",
        value_of(&samples, "dsari_last_run_stop_time", &job),
        last.stop_time,
    );

    for (metric, f) in [
        (
            "dsari_run_duration_seconds",
            (|r: &Run| r.stop_time - r.start_time) as fn(&Run) -> f64,
        ),
        ("dsari_run_latency_seconds", |r: &Run| {
            r.start_time - r.schedule_time
        }),
    ] {
        let mut values: Vec<f64> = runs.iter().map(f).collect();
        values.sort_by(f64::total_cmp);
        for q in ["0.01", "0.1", "0.5", "0.9", "0.99"] {
            let want = percentile(&values, q.parse().expect("q"));
            let got = value_of(&samples, metric, &[("job_name", "m"), ("quantile", q)]);
            assert_close(&format!("{metric} quantile {q}"), got, want);
        }
        assert_eq!(
            value_of(&samples, &format!("{metric}_count"), &job),
            Some(3.0)
        );
        assert_close(
            &format!("{metric}_sum"),
            value_of(&samples, &format!("{metric}_sum"), &job),
            values.iter().sum(),
        );
        assert_eq!(types.get(metric).map(String::as_str), Some("summary"));
    }
    assert_eq!(
        types.get("dsari_run_count").map(String::as_str),
        Some("counter")
    );
    assert_eq!(
        types.get("dsari_last_run_exit_code").map(String::as_str),
        Some("gauge")
    );

    let run_labels = [("job_name", "slow"), ("run_id", running.run_id.as_str())];
    assert_close(
        "running start",
        value_of(&samples, "dsari_running_run_start_time", &run_labels),
        running.start_time,
    );
    assert_close(
        "running schedule",
        value_of(&samples, "dsari_running_run_schedule_time", &run_labels),
        running.schedule_time,
    );
    assert_eq!(
        value_of(
            &samples,
            "dsari_version_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
    let now = now_epoch();
    assert!((value_of(&samples, "dsari_time", &[]).expect("dsari_time") - now).abs() < 60.0);

    // Without running runs; and new runs are seen once the cache time is over.
    let quiet = MetricsOptions {
        include_running: false,
        job_cache_time: 0.0,
        ..MetricsOptions::default()
    };
    env.release("go");
    env.wait_runs("slow", 1);
    run_with_code(&env, "m", 0, 4, json!({}));
    let text = report::metrics_text(&config, &quiet, &mut cache).expect("metrics");
    let (samples, _) = parse_exposition(&text);
    assert!(!text.contains("dsari_running_run"), "{text}");
    assert_eq!(
        value_of(&samples, "dsari_run_count", &job),
        Some(4.0),
        "{text}"
    );
    assert_eq!(
        value_of(&samples, "dsari_run_success_count", &job),
        Some(3.0)
    );
    assert_eq!(
        value_of(&samples, "dsari_run_count", &[("job_name", "slow")]),
        Some(1.0)
    );
    assert_eq!(
        value_of(&samples, "dsari_last_run_exit_code", &job),
        Some(0.0)
    );
}

#[test]
fn metrics_without_a_database_report_zero() {
    let env = TestEnv::new(json!({ "jobs": { "a": { "command": sh("true") } } }));
    let config = load_config(&env);
    let text = report::metrics_text(
        &config,
        &MetricsOptions::default(),
        &mut MetricsCache::new(),
    )
    .expect("metrics");
    let (samples, _) = parse_exposition(&text);
    assert_eq!(
        value_of(&samples, "dsari_run_count", &[("job_name", "a")]),
        Some(0.0)
    );
    assert!(
        !config.database_file.exists(),
        "metrics must not create the database"
    );
}

/// `GET path` over HTTP/1.0 on a raw socket: the status line and the body.
fn http_get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(addr).expect("connect to the metrics server");
    stream
        .set_read_timeout(Some(DEADLINE))
        .expect("read timeout");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").expect("send request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {response:?}"));
    (
        head.lines().next().unwrap_or_default().to_string(),
        body.to_string(),
    )
}

#[test]
fn metrics_over_http() {
    let env = TestEnv::new(json!({ "jobs": { "web": { "command": sh("exit $CODE") } } }));
    let _daemon = env.start_daemon();
    run_with_code(&env, "web", 3, 1, json!({}));
    let config = load_config(&env);

    let server = MetricsServer::bind(config.clone(), "127.0.0.1:0", MetricsOptions::default())
        .expect("bind");
    let addr = server.local_addr().expect("an IP address");
    assert!(addr.ip().is_loopback());
    let stopper = server.stopper();
    let thread = std::thread::spawn(move || server.serve());

    let (status, body) = http_get(addr, "/metrics");
    assert!(status.contains(" 200 "), "{status}");
    let (samples, _) = parse_exposition(&body);
    assert_eq!(
        value_of(&samples, "dsari_last_run_exit_code", &[("job_name", "web")]),
        Some(3.0)
    );
    let (status, _) = http_get(addr, "/metrics?x=1");
    assert!(status.contains(" 200 "), "{status}");
    let (status, body) = http_get(addr, "/");
    assert!(status.contains(" 404 "), "{status}");
    assert!(!body.contains("dsari_run_count"));
    let (status, _) = http_get(addr, "/metrics/other");
    assert!(status.contains(" 404 "), "{status}");

    stopper.stop();
    let result = thread.join().expect("server thread");
    assert!(result.is_ok(), "{result:?}");

    // `serve_metrics` itself, on a free port picked here, with another path.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let listen = format!("127.0.0.1:{port}");
    let opts = MetricsOptions {
        metrics_path: "/custom".to_string(),
        ..MetricsOptions::default()
    };
    let serve_config = config.clone();
    let serve_listen = listen.clone();
    // Never returns; the thread ends with the test process.
    std::thread::spawn(move || report::serve_metrics(serve_config, &serve_listen, opts));
    let addr: std::net::SocketAddr = listen.parse().expect("address");
    let deadline = Instant::now() + DEADLINE;
    while TcpStream::connect(addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "serve_metrics did not listen on {listen}"
        );
        std::thread::sleep(POLL);
    }
    assert!(http_get(addr, "/custom").0.contains(" 200 "));
    assert!(http_get(addr, "/metrics").0.contains(" 404 "));
}
