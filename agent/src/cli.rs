//! Command line. The flags of issue 2 are stable; later ones are additions.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::probes::Mode;
use crate::report::Format;

#[derive(Debug, Parser)]
#[command(
    name = "ctxprobe",
    version,
    about = "Find stuck goroutines in a live Go process, from the outside, without pausing it.",
    long_about = None
)]
pub struct Args {
    /// Process id of the Go program to inspect.
    #[arg(long)]
    pub pid: u32,

    /// Report goroutines parked at least this long (e.g. 500ms, 10s, 2m).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub threshold: Duration,

    /// Stop after this long (default: until Ctrl-C, SIGTERM or the target exits).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Print every goroutine once (all states) and exit: pprof's debug=2 dump, from outside.
    #[arg(long)]
    pub once: bool,

    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Json)]
    pub format: Format,

    /// Write to this file instead of stdout.
    #[arg(long)]
    pub output: Option<PathBuf>,

    /// How often to print a summary.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub summary_interval: Duration,

    /// adaptive: park probe within --probe-budget, snapshots otherwise, threads from /proc;
    /// precise: park and wake probes and futex tracepoints always on (exact times and wakers,
    /// ~1.2 µs per park); poll: snapshots only, no BPF.
    #[arg(long, value_enum, default_value_t = Mode::Adaptive)]
    pub mode: Mode,

    /// In adaptive mode, the most target CPU the park probe may cost, in percent of one core.
    #[arg(long, default_value_t = 0.5)]
    pub probe_budget: f64,

    /// How often to snapshot the goroutine list (default: a quarter of the threshold, between
    /// 100ms and 1s, slowed down for very large processes).
    #[arg(long, value_parser = parse_duration)]
    pub poll_interval: Option<Duration>,

    /// Also report the runtime's own goroutines (GC workers, finalizer...), which the runtime
    /// itself leaves out of its dumps.
    #[arg(long)]
    pub include_system: bool,

    /// For a Go release newer than ctxprobe's tables and without DWARF: try the nearest known
    /// struct layout (results may be wrong).
    #[arg(long)]
    pub assume_layout: bool,
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("'{s}' is not a duration like 500ms, 10s or 2m ({e})"))?;
    if d.is_zero() {
        return Err(format!("'{s}': the duration must be more than zero"));
    }
    Ok(d)
}
