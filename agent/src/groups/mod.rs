//! Goroutines grouped the way pprof's `debug=1` and panicparse group them, finer by state and
//! wait reason: the same state, wait reason, stack and creation site make one group. This module
//! is the `--once --grouped` dump and the `group` record; [`stream`] keeps groups of parked
//! goroutines while streaming, with their growth ([`history`]) and leak suspects.

pub mod history;
pub mod stream;
pub mod verdicts;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use verdicts::VerdictTally;

use crate::fxhash::FxHashMap;
use crate::report::GoroutineReport;
use crate::stack::SourceFrame;

/// Goids listed per group.
const SAMPLE_GOIDS: usize = 5;

/// One `group` record (see README's contract).
#[derive(Debug, Clone, Serialize)]
pub struct GroupRecord {
    pub group_id: u64,
    pub goroutines: u64,
    pub state: String,
    pub wait_reason: Option<String>,
    pub stack: Vec<SourceFrame>,
    pub created_by: Option<SourceFrame>,
    pub blocked_min_ns: Option<u64>,
    pub blocked_max_ns: Option<u64>,
    /// Members joined / left since this group's previous record (0 in a one-off dump).
    pub new: u64,
    pub gone: u64,
    pub growth_per_min: f64,
    /// The members' stack memory, from `g.stack`.
    pub stack_bytes: u64,
    pub sample_goids: Vec<u64>,
    pub leak_suspect: bool,
    /// RFC 3339, once a leak suspect.
    pub leak_since: Option<String>,
    /// Null in a one-off dump, which has no threshold.
    pub threshold_ns: Option<u64>,
    /// Members whose contexts were analysed (all in a dump; the `blocked` samples while
    /// streaming), their verdicts (`context_verdict` → members) and the most common context
    /// chain among them.
    pub contexts_analysed: u64,
    pub context_verdicts: BTreeMap<String, u64>,
    pub context_chain: Option<Vec<String>>,
    /// `--leaks`: members whose leak verdict is true; absent without `--leaks`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leaked: Option<u64>,
    /// Streaming `--leaks`: members with a verdict (true or false) from the latest analysis
    /// that saw them in their current park; the others' verdict is still null.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leak_analysed: Option<u64>,
    /// Streaming `--leaks`: up to 5 members with `leaked: true`, those with a `blocked` record
    /// first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leaked_goids: Option<Vec<u64>>,
}

impl GroupRecord {
    fn set_contexts(&mut self, tally: &VerdictTally) {
        self.contexts_analysed = tally.analysed();
        self.context_verdicts = tally.verdicts();
        self.context_chain = tally.common_chain();
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct GroupKey {
    state: String,
    wait_reason: Option<String>,
    stack: Arc<[SourceFrame]>,
    created_by: Option<Arc<SourceFrame>>,
}

/// Collects goroutine reports into groups; holds one record per group, not per goroutine.
#[derive(Default)]
pub struct Grouper {
    /// Fx-hashed: a `--once --grouped` dump hashes a whole stack per goroutine.
    groups: FxHashMap<GroupKey, (GroupRecord, VerdictTally)>,
}

impl Grouper {
    /// Adds one goroutine whose stack occupies `stack_bytes`.
    pub fn add(&mut self, g: GoroutineReport, stack_bytes: u64) {
        let key = GroupKey {
            state: g.state,
            wait_reason: g.wait_reason,
            stack: g.stack,
            created_by: g.created_by,
        };
        let next_id = self.groups.len() as u64 + 1;
        let (group, tally) = self.groups.entry(key).or_insert_with_key(|k| {
            (
                GroupRecord {
                    group_id: next_id,
                    goroutines: 0,
                    state: k.state.clone(),
                    wait_reason: k.wait_reason.clone(),
                    stack: k.stack.to_vec(),
                    created_by: k.created_by.as_deref().cloned(),
                    blocked_min_ns: None,
                    blocked_max_ns: None,
                    new: 0,
                    gone: 0,
                    growth_per_min: 0.0,
                    stack_bytes: 0,
                    sample_goids: Vec::new(),
                    leak_suspect: false,
                    leak_since: None,
                    threshold_ns: None,
                    contexts_analysed: 0,
                    context_verdicts: BTreeMap::new(),
                    context_chain: None,
                    leaked: None,
                    leak_analysed: None,
                    leaked_goids: None,
                },
                VerdictTally::default(),
            )
        });
        tally.add(&g.contexts);
        group.goroutines += 1;
        if let Some(verdict) = g.leaked {
            *group.leaked.get_or_insert(0) += u64::from(verdict == Some(true));
        }
        group.stack_bytes += stack_bytes;
        if let Some(ns) = g.blocked_ns {
            group.blocked_min_ns = Some(group.blocked_min_ns.map_or(ns, |m| m.min(ns)));
            group.blocked_max_ns = Some(group.blocked_max_ns.map_or(ns, |m| m.max(ns)));
        }
        if group.sample_goids.len() < SAMPLE_GOIDS {
            group.sample_goids.push(g.goid);
        }
    }

    /// The groups, largest first (ties: the group seen first).
    pub fn into_records(self) -> Vec<GroupRecord> {
        let mut records: Vec<GroupRecord> = self
            .groups
            .into_values()
            .map(|(mut r, tally)| {
                r.set_contexts(&tally);
                r
            })
            .collect();
        records.sort_by(|a, b| {
            b.goroutines
                .cmp(&a.goroutines)
                .then(a.group_id.cmp(&b.group_id))
        });
        records
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::SinceSource;

    fn report(goid: u64, reason: &str, line: u32, blocked: Option<u64>) -> GoroutineReport {
        GoroutineReport {
            goid,
            state: "waiting".into(),
            wait_reason: Some(reason.into()),
            blocked_ns: blocked,
            since_exact: false,
            since_source: SinceSource::Runtime,
            stack: vec![SourceFrame {
                func: "main.f".into(),
                file: "/m.go".into(),
                line,
            }]
            .into(),
            stack_error: None,
            created_by: None,
            parent_goid: None,
            system: false,
            contexts: Default::default(),
            leaked: None,
        }
    }

    #[test]
    fn same_stack_and_reason_make_one_group_largest_first() {
        let mut g = Grouper::default();
        g.add(report(1, "chan send", 3, Some(5)), 2048);
        for goid in 2..10 {
            g.add(report(goid, "chan receive", 3, Some(goid)), 4096);
        }
        g.add(report(10, "chan receive", 4, None), 2048);
        let r = g.into_records();
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].goroutines, 8);
        assert_eq!(r[0].wait_reason.as_deref(), Some("chan receive"));
        assert_eq!(r[0].sample_goids, vec![2, 3, 4, 5, 6]);
        assert_eq!(r[0].stack_bytes, 8 * 4096);
        assert_eq!(
            (r[0].blocked_min_ns, r[0].blocked_max_ns),
            (Some(2), Some(9))
        );
        assert_eq!(r[1].goroutines, 1);
        assert_eq!(r[2].blocked_min_ns, None);
    }
}
