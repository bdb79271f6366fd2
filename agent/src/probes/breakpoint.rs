//! Is a uprobe's breakpoint really in the target? Holding the kernel's link is not proof: the
//! kernel can take a breakpoint out of one process while the probe stays registered (a uprobe
//! handler that says "remove" for that address space, an unapply during another consumer's
//! detach), and then the probe silently stops firing. The target's own code bytes at the probed
//! instruction say it directly: the kernel's breakpoint (x86 `int3`, arm64 `brk`) differs from
//! the instruction in the file.

use crate::procmem::ProcessMemory;

/// Bytes compared: a whole arm64 instruction, and on x86 the `int3` byte plus what follows.
const CHECKED: usize = 4;

/// One probed instruction, where the target runs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbedInsn {
    /// Runtime address (link-time address + load bias).
    pub addr: u64,
    /// The instruction's first bytes in the executable file.
    pub original: [u8; CHECKED],
}

impl ProbedInsn {
    /// `file_bytes`: the executable's bytes from the probed instruction on.
    pub fn new(addr: u64, file_bytes: &[u8]) -> Option<ProbedInsn> {
        let original = file_bytes.get(..CHECKED)?.try_into().ok()?;
        Some(ProbedInsn { addr, original })
    }

    /// True while the target's code at the site differs from the file (the breakpoint is in),
    /// false when it is the original instruction again; None when it cannot be read.
    pub fn breakpoint_present(&self, mem: &ProcessMemory) -> Option<bool> {
        let mut now = [0u8; CHECKED];
        mem.read(self.addr, &mut now).ok()?;
        Some(now != self.original)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_own_code() {
        // Our own process: a function's bytes are the "file" bytes, unchanged.
        let f = reads_our_own_code as fn() as usize as u64;
        let mem = ProcessMemory::new(std::process::id());
        let mut bytes = [0u8; CHECKED];
        mem.read(f, &mut bytes).expect("read own code");
        let insn = ProbedInsn::new(f, &bytes).expect("4 bytes");
        assert_eq!(insn.breakpoint_present(&mem), Some(false));
        let patched = ProbedInsn {
            original: [0xcc, 0, 0, 0],
            ..insn
        };
        assert_eq!(
            patched.breakpoint_present(&mem),
            Some(bytes != [0xcc, 0, 0, 0])
        );
        assert!(ProbedInsn::new(f, &bytes[..2]).is_none());
        let unmapped = ProbedInsn { addr: 8, ..insn };
        assert_eq!(unmapped.breakpoint_present(&mem), None);
    }
}
