//! The portal's promise as a property: what a user gets from any endpoint equals what the same
//! user would get from a repository where everything they may not see was never backed up.
//!
//! A small world (a file server with homes, shared and private folders, POSIX ACLs, and
//! alice's laptop) is written by the test in three generations: edits, deletions, a folder
//! closed to its group and opened again, a folder others pass through whose mode changes, files
//! given to someone else and back, a file that goes and comes back. Every generation is backed
//! up into the real repository; and for each rule set and each user, the part of it that user
//! may see (decided by the test: owners and paths by hand, `readable` by the kernel itself,
//! asked as the user with `setpriv`) plus the folders on the way to it is written at the same
//! place and backed up into that user's own repository. The folders the user only passes
//! through carry nothing the user could observe there: fixed, neutral metadata (root's, mode
//! 0711, no ACL, one time), so that any answer that depends on their real metadata (their mode,
//! owner, ACL, or when those changed) shows as a difference. A portal on the real repository and a portal on the user's own one must then
//! answer the same, byte for byte once snapshot ids, times and cursors are named alike:
//! - the paging oracle: search and deleted with brace globs, every order, limits 1 to 3 and
//!   each filter, followed page by page to the end;
//! - the sub-repository equivalence: hosts, snapshots, every folder browsed, every file
//!   downloaded, every folder archived, histories, guessed paths, and the access history after
//!   a helpdesk session.
//!
//! Users come from a real slapd (`corp`) and a file realm (`local`) that holds a different
//! person also called alice.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

use crate::support::portal::*;
use crate::support::slapd::{Slapd, corpus_users};
use crate::support::{TempRepo, assert_success, is_root};

// ---------------------------------------------------------------------------------------------
// The world, as data.

#[derive(Clone, Debug, PartialEq)]
enum Kind {
    Dir,
    File(Vec<u8>),
    Link(&'static str),
}

#[derive(Clone, Debug)]
struct Entry {
    /// Relative to the host's root folder.
    path: String,
    kind: Kind,
    uid: u32,
    gid: u32,
    mode: u32,
    mtime: i64,
    /// A `setfacl -m` specification.
    acl: Option<&'static str>,
}

const DAY: i64 = 86_400;
const T0: i64 = 1_750_000_000;

fn dir(path: &str, uid: u32, gid: u32, mode: u32) -> Entry {
    Entry { path: path.into(), kind: Kind::Dir, uid, gid, mode, mtime: T0, acl: None }
}

fn file(path: &str, uid: u32, gid: u32, mode: u32, size: usize, day: i64) -> Entry {
    let seed = path.bytes().fold(day as u64, |a, b| a.wrapping_mul(31).wrapping_add(u64::from(b)));
    let data: Vec<u8> = (0..size).map(|i| b'a' + ((seed.wrapping_add(i as u64 * 7)) % 26) as u8).collect();
    Entry { path: path.into(), kind: Kind::File(data), uid, gid, mode, mtime: T0 + day * DAY, acl: None }
}

/// The file server and the laptop, generation by generation.
fn generation(g: u32) -> [(&'static str, Vec<Entry>); 2] {
    let mut fs = vec![
        dir("home", 0, 0, 0o755),
        dir("home/alice", 2001, 2001, 0o750),
        dir("home/alice/Documents", 2001, 2001, 0o755),
        file("home/alice/Documents/report.txt", 2001, 2001, 0o644, if g == 0 { 300 } else { 320 }, i64::from(g.min(1))),
        file("home/alice/Documents/big.bin", 2001, 2001, 0o600, 5000, 0),
        file("home/alice/report-2025.txt", 2001, 2001, 0o600, 120, 1),
        file("home/alice/from-bob.txt", 2002, 2002, 0o644, 30, 2),
        Entry { kind: Kind::Link("Documents/report.txt"), ..file("home/alice/link", 2001, 2001, 0o777, 0, 3) },
        // Others pass through it (to alice's files in it) in every generation; in the second,
        // without being able to list it.
        dir("home/bob", 2002, 2002, if g == 1 { 0o751 } else { 0o755 }),
        file("home/bob/public-notes.txt", if g == 1 { 2001 } else { 2002 }, 2002, 0o644, 60, 4),
        file("home/bob/for-alice.txt", 2001, 2001, 0o644, 45, 5),
        dir("home/bob/shared", 2002, 5000, if g == 1 { 0o700 } else { 0o750 }),
        file("home/bob/shared/plan.txt", 2002, 5000, 0o640, 80, 6),
        Entry { acl: Some("u:2001:r"), ..file("home/bob/shared/budget.txt", 2002, 2002, 0o600, 90, 7) },
        dir("home/carol", 2003, 2003, 0o700),
        file("home/carol/secret-recipe.txt", 2003, 2003, 0o600, 70, 8),
        dir("home/alice-local", 2101, 2101, 0o700),
        file("home/alice-local/notes.md", 2101, 2101, 0o644, if g == 0 { 10 } else { 14 }, i64::from(g)),
        dir("srv", 0, 0, 0o755),
        file("srv/config.ini", 0, 0, 0o644, if g == 2 { 25 } else { 20 }, 9),
        file("srv/report.txt", 0, 5000, 0o640, 150, 10),
        Entry { acl: Some("u:2002:r"), ..file("srv/notes-for-bob.txt", 0, 0, 0o600, 35, 11) },
        file("srv/empty.txt", 0, 0, 0o644, 0, 12),
    ];
    if g != 1 {
        // Deleted in the second generation, back (the same) in the third.
        fs.push(file("home/alice/notes.md", 2001, 2001, 0o644, 8, 13));
    }
    if g == 0 {
        fs.push(file("home/bob/secret.txt", 2002, 2002, 0o600, 40, 14));
    }
    if g >= 1 {
        fs.push(file("home/alice/secret-plans.txt", 2001, 2001, 0o600, 55, 15));
        fs.push(file("home/carol/secret-recipe-2.txt", 2003, 2003, 0o600, 75, 16));
    }
    if g == 2 {
        fs.retain(|e| e.path != "home/bob/for-alice.txt");
    }
    let laptop = vec![
        dir("etc", 0, 0, 0o755),
        file("etc/hostname", 0, 0, 0o644, 13, 0),
        dir("var", 0, 0, 0o755),
        file("var/root-only", 0, 0, 0o600, 5, 1),
        dir("home", 0, 0, 0o755),
        dir("home/alice", 2001, 2001, 0o700),
        file("home/alice/laptop-notes.md", 2001, 2001, 0o644, if g == 2 { 33 } else { 30 }, i64::from(g)),
    ];
    [("fs", fs), ("lap", laptop)]
}

fn host_name(root: &str) -> &'static str {
    if root == "fs" { "fileserver" } else { "alice-laptop" }
}

/// Write `entries` under `root` (emptied first), with their owners, modes, ACLs and times.
fn materialize(root: &Path, entries: &[Entry]) {
    if root.exists() {
        std::fs::remove_dir_all(root).unwrap();
    }
    std::fs::create_dir(root).unwrap();
    std::os::unix::fs::chown(root, Some(0), Some(0)).unwrap();
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut sorted: Vec<&Entry> = entries.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    for e in &sorted {
        let p = root.join(&e.path);
        match &e.kind {
            Kind::Dir => std::fs::create_dir(&p).unwrap(),
            Kind::File(data) => std::fs::write(&p, data).unwrap(),
            Kind::Link(target) => std::os::unix::fs::symlink(target, &p).unwrap(),
        }
        std::os::unix::fs::lchown(&p, Some(e.uid), Some(e.gid)).unwrap();
        if !matches!(e.kind, Kind::Link(_)) {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(e.mode)).unwrap();
        }
        if let Some(acl) = e.acl {
            assert_success(&Command::new("setfacl").args(["-m", acl]).arg(&p).output().unwrap(), "setfacl");
        }
    }
    // Times last, deepest first: writing into a folder moves its mtime.
    for e in sorted.iter().rev() {
        let t = filetime::FileTime::from_unix_time(e.mtime, 0);
        filetime::set_symlink_file_times(root.join(&e.path), t, t).unwrap();
    }
    let t = filetime::FileTime::from_unix_time(T0, 0);
    filetime::set_symlink_file_times(root, t, t).unwrap();
    filetime::set_symlink_file_times(root.parent().unwrap(), t, t).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Who sees what, decided here: by hand for owners, paths and hosts; by the kernel for
// `readable`.

#[derive(Clone, Debug)]
struct Person {
    login: &'static str,
    realm: &'static str,
    password: &'static str,
    uid: u32,
    gids: Vec<u32>,
    home: &'static str,
    hosts: Vec<&'static str>,
}

fn people() -> Vec<Person> {
    vec![
        Person {
            login: "alice",
            realm: "corp",
            password: "alice-pw",
            uid: 2001,
            gids: vec![2001, 5000],
            home: "alice",
            hosts: vec!["alice-laptop"],
        },
        Person {
            login: "bob",
            realm: "corp",
            password: "bob-pw",
            uid: 2002,
            gids: vec![2002],
            home: "bob",
            hosts: vec![],
        },
        Person {
            login: "alice",
            realm: "local",
            password: "local-alice-pw",
            uid: 2101,
            gids: vec![2101, 5000],
            home: "alice-local",
            hosts: vec![],
        },
    ]
}

/// The rule sets tried, as `authz.rules`.
const RULE_SETS: [&[&str]; 6] =
    [&["owner"], &["owner", "home"], &["readable"], &["home"], &["host"], &["readable", "home"]];

/// The entries of `root` (a host's folder, materialized) that `who` sees by `rules`, as paths
/// relative to `root` ("" for the folder itself).
fn visible(root: &Path, host: &str, entries: &[Entry], who: &Person, rules: &[&str]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    if rules.contains(&"host") && who.hosts.contains(&host) {
        out.insert(String::new());
        out.extend(entries.iter().map(|e| e.path.clone()));
        return out;
    }
    for e in entries {
        if rules.contains(&"owner") && e.uid == who.uid {
            out.insert(e.path.clone());
        }
        let home = format!("home/{}", who.home);
        if rules.contains(&"home")
            && host == "fileserver"
            && (e.path == home || e.path.starts_with(&format!("{home}/")))
        {
            out.insert(e.path.clone());
        }
    }
    if rules.contains(&"readable") {
        out.extend(kernel_readable(root, who));
    }
    out
}

/// Everything under `root` (and `root` itself, as "") that `who` may read, folders also
/// search: `test -r` as the user, which also needs every folder above to be searchable.
fn kernel_readable(root: &Path, who: &Person) -> BTreeSet<String> {
    let groups: Vec<String> = who.gids.iter().map(|g| g.to_string()).collect();
    let script = "for p; do if [ -r \"$p\" ] && { [ ! -d \"$p\" ] || [ -x \"$p\" ]; }; then echo \"$p\"; fi; done";
    let mut all = vec![root.to_path_buf()];
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if std::fs::symlink_metadata(&p).unwrap().is_dir() {
                stack.push(p.clone());
            }
            all.push(p);
        }
    }
    let out = Command::new("setpriv")
        .args([
            &format!("--reuid={}", who.uid),
            &format!("--regid={}", who.gids[0]),
            &format!("--groups={}", groups.join(",")),
        ])
        .args(["sh", "-c", script, "sh"])
        .args(&all)
        .output()
        .expect("setpriv (util-linux) must be installed");
    assert_success(&out, "setpriv sh");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| Path::new(l).strip_prefix(root).unwrap().to_string_lossy().into_owned())
        .collect()
}

/// What a user's own repository holds of a generation: what they see, as it is, and the folders
/// on the way to it, with neutral metadata (root's, searchable by everyone, never changing).
fn own_part(entries: &[Entry], seen: &BTreeSet<String>) -> Vec<Entry> {
    entries
        .iter()
        .filter(|e| seen.iter().any(|s| *s == e.path || s.starts_with(&format!("{}/", e.path))))
        .map(|e| {
            if seen.contains(&e.path) {
                e.clone()
            } else {
                Entry { uid: 0, gid: 0, mode: 0o711, mtime: T0, acl: None, ..e.clone() }
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Portals.

fn realms(slapd: &Slapd, local_users: &Path) -> String {
    let ldap = slapd.realm_toml("corp").replace(
        "[realm.roles]\nadmin",
        "group_base_dn = \"ou=groups,dc=rewind,dc=test\"\ngroup_filter = \"(&(objectClass=posixGroup)(memberUid={login}))\"\n[realm.roles]\nadmin",
    );
    format!("{ldap}\n[[realm]]\nkind = \"file\"\nname = \"local\"\nusers_file = \"{}\"\n", local_users.display())
}

fn start_portal(repo: &Path, realms: &str, rules: &[&str], home_root: &Path) -> Portal {
    let rules: Vec<String> = rules.iter().map(|r| format!("\"{r}\"")).collect();
    let authz = format!(
        "[authz]\nrules = [{}]\n[[authz.home_rewrite]]\nfrom = \"/home\"\nto = \"{}\"\n",
        rules.join(", "),
        home_root.display()
    );
    Portal::start(repo, realms, &authz, "catalog_sync_secs = 3600")
}

fn login_as(addr: &str, p: &Person) -> Client {
    let body = json!({ "username": p.login, "password": p.password, "realm": p.realm }).to_string();
    let r = http(addr, "POST", "/api/login", &[("Content-Type", "application/json".into())], Some(body.as_bytes()));
    assert_eq!(r.status, 200, "login {}@{}: {}", p.login, p.realm, r.text());
    Client {
        addr: addr.to_string(),
        cookie: session_cookie(&r).expect("cookie"),
        csrf: r.json()["csrf_token"].as_str().unwrap().to_string(),
    }
}

/// Names snapshots alike in both portals: every representation (id, prefix, name, time) of a
/// host's i-th snapshot becomes `host#i`; cursors become `<cursor>`.
struct Names(BTreeMap<String, String>);

impl Names {
    fn of(admin: &Client) -> Names {
        let snaps = admin.get("/api/snapshots").json()["items"].as_array().unwrap().clone();
        let mut per_host: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for s in snaps.into_iter().rev() {
            per_host.entry(s["host"].as_str().unwrap().to_string()).or_default().push(s);
        }
        let mut m = BTreeMap::new();
        for (host, list) in per_host {
            for (i, s) in list.iter().enumerate() {
                let label = format!("{host}#{i}");
                for k in ["id", "short_id", "name", "time"] {
                    m.insert(s[k].as_str().unwrap().to_string(), label.clone());
                }
            }
        }
        Names(m)
    }

    fn label(&self, s: &str) -> Option<String> {
        if let Some(l) = self.0.get(s) {
            return Some(l.clone());
        }
        // A snapshot id prefix.
        if s.len() >= 8 && s.len() < 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return self.0.iter().find(|(k, _)| k.len() == 64 && k.starts_with(s)).map(|(_, v)| v.clone());
        }
        None
    }

    fn apply(&self, v: &Value) -> Value {
        match v {
            Value::String(s) => Value::String(self.label(s).unwrap_or_else(|| s.clone())),
            Value::Array(a) => Value::Array(a.iter().map(|x| self.apply(x)).collect()),
            Value::Object(o) => Value::Object(
                o.iter()
                    .map(|(k, x)| {
                        let x = match (k.as_str(), x) {
                            ("next", Value::String(_)) => json!("<cursor>"),
                            ("query", Value::String(q)) => json!(without_cursor(q)),
                            ("time", Value::String(t)) if self.label(t).is_none() => json!("<time>"),
                            ("csrf_token" | "expires" | "session_ends", _) => json!("<session>"),
                            _ => self.apply(x),
                        };
                        (k.clone(), x)
                    })
                    .collect(),
            ),
            other => other.clone(),
        }
    }

    /// A request target with snapshot labels put back as this portal's ids.
    fn target(&self, t: &str) -> String {
        let mut out = t.to_string();
        for (k, v) in &self.0 {
            if k.len() == 64 {
                out = out.replace(&format!("snapshot={v}&"), &format!("snapshot={k}&"));
            }
        }
        out
    }
}

fn without_cursor(q: &str) -> String {
    q.split('&').map(|kv| if kv.starts_with("cursor=") { "cursor=<c>" } else { kv }).collect::<Vec<_>>().join("&")
}

/// One side of the comparison: a portal, a user's session in it, and its snapshot names.
struct Side {
    client: Client,
    names: Names,
}

impl Side {
    fn get(&self, label_target: &str) -> Value {
        let target = self.names.target(label_target);
        let r = self.client.get(&target);
        // Two failures are no equal answer: a server error is a failure of the test.
        assert!(r.status < 500, "{target}: {} {}", r.status, r.text());
        let json = serde_json::from_slice::<Value>(&r.body).ok();
        let body = match &json {
            Some(j) => self.names.apply(j),
            None => json!({ "bytes": r.body.len(), "blake3": blake3::hash(&r.body).to_hex().to_string() }),
        };
        // A JSON body's length follows the snapshot times in it, which differ by nature.
        let headers: BTreeMap<String, String> =
            ["content-type", "content-disposition", "etag", "content-length", "content-range"]
                .iter()
                .filter(|h| json.is_none() || **h != "content-length")
                .filter_map(|h| r.header(h).map(|v| (h.to_string(), v.to_string())))
                .collect();
        json!({ "status": r.status, "headers": headers, "body": body })
    }

    /// Every page of a catalog listing, following `next` to the end.
    fn pages(&self, base: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let t = match &cursor {
                Some(c) => format!("{base}&cursor={c}"),
                None => base.to_string(),
            };
            let r = self.client.get(&t);
            assert!(r.status < 500, "{t}: {} {}", r.status, r.text());
            assert!(out.len() < 200, "{base}: too many pages");
            let raw: Value = serde_json::from_slice(&r.body).unwrap_or(json!({ "status": r.status }));
            out.push(json!({ "status": r.status, "page": self.names.apply(&raw) }));
            match raw["next"].as_str() {
                Some(c) if r.status == 200 => cursor = Some(c.to_string()),
                _ => return out,
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The test.

struct Case {
    rules: &'static [&'static str],
    who: Person,
    repo: TempRepo,
}

#[test]
fn every_answer_equals_the_answer_on_the_users_own_repository() {
    assert!(is_root(), "the oracle writes files owned by other users and asks the kernel as them: run as root");
    // At the root of the file system, so that no folder above the backed-up ones changes while
    // the test runs (/tmp's time would, and `readable` shows it).
    let top = tempfile::Builder::new().prefix("rewind-oracle-").tempdir_in("/").expect("a folder in /");
    std::fs::set_permissions(top.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let roots: BTreeMap<&str, PathBuf> = [("fs", top.path().join("fs")), ("lap", top.path().join("lap"))].into();

    let mut users = corpus_users();
    users.iter_mut().find(|u| u.login == "alice").unwrap().posix_groups = vec![("project".into(), 5000)];
    users.iter_mut().find(|u| u.login == "alice").unwrap().hosts = vec!["alice-laptop".into()];
    let slapd = Slapd::start(&users);
    let conf = tempfile::tempdir().unwrap();
    let local = conf.path().join("local-users.toml");
    std::fs::write(
        &local,
        format!(
            "[users.alice]\nhash = \"{}\"\nuid = 2101\ngids = [2101, 5000]\nhome = \"/home/alice-local\"\n",
            passwd_hash("local-alice-pw")
        ),
    )
    .unwrap();
    let realms = realms(&slapd, &local);

    let real = TempRepo::new();
    let mut cases: Vec<Case> = Vec::new();
    for rules in RULE_SETS {
        for who in people() {
            // Named as the real one names content (its id and chunker keys), so that content ids
            // compare, as they would between a repository and its `copy --to` target.
            cases.push(Case { rules, who, repo: TempRepo::with_content_identity_of(&real) });
        }
    }
    let mut shown_per_case = vec![0usize; cases.len()];
    for g in 0..3 {
        for (root_name, entries) in generation(g) {
            let root = &roots[root_name];
            let host = host_name(root_name);
            materialize(root, &entries);
            real.backup(host, &[root.as_path()]);
            let parts: Vec<Vec<Entry>> = cases
                .iter()
                .map(|c| {
                    let seen = visible(root, host, &entries, &c.who, c.rules);
                    own_part(&entries, &seen)
                })
                .collect();
            for ((c, part), shown) in cases.iter().zip(parts).zip(shown_per_case.iter_mut()) {
                *shown += part.len();
                materialize(root, &part);
                c.repo.backup(host, &[root.as_path()]);
            }
        }
    }
    assert!(shown_per_case.contains(&0) && shown_per_case.iter().filter(|&&n| n > 20).count() > 5);

    let home_root = roots["fs"].join("home");
    let hidden_guesses: Vec<String> = {
        let mut all = BTreeSet::new();
        for g in 0..3 {
            for (root_name, entries) in generation(g) {
                for e in entries {
                    all.insert(roots[root_name].join(&e.path).to_string_lossy().into_owned());
                }
            }
        }
        all.insert(roots["fs"].join("home/nobody.txt").to_string_lossy().into_owned());
        all.into_iter().collect()
    };

    let admin = people()[0].clone();
    let admin = Person { login: "ada", password: "ada-pw", ..admin };
    let hank = Person { login: "hank", password: "hank-pw", ..people()[0].clone() };
    let mut compared = 0usize;
    for rules in RULE_SETS {
        let real_portal = start_portal(&real.repo, &realms, rules, &home_root);
        let real_names = Names::of(&login_as(&real_portal.addr, &admin));
        for c in cases.iter().filter(|c| c.rules == rules) {
            let label = format!("{rules:?} {}@{}", c.who.login, c.who.realm);
            let own_portal = start_portal(&c.repo.repo, &realms, rules, &home_root);
            let own_names = Names::of(&login_as(&own_portal.addr, &admin));
            let a = Side { client: login_as(&real_portal.addr, &c.who), names: Names(real_names.0.clone()) };
            let b = Side { client: login_as(&own_portal.addr, &c.who), names: own_names };
            compared += compare_catalog(&a, &b, &label, &roots);
            compared += compare_tree(&a, &b, &label, &hidden_guesses);
            if c.who.realm == "corp" && c.who.login == "alice" && matches!(rules, ["owner", "home"] | ["readable"]) {
                compared += compare_helpdesk(&real_portal, &own_portal, &hank, &c.who, &a, &b, &label, &roots);
            }
        }
    }
    eprintln!("portal oracle: {compared} answers compared");
}

/// The paging oracle: search and deleted, brace globs, every order, limits 1 to 3, each filter.
fn compare_catalog(a: &Side, b: &Side, label: &str, roots: &BTreeMap<&str, PathBuf>) -> usize {
    let mut n = 0;
    let home = roots["fs"].join("home").to_string_lossy().into_owned();
    let filters: Vec<String> = vec![
        String::new(),
        "&kind=file".into(),
        "&kind=dir".into(),
        "&host=fileserver".into(),
        format!("&path={}", enc(&home)),
        "&min_size=60".into(),
        "&max_size=45".into(),
        format!("&modified_after={}", jiff::Timestamp::from_second(T0 + 5 * DAY).unwrap()),
        format!("&modified_before={}", jiff::Timestamp::from_second(T0 + 4 * DAY).unwrap()),
    ];
    let patterns = ["", "{notes*,secret*,report*}", "*.txt", "report", "{from-bob*,for-alice*,plan*,budget*}"];
    for endpoint in ["search", "deleted"] {
        for q in patterns {
            for order in ["recent", "oldest", "path"] {
                for (fi, f) in filters.iter().enumerate() {
                    // Every filter with the first patterns; the others without filters.
                    if fi > 0 && q.len() > 1 && q != "{notes*,secret*,report*}" {
                        continue;
                    }
                    for limit in 1..=3 {
                        if fi > 0 && limit == 2 {
                            continue;
                        }
                        let base = format!("/api/{endpoint}?q={}&order={order}&limit={limit}{f}", enc(q));
                        let (x, y) = (a.pages(&base), b.pages(&base));
                        assert_eq!(x, y, "{label}: {base}");
                        n += x.len();
                    }
                }
            }
        }
    }
    n
}

/// The sub-repository equivalence over browse, download, archive and history, and guessed
/// paths of every kind.
fn compare_tree(a: &Side, b: &Side, label: &str, guesses: &[String]) -> usize {
    let mut n = 0;
    for t in ["/api/hosts", "/api/snapshots", "/api/snapshots?host=fileserver", "/api/me"] {
        assert_eq!(a.get(t), b.get(t), "{label}: {t}");
        n += 1;
    }
    let snaps = a.get("/api/snapshots")["body"]["items"].as_array().unwrap().clone();
    let mut files = BTreeSet::new();
    for s in &snaps {
        let snap = s["id"].as_str().unwrap();
        let mut todo = vec!["/".to_string()];
        while let Some(d) = todo.pop() {
            let t = format!("/api/browse?snapshot={snap}&path={}&", enc(&d));
            let (x, y) = (a.get(&t), b.get(&t));
            assert_eq!(x, y, "{label}: {t}");
            n += 1;
            for e in x["body"]["entries"].as_array().cloned().unwrap_or_default() {
                let p = e["path"].as_str().unwrap().to_string();
                match e["kind"].as_str().unwrap() {
                    "dir" => {
                        todo.push(p.clone());
                        let t = format!("/api/archive?snapshot={snap}&path={}&", enc(&p));
                        assert_eq!(a.get(&t), b.get(&t), "{label}: {t}");
                        n += 1;
                    }
                    "file" => {
                        let t = format!("/api/download?snapshot={snap}&path={}&", enc(&p));
                        assert_eq!(a.get(&t), b.get(&t), "{label}: {t}");
                        files.insert(p);
                        n += 1;
                    }
                    _ => {}
                }
            }
        }
        // Every path of the world, seen or not, existing here or not: the same answers.
        for p in guesses {
            for t in [
                format!("/api/download?snapshot={snap}&path={}&", enc(p)),
                format!("/api/browse?snapshot={snap}&path={}&", enc(p)),
            ] {
                assert_eq!(a.get(&t), b.get(&t), "{label}: {t}");
                n += 1;
            }
        }
    }
    for p in files.iter().chain(guesses) {
        for host in ["", "&host=fileserver"] {
            let t = format!("/api/history?path={}{host}", enc(p));
            assert_eq!(a.get(&t), b.get(&t), "{label}: {t}");
            n += 1;
        }
    }
    n
}

/// A helpdesk session for the user, the same in both portals, and what the user then reads in
/// their access history.
#[allow(clippy::too_many_arguments)]
fn compare_helpdesk(
    real: &Portal,
    own: &Portal,
    hank: &Person,
    who: &Person,
    a: &Side,
    b: &Side,
    label: &str,
    roots: &BTreeMap<&str, PathBuf>,
) -> usize {
    let mut n = 0;
    let mut sides = Vec::new();
    for (portal, side) in [(real, a), (own, b)] {
        let mut h = login_as(&portal.addr, hank);
        let r = h.post("/api/act", &json!({ "user": who.login, "realm": who.realm, "reason": "TICKET-13 oracle" }));
        assert_eq!(r.status, 200, "{label}: {}", r.text());
        sides.push(Side { client: h, names: Names(side.names.0.clone()) });
    }
    let fs = a.get("/api/snapshots?host=fileserver")["body"]["items"][0]["id"].as_str().unwrap().to_string();
    let report = roots["fs"].join("home/alice/Documents/report.txt");
    let secret = roots["fs"].join("home/bob/secret.txt");
    for t in [
        "/api/search?q=report&limit=2".to_string(),
        format!("/api/download?snapshot={fs}&path={}&", enc(&report.to_string_lossy())),
        format!("/api/archive?snapshot={fs}&path={}&", enc(&roots["fs"].join("home/alice").to_string_lossy())),
        format!("/api/download?snapshot={fs}&path={}&", enc(&secret.to_string_lossy())),
        "/api/deleted?limit=1".to_string(),
    ] {
        assert_eq!(sides[0].get(&t), sides[1].get(&t), "{label}: helpdesk {t}");
        n += 1;
    }
    // Follow a cursor too: the audited query holds it.
    let first = sides[0].pages("/api/search?q=*.txt&limit=1");
    assert_eq!(first, sides[1].pages("/api/search?q=*.txt&limit=1"), "{label}: helpdesk pages");
    for mut s in sides {
        assert_eq!(s.client.post("/api/act/stop", &json!({})).status, 200);
    }
    let (x, y) = (a.get("/api/me/access"), b.get("/api/me/access"));
    assert!(x["body"]["items"].as_array().unwrap().len() >= 6, "{label}: {x}");
    assert_eq!(x, y, "{label}: access history");
    n + 1
}

/// The world's own checks: it exercises what it is meant to.
#[test]
fn the_oracle_world_is_what_it_claims() {
    let g1 = generation(1);
    let fs = &g1[0].1;
    assert!(fs.iter().any(|e| e.path == "home/bob/shared" && e.mode == 0o700), "a folder closed to its group");
    assert!(
        fs.iter().any(|e| e.path == "home/bob" && e.mode == 0o751)
            && generation(0)[0].1.iter().any(|e| e.path == "home/bob" && e.mode == 0o755),
        "a folder others pass through changes its mode"
    );
    assert!(fs.iter().any(|e| e.path.starts_with("home/bob/") && e.uid == 2001), "and holds files of alice's");
    assert!(fs.iter().any(|e| e.path == "home/bob/public-notes.txt" && e.uid == 2001), "a file given away");
    assert!(!fs.iter().any(|e| e.path == "home/alice/notes.md"), "a file that goes");
    assert!(generation(2)[0].1.iter().any(|e| e.path == "home/alice/notes.md"), "and comes back");
    let names: BTreeSet<&str> =
        fs.iter().filter_map(|e| Path::new(&e.path).file_name()).map(|n| n.to_str().unwrap()).collect();
    assert!(names.contains("notes.md") && names.contains("secret-plans.txt"));
}
