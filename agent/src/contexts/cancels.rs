//! Who cancelled a held context, when and where (precise mode): the cancel probe's record of
//! the context's nearest `cancelCtx`, symbolized, and whether the probe can say at all.

use probe_ebpf::CancelRecord;

use super::ContextDiagnosis;
use crate::probes::CancelSeen;
use crate::stack::{symbolize, SourceFrame, Symbolizer};

/// `cancel_attribution` values (README, Contexts).
pub const PROBE: &str = "probe";
pub const NOT_SEEN: &str = "not_seen";
pub const UNAVAILABLE: &str = "unavailable";

/// Fills `cancelled_ago_ns`, `cancelled_by_goid`, `cancelled_at` and `cancel_attribution` of
/// the cancelled contexts. `lookup` says what the probe knows of the cancelCtx at an address
/// (None: not precise mode, and nothing is claimed). `now_ns`: CLOCK_MONOTONIC, the probe's
/// clock.
pub fn attribute(
    d: &mut ContextDiagnosis,
    lookup: &dyn Fn(u64) -> Option<CancelSeen>,
    sym: &Symbolizer<'_>,
    now_ns: i64,
) {
    for c in d.contexts.iter_mut().filter(|c| c.cancelled) {
        // A cancelled context whose cancelCtx is not known (an opaque wrapper) cannot be
        // looked up: the probe cannot say who cancelled it.
        let seen = match c.facts.cancel_ctx {
            Some(addr) => lookup(addr),
            None => lookup(0).map(|_| CancelSeen::Unavailable),
        };
        let Some(seen) = seen else {
            continue;
        };
        c.cancel_attribution = Some(match seen {
            CancelSeen::Seen(rec) => {
                c.cancelled_ago_ns = Some((now_ns as u64).saturating_sub(rec.ns));
                c.cancelled_by_goid = Some(rec.goid);
                c.cancelled_at = cancel_site(sym, &rec);
                PROBE
            }
            CancelSeen::NotSeen => NOT_SEEN,
            CancelSeen::Unavailable => UNAVAILABLE,
        });
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
