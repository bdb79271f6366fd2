//! A parked goroutine's frames as the garbage collector walks and scans them
//! (`runtime/mgcmark.go`: `scanstack`, `scanframeworker`; `runtime/stkframe.go`:
//! `getStackMap`): frame by frame from the saved `pc`/`sp`, each frame's size from the pcsp
//! table, and in each frame only the words its function's stack maps say hold live pointers at
//! the frame's pc (its locals, and its arguments including register arguments' spill slots),
//! plus its address-taken stack objects. Every other word of a frame scanned so holds no live
//! pointer: a dead slot, an outgoing-argument area no call uses now, the saved frame pointer
//! and return address.
//!
//! Used by the leak analysis (what keeps objects alive, [`crate::leaks::stackscan`]) and by the
//! context diagnosis (which contexts a goroutine still holds, [`crate::contexts::liveness`]),
//! so both see the same words as live.
//!
//! Where the maps cannot be used a frame is scanned conservatively, every word of it (it may
//! hold pointers anywhere):
//! - a frame whose function, frame size or needed map cannot be found or read;
//! - frames the runtime itself scans conservatively: `runtime.asyncPreempt` and
//!   `runtime.debugCallV2` (they hold the registers of the frame they interrupted) and that
//!   interrupted frame, and a frame that was stopped by a trap (its callee is
//!   `runtime.sigpanic`; the runtime takes another pc for its maps);
//! - reflect's call stubs, whose argument maps the runtime takes from the call they made, and
//!   their callers (whose outgoing area holds the stubs' arguments);
//! - the rest of a stack the walk cannot follow (a return address that is not in a function,
//!   a frame size that leaves the stack, a function that writes SP above the innermost frame),
//!   which the caller of [`FrameWalker::walk`] is told about.
//!
//! Stack objects are reported whole (their pointer-holding prefix), whether or not a live slot
//! points at them: the runtime scans only those it finds pointers to, so this keeps more
//! alive, never less (it also covers the stack-allocated defer and panic records the runtime
//! reaches from `g._defer` and `g._panic`).

use std::collections::HashMap;
use std::rc::Rc;

use gobinary::pclntab::{FrameMaps, Pclntab};

use crate::frame_layout::FrameLayout;
use crate::stack::stack_word;

/// Frame descriptions kept by pc at most.
const MAX_CACHED_FRAMES: usize = 1 << 18;

/// What the function at one pc says about its frame.
pub struct FrameInfo {
    /// None: not in a known function, or no frame size: the walk cannot go on.
    pub maps: Option<FrameMaps>,
    /// The outermost frame of a stack (`runtime.goexit`).
    top: bool,
    writes_sp: bool,
    /// `runtime.asyncPreempt`, `runtime.debugCallV2`: called by a signal, not by the frame above.
    injected: bool,
    sigpanic: bool,
}

/// Frame descriptions by runtime pc: goroutines parked at the same places share them.
#[derive(Default)]
pub struct FrameCache(HashMap<u64, Rc<FrameInfo>>);

/// One frame of a walked stack.
pub struct Frame {
    pub pc: u64,
    pub sp: u64,
    /// Top of its locals (`frame.varp`), below the saved frame pointer.
    pub varp: u64,
    /// Its arguments (`frame.argp`), in its caller's frame.
    pub argp: u64,
    pub info: Rc<FrameInfo>,
}

/// What a scan of frames says about their words (see [`FrameWalker::scan`]).
pub trait FrameSink {
    /// A word the stack maps say holds a live pointer.
    fn live_word(&mut self, addr: u64);
    /// The pointer-holding prefix of a stack object: any word of it may be a live pointer.
    fn object(&mut self, lo: u64, hi: u64);
    /// A range without usable maps: scanned conservatively, every word may be a pointer.
    fn conservative(&mut self, lo: u64, hi: u64);
}

/// Frames scanned by their maps and conservatively, by [`FrameWalker::scan`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanCounts {
    pub precise: u64,
    pub conservative: u64,
}

/// Walks and scans frames of one target binary (`bias`: its load bias).
#[derive(Clone, Copy)]
pub struct FrameWalker<'a> {
    pclntab: &'a Pclntab,
    bias: u64,
    layout: FrameLayout,
}

impl<'a> FrameWalker<'a> {
    pub fn new(pclntab: &'a Pclntab, bias: u64) -> Self {
        FrameWalker {
            pclntab,
            bias,
            layout: FrameLayout::of(pclntab.arch()),
        }
    }

    fn info(&self, cache: &mut FrameCache, pc: u64) -> Rc<FrameInfo> {
        if let Some(i) = cache.0.get(&pc) {
            return i.clone();
        }
        let link = pc.wrapping_sub(self.bias);
        let info = match self.pclntab.func_at(link) {
            Some(f) => FrameInfo {
                maps: self.pclntab.frame_maps(link),
                top: f.is_top_frame(),
                writes_sp: f.writes_sp(),
                injected: matches!(
                    f.name.as_str(),
                    "runtime.asyncPreempt" | "runtime.debugCallV2"
                ),
                sigpanic: f.name == "runtime.sigpanic",
            },
            None => FrameInfo {
                maps: None,
                top: false,
                writes_sp: false,
                injected: false,
                sigpanic: false,
            },
        };
        let info = Rc::new(info);
        // A program has far fewer return addresses; garbage walked as a stack could have more.
        if cache.0.len() >= MAX_CACHED_FRAMES {
            cache.0.clear();
        }
        cache.0.insert(pc, info.clone());
        info
    }

    /// The frames of a stack from the saved `pc` and `sp`, innermost first, in a copy of the
    /// stack (`stack`, read from `base` ≤ `sp` up to the stack's top or less), and where the
    /// part of the stack the walk could not follow starts (the copy's end when it reached the
    /// outermost frame).
    pub fn walk(
        &self,
        cache: &mut FrameCache,
        pc: u64,
        sp: u64,
        base: u64,
        stack: &[u8],
    ) -> (Vec<Frame>, u64) {
        let hi = base.saturating_add(stack.len() as u64);
        let (mut pc, mut sp) = (pc, sp);
        let mut out = Vec::new();
        if sp < base || sp > hi {
            return (out, base);
        }
        // Every frame moves sp up by at least a word, so this bounds the walk.
        for _ in 0..=stack.len() / 8 {
            let info = self.info(cache, pc);
            let Some(maps) = info.maps.as_ref() else {
                break;
            };
            if info.top {
                return (out, hi);
            }
            if info.writes_sp && !out.is_empty() {
                break;
            }
            let Some((ret_slot, fp)) = self.layout.sp_delta_step(sp, maps.sp_delta) else {
                break;
            };
            if fp > hi || fp <= sp {
                break;
            }
            let (varp, argp) = self.layout.frame_pointers(sp, fp);
            out.push(Frame {
                pc,
                sp,
                varp,
                argp,
                info: info.clone(),
            });
            sp = fp;
            match stack_word(stack, base, ret_slot) {
                Some(ret) if ret != 0 => pc = ret,
                _ => break,
            }
        }
        (out, sp)
    }

    /// Tells `sink` what the GC scans in `frames` (from [`Self::walk`]): for each frame its
    /// live words and stack objects, or the ranges scanned conservatively when its maps cannot
    /// be used. The rest of the stack, above the last frame, is the caller's to handle.
    pub fn scan(&self, frames: &[Frame], sink: &mut impl FrameSink) -> ScanCounts {
        let mut counts = ScanCounts::default();
        // The frame below was injected by a signal (asyncPreempt): this one stopped anywhere.
        let mut interrupted = false;
        let mut after_sigpanic = false;
        for f in frames {
            let Some(maps) = f.info.maps.as_ref() else {
                continue;
            };
            let precise = !(interrupted || f.info.injected || after_sigpanic)
                && self.scan_precise(maps, f, sink);
            if precise {
                counts.precise += 1;
            } else {
                // Like the runtime's conservative frames: the whole frame (with its outgoing
                // arguments) and its own arguments; on arm64 an injected call's frame also
                // has the small frame the signal handler pushed (its saved LR) above it.
                let top =
                    if self.layout == FrameLayout::Arm64 && (f.info.injected || f.info.sigpanic) {
                        f.varp.saturating_add(16)
                    } else {
                        f.varp
                    };
                sink.conservative(f.sp, top);
                let args = maps.args_bytes.unwrap_or(0);
                sink.conservative(f.argp, f.argp.saturating_add(args));
                counts.conservative += 1;
            }
            // A frame whose argument size is unknown (reflect's call stubs) may have arguments
            // anywhere in its caller's outgoing area: the caller is scanned whole.
            interrupted = f.info.injected || maps.args_bytes.is_none();
            after_sigpanic = f.info.sigpanic;
        }
        counts
    }

    /// Calls `each` with the address of every stack word the frame's maps say holds a live
    /// pointer (locals, then arguments); false (and no call) when a map it needs is missing.
    pub fn live_slots(&self, f: &Frame, mut each: impl FnMut(u64)) -> bool {
        let Some(maps) = f.info.maps.as_ref() else {
            return false;
        };
        // `getStackMap`: locals only when the frame has more than its minimal size.
        let min_frame = match self.layout {
            FrameLayout::Amd64 => 0,
            FrameLayout::Arm64 => 16,
        };
        let locals = if f.varp.saturating_sub(f.sp) > min_frame {
            match &maps.locals {
                Some(l) => Some(l),
                None => return false,
            }
        } else {
            None
        };
        let Some(args) = &maps.args else {
            return false;
        };
        if let Some(l) = locals {
            let from = f.varp.wrapping_sub(8 * u64::from(l.words));
            for i in (0..u64::from(l.words)).filter(|&i| l.live(i)) {
                each(from.wrapping_add(8 * i));
            }
        }
        for i in (0..u64::from(args.words)).filter(|&i| args.live(i)) {
            each(f.argp.wrapping_add(8 * i));
        }
        true
    }

    /// A frame by its maps; false (nothing told) when a map it needs is missing.
    fn scan_precise(&self, maps: &FrameMaps, f: &Frame, sink: &mut impl FrameSink) -> bool {
        let Some(objects) = &maps.objects else {
            return false;
        };
        if !self.live_slots(f, |a| sink.live_word(a)) {
            return false;
        }
        for o in objects {
            let at = if o.off < 0 {
                f.varp.wrapping_sub(u64::from(o.off.unsigned_abs()))
            } else {
                f.argp.wrapping_add(o.off as u64)
            };
            sink.object(at, at.saturating_add(u64::from(o.ptr_bytes)));
        }
        true
    }

    /// The physical frame among `frames` that runs `func` (itself or inlined).
    pub fn frame_running<'f>(&self, frames: &'f [Frame], func: &str) -> Option<&'f Frame> {
        frames.iter().find(|f| {
            self.pclntab
                .frames_at(f.pc.wrapping_sub(self.bias).wrapping_sub(1))
                .iter()
                .any(|l| l.func == func)
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The Go toolchain's own `go` command (a Go 1.27 binary), if installed.
    pub(crate) fn go_binary() -> Option<Pclntab> {
        let wrapper =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/go1.27/bin/go");
        let out = std::process::Command::new(wrapper)
            .args(["env", "GOROOT"])
            .output()
            .ok()?;
        let root = String::from_utf8(out.stdout).ok()?;
        let elf =
            gobinary::elf::ElfFile::open(&std::path::Path::new(root.trim()).join("bin/go")).ok()?;
        let v = gobinary::GoVersion {
            major: 1,
            minor: 27,
            patch: 0,
        };
        Pclntab::from_elf(&elf, v).ok()
    }

    /// A small Go 1.19 program built for arm64 (the release whose arm64 stacks the unwinder
    /// walks by pcsp tables), if the toolchain is installed.
    pub(crate) fn arm64_binary() -> Option<Pclntab> {
        let go = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/go1.19/bin/go");
        let dir = std::env::temp_dir().join(format!(
            "ctxprobe-gcframes-arm64-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).ok()?;
        let src = "package main\n\nfunc main() {\n\tch := make(chan int)\n\tgo func() { ch <- 1 }()\n\t<-ch\n}\n";
        std::fs::write(dir.join("main.go"), src).ok()?;
        let built = std::process::Command::new(go)
            .args(["build", "-o", "prog", "main.go"])
            .current_dir(&dir)
            .env("GOARCH", "arm64")
            .env("GOOS", "linux")
            .env("CGO_ENABLED", "0")
            .env("GO111MODULE", "off")
            .status()
            .is_ok_and(|s| s.success());
        let tab = built.then(|| {
            let elf = gobinary::elf::ElfFile::open(&dir.join("prog")).ok()?;
            let v = gobinary::GoVersion {
                major: 1,
                minor: 19,
                patch: 0,
            };
            Pclntab::from_elf(&elf, v).ok()
        });
        let _ = std::fs::remove_dir_all(&dir);
        tab.flatten()
    }

    /// A pc in `name`'s body, past the prologue (the frame is allocated there).
    pub(crate) fn body_pc(tab: &Pclntab, name: &str) -> u64 {
        let f = tab.func_by_name(name).expect(name);
        (f.entry + 1..f.end)
            .find(|&pc| tab.frame_maps(pc).is_some_and(|m| m.sp_delta > 8))
            .expect(name)
    }

    pub(crate) fn put(stack: &mut [u8], base: u64, addr: u64, v: u64) {
        let off = (addr - base) as usize;
        stack[off..off + 8].copy_from_slice(&v.to_le_bytes());
    }

    /// A stack made of real functions' frames is walked frame by frame to `runtime.goexit`,
    /// each frame where its frame size says.
    #[test]
    fn walks_frames_by_their_sizes() {
        let Some(tab) = go_binary() else {
            eprintln!("skipping: .tools/go1.27 missing");
            return;
        };
        let w = FrameWalker::new(&tab, 0);
        let mut cache = FrameCache::default();
        let (pc0, pc1) = (
            body_pc(&tab, "runtime.gopark"),
            body_pc(&tab, "runtime.chanrecv"),
        );
        let goexit = tab.func_by_name("runtime.goexit").expect("goexit").entry + 1;
        let (d0, d1) = (
            tab.frame_maps(pc0).unwrap().sp_delta,
            tab.frame_maps(pc1).unwrap().sp_delta,
        );
        let base = 0x10000u64;
        let mut stack = vec![0u8; (d0 + d1 + 64) as usize];
        put(&mut stack, base, base + d0, pc1);
        let sp1 = base + d0 + 8;
        put(&mut stack, base, sp1 + d1, goexit);
        let (frames, rest) = w.walk(&mut cache, pc0, base, base, &stack);
        let got: Vec<(u64, u64)> = frames.iter().map(|f| (f.pc, f.sp)).collect();
        assert_eq!(got, vec![(pc0, base), (pc1, sp1)]);
        assert_eq!(rest, base + stack.len() as u64, "walk reached goexit");
        // amd64: the saved frame pointer just below the return address is not a local.
        assert_eq!(frames[0].varp, base + d0 - 8);
        assert_eq!(frames[0].argp, base + d0 + 8);
        // The same walk in a copy that starts a word below sp (as arm64's unwinder reads).
        let mut lower = vec![0u8; 8];
        lower.extend_from_slice(&stack);
        let (again, rest) = w.walk(&mut cache, pc0, base, base - 8, &lower);
        assert_eq!(again.len(), 2);
        assert_eq!(rest, base + stack.len() as u64);
        // A return address that is in no function stops the walk there: the rest is
        // scanned whole.
        put(&mut stack, base, base + d0, 0x10);
        let (frames, rest) = w.walk(&mut cache, pc0, base, base, &stack);
        assert_eq!(frames.len(), 1);
        assert_eq!(rest, base + d0 + 8);
    }

    /// Stack memory is untrusted: random stacks and pcs must never panic or loop.
    #[test]
    fn walks_survive_garbage() {
        let Some(tab) = go_binary() else {
            eprintln!("skipping: .tools/go1.27 missing");
            return;
        };
        let funcs: Vec<_> = tab.funcs().collect();
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let w = FrameWalker::new(&tab, 0);
        let mut cache = FrameCache::default();
        for round in 0..3000 {
            let len = (next() % 8192) as usize & !7;
            let base = next() & !7 & 0xffff_ffff_ffff;
            let pc_like = |a: u64, b: u64| {
                let f = &funcs[(a as usize) % funcs.len()];
                f.entry + b % (f.end - f.entry).max(1)
            };
            let pc = if round % 4 == 0 {
                next()
            } else {
                pc_like(next(), next())
            };
            // Half the words of some stacks are real code addresses.
            let mut stack = Vec::with_capacity(len);
            for _ in 0..len / 8 {
                let w = if round % 2 == 0 && next() % 2 == 0 {
                    pc_like(next(), next())
                } else {
                    next()
                };
                stack.extend_from_slice(&w.to_le_bytes());
            }
            let sp = if round % 3 == 0 { base + 8 } else { base };
            let (frames, rest) = w.walk(&mut cache, pc, sp, base, &stack);
            assert!(frames.len() <= len / 8 + 1);
            assert!(rest >= base && rest <= base + len as u64);
            struct Count(u64);
            impl FrameSink for Count {
                fn live_word(&mut self, _: u64) {
                    self.0 += 1;
                }
                fn object(&mut self, _: u64, _: u64) {}
                fn conservative(&mut self, _: u64, _: u64) {}
            }
            let counts = w.scan(&frames, &mut Count(0));
            assert_eq!(counts.precise + counts.conservative, frames.len() as u64);
        }
    }
}
