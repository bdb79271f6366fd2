//! Who cancelled a held context, when and where (precise mode): the cancel probe's record of
//! the context's nearest `cancelCtx`, symbolized.

use probe_ebpf::CancelRecord;

use super::ContextDiagnosis;
use crate::stack::{symbolize, SourceFrame, Symbolizer};

/// Fills `cancelled_ago_ns`, `cancelled_by_goid` and `cancelled_at` of the cancelled contexts
/// whose cancellation the probe saw; the others keep null (cancelled before the probe was
/// attached, or a later cancellation took its slot). `now_ns`: CLOCK_MONOTONIC, the probe's clock.
pub fn attribute(
    d: &mut ContextDiagnosis,
    lookup: &dyn Fn(u64) -> Option<CancelRecord>,
    sym: &Symbolizer<'_>,
    now_ns: i64,
) {
    for c in d.contexts.iter_mut().filter(|c| c.cancelled) {
        let Some(rec) = c.facts.cancel_ctx.and_then(lookup) else {
            continue;
        };
        c.cancelled_ago_ns = Some((now_ns as u64).saturating_sub(rec.ns));
        c.cancelled_by_goid = Some(rec.goid);
        c.cancelled_at = cancel_site(sym, &rec);
    }
}

/// The first caller outside package context: the user's `cancel()` call, or for a context
/// cancelled with its parent, the call that cancelled the parent (propagation runs in the
/// same goroutine, through context's own frames).
fn cancel_site(sym: &Symbolizer<'_>, rec: &CancelRecord) -> Option<SourceFrame> {
    let pcs: Vec<u64> = rec.pcs.iter().copied().take_while(|&pc| pc != 0).collect();
    let frames = symbolize(sym, &pcs);
    let outside = frames.iter().find(|f| !in_package_context(&f.func));
    outside.or(frames.last()).cloned()
}

fn in_package_context(func: &str) -> bool {
    func.starts_with("context.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_context_is_only_the_standard_one() {
        assert!(in_package_context("context.(*cancelCtx).cancel"));
        assert!(in_package_context("context.WithCancel.func1"));
        assert!(!in_package_context("example.com/context.Cancel"));
        assert!(!in_package_context("main.handler"));
    }
}
