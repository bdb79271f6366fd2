//! Streaming `--leaks` (issue 10): against the leaks fixture, which knows which of its
//! goroutines are leaked, with a short `--leak-interval`:
//! - every case gets its verdict (from its `blocked` record, or, when that came before an
//!   analysis saw it, from its group's records), exactly the fixture's truth;
//! - a goroutine that becomes leaked later, in the same park (the fixture drops the only
//!   reference to its channel), and one that starts leaked later, get `leaked` at a later
//!   analysis, and the summaries count them;
//! - the text format says LEAKED;
//! - a bad `--leak-interval` is a one-line refusal.
//!
//! Needs root and a built ctxprobe.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use ctxprobe_tests::compare::goid;
use ctxprobe_tests::fixture::Fixture;
use ctxprobe_tests::probe::{args, run_ctxprobe, RunningProbe};
use ctxprobe_tests::scaled;
use ctxprobe_tests::scenario::{
    check_all_records, ensure_clean_refusal, ensure_success, preconditions,
};
use ctxprobe_tests::toolchain::{BuildMode, Toolchain, LATEST_GO};
use serde_json::Value;

/// Generous under load: analyses run every 2 s, and each verdict needs one or two of them;
/// stretched under emulation, where each analysis costs more and the budget spaces them out.
fn verdict_timeout() -> Duration {
    scaled(Duration::from_secs(40))
}

fn stream_args(pid: u32, extra: &[&str]) -> Vec<String> {
    let mut a = vec![
        "--leaks",
        "--leak-interval",
        "2s",
        "--threshold",
        "1s",
        "--summary-interval",
        "2s",
        "--mode",
        "poll",
    ];
    a.extend_from_slice(extra);
    args(pid, &a)
}

/// What the records said so far of each goroutine: its verdict, from its `blocked` record or
/// its group's latest record (when every member of the group has a verdict).
#[derive(Default)]
struct Verdicts {
    by_goid: HashMap<u64, bool>,
}

impl Verdicts {
    fn take(&mut self, r: &Value) {
        match r["type"].as_str() {
            Some("blocked") => {
                if let (Some(g), Some(v)) = (goid(r), r["leaked"].as_bool()) {
                    self.by_goid.insert(g, v);
                }
            }
            Some("group") => {
                let leaked: HashSet<u64> = r["leaked_goids"]
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_u64).collect())
                    .unwrap_or_default();
                for g in r["sample_goids"].as_array().into_iter().flatten() {
                    let Some(g) = g.as_u64() else { continue };
                    if leaked.contains(&g) {
                        self.by_goid.insert(g, true);
                    } else if r["leak_analysed"] == r["goroutines"] && r["leaked"] == 0 {
                        self.by_goid.insert(g, false);
                    }
                }
            }
            _ => {}
        }
    }
}

/// Waits until `pred` holds of the verdicts, feeding them every record that arrives.
fn wait_verdicts(
    probe: &mut RunningProbe,
    verdicts: &mut Verdicts,
    what: &str,
    mut pred: impl FnMut(&Verdicts) -> bool,
) -> Result<()> {
    let timeout = verdict_timeout();
    let deadline = Instant::now() + timeout;
    while !pred(verdicts) {
        let left = deadline.saturating_duration_since(Instant::now());
        ensure!(!left.is_zero(), "no {what} within {timeout:?}");
        let line = probe.wait_for(what, left, |r| {
            matches!(r["type"].as_str(), Some("blocked" | "group"))
        })?;
        if let Some(r) = &line.json {
            verdicts.take(r);
        }
    }
    Ok(())
}

#[test]
fn streaming_leak_verdicts_match_fixture_truth_and_follow_new_leaks() {
    preconditions().expect("preconditions");
    let tc = Toolchain::find(LATEST_GO).expect("toolchain");
    let mode = BuildMode::named("default").expect("build mode");
    let mut fixture = Fixture::build_and_start("leaks", &tc, &mode, &[]).expect("fixture");
    if let Err(e) = check_stream(&mut fixture) {
        panic!("{e:#}");
    }
}

fn check_stream(fixture: &mut Fixture) -> Result<()> {
    let pid = fixture.pid();
    let cases: Vec<(String, u64, bool)> = fixture.ready["cases"]
        .as_array()
        .context("ready line without cases")?
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap_or("?").to_string(),
                c["goid"].as_u64().unwrap_or(0),
                c["leaked"] == true,
            )
        })
        .collect();
    ensure!(cases.len() >= 10, "fixture reported {} cases", cases.len());
    let droppable = fixture.ready["droppable"]
        .as_u64()
        .context("ready line without droppable")?;
    let truth_leaked = cases.iter().filter(|c| c.2).count() as u64;

    let mut probe = RunningProbe::spawn(&stream_args(pid, &["--samples-per-group", "10"]))?;
    let mut verdicts = Verdicts::default();
    let result = (|| -> Result<()> {
        // Every case gets its verdict, and the droppable one is not leaked yet.
        wait_verdicts(&mut probe, &mut verdicts, "every case's verdict", |v| {
            cases.iter().all(|c| v.by_goid.contains_key(&c.1)) && v.by_goid.contains_key(&droppable)
        })?;
        let mut wrong = Vec::new();
        for (name, g, truth) in &cases {
            if verdicts.by_goid.get(g) != Some(truth) {
                wrong.push(format!(
                    "{name} (goroutine {g}): leaked {:?}, truth {truth}",
                    verdicts.by_goid.get(g)
                ));
            }
        }
        ensure!(wrong.is_empty(), "{}", wrong.join("\n"));
        ensure!(
            verdicts.by_goid.get(&droppable) == Some(&false),
            "the droppable goroutine is called leaked while a global holds its channel"
        );
        probe.wait_for(
            "a summary counting the leaked cases",
            verdict_timeout(),
            |r| r["type"] == "summary" && r["leaked"] == truth_leaked,
        )?;

        // Leaks after start: the droppable goroutine in the same park, and a new goroutine.
        fixture.process.send_line("drop")?;
        fixture
            .process
            .wait_json("dropped", Duration::from_secs(10), |v| v["dropped"] == true)?;
        fixture.process.send_line("leak")?;
        let new_leak = fixture
            .process
            .wait_json("leaked_goid", Duration::from_secs(10), |v| {
                v["leaked_goid"].is_u64()
            })?
            .json
            .and_then(|v| v["leaked_goid"].as_u64())
            .context("no goid")?;
        wait_verdicts(
            &mut probe,
            &mut verdicts,
            "the later leaks' verdicts",
            |v| v.by_goid.get(&droppable) == Some(&true) && v.by_goid.get(&new_leak) == Some(&true),
        )?;
        probe.wait_for(
            "a summary counting the later leaks",
            verdict_timeout(),
            |r| r["type"] == "summary" && r["leaked"] == truth_leaked + 2,
        )?;
        Ok(())
    })();
    probe.process.signal(libc::SIGTERM)?;
    let out = probe.finish(Duration::from_secs(20))?;
    result.with_context(|| out.describe())?;
    ensure_success(&out)?;
    let records = check_all_records(&out, pid)?;

    // Later analyses say what is new, and every blocked record has the field.
    let analyses: Vec<&Value> = records
        .iter()
        .filter(|r| r["type"] == "leak_analysis")
        .collect();
    ensure!(
        analyses.len() >= 2,
        "{} leak_analysis records",
        analyses.len()
    );
    ensure!(
        analyses.iter().all(|a| a["error"].is_null()),
        "an analysis failed: {}",
        out.describe()
    );
    ensure!(
        analyses[0]["analysis"] == 1 && analyses[0]["newly_leaked"].as_u64() >= Some(truth_leaked),
        "first analysis: {}",
        analyses[0]
    );
    let newly: u64 = analyses[1..]
        .iter()
        .filter_map(|a| a["newly_leaked"].as_u64())
        .sum();
    ensure!(newly >= 2, "later analyses found {newly} new leaks, want 2");
    for r in records.iter().filter(|r| r["type"] == "blocked") {
        let Some(v) = r.get("leaked") else {
            bail!("a blocked record without leaked: {r}");
        };
        if r["wait_reason"] == "sleep" && !v.is_null() {
            bail!("a sleeping goroutine has a verdict: {r}");
        }
    }
    Ok(())
}

#[test]
fn streaming_text_says_leaked() {
    preconditions().expect("preconditions");
    let tc = Toolchain::find(LATEST_GO).expect("toolchain");
    let mode = BuildMode::named("default").expect("build mode");
    let fixture = Fixture::build_and_start("leaks", &tc, &mode, &[]).expect("fixture");
    // The first analysis and the records after it must fit in the duration: stretched.
    let duration = format!("{}ms", scaled(Duration::from_secs(8)).as_millis());
    let out = run_ctxprobe(
        &stream_args(
            fixture.pid(),
            &["--format", "text", "--duration", &duration],
        ),
        scaled(Duration::from_secs(40)),
    )
    .expect("ctxprobe");
    ensure_success(&out).expect("exit 0");
    let text: Vec<&str> = out.lines.iter().map(|l| l.text.as_str()).collect();
    let text = text.join("\n");
    for want in [
        "LEAKED goroutine ",
        "LEAKED 1 goroutines [",
        "leak analysis #1: ",
    ] {
        assert!(text.contains(want), "no {want:?} in:\n{text}");
    }
}

#[test]
fn a_bad_leak_interval_is_refused_in_one_line() {
    preconditions().expect("preconditions");
    let me = std::process::id();
    let mut failures = Vec::new();
    for bad in [
        &["--leaks", "--leak-interval", "0s"][..],
        &["--leaks", "--leak-interval", "-5s"],
        &["--leaks", "--leak-interval", "often"],
        // Only with streaming --leaks.
        &["--leak-interval", "5s"],
        &["--once", "--leaks", "--leak-interval", "5s"],
    ] {
        let r = run_ctxprobe(&args(me, bad), Duration::from_secs(20)).and_then(|out| {
            ensure_clean_refusal(&out, &format!("{bad:?}"))?;
            ensure!(out.status.code() == Some(2), "{bad:?}: {}", out.describe());
            Ok(())
        });
        if let Err(e) = r {
            failures.push(format!("{e:#}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
