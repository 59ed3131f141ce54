use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::UNIX_EPOCH;

use fuser::FileType;
use rewind_store::{
    BackupOptions, BackupProgress, CacheSizes, ChunkerParams, CompressionParams, IndexedRepository, Repository, Time,
    backup,
};

use super::attr::{fuse_rdev, to_system_time};
use super::*;
use crate::inode::ROOT;

/// Bytes from the workspace's seeded test generator (ChaCha8).
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; n];
    rand::RngCore::fill_bytes(&mut <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(seed), &mut out);
    out
}

struct Fixture {
    _dir: tempfile::TempDir,
    src: std::path::PathBuf,
    repo: IndexedRepository,
    core: Core,
}

/// A repository with one snapshot of a small tree; chunks are small so files span several.
fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("big"), noise(300_000, 1)).unwrap();
    std::fs::write(src.join("other"), noise(100_000, 2)).unwrap();
    std::fs::write(src.join("sub/small"), b"small file\n").unwrap();
    std::fs::set_permissions(src.join("sub/small"), std::fs::Permissions::from_mode(0o640)).unwrap();
    std::fs::hard_link(src.join("sub/small"), src.join("link")).unwrap();
    std::os::unix::fs::symlink("sub/small", src.join("sym")).unwrap();
    // Below the chunker's minimum: one chunk whatever the repository's (random) gear table.
    std::fs::write(src.join("tail"), noise(4000, 3)).unwrap();
    assert!(xattr_set(&src.join("other"), b"user.note", b"value"), "the temp filesystem must support user xattrs");
    let chunker = ChunkerParams { min_size: 4096, avg_size: 16384, max_size: 65536 };
    let repo =
        Repository::init(&dir.path().join("repo"), chunker, CompressionParams::default(), rewind_store::NewKey::test())
            .unwrap();
    let repo = repo.open_indexed(CacheSizes::default()).unwrap();
    let opts = BackupOptions {
        paths: vec![src.clone()],
        host: "box".into(),
        tags: vec!["daily".into()],
        excludes: vec![],
        parent: None,
        force: false,
    };
    backup(&repo, &opts, &BackupProgress::default(), &|p, e| panic!("{}: {e}", p.display())).unwrap();
    let view = Arc::new(View::new(repo.clone()).unwrap());
    Fixture { _dir: dir, src, repo, core: Core::new(view, 64 << 10) }
}

fn xattr_set(path: &Path, name: &[u8], value: &[u8]) -> bool {
    let p = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    // SAFETY: valid C strings and a buffer of the given length.
    unsafe { libc::setxattr(p.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), 0) == 0 }
}

/// Look a path up from the root, component by component, following `latest`.
fn walk(core: &Core, path: &str) -> Result<(u64, Answer), Errno> {
    let mut ino = ROOT;
    let mut last = core.getattr(ROOT)?;
    for comp in path.split('/').filter(|c| !c.is_empty()) {
        last = core.lookup(ino, comp.as_bytes())?;
        ino = last.attr.ino.0;
        if last.attr.kind == FileType::Symlink && comp == "latest" {
            let target = core.readlink(ino)?;
            let parent = core.inodes.lock().get(ino).unwrap().parent;
            last = core.lookup(parent, &target)?;
            ino = last.attr.ino.0;
        }
    }
    Ok((ino, last))
}

fn in_snapshot(f: &Fixture, rel: &str) -> String {
    format!("hosts/box/latest{}/{rel}", f.src.display())
}

#[test]
fn attributes_match_the_source() {
    let f = fixture();
    for rel in ["big", "other", "sub/small", "sub", "sym"] {
        let (_, a) = walk(&f.core, &in_snapshot(&f, rel)).unwrap();
        let m = std::fs::symlink_metadata(f.src.join(rel)).unwrap();
        assert_eq!(u32::from(a.attr.perm), m.mode() & 0o7777, "{rel}");
        assert_eq!((a.attr.uid, a.attr.gid), (m.uid(), m.gid()), "{rel}");
        if !m.is_dir() {
            assert_eq!(a.attr.size, m.len(), "{rel}");
        }
        let mtime = a.attr.mtime.duration_since(UNIX_EPOCH).unwrap();
        assert_eq!((mtime.as_secs() as i64, i64::from(mtime.subsec_nanos())), (m.mtime(), m.mtime_nsec()), "{rel}");
        assert_eq!(a.ttl, TTL_FROZEN);
    }
    let (_, root) = walk(&f.core, "").unwrap();
    assert_eq!(root.attr.kind, FileType::Directory);
    assert_eq!(root.ttl, TTL_LIVE);
}

/// Directories count their subdirectories as on ext4 (2 + n): `find` skips the rest of a
/// directory once it has met nlink - 2 subdirectories.
#[test]
fn directories_link_count_is_two_plus_subdirectories() {
    let f = fixture();
    let nlink = |path: &str| walk(&f.core, path).unwrap().1.attr.nlink;
    assert_eq!(nlink(&in_snapshot(&f, "")), 3, "src holds one directory, sub");
    assert_eq!(nlink(&in_snapshot(&f, "sub")), 2);
    assert_eq!(nlink(""), 6, "snapshots, hosts, ids, tags");
    assert_eq!((nlink("snapshots"), nlink("hosts"), nlink("hosts/box"), nlink("tags/daily")), (3, 3, 3, 3));
    assert_eq!(nlink(&in_snapshot(&f, "big")), 1);
}

#[test]
fn hardlinks_are_one_inode_with_their_link_count() {
    let f = fixture();
    let (a, attr_a) = walk(&f.core, &in_snapshot(&f, "link")).unwrap();
    let (b, attr_b) = walk(&f.core, &in_snapshot(&f, "sub/small")).unwrap();
    assert_eq!(a, b);
    assert_eq!((attr_a.attr.nlink, attr_b.attr.nlink), (2, 2));
    let (c, _) = walk(&f.core, &in_snapshot(&f, "other")).unwrap();
    assert_ne!(a, c);
}

#[test]
fn missing_names_and_files_as_directories() {
    let f = fixture();
    assert_eq!(walk(&f.core, "nope").unwrap_err(), Errno::ENOENT);
    assert_eq!(walk(&f.core, &in_snapshot(&f, "nope")).unwrap_err(), Errno::ENOENT);
    assert_eq!(walk(&f.core, &in_snapshot(&f, "big/x")).unwrap_err(), Errno::ENOTDIR);
    assert_eq!(f.core.getattr(999).unwrap_err(), Errno::ESTALE);
}

#[test]
fn symlinks_read_back() {
    let f = fixture();
    let (ino, _) = walk(&f.core, &in_snapshot(&f, "sym")).unwrap();
    assert_eq!(f.core.readlink(ino).unwrap(), b"sub/small");
    let (host, _) = walk(&f.core, "hosts/box").unwrap();
    let latest = f.core.lookup(host, b"latest").unwrap();
    let name = f.core.readlink(latest.attr.ino.0).unwrap();
    assert_eq!(latest.attr.size, name.len() as u64);
    let (snap, _) = walk(&f.core, "snapshots").unwrap();
    assert!(f.core.lookup(snap, &name).is_ok());
    let (file, _) = walk(&f.core, &in_snapshot(&f, "big")).unwrap();
    assert_eq!(f.core.readlink(file).unwrap_err(), Errno::EINVAL);
}

#[test]
fn readdir_lists_dot_dotdot_and_entries_with_offsets() {
    let f = fixture();
    let (dir, _) = walk(&f.core, &in_snapshot(&f, "")).unwrap();
    let mut names = Vec::new();
    f.core
        .readdir(dir, 0, |_, next, _, name| {
            names.push((String::from_utf8_lossy(name).into_owned(), next));
            false
        })
        .unwrap();
    let just: Vec<&str> = names.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(just, [".", "..", "big", "link", "other", "sub", "sym", "tail"]);
    // Resuming at an offset gives the rest.
    let mut rest = Vec::new();
    f.core
        .readdir(dir, names[3].1, |_, _, _, name| {
            rest.push(String::from_utf8_lossy(name).into_owned());
            false
        })
        .unwrap();
    assert_eq!(rest, ["other", "sub", "sym", "tail"]);
    // A full reply stops the listing.
    let mut n = 0;
    f.core
        .readdir(dir, 0, |_, _, _, _| {
            n += 1;
            n == 3
        })
        .unwrap();
    assert_eq!(n, 3);
    // Files are not directories; unknown inodes are stale.
    let (file, _) = walk(&f.core, &in_snapshot(&f, "big")).unwrap();
    assert_eq!(f.core.readdir(file, 0, |_, _, _, _| false).unwrap_err(), Errno::ENOTDIR);
    assert_eq!(f.core.readdir(0xdead_beef, 0, |_, _, _, _| false).unwrap_err(), Errno::ESTALE);
}

#[test]
fn snapshot_lists_change_their_mtime_when_they_change() {
    let f = fixture();
    let names = |ino: u64| {
        let mut out = Vec::new();
        f.core
            .readdir(ino, 0, |_, _, _, n| {
                out.push(n.to_vec());
                false
            })
            .unwrap();
        out.len() - 2
    };
    let (snaps, _) = walk(&f.core, "snapshots").unwrap();
    let (host, _) = walk(&f.core, "hosts/box").unwrap();
    let before = (f.core.getattr(snaps).unwrap().attr.mtime, f.core.getattr(host).unwrap().attr.mtime);
    assert_eq!(names(snaps), 1);
    let opts = BackupOptions {
        paths: vec![f.src.clone()],
        host: "box".into(),
        tags: vec![],
        excludes: vec![],
        parent: None,
        force: true,
    };
    backup(&f.repo, &opts, &BackupProgress::default(), &|p, e| panic!("{}: {e}", p.display())).unwrap();
    assert!(f.core.view().refresh().unwrap());
    let after = (f.core.getattr(snaps).unwrap().attr.mtime, f.core.getattr(host).unwrap().attr.mtime);
    assert!(after.0 > before.0 && after.1 > before.1, "{before:?} then {after:?}");
    // A pass from offset 0 lists live directories again.
    assert_eq!(names(snaps), 2);
    // A removal moves it on too, though the newest snapshot stays.
    let oldest = f.core.view().snapshots()[0].1.id;
    std::fs::remove_file(f.repo.repo().local_path().unwrap().join("snapshots").join(oldest.to_hex())).unwrap();
    assert!(f.core.view().refresh().unwrap());
    let last = f.core.getattr(snaps).unwrap().attr.mtime;
    assert!(last > after.0);
    assert_eq!(names(snaps), 1);
    // Snapshot directories keep their snapshot's time.
    let (snap, _) = walk(&f.core, "hosts/box/latest").unwrap();
    let t = f.core.view().snapshots()[0].1.snapshot.time;
    assert_eq!(
        f.core.getattr(snap).unwrap().attr.mtime,
        to_system_time(Time { sec: t.as_second(), nsec: t.subsec_nanosecond() as u32 })
    );
}

#[test]
fn readdir_inodes_agree_with_lookup() {
    let f = fixture();
    let (dir, _) = walk(&f.core, &in_snapshot(&f, "")).unwrap();
    let mut seen = Vec::new();
    f.core
        .readdir(dir, 2, |ino, _, _, name| {
            seen.push((ino, name.to_vec()));
            false
        })
        .unwrap();
    for (ino, name) in seen {
        assert_eq!(f.core.lookup(dir, &name).unwrap().attr.ino.0, ino, "{}", String::from_utf8_lossy(&name));
    }
}

#[test]
fn readdirplus_counts_lookups_that_forget_releases() {
    let f = fixture();
    let (dir, _) = walk(&f.core, &in_snapshot(&f, "sub")).unwrap();
    let before = f.core.inode_count();
    let mut got = Vec::new();
    f.core
        .readdirplus(dir, 0, |_, name, a| {
            got.push((name.to_vec(), a.attr.ino.0, a.attr.size));
            false
        })
        .unwrap();
    assert_eq!(got.len(), 3);
    assert_eq!(got[2].0, b"small");
    assert_eq!(got[2].2, 11);
    assert_eq!(f.core.inode_count(), before + 1);
    f.core.forget(got[2].1, 1);
    assert_eq!(f.core.inode_count(), before);
    // An entry that did not fit is not counted.
    f.core.readdirplus(dir, 2, |_, _, _| true).unwrap();
    assert_eq!(f.core.inode_count(), before);
}

#[test]
fn reads_return_the_bytes_at_any_offset() {
    let f = fixture();
    let want = std::fs::read(f.src.join("big")).unwrap();
    let (ino, _) = walk(&f.core, &in_snapshot(&f, "big")).unwrap();
    let (file, new) = f.core.open(ino, false).unwrap();
    assert!(new);
    assert!(!f.core.open(ino, false).unwrap().1, "one reader per inode");
    assert!(file.reader.chunks().len() > 3, "the test wants a file of several chunks");
    for (off, len) in [(0u64, 4096u32), (1, 70_000), (150_000, 150_000), (299_990, 100), (400_000, 10)] {
        let got = f.core.read(&file, off, len).unwrap();
        let end = (off as usize + len as usize).min(want.len());
        let start = (off as usize).min(end);
        assert_eq!(got, want[start..end], "read at {off} of {len}");
    }
    // The reader goes when the kernel forgets the inode.
    assert_eq!(f.core.reader_count(), 1);
    f.core.forget(ino, 1);
    assert_eq!(f.core.reader_count(), 0);
}

#[test]
fn sequential_reads_plan_readahead_once_and_random_reads_none() {
    let f = fixture();
    let (ino, _) = walk(&f.core, &in_snapshot(&f, "big")).unwrap();
    let (file, _) = f.core.open(ino, false).unwrap();
    let first = f.core.plan_readahead(&file, 0, 4096);
    assert!(!first.is_empty());
    assert_eq!(first[0], 1);
    let again = f.core.plan_readahead(&file, 4096, 4096);
    assert!(again.iter().all(|i| !first.contains(i)), "{first:?} then {again:?}");
    for &i in &first {
        f.core.warm(&file, i);
        assert!(f.repo.chunk_cached(&file.reader.chunks()[i].id));
    }
    let far = f.core.plan_readahead(&file, 200_000_000, 4096);
    assert!(far.is_empty());
}

#[test]
fn walks_prefetch_subdirectories_and_following_files() {
    let f = fixture();
    let (dir, _) = walk(&f.core, &in_snapshot(&f, "")).unwrap();
    f.core.readdir(dir, 0, |_, _, _, _| false).unwrap();
    let trees = f.core.subtrees_to_prefetch(dir);
    assert_eq!(trees.len(), 1, "the one subdirectory, not read yet");
    assert!(f.core.warm_tree(trees[0]).is_empty(), "sub has no subdirectories");
    assert!(f.core.subtrees_to_prefetch(dir).is_empty());

    let chunks = |ino| f.core.open(ino, false).unwrap().0.reader.chunks().iter().map(|c| c.id).collect::<Vec<_>>();
    let (big, _) = walk(&f.core, &in_snapshot(&f, "big")).unwrap();
    let (other, _) = walk(&f.core, &in_snapshot(&f, "other")).unwrap();
    // The walk goes down into subdirectories and back up to the parent's next files. Files the
    // kernel does not know yet (not listed, not looked up) are only loaded.
    let unknown = f.core.walk_ahead(other);
    let (small, _) = walk(&f.core, &in_snapshot(&f, "sub/small")).unwrap();
    let (tail, _) = walk(&f.core, &in_snapshot(&f, "tail")).unwrap();
    assert_eq!(unknown, [Ahead::Load(chunks(small)[0]), Ahead::Load(chunks(tail)[0])]);
    // The files of several chunks are loaded ahead, their first two chunks, until the budget.
    let from_big = f.core.walk_ahead(big);
    let other_chunks = chunks(other);
    assert!(other_chunks.len() > 2);
    assert!(from_big.ends_with(&[Ahead::Load(other_chunks[0]), Ahead::Load(other_chunks[1])]), "{from_big:?}");
    for step in from_big {
        if let Ahead::Load(id) = step {
            f.core.warm_chunk(id);
        }
    }
    assert!(f.repo.chunk_cached(&other_chunks[0]));
    assert!(
        !f.core.walk_ahead(big).iter().any(|s| matches!(s, Ahead::Load(id) if other_chunks.contains(id))),
        "what is cached is not asked for again"
    );
    // The last file of the snapshot has nothing after it.
    assert!(f.core.walk_ahead(tail).is_empty());
}

#[test]
fn walks_load_the_next_directory_before_they_can_plan_in_it() {
    let f = fixture();
    let (other, _) = walk(&f.core, &in_snapshot(&f, "other")).unwrap();
    // A fresh walk: sub's tree is not cached, so the plan stops there and asks for it.
    let plan = f.core.walk_ahead(other);
    let [Ahead::Tree(sub)] = plan[..] else { panic!("{plan:?}") };
    assert!(!f.repo.tree_cached(&sub));
    f.core.warm_tree(sub);
    // With it loaded, the next plan goes through it: sub/small, then tail (neither known yet).
    let plan = f.core.walk_ahead(other);
    assert_eq!(plan.len(), 2, "{plan:?}");
    assert!(plan.iter().all(|s| matches!(s, Ahead::Load(_))), "{plan:?}");
}

#[test]
fn walks_push_the_small_files_the_kernel_knows_once_in_any_directory() {
    let f = fixture();
    let first_chunk = |ino| f.core.open(ino, false).unwrap().0.reader.chunks()[0].id;
    let (dir, _) = walk(&f.core, &in_snapshot(&f, "")).unwrap();
    f.core.readdir(dir, 0, |_, _, _, _| false).unwrap();
    for t in f.core.subtrees_to_prefetch(dir) {
        f.core.warm_tree(t);
    }
    let (other, _) = walk(&f.core, &in_snapshot(&f, "other")).unwrap();
    let (small, _) = walk(&f.core, &in_snapshot(&f, "sub/small")).unwrap();
    let (tail, _) = walk(&f.core, &in_snapshot(&f, "tail")).unwrap();
    // After other: sub/small (in a subdirectory), sym (a link), tail.
    assert_eq!(
        f.core.walk_ahead(other),
        [
            Ahead::Push { ino: small, chunk: first_chunk(small), size: 11 },
            Ahead::Push { ino: tail, chunk: first_chunk(tail), size: 4000 }
        ]
    );
    assert!(f.core.walk_ahead(other).is_empty(), "each file is pushed once");
    assert!(f.core.walk_ahead(tail).is_empty(), "nothing after the last file");
    // Pushed bytes are the file's, and only a cached chunk is pushed from the FUSE thread.
    assert_eq!(f.core.cached_to_push(first_chunk(tail), 4000), None);
    f.core.warm_chunk(first_chunk(tail));
    let data = f.core.cached_to_push(first_chunk(tail), 4000).expect("cached now");
    assert_eq!(*data, std::fs::read(f.src.join("tail")).unwrap());
    assert_eq!(f.core.cached_to_push(first_chunk(tail), 3999), None, "never bytes of another length");
    assert_eq!(f.core.chunk_to_push(first_chunk(tail), 4000), Some(data));
}

#[test]
fn writes_and_non_files_are_refused() {
    let f = fixture();
    let (ino, _) = walk(&f.core, &in_snapshot(&f, "big")).unwrap();
    assert_eq!(f.core.open(ino, true).err(), Some(Errno::EROFS));
    let (dir, _) = walk(&f.core, &in_snapshot(&f, "sub")).unwrap();
    assert_eq!(f.core.open(dir, false).err(), Some(Errno::EISDIR));
    assert_eq!(f.core.listing(ino, 0).err().unwrap(), Errno::ENOTDIR);
}

#[test]
fn xattrs_listed_and_read() {
    let f = fixture();
    let (ino, _) = walk(&f.core, &in_snapshot(&f, "other")).unwrap();
    assert_eq!(f.core.listxattr(ino).unwrap(), b"user.note\0");
    assert_eq!(f.core.getxattr(ino, b"user.note").unwrap(), b"value");
    assert_eq!(f.core.getxattr(ino, b"user.none").unwrap_err(), Errno::ENODATA);
    assert_eq!(f.core.getxattr(ROOT, b"user.note").unwrap_err(), Errno::ENODATA);
    assert_eq!(f.core.listxattr(ROOT).unwrap(), b"");
}

#[test]
fn xattr_reply_sizes() {
    assert_eq!(xattr_reply(b"abc", 0).unwrap(), None);
    assert_eq!(xattr_reply(b"abc", 3).unwrap(), Some(&b"abc"[..]));
    assert_eq!(xattr_reply(b"abc", 2).unwrap_err(), Errno::ERANGE);
}

/// Damaged stored bytes are EIO for the files whose chunks they hold, and only those: one
/// chunk stored alone, or, for small chunks (all of this fixture's), the group of small blobs
/// that holds it and the chunks of other files backed up around it (FORMAT.md, "Groups").
/// Every other chunk still reads, and what reads is the right bytes.
#[test]
fn damaged_bytes_are_eio_for_the_chunks_they_hold_only() {
    let f = fixture();
    let (big, _) = walk(&f.core, &in_snapshot(&f, "big")).unwrap();
    let (file, _) = f.core.open(big, false).unwrap();
    let span = file.reader.chunks()[2];
    let loc = f.repo.locate(span.id.into()).unwrap();
    let hex = loc.pack.to_hex();
    let pack = f.repo.repo().local_path().unwrap().join("data").join(&hex[..2]).join(&hex);
    let mut bytes = std::fs::read(&pack).unwrap();
    bytes[(loc.offset + u64::from(loc.stored_len) / 2) as usize] ^= 0x55;
    std::fs::write(&pack, bytes).unwrap();
    assert_eq!(f.core.read(&file, span.offset, 10).unwrap_err(), Errno::EIO);
    let damaged = |id: rewind_store::ChunkId| {
        let l = f.repo.locate(id.into()).unwrap();
        l.pack == loc.pack && l.offset == loc.offset
    };
    let mut failed = Vec::new();
    for name in ["big", "other", "tail", "sub/small"] {
        let want = std::fs::read(f.src.join(name)).unwrap();
        let (ino, _) = walk(&f.core, &in_snapshot(&f, name)).unwrap();
        let (h, _) = f.core.open(ino, false).unwrap();
        for c in h.reader.chunks() {
            let at = c.offset as usize;
            match f.core.read(&h, c.offset, c.len) {
                Ok(got) => {
                    assert!(!damaged(c.id), "{name} at {at}: read from damaged bytes");
                    assert_eq!(got, want[at..at + c.len as usize], "{name} at {at}");
                }
                Err(e) => {
                    assert_eq!(e, Errno::EIO);
                    assert!(damaged(c.id), "{name} at {at}: EIO, but its bytes are not the damaged ones");
                    failed.push(name);
                }
            }
        }
    }
    assert!(failed.contains(&"big"));
    // The folders (trees, stored apart from data) still list.
    let (sub, _) = walk(&f.core, &in_snapshot(&f, "sub")).unwrap();
    assert!(f.core.listing(sub, 0).is_ok());
    // What is reported damaged is what failed (reads ahead of the reader may find it first).
    failed.dedup();
    let recorded = f.core.damaged.lock();
    for name in &failed {
        assert!(recorded.iter().any(|(_, p)| p.ends_with(&format!("/src/{name}"))), "{name}");
    }
    for (_, p) in recorded.iter() {
        // `link` is `sub/small` by another name (a hard link).
        let name = if p.ends_with("/src/link") { "sub/small" } else { p.rsplit_once("/src/").map_or("", |x| x.1) };
        assert!(failed.contains(&name), "{p} is not damaged");
    }
}

#[test]
fn statfs_counts_from_manifests() {
    let f = fixture();
    let s = f.core.statfs();
    assert!(s.files >= 5, "{s:?}");
    assert_eq!(s.blocks, (300_000u64 + 100_000 + 11 + 11 + 4000).div_ceil(4096));
}

#[test]
fn rdev_encoding_matches_the_kernel() {
    assert_eq!(fuse_rdev(libc::makedev(1, 3)), 0x103);
    assert_eq!(fuse_rdev(libc::makedev(8, 1)), 0x801);
    let big = libc::makedev(259, 0x12345);
    let enc = fuse_rdev(big);
    // The kernel's new_decode_dev.
    assert_eq!((enc & 0xfff00) >> 8, 259);
    assert_eq!((enc & 0xff) | ((enc >> 12) & 0xfff00), 0x12345);
}

#[test]
fn snapshots_appear_under_every_directory() {
    let f = fixture();
    let (snaps, _) = walk(&f.core, "snapshots").unwrap();
    let mut names = Vec::new();
    f.core
        .readdir(snaps, 2, |_, _, _, n| {
            names.push(n.to_vec());
            false
        })
        .unwrap();
    assert_eq!(names.len(), 1);
    let name = String::from_utf8(names.remove(0)).unwrap();
    let a = walk(&f.core, &format!("snapshots/{name}")).unwrap();
    let b = walk(&f.core, &format!("tags/daily/{name}")).unwrap();
    let c = walk(&f.core, &format!("hosts/box/{name}")).unwrap();
    assert!(a.0 != b.0 && b.0 != c.0 && a.0 != c.0, "one inode per path");
    let id = f.core.view().snapshots()[0].1.id.short();
    assert!(walk(&f.core, &format!("ids/{id}")).is_ok());
}
