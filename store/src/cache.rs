//! A byte-bounded LRU of decompressed blobs, shared between threads.

use std::hash::Hash;
use std::sync::{Arc, Mutex};

use lru::LruCache;

pub(crate) struct ByteLru<K: Hash + Eq, V> {
    inner: Mutex<Inner<K, V>>,
    budget: usize,
}

struct Inner<K: Hash + Eq, V> {
    map: LruCache<K, (Arc<V>, usize)>,
    bytes: usize,
}

impl<K: Hash + Eq + Clone, V> ByteLru<K, V> {
    pub fn new(budget: usize) -> Self {
        ByteLru { inner: Mutex::new(Inner { map: LruCache::unbounded(), bytes: 0 }), budget }
    }

    pub fn get(&self, key: &K) -> Option<Arc<V>> {
        self.inner.lock().expect("cache lock").map.get(key).map(|(v, _)| v.clone())
    }

    pub fn insert(&self, key: K, value: Arc<V>, size: usize) {
        if size > self.budget {
            return;
        }
        let mut g = self.inner.lock().expect("cache lock");
        if let Some((_, old)) = g.map.put(key, (value, size)) {
            g.bytes -= old;
        }
        g.bytes += size;
        while g.bytes > self.budget {
            match g.map.pop_lru() {
                Some((_, (_, s))) => g.bytes -= s,
                None => break,
            }
        }
    }

    #[allow(dead_code)]
    pub fn bytes(&self) -> usize {
        self.inner.lock().expect("cache lock").bytes
    }
}
