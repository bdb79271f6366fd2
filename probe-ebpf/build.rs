//! Builds the eBPF object (clang-19, `-target bpf`) and a host-side layout dump of the shared structs.
//!
//! Outputs in OUT_DIR: `ctxprobe.bpf.o` and `futex.bpf.o` (embedded by src/lib.rs) and `layout.txt`
//! (read by the layout test in src/abi.rs, which compares it with the Rust mirrors).

use std::env;
use std::path::{Path, PathBuf};
use std::process::{exit, Command};

/// clang-19 by default; `CTXPROBE_CLANG` overrides (e.g. a clang-19 outside PATH).
fn clang() -> String {
    env::var("CTXPROBE_CLANG").unwrap_or_else(|_| "clang-19".to_string())
}

fn main() {
    let manifest =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let bpf = manifest.join("bpf");
    for file in [
        "ctxprobe.h",
        "ctxprobe.bpf.c",
        "futex.h",
        "futex.bpf.c",
        "layout.c",
    ] {
        println!("cargo:rerun-if-changed={}", bpf.join(file).display());
    }
    println!("cargo:rerun-if-env-changed=CC");
    println!("cargo:rerun-if-env-changed=CTXPROBE_CLANG");

    build_bpf(&bpf, &out, "ctxprobe");
    build_bpf(&bpf, &out, "futex");
    dump_layout(&bpf, &out);
}

/// Compiles `bpf/<name>.bpf.c` into `<name>.bpf.o` in OUT_DIR.
fn build_bpf(bpf: &Path, out: &Path, name: &str) {
    let object = out.join(format!("{name}.bpf.o"));
    let clang = clang();
    // The target process's architecture decides the register layout the programs read.
    let (arch_define, arch_include) = match env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("aarch64") => (
            "-D__TARGET_ARCH_arm64",
            // Debian's libc6-dev-arm64-cross (gcc-aarch64-linux-gnu pulls it in).
            "-I/usr/aarch64-linux-gnu/include",
        ),
        Ok("x86_64") => ("-D__TARGET_ARCH_x86", "-I/usr/include/x86_64-linux-gnu"),
        other => fail(&format!(
            "no BPF programs for target architecture {other:?} (x86_64 and aarch64 only)"
        )),
    };
    let status = Command::new(&clang)
        .args(["-target", "bpf", "-O2", "-g", "-Wall", "-Werror"])
        .arg(arch_define)
        // clang does not search the multiarch include dir for `-target bpf` (asm/ptrace.h lives there).
        .arg(arch_include)
        .arg("-I")
        .arg(bpf)
        .arg("-c")
        .arg(bpf.join(format!("{name}.bpf.c")))
        .arg("-o")
        .arg(&object)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => fail(&format!(
            "{clang} failed to compile bpf/{name}.bpf.c ({s}); see its errors above (missing libbpf-dev? run `scripts/setup.sh`)"
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fail(&format!("{clang} not found: run `scripts/setup.sh` to install clang-19 and libbpf-dev"))
        }
        Err(e) => fail(&format!("cannot run {clang}: {e}")),
    }
}

/// Compiles bpf/layout.c with the host C compiler and records what it prints.
fn dump_layout(bpf: &Path, out: &Path) {
    let cc = env::var("CC").unwrap_or_else(|_| "cc".to_string());
    let exe = out.join("layout");
    let status = Command::new(&cc)
        .arg("-I")
        .arg(bpf)
        .arg(bpf.join("layout.c"))
        .arg("-o")
        .arg(&exe)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => fail(&format!("{cc} failed to compile bpf/layout.c ({s})")),
        Err(e) => fail(&format!(
            "cannot run the host C compiler `{cc}` ({e}): run `scripts/setup.sh`"
        )),
    }
    let output = match Command::new(&exe).output() {
        Ok(o) if o.status.success() => o.stdout,
        Ok(o) => fail(&format!("{} exited with {}", exe.display(), o.status)),
        Err(e) => fail(&format!("cannot run {}: {e}", exe.display())),
    };
    if let Err(e) = std::fs::write(out.join("layout.txt"), output) {
        fail(&format!("cannot write layout.txt: {e}"));
    }
}

fn fail(msg: &str) -> ! {
    println!("cargo::error={msg}");
    exit(1);
}
