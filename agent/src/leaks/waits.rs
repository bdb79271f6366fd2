//! Which object each blocked goroutine waits on, Go's way (`runtime.(*g).isMaybeRunnable`):
//! - `select (no cases)` and nil-channel operations can never wake: leaked by definition;
//! - channel operations and `select`: the channels of the sudogs on `g.waiting`;
//! - `sync.Mutex`, `RWMutex`, `WaitGroup` and `Cond` waits: the sync object, `sudog.elem` of
//!   `g.waiting` (Go 1.26+ sets it for semaphores), else the sudog that waits for this `g` in the
//!   runtime's semaphore table (its treaps of `sudog`s keyed by semaphore address);
//! - everything else (sleep, I/O, a running goroutine, a wait we cannot resolve) may run: its
//!   stack is a root.
//!
//! Releases before 1.21 (and 1.24 for WaitGroup) report sync waits as `semacquire`; the
//! goroutine's stack says which primitive it is in.

use std::collections::HashMap;

use gobinary::heaplayout::{HeapLayout, SEMTAB_SIZE};
use gobinary::objlayout::ObjectLayout;

use crate::procmem::ProcessMemory;

/// More sudogs than one goroutine's `select` can have (Go allows 65536 cases).
const MAX_SUDOGS_PER_G: usize = 1 << 16;
/// More sudogs than the semaphore table can hold in any real process: stop a walk of torn
/// pointers.
const MAX_SEMA_SUDOGS: usize = 1 << 24;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitClass {
    /// Not blocked on a channel, select or sync primitive: may run; its stack is a root.
    MayRun,
    /// `select {}` or a nil channel: can never wake.
    Never,
    Chan,
    Sync,
}

/// The class of a wait from the runtime's wait reason and, for `semacquire`, the goroutine's
/// stack (function names, innermost first) when the caller has it.
pub fn classify(reason: &str, stack: impl FnOnce() -> Vec<String>) -> WaitClass {
    match reason {
        "select (no cases)" | "chan send (nil chan)" | "chan receive (nil chan)" => {
            WaitClass::Never
        }
        "chan receive" | "chan send" | "select" => WaitClass::Chan,
        "sync.Cond.Wait"
        | "sync.Mutex.Lock"
        | "sync.RWMutex.Lock"
        | "sync.RWMutex.RLock"
        | "sync.WaitGroup.Wait" => WaitClass::Sync,
        "semacquire" if semacquire_is_sync(&stack()) => WaitClass::Sync,
        _ => WaitClass::MayRun,
    }
}

/// A `semacquire` wait of a sync primitive (older releases' name for Mutex, RWMutex and
/// WaitGroup waits): the first frame outside the runtime's semaphore code is one of theirs.
fn semacquire_is_sync(stack: &[String]) -> bool {
    let caller = stack.iter().find(|f| {
        !(f.starts_with("runtime.")
            || f.starts_with("sync.runtime_")
            || f.starts_with("internal/sync.runtime_"))
    });
    caller.is_some_and(|f| {
        [
            "sync.(*Mutex).",
            "sync.(*RWMutex).",
            "sync.(*WaitGroup).",
            "internal/sync.(*Mutex).",
        ]
        .iter()
        .any(|p| f.starts_with(p))
    })
}

/// What a blocked goroutine waits on, and the sudog words that point at it.
#[derive(Debug, Clone, Default)]
pub struct WaitTargets {
    /// Addresses of the objects waited on (any one reachable makes the goroutine runnable).
    pub objects: Vec<u64>,
    /// Byte ranges of sudog fields the marker must not follow.
    pub hidden: Vec<(u64, u64)>,
}

fn word(buf: &[u8], off: u64) -> u64 {
    let off = off as usize;
    buf.get(off..off + 8).map_or(0, |b| {
        u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
    })
}

/// The sudogs of a `g.waiting` list (address and bytes), in order; stops at an unreadable one.
/// `read`: the first sudog's bytes when the caller already has them.
fn waiting_list(
    mem: &ProcessMemory,
    h: &HeapLayout,
    o: &ObjectLayout,
    first: u64,
    mut read: Option<Vec<u8>>,
) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut at = first;
    while at != 0 && out.len() < MAX_SUDOGS_PER_G {
        let buf = match read.take() {
            Some(b) => b,
            None => match mem.read_vec(at, h.sudog_size as usize) {
                Ok(b) => b,
                Err(_) => break,
            },
        };
        let next = word(&buf, o.sudog_waitlink);
        out.push((at, buf));
        at = next;
    }
    out
}

/// The channels a goroutine in a channel wait or `select` waits on (`sudog.c` of its
/// `g.waiting` list). Empty: the list could not be read (the caller then lets it run).
pub fn chan_targets(
    mem: &ProcessMemory,
    h: &HeapLayout,
    o: &ObjectLayout,
    waiting: u64,
    first: Option<Vec<u8>>,
) -> WaitTargets {
    let mut t = WaitTargets::default();
    for (s, buf) in waiting_list(mem, h, o, waiting, first) {
        let c = word(&buf, o.sudog_c);
        if c != 0 {
            t.objects.push(c);
        }
        t.hidden
            .push((s + h.sudog_c_start, s + h.sudog_c_start + h.sudog_c_len));
    }
    t
}

/// The sync object of a goroutine in a sync wait, from `g.waiting` (1.26+): Go looks at the
/// first sudog's `elem` only.
pub fn sync_targets_from_waiting(
    mem: &ProcessMemory,
    h: &HeapLayout,
    o: &ObjectLayout,
    waiting: u64,
    first: Option<Vec<u8>>,
) -> WaitTargets {
    let mut t = WaitTargets::default();
    for (i, (s, buf)) in waiting_list(mem, h, o, waiting, first)
        .into_iter()
        .enumerate()
    {
        let elem = word(&buf, h.sudog_elem_addr);
        if i == 0 && elem != 0 {
            t.objects.push(elem);
        }
        t.hidden
            .push((s + h.sudog_elem, s + h.sudog_elem + h.sudog_elem_len));
    }
    t
}

/// Every goroutine waiting in the semaphore table: `g` address → (sudog, semaphore address).
/// Walks each of the table's treaps (children in `prev`/`next`) and each node's list of
/// waiters on the same address (`waitlink`).
pub fn semtable_waiters(
    mem: &ProcessMemory,
    h: &HeapLayout,
    o: &ObjectLayout,
    semtable: u64,
) -> anyhow::Result<HashMap<u64, (u64, u64)>> {
    let Some(entry) = h.semtable_entry_size else {
        anyhow::bail!("the size of runtime.semtable's entries is not known for this release");
    };
    let table = mem.read_vec(semtable, (entry * SEMTAB_SIZE) as usize)?;
    let mut todo: Vec<u64> = (0..SEMTAB_SIZE)
        .map(|i| word(&table, i * entry + h.semaroot_treap))
        .filter(|&p| p != 0)
        .collect();
    let mut out = HashMap::new();
    let mut seen = 0usize;
    while let Some(node) = todo.pop() {
        seen += 1;
        if seen > MAX_SEMA_SUDOGS {
            break;
        }
        let Ok(buf) = mem.read_vec(node, h.sudog_size as usize) else {
            continue;
        };
        for child in [word(&buf, h.sudog_prev), word(&buf, o.sudog_next)] {
            if child != 0 {
                todo.push(child);
            }
        }
        // This node and the waiters on the same address behind it.
        let mut at = node;
        let mut here = Some(buf);
        let mut n = 0;
        while at != 0 && n < MAX_SUDOGS_PER_G {
            let buf = match here.take() {
                Some(b) => b,
                None => match mem.read_vec(at, h.sudog_size as usize) {
                    Ok(b) => b,
                    Err(_) => break,
                },
            };
            let g = word(&buf, h.sudog_g);
            let elem = word(&buf, h.sudog_elem_addr);
            if g != 0 && elem != 0 {
                out.insert(g, (at, elem));
            }
            at = word(&buf, o.sudog_waitlink);
            n += 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn classes_follow_go() {
        let none = Vec::new;
        assert_eq!(classify("select (no cases)", none), WaitClass::Never);
        assert_eq!(classify("chan receive (nil chan)", none), WaitClass::Never);
        assert_eq!(classify("chan send", none), WaitClass::Chan);
        assert_eq!(classify("select", none), WaitClass::Chan);
        assert_eq!(classify("sync.Mutex.Lock", none), WaitClass::Sync);
        assert_eq!(classify("sleep", none), WaitClass::MayRun);
        assert_eq!(classify("IO wait", none), WaitClass::MayRun);
        let mutex = || {
            names(&[
                "runtime.gopark",
                "runtime.semacquire1",
                "sync.runtime_SemacquireMutex",
                "sync.(*Mutex).lockSlow",
                "sync.(*Mutex).Lock",
                "main.f",
            ])
        };
        assert_eq!(classify("semacquire", mutex), WaitClass::Sync);
        let poll = || {
            names(&[
                "runtime.gopark",
                "runtime.semacquire1",
                "internal/poll.runtime_Semacquire",
                "internal/poll.(*fdMutex).rwlock",
            ])
        };
        assert_eq!(classify("semacquire", poll), WaitClass::MayRun);
    }
}
