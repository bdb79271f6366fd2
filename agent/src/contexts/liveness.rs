//! Which words of a parked goroutine's stack are live pointers, from the functions' stack maps
//! (what the garbage collector scans): a context left in a dead slot (a loop's previous
//! iteration, a returned call's temporary) is not one the goroutine holds.

use std::collections::HashMap;
use std::rc::Rc;

use gobinary::pclntab::StackLiveness;

use crate::stack::Symbolizer;

/// Stack maps by pc: goroutines parked at the same places share them.
#[derive(Default)]
pub struct StackMapCache(HashMap<u64, Option<Rc<StackLiveness>>>);

impl StackMapCache {
    fn get(&mut self, sym: &Symbolizer<'_>, pc: u64) -> Option<Rc<StackLiveness>> {
        self.0
            .entry(pc)
            .or_insert_with(|| sym.stack_liveness(pc.wrapping_sub(1)).map(Rc::new))
            .clone()
    }
}

pub struct FrameLiveness {
    /// `slots[k]` holds the return address into frame `k + 1`; frame `k` lies below it.
    slots: Vec<u64>,
    /// Stack maps of frame `k` at its pc (None: unknown).
    maps: Vec<Option<Rc<StackLiveness>>>,
}

impl FrameLiveness {
    /// `pcs[k]` is frame k's pc (the saved pc, then return addresses).
    pub fn new(
        cache: &mut StackMapCache,
        sym: &Symbolizer<'_>,
        pcs: &[u64],
        slots: &[u64],
    ) -> Self {
        let maps = pcs
            .iter()
            .take(slots.len())
            .map(|&pc| cache.get(sym, pc))
            .collect();
        FrameLiveness {
            slots: slots.to_vec(),
            maps,
        }
    }

    /// Some(false) when the stack maps say the word at `addr` holds no live pointer; None when
    /// they do not cover it (then it is not ruled out).
    pub fn is_live(&self, addr: u64) -> Option<bool> {
        let k = self.slots.iter().position(|&s| addr < s)?;
        // Frame k's locals end at its saved frame pointer, just below its return address.
        if let Some(m) = self.maps.get(k).and_then(Option::as_ref) {
            let varp = self.slots[k].checked_sub(8)?;
            let start = varp.checked_sub(8 * u64::from(m.locals_words))?;
            if addr >= start && addr < varp {
                return Some(m.local_live((addr - start) / 8));
            }
        }
        // The arguments of frame k-1 start just above its return address.
        if k > 0 {
            if let Some(m) = self.maps.get(k - 1).and_then(Option::as_ref) {
                let fp = self.slots[k - 1].checked_add(8)?;
                let end = fp.checked_add(8 * u64::from(m.args_words))?;
                if addr >= fp && addr < end {
                    return Some(m.arg_live((addr - fp) / 8));
                }
            }
        }
        None
    }
}
