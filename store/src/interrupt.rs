//! A process-wide request to stop, set by the command line on SIGINT or SIGTERM. Long writers
//! (backup, copy, prune) check it between steps, stop with [`Error::Interrupted`], clean up what
//! they wrote and release their lock.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{Error, Result};

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// Ask every running operation of this process to stop at its next check.
pub fn request() {
    REQUESTED.store(true, Ordering::SeqCst);
}

/// Whether a stop was asked for.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::Relaxed)
}

/// `Err(Interrupted)` once a stop was asked for.
pub(crate) fn check() -> Result<()> {
    if requested() { Err(Error::Interrupted) } else { Ok(()) }
}
