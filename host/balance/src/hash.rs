//! The stable key hash shared by the proxy (request keys) and the hash policies (ring points,
//! Maglev permutations).

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// The splitmix64 increment (2^64 / golden ratio); also used to step through fallback hashes.
pub(crate) const GOLDEN_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// Stable 64-bit hash of a request key (header value, cookie value, client IP bytes).
///
/// The result is identical across runs, processes and machines (there is no random seed), so
/// every proxy instance maps a key to the same endpoint. It is FNV-1a followed by the splitmix64
/// finalizer: FNV-1a alone leaves short or similar keys clustered in the high bits, which the
/// ring and Maglev lookups depend on, and the finalizer spreads every input bit over the output.
///
/// Not a keyed hash: a client that controls the key can aim at an endpoint, which is inherent to
/// affinity-by-key and harmless for load balancing.
pub fn hash_key(bytes: &[u8]) -> u64 {
    mix64(fnv1a(bytes))
}

/// 64-bit FNV-1a.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV_OFFSET, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(FNV_PRIME)
    })
}

/// The splitmix64 finalizer: a bijection on u64 with full avalanche. Note `mix64(0) == 0`.
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
