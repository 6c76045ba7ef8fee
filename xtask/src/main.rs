//! `cargo xtask`: project chores that need more than one cargo command.
//!
//! - `cargo xtask bench [log] [-- ARGS]`: run the benchmarks (release build) and
//!   print their Markdown tables; `--quick` for a short smoke run.
//! - `cargo xtask ci`: what CI runs (`.ci/run`): fmt check, clippy, tests.

use std::process::Command;

use anyhow::{Context, Result, bail};

const BENCHES: &[(&str, &str)] = &[("log", "proglog-log")];

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("bench") => bench(&args[1..]),
        Some("ci") => run("bash", &[".ci/run"]),
        _ => {
            eprintln!("usage: cargo xtask bench [log] [--quick] | cargo xtask ci");
            std::process::exit(2);
        }
    }
}

fn bench(args: &[String]) -> Result<()> {
    let (names, extra): (Vec<&String>, Vec<&String>) = args.iter().partition(|arg| !arg.starts_with('-'));
    let selected: Vec<&(&str, &str)> = if names.is_empty() {
        BENCHES.iter().collect()
    } else {
        names
            .iter()
            .map(|name| {
                BENCHES
                    .iter()
                    .find(|(bench, _)| bench == name)
                    .with_context(|| format!("unknown benchmark {name:?}; known: log"))
            })
            .collect::<Result<_>>()?
    };
    for (_, package) in selected {
        let mut cargo_args = vec!["bench", "--package", package, "--"];
        cargo_args.extend(extra.iter().map(|arg| arg.as_str()));
        run("cargo", &cargo_args)?;
    }
    Ok(())
}

fn run(program: &str, args: &[&str]) -> Result<()> {
    let status = Command::new(program).args(args).status().with_context(|| format!("running {program}"))?;
    if !status.success() {
        bail!("{program} {} failed: {status}", args.join(" "));
    }
    Ok(())
}
