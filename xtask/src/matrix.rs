//! `cargo xtask matrix`: runs the goroutine integration tests (`agent_once`, `agent_stream`) for
//! every cell of the Go version × build mode matrix (issue 3) and prints a pass/fail table.
//! Each cell's full test output goes to `target/matrix/<version>-<mode>.log`.

use std::fs;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::workspace_root;

const ALL_GO: &[&str] = &[
    "1.19", "1.21", "1.22", "1.23", "1.24", "1.25", "1.26", "1.27",
];
const ALL_BUILDS: &[&str] = &["default", "stripped", "pie", "stripped-pie", "cgo"];
const TESTS: &[&str] = &["agent_once", "agent_stream"];

const USAGE: &str = "usage: cargo xtask matrix [--go 1.19,1.27] [--build stripped,pie] [--cells 1.19:stripped,1.27:pie]
  Runs the agent_once and agent_stream integration tests per (Go version, build mode) cell and
  prints a table. Defaults: every version (1.19, 1.21..1.27) × every build mode (default,
  stripped, pie, stripped-pie, cgo). Needs root, scripts/setup.sh --all-go, and a release build
  of ctxprobe (CTXPROBE_BIN or target/release/ctxprobe).";

pub fn run(args: &[String]) -> Result<()> {
    let mut versions: Vec<String> = ALL_GO.iter().map(|s| s.to_string()).collect();
    let mut builds: Vec<String> = ALL_BUILDS.iter().map(|s| s.to_string()).collect();
    let mut cells: Option<Vec<(String, String)>> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut list = || -> Result<Vec<String>> {
            let v = it
                .next()
                .with_context(|| format!("{a} needs a value\n{USAGE}"))?;
            Ok(v.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect())
        };
        match a.as_str() {
            "--go" => versions = list()?,
            "--build" => builds = list()?,
            "--cells" => {
                let mut out = Vec::new();
                for c in list()? {
                    let (v, b) = c
                        .split_once(':')
                        .with_context(|| format!("cell {c:?} is not VERSION:BUILD"))?;
                    out.push((v.to_string(), b.to_string()));
                }
                cells = Some(out);
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    let cells = cells.unwrap_or_else(|| {
        versions
            .iter()
            .flat_map(|v| builds.iter().map(move |b| (v.clone(), b.clone())))
            .collect()
    });

    let root = workspace_root();
    let log_dir = root.join("target/matrix");
    fs::create_dir_all(&log_dir)?;
    // Build the test binaries once, outside the per-cell timing.
    let status = cargo_test(&root, &["--no-run"])
        .status()
        .context("cannot run cargo")?;
    if !status.success() {
        bail!("building the integration tests failed");
    }

    let mut results = Vec::new();
    for (v, b) in &cells {
        let started = Instant::now();
        let out = cargo_test(&root, &[])
            .env("CTXPROBE_TEST_GO", v)
            .env("CTXPROBE_TEST_BUILD", b)
            .output()
            .context("cannot run cargo")?;
        let secs = started.elapsed().as_secs_f64();
        let log = log_dir.join(format!("{v}-{b}.log"));
        let mut text = out.stdout.clone();
        text.extend_from_slice(&out.stderr);
        fs::write(&log, &text)?;
        let ok = out.status.success();
        eprintln!(
            "matrix: Go {v} {b}: {} ({secs:.0}s)",
            if ok { "pass" } else { "FAIL" }
        );
        if !ok {
            // CI keeps only the console: show why the cell failed, not just that it did.
            print_failure_excerpt(&String::from_utf8_lossy(&text));
        }
        results.push((v.clone(), b.clone(), ok, secs));
    }

    print_table(&results);
    let passed = results.iter().filter(|r| r.2).count();
    println!("matrix: {passed} passed, {} failed", results.len() - passed);
    let failed: Vec<String> = results
        .iter()
        .filter(|r| !r.2)
        .map(|r| format!("{}:{}", r.0, r.1))
        .collect();
    if !failed.is_empty() {
        bail!(
            "failed cells: {} (logs in {})",
            failed.join(" "),
            log_dir.display()
        );
    }
    Ok(())
}

/// The failing tests' panics and stdout (libtest's "---- name stdout ----" sections), capped.
fn print_failure_excerpt(log: &str) {
    const MAX_LINES: usize = 120;
    let mut shown = 0;
    let mut inside = false;
    for line in log.lines() {
        if line.starts_with("---- ") {
            inside = true;
        } else if line.starts_with("failures:") || line.starts_with("test result:") {
            inside = false;
        }
        if inside || line.contains("FAILED") || line.contains("panicked") {
            eprintln!("    | {line}");
            shown += 1;
            if shown >= MAX_LINES {
                eprintln!("    | (more in the cell's log)");
                return;
            }
        }
    }
}

fn cargo_test(root: &std::path::Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root)
        .args(["test", "--release", "--locked", "-p", "ctxprobe-tests"]);
    for t in TESTS {
        cmd.args(["--test", t]);
    }
    cmd.args(extra);
    cmd
}

fn print_table(results: &[(String, String, bool, f64)]) {
    let mut versions: Vec<&str> = Vec::new();
    let mut builds: Vec<&str> = Vec::new();
    for (v, b, _, _) in results {
        if !versions.contains(&v.as_str()) {
            versions.push(v);
        }
        if !builds.contains(&b.as_str()) {
            builds.push(b);
        }
    }
    let mut header = String::from("| Go |");
    let mut rule = String::from("|---|");
    for b in &builds {
        header.push_str(&format!(" {b} |"));
        rule.push_str("---|");
    }
    println!("{header}\n{rule}");
    for v in &versions {
        let mut row = format!("| {v} |");
        for b in &builds {
            let cell = results.iter().find(|r| r.0 == *v && r.1 == *b);
            row.push_str(match cell {
                Some((_, _, true, _)) => " pass |",
                Some((_, _, false, _)) => " **FAIL** |",
                None => " – |",
            });
        }
        println!("{row}");
    }
}
