//! `dsari run tail [RUN_ID]…`: follow the output of running runs as it is written.
//!
//! Named runs are followed until each has ended (a named run that already
//! finished has its whole output printed). Without names every running run is
//! followed, and every run that starts (or starts and ends) while the command
//! runs, until Ctrl-C. Of a run already running at the start, the last
//! `--lines` lines come first, as `tail -f` does; a run that starts later is
//! shown from its first byte.
//!
//! With more than one run followed (always, without names, since more may
//! start) each line is prefixed with `JOB SHORT_ID | `; a single named run's
//! output passes through byte for byte.
//!
//! Waiting is event driven (see [`super::wake`]): inotify on each followed
//! run's dir (its output grows) and on the database's dir (runs start and
//! end), plus a re-check every second.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::bail;

use crate::config::Config;
use crate::exec::OUTPUT_FILE;
use crate::store::{RunRecord, RunState, Store};

use super::style;
use super::wake::Wake;

/// What `dsari run tail` was asked for.
#[derive(Debug, Clone)]
pub struct TailOptions {
    /// Runs to follow (whole ids or unique prefixes); all when empty.
    pub runs: Vec<String>,
    /// Lines of earlier output to show of a run already running.
    pub lines: usize,
}

/// Follow; exit status 0 when the named runs have ended.
pub fn tail(config_dir: &Path, opts: &TailOptions) -> anyhow::Result<u8> {
    let config = super::load_config(config_dir)?;
    let store = super::open_store(&config)?;
    let all = opts.runs.is_empty();
    let mut resolved = Vec::new();
    for run in &opts.runs {
        let (state, record) = super::output::resolve(&store, run)?;
        if state == RunState::Pending {
            bail!(
                "run {} of job {} has not started yet: `dsari job why {}` says what it waits for",
                record.run_id,
                record.job_name,
                record.job_name
            );
        }
        resolved.push((state, record));
    }
    let prefixed = all || resolved.len() > 1;
    let mut tailer = Tailer {
        config: &config,
        wake: Wake::new(),
        followed: BTreeMap::new(),
        seen: BTreeSet::new(),
        prefixed,
        out: std::io::stdout().lock(),
    };
    let db_dir = config
        .database_file
        .parent()
        .unwrap_or(Path::new("."))
        .to_path_buf();
    tailer.wake.watch(&db_dir);
    if all {
        eprintln!(
            "following the output of every running run and of runs that start (Ctrl-C to stop)"
        );
        tailer.follow_all(&store, opts.lines)
    } else {
        for (state, record) in resolved {
            tailer.add(&record, state == RunState::Running, Some(opts.lines))?;
        }
        tailer.follow_named(&store)
    }
}

/// One run being followed.
struct Followed {
    job: String,
    run_id: String,
    dir: PathBuf,
    file: Option<File>,
    /// Bytes of output already shown.
    pos: u64,
    /// Lines of earlier output to show first, once the file is open.
    backlog: Option<usize>,
    /// An incomplete last line (prefixed mode only).
    partial: Vec<u8>,
}

struct Tailer<'a, W: Write> {
    config: &'a Config,
    wake: Wake,
    followed: BTreeMap<String, Followed>,
    /// Every run id ever followed (so an ended run is not taken up again).
    seen: BTreeSet<String>,
    prefixed: bool,
    out: W,
}

impl<W: Write> Tailer<'_, W> {
    /// Named mode: until every followed run has ended.
    fn follow_named(&mut self, store: &Store) -> anyhow::Result<u8> {
        let db_dir = self.db_dir();
        while !self.followed.is_empty() {
            self.wake.watch(&db_dir);
            let ids: Vec<String> = self.followed.keys().cloned().collect();
            let running: BTreeSet<String> = store
                .running_runs_matching(&[], &ids)?
                .into_iter()
                .map(|r| r.run_id)
                .filter(|id| ids.contains(id))
                .collect();
            for id in ids {
                self.pump(&id)?;
                if !running.contains(&id) {
                    self.end(&id, store)?;
                }
            }
            if !self.followed.is_empty() {
                self.wake.wait(None);
            }
        }
        Ok(0)
    }

    /// All mode: forever (Ctrl-C ends it).
    fn follow_all(&mut self, store: &Store, lines: usize) -> anyhow::Result<u8> {
        let since = crate::time::now();
        let db_dir = self.db_dir();
        let mut first = true;
        loop {
            self.wake.watch(&db_dir);
            let running = store.running_runs_matching(&[], &[])?;
            let running_ids: BTreeSet<String> = running.iter().map(|r| r.run_id.clone()).collect();
            for r in &running {
                if !self.seen.contains(&r.run_id) {
                    self.add(r, true, first.then_some(lines))?;
                }
            }
            // Runs that started and ended between two looks.
            for job in self.config.jobs.keys() {
                for r in store.finished_runs(std::slice::from_ref(job), &[], Some(4))? {
                    if r.start_time >= since && !self.seen.contains(&r.run_id) {
                        self.add(&r, false, None)?;
                    }
                }
            }
            let ids: Vec<String> = self.followed.keys().cloned().collect();
            for id in ids {
                self.pump(&id)?;
                if !running_ids.contains(&id) {
                    self.end(&id, store)?;
                }
            }
            first = false;
            self.wake.wait(None);
        }
    }

    fn db_dir(&self) -> PathBuf {
        self.config
            .database_file
            .parent()
            .unwrap_or(Path::new("."))
            .to_path_buf()
    }

    /// Start following a run; `backlog` lines of what it already wrote first
    /// (`None`: all of it).
    fn add(&mut self, r: &RunRecord, running: bool, backlog: Option<usize>) -> anyhow::Result<()> {
        self.seen.insert(r.run_id.clone());
        let dir = crate::daemon::run_dir(self.config, &r.job_name, &r.run_id);
        if !running {
            // Finished already: its whole output, from whatever file holds it.
            return self.print_finished(r, &dir);
        }
        self.wake.watch(&dir);
        self.followed.insert(
            r.run_id.clone(),
            Followed {
                job: r.job_name.clone(),
                run_id: r.run_id.clone(),
                dir,
                file: None,
                pos: 0,
                backlog,
                partial: Vec::new(),
            },
        );
        Ok(())
    }

    fn print_finished(&mut self, r: &RunRecord, dir: &Path) -> anyhow::Result<()> {
        if let Some((_, mut reader)) = super::output::open_output(dir)? {
            let mut bytes = Vec::new();
            reader.read_to_end(&mut bytes)?;
            let prefix = self.prefix(&r.job_name, &r.run_id);
            let mut partial = Vec::new();
            emit(&mut self.out, prefix.as_deref(), &mut partial, &bytes)?;
            finish_partial(&mut self.out, prefix.as_deref(), &mut partial)?;
        }
        self.ended_note(r);
        Ok(())
    }

    fn prefix(&self, job: &str, run_id: &str) -> Option<String> {
        self.prefixed
            .then(|| format!("{job} {} | ", style::short_id(run_id)))
    }

    /// Show what a followed run wrote since last time.
    fn pump(&mut self, id: &str) -> anyhow::Result<()> {
        let prefix = match self.followed.get(id) {
            Some(f) => self.prefix(&f.job, &f.run_id),
            None => return Ok(()),
        };
        let Some(f) = self.followed.get_mut(id) else {
            return Ok(());
        };
        if f.file.is_none() {
            match File::open(f.dir.join(OUTPUT_FILE)) {
                Ok(file) => f.file = Some(file),
                Err(_) => return Ok(()), // not written yet
            }
        }
        let Some(file) = f.file.as_mut() else {
            return Ok(());
        };
        let len = file.metadata()?.len();
        if let Some(n) = f.backlog.take() {
            f.pos = last_lines_start(file, len, n)?;
        }
        if len < f.pos {
            f.pos = 0; // truncated
        }
        if len == f.pos {
            return Ok(());
        }
        file.seek(SeekFrom::Start(f.pos))?;
        let mut bytes = Vec::new();
        file.take(len - f.pos).read_to_end(&mut bytes)?;
        f.pos += bytes.len() as u64;
        emit(&mut self.out, prefix.as_deref(), &mut f.partial, &bytes)?;
        self.out.flush()?;
        Ok(())
    }

    /// A followed run left `runs_running`: show the rest, then let it go.
    fn end(&mut self, id: &str, store: &Store) -> anyhow::Result<()> {
        self.pump(id)?;
        let Some(mut f) = self.followed.remove(id) else {
            return Ok(());
        };
        let prefix = self.prefix(&f.job, &f.run_id);
        finish_partial(&mut self.out, prefix.as_deref(), &mut f.partial)?;
        self.out.flush()?;
        self.wake.unwatch(&f.dir);
        let record = store
            .runs_with_prefix(&f.run_id, 2)?
            .into_iter()
            .map(|(_, r)| r)
            .find(|r| r.run_id == f.run_id);
        match record {
            Some(r) => self.ended_note(&r),
            None => eprintln!("run {} of job {} ended", f.run_id, f.job),
        }
        Ok(())
    }

    fn ended_note(&self, r: &RunRecord) {
        let exit = r
            .exit_code
            .map(|c| format!("exit code {c}"))
            .unwrap_or_else(|| "no exit code recorded yet".into());
        eprintln!("run {} of job {} ended: {exit}", r.run_id, r.job_name);
    }
}

/// Write new bytes: as they are without a prefix; else complete lines with the
/// prefix, keeping an incomplete last line for later.
fn emit(
    out: &mut dyn Write,
    prefix: Option<&str>,
    partial: &mut Vec<u8>,
    bytes: &[u8],
) -> std::io::Result<()> {
    let Some(prefix) = prefix else {
        return out.write_all(bytes);
    };
    partial.extend_from_slice(bytes);
    let Some(last_nl) = partial.iter().rposition(|b| *b == b'\n') else {
        return Ok(());
    };
    let rest = partial.split_off(last_nl + 1);
    for line in partial.split_inclusive(|b| *b == b'\n') {
        out.write_all(prefix.as_bytes())?;
        out.write_all(line)?;
    }
    *partial = rest;
    Ok(())
}

/// An unfinished last line, ended with a newline so the next prefix starts a line.
fn finish_partial(
    out: &mut dyn Write,
    prefix: Option<&str>,
    partial: &mut Vec<u8>,
) -> std::io::Result<()> {
    if let Some(p) = prefix
        && !partial.is_empty()
    {
        out.write_all(p.as_bytes())?;
        out.write_all(partial)?;
        out.write_all(b"\n")?;
        partial.clear();
    }
    Ok(())
}

/// Offset where the last `n` lines of the first `len` bytes begin (a final
/// line without a newline counts as a line).
fn last_lines_start(file: &mut File, len: u64, n: usize) -> std::io::Result<u64> {
    if n == 0 {
        return Ok(len);
    }
    const CHUNK: u64 = 8192;
    let mut end = len;
    let mut newlines = 0usize;
    let mut buf = vec![0u8; CHUNK as usize];
    // A trailing newline ends the last line; it does not start another.
    let mut skip_last = true;
    while end > 0 {
        let start = end.saturating_sub(CHUNK);
        let size = (end - start) as usize;
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut buf[..size])?;
        for i in (0..size).rev() {
            if buf[i] != b'\n' {
                skip_last = false;
                continue;
            }
            if skip_last {
                skip_last = false;
                continue;
            }
            newlines += 1;
            if newlines == n {
                return Ok(start + i as u64 + 1);
            }
        }
        end = start;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixed_lines_wait_for_their_newline() {
        let mut out = Vec::new();
        let mut partial = Vec::new();
        emit(&mut out, Some("j 1 | "), &mut partial, b"a\nb").unwrap();
        emit(&mut out, Some("j 1 | "), &mut partial, b"c\nd").unwrap();
        finish_partial(&mut out, Some("j 1 | "), &mut partial).unwrap();
        assert_eq!(out, b"j 1 | a\nj 1 | bc\nj 1 | d\n");
    }

    #[test]
    fn last_lines_start_counts_from_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o");
        std::fs::write(&path, b"1\n2\n3\n").unwrap();
        let mut f = File::open(&path).unwrap();
        assert_eq!(last_lines_start(&mut f, 6, 2).unwrap(), 2);
        assert_eq!(last_lines_start(&mut f, 6, 10).unwrap(), 0);
        assert_eq!(last_lines_start(&mut f, 6, 0).unwrap(), 6);
        std::fs::write(&path, b"1\n2\n3").unwrap();
        assert_eq!(last_lines_start(&mut f, 5, 1).unwrap(), 4);
    }
}
