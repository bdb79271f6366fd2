//! Which words of a parked goroutine's stack are live pointers, as the garbage collector scans
//! them ([`crate::gcframes`], shared with the leak analysis): a context left in a word no map
//! of a frame describes (a loop's previous iteration, a returned call's temporary, an outgoing
//! argument area no call uses now) is not one the goroutine holds. Only where the maps cannot
//! be used (frames the GC scans conservatively, the part of a stack the walk cannot follow) is
//! a word not ruled out.

use crate::gcframes::{FrameCache, FrameSink, FrameWalker};

/// The live words of one stack copy, from one walk of its frames.
#[derive(Debug, Default)]
pub struct FrameLiveness {
    /// Words the stack maps mark live (sorted).
    live: Vec<u64>,
    /// Stack objects' pointer-holding prefixes: any word may be live.
    objects: Vec<(u64, u64)>,
    /// Scanned conservatively: not known.
    unknown: Vec<(u64, u64)>,
    /// The innermost frame's `sp`; below it nothing is live (arm64's saved fp).
    sp: u64,
    /// Where the part of the stack the walk could not follow starts: not known from there up.
    rest: u64,
}

impl FrameSink for FrameLiveness {
    fn live_word(&mut self, addr: u64) {
        self.live.push(addr);
    }

    fn object(&mut self, lo: u64, hi: u64) {
        self.objects.push((lo, hi));
    }

    fn conservative(&mut self, lo: u64, hi: u64) {
        self.unknown.push((lo, hi));
    }
}

impl FrameLiveness {
    /// Walks the frames of a stack copy (`stack`, read from `base` ≤ `sp`) from the saved `pc`
    /// and `sp`, as the GC does.
    pub fn new(
        walker: &FrameWalker<'_>,
        cache: &mut FrameCache,
        (pc, sp): (u64, u64),
        base: u64,
        stack: &[u8],
    ) -> Self {
        let (frames, rest) = walker.walk(cache, pc, sp, base, stack);
        let mut out = FrameLiveness {
            sp,
            rest,
            ..FrameLiveness::default()
        };
        walker.scan(&frames, &mut out);
        out.live.sort_unstable();
        out
    }

    /// Some(false) when the stack maps say the word at `addr` holds no live pointer, Some(true)
    /// when they say it may; None where no map could be used (then it is not ruled out).
    pub fn is_live(&self, addr: u64) -> Option<bool> {
        let inside = |&(lo, hi): &(u64, u64)| addr >= lo && addr < hi;
        if addr < self.sp {
            // Below the innermost frame: the GC never scans there.
            return Some(false);
        }
        if addr >= self.rest || self.unknown.iter().any(inside) {
            return None;
        }
        Some(self.live.binary_search(&addr).is_ok() || self.objects.iter().any(inside))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame_layout::FrameLayout;
    use crate::gcframes::tests::{arm64_binary, body_pc, go_binary, put};
    use gobinary::pclntab::Pclntab;

    const BASE: u64 = 0x10000;

    /// A stack whose innermost frame's sp is [`BASE`], of frames at `pcs` (innermost first)
    /// called from `runtime.goexit`, laid out as the binary's architecture lays them out,
    /// copied from where the unwinder reads (arm64: a word below sp): the copy, its base,
    /// each frame's sp then the sp of the last frame's caller, and the words that are frame
    /// bookkeeping (return addresses and saved frame pointers).
    struct Built {
        stack: Vec<u8>,
        base: u64,
        sps: Vec<u64>,
        bookkeeping: Vec<u64>,
    }

    fn stack_of(tab: &Pclntab, pcs: &[u64]) -> Built {
        let layout = FrameLayout::of(tab.arch());
        let sizes: Vec<u64> = pcs
            .iter()
            .map(|&pc| tab.frame_maps(pc).expect("maps").sp_delta)
            .collect();
        let goexit = tab.func_by_name("runtime.goexit").expect("goexit").entry + 1;
        let base = layout.read_base(BASE, 0);
        let len = BASE - base + sizes.iter().sum::<u64>() + 8 * pcs.len() as u64 + 64;
        let mut stack = vec![0u8; len as usize];
        let (mut sp, mut sps, mut bookkeeping) = (BASE, vec![BASE], Vec::new());
        if base < BASE {
            bookkeeping.push(base);
        }
        for (k, d) in sizes.iter().enumerate() {
            let ret = pcs.get(k + 1).copied().unwrap_or(goexit);
            let (slot, fp) = layout.sp_delta_step(sp, *d).expect("step");
            put(&mut stack, base, slot, ret);
            let (varp, _) = layout.frame_pointers(sp, fp);
            bookkeeping.extend([slot, varp]);
            sp = fp;
            sps.push(sp);
        }
        Built {
            stack,
            base,
            sps,
            bookkeeping,
        }
    }

    /// In frames whose maps are known, a word no map describes is dead, a word the maps (or a
    /// stack object) mark is live; the saved frame pointers and return addresses are not
    /// pointers. amd64 (Go 1.27) and arm64 (Go 1.19, the release whose stale context the arm64
    /// VM once reported).
    #[test]
    fn words_outside_every_map_are_dead() {
        let tabs = [("amd64", go_binary()), ("arm64", arm64_binary())];
        for (arch, tab) in tabs {
            let Some(tab) = tab else {
                eprintln!("skipping {arch}: its Go toolchain is missing");
                continue;
            };
            let pcs = [
                body_pc(&tab, "runtime.gopark"),
                body_pc(&tab, "runtime.chanrecv"),
            ];
            let b = stack_of(&tab, &pcs);
            let w = FrameWalker::new(&tab, 0);
            let mut cache = FrameCache::default();
            let live = FrameLiveness::new(&w, &mut cache, (pcs[0], BASE), b.base, &b.stack);
            assert!(live.unknown.is_empty(), "{arch}: {:?}", live.unknown);
            // Every word the GC's scan marks, from the same walk.
            let (frames, rest) = w.walk(&mut cache, pcs[0], BASE, b.base, &b.stack);
            let sps: Vec<u64> = frames.iter().map(|f| f.sp).collect();
            assert_eq!(sps, b.sps[..2], "{arch}");
            assert_eq!(rest, b.base + b.stack.len() as u64, "{arch}");
            let mut marked = Vec::new();
            for f in &frames {
                assert!(
                    w.live_slots(f, |a| marked.push(a)),
                    "{arch}: maps of {:#x}",
                    f.pc
                );
            }
            let mut dead = 0;
            for addr in (b.base..b.sps[2]).step_by(8) {
                let want = marked.contains(&addr)
                    || live.objects.iter().any(|&(lo, hi)| addr >= lo && addr < hi);
                assert_eq!(live.is_live(addr), Some(want), "{arch}: word at {addr:#x}");
                dead += usize::from(!want);
            }
            assert!(dead > b.bookkeeping.len(), "{arch}: {dead} dead words");
            for addr in b.bookkeeping {
                assert_eq!(
                    live.is_live(addr),
                    Some(false),
                    "{arch}: bookkeeping {addr:#x}"
                );
            }
        }
    }

    /// A stack object's pointer-holding words stay live though no bitmap marks them.
    #[test]
    fn stack_object_words_are_live() {
        let mut l = FrameLiveness {
            sp: 0x1000,
            rest: 0x2000,
            ..FrameLiveness::default()
        };
        l.live_word(0x1010);
        l.object(0x1040, 0x1050);
        assert_eq!(l.is_live(0x1010), Some(true));
        assert_eq!(l.is_live(0x1040), Some(true));
        assert_eq!(l.is_live(0x1048), Some(true));
        assert_eq!(l.is_live(0x1050), Some(false));
        assert_eq!(l.is_live(0x1018), Some(false));
        // arm64's saved fp below the innermost frame.
        assert_eq!(l.is_live(0xff8), Some(false));
    }

    /// Frames without usable maps, and the stack above where the walk stopped, are not ruled
    /// out.
    #[test]
    fn frames_without_maps_are_unknown() {
        let Some(tab) = go_binary() else {
            eprintln!("skipping: .tools/go1.27 missing");
            return;
        };
        let w = FrameWalker::new(&tab, 0);
        let mut cache = FrameCache::default();
        // A pc in no function: no frame, nothing known.
        let stack = vec![0u8; 256];
        let live = FrameLiveness::new(&w, &mut cache, (0x10, BASE), BASE, &stack);
        for addr in (BASE..BASE + 256).step_by(8) {
            assert_eq!(live.is_live(addr), None);
        }
        // A frame the runtime scans conservatively (asyncPreempt holds the registers of the
        // frame it interrupted), and the frame it interrupted, are unknown, whole.
        let pcs = [
            body_pc(&tab, "runtime.asyncPreempt"),
            body_pc(&tab, "runtime.chanrecv"),
        ];
        let b = stack_of(&tab, &pcs);
        let live = FrameLiveness::new(&w, &mut cache, (pcs[0], BASE), b.base, &b.stack);
        for addr in (b.base..b.sps[2]).step_by(8) {
            let want = if b.bookkeeping.contains(&addr) {
                Some(false)
            } else {
                None
            };
            assert_eq!(live.is_live(addr), want, "word at {addr:#x}");
        }
        // Only the conservative ranges themselves are unknown.
        let mut l = FrameLiveness {
            sp: 0x1000,
            rest: 0x2000,
            ..FrameLiveness::default()
        };
        l.conservative(0x1000, 0x1040);
        assert_eq!(l.is_live(0x1038), None);
        assert_eq!(l.is_live(0x1040), Some(false));
        l.rest = 0x1040;
        assert_eq!(l.is_live(0x1040), None);
    }
}
