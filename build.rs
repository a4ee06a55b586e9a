//! Link the `dsari` binary as a position-dependent executable (`-no-pie`).
//!
//! A PIE binary of this size carries ~40,000 relative relocations that the
//! dynamic loader applies at every start, writing to (and so privately copying)
//! about 1.2 MB of `.data.rel.ro` in every process: the daemon, the launcher and
//! every command-line call. Linked without PIE, those pages stay shared and
//! clean: idle daemon RSS 9.4 -> 7.6 MB, a `dsari` start 450 -> 150 page faults
//! (docs/performance.md). The price is that the executable itself is not placed
//! at a random address (libraries, stack and heap still are). Build with
//! `DSARI_PIE=1` to keep PIE.
fn main() {
    println!("cargo:rerun-if-env-changed=DSARI_PIE");
    let linux = std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux");
    let pie = std::env::var_os("DSARI_PIE").is_some_and(|v| !v.is_empty() && v != "0");
    if linux && !pie {
        println!("cargo:rustc-link-arg-bins=-no-pie");
    }
}
