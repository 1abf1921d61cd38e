//! A small bounded cache with a time to live, for answers that are cheap to keep and
//! costly to ask again (API-key lookups, subscribe-proxy verdicts).
//!
//! When full it first drops expired entries and then, if still full, declines new
//! entries: nobody can flush what is cached by filling it with junk, and memory stays
//! bounded.

use std::{
    hash::Hash,
    time::{Duration, Instant},
};

use dashmap::DashMap;

/// Bounded map of `K → V` whose entries expire `ttl` after insertion.
pub struct TtlCache<K: Eq + Hash, V> {
    /// Entries with their insertion time.
    map: DashMap<K, (V, Instant)>,
    /// How long an entry is trusted.
    ttl: Duration,
    /// Most entries held.
    cap: usize,
}

impl<K: Eq + Hash, V: Clone> TtlCache<K, V> {
    /// An empty cache.
    pub fn new(ttl: Duration, cap: usize) -> Self {
        TtlCache { map: DashMap::new(), ttl, cap }
    }

    /// The value for `k`, if present and fresh.
    pub fn get(&self, k: &K) -> Option<V> {
        self.map.get(k).filter(|e| e.1.elapsed() < self.ttl).map(|e| e.0.clone())
    }

    /// Stores `v` for `k` unless the cache is full of fresh entries.
    pub fn insert(&self, k: K, v: V) {
        if self.map.len() >= self.cap {
            self.map.retain(|_, e| e.1.elapsed() < self.ttl);
            if self.map.len() >= self.cap {
                return;
            }
        }
        self.map.insert(k, (v, Instant::now()));
    }

    /// Forgets everything (after a revocation).
    pub fn clear(&self) {
        self.map.clear();
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_cache_keeps_its_entries_and_declines_new_ones() {
        let c = TtlCache::new(Duration::from_secs(60), 2);
        c.insert(1, "a");
        c.insert(2, "b");
        c.insert(3, "c");
        assert_eq!((c.get(&1), c.get(&2), c.get(&3)), (Some("a"), Some("b"), None));
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn expired_entries_make_room() {
        let c = TtlCache::new(Duration::from_millis(1), 1);
        c.insert(1, "a");
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(c.get(&1), None);
        c.insert(2, "b");
        assert_eq!(c.get(&2), Some("b"));
    }
}
