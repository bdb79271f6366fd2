//! What /proc tells about a process's threads: their ids and names, the syscall each is blocked in
//! (with its user stack and instruction pointers).

use std::fs;

/// x86_64's `futex` syscall number (per architecture: [`super::arch::ThreadArch`]).
#[cfg(test)]
pub const SYS_FUTEX: i64 = 202;

/// The ids of the process's threads (empty if it is gone).
pub fn task_ids(pid: u32) -> Vec<u32> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut tids: Vec<u32> = dir
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    tids.sort_unstable();
    tids
}

pub fn task_exists(pid: u32, tid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}/task/{tid}")).exists()
}

/// `/proc/PID/task/TID/comm` without its newline.
pub fn thread_name(pid: u32, tid: u32) -> Option<String> {
    let s = fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).ok()?;
    Some(s.trim_end_matches('\n').to_string())
}

/// A thread blocked in a syscall, from `/proc/PID/task/TID/syscall`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyscallState {
    pub nr: i64,
    pub args: [u64; 6],
    /// User stack pointer and instruction pointer (just after the `syscall` instruction).
    pub sp: u64,
    pub pc: u64,
}

/// The syscall the thread is blocked in; None if it is running, not in a syscall, or gone.
pub fn syscall_state(pid: u32, tid: u32) -> Option<SyscallState> {
    let s = fs::read_to_string(format!("/proc/{pid}/task/{tid}/syscall")).ok()?;
    parse_syscall(&s)
}

/// Parses "NR ARG0..ARG5 SP PC" (hex after NR); "running" and "-1 SP PC" (blocked outside a
/// syscall) give None.
pub fn parse_syscall(s: &str) -> Option<SyscallState> {
    let mut fields = s.split_whitespace();
    let nr: i64 = fields.next()?.parse().ok()?;
    if nr < 0 {
        return None;
    }
    let hex: Vec<u64> = fields
        .map(|f| u64::from_str_radix(f.trim_start_matches("0x"), 16))
        .collect::<Result<_, _>>()
        .ok()?;
    let [a0, a1, a2, a3, a4, a5, sp, pc] = hex.as_slice() else {
        return None;
    };
    Some(SyscallState {
        nr,
        args: [*a0, *a1, *a2, *a3, *a4, *a5],
        sp: *sp,
        pc: *pc,
    })
}

/// A thread's scheduler record, from `/proc/PID/task/TID/sched`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedState {
    /// `se.exec_start`: the scheduler's per-CPU task clock (ns) when the thread last ran. For a
    /// sleeping thread, about when it went to sleep.
    pub exec_start_ns: u64,
    /// `nr_switches`: context switches in or out of the CPU; unchanged means it did not run.
    pub nr_switches: u64,
}

pub fn sched_state(pid: u32, tid: u32) -> Option<SchedState> {
    let s = fs::read_to_string(format!("/proc/{pid}/task/{tid}/sched")).ok()?;
    parse_sched(&s)
}

/// Parses the `se.exec_start` ("ms.nnnnnn", ns precision) and `nr_switches` lines.
pub fn parse_sched(s: &str) -> Option<SchedState> {
    let mut exec_start_ns = None;
    let mut nr_switches = None;
    for line in s.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        match key.trim() {
            "se.exec_start" => exec_start_ns = parse_ms_ns(value.trim()),
            "nr_switches" => nr_switches = value.trim().parse().ok(),
            _ => {}
        }
    }
    Some(SchedState {
        exec_start_ns: exec_start_ns?,
        nr_switches: nr_switches?,
    })
}

/// "4258056.930374" (ms, then the ns below the ms as 6 digits) to ns.
fn parse_ms_ns(s: &str) -> Option<u64> {
    let (ms, frac) = s.split_once('.').unwrap_or((s, "0"));
    let ms: u64 = ms.parse().ok()?;
    if frac.is_empty() || frac.len() > 6 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let ns: u64 = format!("{frac:0<6}").parse().ok()?;
    ms.checked_mul(1_000_000)?.checked_add(ns)
}

/// The CPU the thread last ran on (field 39 of `/proc/PID/task/TID/stat`).
pub fn last_cpu(pid: u32, tid: u32) -> Option<u32> {
    let s = fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
    parse_stat_cpu(&s)
}

/// The comm field may hold spaces and parentheses: fields are counted after the last ')'.
pub fn parse_stat_cpu(s: &str) -> Option<u32> {
    let (_, rest) = s.rsplit_once(')')?;
    // `rest` starts at field 3 (state).
    rest.split_whitespace().nth(39 - 3)?.parse().ok()
}

pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_syscall_lines() {
        let s = "202 0x55d0c0a1b0c0 0x80 0x2 0x0 0x0 0x0 0x7f2b3c7fdd10 0x7f2b3d0a6e5d\n";
        let st = parse_syscall(s).expect("futex line");
        assert_eq!(st.nr, SYS_FUTEX);
        assert_eq!(st.args[0], 0x55d0c0a1b0c0);
        assert_eq!(st.args[1], 0x80);
        assert_eq!(st.sp, 0x7f2b3c7fdd10);
        assert_eq!(st.pc, 0x7f2b3d0a6e5d);
        assert_eq!(parse_syscall("running\n"), None);
        assert_eq!(parse_syscall("-1 0x7ffd 0x4011\n"), None);
        assert_eq!(parse_syscall("202 0x1 0x2\n"), None);
    }

    #[test]
    fn parses_sched_and_stat() {
        let s = "cat (32174, #threads: 1)\n---------\nse.exec_start                                :       4258056.930374\nse.vruntime   :   134.606701\nnr_switches                                  :                    17\nnr_voluntary_switches  :  1\n";
        assert_eq!(
            parse_sched(s),
            Some(SchedState {
                exec_start_ns: 4_258_056_930_374,
                nr_switches: 17
            })
        );
        assert_eq!(parse_sched("nr_switches : 3\n"), None);
        assert_eq!(parse_ms_ns("12.5"), Some(12_500_000));
        assert_eq!(parse_ms_ns("12.x"), None);
        let stat = "77 (a) b (c)) S 1 77 77 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 3 0 500 1000 200 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(parse_stat_cpu(stat), Some(1));
        assert_eq!(parse_stat_cpu("77 (x) S 1"), None);
    }
}
