//! The text rendering of events, for a human at a terminal.

use std::fmt::Write as _;

use super::event::*;
use crate::groups::GroupRecord;
use crate::threads::{ContendedFutex, StackFrame};

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
    let what = g.wait_reason.clone().unwrap_or_else(|| g.state.clone());
    if g.leaked == Some(Some(true)) {
        out.push_str("LEAKED ");
    }
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
    for f in g.stack.iter() {
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
    // Found leaked by reachability: a stronger signal than growth, so it comes first.
    if g.leaked.is_some_and(|n| n > 0) {
        out.push_str("LEAKED ");
    }
    if g.leak_suspect {
        out.push_str("LEAK SUSPECT ");
    }
    let what = g.wait_reason.clone().unwrap_or_else(|| g.state.clone());
    let span = match (g.blocked_min_ns, g.blocked_max_ns) {
        (Some(lo), Some(hi)) => format!(", {}–{}", human_duration(lo), human_duration(hi)),
        _ => String::new(),
    };
    let _ = write!(out, "{} goroutines [{what}{span}]", thousands(g.goroutines));
    let growth = g.growth_per_min.round();
    if growth != 0.0 {
        let sign = if growth > 0.0 { '+' } else { '-' };
        let _ = write!(out, " {sign}{}/min", thousands(growth.abs() as u64));
    }
    let _ = write!(out, ", {} of stack", human_bytes(g.stack_bytes));
    match g.leaked {
        Some(n) if n == g.goroutines => out.push_str(", all leaked"),
        Some(n) if n > 0 => {
            let _ = write!(out, ", {} of them leaked", thousands(n));
        }
        _ => {}
    }
    match &g.leak_since {
        Some(since) if g.leak_suspect => {
            let _ = writeln!(out, ", growing since {since}");
        }
        _ => out.push('\n'),
    }
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
    if g.contexts_analysed > 0 && (!g.context_verdicts.is_empty() || g.context_chain.is_some()) {
        let verdicts: Vec<String> = g
            .context_verdicts
            .iter()
            .map(|(v, n)| format!("{} {n}", v.replace('_', " ")))
            .collect();
        let _ = write!(
            out,
            "    contexts of {} analysed: {}",
            g.contexts_analysed,
            if verdicts.is_empty() {
                "no verdict".to_string()
            } else {
                verdicts.join(", ")
            }
        );
        match &g.context_chain {
            Some(chain) => {
                let _ = writeln!(out, "; most held {}", chain.join(" ← "));
            }
            None => out.push('\n'),
        }
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

pub fn render(event: &Event, pid: u32) -> String {
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
                    groups,
                    groups_omitted,
                    leak_suspects,
                    leaked,
                    top_creation_sites,
                    probe,
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
                "summary: {} goroutines ({}); waiting on: {}; {} blocked over threshold in {} groups{}{}; {lost_events} events lost{}",
                thousands(*goroutines),
                states.join(", "),
                if reasons.is_empty() { "-".into() } else { reasons.join(", ") },
                thousands(*blocked),
                thousands(*groups),
                match leak_suspects {
                    0 => String::new(),
                    1 => ", 1 LEAK SUSPECT".into(),
                    n => format!(", {n} LEAK SUSPECTS"),
                } + &match leaked {
                    Some(Some(n)) if *n > 0 => format!(", {} LEAKED", thousands(*n)),
                    _ => String::new(),
                },
                match groups_omitted {
                    0 => String::new(),
                    n => format!(" ({n} group records held back by --max-groups)"),
                },
                dropped_text(*dropped_records)
            );
            if let Some(line) = probe.as_ref().and_then(probe_line) {
                let _ = writeln!(out, "  {line}");
            }
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
        Event::LeakAnalysis {
            leaked,
            stats,
            error,
            run,
        } => {
            let which = run
                .as_ref()
                .map(|r| format!(" #{}", r.analysis))
                .unwrap_or_default();
            match (leaked, error) {
                (Some(n), _) => {
                    let _ = write!(
                        out,
                        "leak analysis{which}: {n} LEAKED of {} goroutines blocked on channels, \
                         select or sync ({} objects, {} of heap; {:.0} ms)",
                        stats.analysed,
                        thousands(stats.heap_objects),
                        human_bytes(stats.heap_bytes),
                        stats.wall_ms
                    );
                }
                (None, e) => {
                    let _ = write!(
                        out,
                        "leak analysis{which} not done: {}",
                        e.as_deref().unwrap_or("unknown reason")
                    );
                }
            }
            if let Some(r) = run {
                let _ = write!(out, "; {} newly leaked", thousands(r.newly_leaked));
                if let Some(why) = &r.delay_reason {
                    let _ = write!(
                        out,
                        "; started {} late: {why}",
                        human_duration(r.delayed_ms as u64 * 1_000_000)
                    );
                }
                if r.skipped > 0 {
                    let _ = write!(out, "; {} intervals skipped so far", r.skipped);
                }
            }
            out.push('\n');
        }
    }
    out
}

/// What the probes lost or could not do, when anything (a budgeted cancel probe detached, a
/// probe found not firing, records the kernel side could not store).
fn probe_line(p: &ProbeStatus) -> Option<String> {
    let mut parts = Vec::new();
    if p.cancel_probe_attached == Some(false) {
        let pct = p.cancel_attached_fraction.unwrap_or(0.0) * 100.0;
        parts.push(format!(
            "cancel probe detached over budget (attached {pct:.1}% of the interval): who \
             cancelled a context is unknown meanwhile"
        ));
    }
    let counts = [
        (
            p.probes_restored,
            "probes re-attached after they stopped firing",
        ),
        (p.map_update_errors, "probe records not stored"),
        (p.probe_read_errors, "probe reads failed"),
        (p.unwatched_wakeups, "wake-ups not watched"),
    ];
    for (n, what) in counts {
        if n > 0 {
            parts.push(format!("{n} {what}"));
        }
    }
    (!parts.is_empty()).then(|| format!("probes: {}", parts.join("; ")))
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
    fn probe_line_only_when_something_was_lost() {
        let mut p = ProbeStatus {
            mode: "precise",
            park_probe_attached: true,
            parks_per_sec: 10.0,
            attached_fraction: 1.0,
            cancel_probe_attached: Some(true),
            cancels_per_sec: Some(3.0),
            cancel_attached_fraction: Some(1.0),
            probes_restored: 0,
            map_update_errors: 0,
            probe_read_errors: 0,
            unwatched_wakeups: 0,
            park_hit_ns: 1000,
            park_hit_cost: "measured",
        };
        assert_eq!(probe_line(&p), None);
        p.cancel_probe_attached = Some(false);
        p.cancel_attached_fraction = Some(0.009);
        p.probes_restored = 1;
        assert_eq!(
            probe_line(&p).as_deref(),
            Some(
                "probes: cancel probe detached over budget (attached 0.9% of the interval): who \
                 cancelled a context is unknown meanwhile; 1 probes re-attached after they \
                 stopped firing"
            )
        );
    }

    #[test]
    fn durations_read_like_go() {
        assert_eq!(human_duration(252 * 1_000_000_000), "4m12s");
        assert_eq!(human_duration(3723 * 1_000_000_000), "1h2m3s");
        assert_eq!(human_duration(1_500_000_000), "1.5s");
        assert_eq!(human_duration(350_000_000), "350ms");
    }
}
