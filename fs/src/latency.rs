//! While the mount is answering requests, ask the kernel to keep idle CPUs out of sleep states
//! (a PM QoS CPU latency request of 0 µs through `/dev/cpu_dma_latency`), and withdraw the
//! request after [`QUIET`] without requests.
//!
//! A walk (`find`, `tar`, `rsync`) is a chain of small requests, one at a time, and each costs two
//! thread wake-ups: the mount's thread for the request, the walker for the reply. Waking a CPU
//! that halted costs far more than the work between (on a virtual machine the vCPU has to be
//! scheduled back in): measured on the 2-vCPU test machine, a cold `find` of the scale-1 corpus
//! (3,926 requests) took 267–338 ms, and 139–156 ms with idle CPUs polling instead. The request
//! is held only while requests flow, so an idle mount costs nothing. It needs root (the device is
//! 0600); elsewhere, or with `--no-latency-hint`, nothing is asked.
//!
//! The same thread hands freed heap memory back to the system while the mount is busy (when
//! much of it lies free) and when it goes quiet ([`trim`]).

use std::fs::File;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long without requests before the request is withdrawn.
const QUIET: Duration = Duration::from_millis(100);

/// While busy, freed memory is handed back at a quiet check when the heaps hold at least this
/// much of it (and always when the mount goes quiet): see [`trim`].
const SLACK: usize = 16 << 20;

/// `PM_QOS_DEFAULT_VALUE`: back to the system's default (no constraint).
const WITHDRAW: i32 = -1;

#[derive(Clone, Default)]
pub struct LatencyHint {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    /// The open device; writes go under this lock, with `active` changed under it too.
    device: Mutex<File>,
    active: AtomicBool,
    woken: Condvar,
    start: Instant,
    /// Milliseconds since `start` at the last request.
    last: AtomicU64,
    /// How many times the request was made (for tests: a count does not depend on when it is read).
    holds: AtomicU64,
}

impl LatencyHint {
    /// Open the device and start the thread that withdraws the request; inactive (every call a
    /// no-op) when the device cannot be opened, as for a user other than root.
    pub fn open() -> LatencyHint {
        let device = match std::fs::OpenOptions::new().write(true).open("/dev/cpu_dma_latency") {
            Ok(f) => f,
            Err(e) => {
                tracing::debug!("no CPU latency hint: /dev/cpu_dma_latency: {e}");
                return LatencyHint::default();
            }
        };
        let inner = Arc::new(Inner {
            device: Mutex::new(device),
            active: AtomicBool::new(false),
            woken: Condvar::new(),
            start: Instant::now(),
            last: AtomicU64::new(0),
            holds: AtomicU64::new(0),
        });
        let watcher = inner.clone();
        match std::thread::Builder::new().name("rewind-fs-latency".into()).spawn(move || watcher.watch()) {
            Ok(_) => LatencyHint { inner: Some(inner) },
            Err(e) => {
                tracing::debug!("no CPU latency hint: {e}");
                LatencyHint::default()
            }
        }
    }

    /// A request arrived: hold the request (if it is not held already) until a quiet spell.
    #[inline]
    pub fn busy(&self) {
        let Some(i) = &self.inner else { return };
        i.last.store(i.now_ms(), Ordering::Relaxed);
        if !i.active.load(Ordering::Relaxed) {
            i.activate();
        }
    }

    /// Whether the request is held now.
    #[cfg(test)]
    fn held(&self) -> bool {
        self.inner.as_ref().is_some_and(|i| i.active.load(Ordering::Relaxed))
    }

    /// How many times the request was made so far.
    #[cfg(test)]
    fn holds(&self) -> u64 {
        self.inner.as_ref().map_or(0, |i| i.holds.load(Ordering::Relaxed))
    }
}

impl Inner {
    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn activate(&self) {
        let mut device = self.device.lock();
        if !self.active.load(Ordering::Relaxed) {
            set(&mut device, 0);
            self.active.store(true, Ordering::Relaxed);
            self.holds.fetch_add(1, Ordering::Relaxed);
            self.woken.notify_one();
        }
    }

    /// Withdraw the request after each quiet spell, for the life of the process.
    fn watch(&self) {
        let mut device = self.device.lock();
        loop {
            while !self.active.load(Ordering::Relaxed) {
                self.woken.wait(&mut device);
            }
            drop(device);
            loop {
                std::thread::sleep(QUIET);
                if free_heap() >= SLACK {
                    trim();
                }
                let idle = self.now_ms().saturating_sub(self.last.load(Ordering::Relaxed));
                if idle >= QUIET.as_millis() as u64 {
                    break;
                }
            }
            device = self.device.lock();
            // A request may have come between the look and the lock: then keep holding.
            let idle = self.now_ms().saturating_sub(self.last.load(Ordering::Relaxed));
            if idle >= QUIET.as_millis() as u64 {
                set(&mut device, WITHDRAW);
                self.active.store(false, Ordering::Relaxed);
                trim();
            }
        }
    }
}

/// Chunks pass through the cache from several threads, and glibc keeps what they free in its
/// heaps, scattered between live allocations: after a `tar` of the scale-1 corpus the mount held
/// 114–142 MiB for a 64 MiB cache. `malloc_trim` returns the free pages inside the heaps too.
/// Every call costs page faults when that memory is used again, so a busy mount trims only when
/// [`SLACK`] or more lies free: right after `compare.sh`'s sequence (a `find`, two reads of a
/// 256 MiB file, a `tar`) it held 91–133 MiB trimming every half second and 91–98 MiB trimming
/// at every check, but the trims at every check cost a cold read of the big file 5% more CPU.
/// Trimming at a check that finds [`SLACK`] free: 92–93 MiB in 8 of 11 runs, 116–125 MiB in the
/// others, and no more CPU than every half second.
fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the system.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Bytes free inside the heaps (not counting what is already handed back).
fn free_heap() -> usize {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallinfo2 only reads the allocator's statistics.
    return unsafe { libc::mallinfo2() }.fordblks;
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    0
}

fn set(device: &mut File, micros: i32) {
    if let Err(e) = device.write_all(&micros.to_ne_bytes()) {
        tracing::debug!("CPU latency hint of {micros}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Held while requests come, withdrawn after a quiet spell, held again on the next request.
    /// Runs as root in CI; elsewhere the hint is inactive and the test checks only that. The
    /// request is counted rather than looked at: a look that comes more than [`QUIET`] after
    /// the request (a busy machine) would find it withdrawn already.
    #[test]
    fn held_while_busy_and_withdrawn_when_quiet() {
        let hint = LatencyHint::open();
        if hint.inner.is_none() {
            assert!(!nix_is_root(), "root can open /dev/cpu_dma_latency");
            hint.busy();
            assert!(!hint.held());
            assert_eq!(hint.holds(), 0);
            return;
        }
        hint.busy();
        assert_eq!(hint.holds(), 1, "held at once");
        // Only a hang is a failure: the withdrawal comes a quiet spell after the request.
        let deadline = Instant::now() + Duration::from_secs(120);
        while hint.held() && Instant::now() < deadline {
            std::thread::sleep(QUIET / 4);
        }
        assert!(!hint.held(), "withdrawn after a quiet spell");
        hint.busy();
        assert_eq!(hint.holds(), 2, "held again on the next request");
    }

    fn nix_is_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }
}
