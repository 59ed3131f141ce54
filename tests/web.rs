//! The restore portal's pages in a real headless Chromium (driven over W3C WebDriver by
//! chromedriver) against a real `rewind serve`, a real slapd and a backed-up corpus history.
//! Screenshots of every page land in `target/web-screenshots/`.
//!
//! Needs `/usr/bin/chromium` and `/usr/bin/chromedriver` (`apt-get install -y chromium
//! chromium-driver`); fails loudly without them.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::slapd::{Slapd, corpus_users};
use crate::support::{TempRepo, assert_success, corpus_make, corpus_step, is_root, rewind_cmd, spawn_serve};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

// ---------------------------------------------------------------------------------------------
// HTTP/1.1 to chromedriver (and to the portal), Connection: close.

fn http(addr: &str, method: &str, path: &str, body: Option<&Value>) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    // chromedriver keeps the connection open: read the headers, then Content-Length bytes.
    let mut raw = Vec::new();
    let mut buf = [0u8; 65536];
    let end = loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        let n = read_some(&mut s, &mut buf);
        assert!(n > 0, "{method} {path}: connection closed before the headers");
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..end]).to_lowercase();
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let length =
        head.lines().find_map(|l| l.strip_prefix("content-length:")).map(|v| v.trim().parse::<usize>().unwrap());
    let mut rest = raw[end + 4..].to_vec();
    match length {
        Some(len) => {
            while rest.len() < len {
                let n = read_some(&mut s, &mut buf);
                assert!(n > 0, "{method} {path}: connection closed early");
                rest.extend_from_slice(&buf[..n]);
            }
        }
        None => {
            s.read_to_end(&mut rest).unwrap();
        }
    }
    if head.contains("transfer-encoding: chunked") {
        let mut out = Vec::new();
        let mut r = &rest[..];
        loop {
            let nl = r.windows(2).position(|w| w == b"\r\n").unwrap();
            let n = usize::from_str_radix(std::str::from_utf8(&r[..nl]).unwrap().trim(), 16).unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&r[nl + 2..nl + 2 + n]);
            r = &r[nl + 4 + n..];
        }
        rest = out;
    }
    (status, rest)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn b64decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).expect("base64")
}

// ---------------------------------------------------------------------------------------------
// A WebDriver session in headless Chromium.

/// chromedriver, stopped on drop (also when the session cannot start).
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Browser {
    _driver: Driver,
    addr: String,
    session: String,
    _profile: tempfile::TempDir,
    downloads: PathBuf,
    shots: PathBuf,
}

impl Browser {
    fn start(downloads: &Path) -> Browser {
        for tool in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(tool).exists(),
                "{tool} is missing: the browser tests need `apt-get install -y chromium chromium-driver`"
            );
        }
        let port = free_port();
        let driver = Driver(
            Command::new(CHROMEDRIVER)
                .args([format!("--port={port}"), "--allowed-ips=127.0.0.1".into()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start chromedriver"),
        );
        let addr = format!("127.0.0.1:{port}");
        let t = Instant::now();
        while TcpStream::connect(&addr).is_err() {
            assert!(t.elapsed() < Duration::from_secs(20), "chromedriver did not start on {addr}");
            std::thread::sleep(Duration::from_millis(50));
        }
        let profile = tempfile::Builder::new().prefix("rewind-chromium-").tempdir().unwrap();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                         "--no-first-run", "--disable-background-networking", "--disable-component-update",
                         "--disable-sync", format!("--user-data-dir={}", profile.path().display()),
                         "--window-size=1280,900", "--lang=en-US"],
                "prefs": {"download.default_directory": downloads.to_string_lossy(),
                          "download.prompt_for_download": false,
                          "safebrowsing.enabled": false}
            }
        }}});
        let (status, body) = http(&addr, "POST", "/session", Some(&caps));
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(status, 200, "new WebDriver session: {v}");
        let session = v["value"]["sessionId"].as_str().unwrap().to_string();
        let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/web-screenshots");
        std::fs::create_dir_all(&shots).unwrap();
        let b =
            Browser { _driver: driver, addr, session, _profile: profile, downloads: downloads.to_path_buf(), shots };
        // Headless Chromium saves downloads only when told so over CDP.
        b.cmd(
            "POST",
            "/chromium/send_command",
            json!({"cmd": "Page.setDownloadBehavior", "params": {"behavior": "allow", "downloadPath": downloads.to_string_lossy()}}),
        );
        b
    }

    fn cmd(&self, method: &str, path: &str, body: Value) -> Value {
        let body = (method != "GET").then_some(&body);
        let (status, bytes) = http(&self.addr, method, &format!("/session/{}{path}", self.session), body);
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        assert_eq!(status, 200, "WebDriver {method} {path}: {v}");
        v["value"].clone()
    }

    fn try_find(&self, css: &str) -> Option<String> {
        let (status, bytes) = http(
            &self.addr,
            "POST",
            &format!("/session/{}/element", self.session),
            Some(&json!({"using": "css selector", "value": css})),
        );
        let v: Value = serde_json::from_slice(&bytes).ok()?;
        (status == 200).then(|| v["value"][ELEMENT].as_str().unwrap_or_else(|| panic!("find {css}: {v}")).to_string())
    }

    /// Wait for an element (and for it to be displayed).
    fn find(&self, css: &str) -> String {
        self.wait(&format!("element {css}"), || {
            let e = self.try_find(css)?;
            // The page may redraw between the two calls (a stale element): look again.
            let (status, body) =
                http(&self.addr, "GET", &format!("/session/{}/element/{e}/displayed", self.session), None);
            let v: Value = serde_json::from_slice(&body).ok()?;
            (status == 200 && v["value"] == json!(true)).then_some(e)
        })
    }

    fn wait<T>(&self, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
        let t = Instant::now();
        loop {
            if let Some(v) = f() {
                return v;
            }
            if t.elapsed() > Duration::from_secs(20) {
                self.screenshot("timeout");
                panic!("timed out waiting for {what}; page text: {}", self.body_text());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn go(&self, url: &str) {
        self.cmd("POST", "/url", json!({ "url": url }));
    }

    /// Do something to an element, looking it up again if the page redrew it meanwhile.
    fn on_element(&self, css: &str, steps: &[(&str, Value)]) {
        self.wait(&format!("{css} to accept {steps:?}"), || {
            let e = self.find(css);
            for (action, body) in steps {
                let path = format!("/session/{}/element/{e}/{action}", self.session);
                if http(&self.addr, "POST", &path, Some(body)).0 != 200 {
                    return None;
                }
            }
            Some(())
        })
    }

    fn click(&self, css: &str) {
        self.on_element(css, &[("click", json!({}))]);
    }

    fn type_into(&self, css: &str, text: &str) {
        self.on_element(css, &[("clear", json!({})), ("value", json!({ "text": text }))]);
    }

    fn js(&self, script: &str, args: Value) -> Value {
        self.cmd("POST", "/execute/sync", json!({ "script": script, "args": args }))
    }

    fn body_text(&self) -> String {
        self.js("return document.body.innerText", json!([])).as_str().unwrap_or_default().to_string()
    }

    fn wait_text(&self, needle: &str) {
        self.wait(&format!("text {needle:?}"), || self.body_text().contains(needle).then_some(()));
    }

    /// Every form field and button has a name a screen reader can say.
    fn assert_labelled(&self, page: &str) {
        let unnamed = self.js(
            "return [...document.querySelectorAll('input, select, button, a[href]')]
               .filter(e => e.offsetParent !== null)
               .filter(e => !((e.labels && e.labels.length) || e.getAttribute('aria-label') || e.textContent.trim()
                              || e.querySelector('img[alt]:not([alt=\"\"])')))
               .map(e => e.outerHTML.slice(0, 120))",
            json!([]),
        );
        assert_eq!(unnamed, json!([]), "{page}: fields without a label");
    }

    /// Every link target on the page.
    fn hrefs(&self) -> Vec<String> {
        let v = self.js("return [...document.querySelectorAll('a[href]')].map(a => a.href)", json!([]));
        v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect()
    }

    fn screenshot(&self, name: &str) {
        let v = self.cmd("GET", "/screenshot", Value::Null);
        std::fs::write(self.shots.join(format!("{name}.png")), b64decode(v.as_str().unwrap())).unwrap();
    }

    fn window(&self, w: u32, h: u32) {
        self.cmd("POST", "/window/rect", json!({ "width": w, "height": h }));
    }

    /// Wait for a finished download called `name` and return its bytes.
    fn downloaded(&self, name: &str) -> Vec<u8> {
        let p = self.downloads.join(name);
        self.wait(&format!("download {name}"), || {
            let partial = std::fs::read_dir(&self.downloads)
                .unwrap()
                .flatten()
                .any(|e| e.file_name().to_string_lossy().ends_with(".crdownload"));
            (p.exists() && !partial).then(|| std::fs::read(&p).unwrap())
        })
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Closes Chromium; chromedriver goes with `Driver`.
        let _ = http(&self.addr, "DELETE", &format!("/session/{}", self.session), None);
    }
}

// ---------------------------------------------------------------------------------------------
// The portal process.

struct Portal {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Portal {
    fn start(repo: &Path, realm: &str, home_root: &Path) -> Portal {
        let dir = tempfile::Builder::new().prefix("rewind-web-").tempdir().unwrap();
        let cfg = format!(
            "listen = \"127.0.0.1:0\"\nrepository = \"{}\"\naudit_log = \"audit.jsonl\"\n[session]\nkey_file = \"session.key\"\n\
             [authz]\nrules = [\"owner\", \"home\"]\n[[authz.home_rewrite]]\nfrom = \"/home\"\nto = \"{}\"\n{realm}\n",
            repo.display(),
            home_root.display()
        );
        std::fs::write(dir.path().join("portal.toml"), cfg).unwrap();
        let (child, url) = spawn_serve(&dir.path().join("portal.toml"));
        Portal { child, url, _dir: dir }
    }

    fn addr(&self) -> &str {
        self.url.trim_start_matches("http://")
    }
}

impl Drop for Portal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------

fn files_under(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                stack.push(p);
            } else if m.is_file() {
                out.insert(p.strip_prefix(dir).unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn login(b: &Browser, portal: &Portal, user: &str, password: &str) {
    b.go(&format!("{}/#/login", portal.url));
    b.type_into("#username", user);
    b.type_into("#password", password);
    b.click("#signin");
}

fn sign_out(b: &Browser) {
    b.click("#signout");
    b.find("#username");
    b.wait_text("You have signed out");
}

#[test]
fn browser_restores_deleted_files_folders_and_helpdesk_acts() {
    assert!(is_root(), "the browser tests back up files owned by uids 2001.. and need root");
    // A corpus history: generation 0 and two steps that edit and delete files.
    let repo = TempRepo::new();
    std::fs::set_permissions(repo.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let src = repo.path("corpus");
    corpus_make(&src, 0.05);
    let users = src.join("users");
    let alice_home = users.join("alice");
    // A file of alice's whose name is Latin-1, not UTF-8 (outside the homes the history edits).
    let latin1_text = "named in Latin-1\n";
    let latin1 = src.join("shared").join(std::ffi::OsStr::from_bytes(b"r\xe9sum\xe9-latin1.dat"));
    std::fs::create_dir_all(latin1.parent().unwrap()).unwrap();
    std::fs::write(&latin1, latin1_text).unwrap();
    let alice_uid = crate::support::corpus::FIRST_UID;
    std::os::unix::fs::chown(&latin1, Some(alice_uid), Some(alice_uid)).unwrap();
    let before = files_under(&alice_home);
    repo.backup("fileserver", &[&src]);
    for generation in 1..=2 {
        corpus_step(&src, generation);
        repo.backup("fileserver", &[&src]);
    }
    let after = files_under(&alice_home);
    let deleted: Vec<(&String, &Vec<u8>)> =
        before.iter().filter(|(p, _)| !after.contains_key(*p) && !p.starts_with("Pictures/")).collect();
    assert!(!deleted.is_empty(), "the corpus history deleted none of alice's text files; change the scale");
    let (lost_rel, lost_bytes) = deleted[0];
    let lost_name = Path::new(lost_rel).file_name().unwrap().to_string_lossy().into_owned();

    let slapd = Slapd::start(&corpus_users());
    let portal = Portal::start(&repo.repo, &slapd.realm_toml("corp"), &users);
    let downloads = repo.path("downloads");
    std::fs::create_dir_all(&downloads).unwrap();
    let b = Browser::start(&downloads);

    // Security headers of the page itself.
    let (status, _) = http(portal.addr(), "GET", "/", None);
    assert_eq!(status, 200);
    let head = {
        let mut s = TcpStream::connect(portal.addr()).unwrap();
        write!(s, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).unwrap();
        raw.to_lowercase()
    };
    assert!(head.contains("content-security-policy: default-src 'none'; script-src 'self'"), "{head}");
    assert!(head.contains("frame-ancestors 'none'") && head.contains("x-content-type-options: nosniff"), "{head}");

    // A wrong password says what to do.
    b.go(&portal.url);
    b.find("#username");
    b.screenshot("01-sign-in");
    b.assert_labelled("sign in");
    login(&b, &portal, "alice", "not-her-password");
    let err = b.find("#login-error");
    let text = b.cmd("GET", &format!("/element/{err}/text"), Value::Null).as_str().unwrap().to_string();
    assert!(text.contains("do not match") && text.contains("Caps Lock"), "{text}");
    b.screenshot("02-sign-in-wrong-password");

    // alice signs in, lands on Recently deleted, finds her lost document and downloads it.
    login(&b, &portal, "alice", "alice-pw");
    b.wait_text("Recently deleted");
    b.find("table");
    b.screenshot("03-recently-deleted");
    b.assert_labelled("recently deleted");
    b.type_into("#deleted-q", &lost_name);
    b.click("form[role=search] button");
    let link = format!("a[aria-label=\"Download {lost_name}\"]");
    b.find(&link);
    b.screenshot("04-recently-deleted-filtered");
    b.click(&link);
    assert_eq!(&b.downloaded(&lost_name), lost_bytes, "the downloaded {lost_name} differs from the original");

    // Its versions, with a text preview.
    b.click(&format!("a[aria-label=\"Versions of {lost_name}\"]"));
    b.find(".preview pre");
    let preview = b.js("return document.querySelector('.preview pre').textContent", json!([]));
    let head_text = String::from_utf8_lossy(&lost_bytes[..lost_bytes.len().min(200)]).into_owned();
    assert!(preview.as_str().unwrap().starts_with(head_text.trim_end()), "preview shows the file's text");
    b.screenshot("05-file-versions-preview");

    // Search.
    b.go(&format!("{}/#/search?q={}", portal.url, enc(&lost_name[..lost_name.len().min(8)])));
    b.find("table");
    b.screenshot("06-search");
    b.assert_labelled("search");
    // The Latin-1 name is found too, and its Download link names its bytes (path_b64): the
    // download is that file.
    b.go(&format!("{}/#/search?q=latin1", portal.url));
    let download = "a[aria-label=\"Download r\u{fffd}sum\u{fffd}-latin1.dat\"]";
    b.find(download);
    let href = b.js("return document.querySelector(arguments[0]).href", json!([download]));
    let href = href.as_str().unwrap();
    assert!(href.contains("path_b64="), "{href}");
    let got = b.js("return fetch(arguments[0], { credentials: 'same-origin' }).then((r) => r.text())", json!([href]));
    assert_eq!(got, json!(latin1_text), "{href}");

    // Browse a folder of the latest backup and download it as a zip.
    let folder = after
        .keys()
        .find_map(|p| p.strip_prefix("Documents/").and_then(|r| r.split_once('/')).map(|(d, _)| d.to_string()))
        .unwrap();
    let folder_path = alice_home.join("Documents").join(&folder);
    b.go(&format!("{}/#/browse?host=fileserver&path={}", portal.url, enc(&folder_path.to_string_lossy())));
    b.find("#zip-folder");
    b.find(".timeline button[aria-pressed=true]");
    b.screenshot("07-browse-folder");
    b.assert_labelled("browse");
    // Only alice's home is on the way: bob's is not even named.
    assert!(!b.hrefs().iter().any(|h| h.contains("bob")), "a link to bob's files: {:?}", b.hrefs());
    b.click("#zip-folder");
    let zip = b.downloaded(&format!("{folder}.zip"));
    let unz = repo.path("unzipped");
    std::fs::create_dir_all(&unz).unwrap();
    std::fs::write(repo.path("f.zip"), &zip).unwrap();
    let out = Command::new("unzip")
        .arg("-q")
        .arg(repo.path("f.zip"))
        .arg("-d")
        .arg(&unz)
        .output()
        .expect("unzip must be installed");
    assert_success(&out, "unzip");
    assert_eq!(files_under(&unz.join(&folder)), files_under(&folder_path), "the zip unpacks to the source folder");

    // Two files picked by hand come as one zip.
    let picked: Vec<String> = files_under(&folder_path).into_keys().filter(|k| !k.contains('/')).take(2).collect();
    assert_eq!(picked.len(), 2, "two files directly in {}", folder_path.display());
    for name in &picked {
        b.click(&format!("input[aria-label=\"Select {name}\"]"));
    }
    b.wait_text("Download selected (2)");
    b.click("#zip-selected");
    let zip = b.downloaded("selection.zip");
    std::fs::write(repo.path("s.zip"), &zip).unwrap();
    let sel = repo.path("selection");
    let out = Command::new("unzip").arg("-q").arg(repo.path("s.zip")).arg("-d").arg(&sel).output().unwrap();
    assert_success(&out, "unzip selection");
    let want: BTreeMap<String, Vec<u8>> =
        picked.iter().map(|n| (n.clone(), std::fs::read(folder_path.join(n)).unwrap())).collect();
    assert_eq!(files_under(&sel), want, "the selection zip holds exactly the picked files");

    // Browse up to the users folder: no trace of bob.
    b.go(&format!("{}/#/browse?host=fileserver&path={}", portal.url, enc(&users.to_string_lossy())));
    b.find("table");
    let listing = b.body_text();
    assert!(listing.contains("alice") && !listing.contains("bob"), "{listing}");
    assert!(!b.hrefs().iter().any(|h| h.contains("bob")));

    // Typed URLs to bob's files: the page says not found, the API answers 404.
    let bob_file = files_under(&users.join("bob")).into_keys().next().unwrap();
    let bob_path = users.join("bob").join(&bob_file);
    b.go(&format!("{}/#/browse?host=fileserver&path={}", portal.url, enc(&users.join("bob").to_string_lossy())));
    b.wait_text("was not found");
    b.screenshot("08-bob-folder-not-found");
    b.go(&format!("{}/#/file?host=fileserver&path={}", portal.url, enc(&bob_path.to_string_lossy())));
    b.wait_text("was not found");
    let snap = repo.snapshots().last().unwrap()["id"].as_str().unwrap().to_string();
    b.go(&format!("{}/api/download?snapshot={snap}&path={}", portal.url, enc(&bob_path.to_string_lossy())));
    b.wait_text("not_found");
    b.go(&format!("{}/api/archive?snapshot={snap}&path={}", portal.url, enc(&users.join("bob").to_string_lossy())));
    b.wait_text("not_found");
    std::thread::sleep(Duration::from_millis(500));
    let mut got: Vec<String> = std::fs::read_dir(&downloads)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    got.sort();
    let mut want = vec![lost_name.clone(), format!("{folder}.zip"), "selection.zip".to_string()];
    want.sort();
    assert_eq!(got, want, "only alice's own downloads arrived");

    // Phone width.
    b.go(&format!("{}/#/deleted", portal.url));
    b.find("table");
    b.window(390, 844);
    b.screenshot("09-phone-recently-deleted");
    b.go(&format!("{}/#/browse?host=fileserver&path={}", portal.url, enc(&folder_path.to_string_lossy())));
    b.find("#zip-folder");
    b.screenshot("09-phone-browse");
    b.window(1280, 900);
    // Dark mode follows the system.
    let dark = json!({"cmd": "Emulation.setEmulatedMedia", "params": {"features": [{"name": "prefers-color-scheme", "value": "dark"}]}});
    b.cmd("POST", "/chromium/send_command", dark);
    b.go(&format!("{}/#/file?host=fileserver&path={}", portal.url, enc(&alice_home.join(lost_rel).to_string_lossy())));
    b.find(".preview pre");
    let bg = b.js("return getComputedStyle(document.body).backgroundColor", json!([]));
    assert_eq!(bg, json!("rgb(17, 20, 24)"), "dark colours under prefers-color-scheme: dark");
    b.screenshot("09-dark-file-versions");
    let light = json!({"cmd": "Emulation.setEmulatedMedia", "params": {"features": [{"name": "prefers-color-scheme", "value": "light"}]}});
    b.cmd("POST", "/chromium/send_command", light);

    // Access history: nobody yet.
    b.go(&format!("{}/#/access", portal.url));
    b.wait_text("Nobody has acted for you");
    sign_out(&b);

    // hank of the helpdesk acts for alice: the banner shows, and he sees her deleted file.
    login(&b, &portal, "hank", "hank-pw");
    b.wait_text("Act for a user");
    b.click("nav a[href='#/helpdesk']");
    b.type_into("#act-user", "alice");
    b.type_into("#act-reason", "TICKET-42 lost document");
    b.screenshot("10-helpdesk-act");
    b.assert_labelled("act for a user");
    b.click("#act-start");
    let banner = b.find("#acting");
    let text = b.cmd("GET", &format!("/element/{banner}/text"), Value::Null).as_str().unwrap().to_string();
    assert!(text.contains("acting for") && text.contains("alice") && text.contains("TICKET-42"), "{text}");
    b.type_into("#deleted-q", &lost_name);
    b.click("form[role=search] button");
    b.find(&link);
    b.screenshot("11-helpdesk-acting-for-alice");
    b.click("#acting button");
    b.wait("the banner to go", || b.try_find("#acting[hidden]"));
    sign_out(&b);

    // alice sees who acted for her and why.
    login(&b, &portal, "alice", "alice-pw");
    b.wait_text("Recently deleted");
    b.go(&format!("{}/#/access", portal.url));
    b.wait_text("TICKET-42 lost document");
    assert!(b.body_text().contains("hank"));
    b.screenshot("12-access-history");
    sign_out(&b);
    b.screenshot("13-signed-out");
}

/// `rewind demo` builds its file server, backs it up and serves it: alice signs in with the
/// printed password, finds the report the demo history deleted, and sees a picture's preview.
#[test]
fn demo_serves_a_history_that_alice_can_restore_from() {
    let dir = tempfile::Builder::new().prefix("rewind-demo-test-").tempdir().unwrap();
    let port = free_port();
    let mut child = rewind_cmd()
        .args(["demo", "--dir"])
        .arg(dir.path().join("demo"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start rewind demo");
    struct Kill(Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let _guard = Kill(child);
    let mut printed = String::new();
    while !printed.contains("listening on") {
        let mut line = String::new();
        assert!(out.read_line(&mut line).unwrap() > 0, "rewind demo stopped early:\n{printed}");
        printed.push_str(&line);
    }
    for needle in
        [&format!("http://127.0.0.1:{port}/"), "alice", "alice-demo", "hank-demo", "ada-demo", "rewind mount --repo"]
    {
        assert!(printed.contains(needle), "the demo should print {needle:?}:\n{printed}");
    }

    let downloads = dir.path().join("downloads");
    std::fs::create_dir_all(&downloads).unwrap();
    let b = Browser::start(&downloads);
    let portal_url = format!("http://127.0.0.1:{port}");
    b.go(&format!("{portal_url}/#/login"));
    b.type_into("#username", "alice");
    b.type_into("#password", "alice-demo");
    b.click("#signin");
    let link = "a[aria-label=\"Download Quarterly report.md\"]";
    b.find(link);
    b.screenshot("20-demo-recently-deleted");
    b.click(link);
    let report = b.downloaded("Quarterly report.md");
    assert!(report.starts_with(b"# Quarterly report (alice)"), "{}", String::from_utf8_lossy(&report));

    // A picture's preview is an <img> that really decodes.
    let home = dir.path().join("demo/fileserver/home/alice");
    b.go(&format!(
        "{portal_url}/#/file?host=fileserver&path={}",
        enc(&home.join("Pictures/holiday.png").to_string_lossy())
    ));
    b.find(".preview img");
    b.wait("the picture to load", || {
        (b.js("const i = document.querySelector('.preview img'); return i.complete && i.naturalWidth", json!([]))
            == json!(160))
        .then_some(())
    });
    b.screenshot("21-demo-image-preview");
}

/// `read`, again when it is interrupted (EINTR was seen once in a run of the whole suite): that
/// is no answer from chromedriver.
fn read_some(s: &mut impl Read, buf: &mut [u8]) -> usize {
    loop {
        match s.read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => return r.unwrap(),
        }
    }
}
