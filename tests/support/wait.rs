//! Waiting for something another process does (a mount to appear, a snapshot to show): poll the
//! condition until it holds. The limit only turns a hang into a failure: it is far beyond what
//! the event takes on a loaded machine, so no test passes or fails by how fast the machine is.

use std::time::{Duration, Instant};

/// Long enough for anything a test waits on, on a machine running two suites at once.
pub const PATIENCE: Duration = Duration::from_secs(120);

/// Poll `done` every 20 ms until it returns true; panic naming `what` after [`PATIENCE`].
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < PATIENCE, "gave up after {PATIENCE:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
