//! A map from `u64` keys split into independently locked shards: the one
//! shape behind both task registries (managed tasks by their id, tasks
//! observed through runtime hooks by their Tokio id).
//!
//! Written at a task's start and end and read by snapshots, never on the
//! poll path. Sharding keeps tasks starting and ending on different workers
//! off each other's lock.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Mutex;

use crate::sync::lock;

const SHARDS: usize = 32;

/// Hashes a `u64` key with one multiplication and a fold.
///
/// Keys are task ids handed out by this crate or by Tokio, not by an
/// attacker, so SipHash's flooding resistance buys nothing here, and it was
/// a fifth of the cost of registering a task. Multiplying by 2^64/φ spreads
/// keys over the high bits; folding them down spreads them over the low
/// bits too, which the map takes its bucket index from. The fold matters:
/// the keys of one shard share their low five bits, and without it they
/// would share the low five bits of their hash as well and crowd into a
/// thirty-second of the buckets.
#[derive(Default)]
pub(crate) struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 29)
    }
}

/// A `HashMap` from `u64` keys, hashed with [`KeyHasher`].
pub(crate) type KeyMap<V> = HashMap<u64, V, BuildHasherDefault<KeyHasher>>;

/// [`KeyMap`]s behind one lock per shard; a key's shard is `key % 32`.
#[derive(Debug)]
pub(crate) struct ShardedMap<V> {
    shards: Box<[Mutex<KeyMap<V>>]>,
}

impl<V> Default for ShardedMap<V> {
    fn default() -> Self {
        ShardedMap {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }
}

impl<V> ShardedMap<V> {
    fn shard(&self, key: u64) -> &Mutex<KeyMap<V>> {
        &self.shards[key as usize % SHARDS]
    }

    pub(crate) fn insert(&self, key: u64, value: V) {
        lock(self.shard(key)).insert(key, value);
    }

    pub(crate) fn remove(&self, key: u64) -> Option<V> {
        lock(self.shard(key)).remove(&key)
    }

    /// Calls `f` on every value, one shard locked at a time.
    pub(crate) fn for_each(&self, mut f: impl FnMut(&V)) {
        for shard in self.shards.iter() {
            lock(shard).values().for_each(&mut f);
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }

    /// Runs `f` on the map of `key`'s shard, under its lock.
    pub(crate) fn with_shard<R>(&self, key: u64, f: impl FnOnce(&mut KeyMap<V>) -> R) -> R {
        f(&mut lock(self.shard(key)))
    }

    /// Number of shards: a shard's share of a capacity is `capacity / SHARDS`.
    pub(crate) const SHARDS: usize = SHARDS;
}

#[cfg(test)]
impl<V: Clone> ShardedMap<V> {
    pub(crate) fn get(&self, key: u64) -> Option<V> {
        lock(self.shard(key)).get(&key).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::hash::BuildHasher;

    #[test]
    fn one_shards_keys_spread_over_the_bucket_index_bits() {
        let hasher = BuildHasherDefault::<KeyHasher>::default();
        let buckets: HashSet<u64> = (0..1024u64)
            .map(|m| hasher.hash_one(m * SHARDS as u64 + 7) & 1023)
            .collect();
        // A random function fills about 63 % of 1024 buckets.
        assert!(
            buckets.len() > 550,
            "only {} of 1024 buckets",
            buckets.len()
        );
    }

    #[test]
    fn values_are_found_by_key_until_removed() {
        let map = ShardedMap::default();
        for k in 0..100u64 {
            map.insert(k, k * 10);
        }
        assert_eq!(map.len(), 100);
        assert_eq!(map.get(42), Some(420));
        assert_eq!(map.remove(42), Some(420));
        assert_eq!(map.get(42), None);
        let mut sum = 0;
        map.for_each(|v| sum += v);
        assert_eq!(sum, (0..100).map(|k| k * 10).sum::<u64>() - 420);
    }
}
