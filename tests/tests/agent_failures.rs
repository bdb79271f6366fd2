//! Failure behaviour (issue 2): each refusal is a non-zero exit, exactly one line on stderr
//! naming the problem, nothing on stdout. Needs root and a built ctxprobe.

use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ctxprobe_tests::leaky::Leaky;
use ctxprobe_tests::probe::{args, ctxprobe_bin, run_ctxprobe, ProbeOutput};
use ctxprobe_tests::process::Process;
use ctxprobe_tests::scenario::{
    check_all_records, ensure_clean_refusal, ensure_success, preconditions,
};
use ctxprobe_tests::serial::bpf_serial;
use ctxprobe_tests::toolchain::{matrix, BuildMode};

fn check(f: impl FnOnce() -> Result<()>) {
    let r = preconditions().and_then(|()| {
        let _serial = bpf_serial()?;
        f()
    });
    if let Err(e) = r {
        panic!("{e:#}");
    }
}

/// A pid that no process has: above every live one, below pid_max.
fn unused_pid() -> Result<u32> {
    let max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")?
        .trim()
        .parse()
        .context("pid_max")?;
    (1..max)
        .rev()
        .find(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
        .context("no unused pid")
}

#[test]
fn refuses_a_missing_pid() {
    check(|| {
        let out = run_ctxprobe(&args(unused_pid()?, &[]), Duration::from_secs(20))?;
        ensure_clean_refusal(&out, "no such pid")
    });
}

#[test]
fn watches_only_threads_of_a_process_that_is_not_go() {
    // Issue 4: a process that is not a Go program is watched in thread mode, and --once (a
    // goroutine dump) is refused.
    check(|| {
        let mut cmd = Command::new("sleep");
        cmd.arg("60");
        let sleeper = Process::spawn("sleep", cmd)?;
        let out = run_ctxprobe(&args(sleeper.pid, &["--once"]), Duration::from_secs(20))?;
        ensure_clean_refusal(&out, "pid of `sleep`, --once")?;
        let out = run_ctxprobe(
            &args(
                sleeper.pid,
                &["--duration", "2s", "--summary-interval", "1s"],
            ),
            Duration::from_secs(30),
        )?;
        ensure_success(&out)?;
        let records = check_all_records(&out, sleeper.pid)?;
        let attach = records.first().context("no attach record")?;
        if attach["type"] != "attach" || attach["threads_only"] != true {
            bail!("expected a threads_only attach first: {}", out.describe());
        }
        if !records.iter().any(|r| r["type"] == "summary") {
            bail!("no summary: {}", out.describe());
        }
        let last = records.last().context("no records")?;
        if last["type"] != "detach" || last["reason"] != "duration" {
            bail!("expected detach(duration) last: {}", out.describe());
        }
        Ok(())
    });
}

#[test]
fn refuses_bad_arguments() {
    check(|| {
        let me = std::process::id();
        for bad in [
            &["--threshold", "banana"][..],
            &["--threshold=-5s"],
            &["--duration", "soon"],
            &["--format", "xml"],
        ] {
            let out = run_ctxprobe(&args(me, bad), Duration::from_secs(20))?;
            ensure_clean_refusal(&out, &format!("arguments {bad:?}"))?;
        }
        Ok(())
    });
}

#[test]
fn refuses_without_root() {
    check(|| {
        let (tc, _) = matrix()?.into_iter().next().context("empty matrix")?;
        let leaky = Leaky::start(&tc, &BuildMode::default_build(), &["-grow-every", "0"])?;
        let mut cmd = Command::new(ctxprobe_bin()?);
        cmd.args(args(leaky.pid(), &[]));
        cmd.uid(65534).gid(65534); // nobody
        let started = Instant::now();
        let mut p = Process::spawn("ctxprobe as nobody", cmd)?;
        p.close_stdin();
        let status = p.wait_exit(Duration::from_secs(20))?;
        let out = ProbeOutput {
            status,
            lines: p.lines().to_vec(),
            stderr: p.stderr(),
            elapsed: started.elapsed(),
        };
        ensure_clean_refusal(&out, "not root")
    });
}
