//! What one probe hit costs the target: measured on this machine when the probes start (a
//! uprobe's cost varies by CPU, kernel and hypervisor several-fold), else assumed from what
//! `cargo xtask bench` measured on the machines at hand.

use std::path::PathBuf;

use gobinary::elf::Arch;
use probe_ebpf::calibrate::{self, SiteKind};

use crate::procmaps;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HitCost {
    pub ns: f64,
    /// Measured here (else assumed from the table below).
    pub measured: bool,
}

/// Measures each kind of site once.
pub struct HitCostMeter {
    arch: Arch,
    g_goid_offset: u64,
    g_tracking_seq_offset: u64,
    known: Vec<(SiteKind, HitCost)>,
}

impl HitCostMeter {
    pub fn new(arch: Arch, g_goid_offset: u64, g_tracking_seq_offset: u64) -> HitCostMeter {
        HitCostMeter {
            arch,
            g_goid_offset,
            g_tracking_seq_offset,
            known: Vec::new(),
        }
    }

    /// A hit at a site the kernel emulates (or single-steps, when not `emulated`).
    pub fn cost(&mut self, emulated: bool) -> HitCost {
        let kind = if emulated {
            SiteKind::Emulated
        } else {
            SiteKind::Stepped
        };
        if let Some((_, c)) = self.known.iter().find(|(k, _)| *k == kind) {
            return *c;
        }
        let measured = own_code_location(calibrate::site_address(kind)).and_then(|(exe, off)| {
            calibrate::measure_park_hit(
                exe,
                off,
                self.g_goid_offset,
                self.g_tracking_seq_offset,
                kind,
            )
            .map_err(|e| e.to_string())
        });
        let cost = match measured {
            Ok(ns) => HitCost { ns, measured: true },
            Err(e) => {
                let ns = assumed_ns(self.arch, emulated);
                eprintln!(
                    "ctxprobe: cannot measure what a probe hit costs here ({e}); assuming {:.1} µs",
                    ns / 1000.0
                );
                HitCost {
                    ns,
                    measured: false,
                }
            }
        };
        self.known.push((kind, cost));
        cost
    }
}

/// The file ctxprobe's own code at `addr` is mapped from, and where in it.
fn own_code_location(addr: u64) -> Result<(PathBuf, u64), String> {
    let maps = procmaps::mappings(std::process::id())
        .map_err(|e| format!("cannot read /proc/self/maps: {e}"))?;
    maps.iter()
        .find(|m| (m.start..m.end).contains(&addr))
        .and_then(|m| Some((PathBuf::from(m.path.as_ref()?), addr - m.start + m.offset)))
        .filter(|(p, _)| p.exists())
        .ok_or_else(|| {
            format!("ctxprobe's own code at {addr:#x} is not in a file it can probe (was its binary replaced while it runs?)")
        })
}

/// amd64, measured with `cargo xtask bench`: ~0.9 µs where the kernel emulates `push rbp`, ~10 µs
/// single-stepped (Go 1.19's prologue). arm64 (the stack check's `BLS`, simulated): a guess
/// for hardware, about twice amd64's; QEMU TCG, the only arm64 at hand, measures ~20 µs
/// because it inflates every trap.
fn assumed_ns(arch: Arch, emulated: bool) -> f64 {
    match (arch, emulated) {
        (Arch::Aarch64, true) => 2_000.0,
        (Arch::Aarch64, false) => 10_000.0,
        (_, true) => 900.0,
        (_, false) => 10_000.0,
    }
}
