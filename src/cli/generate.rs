//! `dsari completions SHELL` and `dsari manpages DIR`: shell completion scripts
//! and man pages generated from the command line's own definitions, so they
//! never disagree with it.

use std::io::Write;
use std::path::Path;

use anyhow::Context as _;
use clap::Command;

/// Write the completion script for `shell` to stdout.
pub fn completions(mut cmd: Command, shell: clap_complete::Shell) -> anyhow::Result<u8> {
    let name = cmd.get_name().to_string();
    // Into a buffer first: clap_complete panics on a failed write (`| head`).
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, name, &mut script);
    let mut out = std::io::stdout().lock();
    out.write_all(&script)?;
    out.flush()?;
    Ok(0)
}

/// Write one man page per command and visible subcommand into `dir`:
/// `dsari.1`, `dsari-run.1`, `dsari-run-list.1`, … Prints each file written.
pub fn manpages(cmd: Command, dir: &Path) -> anyhow::Result<u8> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut cmd = cmd;
    cmd.build();
    let mut written = Vec::new();
    write_pages(&cmd, cmd.get_name(), dir, &mut written)?;
    let mut out = std::io::stdout().lock();
    for path in written {
        writeln!(out, "{}", path.display())?;
    }
    Ok(0)
}

fn write_pages(
    cmd: &Command,
    name: &str,
    dir: &Path,
    written: &mut Vec<std::path::PathBuf>,
) -> anyhow::Result<()> {
    // clap names are `&'static str` without its `string` feature; a handful of
    // short strings leaked once in a command that exits right after is fine.
    let static_name: &'static str = Box::leak(name.to_string().into_boxed_str());
    let page = cmd.clone().name(static_name);
    let path = dir.join(format!("{name}.1"));
    let mut bytes = Vec::new();
    clap_mangen::Man::new(page).render(&mut bytes)?;
    std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
    written.push(path);
    for sub in cmd.get_subcommands() {
        if sub.is_hide_set() || sub.get_name() == "help" {
            continue;
        }
        write_pages(sub, &format!("{name}-{}", sub.get_name()), dir, written)?;
    }
    Ok(())
}
