//! Streaming `--leaks`: the analysis runs on a thread of its own, so the streaming loop (probe
//! control every 25 ms, scans, summaries, signals) never waits for it; it reads the target's
//! memory while snapshots go on. The loop asks for an analysis and polls for its result.
//!
//! The thread is detached: ending the stream (SIGTERM, `--duration`, the target exiting) never
//! waits for an analysis in progress, which can take seconds on a large heap; the process exits
//! around it.

use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError};

use anyhow::{Context, Result};
use gobinary::GoBinary;

use super::LeakAnalysis;
use crate::procmem::ProcessMemory;

/// Niceness of the analysis thread: on a busy machine the streaming loop (and the target,
/// when it shares our cores) comes first.
const NICE: libc::c_int = 10;

/// One analysis as the thread did it.
pub struct Finished {
    /// The analysis, or why it could not run.
    pub result: Result<LeakAnalysis, String>,
    /// CPU time the thread spent on it.
    pub cpu_ns: i64,
}

pub struct LeakWorker {
    requests: SyncSender<()>,
    results: Receiver<Finished>,
    busy: bool,
    /// The thread is gone (it cannot be, short of a panic): no analysis will run again.
    dead: bool,
}

impl LeakWorker {
    /// Starts the analysis thread (idle until asked).
    pub fn spawn(pid: u32, bin: &'static GoBinary, bias: u64) -> Result<LeakWorker> {
        let (requests, todo) = mpsc::sync_channel::<()>(1);
        let (done, results) = mpsc::sync_channel::<Finished>(1);
        std::thread::Builder::new()
            .name("leaks".into())
            .spawn(move || {
                lower_priority();
                let mem = ProcessMemory::new(pid);
                while todo.recv().is_ok() {
                    let cpu0 = thread_cpu_ns();
                    let result = super::analyse(&mem, bin, bias).map_err(|e| format!("{e:#}"));
                    let cpu_ns = thread_cpu_ns() - cpu0;
                    give_back_memory();
                    if done.send(Finished { result, cpu_ns }).is_err() {
                        return;
                    }
                }
            })
            .context("cannot start the leak analysis thread")?;
        Ok(LeakWorker {
            requests,
            results,
            busy: false,
            dead: false,
        })
    }

    /// An analysis is under way.
    pub fn busy(&self) -> bool {
        self.busy
    }

    /// Starts an analysis; false when one is under way (or the thread is gone).
    pub fn start(&mut self) -> bool {
        if self.busy || self.dead {
            return false;
        }
        match self.requests.try_send(()) {
            Ok(()) => {
                self.busy = true;
                true
            }
            Err(_) => false,
        }
    }

    /// The analysis that finished since the last call, if any; never waits.
    pub fn poll(&mut self) -> Option<Finished> {
        match self.results.try_recv() {
            Ok(f) => {
                self.busy = false;
                Some(f)
            }
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => {
                // Said once, as a failed analysis.
                let was = std::mem::replace(&mut self.dead, true);
                self.busy = false;
                (!was).then(|| Finished {
                    result: Err("the leak analysis thread ended".into()),
                    cpu_ns: 0,
                })
            }
        }
    }
}

/// This thread's CPU time (user and system).
fn thread_cpu_ns() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec, which we own.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0;
    }
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

/// Returns the memory an analysis freed to the system: glibc keeps a thread's freed heap in
/// its arena, and between analyses (a minute or more) ctxprobe would hold an analysis's peak
/// (~150 MB at a million goroutines) for nothing.
fn give_back_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free memory of the allocator's arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Makes this thread nicer (Linux: niceness is per thread). Best effort: at worst it runs at
/// the loop's priority.
fn lower_priority() {
    // SAFETY: gettid and setpriority take and return plain integers.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        let _ = libc::setpriority(libc::PRIO_PROCESS, tid, NICE);
    }
}
