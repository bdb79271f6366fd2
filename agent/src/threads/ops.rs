//! Names of futex operations as the kernel sees them.

use probe_ebpf::abi::{FUTEX_OP_SYS_WAIT, FUTEX_OP_SYS_WAITV, FUTEX_OP_SYS_WAKE};

const FUTEX_PRIVATE_FLAG: u32 = 128;
const FUTEX_CLOCK_REALTIME: u32 = 256;
const FUTEX2_PRIVATE: u32 = 128;

/// futex(2) commands that sleep until woken (or timed out).
pub fn is_wait_cmd(op: u32) -> bool {
    matches!(op & 0x7f, 0 | 6 | 9 | 11 | 13)
}

/// "FUTEX_WAIT_PRIVATE", "FUTEX_WAIT_BITSET_PRIVATE|FUTEX_CLOCK_REALTIME", "futex_wait(FUTEX2_PRIVATE)".
pub fn op_name(op: u32) -> String {
    let pseudo = op & !0xffff;
    if pseudo != 0 {
        let syscall = match pseudo {
            FUTEX_OP_SYS_WAIT => "futex_wait",
            FUTEX_OP_SYS_WAITV => "futex_waitv",
            FUTEX_OP_SYS_WAKE => "futex_wake",
            _ => return format!("{op:#x}"),
        };
        return if op & FUTEX2_PRIVATE != 0 {
            format!("{syscall}(FUTEX2_PRIVATE)")
        } else {
            syscall.to_string()
        };
    }
    let cmd = match op & 0x7f {
        0 => "FUTEX_WAIT",
        1 => "FUTEX_WAKE",
        2 => "FUTEX_FD",
        3 => "FUTEX_REQUEUE",
        4 => "FUTEX_CMP_REQUEUE",
        5 => "FUTEX_WAKE_OP",
        6 => "FUTEX_LOCK_PI",
        7 => "FUTEX_UNLOCK_PI",
        8 => "FUTEX_TRYLOCK_PI",
        9 => "FUTEX_WAIT_BITSET",
        10 => "FUTEX_WAKE_BITSET",
        11 => "FUTEX_WAIT_REQUEUE_PI",
        12 => "FUTEX_CMP_REQUEUE_PI",
        13 => "FUTEX_LOCK_PI2",
        _ => return format!("{op:#x}"),
    };
    let mut name = cmd.to_string();
    if op & FUTEX_PRIVATE_FLAG != 0 {
        name.push_str("_PRIVATE");
    }
    if op & FUTEX_CLOCK_REALTIME != 0 {
        name.push_str("|FUTEX_CLOCK_REALTIME");
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(op_name(128), "FUTEX_WAIT_PRIVATE");
        assert_eq!(op_name(0), "FUTEX_WAIT");
        assert_eq!(
            op_name(9 | 128 | 256),
            "FUTEX_WAIT_BITSET_PRIVATE|FUTEX_CLOCK_REALTIME"
        );
        assert_eq!(
            op_name(FUTEX_OP_SYS_WAIT | 0x82),
            "futex_wait(FUTEX2_PRIVATE)"
        );
        assert_eq!(op_name(0x7f), "0x7f");
        assert!(is_wait_cmd(128) && is_wait_cmd(9 | 128) && !is_wait_cmd(129));
    }
}
