//! A shared folder whose access is decided by mode bits, owners, searchable folders and POSIX
//! ACLs, the users who read it, and what the kernel lets each of them read: the ground truth
//! that the portal's `readable` rule and the mount with `--allow-other` are held to.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use super::assert_success;
use super::portal::{Client, enc, passwd_hash};

/// The readers: (login, uid, groups, the first being the primary one).
pub const PEOPLE: [(&str, u32, &[u32]); 3] =
    [("alice", 2001, &[2001, 5000]), ("bob", 2002, &[2002]), ("carol", 2003, &[2003, 5000])];

/// The files of [`make_share`], relative to its root.
pub const SHARE_FILES: [&str; 10] = [
    "proj/plan.txt",
    "proj/budget.txt",
    "proj/open.txt",
    "acl/for-alice.txt",
    "acl/masked.txt",
    "acl/group.txt",
    "acl/denied-group.txt",
    "noexec/inside.txt",
    "pub/readme",
    "private/x.txt",
];

/// Make the share at `r` (its ancestors must be searchable by everyone). Needs root and
/// `setfacl`.
pub fn make_share(r: &Path) {
    for tool in ["/usr/bin/setpriv", "/usr/bin/setfacl"] {
        assert!(Path::new(tool).exists(), "{tool} is missing (util-linux, acl)");
    }
    let own = |p: &Path, uid: u32, gid: u32, mode: u32| {
        std::os::unix::fs::chown(p, Some(uid), Some(gid)).unwrap();
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    let file = |rel: &str, uid: u32, gid: u32, mode: u32| {
        let p = r.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, rel.as_bytes()).unwrap();
        own(&p, uid, gid, mode);
    };
    let acl = |rel: &str, spec: &str| {
        assert_success(&Command::new("setfacl").args(["-m", spec]).arg(r.join(rel)).output().unwrap(), "setfacl")
    };
    file("proj/plan.txt", 2001, 5000, 0o640);
    file("proj/budget.txt", 2002, 5000, 0o600);
    file("proj/open.txt", 2002, 2002, 0o644);
    file("acl/for-alice.txt", 2002, 2002, 0o600);
    file("acl/masked.txt", 2002, 2002, 0o600);
    file("acl/group.txt", 2002, 2002, 0o600);
    file("acl/denied-group.txt", 2002, 5000, 0o604);
    file("noexec/inside.txt", 2002, 2002, 0o644);
    file("pub/readme", 0, 0, 0o644);
    file("private/x.txt", 0, 0, 0o644);
    own(r, 0, 0, 0o755);
    own(&r.join("proj"), 0, 5000, 0o750);
    own(&r.join("acl"), 2002, 2002, 0o755);
    own(&r.join("noexec"), 2002, 2002, 0o744);
    own(&r.join("pub"), 0, 0, 0o755);
    own(&r.join("private"), 0, 0, 0o700);
    acl("acl/for-alice.txt", "u:2001:r");
    acl("acl/masked.txt", "u:2001:r,m::-");
    acl("acl/group.txt", "g:5000:r");
    // Group 5000 is named with no rights: its members are refused although "other" may read.
    acl("acl/denied-group.txt", "g::-");
}

/// A file realm (`local`) of [`PEOPLE`], all with the password `pw`, written into `dir`.
pub fn people_realm(dir: &Path) -> String {
    let hash = passwd_hash("pw");
    let mut users = String::new();
    for (name, uid, gids) in PEOPLE {
        users.push_str(&format!("[users.{name}]\nhash = \"{hash}\"\nuid = {uid}\ngids = {gids:?}\n"));
    }
    std::fs::write(dir.join("users.toml"), users).unwrap();
    format!("[[realm]]\nkind = \"file\"\nname = \"local\"\nusers_file = \"{}\"\n", dir.join("users.toml").display())
}

/// What the kernel lets the user `uid` with `gids` read below `root`, as `setpriv` running as
/// them finds it: readable entries (folders: readable and searchable), as full paths.
pub fn readable_as(uid: u32, gids: &[u32], root: &Path) -> BTreeSet<String> {
    let groups: Vec<String> = gids.iter().map(|g| g.to_string()).collect();
    let out = Command::new("setpriv")
        .args([&format!("--reuid={uid}"), &format!("--regid={}", gids[0]), &format!("--groups={}", groups.join(","))])
        .args(["find"])
        .arg(root)
        .args([
            "-mindepth",
            "1",
            "-exec",
            "sh",
            "-c",
            "for p; do if [ -r \"$p\" ] && { [ ! -d \"$p\" ] || [ -x \"$p\" ]; }; then echo \"$p\"; fi; done",
            "sh",
            "{}",
            "+",
        ])
        .stderr(Stdio::null())
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

/// Every entry below `root` that the portal shows the client in snapshot `snap` (walking every
/// folder it shows from the top), as full paths.
pub fn portal_shows(c: &Client, snap: &str, root: &Path) -> BTreeSet<String> {
    let root = root.to_string_lossy();
    let mut shown = BTreeSet::new();
    let mut todo = vec!["/".to_string()];
    while let Some(d) = todo.pop() {
        let j = c.get(&format!("/api/browse?snapshot={snap}&path={}", enc(&d))).json();
        for e in j["entries"].as_array().unwrap() {
            let p = e["path"].as_str().unwrap().to_string();
            if e["kind"] == "dir" {
                todo.push(p.clone());
            }
            if e["passthrough"] == false && p.starts_with(&*root) && p != root {
                shown.insert(p);
            }
        }
    }
    shown
}
