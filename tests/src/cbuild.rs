//! Builds the C fixtures (`fixtures/c/NAME.c`) with gcc, for this machine or, with
//! `CTXPROBE_TEST_GOARCH=arm64`, statically for an arm64 VM whose guest has no C library or
//! compiler (Debian's `gcc-aarch64-linux-gnu`).

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};

use crate::gobuild::{prebuilt_only, target_goarch};
use crate::workspace_root;

/// Builds `fixtures/c/NAME.c` into `target/fixtures/c[-GOARCH]/NAME` and returns that path
/// (with `CTXPROBE_TEST_PREBUILT=1`, only returns it).
pub fn build_c_fixture(name: &str) -> Result<PathBuf> {
    let root = workspace_root();
    let goarch = target_goarch();
    let (dir, gcc, extra): (&str, &str, &[&str]) = match goarch.as_deref() {
        None => ("c", "gcc", &[]),
        Some("arm64") => ("c-arm64", "aarch64-linux-gnu-gcc", &["-static"]),
        Some(other) => bail!("no C cross compiler known for GOARCH {other}"),
    };
    let out_dir = root.join("target/fixtures").join(dir);
    let exe = out_dir.join(name);
    if prebuilt_only() {
        ensure!(
            exe.is_file(),
            "CTXPROBE_TEST_PREBUILT=1 but {} was not built (build it on the host first)",
            exe.display()
        );
        return Ok(exe);
    }
    std::fs::create_dir_all(&out_dir)?;
    let src = root.join("fixtures/c").join(format!("{name}.c"));
    let status = Command::new(gcc)
        .args(["-g", "-O0", "-pthread"])
        .args(extra)
        .arg(&src)
        .arg("-o")
        .arg(&exe)
        .status()
        .with_context(|| format!("cannot run {gcc} (install it: apt-get install {gcc})"))?;
    ensure!(status.success(), "{gcc} failed on {}", src.display());
    Ok(exe)
}
