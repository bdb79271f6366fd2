//! The `sync.Cond` a goroutine waits on, before Go 1.26 (which sets `g.waiting` and
//! `sudog.elem` to the Cond's `notifyList` itself).
//!
//! Before 1.26 `runtime.notifyListWait` links the waiter's sudog into the Cond's own list
//! (`notifyList.head`/`tail`, through `sudog.next`) and parks without recording where. The
//! Cond is found from the waiter's stack: `sync.(*Cond).Wait` still needs its receiver after
//! the wait (`c.L.Lock()`), so the receiver is in one of the live pointer slots of that frame
//! (by its stack maps). Each such word is only a candidate; it is taken when the list at it
//! (the receiver's `notify` field, or the word itself if it points at the list) holds, from
//! `head` through `next` to `tail`, a sudog of this goroutine, and no other candidate's list
//! does. A goroutine's sudog is in one list at a time, and only a notify on that list wakes
//! the waiter: what it waits on is that list, inside the Cond, as Go 1.26+ says.

use std::collections::HashMap;

use crate::goroutines::RawG;
use crate::procmem::ProcessMemory;

use super::stackscan::StackScanner;
use super::waits::WaitTargets;

/// `sync.Cond{noCopy; L Locker; notify notifyList; checker}`: `notify` after the interface's two
/// words, in every release before 1.26 (and since).
const COND_NOTIFY: u64 = 16;
/// `runtime.notifyList{wait, notify uint32; lock mutex; head, tail *sudog}`: the runtime's
/// `mutex` is one word (`key`) outside lock-ranking builds.
const LIST_HEAD: u64 = 16;
const LIST_TAIL: u64 = 24;
/// Longer lists than this are torn reads (or more waiters than a process has).
const MAX_LIST: usize = 1 << 22;

/// The frame that holds the Cond.
const COND_WAIT: &str = "sync.(*Cond).Wait";

/// Sudog field offsets the lists are walked with.
#[derive(Debug, Clone, Copy)]
pub struct SudogFields {
    pub g: u64,
    pub next: u64,
}

pub struct CondFinder<'m> {
    mem: &'m ProcessMemory,
    sudog: SudogFields,
    /// The `g`s of the sudogs of each list read (None: not a well-formed list).
    lists: HashMap<u64, Option<Vec<u64>>>,
}

impl<'m> CondFinder<'m> {
    pub fn new(mem: &'m ProcessMemory, sudog: SudogFields) -> Self {
        CondFinder {
            mem,
            sudog,
            lists: HashMap::new(),
        }
    }

    /// What `g` waits on if it is in a Cond's wait (`reason`) before 1.26: the Cond's
    /// `notifyList`. The sudog has no reference to it to hide.
    pub fn targets(
        &mut self,
        scanner: &mut StackScanner<'_>,
        g: &RawG,
        reason: &str,
    ) -> Option<WaitTargets> {
        if reason != "sync.Cond.Wait" {
            return None;
        }
        self.list_of(scanner, g).map(|list| WaitTargets {
            objects: vec![list],
            hidden: Vec::new(),
        })
    }

    /// The address of the `notifyList` `g` waits in (inside its Cond), or None.
    fn list_of(&mut self, scanner: &mut StackScanner<'_>, g: &RawG) -> Option<u64> {
        let words = scanner.live_pointers_in(self.mem, g, COND_WAIT)?;
        let mut found: Option<u64> = None;
        for w in words.into_iter().filter(|&w| w != 0 && w % 8 == 0) {
            for list in [w.wrapping_add(COND_NOTIFY), w] {
                if !self.waiters(list).is_some_and(|gs| gs.contains(&g.addr)) {
                    continue;
                }
                match found {
                    Some(l) if l != list => return None, // two lists claim it: do not guess
                    _ => found = Some(list),
                }
            }
        }
        found
    }

    /// The `g`s waiting in the list at `list` (read once per list).
    fn waiters(&mut self, list: u64) -> Option<&Vec<u64>> {
        if !self.lists.contains_key(&list) {
            let read = self.read_list(list);
            self.lists.insert(list, read);
        }
        self.lists.get(&list)?.as_ref()
    }

    fn read_list(&self, list: u64) -> Option<Vec<u64>> {
        let head = self.mem.read_u64(list.checked_add(LIST_HEAD)?).ok()?;
        let tail = self.mem.read_u64(list.checked_add(LIST_TAIL)?).ok()?;
        if head == 0 || tail == 0 {
            return None;
        }
        let len = self.sudog.g.max(self.sudog.next) as usize + 8;
        let mut gs = Vec::new();
        let mut at = head;
        let mut buf = vec![0u8; len];
        for _ in 0..MAX_LIST {
            self.mem.read(at, &mut buf).ok()?;
            gs.push(word(&buf, self.sudog.g));
            let next = word(&buf, self.sudog.next);
            if next == at || next == head {
                return None; // a cycle: not a list
            }
            if next == 0 {
                // A list ends at its tail: anything else is not a notifyList (or torn).
                return (at == tail).then_some(gs);
            }
            at = next;
        }
        None
    }
}

fn word(buf: &[u8], off: u64) -> u64 {
    let off = off as usize;
    buf.get(off..off.saturating_add(8)).map_or(0, |b| {
        u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
    })
}

#[cfg(test)]
mod tests {
    use super::word;

    #[test]
    fn words_outside_the_buffer_are_zero() {
        let b = [1u8, 0, 0, 0, 0, 0, 0, 0, 2];
        assert_eq!(word(&b, 0), 1);
        assert_eq!(word(&b, 1), 0x0200_0000_0000_0000);
        assert_eq!(word(&b, 2), 0);
        assert_eq!(word(&b, u64::MAX), 0);
    }
}
