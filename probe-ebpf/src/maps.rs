//! Map plumbing both loaders share: per-CPU counters, ring-buffer draining, map errors.

use aya::maps::{MapData, PerCpuArray, RingBuf};
use aya::Ebpf;

use crate::abi::{FutexEvent, WakeEvent};
use crate::error::{classify, ProbeError};

/// A ring-buffer record type: plain old data that any bit pattern makes valid.
///
/// # Safety
/// Implement only for `#[repr(C)]` structs of integers with no padding invariants.
pub(crate) unsafe trait Pod: Copy {}
// SAFETY: both are #[repr(C)] structs of integers (see abi.rs and its layout test).
unsafe impl Pod for WakeEvent {}
// SAFETY: as above.
unsafe impl Pod for FutexEvent {}

/// Every record waiting in `ring` (non-blocking); short records are skipped.
pub(crate) fn drain<T: Pod>(ring: &mut RingBuf<MapData>) -> Vec<T> {
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        let bytes: &[u8] = &item;
        if bytes.len() >= std::mem::size_of::<T>() {
            // SAFETY: length checked and T is Pod; read_unaligned because the ring buffer only
            // promises 8-byte alignment.
            out.push(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) });
        }
    }
    out
}

/// The per-CPU array counters at `indices`, each summed over CPUs.
pub(crate) fn sum_counters<const N: usize>(
    ebpf: &Ebpf,
    map_name: &str,
    indices: [u32; N],
) -> Result<[u64; N], ProbeError> {
    let map = ebpf.map(map_name).ok_or_else(|| missing(map_name))?;
    let array = PerCpuArray::<&MapData, u64>::try_from(map)
        .map_err(|e| bpf_error(&format!("open the {map_name} map"), &e))?;
    let mut out = [0u64; N];
    for (slot, idx) in out.iter_mut().zip(indices) {
        let values = array
            .get(&idx, 0)
            .map_err(|e| bpf_error(&format!("read the {map_name} map"), &e))?;
        *slot = values.iter().fold(0u64, |acc, v| acc.wrapping_add(*v));
    }
    Ok(out)
}

pub(crate) fn missing(map: &str) -> ProbeError {
    ProbeError::Bpf {
        action: "find map".to_string(),
        detail: format!("`{map}` is missing from the embedded eBPF object"),
    }
}

pub(crate) fn bpf_error(action: &str, err: &(dyn std::error::Error + 'static)) -> ProbeError {
    classify(err, action, |detail| ProbeError::Bpf {
        action: action.to_string(),
        detail,
    })
}
