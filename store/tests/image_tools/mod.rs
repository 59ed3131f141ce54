//! Helpers of `images.rs`: a source tree with every kind of entry, disk images built from it with
//! the real tools (mkfs.ext4, mkfs.vfat + mcopy, mkntfs + ntfs-3g, sgdisk, sfdisk, qemu-img), and
//! the check that every file inside an image equals its source. A missing tool fails the test
//! with the package to install; nothing is skipped.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rewind_store::image::{FileReadAt, FileSystem, FsKind, Kind, ReadAt};

/// Where each tool comes from, for the message when it is missing.
const TOOLS: &[(&str, &str)] = &[
    ("qemu-img", "qemu-utils"),
    ("qemu-io", "qemu-utils"),
    ("mkfs.ext4", "e2fsprogs"),
    ("mkfs.ext2", "e2fsprogs"),
    ("debugfs", "e2fsprogs"),
    ("mkfs.vfat", "dosfstools"),
    ("mcopy", "mtools"),
    ("mmd", "mtools"),
    ("mkntfs", "ntfs-3g"),
    ("ntfs-3g", "ntfs-3g"),
    ("sgdisk", "gdisk"),
    ("sfdisk", "fdisk"),
    ("fusermount3", "fuse3"),
];

/// The full path of a tool, or a panic that says which package to install.
pub fn tool(name: &str) -> PathBuf {
    let dirs = std::env::var("PATH").unwrap_or_default();
    for dir in dirs.split(':').chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"]) {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return p;
        }
    }
    let package = TOOLS.iter().find(|(t, _)| *t == name).map_or("?", |(_, p)| p);
    panic!("{name} is missing: install the Debian package {package} (scripts/test.sh does)");
}

/// Run a tool; panic with its output if it fails.
pub fn run(name: &str, args: &[&dyn AsRef<std::ffi::OsStr>]) -> String {
    let mut cmd = Command::new(tool(name));
    for a in args {
        cmd.arg(a.as_ref());
    }
    cmd.env("TZ", "UTC").env("LC_ALL", "C.UTF-8").env("MTOOLS_SKIP_CHECK", "1");
    let out = cmd.output().unwrap_or_else(|e| panic!("{name}: {e}"));
    assert!(
        out.status.success(),
        "{name} {:?} failed: {}\n{}",
        args.iter().map(|a| a.as_ref().to_string_lossy().into_owned()).collect::<Vec<_>>(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Deterministic bytes (xorshift), so failures reproduce.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn set_mtime(path: &Path, secs: i64, nanos: u32) {
    let t = libc::timespec { tv_sec: secs, tv_nsec: i64::from(nanos) };
    let times = [t, t];
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid C string and two timespecs, as utimensat wants.
    let r = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
    assert_eq!(r, 0, "utimensat {}", path.display());
}

/// The nanoseconds of hello.txt's mtime in the ext images.
pub const EXT_NANOS: u32 = 123_456_789;

/// What a corpus may contain, for the filesystem it goes to.
#[derive(Clone, Copy, PartialEq)]
pub enum Flavour {
    /// ext: everything (symlinks, hard links, owners, modes, nanosecond times, sparse files).
    Unix,
    /// NTFS through ntfs-3g: hard links and sparse files, no symlinks or owners.
    Ntfs,
    /// FAT: plain files and directories, times on even seconds.
    Fat,
}

/// Build the source tree at `dir` (which must not exist).
pub fn corpus(dir: &Path, flavour: Flavour) {
    fs::create_dir_all(dir.join("docs/deep/a/b/c")).unwrap();
    fs::create_dir_all(dir.join("many")).unwrap();
    fs::create_dir_all(dir.join("empty dir")).unwrap();
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("hello.txt", b"hello world\n".to_vec()),
        ("empty", Vec::new()),
        ("docs/report.docx", random_bytes(1, 1_234_567)),
        ("docs/caf\u{e9} notes.txt", "d\u{e9}j\u{e0} vu\n".repeat(300).into_bytes()),
        ("docs/deep/a/b/c/leaf.bin", random_bytes(2, 3000)),
        ("big.bin", random_bytes(3, 4 << 20)),
        ("block.bin", random_bytes(4, 4096)),
        ("run.sh", b"#!/bin/sh\necho hi\n".to_vec()),
        ("secret.txt", b"not yours\n".to_vec()),
    ];
    for (name, data) in &files {
        fs::write(dir.join(name), data).unwrap();
    }
    for i in 0..300 {
        fs::write(dir.join(format!("many/file-{i:04}.txt")), format!("file {i}\n").repeat(i % 7)).unwrap();
    }
    // A sparse file: 8 MiB, 64 KiB of data at 4 MiB, the rest holes.
    let f = fs::File::create(dir.join("sparse.img")).unwrap();
    f.set_len(8 << 20).unwrap();
    f.write_all_at(&random_bytes(5, 64 << 10), 4 << 20).unwrap();
    drop(f);
    fs::set_permissions(dir.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(dir.join("secret.txt"), fs::Permissions::from_mode(0o600)).unwrap();
    if flavour != Flavour::Fat {
        fs::hard_link(dir.join("docs/report.docx"), dir.join("report-link.docx")).unwrap();
    }
    if flavour == Flavour::Unix {
        std::os::unix::fs::symlink("docs/report.docx", dir.join("latest-report")).unwrap();
        std::os::unix::fs::symlink("/nowhere/at/all", dir.join("dangling")).unwrap();
    }
    if flavour != Flavour::Fat {
        let c = std::ffi::CString::new(dir.join("secret.txt").as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid C string.
        assert_eq!(unsafe { libc::lchown(c.as_ptr(), 1234, 5678) }, 0, "chown (the tests run as root)");
    }
    // Distinct times: nanoseconds for NTFS (kept to 100 ns), even seconds for FAT. For ext only
    // hello.txt has nanoseconds: mke2fs -d (1.47) stores whole seconds, and `ext4_fs` sets that
    // one file's nanoseconds with debugfs.
    let mut n = 0i64;
    for entry in walk(dir) {
        n += 1;
        let secs = 1_600_000_000 + n * 86_400 + n * 2;
        let nanos = match flavour {
            Flavour::Ntfs => (n as u64 * 123_456_789 % 1_000_000_000) as u32,
            Flavour::Unix if entry == Path::new("hello.txt") => EXT_NANOS,
            _ => 0,
        };
        set_mtime(&dir.join(&entry), secs, nanos);
    }
}

/// Every path under `dir`, relative, parents before children, deepest directories' times set
/// last (so setting a child's time does not change its parent's).
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    fn go(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) {
        let mut names: Vec<_> = fs::read_dir(root.join(rel)).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        for name in names {
            let p = rel.join(&name);
            let m = fs::symlink_metadata(root.join(&p)).unwrap();
            if m.is_dir() {
                go(root, &p, out);
            }
            out.push(p);
        }
    }
    go(dir, Path::new(""), &mut out);
    out
}

/// An empty sparse file of `size` bytes.
pub fn sparse_file(path: &Path, size: u64) {
    fs::File::create(path).unwrap().set_len(size).unwrap();
}

/// Write an MBR partition table with `sfdisk`, from its script.
pub fn sfdisk(disk: &Path, script: &str) {
    let mut child = Command::new(tool("sfdisk"))
        .arg("-q")
        .arg(disk)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), script.as_bytes()).unwrap();
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success(), "sfdisk");
}

/// Write `parts` into the disk at their offsets, skipping zero blocks (the disk stays sparse).
pub fn place(disk: &Path, parts: &[(u64, &Path)]) {
    let out = fs::OpenOptions::new().write(true).open(disk).unwrap();
    for (offset, part) in parts {
        let data = fs::read(part).unwrap();
        for (i, block) in data.chunks(64 << 10).enumerate() {
            if block.iter().any(|&b| b != 0) {
                out.write_all_at(block, offset + (i as u64) * (64 << 10)).unwrap();
            }
        }
    }
}

pub fn ext4_fs(work: &Path, src: &Path, size_mib: u64, ext2: bool) -> PathBuf {
    let img = work.join(if ext2 { "ext2.fs" } else { "ext4.fs" });
    let size = format!("{size_mib}M");
    let mkfs = if ext2 { "mkfs.ext2" } else { "mkfs.ext4" };
    run(mkfs, &[&"-q", &"-F", &"-b", &"4096", &"-I", &"256", &"-d", &src, &img, &size]);
    // Nanoseconds live in the inode's extra field: bits 2-31.
    let extra = format!("sif /hello.txt mtime_extra {:#x}", EXT_NANOS << 2);
    run("debugfs", &[&"-w", &"-R", &extra, &img]);
    img
}

pub fn fat_fs(work: &Path, src: &Path, size_mib: u64, bits: u32) -> PathBuf {
    let img = work.join(format!("fat{bits}.fs"));
    let f = fs::File::create(&img).unwrap();
    f.set_len(size_mib << 20).unwrap();
    drop(f);
    run("mkfs.vfat", &[&"-F", &bits.to_string(), &img]);
    let image = format!("{}", img.display());
    let mut entries = fs::read_dir(src).unwrap().map(|e| e.unwrap().path()).collect::<Vec<_>>();
    entries.sort();
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"-s", &"-m", &"-Q", &"-i", &image];
    for e in &entries {
        args.push(e);
    }
    args.push(&"::/");
    run("mcopy", &args);
    img
}

/// The security descriptor ntfs-3g shows for each path of `src` inside an NTFS image (the
/// `system.ntfs_acl` attribute, through a read-only mount).
pub fn ntfs_descriptors(work: &Path, img: &Path, src: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mnt = work.join("ntfs-ro");
    fs::create_dir_all(&mnt).unwrap();
    run("ntfs-3g", &[&"-o", &"ro", &img, &mnt]);
    let mut out = vec![(PathBuf::new(), xattr::get(&mnt, "system.ntfs_acl"))];
    for rel in walk(src) {
        out.push((rel.clone(), xattr::get(mnt.join(&rel), "system.ntfs_acl")));
    }
    run("fusermount3", &[&"-u", &mnt]);
    out.into_iter().map(|(p, sd)| (p, sd.unwrap().expect("ntfs-3g shows a descriptor"))).collect()
}

/// NTFS with mkntfs, filled through a real ntfs-3g FUSE mount.
pub fn ntfs_fs(work: &Path, src: &Path, size_mib: u64) -> PathBuf {
    let img = work.join("ntfs.fs");
    let f = fs::File::create(&img).unwrap();
    f.set_len(size_mib << 20).unwrap();
    drop(f);
    run("mkntfs", &[&"-F", &"-Q", &"-q", &"-L", &"win", &img]);
    let mnt = work.join("ntfs-mnt");
    fs::create_dir_all(&mnt).unwrap();
    // With `permissions`, ntfs-3g keeps owners and modes as Windows does: shared descriptors in
    // $Secure, referred to by security id.
    run("ntfs-3g", &[&"-o", &"permissions", &img, &mnt]);
    let copy = Command::new("cp")
        .args(["-r", "--preserve=mode,ownership,timestamps,links", "--sparse=always"])
        .arg(src.join("."))
        .arg(&mnt)
        .output()
        .unwrap();
    let _ = Command::new("sync").status();
    run("fusermount3", &[&"-u", &mnt]);
    assert!(copy.status.success(), "cp into ntfs-3g: {}", String::from_utf8_lossy(&copy.stderr));
    img
}

/// A container format qemu-img writes, with its options.
#[derive(Clone, Copy, Debug)]
pub struct Target {
    pub name: &'static str,
    pub format: &'static str,
    pub options: &'static str,
    pub compress: bool,
}

pub const QCOW2: Target = Target { name: "qcow2", format: "qcow2", options: "", compress: false };
pub const QCOW2_DEFLATE: Target = Target { name: "qcow2-c", format: "qcow2", options: "", compress: true };
pub const QCOW2_ZSTD: Target =
    Target { name: "qcow2-zstd", format: "qcow2", options: "compression_type=zstd", compress: true };
pub const QCOW2_V2: Target = Target { name: "qcow2-v2", format: "qcow2", options: "compat=0.10", compress: false };
pub const QCOW2_512: Target =
    Target { name: "qcow2-512", format: "qcow2", options: "cluster_size=512", compress: false };
pub const QCOW2_2M: Target = Target { name: "qcow2-2M", format: "qcow2", options: "cluster_size=2M", compress: false };
pub const VMDK_SPARSE: Target =
    Target { name: "vmdk-sparse", format: "vmdk", options: "subformat=monolithicSparse", compress: false };
pub const VMDK_STREAM: Target =
    Target { name: "vmdk-stream", format: "vmdk", options: "subformat=streamOptimized", compress: false };
pub const VMDK_FLAT: Target =
    Target { name: "vmdk-flat", format: "vmdk", options: "subformat=monolithicFlat", compress: false };
pub const VMDK_2GB_FLAT: Target =
    Target { name: "vmdk-2gb-flat", format: "vmdk", options: "subformat=twoGbMaxExtentFlat", compress: false };
pub const VMDK_2GB_SPARSE: Target =
    Target { name: "vmdk-2gb-sparse", format: "vmdk", options: "subformat=twoGbMaxExtentSparse", compress: false };

/// `qemu-img convert` a raw disk into `dir/<name>.<format>`; the path of the image file.
pub fn convert(raw: &Path, dir: &Path, t: Target) -> PathBuf {
    fs::create_dir_all(dir).unwrap();
    let out = dir.join(format!("{}.{}", t.name, t.format));
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"convert", &"-f", &"raw", &"-O", &t.format];
    if !t.options.is_empty() {
        args.push(&"-o");
        args.push(&t.options);
    }
    if t.compress {
        args.push(&"-c");
    }
    args.push(&raw);
    args.push(&out);
    run("qemu-img", &args);
    out
}

/// A resolver that opens names relative to `dir` (or absolute paths).
pub fn resolver(dir: &Path) -> impl Fn(&[u8]) -> Option<Arc<dyn ReadAt>> + use<> {
    let dir = dir.to_path_buf();
    move |name: &[u8]| {
        let p = dir.join(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(name));
        FileReadAt::open(&p).ok().map(|r| Arc::new(r) as Arc<dyn ReadAt>)
    }
}

pub fn open_file(path: &Path) -> Arc<dyn ReadAt> {
    Arc::new(FileReadAt::open(path).unwrap())
}

/// Read a whole file from a filesystem in pieces of varying sizes.
pub fn read_all(fs: &dyn FileSystem, path: &[u8], size: u64) -> rewind_store::image::Result<Vec<u8>> {
    let mut out = vec![0u8; size as usize];
    let mut off = 0usize;
    let mut step = 1000usize;
    while off < out.len() {
        let end = (off + step).min(out.len());
        let n = fs.read_at(path, off as u64, &mut out[off..end])?;
        assert!(n > 0, "short read at {off} of {}", String::from_utf8_lossy(path));
        off += n;
        step = (step * 3) % 300_000 + 1;
    }
    let mut past = [0u8; 4];
    assert_eq!(fs.read_at(path, size, &mut past)?, 0, "a read past the end returns nothing");
    Ok(out)
}

/// Check that the filesystem holds exactly the tree at `src`: names, kinds, sizes, contents,
/// times, and what `flavour` keeps of modes, owners, links and symlinks.
pub fn verify(fs: &dyn FileSystem, src: &Path, flavour: Flavour) {
    let mut inodes: BTreeMap<u64, u64> = BTreeMap::new();
    for rel in walk(src) {
        let path = rel.as_os_str().as_encoded_bytes();
        let here = src.join(&rel);
        let m = fs::symlink_metadata(&here).unwrap();
        let st = fs.stat(path).unwrap_or_else(|e| panic!("stat {}: {e}", rel.display()));
        let what = rel.display();
        if m.file_type().is_symlink() {
            assert_eq!(st.kind, Kind::Symlink, "{what}");
            let target = fs::read_link(&here).unwrap();
            assert_eq!(fs.read_link(path).unwrap(), target.as_os_str().as_encoded_bytes(), "{what}");
        } else if m.is_dir() {
            assert_eq!(st.kind, Kind::Dir, "{what}");
            let mut want: Vec<Vec<u8>> =
                fs::read_dir(&here).unwrap().map(|e| e.unwrap().file_name().as_encoded_bytes().to_vec()).collect();
            want.sort();
            let listed = fs.list(path).unwrap();
            let mut got: Vec<Vec<u8>> = listed.iter().map(|e| e.name.clone()).collect();
            got.sort();
            assert_eq!(got, want, "listing of {what}");
            // A listing's attributes are the entries' stat.
            for e in &listed {
                let mut child = path.to_vec();
                child.push(b'/');
                child.extend_from_slice(&e.name);
                let mut st = fs.stat(&child).unwrap();
                if fs.kind() == FsKind::Ext {
                    // ext listings leave inode numbers out (a lookup each); stat has them.
                    assert_eq!(e.stat.ino, None);
                    st.ino = None;
                }
                assert_eq!(e.stat, st, "{what}/{}", String::from_utf8_lossy(&e.name));
            }
        } else {
            assert_eq!(st.kind, Kind::File, "{what}");
            assert_eq!(st.size, m.len(), "size of {what}");
            let data = read_all(fs, path, st.size).unwrap_or_else(|e| panic!("read {what}: {e}"));
            assert!(data == fs::read(&here).unwrap(), "content of {what}");
            if flavour != Flavour::Fat {
                let ino = st.ino.unwrap_or_else(|| panic!("no inode number for {what}"));
                // Files that are one inode in the source are one inode in the image, and no others.
                let prev = inodes.insert(m.ino(), ino);
                if let Some(prev) = prev {
                    assert_eq!(prev, ino, "hard links of {what}");
                }
                let same: Vec<_> = inodes.iter().filter(|(_, v)| **v == ino).collect();
                assert_eq!(same.len(), 1, "{what} shares an inode it should not");
            }
        }
        if !m.file_type().is_symlink() {
            let mtime = st.mtime.unwrap_or_else(|| panic!("no mtime for {what}"));
            let (secs, nanos) = (m.mtime(), m.mtime_nsec() as u32);
            match flavour {
                Flavour::Unix => assert_eq!((mtime.secs, mtime.nanos), (secs, nanos), "mtime of {what}"),
                Flavour::Ntfs => assert_eq!((mtime.secs, mtime.nanos), (secs, nanos / 100 * 100), "mtime of {what}"),
                Flavour::Fat if m.is_file() => assert_eq!(mtime.secs, secs, "mtime of {what}"),
                Flavour::Fat => {}
            }
        }
        if flavour == Flavour::Unix {
            assert_eq!(st.mode, Some(m.mode() & 0o7777), "mode of {what}");
            assert_eq!((st.uid, st.gid), (Some(m.uid()), Some(m.gid())), "owner of {what}");
            assert!(st.ctime.is_some(), "ctime of {what}");
        }
        if flavour == Flavour::Ntfs && m.is_file() {
            assert_eq!(st.nlink, Some(m.nlink() as u32), "links of {what}");
            // NTFS 3.x keeps descriptors in $Secure, keyed by this id (256 and up).
            assert!(st.security_id.is_some_and(|id| id >= 256), "security id of {what}: {:?}", st.security_id);
        }
    }
}

/// A reader that counts the bytes read through it.
pub struct Counting {
    pub inner: Arc<dyn ReadAt>,
    pub bytes: AtomicU64,
}

impl ReadAt for Counting {
    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read_at(offset, buf)?;
        self.bytes.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// A reader whose bytes in `bad` cannot be read, as a damaged chunk of a backed-up image.
pub struct Damaged {
    pub inner: Arc<dyn ReadAt>,
    pub bad: std::ops::Range<u64>,
}

impl ReadAt for Damaged {
    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        if offset < self.bad.end && offset + buf.len() as u64 > self.bad.start {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "damaged chunk"));
        }
        self.inner.read_at(offset, buf)
    }
}
