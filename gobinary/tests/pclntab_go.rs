//! pclntab symbolization checked against the Go runtime itself: the oracle program prints
//! `runtime.CallersFrames` for stacks taken with `runtime.Callers` (inlined calls, generics,
//! closures, methods, wrappers, goroutines), and every PC must symbolize to exactly those
//! frames. One test per toolchain and build mode.

mod pclntab_support;
mod support;

use gobinary::elf::ElfFile;
use gobinary::pclntab::{Frame, Pclntab};
use gobinary::prologue::after_stack_check;
use pclntab_support::{build, run, OracleFrame};

fn same(ours: &Frame, theirs: &OracleFrame) -> bool {
    ours.func == theirs.func
        && ours.file == theirs.file
        && ours.line == theirs.line
        && ours.inlined == theirs.inlined
}

fn show(frames: &[Frame]) -> String {
    frames
        .iter()
        .map(|f| {
            format!(
                "  {} {}:{} inl={} wrap={}",
                f.func, f.file, f.line, f.inlined, f.wrapper
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn show_oracle(frames: &[OracleFrame]) -> String {
    frames
        .iter()
        .map(|f| format!("  {} {}:{} inl={}", f.func, f.file, f.line, f.inlined))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Builds, runs and checks one configuration.
fn check(minor: u32, label: &str, flags: &[&str]) {
    let b = build(minor, label, flags);
    let oracle = run(&b.binary);
    let elf = ElfFile::open(&b.binary).expect("open ELF");
    let tab = Pclntab::from_elf(&elf, b.version).expect("parse pclntab");
    assert!(tab.len() > 1000, "{label}: only {} functions", tab.len());

    let main = tab.func_by_name("main.main").expect("main.main");
    // PIE: the oracle prints run-time addresses; take them back to link-time ones.
    let bias = oracle.main_entry.wrapping_sub(main.entry);
    if !flags.contains(&"-buildmode=pie") {
        assert_eq!(bias, 0, "{label}: non-PIE binary with a load bias");
    }
    if let Some(sym) = elf.symbol("main.main") {
        assert_eq!(
            sym.addr, main.entry,
            "{label}: main.main entry disagrees with .symtab"
        );
    }
    assert_eq!(
        tab.sp_delta_at(main.entry),
        Some(0),
        "{label}: frame size at entry"
    );

    let mut checked = 0;
    let mut deepest = 0;
    for (s, stack) in oracle.stacks.iter().enumerate() {
        // Greedy: the frames of each return PC (wrappers elided, as runtime.Callers does) must
        // be the next frames the runtime printed.
        let mut k = 0;
        while k < stack.len() {
            let pc = stack[k].pc.wrapping_sub(bias) - 1;
            let all = tab.frames_at(pc);
            let ours: Vec<Frame> = all.iter().filter(|f| !f.wrapper).cloned().collect();
            let theirs = &stack[k..(k + ours.len()).min(stack.len())];
            let ok = !ours.is_empty()
                && ours.len() == theirs.len()
                && ours.iter().zip(theirs).all(|(a, b)| same(a, b));
            assert!(
                ok,
                "{label}: stack {s} frame {k} pc {pc:#x}: ours\n{}\nruntime\n{}\nwhole stack\n{}",
                show(&all),
                show_oracle(theirs),
                show_oracle(stack)
            );
            // The physical frame is last and only it is not inlined.
            assert!(all.last().is_some_and(|f| !f.inlined), "{label}: {pc:#x}");
            assert!(
                all[..all.len() - 1].iter().all(|f| f.inlined),
                "{label}: {pc:#x}"
            );
            let innermost = &all[0];
            assert_eq!(
                tab.line_at(pc),
                Some((innermost.file.clone(), innermost.line)),
                "{label}: line_at({pc:#x})"
            );
            let f = tab.func_at(pc).expect("func_at");
            assert!(
                f.entry <= pc && pc < f.end,
                "{label}: func_at({pc:#x}) = {f:?}"
            );
            assert_eq!(all.last().map(|l| l.wrapper), Some(f.wrapper));
            // Every PC in a stack (including the virtual PCs of inlined callers) starts with
            // the frame the runtime printed for it.
            for (j, one) in stack[k..k + ours.len()].iter().enumerate() {
                let pcj = one.pc.wrapping_sub(bias) - 1;
                let first = tab.frames_at(pcj).into_iter().find(|f| !f.wrapper);
                assert!(
                    first.as_ref().is_some_and(|f| same(f, one)),
                    "{label}: stack {s} frame {} pc {pcj:#x}: {first:?} vs {one:?}",
                    k + j
                );
            }
            // Inside a frame that called something, the frame is allocated.
            if stack[k + ours.len() - 1].func != "runtime.goexit" {
                let sp = tab.sp_delta_at(pc);
                assert!(
                    sp.is_some_and(|d| d > 0),
                    "{label}: sp delta at {pc:#x} = {sp:?}"
                );
            }
            // The GC scans this frame with its maps (it would throw without them): they are
            // found, at the return address itself (the map index from the call before it).
            let ret = stack[k].pc.wrapping_sub(bias);
            if f.name != "runtime.goexit" {
                let maps = tab.frame_maps(ret);
                let ok = maps.as_ref().is_some_and(|m| {
                    Some(m.sp_delta as i64) == tab.sp_delta_at(ret)
                        && (m.sp_delta <= 8 || m.locals.is_some())
                        && m.args.is_some()
                        && m.objects.is_some()
                });
                assert!(ok, "{label}: frame maps at {ret:#x} ({}): {maps:?}", f.name);
            }
            k += ours.len();
            checked += 1;
            deepest = deepest.max(all.len());
        }
    }
    assert!(checked > 50, "{label}: only {checked} PCs checked");
    // record <- inl3 <- inl2 <- inl1 all inlined into one physical frame.
    assert!(
        deepest >= 4,
        "{label}: deepest inline expansion has {deepest} frames"
    );
    let inlined = oracle
        .stacks
        .iter()
        .flatten()
        .filter(|f| f.inlined && f.func.starts_with("main."))
        .count();
    assert!(
        inlined >= 10,
        "{label}: the oracle has only {inlined} inlined main.* frames"
    );

    check_runtime_funcs(&elf, &tab, label, b.version.minor);
}

/// The functions the agent hooks: found by name, the real body rather than an ABI wrapper,
/// and with a recognisable stack check.
fn check_runtime_funcs(elf: &ElfFile, tab: &Pclntab, label: &str, minor: u32) {
    for name in [
        "runtime.gopark",
        "runtime.newproc1",
        "runtime.goexit1",
        "runtime.newproc",
    ] {
        let f = tab
            .func_by_name(name)
            .unwrap_or_else(|| panic!("{label}: {name} not found"));
        assert_eq!(f.name, name);
        assert!(!f.wrapper, "{label}: {name} resolved to a wrapper: {f:?}");
        assert_eq!(
            tab.func_at(f.entry).as_ref(),
            Some(&f),
            "{label}: func_at({name})"
        );
    }
    // goexit1 and newproc have ABI0 wrappers under the same name (reference §4.1).
    for name in ["runtime.goexit1", "runtime.newproc"] {
        let twins: Vec<_> = tab.funcs().filter(|f| f.name == name).collect();
        assert_eq!(twins.len(), 2, "{label}: {name}: {twins:?}");
        assert_eq!(
            twins.iter().filter(|f| f.wrapper).count(),
            1,
            "{label}: {name}: {twins:?}"
        );
    }
    for name in ["runtime.gopark", "runtime.newproc1", "runtime.goexit1"] {
        let f = tab.func_by_name(name).unwrap();
        let at = after_stack_check(elf, &f).unwrap_or_else(|e| panic!("{label}: {name}: {e}"));
        assert!(
            at > f.entry && at < f.entry + 32,
            "{label}: {name}: {at:#x} vs {f:?}"
        );
        let first = elf.read_vaddr(at, 1).unwrap()[0];
        if minor >= 21 {
            assert_eq!(first, 0x55, "{label}: {name}: not push rbp at {at:#x}");
        } else {
            // Go 1.19: `sub rsp, N` (REX.W 83/81 /5).
            assert_eq!(first, 0x48, "{label}: {name}: not sub rsp at {at:#x}");
        }
    }
    // Frameless assembly (no stack check) is refused rather than guessed.
    let goexit = tab.func_by_name("runtime.goexit").unwrap();
    assert!(
        after_stack_check(elf, &goexit).is_err(),
        "{label}: runtime.goexit"
    );
}

#[test]
fn go119() {
    check(19, "go119", &[]);
}

#[test]
fn go119_stripped_pie() {
    check(19, "go119-s-pie", &["-ldflags=-s -w", "-buildmode=pie"]);
}

#[test]
fn go121() {
    check(21, "go121", &[]);
}

#[test]
fn go121_stripped() {
    check(21, "go121-s", &["-ldflags=-s -w"]);
}

#[test]
fn go121_pie() {
    check(21, "go121-pie", &["-buildmode=pie"]);
}

#[test]
fn go122() {
    check(22, "go122", &[]);
}

#[test]
fn go123() {
    check(23, "go123", &[]);
}

#[test]
fn go124() {
    check(24, "go124", &[]);
}

#[test]
fn go125() {
    check(25, "go125", &[]);
}

#[test]
fn go125_stripped_pie() {
    check(25, "go125-s-pie", &["-ldflags=-s -w", "-buildmode=pie"]);
}

#[test]
fn go126() {
    check(26, "go126", &[]);
}

#[test]
fn go127() {
    check(27, "go127", &[]);
}

#[test]
fn go127_stripped() {
    check(27, "go127-s", &["-ldflags=-s -w"]);
}

#[test]
fn go127_pie() {
    check(27, "go127-pie", &["-buildmode=pie"]);
}

/// External linking merges `.data.rel.ro.gopclntab` into `.data.rel.ro`: found by magic scan.
#[test]
fn go121_external_pie() {
    check(
        21,
        "go121-ext-pie",
        &["-ldflags=-linkmode=external", "-buildmode=pie"],
    );
}

#[test]
fn go127_external_pie() {
    check(
        27,
        "go127-ext-pie",
        &["-ldflags=-linkmode=external", "-buildmode=pie"],
    );
}
