//! Throttling of failed logins, per user name and per client address: after `limit` failures
//! within `window`, further attempts are refused (429) until the oldest failure leaves the
//! window. Attempts refused this way never reach a realm.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
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
        let mut m = self.failures.lock().expect("throttle lock");
        let now = Instant::now();
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
        let mut m = self.failures.lock().expect("throttle lock");
        if m.len() > 100_000 {
            let now = Instant::now();
            m.retain(|_, q| q.back().is_some_and(|t| now.duration_since(*t) < self.window));
        }
        let q = m.entry(key.to_string()).or_default();
        q.push_back(Instant::now());
        while q.len() > self.limit {
            q.pop_front();
        }
    }

    pub fn clear(&self, key: &str) {
        self.failures.lock().expect("throttle lock").remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_after_limit_and_frees_after_window() {
        let t = Throttle::new(3, Duration::from_millis(200));
        for _ in 0..2 {
            t.fail("alice");
        }
        assert!(t.check("alice").is_none());
        t.fail("alice");
        assert!(t.check("alice").is_some());
        assert!(t.check("bob").is_none());
        std::thread::sleep(Duration::from_millis(250));
        assert!(t.check("alice").is_none());
    }
}
