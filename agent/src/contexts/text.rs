//! The text format's context line(s) of a goroutine, e.g.
//! `context *context.timerCtx (deadline passed 4m12s ago: context deadline exceeded) ←
//! context.backgroundCtx; blocked on chan send (chan main.result, cap 0): ignores cancellation`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{ContextDiagnosis, HeldContext};

/// One line per context held (none when it holds none and waits on no channel).
pub fn lines(d: &ContextDiagnosis, wait_reason: Option<&str>) -> Vec<String> {
    let now_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0);
    let blocked = blocked_on(d, wait_reason);
    let verdict = d
        .context_verdict
        .map(|v| format!(": {}", v.text()))
        .unwrap_or_default();
    if d.contexts.is_empty() {
        return match blocked {
            Some(b) if !d.waits_on.is_empty() => vec![format!("no context; {b}")],
            _ => Vec::new(),
        };
    }
    d.contexts
        .iter()
        .map(|c| {
            let mut s = format!("context {}", c.type_name);
            if let Some(state) = state(c, now_ns) {
                s.push_str(&format!(" ({state})"));
            }
            for t in c.chain.iter().skip(1) {
                s.push_str(&format!(" ← {t}"));
            }
            s.push_str(&format!(" in {}", c.frame));
            if let Some(by) = cancelled_by(c) {
                s.push_str(&format!(", {by}"));
            }
            if let Some(b) = &blocked {
                s.push_str(&format!("; {b}"));
            }
            s.push_str(&verdict);
            s
        })
        .collect()
}

fn state(c: &HeldContext, now_ns: i64) -> Option<String> {
    let deadline = c.facts.deadline_unix_ns.map(|d| {
        let (past, ns) = if d <= now_ns {
            (true, now_ns - d)
        } else {
            (false, d - now_ns)
        };
        let dur = humantime::format_duration(Duration::from_secs((ns / 1_000_000_000) as u64));
        if past {
            format!("deadline passed {dur} ago")
        } else {
            format!("deadline in {dur}")
        }
    });
    match (deadline, &c.err) {
        (Some(d), Some(e)) => Some(format!("{d}: {e}")),
        (Some(d), None) => Some(d),
        (None, Some(e)) => Some(format!("cancelled: {e}")),
        (None, None) => None,
    }
}

/// `cancelled 4m 12s ago by goroutine 17 at main.handler (main.go:42)` (precise mode), or
/// that the cancel probe cannot say.
fn cancelled_by(c: &HeldContext) -> Option<String> {
    if c.cancel_attribution == Some(super::cancels::UNAVAILABLE) {
        return Some(
            "who cancelled it is unknown (the cancel probe was not attached throughout)".into(),
        );
    }
    let ago = c.cancelled_ago_ns?;
    // Whole seconds, or milliseconds under a second.
    let ago = if ago >= 1_000_000_000 {
        Duration::from_secs(ago / 1_000_000_000)
    } else {
        Duration::from_millis(ago / 1_000_000)
    };
    let mut s = format!("cancelled {} ago", humantime::format_duration(ago));
    if let Some(goid) = c.cancelled_by_goid {
        s.push_str(&format!(" by goroutine {goid}"));
    }
    if let Some(at) = &c.cancelled_at {
        let file = at.file.rsplit('/').next().unwrap_or(&at.file);
        s.push_str(&format!(" at {} ({file}:{})", at.func, at.line));
    }
    Some(s)
}

fn blocked_on(d: &ContextDiagnosis, wait_reason: Option<&str>) -> Option<String> {
    let reason = wait_reason?;
    let chans: Vec<String> = d
        .waits_on
        .iter()
        .map(|w| {
            let elem = w.elem_type.as_deref().unwrap_or("?");
            let done = if w.ctx_done { ", its ctx.Done()" } else { "" };
            let closed = if w.closed { ", closed" } else { "" };
            format!("chan {elem}, cap {}{closed}{done}", w.cap)
        })
        .collect();
    if chans.is_empty() {
        Some(format!("blocked on {reason}"))
    } else {
        Some(format!("blocked on {reason} ({})", chans.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contexts::{ChanWait, ContextFacts, Verdict};

    #[test]
    fn line_says_chain_state_wait_and_verdict() {
        let d = ContextDiagnosis {
            contexts: vec![HeldContext {
                frame: "main.worker".into(),
                type_name: "*context.cancelCtx".into(),
                cancelled: true,
                err: Some("context canceled".into()),
                deadline: None,
                done_waited: false,
                chain: vec![
                    "*context.cancelCtx".into(),
                    "*context.valueCtx".into(),
                    "context.backgroundCtx".into(),
                ],
                cancelled_ago_ns: Some(252_300_000_000),
                cancelled_by_goid: Some(17),
                cancelled_at: Some(crate::stack::SourceFrame {
                    func: "main.handler".into(),
                    file: "/src/app/main.go".into(),
                    line: 42,
                }),
                cancel_attribution: Some("probe"),
                facts: ContextFacts::default(),
            }],
            waits_on: vec![ChanWait {
                chan: "0xc000010000".into(),
                dir: Some("send"),
                elem_type: Some("main.result".into()),
                cap: 0,
                len: 0,
                closed: false,
                ctx_done: false,
            }],
            context_verdict: Some(Verdict::IgnoresCancellation),
        };
        assert_eq!(
            lines(&d, Some("chan send")),
            vec![
                "context *context.cancelCtx (cancelled: context canceled) ← *context.valueCtx \
                 ← context.backgroundCtx in main.worker, cancelled 4m 12s ago by goroutine 17 at \
                 main.handler (main.go:42); blocked on chan send (chan main.result, \
                 cap 0): ignores cancellation"
                    .to_string()
            ]
        );
        assert!(lines(&ContextDiagnosis::default(), Some("chan send")).is_empty());

        let mut unknown = d.clone();
        let c = &mut unknown.contexts[0];
        (c.cancelled_ago_ns, c.cancelled_by_goid, c.cancelled_at) = (None, None, None);
        c.cancel_attribution = Some("unavailable");
        assert!(lines(&unknown, Some("chan send"))[0].contains(
            "in main.worker, who cancelled it is unknown (the cancel probe was not attached \
             throughout); blocked on"
        ));
    }
}
