//! The verdicts of one analysis, compactly: 16 bytes per goroutine, by its position in
//! `runtime.allgs` (which the runtime only ever appends to, so the streaming tracker's
//! positions are the same), and a goid index for records that only have the goroutine.
//! A million goroutines cost 20 MB, with no per-goroutine allocation.

use crate::goroutines::RawG;

use super::ParkKey;

/// What the analysis said of one goroutine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum Said {
    /// Not blocked on a channel, select or sync object (or no goroutine at this position).
    #[default]
    NotAnalysed,
    /// Blocked on one, but what it waits on could not be found: counted as able to run.
    Unresolved,
    NotLeaked,
    Leaked,
}

impl Said {
    /// The record's `leaked`: true, false, or null.
    pub fn leaked(self) -> Option<bool> {
        match self {
            Said::Leaked => Some(true),
            Said::NotLeaked => Some(false),
            Said::NotAnalysed | Said::Unresolved => None,
        }
    }
}

/// One goroutine's park as the analysis saw it, and its verdict.
#[derive(Debug, Clone, Copy, Default)]
pub struct Entry {
    pub goid: u64,
    /// `_Gleaked` counted as `_Gwaiting` (see [`ParkKey`]); u16: statuses are small.
    pub status: u16,
    pub wait_reason: u8,
    pub tracking_seq: u8,
    pub said: Said,
}

impl Entry {
    pub fn of(g: &RawG, said: Said) -> Entry {
        let key = ParkKey::of(g);
        Entry {
            goid: key.goid,
            status: u16::try_from(key.status).unwrap_or(u16::MAX),
            wait_reason: key.wait_reason,
            tracking_seq: key.tracking_seq,
            said,
        }
    }

    /// The same goroutine in the same park.
    pub fn same_park(&self, key: &ParkKey) -> bool {
        self.goid == key.goid
            && u32::from(self.status) == key.status
            && self.wait_reason == key.wait_reason
            && self.tracking_seq == key.tracking_seq
    }

    pub fn same_park_as(&self, other: &Entry) -> bool {
        self.goid == other.goid
            && self.status == other.status
            && self.wait_reason == other.wait_reason
            && self.tracking_seq == other.tracking_seq
    }
}

#[derive(Debug, Default)]
pub struct VerdictTable {
    /// By position in `allgs`; a position with no live goroutine has goid 0.
    entries: Vec<Entry>,
    /// Positions of analysed entries, by goid.
    by_goid: Vec<u32>,
}

impl VerdictTable {
    pub fn new(entries: Vec<Entry>) -> VerdictTable {
        let mut by_goid: Vec<u32> = entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.said != Said::NotAnalysed)
            .filter_map(|(i, _)| u32::try_from(i).ok())
            .collect();
        by_goid.sort_unstable_by_key(|&i| entries[i as usize].goid);
        VerdictTable { entries, by_goid }
    }

    /// The verdict for the park at position `pos` of `allgs` (the streaming tracker's
    /// position): only if the analysis saw the same goroutine in the same park.
    pub fn for_park(&self, pos: usize, key: &ParkKey) -> Option<bool> {
        self.entries
            .get(pos)
            .filter(|e| e.same_park(key))
            .and_then(|e| e.said.leaked())
    }

    /// The verdict for a goroutine as read now: only if it is still in the analysed park.
    pub fn for_goroutine(&self, g: &RawG) -> Option<bool> {
        let key = ParkKey::of(g);
        let i = self
            .by_goid
            .binary_search_by_key(&g.goid, |&i| self.entries[i as usize].goid)
            .ok()?;
        let e = self.entries.get(self.by_goid[i] as usize)?;
        if e.same_park(&key) {
            e.said.leaked()
        } else {
            None
        }
    }

    #[cfg(test)]
    pub fn leaked(&self) -> u64 {
        self.entries
            .iter()
            .filter(|e| e.said == Said::Leaked)
            .count() as u64
    }

    /// Goroutines called leaked here that `before` did not call leaked in the same park.
    pub fn newly_leaked(&self, before: Option<&VerdictTable>) -> u64 {
        self.entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.said == Said::Leaked)
            .filter(|(i, e)| {
                !before
                    .and_then(|b| b.entries.get(*i))
                    .is_some_and(|b| b.said == Said::Leaked && b.same_park_as(e))
            })
            .count() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::goroutines::STATUS_WAITING;

    fn entry(goid: u64, seq: u8, said: Said) -> Entry {
        Entry {
            goid,
            status: STATUS_WAITING as u16,
            wait_reason: 7,
            tracking_seq: seq,
            said,
        }
    }

    fn key(goid: u64, seq: u8) -> ParkKey {
        ParkKey {
            goid,
            status: STATUS_WAITING,
            wait_reason: 7,
            tracking_seq: seq,
        }
    }

    #[test]
    fn a_verdict_holds_only_for_the_same_park() {
        let t = VerdictTable::new(vec![
            entry(30, 1, Said::Leaked),
            Entry::default(),
            entry(12, 5, Said::NotLeaked),
            entry(40, 2, Said::Unresolved),
        ]);
        assert_eq!(t.for_park(0, &key(30, 1)), Some(true));
        // Another park of the same goroutine, another goroutine at that position.
        assert_eq!(t.for_park(0, &key(30, 2)), None);
        assert_eq!(t.for_park(0, &key(31, 1)), None);
        assert_eq!(t.for_park(2, &key(12, 5)), Some(false));
        assert_eq!(t.for_park(3, &key(40, 2)), None);
        assert_eq!(t.for_park(9, &key(40, 2)), None);
        assert_eq!(t.leaked(), 1);
    }

    #[test]
    fn newly_leaked_counts_what_the_previous_table_did_not_say() {
        let before = VerdictTable::new(vec![
            entry(1, 1, Said::Leaked),
            entry(2, 1, Said::NotLeaked),
            entry(3, 1, Said::Leaked),
        ]);
        let now = VerdictTable::new(vec![
            entry(1, 1, Said::Leaked), // already
            entry(2, 1, Said::Leaked), // new verdict, same park
            entry(3, 2, Said::Leaked), // a new park
            entry(4, 1, Said::Leaked), // a new goroutine
        ]);
        assert_eq!(now.newly_leaked(Some(&before)), 3);
        assert_eq!(now.newly_leaked(None), 4);
    }
}
