//! Deterministic buffer content and its hash.
//!
//! Content: the buffer is a sequence of little-endian u64 words; word `i`
//! (bytes `8*i .. 8*i+8`) is the `(i+1)`-th output of splitmix64 seeded with
//! `key(seed, bo, version)`:
//!
//! ```text
//! GAMMA  = 0x9E3779B97F4A7C15
//! mix(z) = z ^= z >> 30; z *= 0xBF58476D1CE4E5B9;
//!          z ^= z >> 27; z *= 0x94D049BB133111EB; z ^ (z >> 31)      (wrapping)
//! key    = mix(mix(mix(seed ^ GAMMA) ^ bo) ^ version)
//! word i = mix(key + (i + 1) * GAMMA)                                  (wrapping)
//! ```
//!
//! A trailing partial word takes the first `len % 8` bytes of the next word's
//! little-endian encoding. Every word is computable on its own, so content can
//! be checked (and the first bad byte found) without keeping a copy.
//!
//! The `sparse` kind ([`Pattern::Sparse`]) keeps word `i` only where `i` is a
//! multiple of 512 (the first word of each 4 KiB page) and uses `key` for
//! every other word: still distinct per page, BO and version, but it
//! compresses to almost nothing, so BOs can outgrow RAM on zram swap.
//!
//! Hash: `content_hash(bytes) = xxh3_64(bytes)` (seed 0), printed as 16
//! lowercase hex digits (`hex`); the host daemon hashes its copy the same way.

use xxhash_rust::xxh3::xxh3_64;

const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// The splitmix64 output function.
#[inline]
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The stream key for (seed, bo, version).
#[inline]
pub fn key(seed: u64, bo: u64, version: u64) -> u64 {
    mix(mix(mix(seed ^ GAMMA) ^ bo) ^ version)
}

/// Word `index` of the stream with `key`.
#[inline]
pub fn word(key: u64, index: u64) -> u64 {
    mix(key.wrapping_add(index.wrapping_add(1).wrapping_mul(GAMMA)))
}

/// Which content stream: every word random, or one random word per page
/// (the agent protocol's `pattern` argument).
pub use gpuswap_api::agent::Pattern;

/// Words per 4 KiB page.
const PAGE_WORDS: u64 = 512;

/// Word `index` of the `kind` stream with `key`.
#[inline]
pub fn word_of(kind: Pattern, key: u64, index: u64) -> u64 {
    match kind {
        Pattern::Random => word(key, index),
        Pattern::Sparse if index.is_multiple_of(PAGE_WORDS) => word(key, index),
        Pattern::Sparse => key,
    }
}

/// Fill `buf` with the content for (seed, bo_index, version).
pub fn fill(buf: &mut [u8], seed: u64, bo_index: u64, version: u64) {
    fill_kind(Pattern::Random, buf, seed, bo_index, version)
}

/// Fill `buf` with the `kind` content for (seed, bo_index, version).
pub fn fill_kind(kind: Pattern, buf: &mut [u8], seed: u64, bo_index: u64, version: u64) {
    let k = key(seed, bo_index, version);
    let mut chunks = buf.chunks_exact_mut(8);
    let mut i = 0u64;
    for chunk in &mut chunks {
        chunk.copy_from_slice(&word_of(kind, k, i).to_le_bytes());
        i += 1;
    }
    let tail = chunks.into_remainder();
    let n = tail.len();
    tail.copy_from_slice(&word_of(kind, k, i).to_le_bytes()[..n]);
}

/// Offset of the first byte of `buf` that differs from the content for
/// (seed, bo_index, version), or `None` if all match.
pub fn first_mismatch(buf: &[u8], seed: u64, bo_index: u64, version: u64) -> Option<usize> {
    first_mismatch_kind(Pattern::Random, buf, seed, bo_index, version)
}

/// As [`first_mismatch`], for the `kind` content.
pub fn first_mismatch_kind(
    kind: Pattern,
    buf: &[u8],
    seed: u64,
    bo_index: u64,
    version: u64,
) -> Option<usize> {
    let k = key(seed, bo_index, version);
    let mut chunks = buf.chunks_exact(8);
    let mut i = 0u64;
    for chunk in &mut chunks {
        let want = word_of(kind, k, i).to_le_bytes();
        if chunk != want {
            let at = chunk
                .iter()
                .zip(want)
                .position(|(a, b)| *a != b)
                .unwrap_or(0);
            return Some(i as usize * 8 + at);
        }
        i += 1;
    }
    let tail = chunks.remainder();
    let want = word_of(kind, k, i).to_le_bytes();
    tail.iter()
        .zip(want)
        .position(|(a, b)| *a != b)
        .map(|at| i as usize * 8 + at)
}

/// xxh3_64 of the bytes (must match the host daemon's hash of its copy).
pub fn content_hash(bytes: &[u8]) -> u64 {
    xxh3_64(bytes)
}

/// A hash as 16 lowercase hex digits (what the daemon prints too).
pub use gpuswap_api::hex;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_reference() {
        // splitmix64 seeded with 0: the first outputs from the reference C code
        // (Vigna, prng.di.unimi.it/splitmix64.c).
        assert_eq!(word(0, 0), 0xE220_A839_7B1D_CDAF);
        assert_eq!(word(0, 1), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn deterministic_and_keyed() {
        let mut a = vec![0u8; 4099];
        let mut b = vec![0u8; 4099];
        fill(&mut a, 7, 3, 1);
        fill(&mut b, 7, 3, 1);
        assert_eq!(a, b);
        for (s, bo, v) in [(8, 3, 1), (7, 4, 1), (7, 3, 2)] {
            fill(&mut b, s, bo, v);
            assert_ne!(a, b, "({s},{bo},{v}) must differ from (7,3,1)");
        }
        // A prefix of a longer fill equals a shorter fill (random access).
        let mut c = vec![0u8; 13];
        fill(&mut c, 7, 3, 1);
        assert_eq!(&a[..13], &c[..]);
    }

    #[test]
    fn mismatch_offsets() {
        let mut a = vec![0u8; 1003];
        fill(&mut a, 1, 2, 3);
        assert_eq!(first_mismatch(&a, 1, 2, 3), None);
        assert_eq!(first_mismatch(&a, 1, 2, 4), Some(0));
        for off in [0usize, 7, 8, 517, 1000, 1002] {
            let mut b = a.clone();
            b[off] ^= 0x40;
            assert_eq!(first_mismatch(&b, 1, 2, 3), Some(off));
        }
        assert_eq!(first_mismatch(&[], 1, 2, 3), None);
    }

    #[test]
    fn hash_vectors() {
        // XXH3_64bits("") with seed 0, from the xxHash reference.
        assert_eq!(content_hash(b""), 0x2D06_8005_38D3_94C2);
        assert_eq!(hex(content_hash(b"")), "2d06800538d394c2");
        assert_eq!(hex(0xab), "00000000000000ab");
        // Golden values pinning the content generator + hash (share with the host).
        let mut page = vec![0u8; 4096];
        fill(&mut page, 1, 0, 0);
        assert_eq!(hex(content_hash(&page)), GOLDEN_1_0_0_4096);
    }

    /// hex(content_hash(fill(4096 bytes, seed 1, bo 0, version 0))).
    const GOLDEN_1_0_0_4096: &str = "51e3b1a3eaeac249";

    #[test]
    fn sparse_kind() {
        let mut a = vec![0u8; 3 * 4096 + 5];
        fill_kind(Pattern::Sparse, &mut a, 1, 2, 3);
        let k = key(1, 2, 3);
        // First word of each page as in the random stream, then the key.
        assert_eq!(a[..8], word(k, 0).to_le_bytes());
        assert_eq!(a[4096..4104], word(k, 512).to_le_bytes());
        assert_eq!(a[8..16], k.to_le_bytes());
        assert_eq!(a[4104..4112], k.to_le_bytes());
        assert_eq!(first_mismatch_kind(Pattern::Sparse, &a, 1, 2, 3), None);
        assert_eq!(first_mismatch_kind(Pattern::Random, &a, 1, 2, 3), Some(8));
        let mut b = a.clone();
        b[2 * 4096 + 100] ^= 1;
        assert_eq!(
            first_mismatch_kind(Pattern::Sparse, &b, 1, 2, 3),
            Some(2 * 4096 + 100)
        );
        // Random is the default and the plain functions use it.
        let mut c = vec![0u8; 64];
        let mut d = vec![0u8; 64];
        fill(&mut c, 5, 6, 7);
        fill_kind(Pattern::default(), &mut d, 5, 6, 7);
        assert_eq!(c, d);
    }
}
