//! Helpers shared by the benchmarks of this workspace (included by path from
//! `proglog-server`'s benches and the root package's `client` bench too): the
//! command line, medians, human-readable rates.

#![allow(dead_code)] // each bench uses its own subset

use std::path::Path;
use std::time::Duration;

/// How the bench was invoked.
#[derive(Clone, Copy, Debug)]
pub struct Invocation {
    /// `--bench` was given (`cargo bench`); without it (`cargo test --all-targets`)
    /// a bench only does a tiny smoke run.
    pub bench: bool,
    /// `--quick` or `PROGLOG_BENCH_QUICK` (not empty, not `0`).
    pub quick: bool,
}

impl Invocation {
    /// Reads the arguments (noting those it ignores) and `PROGLOG_BENCH_QUICK`.
    pub fn from_args() -> Self {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let bench = args.iter().any(|arg| arg == "--bench");
        let quick = args.iter().any(|arg| arg == "--quick")
            || std::env::var("PROGLOG_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
        for arg in args.iter().filter(|arg| !matches!(arg.as_str(), "--bench" | "--quick")) {
            eprintln!("note: ignoring argument {arg:?}");
        }
        Self { bench, quick }
    }
}

/// (median, min, max)
pub fn stats(values: &[f64]) -> (f64, f64, f64) {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.as_slice() {
        [] => (f64::NAN, f64::NAN, f64::NAN),
        [.., last] => (sorted[sorted.len() / 2], sorted[0], *last),
    }
}

pub fn human(rate: f64) -> String {
    if rate >= 1e6 {
        format!("{:.2}M", rate / 1e6)
    } else if rate >= 1e3 {
        format!("{:.1}k", rate / 1e3)
    } else {
        format!("{rate:.0}")
    }
}

pub fn spread(values: &[f64]) -> String {
    let (median, min, max) = stats(values);
    if values.len() > 1 {
        format!("{} [{}..{}]", human(median), human(min), human(max))
    } else {
        human(median)
    }
}

pub fn mb_per_s(values: &[f64], size: usize) -> String {
    let mb = stats(values).0 * size as f64 / 1e6;
    if mb >= 100.0 { format!("{mb:.0}") } else { format!("{mb:.1}") }
}

pub fn rate(records: u64, elapsed: Duration) -> f64 {
    records as f64 / elapsed.as_secs_f64()
}

/// Type and device of the filesystem holding `path`, from /proc/mounts.
pub fn filesystem_of(path: &Path) -> Option<String> {
    let path = path.canonicalize().ok()?;
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (device, mount_point, fs_type) = (fields.next()?, fields.next()?, fields.next()?);
            path.starts_with(mount_point).then(|| (mount_point.len(), format!("{fs_type} on {device}")))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, fs)| fs)
}

/// xorshift64: deterministic, dependency-free.
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// A fresh temp dir under `base` whose name starts with `prefix`.
pub fn tempdir_in(base: &Path, prefix: &str) -> anyhow::Result<tempfile::TempDir> {
    use anyhow::Context;
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(base)
        .with_context(|| format!("creating a temp dir in {}", base.display()))
}
