//! Running the `ctxprobe` binary and collecting its JSON lines.

use std::path::PathBuf;
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::process::{Line, Process};
use crate::workspace_root;

/// The ctxprobe binary: `$CTXPROBE_BIN`, else the workspace's release build, else its debug
/// build (then the same under `$CARGO_TARGET_DIR`, for engineers with their own target dirs).
pub fn ctxprobe_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("CTXPROBE_BIN") {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!("CTXPROBE_BIN={} does not exist", p.display());
        }
        return Ok(p);
    }
    let mut candidates = vec![
        workspace_root().join("target/release/ctxprobe"),
        workspace_root().join("target/debug/ctxprobe"),
    ];
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        let t = PathBuf::from(t);
        candidates.push(t.join("release/ctxprobe"));
        candidates.push(t.join("debug/ctxprobe"));
    }
    candidates.into_iter().find(|p| p.is_file()).context(
        "ctxprobe binary not found: run `cargo build --release -p ctxprobe` or set CTXPROBE_BIN",
    )
}

/// What a finished ctxprobe run produced.
#[derive(Debug)]
pub struct ProbeOutput {
    pub status: ExitStatus,
    /// Every stdout line, time-stamped.
    pub lines: Vec<Line>,
    pub stderr: String,
    pub elapsed: Duration,
}

impl ProbeOutput {
    /// Every stdout line as JSON; an error names the first line that is not.
    pub fn records(&self) -> Result<Vec<Value>> {
        self.lines
            .iter()
            .map(|l| {
                l.json
                    .clone()
                    .with_context(|| format!("ctxprobe printed a non-JSON line: {:?}", l.text))
            })
            .collect()
    }

    pub fn of_type(&self, ty: &str) -> Vec<Value> {
        self.lines
            .iter()
            .filter_map(|l| l.json.as_ref())
            .filter(|v| v["type"] == ty)
            .cloned()
            .collect()
    }

    /// A description for assertion messages.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "ctxprobe exited with {} after {:?}",
            self.status, self.elapsed
        );
        s.push_str(&format!("\n--- stderr ---\n{}", self.stderr));
        let n = self.lines.len();
        s.push_str(&format!("--- stdout ({n} lines, first 20) ---\n"));
        for l in self.lines.iter().take(20) {
            s.push_str(&l.text);
            s.push('\n');
        }
        s
    }
}

/// A ctxprobe process running in the background (streaming mode).
pub struct RunningProbe {
    pub process: Process,
    pub started: Instant,
}

impl RunningProbe {
    pub fn spawn(args: &[String]) -> Result<RunningProbe> {
        let mut cmd = Command::new(ctxprobe_bin()?);
        cmd.args(args);
        let started = Instant::now();
        Ok(RunningProbe {
            process: Process::spawn("ctxprobe", cmd)?,
            started,
        })
    }

    /// Waits for the next record of type `ty`.
    pub fn wait_record(&mut self, ty: &str, timeout: Duration) -> Result<Line> {
        self.process
            .wait_json(&format!("{ty:?} record"), timeout, |v| v["type"] == ty)
    }

    /// Waits for the next record satisfying `pred`.
    pub fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl FnMut(&Value) -> bool,
    ) -> Result<Line> {
        self.process.wait_json(what, timeout, pred)
    }

    /// Waits for ctxprobe to exit on its own.
    pub fn finish(mut self, timeout: Duration) -> Result<ProbeOutput> {
        let status = self.process.wait_exit(timeout)?;
        Ok(ProbeOutput {
            status,
            lines: self.process.lines().to_vec(),
            stderr: self.process.stderr(),
            elapsed: self.started.elapsed(),
        })
    }
}

/// Runs ctxprobe to completion (e.g. `--once`, or a failure case).
pub fn run_ctxprobe(args: &[String], timeout: Duration) -> Result<ProbeOutput> {
    let mut p = RunningProbe::spawn(args)?;
    p.process.close_stdin();
    p.finish(timeout)
}

/// `["--pid", "N", ...rest]` as owned strings.
pub fn args(pid: u32, rest: &[&str]) -> Vec<String> {
    let mut v = vec!["--pid".to_string(), pid.to_string()];
    v.extend(rest.iter().map(|s| s.to_string()));
    v
}
