//! Which blocked threads of a Go program are only the runtime idling: an M with nothing to run
//! sleeps on a futex (`runtime.stopm`, `runtime.templateThread`, sysmon, a GC worker's M), all
//! the time, and is not worth a `thread_blocked` record.
//!
//! Such a thread holds no goroutine (the caller checks that) and its stack is Go runtime code only,
//! from the futex call down to where the M started: `runtime.mstart` (whatever started the
//! thread below it is thread-start glue: cgo's `crosscall1` and `threadentry`, libc's
//! `start_thread` and `clone3`, or Go's own `runtime.clone`), `runtime.rt0_go` (the main
//! thread), or `runtime.mcall` (the scheduler entered on g0's stack). Names are the ones the
//! runtime prints (`.gopclntab`), so this holds for stripped and PIE binaries, with or
//! without cgo, in every Go release: runtime package names are the contract here, not offsets.
//!
//! Not idle, so reported: a thread in a cgo call (C code, or `runtime.cgocall`/`asmcgocall` on
//! its stack), a Go callback from C (`runtime.cgocallback`), and any frame of user code or of an
//! unknown function above `runtime.mstart`.

use super::StackFrame;

/// Frames of Go's cgo transitions: C code is involved, the thread is not the scheduler idling.
fn is_cgo_transition(name: &str) -> bool {
    let base = name.strip_suffix(".abi0").unwrap_or(name);
    matches!(
        base,
        "runtime.cgocall"
            | "runtime.asmcgocall"
            | "runtime.asmcgocall_no_g"
            | "runtime.cgocallback"
            | "runtime.cgocallbackg"
            | "runtime.cgocallbackg1"
    )
}

/// A function of the Go runtime (its internal packages included).
fn is_runtime(name: &str) -> bool {
    name.starts_with("runtime.")
        || name.starts_with("runtime/internal/")
        || name.starts_with("internal/runtime/")
}

/// Where an M's Go code starts: frames below it are thread-start glue.
fn is_m_start(name: &str) -> bool {
    matches!(
        name.strip_suffix(".abi0").unwrap_or(name),
        "runtime.mstart" | "runtime.mstart0"
    )
}

/// A thread (holding no goroutine) whose stack is only the Go runtime idling. A stack that could
/// not be read at all (the wait ended first) counts as idle: in a Go program most futex waits
/// are the scheduler's, and with no frame there is nothing to point at.
pub fn is_go_runtime_idle(stack: &[StackFrame]) -> bool {
    for frame in stack {
        let Some(name) = frame.func.as_deref() else {
            return false;
        };
        if !is_runtime(name) || is_cgo_transition(name) {
            return false;
        }
        if is_m_start(name) {
            return true;
        }
    }
    true
}

/// The thread of `os/signal`'s loop goroutine, which every program using `signal.Notify` has:
/// `signal_recv` sleeps on a note (a futex) until a signal arrives, by design. Its goroutine is
/// reported by the goroutine side if it matters; the thread is no stuck thread.
pub fn is_signal_loop_wait(stack: &[StackFrame]) -> bool {
    for frame in stack {
        let Some(name) = frame.func.as_deref() else {
            return false;
        };
        if is_cgo_transition(name) {
            return false;
        }
        if !is_runtime(name) {
            return name == "os/signal.signal_recv";
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(func: Option<&str>, library: &str) -> StackFrame {
        StackFrame {
            func: func.map(str::to_string),
            offset: None,
            file: None,
            line: None,
            library: Some(library.to_string()),
            addr: 0x40_0000,
        }
    }

    fn go(names: &[&str]) -> Vec<StackFrame> {
        names.iter().map(|n| frame(Some(n), "app")).collect()
    }

    #[test]
    fn the_signal_loop_thread_is_idle_and_nothing_else_is() {
        let signal = go(&[
            "runtime.futex",
            "runtime.futexsleep",
            "runtime.notetsleep_internal",
            "runtime.notetsleepg",
            "os/signal.signal_recv",
            "os/signal.loop",
            "runtime.goexit",
        ]);
        assert!(is_signal_loop_wait(&signal));
        let user = go(&["runtime.futex", "runtime.futexsleep", "main.waitForever"]);
        assert!(!is_signal_loop_wait(&user));
        let cgo = go(&["runtime.asmcgocall", "os/signal.signal_recv"]);
        assert!(!is_signal_loop_wait(&cgo));
        assert!(!is_signal_loop_wait(&[frame(None, "libc.so.6")]));
    }

    #[test]
    fn idle_ms_without_cgo() {
        // Go 1.21+ names from .gopclntab; Go 1.19 has no mPark and ends the same way.
        let stopm = go(&[
            "runtime.futex",
            "runtime.futexsleep",
            "runtime.notesleep",
            "runtime.mPark",
            "runtime.stopm",
            "runtime.findRunnable",
            "runtime.schedule",
            "runtime.park_m",
            "runtime.mcall",
        ]);
        assert!(is_go_runtime_idle(&stopm));
        let template = go(&[
            "runtime.futex",
            "runtime.futexsleep",
            "runtime.notesleep",
            "runtime.templateThread",
            "runtime.mstart1",
            "runtime.mstart0",
            "runtime.mstart",
        ]);
        assert!(is_go_runtime_idle(&template));
        // .symtab names of assembly functions carry the ABI suffix.
        let symtab = go(&[
            "runtime.futex.abi0",
            "runtime.notesleep",
            "runtime.mstart.abi0",
        ]);
        assert!(is_go_runtime_idle(&symtab));
    }

    #[test]
    fn idle_ms_of_cgo_binaries_end_in_thread_start_glue() {
        // What the walk gave before it stopped at runtime.mstart: cgo's trampoline, then libc
        // frames without symbols (Debian's stripped libc has no start_thread in .dynsym).
        let mut template = go(&[
            "runtime.futex",
            "runtime.futexsleep",
            "runtime.notesleep",
            "runtime.templateThread",
            "runtime.mstart1",
            "runtime.mstart0",
            "runtime.mstart.abi0",
            "crosscall1",
        ]);
        template.push(frame(None, "libc.so.6"));
        template.push(frame(Some("clone3"), "libc.so.6"));
        assert!(is_go_runtime_idle(&template));
        // A stripped cgo binary: the C trampoline has no name either.
        let mut stripped = go(&["runtime.futex", "runtime.mstart"]);
        stripped.push(frame(None, "app"));
        stripped.push(frame(None, "libc.so.6"));
        assert!(is_go_runtime_idle(&stripped));
    }

    #[test]
    fn a_stack_cut_inside_the_runtime_is_idle() {
        assert!(is_go_runtime_idle(&go(&[
            "runtime.futex",
            "runtime.futexsleep"
        ])));
        assert!(is_go_runtime_idle(&[]), "no stack read");
    }

    #[test]
    fn user_code_and_cgo_calls_are_not_idle() {
        let user = go(&[
            "runtime.futex",
            "runtime.futexsleep",
            "runtime.notetsleepg",
            "os/signal.signal_recv",
            "os/signal.loop",
            "runtime.goexit",
        ]);
        assert!(!is_go_runtime_idle(&user));
        let mut in_c = vec![frame(Some("__futex_abstimed_wait_common"), "libc.so.6")];
        in_c.push(frame(Some("blocking_lock"), "app"));
        in_c.extend(go(&[
            "runtime.asmcgocall.abi0",
            "runtime.cgocall",
            "main.main",
        ]));
        assert!(!is_go_runtime_idle(&in_c));
        // C that called back into Go, which blocked on a runtime lock.
        let callback = go(&[
            "runtime.futex",
            "runtime.lock2",
            "runtime.cgocallbackg",
            "runtime.cgocallback",
            "runtime.mstart",
        ]);
        assert!(!is_go_runtime_idle(&callback));
        // An unknown frame above mstart is not the runtime.
        let mut unknown = go(&["runtime.futex"]);
        unknown.push(frame(None, "app"));
        unknown.extend(go(&["runtime.mstart"]));
        assert!(!is_go_runtime_idle(&unknown));
        // C library code that is not under the runtime.
        assert!(!is_go_runtime_idle(&[frame(None, "libc.so.6")]));
    }
}
