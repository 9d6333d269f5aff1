//! Deterministic splits from a named, stable hash.
//!
//! A row's split is a function of its id (or user) alone: `xxh64(key_bytes, seed = key)`
//! mapped to [0, 1) and cut at `train` and `train + val`. Adding rows moves no existing row,
//! and the same id gets the same split on every machine and every version (xxh64 is a fixed
//! published algorithm; std's `DefaultHasher` is not stable and is never used).

use crate::config::{Split, SplitConfig};

/// The default key ("geoloc" in ASCII).
pub const DEFAULT_SPLIT_KEY: u64 = 0x0000_6765_6f6c_6f63;

/// The name recorded in manifests.
pub const SPLIT_HASH_NAME: &str = "xxh64";

/// The split of a key (an id or a user) under `cfg`.
pub fn split_of(key: &str, cfg: &SplitConfig) -> Split {
    let h = xxhash_rust::xxh64::xxh64(key.as_bytes(), cfg.key);
    // Top 53 bits as a uniform float in [0, 1).
    let u = (h >> 11) as f64 / (1u64 << 53) as f64;
    if u < cfg.train {
        Split::Train
    } else if u < cfg.train + cfg.val {
        Split::Val
    } else {
        Split::Test
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fractions_are_respected() {
        let cfg = SplitConfig::default();
        let mut n = [0usize; 3];
        for i in 0..100_000 {
            n[split_of(&format!("{i:x}"), &cfg) as usize] += 1;
        }
        assert!((79_000..81_000).contains(&n[0]), "{n:?}");
        assert!((9_500..10_500).contains(&n[1]), "{n:?}");
        assert!((9_500..10_500).contains(&n[2]), "{n:?}");
    }
}
