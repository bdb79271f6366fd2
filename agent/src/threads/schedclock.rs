//! Turns the scheduler's `se.exec_start` stamps into CLOCK_MONOTONIC times.
//!
//! `se.exec_start` is in the run queue's task clock (`rq_clock_task`), which is kept per CPU and
//! excludes the steal time of that CPU (CONFIG_PARAVIRT_TIME_ACCOUNTING) and, with
//! CONFIG_IRQ_TIME_ACCOUNTING, its interrupt time. So it is not CLOCK_MONOTONIC plus one constant:
//! on the 2-CPU test VM (kernel 6.18) CLOCK_MONOTONIC − task clock was 0.864 s on CPU 0 and
//! 1.017–1.024 s on CPU 1 (each about that CPU's accumulated steal time, per /proc/stat), and grew
//! by ~0.4 ms per CPU over 10 s of a busy machine. Each CPU is therefore calibrated on its own, by
//! running this thread there: right after `sched_yield` our own `exec_start` is "now" in that
//! CPU's task clock (measured within ~1 µs of the CLOCK_MONOTONIC read after it). A sleeping
//! thread's stamp converted this way came a median 15 µs after the thread's own clock read just
//! before it slept (90th percentile 25 µs idle, 76 µs with four spinning processes on 2 CPUs).
//!
//! A stamp converted with today's offset is late by the steal time the CPU accrued since the
//! stamp, so a duration derived from it is a slight under-estimate (a lower bound).

use std::collections::HashMap;
use std::fs;

use super::procfs;

/// Calibration reads slower than this were interrupted (we were preempted): retried.
const MAX_SAMPLE_NS: u64 = 500_000;
const TRIES: usize = 3;

/// Per-CPU offsets, measured at most once per poll (`begin_poll` forgets them).
#[derive(Default)]
pub struct SchedClock {
    /// CLOCK_MONOTONIC − task clock, by CPU; None if that CPU could not be calibrated.
    offsets: HashMap<u32, Option<i64>>,
}

impl SchedClock {
    pub fn begin_poll(&mut self) {
        self.offsets.clear();
    }

    /// CLOCK_MONOTONIC ns of `exec_start_ns`, a stamp of `cpu`'s task clock.
    pub fn monotonic_of(&mut self, cpu: u32, exec_start_ns: u64) -> Option<u64> {
        if exec_start_ns == 0 {
            return None; // reset by a migration: no stamp
        }
        let offset = (*self.offsets.entry(cpu).or_insert_with(|| calibrate(cpu)))?;
        u64::try_from(i64::try_from(exec_start_ns).ok()?.checked_add(offset)?).ok()
    }
}

/// CLOCK_MONOTONIC ns of when a sleeping thread last ran, from its `sched` record read before:
/// about when it went to sleep. None if its CPU cannot be calibrated or the stamp is unusable.
pub fn went_to_sleep(
    clock: &mut SchedClock,
    pid: u32,
    tid: u32,
    sched: &procfs::SchedState,
) -> Option<u64> {
    let cpu = procfs::last_cpu(pid, tid)?;
    let t = clock.monotonic_of(cpu, sched.exec_start_ns)?;
    // A stamp well in the future is a calibration error: no estimate rather than a wrong one.
    let now = procfs::monotonic_ns();
    (t <= now.saturating_add(1_000_000)).then_some(t.min(now))
}

/// Runs this thread on `cpu` for a moment and compares its task clock with CLOCK_MONOTONIC.
fn calibrate(cpu: u32) -> Option<i64> {
    let old = current_affinity()?;
    let result = pin(cpu).then(|| sample(cpu)).flatten();
    // SAFETY: restores the mask read above for this thread (0 = the calling thread).
    unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &old) };
    result
}

fn current_affinity() -> Option<libc::cpu_set_t> {
    // SAFETY: an all-zero cpu_set_t is valid; sched_getaffinity fills it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid out-pointer of the size given.
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    (rc == 0).then_some(set)
}

/// Moves this thread to `cpu`; false if not allowed (cpuset) or not possible.
fn pin(cpu: u32) -> bool {
    if cpu as usize >= libc::CPU_SETSIZE as usize {
        return false;
    }
    // SAFETY: as in current_affinity; CPU_SET is in bounds (checked above).
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    unsafe { libc::CPU_SET(cpu as usize, &mut set) };
    // SAFETY: valid pointer to a mask of the size given. The kernel migrates the caller before
    // returning.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    // SAFETY: no preconditions.
    rc == 0 && unsafe { libc::sched_getcpu() } == cpu as i32
}

/// The offset from the quickest of a few samples.
fn sample(cpu: u32) -> Option<i64> {
    let mut best: Option<(u64, i64)> = None;
    for _ in 0..TRIES {
        // SAFETY: no preconditions. Yielding stamps our exec_start with this CPU's task clock:
        // at once, or when we are picked again if other threads run first. So the clock is read
        // after the yield: read before, it would count their turn, and on a loaded CPU every
        // try could fail.
        unsafe { libc::sched_yield() };
        let t0 = procfs::monotonic_ns();
        let exec_start = fs::read_to_string("/proc/thread-self/sched")
            .ok()
            .and_then(|s| procfs::parse_sched(&s))
            .map(|s| s.exec_start_ns)?;
        let t1 = procfs::monotonic_ns();
        // SAFETY: no preconditions.
        if unsafe { libc::sched_getcpu() } != cpu as i32 {
            return None;
        }
        let took = t1.saturating_sub(t0);
        let offset = i64::try_from(t0).ok()? - i64::try_from(exec_start).ok()?;
        if best.is_none_or(|(t, _)| took < t) {
            best = Some((took, offset));
        }
        if took < MAX_SAMPLE_NS {
            break;
        }
    }
    best.filter(|(took, _)| *took < MAX_SAMPLE_NS)
        .map(|(_, o)| o)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Our own exec_start, converted, is within a millisecond or two of now on every CPU we may
    /// use. Other tests load the machine (busy lockers): a preemption between the readings
    /// skews one try, so the best of several counts.
    #[test]
    fn calibrated_offsets_convert_our_own_stamp() {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let old = current_affinity().expect("own affinity");
        for cpu in 0..cpus as u32 {
            let mut best: Option<u64> = None;
            for _ in 0..20 {
                let mut clock = SchedClock::default();
                if !pin(cpu) {
                    break;
                }
                // SAFETY: no preconditions.
                unsafe { libc::sched_yield() };
                let st = procfs::parse_sched(
                    &fs::read_to_string("/proc/thread-self/sched").expect("own sched"),
                )
                .expect("parse own sched");
                let now = procfs::monotonic_ns();
                // Calibration samples can fail on a loaded machine.
                let Some(t) = clock.monotonic_of(cpu, st.exec_start_ns) else {
                    continue;
                };
                let diff = now.abs_diff(t);
                best = Some(best.map_or(diff, |b| b.min(diff)));
            }
            eprintln!("cpu {cpu}: best |now - converted stamp| = {best:?} ns");
            if let Some(best) = best {
                assert!(best < 2_000_000, "cpu {cpu}: off by {best} ns at best");
            }
        }
        // SAFETY: restores this thread's mask read above.
        unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &old) };
    }
}
