//! What a goroutine parked in a channel operation or `select` waits on: the channels of the
//! sudogs on its `g.waiting` list.

use gobinary::objlayout::ObjectLayout;
use gobinary::rtype::{Memory, TypeReader};

/// A select has at most 65536 cases; more than this many sudogs is a corrupt list.
const MAX_SUDOGS: usize = 64;
/// Longest wait queue walked to find which queue a select's sudog is in (rarely needed).
const MAX_QUEUE: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChanWaitRaw {
    pub chan: u64,
    /// "send", "recv", or None when neither queue holds the sudog (being woken).
    pub dir: Option<&'static str>,
    pub elem_type: Option<String>,
    pub cap: u64,
    pub len: u64,
    pub closed: bool,
}

/// The channels `g.waiting` names, in the runtime's lock order. `wait_reason` gives the
/// direction of a plain (non-select) operation.
pub fn channel_waits<M: Memory>(
    types: &TypeReader<'_, M>,
    lay: &ObjectLayout,
    g_addr: u64,
    wait_reason: Option<&str>,
    type_name: &mut dyn FnMut(u64) -> Option<String>,
) -> Vec<ChanWaitRaw> {
    let mem = types.mem;
    let mut out = Vec::new();
    if !parks_on_channels(wait_reason) {
        return out;
    }
    let Some(mut sg) = g_addr
        .checked_add(lay.g_waiting)
        .and_then(|a| mem.read_u64(a))
    else {
        return out;
    };
    let plain_dir = match wait_reason {
        Some(r) if r.starts_with("chan send") => Some("send"),
        Some(r) if r.starts_with("chan receive") => Some("recv"),
        _ => None,
    };
    let sudog_len = sudog_read_len(lay);
    let mut steps = 0;
    while sg != 0 && steps < MAX_SUDOGS {
        steps += 1;
        let Some(rec) = sudog_len.and_then(|n| mem.read(sg, n)) else {
            break;
        };
        let (Some(c), Some(next)) = (word(&rec, lay.sudog_c), word(&rec, lay.sudog_waitlink))
        else {
            break;
        };
        if c != 0 && !out.iter().any(|w: &ChanWaitRaw| w.chan == c) {
            if let Some(w) = read_chan(types, lay, c, sg, plain_dir, type_name) {
                out.push(w);
            }
        }
        if next == sg {
            break;
        }
        sg = next;
    }
    out
}

/// Only channel operations and selects park with channel sudogs on `g.waiting`. Since Go 1.27
/// a goroutine parked on a semaphore or a sync.Cond has its sudog there too, linked
/// (`waitlink`) to the other waiters on the same address: no channel in it, and walking it
/// would read the sudogs of up to MAX_SUDOGS other goroutines.
pub fn parks_on_channels(wait_reason: Option<&str>) -> bool {
    wait_reason.is_some_and(|r| r.starts_with("chan ") || r.starts_with("select"))
}

/// Bytes read of each sudog: up to the last field used (one read per sudog).
pub fn sudog_read_len(lay: &ObjectLayout) -> Option<usize> {
    usize::try_from(lay.sudog_c.max(lay.sudog_waitlink).saturating_add(8)).ok()
}

/// Bytes read of a channel's head: up to the last field used (one read per channel).
pub fn chan_head_len(lay: &ObjectLayout) -> Option<usize> {
    let end = [
        lay.hchan_qcount,
        lay.hchan_dataqsiz,
        lay.hchan_closed,
        lay.hchan_elemtype,
        lay.hchan_recvq,
        lay.hchan_sendq,
    ]
    .into_iter()
    .max()
    .unwrap_or(0)
    .saturating_add(8);
    usize::try_from(end).ok()
}

/// The channel a sudog read with [`sudog_read_len`] points at (0: none).
pub fn sudog_chan(lay: &ObjectLayout, rec: &[u8]) -> Option<u64> {
    word(rec, lay.sudog_c)
}

/// The next sudog of a select's list (`waitlink`, 0 at the end), from a sudog read with
/// [`sudog_read_len`].
pub fn sudog_next(lay: &ObjectLayout, rec: &[u8]) -> Option<u64> {
    word(rec, lay.sudog_waitlink)
}

fn word(rec: &[u8], off: u64) -> Option<u64> {
    let o = usize::try_from(off).ok()?;
    Some(u64::from_le_bytes(
        rec.get(o..o.checked_add(8)?)?.try_into().ok()?,
    ))
}

fn read_chan<M: Memory>(
    types: &TypeReader<'_, M>,
    lay: &ObjectLayout,
    c: u64,
    sudog: u64,
    plain_dir: Option<&'static str>,
    type_name: &mut dyn FnMut(u64) -> Option<String>,
) -> Option<ChanWaitRaw> {
    let mem = types.mem;
    let head = mem.read(c, chan_head_len(lay)?)?;
    let field = |off: u64| word(&head, off);
    let closed = usize::try_from(lay.hchan_closed)
        .ok()
        .and_then(|o| head.get(o..o.checked_add(4)?))
        .is_some_and(|b| b.iter().any(|&x| x != 0));
    let elem = field(lay.hchan_elemtype)?;
    // A select's case: the queue holding its sudog. Waiting senders and receivers cannot both
    // be queued on one channel (one would have completed the other), so the non-empty queue
    // is the answer without walking it; both non-empty only happens with selects on both
    // directions of one channel, and then a short walk decides.
    let dir = plain_dir.or_else(|| {
        let (recvq, sendq) = (field(lay.hchan_recvq)?, field(lay.hchan_sendq)?);
        match (recvq != 0, sendq != 0) {
            (true, false) => Some("recv"),
            (false, true) => Some("send"),
            (true, true) if in_queue(mem, lay, recvq, sudog) => Some("recv"),
            (true, true) if in_queue(mem, lay, sendq, sudog) => Some("send"),
            _ => None,
        }
    });
    Some(ChanWaitRaw {
        chan: c,
        dir,
        elem_type: type_name(elem),
        cap: field(lay.hchan_dataqsiz)?,
        len: field(lay.hchan_qcount)?,
        closed,
    })
}

fn in_queue<M: Memory>(mem: &M, lay: &ObjectLayout, first: u64, sudog: u64) -> bool {
    let mut at = first;
    for _ in 0..MAX_QUEUE {
        if at == 0 {
            return false;
        }
        if at == sudog {
            return true;
        }
        match at.checked_add(lay.sudog_next).and_then(|a| mem.read_u64(a)) {
            Some(n) => at = n,
            None => return false,
        }
    }
    false
}
