//! A bounded map whose entries expire a fixed time after insertion, for the in-memory state a flood could grow:
//! the `/.well-known/atproto-did` lookup cache and the NIP-98 replay memory.
//!
//! Every entry lives the same `ttl`, so insertion order is expiry order: a FIFO queue next to the map finds both the
//! expired entries and, when the map is full, the oldest one, in O(1) per eviction. At most `capacity` entries are
//! kept (`capacity` 0 keeps nothing). A queue entry whose key was re-inserted later is recognised by its instant and
//! skipped. Owns bounding and expiry only; callers decide what a miss or an eviction means.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// See the module docs.
#[derive(Debug)]
pub struct TtlCache<V> {
    ttl: Duration,
    capacity: usize,
    map: HashMap<String, (V, Instant)>,
    order: VecDeque<(String, Instant)>,
}

impl<V> TtlCache<V> {
    pub fn new(ttl: Duration, capacity: usize) -> TtlCache<V> {
        TtlCache {
            ttl,
            capacity,
            map: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// The live value of `key`, if any.
    pub fn get(&self, key: &str) -> Option<&V> {
        self.map
            .get(key)
            .filter(|(_, at)| at.elapsed() < self.ttl)
            .map(|(v, _)| v)
    }

    /// Entries held (expired ones not yet evicted included).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Removes the front queue entry and its map entry when the map still holds that insertion.
    fn pop_front(&mut self) {
        if let Some((key, at)) = self.order.pop_front() {
            if self.map.get(&key).is_some_and(|(_, t)| *t == at) {
                self.map.remove(&key);
            }
        }
    }

    /// Inserts `key` (replacing an older value), first evicting expired entries and, when full, the oldest ones.
    pub fn insert(&mut self, key: String, value: V) {
        if self.capacity == 0 || self.ttl.is_zero() {
            return;
        }
        while self.order.front().is_some_and(|(_, at)| at.elapsed() >= self.ttl) {
            self.pop_front();
        }
        while self.map.len() >= self.capacity && !self.map.contains_key(&key) && !self.order.is_empty() {
            self.pop_front();
        }
        // Stale queue entries of re-inserted keys are bounded by the map size: compact when they dominate.
        if self.order.len() > 2 * self.capacity {
            let map = &self.map;
            self.order.retain(|(k, at)| map.get(k).is_some_and(|(_, t)| t == at));
        }
        let now = Instant::now();
        self.map.insert(key.clone(), (value, now));
        self.order.push_back((key, now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_evicting_the_oldest_and_expiring() {
        let mut c = TtlCache::new(Duration::from_secs(60), 3);
        for k in ["a", "b", "c", "d"] {
            c.insert(k.to_string(), k.len());
        }
        assert_eq!(c.len(), 3, "never above capacity");
        assert!(c.get("a").is_none(), "oldest evicted");
        assert!(c.get("d").is_some() && c.get("b").is_some());
        // Re-inserting a key does not count twice nor evict it.
        for _ in 0..10 {
            c.insert("d".to_string(), 9);
        }
        assert_eq!(c.len(), 3);
        assert_eq!(c.get("d"), Some(&9));
        assert!(c.order.len() <= 2 * 3 + 1, "queue stays bounded: {}", c.order.len());

        let mut short = TtlCache::new(Duration::from_millis(20), 100);
        short.insert("x".to_string(), ());
        assert!(short.get("x").is_some());
        std::thread::sleep(Duration::from_millis(30));
        assert!(short.get("x").is_none(), "expired");
        short.insert("y".to_string(), ());
        assert_eq!(short.len(), 1, "expired entries evicted on insert");

        let mut off = TtlCache::new(Duration::from_secs(60), 0);
        off.insert("x".to_string(), ());
        assert!(off.is_empty(), "capacity 0 keeps nothing");
    }
}
