//! Live tests: C (and cgo) fixtures that block threads in known ways, watched with real eBPF.
//! Need root and gcc; skipped with a message otherwise.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::*;

const THRESHOLD: Duration = Duration::from_millis(500);
static BUILD_LOCK: Mutex<()> = Mutex::new(());

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

fn out_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ctxprobe-threads-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create fixture build dir");
    dir
}

fn can_run() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping: live eBPF tests need root");
        return false;
    }
    true
}

/// Builds fixtures/c/NAME.c with the machine's gcc (-g, pthread) once per test run.
fn build_c(name: &str) -> Option<PathBuf> {
    let _guard = BUILD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let exe = out_dir().join(name);
    if exe.exists() {
        return Some(exe);
    }
    let src = fixtures_dir().join("c").join(format!("{name}.c"));
    let status = Command::new("gcc")
        .args(["-g", "-O0", "-Wall", "-pthread"])
        .arg(&src)
        .arg("-o")
        .arg(&exe)
        .status();
    match status {
        Ok(s) if s.success() => Some(exe),
        other => {
            eprintln!("skipping: cannot build {}: {other:?}", src.display());
            None
        }
    }
}

/// A running fixture, killed on drop; its stdout lines arrive on `lines`.
struct Fixture {
    child: Child,
    lines: Receiver<String>,
}

impl Fixture {
    fn start(exe: &Path, args: &[&str]) -> Fixture {
        let mut child = Command::new(exe)
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start fixture");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Fixture { child, lines }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn next_json(&self) -> Value {
        let line = self
            .lines
            .recv_timeout(Duration::from_secs(20))
            .expect("fixture printed its truth line");
        serde_json::from_str(&line).expect("fixture prints JSON")
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The two ways of watching: /proc polling (default) and the futex tracepoints (precise).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Proc,
    Tracepoints,
}

fn monitor(pid: u32, mode: Mode) -> ThreadMonitor {
    ThreadMonitor::start(&ThreadSettings {
        pid,
        threshold: THRESHOLD,
        tracepoints: mode == Mode::Tracepoints,
        arch: gobinary::elf::Arch::of_file(std::path::Path::new(&format!("/proc/{pid}/exe")))
            .unwrap_or_else(gobinary::elf::Arch::host),
    })
    .expect("start the thread monitor")
}

/// `both_modes!(scenario, proc_test, tracepoints_test)`: one test per mode.
macro_rules! both_modes {
    ($scenario:ident, $proc:ident, $tracepoints:ident) => {
        #[test]
        fn $proc() {
            $scenario(Mode::Proc);
        }
        #[test]
        fn $tracepoints() {
            $scenario(Mode::Tracepoints);
        }
    };
}

/// Polls every 250 ms until `done` says so or `limit` passes; returns every event.
fn poll_until(
    m: &mut ThreadMonitor,
    limit: Duration,
    mut done: impl FnMut(&[ThreadEvent]) -> bool,
) -> Vec<ThreadEvent> {
    let deadline = Instant::now() + limit;
    let mut all = Vec::new();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
        all.extend(m.poll().expect("poll"));
        if done(&all) {
            break;
        }
    }
    all
}

fn blocked(events: &[ThreadEvent]) -> HashMap<u32, &ThreadBlocked> {
    events
        .iter()
        .filter_map(|e| match e {
            ThreadEvent::Blocked(b) => Some((b.tid, b)),
            ThreadEvent::Unblocked(_) => None,
        })
        .collect()
}

fn unblocked(events: &[ThreadEvent]) -> HashMap<u32, &ThreadUnblocked> {
    events
        .iter()
        .filter_map(|e| match e {
            ThreadEvent::Unblocked(u) => Some((u.tid, u)),
            ThreadEvent::Blocked(_) => None,
        })
        .collect()
}

fn u64_of(v: &Value) -> u64 {
    v.as_u64().expect("number in truth line")
}

fn has_frame(stack: &[StackFrame], func: &str, file_suffix: Option<&str>) -> bool {
    stack.iter().any(|f| {
        f.func.as_deref().is_some_and(|n| n.contains(func))
            && file_suffix.is_none_or(|suffix| {
                f.file.as_deref().is_some_and(|p| p.ends_with(suffix)) && f.line.is_some()
            })
    })
}

fn show(stack: &[StackFrame]) -> String {
    stack
        .iter()
        .map(|f| {
            format!(
                "{:#x} {}+{:?} {}:{} [{}]",
                f.addr,
                f.func.as_deref().unwrap_or("?"),
                f.offset,
                f.file.as_deref().unwrap_or("?"),
                f.line.unwrap_or(0),
                f.library.as_deref().unwrap_or("?")
            )
        })
        .collect::<Vec<_>>()
        .join("\n  ")
}

/// The deadlock fixture's two workers. Wait for them by tid: the main thread, parked in
/// pthread_join, is flagged too and must not end a wait for "two flagged" early.
fn worker_tids(truth: &Value) -> Vec<u32> {
    truth["threads"]
        .as_array()
        .expect("threads")
        .iter()
        .map(|t| u64_of(&t["tid"]) as u32)
        .collect()
}

fn all_flagged(events: &[ThreadEvent], tids: &[u32]) -> bool {
    let flagged = blocked(events);
    tids.iter().all(|tid| flagged.contains_key(tid))
}

fn check_deadlock(events: &[ThreadEvent], truth: &Value) {
    let flagged = blocked(events);
    for t in truth["threads"].as_array().expect("threads") {
        let tid = u64_of(&t["tid"]) as u32;
        let b = flagged
            .get(&tid)
            .unwrap_or_else(|| panic!("thread {tid} not flagged; events: {events:?}"));
        assert_eq!(
            b.futex_addr,
            u64_of(&t["waits_on"]),
            "glibc's mutex __lock is at offset 0"
        );
        assert_eq!(b.thread_name.as_deref(), t["name"].as_str());
        assert!(b.futex_op.starts_with("FUTEX_WAIT"), "{}", b.futex_op);
        assert!(b.blocked_ns >= THRESHOLD.as_nanos() as u64);
        assert!(b.goid.is_none());
        let entry = if t["name"] == "worker-a" {
            "thread_a"
        } else {
            "thread_b"
        };
        assert!(
            has_frame(&b.stack, "lock_both", Some("deadlock.c"))
                && has_frame(&b.stack, entry, Some("deadlock.c"))
                && (has_frame(&b.stack, "pthread_mutex_lock", None)
                    || has_frame(&b.stack, "__lll_lock_wait", None)),
            "stack of {tid}:\n  {}",
            show(&b.stack)
        );
        // Down to glibc's clone3, whose CFI marks it outermost.
        assert!(
            b.stack_complete && b.stack_error.is_none(),
            "stack of {tid} ends early ({:?}):\n  {}",
            b.stack_error,
            show(&b.stack)
        );
    }
    assert!(
        unblocked(events).is_empty(),
        "deadlocked threads never wake"
    );
}

both_modes!(
    deadlock_scenario,
    deadlocked_threads_are_flagged_with_their_locks_and_stacks_proc,
    deadlocked_threads_are_flagged_with_their_locks_and_stacks_tracepoints
);

fn deadlock_scenario(mode: Mode) {
    if !can_run() {
        return;
    }
    let Some(exe) = build_c("deadlock") else {
        return;
    };
    let fx = Fixture::start(&exe, &[]);
    let truth = fx.next_json();
    let mut m = monitor(fx.pid(), mode);
    let workers = worker_tids(&truth);
    let events = poll_until(&mut m, Duration::from_secs(3), |ev| {
        all_flagged(ev, &workers)
    });
    check_deadlock(&events, &truth);
    let top = m.top_contended(5);
    let waits_on: Vec<u64> = truth["threads"]
        .as_array()
        .expect("threads")
        .iter()
        .map(|t| u64_of(&t["waits_on"]))
        .collect();
    for addr in waits_on {
        assert!(
            top.iter()
                .any(|c| c.futex_addr == addr && c.blocked_now == 1),
            "{addr:#x} not in top contended: {top:?}"
        );
    }
    assert_eq!(m.lost_events(), 0);
}

both_modes!(
    blocked_before_attach_scenario,
    threads_blocked_before_attach_are_found_with_their_durations_proc,
    threads_blocked_before_attach_are_found_with_their_durations_tracepoints
);

/// Threads that deadlocked 2 s before attach are reported as blocked for about as long: their
/// start comes from the scheduler's stamp of when they last ran.
fn blocked_before_attach_scenario(mode: Mode) {
    if !can_run() {
        return;
    }
    let Some(exe) = build_c("deadlock") else {
        return;
    };
    // The threads block right after the fixture prints its truth line: after `spawned`, before
    // (or, if the reader is slow, a little after) `printed`.
    let spawned = Instant::now();
    let fx = Fixture::start(&exe, &[]);
    let truth = fx.next_json();
    let printed = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let mut m = monitor(fx.pid(), mode);
    let mut events = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(3);
    let workers = worker_tids(&truth);
    while Instant::now() < deadline && !all_flagged(&events, &workers) {
        std::thread::sleep(Duration::from_millis(250));
        let before = printed.elapsed().as_nanos() as u64;
        let new = m.poll().expect("poll");
        let after = spawned.elapsed().as_nanos() as u64;
        for b in blocked(&new).values() {
            assert!(!b.since_exact, "began before attach: {b:?}");
            let err_ms = (b.blocked_ns as f64 - before as f64) / 1e6;
            eprintln!(
                "{mode:?}: tid {} blocked_ns {} truth in [{before}, {after}]: {err_ms:+.2} ms",
                b.tid, b.blocked_ns
            );
            // Allow for a slow reader of the truth line and the steal time of a busy VM.
            assert!(
                b.blocked_ns + 50_000_000 >= before && b.blocked_ns <= after + 1_000_000,
                "{mode:?}: blocked_ns {} not within [{before}, {after}]",
                b.blocked_ns
            );
        }
        events.extend(new);
    }
    check_deadlock(&events, &truth);
}

both_modes!(
    condvar_scenario,
    condvar_waiter_is_flagged_proc,
    condvar_waiter_is_flagged_tracepoints
);

fn condvar_scenario(mode: Mode) {
    if !can_run() {
        return;
    }
    let Some(exe) = build_c("condvar") else {
        return;
    };
    let fx = Fixture::start(&exe, &[]);
    let truth = fx.next_json();
    let waiter = u64_of(&truth["waiter_tid"]) as u32;
    let cond = u64_of(&truth["cond"]);
    let mut m = monitor(fx.pid(), mode);
    let events = poll_until(&mut m, Duration::from_secs(3), |ev| {
        blocked(ev).contains_key(&waiter)
    });
    let b = blocked(&events)
        .get(&waiter)
        .copied()
        .unwrap_or_else(|| panic!("waiter not flagged: {events:?}"));
    // glibc waits on one of the condvar's __g_signals words, inside the pthread_cond_t.
    assert!(
        (cond..cond + 48).contains(&b.futex_addr),
        "{:#x} not in the condvar at {cond:#x}",
        b.futex_addr
    );
    assert_eq!(b.thread_name.as_deref(), Some("cond-waiter"));
    assert!(
        has_frame(&b.stack, "wait_for_signal", Some("condvar.c"))
            && has_frame(&b.stack, "cond_waiter", Some("condvar.c"))
            && has_frame(&b.stack, "pthread_cond_wait", None),
        "stack:\n  {}",
        show(&b.stack)
    );
    // The main thread waits in pthread_join: flagged too, rightly.
    let main_tid = fx.pid();
    for tid in blocked(&events).keys() {
        assert!(
            *tid == waiter || *tid == main_tid,
            "unexpected thread {tid}: {events:?}"
        );
    }
}

both_modes!(
    signalled_condvar_scenario,
    signalled_condvar_waiter_is_unblocked_proc,
    signalled_condvar_waiter_is_unblocked_with_its_waker_tracepoints
);

fn signalled_condvar_scenario(mode: Mode) {
    if !can_run() {
        return;
    }
    let Some(exe) = build_c("condvar") else {
        return;
    };
    let fx = Fixture::start(&exe, &["1500"]);
    let truth = fx.next_json();
    let waiter = u64_of(&truth["waiter_tid"]) as u32;
    let signaller = u64_of(&truth["signaller_tid"]) as u32;
    let mut m = monitor(fx.pid(), mode);
    let events = poll_until(&mut m, Duration::from_secs(5), |ev| {
        unblocked(ev).contains_key(&waiter)
    });
    let b = blocked(&events)
        .get(&waiter)
        .copied()
        .unwrap_or_else(|| panic!("waiter not flagged: {events:?}"));
    let u = unblocked(&events)
        .get(&waiter)
        .copied()
        .unwrap_or_else(|| panic!("waiter not unblocked: {events:?}"));
    assert_eq!(u.futex_addr, b.futex_addr);
    if mode == Mode::Tracepoints {
        assert_eq!(u.woken_by_tid, Some(signaller), "{u:?}");
        assert_eq!(u.result, Some(0));
    } else {
        // Only the tracepoints see who woke it and how the syscall ended.
        assert_eq!((u.woken_by_tid, u.result), (None, None), "{u:?}");
        assert!(!u.since_exact);
    }
    assert!(
        u.blocked_ns >= 1_000_000_000 && u.blocked_ns < 3_000_000_000,
        "{u:?}"
    );
    let unblocks = events
        .iter()
        .filter(|e| matches!(e, ThreadEvent::Unblocked(u) if u.tid == waiter))
        .count();
    assert_eq!(unblocks, 1, "one unblocked record per wait: {events:?}");
}

both_modes!(
    busy_scenario,
    busy_lockers_are_never_flagged_proc,
    busy_lockers_are_never_flagged_tracepoints
);

fn busy_scenario(mode: Mode) {
    if !can_run() {
        return;
    }
    let Some(exe) = build_c("busy") else { return };
    let fx = Fixture::start(&exe, &["4", "0"]);
    let truth = fx.next_json();
    let mut m = monitor(fx.pid(), mode);
    let events = poll_until(&mut m, Duration::from_secs(2), |_| false);
    let busy: Vec<u32> = truth["tids"]
        .as_array()
        .expect("tids")
        .iter()
        .map(|t| u64_of(t) as u32)
        .collect();
    for ev in &events {
        if let ThreadEvent::Blocked(b) = ev {
            assert!(!busy.contains(&b.tid), "busy thread flagged: {b:?}");
        }
    }
    if mode == Mode::Tracepoints {
        let c = m.counters().expect("tracepoint counters");
        assert!(c.calls > 0 && c.waits > 0, "the lockers do contend: {c:?}");
        assert_eq!(c.events, 0, "{c:?}");
    }
}

/// The Go toolchain for the cgo fixture, if installed.
fn go_tool() -> Option<PathBuf> {
    let go = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/go1.27/bin/go");
    go.exists().then_some(go)
}

both_modes!(
    cgo_scenario,
    cgo_call_blocked_on_a_c_mutex_is_flagged_proc,
    cgo_call_blocked_on_a_c_mutex_is_flagged_tracepoints
);

fn cgo_scenario(mode: Mode) {
    if !can_run() {
        return;
    }
    let Some(go) = go_tool() else {
        eprintln!("skipping: .tools/go1.27 missing (run scripts/setup.sh --all-go)");
        return;
    };
    let _guard = BUILD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let exe = out_dir().join("cgoblock");
    let status = Command::new(&go)
        .args(["build", "-o"])
        .arg(&exe)
        .arg(".")
        .current_dir(fixtures_dir().join("cgoblock"))
        .env("CGO_ENABLED", "1")
        .env("GOFLAGS", "-mod=mod")
        .status()
        .expect("run go build");
    assert!(status.success(), "go build of fixtures/cgoblock failed");
    drop(_guard);
    let fx = Fixture::start(&exe, &[]);
    let truth = fx.next_json();
    let tid = u64_of(&truth["tid"]) as u32;
    let mut m = monitor(fx.pid(), mode);
    let events = poll_until(&mut m, Duration::from_secs(3), |ev| {
        blocked(ev).contains_key(&tid)
    });
    let b = blocked(&events)
        .get(&tid)
        .copied()
        .unwrap_or_else(|| panic!("cgo thread not flagged: {events:?}"));
    assert_eq!(b.futex_addr, u64_of(&truth["mutex"]));
    assert!(
        has_frame(&b.stack, "blocking_lock", Some("main.go"))
            && has_frame(&b.stack, "pthread_mutex_lock", None)
            && has_frame(&b.stack, "runtime.cgocall", None)
            && has_frame(&b.stack, "main.blockInC", Some("main.go")),
        "stack:\n  {}",
        show(&b.stack)
    );
    eprintln!("cgo stack:\n  {}", show(&b.stack));
}

/// Cost of the futex probes on a contended-mutex workload: `cargo test -p ctxprobe threads::tests::
/// futex_overhead -- --ignored --nocapture`.
#[test]
#[ignore]
fn futex_overhead() {
    if !can_run() {
        return;
    }
    let Some(exe) = build_c("busy") else { return };
    let run = |attach: bool| -> (f64, Option<FutexCounters>) {
        let fx = Fixture::start(&exe, &["4", "3"]);
        let _truth = fx.next_json();
        let m = attach.then(|| monitor(fx.pid(), Mode::Tracepoints));
        let result = fx.next_json();
        let counters = m.map(|mut m| {
            let _ = m.poll();
            m.counters().unwrap_or_default()
        });
        (
            result["ops_per_sec"].as_f64().expect("ops_per_sec"),
            counters,
        )
    };
    for _ in 0..3 {
        let (base, _) = run(false);
        let (with, c) = run(true);
        eprintln!(
            "ops/s without {base:.0}, with {with:.0} ({:+.1}%), kernel counters {c:?}",
            (with / base - 1.0) * 100.0
        );
    }
}
