//! Leak verdicts (issue 10): `ctxprobe --once --leaks` against
//! - the leaks fixture, which knows which of its goroutines are leaked, on Go 1.19, 1.21 and the
//!   newest release, plain and stripped (and stripped PIE), and 1.25: exactly its truth;
//! - the GoKer programs Go 1.27 ships for its own goroutine leak profile
//!   (`src/runtime/testdata/testgoroutineleakprofile`), each analysed by ctxprobe first and then
//!   made to take its own profile: recall ≥ 0.95 and precision ≥ 0.99 against the runtime's
//!   leaked set.
//!
//! Needs root and a built ctxprobe.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use ctxprobe_tests::compare::goid;
use ctxprobe_tests::fixture::Fixture;
use ctxprobe_tests::gobuild::go_env;
use ctxprobe_tests::probe::{args, run_ctxprobe};
use ctxprobe_tests::scenario::{check_all_records, ensure_success, preconditions};
use ctxprobe_tests::toolchain::{BuildMode, Toolchain, LATEST_GO};
use serde_json::Value;

#[test]
fn leak_verdicts_match_fixture_truth() {
    let mut failures = Vec::new();
    let mut cells: Vec<(&str, &str)> = Vec::new();
    for v in ["1.19", "1.21", LATEST_GO] {
        for m in ["default", "stripped"] {
            cells.push((v, m));
        }
    }
    cells.push((LATEST_GO, "stripped-pie"));
    // Every other release, where no runtime leak profile exists to compare with: the same
    // verdicts as 1.27's. 1.25 is the last whose Cond waits are found from the waiter's stack
    // (1.26 records them in g.waiting).
    for v in ["1.22", "1.23", "1.24", "1.25", "1.26"] {
        cells.push((v, "default"));
    }
    for (v, m) in cells {
        let r = preconditions().and_then(|()| {
            let tc = Toolchain::find(v)?;
            check_fixture(&tc, &BuildMode::named(m)?)
        });
        if let Err(e) = r {
            failures.push(format!("[Go {v} {m}] {e:#}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn check_fixture(tc: &Toolchain, mode: &BuildMode) -> Result<()> {
    let fixture = Fixture::build_and_start("leaks", tc, mode, &[])?;
    let out = run_ctxprobe(
        &args(fixture.pid(), &["--once", "--leaks"]),
        Duration::from_secs(60),
    )?;
    ensure_success(&out)?;
    let records = check_all_records(&out, fixture.pid())?;
    let analysis = records
        .iter()
        .find(|r| r["type"] == "leak_analysis")
        .context("no leak_analysis record")?;
    ensure!(
        analysis["error"].is_null(),
        "analysis failed: {}",
        analysis["error"]
    );
    // Every frame of the fixture's idle goroutines has stack maps, stripped and PIE too.
    ensure!(
        analysis["stack_frames_precise"].as_u64().unwrap_or(0) > 20
            && analysis["stack_frames_conservative"] == 0,
        "stacks not scanned precisely: {analysis}"
    );
    let cases = fixture.ready["cases"]
        .as_array()
        .context("ready line without cases")?;
    ensure!(cases.len() >= 10, "fixture reported {} cases", cases.len());
    let mut problems = Vec::new();
    for case in cases {
        let name = case["name"].as_str().unwrap_or("?");
        let Some(r) = records
            .iter()
            .find(|r| r["type"] == "goroutine" && goid(r) == case["goid"].as_u64())
        else {
            problems.push(format!("{name}: goroutine {} not reported", case["goid"]));
            continue;
        };
        if r["leaked"] != case["leaked"] {
            problems.push(format!(
                "{name}: leaked {} where the truth is {}\n    record: {r}",
                r["leaked"], case["leaked"]
            ));
        }
    }
    // Goroutines that are not blocked on a channel, select or sync primitive are not analysed.
    for r in records.iter().filter(|r| r["type"] == "goroutine") {
        if r["state"] != "waiting" && !r["leaked"].is_null() {
            problems.push(format!("a {} goroutine has a verdict: {r}", r["state"]));
        }
    }
    // Groups count their leaked members.
    let grouped = run_ctxprobe(
        &args(fixture.pid(), &["--once", "--grouped", "--leaks"]),
        Duration::from_secs(60),
    )?;
    ensure_success(&grouped)?;
    let leaked_in_groups: u64 = check_all_records(&grouped, fixture.pid())?
        .iter()
        .filter(|r| r["type"] == "group")
        .map(|r| r["leaked"].as_u64().unwrap_or(0))
        .sum();
    let truth = cases.iter().filter(|c| c["leaked"] == true).count() as u64;
    if leaked_in_groups != truth {
        problems.push(format!(
            "groups count {leaked_in_groups} leaked members, the fixture {truth}"
        ));
    }
    if !problems.is_empty() {
        bail!("{}", problems.join("\n"));
    }
    Ok(())
}

/// A GoKer program has settled (its goroutines reached their final parks) once it used no CPU
/// for this long after saying it is about to take its profile; waited for at most SETTLE_MAX.
const SETTLE_IDLE: Duration = Duration::from_millis(300);
const SETTLE_MAX: Duration = Duration::from_secs(20);

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Waits until the process used no CPU for SETTLE_IDLE (or SETTLE_MAX passed).
fn wait_settled(pid: u32) {
    let start = Instant::now();
    let mut last = cpu_ticks(pid);
    let mut idle_since = Instant::now();
    while start.elapsed() < SETTLE_MAX {
        std::thread::sleep(Duration::from_millis(50));
        let now = cpu_ticks(pid);
        if now != last {
            last = now;
            idle_since = Instant::now();
        } else if idle_since.elapsed() >= SETTLE_IDLE {
            return;
        }
    }
}

#[test]
fn goker_verdicts_match_the_runtime_leak_profile() {
    preconditions().expect("preconditions");
    let tc = Toolchain::find(LATEST_GO).expect("toolchain");
    let dir = std::env::temp_dir().join(format!("ctxprobe-goker-{}", std::process::id()));
    let mut total = Tally::default();
    let mut lines = Vec::new();
    for sub in ["", "goker"] {
        let (bin, names) = build_leak_programs(&tc, &dir, sub).expect("build");
        for name in names {
            match run_one(&bin, &name) {
                Ok(t) => {
                    if t.fp + t.fn_ > 0 {
                        lines.push(format!(
                            "{name}: {} TP, {} FP, {} FN ({})",
                            t.tp, t.fp, t.fn_, t.note
                        ));
                    }
                    total.add(&t);
                }
                Err(e) => lines.push(format!("{name}: not measured: {e:#}")),
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let precision = total.tp as f64 / (total.tp + total.fp).max(1) as f64;
    let recall = total.tp as f64 / (total.tp + total.fn_).max(1) as f64;
    eprintln!(
        "GoKer: TP {} FP {} FN {}: precision {precision:.4}, recall {recall:.4}\n{}",
        total.tp,
        total.fp,
        total.fn_,
        lines.join("\n")
    );
    assert!(total.tp > 1000, "too few leaks measured: {}", total.tp);
    assert!(
        precision >= 0.99,
        "precision {precision:.4}\n{}",
        lines.join("\n")
    );
    assert!(recall >= 0.95, "recall {recall:.4}\n{}", lines.join("\n"));
}

#[derive(Default)]
struct Tally {
    tp: u64,
    fp: u64,
    fn_: u64,
    /// What the analysis said of itself (unstable, unresolved counts).
    note: String,
}

impl Tally {
    fn add(&mut self, o: &Tally) {
        self.tp += o.tp;
        self.fp += o.fp;
        self.fn_ += o.fn_;
    }
}

/// The program's source patched so it waits for a line on stdin (after announcing it on
/// stderr) before it takes its own leak profile: ctxprobe's analysis comes first.
const HOOK: &str = r#"package main

import (
	"bufio"
	"os"
)

func ctxprobeWait() {
	os.Stderr.WriteString("CTXPROBE_READY\n")
	bufio.NewReader(os.Stdin).ReadString('\n')
}
"#;

/// Copies Go's `testgoroutineleakprofile/<sub>`, patches and builds it; returns the binary and
/// its registered test names.
fn build_leak_programs(tc: &Toolchain, dir: &Path, sub: &str) -> Result<(PathBuf, Vec<String>)> {
    let goroot = Command::new(&tc.go)
        .args(["env", "GOROOT"])
        .env("GOTOOLCHAIN", "local")
        .output()
        .context("go env GOROOT")?;
    let goroot = PathBuf::from(String::from_utf8_lossy(&goroot.stdout).trim());
    let src = goroot
        .join("src/runtime/testdata/testgoroutineleakprofile")
        .join(sub);
    let out = dir.join(if sub.is_empty() { "simple" } else { sub });
    std::fs::create_dir_all(&out)?;
    let register = regex_lite_names();
    let mut names = Vec::new();
    for e in std::fs::read_dir(&src).with_context(|| format!("reading {}", src.display()))? {
        let path = e?.path();
        if path.extension().and_then(|x| x.to_str()) != Some("go") {
            continue;
        }
        let text = std::fs::read_to_string(&path)?;
        names.extend(register(&text));
        let patched = text.replace(
            "prof.WriteTo(os.Stdout, 2)",
            "ctxprobeWait(); prof.WriteTo(os.Stdout, 2)",
        );
        std::fs::write(out.join(path.file_name().context("file name")?), patched)?;
    }
    std::fs::write(out.join("ctxprobe_hook.go"), HOOK)?;
    std::fs::write(out.join("go.mod"), "module testprog\n\ngo 1.27\n")?;
    let bin = out.join("prog");
    let mut cmd = Command::new(&tc.go);
    cmd.args(["build", "-o"])
        .arg(&bin)
        .arg(".")
        .current_dir(&out);
    go_env(&mut cmd, &BuildMode::default_build());
    let built = cmd.output().context("go build")?;
    ensure!(
        built.status.success(),
        "go build: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    names.sort();
    Ok((bin, names))
}

/// `register("Name", ...)` calls of a source file.
fn regex_lite_names() -> impl Fn(&str) -> Vec<String> {
    |text: &str| {
        text.match_indices("register(\"")
            .filter_map(|(i, m)| {
                let rest = &text[i + m.len()..];
                rest.find('"').map(|end| rest[..end].to_string())
            })
            .collect()
    }
}

/// Runs one program: ctxprobe's verdicts, then the runtime's profile, compared by goid.
fn run_one(bin: &Path, name: &str) -> Result<Tally> {
    let mut child = Command::new(bin)
        .arg(name)
        .env("GODEBUG", "asyncpreemptoff=1")
        .env("GOMAXPROCS", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting the program")?;
    let result = (|| {
        let stderr = child.stderr.take().context("stderr")?;
        let mut lines = BufReader::new(stderr).lines();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match lines.next() {
                Some(Ok(l)) if l.contains("CTXPROBE_READY") => break,
                Some(_) if Instant::now() < deadline => {}
                _ => bail!("the program never got ready"),
            }
        }
        wait_settled(child.id());
        let out = run_ctxprobe(
            &args(child.id(), &["--once", "--leaks"]),
            Duration::from_secs(120),
        )?;
        ensure_success(&out)?;
        let records = out.records()?;
        let note = records
            .iter()
            .find(|r| r["type"] == "leak_analysis")
            .map(|r| {
                format!(
                    "unstable {}, unresolved {}, error {}",
                    r["unstable"], r["unresolved"], r["error"]
                )
            })
            .unwrap_or_else(|| "no leak_analysis record".into());
        let ours: std::collections::HashSet<u64> = records
            .iter()
            .filter(|r| r["type"] == "goroutine" && r["leaked"] == Value::Bool(true))
            .filter_map(goid)
            .collect();
        let mut stdin = child.stdin.take().context("stdin")?;
        stdin.write_all(b"\n")?;
        drop(stdin);
        let mut profile = String::new();
        std::io::Read::read_to_string(child.stdout.as_mut().context("stdout")?, &mut profile)?;
        let theirs = runtime_leaked(&profile);
        ensure!(!profile.is_empty(), "no profile");
        Ok(Tally {
            tp: ours.intersection(&theirs).count() as u64,
            fp: ours.difference(&theirs).count() as u64,
            fn_: theirs.difference(&ours).count() as u64,
            note,
        })
    })();
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// Goids of `goroutine N [... (leaked)]:` headers of a leak profile (debug=2).
fn runtime_leaked(profile: &str) -> std::collections::HashSet<u64> {
    profile
        .lines()
        .filter(|l| l.starts_with("goroutine ") && l.contains("(leaked)]"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
        .collect()
}
