//! A running Go fixture: started with stdin piped (fixtures exit when it closes), ready when it
//! prints `{"ready":true,...}`, able to write the runtime's own goroutine dump on SIGUSR1.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::dump::{parse_dump, Goroutine};
use crate::gobuild::build_fixture;
use crate::process::Process;
use crate::toolchain::{BuildMode, Toolchain};

pub struct Fixture {
    pub process: Process,
    pub bin: PathBuf,
    /// The `ready` line.
    pub ready: Value,
    pub started: Instant,
    /// When the ready line arrived.
    pub ready_at: Instant,
    dump_path: PathBuf,
}

/// The runtime's dump and when it was taken (just after the fixture confirmed it).
pub struct Dump {
    pub text: String,
    pub goroutines: Vec<Goroutine>,
    pub at: Instant,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl Fixture {
    /// Builds `fixtures/<name>` with `tc` and `mode`, starts it with `args` and waits for its
    /// ready line.
    pub fn build_and_start(
        name: &str,
        tc: &Toolchain,
        mode: &BuildMode,
        args: &[&str],
    ) -> Result<Fixture> {
        let bin = build_fixture(name, tc, mode)?;
        Fixture::start(&bin, args, Duration::from_secs(60))
    }

    pub fn start(bin: &Path, args: &[&str], ready_timeout: Duration) -> Result<Fixture> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dump_path = std::env::temp_dir().join(format!(
            "ctxprobe-fixture-dump-{}-{n}.txt",
            std::process::id()
        ));
        let mut cmd = Command::new(bin);
        cmd.args(args).env("CTXPROBE_FIXTURE_DUMP", &dump_path);
        let name = bin
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "fixture".into());
        let started = Instant::now();
        let mut process = Process::spawn(&name, cmd)?;
        let ready_line = process.wait_json("ready line", ready_timeout, |v| v["ready"] == true)?;
        let ready_at = ready_line.at;
        let ready = ready_line.json.unwrap_or(Value::Null);
        Ok(Fixture {
            process,
            bin: bin.to_path_buf(),
            ready,
            started,
            ready_at,
            dump_path,
        })
    }

    pub fn pid(&self) -> u32 {
        self.process.pid
    }

    /// Where the fixture writes the dumps it is asked for (`$CTXPROBE_FIXTURE_DUMP`).
    pub fn dump_path(&self) -> &Path {
        &self.dump_path
    }

    /// Asks the fixture for `pprof.Lookup("goroutine").WriteTo(f, 2)` (SIGUSR1) and parses it.
    pub fn dump(&mut self) -> Result<Dump> {
        let _ = std::fs::remove_file(&self.dump_path);
        // Only a confirmation of this request counts (lines still unread from before would
        // otherwise be taken for it).
        self.process.skip_pending();
        self.process.signal(libc::SIGUSR1)?;
        let line = self
            .process
            .wait_json("dump", Duration::from_secs(30), |v| {
                v.get("dumped").is_some()
            })?;
        let at = line.at;
        if line.json.as_ref().is_some_and(|v| v["dumped"] != true) {
            bail!("fixture could not write its dump: {}", line.text);
        }
        let text = std::fs::read_to_string(&self.dump_path)
            .with_context(|| format!("reading {}", self.dump_path.display()))?;
        let _ = std::fs::remove_file(&self.dump_path);
        let goroutines = parse_dump(&text).context("parsing the fixture's debug=2 dump")?;
        Ok(Dump {
            text,
            goroutines,
            at,
        })
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.process.kill();
        let _ = std::fs::remove_file(&self.dump_path);
    }
}
