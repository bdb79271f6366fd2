//! pclntab robustness: binaries without section headers, randomly corrupted tables (must
//! never panic), and parse speed on a large real binary.

mod pclntab_support;
mod support;

use support::Rng;

use std::time::Instant;

use gobinary::elf::ElfFile;
use gobinary::pclntab::Pclntab;
use gobinary::prologue::after_stack_check;
use gobinary::GoVersion;
use pclntab_support::{build, go_tool};

/// Zeroes e_shoff/e_shnum/e_shstrndx: what a binary with its section headers stripped
/// (sstrip) looks like.
fn drop_section_headers(data: &mut [u8]) {
    data[0x28..0x30].fill(0);
    data[0x3c..0x40].fill(0);
}

fn check_without_section_headers(minor: u32, label: &str) {
    let b = build(minor, label, &["-ldflags=-s -w"]);
    let data = std::fs::read(&b.binary).unwrap();
    let normal = Pclntab::from_elf(&ElfFile::parse(data.clone()).unwrap(), b.version).unwrap();
    let mut bare_data = data;
    drop_section_headers(&mut bare_data);
    let bare_elf = ElfFile::parse(bare_data).unwrap();
    assert!(
        bare_elf.sections().is_empty(),
        "{label}: section headers still there"
    );
    let bare = Pclntab::from_elf(&bare_elf, b.version).expect("magic scan");
    assert_eq!(bare.len(), normal.len(), "{label}");
    assert_eq!(bare.text_start(), normal.text_start(), "{label}");
    let mut with_inlining = 0;
    for f in normal.funcs() {
        for pc in [f.entry, f.entry + (f.end - f.entry) / 2, f.end - 1] {
            let frames = normal.frames_at(pc);
            with_inlining += usize::from(frames.len() > 1);
            assert_eq!(bare.frames_at(pc), frames, "{label}: {pc:#x}");
        }
    }
    // The inline trees were found (moduledata.gofunc located without sections).
    assert!(
        with_inlining > 100,
        "{label}: only {with_inlining} PCs with inlined frames"
    );
}

#[test]
fn no_section_headers_go119() {
    check_without_section_headers(19, "fuzz-go119-s");
}

#[test]
fn no_section_headers_go121() {
    check_without_section_headers(21, "fuzz-go121-s");
}

#[test]
fn no_section_headers_go127() {
    check_without_section_headers(27, "fuzz-go127-s");
}

/// File range of a section, from a parse of the pristine binary.
fn section_range(elf: &ElfFile, name: &str) -> (usize, usize) {
    let (off, len) = elf.section(name).and_then(|s| s.file_range).expect(name);
    (off as usize, len as usize)
}

/// Offset in the file of section `name`'s header `sh_size` field.
fn sh_size_offset(data: &[u8], name: &str) -> usize {
    let elf = ElfFile::parse(data.to_vec()).unwrap();
    let idx = elf
        .sections()
        .iter()
        .position(|s| s.name == name)
        .expect(name);
    let shoff = u64::from_le_bytes(data[0x28..0x30].try_into().unwrap()) as usize;
    // object lists sections without the null section 0.
    shoff + 64 * (idx + 1) + 32
}

fn fuzz(minor: u32, label: &str, iterations: usize, seed: u64) {
    let b = build(minor, label, &["-ldflags=-s -w"]);
    let pristine = std::fs::read(&b.binary).unwrap();
    let elf = ElfFile::parse(pristine.clone()).unwrap();
    let tab = Pclntab::from_elf(&elf, b.version).unwrap();
    let (pcln_off, pcln_len) = section_range(&elf, ".gopclntab");
    let size_field = sh_size_offset(&pristine, ".gopclntab");
    assert_eq!(
        u64::from_le_bytes(pristine[size_field..size_field + 8].try_into().unwrap()),
        pcln_len as u64
    );
    // Inline trees live in rodata; corrupt that too.
    let (ro_off, ro_len) = section_range(&elf, ".rodata");
    let funcs: Vec<_> = tab.funcs().collect();
    let mut rng = Rng(seed);
    let mut pcs: Vec<u64> = (0..48)
        .map(|_| {
            let f = &funcs[rng.below(funcs.len())];
            f.entry + rng.below((f.end - f.entry) as usize) as u64
        })
        .collect();
    pcs.extend([0, u64::MAX, tab.text_start(), funcs.last().unwrap().end]);
    let names = [
        "runtime.gopark",
        "runtime.goexit1",
        "main.main",
        "main.inl1",
        "nope",
    ];

    let mut parsed = 0;
    for it in 0..iterations {
        let mut data = pristine.clone();
        match it % 5 {
            // A few byte flips anywhere in the table.
            0 | 1 => {
                for _ in 0..1 + rng.below(8) {
                    let at = pcln_off + rng.below(pcln_len);
                    data[at] ^= 1 << rng.below(8);
                }
            }
            // A header word (nfunc, textStart, table offsets) replaced.
            2 => {
                let at = pcln_off + 8 * (1 + rng.below(8));
                let v = match rng.below(3) {
                    0 => rng.next(),
                    1 => rng.next() % (2 * pcln_len as u64),
                    _ => u64::MAX - rng.below(16) as u64,
                };
                data[at..at + 8].copy_from_slice(&v.to_le_bytes());
            }
            // The section truncated.
            3 => {
                let len = rng.below(pcln_len) as u64;
                data[size_field..size_field + 8].copy_from_slice(&len.to_le_bytes());
            }
            // Random bytes in rodata (inline trees, funcdata) and in the functab region.
            _ => {
                for _ in 0..1 + rng.below(64) {
                    let at = ro_off + rng.below(ro_len);
                    data[at] = rng.next() as u8;
                }
                let at = pcln_off + rng.below(pcln_len.min(64 * 1024));
                data[at] = rng.next() as u8;
            }
        }
        let Ok(melf) = ElfFile::parse(data) else {
            continue;
        };
        let Ok(mtab) = Pclntab::from_elf(&melf, b.version) else {
            continue;
        };
        parsed += 1;
        let _ = mtab.len();
        for &pc in &pcs {
            let _ = mtab.frames_at(pc);
            let _ = mtab.line_at(pc);
            let _ = mtab.sp_delta_at(pc);
            let _ = mtab.frame_maps(pc);
            if let Some(f) = mtab.func_at(pc) {
                let _ = after_stack_check(&melf, &f);
            }
        }
        for name in names {
            if let Some(f) = mtab.func_by_name(name) {
                let _ = after_stack_check(&melf, &f);
                let _ = mtab.frames_at(f.entry);
            }
        }
    }
    assert!(
        parsed > iterations / 4,
        "{label}: only {parsed} of {iterations} mutants parsed"
    );
}

#[test]
fn mutated_go119_never_panics() {
    fuzz(19, "fuzz-go119", 1500, 0x9e37_79b9_7f4a_7c15);
}

#[test]
fn mutated_go127_never_panics() {
    fuzz(27, "fuzz-go127", 1500, 0x2545_f491_4f6c_dd1d);
}

/// Garbage that happens to start with a pcHeader magic.
#[test]
fn garbage_tables_never_panic() {
    let mut rng = Rng(7);
    let version = GoVersion {
        major: 1,
        minor: 27,
        patch: 0,
    };
    let b = build(27, "fuzz-go127-garbage", &["-ldflags=-s -w"]);
    let pristine = std::fs::read(&b.binary).unwrap();
    let elf = ElfFile::parse(pristine.clone()).unwrap();
    let (off, len) = section_range(&elf, ".gopclntab");
    for _ in 0..300 {
        let mut data = pristine.clone();
        for byte in &mut data[off + 8..off + len] {
            *byte = rng.next() as u8;
        }
        // Small plausible header values so parsing gets past the header checks sometimes.
        for i in 1..9 {
            let v = 72 + rng.below(len.min(4096)) as u64;
            data[off + 8 * i..off + 8 * i + 8].copy_from_slice(&v.to_le_bytes());
        }
        let melf = ElfFile::parse(data).unwrap();
        if let Ok(t) = Pclntab::from_elf(&melf, version) {
            for f in t.funcs().take(64) {
                let _ = t.frames_at(f.entry);
                let _ = t.sp_delta_at(f.end.saturating_sub(1));
                let _ = t.frame_maps(f.entry);
                let _ = t.frame_maps(f.end.saturating_sub(1));
                let _ = after_stack_check(&melf, &f);
            }
            let _ = t.func_by_name("main.main");
        }
    }
}

/// The Go compiler (~28 MB, ~40k functions) parses and symbolizes quickly.
#[test]
fn large_binary_is_fast() {
    let go = go_tool(27);
    let out = std::process::Command::new(&go)
        .args(["env", "GOROOT"])
        .output()
        .unwrap();
    let goroot = std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let compile = goroot.join("pkg/tool/linux_amd64/compile");
    let elf = ElfFile::open(&compile).expect("go1.27 compile tool");
    let version = GoVersion {
        major: 1,
        minor: 27,
        patch: 0,
    };
    let t0 = Instant::now();
    let tab = Pclntab::from_elf(&elf, version).unwrap();
    let parse = t0.elapsed();
    let t1 = Instant::now();
    let f = tab.func_by_name("runtime.gopark").expect("gopark");
    let index = t1.elapsed();
    let t2 = Instant::now();
    let mut frames = 0;
    for f in tab.funcs() {
        frames += tab.frames_at(f.entry + (f.end - f.entry) / 2).len();
    }
    let symbolize = t2.elapsed();
    eprintln!(
        "compile: {} funcs, parse {parse:?}, name index {index:?}, {frames} frames in {symbolize:?}",
        tab.len()
    );
    assert!(tab.len() > 10_000);
    assert!(!f.wrapper);
    // Generous bounds: this runs unoptimized on a shared 2-core machine.
    assert!(parse.as_secs_f64() < 2.0, "parse took {parse:?}");
}

/// A wrong version guess (moduledata.gofunc at another offset) must not invent inline frames:
/// the inline trees are validated and the right gofunc is found anyway.
#[test]
fn wrong_version_still_finds_inline_trees() {
    let b = build(27, "fuzz-go127-wrongver", &["-ldflags=-s -w"]);
    let elf = ElfFile::open(&b.binary).unwrap();
    let right = Pclntab::from_elf(&elf, b.version).unwrap();
    let wrong = Pclntab::from_elf(
        &elf,
        GoVersion {
            major: 1,
            minor: 21,
            patch: 0,
        },
    )
    .unwrap();
    let strip = |fs: Vec<gobinary::pclntab::Frame>| {
        fs.into_iter()
            .map(|f| (f.func, f.file, f.line, f.inlined))
            .collect::<Vec<_>>()
    };
    for f in right.funcs() {
        let pc = f.entry + (f.end - f.entry) / 2;
        assert_eq!(
            strip(wrong.frames_at(pc)),
            strip(right.frames_at(pc)),
            "{pc:#x}"
        );
    }
}
