//! The file catalog end to end: `find`, `deleted`, `history` and `catalog rebuild` on the bench
//! corpus's history, every answer checked against a brute-force walk of every snapshot.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use rewind_catalog::{Catalog, Query};
use rewind_store::{CacheSizes, Repository, TreeId};
use serde_json::Value;

use crate::support::{TempRepo, assert_success, corpus_make, corpus_step, sqlite};

/// One version as compared: host, path, kind, size, mtime, uid, content, first and last snapshot
/// ids, present, first snapshot without it (deleted ones).
type Row = (String, String, String, u64, String, u64, String, String, String, bool, Option<String>);

fn row_of(v: &Value) -> Row {
    let s = |k: &str| v[k].as_str().unwrap_or_else(|| panic!("{k} in {v}")).to_string();
    (
        s("host"),
        s("path"),
        s("kind"),
        v["size"].as_u64().unwrap(),
        s("mtime"),
        v["uid"].as_u64().unwrap(),
        s("content"),
        v["first_seen"]["id"].as_str().unwrap().to_string(),
        v["last_seen"]["id"].as_str().unwrap().to_string(),
        v["present"].as_bool().unwrap(),
        v["deleted"]["first_absent"]["id"].as_str().map(str::to_string),
    )
}

fn rows(json_lines: &str) -> BTreeSet<Row> {
    let mut out = BTreeSet::new();
    for line in json_lines.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line).expect("one JSON object per line");
        assert!(out.insert(row_of(&v)), "duplicate version {line}");
    }
    out
}

/// Brute force: walk every snapshot of every host through the store and cut each path's
/// presence into runs of one identity.
fn brute_force(repo: &Path, only: Option<&BTreeSet<String>>) -> BTreeSet<Row> {
    let repo = Repository::open(repo, Some(&crate::support::test_secret()))
        .unwrap()
        .open_indexed(CacheSizes::default())
        .unwrap();
    let mut by_host: BTreeMap<String, Vec<(String, TreeId)>> = BTreeMap::new();
    for e in repo.repo().snapshots().unwrap() {
        if only.is_some_and(|o| !o.contains(&e.id.to_hex())) {
            continue;
        }
        by_host.entry(e.snapshot.host.clone()).or_default().push((e.id.to_hex(), e.snapshot.tree));
    }
    let mut out = BTreeSet::new();
    for (host, snaps) in by_host {
        type Ident = (String, u64, String, u64, String, u32, u32);
        let mut seen: BTreeMap<String, Vec<(usize, Ident)>> = BTreeMap::new();
        for (i, (_, root)) in snaps.iter().enumerate() {
            let mut stack = vec![(String::new(), *root)];
            while let Some((prefix, tid)) = stack.pop() {
                for n in &repo.tree(tid).unwrap().nodes {
                    let p = format!("{prefix}/{}", String::from_utf8_lossy(&n.name));
                    let mtime = jiff::Timestamp::new(n.mtime.sec, n.mtime.nsec as i32).unwrap().to_string();
                    let content = format!("{:016x}", rewind_catalog::content_id(n) as u64);
                    let ident = (n.kind.as_str().to_string(), n.size, mtime, u64::from(n.uid), content, n.mode, n.gid);
                    seen.entry(p.clone()).or_default().push((i, ident));
                    if let Some(sub) = n.subtree {
                        stack.push((p, sub));
                    }
                }
            }
        }
        let latest = snaps.len() - 1;
        for (path, occ) in seen {
            let mut runs: Vec<(usize, usize, Ident)> = Vec::new();
            for (i, id) in occ {
                match runs.last_mut() {
                    Some(r) if r.1 + 1 == i && r.2 == id => r.1 = i,
                    _ => runs.push((i, i, id)),
                }
            }
            let n = runs.len();
            for (k, (a, b, id)) in runs.into_iter().enumerate() {
                let gone = k + 1 == n && b != latest;
                out.insert((
                    host.clone(),
                    path.clone(),
                    id.0,
                    id.1,
                    id.2,
                    id.3,
                    id.4,
                    snaps[a].0.clone(),
                    snaps[b].0.clone(),
                    b == latest,
                    gone.then(|| snaps[b + 1].0.clone()),
                ));
            }
        }
    }
    out
}

/// The regular files under `root`: path -> (uid, size, mtime, BLAKE3 of the bytes).
fn walk(root: &Path) -> BTreeMap<String, (u32, u64, i64, String)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let md = e.path().symlink_metadata().unwrap();
            if md.is_dir() {
                stack.push(e.path());
            } else if md.is_file() {
                let hash = blake3::hash(&std::fs::read(e.path()).unwrap()).to_hex().to_string();
                out.insert(e.path().to_string_lossy().into_owned(), (md.uid(), md.size(), md.mtime(), hash));
            }
        }
    }
    out
}

fn all_versions(t: &TempRepo) -> BTreeSet<Row> {
    rows(&t.ok(&["find", "*", "--all", "--json"]))
}

#[test]
fn catalog_answers_equal_a_walk_of_every_snapshot() {
    let t = TempRepo::new();
    let src = t.path("src");
    corpus_make(&src, 0.03);
    let mut gens = vec![walk(&src)];
    let mut ids: Vec<String> = Vec::new();
    let mut times: Vec<String> = Vec::new();
    for generation in 0..4u32 {
        if generation > 0 {
            corpus_step(&src, generation);
            gens.push(walk(&src));
        }
        // The backup brings the catalog up to date itself.
        let s = t.backup("fileserver", &[&src]);
        ids.push(s["id"].as_str().unwrap().to_string());
        times.push(s["time"].as_str().unwrap().to_string());
        let cat = Catalog::open_read_only(&t.catalog_path()).expect("backup made the catalog");
        assert_eq!(cat.snapshots().unwrap().len(), ids.len(), "backup {generation} updated the catalog");
    }
    let expected = brute_force(&t.repo, None);
    let versions = all_versions(&t);
    assert_eq!(versions, expected, "find * equals the brute force");

    // Deleted: exactly the files that some step removed or moved away (renamed folders).
    let latest = gens.last().unwrap();
    let mut ever: BTreeMap<String, u32> = BTreeMap::new();
    for g in &gens {
        for (p, v) in g {
            ever.insert(p.clone(), v.0);
        }
    }
    let gone_files: BTreeSet<String> = ever.keys().filter(|p| !latest.contains_key(*p)).cloned().collect();
    assert!(gone_files.len() > 10, "the corpus history deletes files");
    let deleted = rows(&t.ok(&["deleted", "--all", "--json"]));
    let deleted_files: BTreeSet<String> = deleted.iter().filter(|r| r.2 == "file").map(|r| r.1.clone()).collect();
    assert_eq!(deleted_files, gone_files);
    assert_eq!(deleted, expected.iter().filter(|r| r.10.is_some()).cloned().collect());
    // ... per owner,
    let uid = ever[gone_files.iter().next().unwrap()];
    let mine = rows(&t.ok(&["deleted", "--all", "--json", "--owner", &uid.to_string()]));
    let want: BTreeSet<String> = gone_files.iter().filter(|p| ever[*p] == uid).cloned().collect();
    assert_eq!(mine.iter().filter(|r| r.2 == "file").map(|r| r.1.clone()).collect::<BTreeSet<_>>(), want);
    assert!(mine.iter().all(|r| r.5 == u64::from(uid)));
    // ... and since the last snapshot: what the last step removed.
    let last_step: BTreeSet<String> =
        gens[gens.len() - 2].keys().filter(|p| !latest.contains_key(*p)).cloned().collect();
    let since = rows(&t.ok(&["deleted", "--all", "--json", "--since", times.last().unwrap()]));
    assert_eq!(since.iter().filter(|r| r.2 == "file").map(|r| r.1.clone()).collect::<BTreeSet<_>>(), last_step);
    assert!(since.len() < deleted.len());

    // Renamed folders: the old paths are deleted, the new ones appear in that generation.
    for generation in 1..4usize {
        let before = &gens[generation - 1];
        let after = &gens[generation];
        let renamed: Vec<&String> =
            after.keys().filter(|p| p.contains(&format!("-renamed-gen{generation}/"))).collect();
        assert!(!renamed.is_empty(), "generation {generation} renames a folder");
        for p in renamed {
            let old = p.replacen(&format!("-renamed-gen{generation}/"), "/", 1);
            assert!(before.contains_key(&old) && !after.contains_key(&old));
            let v = versions.iter().find(|r| &r.1 == p).unwrap_or_else(|| panic!("{p} not in the catalog"));
            assert_eq!(v.7, ids[generation], "{p} first seen in generation {generation}");
            let o = deleted.iter().find(|r| r.1 == old).unwrap_or_else(|| panic!("{old} not deleted"));
            assert_eq!(o.8, ids[generation - 1]);
            assert_eq!(o.10.as_ref(), Some(&ids[generation]));
        }
    }

    // History: one version per change of each file.
    let mut checked = 0;
    for (path, _) in latest.iter().filter(|(p, _)| p.ends_with(".txt") || p.ends_with(".log")).take(400) {
        let mut states: Vec<&(u32, u64, i64, String)> = Vec::new();
        for g in &gens {
            if let Some(s) = g.get(path)
                && states.last() != Some(&s)
            {
                states.push(s);
            }
        }
        if states.len() < 2 && checked > 0 && !path.ends_with(".log") {
            continue;
        }
        let out = t.ok(&["history", "--json", path]);
        let hist: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(hist.len(), states.len(), "{path}: one version per change");
        let sizes: Vec<u64> = hist.iter().rev().map(|v| v["size"].as_u64().unwrap()).collect();
        assert_eq!(sizes, states.iter().map(|s| s.1).collect::<Vec<_>>(), "{path}");
        checked += 1;
    }
    assert!(checked > 10, "only {checked} files had history to check");

    // Name search, case-insensitive substring and glob, against the brute force.
    let by_name = |pat: &dyn Fn(&str) -> bool| -> BTreeSet<Row> {
        expected.iter().filter(|r| pat(&r.1.rsplit('/').next().unwrap().to_lowercase())).cloned().collect()
    };
    let got = rows(&t.ok(&["find", "BUDGET", "--all", "--json"]));
    assert!(!got.is_empty());
    assert_eq!(got, by_name(&|n| n.contains("budget")));
    let got = rows(&t.ok(&["find", "f00?1.RS", "--all", "--json"]));
    assert!(!got.is_empty());
    assert_eq!(got, by_name(&|n| n.len() == 8 && n.starts_with("f00") && n.ends_with("1.rs")));
    let prefix = format!("{}/users/carol", src.display());
    let got = rows(&t.ok(&["find", "txt", "--all", "--json", "--path", &prefix, "--deleted"]));
    assert!(!got.is_empty());
    let want: BTreeSet<Row> = expected
        .iter()
        .filter(|r| {
            r.10.is_some() && r.1.starts_with(&format!("{prefix}/")) && r.1.rsplit('/').next().unwrap().contains("txt")
        })
        .cloned()
        .collect();
    assert_eq!(got, want);
    // The first page is the most recent.
    let page = t.ok(&["find", "txt", "--json", "--limit", "5"]);
    let first: Vec<Value> = page.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(first.len(), 5);
    assert!(first.iter().all(|v| v["last_seen"]["id"] == ids[3].as_str()));

    // Rebuild from scratch gives the same answers.
    t.ok(&["catalog", "rebuild"]);
    assert_eq!(all_versions(&t), expected);
    // So does a deleted catalog, rebuilt on the next query.
    std::fs::remove_dir_all(t.catalog_path().parent().unwrap()).unwrap();
    assert_eq!(all_versions(&t), expected);

    // A killed rebuild leaves the catalog as it was (it is one transaction).
    let first_snapshot_versions = expected.iter().filter(|r| r.7 == ids[0]).count();
    let out = t
        .cmd()
        .args(["catalog", "rebuild"])
        .env("REWIND_CATALOG_FAILPOINT", format!("abort-after-versions:{}", first_snapshot_versions + 20))
        .output()
        .unwrap();
    assert!(!out.status.success(), "the failpoint killed the rebuild");
    let cat = Catalog::open_read_only(&t.catalog_path()).unwrap();
    assert_eq!(cat.snapshots().unwrap().len(), 4);
    drop(cat);
    assert_eq!(all_versions(&t), expected);
    // A killed update keeps the snapshots it had committed, one transaction each.
    std::fs::remove_dir_all(t.catalog_path().parent().unwrap()).unwrap();
    let out = t
        .cmd()
        .args(["catalog", "sync"])
        .env("REWIND_CATALOG_FAILPOINT", format!("abort-after-versions:{}", first_snapshot_versions + 20))
        .output()
        .unwrap();
    assert!(!out.status.success(), "the failpoint killed the update");
    let cat = Catalog::open_read_only(&t.catalog_path()).unwrap();
    let had: BTreeSet<String> = cat.snapshots().unwrap().into_iter().map(|s| s.id).collect();
    assert_eq!(had, BTreeSet::from([ids[0].clone()]), "killed in the second snapshot");
    let mut partial = BTreeSet::new();
    let mut q = Query { limit: rewind_catalog::MAX_LIMIT, ..Default::default() };
    loop {
        let page = cat.find(&q).unwrap();
        for v in &page.items {
            partial.insert(row_of(&serde_json::to_value(v).unwrap()));
        }
        match page.next_offset {
            Some(o) => q.offset = o,
            None => break,
        }
    }
    assert_eq!(partial, brute_force(&t.repo, Some(&had)));
    // The next sync (here, of a query) completes it.
    assert_eq!(all_versions(&t), expected);

    // Retention: a snapshot removed from the repository drops out of the catalog.
    std::fs::remove_file(t.repo.join("snapshots").join(&ids[1])).unwrap();
    let after = brute_force(&t.repo, None);
    assert_ne!(after, expected);
    assert!(after.iter().all(|r| r.7 != ids[1] && r.8 != ids[1]));
    assert_eq!(all_versions(&t), after);
}

#[test]
fn a_broken_catalog_never_fails_a_backup() {
    let t = TempRepo::new();
    let src = t.path("src");
    std::fs::create_dir_all(src.join("d")).unwrap();
    std::fs::write(src.join("d/report.txt"), b"one").unwrap();
    // A file where the catalog's directory should be: the catalog cannot be opened.
    let folder = t.catalog_path().parent().unwrap().to_path_buf();
    std::fs::create_dir_all(folder.parent().unwrap()).unwrap();
    std::fs::write(&folder, b"not a directory").unwrap();
    let out = t.cmd().args(["backup", "--host", "h"]).arg(&src).output().unwrap();
    assert_success(&out, "backup with a broken catalog");
    assert!(String::from_utf8_lossy(&out.stderr).contains("catalog"), "a warning is printed");
    assert_eq!(t.snapshots().len(), 1);
    // Once repaired, the catalog catches up on its own.
    std::fs::remove_file(&folder).unwrap();
    let found = rows(&t.ok(&["find", "REPORT", "--json"]));
    assert_eq!(found.len(), 1);
    assert_eq!(found.iter().next().unwrap().1, format!("{}/d/report.txt", src.display()));
}

/// Review of issue 13, finding 4: a folder's access was part of the identity of every version
/// below it, so one `chmod` of a folder added a catalog version per file below it (500 files:
/// 503 versions). Now it adds the folder's own.
#[test]
fn a_folders_chmod_adds_one_version_not_one_per_file_below() {
    use std::os::unix::fs::PermissionsExt;
    assert!(crate::support::is_root(), "chowns files");
    let repo = TempRepo::new();
    std::fs::set_permissions(repo.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let src = repo.path("src");
    let docs = src.join("alice/docs");
    std::fs::create_dir_all(&docs).unwrap();
    for i in 0..500 {
        std::fs::write(docs.join(format!("f{i:03}.txt")), format!("{i}\n")).unwrap();
    }
    for p in [src.join("alice"), docs.clone()] {
        std::os::unix::fs::chown(&p, Some(2001), Some(2001)).unwrap();
    }
    let versions = || -> u64 {
        let out = repo.ok(&["catalog", "stats", "--json"]);
        serde_json::from_str::<Value>(out.trim()).unwrap()["versions"].as_u64().unwrap()
    };
    repo.backup("fileserver", &[&src]);
    let before = versions();
    for (round, mode) in [0o750, 0o755, 0o750].into_iter().enumerate() {
        std::fs::set_permissions(src.join("alice"), std::fs::Permissions::from_mode(mode)).unwrap();
        repo.backup("fileserver", &[&src]);
        let added = versions() - before;
        assert!(
            added <= (round as u64 + 1) * 2,
            "after {} chmods of alice's home: {added} new catalog versions",
            round + 1
        );
    }
}

/// A catalog that an older rewind kept inside a local repository (`REPO/catalog/`, every path
/// in the clear) leaves it with the next command that updates the catalog: copied to the cache
/// folder (not rebuilt: a mark made in it survives), and gone from the repository.
#[test]
fn an_older_rewinds_catalog_leaves_the_repository() {
    let t = TempRepo::new();
    let src = t.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("report.txt"), b"one").unwrap();
    t.backup("h", &[&src]);
    assert!(!t.repo.join("catalog").exists(), "a new catalog is made outside the repository");
    // Where rewinds before 2026-11-30 kept it, with a mark only a copy keeps.
    let old = t.repo.join("catalog");
    std::fs::rename(t.catalog_path().parent().unwrap(), &old).unwrap();
    let sql = |db: &Path, statement: &str| sqlite(db, &[statement]);
    sql(&old.join("catalog.sqlite"), "INSERT INTO meta VALUES ('mark', 'moved')");

    let found = rows(&t.ok(&["find", "report", "--json"]));
    assert_eq!(found.len(), 1);
    assert!(!old.exists(), "the old catalog is gone from the repository");
    assert_eq!(sql(&t.catalog_path(), "SELECT value FROM meta WHERE key = 'mark'"), "[('moved',)]");
    let mode = std::fs::metadata(t.catalog_path()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the copy is its owner's only");

    // A backup moves it too, and the catalog it finds goes on from there. Only the catalog's
    // files are removed: something else kept in that folder stays, with the folder.
    std::fs::rename(t.catalog_path().parent().unwrap(), &old).unwrap();
    std::fs::write(old.join("notes.txt"), b"an admin's").unwrap();
    std::fs::write(src.join("later.txt"), b"two").unwrap();
    let out = t.cmd().args(["backup", "--host", "h"]).arg(&src).output().unwrap();
    assert_success(&out, "backup");
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot remove"), "a warning names what is left");
    assert!(!old.join("catalog.sqlite").exists());
    assert_eq!(std::fs::read(old.join("notes.txt")).unwrap(), b"an admin's");
    assert_eq!(sql(&t.catalog_path(), "SELECT value FROM meta WHERE key = 'mark'"), "[('moved',)]");
    assert_eq!(rows(&t.ok(&["find", "later", "--json"])).len(), 1);
    t.ok(&["check"]);
}

/// The catalog holds every path in the clear: it is never made in a folder that is not the
/// user's alone (another user's, or one others may write in, as a cache folder under /tmp can
/// be), where someone else could read it through a file planted beside it. The backup goes on
/// without a catalog, and the commands that need one say why in one line (found in a review).
#[test]
fn no_catalog_in_a_folder_that_is_not_the_users_alone() {
    use std::os::unix::fs::PermissionsExt;
    assert!(crate::support::is_root(), "chowns a folder to another user");
    let t = TempRepo::new();
    let src = t.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("salary.xlsx"), b"one").unwrap();
    // Another user made the folder the catalog would go to, open to all.
    let folder = t.catalog_path().parent().unwrap().to_path_buf();
    std::fs::create_dir_all(&folder).unwrap();
    std::os::unix::fs::chown(&folder, Some(65534), Some(65534)).unwrap();
    std::fs::set_permissions(&folder, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = t.cmd().args(["backup", "--host", "h"]).arg(&src).output().unwrap();
    assert_success(&out, "backup beside a folder that is not the user's");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(err.contains("catalog") && err.contains("belongs to uid 65534"), "{err}");
    assert_eq!(std::fs::read_dir(&folder).unwrap().count(), 0, "nothing written there");
    let out = t.run(&["find", "salary"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(err.contains("belongs to uid 65534"), "{err}");
    assert_eq!(std::fs::read_dir(&folder).unwrap().count(), 0, "nothing written there");
    // A cache folder inside a folder of another user's, who could swap it: refused too.
    let theirs = t.path("theirs");
    std::fs::create_dir(&theirs).unwrap();
    std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
    let out = t.cmd().env("REWIND_CACHE_DIR", theirs.join("cache")).args(["find", "salary"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(err.contains("belongs to uid 65534, who could swap"), "{err}");
    // A folder the user names, that others may write in: refused and left as it is; so is a
    // file there that is not the user's (named by mistake, say).
    let named = t.path("shared");
    std::fs::create_dir(&named).unwrap();
    std::fs::set_permissions(&named, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = t.cmd().arg("find").arg("salary").arg("--catalog").arg(named.join("c.sqlite")).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success() && err.contains("may be written by others (mode 777"), "{err}");
    assert_eq!(std::fs::metadata(&named).unwrap().permissions().mode() & 0o7777, 0o777);
    std::fs::set_permissions(&named, std::fs::Permissions::from_mode(0o755)).unwrap();
    let notes = named.join("notes.sqlite");
    std::fs::write(&notes, b"someone's notes").unwrap();
    std::os::unix::fs::chown(&notes, Some(65534), Some(65534)).unwrap();
    let out = t.cmd().arg("find").arg("salary").arg("--catalog").arg(&notes).output().unwrap();
    assert!(!out.status.success());
    assert_eq!(std::fs::read(&notes).unwrap(), b"someone's notes");
    // The repository's own cache folder, the user's, made by an older rewind under a lax umask:
    // made private and used, and a `-wal` someone planted while it was open (a hard link to a
    // file of theirs) is not.
    std::os::unix::fs::chown(&folder, Some(0), Some(0)).unwrap();
    let bait = theirs.join("bait");
    std::fs::write(&bait, b"").unwrap();
    std::os::unix::fs::chown(&bait, Some(65534), Some(65534)).unwrap();
    std::fs::hard_link(&bait, folder.join("catalog.sqlite-wal")).unwrap();
    assert_eq!(rows(&t.ok(&["find", "salary", "--json"])).len(), 1);
    assert_eq!(std::fs::metadata(&folder).unwrap().permissions().mode() & 0o777, 0o700);
    assert_eq!(std::fs::metadata(&bait).unwrap().len(), 0, "nothing of the catalog went into the planted file");
}

/// A file named as the catalog by mistake (a document, another program's database) is never
/// replaced or removed: the commands that need the catalog say so in one line, a backup still
/// succeeds with a warning (they used to take it for a damaged catalog and delete it).
#[test]
fn a_file_that_is_not_a_catalog_is_left_as_it_is() {
    let t = TempRepo::new();
    let src = t.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("report.txt"), b"one").unwrap();
    t.backup("h", &[&src]);
    let notes = t.path("notes.txt");
    std::fs::write(&notes, b"my notes, not a database").unwrap();
    let other = t.path("other.sqlite");
    sqlite(&other, &["CREATE TABLE recipes(name TEXT)", "INSERT INTO recipes VALUES ('soup')"]);
    let before = std::fs::read(&other).unwrap();
    for (file, content) in [(&notes, b"my notes, not a database".to_vec()), (&other, before)] {
        let out = t.cmd().args(["find", "report", "--catalog"]).arg(file).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success() && err.contains("is not a rewind catalog"), "{err}");
        let out = t.cmd().args(["catalog", "rebuild", "--catalog"]).arg(file).output().unwrap();
        assert!(!out.status.success());
        let out = t.cmd().args(["backup", "--host", "h"]).arg(&src).env("REWIND_CATALOG", file).output().unwrap();
        assert_success(&out, "backup with a catalog path that is not a catalog");
        assert!(String::from_utf8_lossy(&out.stderr).contains("not a rewind catalog"));
        assert!(std::fs::read(file).unwrap() == content, "{} changed", file.display());
    }
}
