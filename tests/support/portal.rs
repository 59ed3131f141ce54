//! The portal as the end-to-end tests drive it: `rewind serve` in a process of its own, and a
//! minimal HTTP/1.1 client that sends exactly what a test wrote (a browser would not let a test
//! forge a Host, an Origin or a cookie).

#![allow(dead_code)]

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{assert_success, rewind_cmd, spawn_serve_env};

// ---------------------------------------------------------------------------------------------
// A minimal HTTP/1.1 client: exactly what is sent is what the test wrote.

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One request on a connection of its own: `Host: addr` unless `headers` name another.
pub fn http(addr: &str, method: &str, target: &str, headers: &[(&str, String)], body: Option<&[u8]>) -> Resp {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut req = format!("{method} {target} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    if let Some(b) = body {
        bytes.extend_from_slice(b);
    }
    s.write_all(&bytes).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap_or_else(|e| panic!("{method} {target}: {e}"));
    parse_response(&raw)
}

pub fn parse_response(raw: &[u8]) -> Resp {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("end of headers");
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_string(), v.trim().to_string())).collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let nl = rest.windows(2).position(|w| w == b"\r\n").expect("chunk size line");
            let size =
                usize::from_str_radix(std::str::from_utf8(&rest[..nl]).unwrap().split(';').next().unwrap().trim(), 16)
                    .unwrap();
            rest = &rest[nl + 2..];
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[..size]);
            rest = &rest[size + 2..];
        }
        body = out;
    }
    Resp { status, headers, body }
}

/// Percent-encode a query value.
pub fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A request's status and the milliseconds it took (for the timing side-channel tests).
pub fn timed(c: &Client, target: &str) -> (u16, f64) {
    let t = std::time::Instant::now();
    let r = c.get(target);
    (r.status, t.elapsed().as_secs_f64() * 1000.0)
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// A logged-in client.
#[derive(Clone)]
pub struct Client {
    pub addr: String,
    pub cookie: String,
    pub csrf: String,
}

impl Client {
    pub fn get(&self, target: &str) -> Resp {
        http(&self.addr, "GET", target, &[("Cookie", self.cookie.clone())], None)
    }

    pub fn get_with(&self, target: &str, extra: &[(&str, String)]) -> Resp {
        let mut h = vec![("Cookie", self.cookie.clone())];
        h.extend_from_slice(extra);
        http(&self.addr, "GET", target, &h, None)
    }

    pub fn post(&mut self, target: &str, body: &Value) -> Resp {
        let h = [
            ("Cookie", self.cookie.clone()),
            ("X-CSRF-Token", self.csrf.clone()),
            ("Content-Type", "application/json".to_string()),
        ];
        let r = http(&self.addr, "POST", target, &h, Some(body.to_string().as_bytes()));
        if let Some(c) = session_cookie(&r) {
            self.cookie = c;
            if r.status == 200 {
                self.csrf = r.json()["csrf_token"].as_str().unwrap_or(&self.csrf).to_string();
            }
        }
        r
    }
}

pub fn session_cookie(r: &Resp) -> Option<String> {
    r.headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
        .map(|(_, v)| v.split(';').next().unwrap().to_string())
        .find(|c| c.starts_with("rewind_session="))
}

pub fn login_raw(addr: &str, user: &str, password: &str) -> Resp {
    let body = json!({ "username": user, "password": password }).to_string();
    http(addr, "POST", "/api/login", &[("Content-Type", "application/json".into())], Some(body.as_bytes()))
}

pub fn login(addr: &str, user: &str, password: &str) -> Client {
    let r = login_raw(addr, user, password);
    assert_eq!(r.status, 200, "login {user}: {}", r.text());
    let cookie = session_cookie(&r).expect("session cookie");
    let sc = r.header("set-cookie").unwrap();
    assert!(sc.contains("HttpOnly") && sc.contains("SameSite=Strict"), "{sc}");
    Client { addr: addr.to_string(), cookie, csrf: r.json()["csrf_token"].as_str().unwrap().to_string() }
}

// ---------------------------------------------------------------------------------------------
// The portal process.

pub struct Portal {
    pub child: Child,
    pub addr: String,
    pub dir: tempfile::TempDir,
}

impl Portal {
    /// Start `rewind serve` with `realms` (TOML) and `extra` top-level/section TOML.
    pub fn start(repo: &Path, realms: &str, authz: &str, extra: &str) -> Portal {
        Portal::start_env(repo, realms, authz, extra, &[])
    }

    /// [`Portal::start`] with more environment variables (`REWIND_CACHE_DIR`...).
    pub fn start_env(repo: &Path, realms: &str, authz: &str, extra: &str, env: &[(&str, &OsStr)]) -> Portal {
        let dir = tempfile::Builder::new().prefix("rewind-portal-").tempdir().unwrap();
        // `extra` holds top-level keys or whole sections; a [session] in it replaces the default.
        let session = if extra.contains("[session]") { "" } else { "[session]\nkey_file = \"session.key\"\n" };
        let cfg = format!(
            "listen = \"127.0.0.1:0\"\nrepository = \"{repo}\"\naudit_log = \"audit.jsonl\"\n{extra}\n{session}{authz}\n{realms}\n",
            repo = repo.display()
        );
        std::fs::write(dir.path().join("portal.toml"), cfg).unwrap();
        // A repository in a Garage bucket: the test cluster's credentials, and a cache of the
        // portal's own unless the caller shares one. A local repository (`<test dir>/repo`, a
        // `TempRepo`'s): the test's cache folder, whose catalog its backups update, as a portal
        // on the host of the backups shares theirs.
        let remote = repo.to_str().is_some_and(|r| r.starts_with("s3:"));
        let cache = if remote {
            dir.path().join("cache")
        } else {
            repo.parent().expect("a repository folder has a parent").join("cache")
        };
        let mut env = env.to_vec();
        if remote {
            crate::support::garage::credentials_in_env();
        }
        if !env.iter().any(|(k, _)| *k == "REWIND_CACHE_DIR") {
            env.push(("REWIND_CACHE_DIR", cache.as_os_str()));
        }
        let (child, url) = spawn_serve_env(&dir.path().join("portal.toml"), &env);
        let addr = url.rsplit("://").next().expect("a URL").to_string();
        // Ready when /healthz answers plainly "ok" (not while a new catalog is being built: the
        // tests search at once); over TLS, when the port accepts.
        let tls = url.starts_with("https://");
        let ready = || {
            TcpStream::connect(&addr).is_ok()
                && (tls || {
                    let r = http(&addr, "GET", "/healthz", &[], None);
                    r.status == 200 && r.body == b"ok\n"
                })
        };
        let started = std::time::Instant::now();
        while !ready() && started.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(25));
        }
        Portal { child, addr, dir }
    }

    pub fn audit(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.path().join("audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("audit lines are JSON"))
            .collect()
    }

    pub fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: kill on our own child, not yet reaped (so its pid is not reused).
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait().unwrap()
    }
}

impl Drop for Portal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn b64url_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s).expect("base64url")
}

pub fn b64url_encode(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// An argon2id hash of `password` from `rewind passwd`, for a file realm's users.
pub fn passwd_hash(password: &str) -> String {
    let mut c = rewind_cmd().arg("passwd").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    c.stdin.take().unwrap().write_all(format!("{password}\n").as_bytes()).unwrap();
    let out = c.wait_with_output().unwrap();
    assert_success(&out, "rewind passwd");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}
