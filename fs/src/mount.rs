//! Mounting: checks on the mountpoint, the FUSE session in the foreground, and a clean unmount on
//! SIGINT, SIGTERM or SIGHUP. `fusermount3 -u` (or `umount`) ends the session the same way.

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use fuser::{Config, MountOption, SessionACL};
use rewind_store::{IndexedRepository, View};

use crate::Error;
use crate::core::Core;
use crate::fuse::RewindFs;

/// How to mount.
#[derive(Clone, Debug)]
pub struct MountOptions {
    /// Let every local user in, with the kernel checking the snapshot's modes, owners and POSIX
    /// ACLs (as the portal's `readable` rule does).
    pub allow_other: bool,
    /// Worker threads for reads (0: a default from the number of CPUs).
    pub workers: usize,
    /// Bytes of chunks to load ahead of a sequential reader.
    pub readahead_bytes: u64,
    /// Ask for idle CPUs to poll rather than sleep while requests flow (see `latency.rs`).
    pub latency_hint: bool,
    /// Called with the signal when a second SIGINT, SIGTERM or SIGHUP comes while the first
    /// one's unmount still waits for open files (the mount is detached already). The binary
    /// exits there; without it, the session ends when the last file is closed.
    pub on_second_signal: Option<fn(i32)>,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            allow_other: false,
            workers: 0,
            readahead_bytes: 16 << 20,
            latency_hint: true,
            on_second_signal: None,
        }
    }
}

/// One mount, as `/proc/self/mountinfo` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    /// `major:minor` of the mounted filesystem.
    pub device: String,
    pub point: PathBuf,
    /// The per-mount options (`ro`, `nosuid`, ...).
    pub options: Vec<String>,
    /// `ext4`, `fuse`, `fuse.NAME`, ...
    pub fs_type: String,
    pub source: Vec<u8>,
}

/// Every mount this process sees, by `/proc/self/mountinfo`.
pub fn mounts() -> io::Result<Vec<MountEntry>> {
    Ok(parse_mountinfo(&std::fs::read("/proc/self/mountinfo")?))
}

/// Whether `path` is a mount point.
pub fn is_mount_point(path: &Path) -> io::Result<bool> {
    Ok(mounts()?.iter().any(|m| m.point == path))
}

/// The lines of a mountinfo file (`proc(5)`): ID, parent ID, `major:minor`, root, mount point,
/// options, optional fields up to `-`, type, source, superblock options; paths and the source
/// with their octal escapes (`\040` for a space) undone. Lines that do not parse are left out.
fn parse_mountinfo(info: &[u8]) -> Vec<MountEntry> {
    let unescape = |field: &[u8]| -> Vec<u8> {
        let mut raw = Vec::with_capacity(field.len());
        let mut i = 0;
        while i < field.len() {
            if field[i] == b'\\' && i + 3 < field.len() && field[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
            {
                raw.push((field[i + 1] - b'0') * 64 + (field[i + 2] - b'0') * 8 + (field[i + 3] - b'0'));
                i += 4;
            } else {
                raw.push(field[i]);
                i += 1;
            }
        }
        raw
    };
    let text = |field: &[u8]| String::from_utf8_lossy(field).into_owned();
    let mut out = Vec::new();
    for line in info.split(|&b| b == b'\n') {
        let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
        let Some(dash) = fields.iter().skip(6).position(|f| *f == b"-").map(|p| p + 6) else { continue };
        let (Some(fs_type), Some(source)) = (fields.get(dash + 1), fields.get(dash + 2)) else { continue };
        out.push(MountEntry {
            device: text(fields[2]),
            point: PathBuf::from(std::ffi::OsStr::from_bytes(&unescape(fields[4]))),
            options: fields[5].split(|&b| b == b',').map(text).collect(),
            fs_type: text(fs_type),
            source: unescape(source),
        });
    }
    out
}

/// Check that `path` can take a mount; returns its canonical form.
pub fn check_mountpoint(path: &Path) -> Result<PathBuf, Error> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(Error::MountpointMissing(path.into())),
        // A dead FUSE mount answers ENOTCONN: it is still mounted.
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => return Err(Error::AlreadyMounted(path.into())),
        Err(e) => return Err(Error::Io { path: path.into(), source: e }),
    };
    if !meta.is_dir() {
        return Err(Error::NotADirectory(path.into()));
    }
    let canonical = path.canonicalize().map_err(|e| Error::Io { path: path.into(), source: e })?;
    if is_mount_point(&canonical).map_err(|e| Error::Io { path: "/proc/self/mountinfo".into(), source: e })? {
        return Err(Error::AlreadyMounted(path.into()));
    }
    let mut entries = std::fs::read_dir(&canonical).map_err(|e| Error::Io { path: path.into(), source: e })?;
    if entries.next().is_some() {
        return Err(Error::NotEmpty(path.into()));
    }
    Ok(canonical)
}

fn signal_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset only write the set we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Mount every snapshot of `repo` read-only at `mountpoint` and serve it until unmounted or
/// signalled. Blocks the calling thread.
pub fn mount(repo: IndexedRepository, mountpoint: &Path, opts: &MountOptions) -> Result<(), Error> {
    if !Path::new("/dev/fuse").exists() {
        return Err(Error::NoFuse);
    }
    let canonical = check_mountpoint(mountpoint)?;
    let repo_location = repo.repo().location();
    let view = Arc::new(View::new(repo)?);

    // Signals are taken by one thread with sigwait; every thread started from here on inherits
    // the blocked mask, so none of them is interrupted.
    let set = signal_set();
    // SAFETY: changes this thread's signal mask only.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };

    let workers = if opts.workers > 0 {
        opts.workers
    } else {
        std::thread::available_parallelism().map_or(4, |n| n.get()).clamp(4, 16)
    };
    let core = Arc::new(Core::new(view, opts.readahead_bytes));
    let latency = if opts.latency_hint { crate::latency::LatencyHint::open() } else { Default::default() };
    let fs = RewindFs::new(core.clone(), workers, latency);
    let fs = if opts.allow_other { fs.with_acls() } else { fs };
    let push = fs.push_slot();
    let end = fs.end_slot();

    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::RO,
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::NoAtime,
        MountOption::FSName(format!("rewind:{repo_location}")),
        MountOption::Subtype("rewind".into()),
    ];
    if opts.allow_other {
        config.acl = SessionACL::All;
        config.mount_options.push(MountOption::DefaultPermissions);
    }
    config.n_threads = Some(2);
    config.clone_fd = true;

    let mut session = fuser::Session::new(fs, &canonical, &config).map_err(|e| match e.raw_os_error() {
        Some(libc::EBUSY) => Error::Busy(mountpoint.into()),
        Some(libc::EPERM) | Some(libc::EACCES) if opts.allow_other => Error::AllowOtherDenied(e),
        _ => Error::Mount { path: mountpoint.into(), source: e },
    })?;
    if let Err(e) = crate::fuse::start_pusher(core.clone(), session.notifier(), &push) {
        tracing::warn!("no page cache pushes: {e}");
    }
    *end.lock().expect("end lock") = Some(forget_the_unmounted(&mut session)?);
    let mut unmounter = session.unmount_callable();
    let target = canonical.clone();
    let on_second_signal = opts.on_second_signal;
    std::thread::Builder::new()
        .name("rewind-fs-signals".into())
        .spawn(move || {
            let mut first = true;
            loop {
                let mut sig = 0;
                // SAFETY: waits on a set of signals blocked in every thread.
                if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                    continue;
                }
                if !first {
                    match on_second_signal {
                        Some(f) => f(sig),
                        None => tracing::warn!("signal {sig}: {} is detached already", target.display()),
                    }
                    continue;
                }
                first = false;
                tracing::info!("signal {sig}: unmounting {}", target.display());
                if let Err(e) = unmounter.unmount() {
                    // Busy (a process has its cwd or a file open inside): detach now, serve the
                    // open files until they are closed, then end.
                    tracing::warn!("cannot unmount {}: {e}; detaching it lazily", target.display());
                    lazy_unmount(&target);
                }
            }
        })
        .map_err(|e| Error::Mount { path: mountpoint.into(), source: e })?;
    tune_readahead(&canonical);
    eprintln!(
        "rewind: mounted at {} (Ctrl-C or `fusermount3 -u {}` to unmount)",
        mountpoint.display(),
        mountpoint.display()
    );
    session.run().map_err(|e| Error::Mount { path: mountpoint.into(), source: e })?;
    tracing::info!(
        "unmounted; {} reads served from cached chunks, {} waited for a chunk to be read, {} files pushed into the page cache, {} lookups",
        core.reads_cached.load(Ordering::Relaxed),
        core.reads_waited.load(Ordering::Relaxed),
        core.files_pushed.load(Ordering::Relaxed),
        core.lookups.load(Ordering::Relaxed)
    );
    Ok(())
}

/// What the session's end does about the mount: unmount it, and say so only if that fails
/// while the mount was still there.
///
/// When the mount is undone from outside (`fusermount3 -u`, `umount`), fuser 0.18 still unmounts
/// the path again as the session ends, fails, and logs a warning each time: its check on the
/// device reads "connection dead" as "still mounted" (fixed upstream in cberner/fuser#703, not
/// released). This ends the mount before fuser's own drop would, and a failure on a device that
/// reports POLLERR (it has lost its mount) is only a debug message.
fn forget_the_unmounted<FS: fuser::Filesystem>(
    session: &mut fuser::Session<FS>,
) -> Result<Box<dyn FnOnce() + Send>, Error> {
    use std::os::fd::AsFd;
    let device = session.as_fd().try_clone_to_owned().map_err(|e| Error::Io { path: "/dev/fuse".into(), source: e })?;
    let mut unmounter = session.unmount_callable();
    Ok(Box::new(move || {
        let mut poll = libc::pollfd { fd: std::os::fd::AsRawFd::as_raw_fd(&device), events: 0, revents: 0 };
        // SAFETY: one valid pollfd, no wait.
        let gone = unsafe { libc::poll(&mut poll, 1, 0) } == 1 && poll.revents & libc::POLLERR != 0;
        match unmounter.unmount() {
            Err(e) if gone => tracing::debug!("already unmounted: {e}"),
            Err(e) => tracing::warn!("cannot unmount at the end: {e}"),
            Ok(()) => {}
        }
    }))
}

fn lazy_unmount(target: &Path) {
    let Ok(c) = std::ffi::CString::new(target.as_os_str().as_bytes()) else { return };
    // SAFETY: a valid NUL-terminated path.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {
        return;
    }
    let _ = std::process::Command::new("fusermount3").arg("-u").arg("-z").arg(target).status();
}

/// The kernel caps a FUSE mount's read-ahead at 128 KiB at mount time; as root, raise it through
/// the mount's backing device so sequential reads arrive as large requests. Best effort.
fn tune_readahead(mountpoint: &Path) {
    let Ok(table) = mounts() else { return };
    for m in table.iter().filter(|m| m.point == mountpoint) {
        let path = format!("/sys/class/bdi/{}/read_ahead_kb", m.device);
        if let Err(e) = std::fs::write(&path, b"1024") {
            tracing::debug!("cannot raise read-ahead through {path}: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_with_escapes_and_optional_fields() {
        let info = b"22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/root rw\n\
                     40 22 0:44 / /tmp/a\\040b ro,nosuid - fuse rewind:/r\\040s rw,user_id=0\n\
                     not a mountinfo line\n";
        let m = parse_mountinfo(info);
        assert_eq!(
            m.iter().map(|m| m.point.clone()).collect::<Vec<_>>(),
            vec![PathBuf::from("/"), PathBuf::from("/tmp/a b")]
        );
        assert_eq!(m[0].fs_type, "ext4");
        assert_eq!(m[1].device, "0:44");
        assert_eq!(m[1].options, vec!["ro", "nosuid"]);
        assert_eq!((m[1].fs_type.as_str(), m[1].source.as_slice()), ("fuse", &b"rewind:/r s"[..]));
    }

    #[test]
    fn mountpoint_checks() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        assert!(matches!(check_mountpoint(&missing), Err(Error::MountpointMissing(_))));
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        assert!(matches!(check_mountpoint(&file), Err(Error::NotADirectory(_))));
        assert!(matches!(check_mountpoint(dir.path()), Err(Error::NotEmpty(_))));
        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        assert_eq!(check_mountpoint(&empty).unwrap(), empty.canonicalize().unwrap());
        assert!(matches!(check_mountpoint(Path::new("/proc")), Err(Error::AlreadyMounted(_))));
    }
}
