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
    #[arg(long, value_parser = parse_pid, allow_hyphen_values = true)]
    pub pid: u32,

    /// Report goroutines parked at least this long (e.g. 500ms, 10s, 2m).
    #[arg(long, default_value = "10s", value_parser = parse_duration, allow_hyphen_values = true)]
    pub threshold: Duration,

    /// Stop after this long (default: until Ctrl-C, SIGTERM or the target exits).
    #[arg(long, value_parser = parse_duration, allow_hyphen_values = true)]
    pub duration: Option<Duration>,

    /// Print every goroutine once (all states) and exit: pprof's debug=2 dump, from outside.
    #[arg(long)]
    pub once: bool,

    /// With --once: one `group` record per group of identical goroutines (same state, wait
    /// reason, stack and creation site), largest first, like pprof's debug=1.
    #[arg(long, requires = "once")]
    pub grouped: bool,

    /// Tell leaked goroutines from merely blocked ones by reachability (Go's goroutine leak
    /// profile, from outside): `leaked` on each record. Streaming: an analysis at most every
    /// --leak-interval, within 5% of one core, on a thread of its own.
    #[arg(long)]
    pub leaks: bool,

    /// Streaming --leaks: analyse at most this often (e.g. 30s, 1m, 5m).
    #[arg(long, default_value = "1m", value_parser = parse_duration, allow_hyphen_values = true,
          requires = "leaks", conflicts_with = "once")]
    pub leak_interval: Duration,

    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Json)]
    pub format: Format,

    /// Write to this file instead of stdout.
    #[arg(long)]
    pub output: Option<PathBuf>,

    /// How often to print a summary.
    #[arg(long, default_value = "10s", value_parser = parse_duration, allow_hyphen_values = true)]
    pub summary_interval: Duration,

    /// adaptive: park probe within --probe-budget, snapshots otherwise, threads from /proc;
    /// precise: park and wake probes and futex tracepoints always on (exact times and wakers,
    /// ~1.2 µs per park); poll: snapshots only, no BPF.
    #[arg(long, value_enum, default_value_t = Mode::Adaptive)]
    pub mode: Mode,

    /// The most target CPU a budgeted probe may cost, in percent of one core: the park probe in
    /// adaptive mode, the context cancel probe in precise mode.
    #[arg(long, default_value_t = 0.5, value_parser = parse_budget, allow_hyphen_values = true)]
    pub probe_budget: f64,

    /// How often to snapshot the goroutine list (default: a quarter of the threshold, between
    /// 100ms and 1s, slowed down for very large processes).
    #[arg(long, value_parser = parse_duration, allow_hyphen_values = true)]
    pub poll_interval: Option<Duration>,

    /// Also report the runtime's own goroutines (GC workers, finalizer...), which the runtime
    /// itself leaves out of its dumps, and threads idle in the Go runtime.
    #[arg(long)]
    pub include_system: bool,

    /// Streaming: at most this many `group` records per summary interval (leak suspects and
    /// the largest groups first; the rest are counted in the summary's `groups_omitted`).
    #[arg(long, default_value_t = 50)]
    pub max_groups: usize,

    /// Streaming: at most this many `blocked` records per group; the group's record counts
    /// the others.
    #[arg(long, default_value_t = 3)]
    pub samples_per_group: u32,

    /// Streaming: a `blocked` record for every goroutine past the threshold, not just samples
    /// of each group.
    #[arg(long)]
    pub every_goroutine: bool,

    /// For a Go release newer than ctxprobe's tables and without DWARF: try the nearest known
    /// struct layout (results may be wrong).
    #[arg(long)]
    pub assume_layout: bool,
}

// Values may start with '-' (allow_hyphen_values): clap would otherwise take `--duration -1`
// for an unknown flag `-1` and say so, instead of what is wrong with the value.

/// A process id: a whole number from 1 up.
pub fn parse_pid(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(pid) if pid > 0 => Ok(pid),
        _ => Err(format!(
            "'{s}' is not a process id (a whole number from 1 up)"
        )),
    }
}

/// Percent of one core, more than 0 and at most 100.
pub fn parse_budget(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(p) if p > 0.0 && p <= 100.0 => Ok(p),
        _ => Err(format!(
            "'{s}' is not a budget (percent of one core, more than 0 and at most 100)"
        )),
    }
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if s.starts_with('-') && s[1..].starts_with(|c: char| c.is_ascii_digit()) {
        return Err(format!("'{s}': a duration cannot be negative"));
    }
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("'{s}' is not a duration like 500ms, 10s or 2m ({e})"))?;
    if d.is_zero() {
        return Err(format!("'{s}': the duration must be more than zero"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one line main() prints for a command line clap refuses.
    fn refusal(args: &[&str]) -> String {
        let err = Args::try_parse_from(std::iter::once("ctxprobe").chain(args.iter().copied()))
            .expect_err("must be refused");
        crate::cli_error_line(&err)
    }

    #[test]
    fn negative_numbers_get_the_message_for_their_value() {
        assert_eq!(
            refusal(&["--pid", "1", "--duration", "-1"]),
            "invalid value '-1' for '--duration <DURATION>': '-1': a duration cannot be negative"
        );
        assert_eq!(
            refusal(&["--pid", "-5"]),
            "invalid value '-5' for '--pid <PID>': '-5' is not a process id (a whole number from 1 up)"
        );
        assert_eq!(
            refusal(&["--pid", "1", "--threshold", "-3s"]),
            "invalid value '-3s' for '--threshold <THRESHOLD>': '-3s': a duration cannot be negative"
        );
        assert_eq!(
            refusal(&["--pid", "1", "--probe-budget", "-1"]),
            "invalid value '-1' for '--probe-budget <PROBE_BUDGET>': '-1' is not a budget \
             (percent of one core, more than 0 and at most 100)"
        );
        assert_eq!(
            refusal(&["--pid", "0"]),
            "invalid value '0' for '--pid <PID>': '0' is not a process id (a whole number from 1 up)"
        );
    }

    #[test]
    fn good_values_still_parse() {
        let a = Args::try_parse_from(["ctxprobe", "--pid", "42", "--threshold", "2s"]).unwrap();
        assert_eq!((a.pid, a.threshold), (42, Duration::from_secs(2)));
        assert_eq!(parse_budget("0.5"), Ok(0.5));
    }
}
