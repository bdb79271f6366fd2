//! Builds small Go programs with every supported toolchain for the `meta*` tests.
//!
//! Binaries are cached under `CARGO_TARGET_TMPDIR`, keyed by the toolchain's `go version`
//! output, the build flags and the source, so reruns only pay for what changed. A missing
//! toolchain is a test failure with instructions, never a silent skip.

#![allow(dead_code)]

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use crate::support::go_command;

pub const PROGRAM: &str = r#"package main

import (
	"fmt"
	"sync"
	"time"
)

func main() {
	ch := make(chan int)
	var mu sync.Mutex
	mu.Lock()
	go func() { <-ch }()
	go func() { mu.Lock() }()
	time.Sleep(time.Millisecond)
	fmt.Println("ok")
}
"#;

pub const MODULE: &str = "example.com/metaprobe";

pub use crate::support::toolchains;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Variant {
    Normal,
    /// `-ldflags='-s -w'`: no .symtab, no DWARF.
    Stripped,
    Pie,
    PieStripped,
    /// DWARF left uncompressed, so byte mutations reach the DWARF parser.
    UncompressedDwarf,
    Arm64,
    Arm64Stripped,
}

impl Variant {
    fn flags(
        self,
    ) -> (
        &'static [&'static str],
        &'static [(&'static str, &'static str)],
    ) {
        match self {
            Variant::Normal => (&[], &[]),
            Variant::Stripped => (&["-ldflags=-s -w"], &[]),
            Variant::Pie => (&["-buildmode=pie"], &[]),
            Variant::PieStripped => (&["-buildmode=pie", "-ldflags=-s -w"], &[]),
            Variant::UncompressedDwarf => (&["-ldflags=-compressdwarf=false"], &[]),
            Variant::Arm64 => (&[], &[("GOARCH", "arm64")]),
            Variant::Arm64Stripped => (&["-ldflags=-s -w"], &[("GOARCH", "arm64")]),
        }
    }
}

static BUILD_LOCK: Mutex<()> = Mutex::new(());

/// `go version` of a toolchain, e.g. `go1.25.5`.
pub fn go_version(go: &Path) -> String {
    let out = Command::new(go)
        .arg("version")
        .env("GOTOOLCHAIN", "local")
        .output()
        .unwrap_or_else(|e| panic!("running {} version: {e}", go.display()));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.split_whitespace()
        .nth(2)
        .unwrap_or_else(|| panic!("odd `go version` output {text:?}"))
        .to_string()
}

/// Builds `PROGRAM` with `go` (cached) and returns the binary's path.
pub fn build(go: &Path, variant: Variant) -> PathBuf {
    let _guard = BUILD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let version = go_version(go);
    let (args, env) = variant.flags();
    let mut h = DefaultHasher::new();
    (PROGRAM, args, env).hash(&mut h);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("meta-go")
        .join(format!("{version}-{variant:?}-{:016x}", h.finish()));
    let bin = dir.join("prog");
    if bin.exists() {
        return bin;
    }
    std::fs::create_dir_all(&dir).expect("create build dir");
    std::fs::write(dir.join("main.go"), PROGRAM).expect("write main.go");
    std::fs::write(dir.join("go.mod"), format!("module {MODULE}\n\ngo 1.19\n"))
        .expect("write go.mod");
    let tmp = dir.join("prog.tmp");
    let mut cmd = go_command(go);
    cmd.arg("build")
        .args(args)
        .arg("-o")
        .arg(&tmp)
        .arg(".")
        .current_dir(&dir);
    cmd.env("CGO_ENABLED", "0");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", go.display()));
    assert!(
        out.status.success(),
        "go build ({variant:?}) with {} failed: {}",
        go.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::rename(&tmp, &bin).expect("rename built binary");
    bin
}
