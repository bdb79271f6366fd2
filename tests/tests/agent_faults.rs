//! Faults a production agent meets (issue 11, items 2–4), against real processes: the target
//! execs another program, the target dies in the middle of `--once`, the target is stopped
//! (SIGSTOP) and resumed. Needs root and a built ctxprobe.

use std::path::Path;
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use ctxprobe_tests::contract::check_record;
use ctxprobe_tests::fixture::Fixture;
use ctxprobe_tests::gobuild::build_fixture;
use ctxprobe_tests::leaky::Leaky;
use ctxprobe_tests::probe::{args, run_ctxprobe, ProbeOutput, RunningProbe};
use ctxprobe_tests::scaled;
use ctxprobe_tests::scenario::{check_all_records, for_each_cell, preconditions};
use ctxprobe_tests::serial::bpf_serial;
use ctxprobe_tests::toolchain::{BuildMode, Toolchain, LATEST_GO};

/// How long after an exec, a stop or a resume ctxprobe may take to notice it (stretched under
/// emulation, where its every look at the target takes longer).
fn notice() -> Duration {
    scaled(Duration::from_secs(2))
}

/// Goroutines the execer parks before it execs, and those the Go program it execs into parks
/// (different, so that a summary tells the two images apart).
const OLD_PARKED: usize = 20;
const NEW_PARKED: usize = 300;

/// One cell only (the newest Go, default build): for the slow tests, whose subject is the agent's
/// handling of the process, not the Go version.
fn one_cell(f: impl FnOnce(&Toolchain, &BuildMode) -> Result<()>) {
    let r = preconditions().and_then(|()| {
        let _serial = bpf_serial()?;
        f(&Toolchain::find(LATEST_GO)?, &BuildMode::default_build())
    });
    if let Err(e) = r {
        panic!("{e:#}");
    }
}

fn stack_has(v: &Value, func: &str) -> bool {
    v["stack"]
        .as_array()
        .is_some_and(|s| s.iter().any(|f| f["func"] == func))
}

/// Starts the execer, streams it with ctxprobe until every parked goroutine has been reported,
/// makes it exec `argv`, and checks that ctxprobe detaches with `target_exec` within [`notice`]
/// and reports nothing about the new image. `new_is_go`: the new image prints a ready line.
fn exec_case(tc: &Toolchain, mode: &BuildMode, argv: &[String], new_is_go: bool) -> Result<()> {
    let n = OLD_PARKED.to_string();
    let mut target = Fixture::build_and_start("execer", tc, mode, &["-n", &n])?;
    let pid = target.pid();
    let mut probe = RunningProbe::spawn(&args(
        pid,
        // One record per goroutine: every old one is waited for below.
        &[
            "--threshold",
            "1s",
            "--summary-interval",
            "1s",
            "--every-goroutine",
        ],
    ))?;
    probe.wait_record("attach", Duration::from_secs(20))?;
    // The old image's parked goroutines are all reported before the exec, so any `blocked`
    // after it is about the new image.
    for i in 0..OLD_PARKED {
        probe
            .wait_for("blocked main.parked", Duration::from_secs(10), |v| {
                v["type"] == "blocked" && stack_has(v, "main.parked")
            })
            .with_context(|| format!("only {i} of {OLD_PARKED} parked goroutines reported"))?;
    }

    target
        .process
        .send_line(&format!("exec {}", argv.join(" ")))?;
    let exec_at = target
        .process
        .wait_json("exec line", Duration::from_secs(5), |v| {
            v.get("exec").is_some()
        })?
        .at;
    if new_is_go {
        target
            .process
            .wait_json("new image's ready line", Duration::from_secs(20), |v| {
                v["ready"] == true
            })?;
    } else if let Some(err) = target
        .process
        .lines()
        .iter()
        .find_map(|l| l.json.as_ref().and_then(|v| v.get("exec_error").cloned()))
    {
        bail!("the execer could not exec {argv:?}: {err}");
    }
    let detach = probe.wait_record("detach", notice() + Duration::from_secs(3));
    if detach.is_err() {
        // Still attached to the new image: end it so that the output can be shown.
        probe.process.signal(libc::SIGTERM)?;
    }
    let out = probe.finish(Duration::from_secs(10))?;
    let detach = detach.with_context(|| describe_tail(&out))?;
    let mut problems = Vec::new();
    let late = detach.at.saturating_duration_since(exec_at);
    if late > notice() {
        problems.push(format!("detach {late:?} after the exec"));
    }
    let detach = detach.json.unwrap_or(Value::Null);
    if detach["reason"] != "target_exec" {
        problems.push(format!("detach reason is not target_exec: {detach}"));
    }
    if !out.status.success() {
        problems.push(format!("exit status {}", out.status));
    }
    for r in out.records()? {
        if let Err(e) = check_record(&r, pid) {
            problems.push(format!("{e:#}"));
        }
    }
    for l in out.lines.iter().filter(|l| l.at > exec_at) {
        let Some(v) = &l.json else { continue };
        let late = l.at - exec_at;
        match v["type"].as_str() {
            Some("blocked" | "goroutine" | "thread_blocked") => {
                problems.push(format!("{late:?} after the exec: {v}"));
            }
            // A summary of the old image may still be on its way; one counting the new image's
            // goroutines (or garbage) may not.
            Some("summary") => {
                let g = v["goroutines"].as_u64().unwrap_or(u64::MAX) as usize;
                if !(OLD_PARKED..OLD_PARKED + 15).contains(&g) {
                    problems.push(format!(
                        "{late:?} after the exec, a summary not of the old image: {v}"
                    ));
                }
            }
            _ => {}
        }
    }
    eprintln!(
        "[Go {}] exec into {}: detach {late:?} after the exec, {} records in all",
        tc.version,
        argv[0],
        out.lines.len()
    );
    if !problems.is_empty() {
        bail!(
            "exec into {argv:?}: {} problems:\n{}\n{}",
            problems.len(),
            problems.join("\n"),
            out.describe()
        );
    }
    Ok(())
}

#[test]
fn exec_into_a_program_that_is_not_go_detaches() {
    for_each_cell(|tc, mode| {
        exec_case(
            tc,
            mode,
            &["/bin/sleep".to_string(), "60".to_string()],
            false,
        )
    });
}

#[test]
fn exec_into_another_go_program_detaches() {
    // Into the same fixture built with the other end of the tested Go range, so that the new
    // image differs in its runtime layout as well as in its goroutines.
    for_each_cell(|tc, mode| {
        let other = if tc.version == LATEST_GO {
            "1.21"
        } else {
            LATEST_GO
        };
        let bin = build_fixture("execer", &Toolchain::find(other)?, mode)?;
        exec_case(
            tc,
            mode,
            &[path_str(&bin)?, "-n".to_string(), NEW_PARKED.to_string()],
            true,
        )
    });
}

fn path_str(p: &Path) -> Result<String> {
    p.to_str()
        .map(str::to_string)
        .with_context(|| format!("non-UTF-8 path {}", p.display()))
}

/// Parked goroutines for the death-during-`--once` test: enough that the dump takes seconds.
const MANY: usize = 300_000;

#[test]
fn target_death_during_once_is_an_error() {
    one_cell(|tc, mode| {
        let bin = build_fixture("many", tc, mode)?;
        let mut failures = Vec::new();
        // Measured from the attach record, so that every kill falls inside the dump (300k
        // goroutines take seconds to dump; the attach record comes first).
        for kill_after in [200, 600, 1200].map(Duration::from_millis) {
            if let Err(e) = death_case(&bin, kill_after) {
                failures.push(format!("killed {kill_after:?} after attach: {e:#}"));
            }
        }
        ensure!(failures.is_empty(), "{}", failures.join("\n\n"));
        Ok(())
    });
}

fn death_case(bin: &Path, kill_after: Duration) -> Result<()> {
    let n = MANY.to_string();
    let mut target = Fixture::start(bin, &["-n", &n], Duration::from_secs(120))?;
    let pid = target.pid();
    let mut probe = RunningProbe::spawn(&args(pid, &["--once"]))?;
    probe.process.close_stdin();
    let attach_at = probe.wait_record("attach", Duration::from_secs(30))?.at;
    sleep((attach_at + kill_after).saturating_duration_since(Instant::now()));
    target.process.signal(libc::SIGKILL)?;
    let killed_at = Instant::now();
    target.process.kill(); // reap it: a zombie still has a /proc entry
    let out = probe.finish(Duration::from_secs(60))?;
    let goroutines = out.of_type("goroutine");
    let errors = out.of_type("error");
    let exit_gone: Vec<&Value> = goroutines
        .iter()
        .filter(|g| {
            g["stack_error"]
                .as_str()
                .is_some_and(|e| e.contains("exit") || e.contains("gone"))
        })
        .collect();
    let last_at = out.lines.last().map(|l| l.at);
    let summary = format!(
        "exit {}, {} goroutine records ({} with a stack_error saying the target is gone), {} \
         error records, ctxprobe ended {:?} after the kill",
        out.status,
        goroutines.len(),
        exit_gone.len(),
        errors.len(),
        last_at.map(|t| t.saturating_duration_since(killed_at))
    );
    if out.status.success() {
        // Right only if the whole dump was out before the kill.
        ensure!(
            goroutines.len() >= MANY && errors.is_empty() && exit_gone.is_empty(),
            "{summary}: exit 0 after an incomplete dump\n{}",
            describe_tail(&out)
        );
        eprintln!("killed {kill_after:?} after attach: the dump had finished ({summary})");
        return Ok(());
    }
    let mut problems = Vec::new();
    if out.status.code().is_none() {
        problems.push("ctxprobe was killed by a signal".to_string());
    }
    let stderr: Vec<&str> = out.stderr.trim_end().lines().collect();
    if stderr.len() != 1 || !stderr[0].contains("exit") {
        problems.push(format!(
            "want one stderr line saying the target exited, got {:?}",
            out.stderr
        ));
    }
    check_all_records(&out, pid)?;
    if !errors
        .iter()
        .any(|e| e["message"].as_str().is_some_and(|m| m.contains("exit")))
    {
        problems.push("no error record saying the target exited".to_string());
    }
    // "Stop at the first sign that the target is gone": not hundreds of empty stacks.
    if exit_gone.len() > 1000 {
        problems.push(format!(
            "{} goroutine records after the target was gone, e.g. {}",
            exit_gone.len(),
            exit_gone[0]
        ));
    }
    if let Some(t) = last_at.filter(|t| t.saturating_duration_since(killed_at) > notice()) {
        problems.push(format!(
            "ctxprobe ended {:?} after the kill",
            t.saturating_duration_since(killed_at)
        ));
    }
    ensure!(
        problems.is_empty(),
        "{summary}:\n{}\n{}",
        problems.join("\n"),
        describe_tail(&out)
    );
    eprintln!("killed {kill_after:?} after attach: {summary}");
    Ok(())
}

/// How long the target stays stopped, and the tolerance on the `stopped_ns` ctxprobe reports.
const STOPPED_FOR: Duration = Duration::from_secs(6);
const STOPPED_SLACK: Duration = Duration::from_millis(1500);

#[test]
fn a_stopped_target_is_said_to_be_stopped_not_blocked() {
    one_cell(|tc, mode| {
        let mut leaky = Leaky::start(tc, mode, &["-grow-every", "0"])?;
        let pid = leaky.pid();
        let mut probe = RunningProbe::spawn(&args(
            pid,
            &["--threshold", "2s", "--summary-interval", "1s"],
        ))?;
        probe.wait_record("attach", Duration::from_secs(20))?;
        // Let the forever-blocked goroutines be reported first: nothing real is left to
        // report while the target is stopped.
        sleep(Duration::from_secs(5));

        leaky.fixture.process.signal(libc::SIGSTOP)?;
        let stop_at = Instant::now();
        let stopped = probe.wait_record("target_stopped", STOPPED_FOR - Duration::from_secs(1));
        sleep((stop_at + STOPPED_FOR).saturating_duration_since(Instant::now()));
        leaky.fixture.process.signal(libc::SIGCONT)?;
        let cont_at = Instant::now();
        let resumed = probe.wait_record("target_resumed", notice() + Duration::from_secs(3));
        // A busy goroutine's own wait measure spans the stop; once every busy goroutine has
        // run again, start it afresh so it shows real stalls after the resume only.
        sleep(Duration::from_millis(500));
        leaky.reset_busy_max_wait()?;
        // Long enough after the resume for a busy goroutine wrongly counted as blocked since
        // the stop to cross the threshold.
        sleep(Duration::from_millis(3500));
        probe.process.signal(libc::SIGTERM)?;
        let out = probe.finish(Duration::from_secs(10))?;

        let mut problems = Vec::new();
        let stopped_at = match stopped {
            Ok(l) => {
                let late = l.at.saturating_duration_since(stop_at);
                eprintln!("target_stopped {late:?} after SIGSTOP");
                if late > notice() {
                    problems.push(format!("target_stopped {late:?} after SIGSTOP"));
                }
                Some(l.at)
            }
            Err(e) => {
                problems.push(format!("{e:#}"));
                None
            }
        };
        let resumed_at = match resumed {
            Ok(l) => {
                let late = l.at.saturating_duration_since(cont_at);
                if late > notice() {
                    problems.push(format!("target_resumed {late:?} after SIGCONT"));
                }
                let v = l.json.unwrap_or(Value::Null);
                eprintln!(
                    "target_resumed {late:?} after SIGCONT, stopped_ns {}",
                    v["stopped_ns"]
                );
                match v["stopped_ns"].as_u64().map(Duration::from_nanos) {
                    Some(d)
                        if d + STOPPED_SLACK >= STOPPED_FOR && d <= STOPPED_FOR + STOPPED_SLACK => {
                    }
                    _ => problems.push(format!(
                        "target_resumed stopped_ns is not {STOPPED_FOR:?} ± {STOPPED_SLACK:?}: {v}"
                    )),
                }
                Some(l.at)
            }
            Err(e) => {
                problems.push(format!("{e:#}"));
                None
            }
        };
        if !out.status.success() {
            problems.push(format!("exit status {}", out.status));
        }
        check_all_records(&out, pid)?;
        let busy_waits = leaky.busy_max_wait()?;
        for l in &out.lines {
            let Some(v) = l.json.as_ref().filter(|v| v["type"] == "blocked") else {
                continue;
            };
            let goid = v["goid"].as_u64().unwrap_or(u64::MAX);
            if leaky.busy.contains(&goid) {
                let after = l.at.saturating_duration_since(stop_at);
                // The fixture measured this goroutine waiting that long after the resume
                // itself (a 2-core machine under load can starve its partner): a true report.
                let real = busy_waits.get(&goid).copied().unwrap_or_default();
                let reported = Duration::from_nanos(v["blocked_ns"].as_u64().unwrap_or(u64::MAX));
                if l.at > cont_at && reported <= real + Duration::from_millis(500) {
                    eprintln!(
                        "busy goroutine {goid} really waited {real:?} after the resume; \
                         reported {reported:?}, {after:?} after SIGSTOP"
                    );
                    continue;
                }
                problems.push(format!(
                    "busy goroutine {goid} reported blocked (its own longest wait after the \
                     resume: {real:?}), {after:?} after SIGSTOP: {v}"
                ));
            }
            let from = stopped_at.unwrap_or(stop_at);
            let to = resumed_at.unwrap_or(cont_at);
            if l.at > from && l.at < to {
                problems.push(format!(
                    "blocked record while the target was stopped, {:?} after SIGSTOP: {v}",
                    l.at.saturating_duration_since(stop_at)
                ));
            }
        }
        if !problems.is_empty() {
            bail!(
                "{} problems:\n{}\n{}",
                problems.len(),
                problems.join("\n"),
                describe_tail(&out)
            );
        }
        Ok(())
    });
}

/// The output's status, stderr, and its records other than goroutine reports (a dump of 300k
/// goroutines would drown the message).
fn describe_tail(out: &ProbeOutput) -> String {
    let mut s = format!(
        "ctxprobe exited with {} after {:?}\n--- stderr ---\n{}--- records other than \
         goroutine/blocked/unblocked/summary ---\n",
        out.status, out.elapsed, out.stderr
    );
    for l in &out.lines {
        let ty = l.json.as_ref().and_then(|v| v["type"].as_str());
        if !matches!(ty, Some("blocked" | "unblocked" | "summary" | "goroutine")) {
            s.push_str(&l.text);
            s.push('\n');
        }
    }
    s
}

/// A target that exec'd before ctxprobe started is simply the new program: nothing of the old
/// Go image may leak into how ctxprobe sees it.
#[test]
fn a_target_that_exec_d_before_attach_is_the_new_program() {
    one_cell(|tc, mode| {
        let mut target = Fixture::build_and_start("execer", tc, mode, &["-n", "5"])?;
        target.process.send_line("exec /bin/sleep 60")?;
        target
            .process
            .wait_json("exec line", Duration::from_secs(5), |v| {
                v.get("exec").is_some()
            })?;
        sleep(Duration::from_millis(300));
        let out = run_ctxprobe(&args(target.pid(), &["--once"]), Duration::from_secs(20))?;
        // Now `sleep`: not a Go program, so --once is refused with one line.
        ensure!(
            !out.status.success() && out.lines.is_empty() && out.stderr.lines().count() == 1,
            "--once on a target that became `sleep`: {}",
            out.describe()
        );
        Ok(())
    });
}

/// A cgroup whose freezer holds the target for a while: created for one test, the target moved
/// in, and on drop thawed, the target moved back to the root cgroup and the directory removed.
struct FrozenCgroup {
    dir: std::path::PathBuf,
    root: std::path::PathBuf,
    /// `freezer.state` (v1) or `cgroup.freeze` (v2), and what freezes and thaws it.
    control: &'static str,
    frozen: &'static str,
    thawed: &'static str,
    pid: u32,
}

impl FrozenCgroup {
    /// The v1 freezer controller if this machine mounts it, else the cgroup v2 freezer.
    fn enter(pid: u32) -> Result<FrozenCgroup> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
        let mut v1 = None;
        let mut v2 = None;
        for line in mountinfo.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let point = left.split(' ').nth(4).map(std::path::PathBuf::from);
            let mut r = right.split(' ');
            let (fstype, opts) = (r.next(), r.nth(1));
            match (fstype, opts) {
                (Some("cgroup"), Some(o)) if o.split(',').any(|x| x == "freezer") => {
                    v1 = v1.or(point)
                }
                (Some("cgroup2"), _) => v2 = v2.or(point),
                _ => {}
            }
        }
        let (root, control, frozen, thawed) = match (v1, v2) {
            (Some(root), _) => (root, "freezer.state", "FROZEN", "THAWED"),
            (None, Some(root)) => (root, "cgroup.freeze", "1", "0"),
            (None, None) => bail!("this machine mounts no cgroup freezer (v1 or v2)"),
        };
        let dir = root.join(format!("ctxprobe-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let cg = FrozenCgroup {
            dir,
            root,
            control,
            frozen,
            thawed,
            pid,
        };
        std::fs::write(cg.dir.join("cgroup.procs"), pid.to_string())
            .with_context(|| format!("moving {pid} into {}", cg.dir.display()))?;
        Ok(cg)
    }

    fn set(&self, frozen: bool) -> Result<()> {
        let value = if frozen { self.frozen } else { self.thawed };
        std::fs::write(self.dir.join(self.control), value)
            .with_context(|| format!("writing {value} to {}", self.control))
    }
}

impl Drop for FrozenCgroup {
    fn drop(&mut self) {
        let _ = self.set(false);
        let _ = std::fs::write(self.root.join("cgroup.procs"), self.pid.to_string());
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// A frozen cgroup stops a process without `/proc/PID/stat` saying `T`: still `target_stopped`
/// and `target_resumed` with the frozen time, and no `blocked` while it is frozen.
#[test]
fn a_frozen_cgroup_is_said_to_be_stopped() {
    one_cell(|tc, mode| {
        let leaky = Leaky::start(tc, mode, &["-grow-every", "0"])?;
        let pid = leaky.pid();
        let cgroup = FrozenCgroup::enter(pid)?;
        let mut probe = RunningProbe::spawn(&args(
            pid,
            &["--threshold", "2s", "--summary-interval", "1s"],
        ))?;
        probe.wait_record("attach", Duration::from_secs(20))?;
        sleep(Duration::from_secs(4));
        cgroup.set(true)?;
        let frozen_at = Instant::now();
        let stopped = probe.wait_record("target_stopped", notice() + Duration::from_secs(1));
        sleep((frozen_at + Duration::from_secs(5)).saturating_duration_since(Instant::now()));
        cgroup.set(false)?;
        let thawed_at = Instant::now();
        let resumed = probe.wait_record("target_resumed", notice() + Duration::from_secs(3));
        sleep(Duration::from_secs(1));
        probe.process.signal(libc::SIGTERM)?;
        let out = probe.finish(Duration::from_secs(10))?;
        drop(cgroup);
        let stopped = stopped.context("no target_stopped while the cgroup was frozen")?;
        let resumed = resumed.context("no target_resumed after the cgroup was thawed")?;
        ensure!(
            stopped.at.saturating_duration_since(frozen_at) <= notice(),
            "target_stopped {:?} after the freeze",
            stopped.at.saturating_duration_since(frozen_at)
        );
        ensure!(
            resumed.at.saturating_duration_since(thawed_at) <= notice(),
            "target_resumed {:?} after the thaw",
            resumed.at.saturating_duration_since(thawed_at)
        );
        let stopped_ns = resumed
            .json
            .as_ref()
            .and_then(|v| v["stopped_ns"].as_u64())
            .map(Duration::from_nanos)
            .context("target_resumed without stopped_ns")?;
        ensure!(
            stopped_ns + STOPPED_SLACK >= Duration::from_secs(5)
                && stopped_ns <= Duration::from_secs(5) + STOPPED_SLACK,
            "stopped_ns {stopped_ns:?} for a 5 s freeze"
        );
        check_all_records(&out, pid)?;
        for l in &out.lines {
            let is_blocked = l.json.as_ref().is_some_and(|v| v["type"] == "blocked");
            ensure!(
                !(is_blocked && l.at > stopped.at && l.at < resumed.at),
                "a blocked record while the target was frozen: {}",
                l.text
            );
        }
        Ok(())
    });
}
