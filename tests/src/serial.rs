//! Tests that attach BPF run one at a time: two probes on the same machine would slow each
//! other's targets and make timing assertions flaky. The guard serialises within this process
//! (a mutex) and across test binaries run in parallel, from any checkout on this machine (a file
//! lock in the system's temporary directory).

use std::sync::{Mutex, MutexGuard};

use anyhow::Result;

use crate::gobuild::FileLock;

static BPF: Mutex<()> = Mutex::new(());

pub struct SerialGuard {
    _file: FileLock,
    _mutex: MutexGuard<'static, ()>,
}

/// Blocks until no other test in this process or another holds the guard.
pub fn bpf_serial() -> Result<SerialGuard> {
    // A test that panicked while holding the mutex has already failed; the lock is still fine.
    let mutex = BPF.lock().unwrap_or_else(|e| e.into_inner());
    let file = FileLock::acquire(&std::env::temp_dir().join("ctxprobe-bpf-tests.lock"))?;
    Ok(SerialGuard {
        _file: file,
        _mutex: mutex,
    })
}
