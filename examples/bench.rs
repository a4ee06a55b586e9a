//! The dsari benchmark: `cargo run --release --example bench [-- --quick] [--json FILE]`.
//!
//! Builds the release binary, starts it as a real daemon on a temporary config
//! and data dir, and measures what users feel: trigger-to-process-start latency,
//! burst throughput, idle cost, and database operations at a million rows.
//! Every figure is shown as min / median / max over the rounds, with the
//! conditions (cores, kernel, file system) printed first.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};
use serde_json::{Value, json};

struct Opts {
    quick: bool,
    rounds: usize,
    latency_n: usize,
    burst_n: usize,
    idle_secs: u64,
    db_rows: usize,
    wait_n: usize,
    recovery_n: usize,
    only: Option<Vec<String>>,
    json_out: Option<PathBuf>,
}

/// The bench's sections, in the order they run (`--only` takes a comma list of them).
const SECTIONS: &[&str] = &[
    "latency", "wait", "burst", "schedule", "idle", "db", "recovery",
];

impl Opts {
    fn runs(&self, section: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|o| o.iter().any(|s| s == section))
    }
}

fn parse_opts() -> Opts {
    let mut o = Opts {
        quick: false,
        rounds: 3,
        latency_n: 300,
        burst_n: 2000,
        idle_secs: 60,
        db_rows: 1_000_000,
        wait_n: 100,
        recovery_n: 200,
        only: None,
        json_out: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut num = |name: &str| -> usize {
            args.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| die(&format!("{name} needs a number")))
        };
        match a.as_str() {
            "--quick" => o.quick = true,
            "--rounds" => o.rounds = num("--rounds"),
            "--latency" => o.latency_n = num("--latency"),
            "--burst" => o.burst_n = num("--burst"),
            "--idle-secs" => o.idle_secs = num("--idle-secs") as u64,
            "--db-rows" => o.db_rows = num("--db-rows"),
            "--wait" => o.wait_n = num("--wait"),
            "--recovery" => o.recovery_n = num("--recovery"),
            "--only" => {
                let list: Vec<String> = args
                    .next()
                    .unwrap_or_default()
                    .split(',')
                    .map(str::to_string)
                    .collect();
                if let Some(bad) = list.iter().find(|s| !SECTIONS.contains(&s.as_str())) {
                    die(&format!(
                        "--only: no section {bad:?}; they are {}",
                        SECTIONS.join(",")
                    ));
                }
                o.only = Some(list);
            }
            "--json" => o.json_out = args.next().map(PathBuf::from),
            "-h" | "--help" => {
                println!(
                    "usage: bench [--quick] [--rounds N] [--latency N] [--wait N] [--burst N] [--idle-secs S] [--db-rows N] [--recovery N] [--only SECTION,...] [--json FILE]\nsections: {}",
                    SECTIONS.join(",")
                );
                std::process::exit(0);
            }
            other => die(&format!("unknown argument {other}; see --help")),
        }
    }
    if o.quick {
        o.rounds = 1;
        o.latency_n = o.latency_n.min(100);
        o.burst_n = o.burst_n.min(500);
        o.idle_secs = o.idle_secs.min(10);
        o.db_rows = o.db_rows.min(100_000);
        o.wait_n = o.wait_n.min(30);
    }
    o
}

fn die(msg: &str) -> ! {
    eprintln!("bench: {msg}");
    std::process::exit(1)
}

fn main() {
    let opts = parse_opts();
    let dsari = build_release();
    print_conditions(&opts);
    let mut results: Vec<(String, String, Vec<f64>)> = Vec::new();
    let mut add = |name: &str, unit: &str, v: Vec<f64>| {
        print_row(name, unit, &v);
        results.push((name.to_string(), unit.to_string(), v));
    };
    println!(
        "{:<44} {:>12} {:>12} {:>12}  unit",
        "figure", "min", "median", "max"
    );

    if opts.runs("latency") {
        let (mut p50, mut p99, mut pmax) = (vec![], vec![], vec![]);
        for _ in 0..opts.rounds {
            let l = latency(&dsari, opts.latency_n);
            p50.push(percentile(&l, 50.0));
            p99.push(percentile(&l, 99.0));
            pmax.push(percentile(&l, 100.0));
        }
        add(
            &format!("trigger latency p50 ({} triggers)", opts.latency_n),
            "ms",
            p50,
        );
        add("trigger latency p99", "ms", p99);
        add("trigger latency max", "ms", pmax);
    }

    if opts.runs("wait") {
        let (mut p50, mut pmax) = (vec![], vec![]);
        for _ in 0..opts.rounds {
            let w = wait_overhead(&dsari, opts.wait_n);
            p50.push(percentile(&w, 50.0));
            pmax.push(percentile(&w, 100.0));
        }
        add(
            &format!("trigger --wait overhead p50 ({} runs)", opts.wait_n),
            "ms",
            p50,
        );
        add("  max", "ms", pmax);
    }

    if opts.runs("burst") {
        let (mut free, mut grouped) = (vec![], vec![]);
        for _ in 0..opts.rounds {
            free.push(burst(&dsari, opts.burst_n, None));
            grouped.push(burst(&dsari, opts.burst_n, Some(8)));
        }
        add(
            &format!("burst {} x /bin/true, 100 jobs", opts.burst_n),
            "runs/s",
            free,
        );
        add("  same, one concurrency group max 8", "runs/s", grouped);
    }

    if opts.runs("schedule") {
        let (first_s, start_s, rss10k, (daemon10k, launcher10k), runs10k) =
            schedule_load(&dsari, 10_000, "H * * * *", opts.idle_secs);
        add(
            "10,000 jobs 'H * * * *': first start, to READY",
            "s",
            vec![first_s],
        );
        add(
            "  restart (trigger dirs exist), to READY",
            "s",
            vec![start_s],
        );
        add("  idle RSS", "MB", vec![rss10k]);
        add(
            &format!("  CPU over {} s: daemon", opts.idle_secs),
            "CPU-s",
            vec![daemon10k],
        );
        add("  CPU, same time: its launcher", "CPU-s", vec![launcher10k]);
        add(
            "  runs that came due meanwhile",
            "runs",
            vec![runs10k as f64],
        );
        if runs10k > 0 {
            add(
                "  daemon + launcher CPU per run",
                "ms",
                vec![(daemon10k + launcher10k) * 1e3 / runs10k as f64],
            );
        }
        // The same daemon with nothing coming due: what 10,000 jobs cost
        // without their runs (the safety rescan, once a minute).
        let (_, _, _, (daemon_y, launcher_y), runs_y) =
            schedule_load(&dsari, 10_000, "H H 1 1 *", opts.idle_secs);
        add(
            &format!(
                "10,000 jobs 'H H 1 1 *' ({runs_y} runs due): CPU over {} s",
                opts.idle_secs
            ),
            "CPU-s",
            vec![daemon_y + launcher_y],
        );
    }

    if opts.runs("idle") {
        let (rss, cpu) = idle(&dsari, opts.idle_secs);
        add("idle daemon, 1 job: RSS", "MB", vec![rss]);
        add(
            &format!(
                "idle daemon, 1 job: CPU over {} s (+launcher)",
                opts.idle_secs
            ),
            "CPU-s",
            vec![cpu],
        );
    }

    if opts.runs("db") {
        let db = database(&dsari, opts.db_rows, opts.rounds.max(3));
        add(
            &format!("db {} rows: run start (lookups+insert)", opts.db_rows),
            "ms",
            db.0,
        );
        add("  run finish (move to runs)", "ms", db.1);
        add("  dsari run list --job X --limit 20", "ms", db.2);
        add("  metrics: first collection", "ms", db.3);
        add("  metrics: served from cache", "ms", db.4);
    }

    if opts.runs("recovery") {
        let mut times = vec![];
        for _ in 0..opts.rounds {
            times.push(recovery(&dsari, opts.recovery_n));
        }
        add(
            &format!(
                "crash recovery, {} runs: restart until READY",
                opts.recovery_n
            ),
            "s",
            times,
        );
    }

    SPENT.lock().unwrap_or_else(|p| p.into_inner()).clear();

    if let Some(path) = opts.json_out {
        let rows: Vec<Value> = results
            .iter()
            .map(|(n, u, v)| json!({"figure": n, "unit": u, "values": v, "median": median(v)}))
            .collect();
        let doc = json!({"conditions": conditions(), "results": rows});
        if let Err(e) = fs::write(
            &path,
            serde_json::to_string_pretty(&doc).unwrap_or_default(),
        ) {
            die(&format!("cannot write {}: {e}", path.display()));
        }
        println!("wrote {}", path.display());
    }
}

/// `cargo build --release --bin dsari` and the path of the binary.
fn build_release() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "--quiet", "--bin", "dsari"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status();
    if !status.is_ok_and(|s| s.success()) {
        die("cannot build the release binary");
    }
    let exe = std::env::current_exe().unwrap_or_else(|e| die(&format!("current_exe: {e}")));
    // target/release/examples/bench -> target/release/dsari
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("dsari"))
        .unwrap_or_else(|| die("cannot find target/release"));
    if !bin.exists() {
        die(&format!("{} not found", bin.display()));
    }
    bin
}

fn conditions() -> Value {
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let fs_type = Command::new("stat")
        .args([
            "-f",
            "-c",
            "%T",
            &std::env::temp_dir().display().to_string(),
        ])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    json!({
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "kernel": kernel.trim(),
        "tmp_filesystem": fs_type,
        "build": "release",
    })
}

fn print_conditions(o: &Opts) {
    let c = conditions();
    println!(
        "dsari benchmark: {} cores, kernel {}, temp dir on {}, release build, {} round(s){}",
        c["cores"],
        c["kernel"].as_str().unwrap_or("?"),
        c["tmp_filesystem"].as_str().unwrap_or("?"),
        o.rounds,
        if o.quick { ", --quick" } else { "" }
    );
}

fn print_row(name: &str, unit: &str, v: &[f64]) {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    println!(
        "{name:<44} {min:>12.3} {:>12.3} {max:>12.3}  {unit}",
        median(v)
    );
}

fn median(v: &[f64]) -> f64 {
    percentile(v, 50.0)
}

fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * (s.len() as f64 - 1.0)).round() as usize;
    s[rank.min(s.len() - 1)]
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A temporary config + data dir and a running daemon; killed on drop.
struct Env {
    /// `None` once handed to [`SPENT`].
    dir: Option<tempfile::TempDir>,
    data: PathBuf,
    etc: PathBuf,
    daemon: Option<Child>,
}

impl Env {
    fn new(config: Value) -> Env {
        let dir = tempfile::tempdir().unwrap_or_else(|e| die(&format!("tempdir: {e}")));
        let etc = dir.path().join("etc");
        let data = dir.path().join("var");
        fs::create_dir_all(&etc).unwrap_or_else(|e| die(&e.to_string()));
        let mut config = config;
        config["data_dir"] = json!(data);
        fs::write(etc.join("dsari.json"), config.to_string())
            .unwrap_or_else(|e| die(&e.to_string()));
        Env {
            dir: Some(dir),
            data,
            etc,
            daemon: None,
        }
    }

    fn start(&mut self, dsari: &Path, jobs: &[String]) {
        let child = Command::new(dsari)
            .args(["daemon", "-c"])
            .arg(&self.etc)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| die(&format!("cannot start the daemon: {e}")));
        self.daemon = Some(child);
        let db = self.data.join("dsari.sqlite3");
        wait(Duration::from_secs(30), || {
            db.exists()
                && jobs
                    .iter()
                    .all(|j| self.data.join("trigger").join(j).is_dir())
        });
        // The directories exist before their watches; one trigger round-trip proves the loop is up.
    }

    fn pid(&self) -> u32 {
        self.daemon.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    fn db(&self) -> Connection {
        Connection::open_with_flags(
            self.data.join("dsari.sqlite3"),
            OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap_or_else(|e| die(&format!("open db: {e}")))
    }

    fn drop_trigger(&self, job: &str, name: &str, content: &str) {
        let dir = self.data.join("trigger").join(job);
        let tmp = dir.join(format!(".{name}.tmp"));
        fs::write(&tmp, content).unwrap_or_else(|e| die(&e.to_string()));
        fs::rename(&tmp, dir.join(name)).unwrap_or_else(|e| die(&e.to_string()));
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.stop();
        if let Some(dir) = self.dir.take() {
            SPENT.lock().unwrap_or_else(|p| p.into_inner()).push(dir);
        }
    }
}

/// Temporary dirs of finished sections, removed only when the bench ends. On a
/// file system without a journal (ext4 here), deleting thousands of files makes
/// inode allocation slow for the next 30 s (the kernel skips recently deleted
/// inodes), which would charge one section's clean-up to the next one's figures.
static SPENT: std::sync::Mutex<Vec<tempfile::TempDir>> = std::sync::Mutex::new(Vec::new());

impl Env {
    /// SIGTERM to the daemon and wait for it to end (SIGKILL after 10 s).
    fn stop(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn wait(limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        if Instant::now() > deadline {
            die("timed out waiting for the daemon");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn count_runs(db: &Connection) -> usize {
    count_rows(db, "runs")
}

/// Rows in a table (0 while it cannot be read yet).
fn count_rows(db: &Connection, table: &str) -> usize {
    db.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| {
        r.get::<_, i64>(0)
    })
    .map(|n| n as usize)
    .unwrap_or(0)
}

/// Trigger renamed into place -> the run's first action (`date` printing the time), ms.
fn latency(dsari: &Path, n: usize) -> Vec<f64> {
    let mut env = Env::new(json!({"jobs": {"lat": {"command": ["/bin/date", "+%s.%N"]}}}));
    env.start(dsari, &["lat".to_string()]);
    let db = env.db();
    // Warm-up round trip (page cache, first SQLite statements).
    env.drop_trigger("lat", "warm.json", "");
    wait(Duration::from_secs(30), || count_runs(&db) == 1);
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let t0 = now();
        env.drop_trigger("lat", &format!("t{i}.json"), "");
        wait(Duration::from_secs(30), || count_runs(&db) == i + 2);
        let run_id: String = db
            .query_row(
                "SELECT run_id FROM runs ORDER BY rowid DESC LIMIT 1",
                [],
                |r| r.get(0),
            )
            .unwrap_or_default();
        let text = fs::read_to_string(env.data.join("runs/lat").join(&run_id).join("output.txt"))
            .unwrap_or_default();
        if let Ok(t1) = text.trim().parse::<f64>() {
            out.push((t1 - t0) * 1000.0);
        }
    }
    out
}

/// `dsari trigger JOB --wait`, one after another: the command's wall time minus
/// the run's own duration (`stop_time - start_time` in `runs`), ms.
fn wait_overhead(dsari: &Path, n: usize) -> Vec<f64> {
    let mut env = Env::new(json!({"jobs": {"w": {"command": ["/bin/true"]}}}));
    env.start(dsari, &["w".to_string()]);
    let db = env.db();
    let mut out = Vec::with_capacity(n);
    // The first round trip warms the page cache and is not counted.
    for i in 0..=n {
        let t0 = Instant::now();
        let result = Command::new(dsari)
            .args(["trigger", "w", "--wait", "--timeout", "30", "-c"])
            .arg(&env.etc)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .unwrap_or_else(|e| die(&format!("dsari trigger: {e}")));
        let wall = t0.elapsed().as_secs_f64();
        if !result.status.success() {
            die(&format!(
                "dsari trigger --wait exited with {}",
                result.status
            ));
        }
        let own: f64 = db
            .query_row(
                "SELECT stop_time - start_time FROM runs ORDER BY rowid DESC LIMIT 1",
                [],
                |r| r.get(0),
            )
            .unwrap_or_else(|e| die(&e.to_string()));
        if i > 0 {
            out.push((wall - own) * 1000.0);
        }
    }
    out
}

/// Start the daemon with NOTIFY_SOCKET set; seconds from spawn until READY=1.
fn start_until_ready(env: &mut Env, dsari: &Path) -> f64 {
    use std::os::unix::net::UnixDatagram;
    let sock_path = env.data.with_file_name("notify.sock");
    let _ = fs::remove_file(&sock_path);
    let sock = UnixDatagram::bind(&sock_path).unwrap_or_else(|e| die(&e.to_string()));
    let _ = sock.set_read_timeout(Some(Duration::from_secs(120)));
    let t0 = Instant::now();
    let child = Command::new(dsari)
        .args(["daemon", "-c"])
        .arg(&env.etc)
        .env("RUST_LOG", "warn")
        .env("NOTIFY_SOCKET", &sock_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| die(&format!("cannot start the daemon: {e}")));
    env.daemon = Some(child);
    let mut buf = [0u8; 256];
    loop {
        let n = sock
            .recv(&mut buf)
            .unwrap_or_else(|e| die(&format!("no READY=1: {e}")));
        if String::from_utf8_lossy(&buf[..n]).contains("READY=1") {
            return t0.elapsed().as_secs_f64();
        }
    }
}

/// `n` runs in progress when the daemon is SIGKILLed: half of them finish while
/// it is down, half are still running. Seconds from the restart until READY=1,
/// by which time every finished one is recorded and every running one adopted.
fn recovery(dsari: &Path, n: usize) -> f64 {
    let (quick, slow) = (n / 2, n - n / 2);
    let mut env = Env::new(json!({"jobs": {
        "quick": {"command": ["/bin/sleep", "3"], "concurrent_runs": true},
        "slow": {"command": ["/bin/sleep", "120"], "concurrent_runs": true},
    }}));
    env.start(dsari, &["quick".to_string(), "slow".to_string()]);
    let db = env.db();
    let count = |table: &str| count_rows(&db, table);
    for i in 0..n {
        let job = if i < quick { "quick" } else { "slow" };
        env.drop_trigger(job, &format!("r{i}.json"), "");
    }
    wait(Duration::from_secs(60), || {
        let (r, d) = (count("runs_running"), count("runs"));
        if d > 0 {
            die(&format!(
                "{d} runs ended before all {n} were running ({r} running): is the machine that slow?"
            ));
        }
        r == n
    });
    // Recorded as running comes just before the supervisor starts: wait for all.
    let locked = |job: &str| -> usize {
        fs::read_dir(env.data.join("runs").join(job))
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .filter(|e| e.path().join(".dsari-lock").exists())
                    .count()
            })
            .unwrap_or(0)
    };
    wait(Duration::from_secs(60), || {
        locked("quick") + locked("slow") == n
    });
    if let Some(mut daemon) = env.daemon.take() {
        let _ = daemon.kill();
        let _ = daemon.wait();
    }
    // Every quick run's supervisor leaves its exit status while no daemon runs.
    let quick_dirs: Vec<PathBuf> = fs::read_dir(env.data.join("runs/quick"))
        .map(|rd| rd.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    wait(Duration::from_secs(60), || {
        quick_dirs
            .iter()
            .all(|d| d.join(".dsari-status.json").exists())
    });
    let took = start_until_ready(&mut env, dsari);
    let (recorded, running) = (count("runs"), count("runs_running"));
    if recorded != quick || running != slow {
        die(&format!(
            "after recovery: {recorded} runs recorded (expected {quick}), {running} running (expected {slow})"
        ));
    }
    // Stop the slow runs through their supervisors (pid in the lock file).
    for entry in fs::read_dir(env.data.join("runs/slow"))
        .into_iter()
        .flatten()
    {
        let lock = entry.map(|e| e.path().join(".dsari-lock"));
        if let Some(pid) = lock
            .ok()
            .and_then(|l| fs::read_to_string(l).ok())
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .and_then(|v| v.get("pid")?.as_i64())
            .and_then(|p| i32::try_from(p).ok())
            .filter(|p| *p > 0)
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
    wait(Duration::from_secs(60), || count("runs") == n);
    took
}

/// `n` trigger files at once over 100 jobs with concurrent_runs: runs per second.
fn burst(dsari: &Path, n: usize, group_max: Option<u32>) -> f64 {
    let jobs: Vec<String> = (0..100).map(|i| format!("j{i}")).collect();
    let mut job_map = serde_json::Map::new();
    for j in &jobs {
        let mut def = json!({"command": ["/bin/true"], "concurrent_runs": true});
        if group_max.is_some() {
            def["concurrency_groups"] = json!(["g"]);
        }
        job_map.insert(j.clone(), def);
    }
    let mut config = json!({"jobs": job_map});
    if let Some(m) = group_max {
        config["concurrency_groups"] = json!({"g": {"max": m}});
    }
    let mut env = Env::new(config);
    env.start(dsari, &jobs);
    let db = env.db();
    // Prepare the files outside the trigger dirs, then rename them all in.
    let staging = env.data.join("staging");
    fs::create_dir_all(&staging).unwrap_or_else(|e| die(&e.to_string()));
    let mut files = Vec::with_capacity(n);
    for i in 0..n {
        let job = &jobs[i % jobs.len()];
        let src = staging.join(format!("{i}.json"));
        fs::write(&src, format!("{{\"n\": {i}}}")).unwrap_or_else(|e| die(&e.to_string()));
        files.push((
            src,
            env.data
                .join("trigger")
                .join(job)
                .join(format!("b{i}.json")),
        ));
    }
    let t0 = Instant::now();
    for (src, dst) in &files {
        fs::rename(src, dst).unwrap_or_else(|e| die(&e.to_string()));
    }
    wait(Duration::from_secs(600), || count_runs(&db) >= n);
    n as f64 / t0.elapsed().as_secs_f64()
}

/// 10,000 scheduled jobs: seconds from spawn to systemd READY=1 (every
/// schedule parsed, every trigger dir created, watched and scanned), then RSS,
/// CPU seconds (daemon and launcher) over `secs`, and the runs that came due
/// meanwhile (each job is due once an hour at its hashed minute and second:
/// 10,000 jobs make 2.8 runs a second).
fn schedule_load(
    dsari: &Path,
    jobs: usize,
    schedule: &str,
    secs: u64,
) -> (f64, f64, f64, (f64, f64), usize) {
    let mut job_map = serde_json::Map::new();
    for i in 0..jobs {
        job_map.insert(
            format!("s{i}"),
            json!({"command": ["/bin/true"], "schedule": schedule}),
        );
    }
    let mut env = Env::new(json!({"jobs": job_map}));
    // The first start creates every job's trigger dir; a restart finds them.
    let first = start_until_ready(&mut env, dsari);
    env.stop();
    let start = start_until_ready(&mut env, dsari);
    std::thread::sleep(Duration::from_millis(500));
    let pid = env.pid();
    let db = env.db();
    let runs0 = count_runs(&db);
    let cpu0 = cpu_seconds_with_launcher(pid);
    std::thread::sleep(Duration::from_secs(secs));
    let cpu1 = cpu_seconds_with_launcher(pid);
    let runs = count_runs(&db).saturating_sub(runs0);
    let cpu = (cpu1.0 - cpu0.0, cpu1.1 - cpu0.1);
    (first, start, rss_mb(pid), cpu, runs)
}

/// CPU seconds of the daemon and of its launcher (a child of its own, which
/// forks the run supervisors: its work is the daemon's work).
fn cpu_seconds_with_launcher(pid: u32) -> (f64, f64) {
    let parent_of = |c: u32| -> Option<u32> {
        let stat = fs::read_to_string(format!("/proc/{c}/stat")).ok()?;
        let rest = stat.rsplit_once(')')?.1;
        rest.split_whitespace().nth(1)?.parse().ok()
    };
    let launcher = fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|&c| {
            parent_of(c) == Some(pid)
                && fs::read(format!("/proc/{c}/cmdline"))
                    .is_ok_and(|cmd| cmd.split(|&b| b == 0).any(|a| a == b"--launcher"))
        });
    (cpu_seconds(pid), launcher.map(cpu_seconds).unwrap_or(0.0))
}

/// RSS (MB) after settling, and CPU seconds used over `secs` of idleness.
fn idle(dsari: &Path, secs: u64) -> (f64, f64) {
    let mut env = Env::new(json!({"jobs": {"one": {"command": ["/bin/true"]}}}));
    env.start(dsari, &["one".to_string()]);
    let db = env.db();
    env.drop_trigger("one", "t.json", "");
    wait(Duration::from_secs(30), || count_runs(&db) == 1);
    std::thread::sleep(Duration::from_millis(500));
    let pid = env.pid();
    let cpu0 = cpu_seconds_with_launcher(pid);
    std::thread::sleep(Duration::from_secs(secs));
    let cpu1 = cpu_seconds_with_launcher(pid);
    (rss_mb(pid), (cpu1.0 + cpu1.1) - (cpu0.0 + cpu0.1))
}

fn rss_mb(pid: u32) -> f64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// CPU seconds of a process: the sum of its threads' run time in nanoseconds
/// (`/proc/PID/task/*/schedstat`) where the kernel has it, else clock ticks
/// (`/proc/PID/stat`, 10 ms each: too coarse for a minute that holds 0.1 s).
/// The daemon's threads all live as long as it does, so none is missed.
fn cpu_seconds(pid: u32) -> f64 {
    let run_ns = |task: fs::DirEntry| -> Option<f64> {
        let text = fs::read_to_string(task.path().join("schedstat")).ok()?;
        text.split_whitespace().next()?.parse::<f64>().ok()
    };
    let per_task: Vec<f64> = fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(run_ns)
        .collect();
    if !per_task.is_empty() {
        return per_task.iter().sum::<f64>() / 1e9;
    }
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of /proc/PID/stat (index 11, 12 here).
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    (ticks(11) + ticks(12)) / hz
}

/// A `runs` table of `rows` rows over 1,000 jobs: time to start a run (previous-run
/// lookups + insert), to finish one (the move), and `dsari run list --job X --limit 20`.
type DbFigures = (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>);

fn database(dsari: &Path, rows: usize, rounds: usize) -> DbFigures {
    let env = Env::new(json!({"jobs": {"job-7": {"command": ["/bin/true"]}}}));
    let db_path = env.data.join("dsari.sqlite3");
    fs::create_dir_all(&env.data).unwrap_or_else(|e| die(&e.to_string()));
    let mut store = dsari::store::Store::open(&db_path).unwrap_or_else(|e| die(&e.to_string()));
    fill(&db_path, rows);
    let (mut start, mut finish, mut list) = (vec![], vec![], vec![]);
    for i in 0..rounds {
        let mut rec = dsari::store::RunRecord {
            job_name: "job-7".into(),
            run_id: format!("bench-{i}"),
            schedule_time: now(),
            start_time: now(),
            stop_time: None,
            exit_code: None,
            trigger_type: "file".into(),
            trigger_data: json!({}),
            run_data: json!({}),
        };
        let t = Instant::now();
        let prev = store.previous_runs("job-7").unwrap_or_default();
        store
            .start_run(&mut rec)
            .unwrap_or_else(|e| die(&e.to_string()));
        start.push(t.elapsed().as_secs_f64() * 1000.0);
        assert!(prev.any.is_some());
        rec.stop_time = Some(now());
        rec.exit_code = Some(0);
        let t = Instant::now();
        store
            .finish_run(&rec)
            .unwrap_or_else(|e| die(&e.to_string()));
        finish.push(t.elapsed().as_secs_f64() * 1000.0);
        let t = Instant::now();
        let out = Command::new(dsari)
            .args(["run", "list", "--job", "job-7", "--limit", "20", "-c"])
            .arg(&env.etc)
            .output()
            .unwrap_or_else(|e| die(&e.to_string()));
        list.push(t.elapsed().as_secs_f64() * 1000.0);
        if !out.status.success() {
            die(&format!(
                "run list failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    // Prometheus metrics over the same table: the first collection reads every
    // row; later scrapes within job_cache_time come from the cache.
    let config = dsari::config::load(&env.etc)
        .unwrap_or_else(|e| die(&e.to_string()))
        .config;
    let opts = dsari::report::MetricsOptions::default();
    let (mut first, mut cached) = (vec![], vec![]);
    for _ in 0..rounds.min(2) {
        let mut cache = dsari::report::MetricsCache::new();
        let t = Instant::now();
        dsari::report::metrics_text(&config, &opts, &mut cache)
            .unwrap_or_else(|e| die(&e.to_string()));
        first.push(t.elapsed().as_secs_f64() * 1000.0);
        for _ in 0..rounds {
            let t = Instant::now();
            dsari::report::metrics_text(&config, &opts, &mut cache)
                .unwrap_or_else(|e| die(&e.to_string()));
            cached.push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    (start, finish, list, first, cached)
}

fn fill(db_path: &Path, rows: usize) {
    let mut conn = Connection::open(db_path).unwrap_or_else(|e| die(&e.to_string()));
    let tx = conn.transaction().unwrap_or_else(|e| die(&e.to_string()));
    {
        let mut stmt = tx
            .prepare(
                "INSERT INTO runs (job_name, run_id, schedule_time, start_time, stop_time, exit_code, \
                 trigger_type, trigger_data, run_data) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'file', '{}', '{}')",
            )
            .unwrap_or_else(|e| die(&e.to_string()));
        let base = 1_700_000_000.0;
        for i in 0..rows {
            let t = base + i as f64;
            let job = format!("job-{}", i % 1000);
            let code = if i % 7 == 0 { 1 } else { 0 };
            stmt.execute(rusqlite::params![job, format!("r{i}"), t, t, t + 1.0, code])
                .unwrap_or_else(|e| die(&e.to_string()));
        }
    }
    tx.commit().unwrap_or_else(|e| die(&e.to_string()));
}
