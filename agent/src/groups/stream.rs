//! Groups while streaming: parked goroutines with the same state, wait reason, stack (PCs) and
//! creation site, counted at every snapshot, with their growth and the leak-suspect verdict,
//! and which `group` records are due.
//!
//! A goroutine joins its group when a second snapshot sees it still in the same park (its stack
//! is read once, then): goroutines that park for a moment and run on never cost a stack read.
//! It leaves when the park ends. Records are rationed: a group is first reported when one of its
//! members is blocked past the threshold, then at each summary while its size changes, and at
//! once when it becomes (or stops being) a leak suspect; at most `max_groups` records per summary
//! interval, leak suspects and the largest groups first.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use super::history::History;
use super::verdicts::VerdictTally;
use super::GroupRecord;
use crate::contexts::ContextDiagnosis;
use crate::stack::SourceFrame;

pub type GroupId = u32;

/// Goids listed per group record.
const SAMPLE_GOIDS: usize = 5;

/// What makes goroutines identical while they stay parked.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StreamKey {
    pub status: u32,
    pub wait_reason: u8,
    /// Return addresses, innermost first.
    pub pcs: Vec<u64>,
    pub gopc: u64,
}

/// How a group reads, worked out once when it is created.
pub struct GroupLabel {
    pub state: String,
    pub wait_reason: Option<String>,
    pub stack: Vec<SourceFrame>,
    pub created_by: Option<SourceFrame>,
}

/// One member as seen by a snapshot.
pub struct Member {
    pub group: GroupId,
    pub goid: u64,
    pub stack_bytes: u64,
    pub blocked_ns: u64,
    /// Has a `blocked` record.
    pub sampled: bool,
    /// `--leaks`: its park's verdict (None: none yet).
    pub leaked: Option<bool>,
}

pub struct StreamSettings {
    pub threshold_ns: u64,
    pub max_groups: usize,
    pub samples_per_group: u32,
    /// Streaming `--leaks`: records carry leak verdicts.
    pub leaks: bool,
}

#[derive(Default)]
struct Stats {
    count: u64,
    stack_bytes: u64,
    blocked_min_ns: Option<u64>,
    blocked_max_ns: Option<u64>,
    sample_goids: Vec<u64>,
    leaks: LeakTally,
}

/// `--leaks`, per group: members called leaked, members with a verdict, and up to
/// [`SAMPLE_GOIDS`] leaked goids, those with a `blocked` record first.
#[derive(Default, Clone)]
struct LeakTally {
    leaked: u64,
    analysed: u64,
    goids: Vec<u64>,
    /// Leaked members without a `blocked` record, while counting.
    unsampled: Vec<u64>,
}

impl LeakTally {
    fn add(&mut self, m: &Member) {
        let Some(leaked) = m.leaked else { return };
        self.analysed += 1;
        if !leaked {
            return;
        }
        self.leaked += 1;
        let list = if m.sampled {
            &mut self.goids
        } else {
            &mut self.unsampled
        };
        if list.len() < SAMPLE_GOIDS {
            list.push(m.goid);
        }
    }

    fn finish(&mut self) {
        self.goids.sort_unstable();
        let mut rest = std::mem::take(&mut self.unsampled);
        rest.sort_unstable();
        let room = SAMPLE_GOIDS.saturating_sub(self.goids.len());
        self.goids.extend(rest.into_iter().take(room));
    }
}

struct Group {
    id: GroupId,
    label: GroupLabel,
    stats: Stats,
    joined: u64,
    left: u64,
    history: Option<History>,
    /// `blocked` records sent for its members, and their context verdicts.
    samples: u32,
    verdicts: VerdictTally,
    /// Since when (RFC 3339) it has been growing, while it is a leak suspect.
    suspect: Option<String>,
    /// It has had a record; then what it said (see [`Group::now`]).
    reported: bool,
    at_record: RecordState,
    /// A record is owed (first past the threshold, a suspect change) and goes out as soon
    /// as the interval's allowance permits.
    urgent: bool,
}

/// What a record says that makes a later one due when it changes: members, joined, left,
/// suspect, and (`--leaks`) members called leaked and members with a verdict.
type RecordState = (u64, u64, u64, bool, u64, u64);

impl Group {
    fn now(&self) -> RecordState {
        (
            self.stats.count,
            self.joined,
            self.left,
            self.suspect.is_some(),
            self.stats.leaks.leaked,
            self.stats.leaks.analysed,
        )
    }

    /// A group whose members are found leaked says so at once (the first time): that is a
    /// stronger signal than growth.
    fn note_leaks(&mut self, now: &LeakTally) {
        if now.leaked > 0 && self.stats.leaks.leaked == 0 && self.reported {
            self.urgent = true;
        }
    }

    fn changed_since_record(&self) -> bool {
        self.reported && self.at_record != self.now()
    }
}

pub struct StreamGroups {
    settings: StreamSettings,
    origin_ns: i64,
    ids: HashMap<StreamKey, GroupId>,
    /// Indexed by `id - 1`.
    groups: Vec<Group>,
    /// Records sent in the current summary interval.
    sent_in_interval: usize,
}

impl StreamGroups {
    pub fn new(settings: StreamSettings, origin_ns: i64) -> StreamGroups {
        StreamGroups {
            settings,
            origin_ns,
            ids: HashMap::new(),
            groups: Vec::new(),
            sent_in_interval: 0,
        }
    }

    pub fn find(&self, key: &StreamKey) -> Option<GroupId> {
        self.ids.get(key).copied()
    }

    pub fn create(&mut self, key: StreamKey, label: GroupLabel) -> GroupId {
        let id = self.groups.len() as GroupId + 1;
        self.ids.insert(key, id);
        self.groups.push(Group {
            id,
            label,
            stats: Stats::default(),
            joined: 0,
            left: 0,
            history: None,
            samples: 0,
            verdicts: VerdictTally::default(),
            suspect: None,
            reported: false,
            at_record: (0, 0, 0, false, 0, 0),
            urgent: false,
        });
        id
    }

    fn group(&mut self, id: GroupId) -> Option<&mut Group> {
        let i = usize::try_from(id.checked_sub(1)?).ok()?;
        self.groups.get_mut(i)
    }

    pub fn joined(&mut self, id: GroupId) {
        if let Some(g) = self.group(id) {
            g.joined += 1;
        }
    }

    pub fn left(&mut self, id: GroupId) {
        if let Some(g) = self.group(id) {
            g.left += 1;
        }
    }

    /// May one more member of `id` get a `blocked` record?
    pub fn may_sample(&self, id: GroupId) -> bool {
        let i = id.wrapping_sub(1) as usize;
        self.groups
            .get(i)
            .is_some_and(|g| g.samples < self.settings.samples_per_group)
    }

    /// A member got a `blocked` record, with this context diagnosis.
    pub fn sampled(&mut self, id: GroupId, contexts: &ContextDiagnosis) {
        if let Some(g) = self.group(id) {
            g.samples += 1;
            g.verdicts.add(contexts);
        }
    }

    /// Takes in one snapshot's members (every grouped park) at `now_ns` (our clock): sizes,
    /// history and suspects. Groups that owe a record are marked.
    pub fn update(&mut self, now_ns: i64, members: impl Iterator<Item = Member>) {
        let mut stats: Vec<Stats> = Vec::new();
        stats.resize_with(self.groups.len(), Stats::default);
        let mut unsampled: Vec<Vec<u64>> = vec![Vec::new(); self.groups.len()];
        for m in members {
            let Some(s) = usize::try_from(m.group.wrapping_sub(1))
                .ok()
                .and_then(|i| stats.get_mut(i))
            else {
                continue;
            };
            s.count += 1;
            s.stack_bytes += m.stack_bytes;
            s.blocked_min_ns = Some(
                s.blocked_min_ns
                    .map_or(m.blocked_ns, |v| v.min(m.blocked_ns)),
            );
            s.blocked_max_ns = Some(
                s.blocked_max_ns
                    .map_or(m.blocked_ns, |v| v.max(m.blocked_ns)),
            );
            s.leaks.add(&m);
            // Goroutines with a `blocked` record first: those a reader can look up.
            if m.sampled && s.sample_goids.len() < SAMPLE_GOIDS {
                s.sample_goids.push(m.goid);
            } else if let Some(u) = unsampled.get_mut(m.group as usize - 1) {
                if u.len() < SAMPLE_GOIDS {
                    u.push(m.goid);
                }
            }
        }
        let threshold = self.settings.threshold_ns;
        for ((g, mut s), extra) in self.groups.iter_mut().zip(stats).zip(unsampled) {
            s.leaks.finish();
            g.note_leaks(&s.leaks);
            s.sample_goids.sort_unstable();
            let mut extra = extra;
            extra.sort_unstable();
            for goid in extra {
                if s.sample_goids.len() == SAMPLE_GOIDS {
                    break;
                }
                s.sample_goids.push(goid);
            }
            g.stats = s;
            match &mut g.history {
                Some(h) => h.record(now_ns, g.stats.count, g.joined, g.left),
                None if g.stats.count > 0 => {
                    g.history = Some(History::new(
                        self.origin_ns,
                        now_ns,
                        g.stats.count,
                        g.joined,
                        g.left,
                    ))
                }
                None => {}
            }
            let past_threshold = g.stats.blocked_max_ns.is_some_and(|b| b >= threshold);
            if !g.reported && past_threshold {
                g.urgent = true;
            }
            let growth = g.history.as_ref().and_then(|h| h.growth_suspect(now_ns));
            let suspect = past_threshold && growth.is_some();
            match (&g.suspect, suspect) {
                (None, true) => {
                    // Worked out once, so every record of this suspicion says the same.
                    g.suspect = growth.map(|since| wall_time(since, now_ns));
                    g.urgent = true;
                }
                (Some(_), false) => {
                    g.suspect = None;
                    g.urgent |= g.reported;
                }
                _ => {}
            }
        }
    }

    /// Groups owed a record now (first past the threshold, suspect changes), as many as the
    /// interval's allowance leaves.
    pub fn due_now(&mut self, now_ns: i64) -> Vec<GroupRecord> {
        let mut due: Vec<usize> = (0..self.groups.len())
            .filter(|&i| self.groups[i].urgent)
            .collect();
        self.rank(&mut due);
        let room = self
            .settings
            .max_groups
            .saturating_sub(self.sent_in_interval);
        due.truncate(room);
        due.into_iter().map(|i| self.record(i, now_ns)).collect()
    }

    /// At a summary: the records owed (urgent ones first, then groups whose size changed since
    /// their last record) within the allowance, and how many were held back. Starts a new
    /// interval.
    pub fn due_at_summary(&mut self, now_ns: i64) -> (Vec<GroupRecord>, u64) {
        let mut urgent: Vec<usize> = (0..self.groups.len())
            .filter(|&i| self.groups[i].urgent)
            .collect();
        let mut changed: Vec<usize> = (0..self.groups.len())
            .filter(|&i| !self.groups[i].urgent && self.groups[i].changed_since_record())
            .collect();
        self.rank(&mut urgent);
        self.rank(&mut changed);
        let mut due = urgent;
        due.extend(changed);
        let room = self
            .settings
            .max_groups
            .saturating_sub(self.sent_in_interval);
        let omitted = due.len().saturating_sub(room) as u64;
        due.truncate(room);
        let records = due.into_iter().map(|i| self.record(i, now_ns)).collect();
        self.sent_in_interval = 0;
        (records, omitted)
    }

    /// Leak suspects first, then the largest, then the fastest growing.
    fn rank(&self, order: &mut [usize]) {
        let key = |i: &usize| {
            let g = &self.groups[*i];
            (
                g.stats.leaks.leaked == 0,
                g.suspect.is_none(),
                std::cmp::Reverse(g.stats.count),
                g.id,
            )
        };
        order.sort_by_key(key);
    }

    fn record(&mut self, i: usize, now_ns: i64) -> GroupRecord {
        self.sent_in_interval += 1;
        let threshold_ns = self.settings.threshold_ns;
        let g = &mut self.groups[i];
        let (_, joined0, left0, ..) = g.at_record;
        g.reported = true;
        g.urgent = false;
        g.at_record = g.now();
        let leaks = self.settings.leaks;
        GroupRecord {
            group_id: u64::from(g.id),
            goroutines: g.stats.count,
            state: g.label.state.clone(),
            wait_reason: g.label.wait_reason.clone(),
            stack: g.label.stack.clone(),
            created_by: g.label.created_by.clone(),
            blocked_min_ns: g.stats.blocked_min_ns,
            blocked_max_ns: g.stats.blocked_max_ns,
            new: g.joined - joined0,
            gone: g.left - left0,
            growth_per_min: g
                .history
                .as_ref()
                .map_or(0.0, |h| h.growth_per_min(now_ns, g.stats.count)),
            stack_bytes: g.stats.stack_bytes,
            sample_goids: g.stats.sample_goids.clone(),
            leak_suspect: g.suspect.is_some(),
            leak_since: g.suspect.clone(),
            threshold_ns: Some(threshold_ns),
            contexts_analysed: g.verdicts.analysed(),
            context_verdicts: g.verdicts.verdicts(),
            context_chain: g.verdicts.common_chain(),
            leaked: leaks.then_some(g.stats.leaks.leaked),
            leak_analysed: leaks.then_some(g.stats.leaks.analysed),
            leaked_goids: leaks.then(|| g.stats.leaks.goids.clone()),
        }
    }

    /// Groups with members blocked past the threshold now.
    pub fn past_threshold(&self) -> u64 {
        let t = self.settings.threshold_ns;
        self.groups
            .iter()
            .filter(|g| g.stats.blocked_max_ns.is_some_and(|b| b >= t))
            .count() as u64
    }

    pub fn leak_suspects(&self) -> u64 {
        self.groups.iter().filter(|g| g.suspect.is_some()).count() as u64
    }

    /// `--leaks`: groups with members called leaked now.
    pub fn leaked_groups(&self) -> u64 {
        self.groups
            .iter()
            .filter(|g| g.stats.leaks.leaked > 0)
            .count() as u64
    }

    /// `--leaks`: new verdicts for the members (every grouped park), between snapshots: only
    /// the leak counts change (sizes, growth and suspects wait for the next snapshot).
    pub fn update_leaks(&mut self, members: impl Iterator<Item = Member>) {
        let mut tallies = vec![LeakTally::default(); self.groups.len()];
        for m in members {
            if let Some(t) = usize::try_from(m.group.wrapping_sub(1))
                .ok()
                .and_then(|i| tallies.get_mut(i))
            {
                t.add(&m);
            }
        }
        for (g, mut t) in self.groups.iter_mut().zip(tallies) {
            t.finish();
            g.note_leaks(&t);
            g.stats.leaks = t;
        }
    }
}

/// RFC 3339 of a moment of our monotonic clock, `now_ns` being now.
fn wall_time(at_ns: i64, now_ns: i64) -> String {
    let ago = Duration::from_nanos(now_ns.saturating_sub(at_ns).max(0) as u64);
    let t = SystemTime::now()
        .checked_sub(ago)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    humantime::format_rfc3339_nanos(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    fn label() -> GroupLabel {
        GroupLabel {
            state: "waiting".into(),
            wait_reason: Some("chan send".into()),
            stack: Vec::new(),
            created_by: None,
        }
    }

    fn key(pc: u64) -> StreamKey {
        StreamKey {
            status: 4,
            wait_reason: 14,
            pcs: vec![pc],
            gopc: 1,
        }
    }

    fn members(group: GroupId, n: u64, blocked_ns: u64) -> impl Iterator<Item = Member> {
        (0..n).map(move |i| Member {
            group,
            goid: 100 + i,
            stack_bytes: 8192,
            blocked_ns,
            sampled: i == 7,
            leaked: None,
        })
    }

    fn settings(max_groups: usize) -> StreamSettings {
        StreamSettings {
            threshold_ns: 2 * S as u64,
            max_groups,
            samples_per_group: 3,
            leaks: true,
        }
    }

    #[test]
    fn leaked_members_are_counted_and_said_at_once_the_first_time() {
        let mut g = StreamGroups::new(settings(50), 0);
        let id = g.create(key(1), label());
        g.update(0, members(id, 10, 3 * S as u64));
        let first = g.due_now(0);
        assert_eq!(first.len(), 1);
        assert_eq!(
            (first[0].leaked, first[0].leak_analysed),
            (Some(0), Some(0))
        );
        // The analysis calls 4 of them leaked (member 7 has a `blocked` record).
        let verdicts = |i: u64| match i {
            0..=4 => Some(false),
            5 | 6 | 7 | 9 => Some(true),
            _ => None,
        };
        let with_verdicts = members(id, 10, 4 * S as u64).map(|mut m| {
            m.leaked = verdicts(m.goid - 100);
            m
        });
        g.update(S, with_verdicts);
        let now = g.due_now(S);
        assert_eq!(now.len(), 1, "a group found leaked is said at once");
        let r = &now[0];
        assert_eq!((r.leaked, r.leak_analysed), (Some(4), Some(9)));
        assert_eq!(r.leaked_goids.as_deref(), Some(&[107, 105, 106, 109][..]));
        assert_eq!(g.leaked_groups(), 1);
        // Unchanged: nothing more until the count changes.
        let same = members(id, 10, 5 * S as u64).map(|mut m| {
            m.leaked = verdicts(m.goid - 100);
            m
        });
        g.update(2 * S, same);
        assert!(g.due_now(2 * S).is_empty());
        assert!(g.due_at_summary(2 * S).0.is_empty());
    }

    #[test]
    fn first_record_when_past_the_threshold_then_only_on_change() {
        let mut g = StreamGroups::new(settings(50), 0);
        let id = g.create(key(1), label());
        for _ in 0..10 {
            g.joined(id);
        }
        g.update(S, members(id, 10, S as u64));
        assert!(g.due_now(S).is_empty(), "nobody past the threshold yet");
        g.update(3 * S, members(id, 10, 3 * S as u64));
        let r = g.due_now(3 * S);
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].goroutines, r[0].new, r[0].gone), (10, 10, 0));
        assert_eq!(r[0].sample_goids, vec![107, 100, 101, 102, 103]);
        assert_eq!(r[0].stack_bytes, 10 * 8192);
        assert!(g.due_at_summary(3 * S).0.is_empty(), "unchanged since");
        g.left(id);
        g.update(4 * S, members(id, 9, 4 * S as u64));
        let (r, omitted) = g.due_at_summary(4 * S);
        assert_eq!((r.len(), omitted), (1, 0));
        assert_eq!((r[0].goroutines, r[0].new, r[0].gone), (9, 0, 1));
    }

    #[test]
    fn at_most_max_groups_per_interval_largest_first() {
        let mut g = StreamGroups::new(settings(2), 0);
        let ids: Vec<GroupId> = (1..=4).map(|pc| g.create(key(pc), label())).collect();
        let all = |n: u64| {
            ids.iter()
                .flat_map(move |&id| members(id, u64::from(id) * n, 3 * S as u64))
                .collect::<Vec<_>>()
        };
        g.update(3 * S, all(1).into_iter());
        let now = g.due_now(3 * S);
        assert_eq!(
            now.iter().map(|r| r.group_id).collect::<Vec<_>>(),
            vec![4, 3]
        );
        let (later, omitted) = g.due_at_summary(3 * S);
        assert!(later.is_empty());
        assert_eq!(omitted, 2);
        let (next, omitted) = g.due_at_summary(4 * S);
        assert_eq!(
            next.iter().map(|r| r.group_id).collect::<Vec<_>>(),
            vec![2, 1]
        );
        assert_eq!(omitted, 0);
    }

    #[test]
    fn a_growing_group_becomes_a_suspect_at_once() {
        let mut g = StreamGroups::new(settings(50), 0);
        let id = g.create(key(1), label());
        let mut became = None;
        for t in 1..=60 {
            g.joined(id);
            g.update(t * S, members(id, t as u64, t as u64 * S as u64));
            for r in g.due_now(t * S) {
                if r.leak_suspect && became.is_none() {
                    became = Some((t, r.leak_since.is_some()));
                }
            }
            g.due_at_summary(t * S);
        }
        let (t, since) = became.expect("a suspect");
        assert!((30..=41).contains(&t) && since, "at {t}s");
        assert_eq!(g.leak_suspects(), 1);
    }

    #[test]
    fn samples_per_group() {
        let mut g = StreamGroups::new(settings(50), 0);
        let id = g.create(key(1), label());
        for _ in 0..3 {
            assert!(g.may_sample(id));
            g.sampled(id, &ContextDiagnosis::default());
        }
        assert!(!g.may_sample(id));
        assert!(!g.may_sample(99));
    }
}
