//! Build info, layouts, wait reasons and runtime variables against real binaries built with
//! every supported Go toolchain (normal, stripped, PIE, stripped PIE).

mod meta_support;
mod support;

use gobinary::buildinfo::BuildInfo;
use gobinary::elf::ElfFile;
use gobinary::gobinary::OpenOptions;
use gobinary::layout::{self, LayoutSource};
use gobinary::pclntab::Pclntab;
use gobinary::{runtime_vars, waitreason, Error, GoBinary, GoVersion};
use meta_support::{build, go_version, toolchains, Variant, MODULE};

const ALL: [Variant; 4] = [
    Variant::Normal,
    Variant::Stripped,
    Variant::Pie,
    Variant::PieStripped,
];

fn open(go: &std::path::Path, variant: Variant) -> ElfFile {
    let bin = build(go, variant);
    ElfFile::open(&bin).unwrap_or_else(|e| panic!("{}: {e}", bin.display()))
}

#[test]
fn buildinfo_reports_toolchain_and_settings() {
    for (minor, go) in toolchains() {
        let expected = go_version(&go);
        for variant in ALL {
            let elf = open(&go, variant);
            let info =
                BuildInfo::from_elf(&elf).unwrap_or_else(|e| panic!("1.{minor} {variant:?}: {e}"));
            assert_eq!(info.go_version_string, expected, "1.{minor} {variant:?}");
            assert_eq!(info.version.minor, minor);
            assert_eq!(
                info.main_path.as_deref(),
                Some(MODULE),
                "1.{minor} {variant:?}"
            );
            assert_eq!(
                info.setting("GOARCH"),
                Some("amd64"),
                "1.{minor} {variant:?}"
            );
            assert_eq!(
                info.setting("CGO_ENABLED"),
                Some("0"),
                "1.{minor} {variant:?}"
            );
            if matches!(variant, Variant::Stripped | Variant::PieStripped) {
                assert_eq!(
                    info.setting("-ldflags"),
                    Some("-s -w"),
                    "1.{minor} {variant:?}"
                );
            }
            // Go 1.19 does not record -buildmode.
            if minor >= 21 && matches!(variant, Variant::Pie | Variant::PieStripped) {
                assert_eq!(
                    info.setting("-buildmode"),
                    Some("pie"),
                    "1.{minor} {variant:?}"
                );
            }
        }
    }
}

#[test]
fn buildinfo_found_by_magic_scan_without_section_headers() {
    let (_, go) = toolchains().pop().expect("toolchains");
    let bin = build(&go, Variant::Stripped);
    let mut data = std::fs::read(&bin).expect("read binary");
    // Drop the section header table: e_shoff = 0, e_shnum = 0, e_shstrndx = 0.
    data[0x28..0x30].fill(0);
    data[0x3c..0x40].fill(0);
    let elf = ElfFile::parse(data).expect("still an ELF");
    assert!(elf.section(".go.buildinfo").is_none());
    let info = BuildInfo::from_elf(&elf).expect("magic scan");
    assert_eq!(info.go_version_string, go_version(&go));
    // The wait-reason scan works on segments too.
    let reasons = waitreason::from_binary(&elf).expect("wait reasons without sections");
    assert_eq!(Some(reasons), waitreason::from_table(info.version));
}

#[test]
fn dwarf_layout_equals_committed_table() {
    for (minor, go) in toolchains() {
        let version = GoVersion {
            major: 1,
            minor,
            patch: 0,
        };
        let table = layout::from_table(gobinary::elf::Arch::X86_64, version)
            .unwrap_or_else(|| panic!("no table for 1.{minor} in gobinary/data/layouts.json"));
        for variant in [Variant::Normal, Variant::Pie] {
            let elf = open(&go, variant);
            let dwarf = layout::from_dwarf(&elf).unwrap_or_else(|e| panic!("1.{minor}: {e}"));
            assert_eq!(
                dwarf, table,
                "1.{minor} {variant:?}: DWARF differs from table"
            );
            let (_, source) = layout::for_binary(&elf, version, false).expect("layout");
            assert_eq!(source, LayoutSource::Dwarf);
        }
        for variant in [Variant::Stripped, Variant::PieStripped] {
            let elf = open(&go, variant);
            assert!(
                layout::from_dwarf(&elf).is_err(),
                "1.{minor}: stripped has no DWARF"
            );
            let (got, source) = layout::for_binary(&elf, version, false).expect("table");
            assert_eq!(got, table);
            assert_eq!(source, LayoutSource::Table { minor });
        }
    }
}

#[test]
fn unknown_and_old_versions_are_refused_with_advice() {
    let (_, go) = toolchains().pop().expect("toolchains");
    let elf = open(&go, Variant::Stripped);
    let future = GoVersion {
        major: 1,
        minor: 99,
        patch: 1,
    };
    let err = layout::for_binary(&elf, future, false).expect_err("no table for 1.99");
    let msg = err.to_string();
    assert!(matches!(err, Error::UnsupportedGoVersion { .. }), "{msg}");
    for needle in [
        "go1.99.1",
        "cargo xtask gen-layouts --go",
        "--assume-layout",
    ] {
        assert!(msg.contains(needle), "message lacks {needle:?}: {msg}");
    }
    let (_, source) = layout::for_binary(&elf, future, true).expect("nearest");
    assert_eq!(source, LayoutSource::Nearest { minor: 27 });
    // 1.20 has no table: nearest lower is 1.19.
    let v120 = GoVersion {
        major: 1,
        minor: 20,
        patch: 0,
    };
    let (_, source) = layout::for_binary(&elf, v120, true).expect("nearest");
    assert_eq!(source, LayoutSource::Nearest { minor: 19 });

    let old = GoVersion {
        major: 1,
        minor: 18,
        patch: 3,
    };
    let err = layout::for_binary(&elf, old, true).expect_err("1.18 unsupported");
    assert!(err.to_string().contains("Go 1.19 and newer"), "{err}");
}

#[test]
fn wait_reasons_from_binary_equal_table() {
    for (minor, go) in toolchains() {
        let version = GoVersion {
            major: 1,
            minor,
            patch: 0,
        };
        let table = waitreason::from_table(version).expect("table");
        assert_eq!(table.first().map(String::as_str), Some(""));
        assert_eq!(table.get(1).map(String::as_str), Some("GC assist marking"));
        for variant in ALL {
            let elf = open(&go, variant);
            let got = waitreason::from_binary(&elf)
                .unwrap_or_else(|| panic!("1.{minor} {variant:?}: no waitReasonStrings"));
            assert_eq!(got, table, "1.{minor} {variant:?}");
        }
    }
}

#[test]
fn wait_reasons_signature_scan_matches_symbol_table_size() {
    // Unstripped: the symbol gives N; the scan must find the same N on the stripped build.
    for (minor, go) in toolchains() {
        let sym = open(&go, Variant::Normal)
            .symbol("runtime.waitReasonStrings")
            .expect("symbol");
        let scanned = waitreason::from_binary(&open(&go, Variant::Stripped)).expect("scan");
        assert_eq!(scanned.len() as u64, sym.size / 16, "1.{minor}");
    }
}

#[test]
fn wait_reasons_through_relocations_when_file_slots_are_zero() {
    // Some linkers (lld) leave RELATIVE-relocated slots zero in the file; emulate that.
    let (_, go) = toolchains().pop().expect("toolchains");
    let bin = build(&go, Variant::Pie);
    let elf = ElfFile::open(&bin).expect("open");
    let expected = waitreason::from_binary(&elf).expect("reasons");
    let sym = elf.symbol("runtime.waitReasonStrings").expect("symbol");
    let off = elf.vaddr_to_file_offset(sym.addr).expect("file offset") as usize;
    let mut data = elf.data().to_vec();
    for i in 1..(sym.size as usize / 16) {
        data[off + 16 * i..off + 16 * i + 8].fill(0);
    }
    let zeroed = ElfFile::parse(data).expect("parse");
    assert_eq!(
        waitreason::from_binary(&zeroed),
        Some(expected.clone()),
        "via symbol"
    );
    // And via the signature scan, with the symbol table dropped from the lookup.
    let stripped_bin = build(&go, Variant::PieStripped);
    let selem = ElfFile::open(&stripped_bin).expect("open");
    let table = waitreason::from_binary(&selem).expect("scan");
    let mut data = selem.data().to_vec();
    let addr = find_table(&selem, &table).expect("table address");
    let off = selem.vaddr_to_file_offset(addr).expect("offset") as usize;
    for i in 1..table.len() {
        data[off + 16 * i..off + 16 * i + 8].fill(0);
    }
    let zeroed = ElfFile::parse(data).expect("parse");
    assert_eq!(waitreason::from_binary(&zeroed), Some(table), "via scan");
}

/// Address of the `[N]string` whose entry 1 points at "GC assist marking" (test helper).
fn find_table(elf: &ElfFile, table: &[String]) -> Option<u64> {
    let anchor = table.get(1)?.as_bytes();
    let data = elf.data();
    let a_off = data.windows(anchor.len()).position(|w| w == anchor)?;
    let seg = elf
        .segments()
        .iter()
        .find(|s| (a_off as u64) >= s.file_offset && (a_off as u64) < s.file_offset + s.filesz)?;
    let a = seg.vaddr + (a_off as u64 - seg.file_offset);
    let mut pat = vec![0u8; 16];
    pat.extend_from_slice(&a.to_le_bytes());
    pat.extend_from_slice(&(anchor.len() as u64).to_le_bytes());
    let off = data.windows(32).position(|w| w == &pat[..])?;
    let seg = elf
        .segments()
        .iter()
        .find(|s| (off as u64) >= s.file_offset && (off as u64) < s.file_offset + s.filesz)?;
    Some(seg.vaddr + (off as u64 - seg.file_offset))
}

#[test]
fn allgadd_disassembly_matches_symtab() {
    // Uses the .symtab entry of runtime.allgadd so this does not depend on the pclntab parser.
    for (minor, go) in toolchains() {
        for variant in [Variant::Normal, Variant::Pie] {
            let elf = open(&go, variant);
            let expected = runtime_vars::from_symtab(&elf).expect("symtab vars");
            let f = elf.symbol("runtime.allgadd").expect("allgadd symbol");
            let code = elf
                .read_vaddr(f.addr, f.size as usize)
                .expect("allgadd code");
            let got = runtime_vars::from_allgadd_code(code, f.addr)
                .unwrap_or_else(|e| panic!("1.{minor} {variant:?}: {e}"));
            assert_eq!(got, expected, "1.{minor} {variant:?}");
        }
    }
}

#[test]
fn allgadd_via_pclntab_matches_symtab() {
    for (minor, go) in toolchains() {
        for variant in [Variant::Normal, Variant::Pie] {
            let elf = open(&go, variant);
            let version = BuildInfo::from_elf(&elf).expect("buildinfo").version;
            let pcln = Pclntab::from_elf(&elf, version)
                .unwrap_or_else(|e| panic!("1.{minor} {variant:?}: pclntab: {e}"));
            let expected = runtime_vars::from_symtab(&elf).expect("symtab vars");
            let got = runtime_vars::locate_by_disassembly(&elf, &pcln)
                .unwrap_or_else(|e| panic!("1.{minor} {variant:?}: {e}"));
            assert_eq!(got, expected, "1.{minor} {variant:?}");
        }
    }
}

#[test]
fn gobinary_opens_every_variant() {
    for (minor, go) in toolchains() {
        for variant in ALL {
            let bin = build(&go, variant);
            let gb = GoBinary::open(&bin, &OpenOptions::default())
                .unwrap_or_else(|e| panic!("1.{minor} {variant:?}: {e}"));
            assert_eq!(gb.build_info.version.minor, minor);
            let version = gb.build_info.version;
            assert_eq!(
                Some(gb.wait_reasons.clone()),
                waitreason::from_table(version)
            );
            assert_eq!(
                Some(gb.layout.clone()),
                layout::from_table(gobinary::elf::Arch::X86_64, version)
            );
            if matches!(variant, Variant::Stripped | Variant::PieStripped) {
                assert_eq!(gb.layout_source, LayoutSource::Table { minor });
                // Same addresses as the unstripped build of the same kind would not hold
                // (different link), so check plausibility: both in a writable segment.
                assert!(gb
                    .elf
                    .segments()
                    .iter()
                    .any(|s| { gb.vars.allgs >= s.vaddr && gb.vars.allgs < s.vaddr + s.memsz }));
            } else {
                assert_eq!(Some(gb.vars), runtime_vars::from_symtab(&gb.elf));
            }
        }
    }
}

#[test]
fn clear_errors_for_non_go_and_foreign_binaries() {
    let ls = ElfFile::open(std::path::Path::new("/bin/ls")).expect("/bin/ls is an ELF");
    let err = BuildInfo::from_elf(&ls).expect_err("ls is not Go");
    assert!(matches!(err, Error::NotGo(_)), "{err}");
    let err = GoBinary::open(std::path::Path::new("/bin/ls"), &OpenOptions::default())
        .err()
        .expect("ls is not Go");
    assert!(err.to_string().starts_with("not a Go program"), "{err}");

    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let err = GoBinary::open(&manifest, &OpenOptions::default())
        .err()
        .expect("not ELF");
    assert!(matches!(err, Error::NotElf(_)), "{err}");

    // A foreign architecture: the arm64 build with its ELF machine changed to RISC-V (243).
    let (_, go) = toolchains().pop().expect("toolchains");
    let mut data = std::fs::read(build(&go, Variant::Arm64)).expect("read arm64 binary");
    data[0x12..0x14].copy_from_slice(&243u16.to_le_bytes());
    let err = GoBinary::from_elf(ElfFile::parse(data).expect("ELF"), &OpenOptions::default())
        .err()
        .expect("riscv64");
    assert!(
        matches!(err, Error::UnsupportedArch(ref a) if a == "riscv64"),
        "{err}"
    );
    assert!(!err.to_string().contains('\n'));
}

/// arm64 builds of every toolchain: layouts from DWARF equal the committed arm64 tables,
/// stripped builds use them, and `allgs`/`allglen` found in `runtime.allgadd`'s arm64 code
/// (ADRP/ADD/LDR addressing) equal `.symtab`'s.
#[test]
fn arm64_binaries_open_like_amd64_ones() {
    for (minor, go) in toolchains() {
        let version = GoVersion {
            major: 1,
            minor,
            patch: 0,
        };
        let elf = open(&go, Variant::Arm64);
        assert_eq!(elf.arch(), gobinary::elf::Arch::Aarch64);
        let table =
            layout::from_table(gobinary::elf::Arch::Aarch64, version).unwrap_or_else(|| {
                panic!("no table for 1.{minor} in gobinary/data/layouts-arm64.json")
            });
        let dwarf = layout::from_dwarf(&elf).unwrap_or_else(|e| panic!("1.{minor}: {e}"));
        assert_eq!(dwarf, table, "1.{minor} arm64: DWARF differs from table");
        let expected = runtime_vars::from_symtab(&elf).expect("symtab vars");
        let pcln = Pclntab::from_elf(&elf, version).unwrap_or_else(|e| panic!("1.{minor}: {e}"));
        let got = runtime_vars::locate_by_disassembly(&elf, &pcln)
            .unwrap_or_else(|e| panic!("1.{minor} arm64: {e}"));
        assert_eq!(got, expected, "1.{minor} arm64");
        // Symbolization with the arm64 pc quantum: allgadd's entry is where .symtab says.
        let sym = elf.symbol("runtime.allgadd").expect("allgadd symbol");
        let f = pcln.func_at(sym.addr + 8).expect("func at allgadd+8");
        assert_eq!((f.name.as_str(), f.entry), ("runtime.allgadd", sym.addr));
        assert!(pcln
            .line_at(sym.addr + 8)
            .is_some_and(|(file, _)| file.ends_with("proc.go")));

        let stripped = build(&go, Variant::Arm64Stripped);
        let gb = GoBinary::open(&stripped, &OpenOptions::default())
            .unwrap_or_else(|e| panic!("1.{minor} arm64 stripped: {e}"));
        assert_eq!(gb.layout_source, LayoutSource::Table { minor });
        assert_eq!(gb.layout, table);
        assert_eq!(
            Some(gb.wait_reasons.clone()),
            waitreason::from_table(gb.build_info.version)
        );
    }
}

/// The runtime's own function flags, which the thread unwinder stops at: the outermost frames
/// (TOPFRAME) and the stack switchers (SPWRITE), in every release and build kind.
#[test]
fn function_flags_mark_outermost_and_stack_switching_functions() {
    for (minor, go) in toolchains() {
        for variant in [Variant::Normal, Variant::PieStripped] {
            let elf = open(&go, variant);
            let version = BuildInfo::from_elf(&elf).expect("buildinfo").version;
            let pcln = Pclntab::from_elf(&elf, version)
                .unwrap_or_else(|e| panic!("1.{minor} {variant:?}: pclntab: {e}"));
            let func = |name: &str| {
                pcln.func_by_name(name)
                    .unwrap_or_else(|| panic!("1.{minor} {variant:?}: no {name}"))
            };
            for name in ["runtime.mstart", "runtime.goexit", "runtime.rt0_go"] {
                assert!(func(name).is_top_frame(), "1.{minor} {variant:?}: {name}");
            }
            for name in ["runtime.mcall", "runtime.systemstack", "runtime.asmcgocall"] {
                let f = func(name);
                assert!(f.writes_sp(), "1.{minor} {variant:?}: {name}");
                assert!(!f.is_top_frame(), "1.{minor} {variant:?}: {name}");
            }
            for name in ["runtime.mstart0", "runtime.futexsleep", "runtime.gopark"] {
                let f = func(name);
                assert!(
                    !f.is_top_frame() && !f.writes_sp(),
                    "1.{minor} {variant:?}: {name}"
                );
            }
        }
    }
}

/// The file's bytes as the process would see them (non-PIE: link addresses are runtime ones).
struct FileMemory<'a>(&'a ElfFile);

impl gobinary::rtype::Memory for FileMemory<'_> {
    fn read(&self, addr: u64, len: usize) -> Option<Vec<u8>> {
        self.0.read_vaddr(addr, len).map(<[u8]>::to_vec)
    }
}

#[test]
fn object_layout_from_dwarf_equals_table_and_decodes_types() {
    use gobinary::objlayout;
    use gobinary::rtype::{kind, TypeReader};
    for (minor, go) in toolchains() {
        let version = GoVersion {
            major: 1,
            minor,
            patch: 0,
        };
        let table = layout::tables()
            .get(&format!("1.{minor}"))
            .and_then(|t| t.objects.clone())
            .unwrap_or_else(|| panic!("no object table for 1.{minor}"));
        let elf = open(&go, Variant::Normal);
        let mut dwarf = objlayout::from_dwarf(&elf).unwrap_or_else(|e| panic!("1.{minor}: {e}"));
        // cancelCtx.err is read separately (only when the binary uses package context).
        assert!(table.cancelctx_err.is_some(), "1.{minor}: no cancelctx_err");
        if let Ok(err) = objlayout::cancelctx_err_from_dwarf(&elf) {
            assert_eq!(Some(err), table.cancelctx_err, "1.{minor}: cancelCtx.err");
        }
        dwarf.cancelctx_err = table.cancelctx_err;
        assert_eq!(dwarf, table, "1.{minor}: DWARF differs from table");
        let stripped = open(&go, Variant::Stripped);
        assert_eq!(
            objlayout::for_binary(&stripped, version, false).as_ref(),
            Some(&table),
            "1.{minor} stripped"
        );

        // Type metadata through the module data found from the pclntab (as in a stripped
        // binary), checked against the symbol table's type symbols.
        let pcln = Pclntab::from_elf(&elf, version).expect("pclntab");
        let md = pcln.moduledata_addr().expect("moduledata found");
        if let Some(sym) = elf.symbol("runtime.firstmoduledata") {
            assert_eq!(sym.addr, md, "1.{minor}: moduledata address");
        }
        let mem = FileMemory(&elf);
        let types = TypeReader::new(&mem, &table, md).expect("types range");
        // Type symbols are not in .symtab: find the descriptor by scanning the type data.
        let ptr = (types.types..types.etypes)
            .step_by(8)
            .find(|&a| {
                types.kind(a) == Some(kind::POINTER)
                    && types.name(a).as_deref() == Some("*sync.Mutex")
            })
            .unwrap_or_else(|| panic!("1.{minor}: no *sync.Mutex type descriptor"));
        let elem = types.ptr_elem(ptr).expect("elem");
        assert_eq!(types.name(elem).as_deref(), Some("sync.Mutex"));
        let fields = types.struct_fields(elem).expect("fields");
        assert!(!fields.is_empty(), "1.{minor}: sync.Mutex fields");
        assert_eq!(fields[0].offset, 0);
        assert_eq!(types.size(elem), Some(8), "1.{minor}: sizeof(sync.Mutex)");
    }
}

/// `runtime.mheap_` and `runtime.semtable` derived from code (what stripped binaries need)
/// equal `.symtab`'s, on amd64 and arm64 builds of every toolchain.
#[test]
fn heap_vars_from_code_match_symtab() {
    use gobinary::heap_vars;
    for (minor, go) in toolchains() {
        for variant in [Variant::Normal, Variant::Pie, Variant::Arm64] {
            let elf = open(&go, variant);
            let version = BuildInfo::from_elf(&elf).expect("buildinfo").version;
            let pcln = Pclntab::from_elf(&elf, version)
                .unwrap_or_else(|e| panic!("1.{minor} {variant:?}: pclntab: {e}"));
            let mheap = elf.symbol("runtime.mheap_").expect("mheap_ symbol").addr;
            let semtable = elf
                .symbol("runtime.semtable")
                .expect("semtable symbol")
                .addr;
            let got = heap_vars::mheap_from_code(&elf, &pcln)
                .unwrap_or_else(|e| panic!("1.{minor} {variant:?}: {e}"));
            assert_eq!(got, mheap, "1.{minor} {variant:?}: mheap_");
            let got = heap_vars::semtable_from_code(&elf, &pcln)
                .unwrap_or_else(|e| panic!("1.{minor} {variant:?}: {e}"));
            assert_eq!(got, semtable, "1.{minor} {variant:?}: semtable");
            let table = gobinary::layout::tables_for(elf.arch())
                .get(&format!("1.{minor}"))
                .and_then(|t| t.heap.clone())
                .expect("heap table");
            let dwarf = gobinary::heaplayout::from_dwarf(&elf)
                .unwrap_or_else(|e| panic!("1.{minor} {variant:?}: {e}"));
            assert_eq!(dwarf, table, "1.{minor} {variant:?}: heap layout");
        }
    }
}

/// `runtime.itabTable` derived from `runtime.itabAdd`'s code (what stripped binaries need)
/// equals `.symtab`'s, on amd64 and arm64 builds of every toolchain.
#[test]
fn itab_table_from_code_matches_symtab() {
    use gobinary::itab_table;
    for (minor, go) in toolchains() {
        for variant in [Variant::Normal, Variant::Pie, Variant::Arm64] {
            let elf = open(&go, variant);
            let version = BuildInfo::from_elf(&elf).expect("buildinfo").version;
            let pcln = Pclntab::from_elf(&elf, version)
                .unwrap_or_else(|e| panic!("1.{minor} {variant:?}: pclntab: {e}"));
            let expected = elf
                .symbol("runtime.itabTable")
                .expect("itabTable symbol")
                .addr;
            let got = itab_table::from_code(&elf, &pcln)
                .unwrap_or_else(|e| panic!("1.{minor} {variant:?}: {e}"));
            assert_eq!(got, expected, "1.{minor} {variant:?}: itabTable");
        }
    }
}
