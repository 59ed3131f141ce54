//! The fault suite: prune and backup forced into each interleaving of their protocol
//! (FORMAT.md, "Prune"), a kill at every named step of backup, prune, copy and catalog update,
//! one flipped byte in each kind of file, a full filesystem, and a bounded concurrency run
//! (`scripts/torture.sh` runs it long). After each fault: `check --read-data`, every earlier
//! snapshot restores to what was backed up, and the next operation works.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::faults::*;
use crate::support::*;

/// A repository with one snapshot of a fresh source, forgotten: every pack is unused, so a
/// prune condemns all of them, while a new backup of the same source deduplicates against
/// them.
fn forgotten_history(t: &TempRepo) -> PathBuf {
    let src = t.path("src");
    make_source(&src, 40, 24 << 20, 1);
    let first = t.backup("h", &[&src]);
    t.ok(&["forget", &first["id"].as_str().unwrap()[..8]]);
    src
}

/// The backup that ran beside the prune must be whole, and stay whole after the next prune.
fn assert_backup_survives(t: &TempRepo, src: &Path) {
    check_all(t);
    let out = t.path("after");
    t.restore(&format!("latest:{}", src.display()), &out);
    assert_same_tree(src, &out, &ShapeOptions::default());
    std::fs::remove_dir_all(&out).unwrap();
    t.ok(&["prune"]);
    check_all(t);
    t.restore(&format!("latest:{}", src.display()), &out);
    assert_same_tree(src, &out, &ShapeOptions::default());
}

/// Item 1: a prune run as another user must take a root backup's lock as live (kill(pid, 0)
/// fails with EPERM for a process that exists but is not ours).
#[test]
fn prune_as_another_user_waits_for_a_root_backup() {
    assert!(is_root(), "this test runs the backup as root and the prune as nobody (setpriv)");
    let t = TempRepo::new();
    let src = forgotten_history(&t);
    let p = Points::new(&t);
    // Everyone may write the repository, as when an admin lets a service user prune it.
    assert_success(&Command::new("chmod").args(["-R", "a+rwX"]).arg(t.dir.path()).output().unwrap(), "chmod");
    let mut backup = p.spawn(
        &t,
        "backup-index-loaded=pause",
        &[OsStr::new("backup"), OsStr::new("--host"), OsStr::new("h"), src.as_os_str()],
    );
    assert!(p.wait("backup-index-loaded", &mut backup), "backup ended early");
    let prune = t
        .cmd_env(&mut Command::new("setpriv"))
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(rewind_bin())
        .args([OsStr::new("prune"), OsStr::new("--repo"), t.repo.as_os_str()])
        .output()
        .expect("setpriv (util-linux)");
    assert_success(&prune, "prune as nobody");
    let said = String::from_utf8_lossy(&prune.stdout);
    assert!(said.contains("wait for running backups"), "the prune did not wait for the backup: {said}");
    p.release("backup-index-loaded");
    finish_ok(backup, "backup beside the prune");
    assert_backup_survives(&t, &src);
}

/// Item 2: a backup that takes its lock after prune chose what to condemn but before its
/// record is durable neither sees the record nor may be passed over by the sweep.
#[test]
fn backup_starting_while_prune_writes_its_record() {
    let t = TempRepo::new();
    let src = forgotten_history(&t);
    let p = Points::new(&t);
    let mut prune = p.spawn(&t, "prune-before-record=pause", &["prune"]);
    assert!(p.wait("prune-before-record", &mut prune), "prune ended early");
    let mut backup = p.spawn(
        &t,
        "backup-index-loaded=pause",
        &[OsStr::new("backup"), OsStr::new("--host"), OsStr::new("h"), src.as_os_str()],
    );
    assert!(p.wait("backup-index-loaded", &mut backup), "backup ended early");
    p.release("prune-before-record");
    let said = finish_ok(prune, "prune");
    assert!(said.contains("wait for running backups"), "the prune swept under a running backup: {said}");
    p.release("backup-index-loaded");
    finish_ok(backup, "backup");
    assert_backup_survives(&t, &src);
}

/// Item 3: a backup starting while a sweep deletes packs must not deduplicate against them: it
/// reads the pending records before it loads the index.
#[test]
fn backup_starting_during_a_sweep() {
    let t = TempRepo::new();
    let src = forgotten_history(&t);
    let p = Points::new(&t);
    let mut prune = p.spawn(&t, "sweep-before-delete=pause", &["prune"]);
    assert!(p.wait("sweep-before-delete", &mut prune), "prune ended early");
    let mut backup = p.spawn(
        &t,
        "backup-records-read=pause",
        &[OsStr::new("backup"), OsStr::new("--host"), OsStr::new("h"), src.as_os_str()],
    );
    assert!(p.wait("backup-records-read", &mut backup), "backup ended early");
    p.release("sweep-before-delete");
    finish_ok(prune, "prune");
    p.release("backup-records-read");
    finish_ok(backup, "backup");
    assert_backup_survives(&t, &src);
}

/// Every step of one against the whole of the other: a backup paused at each of its steps
/// while a prune runs through, and a prune paused at each of its steps while a backup runs
/// through. The backup's snapshot is whole every time.
#[test]
fn every_interleaving_of_one_prune_and_one_backup() {
    let backup_points = [
        "backup-locked",
        "backup-records-read",
        "backup-index-loaded",
        "pack-written",
        "backup-before-snapshot",
        "backup-snapshot-written",
    ];
    let prune_points = [
        "prune-before-record",
        "prune-record-written",
        "prune-witnesses-written",
        "sweep-start",
        "sweep-before-delete",
        "sweep-after-delete",
        "sweep-index-written",
        "sweep-before-record-delete",
    ];
    let backup_args = |src: &Path| {
        vec![OsStr::new("backup").to_os_string(), "--host".into(), "h".into(), src.as_os_str().to_os_string()]
    };
    for point in backup_points {
        let t = TempRepo::new();
        let src = t.path("src");
        make_source(&src, 12, 6 << 20, 21);
        let first = t.backup("h", &[&src]);
        t.ok(&["forget", &first["id"].as_str().unwrap()[..8]]);
        mutate_source(&src, 3);
        let p = Points::new(&t);
        let mut backup = p.spawn(&t, &format!("{point}=pause"), &backup_args(&src));
        assert!(p.wait(point, &mut backup), "the backup never reached {point}");
        t.ok(&["prune"]);
        p.release(point);
        finish_ok(backup, &format!("backup paused at {point}"));
        assert_backup_survives(&t, &src);
    }
    for point in prune_points {
        let t = TempRepo::new();
        let src = t.path("src");
        make_source(&src, 12, 6 << 20, 22);
        let first = t.backup("h", &[&src]);
        t.ok(&["forget", &first["id"].as_str().unwrap()[..8]]);
        mutate_source(&src, 4);
        let p = Points::new(&t);
        let mut prune = p.spawn(&t, &format!("{point}=pause"), &["prune"]);
        let paused = p.wait(point, &mut prune);
        assert!(paused, "the prune never reached {point}");
        t.backup("h", &[&src]);
        p.release(point);
        finish_ok(prune, &format!("prune paused at {point}"));
        assert_backup_survives(&t, &src);
    }
}

/// A copy into a repository that a prune sweeps meanwhile, paused between its records and its
/// index as the backups above.
#[test]
fn copy_beside_a_sweep() {
    let t = TempRepo::new();
    let src = forgotten_history(&t);
    // The source of the copy: a second repository with the same data.
    let other = t.path("other");
    t.ok(&[OsStr::new("init"), other.as_os_str()]);
    let b = rewind_cmd()
        .args([
            OsStr::new("backup"),
            OsStr::new("--repo"),
            other.as_os_str(),
            OsStr::new("--host"),
            OsStr::new("h"),
            src.as_os_str(),
        ])
        .output()
        .unwrap();
    assert_success(&b, "backup into the other repository");
    let p = Points::new(&t);
    let mut prune = p.spawn(&t, "sweep-before-delete=pause", &["prune"]);
    assert!(p.wait("sweep-before-delete", &mut prune), "prune ended early");
    let mut copy = p
        .cmd(&t, "copy-records-read=pause")
        .args([OsStr::new("copy"), OsStr::new("--repo"), other.as_os_str(), OsStr::new("--to"), t.repo.as_os_str()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    assert!(p.wait("copy-records-read", &mut copy), "copy ended early");
    p.release("sweep-before-delete");
    finish_ok(prune, "prune");
    p.release("copy-records-read");
    finish_ok(copy, "copy");
    assert_backup_survives(&t, &src);
}

/// A lock unrefreshed past its expiry is passed over, but its holder, if it was only stopped,
/// finds the verdict and takes its snapshot back instead of saving one that may be broken.
#[test]
fn an_expired_backup_takes_its_snapshot_back() {
    let t = TempRepo::new();
    let src = forgotten_history(&t);
    let p = Points::new(&t);
    // Refresh every 50 ms, expire after 300 ms; the paused backup cannot refresh (its refresher
    // is stopped with it, as on a suspended machine: SIGSTOP).
    let mut backup = p
        .cmd(&t, "backup-index-loaded=pause")
        .env("REWIND_LOCK_TIMES_MS", "50,300")
        .args([OsStr::new("backup"), OsStr::new("--host"), OsStr::new("h"), src.as_os_str()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    assert!(p.wait("backup-index-loaded", &mut backup), "backup ended early");
    // SAFETY: stop and continue our own child.
    unsafe { libc::kill(backup.id() as i32, libc::SIGSTOP) };
    std::thread::sleep(Duration::from_millis(600));
    let r = t.cmd().env("REWIND_LOCK_TIMES_MS", "50,300").arg("prune").output().unwrap();
    assert_success(&r, "prune");
    p.release("backup-index-loaded");
    // SAFETY: as above.
    unsafe { libc::kill(backup.id() as i32, libc::SIGCONT) };
    let out = backup.wait_with_output().unwrap();
    assert!(!out.status.success(), "a backup whose lock was declared expired saved a snapshot");
    assert!(String::from_utf8_lossy(&out.stderr).contains("expired"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(t.snapshots().is_empty(), "the snapshot was not taken back");
    check_all(&t);
    // The next backup works.
    t.backup("h", &[&src]);
    check_all(&t);
}

/// A process killed (SIGKILL) at every named step of backup, prune and copy leaves a repository
/// that checks, restores every earlier snapshot, and takes the next operation.
#[test]
fn kill_at_every_step() {
    let t = TempRepo::new();
    let src = t.path("src");
    make_source(&src, 30, 12 << 20, 2);
    let mut kept: Vec<(String, PathBuf)> = Vec::new();
    let mut generation = 0u64;
    let snapshot = |t: &TempRepo, kept: &mut Vec<(String, PathBuf)>, generation: &mut u64| {
        *generation += 1;
        mutate_source(&src, *generation);
        let s = t.backup("h", &[&src]);
        let copy = t.path(&format!("gen{generation}"));
        keep_copy(&src, &copy);
        kept.push((s["id"].as_str().unwrap().to_string(), copy));
    };
    snapshot(&t, &mut kept, &mut generation);
    snapshot(&t, &mut kept, &mut generation);
    let other = t.path("offsite");
    t.ok(&[OsStr::new("init"), other.as_os_str()]);
    let steps: &[(&str, &[&str])] = &[
        ("backup-locked", &["backup"]),
        ("backup-records-read", &["backup"]),
        ("pack-written", &["backup"]),
        ("index-before-write", &["backup"]),
        ("backup-before-snapshot", &["backup"]),
        ("backup-snapshot-written", &["backup"]),
        ("prune-before-record", &["prune"]),
        ("prune-record-written", &["prune"]),
        ("prune-witnesses-written", &["prune"]),
        ("sweep-start", &["prune"]),
        ("sweep-before-delete", &["prune"]),
        ("sweep-after-delete", &["prune"]),
        ("sweep-index-written", &["prune"]),
        ("sweep-before-record-delete", &["prune"]),
        ("copy-records-read", &["copy"]),
        ("pack-written", &["copy"]),
        ("copy-before-snapshot", &["copy"]),
    ];
    let p = Points::new(&t);
    for (point, what) in steps {
        mutate_source(&src, 100 + generation);
        generation += 1;
        if what[0] == "prune" {
            // Something to free: forget the oldest but one.
            if kept.len() > 2 {
                let (id, _) = kept.remove(0);
                t.ok(&["forget", &id[..8]]);
            }
        }
        let mut cmd = p.cmd(&t, &format!("{point}=kill"));
        match what[0] {
            "backup" => cmd.args([OsStr::new("backup"), OsStr::new("--host"), OsStr::new("h"), src.as_os_str()]),
            "prune" => cmd.args(["prune", "--max-repack", "100"]),
            _ => cmd.args([OsStr::new("copy"), OsStr::new("--to"), other.as_os_str()]),
        };
        let out = cmd.output().unwrap();
        use std::os::unix::process::ExitStatusExt;
        let killed = out.status.signal() == Some(libc::SIGKILL);
        let ids = snapshot_ids(&t);
        check_all(&t);
        for (id, copy) in &kept {
            assert!(ids.contains(id), "snapshot {id} lost after a kill at {point}");
            assert_restores(&t, id, &src, copy);
        }
        // The next operation of each kind works.
        snapshot(&t, &mut kept, &mut generation);
        let r = t.run(&["prune"]);
        assert_success(&r, &format!("prune after a kill at {point} (killed: {killed})"));
        check_all(&t);
        let c = rewind_cmd()
            .args([OsStr::new("check"), OsStr::new("--read-data"), OsStr::new("--repo"), other.as_os_str()])
            .output()
            .unwrap();
        assert_success(&c, &format!("check of the copy target after a kill at {point}"));
    }
    // A killed catalog update leaves a catalog that answers and catches up.
    mutate_source(&src, 999);
    let r = t
        .cmd()
        .env("REWIND_CATALOG_FAILPOINT", "abort-after-versions:3")
        .args([OsStr::new("backup"), OsStr::new("--host"), OsStr::new("h"), src.as_os_str()])
        .output()
        .unwrap();
    let _ = r;
    t.ok(&["catalog", "sync"]);
    t.ok(&["find", "f1"]);
    for (id, copy) in &kept {
        assert_restores(&t, id, &src, copy);
    }
}

/// A repository with two snapshots of a changing source, the copies they must restore to, and
/// the catalog built.
struct TwoSnapshots {
    t: TempRepo,
    src: PathBuf,
    id1: String,
    id2: String,
    copy1: PathBuf,
    copy2: PathBuf,
}

fn two_snapshots() -> TwoSnapshots {
    two_snapshots_in(TempRepo::new())
}

fn two_snapshots_in(t: TempRepo) -> TwoSnapshots {
    let src = t.path("src");
    make_source(&src, 20, 8 << 20, 3);
    let first = t.backup("h", &[&src]);
    let copy1 = t.path("gen1");
    keep_copy(&src, &copy1);
    mutate_source(&src, 1);
    let second = t.backup("h", &[&src]);
    let copy2 = t.path("gen2");
    keep_copy(&src, &copy2);
    let (id1, id2) = (first["id"].as_str().unwrap().to_string(), second["id"].as_str().unwrap().to_string());
    t.ok(&["find", "f1"]);
    TwoSnapshots { t, src, id1, id2, copy1, copy2 }
}

/// Item 5: a damaged snapshot file is named (id and file) and skipped: the other snapshot lists,
/// restores and backs up; prune keeps what it still names (unencrypted) or refuses until the
/// damaged one is forgotten (encrypted: nothing in a manifest that fails authentication can be
/// trusted); forget removes it.
#[test]
fn flipped_byte_in_a_snapshot_file() {
    damaged_snapshot_file(two_snapshots());
}

#[test]
fn flipped_byte_in_a_snapshot_file_of_an_unencrypted_repository() {
    damaged_snapshot_file(two_snapshots_in(TempRepo::plain()));
}

fn damaged_snapshot_file(two: TwoSnapshots) {
    let TwoSnapshots { t, src, id1, id2, copy2, .. } = two;
    let snap1 = t.repo.join("snapshots").join(&id1);
    flip_byte(&snap1, 40);
    let listed = t.run(&["snapshots"]);
    assert_success(&listed, "snapshots with one damaged");
    let err = String::from_utf8_lossy(&listed.stderr);
    assert!(
        err.contains(&id1[..8]) && err.contains(&snap1.display().to_string()),
        "the damaged snapshot is not named: {err}"
    );
    assert!(String::from_utf8_lossy(&listed.stdout).contains(&id2[..8]));
    assert_restores(&t, &id2, &src, &copy2);
    let bad = t.run(&["check"]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains(&snap1.display().to_string()),
        "check does not name the file"
    );
    mutate_source(&src, 2);
    t.backup("h", &[&src]);
    if t.encrypted {
        let refused = t.run(&["prune"]);
        let err = String::from_utf8_lossy(&refused.stderr);
        assert!(!refused.status.success() && err.contains(&id1[..8]) && err.contains("forget"), "{err}");
    } else {
        t.ok(&["prune"]);
    }
    assert_restores(&t, &id2, &src, &copy2);
    t.ok(&["forget", &id1[..8]]);
    t.ok(&["prune"]);
    check_all(&t);
}

/// Item 6: damaged index files: restores find blobs through the packs; check reports them and
/// every other problem too.
#[test]
fn flipped_byte_in_index_files() {
    let TwoSnapshots { t, src, id1, id2, copy1, copy2 } = two_snapshots();
    for idx in files_of(&t.repo, "index") {
        flip_byte(&idx, 30);
    }
    flip_byte(&t.repo.join("snapshots").join(&id1), 40);
    assert_restores(&t, &id2, &src, &copy2);
    let bad = t.run(&["check"]);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("index file") && err.contains(&id1[..8]), "check stopped at the first problem: {err}");
    t.ok(&["rebuild-index"]);
    let good = t.repo.join("snapshots").join(&id1);
    flip_byte(&good, 40);
    check_all(&t);
    assert_restores(&t, &id1, &src, &copy1);
}

/// Item 7: a damaged pack trailer loses nothing: rebuild-index reads the copy after the header.
#[test]
fn flipped_byte_in_pack_trailers() {
    let TwoSnapshots { t, src, id1, id2, copy1, copy2 } = two_snapshots();
    for pack in &files_of(&t.repo, "data") {
        let len = std::fs::metadata(pack).unwrap().len() as usize;
        flip_byte(pack, len - 60);
    }
    std::fs::remove_dir_all(t.repo.join("index")).unwrap();
    std::fs::create_dir(t.repo.join("index")).unwrap();
    let r = t.ok(&["rebuild-index"]);
    assert!(!r.contains("unreadable"), "{r}");
    assert_restores(&t, &id1, &src, &copy1);
    assert_restores(&t, &id2, &src, &copy2);
    // check --read-data names the damaged trailers; the next operations work.
    let bad = t.run(&["check", "--read-data"]);
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("trailer is damaged"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    t.ok(&["prune"]);
    mutate_source(&src, 5);
    t.backup("h", &[&src]);
    assert_restores(&t, &id2, &src, &copy2);
}

/// A damaged blob: check names the files using it, restore of that snapshot fails, and no file
/// is restored with wrong bytes.
#[test]
fn flipped_byte_in_a_blob() {
    let TwoSnapshots { t, src, id1, copy1, copy2, .. } = two_snapshots();
    let data = files_of(&t.repo, "data");
    let biggest = data.iter().max_by_key(|p| std::fs::metadata(p).unwrap().len()).unwrap();
    let len = std::fs::metadata(biggest).unwrap().len() as usize;
    flip_byte(biggest, len / 2);
    let bad = t.run(&["check", "--read-data"]);
    assert!(!bad.status.success());
    let said = String::from_utf8_lossy(&bad.stderr).into_owned();
    let user = said
        .split("used by snapshot ")
        .nth(1)
        .unwrap_or_else(|| panic!("check does not say who uses the damage: {said}"));
    let copy_v = if id1.starts_with(&user[..8]) { copy1 } else { copy2 };
    let out = t.path("damaged-restore");
    let r = t.run(&[OsStr::new("restore"), OsStr::new(&user[..8]), OsStr::new("--target"), out.as_os_str()]);
    assert!(!r.status.success(), "a damaged blob restored without an error");
    let expected = tree_shape(&copy_v, &ShapeOptions::default());
    let root = out.join(src.strip_prefix("/").unwrap());
    for (rel, shape) in tree_shape(&root, &ShapeOptions::default()) {
        if shape.kind == "file" {
            let e = &expected[&rel];
            if e.size == shape.size {
                assert_eq!(e.content, shape.content, "wrong bytes restored in {}", String::from_utf8_lossy(&rel));
            }
        }
    }
}

/// A damaged pending record is reported, authorizes no deletion, and is removed by prune.
#[test]
fn flipped_byte_in_a_pending_record() {
    let TwoSnapshots { t, src, id1, id2, copy2, .. } = two_snapshots();
    t.ok(&["forget", &id1[..8]]);
    let mut prune = Points::new(&t).spawn(&t, "sweep-start=kill", &["prune"]);
    let _ = prune.wait();
    let records = files_of(&t.repo, "pending");
    assert!(!records.is_empty(), "the killed prune left no record");
    for rec in records {
        flip_byte(&rec, 20);
    }
    let bad = t.run(&["check"]);
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("pending record"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    t.backup("h", &[&src]);
    t.ok(&["prune"]);
    assert!(
        files_of(&t.repo, "pending").iter().all(|p| p.file_name().unwrap().to_string_lossy().starts_with("expired-"))
    );
    assert_restores(&t, &id2, &src, &copy2);
    check_all(&t);
}

/// An unreadable lock is listed by check, counts as live until it expires, and unlock says so.
#[test]
fn unreadable_lock_is_listed() {
    let TwoSnapshots { t, .. } = two_snapshots();
    std::fs::write(t.repo.join("locks/backup-garbage"), b"{\"purpose\": \"back").unwrap();
    let out = t.run(&["check"]);
    assert_success(&out, "check with an unreadable lock");
    let warn = String::from_utf8_lossy(&out.stderr);
    assert!(warn.contains("backup-garbage") && warn.contains("unreadable"), "check does not list the lock: {warn}");
}

/// A damaged config: every command refuses with one line naming it.
#[test]
fn flipped_byte_in_the_config() {
    let TwoSnapshots { t, .. } = two_snapshots();
    flip_byte(&t.repo.join("config"), 5);
    let r = t.run(&["snapshots"]);
    assert!(!r.status.success());
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(err.contains("config") && err.trim().lines().count() == 1, "{err}");
}

/// Item 8: a damaged catalog: check says so, and find rebuilds it and answers.
#[test]
fn flipped_bytes_in_the_catalog() {
    let TwoSnapshots { t, .. } = two_snapshots();
    let cat = t.catalog_path();
    let len = std::fs::metadata(&cat).unwrap().len() as usize;
    // The type byte of every page but the first: any read of a page finds it damaged.
    for off in (4096..len).step_by(4096) {
        flip_byte(&cat, off);
    }
    let warn = String::from_utf8_lossy(&t.run(&["check"]).stderr).into_owned();
    assert!(
        warn.contains("catalog") && warn.contains("catalog rebuild"),
        "check says nothing of the damaged catalog: {warn}"
    );
    let found = t.run(&["find", "f1"]);
    assert_success(&found, "find on a damaged catalog");
    assert!(String::from_utf8_lossy(&found.stdout).contains("f1"), "find did not recover");
    assert!(
        String::from_utf8_lossy(&t.run(&["check"]).stderr).lines().all(|l| !l.contains("catalog")),
        "the catalog was not rebuilt"
    );
}

/// A full filesystem: a backup that runs out of space removes what it wrote, and prune runs
/// with no free space at all.
#[test]
fn full_filesystem() {
    assert!(is_root(), "this test mounts a small tmpfs");
    let t = TempRepo::new();
    let mnt = t.path("small");
    std::fs::create_dir_all(&mnt).unwrap();
    let m = Command::new("mount").args(["-t", "tmpfs", "-o", "size=40m"]).arg("tmpfs").arg(&mnt).output().unwrap();
    assert_success(&m, "mount tmpfs");
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).output();
        }
    }
    let _u = Unmount(mnt.clone());
    let repo = mnt.join("repo");
    let r = rewind_cmd().arg("init").arg(&repo).output().unwrap();
    assert_success(&r, "init on tmpfs");
    let run =
        |args: &[&OsStr]| rewind_cmd().args(args).env("REWIND_REPO", &repo).env("RUST_LOG", "warn").output().unwrap();
    let big = t.path("big");
    make_source(&big, 12, 60 << 20, 4);
    let r = run(&[OsStr::new("backup"), OsStr::new("--host"), OsStr::new("h"), big.as_os_str()]);
    assert!(!r.status.success(), "a backup larger than the filesystem succeeded");
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(err.contains("No space") || err.contains("space"), "{err}");
    assert!(files_of(&repo, "data").is_empty(), "the failed backup left packs: {:?}", files_of(&repo, "data"));
    assert!(files_of(&repo, "tmp").is_empty(), "the failed backup left temporary files");
    assert!(files_of(&repo, "locks").is_empty(), "the failed backup left its lock");

    // A snapshot, then fill the filesystem to the last byte, forget it and prune.
    let small = t.path("smallsrc");
    make_source(&small, 10, 8 << 20, 5);
    let r = run(&[OsStr::new("backup"), OsStr::new("--host"), OsStr::new("h"), small.as_os_str()]);
    assert_success(&r, "backup that fits");
    let ids: Vec<serde_json::Value> =
        serde_json::from_slice(&run(&[OsStr::new("snapshots"), OsStr::new("--json")]).stdout).unwrap();
    for s in ids {
        let r = run(&[OsStr::new("forget"), OsStr::new(&s["id"].as_str().unwrap()[..8])]);
        assert_success(&r, "forget");
    }
    let filler = mnt.join("filler");
    let _ = Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", filler.display()))
        .args(["bs=64k"])
        .output()
        .unwrap();
    let _ = Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}.2", filler.display()))
        .args(["bs=1"])
        .output()
        .unwrap();
    let st = Command::new("df").arg("--output=avail").arg("-B1").arg(&mnt).output().unwrap();
    let avail: u64 = String::from_utf8_lossy(&st.stdout).lines().nth(1).unwrap().trim().parse().unwrap();
    assert_eq!(avail, 0, "the filesystem is not full");
    let before = files_of(&repo, "data").len();
    let r = run(&[OsStr::new("prune")]);
    assert_success(&r, "prune on a full filesystem");
    assert!(files_of(&repo, "data").len() < before, "prune freed nothing");
    let r = run(&[OsStr::new("check")]);
    assert_success(&r, "check after prune on a full filesystem");
}

/// Backups, forget + prune, restores and mount readers at once for a bounded time
/// (`REWIND_TORTURE_SECS`, default 20): 0 wrong bytes, 0 lost snapshots.
#[test]
fn concurrency_run() {
    let secs: u64 = std::env::var("REWIND_TORTURE_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(20);
    let report = torture(Duration::from_secs(secs));
    eprintln!("{report}");
    assert_eq!(report.wrong_bytes, 0, "{report}");
    assert_eq!(report.lost_snapshots, 0, "{report}");
    assert!(report.backups > 0 && report.prunes > 0 && report.restores > 0, "{report}");
}

#[derive(Debug, Default)]
struct Torture {
    backups: u64,
    prunes: u64,
    kills: u64,
    restores: u64,
    mount_reads: u64,
    wrong_bytes: u64,
    lost_snapshots: u64,
}

impl std::fmt::Display for Torture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "torture: {} backups, {} prunes, {} kills, {} restores, {} mount reads; wrong bytes {}, lost snapshots {}",
            self.backups,
            self.prunes,
            self.kills,
            self.restores,
            self.mount_reads,
            self.wrong_bytes,
            self.lost_snapshots
        )
    }
}

/// A snapshot id and the copy of what it holds.
type KeptSnapshot = (String, std::sync::Arc<KeptCopy>);

/// A kept copy of a source generation, deleted when the last holder lets go of it.
struct KeptCopy(PathBuf);

impl Drop for KeptCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn torture(time: Duration) -> Torture {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};
    let t = Arc::new(TempRepo::new());
    let src = t.path("src");
    make_source(&src, 30, 16 << 20, 7);
    let s = t.backup("h", &[&src]);
    let copy = t.path("gen0");
    keep_copy(&src, &copy);
    // Snapshot id -> the copy of what it holds; forgotten ones leave the map before forget.
    let kept: Arc<Mutex<Vec<KeptSnapshot>>> =
        Arc::new(Mutex::new(vec![(s["id"].as_str().unwrap().to_string(), Arc::new(KeptCopy(copy)))]));
    let stop = Arc::new(AtomicBool::new(false));
    let wrong = Arc::new(AtomicU64::new(0));
    let counts: Arc<[AtomicU64; 5]> = Arc::new(Default::default());
    let mnt = t.path("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let mut mount = t.cmd().args([OsStr::new("mount"), mnt.as_os_str()]).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !mnt.join("snapshots").exists() {
        assert!(Instant::now() < deadline, "the mount did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut threads = Vec::new();
    // Backups: each of a new generation of the source, killed now and then.
    {
        let (t, kept, stop, counts, src) = (t.clone(), kept.clone(), stop.clone(), counts.clone(), src.clone());
        threads.push(std::thread::spawn(move || {
            let mut g = 1u64;
            while !stop.load(Ordering::Relaxed) {
                mutate_source(&src, 1000 + g);
                let copy = t.path(&format!("gen{g}"));
                keep_copy(&src, &copy);
                let child = t
                    .cmd()
                    .args([
                        OsStr::new("backup"),
                        OsStr::new("--json"),
                        OsStr::new("--host"),
                        OsStr::new("h"),
                        src.as_os_str(),
                    ])
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .unwrap();
                if g.is_multiple_of(5) {
                    std::thread::sleep(Duration::from_millis(100 + (g * 37) % 400));
                    // SAFETY: our own child.
                    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
                    counts[2].fetch_add(1, Ordering::Relaxed);
                }
                let out = child.wait_with_output().unwrap();
                if out.status.success() {
                    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                    kept.lock().unwrap().push((v["id"].as_str().unwrap().to_string(), Arc::new(KeptCopy(copy))));
                    counts[0].fetch_add(1, Ordering::Relaxed);
                } else {
                    let _ = std::fs::remove_dir_all(&copy);
                }
                g += 1;
            }
        }));
    }
    // Forget the oldest but two, then prune (sometimes killed).
    {
        let (t, kept, stop, counts) = (t.clone(), kept.clone(), stop.clone(), counts.clone());
        threads.push(std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // All but the newest three: backups come faster than prunes, and the disk is
                // shared.
                let victims: Vec<(String, Arc<KeptCopy>)> = {
                    let mut k = kept.lock().unwrap();
                    let n = k.len().saturating_sub(3);
                    k.drain(..n).collect()
                };
                for (id, copy) in victims {
                    let r = t.run(&["forget", &id[..8]]);
                    assert_success(&r, "forget");
                    // Deleted once no reader compares with it any more.
                    drop(copy);
                }
                let mut child = t
                    .cmd()
                    .arg("prune")
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .unwrap();
                if n % 4 == 3 {
                    std::thread::sleep(Duration::from_millis(50 + (n * 53) % 300));
                    // SAFETY: our own child.
                    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
                    counts[2].fetch_add(1, Ordering::Relaxed);
                }
                let _ = child.wait();
                counts[1].fetch_add(1, Ordering::Relaxed);
                n += 1;
                std::thread::sleep(Duration::from_millis(300));
            }
        }));
    }
    // Restores of kept snapshots, compared with what they held.
    {
        let (t, kept, stop, counts, wrong, src) =
            (t.clone(), kept.clone(), stop.clone(), counts.clone(), wrong.clone(), src.clone());
        threads.push(std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let pick = {
                    let k = kept.lock().unwrap();
                    k.get(n as usize % k.len().max(1)).cloned()
                };
                n += 1;
                let Some((id, copy)) = pick else { continue };
                let out = t.path(&format!("r{n}"));
                let r = t.run(&[
                    OsStr::new("restore"),
                    OsStr::new(&format!("{}:{}", &id[..8], src.display())),
                    OsStr::new("--target"),
                    out.as_os_str(),
                ]);
                if r.status.success() {
                    let a = tree_shape(&copy.0, &ShapeOptions { dir_mtimes: false, ..Default::default() });
                    let b = tree_shape(&out, &ShapeOptions { dir_mtimes: false, ..Default::default() });
                    for (p, s) in &a {
                        if b.get(p).is_some_and(|o| o.content != s.content) {
                            wrong.fetch_add(s.size, Ordering::Relaxed);
                        }
                    }
                    counts[3].fetch_add(1, Ordering::Relaxed);
                }
                let _ = std::fs::remove_dir_all(&out);
            }
        }));
    }
    // Mount readers: whole files of kept snapshots through the FUSE mount.
    {
        let (kept, stop, counts, wrong, mnt, src) =
            (kept.clone(), stop.clone(), counts.clone(), wrong.clone(), mnt.clone(), src.clone());
        threads.push(std::thread::spawn(move || {
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let pick = {
                    let k = kept.lock().unwrap();
                    k.get(n % k.len().max(1)).cloned()
                };
                n += 1;
                let Some((id, copy)) = pick else { continue };
                let base = mnt.join("ids").join(&id[..8]).join(src.strip_prefix("/").unwrap());
                for (rel, shape) in tree_shape(&copy.0, &ShapeOptions::default()) {
                    if shape.kind != "file" {
                        continue;
                    }
                    if let Ok(bytes) =
                        std::fs::read(base.join(<OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&rel)))
                    {
                        if Some(blake3::hash(&bytes).to_hex().to_string()) != shape.content {
                            wrong.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                        }
                        counts[4].fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    std::thread::sleep(time);
    stop.store(true, Ordering::Relaxed);
    for th in threads {
        th.join().unwrap();
    }
    let _ = Command::new("fusermount3").arg("-u").arg(&mnt).output();
    let _ = mount.wait();
    // Every snapshot kept is there, checks and restores.
    let _ = t.run(&["prune"]);
    check_all(&t);
    let ids = snapshot_ids(&t);
    let mut lost = 0;
    for (id, copy) in kept.lock().unwrap().iter() {
        if !ids.contains(id) {
            lost += 1;
            continue;
        }
        assert_restores(&t, id, &src, &copy.0);
    }
    Torture {
        backups: counts[0].load(Ordering::Relaxed),
        prunes: counts[1].load(Ordering::Relaxed),
        kills: counts[2].load(Ordering::Relaxed),
        restores: counts[3].load(Ordering::Relaxed),
        mount_reads: counts[4].load(Ordering::Relaxed),
        wrong_bytes: wrong.load(Ordering::Relaxed),
        lost_snapshots: lost,
    }
}

/// Item 12: a snapshot shows in the mount as soon as its manifest exists: the first lookup of
/// its name finds it (no ENOENT for the next second), and `latest` names it.
#[test]
fn new_snapshot_appears_in_the_mount_at_once() {
    assert!(Path::new("/dev/fuse").exists(), "/dev/fuse is missing: this test needs FUSE");
    let t = TempRepo::new();
    let src = t.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("file"), b"first").unwrap();
    t.backup("h", &[&src]);
    let mnt = t.path("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let mut mount =
        t.cmd().args([OsStr::new("mount"), mnt.as_os_str()]).stderr(std::process::Stdio::null()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !mnt.join("snapshots").exists() {
        assert!(Instant::now() < deadline, "the mount did not come up");
        std::thread::sleep(Duration::from_millis(20));
    }
    for round in 0..5 {
        // Look at the listings first, so that the mount has just refreshed its list.
        let _ = std::fs::read_dir(mnt.join("ids")).unwrap().count();
        let _ = std::fs::read_link(mnt.join("hosts/h/latest"));
        std::fs::write(src.join("file"), format!("round {round}")).unwrap();
        let s = t.backup("h", &[&src]);
        let short = &s["id"].as_str().unwrap()[..8];
        let name =
            jiff::Timestamp::from_str_strict(s["time"].as_str().unwrap()).strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
        let by_id = mnt.join("ids").join(short);
        assert!(
            std::fs::symlink_metadata(&by_id).is_ok(),
            "round {round}: ids/{short} is not there right after the backup"
        );
        let latest = std::fs::read_link(mnt.join("hosts/h/latest")).unwrap();
        assert!(latest.to_string_lossy().starts_with(&name), "round {round}: latest -> {}", latest.display());
        // Listings the kernel caches follow within a second (fs TTL_LIVE plus the view's
        // refresh interval, half a second).
        let saved = Instant::now();
        loop {
            let listed: Vec<String> = std::fs::read_dir(mnt.join("snapshots"))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            if listed.iter().any(|n| n.starts_with(&name)) {
                break;
            }
            assert!(
                saved.elapsed() < Duration::from_secs(1),
                "round {round}: {name} not listed after a second: {listed:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let got = std::fs::read(by_id.join(src.strip_prefix("/").unwrap()).join("file")).unwrap();
        assert_eq!(got, format!("round {round}").into_bytes());
    }
    let _ = Command::new("fusermount3").arg("-u").arg(&mnt).output();
    let _ = mount.wait();
}

trait StrictTime {
    fn from_str_strict(s: &str) -> jiff::Timestamp;
}

impl StrictTime for jiff::Timestamp {
    fn from_str_strict(s: &str) -> jiff::Timestamp {
        s.parse().expect("a timestamp")
    }
}
