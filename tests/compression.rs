//! Compression dictionaries (repository version 3) and groups of small blobs (version 4):
//! dictionaries trained by the first backup, kept through prune's repacks and forget, carried by
//! every kind of copy; groups left by prune with only the blobs still used; and neither in
//! older repositories, which still read and take backups as they are.

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};

use crate::support::{ShapeOptions, TEST_PASSWORD, TempRepo, assert_same_tree, assert_success, rewind_bin};

/// Small text files that share words and lines, as source trees do: `files` of them, about
/// 6 KiB each, in a few folders.
fn small_texts(dir: &Path, files: usize, seed: u64) {
    let words = ["fn", "let", "match", "Some", "None", "Result", "impl", "self", "return", "where", "pub", "use"];
    let mut x = seed;
    for f in 0..files {
        let sub = dir.join(format!("d{}", f % 5));
        fs::create_dir_all(&sub).unwrap();
        let mut text = String::new();
        for line in 0..(50 + f % 80) {
            text.push_str(&format!("    // line {line} of file {f}\n    "));
            for _ in 0..10 {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                text.push_str(words[(x >> 33) as usize % words.len()]);
                text.push(' ');
            }
            text.push('\n');
        }
        fs::write(sub.join(format!("f{f}.rs")), text).unwrap();
    }
}

fn dicts(repo: &Path) -> Vec<String> {
    match fs::read_dir(repo.join("dicts")) {
        Ok(d) => d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect(),
        Err(_) => Vec::new(),
    }
}

fn config_version(repo: &Path) -> u64 {
    let c: serde_json::Value = serde_json::from_slice(&fs::read(repo.join("config")).unwrap()).unwrap();
    c["version"].as_u64().unwrap()
}

fn copy_to(from: &TempRepo, to: &TempRepo) -> String {
    let o = from
        .cmd()
        .env("REWIND_TO_PASSWORD", TEST_PASSWORD)
        .args([OsStr::new("copy"), OsStr::new("--to"), to.repo.as_os_str()])
        .output()
        .unwrap();
    assert_success(&o, "rewind copy");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Forget the first snapshot and prune, repacking every pack it can; prune must repack some.
fn forget_first_and_repack(t: &TempRepo) {
    let first = t.snapshots()[0]["id"].as_str().unwrap()[..8].to_string();
    t.ok(&["forget", &first]);
    let pruned: serde_json::Value =
        serde_json::from_str(t.ok(&["prune", "--max-repack", "100", "--json"]).split("\nprune:").next().unwrap())
            .unwrap();
    assert!(pruned["packs_repacked"].as_u64().unwrap() > 0, "{pruned}");
}

fn restores_as(t: &TempRepo, snapshot: &str, src: &Path, expected: &Path, out: &Path) {
    t.restore(&format!("{snapshot}:{}", src.display()), out);
    assert_same_tree(expected, out, &ShapeOptions::default());
}

/// A new repository is version 3; its first backup trains one dictionary, which a repack by
/// prune and a forget keep usable; copies of every kind (same keys, same content identity,
/// other keys) restore the same and pass `check --read-data`.
#[test]
fn dictionaries_survive_prune_and_every_kind_of_copy() {
    let t = TempRepo::new();
    // Same keys as `t`: a copy of its repository before anything is written to it.
    let same = TempRepo::new();
    fs::remove_dir_all(&same.repo).unwrap();
    let st = std::process::Command::new("cp").arg("-a").arg(&t.repo).arg(&same.repo).status().unwrap();
    assert!(st.success());
    assert_eq!(config_version(&t.repo), 4);
    let src = t.path("src");
    small_texts(&src, 400, 1);
    t.backup("h", &[&src]);
    let trained = dicts(&t.repo);
    assert_eq!(trained.len(), 1, "{trained:?}");
    // Edit a tenth of the files, back up again, forget the first: prune repacks the packs that
    // held both versions' blobs.
    let expected = t.path("expected");
    for f in (0..400).step_by(10) {
        let p = src.join(format!("d{}/f{f}.rs", f % 5));
        let mut text = fs::read(&p).unwrap();
        text.extend_from_slice(b"    // edited\n");
        fs::write(&p, text).unwrap();
    }
    let second = t.backup("h", &[&src]);
    let second = second["id"].as_str().unwrap()[..8].to_string();
    let st = std::process::Command::new("cp").arg("-a").arg(&src).arg(&expected).status().unwrap();
    assert!(st.success());
    forget_first_and_repack(&t);
    assert_eq!(dicts(&t.repo), trained, "prune keeps the dictionary");
    t.ok(&["check", "--read-data"]);
    restores_as(&t, &second, &src, &expected, &t.path("r0"));

    let src_ids: Vec<serde_json::Value> = t.snapshots().iter().map(|s| s["id"].clone()).collect();
    let dict_bytes = |r: &Path, name: &str| fs::read(r.join("dicts").join(name)).unwrap();
    for (target, mode) in
        [(same, "verbatim"), (TempRepo::with_content_identity_of(&t), "resealed"), (TempRepo::new(), "renamed")]
    {
        copy_to(&t, &target);
        let got = dicts(&target.repo);
        assert_eq!(got.len(), 1, "{mode}: the target has one dictionary: {got:?}");
        let ids: Vec<serde_json::Value> = target.snapshots().iter().map(|s| s["id"].clone()).collect();
        match mode {
            // The same keys, or the same content identity: the same dictionary (sealed for the
            // target) and the same snapshots.
            "verbatim" | "resealed" => {
                assert_eq!(got, trained, "{mode}");
                assert!(dict_bytes(&target.repo, &got[0]) != dict_bytes(&t.repo, &trained[0]), "{mode}: sealed anew");
                assert_eq!(ids, src_ids, "{mode}");
            }
            // Other keys: content compressed anew, with a dictionary the target trained.
            _ => {
                assert_ne!(got, trained);
                assert_ne!(ids, src_ids);
            }
        }
        target.ok(&["check", "--read-data"]);
        let latest = ids.last().unwrap().as_str().unwrap()[..8].to_string();
        restores_as(&target, &latest, &src, &expected, &target.path(&format!("r-{mode}")));
        // A second copy adds nothing.
        assert!(copy_to(&t, &target).contains("0 snapshots copied"), "{mode}");
    }
}

/// A copy of the committed fixture repository `name` (password `fixture`) in `dir`, and a
/// runner of rewind commands on it that asserts success and returns stdout.
fn fixture(name: &str, dir: &Path) -> (PathBuf, impl Fn(&[&OsStr]) -> String) {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
    let repo = dir.join(name);
    let st = std::process::Command::new("cp").arg("-a").arg(&fixture).arg(&repo).status().unwrap();
    assert!(st.success());
    // The folders git does not keep (empty in the fixture), which a writer needs.
    for d in ["tmp", "locks", "pending"] {
        fs::create_dir_all(repo.join(d)).unwrap();
    }
    let (at, cache, name) = (repo.clone(), dir.join("cache"), name.to_string());
    let run = move |args: &[&OsStr]| {
        let o = std::process::Command::new(rewind_bin())
            .env("RUST_LOG", "warn")
            .env("REWIND_REPO", &at)
            .env("REWIND_PASSWORD", "fixture")
            .env("REWIND_CACHE_DIR", &cache)
            .args(args)
            .output()
            .unwrap();
        assert_success(&o, &format!("{args:?} on the fixture {name}"));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    (repo, run)
}

/// A repository written by rewind before dictionaries (format version 2, committed as a
/// fixture) still lists, checks and restores; new backups into it stay version 2 (no
/// dictionary, nothing an older rewind cannot read).
#[test]
fn version_2_repositories_still_read_and_take_backups_without_dictionaries() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, run) = fixture("v2-repo", dir.path());
    let snaps: Vec<serde_json::Value> =
        serde_json::from_str(&run(&[OsStr::new("snapshots"), OsStr::new("--json")])).unwrap();
    assert_eq!(snaps.len(), 2);
    run(&[OsStr::new("check"), OsStr::new("--read-data")]);
    let out = dir.path().join("out");
    let latest = snaps[1]["id"].as_str().unwrap()[..8].to_string();
    run(&[OsStr::new("restore"), OsStr::new(&latest), OsStr::new("--target"), out.as_os_str()]);
    let src: PathBuf = out.join("tmp/h19c/fx/src");
    assert_eq!(fs::read(src.join("docs/new.txt")).unwrap(), b"new\n");
    assert!(fs::read(src.join("docs/note03.txt")).unwrap().ends_with(b"edited\n"));
    assert!(!src.join("docs/note05.txt").exists());
    assert_eq!(fs::read(src.join("docs/long.txt")).unwrap().split(|b| *b == b'\n').count(), 4000);
    assert_eq!(fs::metadata(src.join("bin/random.bin")).unwrap().len(), 200_000);
    assert_eq!(fs::read_link(src.join("link")).unwrap(), Path::new("docs/note00.txt"));
    // A backup of plenty of small files: no dictionary in a version 2 repository.
    let more = dir.path().join("more");
    small_texts(&more, 400, 2);
    run(&[OsStr::new("backup"), more.as_os_str()]);
    assert_eq!(config_version(&repo), 2);
    assert!(dicts(&repo).is_empty());
    run(&[OsStr::new("check"), OsStr::new("--read-data")]);
    let out2 = dir.path().join("out2");
    run(&[OsStr::new("restore"), OsStr::new("latest"), OsStr::new("--target"), out2.as_os_str()]);
    assert_same_tree(&more, &out2.join(more.strip_prefix("/").unwrap()), &ShapeOptions::default());
}

/// A repository written by rewind before groups (format version 3, with a dictionary,
/// committed as a fixture) still lists, checks and restores; new backups into it stay version
/// 3 (no groups, nothing a rewind of version 3 cannot read), and use its dictionary.
#[test]
fn version_3_repositories_still_read_and_take_backups_without_groups() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, run) = fixture("v3-repo", dir.path());
    let trained = dicts(&repo);
    assert_eq!(trained.len(), 1);
    let snaps: Vec<serde_json::Value> =
        serde_json::from_str(&run(&[OsStr::new("snapshots"), OsStr::new("--json")])).unwrap();
    assert_eq!(snaps.len(), 2);
    run(&[OsStr::new("check"), OsStr::new("--read-data")]);
    let out = dir.path().join("out");
    run(&[OsStr::new("restore"), OsStr::new("latest"), OsStr::new("--target"), out.as_os_str()]);
    let src: PathBuf = out.join("tmp/h19d/fx/src");
    assert_eq!(fs::read(src.join("new.txt")).unwrap(), b"new\n");
    assert!(fs::read(src.join("notes/f002.rs")).unwrap().ends_with(b"edited\n"));
    assert!(fs::read(src.join("notes/f000.rs")).unwrap().starts_with(b"    // line 0 of file 0: "));
    assert!(!src.join("code/f001.rs").exists());
    assert_eq!(fs::read_dir(src.join("code")).unwrap().count() + fs::read_dir(src.join("notes")).unwrap().count(), 319);
    assert_eq!(fs::read(src.join("big.txt")).unwrap().split(|b| *b == b'\n').count(), 9001);
    assert_eq!(fs::read_link(src.join("link")).unwrap(), Path::new("notes/f000.rs"));
    let more = dir.path().join("more");
    small_texts(&more, 400, 3);
    run(&[OsStr::new("backup"), more.as_os_str()]);
    assert_eq!(config_version(&repo), 3);
    assert_eq!(dicts(&repo), trained, "the repository's dictionary serves the new backup");
    run(&[OsStr::new("check"), OsStr::new("--read-data")]);
    let out2 = dir.path().join("out2");
    run(&[OsStr::new("restore"), OsStr::new("latest"), OsStr::new("--target"), out2.as_os_str()]);
    assert_same_tree(&more, &out2.join(more.strip_prefix("/").unwrap()), &ShapeOptions::default());

    // Prune repacks blobs compressed with the dictionary as they are.
    let first = snaps[0]["id"].as_str().unwrap()[..8].to_string();
    run(&[OsStr::new("forget"), OsStr::new(&first)]);
    run(&[OsStr::new("prune"), OsStr::new("--max-repack"), OsStr::new("100")]);
    run(&[OsStr::new("check"), OsStr::new("--read-data")]);
    assert_eq!(config_version(&repo), 3);
    // A copy into an empty repository with the same keys and no dictionary (the fixture's
    // config and keys): blobs go across as they are, the dictionary before them.
    let twin = dir.path().join("twin");
    fs::create_dir_all(twin.join("keys")).unwrap();
    for f in ["config", "keys"] {
        let st = std::process::Command::new("cp")
            .arg("-a")
            .arg(repo.join(f))
            .arg(twin.join(f).parent().unwrap())
            .status()
            .unwrap();
        assert!(st.success());
    }
    for d in ["data", "index", "snapshots", "tmp", "locks", "pending"] {
        fs::create_dir_all(twin.join(d)).unwrap();
    }
    let o = std::process::Command::new(rewind_bin())
        .env("RUST_LOG", "warn")
        .env("REWIND_REPO", &repo)
        .env("REWIND_PASSWORD", "fixture")
        .env("REWIND_TO_PASSWORD", "fixture")
        .env("REWIND_CACHE_DIR", dir.path().join("cache"))
        .args([OsStr::new("copy"), OsStr::new("--to"), twin.as_os_str()])
        .output()
        .unwrap();
    assert_success(&o, "copy into the twin");
    assert_eq!(config_version(&twin), 3);
    assert_eq!(dicts(&twin), trained);
    let o = std::process::Command::new(rewind_bin())
        .env("REWIND_REPO", &twin)
        .env("REWIND_PASSWORD", "fixture")
        .env("REWIND_CACHE_DIR", dir.path().join("cache"))
        .args(["check", "--read-data"])
        .output()
        .unwrap();
    assert_success(&o, "check of the twin");
}

/// Bytes of the packs of a repository.
fn pack_bytes(repo: &Path) -> u64 {
    let mut total = 0;
    for d in fs::read_dir(repo.join("data")).unwrap() {
        for f in fs::read_dir(d.unwrap().path()).unwrap() {
            total += f.unwrap().metadata().unwrap().len();
        }
    }
    total
}

/// Small files are stored in groups compressed together. When most of a group's files are no
/// longer in any snapshot, prune keeps only the ones still used (grouped anew), so the space
/// of the others is freed, and everything left restores and verifies.
#[test]
fn prune_frees_the_members_of_groups_that_no_snapshot_uses() {
    let t = TempRepo::new();
    let src = t.path("src");
    small_texts(&src, 900, 5);
    t.backup("h", &[&src]);
    let full = pack_bytes(&t.repo);
    // Two files of three go.
    for f in 0..900 {
        if f % 3 != 0 {
            fs::remove_file(src.join(format!("d{}/f{f}.rs", f % 5))).unwrap();
        }
    }
    let second = t.backup("h", &[&src]);
    let second = second["id"].as_str().unwrap()[..8].to_string();
    forget_first_and_repack(&t);
    let left = pack_bytes(&t.repo);
    assert!(left * 2 < full, "a third of the files stay: {left} bytes of packs of {full}");
    t.ok(&["check", "--read-data"]);
    restores_as(&t, &second, &src, &src, &t.path("out"));
}

/// A file of a few bytes stored in a group takes next to nothing of it; when it is all that is
/// left of its pack, prune must keep it (not take the pack for unused), and it restores.
#[test]
fn prune_keeps_a_tiny_file_that_is_all_its_pack_still_holds() {
    let t = TempRepo::new();
    let src = t.path("src");
    small_texts(&src, 300, 9);
    fs::write(src.join("VERSION"), b"7\n").unwrap();
    t.backup("h", &[&src]);
    for d in 0..5 {
        fs::remove_dir_all(src.join(format!("d{d}"))).unwrap();
    }
    let second = t.backup("h", &[&src]);
    let second = second["id"].as_str().unwrap()[..8].to_string();
    let first = t.snapshots()[0]["id"].as_str().unwrap()[..8].to_string();
    t.ok(&["forget", &first]);
    t.ok(&["prune"]);
    t.ok(&["check", "--read-data"]);
    restores_as(&t, &second, &src, &src, &t.path("out"));
}
