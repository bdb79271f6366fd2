//! The context verdicts of a group's members (issue 8): how many of the members whose contexts
//! were analysed got each verdict, and the most common context chain among them.

use std::collections::{BTreeMap, HashMap};

use crate::contexts::{ContextDiagnosis, Verdict};

#[derive(Debug, Default, Clone)]
pub struct VerdictTally {
    analysed: u64,
    verdicts: BTreeMap<&'static str, u64>,
    chains: HashMap<Vec<String>, u64>,
}

impl VerdictTally {
    pub fn add(&mut self, d: &ContextDiagnosis) {
        self.analysed += 1;
        if let Some(v) = d.context_verdict {
            *self.verdicts.entry(verdict_name(v)).or_default() += 1;
        }
        // The innermost context's chain: the one the blocked code was handed.
        if let Some(c) = d.contexts.first() {
            *self.chains.entry(c.chain.clone()).or_default() += 1;
        }
    }

    /// Members analysed.
    pub fn analysed(&self) -> u64 {
        self.analysed
    }

    /// Verdict (as in `context_verdict`) → members.
    pub fn verdicts(&self) -> BTreeMap<String, u64> {
        self.verdicts
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect()
    }

    /// The most common chain (ties: the shortest, then the first in order).
    pub fn common_chain(&self) -> Option<Vec<String>> {
        self.chains
            .iter()
            .max_by(|a, b| {
                a.1.cmp(b.1)
                    .then(b.0.len().cmp(&a.0.len()))
                    .then(b.0.cmp(a.0))
            })
            .map(|(c, _)| c.clone())
    }
}

/// The name `context_verdict` has in the JSON records.
pub fn verdict_name(v: Verdict) -> &'static str {
    match v {
        Verdict::IgnoresCancellation => "ignores_cancellation",
        Verdict::Uncancellable => "uncancellable",
        Verdict::WaitsForCancel => "waits_for_cancel",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_the_json_records() {
        for v in [
            Verdict::IgnoresCancellation,
            Verdict::Uncancellable,
            Verdict::WaitsForCancel,
        ] {
            let json = serde_json::to_value(v).unwrap();
            assert_eq!(json.as_str(), Some(verdict_name(v)));
        }
    }

    #[test]
    fn counts_and_the_most_common_chain() {
        let mut t = VerdictTally::default();
        let d = |v: Option<Verdict>| ContextDiagnosis {
            context_verdict: v,
            ..Default::default()
        };
        t.add(&d(Some(Verdict::Uncancellable)));
        t.add(&d(Some(Verdict::Uncancellable)));
        t.add(&d(None));
        assert_eq!(t.analysed(), 3);
        assert_eq!(t.verdicts().get("uncancellable"), Some(&2));
        assert_eq!(t.common_chain(), None);
    }
}
