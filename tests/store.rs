//! The store through the command line: backup, restore, dedup, incremental, check, rebuild-index,
//! crash safety.

use std::ffi::OsStr;
use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::faults;

on_each_backend!(
    restore_equals_source_on_edge_cases,
    restore_equals_source_on_corpus_history,
    excludes_and_multiple_paths,
    restore_does_not_overwrite_unless_told,
);
use crate::support::*;

/// A source tree of awkward cases.
fn edge_cases(root: &Path) {
    fs::create_dir_all(root).unwrap();
    fs::write(root.join("empty"), b"").unwrap();
    // Names with a newline, invalid UTF-8, spaces and a leading dash.
    fs::write(root.join(OsStr::from_bytes(b"new\nline")), b"x").unwrap();
    fs::write(root.join(OsStr::from_bytes(b"bad-\xff\xfe-utf8")), b"y").unwrap();
    fs::write(root.join(" -dash and space "), b"z").unwrap();
    // A sparse file: a hole, some data, a hole.
    {
        let mut f = fs::File::create(root.join("sparse")).unwrap();
        f.seek(SeekFrom::Start(20 << 20)).unwrap();
        f.write_all(b"middle").unwrap();
        f.set_len(40 << 20).unwrap();
    }
    // A small file of zeros: one chunk, restored as a hole of its size.
    fs::write(root.join("zeros"), vec![0u8; 100_000]).unwrap();
    // Files of exactly the largest chunk, one byte less and one more (default max 4 MiB), and of
    // exactly the smallest.
    for (name, n) in [("max", 4 << 20), ("max-1", (4 << 20) - 1), ("max+1", (4 << 20) + 1), ("min", 128 << 10)] {
        fs::write(root.join(name), pseudo_random(n, n as u64)).unwrap();
    }
    // A deep tree.
    let mut deep = root.join("deep");
    for i in 0..60 {
        deep = deep.join(format!("d{i}"));
    }
    fs::create_dir_all(&deep).unwrap();
    fs::write(deep.join("bottom.txt"), b"deep down").unwrap();
    // A long symlink target, a dangling one, a relative one.
    symlink("t".repeat(3000), root.join("long-link")).unwrap();
    symlink("../nowhere", root.join("dangling")).unwrap();
    symlink("empty", root.join("rel-link")).unwrap();
    // Hard links, across directories.
    fs::create_dir_all(root.join("links")).unwrap();
    fs::write(root.join("links/a"), b"linked content").unwrap();
    fs::hard_link(root.join("links/a"), root.join("links/b")).unwrap();
    fs::hard_link(root.join("links/a"), root.join("hard-c")).unwrap();
    // Modes: setgid directory, setuid file, read-only file and directory.
    fs::create_dir_all(root.join("modes/ro-dir")).unwrap();
    fs::write(root.join("modes/ro-dir/inside"), b"i").unwrap();
    fs::write(root.join("modes/setuid"), b"s").unwrap();
    fs::set_permissions(root.join("modes/setuid"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::write(root.join("modes/ro"), b"r").unwrap();
    fs::set_permissions(root.join("modes/ro"), fs::Permissions::from_mode(0o400)).unwrap();
    fs::set_permissions(root.join("modes/ro-dir"), fs::Permissions::from_mode(0o555)).unwrap();
    // A fifo.
    let fifo = std::ffi::CString::new(root.join("fifo").as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o640) }, 0);
    // Extended attributes.
    fs::write(root.join("with-xattr"), b"x").unwrap();
    xattr::set(root.join("with-xattr"), "user.comment", b"hello \x00 bytes").unwrap();
    xattr::set(root.join("with-xattr"), "user.empty", b"").unwrap();
    // Owners, when we can.
    if is_root() {
        fs::write(root.join("owned"), b"o").unwrap();
        std::os::unix::fs::lchown(root.join("owned"), Some(2001), Some(2002)).unwrap();
        std::os::unix::fs::lchown(root.join("dangling"), Some(2003), Some(2003)).unwrap();
    }
    // Old and precise mtimes.
    let t = filetime::FileTime::from_unix_time(1_000_000_000, 123_456_789);
    filetime::set_file_mtime(root.join("empty"), t).unwrap();
    filetime::set_symlink_file_times(root.join("rel-link"), t, t).unwrap();
}

fn restore_equals_source_on_edge_cases(t: TempRepo) {
    let src = t.path("src");
    edge_cases(&src);
    let snap = t.backup("h", &[&src]);
    assert_eq!(snap["summary"]["errors"], 0);
    let out = t.path("out");
    t.restore(&format!("latest:{}", src.display()), &out);
    assert_same_tree(&src, &out, &ShapeOptions::default());
    // The sparse file stays sparse.
    use std::os::unix::fs::MetadataExt;
    let blocks = fs::metadata(out.join("sparse")).unwrap().blocks();
    assert!(blocks * 512 < 8 << 20, "restored sparse file takes {} bytes", blocks * 512);
    // The whole snapshot restores with absolute paths kept.
    let whole = t.path("whole");
    t.restore("latest", &whole);
    assert_same_tree(&src, &whole.join(src.strip_prefix("/").unwrap()), &ShapeOptions::default());
    t.ok(&["check", "--read-data"]);
}

fn restore_equals_source_on_corpus_history(t: TempRepo) {
    let src = t.path("src");
    corpus_make(&src, 0.03);
    let mut ids = Vec::new();
    let mut copies = Vec::new();
    for generation in 0..3 {
        if generation > 0 {
            corpus_step(&src, generation);
        }
        let s = t.backup("fileserver", &[&src]);
        ids.push(s["id"].as_str().unwrap().to_string());
        // Keep a reference copy of each generation to compare old snapshots with.
        let copy = t.path(&format!("gen{generation}"));
        let out = Command::new("cp").arg("-a").arg(&src).arg(&copy).output().unwrap();
        assert_success(&out, "cp -a");
        copies.push(copy);
    }
    for (id, copy) in ids.iter().zip(&copies) {
        let out = t.path(&format!("restored-{}", &id[..8]));
        t.restore(&format!("{}:{}", &id[..8], src.display()), &out);
        assert_same_tree(copy, &out, &ShapeOptions { dir_mtimes: false, ..Default::default() });
    }
    t.ok(&["check", "--read-data"]);
}

#[test]
fn identical_files_are_stored_once() {
    let t = TempRepo::new();
    let src = t.path("src");
    fs::create_dir_all(src.join("a/b")).unwrap();
    let data = pseudo_random(3 << 20, 42);
    for p in ["one", "a/two", "a/b/three"] {
        fs::write(src.join(p), &data).unwrap();
    }
    let s = t.backup("h", &[&src]);
    let added = s["summary"]["bytes_added"].as_u64().unwrap();
    assert!(added < (3 << 20) + (64 << 10), "three identical 3 MiB files added {added} bytes");
    assert!(s["summary"]["bytes_read"].as_u64().unwrap() >= 9 << 20);
}

#[test]
fn insertion_in_a_large_file_adds_few_chunks() {
    let t = TempRepo::new();
    let src = t.path("src");
    fs::create_dir_all(&src).unwrap();
    let mut data = pseudo_random(64 << 20, 7);
    fs::write(src.join("big"), &data).unwrap();
    t.backup("h", &[&src]);
    data.splice(30 << 20..30 << 20, b"inserted in the middle".iter().copied());
    fs::write(src.join("big"), &data).unwrap();
    let s = t.backup("h", &[&src]);
    let blobs = s["summary"]["blobs_added"].as_u64().unwrap();
    let added = s["summary"]["bytes_added"].as_u64().unwrap();
    // One or two data chunks around the insertion, plus the changed directory trees.
    assert!(blobs <= 2 + 6, "an insertion added {blobs} blobs");
    assert!(added < 9 << 20, "an insertion added {added} bytes");
    let out = t.path("out");
    t.restore(&format!("latest:{}", src.display()), &out);
    assert_eq!(fs::read(out.join("big")).unwrap(), data);
}

#[test]
fn unchanged_tree_is_not_read_again() {
    // The snapshot records the source's ancestors: they must all be the test's own, or another
    // process creating a file in /tmp between the backups changes the root tree.
    let t = TempRepo::owning_its_ancestors();
    let src = t.path("src");
    corpus_make(&src, 0.02);
    let first = t.backup("h", &[&src]);
    let second = t.backup("h", &[&src]);
    assert_eq!(second["summary"]["bytes_read"], 0, "{second}");
    assert_eq!(second["summary"]["files_new"], 0);
    assert_eq!(second["summary"]["files_changed"], 0);
    assert_eq!(second["summary"]["files_unchanged"], first["summary"]["files_new"]);
    // Nothing new but, at most, the directories above the source (`/`, `/tmp`, the test's
    // directory): their metadata is recorded too, and other tests running at once change the
    // mtime of `/tmp`. The source's own tree is the same.
    assert!(second["summary"]["blobs_added"].as_u64().unwrap() <= 3, "{second}");
    let listing = |s: &serde_json::Value| {
        t.ok(&[
            OsStr::new("ls"),
            OsStr::new(&s["id"].as_str().unwrap()[..8]),
            src.as_os_str(),
            OsStr::new("-R"),
            OsStr::new("--json"),
        ])
    };
    assert_eq!(listing(&first), listing(&second));
    assert_eq!(second["parent"], first["id"]);
    // A touched file is read again, the rest is not.
    let f = src.join("users/alice/logs/activity.log");
    filetime::set_file_mtime(&f, filetime::FileTime::from_unix_time(1_800_000_000, 0)).unwrap();
    let third = t.backup("h", &[&src]);
    assert_eq!(third["summary"]["files_changed"], 1);
    assert_eq!(third["summary"]["bytes_read"].as_u64(), Some(fs::metadata(&f).unwrap().len()));
}

#[test]
fn flipped_byte_is_found_and_named() {
    let t = TempRepo::new();
    let src = t.path("src");
    fs::create_dir_all(src.join("docs")).unwrap();
    fs::write(src.join("docs/victim.bin"), pseudo_random(1 << 20, 1)).unwrap();
    t.backup("h", &[&src]);
    t.ok(&["check", "--read-data"]);
    // The data pack is the large one; flip a byte in its middle.
    let pack = repo_files(&t.repo, "data").into_iter().max_by_key(|p| fs::metadata(p).unwrap().len()).unwrap();
    let mut bytes = fs::read(&pack).unwrap();
    let mid = bytes.len() / 3;
    bytes[mid] ^= 0x40;
    fs::write(&pack, &bytes).unwrap();
    // Structure still fine; data not.
    t.ok(&["check"]);
    let out = t.run(&["check", "--read-data"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("docs/victim.bin"), "check does not name the file: {err}");
    // Restoring the damaged file fails loudly instead of writing wrong bytes.
    let r = t.run(&[OsStr::new("restore"), OsStr::new("latest"), OsStr::new("--target"), t.path("out").as_os_str()]);
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr).contains("victim.bin"));
}

#[test]
fn rebuild_index_after_deleting_it() {
    let t = TempRepo::new();
    let src = t.path("src");
    corpus_make(&src, 0.02);
    t.backup("h", &[&src]);
    fs::remove_dir_all(t.repo.join("index")).unwrap();
    fs::create_dir(t.repo.join("index")).unwrap();
    let broken = t.run(&["check"]);
    assert!(!broken.status.success(), "check passes without an index");
    t.ok(&["rebuild-index"]);
    t.ok(&["check", "--read-data"]);
    let out = t.path("out");
    t.restore(&format!("latest:{}", src.display()), &out);
    assert_same_tree(&src, &out, &ShapeOptions::default());
    // A damaged index file is refused with advice, and rebuilt.
    let idx = repo_files(&t.repo, "index").remove(0);
    let mut b = fs::read(&idx).unwrap();
    b[20] ^= 1;
    fs::write(&idx, b).unwrap();
    let r = t.run(&["ls", "latest"]);
    assert!(String::from_utf8_lossy(&r.stderr).contains("rebuild-index"), "{}", String::from_utf8_lossy(&r.stderr));
    t.ok(&["rebuild-index"]);
    t.ok(&["check"]);
    t.ok(&["ls", "latest"]);
}

#[test]
fn kill_during_backup_leaves_a_valid_repository() {
    let t = TempRepo::new();
    let src = t.path("src");
    corpus_make(&src, 0.3);
    // Killed at moments seen on disk, not after delays (which a loaded machine stretches): at
    // once, and once the backup has written its first, second and fourth pack file (of ten).
    for packs in [0usize, 1, 2, 4] {
        let before = repo_files(&t.repo, "data").len();
        let mut child = t
            .cmd()
            .args([OsStr::new("backup"), OsStr::new("--host"), OsStr::new("h"), src.as_os_str()])
            .spawn()
            .unwrap();
        wait_until(&format!("{packs} new pack files"), || {
            repo_files(&t.repo, "data").len() >= before + packs || child.try_wait().unwrap().is_some()
        });
        // SAFETY: kill on a child pid we own (not yet reaped, so not reused).
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        let status = child.wait().unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL), "the backup ended before it had written {packs} packs");
        t.ok(&["check"]);
    }
    let s = t.backup("h", &[&src]);
    assert_eq!(s["summary"]["errors"], 0);
    t.ok(&["check", "--read-data"]);
    let out = t.path("out");
    t.restore(&format!("latest:{}", src.display()), &out);
    assert_same_tree(&src, &out, &ShapeOptions::default());
}

#[test]
fn errors_are_one_clear_line() {
    let t = TempRepo::new();
    let missing = t.path("no-such-repo");
    let out = rewind_cmd().args([OsStr::new("snapshots"), OsStr::new("--repo"), missing.as_os_str()]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("rewind init"), "{err}");

    // A repository of a newer format is refused, with a reason.
    let cfg = t.repo.join("config");
    let before = fs::read_to_string(&cfg).unwrap();
    let text = before.replace("\"version\": 4", "\"version\": 99");
    assert_ne!(text, before, "a new repository is of version 4");
    fs::write(&cfg, text).unwrap();
    let out = t.run(&["snapshots"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("version 99") && err.contains("upgrade"), "{err}");

    let t = TempRepo::new();
    let out = t.run(&["ls", "deadbeef"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
    let out = t.run(&[OsStr::new("backup"), t.path("missing-source").as_os_str()]);
    assert!(!out.status.success());
    assert!(t.snapshots().is_empty());
}

#[test]
fn unreadable_files_are_reported_and_skipped() {
    // Run the backup as an unprivileged user, so that a 0000 file really is unreadable.
    assert!(is_root(), "this test runs as root to switch to an unprivileged user with setpriv");
    let t = TempRepo::new();
    let src = t.path("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    fs::write(src.join("readable"), b"fine").unwrap();
    fs::write(src.join("secret"), b"no").unwrap();
    fs::set_permissions(src.join("secret"), fs::Permissions::from_mode(0o000)).unwrap();
    fs::set_permissions(src.join("sub"), fs::Permissions::from_mode(0o000)).unwrap();
    for p in [t.dir.path(), &src] {
        fs::set_permissions(p, fs::Permissions::from_mode(0o777)).unwrap();
    }
    Command::new("chown").args(["-R", "65534:65534"]).arg(&t.repo).status().unwrap();
    let out = t
        .cmd_env(&mut Command::new("setpriv"))
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(rewind_bin())
        .args([
            OsStr::new("backup"),
            OsStr::new("--repo"),
            t.repo.as_os_str(),
            OsStr::new("--host"),
            OsStr::new("h"),
            src.as_os_str(),
        ])
        .output()
        .expect("setpriv (util-linux)");
    assert_eq!(out.status.code(), Some(3), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("secret") && err.contains("sub"), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("2 skipped"));
    let ls = t.ok(&[OsStr::new("ls"), OsStr::new("latest"), src.as_os_str()]);
    assert!(ls.contains("readable") && !ls.contains("secret"), "{ls}");
}

fn excludes_and_multiple_paths(t: TempRepo) {
    let a = t.path("srv/a");
    let b = t.path("etc/b");
    for d in [&a, &b] {
        fs::create_dir_all(d.join("cache")).unwrap();
        fs::write(d.join("keep.txt"), b"k").unwrap();
        fs::write(d.join("drop.tmp"), b"d").unwrap();
        fs::write(d.join("cache/x"), b"c").unwrap();
    }
    let pattern = format!("{}/cache", a.display());
    t.ok(&[
        OsStr::new("backup"),
        OsStr::new("--host"),
        OsStr::new("h"),
        OsStr::new("--tag"),
        OsStr::new("nightly"),
        OsStr::new("--exclude"),
        OsStr::new("*.tmp"),
        OsStr::new("--exclude"),
        OsStr::new(&pattern),
        a.as_os_str(),
        b.as_os_str(),
    ]);
    let ls = t.ok(&["ls", "latest", "-R", "--json"]);
    let paths: Vec<String> = ls
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["path"].as_str().unwrap().to_string())
        .collect();
    let has = |p: &Path| paths.iter().any(|x| x == &p.to_string_lossy());
    assert!(has(&a.join("keep.txt")) && has(&b.join("keep.txt")));
    assert!(!has(&a.join("drop.tmp")) && !has(&b.join("drop.tmp")));
    assert!(!has(&a.join("cache")) && has(&b.join("cache/x")));
    assert_eq!(t.snapshots()[0]["tags"][0], "nightly");
}

/// Item 4: of concurrent inits of one path, exactly one succeeds, and the config is its.
#[test]
fn concurrent_init_has_one_winner() {
    for round in 0..10 {
        let d = tempfile::tempdir().unwrap();
        let repo = d.path().join("repo");
        let children: Vec<_> = (0..4)
            .map(|_| {
                rewind_cmd()
                    .arg("init")
                    .arg(&repo)
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let outs: Vec<_> = children.into_iter().map(|c| c.wait_with_output().unwrap()).collect();
        let winners: Vec<_> = outs.iter().filter(|o| o.status.success()).collect();
        assert_eq!(winners.len(), 1, "round {round}: {} inits succeeded", winners.len());
        let config: serde_json::Value = serde_json::from_slice(&fs::read(repo.join("config")).unwrap()).unwrap();
        let said = String::from_utf8_lossy(&winners[0].stdout);
        assert!(
            said.contains(&config["id"].as_str().unwrap()[..8]),
            "round {round}: the config is not the winner's: {said}"
        );
        for o in outs.iter().filter(|o| !o.status.success()) {
            let err = String::from_utf8_lossy(&o.stderr);
            assert_eq!(err.trim().lines().count(), 1, "{err}");
        }
    }
}

/// Item 9: SIGINT and SIGTERM end a backup cleanly: lock removed, nothing left in tmp/, a
/// message, exit 130 or 143, no snapshot; the next backup works.
#[test]
fn interrupted_backup_ends_cleanly() {
    let t = TempRepo::new();
    let src = t.path("src");
    faults::make_source(&src, 40, 64 << 20, 9);
    let p = faults::Points::new(&t);
    for (sig, code) in [(libc::SIGINT, 130), (libc::SIGTERM, 143)] {
        // Stop the backup after its first pack, signal it there, and let it go on.
        for f in faults::files_of(t.dir.path(), "failpoints") {
            fs::remove_file(f).unwrap();
        }
        let mut child = p.spawn(
            &t,
            "pack-written=pause",
            &[OsStr::new("backup"), OsStr::new("--host"), OsStr::new("h"), src.as_os_str()],
        );
        assert!(p.wait("pack-written", &mut child), "the backup ended before writing a pack");
        // SAFETY: a signal to our own child.
        unsafe { libc::kill(child.id() as i32, sig) };
        std::thread::sleep(Duration::from_millis(200));
        p.release("pack-written");
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(code), "stderr: {}", String::from_utf8_lossy(&out.stderr));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("interrupted") || err.contains("terminated"), "{err}");
        assert!(faults::files_of(&t.repo, "locks").is_empty(), "the lock was left behind");
        assert!(faults::files_of(&t.repo, "tmp").is_empty(), "files were left in tmp/");
        assert!(t.snapshots().is_empty());
        t.ok(&["check"]);
    }
    t.backup("h", &[&src]);
    t.ok(&["check", "--read-data"]);
}

/// Item 11: restore into an existing folder refuses to replace anything unless told how.
fn restore_does_not_overwrite_unless_told(t: TempRepo) {
    let src = t.path("src");
    fs::create_dir_all(src.join("dir")).unwrap();
    fs::write(src.join("edited.txt"), b"backed up").unwrap();
    fs::write(src.join("same.txt"), b"same").unwrap();
    fs::write(src.join("dir/inside"), b"in").unwrap();
    fs::write(src.join("missing.txt"), b"restore me").unwrap();
    t.backup("h", &[&src]);
    let target = t.path("target");
    fs::create_dir_all(target.join("dir/keep")).unwrap();
    fs::write(target.join("dir/keep/mine"), b"mine").unwrap();
    fs::write(target.join("edited.txt"), b"edited since").unwrap();
    fs::write(target.join("same.txt"), b"same").unwrap();
    let what = format!("latest:{}", src.display());
    let run = |extra: &[&str]| {
        let mut args: Vec<&OsStr> =
            vec![OsStr::new("restore"), OsStr::new(&what), OsStr::new("--target"), target.as_os_str()];
        args.extend(extra.iter().map(OsStr::new));
        t.run(&args)
    };
    let refused = run(&[]);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("--overwrite") && err.trim().lines().count() == 1, "{err}");
    assert_eq!(fs::read(target.join("edited.txt")).unwrap(), b"edited since");
    assert!(!target.join("missing.txt").exists(), "a refused restore wrote something");
    t.ok(&[
        OsStr::new("restore"),
        OsStr::new(&what),
        OsStr::new("--target"),
        target.as_os_str(),
        OsStr::new("--overwrite"),
        OsStr::new("never"),
    ]);
    assert_eq!(fs::read(target.join("edited.txt")).unwrap(), b"edited since");
    assert_eq!(fs::read(target.join("missing.txt")).unwrap(), b"restore me");
    t.ok(&[
        OsStr::new("restore"),
        OsStr::new(&what),
        OsStr::new("--target"),
        target.as_os_str(),
        OsStr::new("--overwrite"),
        OsStr::new("if-changed"),
    ]);
    assert_eq!(fs::read(target.join("edited.txt")).unwrap(), b"backed up");
    assert_eq!(fs::read(target.join("dir/keep/mine")).unwrap(), b"mine", "a directory merge lost a file");
    fs::write(target.join("edited.txt"), b"edited again").unwrap();
    t.ok(&[
        OsStr::new("restore"),
        OsStr::new(&what),
        OsStr::new("--target"),
        target.as_os_str(),
        OsStr::new("--overwrite"),
        OsStr::new("always"),
    ]);
    assert_eq!(fs::read(target.join("edited.txt")).unwrap(), b"backed up");
}

/// Item 13: a closed pipe ends listing commands quietly with status 0.
#[test]
fn closed_pipe_ends_quietly() {
    let t = TempRepo::new();
    let src = t.path("src");
    fs::create_dir_all(&src).unwrap();
    for i in 0..3000 {
        fs::write(src.join(format!("file-{i:05}-deleted")), b"x").unwrap();
    }
    t.backup("h", &[&src]);
    for i in 0..3000 {
        fs::remove_file(src.join(format!("file-{i:05}-deleted"))).unwrap();
    }
    for _ in 0..40 {
        t.backup("h", &[&src]);
    }
    for cmd in ["snapshots", "deleted --all", "ls latest -R", "find deleted --all"] {
        let sh = format!("{} {cmd} | head -1", rewind_bin().display());
        let out = t.cmd_env(&mut Command::new("bash")).args(["-o", "pipefail", "-c", &sh]).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "`{cmd} | head -1` failed: {err}");
        assert!(!err.contains("panicked") && err.trim().is_empty(), "`{cmd} | head -1` said: {err}");
    }
}

/// Item 12: `find` shows a newline in a name escaped, as `ls` does.
#[test]
fn find_escapes_names() {
    let t = TempRepo::new();
    let src = t.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join(OsStr::from_bytes(b"two\nlines.txt")), b"x").unwrap();
    t.backup("h", &[&src]);
    let out = t.ok(&["find", "lines"]);
    assert_eq!(out.trim_end().lines().count(), 1, "{out}");
    assert!(out.contains("two\\nlines.txt"), "{out}");
}
