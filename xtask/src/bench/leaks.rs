//! `cargo xtask bench --only leaks`: what `--once --leaks` costs on heaps of about 80 MiB,
//! 800 MiB and 4 GiB (Go's HeapAlloc: fixtures/leakheap's `-mib` counts 80 bytes an object, which
//! take 64; pointer-linked objects and 1,000 leaked goroutines): the
//! analysis's wall time (its own record), ctxprobe's CPU time and peak RSS (wait4's rusage),
//! and whether it found the leaks. The target is never stopped. Then the same at a million
//! goroutines parked on one channel (fixtures/many), with
//! `--once --leaks` and streaming `--leaks` (what the analyses cost, whether the budget
//! stretched their interval, and whether summaries kept their cadence meanwhile).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};

use super::{scale, start_fixture, Options};

const HEAPS_MIB: [u64; 3] = [100, 1024, 5120];

/// Goroutines of the scale rows.
const MANY: u64 = 1_000_000;
/// Streaming at scale: how long, how often analyses may run, and the summary interval.
const STREAM_SECS: u64 = 90;
const STREAM_LEAK_INTERVAL: &str = "20s";
const STREAM_SUMMARY_SECS: u64 = 5;

/// `--once --leaks` and streaming `--leaks` on a million goroutines parked on one channel
/// (fixtures/many), which a global holds: none is leaked.
pub(super) fn bench_leaks_at_scale(many: &Path, ctxprobe: &Path) -> Result<String> {
    let mut s = format!(
        "Leak analysis at scale (fixtures/many: {MANY} goroutines parked on one channel)\n\n\
         | run | analyses | analysis wall | analysis CPU | ctxprobe CPU | ctxprobe peak RSS | leaked | summaries: longest gap |\n\
         |---|---|---|---|---|---|---|---|\n"
    );
    let (fixture, _ready) = start_fixture(many, &["-n", &MANY.to_string()])?;
    let pid = fixture.pid().to_string();
    let once = scale::run(ctxprobe, &["--pid", &pid, "--once", "--leaks"])?;
    let rec = once
        .lines
        .iter()
        .map(|(_, v)| v)
        .find(|v| v["type"] == "leak_analysis")
        .context("no leak_analysis record")?;
    s += &format!(
        "| --once --leaks | 1 | {:.2} s | | {:.2} s | {:.1} MiB | {} | |\n",
        rec["wall_ms"].as_f64().unwrap_or(0.0) / 1e3,
        once.cpu.as_secs_f64(),
        once.max_rss_mib,
        rec["leaked"],
    );
    let duration = format!("{STREAM_SECS}s");
    let summary = format!("{STREAM_SUMMARY_SECS}s");
    let stream = scale::run(
        ctxprobe,
        &[
            "--pid",
            &pid,
            "--leaks",
            "--leak-interval",
            STREAM_LEAK_INTERVAL,
            "--summary-interval",
            &summary,
            "--duration",
            &duration,
            "--mode",
            "poll",
        ],
    )?;
    let analyses: Vec<&serde_json::Value> = stream
        .lines
        .iter()
        .map(|(_, v)| v)
        .filter(|v| v["type"] == "leak_analysis")
        .collect();
    let summaries: Vec<std::time::Instant> = stream
        .lines
        .iter()
        .filter(|(_, v)| v["type"] == "summary")
        .map(|(t, _)| *t)
        .collect();
    let longest_gap = summaries
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    let walls: Vec<String> = analyses
        .iter()
        .map(|a| format!("{:.1}", a["wall_ms"].as_f64().unwrap_or(0.0) / 1e3))
        .collect();
    let cpus: Vec<String> = analyses
        .iter()
        .map(|a| format!("{:.1}", a["cpu_ms"].as_f64().unwrap_or(0.0) / 1e3))
        .collect();
    let delays: Vec<String> = analyses
        .iter()
        .filter_map(|a| a["delay_reason"].as_str())
        .map(str::to_string)
        .collect();
    s += &format!(
        "| streaming {STREAM_SECS} s, --leak-interval {STREAM_LEAK_INTERVAL} | {} | {} s | {} s | {:.2} s | {:.1} MiB | {} | {:.1} s (interval {STREAM_SUMMARY_SECS} s) |\n",
        analyses.len(),
        walls.join(", "),
        cpus.join(", "),
        stream.cpu.as_secs_f64(),
        stream.max_rss_mib,
        analyses.last().map_or("-".into(), |a| a["leaked"].to_string()),
        longest_gap.as_secs_f64(),
    );
    if let Some(last) = analyses.last() {
        s += &format!(
            "\nStreaming: {} intervals skipped; delays: {}\n",
            last["skipped"],
            if delays.is_empty() {
                "none".to_string()
            } else {
                delays.join("; ")
            }
        );
    }
    fixture.stop(Duration::from_secs(5))?;
    Ok(s)
}

pub(super) fn bench_leaks(bin: &Path, ctxprobe: &Path, _opts: &Options) -> Result<String> {
    let mut s = String::from(
        "Leak analysis (--once --leaks; fixtures/leakheap: 64-byte linked objects, 1,000 leaked \
         goroutines)\n\n| heap (Go's HeapAlloc) | objects | analysis wall (2 passes) | ctxprobe CPU | ctxprobe peak RSS | leaked found |\n|---|---|---|---|---|---|\n",
    );
    for mib in HEAPS_MIB {
        let (fixture, ready) = start_fixture(bin, &["-mib", &mib.to_string()])?;
        let pid = fixture.pid().to_string();
        let run = scale::run(ctxprobe, &["--pid", &pid, "--once", "--leaks"])?;
        let record = run
            .lines
            .iter()
            .map(|(_, v)| v)
            .find(|v| v["type"] == "leak_analysis")
            .context("no leak_analysis record")?;
        let heap = ready["heap_alloc"].as_u64().unwrap_or(0);
        s += &format!(
            "| {:.0} MiB | {} | {:.2} s | {:.2} s | {:.1} MiB | {} of {} |\n",
            heap as f64 / (1 << 20) as f64,
            record["heap_objects"],
            record["wall_ms"].as_f64().unwrap_or(0.0) / 1e3,
            run.cpu.as_secs_f64(),
            run.max_rss_mib,
            record["leaked"],
            ready["leaks"],
        );
        let _ = run.wall;
        fixture.stop(Duration::from_secs(5))?;
    }
    Ok(s)
}
