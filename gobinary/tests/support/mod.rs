//! What every gobinary integration test shares: where the Go toolchains are, a `go` command set
//! up for reproducible local builds, and a deterministic random generator for the never-panic
//! tests. (Each test file is its own crate: it includes this with `mod support;`.)

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The `go` command of Go 1.`minor` (19 = Debian's golang-1.19; the others from .tools).
/// Panics with instructions when it is missing: these tests must never pass silently.
pub fn go_tool(minor: u32) -> PathBuf {
    let go = if minor == 19 {
        PathBuf::from("/usr/lib/go-1.19/bin/go")
    } else {
        workspace_root().join(format!(".tools/go1.{minor}/bin/go"))
    };
    assert!(
        go.exists(),
        "Go 1.{minor} toolchain missing at {} (run scripts/setup.sh --all-go)",
        go.display()
    );
    go
}

/// Every supported toolchain as (minor, path to `go`), oldest first.
pub fn toolchains() -> Vec<(u32, PathBuf)> {
    std::iter::once(19)
        .chain(21..=27)
        .map(|minor| (minor, go_tool(minor)))
        .collect()
}

/// `go` with the local toolchain only, module mode and the project's build cache.
pub fn go_command(go: &Path) -> Command {
    let mut cmd = Command::new(go);
    cmd.env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "-mod=mod")
        .env("GOCACHE", workspace_root().join(".tools/gocache"));
    cmd
}

/// Deterministic xorshift64*, so a failing mutation reproduces.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform-ish in `0..n`; 0 when `n` is 0.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}
