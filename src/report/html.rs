//! `dsari render`: static HTML pages in `DATA_DIR/html/` (SPEC §10.1).
//!
//! Layout (the Python dsari's, with explicit `index.html` links so that the
//! pages also work from `file://`):
//!
//! ```text
//! html/index.html                 every shown job: last result, next due, recent runs
//! html/dsari.css                  the one stylesheet (no script, nothing from the network)
//! html/JOB/index.html             the job's newest runs, links to older pages
//! html/JOB/page-N.html            older runs, RUNS_PER_PAGE each, numbered from the oldest
//! html/JOB/RUN_ID/index.html      one run: every column, trigger and run data, output
//! html/.dsari-render.json         what the last render wrote (see below)
//! ```
//!
//! With `report_html_gz` every page is written as `….html.gz` (the stylesheet
//! stays plain), for a web server that serves pre-compressed files.
//!
//! **What gets rewritten.** Pages are rendered in memory and written only when
//! their bytes differ from what the last render wrote, so that mtimes, rsync
//! and web caches see only real changes. The state file remembers a
//! fingerprint of everything that shapes a page besides the database (dsari's
//! version, every template in effect, the output limits, `report_html_gz`, the
//! host's UTC offset) and a hash of each index and job page. A finished run
//! never changes, so while the fingerprint stays the same an existing run page
//! is left alone without even being rendered; when it changes, every run page
//! is rendered again and compared with the file on disk. `--regenerate` writes
//! every page. Pages of jobs that are no longer shown (`render_reports: false`,
//! or removed from the config) and job pages that no longer exist are deleted.
//!
//! Only this module writes under `html/`; it reads the database read-only.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Write};
use std::path::{Component, Path, PathBuf};

use chrono::Local;
use minijinja::value::Value as TemplateValue;
use minijinja::{AutoEscape, Environment, ErrorKind};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::output::{self, RunOutput};
use super::{ReportError, human_duration, iso_time, local_time};
use crate::config::{Config, Job};
use crate::store::{RunRecord, Store};

/// Runs on one job page; older runs go to archive pages of this many.
pub const RUNS_PER_PAGE: usize = 200;
/// Runs shown as coloured ticks per job on the index page.
const HISTORY_LENGTH: usize = 20;
/// Runs in the index page's "Latest runs" and "Recent failures" tables.
const LATEST_RUNS: usize = 25;
const RECENT_FAILURES: usize = 10;
/// The state file in `html/` (see the module docs).
const STATE_FILE: &str = ".dsari-render.json";
const STYLESHEET: &str = "dsari.css";

/// The built-in templates, each overridable by a file of the same name in
/// `template_dir`. `dsari.css` is copied, not rendered.
const BUILTIN_TEMPLATES: &[(&str, &str)] = &[
    ("base.html", include_str!("templates/base.html")),
    ("macros.html", include_str!("templates/macros.html")),
    ("index.html", include_str!("templates/index.html")),
    ("job.html", include_str!("templates/job.html")),
    ("run.html", include_str!("templates/run.html")),
    (STYLESHEET, include_str!("templates/dsari.css")),
];

/// Names at the top of `html/` that a job's directory must not take: such a
/// job gets `~NAME` instead (`~` never occurs in a job name).
const RESERVED_NAMES: &[&str] = &["index.html", "index.html.gz", STYLESHEET, STATE_FILE];

/// Options of `dsari render`.
#[derive(Debug, Clone, Default)]
pub struct RenderOptions {
    /// Write every page, changed or not (`--regenerate`).
    pub regenerate: bool,
}

/// What a render did.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderSummary {
    /// Pages (and the stylesheet) written.
    pub written: usize,
    /// Pages left as they were because nothing in them changed.
    pub unchanged: usize,
    /// Pages and job directories deleted because they are no longer shown.
    pub removed: usize,
    /// `DATA_DIR/html`.
    pub out_dir: PathBuf,
}

/// Render the reports of `config` into `DATA_DIR/html/` (see the module docs).
///
/// A missing database renders empty pages (the daemon has not run yet).
/// Errors name the template, file or database they are about.
pub fn render(config: &Config, opts: &RenderOptions) -> Result<RenderSummary, ReportError> {
    let templates = Templates::load(config.template_dir.as_deref())?;
    let out_dir = config.data_dir.join("html");
    fs::create_dir_all(&out_dir).map_err(|e| ReportError::io(&out_dir, e))?;
    let previous = State::read(&out_dir);
    let mut writer = PageWriter {
        out_dir: out_dir.clone(),
        gz: config.report_html_gz,
        regenerate: opts.regenerate,
        previous_pages: previous.pages.clone(),
        state: State {
            fingerprint: templates.fingerprint(config),
            ..State::default()
        },
        summary: RenderSummary {
            written: 0,
            unchanged: 0,
            removed: 0,
            out_dir: out_dir.clone(),
        },
    };
    let run_pages_current = previous.fingerprint == writer.state.fingerprint && !opts.regenerate;

    let store = open_store(config)?;
    let mut running = running_by_job(store.as_ref())?;
    let now = crate::time::now();
    let globals = Globals::new();
    let mut latest: Vec<RunRecord> = Vec::new();
    let mut failures: Vec<RunRecord> = Vec::new();
    let mut job_views = Vec::new();

    for job in config.jobs.values().filter(|j| j.render_reports) {
        let runs = match &store {
            Some(store) => store.finished_runs(std::slice::from_ref(&job.name), &[], None)?,
            None => Vec::new(),
        };
        let job_running = running.remove(&job.name).unwrap_or_default();
        let view = JobView::new(job, &runs, &job_running, now);
        writer.state.jobs.insert(job_dir_name(&job.name));

        for run in &runs {
            write_run_page(
                &templates,
                &globals,
                config,
                &mut writer,
                run,
                run_pages_current,
            )?;
        }
        write_job_pages(&templates, &globals, &mut writer, &view, &runs)?;

        latest.extend(runs.iter().take(LATEST_RUNS).cloned());
        failures.extend(
            runs.iter()
                .filter(|r| r.exit_code != Some(0))
                .take(RECENT_FAILURES)
                .cloned(),
        );
        job_views.push(view);
    }

    newest_first(&mut latest, LATEST_RUNS);
    newest_first(&mut failures, RECENT_FAILURES);
    let context = IndexContext {
        globals: &globals,
        root: "",
        jobs: &job_views,
        runs: latest.iter().map(RunView::new).collect(),
        failed_runs: failures.iter().map(RunView::new).collect(),
    };
    let html = templates.render("index.html", &context)?;
    writer.page("index.html", html.as_bytes())?;
    writer.asset(STYLESHEET, templates.source(STYLESHEET)?.as_bytes())?;

    writer.remove_stale(&previous)?;
    writer.state.write(&out_dir)?;
    Ok(writer.summary)
}

// ----- the data the templates see -------------------------------------------

/// Values every page sees.
#[derive(Debug, Serialize)]
struct Globals {
    version: &'static str,
    /// The host's UTC offset, `+01:00`.
    utc_offset: String,
    /// When this render started (for the Python dsari's templates, which print
    /// it; a page that shows it changes on every render).
    now: String,
}

impl Globals {
    fn new() -> Globals {
        let now = Local::now();
        Globals {
            version: env!("CARGO_PKG_VERSION"),
            utc_offset: now.format("%:z").to_string(),
            now: now.format("%Y-%m-%d %H:%M:%S").to_string(),
        }
    }
}

/// A job as the index and job pages see it.
#[derive(Debug, Serialize)]
struct JobView {
    name: String,
    /// `JOB/index.html`, relative to `html/`.
    url: String,
    command: String,
    schedule: Option<String>,
    schedule_timezone: Option<String>,
    /// Epoch seconds, when the schedule module knows it.
    next_due: Option<f64>,
    run_count: usize,
    success_count: usize,
    failure_count: usize,
    last_run: Option<RunView>,
    last_successful_run: Option<RunView>,
    last_failed_run: Option<RunView>,
    /// Runs going on now, newest first.
    running: Vec<RunView>,
    /// The latest finished runs, oldest first.
    history: Vec<RunView>,
}

impl JobView {
    /// `runs` is the job's finished runs, newest first.
    fn new(job: &Job, runs: &[RunRecord], running: &[RunRecord], now: f64) -> JobView {
        let success_count = runs.iter().filter(|r| r.exit_code == Some(0)).count();
        let mut history: Vec<RunView> =
            runs.iter().take(HISTORY_LENGTH).map(RunView::new).collect();
        history.reverse();
        JobView {
            name: job.name.clone(),
            url: format!("{}/index.html", url_segment(&job_dir_name(&job.name))),
            command: shell_words::join(&job.command),
            schedule: job.schedule.clone(),
            schedule_timezone: job.schedule_timezone.clone(),
            next_due: crate::schedule::next_for_job(job, now),
            run_count: runs.len(),
            success_count,
            failure_count: runs.len() - success_count,
            last_run: runs.first().map(RunView::new),
            last_successful_run: runs
                .iter()
                .find(|r| r.exit_code == Some(0))
                .map(RunView::new),
            last_failed_run: runs
                .iter()
                .find(|r| r.exit_code != Some(0))
                .map(RunView::new),
            running: running.iter().map(RunView::running).collect(),
            history,
        }
    }
}

/// The job a run belongs to, as a run sees it (`run.job.name`, as in the
/// Python dsari's templates).
#[derive(Debug, Serialize)]
struct JobRef {
    name: String,
    url: String,
}

/// One run as the pages see it: every column of SPEC §3, plus what is worked
/// out from them.
#[derive(Debug, Serialize)]
struct RunView {
    /// `run.id` as in the Python dsari's templates; the same as `run_id`.
    id: String,
    run_id: String,
    short_id: String,
    job_name: String,
    job: JobRef,
    /// `JOB/RUN_ID/index.html` relative to `html/`; none for a run whose id
    /// cannot name a directory (written by another tool).
    url: Option<String>,
    /// `ok`, `failed` or `running`: also the CSS class.
    status: &'static str,
    /// `ok`, `exit 3`, `running`, …
    status_text: String,
    /// `SIGTERM` when the exit code says the run was killed by a signal.
    signal: Option<String>,
    schedule_time: f64,
    start_time: f64,
    stop_time: Option<f64>,
    exit_code: Option<i64>,
    /// stop − start, seconds.
    duration: Option<f64>,
    /// start − schedule, seconds.
    latency: f64,
    trigger_type: String,
    trigger_data: Value,
    run_data: Value,
    /// `trigger_data.description`, when it is a string.
    description: Option<String>,
    description_short: Option<String>,
}

impl RunView {
    /// A finished run (a row of `runs`).
    fn new(run: &RunRecord) -> RunView {
        RunView::from_record(run, true)
    }

    /// A running run (a row of `runs_running`): it has no page yet.
    fn running(run: &RunRecord) -> RunView {
        RunView::from_record(run, false)
    }

    fn from_record(run: &RunRecord, finished: bool) -> RunView {
        let job_dir = url_segment(&job_dir_name(&run.job_name));
        let (status, status_text) = match run.exit_code {
            _ if !finished => ("running", "running".to_string()),
            None => ("failed", "no exit code".to_string()),
            Some(0) => ("ok", "ok".to_string()),
            Some(-1) if run.run_data.get("lost").is_some() => ("failed", "lost".to_string()),
            Some(code) => ("failed", format!("exit {code}")),
        };
        let description = run
            .trigger_data
            .get("description")
            .and_then(Value::as_str)
            .map(str::to_string);
        RunView {
            id: run.run_id.clone(),
            run_id: run.run_id.clone(),
            short_id: run.run_id.chars().take(8).collect(),
            job_name: run.job_name.clone(),
            job: JobRef {
                name: run.job_name.clone(),
                url: format!("{job_dir}/index.html"),
            },
            url: (finished && is_safe_run_id(&run.run_id))
                .then(|| format!("{job_dir}/{}/index.html", run.run_id)),
            status,
            status_text,
            signal: run.exit_code.and_then(signal_name),
            schedule_time: run.schedule_time,
            start_time: run.start_time,
            stop_time: run.stop_time,
            exit_code: run.exit_code,
            duration: run.stop_time.map(|stop| stop - run.start_time),
            latency: run.start_time - run.schedule_time,
            trigger_type: run.trigger_type.clone(),
            trigger_data: run.trigger_data.clone(),
            run_data: run.run_data.clone(),
            description_short: description.as_deref().map(|d| shorten(d, 60)),
            description,
        }
    }
}

/// A run's page: the run, its data pretty-printed and its (trimmed) output.
#[derive(Debug, Serialize)]
struct RunPageView {
    #[serde(flatten)]
    run: RunView,
    trigger_data_json: String,
    run_data_json: String,
    /// `output.txt`, `output.txt.gz` or `output.txt.xz`; none without output.
    output_file: Option<String>,
    output_size: u64,
    /// The whole output, or its first part when some is left out.
    output_head: String,
    /// The last part when some is left out.
    output_tail: String,
    /// Bytes left out in the middle.
    output_omitted: u64,
    /// Head, a `[...]` line and tail in one string, as the Python dsari's
    /// `run.html` prints it.
    output: Option<String>,
}

#[derive(Debug, Serialize)]
struct IndexContext<'a> {
    #[serde(flatten)]
    globals: &'a Globals,
    root: &'static str,
    jobs: &'a [JobView],
    /// Latest runs of all shown jobs, newest first.
    runs: Vec<RunView>,
    failed_runs: Vec<RunView>,
}

#[derive(Debug, Serialize)]
struct JobContext<'a> {
    #[serde(flatten)]
    globals: &'a Globals,
    root: &'static str,
    job: &'a JobView,
    runs: Vec<RunView>,
    page: PageInfo,
}

#[derive(Debug, Serialize)]
struct RunContext<'a> {
    #[serde(flatten)]
    globals: &'a Globals,
    root: &'static str,
    run: RunPageView,
}

/// Where a job page sits among the job's pages.
#[derive(Debug, Serialize)]
struct PageInfo {
    /// 0 for the job's `index.html`, N for `page-N.html`.
    number: usize,
    heading: String,
    newer_url: Option<String>,
    older_url: Option<String>,
    /// On `index.html`: every archive page, newest first.
    archive: Vec<ArchiveLink>,
}

#[derive(Debug, Serialize)]
struct ArchiveLink {
    url: String,
    label: String,
    first: f64,
    last: f64,
}

// ----- pages ----------------------------------------------------------------

/// The page of one finished run, unless it is known to be current.
fn write_run_page(
    templates: &Templates,
    globals: &Globals,
    config: &Config,
    writer: &mut PageWriter,
    run: &RunRecord,
    pages_current: bool,
) -> Result<(), ReportError> {
    if !is_safe_run_id(&run.run_id) {
        log::warn!(
            "job {}: run id {:?} cannot name a directory; its run gets no page",
            run.job_name,
            run.run_id
        );
        return Ok(());
    }
    let rel = format!("{}/{}/index.html", job_dir_name(&run.job_name), run.run_id);
    if pages_current && writer.exists(&rel) {
        writer.summary.unchanged += 1;
        return Ok(());
    }
    let run_dir = crate::daemon::run_dir(config, &run.job_name, &run.run_id);
    let output = match output::read_output(
        &run_dir,
        config.report_run_output_start,
        config.report_run_output_end,
    ) {
        Ok(output) => output,
        Err((path, e)) => {
            log::warn!("run {}: cannot read {}: {e}", run.run_id, path.display());
            None
        }
    };
    let context = RunContext {
        globals,
        root: "../../",
        run: run_page_view(run, output),
    };
    let html = templates.render("run.html", &context)?;
    writer.run_page(&rel, html.as_bytes())
}

fn run_page_view(run: &RunRecord, output: Option<RunOutput>) -> RunPageView {
    let pretty = |v: &Value| serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string());
    let output = output.unwrap_or_default();
    let head = output::display_text(&output.head);
    let tail = output::display_text(&output.tail);
    let joined = if output.omitted > 0 {
        format!("{head}\n\n\n[...]\n\n\n{tail}")
    } else {
        head.clone()
    };
    let has_file = !output.file_name.is_empty();
    RunPageView {
        run: RunView::new(run),
        trigger_data_json: pretty(&run.trigger_data),
        run_data_json: pretty(&run.run_data),
        output_file: has_file.then_some(output.file_name),
        output_size: output.total,
        output_head: head,
        output_tail: tail,
        output_omitted: output.omitted,
        output: has_file.then_some(joined),
    }
}

/// The job's `index.html` (newest runs, links to the archive) and its
/// archive pages. Archive page N holds the job's runs number
/// `(N-1)*RUNS_PER_PAGE+1 ..= N*RUNS_PER_PAGE` counted from the oldest, so a
/// new run changes only the index and, once a page fills up, one new page.
fn write_job_pages(
    templates: &Templates,
    globals: &Globals,
    writer: &mut PageWriter,
    job: &JobView,
    runs: &[RunRecord],
) -> Result<(), ReportError> {
    let dir = job_dir_name(&job.name);
    let dir_url = url_segment(&dir);
    let full_pages = if runs.len() > RUNS_PER_PAGE {
        runs.len() / RUNS_PER_PAGE
    } else {
        0
    };
    // Chronological position i (0 = oldest) is runs[len - 1 - i].
    let chunk = |n: usize| -> &[RunRecord] {
        let (from, to) = ((n - 1) * RUNS_PER_PAGE, n * RUNS_PER_PAGE);
        &runs[runs.len() - to..runs.len() - from]
    };
    let page_url = |n: usize| format!("{dir_url}/page-{n}.html");

    let archive = (1..=full_pages)
        .rev()
        .map(|n| {
            let part = chunk(n);
            ArchiveLink {
                url: page_url(n),
                label: format!("Runs {}–{}", (n - 1) * RUNS_PER_PAGE + 1, n * RUNS_PER_PAGE),
                first: part.last().map_or(0.0, |r| r.stop_time.unwrap_or(0.0)),
                last: part.first().map_or(0.0, |r| r.stop_time.unwrap_or(0.0)),
            }
        })
        .collect();
    let shown = runs.len().min(RUNS_PER_PAGE);
    let context = JobContext {
        globals,
        root: "../",
        job,
        runs: runs[..shown].iter().map(RunView::new).collect(),
        page: PageInfo {
            number: 0,
            heading: if runs.len() > shown {
                format!("Latest {shown} of {} runs", runs.len())
            } else {
                "Runs".to_string()
            },
            newer_url: None,
            older_url: (full_pages > 0).then(|| page_url(full_pages)),
            archive,
        },
    };
    let html = templates.render("job.html", &context)?;
    writer.page(&format!("{dir}/index.html"), html.as_bytes())?;

    for n in 1..=full_pages {
        let context = JobContext {
            globals,
            root: "../",
            job,
            runs: chunk(n).iter().map(RunView::new).collect(),
            page: PageInfo {
                number: n,
                // Nothing here may depend on the runs after this page's.
                heading: format!(
                    "Runs {}–{} (counted from the oldest)",
                    (n - 1) * RUNS_PER_PAGE + 1,
                    n * RUNS_PER_PAGE
                ),
                newer_url: Some(if n == full_pages {
                    job.url.clone()
                } else {
                    page_url(n + 1)
                }),
                older_url: (n > 1).then(|| page_url(n - 1)),
                archive: Vec::new(),
            },
        };
        let html = templates.render("job.html", &context)?;
        writer.page(&format!("{dir}/page-{n}.html"), html.as_bytes())?;
    }
    Ok(())
}

// ----- templates ------------------------------------------------------------

/// The template environment: built-in templates, each overridable by a file
/// of the same name in `template_dir`.
struct Templates {
    env: Environment<'static>,
    template_dir: Option<PathBuf>,
}

impl Templates {
    fn load(template_dir: Option<&Path>) -> Result<Templates, ReportError> {
        let mut env = Environment::new();
        let dir = template_dir.map(Path::to_path_buf);
        let loader_dir = dir.clone();
        env.set_loader(move |name| load_template(loader_dir.as_deref(), name));
        env.set_auto_escape_callback(|name| {
            if name.ends_with(".html") || name.ends_with(".htm") || name.ends_with(".xml") {
                AutoEscape::Html
            } else {
                AutoEscape::None
            }
        });
        env.add_filter("datetime", |v: TemplateValue| {
            epoch(&v).map(local_time).unwrap_or_default()
        });
        env.add_filter("isotime", |v: TemplateValue| {
            epoch(&v).map(iso_time).unwrap_or_default()
        });
        env.add_filter("duration", |v: TemplateValue| {
            epoch(&v).map(human_duration).unwrap_or_default()
        });
        env.add_filter("filesize", |v: TemplateValue| {
            epoch(&v).map(file_size).unwrap_or_default()
        });
        env.add_filter("strip_ms", strip_ms);
        env.add_function("strip_ms", strip_ms);
        let templates = Templates {
            env,
            template_dir: dir,
        };
        // Parse every page now, so that a broken override fails before anything is written.
        for name in [
            "base.html",
            "macros.html",
            "index.html",
            "job.html",
            "run.html",
        ] {
            templates
                .env
                .get_template(name)
                .map_err(|e| templates.error(name, &e))?;
        }
        Ok(templates)
    }

    fn render(&self, name: &str, context: &impl Serialize) -> Result<String, ReportError> {
        let template = self
            .env
            .get_template(name)
            .map_err(|e| self.error(name, &e))?;
        template
            .render(TemplateValue::from(minijinja::value::Serde(context)))
            .map_err(|e| self.error(name, &e))
    }

    /// The text of a template or asset as it is in effect (override or built-in).
    fn source(&self, name: &str) -> Result<String, ReportError> {
        match load_template(self.template_dir.as_deref(), name) {
            Ok(Some(text)) => Ok(text),
            Ok(None) => Err(ReportError::Template {
                name: name.to_string(),
                path: None,
                message: "no such template".to_string(),
            }),
            Err(e) => Err(self.error(name, &e)),
        }
    }

    /// Everything besides the database that shapes a page (see the module docs).
    fn fingerprint(&self, config: &Config) -> String {
        let mut hash = Fnv::new();
        hash.add(env!("CARGO_PKG_VERSION").as_bytes());
        for (name, _) in BUILTIN_TEMPLATES {
            hash.add(name.as_bytes());
            hash.add(self.source(name).unwrap_or_default().as_bytes());
        }
        // A user template may include files of its own.
        if let Some(dir) = &self.template_dir {
            let mut names: Vec<PathBuf> = fs::read_dir(dir)
                .map(|rd| rd.filter_map(Result::ok).map(|e| e.path()).collect())
                .unwrap_or_default();
            names.sort();
            for path in names {
                hash.add(path.as_os_str().as_encoded_bytes());
                hash.add(&fs::read(&path).unwrap_or_default());
            }
        }
        let settings = format!(
            "{} {} {} {}",
            config.report_run_output_start,
            config.report_run_output_end,
            config.report_html_gz,
            Local::now().format("%:z"),
        );
        hash.add(settings.as_bytes());
        format!("{:016x}", hash.finish())
    }

    fn error(&self, name: &str, e: &minijinja::Error) -> ReportError {
        let path = self
            .template_dir
            .as_ref()
            .map(|d| d.join(name))
            .filter(|p| p.is_file());
        // `{e}`, not `{e:#}`: the alternate form dumps every variable, run output included.
        ReportError::Template {
            name: name.to_string(),
            path,
            message: e.to_string(),
        }
    }
}

/// The loader: `template_dir/NAME` when that file exists, else the built-in
/// copy. Names that leave the directory are not found.
fn load_template(dir: Option<&Path>, name: &str) -> Result<Option<String>, minijinja::Error> {
    let relative = Path::new(name);
    if !relative
        .components()
        .all(|c| matches!(c, Component::Normal(_)))
    {
        return Ok(None);
    }
    if let Some(dir) = dir {
        let path = dir.join(relative);
        match fs::read_to_string(&path) {
            Ok(text) => return Ok(Some(text)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    format!("cannot read {}: {e}", path.display()),
                ));
            }
        }
    }
    Ok(BUILTIN_TEMPLATES
        .iter()
        .find(|(builtin, _)| *builtin == name)
        .map(|(_, text)| text.to_string()))
}

/// A number from a template value (none and undefined are not numbers).
fn epoch(v: &TemplateValue) -> Option<f64> {
    if v.is_none() || v.is_undefined() {
        return None;
    }
    f64::try_from(v.clone()).ok()
}

/// `strip_ms(x)` of the Python dsari's templates, which passed datetimes and
/// timedeltas: here an epoch time (after 2001) is shown as a local time, a
/// smaller number as `H:MM:SS`, and text is cut at its first `.`.
fn strip_ms(v: TemplateValue) -> String {
    if let Some(n) = epoch(&v) {
        if n.abs() >= 1e9 {
            return local_time(n);
        }
        let whole = n.abs().floor() as u64;
        let sign = if n < 0.0 { "-" } else { "" };
        return format!(
            "{sign}{}:{:02}:{:02}",
            whole / 3600,
            whole / 60 % 60,
            whole % 60
        );
    }
    match v.as_str() {
        Some(s) => s.split('.').next().unwrap_or_default().to_string(),
        None => String::new(),
    }
}

fn file_size(bytes: f64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024.0 {
        return format!("{bytes} bytes");
    }
    let mut value = bytes / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

// ----- writing --------------------------------------------------------------

/// Writes pages under `html/` when their bytes changed, and counts.
struct PageWriter {
    out_dir: PathBuf,
    gz: bool,
    regenerate: bool,
    /// Page hashes of the last render.
    previous_pages: BTreeMap<String, String>,
    /// What this render wrote (becomes the state file).
    state: State,
    summary: RenderSummary,
}

impl PageWriter {
    /// The file a page is written to: `rel`, or `rel.gz`.
    fn path(&self, rel: &str) -> PathBuf {
        let file = if self.gz {
            format!("{rel}.gz")
        } else {
            rel.to_string()
        };
        self.out_dir.join(file)
    }

    fn exists(&self, rel: &str) -> bool {
        self.path(rel).is_file()
    }

    /// An index or job page: skipped when the last render wrote the same bytes
    /// and the file is still there.
    fn page(&mut self, rel: &str, html: &[u8]) -> Result<(), ReportError> {
        let hash = content_hash(html);
        let same = self.previous_pages.get(rel) == Some(&hash) && self.exists(rel);
        self.state.pages.insert(rel.to_string(), hash);
        if same && !self.regenerate {
            self.summary.unchanged += 1;
            return Ok(());
        }
        self.write(rel, html, self.gz)
    }

    /// A run page: compared with the file on disk (run pages are not listed
    /// in the state file; there may be millions).
    fn run_page(&mut self, rel: &str, html: &[u8]) -> Result<(), ReportError> {
        self.write(rel, html, self.gz)
    }

    /// A file that is never compressed (the stylesheet).
    fn asset(&mut self, rel: &str, bytes: &[u8]) -> Result<(), ReportError> {
        self.state
            .pages
            .insert(rel.to_string(), content_hash(bytes));
        self.write(rel, bytes, false)
    }

    fn write(&mut self, rel: &str, content: &[u8], gz: bool) -> Result<(), ReportError> {
        let (path, other) = if gz {
            (
                self.out_dir.join(format!("{rel}.gz")),
                self.out_dir.join(rel),
            )
        } else {
            (
                self.out_dir.join(rel),
                self.out_dir.join(format!("{rel}.gz")),
            )
        };
        let bytes = if gz { gzip(content) } else { content.to_vec() };
        let unchanged = !self.regenerate && fs::read(&path).is_ok_and(|old| old == bytes);
        if unchanged {
            self.summary.unchanged += 1;
        } else {
            write_atomic(&path, &bytes)?;
            self.summary.written += 1;
        }
        // The other form, from before `report_html_gz` was switched, would be stale.
        if other.is_file() && remove_file(&other)? {
            self.summary.removed += 1;
        }
        Ok(())
    }

    /// Delete the directories of jobs no longer shown and the index/job pages
    /// that no longer exist (they were listed by the last render).
    fn remove_stale(&mut self, previous: &State) -> Result<(), ReportError> {
        for dir in previous.jobs.difference(&self.state.jobs) {
            if !is_single_component(dir) {
                continue;
            }
            let path = self.out_dir.join(dir);
            match fs::remove_dir_all(&path) {
                Ok(()) => self.summary.removed += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(ReportError::io(path, e)),
            }
        }
        for rel in previous.pages.keys() {
            if self.state.pages.contains_key(rel) || !is_relative_inside(rel) {
                continue;
            }
            for path in [
                self.out_dir.join(rel),
                self.out_dir.join(format!("{rel}.gz")),
            ] {
                if remove_file(&path)? {
                    self.summary.removed += 1;
                }
            }
        }
        Ok(())
    }
}

/// What the last render wrote: `html/.dsari-render.json`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    /// See [`Templates::fingerprint`].
    fingerprint: String,
    /// Directory names of the jobs shown.
    jobs: BTreeSet<String>,
    /// Index and job pages (relative paths, without `.gz`) → hash of their HTML.
    pages: BTreeMap<String, String>,
}

impl State {
    /// The last render's state; a missing or unreadable file is an empty state
    /// (everything is then compared with the files on disk).
    fn read(out_dir: &Path) -> State {
        fs::read(out_dir.join(STATE_FILE))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    fn write(&self, out_dir: &Path) -> Result<(), ReportError> {
        let path = out_dir.join(STATE_FILE);
        let text = serde_json::to_vec_pretty(self).unwrap_or_default();
        if fs::read(&path).is_ok_and(|old| old == text) {
            return Ok(());
        }
        write_atomic(&path, &text)
    }
}

/// Write to a temporary file beside `path`, then rename: a web server never
/// serves half a page.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ReportError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|e| ReportError::io(dir, e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(bytes))
        .and_then(|()| fs::rename(&tmp, path));
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(ReportError::io(path, e));
    }
    Ok(())
}

/// Remove a file; whether it was there.
fn remove_file(path: &Path) -> Result<bool, ReportError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(ReportError::io(path, e)),
    }
}

/// Gzip with a fixed header (no name, mtime 0), so that the same page always
/// compresses to the same bytes and unchanged pages are recognised.
fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::GzBuilder::new().write(Vec::new(), flate2::Compression::default());
    // Writing to a Vec cannot fail.
    let _ = encoder.write_all(bytes);
    encoder.finish().unwrap_or_default()
}

// ----- names and small helpers ----------------------------------------------

/// The directory of a job's pages under `html/`: its name, or `~NAME` for a
/// name that the top-level files use.
fn job_dir_name(job: &str) -> String {
    if RESERVED_NAMES.contains(&job) {
        format!("~{job}")
    } else {
        job.to_string()
    }
}

/// Whether a run id (from the database, which other tools may write) can be a
/// directory name: letters, digits, `-` and `_`, at most 128 (UUIDs are).
fn is_safe_run_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn is_single_component(name: &str) -> bool {
    let mut parts = Path::new(name).components();
    matches!(parts.next(), Some(Component::Normal(_))) && parts.next().is_none()
}

fn is_relative_inside(rel: &str) -> bool {
    !rel.is_empty()
        && Path::new(rel)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
}

/// Percent-encode one path segment for an `href` (a job name may hold spaces,
/// `:` or `@`; a `:` in a first segment would otherwise read as a scheme).
fn url_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// At most `max` characters, with `…` when cut.
fn shorten(text: &str, max: usize) -> String {
    let line = text.lines().next().unwrap_or_default();
    if line.chars().count() <= max && line.len() == text.len() {
        return line.to_string();
    }
    let cut: String = line.chars().take(max).collect();
    format!("{cut}…")
}

/// `SIGTERM` for exit code 143 (a shell's 128 + N for a run killed by signal N).
fn signal_name(code: i64) -> Option<String> {
    let n = i32::try_from(code - 128).ok().filter(|n| *n > 0)?;
    nix::sys::signal::Signal::try_from(n)
        .ok()
        .map(|s| s.as_str().to_string())
}

fn newest_first(runs: &mut Vec<RunRecord>, keep: usize) {
    runs.sort_by(|a, b| {
        b.stop_time
            .unwrap_or(0.0)
            .total_cmp(&a.stop_time.unwrap_or(0.0))
    });
    runs.truncate(keep);
}

fn open_store(config: &Config) -> Result<Option<Store>, ReportError> {
    if !config.database_file.exists() {
        return Ok(None);
    }
    Ok(Some(Store::open_read_only(&config.database_file)?))
}

/// Running runs by job name, newest first.
fn running_by_job(store: Option<&Store>) -> Result<BTreeMap<String, Vec<RunRecord>>, ReportError> {
    let mut by_job: BTreeMap<String, Vec<RunRecord>> = BTreeMap::new();
    if let Some(store) = store {
        for run in store.running_runs_matching(&[], &[])? {
            by_job.entry(run.job_name.clone()).or_default().push(run);
        }
    }
    Ok(by_job)
}

fn content_hash(bytes: &[u8]) -> String {
    let mut hash = Fnv::new();
    hash.add(bytes);
    format!("{:016x}-{}", hash.finish(), bytes.len())
}

/// FNV-1a, 64 bits: stable across Rust versions (unlike `DefaultHasher`),
/// which matters for a hash kept in a file.
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn add(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // A separator, so that ("ab", "c") and ("a", "bc") differ.
        self.0 ^= 0xff;
        self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_segments_are_encoded() {
        assert_eq!(
            url_segment("build:nightly @home"),
            "build%3Anightly%20%40home"
        );
        assert_eq!(url_segment("a-b_c.d"), "a-b_c.d");
    }

    #[test]
    fn reserved_job_names_get_their_own_directory() {
        assert_eq!(job_dir_name("index.html"), "~index.html");
        assert_eq!(job_dir_name("dsari.css"), "~dsari.css");
        assert_eq!(job_dir_name("build"), "build");
    }

    #[test]
    fn only_plain_run_ids_become_directories() {
        assert!(is_safe_run_id("0b7c3c7e-52a8-4c1c-9a52-5d1c5a8a3f10"));
        assert!(!is_safe_run_id("../../etc"));
        assert!(!is_safe_run_id("index.html"));
        assert!(!is_safe_run_id(""));
    }

    #[test]
    fn signals_are_named() {
        assert_eq!(signal_name(143).as_deref(), Some("SIGTERM"));
        assert_eq!(signal_name(137).as_deref(), Some("SIGKILL"));
        assert_eq!(signal_name(1), None);
        assert_eq!(signal_name(128), None);
    }

    #[test]
    fn strip_ms_reads_like_the_python_one() {
        assert_eq!(strip_ms(TemplateValue::from(65.7)), "0:01:05");
        assert_eq!(strip_ms(TemplateValue::from("12:00:01.123")), "12:00:01");
        assert_eq!(strip_ms(TemplateValue::from(())), "");
        assert!(!strip_ms(TemplateValue::from(1_700_000_000.5)).contains('.'));
    }

    #[test]
    fn gzip_is_deterministic() {
        assert_eq!(gzip(b"<p>hello</p>"), gzip(b"<p>hello</p>"));
    }

    #[test]
    fn file_sizes_read_well() {
        assert_eq!(file_size(12.0), "12 bytes");
        assert_eq!(file_size(1536.0), "1.5 KiB");
        assert_eq!(file_size(5.0 * 1024.0 * 1024.0), "5.0 MiB");
    }
}
