//! `cargo xtask <task>`: project maintenance tasks. One module per task; this file only
//! dispatches.

mod bench;
mod gen_layouts;
mod matrix;
mod vm;

use std::path::PathBuf;

const USAGE: &str = "usage: cargo xtask <task> [args]

tasks:
  gen-layouts [--arch amd64|arm64] [--go PATH ...] [--check]
      Compile a probe program with each Go toolchain, read the runtime struct layouts and
      wait-reason strings from its DWARF/symbols and update gobinary/data/layouts.json.
      Default toolchains: /usr/lib/go-1.19/bin/go and .tools/go1.{21..27}/bin/go.
      --check: regenerate in memory and fail if the committed file differs.
  matrix [--go 1.19,1.27] [--build stripped,pie] [--cells 1.19:stripped,...]
      Run the goroutine integration tests per Go version x build mode cell; print a table.
  bench [--help]
      Measure ctxprobe's cost on real workloads, with and without it attached, in one run
      (needs root and `cargo build --release -p ctxprobe` first).
  vm --arch x86_64|arm64 [--kernel 6.1|6.12] [--share DIR]... [--timeout S] -- CMD...
      Boot Debian's kernel under QEMU (KVM when usable), DIR mounted read-write at the same
      path, run CMD as root, print its output, exit with its status (scripts/setup.sh --vm).";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("gen-layouts") => gen_layouts::run(args.get(1..).unwrap_or_default()),
        Some("bench") => bench::run(args.get(1..).unwrap_or_default()),
        Some("matrix") => matrix::run(args.get(1..).unwrap_or_default()),
        Some("vm") => vm::run(args.get(1..).unwrap_or_default()),
        Some("help" | "-h" | "--help") | None => {
            println!("{USAGE}");
            Ok(())
        }
        Some(other) => Err(anyhow::anyhow!("unknown task {other:?}\n\n{USAGE}")),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}
