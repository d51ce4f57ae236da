//! The hasher for maps keyed by what a remote party chooses (client 5-tuples, TCP connection
//! tuples): foldhash keyed from the OS CSPRNG.
//!
//! Why not std's SipHash-1-3: it costs ~15-20 ns per 5-tuple lookup on the relay path, one
//! lookup per client packet. Why not an unkeyed fast hash (FxHash): an attacker picking source
//! ports could then aim every allocation at one bucket (HashDoS). foldhash is a multiply-fold
//! hash whose output depends on a 64-bit per-process secret (expanded to six words) and a
//! 64-bit per-map secret; both come from getrandom here, not from foldhash's default seeding
//! (addresses and time). Hash values never leave the process, so colliding keys cannot be
//! computed offline; see benches/README.md for the measured difference.
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::OnceLock;

use foldhash::fast::{FoldHasher, SeedableRandomState};
use foldhash::SharedSeed;

/// A `HashMap` with [`Keyed`] hashing.
pub type Map<K, V> = HashMap<K, V, Keyed>;

/// An empty [`Map`].
pub fn map<K, V>() -> Map<K, V> {
    HashMap::with_hasher(Keyed::default())
}

/// `BuildHasher` for foldhash with secret seeds from the OS CSPRNG (see the module docs).
#[derive(Clone, Debug)]
pub struct Keyed(SeedableRandomState);

fn os_random_u64() -> Option<u64> {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).ok()?;
    Some(u64::from_le_bytes(b))
}

impl Default for Keyed {
    fn default() -> Self {
        static SHARED: OnceLock<Option<SharedSeed>> = OnceLock::new();
        let shared = SHARED.get_or_init(|| os_random_u64().map(SharedSeed::from_u64));
        match (shared, os_random_u64()) {
            (Some(s), Some(per_map)) => Keyed(SeedableRandomState::with_seed(per_map, s)),
            // No OS randomness at all: foldhash's own seeding (addresses, time) beats none.
            _ => Keyed(SeedableRandomState::random()),
        }
    }
}

impl BuildHasher for Keyed {
    type Hasher = FoldHasher<'static>;

    #[inline(always)]
    fn build_hasher(&self) -> Self::Hasher {
        self.0.build_hasher()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn maps_are_keyed_differently() {
        // Two maps hash the same key differently: the per-map seed is in effect.
        let (a, b) = (Keyed::default(), Keyed::default());
        assert_ne!(a.hash_one(12345u64), b.hash_one(12345u64));
        // And one map is consistent with itself.
        assert_eq!(a.hash_one(12345u64), a.hash_one(12345u64));
    }
}
