//! A small deterministic pseudo-random generator (splitmix64) and hash, for
//! tests that pick pages, sizes or operations "at random" but reproducibly.

use crate::pattern::mix;

/// Hashes two values into one well-mixed 64-bit value (e.g. a page index
/// and a step number, to pick a subset of pages per step).
pub fn hash(a: u64, b: u64) -> u64 {
    mix(mix(a ^ 0x6a09_e667_f3bc_c908).wrapping_add(b))
}

/// The splitmix64 generator: fast, 2^64 period, fine for picking pages.
#[derive(Debug, Clone)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// A generator whose sequence depends only on `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng { state: seed }
    }

    /// The next 64-bit value.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.state)
    }

    /// A value in `0..n` (`n > 0`); the bias is negligible for small `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "Rng::below(0)");
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// A value in `0..n` as `usize`.
    pub fn index(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_seed_dependent() {
        let a: Vec<u64> = (0..4)
            .scan(Rng::new(1), |r, _| Some(r.next_u64()))
            .collect();
        let b: Vec<u64> = (0..4)
            .scan(Rng::new(1), |r, _| Some(r.next_u64()))
            .collect();
        let c: Vec<u64> = (0..4)
            .scan(Rng::new(2), |r, _| Some(r.next_u64()))
            .collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn below_covers_range() {
        let mut r = Rng::new(7);
        let mut seen = [0u32; 10];
        for _ in 0..10_000 {
            seen[r.index(10)] += 1;
        }
        // Roughly uniform: every bucket near 1000.
        assert!(seen.iter().all(|&n| (800..1200).contains(&n)), "{seen:?}");
        assert_eq!(Rng::new(3).below(1), 0);
    }

    #[test]
    fn hash_mixes_both_inputs() {
        assert_ne!(hash(1, 2), hash(2, 1));
        assert_ne!(hash(1, 2), hash(1, 3));
        assert_eq!(hash(5, 6), hash(5, 6));
    }
}
