//! What one park-probe hit costs on this machine, measured on ctxprobe itself before it probes
//! the target: the adaptive budget charges each hit this much.
//!
//! A uprobe hit's cost depends on the CPU, the kernel, a hypervisor (emulation inflates every
//! trap), and on the probed instruction: the kernel emulates a few kinds (x86's `push`,
//! arm64's branches) and single-steps the rest out of line, which takes a second trap. So the
//! same park program is attached to an instruction of the same kind in a function of our own
//! (`global_asm!` below), which is called with a fake `g` (so the program reads, stamps and
//! stores a record as it would for the target), and the time per call with and without the
//! probe is compared.

use std::path::PathBuf;
use std::time::Instant;

use crate::error::ProbeError;
use crate::loader::{ProbeConfig, Probes};

/// How the kernel runs the probed instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SiteKind {
    /// Emulated or simulated in the trap handler.
    Emulated,
    /// Single-stepped out of line.
    Stepped,
}

/// Calls timed per round, and rounds (the median round counts).
const CALLS: u32 = 200;
const ROUNDS: usize = 5;

/// Large enough for any `g` field offset the program reads.
const FAKE_G_BYTES: usize = 4096;

/// Where the instruction probed for `kind` is in this process (the caller finds its file and
/// file offset in /proc/self/maps for [`measure_park_hit`]).
pub fn site_address(kind: SiteKind) -> u64 {
    sites::of(kind).1 as usize as u64
}

/// Nanoseconds one park-probe hit adds at a site of `kind`, with the program reading a `g`'s
/// fields at these offsets. `exe_path` and `file_offset` locate [`site_address`] in the file
/// mapped there.
pub fn measure_park_hit(
    exe_path: PathBuf,
    file_offset: u64,
    g_goid_offset: u64,
    g_tracking_seq_offset: u64,
    kind: SiteKind,
) -> Result<f64, ProbeError> {
    if g_goid_offset.max(g_tracking_seq_offset) + 8 > FAKE_G_BYTES as u64 {
        return Err(ProbeError::Config(format!(
            "g field offsets {g_goid_offset}/{g_tracking_seq_offset} beyond the fake g"
        )));
    }
    let (func, _) = sites::of(kind);
    let cfg = ProbeConfig {
        pid: std::process::id(),
        exe_path,
        park_file_offset: file_offset,
        wake_file_offset: None,
        cancel_file_offset: None,
        cancelctx_err_offset: 0,
        g_goid_offset,
        g_tracking_seq_offset,
        max_parks: 64,
    };
    let mut probes = Probes::load(&cfg)?;
    let fake_g = vec![0u8; FAKE_G_BYTES];
    let g = fake_g.as_ptr();
    let time_calls = || {
        let mut rounds: Vec<f64> = (0..ROUNDS)
            .map(|_| {
                let start = Instant::now();
                for _ in 0..CALLS {
                    // SAFETY: the function only copies its argument into a register it saves
                    // and restores (sites below).
                    unsafe { func(std::hint::black_box(g)) };
                }
                start.elapsed().as_nanos() as f64 / f64::from(CALLS)
            })
            .collect();
        rounds.sort_by(f64::total_cmp);
        rounds[ROUNDS / 2]
    };
    let without = time_calls();
    probes.attach_park()?;
    let before = probes.counters()?.park_hits;
    let with = time_calls();
    let hits = probes.counters()?.park_hits - before;
    probes.detach_park()?;
    let calls = u64::from(CALLS) * ROUNDS as u64;
    if hits < calls {
        return Err(ProbeError::Config(format!(
            "the calibration probe fired {hits} times in {calls} calls"
        )));
    }
    // Never free: a machine that noise made look faster with the probe still pays the trap.
    Ok((with - without).max(100.0))
}

/// Functions whose probed instruction is of each kind. Each takes a fake `g` in the register
/// Go keeps `g` in (which the C calling convention has the callee save).
mod sites {
    use super::SiteKind;

    #[cfg(target_arch = "x86_64")]
    std::arch::global_asm!(
        ".text",
        ".p2align 4",
        ".globl ctxprobe_calib_emulated",
        "ctxprobe_calib_emulated:",
        "push r14",
        "mov r14, rdi",
        // What the park probe sits on in Go 1.21+: emulated.
        ".globl ctxprobe_calib_emulated_site",
        "ctxprobe_calib_emulated_site:",
        "push rbp",
        "pop rbp",
        "pop r14",
        "ret",
        ".p2align 4",
        ".globl ctxprobe_calib_stepped",
        "ctxprobe_calib_stepped:",
        "push r14",
        "mov r14, rdi",
        // A register move: single-stepped.
        ".globl ctxprobe_calib_stepped_site",
        "ctxprobe_calib_stepped_site:",
        "mov rax, rdi",
        "pop r14",
        "ret",
    );

    #[cfg(target_arch = "aarch64")]
    std::arch::global_asm!(
        ".text",
        ".p2align 4",
        ".globl ctxprobe_calib_emulated",
        "ctxprobe_calib_emulated:",
        "stp x28, x30, [sp, #-16]!",
        "mov x28, x0",
        "cmp x0, x0",
        // What the park probe sits on (the stack check's BLS): simulated.
        ".globl ctxprobe_calib_emulated_site",
        "ctxprobe_calib_emulated_site:",
        "b.ls 1f",
        "1:",
        "ldp x28, x30, [sp], #16",
        "ret",
        ".p2align 4",
        ".globl ctxprobe_calib_stepped",
        "ctxprobe_calib_stepped:",
        "stp x28, x30, [sp, #-16]!",
        "mov x28, x0",
        // An add: single-stepped.
        ".globl ctxprobe_calib_stepped_site",
        "ctxprobe_calib_stepped_site:",
        "add x1, x0, #1",
        "ldp x28, x30, [sp], #16",
        "ret",
    );

    extern "C" {
        fn ctxprobe_calib_emulated(g: *const u8);
        fn ctxprobe_calib_emulated_site();
        fn ctxprobe_calib_stepped(g: *const u8);
        fn ctxprobe_calib_stepped_site();
    }

    /// The function to call and the address of its probed instruction.
    pub(super) fn of(kind: SiteKind) -> (unsafe extern "C" fn(*const u8), unsafe extern "C" fn()) {
        match kind {
            SiteKind::Emulated => (ctxprobe_calib_emulated, ctxprobe_calib_emulated_site),
            SiteKind::Stepped => (ctxprobe_calib_stepped, ctxprobe_calib_stepped_site),
        }
    }
}
