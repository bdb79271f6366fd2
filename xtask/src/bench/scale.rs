//! `cargo xtask bench --scale`: ctxprobe on fixtures/groups at 10k, 100k and 1M goroutines
//! (issue 7's incident: four leaking sites growing by N/1000 a second beside a stable pool of N/100
//! idle workers). Per size: the target's own `debug=1` and `debug=2` dump times, `--once` wall
//! time and max RSS, and a streaming run (`--threshold 5s --duration 60s`): max RSS, CPU % of one
//! core, output bytes per minute, time to the first `group` record of each leaking site, summary
//! punctuality and detach latency after `--duration`.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::{start_fixture, Options};

/// The leaking sites and the function each one's goroutines block in.
const SITES: &[(&str, &str)] = &[
    ("ctx", "main.leakCtx"),
    ("send", "main.leakSend"),
    ("wg", "main.leakWG"),
    ("mutex", "main.leakMutex"),
];
const SUMMARY_INTERVAL: Duration = Duration::from_secs(10);

struct Row {
    goroutines: u64,
    dump1_ms: f64,
    dump2_ms: f64,
    once_ms: f64,
    once_rss_mib: f64,
    once_lines: usize,
    stream_rss_mib: f64,
    cpu_pct: f64,
    mb_per_min: f64,
    /// Seconds from `attach` to the first `group` record of each leaking site (None: never).
    first_group: Vec<Option<f64>>,
    /// Largest deviation of a summary from its interval, seconds.
    punctuality_s: Option<f64>,
    /// From attach + duration to exit, seconds.
    detach_s: f64,
}

pub(super) fn bench_scale(bin: &Path, ctxprobe: &Path, opts: &Options) -> Result<String> {
    let mut rows = Vec::new();
    for &n in &opts.scale_sizes {
        rows.push(measure(bin, ctxprobe, n, opts.scale_duration)?);
    }
    Ok(table(&rows, opts.scale_duration))
}

fn measure(bin: &Path, ctxprobe: &Path, n: u64, duration: Duration) -> Result<Row> {
    let idle = n / 100;
    let per_site = (n - idle) / SITES.len() as u64;
    let rate = n as f64 / 1000.0 / SITES.len() as f64;
    eprintln!(
        "bench: scale {n}: {per_site} per leaking site (+{rate}/s each), {idle} idle workers"
    );
    let started = Instant::now();
    let (fixture, _) = start_fixture(
        bin,
        &[
            "-leak-initial",
            &per_site.to_string(),
            "-idle",
            &idle.to_string(),
            "-leak-rate",
            &rate.to_string(),
            "-warm",
            "0",
            "-burst",
            "0",
            "-busy-pairs",
            "0",
            "-report-every",
            "0",
        ],
    )?;
    eprintln!(
        "bench:   fixture ready in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    fixture.signal("USR2")?;
    let v = fixture.wait_json(Duration::from_secs(600), |v| v.get("dumped1").is_some())?;
    let dump1_ms = v["dump_ns"].as_u64().context("debug=1 dump failed")? as f64 / 1e6;
    fixture.signal("USR1")?;
    let v = fixture.wait_json(Duration::from_secs(600), |v| v.get("dumped").is_some())?;
    let dump2_ms = v["dump_ns"].as_u64().context("debug=2 dump failed")? as f64 / 1e6;
    eprintln!("bench:   target's own dumps: debug=1 {dump1_ms:.0} ms, debug=2 {dump2_ms:.0} ms");

    let pid = fixture.pid().to_string();
    let once = run(ctxprobe, &["--pid", &pid, "--once"])?;
    let once_ms = once.wall.as_secs_f64() * 1e3;
    eprintln!(
        "bench:   --once {once_ms:.0} ms, {:.0} MiB, {} lines",
        once.max_rss_mib, once.count
    );

    let grouped = run(ctxprobe, &["--pid", &pid, "--once", "--grouped"])?;
    eprintln!(
        "bench:   --once --grouped {:.0} ms, {:.0} MiB, {} lines",
        grouped.wall.as_secs_f64() * 1e3,
        grouped.max_rss_mib,
        grouped.count
    );

    if duration.is_zero() {
        // `--scale-duration 0s`: the `--once` half only.
        fixture.stop(Duration::from_secs(30))?;
        return Ok(Row {
            goroutines: n,
            dump1_ms,
            dump2_ms,
            once_ms,
            once_rss_mib: once.max_rss_mib,
            once_lines: once.count,
            stream_rss_mib: f64::NAN,
            cpu_pct: f64::NAN,
            mb_per_min: f64::NAN,
            first_group: vec![None; SITES.len()],
            punctuality_s: None,
            detach_s: f64::NAN,
        });
    }
    let secs = format!("{}s", duration.as_secs());
    let interval = format!("{}s", SUMMARY_INTERVAL.as_secs());
    let stream = run(
        ctxprobe,
        &[
            "--pid",
            &pid,
            "--threshold",
            "5s",
            "--duration",
            &secs,
            "--summary-interval",
            &interval,
        ],
    )?;
    let attach_at = stream
        .lines
        .iter()
        .find(|(_, v)| v["type"] == "attach")
        .map(|(t, _)| *t)
        .context("streaming run printed no attach record")?;
    let since_attach = |t: Instant| t.saturating_duration_since(attach_at).as_secs_f64();
    let first_group = SITES
        .iter()
        .map(|(_, func)| {
            stream
                .lines
                .iter()
                .find(|(_, v)| v["type"] == "group" && has_frame(v, func))
                .map(|(t, _)| since_attach(*t))
        })
        .collect();
    let mut last = attach_at;
    let mut punctuality_s: Option<f64> = None;
    for (t, _) in stream.lines.iter().filter(|(_, v)| v["type"] == "summary") {
        let dev = (t.duration_since(last).as_secs_f64() - SUMMARY_INTERVAL.as_secs_f64()).abs();
        punctuality_s = Some(punctuality_s.map_or(dev, |p| p.max(dev)));
        last = *t;
    }
    let run_secs = stream.exited.duration_since(attach_at).as_secs_f64();
    let row = Row {
        goroutines: n,
        dump1_ms,
        dump2_ms,
        once_ms,
        once_rss_mib: once.max_rss_mib,
        once_lines: once.count,
        stream_rss_mib: stream.max_rss_mib,
        cpu_pct: stream.cpu.as_secs_f64() / stream.wall.as_secs_f64() * 100.0,
        mb_per_min: stream.bytes as f64 / 1e6 / (run_secs / 60.0),
        first_group,
        punctuality_s,
        detach_s: run_secs - duration.as_secs_f64(),
    };
    eprintln!(
        "bench:   streaming {:.0} MiB, {:.1}% CPU, {:.2} MB/min, first groups {:?}, \
         summaries ±{:?} s, detach +{:.2} s",
        row.stream_rss_mib,
        row.cpu_pct,
        row.mb_per_min,
        row.first_group,
        row.punctuality_s,
        row.detach_s
    );
    fixture.stop(Duration::from_secs(30))?;
    Ok(row)
}

fn has_frame(v: &Value, func: &str) -> bool {
    v["stack"]
        .as_array()
        .is_some_and(|s| s.iter().any(|f| f["func"] == func))
}

/// What one ctxprobe run cost and printed.
pub(super) struct Run {
    pub(super) wall: Duration,
    exited: Instant,
    pub(super) cpu: Duration,
    pub(super) max_rss_mib: f64,
    bytes: u64,
    /// Lines printed.
    count: usize,
    /// Every JSON line with the time it arrived.
    pub(super) lines: Vec<(Instant, Value)>,
}

/// Runs ctxprobe to completion, reading its stdout as it comes; resources from wait4's rusage.
pub(super) fn run(ctxprobe: &Path, args: &[&str]) -> Result<Run> {
    let start = Instant::now();
    let mut child = Command::new(ctxprobe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting ctxprobe")?;
    let stdout = child.stdout.take().context("ctxprobe stdout")?;
    let reader = thread::spawn(move || {
        let mut lines = Vec::new();
        let mut bytes = 0u64;
        let mut count = 0usize;
        let mut r = BufReader::new(stdout);
        let mut buf = Vec::new();
        while let Ok(n) = r.read_until(b'\n', &mut buf) {
            if n == 0 {
                break;
            }
            bytes += n as u64;
            count += 1;
            // Only the records the table needs are kept (a million `goroutine` lines would not
            // fit the point of measuring RSS).
            if !buf.starts_with(br#"{"type":"goroutine""#) {
                if let Ok(v) = serde_json::from_slice::<Value>(&buf) {
                    if v["type"] != "goroutine" && v["type"] != "blocked" {
                        lines.push((Instant::now(), v));
                    }
                }
            }
            buf.clear();
        }
        (lines, bytes, count)
    });
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain data, zero is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our unreaped child; status and ru are valid for writes.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    let exited = Instant::now();
    if r != pid {
        bail!("wait4 on ctxprobe: {}", std::io::Error::last_os_error());
    }
    let (lines, bytes, count) = reader
        .join()
        .map_err(|_| anyhow::anyhow!("stdout reader panicked"))?;
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        bail!(
            "ctxprobe {} failed: wait status {status:#x}",
            args.join(" ")
        );
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    Ok(Run {
        wall: exited - start,
        exited,
        cpu: tv(ru.ru_utime) + tv(ru.ru_stime),
        max_rss_mib: ru.ru_maxrss as f64 / 1024.0,
        bytes,
        count,
        lines,
    })
}

fn table(rows: &[Row], duration: Duration) -> String {
    let mut s = format!(
        "Scale (fixtures/groups: 4 leaking sites growing by N/1000 per second, N/100 idle workers; \
         streaming --threshold 5s --duration {}s --summary-interval {}s)\n",
        duration.as_secs(),
        SUMMARY_INTERVAL.as_secs()
    );
    let head = [
        "goroutines",
        "debug=1 ms",
        "debug=2 ms",
        "--once ms",
        "--once MiB",
        "--once lines",
        "stream MiB",
        "CPU %",
        "MB/min",
        "1st group s (ctx/send/wg/mutex)",
        "summary ±s",
        "detach +s",
    ];
    s.push_str(&format!("  {}\n", head.join(" | ")));
    for r in rows {
        let firsts: Vec<String> = r
            .first_group
            .iter()
            .map(|f| f.map_or("never".into(), |x| format!("{x:.1}")))
            .collect();
        s.push_str(&format!(
            "  {} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {:.0} | {:.1} | {:.2} | {} | {} | {:.2}\n",
            r.goroutines,
            r.dump1_ms,
            r.dump2_ms,
            r.once_ms,
            r.once_rss_mib,
            r.once_lines,
            r.stream_rss_mib,
            r.cpu_pct,
            r.mb_per_min,
            firsts.join("/"),
            r.punctuality_s
                .map_or("no summaries".into(), |p| format!("{p:.2}")),
            r.detach_s
        ));
    }
    s
}
