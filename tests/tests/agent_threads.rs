//! Blocked threads end to end (issue 4): C and cgo fixtures that print the truth about
//! themselves (thread ids, which lock each waits on), watched by the ctxprobe binary.
//! Needs root, gcc, and a built ctxprobe.

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use ctxprobe_tests::cbuild::build_c_fixture;
use ctxprobe_tests::gobuild::build_fixture;
use ctxprobe_tests::gobuild::target_goarch;
use ctxprobe_tests::leaky::Leaky;
use ctxprobe_tests::probe::{args, run_ctxprobe};
use ctxprobe_tests::process::Process;
use ctxprobe_tests::scenario::{check, check_all_records, ensure_success};
use ctxprobe_tests::toolchain::{matrix, BuildMode, Toolchain, LATEST_GO};
use serde_json::Value;

fn addr(v: &Value) -> Option<u64> {
    u64::from_str_radix(v.as_str()?.strip_prefix("0x")?, 16).ok()
}

/// The walk reached the thread's outermost frame: complete, no error.
/// `stack_error` of a thread that ran at every try while its stack was read.
const MOVED_WHILE_READ: &str = "the thread ran while its stack was read";

fn ensure_complete(rec: &Value) -> Result<()> {
    ensure!(
        rec["stack_complete"] == true && rec["stack_error"].is_null(),
        "stack of thread {} not complete: {rec}",
        rec["tid"]
    );
    Ok(())
}

fn has_frame(rec: &Value, func: &str) -> bool {
    rec["stack"]
        .as_array()
        .is_some_and(|s| s.iter().any(|f| f["func"].as_str() == Some(func)))
}

#[test]
fn deadlocked_c_threads_are_reported_with_their_locks_and_stacks() {
    check(|| {
        let exe = build_c_fixture("deadlock")?;
        let mut p = Process::spawn("deadlock", Command::new(&exe))?;
        let truth = p.wait_json("truth", Duration::from_secs(10), |v| {
            v["threads"].is_array()
        })?;
        let truth = truth.json.context("truth is JSON")?;
        let out = run_ctxprobe(
            &args(
                p.pid,
                &[
                    "--threshold",
                    "500ms",
                    "--duration",
                    "3s",
                    "--summary-interval",
                    "1s",
                ],
            ),
            Duration::from_secs(30),
        )?;
        ensure_success(&out)?;
        let records = check_all_records(&out, p.pid)?;
        let blocked: HashMap<u64, &Value> = records
            .iter()
            .filter(|r| r["type"] == "thread_blocked")
            .filter_map(|r| Some((r["tid"].as_u64()?, r)))
            .collect();
        for t in truth["threads"].as_array().context("threads")? {
            let tid = t["tid"].as_u64().context("tid")?;
            let rec = blocked
                .get(&tid)
                .with_context(|| format!("thread {t} not reported: {}", out.describe()))?;
            ensure!(
                addr(&rec["futex_addr"]) == t["waits_on"].as_u64(),
                "thread {tid} reported on {} instead of {}",
                rec["futex_addr"],
                t["waits_on"]
            );
            ensure!(
                rec["thread_name"] == t["name"],
                "thread name {}",
                rec["thread_name"]
            );
            ensure!(
                has_frame(rec, "lock_both"),
                "no lock_both frame in {}",
                rec["stack"]
            );
            ensure_complete(rec)?;
            ensure!(
                rec["blocked_ns"].as_u64() >= Some(500_000_000),
                "blocked_ns {}",
                rec
            );
        }
        let summary = records
            .iter()
            .rev()
            .find(|r| r["type"] == "summary")
            .context("summary")?;
        let contended: Vec<u64> = summary["contended_futexes"]
            .as_array()
            .context("contended_futexes")?
            .iter()
            .filter_map(|f| addr(&f["futex_addr"]))
            .collect();
        for t in truth["threads"].as_array().context("threads")? {
            let lock = t["waits_on"].as_u64().context("waits_on")?;
            ensure!(
                contended.contains(&lock),
                "lock {lock:#x} not among {contended:x?}"
            );
        }
        Ok(())
    });
}

#[test]
fn signalled_condvar_waiter_is_unblocked_by_its_signaller_in_precise_mode() {
    check(|| {
        let exe = build_c_fixture("condvar")?;
        // Signalled after 2 s (stretched under emulation, where ctxprobe's start alone takes
        // seconds: the wait must still be on when its stack is read).
        let signal_after = ctxprobe_tests::scaled(Duration::from_secs(2));
        let mut cmd = Command::new(&exe);
        cmd.arg(signal_after.as_millis().to_string());
        let mut p = Process::spawn("condvar", cmd)?;
        let truth = p.wait_json("truth", Duration::from_secs(10), |v| {
            v["waiter_tid"].is_u64()
        })?;
        let truth = truth.json.context("truth is JSON")?;
        let duration = format!("{}ms", (signal_after * 2).as_millis());
        let out = run_ctxprobe(
            // Only the futex tracepoints (precise mode) see who woke a thread.
            &args(
                p.pid,
                &[
                    "--threshold",
                    "500ms",
                    "--duration",
                    &duration,
                    "--mode",
                    "precise",
                ],
            ),
            Duration::from_secs(60),
        )?;
        ensure_success(&out)?;
        let records = check_all_records(&out, p.pid)?;
        let waiter = truth["waiter_tid"].as_u64();
        let un = records
            .iter()
            .find(|r| r["type"] == "thread_unblocked" && r["tid"].as_u64() == waiter)
            .with_context(|| format!("no thread_unblocked for the waiter: {}", out.describe()))?;
        ensure!(
            un["woken_by_tid"] == truth["signaller_tid"],
            "woken_by_tid {} instead of {}",
            un["woken_by_tid"],
            truth["signaller_tid"]
        );
        Ok(())
    });
}

/// The default mode polls /proc: the wait's end is seen, not who ended it.
#[test]
fn signalled_condvar_waiter_is_unblocked() {
    check(|| {
        let exe = build_c_fixture("condvar")?;
        // Signalled after 2 s (stretched under emulation, where ctxprobe's start alone takes
        // seconds: the wait must still be on when its stack is read).
        let signal_after = ctxprobe_tests::scaled(Duration::from_secs(2));
        let mut cmd = Command::new(&exe);
        cmd.arg(signal_after.as_millis().to_string());
        let mut p = Process::spawn("condvar", cmd)?;
        let truth = p.wait_json("truth", Duration::from_secs(10), |v| {
            v["waiter_tid"].is_u64()
        })?;
        let truth = truth.json.context("truth is JSON")?;
        let duration = format!("{}ms", (signal_after * 2).as_millis());
        let out = run_ctxprobe(
            &args(p.pid, &["--threshold", "500ms", "--duration", &duration]),
            Duration::from_secs(60),
        )?;
        ensure_success(&out)?;
        let records = check_all_records(&out, p.pid)?;
        let waiter = truth["waiter_tid"].as_u64();
        let blocked = records
            .iter()
            .find(|r| r["type"] == "thread_blocked" && r["tid"].as_u64() == waiter)
            .with_context(|| format!("no thread_blocked for the waiter: {}", out.describe()))?;
        ensure!(
            has_frame(blocked, "wait_for_signal"),
            "no wait_for_signal frame in {}",
            blocked["stack"]
        );
        ensure_complete(blocked)?;
        let un = records
            .iter()
            .find(|r| r["type"] == "thread_unblocked" && r["tid"].as_u64() == waiter)
            .with_context(|| format!("no thread_unblocked for the waiter: {}", out.describe()))?;
        ensure!(
            un["woken_by_tid"].is_null() && un["result"].is_null(),
            "unblocked record: {un}"
        );
        let ns = un["blocked_ns"].as_u64().context("blocked_ns")?;
        let wait = signal_after.as_nanos() as u64;
        ensure!(
            (wait - 1_000_000_000..wait + 1_000_000_000).contains(&ns),
            "blocked_ns {ns} for a {signal_after:?} wait"
        );
        Ok(())
    });
}

#[test]
fn busy_lockers_are_never_reported() {
    check(|| {
        let exe = build_c_fixture("busy")?;
        let mut cmd = Command::new(&exe);
        cmd.args(["4", "30"]);
        let mut p = Process::spawn("busy", cmd)?;
        p.wait_json("truth", Duration::from_secs(10), |v| v["tids"].is_array())?;
        let out = run_ctxprobe(
            &args(p.pid, &["--threshold", "200ms", "--duration", "3s"]),
            Duration::from_secs(30),
        )?;
        ensure_success(&out)?;
        let records = check_all_records(&out, p.pid)?;
        if let Some(r) = records.iter().find(|r| r["type"] == "thread_blocked") {
            bail!("a busy thread was reported: {r}");
        }
        Ok(())
    });
}

#[test]
fn cgo_call_blocked_in_c_names_its_goroutine() {
    check(|| {
        let tc = Toolchain::find(LATEST_GO)?;
        let exe = build_fixture("cgoblock", &tc, &BuildMode::named("cgo")?)?;
        let mut p = Process::spawn("cgoblock", Command::new(&exe))?;
        let truth = p.wait_json("truth", Duration::from_secs(20), |v| v["tid"].is_u64())?;
        let truth = truth.json.context("truth is JSON")?;
        let out = run_ctxprobe(
            &args(p.pid, &["--threshold", "500ms", "--duration", "3s"]),
            Duration::from_secs(30),
        )?;
        ensure_success(&out)?;
        let records = check_all_records(&out, p.pid)?;
        let rec = records
            .iter()
            .find(|r| r["type"] == "thread_blocked" && r["tid"] == truth["tid"])
            .with_context(|| format!("blocked cgo thread not reported: {}", out.describe()))?;
        ensure!(
            addr(&rec["futex_addr"]) == truth["mutex"].as_u64(),
            "futex {}",
            rec
        );
        ensure!(
            has_frame(rec, "blocking_lock"),
            "no C frame in {}",
            rec["stack"]
        );
        ensure!(
            rec["goid"].is_u64(),
            "no goroutine for the cgo thread: {rec}"
        );
        // Through the cgo call onto the goroutine's stack, down to where the goroutine started.
        ensure_complete(rec)?;
        // Debian's libc has no symbols for its internal futex wait: only Go frames are checked.
        let funcs: Vec<&str> = rec["stack"]
            .as_array()
            .context("stack")?
            .iter()
            .filter_map(|f| f["func"].as_str())
            .collect();
        ensure!(
            funcs.contains(&"main.blockInC")
                && funcs.last().map(|f| base_name(f)) == Some("runtime.goexit"),
            "cgo thread stack {funcs:?}"
        );
        // A thread C code started, holding no goroutine, blocked in C: reported too.
        let c_thread = records
            .iter()
            .find(|r| r["type"] == "thread_blocked" && r["tid"] == truth["c_tid"])
            .with_context(|| format!("blocked C thread not reported: {}", out.describe()))?;
        ensure!(
            addr(&c_thread["futex_addr"]) == truth["mutex"].as_u64()
                && c_thread["goid"].is_null()
                && has_frame(c_thread, "c_thread_main"),
            "C thread record {c_thread}"
        );
        ensure_complete(c_thread)?;
        Ok(())
    });
}

/// Where the runtime's own traceback ends a thread's stack: `runtime.mstart` (an M's start,
/// whatever created the thread below it), `runtime.mcall` (the scheduler on g0's stack top),
/// `runtime.goexit` (a goroutine's start), `runtime.rt0_go` (the main thread).
const GO_OUTERMOST: &[&str] = &[
    "runtime.mstart",
    "runtime.mcall",
    "runtime.morestack",
    "runtime.goexit",
    "runtime.rt0_go",
];

/// `.symtab` names of assembly functions carry an ABI suffix; `.gopclntab` names do not.
fn base_name(f: &str) -> &str {
    f.strip_suffix(".abi0").unwrap_or(f)
}

/// Every frame's function name; an unnamed frame is an error.
fn frame_names(rec: &Value) -> Result<Vec<String>> {
    rec["stack"]
        .as_array()
        .context("stack")?
        .iter()
        .map(|f| {
            f["func"]
                .as_str()
                .map(str::to_string)
                .with_context(|| format!("unnamed frame {f} in {}", rec["stack"]))
        })
        .collect()
}

/// Issue 11 item 5 and issue 7 item 7: the runtime's idle threads (templateThread, stopm,
/// sysmon, locked Ms) of cgo and non-cgo, plain and stripped PIE binaries, old and new Go, are
/// walked to their outermost frame and no further (the walk used to run past `runtime.mstart`
/// and `clone` into stale stack memory and print frames that were not there), and the CLI does
/// not report them unless asked (--include-system).
#[test]
fn idle_runtime_threads_end_at_their_outermost_frame_and_are_not_reported() {
    check(|| {
        // For another architecture (a VM), the matrix cells it was given; here, cgo too.
        let cells: Vec<(String, String)> = if target_goarch().is_some() {
            matrix()?
                .into_iter()
                .map(|(tc, mode)| (tc.version, mode.name))
                .collect()
        } else {
            [
                (LATEST_GO, "cgo"),
                (LATEST_GO, "stripped-pie"),
                ("1.19", "cgo"),
                ("1.19", "default"),
            ]
            .map(|(go, mode)| (go.to_string(), mode.to_string()))
            .into()
        };
        let failures: Vec<String> = cells
            .iter()
            .filter_map(|(go, mode)| {
                idle_threads(go, mode)
                    .err()
                    .map(|e| format!("[Go {go} {mode}] {e:#}"))
            })
            .collect();
        ensure!(failures.is_empty(), "{}", failures.join("\n\n"));
        Ok(())
    });
}

fn idle_threads(go: &str, mode: &str) -> Result<()> {
    let tc = Toolchain::find(go)?;
    let leaky = Leaky::start(&tc, &BuildMode::named(mode)?, &["-grow-every", "0"])?;
    let pid = leaky.pid();
    let run = |extra: &[&str]| -> Result<Vec<Value>> {
        let mut a = vec!["--threshold", "500ms", "--duration", "3s", "--mode", "poll"];
        a.extend_from_slice(extra);
        let out = run_ctxprobe(&args(pid, &a), Duration::from_secs(30))?;
        ensure_success(&out)?;
        Ok(check_all_records(&out, pid)?
            .into_iter()
            .filter(|r| r["type"] == "thread_blocked")
            .collect())
    };

    let blocked = run(&["--include-system"])?;
    let idle = blocked.iter().filter(|r| r["goid"].is_null()).count();
    ensure!(
        idle >= 2,
        "{idle} idle runtime threads reported with --include-system: {blocked:#?}"
    );
    let mut complete = 0;
    for rec in &blocked {
        // A thread that ran at every try while its stack was read (it woke: common under
        // emulation) keeps only its innermost frame, and says so.
        if rec["stack_error"] == MOVED_WHILE_READ {
            ensure!(
                rec["stack_complete"] == false && rec["stack"].as_array().map(Vec::len) == Some(1),
                "a stack read while its thread ran keeps more than its innermost frame: {rec}"
            );
            continue;
        }
        ensure_complete(rec)?;
        complete += 1;
        let funcs = frame_names(rec)?;
        let (last, inner) = funcs.split_last().context("empty stack")?;
        ensure!(
            GO_OUTERMOST.contains(&base_name(last)),
            "thread {} ends at {last}, not at an outermost frame: {funcs:?}",
            rec["tid"]
        );
        ensure!(
            !inner.iter().any(|f| GO_OUTERMOST.contains(&base_name(f))),
            "thread {} walked past an outermost frame: {funcs:?}",
            rec["tid"]
        );
        if rec["goid"].is_null() {
            ensure!(
                funcs.iter().all(|f| f.starts_with("runtime.")),
                "idle thread {} has frames outside the runtime: {funcs:?}",
                rec["tid"]
            );
        }
    }

    ensure!(complete > 0, "no stack read whole: {blocked:#?}");

    let blocked = run(&[])?;
    if let Some(rec) = blocked.iter().find(|r| r["goid"].is_null()) {
        bail!("a thread idle in the runtime was reported: {rec}");
    }
    Ok(())
}
