//! Encrypted repositories (format version 2): what someone who reads the repository sees, what
//! tampering does, keys and passwords, nonces, keyed ids, version 1 repositories, and copies
//! between repositories of different keys and versions.

use std::collections::{BTreeSet, HashSet};
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use rewind_store::{BlobKind, CacheSizes, Repository};

use crate::support::faults::{files_of, flip_byte, make_source};
use crate::support::{
    ShapeOptions, TEST_PASSWORD, TempRepo, assert_same_tree, assert_success, corpus_make, rewind_bin, rewind_cmd,
};

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Every file of a directory tree, recursively.
fn all_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Someone who reads the repository's files finds no name, path, host, tag or content of what
/// was backed up: everything a corpus of homes holds is sealed.
#[test]
fn the_repository_shows_nothing_of_what_it_holds() {
    let t = TempRepo::new();
    let src = t.path("corpus");
    corpus_make(&src, 0.03);
    let out = t.ok(&[
        OsStr::new("backup"),
        OsStr::new("--host"),
        OsStr::new("fileserver-secret-host"),
        OsStr::new("--tag"),
        OsStr::new("quarterly-secret-tag"),
        src.as_os_str(),
    ]);
    assert!(out.contains("saved"), "{out}");
    // A second backup and a prune leave index files written by prune and repacked packs too.
    crate::support::corpus_step(&src, 1);
    t.backup("fileserver-secret-host", &[&src]);
    t.ok(&["prune"]);

    // What to look for: every name of 8 bytes or more, slices of the text files' content, the
    // host, the tag, and the source path.
    let mut needles: BTreeSet<Vec<u8>> = BTreeSet::new();
    needles.insert(b"fileserver-secret-host".to_vec());
    needles.insert(b"quarterly-secret-tag".to_vec());
    needles.insert(src.as_os_str().as_bytes().to_vec());
    for f in all_files(&src) {
        let name = f.file_name().unwrap().as_bytes().to_vec();
        if name.len() >= 8 {
            needles.insert(name);
        }
        let bytes = fs::read(&f).unwrap();
        let text = bytes.len() > 64 && bytes[..64].iter().all(|b| b.is_ascii_graphic() || *b == b' ' || *b == b'\n');
        if text {
            for at in [0, bytes.len() / 2, bytes.len() - 24] {
                needles.insert(bytes[at..at + 24].to_vec());
            }
        }
    }
    assert!(needles.len() > 200, "too few needles: {}", needles.len());
    let files = all_files(&t.repo);
    let has_key = files.iter().any(|f| f.starts_with(t.repo.join("keys")));
    let needles: Vec<Vec<u8>> = needles.into_iter().collect();
    let finder = aho_corasick::AhoCorasick::new(&needles).unwrap();
    for f in files {
        let hay = fs::read(&f).unwrap();
        if let Some(m) = finder.find(&hay) {
            panic!(
                "{} holds {:?} in the clear",
                f.display(),
                String::from_utf8_lossy(&needles[m.pattern().as_usize()])
            );
        }
    }
    assert!(has_key, "no key file");
    // The catalog holds paths in the clear, by design (FORMAT.md, "Threat model"): outside the
    // repository (checked above: no file of it holds a path), for its owner only.
    let catalog = t.catalog_path();
    assert!(catalog.exists(), "the backup made the catalog");
    assert_eq!(fs::metadata(&catalog).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(fs::metadata(catalog.parent().unwrap()).unwrap().permissions().mode() & 0o777, 0o700);
    t.ok(&["check", "--read-data"]);
}

/// Every sealed object draws its own nonce: none repeats, however many writers run at once.
#[test]
fn nonces_never_repeat_under_concurrent_backups() {
    let t = TempRepo::new();
    let sources: Vec<PathBuf> = (0..8).map(|i| t.path(&format!("src{i}"))).collect();
    for (i, s) in sources.iter().enumerate() {
        make_source(s, 40, 6 << 20, 100 + i as u64);
    }
    let children: Vec<_> = sources
        .iter()
        .enumerate()
        .map(|(i, s)| {
            t.cmd()
                .args([OsStr::new("backup"), OsStr::new("--host"), OsStr::new(&format!("h{i}")), s.as_os_str()])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let repo = t.open();
    let codec = repo.codec();
    let mut nonces: Vec<[u8; 24]> = Vec::new();
    let nonce = |b: &[u8], at: usize| -> [u8; 24] { b[at..at + 24].try_into().unwrap() };
    for p in files_of(&t.repo, "data") {
        let bytes = fs::read(&p).unwrap();
        let (records, from_head) = codec.decode_pack(&bytes).unwrap();
        assert!(!from_head);
        // The records' sealed copy (after "RWNDPACK" v2 "RWNDPHDR" len), then every blob (the
        // members of a group share its bytes: one nonce).
        nonces.push(nonce(&bytes, 24));
        let sealed: BTreeSet<u64> = records.iter().map(|r| r.offset).collect();
        for offset in sealed {
            nonces.push(nonce(&bytes, offset as usize));
        }
    }
    for p in files_of(&t.repo, "index") {
        nonces.push(nonce(&fs::read(p).unwrap(), 12));
    }
    for p in files_of(&t.repo, "snapshots") {
        nonces.push(nonce(&fs::read(p).unwrap(), 0));
    }
    let snapshots = files_of(&t.repo, "snapshots").len();
    assert_eq!(snapshots, 8);
    // Eight backups of 40 files each: the large files' chunks, groups of the small ones, the
    // packs' records, index files and snapshots.
    assert!(nonces.len() > 8 * 16, "{} nonces", nonces.len());
    let unique: HashSet<[u8; 24]> = nonces.iter().copied().collect();
    assert_eq!(unique.len(), nonces.len(), "a nonce repeats among {}", nonces.len());
}

/// The same content gets other ids in another repository (ids are keyed), and the same in one
/// made with `--copy-chunker-params` from it.
#[test]
fn content_ids_are_keyed_per_repository() {
    // The source's tree records its ancestors: they must all be the test's own, or another
    // process creating a file in /tmp between the backups of `a` and `c` changes the tree.
    let a = TempRepo::owning_its_ancestors();
    let b = TempRepo::new();
    let c = TempRepo::with_content_identity_of(&a);
    let src = a.path("src");
    make_source(&src, 10, 4 << 20, 7);
    let ids = |t: &TempRepo| -> (String, BTreeSet<String>) {
        let snap = t.backup("h", &[&src]);
        let repo = t.open().open_indexed(CacheSizes::default()).unwrap();
        let chunks: BTreeSet<String> =
            repo.blob_ids().into_iter().filter(|b| b.kind == BlobKind::Data).map(|b| b.hash.to_hex()).collect();
        (snap["tree"].as_str().unwrap().to_string(), chunks)
    };
    let (tree_a, chunks_a) = ids(&a);
    let (tree_b, chunks_b) = ids(&b);
    let (tree_c, chunks_c) = ids(&c);
    assert!(!chunks_a.is_empty());
    assert_ne!(tree_a, tree_b);
    assert!(chunks_a.is_disjoint(&chunks_b), "two repositories share chunk ids");
    assert_eq!(tree_a, tree_c);
    assert_eq!(chunks_a, chunks_c);
}

/// A wrong password, a raw key of another repository, no password at all, a missing key file:
/// each is one clear line and exit status 1, and nothing is written.
#[test]
fn wrong_or_missing_keys_are_one_clear_line() {
    let t = TempRepo::new();
    let src = t.path("src");
    make_source(&src, 3, 1 << 20, 1);
    t.backup("h", &[&src]);
    let before = all_files(&t.repo).len();
    let run = |envs: &[(&str, &str)], args: &[&str]| {
        let mut c = Command::new(rewind_bin());
        c.env("REWIND_REPO", &t.repo).env("RUST_LOG", "warn").env_remove("REWIND_PASSWORD");
        for (k, v) in envs {
            c.env(k, v);
        }
        c.args(args).stdin(std::process::Stdio::null()).output().unwrap()
    };
    let one_line_failure = |o: &std::process::Output, want: &str| {
        let e = stderr(o);
        assert_eq!(o.status.code(), Some(1), "{e}");
        assert_eq!(e.trim().lines().count(), 1, "{e}");
        assert!(e.contains(want), "wanted {want:?}: {e}");
    };
    let o = run(&[("REWIND_PASSWORD", "not the password")], &["snapshots"]);
    one_line_failure(&o, "wrong password");
    // The key files are named, so the user can tell which repository this is.
    let key = fs::read_dir(t.repo.join("keys")).unwrap().next().unwrap().unwrap().file_name();
    assert!(stderr(&o).contains(&key.to_string_lossy()[..8]), "{}", stderr(&o));
    one_line_failure(&run(&[], &["snapshots"]), "is encrypted: give its password");
    let other_key = t.path("other.key");
    fs::write(&other_key, format!("{}\n", "ab".repeat(32))).unwrap();
    one_line_failure(&run(&[("REWIND_KEY_FILE", other_key.to_str().unwrap())], &["snapshots"]), "wrong raw key");
    one_line_failure(&run(&[], &["snapshots", "--key-file", "/no/such/key"]), "cannot read the key file /no/such/key");
    one_line_failure(
        &run(&[], &["backup", "--password-command", "exit 3", src.to_str().unwrap()]),
        "the password command \"exit 3\" failed",
    );
    assert_eq!(all_files(&t.repo).len(), before, "a refused command wrote something");
    // The right password from each place opens it.
    let pw_file = t.path("pw");
    fs::write(&pw_file, format!("{TEST_PASSWORD}\nignored second line\n")).unwrap();
    for envs in [
        vec![("REWIND_PASSWORD", TEST_PASSWORD)],
        vec![("REWIND_PASSWORD_FILE", pw_file.to_str().unwrap())],
        vec![("REWIND_PASSWORD_COMMAND", &*format!("echo {TEST_PASSWORD}"))],
    ] {
        assert_success(&run(&envs, &["snapshots"]), &format!("snapshots with {envs:?}"));
    }
    assert_success(&run(&[], &["snapshots", "--password-file", pw_file.to_str().unwrap()]), "--password-file");
}

/// Tampering with one byte of any object is caught and named: the config, a key file, a blob, a
/// pack's records, an index file, a snapshot. Never wrong bytes.
#[test]
fn tampering_is_detected_and_named() {
    let t = TempRepo::new();
    let src = t.path("src");
    make_source(&src, 6, 3 << 20, 5);
    let snap = t.backup("h", &[&src]);
    let id = snap["id"].as_str().unwrap().to_string();

    // The config's sealed part (the base64 of it changed) and a key file's wrapped key.
    let cfg = t.repo.join("config");
    let good_cfg = fs::read(&cfg).unwrap();
    let text = String::from_utf8(good_cfg.clone()).unwrap();
    let at = text.find("\"sealed\": \"").unwrap() + 30;
    let mut bad = text.into_bytes();
    bad[at] = if bad[at] == b'A' { b'B' } else { b'A' };
    fs::write(&cfg, &bad).unwrap();
    let o = t.run(&["snapshots"]);
    assert!(!o.status.success() && stderr(&o).contains("corrupt config"), "{}", stderr(&o));
    fs::write(&cfg, &good_cfg).unwrap();

    let key = files_of(&t.repo, "keys").pop().unwrap();
    let good_key = fs::read(&key).unwrap();
    let text = String::from_utf8(good_key.clone()).unwrap();
    let at = text.find("\"data\": \"").unwrap() + 20;
    let mut bad = text.into_bytes();
    bad[at] = if bad[at] == b'A' { b'B' } else { b'A' };
    fs::write(&key, &bad).unwrap();
    let o = t.run(&["snapshots"]);
    assert!(!o.status.success() && stderr(&o).contains("wrong password"), "{}", stderr(&o));
    fs::write(&key, &good_key).unwrap();

    // A snapshot: named, skipped.
    let snap_file = t.repo.join("snapshots").join(&id);
    let good_snap = fs::read(&snap_file).unwrap();
    flip_byte(&snap_file, 100);
    let o = t.run(&["snapshots"]);
    assert!(stderr(&o).contains(&id[..8]) && stderr(&o).contains("authentication failed"), "{}", stderr(&o));
    fs::write(&snap_file, &good_snap).unwrap();

    // An index file: skipped with a warning, blobs found through the packs; check names it.
    let idx = files_of(&t.repo, "index").pop().unwrap();
    let good_idx = fs::read(&idx).unwrap();
    flip_byte(&idx, 40);
    let c = t.run(&["check"]);
    assert!(!c.status.success() && stderr(&c).contains("index file"), "{}", stderr(&c));
    let out = t.path("out-idx");
    t.restore(&id[..8], &out);
    fs::write(&idx, &good_idx).unwrap();

    // A blob in the middle of the largest pack: check names the damaged blob and the file that
    // uses it; restoring that file fails; nothing restores wrong bytes.
    let pack = files_of(&t.repo, "data").into_iter().max_by_key(|p| fs::metadata(p).unwrap().len()).unwrap();
    let len = fs::metadata(&pack).unwrap().len() as usize;
    flip_byte(&pack, len / 2);
    let c = t.run(&["check", "--read-data"]);
    assert!(!c.status.success() && stderr(&c).contains("damaged:"), "{}", stderr(&c));
    let out = t.path("out-blob");
    let r = t.run(&[OsStr::new("restore"), OsStr::new(&id[..8]), OsStr::new("--target"), out.as_os_str()]);
    assert!(!r.status.success(), "a restore through a damaged blob succeeded");
    for f in all_files(&out) {
        let rel = f.strip_prefix(&out).unwrap();
        let original = Path::new("/").join(rel);
        if fs::metadata(&f).unwrap().len() == fs::metadata(&original).unwrap().len() {
            assert_eq!(fs::read(&f).unwrap(), fs::read(&original).unwrap(), "{} restored wrong", f.display());
        }
    }
}

/// Keys: add a password and a raw key, list them, open with each, change a password, and the
/// last key and the one in use cannot be removed.
#[test]
fn keys_are_added_listed_changed_and_removed() {
    let t = TempRepo::new();
    let src = t.path("src");
    make_source(&src, 2, 1 << 20, 3);
    t.backup("h", &[&src]);
    let run = |envs: &[(&str, &str)], args: &[&OsStr]| {
        let mut c = rewind_cmd();
        c.env("REWIND_REPO", &t.repo).env("RUST_LOG", "warn");
        for (k, v) in envs {
            c.env(k, v);
        }
        c.args(args).stdin(std::process::Stdio::null()).output().unwrap()
    };
    let ok = |envs: &[(&str, &str)], args: &[&str]| {
        let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        let o = run(envs, &args);
        assert_success(&o, &format!("{args:?}"));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let list = ok(&[], &["key", "list"]);
    assert_eq!(list.lines().count(), 1, "{list}");
    assert!(list.starts_with('*') && list.contains("password"), "{list}");
    ok(&[("REWIND_NEW_PASSWORD", "second password")], &["key", "add"]);
    let raw = t.path("raw.key");
    ok(&[], &["key", "add", "--new-raw-key-file", raw.to_str().unwrap()]);
    assert_eq!(fs::metadata(&raw).unwrap().permissions().mode() & 0o777, 0o600);
    let list = ok(&[], &["key", "list"]);
    assert_eq!(list.lines().count(), 3, "{list}");
    assert!(list.contains("raw key"), "{list}");
    ok(&[("REWIND_PASSWORD", "second password")], &["snapshots"]);
    ok(&[("REWIND_KEY_FILE", raw.to_str().unwrap())], &["snapshots"]);
    // The key in use cannot go; another can.
    let current = list.lines().find(|l| l.starts_with('*')).unwrap().split_whitespace().nth(1).unwrap().to_string();
    let o = run(&[], &[OsStr::new("key"), OsStr::new("remove"), OsStr::new(&current)]);
    assert!(!o.status.success() && stderr(&o).contains("in use"), "{}", stderr(&o));
    // Change the test password: a new key, the old one gone.
    ok(&[("REWIND_NEW_PASSWORD", "changed")], &["key", "passwd"]);
    let o = run(&[], &[OsStr::new("snapshots")]);
    assert!(!o.status.success() && stderr(&o).contains("wrong password"), "{}", stderr(&o));
    ok(&[("REWIND_PASSWORD", "changed")], &["snapshots"]);
    // Remove the others until one is left; the last cannot go.
    let list = ok(&[("REWIND_PASSWORD", "changed")], &["key", "list"]);
    let others: Vec<String> = list
        .lines()
        .filter(|l| !l.starts_with('*'))
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect();
    assert_eq!(others.len(), 2, "{list}");
    for k in &others {
        ok(&[("REWIND_PASSWORD", "changed")], &["key", "remove", k]);
    }
    let o = run(&[("REWIND_KEY_FILE", raw.to_str().unwrap())], &[OsStr::new("snapshots")]);
    assert!(!o.status.success(), "a removed raw key still opens the repository");
    let o =
        run(&[("REWIND_PASSWORD", "changed")], &[OsStr::new("key"), OsStr::new("remove"), OsStr::new(&current[..4])]);
    assert!(!o.status.success(), "{}", stderr(&o));
    let o = run(&[("REWIND_PASSWORD", "changed")], &[OsStr::new("key"), OsStr::new("remove"), OsStr::new("ffffffff")]);
    assert!(!o.status.success() && stderr(&o).contains("the keys are"), "{}", stderr(&o));
}

/// An unencrypted repository says so, and refuses a backup that was given a password (its
/// config may have been swapped to make rewind write in the clear).
#[test]
fn unencrypted_repositories_say_so_and_refuse_a_password() {
    let t = TempRepo::plain();
    let src = t.path("src");
    make_source(&src, 2, 1 << 20, 9);
    t.backup("h", &[&src]);
    let out = t.ok(&["snapshots"]);
    assert!(out.contains("NOT encrypted"), "{out}");
    let out = t.ok(&["check"]);
    assert!(out.contains("NOT encrypted"), "{out}");
    let o = t.cmd().env("REWIND_PASSWORD", "x").args([OsStr::new("backup"), src.as_os_str()]).output().unwrap();
    assert!(!o.status.success() && stderr(&o).contains("not encrypted"), "{}", stderr(&o));
    // An encrypted repository's config replaced by an unencrypted one: refused the same way.
    let e = TempRepo::new();
    fs::copy(t.repo.join("config"), e.repo.join("config")).unwrap();
    let o = e.run(&[OsStr::new("backup"), src.as_os_str()]);
    assert!(!o.status.success() && stderr(&o).contains("refusing to write"), "{}", stderr(&o));
}

/// A repository written by rewind before encryption existed (format version 1, committed as a
/// fixture) still lists, restores and checks, and copies into an encrypted one with every file
/// byte for byte the same.
#[test]
fn version_1_repositories_still_read_and_upgrade_by_copy() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1-repo");
    let dir = tempfile::tempdir().unwrap();
    let v1 = dir.path().join("v1");
    copy_tree(&fixture, &v1);
    let run_v1 = |args: &[&str]| {
        let o = Command::new(rewind_bin()).env("RUST_LOG", "warn").env("REWIND_REPO", &v1).args(args).output().unwrap();
        assert_success(&o, &format!("{args:?} on the version 1 fixture"));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let listed = run_v1(&["snapshots", "--json"]);
    let snaps: Vec<serde_json::Value> = serde_json::from_str(&listed).unwrap();
    assert!(snaps.len() >= 2, "{listed}");
    run_v1(&["check", "--read-data"]);
    let restored_v1: Vec<PathBuf> = snaps
        .iter()
        .map(|s| {
            let out = dir.path().join(format!("r1-{}", s["short_id"].as_str().unwrap()));
            run_v1(&["restore", s["short_id"].as_str().unwrap(), "--target", out.to_str().unwrap()]);
            out
        })
        .collect();
    // Upgrade: copy into a new encrypted repository; every snapshot restores the same.
    let v2 = TempRepo::new();
    let o = Command::new(rewind_bin())
        .env("RUST_LOG", "warn")
        .env("REWIND_REPO", &v1)
        .env("REWIND_TO_PASSWORD", TEST_PASSWORD)
        .args([OsStr::new("copy"), OsStr::new("--to"), v2.repo.as_os_str()])
        .output()
        .unwrap();
    assert_success(&o, "copy of the version 1 fixture into an encrypted repository");
    let copied = v2.snapshots();
    assert_eq!(copied.len(), snaps.len());
    for (s, r1) in snaps.iter().zip(&restored_v1) {
        let c =
            copied.iter().find(|c| c["original"].as_str() == s["id"].as_str()).expect("the copy names its original");
        assert_eq!(c["time"], s["time"]);
        let out = dir.path().join(format!("r2-{}", s["short_id"].as_str().unwrap()));
        v2.restore(&c["id"].as_str().unwrap()[..8], &out);
        assert_same_tree(r1, &out, &ShapeOptions::default());
    }
    v2.ok(&["check", "--read-data"]);
    // Copying again adds nothing.
    let o = Command::new(rewind_bin())
        .env("RUST_LOG", "warn")
        .env("REWIND_REPO", &v1)
        .env("REWIND_TO_PASSWORD", TEST_PASSWORD)
        .args([OsStr::new("copy"), OsStr::new("--to"), v2.repo.as_os_str()])
        .output()
        .unwrap();
    assert_success(&o, "second copy");
    assert!(String::from_utf8_lossy(&o.stdout).contains(&format!("0 snapshots copied, {} already there", snaps.len())));
}

/// Copies between encrypted repositories: with other keys (content named and cut anew), and
/// with `--copy-chunker-params` (ids kept, blobs sealed again, deduplicated against the
/// target's own backups). Every copied snapshot restores the same, and a second copy adds
/// nothing.
#[test]
fn copies_between_repositories_of_other_keys() {
    let src_repo = TempRepo::new();
    let src = src_repo.path("src");
    make_source(&src, 12, 8 << 20, 21);
    let first = src_repo.backup("h", &[&src]);
    crate::support::faults::mutate_source(&src, 2);
    src_repo.backup("h", &[&src]);
    let expect = src_repo.path("expect");
    src_repo.restore(&first["id"].as_str().unwrap()[..8], &expect);

    let other = TempRepo::new();
    let twin = TempRepo::with_content_identity_of(&src_repo);
    // The twin already holds the same data from a backup of its own.
    twin.backup("h", &[&src]);
    for (target, mode) in [(&other, "renamed"), (&twin, "resealed")] {
        let out = src_repo.ok(&[OsStr::new("copy"), OsStr::new("--to"), target.repo.as_os_str()]);
        assert!(out.contains("2 snapshots copied"), "{out}");
        let again = src_repo.ok(&[OsStr::new("copy"), OsStr::new("--to"), target.repo.as_os_str()]);
        assert!(again.contains("0 snapshots copied, 2 already there; 0 blobs"), "{mode}: {again}");
        target.ok(&["check", "--read-data"]);
        let snaps = target.snapshots();
        let copy = snaps.iter().find(|s| s["time"] == first["time"] && s["host"] == "h").unwrap();
        let out = target.path(&format!("out-{mode}"));
        target.restore(&copy["id"].as_str().unwrap()[..8], &out);
        assert_same_tree(&expect, &out, &ShapeOptions::default());
        if mode == "resealed" {
            assert_eq!(copy["id"], first["id"], "a resealed copy keeps its id");
        } else {
            assert_eq!(copy["original"], first["id"]);
        }
    }
    let (repo, twin_repo) = (src_repo.open(), twin.open());
    let size = |r: &Repository| {
        files_of(r.local_path().unwrap(), "data").iter().map(|p| fs::metadata(p).unwrap().len()).sum::<u64>()
    };
    assert!(size(&twin_repo) < size(&repo) * 3 / 2, "the twin stored its own backup's data twice");
}

fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dst);
        } else {
            fs::copy(e.path(), &dst).unwrap();
        }
    }
}
