//! Single flight: callers asking for the same key at once share one computation. The first
//! caller (the lead) computes; the others wait for its value instead of repeating the work. A
//! failed or panicked lead shares nothing: each waiter then computes for itself, so that it
//! answers with its own error. Used for chunk loads (a prefetcher and the reader it runs ahead
//! of often ask for one chunk at once) and the portal's catalog queries (many users opening one
//! page at once).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

/// Computations running now, by key.
pub struct SingleFlight<K, V> {
    running: Mutex<HashMap<K, Arc<Flight<V>>>>,
}

/// One computation and, once it ended, its value (`None`: it failed).
struct Flight<V> {
    result: Mutex<Option<Option<V>>>,
    done: Condvar,
}

/// The right and duty to compute `key`: the value handed to [`Lead::finish`] goes to those who
/// wait; dropped unfinished (an error, a panic), it tells them to compute for themselves.
pub struct Lead<'a, K: Hash + Eq, V> {
    group: &'a SingleFlight<K, V>,
    key: Option<K>,
    flight: Arc<Flight<V>>,
}

impl<K: Hash + Eq + Clone, V: Clone> Default for SingleFlight<K, V> {
    fn default() -> Self {
        SingleFlight { running: Mutex::new(HashMap::new()) }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> SingleFlight<K, V> {
    /// The lead for `key`, or the flight already under way.
    fn join(&self, key: &K) -> Result<Lead<'_, K, V>, Arc<Flight<V>>> {
        let mut running = self.running.lock();
        if let Some(f) = running.get(key) {
            return Err(f.clone());
        }
        let flight = Arc::new(Flight { result: Mutex::new(None), done: Condvar::new() });
        running.insert(key.clone(), flight.clone());
        Ok(Lead { group: self, key: Some(key.clone()), flight })
    }

    /// `f`'s value for `key`, computed by this call or by the one already computing it.
    pub fn run<E>(&self, key: K, f: impl FnOnce() -> Result<V, E>) -> Result<V, E> {
        match self.join(&key) {
            Ok(lead) => lead.compute(f),
            Err(flight) => {
                let mut r = flight.result.lock();
                while r.is_none() {
                    flight.done.wait(&mut r);
                }
                match r.as_ref().and_then(|v| v.clone()) {
                    Some(v) => Ok(v),
                    // It failed: compute for ourselves (not as a lead: others may lead anew).
                    None => {
                        drop(r);
                        f()
                    }
                }
            }
        }
    }

    /// Like [`SingleFlight::run`], but `None` at once if `key` is being computed already: for
    /// work ahead of need (prefetch), which moves on rather than wait.
    pub fn try_run<E>(&self, key: K, f: impl FnOnce() -> Result<V, E>) -> Option<Result<V, E>> {
        self.try_lead(key).map(|lead| lead.compute(f))
    }

    /// The lead for `key` unless it is being computed already.
    pub fn try_lead(&self, key: K) -> Option<Lead<'_, K, V>> {
        self.join(&key).ok()
    }
}

impl<K: Hash + Eq, V> Lead<'_, K, V> {
    fn publish(&mut self, value: Option<V>) {
        if let Some(key) = self.key.take() {
            self.group.running.lock().remove(&key);
            *self.flight.result.lock() = Some(value);
            self.flight.done.notify_all();
        }
    }
}

impl<K: Hash + Eq, V: Clone> Lead<'_, K, V> {
    /// Compute with `f` and share its value (not its error).
    pub fn compute<E>(self, f: impl FnOnce() -> Result<V, E>) -> Result<V, E> {
        let v = f()?;
        self.finish(v.clone());
        Ok(v)
    }

    /// Hand `value` to those waiting.
    pub fn finish(mut self, value: V) {
        self.publish(Some(value));
    }
}

impl<K: Hash + Eq, V> Drop for Lead<'_, K, V> {
    fn drop(&mut self) {
        self.publish(None);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Barrier};

    use super::*;

    #[test]
    fn callers_at_once_share_one_computation_and_errors_are_not_shared() {
        let group: Arc<SingleFlight<u32, u64>> = Arc::default();
        let runs = Arc::new(AtomicUsize::new(0));
        // A lead held open: every caller meanwhile waits for it, none computes.
        let lead = group.try_lead(7).unwrap();
        assert!(group.try_run(7, || Ok::<_, ()>(1)).is_none(), "a prefetch does not wait");
        let start = Arc::new(Barrier::new(5));
        let callers: Vec<_> = (0..4)
            .map(|_| {
                let (group, runs, start) = (group.clone(), runs.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    group.run(7, || {
                        runs.fetch_add(1, Ordering::SeqCst);
                        Ok::<_, ()>(0)
                    })
                })
            })
            .collect();
        start.wait();
        // Until all four wait on the flight (each holds it: with the map and the lead, six).
        while Arc::strong_count(&group.running.lock()[&7]) < 6 {
            std::thread::yield_now();
        }
        lead.finish(42);
        let got: Vec<u64> = callers.into_iter().map(|c| c.join().unwrap().unwrap()).collect();
        assert_eq!(got, [42; 4]);
        assert_eq!(runs.load(Ordering::SeqCst), 0, "nobody computed again");
        // A failed lead shares nothing: the next caller computes; a panicked one likewise.
        assert_eq!(group.run(1, || Err::<u64, &str>("no")), Err("no"));
        let g = group.clone();
        assert!(std::thread::spawn(move || g.run(2, || -> Result<u64, ()> { panic!("a load fails") })).join().is_err());
        assert_eq!(group.run(2, || Ok::<_, ()>(5)), Ok(5));
        assert!(group.running.lock().is_empty());
    }
}
