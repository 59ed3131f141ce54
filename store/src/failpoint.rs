//! Named points in the protocols of backup, prune and copy where the fault tests stop, slow or
//! kill a process, to force interleavings that timing alone would rarely produce. Compiled in only
//! with the `failpoints` feature (the test builds enable it through a dev-dependency); without it
//! [`hit`] is an empty inline function.
//!
//! `REWIND_FAILPOINTS="name=action;name=action"`, actions:
//! - `sleep(MS)`: sleep that long;
//! - `pause`: create `$REWIND_FAILPOINT_DIR/<name>.hit`, then wait until `<name>.go` exists;
//! - `kill`: SIGKILL this process (a crash at exactly this point);
//! - `error`: make the step fail with an I/O error (ENOSPC), as a full disk would.
//!
//! A name may carry `@N` to act on the Nth hit only (1-based), e.g. `pack-written@3=kill`.

use crate::error::Result;

#[cfg(feature = "failpoints")]
mod imp {
    use std::collections::HashMap;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Mutex, OnceLock};
    use std::time::Duration;

    use crate::error::{Error, Result};

    struct Point {
        nth: Option<u64>,
        action: String,
        hits: AtomicU64,
    }

    fn points() -> &'static HashMap<String, Point> {
        static POINTS: OnceLock<HashMap<String, Point>> = OnceLock::new();
        POINTS.get_or_init(|| {
            let spec = std::env::var("REWIND_FAILPOINTS").unwrap_or_default();
            spec.split(';')
                .filter_map(|item| item.split_once('='))
                .map(|(name, action)| {
                    let (name, nth) = match name.split_once('@') {
                        Some((n, k)) => (n, k.parse().ok()),
                        None => (name, None),
                    };
                    (name.trim().to_string(), Point { nth, action: action.trim().to_string(), hits: AtomicU64::new(0) })
                })
                .collect()
        })
    }

    static PAUSED: Mutex<()> = Mutex::new(());

    pub fn hit(name: &str) -> Result<()> {
        let Some(p) = points().get(name) else { return Ok(()) };
        let n = p.hits.fetch_add(1, Ordering::SeqCst) + 1;
        if p.nth.is_some_and(|k| k != n) {
            return Ok(());
        }
        let action = p.action.as_str();
        if let Some(ms) = action.strip_prefix("sleep(").and_then(|s| s.strip_suffix(')')) {
            std::thread::sleep(Duration::from_millis(ms.parse().unwrap_or(0)));
        } else if action == "pause" {
            // One paused thread at a time: the others wait behind it, as the step would.
            let _g = PAUSED.lock().unwrap_or_else(|e| e.into_inner());
            let dir = PathBuf::from(std::env::var_os("REWIND_FAILPOINT_DIR").unwrap_or_else(|| ".".into()));
            let _ = std::fs::write(dir.join(format!("{name}.hit")), std::process::id().to_string());
            while !dir.join(format!("{name}.go")).exists() {
                std::thread::sleep(Duration::from_millis(10));
            }
        } else if action == "kill" {
            // SAFETY: kill of our own process.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        } else if action == "error" {
            return Err(Error::io(format!("failpoint {name}"), std::io::Error::from_raw_os_error(libc::ENOSPC)));
        }
        Ok(())
    }
}

/// A named point; see the module docs. Returns an error only for the `error` action.
#[cfg(feature = "failpoints")]
pub(crate) fn hit(name: &str) -> Result<()> {
    imp::hit(name)
}

#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub(crate) fn hit(_name: &str) -> Result<()> {
    Ok(())
}
