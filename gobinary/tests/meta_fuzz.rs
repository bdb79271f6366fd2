//! Never-panic: deterministic random mutations and truncations of real Go binaries fed to the
//! build-info, wait-reason, layout and allgadd parsers. Only the absence of panics is checked.

mod meta_support;
mod support;

use support::Rng;

use gobinary::buildinfo::BuildInfo;
use gobinary::elf::ElfFile;
use gobinary::{layout, runtime_vars, waitreason};
use meta_support::{build, toolchains, Variant};

/// File ranges worth hitting: headers, the buildinfo blob, the wait-reason table, DWARF.
fn hot_ranges(elf: &ElfFile) -> Vec<(usize, usize)> {
    let mut out = vec![(0, 64.min(elf.data().len()))];
    for name in [
        ".go.buildinfo",
        ".debug_info",
        ".debug_abbrev",
        ".debug_str",
        ".rela",
    ] {
        if let Some((off, len)) = elf.section(name).and_then(|s| s.file_range) {
            out.push((off as usize, (len as usize).min(1 << 20)));
        }
    }
    if let Some(sym) = elf.symbol("runtime.waitReasonStrings") {
        if let Some(off) = elf.vaddr_to_file_offset(sym.addr) {
            out.push((off as usize, sym.size as usize));
        }
    }
    // Section header table.
    if let Some(b) = elf.data().get(0x28..0x30) {
        let shoff = u64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as usize;
        out.push((shoff, elf.data().len().saturating_sub(shoff)));
    }
    out
}

fn mutate(rng: &mut Rng, orig: &[u8], ranges: &[(usize, usize)]) -> Vec<u8> {
    let mut data = orig.to_vec();
    match rng.below(4) {
        0 => data.truncate(rng.below(orig.len())),
        _ => {
            let (start, len) = ranges[rng.below(ranges.len())];
            for _ in 0..1 + rng.below(16) {
                let i = start + rng.below(len);
                if let Some(b) = data.get_mut(i) {
                    *b = match rng.below(3) {
                        0 => rng.next() as u8,
                        1 => 0,
                        _ => 0xff,
                    };
                }
            }
        }
    }
    data
}

fn exercise(data: Vec<u8>, dwarf: bool) {
    let Ok(elf) = ElfFile::parse(data) else {
        return;
    };
    let _ = BuildInfo::from_elf(&elf);
    let _ = waitreason::from_binary(&elf);
    if dwarf {
        let _ = layout::from_dwarf(&elf);
    }
    if let Some(f) = elf.symbol("runtime.allgadd") {
        if let Some(code) = elf.read_vaddr(f.addr, (f.size as usize).min(4096)) {
            let _ = runtime_vars::from_allgadd_code(code, f.addr);
        }
    }
}

#[test]
fn mutated_binaries_never_panic() {
    let (_, go) = toolchains().pop().expect("toolchains");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    // Uncompressed DWARF so mutations reach gimli rather than only zlib.
    for (variant, iterations, dwarf_every) in [
        (Variant::UncompressedDwarf, 150, 5),
        (Variant::PieStripped, 300, 1),
    ] {
        let bin = build(&go, variant);
        let orig = std::fs::read(&bin).expect("read binary");
        let elf = ElfFile::parse(orig.clone()).expect("parse original");
        let ranges = hot_ranges(&elf);
        for i in 0..iterations {
            let data = mutate(&mut rng, &orig, &ranges);
            // DWARF parsing of a whole Go binary is the slow part: only every Nth iteration.
            exercise(data, i % dwarf_every == 0);
        }
    }
}

#[test]
fn random_code_never_panics_disassembler() {
    let mut rng = Rng(42);
    for _ in 0..2000 {
        let len = rng.below(512);
        let code: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        let _ = runtime_vars::from_allgadd_code(&code, rng.next());
    }
}
