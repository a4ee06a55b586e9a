//! `dsari metrics`: Prometheus metrics of the recorded runs (SPEC §10.2).
//!
//! The metric names, labels and types are the Python exporter's, so that
//! dashboards and alerts keep working. Per configured job, labelled
//! `job_name`:
//!
//! | metric | type | |
//! |---|---|---|
//! | `dsari_run_count`, `dsari_run_success_count`, `dsari_run_failure_count` | counter | runs recorded; exit 0; anything else |
//! | `dsari_run_duration_seconds` | summary | stop − start, with `quantile` labels, `_sum`, `_count` |
//! | `dsari_run_latency_seconds` | summary | start − schedule |
//! | `dsari_last_run_exit_code`, `dsari_last_run_{schedule,start,stop}_time` | gauge | the latest run by stop time |
//! | `dsari_running_run_{schedule,start}_time` | gauge | per running run, also labelled `run_id` |
//!
//! plus `dsari_time`, `dsari_exporter_collect_seconds` and
//! `dsari_version_info{version="…"} 1`. The quantiles are exact (linear
//! interpolation between the two nearest runs, as the Python exporter
//! computes them), not estimates. Jobs with no runs have counts of 0 and no
//! summaries or last-run gauges.
//!
//! **Cost at any size.** [`MetricsCache`] keeps, per job, the counts and the
//! sorted durations and latencies, and the highest `runs` rowid it has read.
//! The first scrape reads the `runs` table once; later ones read only rows
//! with a higher rowid (an index range, not a scan), at most once per
//! `job_cache_time`, and between those serve the cached figures. Rows that
//! vanished (a pruned table) show up as a row count that no longer matches,
//! and then the cache is rebuilt. `runs_running` is small and read on every
//! scrape. The database is opened read-only: in WAL mode a reader never blocks
//! the daemon's writes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use prometheus::proto::{
    Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType, Quantile, Summary,
};
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};

use super::ReportError;
use crate::config::Config;

/// Where `dsari metrics` listens by default: this host only (SPEC §10.2).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50575";

/// How long a query waits for a writer that holds the database (it only
/// happens while a database is not yet in WAL mode).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Options of `dsari metrics`.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsOptions {
    /// Seconds during which the per-job figures are served from the cache
    /// without looking for new runs (`--job-cache-time`, default 120).
    pub job_cache_time: f64,
    /// Quantiles of the two summaries (`--quantiles`, default 0.01,0.1,0.5,0.9,0.99).
    pub quantiles: Vec<f64>,
    /// Whether to report running runs (`--no-running` turns it off).
    pub include_running: bool,
    /// The HTTP path that answers (`--metrics-path`, default `/metrics`).
    pub metrics_path: String,
}

impl Default for MetricsOptions {
    fn default() -> MetricsOptions {
        MetricsOptions {
            job_cache_time: 120.0,
            quantiles: vec![0.01, 0.1, 0.5, 0.9, 0.99],
            include_running: true,
            metrics_path: "/metrics".to_string(),
        }
    }
}

/// Parse `--quantiles`: comma-separated numbers from 0 to 1.
pub fn parse_quantiles(text: &str) -> Result<Vec<f64>, String> {
    let quantiles = text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| match s.parse::<f64>() {
            Ok(q) if (0.0..=1.0).contains(&q) => Ok(q),
            _ => Err(format!(
                "quantile {s:?} is not a number from 0 to 1 (example: 0.01,0.5,0.99)"
            )),
        })
        .collect::<Result<Vec<f64>, String>>()?;
    if quantiles.is_empty() {
        return Err("no quantiles given (example: 0.01,0.5,0.99)".to_string());
    }
    Ok(quantiles)
}

/// One scrape: the metrics of `config`'s jobs in the Prometheus text format.
/// `cache` carries the per-job figures from one scrape to the next.
///
/// A database that does not exist yet gives counts of 0.
pub fn metrics_text(
    config: &Config,
    opts: &MetricsOptions,
    cache: &mut MetricsCache,
) -> Result<String, ReportError> {
    let started = Instant::now();
    cache.refresh(&config.database_file, opts.job_cache_time)?;
    let running = if opts.include_running {
        cache.running_runs()?
    } else {
        Vec::new()
    };
    let mut families = job_families(config, opts, cache);
    families.extend(running_families(config, &running));
    families.push(family(
        "dsari_time",
        "Time of this scrape, seconds since the epoch",
        MetricType::GAUGE,
        vec![gauge(Vec::new(), crate::time::now())],
    ));
    families.push(family(
        "dsari_version_info",
        "dsari version in the version label; the value is always 1",
        MetricType::GAUGE,
        vec![gauge(
            vec![label("version", env!("CARGO_PKG_VERSION"))],
            1.0,
        )],
    ));
    families.push(family(
        "dsari_exporter_collect_seconds",
        "Seconds spent collecting these metrics",
        MetricType::GAUGE,
        vec![gauge(Vec::new(), started.elapsed().as_secs_f64())],
    ));
    // The Python exporter's order; a family without samples is left out.
    families.retain(|f| !f.get_metric().is_empty());
    families.sort_by(|a, b| a.name().cmp(b.name()));
    prometheus::TextEncoder::new()
        .encode_to_string(&families)
        .map_err(|e| ReportError::Encode(e.to_string()))
}

/// Serve the metrics over HTTP on `listen` until the process ends, reloading
/// the configuration on SIGHUP (like the Python exporter). Blocks.
pub fn serve_metrics(
    config: Config,
    listen: &str,
    opts: MetricsOptions,
) -> Result<(), ReportError> {
    let mut server = MetricsServer::bind(config, listen, opts)?;
    server.reload_on_sighup()?;
    if let Some(addr) = server.local_addr() {
        log::info!(
            "serving metrics on http://{addr}{}",
            server.opts.metrics_path
        );
    }
    server.serve()
}

/// The HTTP endpoint: `GET` (or `HEAD`) on the metrics path gives the metrics,
/// any other path 404. Requests are answered one at a time, from one cache.
pub struct MetricsServer {
    server: Arc<tiny_http::Server>,
    config: Config,
    opts: MetricsOptions,
    cache: MetricsCache,
    stop: Arc<AtomicBool>,
    reload: Option<Arc<AtomicBool>>,
}

/// Stops a [`MetricsServer`] from another thread.
#[derive(Clone)]
pub struct MetricsStopper {
    server: Arc<tiny_http::Server>,
    stop: Arc<AtomicBool>,
}

impl MetricsStopper {
    /// Make [`MetricsServer::serve`] return.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.server.unblock();
    }
}

impl MetricsServer {
    /// Listen on `listen` (`HOST:PORT`; port 0 picks a free one).
    pub fn bind(
        config: Config,
        listen: &str,
        opts: MetricsOptions,
    ) -> Result<MetricsServer, ReportError> {
        let server = tiny_http::Server::http(listen).map_err(|e| ReportError::Listen {
            listen: listen.to_string(),
            message: e.to_string(),
        })?;
        Ok(MetricsServer {
            server: Arc::new(server),
            config,
            opts,
            cache: MetricsCache::new(),
            stop: Arc::new(AtomicBool::new(false)),
            reload: None,
        })
    }

    /// The address actually listened on.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.server.server_addr().to_ip()
    }

    /// A handle that stops [`serve`](Self::serve).
    pub fn stopper(&self) -> MetricsStopper {
        MetricsStopper {
            server: Arc::clone(&self.server),
            stop: Arc::clone(&self.stop),
        }
    }

    /// Reload the configuration from its config dir before the next request
    /// after a SIGHUP (a config that fails to load keeps the old one).
    pub fn reload_on_sighup(&mut self) -> Result<(), ReportError> {
        let flag = Arc::new(AtomicBool::new(false));
        signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&flag))
            .map_err(|e| ReportError::io("SIGHUP handler", e))?;
        self.reload = Some(flag);
        Ok(())
    }

    /// Answer requests until stopped.
    pub fn serve(mut self) -> Result<(), ReportError> {
        loop {
            let request = match self.server.recv() {
                Ok(request) => request,
                Err(_) if self.stop.load(Ordering::SeqCst) => return Ok(()),
                Err(e) => {
                    // A failed accept (out of file descriptors, say): keep serving.
                    log::warn!("metrics: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            self.reload_if_asked();
            self.answer(request);
        }
    }

    fn reload_if_asked(&mut self) {
        let Some(flag) = &self.reload else { return };
        if !flag.swap(false, Ordering::SeqCst) {
            return;
        }
        match crate::config::load(&self.config.config_dir) {
            Ok(loaded) => {
                log::info!(
                    "configuration reloaded from {}",
                    self.config.config_dir.display()
                );
                self.config = loaded.config;
            }
            Err(e) => log::error!("configuration not reloaded, keeping the old one:\n{e}"),
        }
    }

    fn answer(&mut self, request: tiny_http::Request) {
        let path = request.url().split('?').next().unwrap_or_default();
        let response = if path != self.opts.metrics_path {
            text_response(404, "Not Found\n", "text/plain; charset=utf-8")
        } else if !matches!(
            request.method(),
            tiny_http::Method::Get | tiny_http::Method::Head
        ) {
            text_response(405, "Method Not Allowed\n", "text/plain; charset=utf-8")
        } else {
            match metrics_text(&self.config, &self.opts, &mut self.cache) {
                Ok(text) => text_response(200, &text, "text/plain; version=0.0.4; charset=utf-8"),
                Err(e) => {
                    log::error!("metrics: {e}");
                    text_response(500, &format!("{e}\n"), "text/plain; charset=utf-8")
                }
            }
        };
        if let Err(e) = request.respond(response) {
            log::debug!("metrics: cannot answer a request: {e}");
        }
    }
}

fn text_response(
    status: u16,
    body: &str,
    content_type: &str,
) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
    let mut response = tiny_http::Response::from_string(body).with_status_code(status);
    if let Ok(header) = tiny_http::Header::from_bytes("Content-Type", content_type) {
        response = response.with_header(header);
    }
    response
}

// ----- the cache ------------------------------------------------------------

/// Per-job figures of the `runs` table, kept between scrapes (see the module docs).
#[derive(Default)]
pub struct MetricsCache {
    db_path: Option<PathBuf>,
    conn: Option<Connection>,
    /// By job name, for every job in the table (configured or not, so that a
    /// config reload needs no new read).
    jobs: HashMap<String, JobStats>,
    /// Highest rowid read.
    last_rowid: i64,
    /// Rows read (to notice deleted ones).
    rows: u64,
    refreshed: Option<Instant>,
}

impl MetricsCache {
    pub fn new() -> MetricsCache {
        MetricsCache::default()
    }

    /// Bring the figures up to date, unless they were within `max_age` seconds.
    fn refresh(&mut self, path: &Path, max_age: f64) -> Result<(), ReportError> {
        if self.db_path.as_deref() != Some(path) {
            *self = MetricsCache {
                db_path: Some(path.to_path_buf()),
                ..MetricsCache::default()
            };
        }
        if self
            .refreshed
            .is_some_and(|t| t.elapsed().as_secs_f64() < max_age)
        {
            return Ok(());
        }
        let Some(conn) = self.connection(path)? else {
            self.reset();
            self.refreshed = Some(Instant::now());
            return Ok(());
        };
        let result = self.read_new_runs(&conn);
        match result {
            Ok(()) => {
                self.conn = Some(conn);
                self.refreshed = Some(Instant::now());
                Ok(())
            }
            // The connection is dropped: the next scrape opens the file anew.
            Err(source) => Err(ReportError::Sqlite {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    /// The open connection, or a new one; `None` while the file does not exist.
    fn connection(&mut self, path: &Path) -> Result<Option<Connection>, ReportError> {
        if let Some(conn) = self.conn.take() {
            return Ok(Some(conn));
        }
        if !path.exists() {
            return Ok(None);
        }
        let wrap = |source| ReportError::Sqlite {
            path: path.display().to_string(),
            source,
        };
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(wrap)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(wrap)?;
        Ok(Some(conn))
    }

    fn reset(&mut self) {
        self.jobs.clear();
        self.last_rowid = 0;
        self.rows = 0;
    }

    /// Read the rows added since the last read, in one snapshot; start over
    /// when rows went missing.
    fn read_new_runs(&mut self, conn: &Connection) -> rusqlite::Result<()> {
        let tx = conn.unchecked_transaction()?;
        self.read_after(&tx, self.last_rowid)?;
        let count: i64 = tx.query_row("SELECT count(*) FROM runs", [], |r| r.get(0))?;
        if u64::try_from(count).ok() != Some(self.rows) {
            log::info!(
                "metrics: the runs table has {count} rows, {} were read before; reading it again",
                self.rows
            );
            self.reset();
            self.read_after(&tx, 0)?;
        }
        tx.commit()
    }

    fn read_after(&mut self, conn: &Connection, after: i64) -> rusqlite::Result<()> {
        let mut stmt = conn.prepare_cached(
            "SELECT rowid, job_name, schedule_time, start_time, stop_time, exit_code \
             FROM runs WHERE rowid > ?1 ORDER BY rowid",
        )?;
        let mut rows = stmt.query([after])?;
        while let Some(row) = rows.next()? {
            let rowid: i64 = row.get(0)?;
            let job_name = match row.get_ref(1)? {
                ValueRef::Text(bytes) => String::from_utf8_lossy(bytes),
                _ => "".into(),
            };
            let run = FinishedRun {
                rowid,
                schedule_time: time_column(row, 2)?,
                start_time: time_column(row, 3)?,
                stop_time: time_column(row, 4)?,
                exit_code: row.get(5)?,
            };
            match self.jobs.get_mut(job_name.as_ref()) {
                Some(stats) => stats.add(&run),
                None => {
                    let mut stats = JobStats::default();
                    stats.add(&run);
                    self.jobs.insert(job_name.into_owned(), stats);
                }
            }
            self.last_rowid = self.last_rowid.max(rowid);
            self.rows += 1;
        }
        for stats in self.jobs.values_mut() {
            stats.durations.settle();
            stats.latencies.settle();
        }
        Ok(())
    }

    /// Every row of `runs_running` (a small table: read on every scrape).
    fn running_runs(&mut self) -> Result<Vec<RunningRun>, ReportError> {
        let Some(path) = self.db_path.clone() else {
            return Ok(Vec::new());
        };
        let Some(conn) = self.connection(&path)? else {
            return Ok(Vec::new());
        };
        let read = || -> rusqlite::Result<Vec<RunningRun>> {
            let mut stmt = conn.prepare_cached(
                "SELECT job_name, run_id, schedule_time, start_time FROM runs_running ORDER BY rowid",
            )?;
            let rows = stmt.query_map([], |row| {
                Ok(RunningRun {
                    job_name: row.get::<_, Option<String>>(0)?.unwrap_or_default(),
                    run_id: row.get::<_, Option<String>>(1)?.unwrap_or_default(),
                    schedule_time: time_column(row, 2)?,
                    start_time: time_column(row, 3)?,
                })
            })?;
            rows.collect()
        };
        let result = read();
        match result {
            Ok(runs) => {
                self.conn = Some(conn);
                Ok(runs)
            }
            Err(source) => Err(ReportError::Sqlite {
                path: path.display().to_string(),
                source,
            }),
        }
    }
}

/// A time column; NULL (which old tools could leave) reads as 0, as in the store.
fn time_column(row: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<f64> {
    Ok(row.get::<_, Option<f64>>(i)?.unwrap_or(0.0))
}

/// The columns of a `runs` row the metrics need.
#[derive(Clone, Copy)]
struct FinishedRun {
    rowid: i64,
    schedule_time: f64,
    start_time: f64,
    stop_time: f64,
    exit_code: Option<i64>,
}

struct RunningRun {
    job_name: String,
    run_id: String,
    schedule_time: f64,
    start_time: f64,
}

/// One job's figures.
#[derive(Default)]
struct JobStats {
    count: u64,
    success: u64,
    durations: Samples,
    latencies: Samples,
    /// The latest run by stop time (the later row on a tie).
    last: Option<FinishedRun>,
}

impl JobStats {
    fn add(&mut self, run: &FinishedRun) {
        self.count += 1;
        if run.exit_code == Some(0) {
            self.success += 1;
        }
        self.durations.add(run.stop_time - run.start_time);
        self.latencies.add(run.start_time - run.schedule_time);
        let newer = self.last.as_ref().is_none_or(|last| {
            run.stop_time > last.stop_time
                || (run.stop_time == last.stop_time && run.rowid > last.rowid)
        });
        if newer {
            self.last = Some(*run);
        }
    }
}

/// A sorted list of values with their sum: exact quantiles at any time.
#[derive(Default)]
struct Samples {
    sorted: Vec<f64>,
    /// Added since the last [`Samples::settle`].
    new: Vec<f64>,
    sum: f64,
}

impl Samples {
    fn add(&mut self, value: f64) {
        self.new.push(value);
        self.sum += value;
    }

    /// Merge the new values into the sorted list: O(n + k log k), so a scrape
    /// that finds a few new runs in a million costs a copy, not a sort.
    fn settle(&mut self) {
        if self.new.is_empty() {
            return;
        }
        self.new.sort_unstable_by(f64::total_cmp);
        if self.new.len() <= 8 {
            for value in self.new.drain(..) {
                let at = self.sorted.partition_point(|x| x.total_cmp(&value).is_le());
                self.sorted.insert(at, value);
            }
            return;
        }
        let old = std::mem::take(&mut self.sorted);
        let new = std::mem::take(&mut self.new);
        self.sorted = merge_sorted(&old, &new);
    }

    /// The `q` quantile, interpolated between the two nearest values as the
    /// Python exporter does.
    fn quantile(&self, q: f64) -> f64 {
        let values = &self.sorted;
        if values.is_empty() {
            return f64::NAN;
        }
        let k = (values.len() - 1) as f64 * q.clamp(0.0, 1.0);
        let (f, c) = (k.floor(), k.ceil());
        if f == c {
            return values[k as usize];
        }
        values[f as usize] * (c - k) + values[c as usize] * (k - f)
    }
}

fn merge_sorted(a: &[f64], b: &[f64]) -> Vec<f64> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        if a[i].total_cmp(&b[j]).is_le() {
            out.push(a[i]);
            i += 1;
        } else {
            out.push(b[j]);
            j += 1;
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    out
}

// ----- metric families ------------------------------------------------------

fn job_families(config: &Config, opts: &MetricsOptions, cache: &MetricsCache) -> Vec<MetricFamily> {
    let empty = JobStats::default();
    let mut run_count = Vec::new();
    let mut success_count = Vec::new();
    let mut failure_count = Vec::new();
    let mut duration = Vec::new();
    let mut latency = Vec::new();
    let mut exit_code = Vec::new();
    let mut schedule_time = Vec::new();
    let mut start_time = Vec::new();
    let mut stop_time = Vec::new();
    for name in config.jobs.keys() {
        let stats = cache.jobs.get(name).unwrap_or(&empty);
        let job = || vec![label("job_name", name)];
        run_count.push(counter(job(), stats.count as f64));
        success_count.push(counter(job(), stats.success as f64));
        failure_count.push(counter(job(), (stats.count - stats.success) as f64));
        let Some(last) = &stats.last else { continue };
        duration.push(summary(job(), &stats.durations, &opts.quantiles));
        latency.push(summary(job(), &stats.latencies, &opts.quantiles));
        // A NULL exit code (written by another tool) has no number to show.
        exit_code.push(gauge(job(), last.exit_code.map_or(f64::NAN, |c| c as f64)));
        schedule_time.push(gauge(job(), last.schedule_time));
        start_time.push(gauge(job(), last.start_time));
        stop_time.push(gauge(job(), last.stop_time));
    }
    vec![
        family(
            "dsari_run_count",
            "Runs of the job recorded in the database",
            MetricType::COUNTER,
            run_count,
        ),
        family(
            "dsari_run_success_count",
            "Runs of the job that exited 0",
            MetricType::COUNTER,
            success_count,
        ),
        family(
            "dsari_run_failure_count",
            "Runs of the job that did not exit 0",
            MetricType::COUNTER,
            failure_count,
        ),
        family(
            "dsari_run_duration_seconds",
            "Time from a run's start to its stop, seconds",
            MetricType::SUMMARY,
            duration,
        ),
        family(
            "dsari_run_latency_seconds",
            "Time from a run's schedule time to its start, seconds",
            MetricType::SUMMARY,
            latency,
        ),
        family(
            "dsari_last_run_exit_code",
            "Exit code of the job's latest run",
            MetricType::GAUGE,
            exit_code,
        ),
        family(
            "dsari_last_run_schedule_time",
            "Schedule time of the job's latest run, seconds since the epoch",
            MetricType::GAUGE,
            schedule_time,
        ),
        family(
            "dsari_last_run_start_time",
            "Start time of the job's latest run, seconds since the epoch",
            MetricType::GAUGE,
            start_time,
        ),
        family(
            "dsari_last_run_stop_time",
            "Stop time of the job's latest run, seconds since the epoch",
            MetricType::GAUGE,
            stop_time,
        ),
    ]
}

fn running_families(config: &Config, running: &[RunningRun]) -> Vec<MetricFamily> {
    let mut schedule_time = Vec::new();
    let mut start_time = Vec::new();
    let mut running: Vec<&RunningRun> = running
        .iter()
        .filter(|r| config.jobs.contains_key(&r.job_name))
        .collect();
    running.sort_by(|a, b| (&a.job_name, &a.run_id).cmp(&(&b.job_name, &b.run_id)));
    for run in running {
        let labels = || {
            vec![
                label("job_name", &run.job_name),
                label("run_id", &run.run_id),
            ]
        };
        schedule_time.push(gauge(labels(), run.schedule_time));
        start_time.push(gauge(labels(), run.start_time));
    }
    vec![
        family(
            "dsari_running_run_schedule_time",
            "Schedule time of a run still going, seconds since the epoch",
            MetricType::GAUGE,
            schedule_time,
        ),
        family(
            "dsari_running_run_start_time",
            "Start time of a run still going, seconds since the epoch",
            MetricType::GAUGE,
            start_time,
        ),
    ]
}

fn family(name: &str, help: &str, kind: MetricType, metrics: Vec<Metric>) -> MetricFamily {
    let mut family = MetricFamily::default();
    family.set_name(name.to_string());
    family.set_help(help.to_string());
    family.set_field_type(kind);
    family.set_metric(metrics);
    family
}

fn label(name: &str, value: &str) -> LabelPair {
    let mut pair = LabelPair::default();
    pair.set_name(name.to_string());
    pair.set_value(value.to_string());
    pair
}

fn gauge(labels: Vec<LabelPair>, value: f64) -> Metric {
    let mut gauge = Gauge::default();
    gauge.set_value(value);
    let mut metric = Metric::from_label(labels);
    metric.set_gauge(gauge);
    metric
}

fn counter(labels: Vec<LabelPair>, value: f64) -> Metric {
    let mut counter = Counter::default();
    counter.set_value(value);
    let mut metric = Metric::from_label(labels);
    metric.set_counter(counter);
    metric
}

fn summary(labels: Vec<LabelPair>, samples: &Samples, quantiles: &[f64]) -> Metric {
    let mut summary = Summary::default();
    summary.set_sample_count(samples.sorted.len() as u64);
    summary.set_sample_sum(samples.sum);
    summary.set_quantile(
        quantiles
            .iter()
            .map(|&q| {
                let mut quantile = Quantile::default();
                quantile.set_quantile(q);
                quantile.set_value(samples.quantile(q));
                quantile
            })
            .collect(),
    );
    let mut metric = Metric::from_label(labels);
    metric.set_summary(summary);
    metric
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(values: &[f64]) -> Samples {
        let mut s = Samples::default();
        for v in values {
            s.add(*v);
        }
        s.settle();
        s
    }

    #[test]
    fn quantiles_interpolate_like_the_python_exporter() {
        let s = samples(&[4.0, 1.0, 3.0, 2.0]);
        assert_eq!(s.quantile(0.0), 1.0);
        assert_eq!(s.quantile(1.0), 4.0);
        assert_eq!(s.quantile(0.5), 2.5);
        assert!((s.quantile(0.1) - 1.3).abs() < 1e-9);
        assert_eq!(s.sum, 10.0);
        assert!(samples(&[]).quantile(0.5).is_nan());
    }

    #[test]
    fn settling_keeps_the_list_sorted() {
        let mut s = samples(&[5.0, 1.0, 9.0]);
        for batch in [vec![3.0], (0..20).map(f64::from).rev().collect::<Vec<_>>()] {
            for v in batch {
                s.add(v);
            }
            s.settle();
        }
        assert_eq!(s.sorted.len(), 24);
        assert!(s.sorted.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn quantile_lists_are_checked() {
        assert_eq!(parse_quantiles("0.5, 0.99").unwrap(), vec![0.5, 0.99]);
        assert!(parse_quantiles("1.5").is_err());
        assert!(parse_quantiles("x").is_err());
        assert!(parse_quantiles("").is_err());
    }
}
