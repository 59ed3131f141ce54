//! SIGINT and SIGTERM for the commands that write to a repository (backup, copy, prune): the
//! first asks the running operation to stop at its next safe point (it removes what it wrote
//! and its lock, and the command exits with 130 or 143); a second one exits at once (the
//! repository stays valid, as after a crash; `rewind unlock` removes the lock left behind).

use std::process::ExitCode;
use std::sync::atomic::{AtomicI32, Ordering};

static SIGNAL: AtomicI32 = AtomicI32::new(0);

fn signal_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialize and fill a sigset_t we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGINT, libc::SIGTERM] {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Take SIGINT and SIGTERM over for this process. Call before starting other threads: they
/// inherit the blocked mask, and one thread of ours waits for the signals.
pub fn handle_interrupts() {
    let set = signal_set();
    // SAFETY: changes this thread's signal mask only.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    let spawned = std::thread::Builder::new().name("rewind-signals".into()).spawn(move || {
        loop {
            let mut sig: libc::c_int = 0;
            // SAFETY: waits on a set of signals blocked in every thread.
            if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                return;
            }
            if SIGNAL.swap(sig, Ordering::SeqCst) != 0 {
                eprintln!("rewind: second signal: exiting now");
                #[allow(clippy::exit)]
                std::process::exit(128 + sig);
            }
            eprintln!("rewind: {}: stopping and cleaning up (again to exit at once)", name(sig));
            rewind_store::interrupt::request();
        }
    });
    if let Err(e) = spawned {
        tracing::warn!("cannot watch for signals: {e}");
    }
}

fn name(sig: i32) -> &'static str {
    if sig == libc::SIGINT { "interrupted (SIGINT)" } else { "terminated (SIGTERM)" }
}

/// The exit status of a command that stopped because of a signal: 128 + its number.
pub fn interrupted_exit(e: &anyhow::Error) -> Option<ExitCode> {
    let stopped =
        e.chain().any(|c| matches!(c.downcast_ref::<rewind_store::Error>(), Some(rewind_store::Error::Interrupted)));
    let sig = SIGNAL.load(Ordering::SeqCst);
    (stopped && sig != 0).then(|| ExitCode::from((128 + sig) as u8))
}
