//! `dsari run output RUN_ID`: a run's output, finished or still running; and
//! the two things other commands share with it: finding a run from a
//! (shortened) id, and reading output that an operator may have compressed.
//!
//! Output is `output.txt` in the run dir, or `output.txt.gz` / `output.txt.xz`
//! (SPEC §1.2). Both compressed forms are read as concatenated streams, as
//! Python's `gzip` and `lzma` read them: `gzip a; gzip b >> output.txt.gz`
//! gives the output of both, not silently only the first.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

use crate::config::Config;
use crate::exec::OUTPUT_FILE;
use crate::store::{RunRecord, RunState, Store};

use super::style;

/// How many candidates an ambiguous prefix lists.
const CANDIDATES: usize = 10;

/// Print a run's output to stdout, as bytes (it need not be UTF-8).
pub fn print(config_dir: &Path, run: &str) -> anyhow::Result<u8> {
    let config = super::load_config(config_dir)?;
    let store = super::open_store(&config)?;
    let (state, record) = resolve(&store, run)?;
    if state == RunState::Pending {
        bail!(
            "run {} of job {} has not started yet (due {}), so it has no output: `dsari job why {}` says what it waits for",
            record.run_id,
            record.job_name,
            style::local_time(record.schedule_time),
            record.job_name
        );
    }
    let dir = crate::daemon::run_dir(&config, &record.job_name, &record.run_id);
    match open_output(&dir)? {
        Some((path, mut reader)) => {
            let mut out = std::io::stdout().lock();
            copy(&mut reader, &mut out, &path)?;
        }
        None if state == RunState::Running => {
            eprintln!("run {} has written no output yet", record.run_id);
        }
        None => bail!(
            "run {} of job {} has no output file in {} (looked for {OUTPUT_FILE}, {OUTPUT_FILE}.gz and {OUTPUT_FILE}.xz)",
            record.run_id,
            record.job_name,
            dir.display()
        ),
    }
    Ok(0)
}

/// Find the run a whole or shortened id names, in any table. No match, or more
/// than one, is a one-line error (the latter listing the candidates).
pub fn resolve(store: &Store, run: &str) -> anyhow::Result<(RunState, RunRecord)> {
    let prefix = run.trim().to_lowercase();
    if prefix.is_empty() {
        bail!(
            "an empty run id names no run: give a run id or the start of one (`dsari run list` shows them)"
        );
    }
    let mut found = store.runs_with_prefix(&prefix, CANDIDATES + 1)?;
    if let Some(i) = found.iter().position(|(_, r)| r.run_id == prefix) {
        return Ok(found.swap_remove(i));
    }
    match found.len() {
        0 => bail!(
            "no run has an id starting with {prefix:?}: `dsari run list` shows the recorded runs"
        ),
        1 => Ok(found.remove(0)),
        n => {
            let shown: Vec<String> = found
                .iter()
                .take(CANDIDATES)
                .map(|(state, r)| format!("{} ({}, {})", r.run_id, r.job_name, state_word(*state)))
                .collect();
            let more = if n > CANDIDATES { ", …" } else { "" };
            bail!(
                "run id {prefix:?} is ambiguous, give more of it: {}{more}",
                shown.join(", ")
            )
        }
    }
}

/// "pending", "running", "finished".
pub fn state_word(state: RunState) -> &'static str {
    match state {
        RunState::Pending => "pending",
        RunState::Running => "running",
        RunState::Finished => "finished",
    }
}

/// The output of the run in `run_dir`, decompressed: the file found and a
/// reader; `None` when there is no output file at all.
pub fn open_output(run_dir: &Path) -> anyhow::Result<Option<(PathBuf, Box<dyn Read>)>> {
    let plain = run_dir.join(OUTPUT_FILE);
    let gz = run_dir.join(format!("{OUTPUT_FILE}.gz"));
    let xz = run_dir.join(format!("{OUTPUT_FILE}.xz"));
    let open = |p: &Path| -> anyhow::Result<Option<BufReader<File>>> {
        match File::open(p) {
            Ok(f) => Ok(Some(BufReader::new(f))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", p.display())),
        }
    };
    if let Some(f) = open(&plain)? {
        return Ok(Some((plain, Box::new(f))));
    }
    if let Some(f) = open(&gz)? {
        return Ok(Some((
            gz,
            Box::new(flate2::bufread::MultiGzDecoder::new(f)),
        )));
    }
    if let Some(f) = open(&xz)? {
        return Ok(Some((
            xz,
            Box::new(liblzma::bufread::XzDecoder::new_multi_decoder(f)),
        )));
    }
    Ok(None)
}

/// Copy output to `out`, naming the file when reading (or decompressing) fails.
fn copy(reader: &mut dyn Read, out: &mut dyn std::io::Write, path: &Path) -> anyhow::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(e).with_context(|| format!("cannot read {}", path.display()));
            }
        };
        out.write_all(&buf[..n])?;
    }
    out.flush()?;
    Ok(())
}

/// The whole output of a run as bytes (tests and small callers).
pub fn read_all(config: &Config, job: &str, run_id: &str) -> anyhow::Result<Option<Vec<u8>>> {
    let dir = crate::daemon::run_dir(config, job, run_id);
    let Some((path, mut reader)) = open_output(&dir)? else {
        return Ok(None);
    };
    let mut bytes = Vec::new();
    copy(&mut reader, &mut bytes, &path)?;
    Ok(Some(bytes))
}
