//! What a goroutine parked in a channel operation or `select` waits on: the channels of the
//! sudogs on its `g.waiting` list.

use gobinary::objlayout::ObjectLayout;
use gobinary::rtype::{Memory, TypeReader};

/// A select has at most 65536 cases; more than this many sudogs is a corrupt list.
const MAX_SUDOGS: usize = 64;
/// Longest wait queue walked to find which queue a select's sudog is in.
const MAX_QUEUE: usize = 4096;

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
) -> Vec<ChanWaitRaw> {
    let mem = types.mem;
    let mut out = Vec::new();
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
    while sg != 0 && out.len() < MAX_SUDOGS {
        let Some(c) = sg.checked_add(lay.sudog_c).and_then(|a| mem.read_u64(a)) else {
            break;
        };
        if c != 0 && !out.iter().any(|w: &ChanWaitRaw| w.chan == c) {
            if let Some(w) = read_chan(types, lay, c, sg, plain_dir) {
                out.push(w);
            }
        }
        match sg
            .checked_add(lay.sudog_waitlink)
            .and_then(|a| mem.read_u64(a))
        {
            Some(next) if next != sg => sg = next,
            _ => break,
        }
    }
    out
}

fn read_chan<M: Memory>(
    types: &TypeReader<'_, M>,
    lay: &ObjectLayout,
    c: u64,
    sudog: u64,
    plain_dir: Option<&'static str>,
) -> Option<ChanWaitRaw> {
    let mem = types.mem;
    let word = |off: u64| mem.read_u64(c.checked_add(off)?);
    let closed = mem
        .read(c.checked_add(lay.hchan_closed)?, 4)
        .is_some_and(|b| b.iter().any(|&x| x != 0));
    let elem = word(lay.hchan_elemtype)?;
    let dir = plain_dir.or_else(|| {
        if in_queue(mem, lay, word(lay.hchan_recvq)?, sudog) {
            Some("recv")
        } else if in_queue(mem, lay, word(lay.hchan_sendq)?, sudog) {
            Some("send")
        } else {
            None
        }
    });
    Some(ChanWaitRaw {
        chan: c,
        dir,
        elem_type: types.name(elem),
        cap: word(lay.hchan_dataqsiz)?,
        len: word(lay.hchan_qcount)?,
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
