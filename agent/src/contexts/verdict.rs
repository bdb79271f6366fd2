//! The verdict on a goroutine's contexts (issue 8, item 4), from what was decoded.

use serde::Serialize;

use super::{ChanWait, HeldContext};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// A context it holds is cancelled, yet it is blocked on something else.
    IgnoresCancellation,
    /// Blocked in a channel wait or select, and no context it holds can ever be cancelled.
    Uncancellable,
    /// Waits on the Done channel of a context that is not cancelled and has no deadline.
    WaitsForCancel,
}

impl Verdict {
    pub fn text(self) -> &'static str {
        match self {
            Verdict::IgnoresCancellation => "ignores cancellation",
            Verdict::Uncancellable => "uncancellable",
            Verdict::WaitsForCancel => "waits for cancel",
        }
    }
}

/// Channel waits and selects, by the runtime's wait reasons.
fn is_channel_wait(wait_reason: Option<&str>) -> bool {
    wait_reason.is_some_and(|r| r.starts_with("chan ") || r.starts_with("select"))
}

pub fn verdict(
    waiting: bool,
    wait_reason: Option<&str>,
    contexts: &[HeldContext],
    waits_on: &[ChanWait],
) -> Option<Verdict> {
    if !waiting || contexts.is_empty() {
        return None;
    }
    let waits_on_done_of = |c: &HeldContext| {
        c.facts
            .done_chan
            .is_some_and(|d| waits_on.iter().any(|w| w.chan == format!("{d:#x}")))
    };
    if contexts.iter().any(|c| c.cancelled && !waits_on_done_of(c)) {
        return Some(Verdict::IgnoresCancellation);
    }
    if contexts.iter().any(|c| {
        c.done_waited && !c.cancelled && !c.facts.unknown && c.facts.deadline_unix_ns.is_none()
    }) {
        return Some(Verdict::WaitsForCancel);
    }
    if is_channel_wait(wait_reason) && contexts.iter().all(|c| c.facts.never_cancelled) {
        return Some(Verdict::Uncancellable);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contexts::ContextFacts;

    fn ctx(cancelled: bool, never: bool, deadline: Option<i64>, done: Option<u64>) -> HeldContext {
        HeldContext {
            frame: "main.f".into(),
            type_name: "*context.cancelCtx".into(),
            cancelled,
            err: cancelled.then(|| "context canceled".into()),
            deadline: None,
            done_waited: false,
            chain: vec![],
            cancelled_ago_ns: None,
            cancelled_by_goid: None,
            cancelled_at: None,
            cancel_attribution: None,
            facts: ContextFacts {
                never_cancelled: never,
                unknown: false,
                deadline_unix_ns: deadline,
                done_chan: done,
                cancel_ctx: None,
            },
        }
    }

    fn wait(chan: u64) -> ChanWait {
        ChanWait {
            chan: format!("{chan:#x}"),
            dir: Some("recv"),
            elem_type: Some("struct {}".into()),
            cap: 0,
            len: 0,
            closed: false,
            ctx_done: false,
        }
    }

    #[test]
    fn verdicts() {
        let recv = Some("chan receive");
        // Cancelled, blocked on another channel.
        assert_eq!(
            verdict(
                true,
                Some("chan send"),
                &[ctx(true, false, None, Some(1))],
                &[wait(2)]
            ),
            Some(Verdict::IgnoresCancellation)
        );
        // Not waiting: nothing to say.
        assert_eq!(
            verdict(false, None, &[ctx(true, false, None, None)], &[]),
            None
        );
        // Waits on Done of a cancel-only context.
        let mut c = ctx(false, false, None, Some(7));
        c.done_waited = true;
        assert_eq!(
            verdict(true, Some("select"), &[c.clone()], &[wait(7)]),
            Some(Verdict::WaitsForCancel)
        );
        // Same with a deadline: it will be released.
        c.facts.deadline_unix_ns = Some(1);
        assert_eq!(verdict(true, Some("select"), &[c], &[wait(7)]), None);
        // Background only, blocked on a channel.
        assert_eq!(
            verdict(true, recv, &[ctx(false, true, None, None)], &[wait(3)]),
            Some(Verdict::Uncancellable)
        );
        // ...but not in a mutex wait.
        assert_eq!(
            verdict(
                true,
                Some("sync.Mutex.Lock"),
                &[ctx(false, true, None, None)],
                &[]
            ),
            None
        );
        // No context at all.
        assert_eq!(verdict(true, recv, &[], &[wait(3)]), None);
    }
}
