//! Builds and runs the Go oracle program (`tests/go/callers`) with a given toolchain.
//! Shared by the pclntab test files.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use gobinary::GoVersion;

use crate::support::go_command;

/// One build of the oracle.
pub struct Build {
    pub binary: PathBuf,
    pub version: GoVersion,
}

pub use crate::support::go_tool;

/// Builds the oracle with Go 1.`minor` and extra `go build` flags into a per-label temp dir.
pub fn build(minor: u32, label: &str, flags: &[&str]) -> Build {
    let go = go_tool(minor);
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/go/callers/main.go");
    let dir = std::env::temp_dir().join(format!("ctxprobe-pclntab-tests/{label}"));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    let binary = dir.join("callers");
    let out = go_command(&go)
        .arg("build")
        .args(flags)
        .arg("-o")
        .arg(&binary)
        .arg(&src)
        .current_dir(&dir)
        .env("GO111MODULE", "auto")
        .env_remove("GOROOT")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", go.display()));
    assert!(
        out.status.success(),
        "go build ({label}) failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let vout = Command::new(&go)
        .arg("version")
        .output()
        .expect("go version");
    let vtext = String::from_utf8_lossy(&vout.stdout);
    let version = GoVersion::parse(&vtext)
        .unwrap_or_else(|| panic!("cannot parse Go version from {vtext:?}"));
    assert_eq!(version.minor, minor, "{} is not Go 1.{minor}", go.display());
    Build { binary, version }
}

#[derive(Debug, serde::Deserialize)]
pub struct OracleFrame {
    pub pc: u64,
    pub func: String,
    pub file: String,
    pub line: u32,
    pub inlined: bool,
}

#[derive(Debug, serde::Deserialize)]
pub struct Oracle {
    pub main_entry: u64,
    pub stacks: Vec<Vec<OracleFrame>>,
}

/// Runs the oracle binary and parses what the Go runtime said about its own stacks.
pub fn run(binary: &Path) -> Oracle {
    let out = Command::new(binary).output().expect("run oracle");
    assert!(
        out.status.success(),
        "oracle failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("oracle JSON")
}
