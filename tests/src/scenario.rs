//! Pieces shared by the integration tests: running a check per matrix cell with all failures
//! reported together, preconditions, and whole-output checks.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::contract::check_record;
use crate::probe::{ctxprobe_bin, ProbeOutput};
use crate::serial::bpf_serial;
use crate::toolchain::{matrix, BuildMode, Toolchain};

/// Runs `f` for every cell of [`matrix`], serialised with other BPF tests, and panics with
/// every failure (not just the first), each labelled with its cell.
pub fn for_each_cell(f: impl Fn(&Toolchain, &BuildMode) -> Result<()>) {
    let cells = match matrix() {
        Ok(c) => c,
        Err(e) => panic!("{e:#}"),
    };
    let mut failures = Vec::new();
    for (tc, mode) in &cells {
        let r = preconditions().and_then(|()| {
            let _serial = bpf_serial()?;
            f(tc, mode)
        });
        if let Err(e) = r {
            failures.push(format!("[Go {} {}] {e:#}", tc.version, mode.name));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Runs one check (not per matrix cell), serialised with other BPF tests; panics with its error.
pub fn check(f: impl FnOnce() -> Result<()>) {
    let r = preconditions().and_then(|()| {
        let _serial = bpf_serial()?;
        f()
    });
    if let Err(e) = r {
        panic!("{e:#}");
    }
}

/// Root and a built ctxprobe: missing either is a failure that says what to do.
pub fn preconditions() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the integration tests attach BPF probes and must run as root (sudo)");
    }
    ctxprobe_bin().map(|_| ())
}

/// Every stdout line is a JSON record that satisfies the contract for target `pid`.
pub fn check_all_records(out: &ProbeOutput, pid: u32) -> Result<Vec<Value>> {
    let records = out.records().with_context(|| out.describe())?;
    for r in &records {
        check_record(r, pid)?;
    }
    Ok(records)
}

/// Exit status zero, with the output in the error otherwise.
pub fn ensure_success(out: &ProbeOutput) -> Result<()> {
    if !out.status.success() {
        bail!("ctxprobe failed: {}", out.describe());
    }
    Ok(())
}

/// A process ctxprobe must refuse: exit non-zero, exactly one line on stderr, nothing on
/// stdout, promptly.
pub fn ensure_clean_refusal(out: &ProbeOutput, what: &str) -> Result<()> {
    let lines: Vec<&str> = out.stderr.trim_end().lines().collect();
    if out.status.success()
        || out.status.code().is_none()
        || lines.len() != 1
        || lines[0].trim().is_empty()
        || !out.lines.is_empty()
    {
        bail!(
            "{what}: want a non-zero exit, exactly one line on stderr and nothing on stdout; got {}",
            out.describe()
        );
    }
    if out.elapsed > Duration::from_secs(10) {
        bail!("{what}: took {:?} to refuse", out.elapsed);
    }
    Ok(())
}
