//! `portal.toml`: every key is documented in `portal/portal.example.toml`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The whole configuration file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address to listen on, e.g. `127.0.0.1:8080` (port 0 picks a free one).
    pub listen: SocketAddr,
    /// The repository to serve: a directory, or `s3:http[s]://host[:port]/bucket[/prefix]`
    /// (credentials from `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, profiles).
    pub repository: PathBuf,
    /// An encrypted repository's password, in the first line of this file (else
    /// `REWIND_PASSWORD_FILE`, or `REWIND_PASSWORD` in the environment).
    #[serde(default)]
    pub repository_password_file: Option<PathBuf>,
    /// An encrypted repository's raw key file (else `REWIND_KEY_FILE`).
    #[serde(default)]
    pub repository_key_file: Option<PathBuf>,
    /// Authentication realms, tried in order.
    #[serde(rename = "realm")]
    pub realms: Vec<RealmConfig>,
    #[serde(default)]
    pub authz: AuthzConfig,
    #[serde(default)]
    pub session: SessionConfig,
    /// JSON-lines audit log, appended to.
    pub audit_log: PathBuf,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    #[serde(default)]
    pub limits: LimitsConfig,
    /// The catalog database (search, deleted, history); default: a file of this portal's own in
    /// the repository's cache folder, `catalog.sqlite` (the one this user's backups update) if
    /// no other portal holds it (see `catalog.rs`).
    #[serde(default)]
    pub catalog: Option<PathBuf>,
    /// Reverse proxies whose `X-Forwarded-For` names the client (for throttling and the audit log).
    #[serde(default)]
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// Allowed `Origin`s for state-changing requests besides the portal's own.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// The portal's address as users reach it (`https://backup.example.org`): its host is one
    /// the portal answers state-changing requests for, and its origin is the portal's own.
    #[serde(default)]
    pub public_url: Option<String>,
    /// More `Host` values (`name` or `name:port`) the portal answers state-changing requests
    /// for. Without these and `public_url`, only IP addresses and `localhost` are: a page that
    /// rebinds its own name to the portal's address sends that name.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Bring the catalog up to date at start and then every so many seconds. Default: 60 for a
    /// repository in a local directory, 300 for one on object storage (where listing its
    /// snapshots costs requests). 0 (never) only with `catalog`: a file that backups or
    /// `rewind catalog` commands keep current; the portal's own catalog is always synced.
    #[serde(default)]
    pub catalog_sync_secs: Option<u64>,
    /// How long a catalog result page is reused for the same query (by any user; results are
    /// filtered per user afterwards). 0 disables the cache.
    #[serde(default = "default_catalog_cache_ms")]
    pub catalog_cache_ms: u64,
    /// Decompressed chunk cache, MiB.
    #[serde(default = "default_cache_mib")]
    pub chunk_cache_mib: usize,
    /// Decompressed chunks beyond the in-memory cache, kept in an unlinked scratch file in
    /// `chunk_spill_dir` (the kernel's page cache holds what it can of it), MiB. A chunk goes
    /// there when it is read a second time (a file downloaded again), not on its first read.
    /// 0 disables it.
    #[serde(default = "default_spill_mib")]
    pub chunk_spill_mib: u64,
    /// Where that file is made; default: the system's temporary directory, unless it is a
    /// tmpfs (there the file would be held in memory, not cached).
    #[serde(default)]
    pub chunk_spill_dir: Option<PathBuf>,
}

fn default_catalog_cache_ms() -> u64 {
    2000
}

fn default_cache_mib() -> usize {
    64
}

fn default_spill_mib() -> u64 {
    1024
}

/// One authentication realm.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum RealmConfig {
    Ldap(Box<LdapConfig>),
    File(FileRealmConfig),
}

impl RealmConfig {
    pub fn name(&self) -> &str {
        match self {
            RealmConfig::Ldap(c) => &c.name,
            RealmConfig::File(c) => &c.name,
        }
    }
}

/// `kind = "file"`: users in a TOML file with argon2id hashes.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRealmConfig {
    pub name: String,
    /// The users file (see `portal.example.toml` for its format).
    pub users_file: PathBuf,
}

/// `kind = "ldap"`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LdapConfig {
    pub name: String,
    /// `ldap://host:389` or `ldaps://host:636`.
    pub url: String,
    /// Upgrade `ldap://` with StartTLS (strongly recommended; required unless `allow_plaintext`).
    #[serde(default)]
    pub starttls: bool,
    /// Permit a plain `ldap://` connection without StartTLS (tests, loopback only).
    #[serde(default)]
    pub allow_plaintext: bool,
    /// PEM file of the CA(s) that sign the directory's certificate.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Service account for search-then-bind.
    #[serde(default)]
    pub bind_dn: Option<String>,
    /// File holding the service account's password (first line).
    #[serde(default)]
    pub bind_password_file: Option<PathBuf>,
    /// Environment variable holding the service account's password.
    #[serde(default)]
    pub bind_password_env: Option<String>,
    /// Bind directly as this DN (`{login}` is replaced, DN-escaped) instead of searching first.
    #[serde(default)]
    pub user_dn_template: Option<String>,
    /// Where users are searched.
    pub base_dn: String,
    /// Filter template; `{login}` is replaced by the RFC 4515-escaped login name.
    #[serde(default = "default_user_filter")]
    pub user_filter: String,
    /// Optional group search: `{login}` (escaped) and `{dn}` (escaped) are replaced.
    #[serde(default)]
    pub group_base_dn: Option<String>,
    #[serde(default)]
    pub group_filter: Option<String>,
    #[serde(default)]
    pub attributes: LdapAttributes,
    /// Role mapping: a group DN (from `memberOf` or the group search) or group name -> role.
    #[serde(default)]
    pub roles: RoleMap,
    /// Seconds for connecting and for each operation.
    #[serde(default = "default_ldap_timeout")]
    pub timeout_secs: u64,
}

fn default_user_filter() -> String {
    "(&(objectClass=posixAccount)(uid={login}))".into()
}

fn default_ldap_timeout() -> u64 {
    5
}

/// Which LDAP attributes hold what.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LdapAttributes {
    pub login: String,
    pub uid_number: String,
    pub gid_number: String,
    pub home: String,
    pub display_name: String,
    pub mail: String,
    pub member_of: String,
    /// The user's machines, for the `host` rule.
    pub hosts: String,
    /// On group entries: the group's gid number and name.
    pub group_gid_number: String,
    pub group_name: String,
}

impl Default for LdapAttributes {
    fn default() -> Self {
        LdapAttributes {
            login: "uid".into(),
            uid_number: "uidNumber".into(),
            gid_number: "gidNumber".into(),
            home: "homeDirectory".into(),
            display_name: "cn".into(),
            mail: "mail".into(),
            member_of: "memberOf".into(),
            hosts: "host".into(),
            group_gid_number: "gidNumber".into(),
            group_name: "cn".into(),
        }
    }
}

/// Groups that give a role; anyone else who logs in is a `user`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoleMap {
    pub admin: Vec<String>,
    pub helpdesk: Vec<String>,
    /// If not empty, only members of these groups (or of the two above) may log in at all.
    pub user: Vec<String>,
}

/// Which files are a user's.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthzConfig {
    /// Any of `owner`, `readable`, `home`, `host`; a file is the user's if any rule says so.
    pub rules: Vec<Rule>,
    /// Rewrites of the directory's home paths to backup paths, first match wins.
    pub home_rewrite: Vec<Rewrite>,
    /// Machines per user for the `host` rule (added to the directory's `hosts` attribute), keyed
    /// `realm:login`, or `login` alone when only one realm is configured.
    pub hosts: BTreeMap<String, Vec<String>>,
    /// Who sees the files inside disk images (`<image>.d/`): admins only (the default), or
    /// also everyone to whom the rules show the image file itself (`image-readers`): they may
    /// download the whole image anyway. Images that refer to other files (qcow2 backing files,
    /// VMDK extents) are opened for admins only: what they show comes from those files too.
    pub images: ImageAccess,
}

impl Default for AuthzConfig {
    fn default() -> Self {
        AuthzConfig {
            rules: vec![Rule::Owner],
            home_rewrite: Vec::new(),
            hosts: BTreeMap::new(),
            images: ImageAccess::Admins,
        }
    }
}

/// Who sees inside disk images.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum ImageAccess {
    #[default]
    Admins,
    ImageReaders,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Rule {
    Owner,
    Readable,
    Home,
    Host,
}

/// `from` prefix replaced by `to` (whole path components).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rewrite {
    pub from: String,
    pub to: String,
}

/// Sessions.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionConfig {
    /// File with the signing key; generated (0600) if missing.
    pub key_file: Option<PathBuf>,
    /// The key itself, base64 (at least 32 bytes); takes precedence over `key_file`.
    pub key: Option<String>,
    /// Lifetime of a token; refreshed when half of it has passed and the user is active.
    pub ttl_secs: u64,
    /// A session ends this long after login, however active.
    pub max_age_secs: u64,
    /// Mark the cookie `Secure` (always set when TLS is on).
    pub cookie_secure: bool,
    pub cookie_name: String,
    /// At each renewal a session's roles and account are read again from its realm. While the
    /// realm cannot be asked, the session keeps its roles for at most this long after the last
    /// answer, then its requests are refused (503) until the realm answers again.
    pub directory_grace_secs: u64,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            key_file: None,
            key: None,
            ttl_secs: 900,
            max_age_secs: 12 * 3600,
            cookie_secure: false,
            cookie_name: "rewind_session".into(),
            directory_grace_secs: 900,
        }
    }
}

/// Optional TLS.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// Abuse limits.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Failed logins per user name within `window_secs` before it is locked out.
    pub failures_per_user: u32,
    /// Failed logins per client address within `window_secs`.
    pub failures_per_address: u32,
    pub window_secs: u64,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Time to receive the request headers / body.
    pub header_timeout_secs: u64,
    pub body_timeout_secs: u64,
    /// Time for a handler to start answering (downloads stream past it).
    pub request_timeout_secs: u64,
    /// Most files in one selection archive request.
    pub max_selection: usize,
    /// Search page size cap.
    pub max_page: usize,
    /// Seconds that shutdown waits for running downloads.
    pub shutdown_grace_secs: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            failures_per_user: 5,
            failures_per_address: 20,
            window_secs: 900,
            max_body_bytes: 64 * 1024,
            header_timeout_secs: 10,
            body_timeout_secs: 10,
            request_timeout_secs: 60,
            max_selection: 1000,
            max_page: 500,
            shutdown_grace_secs: 300,
        }
    }
}

impl Config {
    /// Where the repository's secret comes from: the config's files, else the environment.
    pub fn repository_secret(&self) -> rewind_store::SecretSource {
        let env_path = |v: &str| std::env::var_os(v).map(PathBuf::from);
        rewind_store::SecretSource {
            key_file: self.repository_key_file.clone().or_else(|| env_path("REWIND_KEY_FILE")),
            password_file: self.repository_password_file.clone().or_else(|| env_path("REWIND_PASSWORD_FILE")),
            password_command: None,
            env: Some("REWIND_PASSWORD"),
        }
    }

    /// Read and check a config file; relative paths are taken from the file's folder.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        use anyhow::Context;
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut cfg: Config = toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        cfg.resolve_paths(base);
        cfg.validate()?;
        Ok(cfg)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        // An S3 location (`s3:https://host/bucket/prefix`) is not a path.
        if !self.repository.to_str().is_some_and(rewind_s3::S3Location::is_s3) {
            fix(&mut self.repository);
        }
        fix(&mut self.audit_log);
        for p in [&mut self.repository_password_file, &mut self.repository_key_file].into_iter().flatten() {
            fix(p);
        }
        if let Some(p) = &mut self.session.key_file {
            fix(p);
        }
        if let Some(p) = &mut self.catalog {
            fix(p);
        }
        if let Some(p) = &mut self.chunk_spill_dir {
            fix(p);
        }
        if let Some(t) = &mut self.tls {
            fix(&mut t.cert_file);
            fix(&mut t.key_file);
        }
        for r in &mut self.realms {
            match r {
                RealmConfig::File(f) => fix(&mut f.users_file),
                RealmConfig::Ldap(l) => {
                    if let Some(p) = &mut l.ca_file {
                        fix(p);
                    }
                    if let Some(p) = &mut l.bind_password_file {
                        fix(p);
                    }
                }
            }
        }
    }

    /// Refuse configurations that would be unsafe or cannot work.
    pub fn validate(&self) -> anyhow::Result<()> {
        use anyhow::bail;
        if self.realms.is_empty() {
            bail!("portal.toml: at least one [[realm]] is needed");
        }
        if self.authz.rules.is_empty() {
            bail!("portal.toml: authz.rules is empty, nobody would see anything");
        }
        if self.session.key.is_none() && self.session.key_file.is_none() {
            bail!("portal.toml: set session.key_file (generated if missing) or session.key");
        }
        if self.session.ttl_secs == 0 || self.session.max_age_secs < self.session.ttl_secs {
            bail!("portal.toml: session.ttl_secs must be > 0 and <= session.max_age_secs");
        }
        if let Some(url) = &self.public_url {
            public_origin(url)?;
        }
        for h in &self.allowed_hosts {
            if h.is_empty() || h.contains(['/', ' ', '@']) {
                bail!("portal.toml: allowed_hosts: {h:?} is not a host name (name or name:port)");
            }
        }
        let realm_names: Vec<&str> = self.realms.iter().map(RealmConfig::name).collect();
        for (i, name) in realm_names.iter().enumerate() {
            if realm_names[..i].contains(name) {
                bail!("portal.toml: two realms are named {name:?}");
            }
        }
        for key in self.authz.hosts.keys() {
            let qualified = key.split_once(':').is_some_and(|(realm, _)| realm_names.contains(&realm));
            if !qualified && realm_names.len() > 1 {
                bail!(
                    "portal.toml: authz.hosts key {key:?} names no realm; with several realms write \"realm:{key}\" (realms: {})",
                    realm_names.join(", ")
                );
            }
        }
        for r in &self.realms {
            if let RealmConfig::Ldap(l) = r {
                let plain = l.url.starts_with("ldap://");
                if !plain && !l.url.starts_with("ldaps://") {
                    bail!("realm {}: url must start with ldap:// or ldaps://", l.name);
                }
                if plain && !l.starttls && !l.allow_plaintext {
                    bail!("realm {}: ldap:// without starttls sends passwords in clear; set starttls = true", l.name);
                }
                if l.bind_dn.is_none() && l.user_dn_template.is_none() {
                    bail!("realm {}: set bind_dn (search then bind) or user_dn_template", l.name);
                }
                if !l.user_filter.contains("{login}") {
                    bail!("realm {}: user_filter must contain {{login}}", l.name);
                }
            }
        }
        Ok(())
    }
}

/// The origin (`scheme://host[:port]`, lowercase) of `public_url`, and its host (`host[:port]`).
pub fn public_origin(url: &str) -> anyhow::Result<(String, String)> {
    let bad = || anyhow::anyhow!("portal.toml: public_url {url:?} is not like https://backup.example.org");
    let (scheme, rest) = url.split_once("://").ok_or_else(bad)?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return Err(bad());
    }
    let host = rest.strip_suffix('/').unwrap_or(rest).to_ascii_lowercase();
    if host.is_empty() || host.contains(['/', '?', '#', '@', ' ']) {
        return Err(bad());
    }
    Ok((format!("{scheme}://{host}"), host))
}

impl AuthzConfig {
    /// The `hosts` machines of a user (`single_realm`: a key without a realm is theirs).
    pub fn user_hosts(&self, realm: &str, login: &str, single_realm: bool) -> Vec<String> {
        let mut out = self.hosts.get(&format!("{realm}:{login}")).cloned().unwrap_or_default();
        if single_realm {
            out.extend(self.hosts.get(login).cloned().unwrap_or_default());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses() {
        let text = include_str!("../portal.example.toml");
        let cfg: Config = toml::from_str(text).expect("example parses");
        cfg.validate().expect("example is valid");
        assert_eq!(cfg.realms.len(), 2);
    }

    #[test]
    fn host_keys_name_their_realm_when_there_are_several() {
        let base = |hosts: &str, realms: &str| {
            format!(
                "listen = \"127.0.0.1:0\"\nrepository = \"/r\"\naudit_log = \"/a\"\n[session]\nkey_file = \"/k\"\n[authz]\nrules = [\"host\"]\n[authz.hosts]\n{hosts}\n{realms}"
            )
        };
        let one = "[[realm]]\nkind = \"file\"\nname = \"local\"\nusers_file = \"/u\"\n";
        let two = format!("{one}[[realm]]\nkind = \"file\"\nname = \"other\"\nusers_file = \"/v\"\n");
        let cfg: Config = toml::from_str(&base("alice = [\"lap\"]", one)).unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.authz.user_hosts("local", "alice", true), ["lap"]);
        let cfg: Config = toml::from_str(&base("alice = [\"lap\"]", &two)).unwrap();
        assert!(cfg.validate().unwrap_err().to_string().contains("names no realm"));
        let cfg: Config = toml::from_str(&base("\"other:alice\" = [\"lap\"]", &two)).unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.authz.user_hosts("other", "alice", false), ["lap"]);
        assert!(cfg.authz.user_hosts("local", "alice", false).is_empty(), "the other realm's alice is someone else");
        assert_eq!(
            public_origin("HTTPS://Backup.Example.org/").unwrap(),
            ("https://backup.example.org".into(), "backup.example.org".into())
        );
        assert!(public_origin("ftp://x").is_err() && public_origin("https://x/portal").is_err());
    }

    #[test]
    fn plaintext_ldap_is_refused() {
        let text = r#"
            listen = "127.0.0.1:0"
            repository = "/r"
            audit_log = "/a"
            [session]
            key_file = "/k"
            [[realm]]
            kind = "ldap"
            name = "corp"
            url = "ldap://dir"
            bind_dn = "cn=x"
            base_dn = "dc=x"
        "#;
        let cfg: Config = toml::from_str(text).unwrap();
        assert!(cfg.validate().unwrap_err().to_string().contains("starttls"));
    }
}
