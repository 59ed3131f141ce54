//! `rewind mount` with real FUSE mounts: fidelity against the source and against restore,
//! read-only, damage, concurrency, live snapshots, multi-user permissions and the lifecycle.
//! These tests need /dev/fuse and fusermount3 (`.ci/run` installs fuse3); without them they fail.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

on_each_backend!(
    mount_latest_equals_source_and_older_snapshots_equal_restore,
    eight_concurrent_readers_get_their_own_bytes,
    backup_while_mounted_appears,
);

/// Fail loudly when FUSE is not there: these tests must never pass by skipping.
fn require_fuse() {
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing: these tests need FUSE (install fuse3, load the module)"
    );
    let found = Command::new("fusermount3").arg("--version").output();
    assert!(found.is_ok(), "fusermount3 is missing: install fuse3");
}

fn mounted(path: &Path) -> bool {
    rewind_fs::is_mount_point(path).expect("read /proc/self/mountinfo")
}

/// A running `rewind mount`, unmounted (and its process reaped) on drop.
pub(crate) struct Mount {
    child: Option<Child>,
    pub(crate) mnt: PathBuf,
    log: PathBuf,
}

impl Mount {
    pub(crate) fn start(t: &TempRepo, name: &str, extra: &[&str]) -> Mount {
        require_fuse();
        let mnt = t.path(name);
        fs::create_dir_all(&mnt).unwrap();
        let mnt = mnt.canonicalize().unwrap();
        let log = t.path(&format!("{name}.log"));
        let child = t
            .cmd()
            .arg("mount")
            .args(extra)
            .arg(&mnt)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .expect("start rewind mount");
        let mut m = Mount { child: Some(child), mnt, log };
        let started = Instant::now();
        while !mounted(&m.mnt) {
            if let Some(status) = m.child.as_mut().unwrap().try_wait().unwrap() {
                m.child = None;
                panic!("rewind mount exited with {status} before mounting: {}", m.log_text());
            }
            assert!(started.elapsed() < PATIENCE, "not mounted after {PATIENCE:?}: {}", m.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
        m
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// The newest snapshot of `host`'s copy of `src`.
    fn latest(&self, host: &str, src: &Path) -> PathBuf {
        self.mnt.join("hosts").join(host).join("latest").join(src.strip_prefix("/").unwrap())
    }

    /// Wait for the process to end by itself; its exit status.
    fn wait(&mut self) -> ExitStatus {
        let child = self.child.as_mut().expect("still running");
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            assert!(started.elapsed() < PATIENCE, "rewind mount still running after {PATIENCE:?}: {}", self.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `fusermount3 -u`, which must end the process cleanly and quietly; the process's log.
    pub(crate) fn unmount(mut self) -> String {
        let out = Command::new("fusermount3").arg("-u").arg(&self.mnt).output().unwrap();
        assert_success(&out, "fusermount3 -u");
        let status = self.wait();
        let log = self.log_text();
        assert!(status.success(), "rewind mount ended with {status} after fusermount3 -u: {log}");
        assert!(!mounted(&self.mnt));
        let warned = log.lines().find(|l| l.contains("WARN") && l.contains("mount"));
        assert!(warned.is_none(), "an unmount from outside is no reason to warn: {log}");
        log
    }

    fn signal(&self, sig: i32) {
        let pid = self.child.as_ref().expect("running").id() as i32;
        // SAFETY: sends a signal to our own child.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("fusermount3").arg("-u").arg("-z").arg(&self.mnt).output();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Entries a corpus lacks: hard links across directories, symlinks, a fifo, a device, xattrs,
/// odd modes and owners.
fn special_entries(root: &Path) {
    let d = root.join("special");
    fs::create_dir_all(d.join("a/b")).unwrap();
    fs::write(d.join("a/linked"), b"one file, three names").unwrap();
    fs::hard_link(d.join("a/linked"), d.join("a/b/linked-too")).unwrap();
    fs::hard_link(d.join("a/linked"), d.join("linked-three")).unwrap();
    std::os::unix::fs::symlink("a/linked", d.join("rel-link")).unwrap();
    std::os::unix::fs::symlink("/nowhere/at/all", d.join("dangling")).unwrap();
    let c = std::ffi::CString::new(d.join("fifo").as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o640) }, 0);
    if is_root() {
        let c = std::ffi::CString::new(d.join("null").as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid path; creating a device node needs root.
        assert_eq!(unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) }, 0);
        std::os::unix::fs::chown(d.join("a/linked"), Some(1234), Some(5678)).unwrap();
    }
    fs::write(d.join("setuid"), b"#!/bin/sh\n").unwrap();
    fs::set_permissions(d.join("setuid"), fs::Permissions::from_mode(0o4751)).unwrap();
    fs::write(d.join("xattrs"), b"with attributes").unwrap();
    xattr::set(d.join("xattrs"), "user.colour", b"blue").expect("the test filesystem must support user xattrs");
    xattr::set(d.join("xattrs"), "user.empty", b"").unwrap();
    fs::write(d.join("empty"), b"").unwrap();
    fs::write(d.join(OsStr::from_bytes(b"bad-\xff-utf8")), b"odd name").unwrap();
}

fn mount_latest_equals_source_and_older_snapshots_equal_restore(t: TempRepo) {
    let src = t.path("src");
    corpus_make(&src, 0.03);
    special_entries(&src);
    t.backup("fileserver", &[&src]);
    corpus_step(&src, 1);
    t.backup("fileserver", &[&src]);
    corpus_step(&src, 2);
    fs::write(src.join("special/xattrs"), b"changed in the last generation").unwrap();
    t.backup("fileserver", &[&src]);

    let m = Mount::start(&t, "mnt", &[]);
    assert_same_tree(&src, &m.latest("fileserver", &src), &ShapeOptions::default());

    let names: Vec<String> = {
        let mut v: Vec<String> = fs::read_dir(m.path("snapshots"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names.len(), 3, "{names:?}");
    let snaps = t.snapshots();
    assert_eq!(snaps.len(), 3);
    for s in &snaps {
        let id = s["id"].as_str().unwrap();
        let out = t.path(&format!("restored-{}", &id[..8]));
        t.restore(&format!("{}:{}", &id[..8], src.display()), &out);
        // ids/<short id> is the same snapshot as its entry under snapshots/.
        let in_mount = m.path(&format!("ids/{}", &id[..8])).join(src.strip_prefix("/").unwrap());
        assert_same_tree(&out, &in_mount, &ShapeOptions { dir_mtimes: false, ..Default::default() });
    }
    // The hard links are one inode with three links, in the mount as in the source.
    let special = m.latest("fileserver", &src).join("special");
    let a = fs::metadata(special.join("a/linked")).unwrap();
    let b = fs::metadata(special.join("a/b/linked-too")).unwrap();
    let c = fs::metadata(special.join("linked-three")).unwrap();
    assert_eq!((a.ino(), a.nlink()), (b.ino(), 3));
    assert_eq!(a.ino(), c.ino());
    // Inode numbers are unique across the snapshots: the same file in two snapshots differs.
    let log = "users/alice/logs/activity.log";
    let older = m.path(&format!("snapshots/{}", names[0])).join(src.strip_prefix("/").unwrap()).join(log);
    let newer = m.latest("fileserver", &src).join(log);
    assert_ne!(fs::metadata(&older).unwrap().ino(), fs::metadata(&newer).unwrap().ino());
    // statfs answers.
    let out = Command::new("stat").arg("-f").arg("-c").arg("%b %c").arg(&m.mnt).output().unwrap();
    assert_success(&out, "stat -f");
    let nums: Vec<u64> = String::from_utf8_lossy(&out.stdout).split_whitespace().map(|n| n.parse().unwrap()).collect();
    assert!(nums[0] > 0 && nums[1] > 0, "statfs says {nums:?}");
    m.unmount();
}

/// Every directory of the mount reports 2 + its subdirectories as its link count, as ext4 does
/// (`find` trusts it to stop looking for subdirectories), the mount's own directories included.
#[test]
fn directories_link_count_is_two_plus_subdirectories() {
    let t = TempRepo::new();
    let src = t.path("src");
    for d in ["a/b/c", "a/d", "e", "f/g/h/i"] {
        fs::create_dir_all(src.join(d)).unwrap();
    }
    for f in ["a/x", "a/b/y", "e/z", "top"] {
        fs::write(src.join(f), f.as_bytes()).unwrap();
    }
    t.backup("h", &[&src]);
    t.backup("h", &[&src]);
    let m = Mount::start(&t, "mnt", &[]);
    let mut dirs = vec![m.mnt.clone()];
    let mut seen = 0;
    while let Some(dir) = dirs.pop() {
        let mut subdirs = 0;
        for e in fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                subdirs += 1;
                dirs.push(e.path());
            }
        }
        let nlink = fs::symlink_metadata(&dir).unwrap().nlink();
        assert_eq!(nlink, 2 + subdirs, "{}", dir.display());
        seen += 1;
    }
    assert!(seen > 20, "walked {seen} directories");
    let a = m.latest("h", &src).join("a");
    assert_eq!(fs::metadata(&a).unwrap().nlink(), 4, "a holds b and d");
    assert_eq!(fs::metadata(m.path("snapshots")).unwrap().nlink(), 4);
    // `find` counts on it: it finds every directory, leaf optimisation and all.
    let out = Command::new("find").arg(m.latest("h", &src)).args(["-type", "d"]).output().unwrap();
    assert_success(&out, "find");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 10);
    m.unmount();
}

#[test]
fn writes_fail_with_erofs() {
    let t = TempRepo::new();
    let src = t.path("src");
    fs::create_dir_all(src.join("dir")).unwrap();
    fs::write(src.join("file"), b"content").unwrap();
    t.backup("h", &[&src]);
    let m = Mount::start(&t, "mnt", &[]);
    let root = m.latest("h", &src);
    let erofs = |what: &str, r: std::io::Result<()>| {
        let e = r.expect_err(what);
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{what}: {e}");
    };
    erofs("create", fs::write(root.join("new"), b"x"));
    erofs("open for writing", fs::OpenOptions::new().write(true).open(root.join("file")).map(|_| ()));
    erofs("append", fs::OpenOptions::new().append(true).open(root.join("file")).map(|_| ()));
    erofs("mkdir", fs::create_dir(root.join("newdir")));
    erofs("mkdir at the top", fs::create_dir(m.path("mine")));
    erofs("unlink", fs::remove_file(root.join("file")));
    erofs("rmdir", fs::remove_dir(root.join("dir")));
    erofs("rename", fs::rename(root.join("file"), root.join("moved")));
    erofs("link", fs::hard_link(root.join("file"), root.join("hard")));
    erofs("symlink", std::os::unix::fs::symlink("file", root.join("sym")));
    erofs("chmod", fs::set_permissions(root.join("file"), fs::Permissions::from_mode(0o777)));
    erofs("setxattr", xattr::set(root.join("file"), "user.x", b"y"));
    let c = std::ffi::CString::new(root.join("file").as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid path.
    let r = unsafe { libc::truncate(c.as_ptr(), 0) };
    erofs("truncate", if r == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) });
    let out = Command::new("touch").arg(root.join("file")).output().unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("Read-only"));
    // Nothing changed.
    assert_eq!(fs::read(root.join("file")).unwrap(), b"content");
    m.unmount();
}

#[test]
fn damaged_chunk_gives_eio_on_exactly_that_file() {
    let t = TempRepo::new();
    let src = t.path("src");
    fs::create_dir_all(&src).unwrap();
    for i in 0..6u64 {
        // f3, the one damaged, is longer than the chunker's 4 MiB maximum: several chunks
        // whatever the repository's random gear table (2.5 MB could be one, rarely).
        let len = if i == 3 { (4 << 20) + 500_000 } else { 2_500_000 + 1000 * i as usize };
        fs::write(src.join(format!("f{i}")), pseudo_random(len, 100 + i)).unwrap();
    }
    t.backup("h", &[&src]);

    // Find the first chunk of f3 in its pack and flip a byte in the middle of it.
    let repo = t.open();
    let indexed = repo.open_indexed(rewind_store::CacheSizes::default()).unwrap();
    let snap = repo.find_snapshot("latest", None).unwrap();
    let victim = src.join("f3");
    let node = indexed.node_at(&snap.snapshot, victim.as_os_str().as_bytes()).unwrap();
    damage_chunk(&t, &indexed, node.content[0]);

    let m = Mount::start(&t, "mnt", &[]);
    let root = m.latest("h", &src);
    for round in 0..2 {
        for i in 0..6 {
            let name = format!("f{i}");
            let got = fs::read(root.join(&name));
            if i == 3 {
                let e = got.expect_err("the damaged file must not read");
                assert_eq!(e.raw_os_error(), Some(libc::EIO), "round {round}: {e}");
            } else {
                assert_eq!(got.unwrap(), fs::read(src.join(&name)).unwrap(), "round {round}: {name}");
            }
        }
    }
    // Bytes of f3 outside the damaged chunk still read.
    let f = fs::File::open(root.join("f3")).unwrap();
    let mut buf = vec![0u8; 16];
    use std::os::unix::fs::FileExt;
    let tail = fs::metadata(src.join("f3")).unwrap().len() - 16;
    assert!(node.content.len() > 1, "the test wants the damaged file in several chunks");
    f.read_exact_at(&mut buf, tail).unwrap();
    assert_eq!(buf, fs::read(src.join("f3")).unwrap()[tail as usize..]);
    drop(f);
    let log = m.log_text();
    let mentions = log.lines().filter(|l| l.contains(&*victim.to_string_lossy())).count();
    assert_eq!(mentions, 1, "the damage is logged once, with the path: {log}");
    assert!(log.contains(&snap.id.short()), "the log names the snapshot: {log}");
    m.unmount();
}

fn eight_concurrent_readers_get_their_own_bytes(t: TempRepo) {
    let src = t.path("src");
    fs::create_dir_all(&src).unwrap();
    let mut want = Vec::new();
    for i in 0..8u64 {
        let data = pseudo_random(3_000_000 + 77_777 * i as usize, 7 + i);
        fs::write(src.join(format!("f{i}")), &data).unwrap();
        want.push(blake3::hash(&data));
    }
    t.backup("h", &[&src]);
    // A small cache, so the readers evict each other's chunks.
    let m = Mount::start(&t, "mnt", &["--cache-size", "4M"]);
    let root = m.latest("h", &src);
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let path = root.join(format!("f{i}"));
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                let mut f = fs::File::open(&path).unwrap();
                let mut h = blake3::Hasher::new();
                let mut buf = vec![0u8; 65536 + i * 4099];
                loop {
                    let n = f.read(&mut buf).unwrap();
                    if n == 0 {
                        break;
                    }
                    h.update(&buf[..n]);
                }
                h.finalize()
            })
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(h.join().unwrap(), want[i], "f{i}");
    }
    m.unmount();
}

fn backup_while_mounted_appears(t: TempRepo) {
    let src = t.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("file"), b"first").unwrap();
    t.backup("h", &[&src]);
    let m = Mount::start(&t, "mnt", &[]);
    let count = || fs::read_dir(m.path("hosts/h")).unwrap().count();
    assert_eq!(count(), 2, "one snapshot and latest");
    assert_eq!(fs::read(m.latest("h", &src).join("file")).unwrap(), b"first");
    // Snapshot names have one-second resolution; make sure the next one differs.
    std::thread::sleep(Duration::from_millis(1100));
    fs::write(src.join("file"), b"second").unwrap();
    t.backup("h", &[&src]);
    t.backup("other-host", &[&src]);
    wait_until("the new snapshot to appear in hosts/h", || count() >= 3);
    let latest_target = fs::read_link(m.path("hosts/h/latest")).unwrap();
    let newest = fs::read_dir(m.path("hosts/h"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != "latest")
        .max()
        .unwrap();
    assert_eq!(latest_target.as_os_str(), newest.as_os_str());
    wait_until("latest to show the new content", || fs::read(m.latest("h", &src).join("file")).unwrap() == b"second");
    assert!(m.path("hosts/other-host/latest").join(src.strip_prefix("/").unwrap()).join("file").exists());
    // A snapshot forgotten while mounted leaves every listing of it, though the newest stays:
    // the kernel caches listings, so the directories' times must move on this change too.
    let snapshots = || fs::read_dir(m.path("snapshots")).unwrap().count();
    assert_eq!(snapshots(), 3);
    t.ok(&["forget", "--host", "h", "--keep-last", "1"]);
    wait_until("the forgotten snapshot to leave every listing", || count() == 2 && snapshots() == 2);
    m.unmount();
}

/// Run `cat PATH` as user `nobody`.
fn cat_as_nobody(path: &Path) -> std::process::Output {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--", "cat"])
        .arg(path)
        .output()
        .expect("setpriv (util-linux) must be installed")
}

#[test]
fn allow_other_enforces_the_backed_up_permissions() {
    assert!(is_root(), "this test switches users with setpriv and must run as root");
    let t = TempRepo::new();
    // The temporary directory must be traversable by another user to reach the mountpoint.
    fs::set_permissions(t.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let src = t.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::set_permissions(&src, fs::Permissions::from_mode(0o755)).unwrap();
    for (name, uid, mode) in [("roots-secret", 0, 0o600), ("nobodys-own", 65534, 0o600), ("public", 0, 0o644)] {
        fs::write(src.join(name), name.as_bytes()).unwrap();
        std::os::unix::fs::chown(src.join(name), Some(uid), Some(uid)).unwrap();
        fs::set_permissions(src.join(name), fs::Permissions::from_mode(mode)).unwrap();
    }
    t.backup("h", &[&src]);

    // Without --allow-other, other users cannot enter the mount at all.
    let m = Mount::start(&t, "private", &[]);
    let out = cat_as_nobody(&m.latest("h", &src).join("public"));
    assert!(!out.status.success(), "nobody read a mount without --allow-other");
    m.unmount();

    let m = Mount::start(&t, "shared", &["--allow-other"]);
    let root = m.latest("h", &src);
    let out = cat_as_nobody(&root.join("roots-secret"));
    assert!(!out.status.success(), "nobody read root's 0600 file");
    assert!(String::from_utf8_lossy(&out.stderr).contains("Permission denied"), "{out:?}");
    let out = cat_as_nobody(&root.join("nobodys-own"));
    assert_success(&out, "nobody reads its own 0600 file");
    assert_eq!(out.stdout, b"nobodys-own");
    let out = cat_as_nobody(&root.join("public"));
    assert_success(&out, "nobody reads a 0644 file");
    // Root still reads everything.
    assert_eq!(fs::read(root.join("roots-secret")).unwrap(), b"roots-secret");
    m.unmount();
}

/// The mount with `--allow-other` and the portal's `readable` rule agree, user by user, on a
/// share whose access is decided by POSIX ACLs as well as mode bits: the kernel enforces the
/// snapshot's ACLs in the mount (FUSE_POSIX_ACL with default_permissions).
#[test]
fn allow_other_and_the_portal_agree_on_acls() {
    use crate::support::access::{PEOPLE, SHARE_FILES, make_share, people_realm, portal_shows, readable_as};
    use crate::support::portal::{Portal, enc, login};
    assert!(is_root(), "this test switches users with setpriv and must run as root");
    let t = TempRepo::new();
    fs::set_permissions(t.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let share = t.path("share");
    make_share(&share);
    t.backup("nas", &[&share]);
    let m = Mount::start(&t, "shared", &["--allow-other"]);
    let in_mount = m.latest("nas", &share);
    let realm_dir = tempfile::tempdir().unwrap();
    let portal = Portal::start(&t.repo, &people_realm(realm_dir.path()), "[authz]\nrules = [\"readable\"]\n", "");
    let relative = |set: BTreeSet<String>, root: &Path| -> BTreeSet<String> {
        let root = format!("{}/", root.display());
        set.into_iter().map(|p| p.strip_prefix(&root).unwrap_or_else(|| panic!("{p} outside {root}")).into()).collect()
    };
    for (name, uid, gids) in PEOPLE {
        let mount = relative(readable_as(uid, gids, &in_mount), &in_mount);
        let c = login(&portal.addr, name, "pw");
        let snap = c.get("/api/snapshots").json()["items"][0]["id"].as_str().unwrap().to_string();
        let shown = relative(portal_shows(&c, &snap, &share), &share);
        assert_eq!(mount, shown, "{name}: mount vs portal");
        assert_eq!(mount, relative(readable_as(uid, gids, &share), &share), "{name}: mount vs source");
        // Reading each file: the mount's bytes as the user, the portal's download.
        let groups: Vec<String> = gids.iter().map(|g| g.to_string()).collect();
        for rel in SHARE_FILES {
            let cat = Command::new("setpriv")
                .args([&format!("--reuid={uid}"), &format!("--regid={}", gids[0])])
                .arg(format!("--groups={}", groups.join(",")))
                .args(["--", "cat"])
                .arg(in_mount.join(rel))
                .output()
                .unwrap();
            let path = share.join(rel);
            let download = c.get(&format!("/api/download?snapshot={snap}&path={}", enc(&path.to_string_lossy())));
            assert_eq!(cat.status.success(), download.status == 200, "{name}: {rel}: {cat:?}");
            if cat.status.success() {
                assert_eq!(cat.stdout, rel.as_bytes(), "{name}: {rel}");
            }
        }
    }
    m.unmount();
}

#[test]
fn signals_unmount_cleanly() {
    let t = TempRepo::new();
    let src = t.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("file"), b"x").unwrap();
    t.backup("h", &[&src]);
    for (sig, name) in [(libc::SIGTERM, "term"), (libc::SIGINT, "int")] {
        let mut m = Mount::start(&t, name, &[]);
        assert_eq!(fs::read(m.latest("h", &src).join("file")).unwrap(), b"x");
        m.signal(sig);
        let status = m.wait();
        assert!(status.success(), "signal {sig}: exit {status}: {}", m.log_text());
        assert!(!mounted(&m.mnt), "signal {sig} left the mount behind");
        assert_eq!(fs::read_dir(&m.mnt).unwrap().count(), 0, "the mountpoint is a plain empty directory again");
    }
    // A process inside the mount keeps it busy: the signal detaches it at once and the
    // process ends when the mount is no longer used. `cat` holds the mount (its working
    // directory) until the test closes its input, whatever the time that takes.
    let mut m = Mount::start(&t, "busy", &[]);
    let mut inside = Command::new("cat").current_dir(m.latest("h", &src)).stdin(Stdio::piped()).spawn().unwrap();
    m.signal(libc::SIGTERM);
    wait_until("the busy mount to be detached", || !mounted(&m.mnt));
    let running = m.child.as_mut().unwrap().try_wait().unwrap();
    assert!(running.is_none(), "rewind mount ended ({running:?}) while the mount was still in use: {}", m.log_text());
    drop(inside.stdin.take());
    inside.wait().unwrap();
    let status = m.wait();
    assert!(status.success(), "exit {status}: {}", m.log_text());
}

#[test]
fn bad_mountpoints_get_clear_errors() {
    require_fuse();
    let t = TempRepo::new();
    let src = t.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("file"), b"x").unwrap();
    t.backup("h", &[&src]);
    let fails = |mnt: &Path, expect: &str| {
        let out = t.run(&[OsStr::new("mount"), mnt.as_os_str()]);
        assert!(!out.status.success(), "mount at {} succeeded", mnt.display());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expect), "expected {expect:?} in: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    };
    fails(&t.path("missing"), "does not exist");
    fails(&src.join("file"), "not a directory");
    fails(&src, "not empty");
    let m = Mount::start(&t, "mnt", &[]);
    fails(&m.mnt, "already a mount point");
    // The first mount is unharmed.
    assert_eq!(fs::read(m.latest("h", &src).join("file")).unwrap(), b"x");
    m.unmount();
    let out = t.run(&["mount", "--cache-size", "lots", "x"]);
    assert!(!out.status.success());
}

/// A walk that looks at every entry of a large directory (as `tar`, `rsync` or `ls -l` do) gets
/// every entry's attributes with the listing: the kernel sends no lookup per entry.
#[test]
fn listings_of_large_directories_carry_every_entrys_attributes() {
    let t = TempRepo::new();
    let src = t.path("src");
    let big = src.join("photos");
    fs::create_dir_all(&big).unwrap();
    // About 170 bytes an entry with its attributes: 7,000 entries take more than one listing
    // batch, which holds at most 1 MiB (what the mount lets the kernel ask for).
    for i in 0..7000 {
        fs::write(big.join(format!("IMG_{i:05}.jpg")), i.to_string()).unwrap();
    }
    t.backup("h", &[&src]);
    let m = Mount::start(&t, "mnt", &[]);
    // As `tar` does: read the whole listing, then look at each entry.
    let listed: Vec<_> = fs::read_dir(m.latest("h", &src).join("photos")).unwrap().map(|e| e.unwrap()).collect();
    assert_eq!(listed.len(), 7000);
    for e in listed {
        let meta = fs::symlink_metadata(e.path()).unwrap();
        let name = e.file_name();
        let i: usize = name.to_str().unwrap()[4..9].parse().unwrap();
        assert_eq!(meta.len(), i.to_string().len() as u64, "{name:?}");
    }
    let log = m.unmount();
    let lookups: u64 = log
        .lines()
        .find_map(|l| l.split("files pushed into the page cache, ").nth(1))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no lookup count in the unmount log: {log}"));
    // The path down to the directory takes a few; one per entry would be 7,000.
    assert!(lookups < 50, "{lookups} lookups for a walk of 7,000 listed entries: {log}");
}

/// A walk that reads a tree the kernel has listed (a `find`, then a `tar`) finds the small files
/// in the page cache already, also when each sits alone in its folder (as translations do:
/// `locale/<language>/LC_MESSAGES/django.mo`): the files stored ahead of the walk are the ones it
/// reads next, in the folders that follow too, not only in the folder of the file it opened.
#[test]
fn walks_find_small_files_of_the_following_folders_in_the_page_cache() {
    let t = TempRepo::new();
    let src = t.path("src");
    let text = |i: usize| format!("file {i}\n").repeat(40);
    for i in 0..300 {
        let d = src.join(format!("d{i:03}"));
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("f"), text(i)).unwrap();
    }
    t.backup("h", &[&src]);
    let m = Mount::start(&t, "mnt", &[]);
    let root = m.latest("h", &src);
    // As `find` does: list every folder, so the kernel knows every file.
    let mut dirs: Vec<PathBuf> = fs::read_dir(&root).unwrap().map(|e| e.unwrap().path()).collect();
    dirs.sort();
    for d in &dirs {
        assert_eq!(fs::read_dir(d).unwrap().count(), 1);
    }
    // As `tar` does: read the files in the walk's order.
    for (i, d) in dirs.iter().enumerate() {
        assert_eq!(fs::read_to_string(d.join("f")).unwrap(), text(i), "{}", d.display());
    }
    let log = m.unmount();
    let pushed: u64 = log
        .lines()
        .find_map(|l| l.split(" files pushed into the page cache").next().filter(|p| p.len() < l.len()))
        .and_then(|p| p.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no push count in the unmount log: {log}"));
    // Each file read from the mount, rather than from the page cache, has the next ones pushed:
    // all but the first would be, whatever the timing; pushing from the folder of the file read
    // alone pushes none here.
    assert!(pushed >= 200, "{pushed} of 300 small files pushed into the page cache: {log}");
}

/// Mounting reads the index and the snapshot manifests, nothing else, so a mount is ready at once
/// whatever the size of the repository: with the packs out of reach it still comes up and lists
/// every snapshot and host.
#[test]
fn mount_is_ready_at_once_with_many_snapshots() {
    let t = TempRepo::new();
    let src = t.path("src");
    fs::create_dir_all(&src).unwrap();
    for i in 0..30 {
        fs::write(src.join(format!("f{i}")), format!("generation {i}")).unwrap();
        t.backup(&format!("host{}", i % 3), &[&src]);
    }
    let away = t.path("data-away");
    fs::rename(t.repo.join("data"), &away).unwrap();
    let m = Mount::start(&t, "mnt", &[]);
    assert_eq!(fs::read_dir(m.path("snapshots")).unwrap().count(), 30);
    assert_eq!(fs::read_dir(m.path("hosts")).unwrap().count(), 3);
    for h in 0..3 {
        assert_eq!(fs::read_dir(m.path(&format!("hosts/host{h}"))).unwrap().count(), 11, "ten snapshots and latest");
    }
    fs::rename(&away, t.repo.join("data")).unwrap();
    assert_eq!(fs::read(m.latest("host2", &src).join("f29")).unwrap(), b"generation 29");
    // The kernel sees a read-only FUSE mount of the repository.
    let entry = rewind_fs::mounts().unwrap().into_iter().find(|e| e.point == m.mnt).expect("in mountinfo");
    assert!(entry.fs_type.starts_with("fuse") && entry.source.starts_with(b"rewind:"), "{entry:?}");
    assert!(entry.options.iter().any(|o| o == "ro"), "{entry:?}");
    m.unmount();
}
