//! The deterministic PRNG of tests, benchmarks and the harness: SplitMix64
//! (Steele, Lea and Flood, "Fast splittable pseudorandom number
//! generators", 2014), so a seed replays the same sequence.

/// The SplitMix64 increment (the golden ratio as a 64-bit fraction).
const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// SplitMix64 from a seed; `Clone` to replay a sequence from here.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// The generator for `seed` (any value, 0 included).
    pub fn new(seed: u64) -> Rng {
        // "gpuswap!": keeps seed 0 away from the all-zero state.
        Rng(seed ^ 0x6770_7573_7761_7021)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GAMMA);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in 0..n (n > 0; 0 is taken as 1).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p && p > 0.0
    }

    /// Fills `buf` with the next words, little-endian; a trailing partial
    /// word takes the first bytes of one more word.
    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for chunk in &mut chunks {
            chunk.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let tail = chunks.into_remainder();
        if !tail.is_empty() {
            let word = self.next_u64().to_le_bytes();
            tail.copy_from_slice(&word[..tail.len()]);
        }
    }
}

/// `len` deterministic, non-periodic bytes, different for every seed: what
/// tests put in guest pages and benchmarks in their buffers.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0; len];
    Rng::new(seed).fill(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_reference_outputs() {
        // SplitMix64 from state 0 (the reference C code's first outputs);
        // `new` XORs the seed with its constant, so undo that here.
        let mut r = Rng::new(0x6770_7573_7761_7021);
        assert_eq!(r.next_u64(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(r.next_u64(), 0x6e78_9e6a_a1b9_65f4);
        assert_eq!(r.next_u64(), 0x06c4_5d18_8009_454f);
    }

    #[test]
    fn same_seed_same_sequence() {
        let seq = |seed| -> Vec<u64> {
            let mut r = Rng::new(seed);
            (0..5).map(|_| r.next_u64()).collect()
        };
        assert_eq!(seq(7), seq(7));
        assert_ne!(seq(7), seq(8));
    }

    #[test]
    fn below_and_chance_respect_their_bounds() {
        let mut r = Rng::new(1);
        assert!((0..1000).all(|_| r.below(6) < 6));
        assert_eq!(r.below(0), 0);
        assert!((0..1000).all(|_| !r.chance(0.0)));
        assert!((0..1000).all(|_| r.chance(1.0)));
        let hits = (0..10_000).filter(|_| r.chance(0.25)).count();
        assert!((2000..3000).contains(&hits), "{hits}");
    }

    #[test]
    fn patterns_are_prefixes_of_each_other_and_differ_by_seed() {
        let long = pattern(4099, 5);
        assert_eq!(pattern(13, 5), long[..13]);
        assert_eq!(pattern(0, 5), Vec::<u8>::new());
        assert_ne!(pattern(64, 5), pattern(64, 6));
        let mut r = Rng::new(5);
        assert_eq!(long[..8], r.next_u64().to_le_bytes());
        // Not periodic at a page: the pages of a buffer differ.
        assert_ne!(long[..64], long[4096 - 64..4096]);
    }
}
