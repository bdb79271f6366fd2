//! Failure behaviour (issue 2): each refusal is a non-zero exit, exactly one line on stderr
//! naming the problem, nothing on stdout. Needs root and a built ctxprobe.

use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ctxprobe_tests::cbuild::build_c_fixture;
use ctxprobe_tests::leaky::Leaky;
use ctxprobe_tests::probe::{args, ctxprobe_bin, run_ctxprobe, ProbeOutput, RunningProbe};
use ctxprobe_tests::process::Process;
use ctxprobe_tests::scenario::{check, check_all_records, ensure_clean_refusal, ensure_success};
use ctxprobe_tests::toolchain::{matrix, BuildMode};

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

/// A process whose main thread exits while another thread lives on is still there: watched to
/// the end of `--duration`, never said to have exited (its zombie main thread is also what
/// another thread's exec looks like for a moment, which must not end the stream either). One
/// whose main thread had already exited is refused in one line that says so.
#[test]
fn a_process_whose_main_thread_exits_is_watched_on() {
    check(|| {
        let exe = build_c_fixture("mainexit")?;
        let mut cmd = Command::new(&exe);
        cmd.stdin(std::process::Stdio::piped());
        let mut p = Process::spawn("mainexit", cmd)?;
        p.wait_json("ready", Duration::from_secs(10), |v| v["ready"] == true)?;
        let mut probe = RunningProbe::spawn(&args(
            p.pid,
            &["--duration", "3s", "--summary-interval", "500ms"],
        ))?;
        probe.wait_record("attach", Duration::from_secs(20))?;
        p.send_line("exit")?;
        p.wait_json("main thread exit", Duration::from_secs(10), |v| {
            v["main_exits"] == true
        })?;
        let out = probe.finish(Duration::from_secs(30))?;
        ensure_success(&out)?;
        let records = check_all_records(&out, p.pid)?;
        let last = records.last().context("no records")?;
        if last["type"] != "detach" || last["reason"] != "duration" {
            bail!("expected detach(duration) last: {}", out.describe());
        }
        // Now its main thread is a zombie: attaching is refused, and says why.
        let out = run_ctxprobe(&args(p.pid, &[]), Duration::from_secs(20))?;
        ensure_refusal_line(
            &out,
            "main thread exited",
            &format!(
                "ctxprobe: process {} has no executable: its main thread has exited while other \
                 threads run on, and its memory cannot be read through it",
                p.pid
            ),
            1,
        )
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
fn refuses_negative_numbers_like_other_bad_values() {
    // Issue 11 item 6: a leading '-' used to make clap take the value for an unknown flag.
    check(|| {
        let me = std::process::id();
        for (bad, line) in [
            (
                &["--duration", "-1"][..],
                "ctxprobe: invalid value '-1' for '--duration <DURATION>': '-1': a duration \
                 cannot be negative (see ctxprobe --help)"
                    .to_string(),
            ),
            (
                &["--threshold", "-3s"],
                "ctxprobe: invalid value '-3s' for '--threshold <THRESHOLD>': '-3s': a duration \
                 cannot be negative (see ctxprobe --help)"
                    .to_string(),
            ),
            (
                &["--probe-budget", "-1"],
                "ctxprobe: invalid value '-1' for '--probe-budget <PROBE_BUDGET>': '-1' is not a \
                 budget (percent of one core, more than 0 and at most 100) (see ctxprobe --help)"
                    .to_string(),
            ),
        ] {
            let out = run_ctxprobe(&args(me, bad), Duration::from_secs(20))?;
            ensure_refusal_line(&out, &format!("{bad:?}"), &line, 2)?;
        }
        let out = run_ctxprobe(
            &["--pid".to_string(), "-5".to_string()],
            Duration::from_secs(20),
        )?;
        ensure_refusal_line(
            &out,
            "--pid -5",
            "ctxprobe: invalid value '-5' for '--pid <PID>': '-5' is not a process id (a whole \
             number from 1 up) (see ctxprobe --help)",
            2,
        )
    });
}

/// A clean refusal (see ensure_clean_refusal) with exactly this stderr line and exit status.
fn ensure_refusal_line(out: &ProbeOutput, what: &str, line: &str, code: i32) -> Result<()> {
    ensure_clean_refusal(out, what)?;
    if out.stderr.trim_end() != line || out.status.code() != Some(code) {
        bail!(
            "{what}: want exit status {code} and\n  {line}\ngot {}",
            out.describe()
        );
    }
    Ok(())
}

/// Runs ctxprobe as `cmd` (which wraps or configures it) to completion.
fn run_wrapped(name: &str, cmd: Command) -> Result<ProbeOutput> {
    let started = Instant::now();
    let mut p = Process::spawn(name, cmd)?;
    p.close_stdin();
    let status = p.wait_exit(Duration::from_secs(20))?;
    Ok(ProbeOutput {
        status,
        lines: p.lines().to_vec(),
        stderr: p.stderr(),
        elapsed: started.elapsed(),
    })
}

#[test]
fn refuses_without_root() {
    check(|| {
        let (tc, _) = matrix()?.into_iter().next().context("empty matrix")?;
        let leaky = Leaky::start(&tc, &BuildMode::default_build(), &["-grow-every", "0"])?;
        let pid = leaky.pid();
        let mut cmd = Command::new(ctxprobe_bin()?);
        cmd.args(args(pid, &[]));
        cmd.uid(65534).gid(65534); // nobody
        let out = run_wrapped("ctxprobe as nobody", cmd)?;
        ensure_refusal_line(
            &out,
            "not root",
            &format!(
                "ctxprobe: not permitted to inspect process {pid} (leaky): it belongs to uid 0; \
                 run ctxprobe as root (sudo ctxprobe --pid {pid})"
            ),
            1,
        )
    });
}

/// Issue 11 item 6: root that may not inspect a process is told why, never "run as root".
#[test]
fn root_inside_a_user_namespace_is_told_so() {
    check(|| {
        let mut sleep = Command::new("sleep");
        sleep.arg("60");
        let target = Process::spawn("sleep", sleep)?;
        let pid = target.pid;
        // Root mapped into a new user namespace: uid 0 there, no privilege over the host's
        // processes (util-linux's unshare writes the uid map).
        let mut cmd = Command::new("unshare");
        cmd.args(["--user", "--map-root-user"])
            .arg(ctxprobe_bin()?)
            .args(args(pid, &[]));
        let out = run_wrapped("ctxprobe in a user namespace", cmd)?;
        ensure_refusal_line(
            &out,
            "user namespace",
            &format!(
                "ctxprobe: not permitted to inspect process {pid} (sleep): ctxprobe is root only \
                 inside a user namespace (uid_map \"0 0 1\"), which gives no privilege over \
                 process {pid} outside it; run ctxprobe in the host's user namespace"
            ),
            1,
        )
    });
}

#[test]
fn root_without_cap_sys_ptrace_is_told_so() {
    check(|| {
        let mut sleep = Command::new("sleep");
        sleep.arg("60");
        let target = Process::spawn("sleep", sleep)?;
        let pid = target.pid;
        let mut cmd = Command::new(ctxprobe_bin()?);
        cmd.args(args(pid, &[]));
        // Root's capabilities after exec are its bounding set: drop CAP_SYS_PTRACE (19) from it,
        // as container runtimes do.
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_CAPBSET_DROP, 19, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let out = run_wrapped("ctxprobe without CAP_SYS_PTRACE", cmd)?;
        ensure_refusal_line(
            &out,
            "no CAP_SYS_PTRACE",
            &format!(
                "ctxprobe: not permitted to inspect process {pid} (sleep): ctxprobe runs as root \
                 without CAP_SYS_PTRACE (dropped from its capabilities, e.g. by a container \
                 runtime, systemd or setpriv), and process {pid} has privileges ctxprobe lacks; \
                 give ctxprobe CAP_SYS_PTRACE"
            ),
            1,
        )
    });
}
