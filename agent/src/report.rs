//! What ctxprobe prints: the JSON lines contract (version 1, see README) and a text rendering
//! of the same events for a human at a terminal.

use std::collections::BTreeMap;
use std::io::Write;

use serde::Serialize;

use crate::dump_writer::DumpWriter;
use crate::groups::GroupRecord;
use crate::output_queue::{OutputQueue, QUEUE_RECORDS};
use crate::stack::SourceFrame;
use crate::threads::{ContendedFutex, StackFrame, ThreadBlocked, ThreadUnblocked};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Json,
    Text,
}

/// How a blocked duration was measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SinceSource {
    /// The park was seen by the uprobe on `runtime.gopark`: exact.
    Probe,
    /// From the runtime's own `g.waitsince`, stamped by a GC stack scan: accurate to about one
    /// GC cycle (the runtime's own "N minutes" comes from it).
    Runtime,
    /// Since ctxprobe first saw the goroutine parked: a strict lower bound.
    Observed,
    /// Nothing known (a single snapshot with no GC stamp yet).
    Unknown,
}

/// One goroutine, as `goroutine` (from `--once`) and `blocked` records carry it.
#[derive(Debug, Clone, Serialize)]
pub struct GoroutineReport {
    pub goid: u64,
    pub state: String,
    pub wait_reason: Option<String>,
    pub blocked_ns: Option<u64>,
    pub since_exact: bool,
    pub since_source: SinceSource,
    pub stack: Vec<SourceFrame>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stack_error: Option<String>,
    pub created_by: Option<SourceFrame>,
    pub parent_goid: Option<u64>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub system: bool,
    /// `contexts`, `waits_on`, `context_verdict` (context diagnosis).
    #[serde(flatten)]
    pub contexts: crate::contexts::ContextDiagnosis,
}

#[derive(Debug, Clone, Serialize)]
pub struct CreationSiteCount {
    #[serde(flatten)]
    pub site: SourceFrame,
    pub goroutines: u64,
    /// Change since the previous summary.
    pub delta: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProbeStatus {
    pub mode: &'static str,
    /// Is the park probe attached right now.
    pub park_probe_attached: bool,
    /// Park probe hits per second over the last interval while attached.
    pub parks_per_sec: f64,
    /// Fraction of the interval the park probe was attached.
    pub attached_fraction: f64,
}

/// The goroutine half of a `summary`.
#[derive(Debug, Clone, Serialize)]
pub struct GoroutineSummary {
    pub goroutines: u64,
    pub by_state: BTreeMap<String, u64>,
    pub by_wait_reason: BTreeMap<String, u64>,
    /// Goroutines currently reported as blocked.
    pub blocked: u64,
    pub system_goroutines: u64,
    pub top_creation_sites: Vec<CreationSiteCount>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probe: Option<ProbeStatus>,
    pub snapshot_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    Attach {
        exe: String,
        /// Null for a process that is not a Go program: then only threads are watched.
        go_version: Option<String>,
        arch: String,
        goroutines: Option<u64>,
        threads_only: bool,
        mode: &'static str,
        threshold_ns: u64,
        layout_source: String,
    },
    Goroutine(GoroutineReport),
    Group(GroupRecord),
    Blocked {
        #[serde(flatten)]
        g: GoroutineReport,
        threshold_ns: u64,
    },
    Unblocked {
        goid: u64,
        wait_reason: Option<String>,
        blocked_ns: u64,
        /// True when both ends of the wait were seen by probes.
        exact: bool,
    },
    Summary {
        /// Absent for a process that is not a Go program (thread mode only).
        #[serde(flatten)]
        goroutines: Option<GoroutineSummary>,
        lost_events: u64,
        /// Records dropped because the output consumer did not keep up (cumulative).
        dropped_records: u64,
        /// The most contended futex words (absent when thread monitoring is off).
        #[serde(skip_serializing_if = "Option::is_none")]
        contended_futexes: Option<Vec<ContendedFutex>>,
        /// Futex calls of the target per second since the last summary (each costs a
        /// tracepoint hit).
        #[serde(skip_serializing_if = "Option::is_none")]
        futex_calls_per_sec: Option<f64>,
    },
    ThreadBlocked(ThreadBlocked),
    ThreadUnblocked(ThreadUnblocked),
    /// The target is stopped (SIGSTOP, a debugger, a tracer): nothing in it runs, and
    /// ctxprobe takes no snapshots until it resumes.
    TargetStopped {},
    /// The target runs again after `stopped_ns` (not counted as blocked time).
    TargetResumed {
        stopped_ns: u64,
    },
    Detach {
        reason: &'static str,
        lost_events: u64,
        /// Records dropped because the output consumer did not keep up.
        dropped_records: u64,
    },
    Error {
        message: String,
    },
}

/// Where formatted records go.
enum Sink {
    /// Streaming: through a bounded queue; never blocks, drops and counts instead.
    Queued(OutputQueue),
    /// `--once`: formatted and written on a thread of its own, never dropped.
    Threaded(DumpWriter),
}

pub struct Reporter {
    out: Sink,
    format: Format,
    pid: u32,
}

impl Reporter {
    /// A reporter whose writes never block the caller (see [`OutputQueue`]).
    pub fn queued(
        out: Box<dyn Write + Send>,
        format: Format,
        pid: u32,
    ) -> std::io::Result<Reporter> {
        Ok(Reporter {
            out: Sink::Queued(OutputQueue::start(out, QUEUE_RECORDS)?),
            format,
            pid,
        })
    }

    /// A reporter that formats and writes on a thread of its own, waiting for its consumer
    /// (see [`DumpWriter`]); [`Self::emit_owned`] hands events over without a copy.
    pub fn threaded(
        out: Box<dyn Write + Send>,
        format: Format,
        pid: u32,
    ) -> std::io::Result<Reporter> {
        Ok(Reporter {
            out: Sink::Threaded(DumpWriter::start(out, format, pid)?),
            format,
            pid,
        })
    }

    /// [`Self::emit`] for an event the caller is done with.
    pub fn emit_owned(&mut self, event: Event) -> std::io::Result<()> {
        match &mut self.out {
            Sink::Threaded(w) => w.send(event),
            _ => self.emit(&event),
        }
    }

    /// Records dropped so far because the consumer did not keep up.
    pub fn dropped(&self) -> u64 {
        match &self.out {
            Sink::Threaded(_) => 0,
            Sink::Queued(q) => q.dropped(),
        }
    }

    pub fn emit(&mut self, event: &Event) -> std::io::Result<()> {
        if let Sink::Threaded(w) = &mut self.out {
            return w.send(event.clone());
        }
        let record = format_record(self.format, self.pid, event)?;
        match &mut self.out {
            Sink::Queued(q) => {
                q.push(record);
                Ok(())
            }
            Sink::Threaded(_) => Ok(()),
        }
    }

    /// Writes out what is pending; a queued reporter waits at most `timeout` for its consumer.
    pub fn finish(&mut self, timeout: std::time::Duration) -> std::io::Result<()> {
        match &mut self.out {
            Sink::Queued(q) => q.close(timeout),
            // A dump is the whole answer: it is written out however long that takes.
            Sink::Threaded(w) => w.finish(),
        }
    }
}

/// One record as `format` writes it, with its line end.
pub fn format_record(format: Format, pid: u32, event: &Event) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(1024);
    let time = humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string();
    match format {
        Format::Json => {
            serde_json::to_writer(&mut out, event).map_err(std::io::Error::other)?;
            splice_time_and_pid(&mut out, &time, pid)?;
            out.push(b'\n');
        }
        Format::Text => out.extend_from_slice(render_text(event, pid).as_bytes()),
    }
    Ok(out)
}

/// Puts `"time"` and `"pid"` right after the leading `"type"` field of a serialized event, for
/// people reading the raw lines. Serializing straight to bytes and splicing costs a fraction of
/// building a `serde_json::Value` per record (a `--once` dump writes a million of them).
fn splice_time_and_pid(record: &mut Vec<u8>, time: &str, pid: u32) -> std::io::Result<()> {
    const TAG: &[u8] = b"{\"type\":\"";
    // The tag is the first field of an internally tagged enum and its values are plain
    // snake_case names: the field ends at the next quote.
    let end = record
        .strip_prefix(TAG)
        .and_then(|rest| rest.iter().position(|&b| b == b'"'))
        .map(|i| TAG.len() + i + 1)
        .ok_or_else(|| std::io::Error::other("event does not start with its type"))?;
    let mut fields = Vec::with_capacity(64);
    fields.extend_from_slice(b",\"time\":");
    serde_json::to_writer(&mut fields, time).map_err(std::io::Error::other)?;
    fields.extend_from_slice(format!(",\"pid\":{pid}").as_bytes());
    // An event with no other field serializes as `{"type":"x"}`: the splice goes before `}`.
    record.splice(end..end, fields);
    Ok(())
}

/// `4m12s`, `1h2m3s`, `12.3s`, `350ms`, `12µs`.
pub fn human_duration(ns: u64) -> String {
    let s = ns / 1_000_000_000;
    if s >= 3600 {
        format!("{}h{}m{}s", s / 3600, s % 3600 / 60, s % 60)
    } else if s >= 60 {
        format!("{}m{}s", s / 60, s % 60)
    } else if s >= 10 {
        format!("{s}s")
    } else if ns >= 1_000_000_000 {
        format!("{:.1}s", ns as f64 / 1e9)
    } else if ns >= 1_000_000 {
        format!("{}ms", ns / 1_000_000)
    } else {
        format!("{}µs", ns / 1_000)
    }
}

fn since_text(source: SinceSource) -> &'static str {
    match source {
        SinceSource::Probe => "exact",
        SinceSource::Runtime => "about, per the runtime's GC stamp",
        SinceSource::Observed => "at least, since first seen",
        SinceSource::Unknown => "unknown",
    }
}

fn render_goroutine(out: &mut String, g: &GoroutineReport) {
    use std::fmt::Write as _;
    let what = g.wait_reason.clone().unwrap_or_else(|| g.state.clone());
    let _ = write!(out, "goroutine {} [{what}]", g.goid);
    if let Some(ns) = g.blocked_ns {
        let _ = write!(
            out,
            " for {} ({})",
            human_duration(ns),
            since_text(g.since_source)
        );
    }
    out.push('\n');
    for f in &g.stack {
        let _ = writeln!(out, "    {}\n        {}:{}", f.func, f.file, f.line);
    }
    if let Some(e) = &g.stack_error {
        let _ = writeln!(out, "    ({e})");
    }
    for line in crate::contexts::text::lines(&g.contexts, g.wait_reason.as_deref()) {
        let _ = writeln!(out, "    {line}");
    }
    if let Some(c) = &g.created_by {
        let parent = g
            .parent_goid
            .map(|p| format!(" in goroutine {p}"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "    created by {}{parent}\n        {}:{}",
            c.func, c.file, c.line
        );
    }
}

/// `LEAK SUSPECT 254,900 goroutines [chan send, 5s–1m40s] +15,000/min, 1.9 GiB of stack`,
/// then the stack once.
fn render_group(out: &mut String, g: &GroupRecord) {
    use std::fmt::Write as _;
    if g.leak_suspect {
        out.push_str("LEAK SUSPECT ");
    }
    let what = g.wait_reason.clone().unwrap_or_else(|| g.state.clone());
    let span = match (g.blocked_min_ns, g.blocked_max_ns) {
        (Some(lo), Some(hi)) => format!(", {}–{}", human_duration(lo), human_duration(hi)),
        _ => String::new(),
    };
    let _ = write!(out, "{} goroutines [{what}{span}]", thousands(g.goroutines));
    if g.growth_per_min != 0.0 {
        let _ = write!(out, " {:+.0}/min", g.growth_per_min);
    }
    let _ = writeln!(out, ", {} of stack", human_bytes(g.stack_bytes));
    for f in &g.stack {
        let _ = writeln!(out, "    {}\n        {}:{}", f.func, f.file, f.line);
    }
    if let Some(c) = &g.created_by {
        let _ = writeln!(
            out,
            "    created by {}\n        {}:{}",
            c.func, c.file, c.line
        );
    }
    out.push('\n');
}

/// `1,234,567`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `512 B`, `12.0 KiB`, `1.9 GiB`.
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

fn render_native_stack(out: &mut String, stack: &[StackFrame]) {
    use std::fmt::Write as _;
    for f in stack {
        let name = match (&f.func, f.offset) {
            (Some(n), Some(off)) => format!("{n}+{off:#x}"),
            (Some(n), None) => n.clone(),
            (None, _) => format!("{:#x}", f.addr),
        };
        let lib = f
            .library
            .as_deref()
            .map(|l| format!(" [{l}]"))
            .unwrap_or_default();
        let _ = writeln!(out, "    {name}{lib}");
        if let (Some(file), Some(line)) = (&f.file, f.line) {
            let _ = writeln!(out, "        {file}:{line}");
        }
    }
}

fn render_futexes(out: &mut String, futexes: Option<&[ContendedFutex]>) {
    use std::fmt::Write as _;
    for f in futexes.unwrap_or_default().iter().take(3) {
        let _ = writeln!(
            out,
            "    futex {:#x}: {} long waits ({} now), {} waited in all",
            f.futex_addr,
            f.waiters,
            f.blocked_now,
            human_duration(f.total_wait_ns)
        );
    }
}

fn dropped_text(dropped: u64) -> String {
    if dropped == 0 {
        String::new()
    } else {
        format!("; {dropped} records dropped (the output consumer did not keep up)")
    }
}

fn render_text(event: &Event, pid: u32) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    match event {
        Event::Attach {
            exe,
            go_version,
            arch,
            goroutines,
            mode,
            threshold_ns,
            ..
        } => match (go_version, goroutines) {
            (Some(v), Some(n)) => {
                let _ = writeln!(
                    out,
                    "attached to pid {pid} ({exe}, {v} {arch}): {n} goroutines; mode {mode}, \
                         reporting goroutines and threads blocked over {}",
                    human_duration(*threshold_ns)
                );
            }
            _ => {
                let _ = writeln!(
                    out,
                    "attached to pid {pid} ({exe}, {arch}): not a Go program, watching threads \
                         only; reporting futex waits over {}",
                    human_duration(*threshold_ns)
                );
            }
        },
        Event::ThreadBlocked(t) => {
            let _ = writeln!(
                out,
                "BLOCKED thread {} ({}) in {} on futex {:#x} for {}{}{}",
                t.tid,
                t.thread_name.as_deref().unwrap_or("?"),
                t.futex_op,
                t.futex_addr,
                if t.since_exact { "" } else { "at least " },
                human_duration(t.blocked_ns),
                t.goid
                    .map(|g| format!(", running goroutine {g}"))
                    .unwrap_or_default()
            );
            render_native_stack(&mut out, &t.stack);
            if let Some(e) = &t.stack_error {
                let _ = writeln!(out, "    (stack ends early: {e})");
            }
            out.push('\n');
        }
        Event::ThreadUnblocked(t) => {
            let _ = writeln!(
                out,
                "unblocked thread {} ({}) after {}{}{}\n",
                t.tid,
                t.thread_name.as_deref().unwrap_or("?"),
                if t.since_exact { "" } else { "at least " },
                human_duration(t.blocked_ns),
                t.woken_by_tid
                    .map(|w| format!(", woken by thread {w}"))
                    .unwrap_or_default()
            );
        }
        Event::Goroutine(g) => {
            render_goroutine(&mut out, g);
            out.push('\n');
        }
        Event::Group(g) => render_group(&mut out, g),
        Event::Blocked { g, .. } => {
            out.push_str("BLOCKED ");
            render_goroutine(&mut out, g);
            out.push('\n');
        }
        Event::Unblocked {
            goid,
            wait_reason,
            blocked_ns,
            exact,
        } => {
            let _ = writeln!(
                out,
                "unblocked goroutine {goid} [{}] after {}{}\n",
                wait_reason.as_deref().unwrap_or("?"),
                if *exact { "" } else { "at least " },
                human_duration(*blocked_ns)
            );
        }
        Event::Summary {
            goroutines: None,
            lost_events,
            dropped_records,
            contended_futexes,
            ..
        } => {
            let _ = writeln!(
                out,
                "summary: {lost_events} events lost{}",
                dropped_text(*dropped_records)
            );
            render_futexes(&mut out, contended_futexes.as_deref());
            out.push('\n');
        }
        Event::Summary {
            goroutines:
                Some(GoroutineSummary {
                    goroutines,
                    by_state,
                    by_wait_reason,
                    blocked,
                    top_creation_sites,
                    ..
                }),
            lost_events,
            dropped_records,
            contended_futexes,
            ..
        } => {
            let states: Vec<String> = by_state.iter().map(|(k, v)| format!("{k} {v}")).collect();
            let mut reasons: Vec<(&String, &u64)> = by_wait_reason.iter().collect();
            reasons.sort_by(|a, b| b.1.cmp(a.1));
            let reasons: Vec<String> = reasons
                .iter()
                .take(6)
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            let _ = writeln!(
                out,
                "summary: {goroutines} goroutines ({}); waiting on: {}; {blocked} blocked over threshold; {lost_events} events lost{}",
                states.join(", "),
                if reasons.is_empty() { "-".into() } else { reasons.join(", ") },
                dropped_text(*dropped_records)
            );
            for s in top_creation_sites.iter().take(3) {
                let _ = writeln!(
                    out,
                    "    {:>8} goroutines ({:+}) created at {} {}:{}",
                    s.goroutines, s.delta, s.site.func, s.site.file, s.site.line
                );
            }
            render_futexes(&mut out, contended_futexes.as_deref());
            out.push('\n');
        }
        Event::TargetStopped {} => {
            let _ = writeln!(
                out,
                "target stopped: nothing runs in it; snapshots paused\n"
            );
        }
        Event::TargetResumed { stopped_ns } => {
            let _ = writeln!(
                out,
                "target resumed after {} stopped (not counted as blocked time)\n",
                human_duration(*stopped_ns)
            );
        }
        Event::Detach {
            reason,
            lost_events,
            dropped_records,
        } => {
            let _ = writeln!(
                out,
                "detached ({reason}); {lost_events} events lost{}",
                dropped_text(*dropped_records)
            );
        }
        Event::Error { message } => {
            let _ = writeln!(out, "error: {message}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_like_the_issue_says() {
        assert_eq!(thousands(254_900), "254,900");
        assert_eq!(thousands(7), "7");
        assert_eq!(thousands(1_000_000), "1,000,000");
        assert_eq!(human_bytes(2_040_109_466), "1.9 GiB");
        assert_eq!(human_bytes(100), "100 B");
    }

    #[test]
    fn durations_read_like_go() {
        assert_eq!(human_duration(252 * 1_000_000_000), "4m12s");
        assert_eq!(human_duration(3723 * 1_000_000_000), "1h2m3s");
        assert_eq!(human_duration(1_500_000_000), "1.5s");
        assert_eq!(human_duration(350_000_000), "350ms");
    }

    #[test]
    fn json_lines_have_the_common_fields_first() {
        let path = std::env::temp_dir().join(format!("ctxprobe-report-{}", std::process::id()));
        {
            let w: Box<dyn Write + Send> = Box::new(std::fs::File::create(&path).unwrap());
            let mut r = Reporter::threaded(w, Format::Json, 42).unwrap();
            r.emit(&Event::Detach {
                reason: "duration",
                lost_events: 0,
                dropped_records: 0,
            })
            .unwrap();
            r.finish(std::time::Duration::MAX).unwrap();
        }
        let line = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert!(line.starts_with(r#"{"type":"detach","time":""#), "{line}");
        assert!(line.contains(r#""pid":42"#));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        let t = v["time"].as_str().unwrap();
        assert!(t.ends_with('Z') && t.contains('.'), "{t}");
    }

    /// The spliced line is what building a `serde_json::Value` with the common fields first
    /// gave, for an event with no field of its own and one with flattened parts.
    #[test]
    fn spliced_lines_equal_the_value_built_ones() {
        fn by_value(event: &Event, time: &str, pid: u32) -> Vec<u8> {
            let serde_json::Value::Object(body) = serde_json::to_value(event).unwrap() else {
                panic!("not an object");
            };
            let mut obj = serde_json::Map::new();
            obj.insert("type".into(), body["type"].clone());
            obj.insert("time".into(), time.into());
            obj.insert("pid".into(), pid.into());
            for (k, v) in body {
                if k != "type" {
                    obj.insert(k, v);
                }
            }
            serde_json::to_vec(&obj).unwrap()
        }
        let g = GoroutineReport {
            goid: 7,
            state: "waiting".into(),
            wait_reason: Some("chan \"send\"".into()),
            blocked_ns: Some(5),
            since_exact: false,
            since_source: SinceSource::Runtime,
            stack: vec![SourceFrame {
                func: "main.f".into(),
                file: "/m.go".into(),
                line: 3,
            }],
            stack_error: None,
            created_by: None,
            parent_goid: Some(1),
            system: false,
            contexts: Default::default(),
        };
        let time = "2026-12-01T03:04:05.000000006Z";
        for event in [
            Event::TargetStopped {},
            Event::Goroutine(g.clone()),
            Event::Blocked { g, threshold_ns: 9 },
        ] {
            let mut direct = serde_json::to_vec(&event).unwrap();
            splice_time_and_pid(&mut direct, time, 42).unwrap();
            assert_eq!(
                String::from_utf8(direct).unwrap(),
                String::from_utf8(by_value(&event, time, 42)).unwrap()
            );
        }
    }
}
