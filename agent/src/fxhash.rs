//! A fast non-cryptographic hasher (rustc's FxHash) for hot in-process maps whose keys are
//! long (whole symbolized stacks): std's SipHash costs more than everything else done per
//! goroutine there. A target could craft colliding keys only to slow its own inspection.

use std::hash::{BuildHasherDefault, Hasher};

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

#[derive(Default, Clone, Copy)]
pub struct FxHasher(u64);

impl FxHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w));
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }

    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    fn finish(&self) -> u64 {
        // The multiply leaves its entropy in the high bits, and the table picks buckets by the
        // low ones: aligned addresses as keys (a dump's prefetched sudogs and channels) would
        // crowd a few buckets. Rotating brings the high bits down (as rustc-hash 2 does).
        self.0.rotate_left(26)
    }
}

pub type FxBuildHasher = BuildHasherDefault<FxHasher>;
pub type FxHashMap<K, V> = std::collections::HashMap<K, V, FxBuildHasher>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::{BuildHasher, Hash};

    /// Equal keys hash equal, and a difference in a key's tail counts. (Collisions cost time,
    /// not correctness.)
    #[test]
    fn equal_keys_hash_equal_and_tails_count() {
        let h = |s: &str| FxBuildHasher::default().hash_one(s);
        assert_eq!(h("main.worker"), h("main.worker"));
        assert_ne!(h("main.worker"), h("main.workes"));
        assert_ne!(h("abcdefgh1"), h("abcdefgh2"));
        let mut map: FxHashMap<Vec<u64>, u32> = FxHashMap::default();
        map.insert(vec![1, 2, 3], 7);
        assert_eq!(map.get(&vec![1, 2, 3]), Some(&7));
        let mut one = FxHasher::default();
        5u8.hash(&mut one);
        assert_ne!(one.finish(), 0);
    }

    /// 16-byte-aligned addresses spread over the low bits (where the table's bucket index is).
    #[test]
    fn aligned_addresses_spread_over_the_low_bits() {
        let mut low = std::collections::HashSet::new();
        for i in 0..4096u64 {
            let h = FxBuildHasher::default().hash_one((0xc000_0000_0000u64 + i * 16, 96usize));
            low.insert(h & 0xfff);
        }
        assert!(low.len() > 2048, "{} distinct of 4096", low.len());
    }
}
