//! Portal replicas: two `rewind serve` processes on one repository in a Garage bucket, as behind a
//! load balancer (the test picks the replica of each request). A session started on one works on
//! the other (one session key file); a logout on one is refused by the other while the token
//! has not expired yet (revocations live in the repository); a new backup shows on both, in
//! their listings and in their own catalogs, which they keep up to date on their own in one
//! cache folder without sharing a file.

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::time::Instant;

use serde_json::json;

use crate::support::portal::{Client, Portal, b64url_decode, enc, login, passwd_hash};
use crate::support::wait::wait_until;
use crate::support::{TEST_PASSWORD, TempRepo};

/// The token's lifetime in the test: logouts must reach the other replica well within it.
const TTL_SECS: i64 = 20;

fn token_exp(cookie: &str) -> i64 {
    let token = cookie.split_once('=').unwrap().1;
    let claims: serde_json::Value = serde_json::from_slice(&b64url_decode(token.split('.').nth(1).unwrap())).unwrap();
    claims["exp"].as_i64().unwrap()
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

fn on(portal: &Portal, c: &Client) -> Client {
    Client { addr: portal.addr.clone(), ..c.clone() }
}

fn search(c: &Client, q: &str) -> Vec<String> {
    let r = c.get(&format!("/api/search?q={}", enc(q)));
    if r.status != 200 {
        return Vec::new();
    }
    r.json()["items"].as_array().unwrap().iter().map(|v| v["name"].as_str().unwrap_or_default().to_string()).collect()
}

#[test]
fn two_portals_on_one_s3_repository_share_sessions_logouts_and_new_backups() {
    let t = TempRepo::on_s3("replicas");
    let src = t.path("src");
    std::fs::create_dir_all(src.join("docs")).unwrap();
    std::fs::write(src.join("docs/first.txt"), "first\n").unwrap();
    t.backup("site", &[&src]);

    // What a deployment gives every replica alike: the repository, its password, the realm's
    // users and one session key file (mode 0600). Each replica has its own config and audit log
    // (Portal::start's folder); both share one cache folder, as two replicas on one host would.
    let users = t.path("users.toml");
    std::fs::write(&users, format!("[users.root]\nhash = \"{}\"\nuid = 0\n", passwd_hash("root-pw"))).unwrap();
    let realm = format!("[[realm]]\nkind = \"file\"\nname = \"local\"\nusers_file = \"{}\"\n", users.display());
    let password = t.path("password");
    std::fs::write(&password, TEST_PASSWORD).unwrap();
    let key = t.path("session.key");
    std::fs::write(&key, (0..64u8).map(|i| i.wrapping_mul(37) ^ 0x5a).collect::<Vec<u8>>()).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let extra = format!(
        "repository_password_file = \"{}\"\ncatalog_sync_secs = 1\n[session]\nkey_file = \"{}\"\nttl_secs = {TTL_SECS}\n",
        password.display(),
        key.display()
    );
    let cache = t.path("cache");
    let env: [(&str, &OsStr); 1] = [("REWIND_CACHE_DIR", cache.as_os_str())];
    let authz = "[authz]\nrules = [\"owner\"]\n";
    let a = Portal::start_env(&t.repo, &realm, authz, &extra, &env);
    let b = Portal::start_env(&t.repo, &realm, authz, &extra, &env);

    // A session started on A works on B.
    let mut on_a = login(&a.addr, "root", "root-pw");
    let on_b = on(&b, &on_a);
    let r = on_b.get("/api/me");
    assert_eq!(r.status, 200, "B refuses A's session: {}", r.text());
    assert_eq!(on_b.get("/api/snapshots").json()["items"].as_array().unwrap().len(), 1);

    // Logged out on A: refused by A at once, and by B within a few seconds, long before the
    // token expires (so not because it expired).
    let exp = token_exp(&on_b.cookie);
    let logged_out = Instant::now();
    assert_eq!(on_a.post("/api/logout", &json!({})).status, 200);
    assert_eq!(on(&a, &on_b).get("/api/me").status, 401, "A still takes the session it ended");
    wait_until("B to refuse the session ended on A", || on_b.get("/api/me").status == 401);
    assert!(
        unix_now() < exp,
        "B took the ended session until it expired ({:?} after the logout, ttl {TTL_SECS}s)",
        logged_out.elapsed()
    );
    eprintln!("B refused the ended session {:?} after the logout on A", logged_out.elapsed());

    // A new session on B works on A; a new backup shows on both, in the snapshot lists and in
    // each replica's own catalog.
    let fresh_b = login(&b.addr, "root", "root-pw");
    let fresh_a = on(&a, &fresh_b);
    assert_eq!(fresh_a.get("/api/me").status, 200);
    std::fs::write(src.join("docs/second-backup-only.txt"), "second\n").unwrap();
    t.backup("site", &[&src]);
    for c in [&fresh_a, &fresh_b] {
        wait_until(&format!("the new backup on {}", c.addr), || {
            c.get("/api/snapshots").json()["items"].as_array().unwrap().len() == 2
        });
        wait_until(&format!("the new file in the catalog of {}", c.addr), || {
            search(c, "second-backup-only").contains(&"second-backup-only.txt".to_string())
        });
    }

    // Two catalogs in the one cache folder: one per replica, none shared.
    let catalogs: Vec<_> = walk(&cache).into_iter().filter(|p| p.extension() == Some(OsStr::new("sqlite"))).collect();
    assert_eq!(catalogs.len(), 2, "{catalogs:?}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
