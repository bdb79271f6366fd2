//! Test harness for ctxprobe: builds the Go fixtures with real toolchains, runs them and the
//! `ctxprobe` binary, parses the runtime's own goroutine dump, and checks ctxprobe's JSON lines
//! against it. The integration tests in `tests/` use it; so can matrix tasks (issue 3), which is
//! why the toolchain and the build mode are parameters everywhere.

pub mod cbuild;
pub mod compare;
pub mod contract;
pub mod dump;
pub mod fixture;
pub mod gobuild;
pub mod groups;
pub mod leaky;
pub mod probe;
pub mod process;
pub mod scenario;
pub mod serial;
pub mod toolchain;

use std::path::PathBuf;

/// The workspace root (this crate lives in `<root>/tests`).
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// How much longer the tests' timelines run here: 3 under emulation (the VM scripts set
/// `CTXPROBE_TEST_EMULATED=1`: QEMU's TCG), else 1. Emulation makes everything ctxprobe does
/// several times dearer while it keeps to the same CPU budget (a share of one core), so its
/// scans come several times further apart and so do its reports.
pub fn time_scale() -> u32 {
    if std::env::var("CTXPROBE_TEST_EMULATED").is_ok_and(|v| v == "1") {
        3
    } else {
        1
    }
}

/// `d` stretched by [`time_scale`].
pub fn scaled(d: std::time::Duration) -> std::time::Duration {
    d * time_scale()
}
