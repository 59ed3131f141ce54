//! Retention, prune and copy through the command line, including prune beside running and killed
//! backups.

use std::ffi::OsStr;
use std::process::Command;
use std::time::Duration;

use crate::support::*;

on_each_backend!(prune_beside_backups_never_loses_a_blob, copy_adds_only_what_the_target_lacks,);

fn snapshot_ids(t: &TempRepo) -> Vec<String> {
    t.snapshots().iter().map(|s| s["id"].as_str().unwrap().to_string()).collect()
}

#[test]
fn forget_and_prune_keep_what_remains_whole() {
    let t = TempRepo::new();
    let src = t.path("src");
    corpus_make(&src, 0.03);
    let mut copies = Vec::new();
    for generation in 0..5 {
        if generation > 0 {
            corpus_step(&src, generation);
        }
        t.backup("h", &[&src]);
        let copy = t.path(&format!("gen{generation}"));
        assert_success(&Command::new("cp").arg("-a").arg(&src).arg(&copy).output().unwrap(), "cp");
        copies.push(copy);
    }
    let ids = snapshot_ids(&t);
    let dry = t.ok(&["forget", "--keep-last", "2", "--dry-run", "--json"]);
    let plan: Vec<serde_json::Value> = serde_json::from_str(&dry).unwrap();
    assert_eq!(plan.iter().filter(|p| p["keep"] == true).count(), 2);
    assert_eq!(snapshot_ids(&t).len(), 5, "dry run removed snapshots");
    t.ok(&["forget", "--keep-last", "2"]);
    assert_eq!(snapshot_ids(&t), ids[3..].to_vec());
    let before = dir_size(&t.repo);
    let out: serde_json::Value =
        serde_json::from_str(t.ok(&["prune", "--json"]).split("\nprune:").next().unwrap()).unwrap();
    assert!(out["bytes_freed"].as_u64().unwrap() > 0, "{out}");
    assert_eq!(out["packs_deferred"], 0);
    assert!(dir_size(&t.repo) < before);
    t.ok(&["check", "--read-data"]);
    for (i, id) in ids[3..].iter().enumerate() {
        let out = t.path(&format!("restored{i}"));
        t.restore(&format!("{}:{}", &id[..8], src.display()), &out);
        assert_same_tree(&copies[3 + i], &out, &ShapeOptions { dir_mtimes: false, ..Default::default() });
    }
    // Nothing more to free; the next backup still deduplicates and works.
    let again: serde_json::Value =
        serde_json::from_str(t.ok(&["prune", "--json"]).split("\nprune:").next().unwrap()).unwrap();
    assert_eq!(again["bytes_freed"], 0, "{again}");
    let s = t.backup("h", &[&src]);
    assert_eq!(s["summary"]["bytes_read"], 0);
    t.ok(&["check", "--read-data"]);
}

fn dir_size(p: &std::path::Path) -> u64 {
    repo_files(p, "data").iter().map(|f| std::fs::metadata(f).unwrap().len()).sum()
}

fn prune_beside_backups_never_loses_a_blob(t: TempRepo) {
    let src = t.path("src");
    corpus_make(&src, 0.1);
    t.backup("h", &[&src]);
    for round in 1..=6u32 {
        corpus_step(&src, round);
        // Forget all but the newest, so prune has plenty to condemn while a backup runs that
        // deduplicates against the same data.
        t.ok(&["forget", "--keep-last", "1"]);
        let mut backup = t
            .cmd()
            .args([OsStr::new("backup"), OsStr::new("--host"), OsStr::new("h"), src.as_os_str()])
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(30 * u64::from(round)));
        let mut prune = t.cmd().arg("prune").spawn().unwrap();
        // Kill one of them at a different moment each round.
        std::thread::sleep(Duration::from_millis(60 * u64::from(round)));
        let victim = if round % 2 == 0 { &mut backup } else { &mut prune };
        if round % 3 != 0 {
            // SAFETY: kill on our own child.
            unsafe { libc::kill(victim.id() as i32, libc::SIGKILL) };
        }
        let _ = backup.wait();
        let _ = prune.wait();
        t.ok(&["check"]);
    }
    // Finish any deferred sweep, then every byte must verify and the newest snapshot restore.
    t.ok(&["prune"]);
    t.ok(&["check", "--read-data"]);
    t.backup("h", &[&src]);
    let out = t.path("out");
    t.restore(&format!("latest:{}", src.display()), &out);
    assert_same_tree(&src, &out, &ShapeOptions::default());
}

fn copy_adds_only_what_the_target_lacks(t: TempRepo) {
    let src = t.path("src");
    corpus_make(&src, 0.03);
    t.backup("h", &[&src]);
    corpus_step(&src, 1);
    t.backup("h", &[&src]);
    let target = t.path("offsite");
    t.ok(&[OsStr::new("init"), target.as_os_str()]);
    let first = t.ok(&[OsStr::new("copy"), OsStr::new("--to"), target.as_os_str()]);
    assert!(first.contains("2 snapshots copied"), "{first}");
    let second = t.ok(&[OsStr::new("copy"), OsStr::new("--to"), target.as_os_str()]);
    assert!(second.contains("0 snapshots copied, 2 already there; 0 blobs"), "{second}");
    let check = rewind_cmd()
        .args([OsStr::new("check"), OsStr::new("--read-data"), OsStr::new("--repo"), target.as_os_str()])
        .output()
        .unwrap();
    assert_success(&check, "check --read-data of the copy");
    let out = t.path("out");
    let r = rewind_cmd()
        .args([
            OsStr::new("restore"),
            OsStr::new(&format!("latest:{}", src.display())),
            OsStr::new("--target"),
            out.as_os_str(),
            OsStr::new("--repo"),
            target.as_os_str(),
        ])
        .output()
        .unwrap();
    assert_success(&r, "restore from the copy");
    assert_same_tree(&src, &out, &ShapeOptions::default());
}

/// Item 9: locks of another host, of pid 0 or 1, of a process that is gone, or that cannot be
/// read count as live until unrefreshed for 30 minutes; then (or once their process is
/// provably gone) prune passes over them, check lists them and unlock removes them.
#[test]
fn stale_locks_are_listed_passed_over_and_removed() {
    let t = TempRepo::new();
    let src = t.path("src");
    crate::support::faults::make_source(&src, 10, 4 << 20, 11);
    let first = t.backup("h", &[&src]);
    t.ok(&["forget", &first["id"].as_str().unwrap()[..8]]);
    let host = String::from_utf8_lossy(&Command::new("hostname").output().unwrap().stdout).trim().to_string();
    let hour_ago = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(1);
    // Written as rewind writes them: sealed with the repository's key (the garbage one is not).
    let codec = t.open().codec().clone();
    let lock = |name: &str, body: Option<rewind_store::LockInfo>, old: bool| {
        let p = t.repo.join("locks").join(name);
        let bytes = match body {
            Some(info) => codec.encode_lock(name, &info),
            None => b"{\"purp".to_vec(),
        };
        std::fs::write(&p, bytes).unwrap();
        if old {
            let ft = filetime::FileTime::from_unix_time(hour_ago.as_second(), 0);
            filetime::set_file_mtime(&p, ft).unwrap();
        }
    };
    let info = |host: &str, pid: u32, time: jiff::Timestamp| {
        Some(rewind_store::LockInfo { purpose: "backup".into(), host: host.into(), pid, time, refreshed: None })
    };
    // Fresh ones first: a prune must wait for them.
    lock("backup-elsewhere", info("elsewhere", 42, jiff::Timestamp::now()), false);
    lock("backup-pid0", info(&host, 0, jiff::Timestamp::now()), false);
    lock("backup-garbage", None, false);
    let out = t.ok(&["prune"]);
    assert!(out.contains("wait for running backups"), "prune passed over live-looking locks: {out}");
    let check = String::from_utf8_lossy(&t.run(&["check"]).stderr).into_owned();
    for name in ["backup-elsewhere", "backup-pid0", "backup-garbage"] {
        assert!(check.contains(name), "check does not list {name}: {check}");
    }
    let kept = t.ok(&["unlock"]);
    assert!(kept.contains("0 lock(s) removed"), "unlock removed live-looking locks: {kept}");
    // Unrefreshed for an hour, and a lock of a process that is gone: stale.
    lock("backup-elsewhere", info("elsewhere", 42, hour_ago), true);
    lock("backup-pid0", info(&host, 0, hour_ago), true);
    lock("backup-garbage", None, true);
    lock("backup-pid1", info(&host, 1, hour_ago), true);
    lock("backup-gone", info(&host, 999_999_999, jiff::Timestamp::now()), false);
    let out = t.ok(&["prune"]);
    assert!(!out.contains("wait for running backups"), "stale locks still block prune: {out}");
    let check = String::from_utf8_lossy(&t.run(&["check"]).stderr).into_owned();
    assert!(check.contains("unlock"), "check does not say how to remove stale locks: {check}");
    let removed = t.ok(&["unlock"]);
    assert!(removed.contains("5 lock(s) removed"), "{removed}");
    assert!(repo_files(&t.repo, "locks").is_empty());
    t.ok(&["check", "--read-data"]);
}
