//! `dsari config check` and `dsari config dump`: the configuration as dsari reads it.

use std::io::Write;
use std::path::Path;

use crate::config;

use super::Flavor;

/// `config dump --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DumpFormat {
    Json,
    Yaml,
}

/// Validate: every warning and error on stderr; exit status 0 when valid, 1 otherwise.
/// The Python `dsari-info config check` printed `Config OK`; that flavour does too.
pub fn check(dir: &Path, flavor: Flavor) -> anyhow::Result<u8> {
    match config::load(dir) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                eprintln!("warning: {w}");
            }
            let mut out = std::io::stdout().lock();
            match flavor {
                Flavor::PythonInfo => writeln!(out, "Config OK")?,
                Flavor::Dsari => writeln!(
                    out,
                    "{}: configuration is valid ({} jobs)",
                    dir.display(),
                    loaded.config.jobs.len()
                )?,
            }
            Ok(0)
        }
        Err(e) => {
            print_errors(&e);
            Ok(1)
        }
    }
}

/// Print the normalised configuration (or, with `raw`, the merged files as read).
pub fn dump(dir: &Path, raw: bool, format: DumpFormat) -> anyhow::Result<u8> {
    let loaded = match config::load(dir) {
        Ok(l) => l,
        Err(e) => {
            print_errors(&e);
            return Ok(1);
        }
    };
    let value = if raw {
        loaded.config.raw.clone()
    } else {
        loaded.config.to_json()
    };
    let mut out = std::io::stdout().lock();
    match format {
        DumpFormat::Json => super::write_json(&mut out, &value)?,
        DumpFormat::Yaml => super::write_yaml(&mut out, &value)?,
    }
    Ok(0)
}

fn print_errors(e: &config::ConfigError) {
    for w in &e.warnings {
        eprintln!("warning: {w}");
    }
    for line in &e.errors {
        eprintln!("error: {line}");
    }
}
