//! A throwaway OpenLDAP server on loopback ports, for the portal's (and the browser's) tests:
//! a private `cn=config` built with `slapadd -n0`, users and groups loaded with `slapadd -n1`,
//! `memberOf` from the `dynlist` overlay, StartTLS and `ldaps://` with a throwaway CA and a
//! separate leaf certificate for 127.0.0.1. Stopped (and its files removed) on drop.
//!
//! Needs `slapd`, `slapadd`, `ldapsearch` and `openssl`; a test that uses it fails loudly when
//! they are missing (`apt-get install -y --no-install-recommends slapd ldap-utils openssl`).

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BASE_DN: &str = "dc=rewind,dc=test";
pub const SERVICE_DN: &str = "cn=portal,ou=system,dc=rewind,dc=test";
pub const SERVICE_PASSWORD: &str = "service-secret";
pub const HELPDESK_GROUP: &str = "cn=helpdesk,ou=groups,dc=rewind,dc=test";
pub const ADMIN_GROUP: &str = "cn=backup-admins,ou=groups,dc=rewind,dc=test";

/// A directory user.
#[derive(Clone, Debug)]
pub struct LdapUser {
    pub login: String,
    pub password: String,
    pub uid_number: u32,
    pub gid_number: u32,
    pub home: String,
    /// Group common names (under `ou=groups`): `helpdesk`, `backup-admins`, or any other.
    pub groups: Vec<String>,
    /// posixGroups (name, gidNumber) listing the user as `memberUid`, for group searches.
    pub posix_groups: Vec<(String, u32)>,
    pub hosts: Vec<String>,
}

impl LdapUser {
    pub fn new(login: &str, uid: u32) -> LdapUser {
        LdapUser {
            login: login.into(),
            password: format!("{login}-pw"),
            uid_number: uid,
            gid_number: uid,
            home: format!("/home/{login}"),
            groups: vec![],
            posix_groups: vec![],
            hosts: vec![],
        }
    }
}

/// The corpus's users (alice..heidi, uids 2001..2008, password `<login>-pw`), a helpdesk
/// member `hank` (uid 3001) and an admin `ada` (uid 3002).
pub fn corpus_users() -> Vec<LdapUser> {
    let mut v: Vec<LdapUser> = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"]
        .iter()
        .enumerate()
        .map(|(i, n)| LdapUser::new(n, 2001 + i as u32))
        .collect();
    let mut hank = LdapUser::new("hank", 3001);
    hank.groups = vec!["helpdesk".into()];
    let mut ada = LdapUser::new("ada", 3002);
    ada.groups = vec!["backup-admins".into()];
    v.push(hank);
    v.push(ada);
    v
}

pub struct Slapd {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub tls_port: u16,
    /// PEM of the CA that signed the server's certificate.
    pub ca_file: PathBuf,
    /// The service account's password, in a file.
    pub service_password_file: PathBuf,
    child: Option<Child>,
}

fn require_tool(path: &str) {
    assert!(
        Path::new(path).exists(),
        "{path} is missing: the LDAP tests need a real slapd (apt-get install -y --no-install-recommends slapd ldap-utils openssl)"
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A throwaway CA and a leaf certificate for 127.0.0.1 signed by it; returns (ca, cert, key).
pub fn make_certs(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    require_tool("/usr/bin/openssl");
    let p = |n: &str| dir.join(n);
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    run(
        Command::new("openssl")
            .args(["req", "-x509"])
            .args(ec)
            .args(["-days", "2", "-subj", "/CN=rewind test CA"])
            .args(["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
            .arg("-keyout")
            .arg(p("ca.key"))
            .arg("-out")
            .arg(p("ca.pem")),
        "openssl CA",
    );
    run(
        Command::new("openssl")
            .arg("req")
            .args(ec)
            .args(["-subj", "/CN=127.0.0.1"])
            .arg("-keyout")
            .arg(p("server.key"))
            .arg("-out")
            .arg(p("server.csr")),
        "openssl CSR",
    );
    std::fs::write(
        p("leaf.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(
        Command::new("openssl")
            .args(["x509", "-req", "-days", "2", "-CAcreateserial"])
            .arg("-in")
            .arg(p("server.csr"))
            .arg("-CA")
            .arg(p("ca.pem"))
            .arg("-CAkey")
            .arg(p("ca.key"))
            .arg("-extfile")
            .arg(p("leaf.ext"))
            .arg("-out")
            .arg(p("server.pem")),
        "openssl sign",
    );
    (p("ca.pem"), p("server.pem"), p("server.key"))
}

impl Slapd {
    /// Build and start a directory with `users`.
    pub fn start(users: &[LdapUser]) -> Slapd {
        for tool in ["/usr/sbin/slapd", "/usr/sbin/slapadd", "/usr/bin/ldapsearch"] {
            require_tool(tool);
        }
        let dir = tempfile::Builder::new().prefix("rewind-slapd-").tempdir().unwrap();
        let d = dir.path();
        let (ca, cert, key) = make_certs(d);
        std::fs::create_dir_all(d.join("config")).unwrap();
        std::fs::create_dir_all(d.join("data")).unwrap();
        let config = format!(
            r#"dn: cn=config
objectClass: olcGlobal
cn: config
olcPidFile: {dir}/slapd.pid
olcTLSCACertificateFile: {ca}
olcTLSCertificateFile: {cert}
olcTLSCertificateKeyFile: {key}

dn: cn=module{{0}},cn=config
objectClass: olcModuleList
cn: module{{0}}
olcModulePath: /usr/lib/ldap
olcModuleLoad: back_mdb
olcModuleLoad: dynlist

dn: cn=schema,cn=config
objectClass: olcSchemaConfig
cn: schema

include: file:///etc/ldap/schema/core.ldif
include: file:///etc/ldap/schema/cosine.ldif
include: file:///etc/ldap/schema/nis.ldif
include: file:///etc/ldap/schema/inetorgperson.ldif
include: file:///etc/ldap/schema/dyngroup.ldif

dn: olcDatabase={{-1}}frontend,cn=config
objectClass: olcDatabaseConfig
objectClass: olcFrontendConfig
olcDatabase: {{-1}}frontend

dn: olcDatabase={{0}}config,cn=config
objectClass: olcDatabaseConfig
olcDatabase: {{0}}config
olcAccess: {{0}}to * by * none

dn: olcDatabase={{1}}mdb,cn=config
objectClass: olcDatabaseConfig
objectClass: olcMdbConfig
olcDatabase: {{1}}mdb
olcSuffix: {BASE_DN}
olcRootDN: cn=admin,{BASE_DN}
olcRootPW: admin-secret
olcDbDirectory: {dir}/data
olcDbMaxSize: 67108864
olcAccess: {{0}}to attrs=userPassword by anonymous auth by self write by * none
olcAccess: {{1}}to * by dn.exact="{SERVICE_DN}" read by self read by * none

dn: olcOverlay={{0}}dynlist,olcDatabase={{1}}mdb,cn=config
objectClass: olcOverlayConfig
objectClass: olcDynListConfig
olcOverlay: {{0}}dynlist
olcDynListAttrSet: {{0}}groupOfURLs memberURL member+memberOf@groupOfNames
"#,
            dir = d.display(),
            ca = ca.display(),
            cert = cert.display(),
            key = key.display(),
        );
        std::fs::write(d.join("config.ldif"), config).unwrap();
        run(
            Command::new("slapadd").args(["-n0", "-F"]).arg(d.join("config")).arg("-l").arg(d.join("config.ldif")),
            "slapadd -n0",
        );

        let mut data = format!(
            "dn: {BASE_DN}\nobjectClass: dcObject\nobjectClass: organization\ndc: rewind\no: rewind test\n\n\
             dn: ou=people,{BASE_DN}\nobjectClass: organizationalUnit\nou: people\n\n\
             dn: ou=groups,{BASE_DN}\nobjectClass: organizationalUnit\nou: groups\n\n\
             dn: ou=system,{BASE_DN}\nobjectClass: organizationalUnit\nou: system\n\n\
             dn: {SERVICE_DN}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\ncn: portal\nuserPassword: {SERVICE_PASSWORD}\n\n"
        );
        let mut groups: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for u in users {
            let mut e = format!(
                "dn: uid={login},ou=people,{BASE_DN}\nobjectClass: inetOrgPerson\nobjectClass: posixAccount\n\
                 uid: {login}\ncn: {cap}\nsn: {login}\ndisplayName: {cap}\nmail: {login}@rewind.test\nuidNumber: {uid}\ngidNumber: {gid}\n\
                 homeDirectory: {home}\nuserPassword: {pw}\n",
                login = u.login,
                cap = capitalize(&u.login),
                uid = u.uid_number,
                gid = u.gid_number,
                home = u.home,
                pw = u.password,
            );
            if !u.hosts.is_empty() {
                // `host` belongs to `account`, which cannot join inetOrgPerson's chain.
                e.push_str("objectClass: extensibleObject\n");
            }
            for h in &u.hosts {
                e.push_str(&format!("host: {h}\n"));
            }
            data.push_str(&e);
            data.push('\n');
            for g in &u.groups {
                groups.entry(g.clone()).or_default().push(format!("uid={},ou=people,{BASE_DN}", u.login));
            }
        }
        groups.entry("helpdesk".into()).or_default();
        groups.entry("backup-admins".into()).or_default();
        for (g, members) in &groups {
            data.push_str(&format!("dn: cn={g},ou=groups,{BASE_DN}\nobjectClass: groupOfNames\ncn: {g}\n"));
            // groupOfNames needs a member; the service account stands in for empty groups.
            if members.is_empty() {
                data.push_str(&format!("member: {SERVICE_DN}\n"));
            }
            for m in members {
                data.push_str(&format!("member: {m}\n"));
            }
            data.push('\n');
        }
        let mut posix: std::collections::BTreeMap<(String, u32), Vec<String>> = Default::default();
        for u in users {
            for g in &u.posix_groups {
                posix.entry(g.clone()).or_default().push(u.login.clone());
            }
        }
        for ((g, gid), members) in &posix {
            data.push_str(&format!(
                "dn: cn={g},ou=groups,{BASE_DN}\nobjectClass: posixGroup\ncn: {g}\ngidNumber: {gid}\n"
            ));
            for m in members {
                data.push_str(&format!("memberUid: {m}\n"));
            }
            data.push('\n');
        }
        std::fs::write(d.join("data.ldif"), data).unwrap();
        run(
            Command::new("slapadd").args(["-n1", "-F"]).arg(d.join("config")).arg("-l").arg(d.join("data.ldif")),
            "slapadd -n1",
        );
        let pwfile = d.join("service-password");
        std::fs::write(&pwfile, format!("{SERVICE_PASSWORD}\n")).unwrap();

        let mut s = Slapd { port: 0, tls_port: 0, ca_file: ca, service_password_file: pwfile, child: None, dir };
        s.launch();
        s
    }

    fn launch(&mut self) {
        self.launch_on(None);
    }

    /// Start slapd on `ports`, or on free ones.
    fn launch_on(&mut self, ports: Option<(u16, u16)>) {
        let d = self.dir.path().to_path_buf();
        for _attempt in 0..5 {
            let (port, tls_port) = ports.unwrap_or_else(|| (free_port(), free_port()));
            let urls = format!("ldap://127.0.0.1:{port}/ ldaps://127.0.0.1:{tls_port}/");
            let log = std::fs::File::create(d.join("slapd.log")).unwrap();
            let child = Command::new("slapd")
                .arg("-F")
                .arg(d.join("config"))
                .args(["-h", &urls, "-d", "0"])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start slapd");
            self.child = Some(child);
            self.port = port;
            self.tls_port = tls_port;
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                    let log = std::fs::read_to_string(d.join("slapd.log")).unwrap_or_default();
                    eprintln!("slapd exited ({st}), retrying with other ports:\n{log}");
                    self.child = None;
                    break;
                }
                // Ports picked this way may be taken by someone else before slapd binds them (then
                // slapd exits, and the next attempt takes other ports): only a server that proves
                // it holds our throwaway CA's certificate, on both ports, is ours.
                if TcpStream::connect(("127.0.0.1", port)).is_ok()
                    && TcpStream::connect(("127.0.0.1", tls_port)).is_ok()
                    && self.answers(&self.url(), true)
                    && self.answers(&self.ldaps_url(), false)
                {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            self.stop();
        }
        panic!("slapd did not start; log:\n{}", std::fs::read_to_string(d.join("slapd.log")).unwrap_or_default());
    }

    /// Whether the server at `url` reads its root entry to us over TLS with our CA.
    fn answers(&self, url: &str, starttls: bool) -> bool {
        let mut c = Command::new("ldapsearch");
        c.args(["-x", "-LLL", "-H", url, "-b", "", "-s", "base", "-o", "nettimeout=10"]);
        if starttls {
            c.arg("-ZZ");
        }
        c.env("LDAPTLS_CACERT", &self.ca_file).env("LDAPTLS_REQCERT", "demand");
        c.arg("namingContexts").output().is_ok_and(|o| o.status.success())
    }

    /// `ldap://127.0.0.1:PORT` (use with StartTLS).
    pub fn url(&self) -> String {
        format!("ldap://127.0.0.1:{}", self.port)
    }

    /// `ldaps://127.0.0.1:PORT`.
    pub fn ldaps_url(&self) -> String {
        format!("ldaps://127.0.0.1:{}", self.tls_port)
    }

    /// Stop the server (the directory goes "down"); [`Slapd::restart`] brings it back.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    /// Start a stopped server again on the ports it had, so that portals configured with it
    /// find it back (the directory "comes back").
    pub fn resume(&mut self) {
        self.stop();
        self.launch_on(Some((self.port, self.tls_port)));
    }

    /// `ldapsearch` as the service account (for checking the fixture itself).
    pub fn search(&self, filter: &str, attrs: &[&str]) -> String {
        let out = Command::new("ldapsearch")
            .args(["-x", "-LLL", "-H", &self.url(), "-D", SERVICE_DN, "-w", SERVICE_PASSWORD, "-b", BASE_DN, filter])
            .args(attrs)
            .output()
            .expect("ldapsearch");
        assert!(out.status.success(), "ldapsearch: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Change the directory as its administrator (`ldapmodify` with an LDIF of changes): remove
    /// a user from a group, delete an entry, while a portal runs.
    pub fn modify(&self, ldif: &str) {
        let mut c = Command::new("ldapmodify")
            .args(["-x", "-H", &self.url(), "-D", &format!("cn=admin,{BASE_DN}"), "-w", "admin-secret"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ldapmodify (ldap-utils) must be installed");
        c.stdin.take().unwrap().write_all(ldif.as_bytes()).unwrap();
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "ldapmodify: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// A `[[realm]]` block for `portal.toml` using this directory over StartTLS.
    pub fn realm_toml(&self, name: &str) -> String {
        format!(
            r#"
[[realm]]
kind = "ldap"
name = "{name}"
url = "{url}"
starttls = true
ca_file = "{ca}"
bind_dn = "{SERVICE_DN}"
bind_password_file = "{pw}"
base_dn = "ou=people,{BASE_DN}"
user_filter = "(&(objectClass=posixAccount)(uid={{login}}))"
timeout_secs = 3
[realm.roles]
admin = ["{ADMIN_GROUP}"]
helpdesk = ["{HELPDESK_GROUP}"]
"#,
            url = self.url(),
            ca = self.ca_file.display(),
            pw = self.service_password_file.display(),
        )
    }
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next().map(|f| f.to_uppercase().collect::<String>() + c.as_str()).unwrap_or_default()
}

impl Drop for Slapd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Write a file (helper for configs).
pub fn write_file(path: &Path, text: &str) {
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
}
