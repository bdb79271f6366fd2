//! Which words of a parked goroutine's stack are live pointers, from the functions' stack maps
//! (what the garbage collector scans): a context left in a dead slot (a loop's previous
//! iteration, a returned call's temporary) is not one the goroutine holds.

use std::collections::HashMap;
use std::rc::Rc;

use gobinary::pclntab::StackLiveness;

use crate::frame_layout::FrameLayout;
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
    layout: FrameLayout,
    /// `fps[k]`: frame k's fp (its caller's sp, [`FrameLayout::frame_fps`]); frame k lies below.
    fps: Vec<u64>,
    /// Stack maps of frame `k` at its pc (None: unknown).
    maps: Vec<Option<Rc<StackLiveness>>>,
}

impl FrameLiveness {
    /// `pcs[k]` is frame k's pc (the saved pc, then return addresses); `fps` as above.
    pub fn new(cache: &mut StackMapCache, sym: &Symbolizer<'_>, pcs: &[u64], fps: &[u64]) -> Self {
        let maps = pcs
            .iter()
            .take(fps.len())
            .map(|&pc| cache.get(sym, pc))
            .collect();
        FrameLiveness {
            layout: sym.layout(),
            fps: fps.to_vec(),
            maps,
        }
    }

    /// Some(false) when the stack maps say the word at `addr` holds no live pointer; None when
    /// they do not cover it (then it is not ruled out).
    pub fn is_live(&self, addr: u64) -> Option<bool> {
        let k = self.fps.iter().position(|&fp| addr < fp)?;
        // Frame k's locals end at its varp.
        let map = self.maps.get(k).and_then(Option::as_ref);
        if let Some((m, varp)) = map.zip(self.layout.varp(self.fps[k])) {
            let start = varp.checked_sub(8 * u64::from(m.locals_words))?;
            if addr >= start && addr < varp {
                return Some(m.local_live((addr - start) / 8));
            }
        }
        // The arguments of frame k-1 start at its argp, in frame k.
        if k > 0 {
            if let Some(m) = self.maps.get(k - 1).and_then(Option::as_ref) {
                let argp = self.layout.argp(self.fps[k - 1])?;
                let end = argp.checked_add(8 * u64::from(m.args_words))?;
                if addr >= argp && addr < end {
                    return Some(m.arg_live((addr - argp) / 8));
                }
            }
        }
        None
    }
}
