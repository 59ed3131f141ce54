//! The S3 backend against a real Garage: the backend contract every store command relies on, held
//! by the S3 backend exactly as by the local one, and clear errors for bad credentials, a missing
//! bucket and an endpoint that is down.

use std::ffi::OsStr;
use std::time::{Duration, Instant};

use rewind_s3::{S3Backend, S3Location, S3Options};
use rewind_store::{Backend, Error, FileKind, LocalBackend};

use crate::support::garage::{self, Garage};

fn with_credentials<T>(f: impl FnOnce() -> T) -> T {
    // The backend reads credentials from the environment, as the CLI does.
    garage::credentials_in_env();
    f()
}

fn s3(url: &str) -> S3Backend {
    with_credentials(|| S3Backend::new(&S3Location::parse(url).unwrap(), &S3Options::default()).unwrap())
}

/// What the store needs of any backend, checked on `b`.
fn contract(b: &dyn Backend) {
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    b.put(FileKind::Pack, "ab01", &data).unwrap();
    assert_eq!(b.get(FileKind::Pack, "ab01").unwrap(), data);
    assert_eq!(b.len(FileKind::Pack, "ab01").unwrap(), data.len() as u64);
    assert_eq!(b.get_range(FileKind::Pack, "ab01", 10, 20).unwrap(), &data[10..30]);
    // Short only at the end, empty past it.
    assert_eq!(b.get_range(FileKind::Pack, "ab01", 99_990, 100).unwrap(), &data[99_990..]);
    assert_eq!(b.get_range(FileKind::Pack, "ab01", 100_000, 10).unwrap(), b"");
    // Replacing a whole file (a lock's refresh) leaves the new content.
    b.put(FileKind::Lock, "l1", b"one").unwrap();
    b.put(FileKind::Lock, "l1", b"two").unwrap();
    assert_eq!(b.get(FileKind::Lock, "l1").unwrap(), b"two");
    // Listings by kind: names only, sorted, packs across their subfolders; none of another kind.
    for i in 0..40u32 {
        b.put(FileKind::Index, &format!("{i:04}"), &[i as u8]).unwrap();
    }
    let idx = b.list(FileKind::Index).unwrap();
    assert_eq!(idx, (0..40u32).map(|i| format!("{i:04}")).collect::<Vec<_>>());
    b.put(FileKind::Pack, "cd02", b"x").unwrap();
    assert_eq!(b.list(FileKind::Pack).unwrap(), vec!["ab01".to_string(), "cd02".to_string()]);
    assert_eq!(b.list(FileKind::Pending).unwrap(), Vec::<String>::new());
    // Missing files are NotFound (the store re-reads the index on it); deleting one is no error.
    assert!(matches!(b.get(FileKind::Snapshot, "nope"), Err(Error::NotFound(_))));
    assert!(matches!(b.len(FileKind::Pack, "ee99"), Err(Error::NotFound(_))));
    assert!(matches!(b.get_range(FileKind::Pack, "ee99", 0, 5), Err(Error::NotFound(_))));
    b.delete(FileKind::Pack, "cd02").unwrap();
    b.delete(FileKind::Pack, "cd02").unwrap();
    assert!(matches!(b.get(FileKind::Pack, "cd02"), Err(Error::NotFound(_))));
    assert_eq!(b.list(FileKind::Pack).unwrap(), vec!["ab01".to_string()]);
}

#[test]
fn the_backend_contract_holds_on_garage_as_on_a_local_directory() {
    let dir = tempfile::tempdir().unwrap();
    let local = LocalBackend::new(dir.path());
    local.create_layout().unwrap();
    contract(&local);
    let g = Garage::shared();
    contract(&s3(&g.repo_url("contract")));
}

#[test]
fn listings_page_through_more_than_a_thousand_objects() {
    let g = Garage::shared();
    let b = s3(&g.repo_url("pages"));
    let names: Vec<String> = (0..1500u32).map(|i| format!("{i:05}")).collect();
    std::thread::scope(|s| {
        for part in names.chunks(100) {
            let b = &b;
            s.spawn(move || part.iter().for_each(|n| b.put(FileKind::Snapshot, n, b"{}").unwrap()));
        }
    });
    assert_eq!(b.list(FileKind::Snapshot).unwrap(), names);
}

#[test]
fn a_missing_bucket_and_wrong_credentials_are_one_clear_error() {
    let g = Garage::shared();
    let missing = s3(&format!("s3:{}/no-such-bucket/r", g.endpoint(0)));
    let e = missing.probe().unwrap_err().to_string();
    assert!(e.contains("no-such-bucket") && e.contains("does not exist"), "{e:?}");

    let loc = S3Location::parse(&g.repo_url("creds")).unwrap();
    let wrong_secret = (garage::KEY_ID.to_string(), "0".repeat(64));
    for credentials in [wrong_secret, ("GK000000000000000000000000".to_string(), garage::SECRET.to_string())] {
        let opts = S3Options { credentials: Some(credentials), ..S3Options::default() };
        let b = with_credentials(|| S3Backend::new(&loc, &opts)).unwrap();
        let e = b.put(FileKind::Lock, "x", b"x").unwrap_err();
        let text = e.to_string();
        assert!(
            matches!(&e, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::PermissionDenied),
            "{e:?}"
        );
        assert!(text.contains("refused the credentials") && !text.contains('\n'), "{text}");
    }
}

#[test]
fn an_endpoint_that_is_down_fails_within_seconds_with_one_line() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let b = s3(&format!("s3:http://127.0.0.1:{port}/bucket/r"));
    let t = Instant::now();
    let e = b.get(FileKind::Config, "config").unwrap_err().to_string();
    assert!(t.elapsed() < Duration::from_secs(60), "took {:?}", t.elapsed());
    assert!(!e.contains('\n') && e.contains(&port.to_string()), "{e}");
}

/// Every command on an encrypted repository in a Garage bucket, as on a local one: init, backup,
/// snapshots, ls, restore, check --read-data, rebuild-index, find (the catalog, kept in the local
/// cache folder), copy both ways, forget and prune, mount and serve.
#[test]
fn every_command_works_on_an_s3_repository() {
    use crate::support::portal::{Portal, enc, login};
    use crate::support::*;
    let t = TempRepo::on_s3("every-command");
    let began = std::time::Instant::now();
    let step = |what: &str| eprintln!("{:>7.2?} {what}", began.elapsed());
    let src = t.path("src");
    corpus_make(&src, 0.02);
    let first = t.backup("site", &[&src]);
    corpus_step(&src, 1);
    t.backup("site", &[&src]);
    let snaps = t.snapshots();
    assert_eq!(snaps.len(), 2);
    step("");
    // Nothing of the repository is on the local disk but the caches.
    let local: Vec<_> = std::fs::read_dir(t.dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(local.iter().all(|n| n == "src" || n == "cache"), "{local:?}");

    let listing = t.ok(&[OsStr::new("ls"), OsStr::new("latest"), src.as_os_str()]);
    let top = std::fs::read_dir(&src).unwrap().next().unwrap().unwrap().file_name();
    assert!(listing.contains(&*top.to_string_lossy()), "{listing}");
    let out = t.path("restored");
    t.restore("latest", &out);
    assert_same_tree(&src, &out.join(src.strip_prefix("/").unwrap()), &ShapeOptions::default());
    t.ok(&["check", "--read-data"]);
    t.ok(&["rebuild-index"]);
    t.ok(&["check"]);

    step("");
    // The catalog of a remote repository lives in the cache folder.
    let name = walk_files(&src).into_iter().next().expect("a file").file_name().unwrap().to_string_lossy().into_owned();
    assert!(t.ok(&["find", &name]).contains(&name));
    assert!(t.path("cache").read_dir().unwrap().next().is_some(), "no cache folder");

    step("");
    // Offsite replication, both ways: S3 -> local -> another S3 prefix, byte for byte.
    let local = TempRepo::new();
    t.ok(&[OsStr::new("copy"), OsStr::new("--to"), local.repo.as_os_str()]);
    assert_eq!(local.snapshots().len(), 2);
    let back = TempRepo::on_s3("copy-back");
    local.ok(&[OsStr::new("copy"), OsStr::new("--to"), back.repo.as_os_str()]);
    let again = t.path("again");
    back.restore("latest", &again);
    assert_same_tree(&src, &again.join(src.strip_prefix("/").unwrap()), &ShapeOptions::default());

    step("");
    // forget + prune on S3, then check and restore the one left.
    t.ok(&["forget", first["id"].as_str().unwrap()]);
    t.ok(&["prune"]);
    t.ok(&["check", "--read-data"]);
    assert_eq!(t.snapshots().len(), 1);

    step("");
    // The mount.
    let m = crate::mount::Mount::start(&t, "mnt", &[]);
    let latest = m.mnt.join("hosts/site/latest").join(src.strip_prefix("/").unwrap());
    assert_same_tree(&src, &latest, &ShapeOptions { dir_mtimes: false, ..ShapeOptions::default() });
    drop(m);

    // The local cache holds index files, snapshots and trees; a damaged copy is noticed and read
    // again from the bucket, never trusted: a restore after flipping a byte of each is exact.
    let copies: Vec<_> =
        walk_files(&t.path("cache")).into_iter().filter(|p| !p.to_string_lossy().contains("catalog")).collect();
    for kind in ["/index/", "/snapshots/", "/trees/"] {
        assert!(copies.iter().any(|p| p.to_string_lossy().contains(kind)), "no {kind} in {copies:?}");
    }
    for c in &copies {
        let mut b = std::fs::read(c).unwrap();
        let at = b.len() / 2;
        b[at] ^= 0x40;
        std::fs::write(c, b).unwrap();
    }
    let third = t.path("third");
    t.restore("latest", &third);
    assert_same_tree(&src, &third.join(src.strip_prefix("/").unwrap()), &ShapeOptions::default());

    step("");
    // The portal (a file-realm user who owns the corpus: it is root's).
    let users = t.path("users.toml");
    let hash = crate::support::portal::passwd_hash("root-pw");
    std::fs::write(&users, format!("[users.root]\nhash = \"{hash}\"\nuid = 0\n")).unwrap();
    let realm = format!("[[realm]]\nkind = \"file\"\nname = \"local\"\nusers_file = \"{}\"\n", users.display());
    let extra = format!(
        "catalog = \"{}\"\nrepository_password_file = \"{}\"",
        t.path("portal-catalog.sqlite").display(),
        write_password_file(&t).display()
    );
    let portal = Portal::start(&t.repo, &realm, "[authz]\nrules = [\"owner\"]\n", &extra);
    let admin = login(&portal.addr, "root", "root-pw");
    let r = admin.get("/api/snapshots");
    assert_eq!(r.status, 200, "{}", r.text());
    let snap = r.json()["items"][0]["id"].as_str().unwrap().to_string();
    let r = admin.get(&format!("/api/browse?snapshot={snap}&path={}", enc(&src.to_string_lossy())));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(!r.json()["entries"].as_array().unwrap().is_empty());
}

fn write_password_file(t: &crate::support::TempRepo) -> std::path::PathBuf {
    let p = t.path("password");
    std::fs::write(&p, crate::support::TEST_PASSWORD).unwrap();
    p
}

fn walk_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            out.extend(walk_files(&e.path()));
        } else if e.file_type().unwrap().is_file() {
            out.push(e.path());
        }
    }
    out.sort();
    out
}

/// A node of a 3-node cluster (replication factor 3) killed during a backup: the backup finishes
/// or fails with one clear line; either way the repository passes `check --read-data` once the
/// node is back, a retried backup completes, and what it saved restores exactly. Once for a
/// node the client does not talk to (writes go on with two of three), once for the node it
/// talks to (the backup cannot go on).
#[test]
fn a_garage_node_killed_during_a_backup_leaves_a_valid_repository() {
    use crate::support::*;
    let mut g = Garage::start(3);
    for victim in [2, 0] {
        let t = TempRepo::on_garage(&g, &format!("kill-{victim}"));
        let src = t.path("src");
        corpus_make(&src, 0.01);
        std::fs::write(src.join("big.bin"), pseudo_random(48 << 20, victim as u64)).unwrap();
        let child = t
            .cmd()
            .args(["backup", "--host", "vm"])
            .arg(&src)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Killed once the backup has written its first pack (an object under data/).
        let storage = rewind_s3::storage_at(&t.repo).unwrap();
        wait_until("the backup writes a pack", || storage.list(FileKind::Pack).is_ok_and(|p| !p.is_empty()));
        g.kill_node(victim);
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            let lines: Vec<&str> =
                stderr.lines().filter(|l| l.starts_with("rewind:") || l.starts_with("Error")).collect();
            assert_eq!(lines.len(), 1, "a failed backup says why in one line: {stderr}");
        }
        g.restart_node(victim);
        // The node catches up; then the repository is whole.
        wait_until("the cluster answers", || t.run(&["snapshots"]).status.success());
        t.ok(&["check", "--read-data"]);
        let retried = t.backup("vm", &[&src]);
        assert!(retried["id"].is_string());
        t.ok(&["check", "--read-data"]);
        let out_dir = t.path("restored");
        t.restore("latest", &out_dir);
        assert_same_tree(&src, &out_dir.join(src.strip_prefix("/").unwrap()), &ShapeOptions::default());
        eprintln!("victim {victim}: first backup {}", if out.status.success() { "finished" } else { "failed cleanly" });
    }
}

/// A restore from a bucket reads each pack in a few large ranges (the second phase): a damaged
/// blob in one still fails only the file that needs it, named, with a non-zero exit, and every
/// other file of the pack comes back exact, metadata included.
#[test]
fn a_damaged_blob_in_the_bucket_fails_only_its_file() {
    use crate::support::*;
    let t = TempRepo::on_s3("damaged-blob");
    let src = t.path("src");
    std::fs::create_dir_all(src.join("small")).unwrap();
    for i in 0..40u64 {
        std::fs::write(src.join(format!("small/f{i:02}")), pseudo_random(3000 + i as usize * 100, i)).unwrap();
    }
    std::fs::write(src.join("victim.bin"), pseudo_random(2 << 20, 99)).unwrap();
    t.backup("h", &[&src]);
    // The data pack is the large one; the victim is most of it: flip a byte at two thirds.
    let b = s3(t.repo.to_str().unwrap());
    let pack = b.list(FileKind::Pack).unwrap().into_iter().max_by_key(|p| b.len(FileKind::Pack, p).unwrap()).unwrap();
    let mut bytes = b.get(FileKind::Pack, &pack).unwrap();
    let at = bytes.len() * 2 / 3;
    bytes[at] ^= 0x40;
    b.put(FileKind::Pack, &pack, &bytes).unwrap();

    let out = t.path("out");
    let r = t.run(&[OsStr::new("restore"), OsStr::new("latest"), OsStr::new("--target"), out.as_os_str()]);
    assert!(!r.status.success());
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(err.contains("victim.bin"), "{err}");
    assert!(!err.contains("small/"), "a file without damage failed: {err}");
    let restored = out.join(src.strip_prefix("/").unwrap());
    std::fs::remove_file(src.join("victim.bin")).unwrap();
    std::fs::remove_file(restored.join("victim.bin")).unwrap();
    assert_same_tree(&src, &restored, &ShapeOptions { dir_mtimes: false, ..ShapeOptions::default() });
}
