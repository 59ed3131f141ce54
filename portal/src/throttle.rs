//! Throttling of failed logins, per user name and per client address: after `limit` failures
//! within `window`, further attempts are refused (429) until the oldest failure leaves the
//! window. Attempts refused this way never reach a realm.

use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

pub struct Throttle {
    limit: usize,
    window: Duration,
    failures: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl Throttle {
    pub fn new(limit: u32, window: Duration) -> Throttle {
        Throttle { limit: limit.max(1) as usize, window, failures: Mutex::new(HashMap::new()) }
    }

    /// `Some(seconds to wait)` if `key` is locked out now.
    pub fn check(&self, key: &str) -> Option<u64> {
        self.check_at(key, Instant::now())
    }

    fn check_at(&self, key: &str, now: Instant) -> Option<u64> {
        let mut m = self.failures.lock();
        let q = m.get_mut(key)?;
        while q.front().is_some_and(|t| now.duration_since(*t) >= self.window) {
            q.pop_front();
        }
        if q.len() >= self.limit {
            let oldest = *q.front().expect("not empty");
            return Some((self.window - now.duration_since(oldest)).as_secs().max(1));
        }
        None
    }

    pub fn fail(&self, key: &str) {
        self.fail_at(key, Instant::now())
    }

    fn fail_at(&self, key: &str, now: Instant) {
        let mut m = self.failures.lock();
        if m.len() > 100_000 {
            m.retain(|_, q| q.back().is_some_and(|t| now.duration_since(*t) < self.window));
        }
        let q = m.entry(key.to_string()).or_default();
        q.push_back(now);
        while q.len() > self.limit {
            q.pop_front();
        }
    }

    pub fn clear(&self, key: &str) {
        self.failures.lock().remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a clock of its own: a test that slept through a real window would depend on the
    /// machine answering within it.
    #[test]
    fn locks_after_limit_and_frees_after_window() {
        let t = Throttle::new(3, Duration::from_secs(60));
        let start = Instant::now();
        let at = |secs: u64| start + Duration::from_secs(secs);
        t.fail_at("alice", at(0));
        t.fail_at("alice", at(10));
        assert!(t.check_at("alice", at(10)).is_none());
        t.fail_at("alice", at(20));
        assert_eq!(t.check_at("alice", at(20)), Some(40), "until the first failure is a minute old");
        assert!(t.check_at("bob", at(20)).is_none());
        assert_eq!(t.check_at("alice", at(59)), Some(1));
        assert!(t.check_at("alice", at(60)).is_none(), "the first failure left the window");
        t.fail_at("alice", at(61));
        assert_eq!(t.check_at("alice", at(61)), Some(9), "three failures within a minute again");
    }
}
